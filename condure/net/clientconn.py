"""The adapter between one client session and its origin connection.

A :class:`ClientConn` owns one client session
(:mod:`condure.session.client_contract`) and, while the session holds one,
one :class:`~condure.net.outconn.OutboundConn`. Every entry point has the
rhythm of net/conn.py: feed the session, drain ``take_actions()`` and
execute the actions in order, then re-check ``wants_read`` for the origin
and re-file the timer (``host.schedule``) for ``session.deadline``.

The actions:

- ``Connect(target)``: the session's target becomes the connector's
  (:func:`net_target`, the one place the two are mapped) and
  ``connector.connect`` runs in a task: it resolves, applies the deny list,
  takes a live pooled connection when there is one (the pool needs the
  resolved address, so the look-up cannot come before resolution; staleness
  is checked by the pool) and otherwise connects. Success:
  ``session.connected``; :class:`~condure.net.outbound.OutboundError`:
  ``session.connect_failed`` with its condition (:func:`condition_of`).
- ``Write``: to the origin; when the origin connection's queue empties (at
  once or later), ``session.output_flushed``.
- ``Release(persistent)``: the connection goes to ``host.pool`` (which
  closes it if it is not reusable after all), else it is closed.
- ``Send``: ``host.send_packet``; ``Reply``: ``host.reply`` with the
  request's envelope (req mode).
- ``Close``: the origin connection (if any) is closed, a pending connect is
  cancelled (which closes its socket), and ``host.release(self)``; one for
  a handler's fault is reported first (``host.note_handler_fault``).

A session that raises (a bug in condure) costs this exchange only: every
call into it is guarded; :meth:`ClientConn.fail` logs the traceback once,
tells the handler what it is owed (see :func:`last_words`), drops the
origin connection and releases; the broken session is not called again.
The host must reach the session only through this adapter
(:meth:`ClientConn.keep_alive`, :meth:`ClientConn.shutdown`), which
checks for that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from condure.net.outbound import Connector, OutboundError
from condure.net.outbound import Target as NetTarget
from condure.net.outconn import OutboundConn
from condure.net.pool import Pool
from condure.session import outbound as rules
from condure.session.client_contract import (
    ClientAction,
    ClientPhase,
    ClientSession,
    Connect,
    Release,
    Reply,
)
from condure.session.contract import Close, Send, Write
from condure.session.outbound import Condition
from condure.session.peer import MAX_FROM
from condure.zhttp.packets import Cancel, Data, Error, Ident, Packet

log = logging.getLogger("condure.outbound")

_CONDITIONS = {c.value: c for c in Condition}
_MAX_SEQ = 0xFFFFFFFF


class ClientHost(Protocol):
    """The worker, as an outgoing exchange sees it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop connects run in (origin connections register with it)."""

    @property
    def connector(self) -> Connector:
        """Makes origin connections (and takes pooled ones)."""

    @property
    def pool(self) -> Pool:
        """Where persistent origin connections go back to: the connector's
        own (``connector.pool``), which it takes reusable ones from."""

    def send_packet(self, packet: Packet, to: bytes | str | None) -> None:
        """Publish a packet to the handler at address ``to`` (stream mode)."""

    def reply(self, envelope: object, packet: Data | Error) -> None:
        """Req mode: answer the request that came with ``envelope``."""

    def schedule(self, conn: ClientConn) -> None:
        """(Re-)file ``conn`` for its ``deadline``; ``conn.on_timer()`` is
        called when it passes."""

    def release(self, conn: ClientConn) -> None:
        """``conn`` is over: forget it."""

    def note_handler_fault(self, reason: str) -> None:
        """An exchange ended because its handler broke a rule; ``reason``
        says which (the worker warns, throttled)."""


def net_target(target: rules.Target) -> NetTarget:
    """The connector's view of a session's target. The session always
    fills ``connect_host`` (the URL host when the handler gave none) and
    picks the TLS name itself: the connector is told to trust
    ``connect_host`` exactly when that is the name the session picked."""
    return NetTarget(host=target.host, port=target.port, tls=target.tls,
                     connect_host=target.connect_host, connect_port=target.connect_port,
                     trust_connect_host=target.server_name == target.connect_host,
                     ignore_tls_errors=not target.verify,
                     ignore_policies=target.ignore_policies)


def condition_of(name: str) -> Condition:
    """The session's condition for a connector condition string (unknown
    ones: ``undefined-condition``)."""
    return _CONDITIONS.get(name, Condition.UNDEFINED)


def _get(obj: object, name: str) -> object:
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - a broken object: nothing known
        return None


def last_words(session: object, req_mode: bool) -> Data | Error | tuple[bytes, Packet] | None:
    """What the handler is owed when ``session`` failed inside condure,
    read defensively from a few attributes: nothing once it was closed;
    in req mode an ``error`` reply (``undefined-condition``, the only
    answer the request will get); in stream mode what the session's own
    failure would send: ``error`` with ``undefined-condition`` before the
    response head reached the handler, ``cancel`` after it, with the next
    seq, as (handler address, packet)."""
    phase = _get(session, "phase")
    if phase is ClientPhase.CLOSED:
        return None
    rid = _get(session, "rid")
    if req_mode:
        ids = (Ident(rid),) if isinstance(rid, bytes) else ()
        return Error(ids=ids, condition=Condition.UNDEFINED.wire)
    address, seq, origin = (_get(session, n) for n in ("handler", "out_seq", "instance_id"))
    if not (isinstance(address, bytes) and 0 < len(address) <= MAX_FROM
            and isinstance(rid, bytes) and isinstance(origin, bytes)
            and type(seq) is int and 0 <= seq <= _MAX_SEQ):
        return None
    ident = (Ident(rid, seq),)
    if phase is ClientPhase.RESPONSE:
        return address, Cancel(from_=origin, ids=ident)
    return address, Error(from_=origin, ids=ident, condition=Condition.UNDEFINED.wire)


class ClientConn:
    __slots__ = ("closed", "envelope", "host", "origin", "req_mode", "session", "task",
                 "timer_key")

    def __init__(self, host: ClientHost, session: ClientSession,
                 envelope: object = None) -> None:
        self.host = host
        self.session = session
        self.envelope = envelope  # req mode: where the reply goes
        self.req_mode = _get(session, "req_mode") is True
        self.origin: OutboundConn | None = None
        self.task: asyncio.Task[None] | None = None  # a connect under way
        self.closed = False
        self.timer_key: int | None = None  # for the host's timer wheel

    def __repr__(self) -> str:
        return f"<ClientConn origin={self.origin!r} {self.session!r}>"

    @property
    def deadline(self) -> float | None:
        if self.closed:
            return None
        try:
            return self.session.deadline
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("computing its deadline")
            return None

    # -- entry points ---------------------------------------------------------

    def receive_packet(self, packet: Packet, ident: Ident, now: float | None = None) -> None:
        """A handler packet for this exchange (stream mode)."""
        if self.closed:
            return
        try:
            self.session.receive_packet(packet, ident, time.monotonic() if now is None else now)
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("handling a handler packet")
            return
        self.run()

    def abort_unknown(self, reason: str) -> None:
        """A handler packet of an unknown type for this exchange."""
        if self.closed:
            return
        try:
            self.session.abort_unknown(reason)
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("ending it on an unknown packet type")
            return
        self.run()

    def on_timer(self) -> None:
        if self.closed:
            return
        try:
            self.session.handle_timer(time.monotonic())
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("handling its timer")
            return
        self.run()

    def keep_alive(self) -> tuple[bytes, Ident] | None:
        """The keep-alive owed to the handler now (see the session's)."""
        if self.closed:
            return None
        try:
            return self.session.keep_alive()
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("sending keep-alives")
            return None

    def shutdown(self) -> tuple[bytes, Ident] | None:
        """Condure stops: end at once; (handler, id+seq) of the cancel owed.
        The host calls :meth:`abort` after it."""
        if self.closed:
            return None
        try:
            return self.session.shutdown()
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("stopping")
            return None

    def abort(self) -> None:
        """Drop the exchange now, whatever its state."""
        self._finish()

    def _on_read(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.session.receive_data(data, time.monotonic())
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("reading from the origin")
            return
        self.run()

    def _on_flushed(self) -> None:
        if self.closed:
            return
        try:
            self.session.output_flushed(time.monotonic())
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("after a flush to the origin")
            return
        self.run()

    # -- the rhythm -------------------------------------------------------------

    def run(self) -> None:
        """Execute what the session asks, until it asks nothing more."""
        if self.closed:
            return
        try:
            session = self.session
            while True:
                actions = session.take_actions()
                flushed = False
                for action in actions:
                    flushed = self._execute(action) or flushed
                    if self.closed:
                        return
                if flushed and self.origin is not None and not self.origin.pending:
                    # Everything reached the kernel: credits may be owed (and
                    # more actions may follow, so go round again).
                    session.output_flushed(time.monotonic())
                    continue
                if not actions:
                    break
            origin = self.origin
            if origin is not None:
                origin.set_reading(session.wants_read)
            self.host.schedule(self)
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("running the session")

    def _execute(self, action: ClientAction) -> bool:
        """Carry out one action; True for a write that was flushed at once."""
        if isinstance(action, Write):
            origin = self.origin
            if origin is None:
                raise RuntimeError("write without an origin connection")
            return origin.write(action.data)
        if isinstance(action, Send):
            self.host.send_packet(action.packet, action.to)
        elif isinstance(action, Reply):
            self.host.reply(self.envelope, action.packet)
        elif isinstance(action, Connect):
            self._connect(action.target)
        elif isinstance(action, Release):
            self._release(action.persistent)
        elif isinstance(action, Close):
            log.debug("client exchange closing: %s", action.reason)
            if action.handler_fault:
                self.host.note_handler_fault(action.reason)
            self._finish()
        return False

    # -- the origin connection ----------------------------------------------------

    def _connect(self, target: rules.Target) -> None:
        if self.origin is not None or self.task is not None:
            raise RuntimeError("Connect while a connection is held or under way")
        self.task = self.host.loop.create_task(self._connecting(net_target(target)))

    async def _connecting(self, target: NetTarget) -> None:
        """Runs as ``self.task``; cancelled by :meth:`_finish` (the connector
        then closes whatever socket it had open)."""
        try:
            conn = await self.host.connector.connect(target)
        except OutboundError as e:
            self.task = None
            log.debug("connecting to %s:%d failed: %s", *target.endpoint, e)
            self._connect_failed(condition_of(e.condition))
            return
        except Exception:  # a bug below: this exchange fails alone
            self.task = None
            log.exception("connecting to %s:%d failed unexpectedly", *target.endpoint)
            self._connect_failed(Condition.UNDEFINED)
            return
        self.task = None
        if self.closed:
            conn.close()
            return
        self.origin = conn
        try:
            conn.start(self._on_read, self._on_flushed, reading=False)
            self.session.connected(time.monotonic())
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("after connecting")
            return
        self.run()

    def _connect_failed(self, condition: Condition) -> None:
        if self.closed:
            return
        try:
            self.session.connect_failed(condition, time.monotonic())
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("after a failed connect")
            return
        self.run()

    def _release(self, persistent: bool) -> None:
        origin, self.origin = self.origin, None
        if origin is None:
            return
        if persistent:
            self.host.pool.put(origin)  # closes it when it is not reusable
        else:
            origin.close()

    # -- endings ----------------------------------------------------------------

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        origin, self.origin = self.origin, None
        if origin is not None:
            origin.close()
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
        self.host.release(self)

    def fail(self, where: str) -> None:
        """The session raised while ``where`` (call from the ``except``
        block): log the traceback once, send the handler what it is owed
        (:func:`last_words`), drop the origin connection and release. The
        session is not called again; nothing raised here escapes."""
        if self.closed:
            log.exception("client exchange: unexpected error while %s (already ended)", where)
            return
        session = self.session
        try:
            log.exception("client exchange %r: unexpected error while %s; ending it",
                          _get(session, "rid"), where)
            owed = last_words(session, self.req_mode)
            self._finish()
            if isinstance(owed, tuple):
                self.host.send_packet(owed[1], owed[0])
            elif owed is not None:
                self.host.reply(self.envelope, owed)
        except Exception:
            log.exception("client exchange: ending it failed; dropping it")
            self.closed = True
            try:
                if self.origin is not None:
                    self.origin.close()
                if self.task is not None:
                    self.task.cancel()
            finally:
                self.origin = self.task = None
                try:
                    self.host.release(self)
                except Exception:
                    log.exception("client exchange: releasing it failed")
