"""The handler-to-client half of a WebSocket session: handler packets
become frames at once, one frame per packet, against the credits condure
granted, which come back as the frames reach the client (reference 5.7)."""

from __future__ import annotations

from condure.session.ws_frames import BINARY, CLOSE, CONT, TEXT, Deflater, close_payload, frame
from condure.session.ws_handshake import Deflate
from condure.zhttp.packets import Data


class OutputError(Exception):
    """The handler broke a rule: end the session (with ``cancel`` to the
    handler when ``cancel``)."""

    def __init__(self, reason: str, cancel: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cancel = cancel


class HandlerOutput:
    """What the handler sends the client and where it stands."""

    __slots__ = ("closed", "credits", "deflater", "framed", "limit", "messages", "messages_max",
                 "msg_type", "unflushed")

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
        self.credits -= len(body)
        if not self.msg_type:
            self.msg_type = BINARY if packet.content_type == b"binary" else TEXT
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
            self.messages += 1
        return out

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
