"""The handler-to-client half of a WebSocket session: handler packets
become frames at once, one frame per packet, against the credits condure
granted, which come back as the frames reach the client (reference 5.7).

A handler's text message must be UTF-8 (RFC 6455 5.6, 8.1: a client fails
the connection on anything else, and reports a failure of its own, 1006
in a browser).
Condure writes it unchecked; here it is checked before it is framed, as a
whole when it comes in one packet, else packet by packet as it goes
(:mod:`condure.session.utf8`), and a packet that makes it invalid, or a last
packet that ends it inside a character, is not written: it is a handler
fault (``OutputError`` with ``close_code`` 1011), which fails the WebSocket
with a close frame 1011 (internal error: the client did nothing wrong).
The fragments of a message written before are a valid beginning of a
text, which the client then never sees the end of."""

from __future__ import annotations

import codecs

from condure.session import utf8
from condure.session.ws_frames import BINARY, CLOSE, CONT, TEXT, Deflater, close_payload, frame
from condure.session.ws_handshake import Deflate
from condure.zhttp.packets import Data

INTERNAL_ERROR = 1011  # close code (RFC 6455 7.4.1)


class OutputError(Exception):
    """The handler broke a rule: end the session (with ``cancel`` to the
    handler when ``cancel``; after a close frame with ``close_code`` to
    the peer when that is not 0)."""

    def __init__(self, reason: str, cancel: bool = True, close_code: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cancel = cancel
        self.close_code = close_code


def not_utf8() -> OutputError:
    return OutputError("text message that is not UTF-8 (RFC 6455 8.1)",
                       close_code=INTERNAL_ERROR)


class HandlerOutput:
    """What the handler sends the client and where it stands."""

    __slots__ = ("closed", "credits", "deflater", "framed", "limit", "messages", "messages_max",
                 "msg_type", "unflushed", "utf8")

    def __init__(self, buffer_size: int, deflate: Deflate | None, messages_max: int) -> None:
        # With compression a quarter of the write buffer is the
        # compressor's (reference 10.3).
        self.limit = buffer_size * 3 // 4 if deflate else buffer_size
        self.credits = self.limit  # bytes the handler may still send
        self.unflushed = 0  # bytes written, credits not yet returned
        self.messages = 0  # messages written since the last flush
        self.messages_max = messages_max
        self.msg_type = 0  # opcode of the handler message under way
        self.framed = False  # its first frame was written
        # The check of a text message in several packets, while one is
        # under way (None with msg_type TEXT: adopted unchecked, see
        # restore).
        self.utf8: codecs.IncrementalDecoder | None = None
        self.closed = False  # a close frame went to the client
        self.deflater = Deflater(deflate.server_no_context_takeover) if deflate else None

    def data(self, packet: Data) -> bytes:
        """The frame for a data packet (b"": none; after the close the
        handler's data is dropped, 5.7.6)."""
        if self.closed:
            return b""
        body = packet.body
        last = not packet.more
        if len(body) > self.credits:
            raise OutputError("handler sent more than its credits")
        if last and self.messages >= self.messages_max:
            raise OutputError("too many messages queued")
        if not self.msg_type:
            if packet.content_type == b"binary":
                self.msg_type = BINARY
            else:
                self.msg_type = TEXT
                if not last:
                    self.utf8 = utf8.decoder()
                elif not body.isascii() and not utf8.valid(body):
                    raise not_utf8()
        if self.utf8 is not None and not utf8.feed(self.utf8, body, last):
            raise not_utf8()
        self.credits -= len(body)
        out = b""
        if body or last:
            rsv1 = False
            if self.deflater is not None:
                body = self.deflater.compress(body, last)
                rsv1 = not self.framed
            out = frame(CONT if self.framed else self.msg_type, body, fin=last, rsv1=rsv1)
            self.framed = True
        self.unflushed += len(packet.body)
        if last:
            self.msg_type = 0
            self.framed = False
            self.utf8 = None
            self.messages += 1
        return out

    def restore(self, msg_type: int, framed: bool, utf8_held: bytes | None) -> None:
        """Where the handler's message stood in the exporting process:
        ``utf8_held`` is the unfinished sequence at the end of a text
        message checked so far (None: not checked, as a record of an
        earlier condure says of its messages, which the rest of is not
        either)."""
        self.msg_type = msg_type
        self.framed = framed
        if msg_type == TEXT and utf8_held is not None:
            self.utf8 = utf8.decoder()
            self.utf8.decode(utf8_held)  # (checked by the record's reader)

    @property
    def utf8_held(self) -> bytes | None:
        """What ``restore`` takes back: None unless a text message in
        several packets is under way and being checked."""
        return None if self.utf8 is None else self.utf8.getstate()[0]

    def control(self, opcode: int, body: bytes) -> bytes:
        """The frame for a ping or pong packet (b"": none)."""
        if self.closed:
            return b""
        if len(body) > 125:
            raise OutputError("handler control payload over 125 bytes", cancel=False)
        if len(body) > self.credits:
            raise OutputError("handler sent more than its credits")
        self.credits -= len(body)
        self.unflushed += len(body)
        return frame(opcode, body)

    def close(self, code: int | None, reason: bytes = b"") -> bytes:
        """The close frame (b"" when one already went out)."""
        if self.closed:
            return b""
        self.closed = True
        return frame(CLOSE, close_payload(code, reason))

    def flushed(self) -> int:
        """Everything written reached the kernel: the credits to return."""
        self.messages = 0
        credits, self.unflushed = self.unflushed, 0
        self.credits += credits
        return credits
