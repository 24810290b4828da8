"""The req-mode HTTP/1.x session: one client connection, sans-I/O.

Req mode (reference 5.12) trades streaming for simplicity: each request is
read whole, body included (de-chunked), and goes to the handler as a
single packet on the DEALER socket; the handler answers with one data
packet, written to the client with a ``Content-Length``. A cycle goes:

``HEAD``    reading the request head, exactly as in stream mode (the fast
            path and h11, the same refusals); a WebSocket upgrade is
            refused with Condure's 400 text (an HTTP/1.0 request's
            ``Upgrade`` is ignored: a plain request).
``BODY``    reading the body into the body buffer (``--body-buffer-size``);
            a body that cannot fit gets ``413`` and the connection closes.
``WAIT``    the request packet went out; the first data packet for the id
            is the response. Other packet types are ignored, except
            ``error``, which gets ``502`` at once.

One timer (``--req-timeout``) covers a whole cycle from the moment condure
starts waiting for a request, so it also bounds idle keep-alive time. When
it fires while the handler is awaited, the client gets ``504``; while a
request is still being read (part of its head or body came), ``408``; on an
idle connection it just closes. A persistent connection starts the next cycle
with a new id once the response is queued.

A connection between requests moves to another process on a reload or a
restart (:mod:`condure.session.req_snapshot`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import h11

from condure.session import http_simple, httpwire
from condure.session.actions import Action, Close, Send, Write
from condure.session.contract import Kind, Settings
from condure.session.head import Head, HeadReader, Refusal
from condure.session.httpwire import error_response
from condure.session.req_record import ReqRecord
from condure.session.req_snapshot import ReqMoves
from condure.session.states import BODY, CLOSED, HEAD, REQ_TABLE, WAIT, Event, Phase, advance
from condure.session.ws_handshake import is_upgrade
from condure.zhttp.packets import Data, Error, Header, Ident, Packet
from condure.zhttp.plain import encode_request

__all__ = ["BODY", "REQ_SOCKET", "WEBSOCKET_REFUSAL", "ReqSession"]

# A connection accepted just before a graceful stop may not have sent its
# request yet; this is how long a drain waits for it (as in stream mode).
FRESH_GRACE = 1.0

REQ_SOCKET = "req"
"""``Send.to`` of a req-mode request packet: the DEALER socket (never a
handler address, which is bytes)."""

WEBSOCKET_REFUSAL = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 48\r\n\r\n"
    b"WebSockets not supported on req mode interface.\n")


class ReqSession(ReqMoves):
    """One req-mode HTTP/1.x connection (see the module docstring)."""

    kind = Kind.REQ
    handler = None  # req-mode handlers are never addressed

    def __init__(
        self,
        *,
        instance_id: bytes,
        new_id: Callable[[], bytes],
        now: float,
        buffer_size: int = 8192,
        body_buffer_size: int = 100000,
        req_timeout: float = 30.0,
        scheme: bytes = b"http",
        peer_address: bytes | None = None,
        peer_port: int | None = None,
        leftover: bytes = b"",
    ) -> None:
        self.instance_id = instance_id
        self.new_id = new_id
        self.buffer_size = buffer_size
        self.body_buffer_size = body_buffer_size
        self.req_timeout = req_timeout
        self.scheme = scheme
        self.peer_address = peer_address
        self.peer_port = peer_port
        self.actions: list[Action] = []
        self.state: Phase = HEAD
        self.leave_at: float | None = None  # when a fresh connection is closed in a drain
        self.client_eof = False  # the client shut its side down: close after this answer
        # Handover: finish the request under way, start no new one, so the
        # connection becomes resumable and can move (req_snapshot).
        self.hold = False
        self._start_cycle(now, leftover)

    @classmethod
    def from_record(cls, record: ReqRecord, *, settings: Settings, instance_id: bytes,
                    new_id: Callable[[], bytes], now: float) -> ReqSession:
        """Rebuild an exported connection (handover, :mod:`req_snapshot`);
        bytes of a next request that travelled are parsed now."""
        self = cls(instance_id=instance_id, new_id=new_id, now=now,
                   buffer_size=settings.buffer_size,
                   body_buffer_size=settings.body_buffer_size,
                   req_timeout=settings.req_timeout, scheme=record.scheme,
                   peer_address=record.peer_address, peer_port=record.peer_port,
                   leftover=record.leftover)
        self.restore(record, now)
        return self

    def __repr__(self) -> str:
        return (f"<ReqSession id={self.rid!r} state={self.state} body={len(self.body)} "
                f"deadline={self.req_deadline}>")

    @property
    def persistent(self) -> bool:
        """The connection stays open after this response: the client asked
        for it and no graceful stop began while it was served."""
        return self.keep_alive_asked and not self.cut_short and not self.client_eof

    @property
    def awaiting_handler(self) -> bool:
        return self.state is WAIT

    @property
    def mid_request(self) -> bool:
        """A request is under way or being read (for failure.last_words)."""
        return (self.state is not HEAD or bool(self.reader.inbuf)
                or self.reader.parser is not None)

    answer_started = False  # the response is written whole, at once

    def take_actions(self) -> list[Action]:
        actions, self.actions = self.actions, []
        return actions

    def going_away(self, now: float | None = None, code: int | None = None) -> None:
        """Graceful stop of the process (called repeatedly while draining),
        or a handover that gives up on this connection: an idle connection
        closes (after FRESH_GRACE when ``now`` is given); a request under
        way is answered with ``Connection: close``, and so is a next one
        the handover kept from starting."""
        if self.state is CLOSED:
            return
        if self.hold:
            self.hold = False
            if self.state is HEAD and self.reader.buffered(True):
                self._read_head()
        if self.state is HEAD and not self.reader.buffered(True) and not self.actions:
            if now is None:
                self._close(graceful=True, reason="going away")
            elif self.leave_at is None:
                self.leave_at = now + FRESH_GRACE
            elif now >= self.leave_at:
                self._close(graceful=True, reason="going away: no request came")
        elif self.state is not HEAD:
            self.cut_short = True

    # -- public surface ---------------------------------------------------

    @property
    def deadline(self) -> float | None:
        return None if self.state is CLOSED else self.req_deadline

    @property
    def wants_read(self) -> bool:
        if self.state is HEAD:
            return not self.hold  # (moving: the client's bytes stay in the kernel)
        if self.state is BODY:
            return True
        # Waiting for the handler: keep watching for a disconnect; bytes of
        # a pipelined next request wait, bounded.
        return (self.state is WAIT and not self.client_eof
                and self.reader.buffered(False) < self.buffer_size)

    def receive_data(self, data: bytes, now: float) -> None:
        state = self.state
        if state is CLOSED:
            return
        if not data:
            if state is HEAD:
                if self.reader.buffered(True):
                    self._close(graceful=False, reason="client closed mid-request")
                else:
                    self._close(graceful=False, reason="client closed")
            elif state is WAIT:
                # The request is whole: a client that only shut down its
                # side (``nc -N``) still gets the answer, as from Condure;
                # one that is gone makes that write fail.
                self.client_eof = True
            else:
                # Nobody to tell: a req-mode handler cannot be cancelled.
                self._close(graceful=False, reason="client closed")
            return
        if state is HEAD and self.hold:
            self.reader.feed(data, True)  # (the next request waits for the move)
            return
        if state is HEAD:
            simple = http_simple.simple_head(data, self.reader, self.buffer_size, self.scheme)
            if simple is not None:
                self._simple_request(*simple)
                return
        self.reader.feed(data, state is HEAD)
        if state is BODY:
            self._read_body()
        elif state is HEAD:
            self._read_head()
        # WAIT: kept for the next request

    def receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        if self.state is not WAIT:
            return
        kind = type(packet)
        if kind is Data:
            if TYPE_CHECKING:  # (narrowing for mypy, free at run time)
                assert isinstance(packet, Data)
            self._respond(packet, now)
        elif kind is Error:
            # Condure ignores it and lets the client wait for the timeout.
            self._fail(502, "handler sent an error")
        # Anything else (keep-alive, cancel, credit, ...) is ignored, as in Condure.

    def abort_unknown(self, reason: str) -> None:
        """Req mode ignores packets it does not use."""

    def output_flushed(self, now: float) -> None:
        pass

    def reads_held(self, held: bool, now: float) -> None:
        """Req mode has no read-side clocks of its own."""

    def handle_timer(self, now: float) -> None:
        if self.state is CLOSED or now < self.req_deadline:
            return
        if self.state is WAIT:
            self.actions.append(Write(error_response(504)))
            self._close(graceful=True, reason="req timeout waiting for the handler",
                        unanswered=True)
        elif self._partly_read():
            # The rest did not come in time (RFC 9110 15.5.9), as stream
            # mode answers a late head or body.
            self._refuse(408, "req timeout reading the request")
        else:
            self._close(graceful=False, reason="req timeout")

    def _partly_read(self) -> bool:
        """Part of a request came (of its head or its body), not all of it."""
        return self.state is BODY or (self.state is HEAD and bool(self.reader.buffered(True)))

    def keep_alive(self) -> None:
        return None  # req mode sends nothing but requests

    def shutdown(self) -> None:
        """Stop now: a request sent to the handler and not answered yet,
        or one whose head or body is still being read, gets ``503 Service
        Unavailable`` (as ZhttpPeer.shutdown and HttpEndings.stop_words)."""
        self.actions.clear()
        if self.state is WAIT or self._partly_read():
            self.actions.append(Write(error_response(503)))
            self._close(graceful=True, reason="stopping: answered 503")
        else:
            self._close(graceful=False, reason="shutdown")
            self.actions.clear()
        return None

    # -- request cycle ----------------------------------------------------

    def _advance(self, event: Event) -> None:
        try:
            self.state = REQ_TABLE[self.state, event]
        except KeyError:
            advance(REQ_TABLE, self.state, event)  # raises TransitionError

    def _start_cycle(self, now: float, leftover: bytes) -> None:
        self.req_deadline = now + self.req_timeout
        self.body = bytearray()
        self.request: Data | None = None
        self.reader = HeadReader(self.buffer_size, leftover)
        self.rid = self.new_id()
        self.http11 = True
        self.is_head = False
        self.keep_alive_asked = False
        self.cut_short = False  # a graceful stop began while this request was served
        if self.reader.inbuf and not self.hold:
            self._read_head()

    def _read_head(self) -> None:
        head = self.reader.read_head()
        if head is None:
            return
        if isinstance(head, Refusal):
            self._refuse(head.status, head.detail)
            return
        self._request(head)

    def _request(self, head: Head) -> None:
        headers = head.headers
        if is_upgrade(headers, http11=head.http11):
            self.actions.append(Write(WEBSOCKET_REFUSAL))
            self._close(graceful=True, reason="WebSocket upgrade on a req listener")
            return
        uri = httpwire.request_uri(self.scheme, headers, head.target)
        if len(uri) > httpwire.MAX_URI:
            self._refuse(414)
            return
        self.http11 = head.http11
        self.is_head = head.method == b"HEAD"
        self.keep_alive_asked = head.keep_alive()
        has_body = more = False
        for key, value in headers:
            name = key.lower()
            if name == b"transfer-encoding":
                has_body = more = True
            elif name == b"content-length":
                has_body = True
                # h11 has checked the value (and that repeats agree)
                size = int(value.split(b",")[0].strip() or b"0")
                if size > self.body_buffer_size:
                    self._fail(413, "request body larger than the body buffer")
                    return
                more = more or size > 0
        self.request = Data(
            ids=(Ident(self.rid),),
            method=head.method,
            uri=uri,
            headers=headers or None,
            peer_address=self.peer_address,
            peer_port=self.peer_port,
        )
        if not has_body:
            self._send_request()
            return
        if head.http11 and more and b"100-continue" in httpwire.header_tokens(
                headers, b"expect"):
            self.actions.append(Write(b"HTTP/1.1 100 Continue\r\n\r\n"))
        self._advance(Event.BODY)
        self._read_body()

    def _simple_request(self, method: bytes, uri: bytes, headers: tuple[Header, ...],
                        http11: bool, keep_alive: bool) -> None:
        """What _request and _send_request do for a simple head without a
        body (http_simple.simple_head), the packet encoded as it is built;
        tests/unit/test_req_simple.py holds it against the general path."""
        self.http11 = http11
        self.is_head = method == b"HEAD"
        self.keep_alive_asked = keep_alive
        request = Data(ids=(Ident(self.rid),), method=method, uri=uri, headers=headers or None,
                       peer_address=self.peer_address, peer_port=self.peer_port)
        self._advance(Event.REQUEST)
        self.actions.append(Send(request, REQ_SOCKET, encode_request(
            b"", self.rid, None, method, uri, headers, 0, False, self.peer_address,
            self.peer_port)))

    def _read_body(self) -> None:
        """Take what the parser has of the body; send the request at its end."""
        body = self.body
        while True:
            try:
                event = self.reader.next_event()
            except h11.RemoteProtocolError as e:
                self._refuse(400, f"malformed request body: {e}")
                return
            kind = type(event)
            if kind is h11.Data:
                body += event.data  # type: ignore[attr-defined]
                if len(body) > self.body_buffer_size:
                    self._fail(413, "request body larger than the body buffer")
                    return
            elif kind is h11.EndOfMessage:
                self._send_request()
                return
            elif kind is h11.ConnectionClosed:
                self._close(graceful=False, reason="client closed mid-request")
                return
            else:  # NEED_DATA
                return

    def _send_request(self) -> None:
        request = self.request
        assert request is not None
        request.body = bytes(self.body)
        self.request = None
        self.body = bytearray()
        self._advance(Event.REQUEST)
        self.actions.append(Send(request, REQ_SOCKET))

    def _respond(self, packet: Data, now: float) -> None:
        code = packet.code or 0
        headers = packet.headers or ()
        body = packet.body
        fault = httpwire.response_fault(code, packet.reason or b"", headers)
        if fault is not None:
            self._fail(502, fault, fault=True)
            return
        if len(body) > self.body_buffer_size:
            self._fail(502, "response body larger than the body buffer", fault=True)
            return
        length: int | bytes | None = len(body)
        if code < 200 or code in (204, 304):
            length, body = None, b""  # RFC 9110 6.4.1: no content
        elif self.is_head:
            # RFC 9110 9.3.2: no body; the length is the one a GET would get.
            if not body:
                given = [v.strip() for k, v in headers if k.lower() == b"content-length"]
                if given and given[-1].isdigit():
                    length = given[-1]
            body = b""
        persistent = self.persistent
        connection: bytes | None
        if persistent:
            connection = None if self.http11 else b"keep-alive"
        else:
            connection = b"close" if self.http11 else None
        head = httpwire.response_head(
            http11=self.http11, code=code, reason=packet.reason or b"", headers=headers,
            connection=connection, content_length=length, chunked=False)
        if len(head) > self.buffer_size:
            self._fail(502, "response head larger than the buffer", fault=True)
            return
        self.actions.append(Write(head + body if body else head, ends_response=True))
        if persistent:
            self._advance(Event.NEXT)
            self._start_cycle(now, self.reader.leftover())
        else:
            self._close(graceful=True, reason="response complete")

    # -- endings ----------------------------------------------------------

    def _refuse(self, status: int, detail: str = "") -> None:
        self.actions.append(Write(httpwire.error_response(status)))
        self._close(graceful=True, reason=f"refused with {status}: {detail}")

    def _fail(self, status: int, reason: str, fault: bool = False) -> None:
        """Answer ``status`` ourselves and close after it (``fault``: the
        handler broke a rule, which the adapter warns about)."""
        self.actions.append(Write(error_response(status)))
        self._close(graceful=True, reason=reason, fault=fault)

    def _close(self, *, graceful: bool, reason: str, unanswered: bool = False,
               fault: bool = False) -> None:
        if self.state is CLOSED:
            return
        self._advance(Event.CLOSE)
        self.actions.append(Close(graceful=graceful, reason=reason, unanswered=unanswered,
                                  handler_fault=fault))
