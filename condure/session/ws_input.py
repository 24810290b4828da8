"""The client-to-handler half of a WebSocket session
(:class:`condure.session.websocket.WebSocketSession`):
client frames parsed, checked (RFC 6455 5, 8.1; RFC 7692), unmasked,
inflated and forwarded to the handler against its credits (reference 5.7.4)."""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from condure.session import utf8
from condure.session.states import OPEN, Phase
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
    FrameHeader,
    Inflater,
    parse_header,
    unmask,
    valid_close_code,
)
from condure.zhttp.packets import Close as ClosePacket
from condure.zhttp.packets import Data, Packet, Ping, Pong

if TYPE_CHECKING:
    from condure.session.records import WsRecord
    from condure.session.ws_handshake import Deflate
    from condure.session.ws_output import HandlerOutput


class Owner(Protocol):
    """What :class:`ClientInput` uses of its session."""

    @property
    def state(self) -> Phase: ...
    @property
    def paused(self) -> bool: ...
    @property
    def handoff(self) -> int: ...  # moving (handover): nothing goes to the handler
    @property
    def output(self) -> HandlerOutput: ...

    def _send(self, kind: Callable[..., Packet], **fields: Any) -> None: ...
    def _send_message(self, content_type: bytes | None, body: bytes) -> None: ...
    def _fail(self, code: int, reason: str) -> None: ...
    def _close(self, *, graceful: bool, reason: str, unanswered: bool = False) -> None: ...


class ClientInput:
    """What the client sends the handler and where it stands: the bytes
    read and not parsed, the frame and the message under way, payload
    waiting for the handler's credits."""

    __slots__ = ("buffer_size", "closed", "credits", "frame", "frame_left", "frame_offset",
                 "inbuf", "inflater", "max_message_size", "msg_compressed", "msg_done",
                 "msg_opcode", "msg_size", "pending", "stop_at_boundary", "utf8")
    # Reads one frame header; a client's frames come masked. (The origin
    # side of client mode reads unmasked ones: client_ws.OriginInput.)
    read_header = staticmethod(parse_header)

    def __init__(self, buffer_size: int, max_message_size: int, deflate: Deflate | None,
                 leftover: bytes) -> None:
        self.buffer_size = buffer_size
        self.max_message_size = max_message_size  # 0: no limit
        self.inbuf = bytearray(leftover)  # read, not parsed yet
        self.frame: FrameHeader | None = None  # header of the data frame being read
        self.frame_left = 0
        self.frame_offset = 0
        self.msg_opcode = 0  # TEXT/BINARY while a client message is under way
        self.msg_compressed = False
        self.msg_done = False  # its last payload byte is in ``pending``
        self.msg_size = 0  # bytes of it so far
        self.pending = bytearray()  # payload for the handler, waiting for credits
        self.utf8: codecs.IncrementalDecoder | None = None
        self.credits = 0  # bytes condure may still send the handler
        self.closed = False  # the client sent its close frame
        self.inflater = Inflater(deflate.client_no_context_takeover) if deflate else None
        # A handover waits for the compressed message under way to end:
        # nothing after it is read (see mid_compressed).
        self.stop_at_boundary = False

    # -- moving (handover): see condure.session.records -------------------------

    @property
    def exportable(self) -> bool:
        """Whether where the client stands can travel in a record: at a
        frame boundary, or inside an uncompressed frame (its parsing state
        travels, the rest of its bytes in ``leftover`` or the kernel)."""
        return self.frame is None or (self.frame_left > 0 and not self.msg_compressed)

    @property
    def mid_compressed(self) -> bool:
        """A compressed client message is being read: the inflater's state
        (its window, a deflate block half read) cannot travel, so the
        session cannot move before the message's end."""
        return self.msg_compressed and not self.msg_done

    @property
    def at_boundary(self) -> bool:
        """A handover waits for this point (``stop_at_boundary``): the
        compressed message under way was read to its end."""
        return self.stop_at_boundary and not self.mid_compressed

    def frame_fields(self) -> tuple[int, int, bytes, bool]:
        """(frame_left, frame_offset, frame_mask, frame_fin) of the record."""
        frame = self.frame
        if frame is None:
            return 0, 0, b"", False
        return self.frame_left, self.frame_offset, frame.mask, frame.fin

    def restore(self, record: WsRecord) -> None:
        """Where the client stood in the exporting process: the message and
        the frame under way, payload not yet sent to the handler."""
        self.msg_opcode = record.msg_opcode
        self.msg_size = record.msg_size
        if record.msg_opcode == TEXT:
            self.utf8 = utf8.decoder()
            self.utf8.decode(record.utf8_partial)
        self.pending += record.pending
        self.msg_done = record.msg_done
        if record.frame_left:
            length = record.frame_offset + record.frame_left
            self.frame = FrameHeader(record.frame_fin, False, CONT, record.frame_mask, length, 0)
            self.frame_left = record.frame_left
            self.frame_offset = record.frame_offset

    # -- client -> handler ----------------------------------------------------

    def pump(self, s: Owner) -> None:
        """Read and forward what may be read and forwarded now."""
        if s.state is not OPEN or s.paused or (not self.inbuf and not self.msg_opcode):
            return  # (without bytes or a message under way there is nothing to do)
        try:
            while s.state is OPEN and not self.closed:
                if not self._whole(s) and not self._forward(s) and not self._parse(s):
                    break
        except FrameError as e:
            s._fail(e.code, e.reason)

    def _whole(self, s: Owner) -> bool:
        """The common case in one step: a whole small unfragmented text or
        binary frame (no RSV bit) while no message is under way, within the
        credits, the buffer and the message size limit, and valid UTF-8 if
        text: forwarded as one packet. Anything else, errors included, is
        left to the general path (:meth:`_parse`, :meth:`_forward`), which
        gives the same result one step at a time."""
        inbuf = self.inbuf
        if (len(inbuf) < 6 or self.frame is not None or self.msg_opcode or s.handoff
                or self.stop_at_boundary):
            return False
        b0, b1 = inbuf[0], inbuf[1]
        if (b0 != 0x81 and b0 != 0x82) or b1 < 0x80:  # FIN + text/binary; masked
            return False
        n = b1 & 0x7F
        size = 6
        if n == 126:
            n = (inbuf[2] << 8) | inbuf[3]
            size = 8
        elif n == 127:
            return False
        if (n > self.credits or self.credits <= 0 or n > self.buffer_size
                or len(inbuf) < size + n
                or (self.max_message_size and n > self.max_message_size)):
            return False
        payload = unmask(bytes(inbuf[size:size + n]), bytes(inbuf[size - 4:size]), 0)
        if b0 == 0x81 and not utf8.valid(payload):
            return False  # the general path fails the connection
        del inbuf[:size + n]
        self.credits -= n
        s._send_message(b"text" if b0 == 0x81 else b"binary", payload)
        return True

    def _forward(self, s: Owner) -> bool:
        """Send (part of) the client message under way, if credits allow."""
        if not self.msg_opcode or s.handoff:
            return False  # (moving: nothing goes to the handler until resumed)
        pending = self.pending
        n = 0
        if pending:
            n = min(self.credits, self.buffer_size, len(pending))
            if n <= 0:
                return False
            body = bytes(pending[:n])
            del pending[:n]
        elif self.msg_done:
            body = b""
        else:
            return False
        last = self.msg_done and not pending
        self.credits -= n
        s._send(Data, content_type=b"binary" if self.msg_opcode == BINARY else b"text",
                   body=body, more=not last)
        if last:
            self.msg_opcode = 0
            self.msg_done = False
            self.msg_compressed = False
        return True

    def _parse(self, s: Owner) -> bool:
        """Read from the client's bytes what may be read now; with no
        credits nothing is (reference 5.7.4)."""
        if s.handoff or self.credits <= 0 or self.at_boundary:
            # Moving: nothing more is read, not even the rest of a frame
            # under way; its state travels in the record (frame_*), its
            # bytes in leftover or the kernel.
            return False
        inflater = self.inflater
        if self.msg_compressed and inflater is not None and not inflater.idle:
            self._add(inflater.take(self.buffer_size or 1))
            self._frame_end()
            return True
        if self.frame is None:
            hdr = self.read_header(self.inbuf, rsv1_allowed=inflater is not None)
            if hdr is None:
                return False
            if hdr.opcode in CONTROL_OPCODES:
                end = hdr.size + hdr.length
                if len(self.inbuf) < end or hdr.length > self.credits:
                    return False
                payload = unmask(bytes(self.inbuf[hdr.size:end]), hdr.mask, 0)
                del self.inbuf[:end]
                self._client_control(s, hdr.opcode, payload)
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
                self.utf8 = utf8.decoder() if hdr.opcode == TEXT else None
            del self.inbuf[:hdr.size]
            self.frame = hdr
            self.frame_left = hdr.length
            self.frame_offset = 0
        elif not self.inbuf:
            return False
        frame = self.frame
        assert frame is not None
        n = min(self.frame_left, len(self.inbuf), self.buffer_size or 1)
        data = unmask(bytes(self.inbuf[:n]), frame.mask, self.frame_offset)
        del self.inbuf[:n]
        self.frame_offset += n
        self.frame_left -= n
        if self.msg_compressed and inflater is not None:
            inflater.feed(data, last=self.frame_left == 0 and frame.fin)
            self._add(inflater.take(self.buffer_size or 1))
        else:
            self._add(data)
        self._frame_end()
        return True

    def _add(self, data: bytes) -> None:
        self.msg_size += len(data)
        if self.max_message_size and self.msg_size > self.max_message_size:
            raise FrameError(MESSAGE_TOO_BIG, "message over --max-message-size")
        if self.utf8 is not None and data and not utf8.feed(self.utf8, data):
            raise FrameError(INVALID_DATA, "invalid UTF-8 in a text message")
        self.pending += data

    def _frame_end(self) -> None:
        hdr = self.frame
        if hdr is None or self.frame_left:
            return
        inflater = self.inflater
        if self.msg_compressed and inflater is not None and not inflater.idle:
            return
        self.frame = None
        if not hdr.fin:
            return
        if self.utf8 is not None:
            if not utf8.feed(self.utf8, b"", True):
                raise FrameError(INVALID_DATA, "incomplete UTF-8 in a text message")
            self.utf8 = None
        if self.msg_compressed and inflater is not None:
            inflater.end_message()
        self.msg_done = True

    def _client_control(self, s: Owner, opcode: int, payload: bytes) -> None:
        if opcode == CLOSE:
            fields = {}
            if len(payload) == 1:
                raise FrameError(PROTOCOL_ERROR, "close frame with a 1-byte payload")
            if payload:
                (code,) = struct.unpack_from("!H", payload)
                if not valid_close_code(code):
                    raise FrameError(PROTOCOL_ERROR, f"close code {code} not allowed")
                if not utf8.valid(payload[2:]):
                    raise FrameError(INVALID_DATA, "close reason is not UTF-8")
                fields = {"code": code, "body": payload[2:]}
            self.credits -= len(payload)
            s._send(ClosePacket, **fields)
            self.closed = True
            if s.output.closed:
                s._close(graceful=True, reason="closed by both sides")
            return
        self.credits -= len(payload)
        s._send(Ping if opcode == PING else Pong, body=payload)
