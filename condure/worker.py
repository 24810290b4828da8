"""One worker process: listeners, ZeroMQ sockets and the session registry.

The worker accepts client connections into numbered slots
(``condure/slots.py``: the registry and the ids), gives each an HTTP
session, routes handler packets to sessions by id, sweeps keep-alives and
fires timers from one 100 ms tick. Connections reach it through
:class:`condure.net.conn.ConnHost`, which it implements.

Every call into a session is guarded: a session that raises (a bug) ends
its own connection (``Conn.fail``) and every loop here goes on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from condure.clients import Clients
from condure.config import Config, ListenSpec
from condure.log import TRACE, trace_enabled
from condure.net import conn_stop, listeners
from condure.net.certs import CertStore
from condure.net.conn import Conn
from condure.net.limits import ConnLimits
from condure.net.parked import Parked
from condure.net.timers import RESOLUTION, TimerWheel
from condure.net.tls import TlsLayer
from condure.net.unanswered import Throttled, UnansweredLog
from condure.net.zmqio import StreamSockets
from condure.net.zmqreq import ReqSocket, routing_id
from condure.session.contract import Session
from condure.session.http import HttpSession
from condure.session.req import REQ_SOCKET, ReqSession
from condure.slots import Slots
from condure.sweep import KeepAliveSweep, Owed
from condure.zhttp import PacketError, UnknownType, decode, encode
from condure.zhttp.packets import Cancel, KeepAlive, Packet

log = logging.getLogger("condure")

ACCEPT_BATCH = 64  # connections accepted per wakeup
# On a socket every worker accepts on (--accept-mode shared), each worker
# takes only a few per wakeup, so one that woke first does not drain the
# whole backlog while the others sit idle (docs/accept-modes.md).
SHARED_ACCEPT_BUDGET = 4
# Accept errors that mean "out of resources": back off instead of spinning
# (the connection stays in the backlog and is retried).
_ACCEPT_BACKOFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_BACKOFF = 0.1


class Worker(Slots):
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, index: int = 0, *,
                 listen_socks: list[tuple[socket.socket, ListenSpec]] | None = None,
                 address: str | None = None, zmq_spec: dict[str, Any] | None = None,
                 first_id: int = 0, log_unanswered: bool = True) -> None:
        """``first_id``: where the id counter starts (a worker process keeps
        ids unique across restarts of its slot); ``log_unanswered``: log
        unanswered requests here, else count them for :meth:`take_stats`."""
        super().__init__(index, first_id)
        self.config = config
        # The worker spec's "zmq" part (docs/supervisor.md); None: the
        # configured endpoints, bound or connected as the options say.
        self.zmq_spec = zmq_spec
        # Listening sockets handed over by the supervisor; None: bind our own.
        self.given_listeners = listen_socks
        self.requests = 0  # request packets sent, for the supervisor's stats
        # Packets from handlers for this worker's own sessions, keep-alives
        # aside (a handover's sign of progress; packets for ids it does not
        # have, such as those of a reload's other worker, do not count).
        self.handler_packets = 0
        self.parked = Parked()  # handler packets for ids it does not have (yet)
        self.loop = loop
        # Our ZHTTP "from" and SUB prefix: --id, or --id.<index> with workers.
        self.instance_id = (address if address is not None else config.id).encode()
        self.read_size = max(config.buffer_size, 1)
        share = max(config.workers, 1)  # each worker its share, as Condure's threads
        self.limits = {"stream": max(config.stream_maxconn // share, 1),
                       "req": max(config.req_maxconn // share, 1)}
        self.paused_modes: set[str] = set()
        self.conn_limits = ConnLimits(config)  # docs/operations.md, "Limits"
        self.maxconn = sum(self.limits[m] for m in {spec.mode for spec in config.listen}) or 1
        self.timers: TimerWheel[Conn] = TimerWheel()
        self.listeners: list[tuple[socket.socket, ListenSpec]] = []
        self.certs = CertStore(config.tls_identities_dir)
        self.tls_contexts: dict[ListenSpec, ssl.SSLContext] = {}
        self.accepting = False
        self.zmq: StreamSockets | None = None
        self.req: ReqSocket | None = None
        self.sweep = KeepAliveSweep(self.maxconn, time.monotonic())
        self.tick_handle: asyncio.TimerHandle | None = None
        # Done (with the reason) once the worker stops taking connections
        # (mark_stopping); a runner may await it.
        self.stopped: asyncio.Future[str] = loop.create_future()
        self.trace = trace_enabled()  # checked once: packet logging is costly
        self.unanswered = UnansweredLog(config, time.monotonic) if log_unanswered else None
        self.unreadable = Throttled("dropped a packet from a handler that is not valid ZHTTP",
                                    time.monotonic)
        self.handler_faults = Throttled("ended a connection whose handler broke a rule of ZHTTP "
                                        "or HTTP", time.monotonic)
        self.unanswered_counts: defaultdict[str, int] = defaultdict(int)
        # The client role (condure/clients.py), with --zserver-stream/-req.
        self.clients = (Clients(config, loop, instance_id=self.instance_id, zmq_spec=zmq_spec,
                                on_handler_fault=self.note_handler_fault)
                        if config.zserver_stream or config.zserver_req else None)

    # -- start and stop -----------------------------------------------------

    async def start(self) -> None:
        """Open the ZeroMQ sockets and the listeners; accepting begins once
        the handlers' packets can reach us (see ``wait_subscribed``)."""
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
            for endpoint in self.req.endpoints:
                log.log(level, "zhttp client %s %s", verb, endpoint)
        if self.config.uses_stream:
            self.zmq = StreamSockets(self.config, self.loop, self.on_message,
                                     instance_id=self.instance_id, zmq_spec=self.zmq_spec)
            self.zmq.on_congestion = self._on_congestion
            # With several workers each has its own `from` (<id>.<n>); a handler
            # that answers --id itself reaches them all, and the id's owner acts.
            self.zmq.subscribe(self.config.id.encode())
            for out, out_stream, in_ in self.zmq.endpoints:
                log.log(level, "zhttp client %s %s %s %s", verb, out, out_stream, in_)
            if not await self.zmq.wait_subscribed():
                log.warning("no connection to the supervisor's proxy yet; accepting anyway")
        if self.clients is not None:
            sockets = self.clients.start()
            for line in sockets.endpoints:
                log.info(line, "connect" if self.config.zserver_connect else "bind")
        for sock, spec in self._listen_sockets():
            self.listeners.append((sock, spec))
            if spec.tls and not spec.is_local:
                self.tls_contexts[spec] = self.certs.listener_context(spec.default_cert)
            log.info("listening on %s%s", listeners.describe(sock, spec),
                     " (tls)" if spec in self.tls_contexts else "")
        self.set_accepting(True)
        self.tick_handle = self.loop.call_later(RESOLUTION, self.tick)

    def _listen_sockets(self) -> Iterator[tuple[socket.socket, ListenSpec]]:
        if self.given_listeners is not None:
            yield from self.given_listeners
            return
        for spec in self.config.listen:
            yield listeners.bind(spec), spec  # ListenError: startup fails with its message

    def stop(self) -> None:
        """Condure's shutdown: cancel every session a handler knows about
        (batched per handler), close the connections (``Conn.abort``, then
        :meth:`settle`) and the listeners."""
        self.set_accepting(False)
        owed = Owed()
        for conn in self.slots:
            if conn is None:
                continue
            owed.add(conn, conn.session.shutdown, "stopping")
            conn.abort()
        self._send_owed(Cancel, owed)
        if self.clients is not None:
            self.clients.stop()
        if self.tick_handle is not None:
            self.tick_handle.cancel()
        self.close_listeners()

    def close_listeners(self) -> None:
        for sock, spec in self.listeners:
            listeners.close(sock, spec)

    def close(self) -> None:
        """Close the ZeroMQ sockets (after :meth:`stop` and a flush)."""
        if self.zmq is not None:
            self.zmq.close()
        if self.req is not None:
            self.req.close()
        if self.clients is not None:
            self.clients.close()

    def mark_stopping(self, reason: str) -> None:
        """From now on the worker takes no connection (``is_stopping``)."""
        if not self.stopped.done():
            self.stopped.set_result(reason)
            if self.zmq is not None and self.zmq.congested:  # reads resume (holds_reads)
                self._tell_reads_held(False)
        if self.clients is not None:
            self.clients.stop_taking()  # exchanges under way finish

    async def settle(self, budget: float) -> None:
        """After :meth:`stop`: run until its connections have ended (within
        conn_stop.STOP_LINGER) and the packets queued for handlers (its
        cancels) have left (within ``budget`` seconds)."""
        zmq_io, clients = self.zmq, self.clients
        await conn_stop.settle(self.live_connections, self.timers, lambda: bool(
            (zmq_io is not None and zmq_io.router_queue)
            or (clients is not None and clients.pending)), budget)

    def take_stats(self) -> dict[str, Any]:
        """Connections now, request packets sent so far and, when counted
        here, unanswered requests by mode since the last call."""
        outgoing = len(self.clients) if self.clients is not None else 0
        stats: dict[str, Any] = {"connections": sum(self.counts.values()) + outgoing,
                                 "requests": self.requests, "limits": self.conn_limits.stats()}
        if self.zmq is not None:  # packets waiting for handlers (condure ctl status)
            stats["queues"] = {"router": self.zmq.router_queues.queued,
                               "push": len(self.zmq.push_queue)}
        if self.unanswered_counts:
            stats["unanswered"] = dict(self.unanswered_counts)
            self.unanswered_counts.clear()
        return stats

    # -- accepting ------------------------------------------------------------

    def set_accepting(self, on: bool) -> None:
        if on == self.accepting or (on and self.stopped.done()):
            return  # (a stopping worker's listeners are closed: an accept backoff ending is late)
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
                self.conn_limits.maxconn_full += 1
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

    def _adopt_socket(self, sock: socket.socket, addr: Any, spec: ListenSpec) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            peer_address, peer_port = addr[0].encode(), addr[1]
        else:
            peer_address, peer_port = None, None
        slot = self.take_slot(spec.mode)
        if not self.conn_limits.admit(slot, addr[0] if peer_address else None):
            sock.close()  # --max-conns-per-ip
            self.free_slot(slot)
            return
        try:
            session = self.make_session(spec, slot, peer_address, peer_port)
        except Exception:
            log.exception("cannot start a session for a new connection")
            sock.close()
            self.conn_limits.release(slot)
            self.free_slot(slot)
            return
        context = self.tls_contexts.get(spec)
        tls = TlsLayer(context) if context is not None else None
        conn = Conn(self, sock, slot, session, tls)
        self.install(conn)
        conn.run()

    def schedule(self, conn: Conn) -> None:
        """File ``conn`` in the timer wheel for its deadline."""
        self.timers.schedule(conn)

    def note_handler_fault(self, reason: str) -> None:
        """A session ended because its handler broke a rule (logged, throttled)."""
        self.handler_faults.note(reason)

    def note_unanswered(self, slot: int) -> None:
        """A request on ``slot`` timed out with no handler answer (logged,
        rate-limited, with the endpoint)."""
        mode = self.slot_modes.get(slot, "stream")
        if self.unanswered is not None:
            self.unanswered.note(mode)
        else:  # counted for the supervisor, which logs for every worker
            self.unanswered_counts[mode] += 1

    def make_session(self, spec: ListenSpec, slot: int, peer_address: bytes | None,
                     peer_port: int | None) -> Session:
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
            deflate_context=self.config.compression_context,
            read_limits=self.conn_limits.read,
            messages_max=self.config.messages_max,
            max_message_size=self.config.max_message_size,
        )

    # -- the connection registry, for handover and the worker process ----------

    @property
    def is_stopping(self) -> bool:
        """The worker is stopping: it takes no more connections."""
        return self.stopped.done()

    @property
    def holds_reads(self) -> bool:
        """Packets for handlers pile up (net/zmqio.py): connections stop
        reading from clients, except while the worker stops or hands over
        (sessions that close or move must read on)."""
        zmq = self.zmq
        return zmq is not None and zmq.congested and not self.stopped.done()

    def _on_congestion(self, on: bool) -> None:
        log.debug("packets for handlers %s; %s reading from clients",
                  "pile up" if on else "drained", "stop" if on else "resume")
        if not self.stopped.done():  # a stopping worker reads on (holds_reads)
            self._tell_reads_held(on)

    def _tell_reads_held(self, held: bool) -> None:
        for conn in self.live_connections():
            conn.note_reads_held(held)

    def track_moved(self, conn: Conn, rid: bytes, instance_id: bytes) -> None:
        """``conn`` was adopted from another worker with session id ``rid``
        and ZHTTP address ``instance_id``: route its handler packets here
        (subscribing to that address when it is not this worker's)."""
        self.track(conn, rid)
        if self.zmq is not None and instance_id != self.instance_id:
            self.zmq.subscribe(instance_id)

    def release(self, conn: Conn) -> None:
        mode = self.unregister(conn)
        if mode is not None:
            self.conn_limits.release(conn.slot)
        if mode is None or self.stopped.done():
            return
        if mode in self.paused_modes:
            self._pause_mode(mode, False)
        if not self.accepting and self.listeners:
            self.set_accepting(True)

    # -- packets --------------------------------------------------------------

    def send_packet(self, packet: Packet, to: bytes | str | None,
                    wire: bytes | None = None) -> None:
        payload = encode(packet) if wire is None else wire
        if self.trace:
            where = ("(req)" if to is REQ_SOCKET else
                     to.decode("utf-8", "replace") if isinstance(to, bytes) and to else "(first)")
            log.log(TRACE, "OUT %s %r", where, payload)
        if to is REQ_SOCKET:
            self.requests += 1
            assert self.req is not None  # req sessions exist only with a req socket
            self.req.send(payload)
        elif to is None:
            self.requests += 1
            assert self.zmq is not None  # stream sessions exist only with stream sockets
            self.zmq.send_first(payload)
        elif isinstance(to, bytes) and to:
            assert self.zmq is not None
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
                conn = self.route(ident.id)
                if conn is not None:
                    self.handler_packets += 1
                    try:
                        conn.session.abort_unknown(str(e))
                    except Exception:  # noqa: BLE001 - a bug in the session: end it alone
                        conn.fail("aborting it on an unknown packet type", e.from_)
                        continue
                    conn.run()
            return
        except PacketError as e:
            # Dropped, as Condure does (reference 4.1), but not in silence:
            # a session may be left waiting for a packet that never comes.
            self.unreadable.note(str(e))
            return
        now = time.monotonic()
        progress = type(packet) is not KeepAlive  # (Pushpin's keep-alives say nothing)
        for ident in packet.ids:
            conn = self.route(ident.id)
            if conn is not None:
                self.handler_packets += progress
                try:
                    conn.session.receive_packet(packet, ident, now)
                except Exception:  # noqa: BLE001 - a bug in the session: end it alone
                    conn.fail("handling a handler packet", packet.from_)
                    continue
                conn.run()
            else:  # perhaps for a session on its way here (net/parked.py)
                self.parked.park(packet, ident, len(payload), now)

    # -- periodic work ----------------------------------------------------------

    def tick(self) -> None:
        self.tick_handle = self.loop.call_later(RESOLUTION, self.tick)
        now = time.monotonic()
        self.timers.expire(now, lambda conn: conn.on_timer())
        self._sweep_keep_alives(now)
        if self.clients is not None:
            self.clients.tick(now)

    def _sweep_keep_alives(self, now: float) -> None:
        owed = Owed()
        for conn in self.sweep.visit(self.slots, now):
            owed.add(conn, conn.session.keep_alive, "sending keep-alives")
        self._send_owed(KeepAlive, owed)

    def _send_owed(self, kind: type, owed: Owed) -> None:
        for packet, address in owed.packets(kind):
            self.send_packet(packet, address)
