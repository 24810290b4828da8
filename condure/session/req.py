"""The req-mode HTTP/1.x session: one client connection, sans-I/O.

Req mode (reference 5.12) trades streaming for simplicity: each request is
read whole, body included (de-chunked), and goes to the handler as a
single packet on the DEALER socket; the handler answers with one data
packet, written to the client with a ``Content-Length``. A cycle goes:

``HEAD``    reading the request head, exactly as in stream mode (the fast
            path and h11, the same refusals); a WebSocket upgrade is
            refused with Condure's 400 text.
``BODY``    reading the body into the body buffer (``--body-buffer-size``);
            a body that cannot fit gets ``413`` and the connection closes.
``WAIT``    the request packet went out; the first data packet for the id
            is the response. Other packet types are ignored, except
            ``error``, which gets ``502`` at once.

One timer (``--req-timeout``) covers a whole cycle from the moment condure
starts waiting for a request, so it also bounds idle keep-alive time. When
it fires while the handler is awaited, the client gets ``504``; otherwise
the connection just closes. A persistent connection starts the next cycle
with a new id once the response is queued.
"""

from __future__ import annotations

from collections.abc import Callable

import h11

from condure.session import httpwire
from condure.session.actions import Send, Write
from condure.session.http import MAX_HEADERS, HttpSession
from condure.session.httpwire import error_response
from condure.session.states import CLOSED, HEAD, WAIT
from condure.zhttp.packets import Data, Error, Ident, Packet

BODY = "BODY"

REQ_SOCKET = "req"
"""``Send.to`` of a req-mode request packet: the DEALER socket (never a
handler address, which is bytes)."""

WEBSOCKET_REFUSAL = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 48\r\n\r\n"
    b"WebSockets not supported on req mode interface.\n")

class ReqSession(HttpSession):
    """One req-mode HTTP/1.x connection (see the module docstring)."""

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
        self.body_buffer_size = body_buffer_size
        self.req_timeout = req_timeout
        super().__init__(instance_id=instance_id, new_id=new_id, now=now,
                         buffer_size=buffer_size, scheme=scheme, peer_address=peer_address,
                         peer_port=peer_port, leftover=leftover)

    def __repr__(self) -> str:
        return (f"<ReqSession id={self.rid!r} state={self.state} body={len(self.body)} "
                f"deadline={self.req_deadline}>")

    # -- public surface ---------------------------------------------------

    @property
    def deadline(self) -> float | None:
        return None if self.state is CLOSED else self.req_deadline

    @property
    def wants_read(self) -> bool:
        if self.state is HEAD or self.state is BODY:
            return True
        # Waiting for the handler: keep watching for a disconnect; bytes of
        # a pipelined next request wait, bounded.
        return self.state is WAIT and self._buffered() < self.buffer_size

    @property
    def resumable(self) -> bool:
        return False  # snapshots cover stream-mode sessions only

    def receive_data(self, data: bytes, now: float) -> None:
        if self.state is CLOSED:
            return
        if not data:
            if self.state is HEAD:
                self._client_eof()
            else:
                # Nobody to tell: a req-mode handler cannot be cancelled.
                self._close(graceful=False, reason="client closed")
            return
        if self.state is BODY:
            self._fed += len(data)
            self.parser.receive_data(data)
            self._read_body()
            return
        super().receive_data(data, now)  # HEAD: parse; WAIT: keep for later

    def receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        if self.state is not WAIT:
            return
        kind = type(packet)
        if kind is Data:
            self._respond(packet, now)
        elif kind is Error:
            # Condure ignores it and lets the client wait for the timeout.
            self._fail(502, "handler sent an error")
        # Anything else (keep-alive, cancel, credit, ...) is ignored, as in Condure.

    def abort_unknown(self, reason: str) -> None:
        """Req mode ignores packets it does not use."""

    def output_flushed(self, now: float) -> None:
        pass

    def handle_timer(self, now: float) -> None:
        if self.state is CLOSED or now < self.req_deadline:
            return
        if self.state is WAIT:
            self.actions.append(Write(error_response(504)))
            self._close(graceful=True, reason="req timeout waiting for the handler",
                        unanswered=True)
        else:
            self._close(graceful=False, reason="req timeout")

    def keep_alive(self) -> None:
        return None  # req mode sends nothing but requests

    def shutdown(self) -> None:
        self._close(graceful=False, reason="shutdown")
        self.actions.clear()
        return None

    # -- request cycle ----------------------------------------------------

    def _start_cycle(self, now: float, leftover: bytes) -> None:
        self.req_deadline = now + self.req_timeout
        self.body = bytearray()
        self.request: Data | None = None
        super()._start_cycle(now, leftover)

    def _request(self, method: bytes, target: bytes, http11: bool,
                 headers: tuple[tuple[bytes, bytes], ...]) -> None:
        if len(headers) > MAX_HEADERS:
            self._refuse(431, "too many request headers")
            return
        if b"websocket" in httpwire.header_tokens(headers, b"upgrade"):
            self.actions.append(Write(WEBSOCKET_REFUSAL))
            self._close(graceful=True, reason="WebSocket upgrade on a req listener")
            return
        uri = httpwire.request_uri(self.scheme, headers, target)
        if len(uri) > httpwire.MAX_URI:
            self._refuse(414)
            return
        self.http11 = http11
        self.is_head = method == b"HEAD"
        connection = httpwire.header_tokens(headers, b"connection")
        if http11:
            self.persistent = b"close" not in connection
        else:
            self.persistent = b"keep-alive" in connection and b"close" not in connection
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
            method=method,
            uri=uri,
            headers=headers or None,
            peer_address=self.peer_address,
            peer_port=self.peer_port,
        )
        if not has_body:
            self._send_request()
            return
        if http11 and more and b"100-continue" in httpwire.header_tokens(headers, b"expect"):
            self.actions.append(Write(b"HTTP/1.1 100 Continue\r\n\r\n"))
        self.state = BODY
        self._read_body()

    def _read_body(self) -> None:
        """Take what the parser has of the body; send the request at its end."""
        body = self.body
        while True:
            try:
                event = self.parser.next_event()
            except h11.RemoteProtocolError as e:
                self._refuse(400, f"malformed request body: {e}")
                return
            kind = type(event)
            if kind is h11.Data:
                body += event.data
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
        request.body = bytes(self.body)
        self.request = None
        self.body = bytearray()
        self.state = WAIT
        self.actions.append(Send(request, REQ_SOCKET))

    def _respond(self, packet: Data, now: float) -> None:
        code = packet.code or 0
        headers = packet.headers or ()
        body = packet.body
        if len(body) > self.body_buffer_size:
            self._fail(502, "response body larger than the body buffer")
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
        if self.persistent:
            connection = None if self.http11 else b"keep-alive"
        else:
            connection = b"close" if self.http11 else None
        head = httpwire.response_head(
            http11=self.http11, code=code, reason=packet.reason or b"", headers=headers,
            connection=connection, content_length=length, chunked=False)
        if len(head) > self.buffer_size:
            self._fail(502, "response head larger than the buffer")
            return
        self.actions.append(Write(head + body if body else head))
        if self.persistent:
            self._start_cycle(now, self._leftover())
        else:
            self._close(graceful=True, reason="response complete")

    # -- endings ----------------------------------------------------------

    def _fail(self, status: int, reason: str) -> None:
        """Answer ``status`` ourselves and close after it."""
        self.actions.append(Write(error_response(status)))
        self._close(graceful=True, reason=reason)
