"""Moving live connections between processes (docs/handover.md).

One mechanism serves a worker replacement (reload) and a full restart: a
session at a resumable point is exported as its socket plus a small record
(:mod:`condure.session.records`), and adopted by another
worker, which carries on as if nothing happened.

- :class:`Exporter` runs in the worker that lets go. HTTP connections
  start no new request; one in flight moves once it is at a resumable
  point (condure/session/http_snapshot.py), else it finishes first.
  Req-mode connections likewise, but a request under way always finishes
  first (condure/session/req_snapshot.py).
  WebSocket sessions, and HTTP requests in flight, send ``handoff-start``
  and wait for the handler's ``handoff-proceed`` (within the handoff
  timeout), so the handler holds what it would send.
  The handoff timeout counts the handler's silence, not the time since
  ``handoff-start``: while the handler keeps sending (it is behind, working
  through what was queued ahead of ``handoff-start``), a session waits on,
  up to the drain time (``--drain-timeout``).
  Ready sessions leave in batches (at most 253 descriptors, a bounded
  message size); each socket is kept open here until the supervisor says
  the batch was taken, then our copy is closed (which sends nothing: the
  connection lives on in the other process). A batch the supervisor could
  not place (no new worker took it in time, or condure is stopping) is
  ``returned``: its sessions are rebuilt here from their records and
  closed politely (WebSocket close 1012, or 1001 once condure stops, and
  ``cancel`` to the handler).
- :func:`adopt` runs in the worker that takes over: it rebuilds each
  session in a free slot, keeps the id and ``from`` of a WebSocket or an
  HTTP request in flight (subscribing to that address if it is not its
  own), and resumes it with a keep-alive, which tells the handler to send
  again.

What cannot move is closed politely instead: TLS connections and
WebSockets whose client keeps its compression context (WebSocket close
1012; see ``--compression-context``), or that are still reading a
compressed client message when the handoff timeout is over,
requests still under way when the drain time is over, and WebSockets
whose handler did not answer ``handoff-proceed`` in time, or that did not
reach a resumable point in time (1012; the log line says which). A
WebSocket whose close is under way (``close_wait``) does not move either:
it ends here once the other side's close frame comes, which the handover
waits for within the handoff timeout.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from condure.net.conn import Conn
from condure.net.control import MAX_FDS
from condure.net.limits import peer_host
from condure.session import records
from condure.session.contract import Kind, Session, Settings
from condure.session.records import Record, RecordError
from condure.session.req_record import ReqRecord
from condure.session.resume import restore
from condure.session.websocket import GOING_AWAY, SERVICE_RESTART

if TYPE_CHECKING:
    from condure.worker import Worker

log = logging.getLogger("condure")

MAX_BATCH_BYTES = 48 * 1024  # encoded records in one control message
POLL = 0.02  # seconds between looks at the sessions being moved
SEND_TIMEOUT = 5.0  # a full control socket: wait this long to pass a batch
CONFIRM_GRACE = 5.0  # time for the supervisor to confirm the last batch
# --handoff skip: a session leaves this long after it stopped sending to its
# handler and the worker's own queue for handlers is empty, so that what it
# sent last reaches the handler before the adopting worker's first packet
# (they leave through different sockets).
SETTLE = 0.1


def describe(conn: Conn) -> str:
    """The connection as log lines name it: its slot, the client's address
    and port, and the session id (``slot 1, client 127.0.0.1:41000, id
    0-1-2a``; a Unix-socket client is ``client local``)."""
    session: Session = conn.session
    address = session.peer_address
    if address:
        host = address.decode("ascii", "replace")
        peer = f"[{host}]" if ":" in host else host
        peer += f":{session.peer_port}"
    else:
        peer = "local"
    return f"slot {conn.slot}, client {peer}, id {session.rid.decode('ascii', 'replace')}"


@dataclass(eq=False, slots=True)
class _Moving:
    conn: Conn
    deadline: float  # give up (close politely) at this time
    not_before: float = 0.0  # not exported before this time (SETTLE)
    unanswered: bool = False  # moving without the handler's handoff-proceed
    asked: bool = False  # its handoff with the handler began (the deadline is set)
    closing: bool = False  # a WebSocket whose close is under way: not moving, ends here
    later: bool = False  # waiting for a compressed client message to end (deadline set)


class Exporter:
    """Exports every movable session of ``worker``; ``send(records, fds)``
    passes one batch to the supervisor and returns its number (None if it
    could not be sent: the batch is closed as lost)."""

    def __init__(self, worker: Worker, send: Callable[[list[str], list[int]], int | None], *,
                 handoff_timeout: float, drain_deadline: float, ask: bool = True) -> None:
        self.worker = worker
        self.send = send
        self.handoff_timeout = handoff_timeout
        self.drain_deadline = drain_deadline
        self.ask = ask  # send handoff-start (--handoff; the supervisor decides)
        self.moving: list[_Moving] = []
        # The handler's last sign of life: a packet from it reached this worker.
        self.heard = worker.handler_packets
        self.heard_at = time.monotonic()
        # batch number -> (records, our copies of the sockets), until taken
        self.unconfirmed: dict[int, tuple[list[str], list[socket.socket]]] = {}
        self.closing: list[Conn] = []  # returned sessions, closing politely
        self.close_code = SERVICE_RESTART  # for sessions that cannot move
        self.stopped = False  # condure stops: nothing more is exported
        self.moved = 0  # sessions the supervisor took
        self.closed = 0  # sessions that could not move and were closed politely
        self.lost = 0  # sessions exported but not taken
        # sessions moved without the handler's handoff-proceed, by kind
        self.unanswered: Counter[Kind] = Counter()

    @property
    def done(self) -> bool:
        if self.closing:
            self.closing = [conn for conn in self.closing if not conn.closed]
        return not self.moving and not self.unconfirmed and not self.closing

    def stop(self) -> None:
        """Condure stops during the handover: nothing more is exported. The
        sessions not exported yet stay for the drain (close 1001), and the
        batches the supervisor gives back are closed with 1001 too."""
        self.stopped = True
        self.close_code = GOING_AWAY
        self.moving = []

    def start(self) -> None:
        now = time.monotonic()
        conns = self.worker.live_connections()
        log.debug("handover begins: %d connections", len(conns))
        for conn in conns:
            self._begin(conn, now)

    def _begin(self, conn: Conn, now: float) -> None:
        session: Session = conn.session
        if conn.closing:
            return  # ending on its own (the drain that follows waits for it)
        if not conn.exportable or not session.can_move:
            # TLS: finished or closed by the drain; a WebSocket gets a close
            # frame 1012, so it is logged
            self._give_up(conn, now, "TLS" if session.kind is Kind.WEBSOCKET else None)
            return
        item = _Moving(conn, self.drain_deadline)
        try:
            moving = self._ask(item, now)
        except Exception:  # noqa: BLE001 - a bug in the session: end it alone
            conn.fail("starting a handover")
            return
        if moving:
            self.moving.append(item)

    def _ask(self, item: _Moving, now: float) -> bool:
        """Start the session's handoff if it has not started; False when
        it cannot move after all (it was closed politely)."""
        conn = item.conn
        session: Session = conn.session
        if item.closing:
            return True
        if session.close_wait:
            # Closing (a close frame went one way): it cannot move and ends
            # here once the other side's close frame comes, within the
            # handoff timeout; the handover waits for that, no longer.
            log.debug("%s: closing, not moved (waiting for %s)", describe(conn),
                      session.close_wait)
            item.closing = True
            item.deadline = now + self.handoff_timeout
            return True
        if not session.handing_off:
            if session.begin_handoff(self.ask):
                conn.run()
            elif session.handoff_later:
                # A compressed client message under way: the session reads
                # it to its end and no further, within the handoff timeout.
                if not item.later:
                    item.later = True
                    item.deadline = min(now + self.handoff_timeout, self.drain_deadline)
                    log.debug("%s: moves once the compressed client message under way "
                              "has ended", describe(conn))
                return True
            elif not session.awaiting_handler:
                self._give_up(conn, now, session.handoff_wait)
                return False
            else:
                return True  # a handshake still waiting for its handler: asked later
        if not item.asked and session.handoff_needs_handler:
            # (at once, or for an HTTP request once it is at a resumable point)
            item.asked = True
            item.deadline = now + self.handoff_timeout
            if not self.ask:
                item.not_before = now + SETTLE
                item.unanswered = True
        return True

    def _give_up(self, conn: Conn, now: float, why: str | None = None) -> None:
        """Close the session politely; ``why`` it cannot move, for the log."""
        if why is not None:
            log.info("%s: cannot move (%s); closing it", describe(conn), why)
        session: Session = conn.session
        self.closed += 1
        try:
            session.going_away(now, self.close_code)
        except Exception:  # noqa: BLE001 - a bug in the session: end it alone
            conn.fail("closing it for a handover")
            return
        conn.run()

    def _overdue(self, item: _Moving, now: float) -> bool:
        """Whether to give up on a session not ready by its deadline: a
        handoff waits while the handler was heard from within the handoff
        timeout, up to the drain deadline."""
        if now < item.deadline:
            return False
        session: Session = item.conn.session
        if not session.handoff_needs_handler:
            return True
        extended = self._heard_until()
        if now < extended:
            item.deadline = extended
            return False
        return True

    def _heard_until(self) -> float:
        """How long a wait may go on: a handler heard from is behind, not
        gone, for the handoff timeout after its last packet, up to the drain
        deadline."""
        return min(self.heard_at + self.handoff_timeout, self.drain_deadline)

    def poll(self) -> None:
        """Export what is ready, give up on what is overdue, send batches."""
        now = time.monotonic()
        heard = self.worker.handler_packets
        if heard != self.heard:
            self.heard, self.heard_at = heard, now
        texts: list[str] = []
        socks: list[socket.socket] = []
        size = 0
        still: list[_Moving] = []
        for item in self.moving:
            conn = item.conn
            if conn.closed or conn.closing:
                continue  # it ended on its own (a close finished, say)
            session: Session = conn.session
            try:
                # new, an upgrade that was under way, or a handshake now answered
                if not self._ask(item, now):
                    continue
                if item.closing:  # (a closed one was left out above)
                    if self._overdue(item, now):
                        self._give_up(conn, now, session.handoff_wait)
                    else:
                        still.append(item)
                    continue
                if item.not_before:  # moving without the handler's answer: settling
                    settled = self._settled(item, now)
                    if settled is None:
                        self._give_up(conn, now, "the handler has not taken what this "
                                      "worker sent it")
                        continue
                    if not settled:
                        still.append(item)
                        continue
                record = self._export(conn, now)
                overdue = record is None and self._overdue(item, now)
                # The handler did not answer handoff-start (Pushpin 1.36 does
                # not implement it): the session moves without its answer.
                unanswered = overdue and session.move_unanswered()
            except Exception:  # noqa: BLE001 - a bug in the session: end it alone
                conn.fail("preparing a handover")
                continue
            if record is None:
                if unanswered:
                    log.debug("%s: no handoff-proceed in time; moving it without",
                              describe(conn))
                    item.deadline = now + self.handoff_timeout
                    item.not_before = now + SETTLE
                    item.unanswered = True
                    still.append(item)
                elif overdue:
                    why = ("the client does not take what was written to it" if conn.out
                           else session.handoff_wait)
                    self._give_up(conn, now, why)
                else:
                    still.append(item)
                continue
            if item.unanswered:
                self.unanswered[session.kind] += 1
            text = records.encode(record)
            if len(text) > MAX_BATCH_BYTES:
                log.info("%s: session record too large to move; closing it", describe(conn))
                self._give_up(conn, now)
                continue
            if len(socks) >= MAX_FDS or size + len(text) > MAX_BATCH_BYTES:
                self._send(texts, socks)
                texts, socks, size = [], [], 0
            texts.append(text)
            socks.append(conn.detach())
            size += len(text)
        self.moving = still
        if socks:
            self._send(texts, socks)

    def _settled(self, item: _Moving, now: float) -> bool | None:
        """Whether a session moving without the handler's answer may leave:
        once the worker's own queue for handlers is empty (its last packets
        are on their way: the adopting worker must not send the handler
        later ones first, and whatever is left here is lost when this
        worker exits), then SETTLE. While the queue stays full past the
        session's deadline it waits as long as the handler is heard from
        (it is behind, not gone), up to the drain deadline; None: it cannot
        move."""
        zq = self.worker.zmq
        queued = zq is not None and zq.router_queue
        if queued:
            item.not_before = now + SETTLE
        if now >= item.not_before:
            return True
        if not queued or now < item.deadline:
            return False
        return False if now < self._heard_until() else None

    def _export(self, conn: Conn, now: float) -> Record | None:
        """The session's record if it is ready to leave now, else None."""
        if conn.out or conn.closing:
            return None
        session: Session = conn.session
        if not session.ready_to_export:
            return None
        return session.export_record(now)

    def _send(self, records: list[str], socks: list[socket.socket]) -> None:
        batch = self.send(records, [s.fileno() for s in socks])
        if batch is None:
            self.lost += len(socks)
            for sock in socks:
                sock.close()
            return
        self.unconfirmed[batch] = (records, socks)

    def taken(self, batch: int, lost: int = 0) -> None:
        """The supervisor has the batch (and its descriptors): close ours."""
        _, socks = self.unconfirmed.pop(batch, ([], []))
        for sock in socks:
            sock.close()
        self.lost += lost
        self.moved += len(socks) - lost

    def returned(self, batch: int) -> None:
        """The supervisor could not place the batch: its sessions come back
        from their records and are closed politely here."""
        texts, socks = self.unconfirmed.pop(batch, ([], []))
        if not socks:
            return
        log.info("handover: %d connections could not be passed on; closing them", len(socks))
        now = time.monotonic()
        settings = _settings(self.worker)
        for text, sock in zip(texts, socks, strict=True):
            conn = _rebuild(self.worker, text, sock, settings, now)
            if conn is None:
                self.lost += 1
                continue
            self._give_up(conn, now)
            self.closing.append(conn)

    def abandon(self) -> None:
        """The supervisor is gone: whatever was not confirmed is lost."""
        for batch in list(self.unconfirmed):
            self.taken(batch, len(self.unconfirmed[batch][1]))


def _settings(worker: Worker) -> Settings:
    config = worker.config
    return Settings(
        buffer_size=config.buffer_size, stream_timeout=float(config.stream_timeout),
        compression=config.compression, deflate_context=config.compression_context,
        messages_max=config.messages_max,
        max_message_size=config.max_message_size, read_limits=worker.conn_limits.read,
        body_buffer_size=config.body_buffer_size, req_timeout=float(config.req_timeout))


def _rebuild(worker: Worker, text: object, sock: socket.socket, settings: Settings,
             now: float) -> Conn | None:
    """The connection of one exported session, installed in ``worker``
    (nothing sent yet); None (and the socket closed) if it cannot be."""
    slot = None
    try:
        record = records.decode(text)
        req = isinstance(record, ReqRecord)
        if req and worker.req is None:  # (a restart whose req listeners went away)
            raise RecordError("a req-mode connection, and req mode is not in use here")
        slot = worker.take_slot("req" if req else "stream")
        session = restore(record, settings=settings, instance_id=worker.instance_id,
                          new_id=partial(worker.next_id, slot), now=now)
    except Exception as e:
        if isinstance(e, RecordError):
            log.warning("cannot adopt a connection: %s", e)
        else:
            log.exception("cannot adopt a connection")
        sock.close()
        if slot is not None:
            worker.free_slot(slot)
        return None
    sock.setblocking(False)
    conn = Conn(worker, sock, slot, session, None)
    worker.install(conn)
    # it counts against --max-conns-per-ip (never refused; net/limits.py)
    worker.conn_limits.adopted(slot, peer_host(sock, session.peer_address))
    if record.keeps_id:
        worker.track_moved(conn, session.rid, session.instance_id)
    return conn


def adopt(worker: Worker, texts: list[object], fds: list[int]) -> tuple[int, int] | None:
    """Adopt exported sessions (record, descriptor pairs) into ``worker``;
    (adopted, failed). A session that cannot be rebuilt is closed. None
    when ``worker`` is stopping: it takes none (our copies are closed; the
    supervisor still has its own and places the batch elsewhere)."""
    if worker.is_stopping:
        for fd in fds:
            socket.close(fd)
        return None
    adopted = failed = 0
    now = time.monotonic()
    settings = _settings(worker)
    for text, fd in zip(texts, fds, strict=False):
        conn = _rebuild(worker, text, socket.socket(fileno=fd), settings, now)
        if conn is None:
            failed += 1
            continue
        try:
            session = conn.session
            session.resume()
            if worker.moved.get(session.rid) is conn:  # it kept its id: its handler's
                # packets that reached us before it did (net/parked.py),
                # each written before the next as on_message does: a
                # WebSocket takes at most --messages-max unwritten messages
                for packet, ident in worker.parked.take(session.rid):
                    session.receive_packet(packet, ident, now)
                    conn.run()
        except Exception:  # noqa: BLE001 - a bug in the session: end it alone
            conn.fail("resuming it")
            failed += 1
            continue
        conn.run()
        adopted += 1
    for fd in fds[len(texts):]:
        socket.close(fd)
    return adopted, failed
