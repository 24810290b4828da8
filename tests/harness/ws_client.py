"""Raw-socket WebSocket client for tests: hand-made frames on a real TCP
connection (built on ``http_client.Conn``).

    ws = WsConn.open(port, "/chat")            # sends the upgrade request
    req = handler.recv()                       # ... the handler accepts ...
    resp = ws.read_handshake()                 # http_client.Response (101)
    ws.send_frame(OP_TEXT, b"hi")              # masked, FIN, no RSV
    ws.send_frame(OP_TEXT, b"x", mask=False, rsv1=True, fin=False)
    frame = ws.read_frame()                    # Frame(fin, rsv, opcode, payload)
    code, reason = frame.close_code_reason()

Frames can break every rule on purpose: unmasked, RSV bits, reserved
opcodes, oversized or fragmented control frames, bad lengths. ``deflate`` /
``inflate`` implement permessage-deflate payloads (raw deflate, 15-bit
window, sync-flush tail removed) for compressed frames both ways.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass

from tests.harness.http_client import DEFAULT_TIMEOUT, Conn, Response, parse_head

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
DEFLATE_TAIL = b"\x00\x00\xff\xff"


def accept_key(key: str | bytes) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    if isinstance(key, str):
        key = key.encode()
    return base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()


def upgrade_request(path: str = "/ws", host: str = "example.com", key: str = SAMPLE_KEY,
                    version: str | None = "13", method: str = "GET", extensions=(),
                    extra=()) -> bytes:
    """Bytes of an upgrade request; ``key``/``version`` None leaves it out."""
    headers = [("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade")]
    if key is not None:
        headers.append(("Sec-WebSocket-Key", key))
    if version is not None:
        headers.append(("Sec-WebSocket-Version", version))
    headers += [("Sec-WebSocket-Extensions", e) for e in extensions]
    headers += list(extra)
    lines = [f"{method} {path} HTTP/1.1"] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def build_frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: bool | bytes = True,
                rsv1: bool = False, rsv2: bool = False, rsv3: bool = False,
                length: int | None = None) -> bytes:
    """One frame; ``mask`` True picks a random key, bytes give the key,
    False sends unmasked. ``length`` overrides the declared length."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0) \
        | (0x10 if rsv3 else 0) | (opcode & 0x0F)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes([first, mbit | n])
    elif n < 65536:
        head = bytes([first, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4) if mask is True else mask
    return head + key + apply_mask(payload, key)


def apply_mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    reps = key * (len(data) // 4 + 1)
    return (int.from_bytes(data, "big") ^ int.from_bytes(reps[:len(data)], "big")).to_bytes(
        len(data), "big")


def close_payload(code: int | None = None, reason: bytes | str = b"") -> bytes:
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


def deflate(data: bytes, compressor=None) -> bytes:
    """permessage-deflate payload of one message (fresh context unless given)."""
    comp = compressor or zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    out = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(DEFLATE_TAIL)
    return out[:-4]


def inflate(payload: bytes, decompressor=None) -> bytes:
    """Inverse of ``deflate`` (pass one decompressor to keep the context)."""
    dec = decompressor or zlib.decompressobj(-15)
    return dec.decompress(payload + DEFLATE_TAIL)


@dataclass
class Frame:
    fin: bool
    rsv1: bool
    rsv2: bool
    rsv3: bool
    opcode: int
    masked: bool
    payload: bytes
    raw: bytes

    def close_code_reason(self) -> tuple[int | None, bytes]:
        assert self.opcode == OP_CLOSE, f"not a close frame: {self!r}"
        if len(self.payload) < 2:
            return None, b""
        return struct.unpack("!H", self.payload[:2])[0], self.payload[2:]


class WsConn(Conn):
    """A TCP connection that speaks WebSocket frames by hand."""

    @classmethod
    def open(cls, port: int, path: str = "/ws", timeout: float = DEFAULT_TIMEOUT,
             rcvbuf: int | None = None, **kw) -> WsConn:
        """Connect and send an upgrade request (see ``upgrade_request``)."""
        ws = cls(port, timeout=timeout, rcvbuf=rcvbuf)
        ws.key = kw.get("key", SAMPLE_KEY)
        ws.send(upgrade_request(path, **kw))
        return ws

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT,
                 rcvbuf: int | None = None) -> None:
        if rcvbuf is None:
            super().__init__(port, host, timeout)
        else:
            self._connect_small(port, host, timeout, rcvbuf)
        self.key = SAMPLE_KEY
        self.frames: list[Frame] = []  # every frame read

    def _connect_small(self, port: int, host: str, timeout: float, rcvbuf: int) -> None:
        # the receive buffer must be set before connecting to limit the window
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.timeout = timeout
        self.buf = b""
        self.received = b""
        self.end = None

    def read_handshake(self, timeout: float | None = None) -> Response:
        head = self.read_head(timeout)
        version, code, reason, headers = parse_head(head)
        return Response(version, code, reason, headers, b"", head)

    def send_frame(self, opcode: int, payload: bytes = b"", **kw) -> None:
        self.send(build_frame(opcode, payload, **kw))

    def send_text(self, text: str | bytes, **kw) -> None:
        self.send_frame(OP_TEXT, text.encode() if isinstance(text, str) else text, **kw)

    def send_binary(self, data: bytes, **kw) -> None:
        self.send_frame(OP_BINARY, data, **kw)

    def send_close(self, code: int | None = None, reason: bytes | str = b"", **kw) -> None:
        self.send_frame(OP_CLOSE, close_payload(code, reason), **kw)

    def read_frame(self, timeout: float | None = None) -> Frame:
        deadline_timeout = self.timeout if timeout is None else timeout
        head = self.read_exact(2, deadline_timeout)
        b0, b1 = head
        n = b1 & 0x7F
        ext = b""
        if n == 126:
            ext = self.read_exact(2, deadline_timeout)
            n = struct.unpack("!H", ext)[0]
        elif n == 127:
            ext = self.read_exact(8, deadline_timeout)
            n = struct.unpack("!Q", ext)[0]
        key = self.read_exact(4, deadline_timeout) if b1 & 0x80 else b""
        data = self.read_exact(n, deadline_timeout) if n else b""
        payload = apply_mask(data, key) if key else data
        frame = Frame(bool(b0 & 0x80), bool(b0 & 0x40), bool(b0 & 0x20), bool(b0 & 0x10),
                      b0 & 0x0F, bool(key), payload, head + ext + key + data)
        self.frames.append(frame)
        return frame

    def read_message(self, timeout: float | None = None) -> tuple[int, bytes, list[Frame]]:
        """Read a whole data message: (opcode, payload, frames). Control
        frames in between are kept in ``self.frames`` only."""
        frames: list[Frame] = []
        while True:
            f = self.read_frame(timeout)
            if f.opcode >= 0x8:
                continue
            frames.append(f)
            if f.fin:
                break
        return frames[0].opcode, b"".join(f.payload for f in frames), frames

    def read_close(self, timeout: float | None = None) -> tuple[int | None, bytes]:
        """Read frames up to a close frame; return its code and reason."""
        while True:
            f = self.read_frame(timeout)
            if f.opcode == OP_CLOSE:
                return f.close_code_reason()
