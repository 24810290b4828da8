"""WebSocket framing (RFC 6455 5) and permessage-deflate (RFC 7692) pieces.

Pure helpers for :mod:`condure.session.websocket`: parse a frame header,
unmask, build server frames, and the compressor/decompressor pair. No
state about messages lives here.
"""

from __future__ import annotations

import struct
import zlib

# opcodes
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (CONT, TEXT, BINARY)
CONTROL_OPCODES = (CLOSE, PING, PONG)
MAX_CONTROL = 125  # largest control frame payload (RFC 6455 5.5)

# close codes condure sends itself
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009

_TAIL = b"\x00\x00\xff\xff"  # the end of a sync flush (RFC 7692 7.2.1)


class FrameError(Exception):
    """The client broke the protocol; ``code`` is the close code to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameHeader:
    __slots__ = ("fin", "length", "mask", "opcode", "rsv1", "size")

    def __init__(self, fin: bool, rsv1: bool, opcode: int, mask: bytes, length: int,
                 size: int) -> None:
        self.fin = fin
        self.rsv1 = rsv1
        self.opcode = opcode
        self.mask = mask
        self.length = length
        self.size = size  # bytes of the header itself


def parse_header(buf: bytes | bytearray, *, rsv1_allowed: bool) -> FrameHeader | None:
    """The header at the start of ``buf``, or None when incomplete.

    Raises FrameError for what RFC 6455 5.2 calls failing the connection:
    RSV bits without an extension that defines them, reserved opcodes,
    oversized or fragmented control frames, unmasked client frames, a
    64-bit length with its top bit set.
    """
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    fin = bool(b0 & 0x80)
    rsv1 = bool(b0 & 0x40)
    opcode = b0 & 0x0F
    length = b1 & 0x7F
    size = 2
    if length == 126:
        if len(buf) < 4:
            return None
        (length,) = struct.unpack_from("!H", buf, 2)
        size = 4
    elif length == 127:
        if len(buf) < 10:
            return None
        (length,) = struct.unpack_from("!Q", buf, 2)
        size = 10
        if length >> 63:
            raise FrameError(PROTOCOL_ERROR, "frame length with the top bit set")
    if b0 & 0x30:
        raise FrameError(PROTOCOL_ERROR, "RSV2/RSV3 set")
    if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
        raise FrameError(PROTOCOL_ERROR, f"reserved opcode {opcode}")
    if opcode in CONTROL_OPCODES:
        if not fin:
            raise FrameError(PROTOCOL_ERROR, "fragmented control frame")
        if length > MAX_CONTROL:
            raise FrameError(PROTOCOL_ERROR, "control frame longer than 125 bytes")
        if rsv1:
            raise FrameError(PROTOCOL_ERROR, "RSV1 on a control frame")
    elif rsv1 and (not rsv1_allowed or opcode == CONT):
        raise FrameError(PROTOCOL_ERROR, "RSV1 set without compression")
    if not b1 & 0x80:
        raise FrameError(PROTOCOL_ERROR, "unmasked client frame")
    if len(buf) < size + 4:
        return None
    mask = bytes(buf[size:size + 4])
    return FrameHeader(fin, rsv1, opcode, mask, length, size + 4)


def unmask(data: bytes, mask: bytes, offset: int) -> bytes:
    """``data`` XOR the mask, ``offset`` bytes into the payload."""
    n = len(data)
    if not n:
        return b""
    r = offset & 3
    key = (mask[r:] + mask[:r]) * (n // 4 + 1)
    return (int.from_bytes(data, "little") ^ int.from_bytes(key[:n], "little")).to_bytes(
        n, "little")


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A server frame: unmasked, shortest length encoding."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((b0, n))
    elif n < 0x10000:
        head = struct.pack("!BBH", b0, 126, n)
    else:
        head = struct.pack("!BBQ", b0, 127, n)
    return head + payload


def close_payload(code: int | None, reason: bytes) -> bytes:
    """A close frame payload: code 1000 when none is given (as Condure);
    none at all, reason dropped, for a code no endpoint may send (1005,
    1006, 1015, unassigned ranges: RFC 6455 7.4), which the peer would
    answer by failing the connection; the reason cut to fit a control
    frame, at a character boundary."""
    if code is None:
        return struct.pack("!H", 1000)
    if not valid_close_code(code):
        return b""
    reason = reason[:MAX_CONTROL - 2]
    while reason:
        try:
            reason.decode("utf-8")
            break
        except UnicodeDecodeError:
            reason = reason[:-1]
    return struct.pack("!H", code & 0xFFFF) + reason


def valid_close_code(code: int) -> bool:
    """Codes a peer may put in a close frame (RFC 6455 7.4)."""
    if 3000 <= code <= 4999:
        return True
    return 1000 <= code <= 1014 and code not in (1004, 1005, 1006)


# zlib's memLevel for the compressor of each WebSocket: 4 instead of the
# default 8 takes its state from 256 KiB to 136 KiB ((1 << 17) for the
# 15-bit window, (1 << (memLevel + 9)) for the hash table and the pending
# buffer), for about 1 % larger output (measured on 2,000 JSON messages of
# 0.1-5 KB with context takeover: 14.73 % of the input against 14.56 %).
# A connection manager holds many WebSockets; the window itself stays 15
# bits, which keeps what context takeover gains across messages.
MEM_LEVEL = 4


class Deflater:
    """Compresses outgoing messages: raw deflate, 15-bit window, sync flush
    with its ``00 00 ff ff`` tail removed from the message's end. The zlib
    stream is made on the first message; without context takeover it is
    dropped after every message (nothing to keep while idle)."""

    def __init__(self, no_context_takeover: bool) -> None:
        self.no_context_takeover = no_context_takeover
        self._z: zlib._Compress | None = None

    def compress(self, data: bytes, last: bool) -> bytes:
        z = self._z
        if z is None:
            z = self._z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15,
                                           MEM_LEVEL)
        out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
        if last:
            if out.endswith(_TAIL):
                out = out[:-4]
            if self.no_context_takeover:
                self._z = None
        return out


class Inflater:
    """Decompresses incoming messages in bounded steps."""

    def __init__(self, no_context_takeover: bool) -> None:
        self.no_context_takeover = no_context_takeover
        self._z = zlib.decompressobj(-15)
        self._tail = b""
        self._more = False  # the last take may have left output inside zlib

    def feed(self, data: bytes, last: bool = False) -> None:
        self._tail += data
        if last:
            self._tail += _TAIL

    @property
    def idle(self) -> bool:
        return not self._tail and not self._more

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` inflated bytes; raises FrameError on bad data."""
        try:
            out = self._z.decompress(self._tail, limit)
        except zlib.error as e:
            raise FrameError(INVALID_DATA, f"bad compressed data: {e}") from None
        self._tail = self._z.unconsumed_tail
        if self._z.eof:
            # The client ended the deflate stream (BFINAL); what follows
            # starts a new one.
            self._tail = self._z.unused_data + self._tail
            self._z = zlib.decompressobj(-15)
        self._more = len(out) == limit or bool(self._tail)
        return out

    def end_message(self) -> None:
        if self.no_context_takeover:
            self._z = zlib.decompressobj(-15)


# -- the client role (condure talks to an origin) --------------------------------

def parse_origin_header(buf: bytes | bytearray, *, rsv1_allowed: bool) -> FrameHeader | None:
    """:func:`parse_header` for frames from an origin server: they must be
    unmasked (RFC 6455 5.1; a masked one raises FrameError). The header
    returned has an empty ``mask``; its payload needs no unmasking."""
    if len(buf) < 2:
        return None
    if buf[1] & 0x80:
        raise FrameError(PROTOCOL_ERROR, "masked frame from the server")
    n = buf[1] & 0x7F
    size = 2 if n < 126 else 4 if n == 126 else 10
    if len(buf) < size:
        return None
    # The same checks as a client frame: present it with a zero mask.
    hdr = parse_header(bytes((buf[0], buf[1] | 0x80)) + bytes(buf[2:size]) + b"\0\0\0\0",
                       rsv1_allowed=rsv1_allowed)
    assert hdr is not None
    return FrameHeader(hdr.fin, hdr.rsv1, hdr.opcode, b"", hdr.length, size)


def mask_frame(data: bytes, key: bytes) -> bytes:
    """A frame built by :func:`frame` turned into a client frame: the mask
    bit set, the 4-byte ``key`` after the length, the payload masked."""
    n = data[1] & 0x7F
    size = 2 if n < 126 else 4 if n == 126 else 10
    return (bytes((data[0], data[1] | 0x80)) + data[2:size] + key
            + unmask(data[size:], key, 0))


def masked_frame(opcode: int, payload: bytes, key: bytes, *, fin: bool = True,
                 rsv1: bool = False) -> bytes:
    """A client frame: masked with ``key``, shortest length encoding."""
    return mask_frame(frame(opcode, payload, fin=fin, rsv1=rsv1), key)
