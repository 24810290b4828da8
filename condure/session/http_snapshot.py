"""Moving a stream-mode HTTP connection to another process (handover,
docs/handover.md): its record, and the handoff of a request in flight.

A connection moves between requests (``HEAD``, nothing owed: bytes of a
partly read next request travel as ``leftover``), or with its request in
flight once that request is at a resumable point (:attr:`HttpMoves.movable`):
the handler answered (``ACTIVE``: its address is known, so it can be asked
to hold its packets and told where the session went), and either the
response has not started or is streaming, with the request body read to
its end and sent, or no response yet and the body still being read, at a
resumable position of its framing (:mod:`condure.session.body_record`:
anywhere in a Content-Length body; in a chunked one anywhere but between a
chunk's data and its CRLF, which the session reads on past). Such a body
carries its position, its credits and what was read of it and not sent
(bounded), and the adopting process reads on from the client.
Such a request asks its handler ``handoff-start`` like a WebSocket (or, with
``--handoff skip`` or no answer in time, moves without: ``UNANSWERED``), and
from then on sends it nothing (credits for flushed bytes wait in
``credits_owed``) and reads nothing from the client. Its record carries the
session id, ``from``, the seqs and the response's framing state
(:class:`condure.session.records.InFlight`); the adopting process resumes
it with a ``keep-alive`` (then any credits owed) under the same id and
``from``, and the next request on the connection gets that process's own
id and address.

A request still waiting for the handler's first packet (``WAIT``) does not
move: its handler is unknown (the request went out on the first-packet
socket), so it can neither be asked to hold its packets nor be told where
the session went, and a lost answer would leave the client waiting
unseen. The handover waits for that first packet (within the drain time).
"""

from __future__ import annotations

from condure.session.body_record import BodyAt
from condure.session.head import HeadReader
from condure.session.http_body import RequestBody, position, resumed
from condure.session.http_limits import HttpEndings
from condure.session.limits import BodyRate
from condure.session.peer import HANDLER_GONE, MISSED_IN_MOVE
from condure.session.records import HttpRecord, InFlight
from condure.session.states import (
    ACTIVE,
    ASKED,
    HEAD,
    PROCEEDED,
    UNANSWERED,
    BodyState,
    Event,
    Handoff,
    ResponseState,
)
from condure.zhttp.packets import Credit, HandoffStart, Ident


class HttpMoves(HttpEndings):
    """The handover part of :class:`condure.session.http.HttpSession`."""

    __slots__ = ("body", "credits_owed", "handoff", "handoff_ask", "hold", "home_id",
                 "keep_alive_asked", "reader", "restored_at", "rid", "served", "stream_deadline")

    hold: bool  # handover: no new request from here on
    handoff: Handoff  # of the request in flight (NONE between requests)
    handoff_ask: bool  # ask the handler (handoff-start), else move unasked
    credits_owed: int  # earned while moving, sent after the resume
    home_id: bytes  # this process's own address, for the next request
    keep_alive_asked: bool
    body: RequestBody

    def receive_data(self, data: bytes, now: float) -> None:
        raise NotImplementedError

    def _pump_body(self, now: float) -> None:
        raise NotImplementedError

    def _pull_body(self) -> bool:
        raise NotImplementedError

    # -- the record -----------------------------------------------------------

    def export_record(self, now: float) -> HttpRecord | None:
        """The record of this connection if it is between requests or its
        request in flight is ready to leave (``ready_to_export``), else None."""
        flight = None
        if not self.resumable:
            if not self.ready_to_export:
                return None
            response = self.response
            assert self.handler is not None
            flight = InFlight(
                rid=self.rid, origin=self.instance_id, handler=self.handler,
                out_seq=self.out_seq, in_seq=self.in_seq, credits_owed=self.credits_owed,
                streaming=response.state is ResponseState.STREAMING,
                resp_credits=response.credits, http11=response.http11,
                is_head=response.is_head, head_ends=response.head_ends,
                keep_alive=self.keep_alive_asked, chunked=response.chunked,
                close_delimited=response.close_delimited, discard_body=response.discard_body,
                owed=response.owed, body=self._body_at())
        return HttpRecord(
            scheme=self.scheme, peer_address=self.peer_address, peer_port=self.peer_port,
            leftover=self.reader.leftover(), session_left=max(self.session_deadline - now, 0.0),
            stream_left=max(self.stream_deadline - now, 0.0),
            head_left=None if flight else self._head_left(now), flight=flight)

    def _head_left(self, now: float) -> float | None:
        """Seconds left for the request head (None: none is due); while
        reads are held back the clock stands still at the hold."""
        if self.head_deadline is None:
            return None
        return max(self.head_deadline - (now if self.held_since is None else self.held_since), 0.0)

    def restore(self, record: HttpRecord, now: float) -> None:
        """Take up where ``record`` left off (``from_record``): timers,
        unparsed client bytes, and a request in flight."""
        self.session_deadline = now + record.session_left
        self.stream_deadline = now + record.stream_left
        f = record.flight
        if f is None:
            # The head timeout runs on from where it was: a reload does not
            # give a slow client a fresh one (none is due between requests).
            self.head_deadline = None if record.head_left is None else now + record.head_left
            if record.leftover:
                self.receive_data(record.leftover, now)
            return
        self.head_deadline = None
        self.restored_at = now
        if f.body is not None:
            self.body, self.reader = resumed(f.body, self.buffer_size, record.leftover)
            if self.limits.body_min_rate:  # (a fresh window)
                self.rate = BodyRate(self.limits.body_min_rate, self.limits.body_window)
        else:
            self.reader = HeadReader(self.buffer_size, b"")
            self.reader.inbuf += record.leftover  # (a pipelined request: parsed next cycle)
        self.rid, self.instance_id, self.handler = f.rid, f.origin, f.handler
        self.out_seq, self.in_seq, self.credits_owed = f.out_seq, f.in_seq, f.credits_owed
        self.adopted = True
        self.served = 1  # (this one: the next head is not a new connection's first)
        self.keep_alive_asked = f.keep_alive
        self._advance(Event.REQUEST)
        self._advance(Event.ANSWERED)
        response = self.response
        response.state = ResponseState.STREAMING if f.streaming else ResponseState.NONE
        response.credits = f.resp_credits
        response.http11, response.is_head, response.head_ends = f.http11, f.is_head, f.head_ends
        response.chunked, response.close_delimited = f.chunked, f.close_delimited
        response.discard_body, response.owed = f.discard_body, f.owed
        self.handoff = PROCEEDED  # (still moving: the handler holds its packets until resume)

    # -- the handoff of a request in flight -----------------------------------

    @property
    def resumable(self) -> bool:
        """True between requests: no request is being served and nothing
        is owed to anyone, so the connection can move elsewhere (bytes of a
        partly read next request travel with it)."""
        return self.state is HEAD and self.handler is None and not self.actions

    @property
    def movable(self) -> bool:
        """The request in flight is at a resumable point: answered, and its
        body read and sent with the response not started or streaming, or
        its body still being read at a resumable position."""
        if self.state is not ACTIVE or self.handler is None or self.paused:
            return False
        body = self.body.state
        if body is BodyState.READING:
            return self._body_at() is not None
        return ((body is BodyState.NONE or body is BodyState.DONE)
                and self.response.state is not ResponseState.DONE)

    def _body_at(self) -> BodyAt | None:
        """Where the request body being read stands, if it may move from
        there (None too when no body is being read)."""
        if self.body.state is not BodyState.READING:
            return None
        return position(self.body, self.reader)

    @property
    def handoff_needs_handler(self) -> bool:
        """A request in flight is moving: the handover waits for the
        handler's ``handoff-proceed`` (bounded by the handoff timeout)."""
        return self.handoff is not Handoff.NONE

    @property
    def ready_to_export(self) -> bool:
        """Between requests; or the request in flight may leave: the handler
        answered (or moves unasked), nothing is queued, and everything
        written to the client was taken (its credits are owed)."""
        if self.resumable:
            return True
        return (self.handoff >= PROCEEDED and not self.actions and self.movable
                and not self.response.unflushed)

    @property
    def handoff_wait(self) -> str:
        """What a handover is still waiting for (the log line when it gives up)."""
        if self.handoff is ASKED:
            return "no handoff-proceed in time"
        if self.handoff and self.response.unflushed:
            return "the client does not take what was written to it"
        if self.body.state is BodyState.READING and self.handler is not None:
            return "request body still being read, not at a point it can move from"
        return "request still under way"

    @property
    def handing_off(self) -> bool:
        return self.hold

    def begin_handoff(self, ask: bool = True) -> bool:
        """Handover starts: no new request from here on. A request in flight
        at a resumable point asks its handler now (``ask``), or moves
        without asking; one that is not there yet does when it gets there,
        or finishes, and the connection moves between requests."""
        self.hold = True
        self.handoff_ask = ask
        self.consider_handoff()
        return True

    def consider_handoff(self) -> None:
        """While holding: a request in flight that reached a resumable
        point starts its handoff (called after every input)."""
        if not self.hold or self.handoff is not Handoff.NONE:
            return
        body = self.body
        # A body between a chunk's data and its CRLF: parse on past them
        # (even without credits: the piece that follows waits, bounded by
        # what one read brings).
        if (body.state is BodyState.READING and self.state is ACTIVE and not self.paused
                and not body.pieces and not body.eom and self._body_at() is None
                and not self._pull_body()):
            return
        if self.movable:
            if self.handoff_ask:
                self._send(HandoffStart)
                self.handoff = ASKED
            else:
                self.handoff = UNANSWERED

    def move_unanswered(self) -> bool:
        """The handler did not answer handoff-start in time: move without
        its answer (False when it was not asked or has answered)."""
        if self.handoff is not ASKED:
            return False
        self.handoff = UNANSWERED
        return True

    def resume(self) -> None:
        """In the adopting process. Between requests nothing is owed to
        anyone (the next request starts a new session); a request in flight
        tells the handler it is back (a keep-alive, then any credits owed)."""
        if not self.adopted:
            return
        self.handoff = Handoff.NONE
        self._send_resume()
        if self.credits_owed:
            credits, self.credits_owed = self.credits_owed, 0
            self._send(Credit, credits=credits)
        if self.body.state is BodyState.READING:
            self._pump_body(self.restored_at)  # (body read before the move, and credits)

    def keep_alive(self) -> tuple[bytes, Ident] | None:
        if self.handoff:
            return None  # the handler would take it for the resume
        return super().keep_alive()

    def _missed(self, gap: str) -> None:
        """The handler's packets for the moved request were lost while it
        moved without its handoff (a restart's gap). With nothing of the
        response written the connection closes: a client may retry a request
        whose connection closed before any response (RFC 9112 9.3.1), which
        it does not do on a 5xx, and a long-poll's answer is fetched again.
        A streamed response is cut (the client sees it end short, or a reset
        when only the close delimits it). Either way the handler gets a
        cancel."""
        self._end_request(f"{MISSED_IN_MOVE} ({gap})", missed=True)

    def _gone(self) -> None:
        """The handler answered the resume's keep-alive with a cancel for an
        id it does not know: the request ended on its side while it moved,
        and what it sent last (most likely the answer) was lost in the
        restart's gap. Ended as in _missed, without a cancel back; without
        this, the client would wait for the session timeout (60 s, 504)."""
        self._end_request(HANDLER_GONE, gone=True)

    def _end_request(self, reason: str, missed: bool = False, gone: bool = False) -> None:
        # (graceful only while nothing of the response was written)
        graceful = self.response.state is ResponseState.NONE
        self._cancel_and_close(reason, graceful=graceful, missed=missed, gone=gone)

    def going_away(self, now: float | None = None, code: int | None = None) -> None:
        """Graceful stop (http_limits), or a handover that gives up on this
        connection: a request in flight whose handoff began (its handler may
        hold its packets for a resume that will not come) ends as one whose
        packets were missed (see _missed)."""
        if self.handoff and self.state is ACTIVE:
            self._end_request("cannot move after all")
            return
        super().going_away(now, code)
