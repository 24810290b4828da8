"""The adapter between one client socket and its session.

Every callback has one rhythm: feed the session, drain its actions
(write, send packets, close), then re-check reading and re-file the timer.
The adapter holds no protocol policy; what to do is the session's call.

Invariants: the socket is non-blocking; output the kernel did not take sits
in ``out`` and is written when the socket is writable; the session is told
``output_flushed`` each time ``out`` empties, which is when flow-control
credits go back to the handler. How a connection ends (graceful close,
cuts that spare the complete responses still queued, resets, the
worker's stop, failures) is in condure/net/conn_end.py.

A session that raises (a bug in condure) costs its connection only: every
call into it is guarded, and :meth:`Conn.fail` logs the traceback once and
ends the connection with what is owed (condure/session/failure.py),
without calling the broken object again.

The adapter reaches the process hosting it (the worker) only through
:class:`ConnHost`, so it does not depend on the worker (a layer above) and
the worker keeps its internals to itself. The event loop is part of that
contract as an attribute: a connection registers its own descriptor for
reading and writing (``add_reader``/``add_writer`` and their removals),
nothing else of the loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from typing import Protocol, cast

from condure.net import conn_end
from condure.net.conn_end import LINGER, ConnEndings
from condure.net.tls import TlsError, TlsLayer
from condure.session.actions import Close, Send, SwitchSession, Write
from condure.session.contract import Session
from condure.zhttp.packets import Packet

__all__ = ["LINGER", "Conn", "ConnHost"]

log = logging.getLogger("condure.conn")

_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT)


class ConnHost(Protocol):
    """The worker, as a connection sees it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the connection registers its descriptor with."""

    @property
    def read_size(self) -> int:
        """Bytes to read from a client socket at a time."""

    @property
    def holds_reads(self) -> bool:
        """Backpressure: packets for handlers pile up, connections read
        nothing more from their clients for now (:meth:`Conn.refresh_reading`
        once that is over)."""

    def send_packet(self, packet: Packet, to: bytes | str | None,
                    wire: bytes | None = None) -> None:
        """Send a handler packet: ``to`` as in :class:`condure.session.actions.Send`
        (or the req-mode socket's marker)."""

    def schedule(self, conn: Conn) -> None:
        """(Re-)file ``conn`` for its ``deadline`` (``conn.on_timer`` is
        called when it passes)."""

    def note_unanswered(self, slot: int) -> None:
        """A request on ``slot`` timed out with no handler answer."""

    def note_handler_fault(self, reason: str) -> None:
        """A handler broke a rule; ``reason`` says which."""

    def release(self, conn: Conn) -> None:
        """``conn`` is finished here (closed or detached): free its slot."""


class Conn(ConnEndings):
    """One client connection (module docstring); its endings are in
    condure/net/conn_end.py."""

    __slots__ = ()  # (ConnEndings has them all)

    def __init__(self, worker: ConnHost, sock: socket.socket, slot: int, session: Session,
                 tls: TlsLayer | None = None) -> None:
        self.worker = worker
        self.sock = sock
        self.fd = sock.fileno()
        self.slot = slot
        self.session = session
        self.out = bytearray()
        self.reading = False
        self.writing = False
        self.closing = False  # graceful close under way: flush, then FIN
        self.closed = False
        self.timer_key: int | None = None
        self.linger_until: float | None = None
        self.flush_until: float | None = None  # a graceful close's write-out (see _close)
        self.tls = tls  # None for plain connections
        self.sent = 0  # bytes the kernel took
        self.owed_to = 0  # the end of the last complete response, in sent's count
        self.reset_after = False  # a cut that resets once the owed bytes are acknowledged

    def __repr__(self) -> str:
        return f"<Conn slot={self.slot} fd={self.fd} out={len(self.out)} {self.session!r}>"

    @property
    def deadline(self) -> float | None:
        if self.closed:
            return None
        if self.linger_until is not None:
            return self.linger_until
        if self.flush_until is not None:
            if self.reset_after and not self.out:  # waiting for acknowledgements:
                return 0.0  # due at once, so looked at again on the next tick
            return self.flush_until
        try:
            return self.session.deadline
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("computing its deadline")
            return None if self.closed else self.linger_until

    @property
    def exportable(self) -> bool:
        """Whether the connection could move to another process (TLS state
        lives inside OpenSSL and cannot)."""
        return self.tls is None

    # -- event entry points -------------------------------------------------

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(self.worker.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.debug("read error on slot %d: %s", self.slot, e)
            data = b""
        if self.closing:
            if not data:
                self._closing_eof()
            return  # discard what a client sends after we are done
        if self.tls is not None:
            self._tls_received(data)
            return
        try:
            self.session.receive_data(data, time.monotonic())
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("reading from the client", reading=bool(data))
            return
        self.run()

    def _tls_received(self, raw: bytes) -> None:
        tls = self.tls
        assert tls is not None  # called for TLS connections only
        try:
            data, eof = tls.receive(raw)
        except TlsError as e:
            log.debug("slot %d: TLS: %s", self.slot, e)
            try:
                self.sock.send(tls.take_output())  # the alert, if any; best effort
            except OSError:
                pass
            self._finish()
            return
        pending = tls.take_output()
        now = time.monotonic()
        try:
            if pending:
                self.out += pending
                self._flush()
                if self.closed:
                    return
            if data:
                self.session.receive_data(data, now)
            if eof:
                self.session.receive_data(b"", now)
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("reading from the client", reading=bool(data))
            return
        self.run()

    def on_writable(self) -> None:
        try:
            done = self._flush()
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("writing to the client")
            return
        if done:
            self.run(flushed=True)

    def on_timer(self) -> None:
        if self.closed:
            return
        if self.linger_until is not None:
            self._finish()
            return
        if self.flush_until is not None:
            if time.monotonic() >= self.flush_until:
                log.debug("slot %d: the client took nothing of the last output for %g s",
                          self.slot, conn_end.CLOSE_FLUSH_TIMEOUT)
                self._reset()  # what it did not take is lost: not an end to show it
            elif self.reset_after and not self.out:
                self._half_close()  # (acknowledged yet?)
            else:
                self.worker.schedule(self)
            return
        try:
            self.session.handle_timer(time.monotonic())
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("handling its timer")
            return
        self.run()

    # -- the rhythm -----------------------------------------------------------

    def run(self, flushed: bool = False) -> None:
        try:
            session = self.session
            worker = self.worker
            while True:
                actions = session.take_actions()
                wrote = False
                for action in actions:
                    if isinstance(action, Write):
                        if self.tls is None:
                            self.out += action.data
                        else:
                            self.out += self.tls.encrypt(action.data)
                        if action.ends_response:  # owed in full, even if a cut follows
                            self.owed_to = self.sent + len(self.out)
                        wrote = True
                    elif isinstance(action, Send):
                        worker.send_packet(action.packet, action.to, action.wire)
                    elif isinstance(action, Close):
                        self._close(action)
                        if self.closed:
                            return
                    elif isinstance(action, SwitchSession):
                        self.session = session = cast(Session, action.session)
                if wrote and not self.closed:
                    flushed = self._flush() or flushed
                    if self.session is not session:
                        return  # a write error ran the rhythm (or ended it) meanwhile
                if flushed and not self.out and not self.closing and not self.closed:
                    # Everything reached the kernel: the session may owe credits
                    # (and may queue more actions in return, so go round again).
                    flushed = False
                    session.output_flushed(time.monotonic())
                    continue
                if not actions:
                    break
            if self.closed:
                return
            if not self.closing:
                want = session.wants_read and not worker.holds_reads
                if want != self.reading:
                    self._set_reading(want)
            worker.schedule(self)
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("running the session")

    def _flush(self) -> bool:
        """Write what the kernel takes; True when ``out`` is empty after."""
        out = self.out
        if not out:
            return True
        try:
            sent = self.sock.send(out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            if e.errno not in _GONE:
                log.debug("write error on slot %d: %s", self.slot, e)
            self.out.clear()
            self.session.receive_data(b"", time.monotonic())  # callers guard it
            if self.closing:
                self._finish()
            else:
                self.run()
            return False
        del out[:sent]
        self.sent += sent
        if self.flush_until is not None and sent:
            self.flush_until = time.monotonic() + conn_end.CLOSE_FLUSH_TIMEOUT
        if out:
            if not self.writing:
                self.writing = True
                self.worker.loop.add_writer(self.fd, self.on_writable)
            return False
        if self.writing:
            self.writing = False
            self.worker.loop.remove_writer(self.fd)
        if self.closing:
            self._half_close()
        return True

    def note_reads_held(self, held: bool) -> None:
        """The host began (or stopped) holding reads back (``holds_reads``):
        the session's read clocks stand still meanwhile; reading resumes
        if the session wants it."""
        if self.closed or self.closing:
            return
        try:
            before = self.session.deadline
            self.session.reads_held(held, time.monotonic())
            moved = self.session.deadline != before
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("holding reads back")
            return
        if not held:
            self.refresh_reading()
        if moved and not self.closed:  # (most sessions have no read clock: cheap)
            self.worker.schedule(self)

    def refresh_reading(self) -> None:
        """Read again if the session wants to (the host stopped holding
        reads back)."""
        if self.closed or self.closing or self.reading:
            return
        try:
            want = self.session.wants_read and not self.worker.holds_reads
        except Exception:  # noqa: BLE001 - a bug in the session: end it (see fail)
            self.fail("resuming reads")
            return
        if want:
            self._set_reading(True)

    def _set_reading(self, on: bool) -> None:
        self.reading = on
        if on:
            self.worker.loop.add_reader(self.fd, self.on_readable)
        else:
            self.worker.loop.remove_reader(self.fd)
