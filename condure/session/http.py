"""The stream-mode HTTP/1.x session: one client connection, sans-I/O.

Theory of operation. A connection carries a sequence of requests; each
request is one ZHTTP session with a fresh id. A cycle goes (the table is
``states.HTTP_TABLE``):

``HEAD``    reading the request head (:mod:`condure.session.head`). Bad
            input is answered here with a 4xx/5xx and the connection
            closes; the handler never hears of it.
``WAIT``    the request packet (seq 0) went out on the first-packet socket;
            the client is not read until the handler's first packet
            arrives (Condure does the same, reference 5.10.2).
``ACTIVE``  the handler answered. The request body (if any) flows to the
            handler against the credits it grants (:mod:`http_body`); the
            response flows to the client against the credits condure
            granted (``--buffer-size`` in the request packet), returned as
            bytes reach the client (:mod:`http_response`).

When the response is complete and the request body was read to its end,
a persistent connection goes back to ``HEAD`` with a new id (pipelined bytes
already read are parsed next); otherwise it closes after the last byte.
Whether it is persistent is :attr:`HttpSession.persistent`, in one place.

Everything the session wants done comes out of :meth:`take_actions`; it
learns the time only from the ``now`` its callers pass. Between requests,
or with a request in flight at a resumable point, it can be exported as a
small record and rebuilt in another process (:mod:`http_snapshot`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from condure.session import http_simple, httpwire, ws_upgrade
from condure.session.actions import Write
from condure.session.contract import Kind, Settings
from condure.session.head import MAX_HEADERS, Head, HeadReader, Refusal
from condure.session.http_body import NO_BODY, RequestBody
from condure.session.http_limits import FRESH_GRACE
from condure.session.http_response import Response, ResponseError
from condure.session.http_snapshot import HttpMoves
from condure.session.limits import OFF, BodyRate, ReadLimits
from condure.session.peer import SESSION_TIMEOUT
from condure.session.records import HttpRecord
from condure.session.states import (
    ACTIVE,
    CLOSED,
    HEAD,
    HTTP_TABLE,
    PROCEEDED,
    UNANSWERED,
    WAIT,
    BodyState,
    Event,
    Handoff,
    ResponseState,
)
from condure.zhttp.packets import (
    Cancel,
    Credit,
    Data,
    Error,
    HandoffProceed,
    HandoffStart,
    Ident,
    KeepAlive,
    Packet,
)

__all__ = ["FRESH_GRACE", "MAX_HEADERS", "HttpSession"]

class HttpSession(HttpMoves):
    """One stream-mode HTTP/1.x connection (see the module docstring)."""

    # Slots (with those of its bases): its 33 attributes are more than an
    # instance dict shares keys for, so every idle keep-alive connection
    # carried a dict of its own, 1.5 KiB.
    __slots__ = ("client_gone", "compression", "deflate_context", "limits",
                 "max_message_size", "messages_max", "new_id", "response")

    kind = Kind.HTTP
    table = HTTP_TABLE
    can_move = True
    close_wait = None  # (a WebSocket's; see contract.Session)
    handoff_later = False

    def __init__(
        self,
        *,
        instance_id: bytes,
        new_id: Callable[[], bytes],
        now: float,
        buffer_size: int = 8192,
        stream_timeout: float = 1800.0,
        scheme: bytes = b"http",
        peer_address: bytes | None = None,
        peer_port: int | None = None,
        leftover: bytes = b"",
        compression: bool = False,
        deflate_context: str = "keep",
        messages_max: int = 100,
        max_message_size: int = 0,
        read_limits: ReadLimits | None = None,
    ) -> None:
        super().__init__(instance_id=instance_id, buffer_size=buffer_size,
                         stream_timeout=stream_timeout, scheme=scheme,
                         peer_address=peer_address, peer_port=peer_port)
        self.new_id = new_id
        self.compression = compression  # WebSocket options (ws_upgrade.upgrade)
        self.deflate_context = deflate_context
        self.messages_max = messages_max
        self.max_message_size = max_message_size
        self.stream_deadline = now + stream_timeout
        # Handover: finish the request under way, start no new one, so the
        # connection becomes resumable and can move (begin_handoff).
        self.hold = False
        self.leaving = False  # the process is stopping: no further request here
        self.served = 0  # requests completed on this connection
        self.leave_at: float | None = None  # when a fresh connection is closed in a drain
        self.limits = read_limits or OFF  # --head-timeout, --body-min-rate
        self.held_since: float | None = None  # the adapter holds reads back (reads_held)
        self.handoff_ask = True
        self.home_id = instance_id  # (a moved request in flight has the old one)
        self._start_cycle(now, leftover)

    @classmethod
    def from_record(cls, record: HttpRecord, *, settings: Settings, instance_id: bytes,
                    new_id: Callable[[], bytes], now: float) -> HttpSession:
        """Rebuild an exported connection (handover, :mod:`http_snapshot`);
        ``resume()`` next."""
        self = cls(
            instance_id=instance_id, new_id=new_id, now=now,
            buffer_size=settings.buffer_size, stream_timeout=settings.stream_timeout,
            scheme=record.scheme, peer_address=record.peer_address,
            peer_port=record.peer_port, compression=settings.compression,
            deflate_context=settings.deflate_context,
            messages_max=settings.messages_max, max_message_size=settings.max_message_size,
            read_limits=settings.read_limits)
        self.restore(record, now)
        return self

    # -- public surface ---------------------------------------------------

    def __repr__(self) -> str:
        return (f"<HttpSession id={self.rid!r} state={self.state} body={self.body.state} "
                f"resp={self.response.state} handler={self.handler!r} out_seq={self.out_seq} "
                f"in_seq={self.in_seq} paused={self.paused}>")

    def leftover(self) -> bytes:
        """Client bytes read and not parsed yet."""
        return self.reader.leftover()

    @property
    def answer_started(self) -> bool:
        """Some of the response went to the client (for failure.last_words)."""
        return self.response.state is not ResponseState.NONE

    @property
    def persistent(self) -> bool:
        """The connection stays open after this request: the client asked
        for it, the process is not stopping, the body was read (not
        abandoned) and the response is not delimited by the close."""
        return (self.keep_alive_asked and not self.leaving
                and self.body.state is not BodyState.ABANDONED
                and not self.response.close_delimited)

    @property
    def timeout_answerable(self) -> bool:
        return ((self.state is WAIT or self.state is ACTIVE)
                and self.response.state is ResponseState.NONE and not self.client_gone)

    @property
    def mid_request(self) -> bool:
        """A request is under way or being read (for failure.last_words)."""
        reader = self.reader
        return self.state is not HEAD or bool(reader.inbuf) or reader.parser is not None

    @property
    def wants_read(self) -> bool:
        """Whether the adapter should read from the client now."""
        state = self.state
        if state is HEAD:
            return not self.hold
        if state is WAIT:
            # Condure does not read while it waits for the handler. Without a
            # body there is nothing to hold back, and reading on spares the
            # loop a reader toggle per request; an EOF is kept for later.
            return (self.body.state is BodyState.NONE and not self.client_gone
                    and self.reader.buffered(False) < self.buffer_size)
        if state is not ACTIVE or self.paused or self.handoff:
            return False  # (moving: the client's bytes stay in the kernel)
        body = self.body.state
        if body is BodyState.READING:
            # Like Condure, read more body only once what was read has gone
            # to the handler, so packets follow the client's reads.
            return not self.body.pieces and self.reader.buffered(False) < self.buffer_size
        if body is BodyState.ABANDONED:
            return False
        # While the response is under way, keep watching for a disconnect;
        # bytes of a pipelined next request wait, bounded.
        return self.reader.buffered(False) < self.buffer_size

    @property
    def awaiting_handler(self) -> bool:
        return self.state is WAIT

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the client; ``b""`` means end of input."""
        state = self.state
        if state is CLOSED:
            return
        if not data:
            if state is WAIT:
                # Condure notices a disconnect in this phase only when the
                # handler answers, and then sends it a cancel (reference
                # 5.10.2); a half-close counts as a disconnect, as in nginx.
                self.client_gone = True
                return
            self._client_eof()
            return
        if state is HEAD and http_simple.take(self, data, now):
            return
        self.reader.feed(data, state is HEAD)
        if state is HEAD:
            if self.head_deadline is None and self.limits.head_timeout:
                self.head_deadline = now + self.limits.head_timeout  # a request begins
            if not self.hold:
                self._read_head(now)
        elif state is ACTIVE and self.body.state is BodyState.READING:
            self.stream_deadline = now + self.stream_timeout
            self._pump_body(now)
            if self.rate is not None:
                self.rate.received(len(data))
                self._sync_rate(now)
            if self.hold:
                self.consider_handoff()

    def receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        """A packet from the handler, already routed to this session's id."""
        if type(packet) is Data and http_simple.answer(self, packet, ident, now):
            return  # a whole response, in one step
        self._any_packet(packet, ident, now)

    def _any_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        """receive_packet's general path (the one-step path's oracle)."""
        self._receive_packet(packet, ident, now)
        if self.rate is not None:
            self._sync_rate(now)  # credits or a pause change whether body is awaited
        if self.hold:
            self.consider_handoff()

    def _receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        if self.state is CLOSED or self.state is HEAD:
            return
        if not self._accept_packet(packet, ident, now):
            return
        first = self.state is WAIT
        if first:
            self._advance(Event.ANSWERED)
            if self.client_gone:
                self._cancel_and_close("client closed")
                return
        kind = type(packet)
        body = self.body
        if kind is Data:
            if TYPE_CHECKING:  # (narrowing for mypy, free at run time)
                assert isinstance(packet, Data)
            if packet.credits and body is not NO_BODY:
                body.credits += packet.credits
            if body.state is BodyState.PENDING or body.state is BodyState.READING:
                # The handler answered before the body was read: stop reading
                # it and close after the response (reference 5.6).
                body.state = BodyState.ABANDONED
            self._response_data(packet, now)
        elif kind is Credit:
            if TYPE_CHECKING:
                assert isinstance(packet, Credit)
            if body is not NO_BODY:
                body.credits += packet.credits
            if first:
                self._begin_body(now)
            elif body.state is BodyState.READING:
                self._pump_body(now)
        elif kind is KeepAlive:
            if first:
                self._begin_body(now)
        elif kind is Cancel or kind is Error:
            self._close(graceful=False, reason="ended by handler")
        elif kind is HandoffStart:
            # Anything queued is already with the adapter, which writes what
            # it can at once; then the session stands still until the next
            # packet (reference 5.9). Crossing ours: both sides stopped.
            self._send(HandoffProceed)
            if self.handoff:
                self.handoff = PROCEEDED
            else:
                self.paused = True
            if first:
                self._begin_body(now)
        elif kind is HandoffProceed and (self.handoff is Handoff.ASKED
                                         or self.handoff is UNANSWERED):
            self.handoff = PROCEEDED  # (late: it still makes the move safe)
        elif kind is HandoffProceed and self.adopted and not self.handoff:
            self._send(KeepAlive)  # a late answer: it holds until one (as WebSocketSession)
        else:
            self._abort(f"unexpected {kind.__name__} packet")

    def abort_unknown(self, reason: str) -> None:
        """A packet of unknown type arrived for this session (reference 4.5)."""
        if self.state is WAIT or self.state is ACTIVE:
            self._abort(reason)

    def output_flushed(self, now: float) -> None:
        """The adapter wrote everything queued to the client."""
        response = self.response
        if (response.unflushed and self.state is ACTIVE
                and response.state is ResponseState.STREAMING):
            credits = response.flushed()
            self.stream_deadline = now + self.stream_timeout
            if self.handoff:
                self.credits_owed += credits  # (nothing goes out while moving)
            else:
                self._send(Credit, credits=credits)

    # -- request cycle ----------------------------------------------------

    def _start_cycle(self, now: float, leftover: bytes) -> None:
        self.reader = HeadReader(self.buffer_size, leftover)
        self.rid = self.new_id()
        self.state = HEAD
        self.handler: bytes | None = None
        self.out_seq = 0
        self.in_seq = 0
        self.paused = False
        self.session_deadline = now + SESSION_TIMEOUT
        self.client_gone = False
        self.keep_alive_asked = False
        self.body = NO_BODY
        self.response = Response(self.buffer_size)
        self.rate: BodyRate | None = None
        # A request moved here in flight kept its id and address; the next
        # one is this process's own (http_snapshot).
        self.instance_id = self.home_id
        self.adopted = self.unheard = False
        self.handoff = Handoff.NONE
        self.credits_owed = 0
        # A new connection owes its head at once; a kept-alive one from its first byte.
        timeout = self.limits.head_timeout
        self.head_deadline = (now + timeout if timeout and (not self.served or self.reader.inbuf)
                              else None)
        if self.reader.inbuf and not self.hold:
            self._read_head(now)

    def _read_head(self, now: float) -> None:
        head = self.reader.read_head()
        if head is None:
            return
        self.head_deadline = None
        if isinstance(head, Refusal):
            self._refuse(head.status, head.detail)
            return
        self.stream_deadline = now + self.stream_timeout
        self._request(head)

    def _request(self, head: Head) -> None:
        method, target, headers = head.method, head.target, head.headers
        uri = httpwire.request_uri(self.scheme, headers, target)
        if len(uri) > httpwire.MAX_URI:
            self._refuse(414)
            return
        if ws_upgrade.is_upgrade(headers, http11=head.http11):
            # A WebSocket session takes the connection over (reference 5.7).
            self._advance(Event.UPGRADE)
            self.actions += ws_upgrade.upgrade(self, method, target, headers)
            return
        has_length = False
        more = False
        for key, value in headers:
            name = key.lower()
            if name == b"transfer-encoding":
                has_length = more = True
            elif name == b"content-length":
                has_length = True
                # h11 has checked the value (and that repeats agree): 00 is 0
                more = more or int(value.split(b",")[0].strip() or b"0") > 0
        if has_length:
            self.body = RequestBody()
            self.body.expect(more, head.http11 and b"100-continue" in httpwire.header_tokens(
                headers, b"expect"))
        http_simple.start_request(self, method, uri, headers, head.http11, head.keep_alive(),
                                  more=more, wire=None)

    def _maybe_finish(self, now: float) -> None:
        if self.response.state is not ResponseState.DONE:
            return
        body = self.body.state
        if body is BodyState.PENDING or body is BodyState.READING:
            return
        self.served += 1
        if self.persistent:
            self._advance(Event.NEXT)
            self._start_cycle(now, self.reader.leftover())
        else:
            self._close(graceful=True, reason="response complete")

    # -- request body -------------------------------------------------------

    def _begin_body(self, now: float) -> None:
        body = self.body
        if body.state is not BodyState.PENDING:
            return
        body.state = BodyState.READING
        if self.limits.body_min_rate:
            self.rate = BodyRate(self.limits.body_min_rate, self.limits.body_window)
        if body.expect_continue:
            self.actions.append(Write(b"HTTP/1.1 100 Continue\r\n\r\n"))
        self._pump_body(now)

    def _pump_body(self, now: float) -> None:
        """Move parsed body bytes to the handler as credits allow: one
        packet per piece the parser yields (a chunk, or what one read
        brought), split further only by credits and the buffer size. The
        last piece carries no ``more`` when the end is already known."""
        body = self.body
        if self.handoff:
            return  # (moving: nothing goes to the handler; credits travel)
        while body.credits > 0:
            if not body.pieces and not body.eom and (
                    not self._pull_body() or (not body.pieces and not body.eom)):
                return
            piece = body.take(min(body.credits, self.buffer_size))
            if not body.pieces and not body.eom and not self._pull_body():
                return  # (does the body end right after this piece?)
            body.credits -= len(piece)
            last = body.last
            self._send(Data, body=piece, more=not last)
            if last:
                body.state = BodyState.DONE
                self._maybe_finish(now)
                return

    def _pull_body(self) -> bool:
        body = self.body
        error = body.pull(self.reader)
        if error is not None:
            answer = body.malformed and self.response.state is ResponseState.NONE
            if answer:  # no response went out yet: say why, as req mode does
                self.actions.append(Write(httpwire.error_response(400)))
            self._cancel_and_close(error, graceful=answer)
            return False
        return True

    # -- response -------------------------------------------------------------

    def _response_data(self, packet: Data, now: float) -> None:
        response = self.response
        if response.state is ResponseState.DONE:
            return
        streaming = response.state is ResponseState.STREAMING
        try:
            write = response.data(packet, self.keep_alive_asked and not self.leaving
                                  and self.body.state is not BodyState.ABANDONED,
                                  self.buffer_size)
        except ResponseError as e:
            self._cancel_and_close(str(e), fault=True)
            return
        if write or response.done:  # (the end of a response is marked, if empty)
            self.actions.append(Write(write, ends_response=response.done))
        if response.returned:
            credits, response.returned = response.returned, 0
            if self.handoff:
                self.credits_owed += credits
            else:
                self._send(Credit, credits=credits)
        if not streaming or (packet.more and packet.body):
            self.stream_deadline = now + self.stream_timeout
        if response.done:  # for the client: its exchange is over
            if packet.more:
                self._send(Cancel)  # a HEAD, 204 or 304 the handler goes on with
            self._maybe_finish(now)

    # -- endings ----------------------------------------------------------

    def _client_eof(self) -> None:
        if self.state is HEAD:
            if self.reader.buffered(True):
                self._close(graceful=False, reason="client closed mid-request")
            else:
                self._close(graceful=False, reason="client closed")
            return
        self._cancel_and_close("client closed")

