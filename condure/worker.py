"""One worker process: listeners, ZeroMQ sockets and the session registry.

The worker accepts client connections into numbered slots, gives each an
HTTP session, routes handler packets to sessions by id, sweeps keep-alives
and fires timers from one 100 ms tick.

Ids are ``"<worker>-<slot>-<counter>"`` as Condure makes them (reference
1.3): the slot part is what routes a handler's packet to its connection,
and the full id must match the slot's current one, so packets for finished
requests are ignored.

Every call into a session is guarded: a session that raises (a bug) ends
its own connection (``Conn.fail``) and every loop here goes on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import signal
import socket
import time
from collections import defaultdict

from condure.config import Config, ListenSpec
from condure.log import TRACE, trace_enabled
from condure.net import listeners
from condure.net.certs import CertStore
from condure.net.conn import Conn
from condure.net.timers import RESOLUTION, TimerWheel
from condure.net.tls import TlsLayer
from condure.net.unanswered import UnansweredLog
from condure.net.zmqio import StreamSockets
from condure.net.zmqreq import ReqSocket
from condure.session.http import HttpSession
from condure.session.req import REQ_SOCKET, ReqSession
from condure.supervisor.reqrelay import routing_id
from condure.zhttp import PacketError, UnknownType, decode, encode
from condure.zhttp.packets import Cancel, Ident, KeepAlive, Packet

log = logging.getLogger("condure")

KEEP_ALIVE_INTERVAL = 45.0  # every session is visited once per 45 s (reference 5.8)
MAX_IDS = 128  # ids per batched keep-alive/cancel packet
ACCEPT_BATCH = 64  # connections accepted per wakeup
# On a socket every worker accepts on (--accept-mode shared), each worker
# takes only a few per wakeup, so one that woke first does not drain the
# whole backlog while the others sit idle (docs/accept-modes.md).
SHARED_ACCEPT_BUDGET = 4
# Accept errors that mean "out of resources": back off instead of spinning
# (the connection stays in the backlog and is retried).
_ACCEPT_BACKOFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_BACKOFF = 0.1


class Worker:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, index: int = 0, *,
                 listen_socks: list[tuple[socket.socket, ListenSpec]] | None = None,
                 address: str | None = None, zmq_spec: dict | None = None) -> None:
        self.config = config
        # The worker spec's "zmq" part (docs/supervisor.md); None: the
        # configured endpoints, bound or connected as the options say.
        self.zmq_spec = zmq_spec
        # Listening sockets handed over by the supervisor; None: bind our own.
        self.given_listeners = listen_socks
        self.requests = 0  # request packets sent, for the supervisor's stats
        self.loop = loop
        self.index = index
        # Our ZHTTP "from" and SUB prefix: --id, or --id.<index> with workers.
        self.instance_id = (address if address is not None else config.id).encode()
        self.read_size = max(config.buffer_size, 1)
        # Req and stream connections share the slots (and the id space) but
        # are limited separately (reference 1.2).
        self.limits = {"stream": config.stream_maxconn, "req": config.req_maxconn}
        self.counts = {"stream": 0, "req": 0}
        self.slot_modes: dict[int, str] = {}
        self.paused_modes: set[str] = set()
        self.maxconn = sum(self.limits[m] for m in {spec.mode for spec in config.listen}) or 1
        self.slots: list[Conn | None] = []
        # WebSocket sessions adopted from another process keep their ids,
        # which need not name the slot they sit in here: routed by id.
        self.moved: dict[bytes, Conn] = {}
        self.free: list[int] = []
        self.counter = 0
        self.timers = TimerWheel()
        self.listeners: list[tuple[socket.socket, ListenSpec]] = []
        self.certs = CertStore(config.tls_identities_dir)
        self.tls_contexts: dict[ListenSpec, object] = {}  # spec -> ssl.SSLContext
        self.accepting = False
        self.zmq: StreamSockets | None = None
        self.req: ReqSocket | None = None
        self.sweep_pos = 0
        self.sweep_batch = max(math.ceil(self.maxconn / (KEEP_ALIVE_INTERVAL / RESOLUTION)), 1)
        self.tick_handle: asyncio.TimerHandle | None = None
        self.stopped = loop.create_future()
        self.prefix = f"{index}-".encode()
        self.trace = trace_enabled()  # checked once: packet logging is costly
        self.unanswered: UnansweredLog | None = UnansweredLog(config, time.monotonic)
        self.unanswered_counts: defaultdict[str, int] = defaultdict(int)

    # -- start and stop -----------------------------------------------------

    def start(self) -> None:
        zspec = self.zmq_spec or {}
        verb = "connect" if zspec.get("connect", self.config.zclient_connect) else "bind"
        # The supervisor logs the public binds; the proxy's internal
        # endpoints are an implementation detail.
        level = logging.DEBUG if zspec.get("proxy") else logging.INFO
        # ZeroMQ sockets only for the modes in use (reference 2.3).
        if self.config.uses_req:
            rid = routing_id(self.index, os.getpid()) if zspec.get("proxy") else None
            self.req = ReqSocket(self.config, self.loop, self.on_message,
                                 zmq_spec=self.zmq_spec, routing_id=rid)
            for spec in self.req.endpoints:
                log.log(level, "zhttp client %s %s", verb, spec)
        if self.config.uses_stream:
            self.zmq = StreamSockets(self.config, self.loop, self.on_message,
                                     instance_id=self.instance_id, zmq_spec=self.zmq_spec)
            for out, out_stream, in_ in self.zmq.endpoints:
                log.log(level, "zhttp client %s %s %s %s", verb, out, out_stream, in_)
            if not self.zmq.wait_subscribed():
                log.warning("no connection to the supervisor's proxy yet; accepting anyway")
        for sock, spec in self._listen_sockets():
            self.listeners.append((sock, spec))
            if spec.tls and not spec.is_local:
                self.tls_contexts[spec] = self.certs.listener_context(spec.default_cert)
            log.info("listening on %s%s", listeners.describe(sock, spec),
                     " (tls)" if spec in self.tls_contexts else "")
        self.set_accepting(True)
        self.tick_handle = self.loop.call_later(RESOLUTION, self.tick)

    def _listen_sockets(self):
        if self.given_listeners is not None:
            yield from self.given_listeners
            return
        for spec in self.config.listen:
            yield listeners.bind(spec), spec  # ListenError: startup fails with its message

    def stop(self) -> None:
        """Condure's shutdown: cancel every session a handler knows about
        (batched per handler), drop the connections, close sockets."""
        self.set_accepting(False)
        owed: dict[tuple[bytes, bytes], list[Ident]] = defaultdict(list)
        for conn in self.slots:
            if conn is None:
                continue
            try:
                entry = conn.session.shutdown()
                if entry is not None:
                    owed[entry[0], conn.session.instance_id].append(entry[1])
            except Exception:  # noqa: BLE001 - a bug in the session: end it alone
                conn.fail("stopping")
            conn.abort()
        self._send_batched(Cancel, owed)
        if self.tick_handle is not None:
            self.tick_handle.cancel()
        self.close_listeners()

    def close_listeners(self) -> None:
        for sock, spec in self.listeners:
            listeners.close(sock, spec)

    # -- accepting ------------------------------------------------------------

    def set_accepting(self, on: bool) -> None:
        if on == self.accepting:
            return
        self.accepting = on
        for sock, spec in self.listeners:
            if on and spec.mode not in self.paused_modes:
                self.loop.add_reader(sock.fileno(), self._accept, sock, spec)
            else:
                self.loop.remove_reader(sock.fileno())

    def _pause_mode(self, mode: str, paused: bool) -> None:
        """Stop (or resume) accepting on the listeners of one mode, whose
        connection limit is reached: new clients wait in the backlog."""
        if paused:
            self.paused_modes.add(mode)
        else:
            self.paused_modes.discard(mode)
        for sock, spec in self.listeners:
            if spec.mode == mode:
                if paused or not self.accepting:
                    self.loop.remove_reader(sock.fileno())
                else:
                    self.loop.add_reader(sock.fileno(), self._accept, sock, spec)

    def _accept_budget(self, spec: ListenSpec) -> int:
        mode = self.config.accept_mode
        alone = self.config.workers == 1 or (
            mode == "reuseport" and not spec.is_local and spec.fd_name is None)
        return ACCEPT_BATCH if alone else SHARED_ACCEPT_BUDGET

    def adopt_connection(self, sock: socket.socket, spec_index: int) -> bool:
        """Serve a connection the supervisor accepted (dispatch mode) for
        ``config.listen[spec_index]``; False (and closed) if it cannot be."""
        try:
            spec = self.config.listen[spec_index]
            addr = sock.getpeername()
        except (IndexError, OSError) as e:
            log.debug("dropping a passed connection: %s", e)
            sock.close()
            return False
        if self.stopped.done() or self.counts[spec.mode] >= self.limits[spec.mode]:
            log.debug("dropping a passed connection: %s",
                      "stopping" if self.stopped.done() else "connection limit reached")
            sock.close()
            return False
        if spec.tls and not spec.is_local and spec not in self.tls_contexts:
            self.tls_contexts[spec] = self.certs.listener_context(spec.default_cert)
        self._adopt_socket(sock, addr, spec)
        return True

    def _accept(self, lsock: socket.socket, spec: ListenSpec) -> None:
        for _ in range(self._accept_budget(spec)):
            if self.counts[spec.mode] >= self.limits[spec.mode]:
                # Every connection of this mode is taken: leave new clients
                # in the backlog.
                self._pause_mode(spec.mode, True)
                return
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _ACCEPT_BACKOFF:
                    log.warning("accept: %s; pausing accepts briefly", e)
                    self.set_accepting(False)
                    self.loop.call_later(ACCEPT_BACKOFF, self.set_accepting, True)
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            self._adopt_socket(sock, addr, spec)

    def _adopt_socket(self, sock: socket.socket, addr, spec: ListenSpec) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            peer_address, peer_port = addr[0].encode(), addr[1]
        else:
            peer_address, peer_port = None, None
        slot = self.take_slot(spec.mode)
        try:
            session = self.make_session(spec, slot, peer_address, peer_port)
        except Exception:  # noqa: BLE001 - a bug: drop this connection, accept on
            log.exception("cannot start a session for a new connection")
            sock.close()
            self.free_slot(slot)
            return
        context = self.tls_contexts.get(spec)
        tls = TlsLayer(context) if context is not None else None
        conn = Conn(self, sock, slot, session, tls)
        self.slots[slot] = conn
        conn.run()

    def take_slot(self, mode: str) -> int:
        """A free slot for a new connection of ``mode``, counted."""
        slot = self.free.pop() if self.free else len(self.slots)
        if slot == len(self.slots):
            self.slots.append(None)
        self.slot_modes[slot] = mode
        self.counts[mode] += 1
        return slot

    def free_slot(self, slot: int) -> str:
        """Give back a slot :meth:`take_slot` handed out; its mode."""
        self.free.append(slot)
        mode = self.slot_modes.pop(slot, "stream")
        self.counts[mode] -= 1
        return mode

    def note_unanswered(self, slot: int) -> None:
        """A request on ``slot`` timed out with no handler answer (logged,
        rate-limited, with the endpoint)."""
        mode = self.slot_modes.get(slot, "stream")
        if self.unanswered is not None:
            self.unanswered.note(mode)
        else:  # counted for the supervisor, which logs for every worker
            self.unanswered_counts[mode] += 1

    def make_session(self, spec: ListenSpec, slot: int, peer_address: bytes | None,
                     peer_port: int | None) -> HttpSession:
        """The session for a new connection on a listener of ``spec``."""
        if spec.mode == "req":
            return ReqSession(
                instance_id=self.instance_id,
                new_id=lambda: self.next_id(slot),
                now=time.monotonic(),
                buffer_size=self.config.buffer_size,
                body_buffer_size=self.config.body_buffer_size,
                req_timeout=float(self.config.req_timeout),
                scheme=b"https" if spec.tls else b"http",
                peer_address=peer_address,
                peer_port=peer_port,
            )
        return HttpSession(
            instance_id=self.instance_id,
            new_id=lambda: self.next_id(slot),
            now=time.monotonic(),
            buffer_size=self.config.buffer_size,
            stream_timeout=float(self.config.stream_timeout),
            scheme=b"https" if spec.tls else b"http",
            peer_address=peer_address,
            peer_port=peer_port,
            compression=self.config.compression,
            messages_max=self.config.messages_max,
            max_message_size=self.config.max_message_size,
        )

    def next_id(self, slot: int) -> bytes:
        rid = b"%d-%d-%x" % (self.index, slot, self.counter)
        self.counter += 1
        if self.moved and rid in self.moved:
            return self.next_id(slot)  # an adopted session has it
        return rid

    # -- the connection registry, for handover and the worker process ----------

    @property
    def is_stopping(self) -> bool:
        """The worker is stopping: it takes no more connections."""
        return self.stopped.done()

    def live_connections(self) -> list[Conn]:
        """Every connection this worker owns and has not closed, by slot."""
        return [conn for conn in self.slots if conn is not None and not conn.closed]

    def install(self, conn: Conn) -> None:
        """Register ``conn`` (built for a slot from :meth:`take_slot`)."""
        self.slots[conn.slot] = conn

    def track_moved(self, conn: Conn, rid: bytes, instance_id: bytes) -> None:
        """``conn`` was adopted from another worker with session id ``rid``
        and ZHTTP address ``instance_id``: route its handler packets here
        (subscribing to that address when it is not this worker's)."""
        self.moved[rid] = conn
        if self.zmq is not None and instance_id != self.instance_id:
            self.zmq.subscribe(instance_id)

    def release(self, conn: Conn) -> None:
        if self.slots[conn.slot] is conn:
            if self.moved and self.moved.get(conn.session.rid) is conn:
                del self.moved[conn.session.rid]
            self.slots[conn.slot] = None
            mode = self.free_slot(conn.slot)
            if self.stopped.done():
                return
            if mode in self.paused_modes:
                self._pause_mode(mode, False)
            if not self.accepting and self.listeners:
                self.set_accepting(True)

    # -- packets --------------------------------------------------------------

    def send_packet(self, packet: Packet, to: bytes | None) -> None:
        payload = encode(packet)
        if self.trace:
            where = ("(req)" if to is REQ_SOCKET else
                     to.decode("utf-8", "replace") if to else "(first)")
            log.log(TRACE, "OUT %s %r", where, payload)
        if to is REQ_SOCKET:
            self.requests += 1
            self.req.send(payload)
        elif to is None:
            self.requests += 1
            self.zmq.send_first(payload)
        elif to:
            self.zmq.send_to(to, payload)
        else:
            log.debug("no handler address for %r, packet dropped", packet.ids)

    def on_message(self, payload: bytes) -> None:
        if self.trace:
            log.log(TRACE, "IN %r", payload)
        try:
            packet = decode(payload)
        except UnknownType as e:
            # Reference 4.5: a packet of unknown type aborts its sessions.
            for ident in e.ids:
                conn = self._route(ident.id)
                if conn is not None:
                    try:
                        conn.session.abort_unknown(str(e))
                    except Exception:  # noqa: BLE001 - a bug in the session: end it alone
                        conn.fail("aborting it on an unknown packet type", e.from_)
                        continue
                    conn.run()
            return
        except PacketError as e:
            log.debug("dropping unparsable packet: %s", e)
            return
        now = time.monotonic()
        for ident in packet.ids:
            conn = self._route(ident.id)
            if conn is not None:
                try:
                    conn.session.receive_packet(packet, ident, now)
                except Exception:  # noqa: BLE001 - a bug in the session: end it alone
                    conn.fail("handling a handler packet", packet.from_)
                    continue
                conn.run()

    def _route(self, rid: bytes) -> Conn | None:
        if self.moved:
            conn = self.moved.get(rid)
            if conn is not None:
                return conn
        if not rid.startswith(self.prefix):
            return None
        rest = rid[len(self.prefix):]
        slot_text, sep, _ = rest.partition(b"-")
        if not sep or not slot_text.isdigit():
            return None
        slot = int(slot_text)
        if slot >= len(self.slots):
            return None
        conn = self.slots[slot]
        if conn is None or conn.session.rid != rid:
            return None
        return conn

    # -- periodic work ----------------------------------------------------------

    def tick(self) -> None:
        self.tick_handle = self.loop.call_later(RESOLUTION, self.tick)
        now = time.monotonic()
        self.timers.expire(now, lambda conn: conn.on_timer())
        self._sweep_keep_alives()

    def _sweep_keep_alives(self) -> None:
        # The sweep walks all maxconn slot positions, used or not, so each
        # session is visited once per KEEP_ALIVE_INTERVAL whatever the load.
        # Adopted connections may take the slots past maxconn.
        slots = self.slots
        size = max(self.maxconn, len(slots))
        batch = self.sweep_batch if size == self.maxconn else \
            max(math.ceil(size / (KEEP_ALIVE_INTERVAL / RESOLUTION)), 1)
        owed: dict[tuple[bytes, bytes], list[Ident]] = defaultdict(list)
        pos = self.sweep_pos
        for _ in range(batch):
            pos = (pos + 1) % size
            conn = slots[pos] if pos < len(slots) else None
            if conn is not None:
                try:
                    entry = conn.session.keep_alive()
                    if entry is not None:
                        owed[entry[0], conn.session.instance_id].append(entry[1])
                except Exception:  # noqa: BLE001 - a bug in the session: end it alone
                    conn.fail("sending keep-alives")
        self.sweep_pos = pos
        self._send_batched(KeepAlive, owed)

    def _send_batched(self, kind: type, owed: dict[tuple[bytes, bytes], list[Ident]]) -> None:
        """One packet per (handler address, our address) and MAX_IDS ids;
        our address is the session's own (an adopted one keeps its)."""
        for (address, origin), idents in owed.items():
            for i in range(0, len(idents), MAX_IDS):
                group = tuple(idents[i:i + MAX_IDS])
                packet = kind(from_=origin, ids=group, id_list=len(group) > 1)
                self.send_packet(packet, address)


def install_stop_signals(loop: asyncio.AbstractEventLoop, worker: Worker) -> None:
    """Condure's stop signals for a worker running on its own: the first
    TERM/INT/QUIT stops it; a second one while stopping exits at once (1)."""

    def on_signal(signame: str) -> None:
        if worker.stopped.done():
            raise SystemExit(1)
        log.info("stopping...")
        worker.stopped.set_result(signame)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        loop.add_signal_handler(sig, on_signal, sig.name)


async def flush_cancels(worker: Worker, budget: float) -> None:
    zmq_io = worker.zmq
    if zmq_io is None:
        return
    # Only the cancels matter now; requests still waiting for a handler are moot.
    deadline = time.monotonic() + budget
    while zmq_io.router_queue and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
