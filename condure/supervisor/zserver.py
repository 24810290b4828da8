"""The client role's ZeroMQ relay for bind mode with several workers.

Handlers see one condure: per ``--zserver-stream`` base and per
``--zserver-req`` endpoint the public sockets are bound here as a single
condure binds them (reference 3.4: same types, high-water marks,
``--ipc-file-mode``, log lines). Workers connect to internal ``ipc://``
endpoints in the proxy's private runtime directory, given to them in the
worker spec as ``zmq["zserver_stream"]`` and ``zmq["zserver_req"]``:

===============================  ====================  ===================
public (bound)                   internal (bound)      relay
===============================  ====================  ===================
PULL ``B-in``                    PUSH ``in``           PULL -> PUSH
ROUTER ``B-in-stream`` (``id``)  PUB ``in_stream``     ROUTER -> PUB
PUB ``B-out``                    PULL ``out``          PULL -> PUB
ROUTER ``R``                     PUSH ``in``,          ROUTER <-> PUSH/PULL
                                 PULL ``out``
===============================  ====================  ===================

As in Condure, each public socket is bound to the endpoint of every base
(a reply goes out on the one PUB every handler subscribes to, whichever
base its request came by), so there is one internal set for all stream
bases, and one for all req endpoints: each ``zserver_*`` list of the spec
has a single entry.

- First packets (``in``) go through ``relay.relay_loop``: a packet no
  worker can take yet is held and the thread sleeps until one can.
- Later packets arrive on the public ROUTER as ``[handler-id, "", T...]``;
  the payload alone is published to every worker (each ignores the ids it
  does not own), since in bind mode every worker's ``from`` is ``--id``.
  A PUB never refuses a message, so this relay never waits on its output.
- Worker packets (``out``) are one frame ``"<handler-from> T..."`` each,
  published unchanged (``relay_loop`` again; a PUB never refuses).
- req mode: a request ``[envelope..., "", T...]`` goes to one worker as
  one frame, ``zmqclient.pack_frames`` of the whole message; the worker
  answers with ``pack_frames(envelope + ["", reply])``, which is sent on
  the public ROUTER as those frames. A request no worker can take yet is
  held and the ROUTER is not read until one can.

Every relay thread sleeps in ``zmq_poll`` while it waits and stops on its
control socket (:meth:`ZmqProxy.close`), which also closes these sockets
and removes their ipc files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import zmq

from condure.config import Config, client_endpoints
from condure.net import curve
from condure.net.zmqclient import pack_frames, unpack_frames
from condure.net.zmqio import BATCH, FIRST_PACKET_HWM, INTERNAL_HWM_FACTOR
from condure.supervisor.relay import relay_loop, run_until_stopped

log = logging.getLogger("condure")

_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
MAX_ENVELOPE = 8  # envelope frames a later packet may carry before its payload


class ProxyHost(Protocol):
    """What this module uses of :class:`~condure.supervisor.zmqproxy.ZmqProxy`
    (which imports this module): its config and runtime dir, sockets it
    closes, public binds whose files it removes, threads it stops."""

    config: Config
    dir: str | None

    def _socket(self, kind: int, *, sndhwm: int | None = None,
                rcvhwm: int | None = None) -> zmq.Socket: ...

    def _bind_public(self, sock: zmq.Socket, endpoint: str, mode: int) -> None: ...

    def _start_thread(self, name: str, target: Callable[..., None],
                      *sockets: zmq.Socket) -> None: ...


def start_zserver(proxy: ProxyHost) -> dict:
    """Bind the client role's sockets and start its relays; returns the
    ``zserver_stream`` / ``zserver_req`` entries of the worker spec (only
    those of the modes configured)."""
    config = proxy.config
    assert proxy.dir is not None, "the proxy made its runtime dir"
    mode = config.ipc_file_mode
    hwm = config.hwm
    spec: dict = {}
    if config.zserver_req:
        internal_in = f"ipc://{proxy.dir}/zserver-req-in"
        internal_out = f"ipc://{proxy.dir}/zserver-req-out"
        router = proxy._socket(zmq.ROUTER, sndhwm=FIRST_PACKET_HWM, rcvhwm=hwm)
        curve.secure(router, config, connect=False)
        for endpoint in config.zserver_req:
            proxy._bind_public(router, endpoint, mode)
            log.info("zserver req bind %s", endpoint)
        push = proxy._socket(zmq.PUSH, sndhwm=FIRST_PACKET_HWM)
        push.bind(internal_in)
        pull = proxy._socket(zmq.PULL, rcvhwm=INTERNAL_HWM_FACTOR * hwm)
        pull.bind(internal_out)
        proxy._start_thread("zserver-req", relay_zserver_req, router, push, pull)
        spec["zserver_req"] = [{"in": internal_in, "out": internal_out}]
    if config.zserver_stream:
        internal_in = f"ipc://{proxy.dir}/zserver-in"
        internal_in_stream = f"ipc://{proxy.dir}/zserver-in-stream"
        internal_out = f"ipc://{proxy.dir}/zserver-out"
        first = proxy._socket(zmq.PULL, rcvhwm=FIRST_PACKET_HWM)
        later = proxy._socket(zmq.ROUTER, rcvhwm=hwm)
        # Handlers address later packets to this identity: --id.
        later.setsockopt(zmq.ROUTING_ID, config.id.encode())
        pub = proxy._socket(zmq.PUB, sndhwm=hwm)
        for sock in (first, later, pub):
            curve.secure(sock, config, connect=False)
        for base in config.zserver_stream:
            in_, in_stream, out = client_endpoints(base)
            proxy._bind_public(first, in_, mode)
            proxy._bind_public(later, in_stream, mode)
            proxy._bind_public(pub, out, mode)
            log.info("zserver bind %s %s %s", in_, in_stream, out)
        push = proxy._socket(zmq.PUSH, sndhwm=FIRST_PACKET_HWM)
        push.bind(internal_in)
        # Room for a few seconds of traffic for a worker busy a moment.
        fanout = proxy._socket(zmq.PUB, sndhwm=INTERNAL_HWM_FACTOR * hwm)
        fanout.bind(internal_in_stream)
        results = proxy._socket(zmq.PULL, rcvhwm=INTERNAL_HWM_FACTOR * hwm)
        results.bind(internal_out)
        proxy._start_thread("zserver-in", relay_loop, first, push)
        proxy._start_thread("zserver-in-stream", relay_later, later, fanout)
        proxy._start_thread("zserver-out", relay_loop, results, pub)
        spec["zserver_stream"] = [{"in": internal_in, "in_stream": internal_in_stream,
                                   "out": internal_out}]
    return spec


def later_payload(frames: list[bytes]) -> bytes | None:
    """The payload of a message the public ROUTER received: the frame after
    the first empty one following the handler's routing id (at most
    ``MAX_ENVELOPE`` frames before it); None when there is none."""
    for i in range(1, min(len(frames) - 1, MAX_ENVELOPE + 1)):
        if frames[i] == b"":
            return frames[i + 1]
    return None


def relay_later(router: zmq.Socket, pub: zmq.Socket, control: zmq.Socket) -> None:
    """Thread body: later packets from handlers to every worker, until
    ``control`` receives a message."""
    items = [(control, _POLLIN), (router, _POLLIN)]

    def step() -> list[tuple[zmq.Socket, int]]:
        for _ in range(BATCH):
            try:
                frames = router.recv_multipart(_NOBLOCK)
            except zmq.Again:
                break
            payload = later_payload(frames)
            if payload is None:
                log.debug("zserver: later packet without an envelope dropped")
                continue
            pub.send(payload, _NOBLOCK)  # a PUB drops, never refuses
        return items

    run_until_stopped(control, items, step)


def _send_reply(router: zmq.Socket, data: bytes) -> None:
    frames = unpack_frames(data)
    if frames is None or len(frames) < 3 or b"" not in frames[1:-1]:
        log.debug("zserver req: malformed reply from a worker dropped")
        return
    try:
        router.send_multipart(frames, _NOBLOCK)
    except zmq.Again:  # pragma: no cover - needs a full handler queue
        log.debug("zserver req: reply dropped, the handler's queue is full")
    except zmq.ZMQError as e:  # pragma: no cover - not with ROUTER_MANDATORY off
        log.debug("zserver req: reply dropped: %s", e)


def relay_zserver_req(router: zmq.Socket, push: zmq.Socket, pull: zmq.Socket,
                      control: zmq.Socket) -> None:
    """Thread body: requests from the public ROUTER to one worker each,
    replies from the workers back, until ``control`` receives a message.

    While a request waits for a worker (none connected, or all full), the
    ROUTER is not read and the PUSH is polled for POLLOUT instead."""
    reading = [(control, _POLLIN), (pull, _POLLIN), (router, _POLLIN)]
    writing = [(control, _POLLIN), (pull, _POLLIN), (push, _POLLOUT)]
    held: bytes | None = None

    def step() -> list[tuple[zmq.Socket, int]]:
        nonlocal held
        # Replies first: they end exchanges; then requests.
        for _ in range(BATCH):
            try:
                data = pull.recv(_NOBLOCK)
            except zmq.Again:
                break
            while pull.getsockopt(zmq.RCVMORE):  # not a worker's: dropped
                pull.recv()
                data = b""
            _send_reply(router, data)
        held = _forward_requests(router, push, held)
        return reading if held is None else writing

    run_until_stopped(control, reading, step)


def _forward_requests(router: zmq.Socket, push: zmq.Socket,
                      held: bytes | None) -> bytes | None:
    """Send ``held``, then up to BATCH requests from the ROUTER; returns the
    packed request the PUSH refused, if any."""
    if held is not None:
        try:
            push.send(held, _NOBLOCK)
        except zmq.Again:
            return held
    for _ in range(BATCH):
        try:
            frames = router.recv_multipart(_NOBLOCK)
        except zmq.Again:
            return None
        packed = pack_frames(frames)
        try:
            push.send(packed, _NOBLOCK)
        except zmq.Again:
            return packed
    return None
