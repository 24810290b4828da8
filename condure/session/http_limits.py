"""How a stream-mode HTTP connection is cut short by condure itself: the
read-side limits against abusive clients (:mod:`condure.session.limits`),
graceful stops of the process, and requests condure refuses.

:class:`HttpEndings` is the base of :class:`condure.session.http.HttpSession`
and holds only these paths; the request cycle lives in ``http.py``.
"""

from __future__ import annotations

from condure.session.actions import Write
from condure.session.head import HeadReader
from condure.session.http_body import RequestBody
from condure.session.http_response import Response
from condure.session.httpwire import error_response
from condure.session.limits import BODY_RATE, HEAD_TIMEOUT, NO_REQUEST, BodyRate, ReadLimits
from condure.session.peer import ZhttpPeer
from condure.session.states import ACTIVE, CLOSED, HEAD, BodyState, ResponseState

# A connection accepted just before a graceful stop may not have sent its
# request yet; this is how long a drain waits for it.
FRESH_GRACE = 1.0


class HttpEndings(ZhttpPeer):
    """The endings of a stream-mode HTTP connection (module docstring)."""

    __slots__ = ("head_deadline", "held_since", "leave_at", "leaving", "rate")

    reader: HeadReader
    body: RequestBody
    response: Response
    limits: ReadLimits
    rate: BodyRate | None  # the request body's clock (--body-min-rate), while it is read
    head_deadline: float | None  # when the request head must be complete (--head-timeout)
    held_since: float | None  # the adapter holds reads back since (reads_held)
    served: int
    leaving: bool
    leave_at: float | None

    @property
    def wants_read(self) -> bool:
        raise NotImplementedError

    @property
    def cut_unmarked(self) -> bool:
        """Every close while a close-delimited response is under way is a
        reset: a handler's cancel or error, a fault, a timeout, a client's
        EOF, a seq gap after a move, a stop (see ZhttpPeer._close)."""
        return self.response.cut_unmarked

    @property
    def deadline(self) -> float | None:
        """When ``handle_timer`` must be called next (None: never)."""
        if self.state is CLOSED:
            return None
        deadline = min(self.session_deadline, self.stream_deadline)
        if self.held_since is not None:  # the read clocks stand still
            return deadline
        limit = self.head_deadline
        if limit is None and self.rate is not None:
            limit = self.rate.deadline
        return deadline if limit is None or limit > deadline else limit

    def handle_timer(self, now: float) -> None:
        head_deadline = None if self.held_since is not None else self.head_deadline
        if head_deadline is not None and now >= head_deadline and self.state is HEAD:
            self._head_timeout()
        elif self.rate is not None and self.state is ACTIVE and self.rate.expired(now):
            self._body_too_slow()
        else:
            super().handle_timer(now)
            if self.rate is not None:
                self._sync_rate(now)

    def _sync_rate(self, now: float) -> None:
        """Run the body clock only while body bytes are awaited and read:
        not while the handler has no credits for them (a whole body may
        sit read and waiting; the client is not the slow one then)."""
        assert self.rate is not None
        body = self.body
        self.rate.sync(now, body.state is BodyState.READING and body.credits > 0
                       and self.wants_read and self.held_since is None)

    def reads_held(self, held: bool, now: float) -> None:
        """The adapter holds reads back for reasons of its own (backpressure
        towards the handlers): the head timeout and the body clock stand
        still meanwhile, as the client is not the one who is slow."""
        if held and self.held_since is None:
            self.held_since = now
        elif not held and self.held_since is not None:
            if self.head_deadline is not None:
                self.head_deadline += now - self.held_since
            self.held_since = None
        if self.rate is not None:
            self._sync_rate(now)

    def _head_timeout(self) -> None:
        self.head_deadline = None
        if self.reader.buffered(True):
            self.limits.note(HEAD_TIMEOUT)
            self._refuse(408, "request head not complete in time")
        else:
            self.limits.note(NO_REQUEST)
            self._close(graceful=True, reason="no request in time")

    def _body_too_slow(self) -> None:
        self.limits.note(BODY_RATE)
        self.rate = None
        if self.response.state is ResponseState.NONE:
            self.actions.append(Write(error_response(408)))
            self._cancel_and_close("request body too slow", graceful=True)
        else:
            self._cancel_and_close("request body too slow")

    def _refuse(self, status: int, detail: str = "") -> None:
        self.actions.append(Write(error_response(status)))
        self._close(graceful=True, reason=f"refused with {status}: {detail}")

    def stop_words(self) -> bytes:
        """A request head partly received when condure stops: 503 with
        ``Connection: close`` (the request was not processed, and the
        client may retry it, RFC 9110 15.6.4; RFC 9112 9.6 has a server
        that closes send a close signal before it does). No bytes of a
        request (an idle keep-alive connection, or only the empty lines
        RFC 9112 2.2 lets a server ignore): nothing, the close says it."""
        if self.state is HEAD and self.reader.buffered(True):
            return error_response(503)
        return b""

    def going_away(self, now: float | None = None, code: int | None = None) -> None:
        """Graceful stop of the process (called repeatedly while draining):
        an idle keep-alive connection closes now (its client retries, RFC
        9112 9.3.1); a new connection whose first request may still be on
        its way gets FRESH_GRACE seconds; a request under way finishes and
        its response says ``Connection: close`` if its head has not gone
        out, then the connection closes."""
        if self.state is CLOSED:
            return
        self.leaving = True
        if self.state is HEAD and not self.reader.buffered(True) and not self.actions:
            if self.served or now is None:
                self._close(graceful=True, reason="going away")
            elif self.leave_at is None:
                self.leave_at = now + FRESH_GRACE
            elif now >= self.leave_at:
                self._close(graceful=True, reason="going away: no request came")
