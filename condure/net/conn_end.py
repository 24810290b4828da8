"""How a client connection ends: the endings part of :class:`condure.net.conn.Conn`.

A graceful close writes out what is queued, shuts down the write side
(FIN) and waits briefly for the client's end, discarding its input, so
that unread request bytes do not turn the last response into a reset
(RFC 9112 9.6). A cut (a ``Close`` that is not graceful, or resets)
drops what is queued of the response it cuts, but never a response that
was complete before it: on a persistent connection a slow client may
still be taking an earlier response when the next one (pipelined) is cut
by its handler, or the client half-closes. The adapter counts the bytes
the kernel took (``sent``) and where the last complete response ends in
that count (``owed_to``, from ``Write.ends_response``); a cut keeps the
queued bytes up to there, writes them out and then ends as the cut says:
a FIN, or a reset (for a close-delimited response cut short) only once
the client acknowledged what it was owed, since a reset discards what
the kernel still holds (``SIOCOUTQ``).

The worker's stop (``abort``) writes what the session leaves (a 503 for
a request it gives up on, a WebSocket's close frame 1001: see
``shutdown`` in condure/session/peer.py) and what is owed of complete
responses, then closes as a graceful close does: our FIN, the client's
input read and discarded meanwhile and until its end (RFC 9112 9.6: a
close with unread input would be a reset, which can destroy the reply
before the client read it). All of it within the stop's bound
(condure/net/conn_stop.py), after which ``give_up`` ends what is left. A
connection with nothing to write and nothing unacknowledged (an idle
keep-alive connection) closes at once, as before.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios
import time
from typing import Any, Protocol

from condure.net.tls import TlsLayer
from condure.net.unanswered import note_missed
from condure.session import failure
from condure.session.actions import Close, Write
from condure.session.contract import Kind

log = logging.getLogger("condure.conn")

LINGER = 2.0  # seconds to wait for the client's FIN after a graceful close
# A graceful close writes out what is queued first; a client that takes
# nothing of it for this long is dropped (else it would hold its slot forever).
CLOSE_FLUSH_TIMEOUT = 30.0
_FAILED = Close(graceful=True, reason="internal error")
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset (RST)
_DISCARD = 16  # reads of unread input discarded before a stop closes a socket
_OUTQ = getattr(termios, "TIOCOUTQ", 0x5411)  # = SIOCOUTQ: bytes sent but not acknowledged


class _Host(Protocol):
    """What the endings need of the worker (``condure.net.conn.ConnHost``)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def read_size(self) -> int: ...
    @property
    def holds_reads(self) -> bool: ...
    def schedule(self, conn: Any) -> None: ...
    def release(self, conn: Any) -> None: ...
    def note_unanswered(self, slot: int) -> None: ...
    def note_handler_fault(self, reason: str) -> None: ...
    def send_packet(self, packet: Any, to: bytes | str | None,
                    wire: bytes | None = None) -> None: ...


def unacknowledged(sock: socket.socket) -> int:
    """Bytes the kernel holds for the peer, sent or not, not acknowledged
    yet (0 when it cannot say)."""
    try:
        buf = fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", buf)[0])


class ConnEndings:
    """The endings of a connection (module docstring); :class:`Conn` holds
    the rhythm. Every slot of a connection is declared here."""

    __slots__ = (
        "closed",
        "closing",
        "fd",
        "flush_until",
        "linger_until",
        "out",
        "owed_to",
        "reading",
        "reset_after",
        "sent",
        "session",
        "slot",
        "sock",
        "timer_key",
        "tls",
        "worker",
        "writing",
    )

    worker: _Host
    sock: socket.socket
    fd: int
    slot: int
    session: Any
    out: bytearray
    tls: TlsLayer | None
    reading: bool
    writing: bool
    closing: bool
    closed: bool
    linger_until: float | None
    flush_until: float | None
    sent: int  # bytes the kernel took, ever
    owed_to: int  # where, in ``sent``'s count, the last complete response ends
    reset_after: bool  # a cut: reset once what is owed was acknowledged

    def _flush(self) -> bool:
        raise NotImplementedError

    def _set_reading(self, on: bool) -> None:
        raise NotImplementedError

    def _close(self, action: Close) -> None:
        log.debug("slot %d closing: %s", self.slot, action.reason)
        if action.missed or action.gone:
            note_missed(self.session.kind is Kind.HTTP, gone=action.gone)
        if action.unanswered:
            self.worker.note_unanswered(self.slot)
        if action.handler_fault:
            self.worker.note_handler_fault(action.reason)
        if self.closed:
            return
        if action.reset or not action.graceful:
            self._cut(action.reset)
            return
        self._begin_closing()

    def _begin_closing(self) -> None:
        """Write out what is queued, then FIN (``_half_close``)."""
        self.closing = True
        self.flush_until = time.monotonic() + CLOSE_FLUSH_TIMEOUT
        if not self.out:
            self._half_close()
            return
        if not self.writing:
            self._flush()
        if not self.closed and self.linger_until is None:
            self.worker.schedule(self)

    def _cut(self, reset: bool) -> None:
        """End the connection, cutting what is under way but no response
        complete before it (module docstring)."""
        keep = self.owed_to - self.sent
        del self.out[max(keep, 0):]
        if not self.out and not self._owed_in_flight():
            if reset:
                self._reset()
            else:
                self._finish()
            return
        self.reset_after = reset
        self._begin_closing()

    def _owed_in_flight(self) -> bool:
        """Whether bytes of a complete response are still with the kernel,
        not acknowledged by the client."""
        return self.owed_to > 0 and self.owed_to > self.sent - unacknowledged(self.sock)

    def _half_close(self) -> None:
        """All output is out: send FIN, then wait briefly for the client's,
        discarding input, so that unread request bytes do not turn our
        last response into a reset (RFC 9112 9.6). After a cut that resets:
        reset once the client acknowledged what it was owed (the timer
        looks again)."""
        if self.closed or self.linger_until is not None:
            return
        if self.reset_after:
            if self._owed_in_flight():
                self.worker.schedule(self)
            else:
                self._reset()
            return
        try:
            if self.tls is not None:
                self.sock.send(self.tls.close_notify())  # a few bytes: best effort
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._finish()
            return
        self.flush_until = None
        self.linger_until = time.monotonic() + LINGER
        if not self.reading:
            self._set_reading(True)
        self.worker.schedule(self)

    def _closing_eof(self) -> None:
        """The client's end of input while closing: done once our FIN went
        out; before that the client only half-closed and may still read
        what it is owed, which is written out first."""
        if self.linger_until is not None:
            self._finish()
        elif self.reading:
            self._set_reading(False)

    def _stop_watching(self) -> None:
        """No more callbacks for this connection."""
        self.closed = True
        loop = self.worker.loop
        if self.reading:
            loop.remove_reader(self.fd)
        if self.writing:
            loop.remove_writer(self.fd)
        self.reading = self.writing = False

    def _finish(self) -> None:
        if self.closed:
            return
        self._stop_watching()
        self.sock.close()
        self.worker.release(self)

    def _reset(self) -> None:
        """Abortive close: queued output and what the kernel still holds are
        dropped, and the client gets a reset (ECONNRESET) instead of an end
        that would make a cut response look complete (RFC 9112 9.6). A Unix
        socket has no reset: its client sees an end."""
        if not self.closed:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            except OSError as e:
                log.debug("slot %d: no reset: %s", self.slot, e)
            self._finish()

    def detach(self) -> socket.socket:
        """Stop serving the connection here without closing it: its socket
        is returned, still open, to be handed to another process (the
        session was exported). Closing our copy later sends nothing."""
        self._stop_watching()
        self.worker.release(self)
        return self.sock

    def abort(self) -> None:
        """The worker stops, after ``session.shutdown()`` (module
        docstring): what the session left to write (a 503, a close frame)
        goes out after what is owed of complete responses, then our FIN and
        the client's end, its input discarded; a Close that resets (a
        close-delimited response cut short) resets once the client has
        what it is owed. Nothing here waits: the worker's event loop
        carries it on until the stop's bound (``give_up``)."""
        if self.closed:
            return
        try:
            actions = self.session.take_actions()
        except Exception:  # a bug in the session: drop the connection all the same
            log.exception("slot %d: reading the session's last actions failed", self.slot)
            actions = []
        graceful = self.closing  # (a close or a cut's write-out under way goes on)
        reset = self.reset_after
        for action in actions:
            if type(action) is Write:
                self.out += action.data if self.tls is None else self.tls.encrypt(action.data)
            elif type(action) is Close:
                graceful = graceful or action.graceful
                reset = action.reset
        if reset:
            self._cut(True)  # (what is owed first, then the reset)
            return
        if not graceful:
            del self.out[max(self.owed_to - self.sent, 0):]
            if not self.out and not unacknowledged(self.sock):
                self._last_words()  # nothing of ours the client could lose
                return
        if not self.reading:
            self._set_reading(True)  # discarded while we write (on_readable)
        if not self.closing:
            self._begin_closing()

    def give_up(self) -> None:
        """The stop's bound passed (or a test is done): end the connection
        now. Output the kernel never took is lost, and a reset says so
        rather than an end that would make it look complete; otherwise the
        client's unread input is discarded and the socket closed (the
        kernel still delivers what it holds)."""
        if self.closed:
            return
        if self.out or self.reset_after:  # (a cut whose reset waits: it must show)
            self._reset()
        else:
            self._last_words()

    def _last_words(self) -> None:
        """Our FIN, the client's unread input discarded (so that the close
        is no reset), then close."""
        if self.closed:
            return
        try:
            if self.linger_until is None:
                if self.tls is not None:
                    self.sock.send(self.tls.close_notify())
                self.sock.shutdown(socket.SHUT_WR)
            for _ in range(_DISCARD):
                if not self.sock.recv(self.worker.read_size):
                    break
        except OSError:
            pass  # (BlockingIOError: nothing more to read now)
        self._finish()

    def fail(self, where: str, sender: bytes | None = None, reading: bool = False) -> None:
        """The session raised while ``where`` (call from the ``except``
        block): a bug in condure, which costs this connection only. The
        traceback is logged once; the client gets a 500 or a WebSocket
        close 1011 if owed, the handler a ``cancel`` if known (``sender``:
        the ``from`` of the packet being delivered, if any; ``reading``:
        client bytes were being delivered); then the
        connection closes and its slot is freed. The broken session is not
        called again (condure/session/failure.py); nothing raised here
        escapes."""
        session = self.session
        try:
            log.exception("slot %d (%s): unexpected error while %s; ending the connection",
                          self.slot, failure.describe(session), where)
            if type(session) is failure.Ended:
                self._drop()  # the adapter itself failed on an ended connection
                return
            words, cancel = failure.last_words(session, sender, reading)
            cut = failure.cut_unmarked(session)
            self.session = failure.Ended(session)
            if words and not self.closed and not self.closing:
                self.out += words if self.tls is None else self.tls.encrypt(words)
                self._close(_FAILED)  # write, FIN, linger, then free the slot
            elif not self.closing and not self.closed:
                self._cut(cut)  # a close-delimited response cut short: a reset
            else:
                self._finish()
            if cancel is not None:
                self.worker.send_packet(cancel[1], cancel[0])
        except Exception:
            log.exception("slot %d: ending the connection failed; dropping it", self.slot)
            self._drop()

    def _drop(self) -> None:
        """Forget the connection whatever state it is in."""
        if not isinstance(self.session, failure.Ended):
            self.session = failure.Ended(self.session)
        try:
            self._stop_watching()
        except Exception:  # noqa: BLE001 - best effort, the slot matters more
            self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.worker.release(self)
        except Exception:
            log.exception("slot %d: releasing the connection failed", self.slot)
