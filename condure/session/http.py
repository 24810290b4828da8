"""The stream-mode HTTP/1.x session: one client connection, sans-I/O.

Theory of operation. A connection carries a sequence of requests; each
request is one ZHTTP session with a fresh id. A cycle goes:

``HEAD``    reading the request head (h11 parses it). Bad input is answered
            here with a 4xx/5xx and the connection closes; the handler
            never hears of it.
``WAIT``    the request packet (seq 0) went out on the first-packet socket;
            the client is not read until the handler's first packet
            arrives (Condure does the same, reference 5.10.2).
``ACTIVE``  the handler answered. The request body (if any) flows to the
            handler against the credits it grants; the response flows to
            the client against the credits condure granted (``--buffer-size``
            in the request packet), returned as bytes reach the client.

When the response is complete and the request body was read to its end,
a persistent connection goes back to ``HEAD`` with a new id (pipelined bytes
already read are parsed next); otherwise it closes after the last byte.

Everything the session wants done comes out of :meth:`take_actions`; it
learns the time only from the ``now`` its callers pass. Between requests
(``HEAD`` with no partial request read) it can be exported as a small
record and rebuilt in another process (:mod:`condure.session.snapshot`).
"""

from __future__ import annotations

from collections.abc import Callable

import h11

from condure.session import httpwire, websocket
from condure.session.actions import Action, Send, Write
from condure.session.http_body import BodyMixin
from condure.session.http_response import ResponseMixin
from condure.session.peer import SESSION_TIMEOUT, ZhttpPeer
from condure.session.states import (  # noqa: F401 - re-exported for tests
    ACTIVE,
    BODY_ABANDONED,
    BODY_DONE,
    BODY_PENDING,
    BODY_READING,
    CLOSED,
    HEAD,
    NO_BODY,
    RESP_DONE,
    RESP_NONE,
    RESP_STREAMING,
    WAIT,
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

MAX_HEADERS = 64  # most request headers accepted (reference 7)
# A connection accepted just before a graceful stop may not have sent its
# request yet; this is how long a drain waits for it.
FRESH_GRACE = 1.0


class _Refuse(Exception):
    """A request condure answers itself with ``status``."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _receive_buffer_len(parser: h11.Connection) -> int:
    # h11 keeps unparsed bytes in a private buffer; its public accessor
    # copies them, which is too costly on every read.
    buf = getattr(parser, "_receive_buffer", None)
    return len(buf) if buf is not None else len(parser.trailing_data[0])


class HttpSession(ZhttpPeer, BodyMixin, ResponseMixin):
    """One stream-mode HTTP/1.x connection (see the module docstring)."""

    leaving = False  # the process is stopping: no further request on this connection
    served = 0  # requests completed on this connection
    leave_at: float | None = None  # when a fresh connection is closed in a drain

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
        messages_max: int = 100,
        max_message_size: int = 0,
    ) -> None:
        self.instance_id = instance_id
        self.new_id = new_id
        self.buffer_size = buffer_size
        self.stream_timeout = stream_timeout
        self.scheme = scheme
        self.peer_address = peer_address
        self.peer_port = peer_port
        self.compression = compression  # WebSocket options (websocket.upgrade)
        self.messages_max = messages_max
        self.max_message_size = max_message_size
        self.actions: list[Action] = []
        self.state = HEAD
        self.stream_deadline = now + stream_timeout
        # Handover: finish the request under way, start no new one, so the
        # connection becomes resumable and can move (begin_handoff).
        self.hold = False
        self._start_cycle(now, leftover)

    # -- public surface ---------------------------------------------------

    @property
    def timeout_answerable(self) -> bool:
        return ((self.state is WAIT or self.state is ACTIVE) and self.resp_state is RESP_NONE
                and not self.client_gone)

    def __repr__(self) -> str:
        return (f"<HttpSession id={self.rid!r} state={self.state} body={self.body_state} "
                f"resp={self.resp_state} handler={self.handler!r} out_seq={self.out_seq} "
                f"in_seq={self.in_seq} paused={self.paused}>")

    @property
    def wants_read(self) -> bool:
        """Whether the adapter should read from the client now."""
        if self.state is HEAD:
            return not self.hold
        if self.state is WAIT:
            # Condure does not read while it waits for the handler. Without a
            # body there is nothing to hold back, and reading on spares the
            # loop a reader toggle per request; an EOF is kept for later.
            return (self.body_state is NO_BODY and not self.client_gone
                    and self._buffered() < self.buffer_size)
        if self.state is not ACTIVE or self.paused:
            return False
        if self.body_state is BODY_READING:
            # Like Condure, read more body only once what was read has gone
            # to the handler, so packets follow the client's reads.
            return not self.body_pieces and self._buffered() < self.buffer_size
        if self.body_state is BODY_ABANDONED:
            return False
        # While the response is under way, keep watching for a disconnect;
        # bytes of a pipelined next request wait, bounded.
        return self._buffered() < self.buffer_size

    @property
    def resumable(self) -> bool:
        """True between requests: no request is being served and nothing
        is owed to anyone, so the connection can move elsewhere (bytes of a
        partly read next request travel with it)."""
        return self.state is HEAD and self.handler is None and not self.actions

    def begin_handoff(self) -> bool:
        """Handover starts: no new request from here on; the one under way
        (if any) finishes, then ``resumable`` says the connection can move."""
        self.hold = True
        return True

    def going_away(self, now: float | None = None) -> None:
        """Graceful stop of the process (called repeatedly while draining):
        an idle keep-alive connection closes now (its client retries, RFC
        9112 9.3.1); a new connection whose first request may still be on
        its way gets FRESH_GRACE seconds; a request under way finishes and
        its response says ``Connection: close`` if its head has not gone
        out, then the connection closes."""
        if self.state is CLOSED:
            return
        self.leaving = True
        if self.state is HEAD and not self._buffered() and not self.actions:
            if self.served or now is None:
                self._close(graceful=True, reason="going away")
            elif self.leave_at is None:
                self.leave_at = now + FRESH_GRACE
            elif now >= self.leave_at:
                self._close(graceful=True, reason="going away: no request came")
        elif self.state is not HEAD:
            self.persistent = False

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the client; ``b""`` means end of input."""
        if self.state is CLOSED:
            return
        if not data:
            if self.state is WAIT:
                # Condure notices a disconnect in this phase only when the
                # handler answers, and then sends it a cancel (reference
                # 5.10.2); a half-close counts as a disconnect, as in nginx.
                self.client_gone = True
                return
            self._client_eof()
            return
        parser = self.parser
        if parser is None:
            inbuf = self.inbuf
            if not inbuf and self.state is HEAD:
                # RFC 9112 2.2: ignore empty lines before a request line.
                data = data.lstrip(b"\r\n")
            inbuf += data
        else:
            self._fed += len(data)
            parser.receive_data(data)
            if self.state is HEAD:
                self.raw_head += data
        if self.state is HEAD:
            if not self.hold:
                self._read_head(now)
        elif self.state is ACTIVE and self.body_state is BODY_READING:
            self.stream_deadline = now + self.stream_timeout
            self._pump_body(now)

    def receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        """A packet from the handler, already routed to this session's id."""
        if self.state is CLOSED or self.state is HEAD:
            return
        if not self._accept_packet(packet, ident, now):
            return
        first = self.state is WAIT
        if first:
            self.state = ACTIVE
            if self.client_gone:
                self._cancel_and_close("client closed")
                return
        kind = type(packet)
        if kind is Data:
            if packet.credits:
                self.body_credits += packet.credits
            if self.body_state is BODY_PENDING or self.body_state is BODY_READING:
                # The handler answered before the body was read: stop reading
                # it and close after the response (reference 5.6).
                self.body_state = BODY_ABANDONED
                self.persistent = False
            self._response_data(packet, now)
        elif kind is Credit:
            self.body_credits += packet.credits
            if first:
                self._begin_body(now)
            elif self.body_state is BODY_READING:
                self._pump_body(now)
        elif kind is KeepAlive:
            if first:
                self._begin_body(now)
        elif kind is Cancel or kind is Error:
            self._close(graceful=False, reason="ended by handler")
        elif kind is HandoffStart:
            # Anything queued is already with the adapter, which writes what
            # it can at once; then the session stands still until the next
            # packet (reference 5.9).
            self._send(HandoffProceed)
            self.paused = True
            if first:
                self._begin_body(now)
        else:
            self._abort(f"unexpected {kind.__name__} packet")

    def abort_unknown(self, reason: str) -> None:
        """A packet of unknown type arrived for this session (reference 4.5)."""
        if self.state is WAIT or self.state is ACTIVE:
            self._abort(reason)

    def output_flushed(self, now: float) -> None:
        """The adapter wrote everything queued to the client."""
        if self.unflushed and self.state is ACTIVE and self.resp_state is RESP_STREAMING:
            credits, self.unflushed = self.unflushed, 0
            self.resp_credits += credits
            self.stream_deadline = now + self.stream_timeout
            self._send(Credit, credits=credits)

    # -- request cycle ----------------------------------------------------

    def _start_cycle(self, now: float, leftover: bytes) -> None:
        # Input waits in ``inbuf`` until a request needs h11 (see
        # _read_head); from then until the cycle ends h11 owns it.
        self.inbuf = bytearray(leftover.lstrip(b"\r\n"))
        self.parser: h11.Connection | None = None
        self.raw_head = b""
        self._fed = 0
        self.rid = self.new_id()
        self.state = HEAD
        self.handler: bytes | None = None
        self.out_seq = 0
        self.in_seq = 0
        self.paused = False
        self.session_deadline = now + SESSION_TIMEOUT
        self.body_state = NO_BODY
        self.body_pieces: list[bytes] = []  # body read, not yet sent, as the client's pieces
        self.client_gone = False
        self.body_eom = False
        self.body_credits = 0
        self.expect_continue = False
        self.resp_state = RESP_NONE
        self.resp_credits = self.buffer_size
        self.unflushed = 0
        self.chunked = False
        self.discard_body = False
        self.close_delimited = False
        self.http11 = True
        self.is_head = False
        self.persistent = False
        if self.inbuf and not self.hold:
            self._read_head(now)

    def _buffered(self) -> int:
        """Client bytes read but not parsed yet."""
        if self.parser is None:
            return len(self.inbuf)
        return _receive_buffer_len(self.parser)

    def _leftover(self) -> bytes:
        if self.parser is None:
            return bytes(self.inbuf)
        return bytes(self.parser.trailing_data[0])

    def _read_head(self, now: float) -> None:
        if self.parser is None:
            inbuf = self.inbuf
            end = inbuf.find(b"\r\n\r\n")
            if end < 0:
                if len(inbuf) <= self.buffer_size and b"\n\n" not in inbuf \
                        and b"\n\r\n" not in inbuf:
                    return  # not complete yet
            elif end + 4 <= self.buffer_size:
                simple = httpwire.parse_simple_head(bytes(inbuf[:end]))
                if simple is not None:
                    del inbuf[:end + 4]
                    self.stream_deadline = now + self.stream_timeout
                    method, target, http11, headers = simple
                    self._request(method, target, http11, tuple(headers))
                    return
            # Not a simple head: h11 takes over the input from here. The raw
            # head is kept: h11 normalises some values (Transfer-Encoding,
            # repeated Content-Length) that condure forwards verbatim.
            self.raw_head = bytes(inbuf)
            self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.buffer_size)
            self._fed = len(inbuf)
            self.parser.receive_data(self.raw_head)
            inbuf.clear()
        try:
            event = self.parser.next_event()
            if event is h11.NEED_DATA:
                return
            if type(event) is not h11.Request:
                raise _Refuse(400)
            self._check_head(event)
        except h11.RemoteProtocolError as e:
            self._refuse(e.error_status_hint or 400, str(e))
            return
        except _Refuse as e:
            self._refuse(e.status, e.detail)
            return
        self.stream_deadline = now + self.stream_timeout
        head_size = self._fed - _receive_buffer_len(self.parser)
        headers = httpwire.raw_headers(self.raw_head[:head_size])
        if headers is None:
            self._refuse(400, "obsolete line folding")
            return
        self._request(event.method, event.target, event.http_version == b"1.1", headers)

    def _check_head(self, event: h11.Request) -> None:
        if event.http_version not in (b"1.1", b"1.0"):
            raise _Refuse(505)
        if self._fed - _receive_buffer_len(self.parser) > self.buffer_size:
            raise _Refuse(431, "request head larger than the buffer")

    def _request(self, method: bytes, target: bytes, http11: bool,
                 headers: tuple[tuple[bytes, bytes], ...]) -> None:
        if len(headers) > MAX_HEADERS:
            self._refuse(431, "too many request headers")
            return
        uri = httpwire.request_uri(self.scheme, headers, target)
        if len(uri) > httpwire.MAX_URI:
            self._refuse(414)
            return
        if websocket.is_upgrade(headers):
            # A WebSocket session takes the connection over (reference 5.7).
            self.state = CLOSED
            self.actions += websocket.upgrade(self, method, target, headers)
            return
        self.http11 = http11
        self.is_head = method == b"HEAD"
        connection = httpwire.header_tokens(headers, b"connection")
        if self.http11:
            self.persistent = b"close" not in connection
        else:
            self.persistent = b"keep-alive" in connection and b"close" not in connection
        if self.leaving:
            self.persistent = False  # the process is stopping: last request here
        has_length = False
        more = False
        for key, value in headers:
            name = key.lower()
            if name == b"transfer-encoding":
                has_length = more = True
            elif name == b"content-length":
                has_length = True
                more = more or value.strip() != b"0"
        if has_length:
            self.body_state = BODY_PENDING
            self.expect_continue = (
                self.http11 and more and b"100-continue" in httpwire.header_tokens(headers, b"expect"))
        self.state = WAIT
        packet = Data(
            from_=self.instance_id,
            ids=(Ident(self.rid, 0),),
            method=method,
            uri=uri,
            headers=headers or None,
            credits=self.buffer_size,
            more=more,
            stream=True,
            peer_address=self.peer_address,
            peer_port=self.peer_port,
        )
        self.out_seq = 1
        self.actions.append(Send(packet, None))

    def _refuse(self, status: int, detail: str = "") -> None:
        self.actions.append(Write(httpwire.error_response(status)))
        self._close(graceful=True, reason=f"refused with {status}: {detail}")

    def _maybe_finish(self, now: float) -> None:
        if self.resp_state is not RESP_DONE:
            return
        if self.body_state is BODY_PENDING or self.body_state is BODY_READING:
            return
        self.served += 1
        if self.persistent and not self.leaving and self.body_state is not BODY_ABANDONED:
            self._start_cycle(now, self._leftover())
        else:
            self._close(graceful=True, reason="response complete")

    # -- endings ----------------------------------------------------------

    def _client_eof(self) -> None:
        if self.state is HEAD:
            if self._buffered():
                self._close(graceful=False, reason="client closed mid-request")
            else:
                self._close(graceful=False, reason="client closed")
            return
        self._cancel_and_close("client closed")

