"""The client role's ZeroMQ sockets in one worker (reference 3.4, 6).

Also the framing of the supervisor <-> worker hop of req mode: a whole
ZeroMQ message (envelope, empty delimiter, payload) packed into one frame
with :func:`pack_frames` and unpacked with :func:`unpack_frames`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import struct
from collections import deque
from collections.abc import Callable
from typing import cast

import zmq

from condure.config import Config, client_endpoints
from condure.net import curve
from condure.net.routerqueue import ROUTER_RETRY
from condure.net.zmqio import BATCH, FIRST_PACKET_HWM, INTERNAL_HWM_FACTOR
from condure.net.zmqreq import MAX_ENVELOPE, packet_frame

log = logging.getLogger("condure.zmq")

_LEN = struct.Struct(">I")


def pack_frames(frames: list[bytes]) -> bytes:
    """One frame holding ``frames``: each as a 4-byte big-endian length,
    then its bytes."""
    out = bytearray()
    for frame in frames:
        out += _LEN.pack(len(frame))
        out += frame
    return bytes(out)


def unpack_frames(data: bytes) -> list[bytes] | None:
    """The frames :func:`pack_frames` packed, or None when ``data`` is not
    such a packing (truncated, trailing bytes, or no frame at all)."""
    frames: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 4:
            return None
        (size,) = _LEN.unpack_from(data, pos)
        pos += 4
        if size > end - pos:
            return None
        frames.append(bytes(data[pos:pos + size]))
        pos += size
    return frames or None


class _Inbox:
    """Drains one receiving socket on the loop: the FD is edge-triggered,
    so each wakeup reads until EAGAIN, BATCH messages at a time (then
    yields and comes back), and :meth:`kick` looks again after a send on
    the same socket may have consumed the edge."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket,
                 handle: Callable[[list[bytes]], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.handle = handle
        self.scheduled = False
        self.closed = False
        self.fd: int = cast(int, sock.getsockopt(zmq.FD))
        loop.add_reader(self.fd, self.ready)
        self.kick(force=True)  # the FD may already be signalled

    def kick(self, force: bool = False) -> None:
        if self.scheduled or self.closed:
            return
        if force or cast(int, self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self.scheduled = True
            self.loop.call_soon(self.ready)

    def ready(self) -> None:
        self.scheduled = False
        if self.closed:
            return
        sock, handle = self.sock, self.handle
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            try:
                handle(frames)
            except Exception:
                log.exception("a packet from a handler could not be handled")
            if self.closed:
                return
        self.kick(force=True)  # more may be waiting: after client I/O has had a turn

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)


class _Outbox:
    """Sends on one socket without blocking: a message ZeroMQ refuses now
    (high-water mark, no peer yet) waits here, in order, and is retried
    when the FD says events changed or at the latest every ROUTER_RETRY."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket,
                 inbox: _Inbox | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.inbox = inbox  # the same socket's receiving side, if any
        self.queue: deque[list[bytes]] = deque()
        self.fd: int = cast(int, sock.getsockopt(zmq.FD))
        self.retry: asyncio.TimerHandle | None = None
        self.dropped = 0

    def send(self, frames: list[bytes]) -> None:
        if self.queue or not self._try(frames):
            self.queue.append(frames)
            if len(self.queue) == 1:
                self._arm()

    def _try(self, frames: list[bytes]) -> bool:
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK, copy=True)
        except zmq.Again:
            return False
        except zmq.ZMQError as e:  # e.g. a closed socket: nothing to retry
            log.debug("dropping a packet for handlers: %s", e)
            self.dropped += 1
        finally:
            if self.inbox is not None:
                self.inbox.kick()
        return True

    def _arm(self) -> None:
        if self.inbox is None:  # the FD is ours alone: watch it while waiting
            self.loop.add_reader(self.fd, self.flush)
        if self.retry is None:
            self.retry = self.loop.call_later(ROUTER_RETRY, self._retry)

    def _retry(self) -> None:
        self.retry = None
        self.flush()
        if self.queue:
            self.retry = self.loop.call_later(ROUTER_RETRY, self._retry)

    def flush(self) -> None:
        queue = self.queue
        while queue:
            if not self._try(queue[0]):
                return
            queue.popleft()
        if self.inbox is None:
            self.loop.remove_reader(self.fd)
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None

    def close(self) -> None:
        if self.queue and self.inbox is None:
            self.loop.remove_reader(self.fd)
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None


def _bind_or_connect(sock: zmq.Socket, endpoint: str, connect: bool, file_mode: int) -> None:
    if connect:
        sock.connect(endpoint)
        return
    sock.bind(endpoint)
    if file_mode and endpoint.startswith("ipc://"):
        os.chmod(endpoint[len("ipc://"):], file_mode)


class ClientSockets:
    """The client-role sockets of one worker.

    ``on_first(payload)``: a first packet (stream mode); ``on_later(payload)``:
    a later packet (stream mode, for whichever worker owns its id);
    ``on_request(envelope, payload)``: a req-mode request, answered with
    :meth:`reply` on the same envelope.

    With the worker spec's ``zserver_stream``/``zserver_req`` (bind mode
    under the supervisor, see docs/supervisor.md) the sockets connect to
    the supervisor's relays: PULL ``in``, SUB ``in_stream`` (everything),
    PUSH ``out`` per base; PULL ``in`` and PUSH ``out`` per req endpoint,
    a request and its reply packed into one frame (:func:`pack_frames`).
    Otherwise they are the real ones of reference 3.4, bound (or, with
    ``--zserver-connect``, connected) to the configured endpoints.
    """

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, *,
                 from_: bytes, on_first: Callable[[bytes], None],
                 on_later: Callable[[bytes], None],
                 on_request: Callable[[object, bytes], None],
                 zmq_spec: dict | None = None, context: zmq.Context | None = None) -> None:
        self.loop = loop
        self.ctx = context or zmq.Context.instance()
        self.on_first, self.on_later, self.on_request = on_first, on_later, on_request
        spec = zmq_spec or {}
        self.relayed_stream = spec.get("zserver_stream")
        self.relayed_req = spec.get("zserver_req")
        self.connect = bool(config.zserver_connect)
        self.file_mode = config.ipc_file_mode
        self.hwm = config.hwm
        self.sockets: list[zmq.Socket] = []
        self.inboxes: list[_Inbox] = []
        self.firsts: list[_Inbox] = []  # closed by stop_taking
        self.outs: list[_Outbox] = []  # stream mode: every packet goes to each
        self.req_outs: list[_Outbox] = []  # req mode: replies, by index
        # What this worker binds or connects itself, for the log: a
        # "zserver" line per stream base, a "zserver req" line per req spec.
        self.endpoints: list[str] = []
        try:
            if config.zserver_req:  # req first, as the supervisor logs them
                self._open_req(config)
            if config.zserver_stream:
                self._open_stream(config, from_)
        except BaseException:
            self.close()
            raise

    def _socket(self, kind: int, *, sndhwm: int | None = None,
                rcvhwm: int | None = None) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if sndhwm is not None:
            sock.setsockopt(zmq.SNDHWM, sndhwm)
        if rcvhwm is not None:
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sockets.append(sock)
        return sock

    def _inbox(self, sock: zmq.Socket, handle: Callable[[list[bytes]], None]) -> _Inbox:
        inbox = _Inbox(self.loop, sock, handle)
        self.inboxes.append(inbox)
        return inbox

    def _open_stream(self, config: Config, from_: bytes) -> None:
        internal = self.hwm * INTERNAL_HWM_FACTOR
        if self.relayed_stream is not None:
            pull = self._socket(zmq.PULL, rcvhwm=internal)
            sub = self._socket(zmq.SUB, rcvhwm=internal)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            for entry in self.relayed_stream:
                pull.connect(entry["in"])
                sub.connect(entry["in_stream"])
                push = self._socket(zmq.PUSH, sndhwm=internal)
                push.connect(entry["out"])
                self.outs.append(_Outbox(self.loop, push))
            self.firsts.append(self._inbox(pull, self._first))
            self._inbox(sub, self._later)
            return
        pull = self._socket(zmq.PULL, rcvhwm=FIRST_PACKET_HWM)
        router = self._socket(zmq.ROUTER, rcvhwm=self.hwm)
        router.setsockopt(zmq.ROUTING_ID, from_)
        pub = self._socket(zmq.PUB, sndhwm=self.hwm)
        for sock in (pull, router, pub):
            curve.secure(sock, config, connect=self.connect)
        for base in config.zserver_stream:
            in_, in_stream, out = client_endpoints(base)
            _bind_or_connect(pull, in_, self.connect, self.file_mode)
            _bind_or_connect(router, in_stream, self.connect, self.file_mode)
            _bind_or_connect(pub, out, self.connect, self.file_mode)
            self.endpoints.append(f"zserver %s {in_} {in_stream} {out}")
        self.firsts.append(self._inbox(pull, self._first))
        self._inbox(router, self._routed_later)
        self.outs.append(_Outbox(self.loop, pub))

    def _open_req(self, config: Config) -> None:
        if self.relayed_req is not None:
            internal = self.hwm * INTERNAL_HWM_FACTOR
            for index, entry in enumerate(self.relayed_req):
                pull = self._socket(zmq.PULL, rcvhwm=internal)
                pull.connect(entry["in"])
                push = self._socket(zmq.PUSH, sndhwm=internal)
                push.connect(entry["out"])
                self._inbox(pull, functools.partial(self._packed_request, index))
                self.req_outs.append(_Outbox(self.loop, push))
            return
        router = self._socket(zmq.ROUTER, sndhwm=FIRST_PACKET_HWM, rcvhwm=self.hwm)
        curve.secure(router, config, connect=self.connect)
        for endpoint in config.zserver_req:
            _bind_or_connect(router, endpoint, self.connect, self.file_mode)
            self.endpoints.append(f"zserver req %s {endpoint}")
        inbox = self._inbox(router, functools.partial(self._request, -1))
        self.req_outs.append(_Outbox(self.loop, router, inbox))

    # -- receiving ------------------------------------------------------------

    def _first(self, frames: list[bytes]) -> None:
        self.on_first(frames[0])  # one frame a packet; more are ignored

    def _later(self, frames: list[bytes]) -> None:
        self.on_later(frames[0])

    def _routed_later(self, frames: list[bytes]) -> None:
        payload = packet_frame(frames)
        if payload is None:
            log.debug("dropping a later packet without a usable envelope")
            return
        self.on_later(payload)

    def _packed_request(self, index: int, frames: list[bytes]) -> None:
        unpacked = unpack_frames(frames[0])
        if unpacked is None:
            log.debug("dropping a malformed request from the supervisor's relay")
            return
        self._request(index, unpacked)

    def _request(self, index: int, frames: list[bytes]) -> None:
        for i, frame in enumerate(frames[:MAX_ENVELOPE + 1]):
            if not frame:
                if i + 1 < len(frames):
                    self.on_request((index, frames[:i]), frames[i + 1])
                    return
                break
        log.debug("dropping a req-mode message without a usable envelope")

    # -- sending --------------------------------------------------------------

    def publish(self, to: bytes, payload: bytes) -> None:
        """``"<to> T..."`` to the handler at address ``to``."""
        frame = [to + b" " + payload]
        for out in self.outs:
            out.send(frame)

    def reply(self, envelope: object, payload: bytes) -> None:
        """Answer the request that came with ``envelope`` (from on_request)."""
        index, frames = cast("tuple[int, list[bytes]]", envelope)
        message = [*frames, b"", payload]
        if index < 0:
            self.req_outs[0].send(message)
        else:
            self.req_outs[index].send([pack_frames(message)])

    @property
    def pending(self) -> bool:
        """Whether packets for handlers still wait here."""
        return any(out.queue for out in self.outs + self.req_outs)

    def stop_taking(self) -> None:
        """No new stream sessions: close the first-packet sockets (their
        queued packets go to the other workers, or are lost)."""
        for inbox in self.firsts:
            inbox.close()
            if inbox.sock in self.sockets:
                self.sockets.remove(inbox.sock)
            inbox.sock.close(linger=0)
        self.firsts.clear()

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.close()
        for out in self.outs + self.req_outs:
            out.flush()
            out.close()
        for sock in self.sockets:
            sock.close(linger=1000)  # shutdown cancels still queued get a moment
        self.sockets.clear()
