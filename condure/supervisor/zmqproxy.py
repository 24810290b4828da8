"""The supervisor's ZeroMQ relay for bind mode with several workers.

Handlers see one condure: the public endpoints are bound here exactly as a
single condure binds them (same names, high-water marks, ``--ipc-file-mode``,
log lines). Workers connect to internal ``ipc://`` endpoints in a private
runtime directory (mode 0700, removed by :meth:`ZmqProxy.close`):

=========================  ================================  ================
public (bound)             internal (bound, workers connect)  relay
=========================  ================================  ================
PUSH ``BASE-out``          PULL ``stream-out``               PULL -> PUSH
ROUTER ``BASE-out-stream`` PULL ``stream-out-stream``        PULL -> ROUTER
XSUB ``BASE-in``           XPUB ``stream-in``                XSUB <-> XPUB
DEALER req spec            ROUTER ``req``                    ROUTER <-> DEALER
=========================  ================================  ================

Each relay runs in its own thread. First packets go through
``relay.relay_loop``, which holds a message the public PUSH cannot take
yet and stops reading until it can (no handler connected, or all of them
busy), sleeping meanwhile: ``zmq.proxy`` would poll in a loop there.
Handler packets and subscriptions go through ``zmq.proxy_steerable``
(the copying happens in libzmq, without the GIL): XSUB and XPUB never
refuse a message, so that proxy never waits on its output and cannot
spin; an ``XPUB_NODROP`` on the internal XPUB would change that. At a
restart's start that proxy is preceded by a hold: handler packets wait
in this thread until the workers have subscribed (``subhold.py``).
req mode has its own relay (``reqrelay``: replies go by packet id,
handlers see no extra envelope frame); the later-packets relay is a loop
here, because a packet for one handler may have to wait: while that
handler's queue is full or while it is not connected yet (given
``UNREACHABLE_GRACE`` seconds, then dropped), retried as
``RouterQueues.delay`` says (sooner than Condure's fixed 50 ms), without
holding up packets for other handlers. Workers push each of those
packets as one frame, the handler's address after a length byte and then
the packet (``routerqueue.pack_later``); the relay sends it on as
``[handler-id, "", T...]``, the frames a ROUTER sends.

The client role's sockets (``--zserver-stream``, ``--zserver-req``, unless
``--zserver-connect``) are bound and relayed by ``zserver.py``, in threads
of this proxy; with the server role in connect mode (or without
listeners) the proxy binds the client role only.

Every thread listens on an ``inproc`` control socket; :meth:`close` sends
``TERMINATE`` to each, joins the threads, closes the sockets and the
context.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
from functools import partial

import zmq

from condure import runtime
from condure.config import Config, stream_endpoints
from condure.net import curve, ipcclaim
from condure.net.routerqueue import ROUTER_RETRY, RouterQueues, unpack_later
from condure.net.zmqio import (
    BATCH,
    FIRST_PACKET_HWM,
    INTERNAL_HWM_FACTOR,
    LATER_HOP_HWM_FACTOR,
    _bind_or_connect,
    congestion_marks,
)
from condure.supervisor.relay import relay_loop
from condure.supervisor.reqrelay import relay_req
from condure.supervisor.subhold import HOLD_TIME, SubscriptionHold, hold_then_relay

log = logging.getLogger("condure")
_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)

TERMINATE = b"TERMINATE"
CLOSE_LINGER_MS = 1000  # packets still queued at close (cancels) get this long
FINAL_FLUSH = 1.0  # seconds the later-packets relay keeps trying at close
# At start, first packets wait this long at most for a handler to connect to
# BASE-in (relay.wait_for_handler); handlers reconnect every 100 ms by default.
HANDLER_WAIT = 3.0
PRIVATE_PREFIX = "condure-"  # the private directory of the internal endpoints


def serves_bound(config: Config) -> bool:
    """Whether the server role's ZeroMQ sockets are bound (by this proxy)."""
    return not config.zclient_connect and (config.uses_stream or config.uses_req)


def connect_spec(config: Config) -> dict:
    """The worker spec's ``zmq`` part when the server role's sockets are
    not bound here: each worker uses the configured endpoints itself.
    Raises ConfigError for unusable CURVE key files (here, not in every worker)."""
    curve.load(config)
    return {"stream": list(config.zclient_stream), "req": list(config.zclient_req),
            "connect": True}


def clients_bound(config: Config) -> bool:
    """Whether the client role's ZeroMQ sockets are bound (supervisor/zserver.py)."""
    return not config.zserver_connect and bool(config.zserver_stream or config.zserver_req)


class ZmqProxy:
    """Bind the public endpoints, relay to internal ones; see the module doc.

    ``start()`` returns the ``zmq`` part of the worker spec; ``close()``
    stops the relays and removes the runtime directory. Both run in the
    supervisor's main thread.
    """

    def __init__(self, config: Config, *, runtime_dir: str | None = None,
                 hold_for: list[str] | None = None) -> None:
        """``hold_for``: the workers' addresses, when handler packets are to
        be held for them until they subscribe (a restart's start, subhold.py)."""
        self.config = config
        self.hold_for = hold_for
        self._parent = runtime_dir
        self.dir: str | None = None
        self.ctx: zmq.Context | None = None
        self._sockets: list[zmq.Socket] = []
        self._controls: list[zmq.Socket] = []
        self._threads: list[threading.Thread] = []
        self.spec: dict | None = None
        # ipc socket files bound here, with their inodes: removed at close
        # unless something else has replaced them meanwhile.
        self._files: list[tuple[str, int]] = []

    # -- start ------------------------------------------------------------

    def start(self) -> dict:
        """Bind everything and start the relays. Raises ``zmq.ZMQError`` or
        ``OSError`` (everything already set up is undone)."""
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> dict:
        config = self.config
        parent = self._parent or runtime.runtime_parent()
        # Those of condures killed with SIGKILL (nothing listens in them)
        for path in ipcclaim.sweep_private_dirs(parent, PRIVATE_PREFIX):
            log.debug("removed %s, left behind by a condure that was killed", path)
        self.dir = tempfile.mkdtemp(prefix=PRIVATE_PREFIX, dir=parent)
        os.chmod(self.dir, 0o700)
        self.ctx = zmq.Context()
        spec: dict = {"stream": [], "req": [], "connect": True, "proxy": True}
        if not serves_bound(config):  # only the client role is bound here
            spec = connect_spec(config)
        mode = config.ipc_file_mode
        # Same order as a single worker: req first, then stream (log lines).
        if config.uses_req and "proxy" in spec:
            internal = f"ipc://{self.dir}/req"
            router = self._socket(zmq.ROUTER, rcvhwm=config.hwm, sndhwm=config.hwm)
            router.bind(internal)
            dealer = self._socket(zmq.DEALER, sndhwm=FIRST_PACKET_HWM, rcvhwm=config.hwm)
            curve.secure(dealer, config, connect=False)
            for endpoint in config.zclient_req:
                self._bind_public(dealer, endpoint, mode)
                log.info("zhttp client bind %s", endpoint)
            self._start_thread("req", relay_req, router, dealer)
            spec["req"] = [internal]
        if config.uses_stream and "proxy" in spec:
            base = f"ipc://{self.dir}/stream"
            in_out, in_out_stream, in_in = stream_endpoints(base)
            push = self._socket(zmq.PUSH, sndhwm=FIRST_PACKET_HWM)
            router = self._socket(zmq.ROUTER, sndhwm=config.hwm)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            xsub = self._socket(zmq.XSUB, rcvhwm=INTERNAL_HWM_FACTOR * config.hwm)
            for sock in (push, router, xsub):
                curve.secure(sock, config, connect=False)
            # Watched before binding, so that no handler's connection goes
            # unseen. (A socket has one monitor: with CURVE it is curve.py's,
            # and first packets do not wait.)
            ready = None
            if config.zmq_curve_secret is None:
                ready = xsub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
                self._sockets.append(ready)
            for public in config.zclient_stream:
                out, out_stream, in_ = stream_endpoints(public)
                self._bind_public(push, out, mode)
                self._bind_public(router, out_stream, mode)
                self._bind_public(xsub, in_, mode)
                log.info("zhttp client bind %s %s %s", out, out_stream, in_)
            steer = _steerable
            if self.hold_for:
                # Subscribed now, before any handler's PUB can connect: each
                # gets it with its connection's first frames (subhold.py).
                prefix = config.id.encode()
                xsub.send(b"\x01" + prefix)
                hold = SubscriptionHold([a.encode() + b" " for a in self.hold_for],
                                        max_packets=INTERNAL_HWM_FACTOR * config.hwm)
                steer = partial(hold_then_relay, hold=hold, prefix=prefix,
                                until=time.monotonic() + HOLD_TIME, then=_steerable)
            first = self._socket(zmq.PULL, rcvhwm=FIRST_PACKET_HWM)
            first.bind(in_out)
            later = self._socket(zmq.PULL, rcvhwm=LATER_HOP_HWM_FACTOR * config.hwm)
            later.bind(in_out_stream)
            # A worker busy for a moment (adopting moved sessions, say)
            # must not make the relay drop its packets: room for a few
            # seconds of traffic, not Condure's in-process limit. No
            # XPUB_NODROP: the "in" proxy must never find its output
            # blocked (see _steerable).
            xpub = self._socket(zmq.XPUB, sndhwm=INTERNAL_HWM_FACTOR * config.hwm)
            xpub.bind(in_in)
            self._start_thread("out", partial(relay_loop, ready=ready, wait=HANDLER_WAIT),
                               first, push)
            self._start_thread("in", steer, xsub, xpub)
            self._start_thread("out-stream", partial(_relay_later, marks=congestion_marks(
                config.hwm)), later, router)
            spec["stream"] = [base]
        if clients_bound(config):
            from condure.supervisor.zserver import start_zserver
            spec.update(start_zserver(self))
        self.spec = spec
        return spec

    def _bind_public(self, sock: zmq.Socket, endpoint: str, mode: int) -> None:
        _bind_or_connect(sock, endpoint, False, mode)
        if endpoint.startswith("ipc://") and not endpoint.startswith(("ipc://@", "ipc://*")):
            path = endpoint[len("ipc://"):]
            try:
                self._files.append((os.path.abspath(path), os.stat(path).st_ino))
            except OSError:
                pass

    def _remove_files(self) -> None:
        """Remove the ipc socket files bound here (as Condure does on exit),
        each only if it is still the one this process created."""
        for path, inode in self._files:
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass
        self._files = []

    def _context(self) -> zmq.Context:
        assert self.ctx is not None, "start() creates the context"
        return self.ctx

    def _socket(self, kind: int, *, sndhwm: int | None = None,
                rcvhwm: int | None = None) -> zmq.Socket:
        sock = self._context().socket(kind)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        if sndhwm is not None:
            sock.setsockopt(zmq.SNDHWM, sndhwm)
        if rcvhwm is not None:
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
        return sock

    def _control(self, name: str) -> zmq.Socket:
        """A PAIR for the thread (connected); ours (bound) goes to _controls."""
        endpoint = f"inproc://condure-proxy-{name}-{id(self)}"
        ours = self._context().socket(zmq.PAIR)
        ours.setsockopt(zmq.LINGER, 0)
        ours.bind(endpoint)
        self._controls.append(ours)
        theirs = self._socket(zmq.PAIR)
        theirs.connect(endpoint)
        return theirs

    def _start_thread(self, name: str, target, *sockets: zmq.Socket) -> None:
        # Sockets move to the thread here; thread start is the memory barrier
        # ZeroMQ asks for, and only that thread uses them until join().
        control = self._control(name)
        thread = threading.Thread(target=target, args=(*sockets, control),
                                  name=f"zmq-proxy-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    # -- stop -------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop the relays, close every socket, remove the runtime dir.
        Safe to call more than once, and after a failed start."""
        for ctl in self._controls:
            try:
                ctl.send(TERMINATE, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        for thread in self._threads:
            thread.join(timeout)
        stuck = any(t.is_alive() for t in self._threads)
        if not stuck:
            for sock in self._sockets:
                # Public sockets get a moment to deliver what is queued.
                sock.close(linger=CLOSE_LINGER_MS)
            for ctl in self._controls:
                ctl.close(linger=0)
            if self.ctx is not None:
                curve.stop(self.ctx)  # its ZAP handler's socket would hold term()
                self.ctx.term()
        else:
            log.warning("zmq proxy threads did not stop; leaving them")
        self._sockets, self._controls, self._threads = [], [], []
        self.ctx = None
        self._remove_files()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> ZmqProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- relay threads ----------------------------------------------------------
# "out" is relay.relay_loop; "req" is reqrelay.relay_req.


def _steerable(frontend: zmq.Socket, backend: zmq.Socket, control: zmq.Socket) -> None:
    """libzmq's proxy, for XSUB <-> XPUB only: neither socket ever refuses a
    message (an XPUB drops for a subscriber whose queue is full, an XSUB
    always takes subscriptions), so the proxy never finds its output
    blocked, the case in which it would poll in a loop (relay.py)."""
    try:
        zmq.proxy_steerable(frontend, backend, None, control)
    except zmq.ContextTerminated:
        pass
    except zmq.ZMQError as e:  # pragma: no cover - reported, thread ends
        log.error("zmq proxy %s: %s", threading.current_thread().name, e)


class LaterRelay(RouterQueues):
    """Packets from workers (unpacked to ``[handler-id, "", T...]``) to the public ROUTER,
    queued per handler while it cannot take them (net/routerqueue.py)."""

    def offer(self, frames: list[bytes] | None) -> bool:
        if frames is None or len(frames) < 3 or frames[1] != b"":
            log.debug("zmq proxy: malformed packet from a worker dropped")
            return False
        return super().offer(frames)


def _recv_later(pull: zmq.Socket) -> list[bytes] | None:
    """One worker packet as ROUTER frames; None for anything malformed
    (a message of several frames is not a worker's)."""
    received = pull.recv(_NOBLOCK, copy=False)  # (its .more costs less than RCVMORE)
    if received.more:
        while pull.getsockopt(zmq.RCVMORE):
            pull.recv()
        return None
    return unpack_later(received.bytes)


def _relay_later(pull: zmq.Socket, router: zmq.Socket, control: zmq.Socket, *,
                 marks: tuple[int, int] = (1 << 62, 0)) -> None:
    """Workers' later packets to the handlers. While more than ``marks[0]``
    wait for handlers, the workers' pipe is not read (down to ``marks[1]``):
    the pipe fills, the workers queue and read less from their clients, so
    what waits ahead of a new packet stays bounded (docs/handover.md)."""
    relay = LaterRelay(router)
    high, low = marks
    # zmq_poll on prepared item lists (what Poller.poll calls, without its
    # dict): this thread wakes for nearly every packet under load.
    # Handlers never send on the router; what comes is discarded.
    reading_items = [(control, _POLLIN), (router, _POLLIN), (pull, _POLLIN)]
    paused_items = reading_items[:2]
    poll = zmq.zmq_poll
    reading = True
    next_retry = 0.0
    try:
        while True:
            timeout = -1
            if relay.waiting:
                # Whole milliseconds, rounded up: zmq_poll takes an int, and
                # a wait rounded down to 0 would poll in a loop until the
                # retry is due.
                timeout = math.ceil(max(next_retry - time.monotonic(), 0.0) * 1000)
            ready = [sock for sock, _ in poll(reading_items if reading else paused_items,
                                              timeout)]
            if control in ready:
                control.recv()
                break
            if router in ready:
                for _ in range(BATCH):
                    try:
                        router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            if pull in ready:
                had_waiting = bool(relay.waiting)
                for _ in range(BATCH):
                    if relay.queued >= high:
                        break
                    try:
                        relay.offer(_recv_later(pull))
                    except zmq.Again:
                        break
                if relay.waiting and not had_waiting:
                    next_retry = time.monotonic() + relay.delay
            if relay.waiting and time.monotonic() >= next_retry:
                relay.retry()
                next_retry = time.monotonic() + relay.delay
            if reading and relay.queued >= high:
                reading = False
            elif not reading and relay.queued <= low:
                reading = True
        # Closing: pass on what the workers sent last (their cancels).
        deadline = time.monotonic() + FINAL_FLUSH
        while True:
            try:
                relay.offer(_recv_later(pull))
            except zmq.Again:
                break
        while relay.waiting and time.monotonic() < deadline:
            relay.retry()
            time.sleep(ROUTER_RETRY)
    except zmq.ContextTerminated:
        pass
