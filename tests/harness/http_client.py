"""Raw-socket HTTP/1.x client for tests (real TCP on loopback).

Every read has a timeout; a timeout raises ``AssertionError``. Everything
the connection received is kept in ``Conn.received`` and how it ended in
``Conn.end`` (``None`` while open, ``"eof"`` or ``"reset"``).
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass, field

DEFAULT_TIMEOUT = 5.0


@dataclass
class Response:
    version: bytes
    code: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes
    interim: list[bytes] = field(default_factory=list)  # raw 1xx responses before it

    def header(self, name: str | bytes, default: bytes | None = None) -> bytes | None:
        key = name.encode().lower() if isinstance(name, str) else name.lower()
        for n, v in self.headers:
            if n.lower() == key:
                return v
        return default

    def header_names(self) -> list[bytes]:
        return [n for n, _ in self.headers]


class Conn:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT,
                 source: str | None = None):
        """``source``: the local address to connect from (127.0.0.x: a
        client address of its own, for --max-conns-per-ip)."""
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""  # received, not yet consumed
        self.received = b""  # everything received
        self.end: str | None = None

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset."""
        linger = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # on, 0 s
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    # -- low-level reads --------------------------------------------------

    def _fill(self, timeout: float) -> bool:
        """Read once; False on EOF/reset. Raise AssertionError on timeout."""
        if self.end is not None:
            return False
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not ready:
            raise AssertionError(f"no data within {timeout:.2f}s; have {self.buf[:200]!r}")
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            self.end = "reset"
            return False
        if not data:
            self.end = "eof"
            return False
        self.buf += data
        self.received += data
        return True

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        deadline = self._deadline(timeout)
        while len(self.buf) < n:
            if not self._fill(deadline - time.monotonic()):
                raise AssertionError(f"connection {self.end} after {self.buf!r}, wanted {n} bytes")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_until(self, marker: bytes, timeout: float | None = None) -> bytes:
        deadline = self._deadline(timeout)
        while marker not in self.buf:
            if not self._fill(deadline - time.monotonic()):
                raise AssertionError(f"connection {self.end} before {marker!r}; have {self.buf!r}")
        idx = self.buf.index(marker) + len(marker)
        data, self.buf = self.buf[:idx], self.buf[idx:]
        return data

    def read_some(self, timeout: float | None = None) -> bytes:
        """Return buffered bytes, or wait for at least one byte (b"" on close)."""
        if not self.buf:
            self._fill(self._deadline(timeout) - time.monotonic())
        data, self.buf = self.buf, b""
        return data

    def read_until_close(self, timeout: float | None = None) -> bytes:
        deadline = self._deadline(timeout)
        while self._fill(deadline - time.monotonic()):
            pass
        data, self.buf = self.buf, b""
        return data

    def expect_closed(self, timeout: float | None = None) -> str:
        """Assert the peer closes with no further bytes; return "eof"/"reset"."""
        data = self.read_until_close(timeout)
        assert data == b"", f"unexpected bytes before close: {data!r}"
        return self.end  # type: ignore[return-value]

    def expect_silence(self, duration: float = 0.3) -> None:
        """Assert nothing arrives (and no close) for ``duration`` seconds."""
        if self.buf:
            raise AssertionError(f"unexpected buffered bytes {self.buf!r}")
        try:
            self._fill(duration)
        except AssertionError:
            return
        raise AssertionError(f"unexpected data or close: {self.buf!r} end={self.end}")

    # -- HTTP -------------------------------------------------------------

    def read_head(self, timeout: float | None = None) -> bytes:
        return self.read_until(b"\r\n\r\n", timeout)

    def read_response(self, timeout: float | None = None, head_only: bool = False,
                      no_body: bool = False) -> Response:
        """Read one response; 1xx interim responses are collected in ``interim``."""
        deadline = self._deadline(timeout)
        interim: list[bytes] = []
        while True:
            head = self.read_head(deadline - time.monotonic())
            version, code, reason, headers = parse_head(head)
            if 100 <= code < 200 and code != 101:
                interim.append(head)
                continue
            break
        raw = head
        body = b""
        if not head_only and not (no_body or code in (101, 204, 304)):
            te = next((v for n, v in headers if n.lower() == b"transfer-encoding"), None)
            cl = next((v for n, v in headers if n.lower() == b"content-length"), None)
            if te is not None and te.lower() == b"chunked":
                body, framing = self._read_chunked(deadline)
                raw += framing
            elif cl is not None:
                body = self.read_exact(int(cl), deadline - time.monotonic())
                raw += body
            else:
                body = self.read_until_close(deadline - time.monotonic())
                raw += body
        return Response(version, code, reason, headers, body, raw, interim)

    def _read_chunked(self, deadline: float) -> tuple[bytes, bytes]:
        body = b""
        framing = b""
        while True:
            line = self.read_until(b"\r\n", deadline - time.monotonic())
            framing += line
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:
                    trailer = self.read_until(b"\r\n", deadline - time.monotonic())
                    framing += trailer
                    if trailer == b"\r\n":
                        return body, framing
            chunk = self.read_exact(size + 2, deadline - time.monotonic())
            framing += chunk
            assert chunk.endswith(b"\r\n"), f"bad chunk terminator {chunk[-2:]!r}"
            body += chunk[:-2]


def parse_head(head: bytes) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]:
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    assert len(status) >= 2 and status[0].startswith(b"HTTP/"), f"bad status line {lines[0]!r}"
    version, code = status[0], int(status[1])
    reason = status[2] if len(status) > 2 else b""
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    return version, code, reason, headers


def connect(port: int, timeout: float = DEFAULT_TIMEOUT) -> Conn:
    return Conn(port, timeout=timeout)


def request(method: str, path: str, headers=(("Host", "example.com"),), body: bytes = b"",
            version: str = "HTTP/1.1") -> bytes:
    """Build request bytes; ``headers`` is a sequence of (name, value) pairs."""
    lines = [f"{method} {path} {version}".encode()]
    for name, value in headers:
        raw = value if isinstance(value, bytes) else value.encode()
        lines.append(name.encode() + b": " + raw)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
