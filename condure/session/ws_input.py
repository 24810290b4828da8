"""The client-to-handler half of :class:`condure.session.websocket.WebSocketSession`:
client frames parsed, checked (RFC 6455 5, 8.1; RFC 7692), unmasked,
inflated and forwarded to the handler against its credits (reference 5.7.4)."""

from __future__ import annotations

import codecs
import struct

from condure.session.ws_frames import (
    BINARY,
    CLOSE,
    CONT,
    CONTROL_OPCODES,
    INVALID_DATA,
    MESSAGE_TOO_BIG,
    PING,
    PROTOCOL_ERROR,
    TEXT,
    FrameError,
    parse_header,
    unmask,
    valid_close_code,
)
from condure.zhttp.packets import Close as ClosePacket
from condure.zhttp.packets import Data, Ping, Pong

OPEN = "OPEN"
_utf8 = codecs.getincrementaldecoder("utf-8")


class InputMixin:
    """Client-to-handler flow. Mixed into WebSocketSession."""

    # -- client -> handler ----------------------------------------------------

    def _pump(self) -> None:
        if self.state is not OPEN or self.paused:
            return
        try:
            while self.state is OPEN and not self.in_closed:
                if not self._forward() and not self._parse():
                    break
        except FrameError as e:
            self._fail(e.code, e.reason)

    def _forward(self) -> bool:
        """Send (part of) the client message under way, if credits allow."""
        if not self.msg_opcode or self.handoff:
            return False  # (moving: nothing goes to the handler until resumed)
        pending = self.pending
        n = 0
        if pending:
            n = min(self.in_credits, self.buffer_size, len(pending))
            if n <= 0:
                return False
            body = bytes(pending[:n])
            del pending[:n]
        elif self.msg_done:
            body = b""
        else:
            return False
        last = self.msg_done and not pending
        self.in_credits -= n
        self._send(Data, content_type=b"binary" if self.msg_opcode == BINARY else b"text",
                   body=body, more=not last)
        if last:
            self.msg_opcode = 0
            self.msg_done = False
            self.msg_compressed = False
        return True

    def _parse(self) -> bool:
        """Read from the client's bytes what may be read now; with no
        credits nothing is (reference 5.7.4)."""
        if self.handoff and self.frame is None:
            return False  # moving: no new frame is started here
        if self.in_credits <= 0 and not self.handoff:
            return False
        inflater = self.inflater
        if self.msg_compressed and not inflater.idle:
            self._add(inflater.take(self.buffer_size or 1))
            self._frame_end()
            return True
        if self.frame is None:
            hdr = parse_header(self.inbuf, rsv1_allowed=inflater is not None)
            if hdr is None:
                return False
            if hdr.opcode in CONTROL_OPCODES:
                end = hdr.size + hdr.length
                if len(self.inbuf) < end or hdr.length > self.in_credits:
                    return False
                payload = unmask(bytes(self.inbuf[hdr.size:end]), hdr.mask, 0)
                del self.inbuf[:end]
                self._client_control(hdr.opcode, payload)
                return True
            if hdr.opcode == CONT:
                if not self.msg_opcode:
                    raise FrameError(PROTOCOL_ERROR, "continuation frame without a message")
            elif self.msg_opcode:
                raise FrameError(PROTOCOL_ERROR, "new message inside a fragmented message")
            else:
                self.msg_opcode = hdr.opcode
                self.msg_compressed = hdr.rsv1
                self.msg_size = 0
                self.utf8 = _utf8() if hdr.opcode == TEXT else None
            del self.inbuf[:hdr.size]
            self.frame = hdr
            self.frame_left = hdr.length
            self.frame_offset = 0
        elif not self.inbuf:
            return False
        n = min(self.frame_left, len(self.inbuf), self.buffer_size or 1)
        data = unmask(bytes(self.inbuf[:n]), self.frame.mask, self.frame_offset)
        del self.inbuf[:n]
        self.frame_offset += n
        self.frame_left -= n
        if self.msg_compressed:
            inflater.feed(data, last=self.frame_left == 0 and self.frame.fin)
            self._add(inflater.take(self.buffer_size or 1))
        else:
            self._add(data)
        self._frame_end()
        return True

    def _add(self, data: bytes) -> None:
        self.msg_size += len(data)
        if self.max_message_size and self.msg_size > self.max_message_size:
            raise FrameError(MESSAGE_TOO_BIG, "message over --max-message-size")
        if self.utf8 is not None and data:
            try:
                self.utf8.decode(data)
            except UnicodeDecodeError:
                raise FrameError(INVALID_DATA, "invalid UTF-8 in a text message") from None
        self.pending += data

    def _frame_end(self) -> None:
        hdr = self.frame
        if hdr is None or self.frame_left:
            return
        if self.msg_compressed and not self.inflater.idle:
            return
        self.frame = None
        if not hdr.fin:
            return
        if self.utf8 is not None:
            try:
                self.utf8.decode(b"", True)
            except UnicodeDecodeError:
                raise FrameError(INVALID_DATA, "incomplete UTF-8 in a text message") from None
            self.utf8 = None
        if self.msg_compressed:
            self.inflater.end_message()
        self.msg_done = True

    def _client_control(self, opcode: int, payload: bytes) -> None:
        if opcode == CLOSE:
            fields = {}
            if len(payload) == 1:
                raise FrameError(PROTOCOL_ERROR, "close frame with a 1-byte payload")
            if payload:
                (code,) = struct.unpack_from("!H", payload)
                if not valid_close_code(code):
                    raise FrameError(PROTOCOL_ERROR, f"close code {code} not allowed")
                try:
                    payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    raise FrameError(INVALID_DATA, "close reason is not UTF-8") from None
                fields = {"code": code, "body": payload[2:]}
            self.in_credits -= len(payload)
            self._send(ClosePacket, **fields)
            self.in_closed = True
            if self.out_closed:
                self._close(graceful=True, reason="closed by both sides")
            return
        self.in_credits -= len(payload)
        self._send(Ping if opcode == PING else Pong, body=payload)
