"""The client role in one worker: outgoing exchanges for handlers.

:class:`Clients` is the worker's :class:`condure.net.clientconn.ClientHost`.
It owns the client-role ZeroMQ sockets (:mod:`condure.net.zmqclient`), the
origin connector and its pool, and the registry of exchanges:

- a stream-mode first packet that passes the checks of reference 6.2
  step 1 (``first_packet_problem``) opens a session
  (``client_kinds.stream_session``) keyed by (handler address, id); one
  that does not is dropped with a warning and nothing is sent back;
- later packets reach their exchange by (handler ``from``, id); ids this
  worker does not own are ignored silently (in bind mode every later
  packet reaches every worker);
- a req-mode request gets a :class:`ClientReqSession`, answered on its
  envelope.

Keep-alives: each stream exchange is visited every KEEP_ALIVE_INTERVAL
(one packet per handler address, MAX_IDS ids each); at a stop each one
owes the handler a cancel, batched the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from condure.config import Config
from condure.log import TRACE, trace_enabled
from condure.net.clientconn import ClientConn
from condure.net.outbound import Connector
from condure.net.pool import Pool, capacity_for
from condure.net.timers import TimerWheel
from condure.net.zmqclient import ClientSockets
from condure.session.client_kinds import stream_session
from condure.session.client_req import ClientReqSession
from condure.session.outbound import first_packet_problem
from condure.zhttp import PacketError, UnknownType, decode, encode
from condure.zhttp.packets import Cancel, Data, Error, Ident, KeepAlive, Packet

log = logging.getLogger("condure.outbound")

KEEP_ALIVE_INTERVAL = 45.0  # as for server-role sessions (reference 6.2 step 11)
MAX_IDS = 128  # ids per batched keep-alive/cancel packet

Key = tuple[bytes, bytes]  # (handler address, id)


def batched(kind: type, from_: bytes, idents: list[Ident]) -> Iterator[Packet]:
    """``kind`` packets (keep-alive or cancel) from ``from_`` carrying
    ``idents``, MAX_IDS ids each."""
    for i in range(0, len(idents), MAX_IDS):
        group = tuple(idents[i:i + MAX_IDS])
        yield kind(from_=from_, ids=group, id_list=len(group) > 1)


class Clients:
    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop, *,
                 instance_id: bytes, zmq_spec: dict[str, Any] | None = None,
                 on_handler_fault: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.on_handler_fault = on_handler_fault  # the worker's throttled warning
        self._loop = loop
        # Bind mode under the supervisor: handlers address later packets to
        # the public ROUTER, whose identity is --id (docs/supervisor.md).
        relayed = bool(zmq_spec and "zserver_stream" in zmq_spec)
        self.from_ = config.id.encode() if relayed else instance_id
        self._pool = Pool(loop, capacity=max(capacity_for(
            config.req_maxconn, config.stream_maxconn, config.workers), 1))
        self._connector = Connector(loop, deny_internal=config.deny_out_internal,
                                    pool=self._pool, read_size=max(config.buffer_size, 1))
        self.streams: dict[Key, ClientConn] = {}
        self.reqs: set[ClientConn] = set()
        self.keys: dict[ClientConn, Key] = {}
        self.due: dict[ClientConn, float] = {}  # next keep-alive, in due order
        self.timers: TimerWheel[ClientConn] = TimerWheel()
        self.taking = True
        self.packets_out = 0
        self.sockets: ClientSockets | None = None
        self.zmq_spec = zmq_spec
        self.trace = trace_enabled()  # checked once: packet logging is costly

    def start(self) -> ClientSockets:
        """Open the sockets (ZMQError or ConfigError on failure)."""
        self.sockets = ClientSockets(self.config, self._loop, from_=self.from_,
                                     on_first=self.on_first, on_later=self.on_later,
                                     on_request=self.on_request, zmq_spec=self.zmq_spec)
        return self.sockets

    def __len__(self) -> int:
        return len(self.streams) + len(self.reqs)

    def exchanges(self) -> list[tuple[bytes, ClientConn]]:
        """Every exchange under way with its id (b"" in req mode, whose
        replies go by envelope), for ``condure ctl connections``."""
        found = [(key[1], conn) for key, conn in self.streams.items()]
        found.extend((b"", conn) for conn in self.reqs)
        return found

    # -- ClientHost -----------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def connector(self) -> Connector:
        return self._connector

    @property
    def pool(self) -> Pool:
        return self._pool

    def send_packet(self, packet: Packet, to: bytes | str | None) -> None:
        if not isinstance(to, bytes) or not to or self.sockets is None:
            log.debug("no handler address for %r, packet dropped", packet.ids)
            return
        self.packets_out += 1
        payload = encode(packet)
        if self.trace:
            log.log(TRACE, "OUT %s %r", to.decode("utf-8", "replace"), payload)
        self.sockets.publish(to, payload)

    def reply(self, envelope: object, packet: Data | Error) -> None:
        if self.sockets is not None:
            self.packets_out += 1
            self.sockets.reply(envelope, encode(packet, ext_multi=False))

    def schedule(self, conn: ClientConn) -> None:
        self.timers.schedule(conn)

    def note_handler_fault(self, reason: str) -> None:
        if self.on_handler_fault is not None:
            self.on_handler_fault(reason)
        else:
            log.debug("ended an exchange whose handler broke a rule: %s", reason)

    def release(self, conn: ClientConn) -> None:
        key = self.keys.pop(conn, None)
        if key is not None and self.streams.get(key) is conn:
            del self.streams[key]
        self.reqs.discard(conn)
        self.due.pop(conn, None)

    # -- packets from handlers ----------------------------------------------------

    def _decode(self, payload: bytes, *, later: bool = False) -> Packet | None:
        """The packet, or None. A later packet of unknown type ends the
        sessions it names, as in the server role (reference 4.5)."""
        if self.trace:
            log.log(TRACE, "IN %r", payload)
        try:
            return decode(payload)
        except UnknownType as e:
            log.debug("handler packet of unknown type for %d session(s): %s", len(e.ids), e)
            if later:
                for ident in e.ids:
                    conn = self.streams.get((e.from_, ident.id))
                    if conn is not None:
                        conn.abort_unknown(str(e))
            return None
        except PacketError as e:
            log.debug("dropping a handler packet: %s", e)
            return None

    def on_first(self, payload: bytes) -> None:
        packet = self._decode(payload)
        if packet is None:
            return
        problem = first_packet_problem(packet, req_mode=False)
        if problem is None and not self.taking:
            problem = "this worker is stopping"
        if problem is None and len(self.streams) >= self.config.stream_maxconn:
            problem = "too many outgoing sessions"
        key = (packet.from_, packet.ids[0].id) if problem is None else (b"", b"")
        if problem is None and key in self.streams:
            problem = "a session with this id is open already"
        if problem is not None:
            log.warning("dropping a first packet: %s", problem)
            return
        assert isinstance(packet, Data)  # first_packet_problem checked it
        try:
            session = stream_session(
                packet, instance_id=self.from_, now=time.monotonic(),
                buffer_size=self.config.buffer_size,
                stream_timeout=float(self.config.stream_timeout),
                compression=self.config.compression, messages_max=self.config.messages_max)
        except ValueError as e:
            log.warning("dropping a first packet: %s", e)
            return
        conn = ClientConn(self, session)
        self.streams[key] = conn
        self.keys[conn] = key
        self.due[conn] = time.monotonic() + KEEP_ALIVE_INTERVAL
        conn.run()

    def on_later(self, payload: bytes) -> None:
        packet = self._decode(payload, later=True)
        if packet is None:
            return
        now = time.monotonic()
        for ident in packet.ids:
            conn = self.streams.get((packet.from_, ident.id))
            if conn is not None:  # else another worker's (or nobody's): ignored
                conn.receive_packet(packet, ident, now)

    def on_request(self, envelope: object, payload: bytes) -> None:
        packet = self._decode(payload)
        if packet is None:
            return
        problem = first_packet_problem(packet, req_mode=True)
        if problem is None and len(self.reqs) >= self.config.req_maxconn:
            problem = "too many outgoing requests"
        if problem is not None:
            log.warning("dropping a req-mode request: %s", problem)
            return
        assert isinstance(packet, Data)
        try:
            session = ClientReqSession(packet, now=time.monotonic(),
                                       buffer_size=self.config.buffer_size,
                                       body_buffer_size=self.config.body_buffer_size,
                                       req_timeout=float(self.config.req_timeout))
        except ValueError as e:
            log.warning("dropping a req-mode request: %s", e)
            return
        conn = ClientConn(self, session, envelope)
        self.reqs.add(conn)
        conn.run()

    # -- periodic work and stopping ---------------------------------------------

    def tick(self, now: float) -> None:
        """Fire timers and send the keep-alives that are due."""
        self.timers.expire(now, lambda conn: conn.on_timer())
        owed: dict[bytes, list[Ident]] = defaultdict(list)
        due = self.due
        while due:
            conn, when = next(iter(due.items()))
            if when > now:
                break
            del due[conn]
            entry = conn.keep_alive()
            if entry is not None and not conn.closed:
                owed[entry[0]].append(entry[1])
                due[conn] = now + KEEP_ALIVE_INTERVAL
        self._send_batched(KeepAlive, owed)

    def stop_taking(self) -> None:
        """No new exchanges; those under way go on."""
        self.taking = False
        if self.sockets is not None:
            self.sockets.stop_taking()

    def stop(self) -> None:
        """Condure stops: every exchange ends now; handlers get the cancels
        they are owed (batched)."""
        self.taking = False
        owed: dict[bytes, list[Ident]] = defaultdict(list)
        for conn in list(self.streams.values()) + list(self.reqs):
            entry = conn.shutdown()
            if entry is not None:
                owed[entry[0]].append(entry[1])
            conn.abort()
        self._send_batched(Cancel, owed)
        self._pool.close()

    @property
    def pending(self) -> bool:
        return self.sockets is not None and self.sockets.pending

    def close(self) -> None:
        if self.sockets is not None:
            self.sockets.close()

    def _send_batched(self, kind: type, owed: dict[bytes, list[Ident]]) -> None:
        for address, idents in owed.items():
            for packet in batched(kind, self.from_, idents):
                self.send_packet(packet, address)
