"""The response of a stream-mode request: the handler's response written
to the client, with Condure's framing rules (reference 5.3, 5.4) and
condure's credits."""

from __future__ import annotations

from condure.session import httpwire
from condure.session.states import ResponseState
from condure.zhttp.packets import Data


class ResponseError(Exception):
    """The handler broke a rule: the request ends (with ``cancel``)."""


class Response:
    """One response and where it stands (``state``: :class:`ResponseState`)."""

    __slots__ = ("chunked", "close_delimited", "credits", "discard_body", "head_ends",
                 "http11", "is_head", "owed", "returned", "state", "unflushed")

    def __init__(self, credits: int) -> None:
        self.state = ResponseState.NONE
        self.credits = credits  # bytes the handler may still send
        self.unflushed = 0  # bytes written, credits not yet returned
        self.http11 = True
        self.is_head = False
        self.chunked = False
        self.discard_body = False  # HEAD, 204, 304: nothing of the body goes out
        # The request has no body: a response without one ends at its head
        # even when the handler goes on (HEAD of a stream), see data().
        self.head_ends = False
        self.close_delimited = False  # HTTP/1.0 without a length: closing ends it
        self.returned = 0  # credits of the last packet to give straight back
        # Body bytes the handler's own Content-Length still promises (-1:
        # condure frames the body itself, or none goes out).
        self.owed = -1

    @property
    def done(self) -> bool:
        """The response is over, as far as the client is concerned."""
        return self.state is ResponseState.DONE

    @property
    def cut_unmarked(self) -> bool:
        """Its head went out, its end did not, and only the close delimits
        its body: a connection closed now would make the part written look
        complete (RFC 9112 6.3 item 8), so it must be reset. A cut of a
        chunked body (no last chunk) or of one with a Content-Length (bytes
        short) shows, and one with no body (HEAD, 204, 304) is complete."""
        return self.close_delimited and self.state is ResponseState.STREAMING

    def data(self, packet: Data, keep_alive: bool, buffer_size: int) -> bytes:
        """The bytes for the client (b"": none) of a data packet from the
        handler; credits to give straight back are left in ``returned``.
        ``keep_alive``: the connection would stay open after this response
        (if its framing allows). ResponseError: the handler broke a rule."""
        body = packet.body
        if len(body) > self.credits:
            raise ResponseError("handler sent more than its credits")
        self.credits -= len(body)
        if self.state is ResponseState.NONE:
            write = self._head(packet, keep_alive, buffer_size)
            if self.discard_body and self.head_ends:
                # RFC 9112 6.3: the exchange ends with the head; what the
                # handler sends after it (a HEAD of an endless stream) has
                # nowhere to go, so the session cancels it.
                self.state = ResponseState.DONE
                return write
        elif self.owed >= 0:
            self._owe(len(body), packet.more)
            write = body
        elif self.chunked:
            write = httpwire.chunks(body, not packet.more) if body or not packet.more else b""
        else:
            write = body if not self.discard_body else b""
        if packet.more:
            if self.discard_body and body:
                # Nothing reaches the client (HEAD, 204, 304): the credits
                # come straight back so the handler can finish.
                self.credits += len(body)
                self.returned = len(body)
            else:
                self.unflushed += len(body)
        else:
            self.state = ResponseState.DONE
        return write

    def flushed(self) -> int:
        """Everything written reached the kernel: the credits to return."""
        credits, self.unflushed = self.unflushed, 0
        self.credits += credits
        return credits

    def _owe(self, sent: int, more: bool) -> None:
        owed = self.owed - sent
        if owed < 0:
            raise ResponseError("handler sent more body than its Content-Length")
        if owed and not more:
            raise ResponseError("handler ended its body short of its Content-Length")
        self.owed = owed

    def _head(self, packet: Data, keep_alive: bool, buffer_size: int) -> bytes:
        code = packet.code or 0
        headers = packet.headers or ()
        fault = httpwire.response_fault(code, packet.reason or b"", headers)
        if fault is not None:
            raise ResponseError(fault)
        length: int | bytes | None = None
        owed = 0
        for key, value in headers:
            if key.lower() == b"content-length":
                value = value.strip()
                number = httpwire.length_value(value)
                if number is None:
                    raise ResponseError("handler sent an invalid Content-Length")
                if length is not None and number != owed:
                    raise ResponseError("handler sent two Content-Length values")
                length, owed = value, number
        no_body = code < 200 or code in (204, 304)
        self.discard_body = no_body or self.is_head
        if no_body:
            length = None
        elif length is None and not packet.more:
            length = len(packet.body)
        elif length is None and self.http11 and not self.is_head:
            self.chunked = True
        elif length is None and not self.is_head:
            self.close_delimited = True  # no reuse of the connection
        connection: bytes | None
        if keep_alive and not self.close_delimited:
            connection = None if self.http11 else b"keep-alive"
        else:
            connection = b"close" if self.http11 else None
        head = httpwire.response_head(
            http11=self.http11, code=code, reason=packet.reason or b"", headers=headers,
            connection=connection, content_length=length, chunked=self.chunked)
        if len(head) > buffer_size:
            raise ResponseError("response head larger than the buffer")
        body = packet.body
        if isinstance(length, bytes) and not self.discard_body:
            # RFC 9112 6.3: the handler's Content-Length frames the body;
            # a body that overruns it would be read as the next response,
            # one that falls short would leave the client waiting.
            self.owed = owed
            self._owe(len(body), packet.more)
        if self.chunked:
            head += httpwire.chunks(body, not packet.more)
        elif body and not self.discard_body:
            head += body
        self.state = ResponseState.STREAMING
        return head
