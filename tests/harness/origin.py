"""A small threaded origin server on loopback, for tests that put a proxy
(Pushpin) in front of condure.

HTTP on any path: ``/echo...`` answers ``"<method> <path>\\n" + body``,
``/big/<n>`` answers ``big_body(n)``, anything else a fixed line; a
``/ws/...`` request that arrives as plain HTTP gets ``426``. A WebSocket
handshake is accepted and every message is echoed back; a close is
answered. Everything received is recorded (``requests``, ``ws_received``,
``ws_closes``) and so is any error serving a connection (``errors``).
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)


@dataclass
class OriginRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


class Origin:
    """Threaded loopback origin: HTTP on any path, WebSocket echo on upgrade."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[OriginRequest] = []  # HTTP requests and WS handshakes
        self.ws_received: list[str | bytes] = []
        self.ws_closes: list[tuple[int, str]] = []
        self.errors: list[str] = []  # what the origin could not serve
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._accepting = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepting.start()

    def close(self) -> None:
        if self.listener.fileno() < 0:
            return
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
        except OSError:
            pass
        self.listener.close()
        self._accepting.join(5)
        with self._lock:
            for conn in self._conns:
                conn.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                method, path, headers = _parse_request_head(head)
                if _is_upgrade(headers):
                    self._record(OriginRequest(method, path, headers, b""))
                    self._serve_ws(conn, head + b"\r\n\r\n" + buf)
                    return
                body, buf = _read_body(conn, headers, buf)
                self._record(OriginRequest(method, path, headers, body))
                if path.startswith("/ws/"):
                    conn.sendall(_response(method, path, b"", 426,
                                           b"WebSocket handshake arrived as plain HTTP\n"))
                else:
                    conn.sendall(_response(method, path, body))
                if any(n.lower() == "connection" and "close" in v.lower() for n, v in headers):
                    return
        except OSError:
            return
        except Exception as e:  # noqa: BLE001 - a failure here shows up as the test's error
            with self._lock:
                self.errors.append(repr(e))
        finally:
            conn.close()

    def _record(self, req: OriginRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def _serve_ws(self, conn: socket.socket, first: bytes) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(first)
        parts: list[str | bytes] = []
        while True:
            out = b""
            for event in ws.events():
                if isinstance(event, Request):
                    out += ws.send(AcceptConnection())
                elif isinstance(event, (TextMessage, BytesMessage)):
                    parts.append(event.data)
                    if event.message_finished:
                        message = parts[0][:0].join(parts)
                        parts = []
                        with self._lock:
                            self.ws_received.append(message)
                        out += ws.send(type(event)(data=message))
                elif isinstance(event, Ping):
                    out += ws.send(event.response())
                elif isinstance(event, CloseConnection):
                    with self._lock:
                        self.ws_closes.append((event.code, event.reason or ""))
                    conn.sendall(out + ws.send(event.response()))
                    return
            if out:
                conn.sendall(out)
            data = conn.recv(65536)
            ws.receive_data(data or None)
            if not data:
                return


def _is_upgrade(headers: list[tuple[str, str]]) -> bool:
    """A WebSocket handshake (both headers; a proxy that forwards the request
    as plain HTTP drops the hop-by-hop ``Connection: Upgrade``)."""
    lowered = [(n.lower(), v.lower()) for n, v in headers]
    return ("upgrade", "websocket") in lowered and any(
        n == "connection" and "upgrade" in v for n, v in lowered)


def _parse_request_head(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return method, path, headers


def _read_body(conn: socket.socket, headers, buf: bytes) -> tuple[bytes, bytes]:
    def fill(n: int) -> None:
        nonlocal buf
        while len(buf) < n:
            data = conn.recv(65536)
            if not data:
                raise OSError("eof in request body")
            buf += data

    def line() -> bytes:
        nonlocal buf
        while b"\r\n" not in buf:
            fill(len(buf) + 1)
        out, _, buf = buf.partition(b"\r\n")
        return out

    lowered = {n.lower(): v for n, v in headers}
    if "chunked" in lowered.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int(line().split(b";")[0], 16)
            if size == 0:
                while line():  # trailers up to the empty line
                    pass
                return body, buf
            fill(size + 2)
            body, buf = body + buf[:size], buf[size + 2:]
    n = int(lowered.get("content-length", "0"))
    fill(n)
    return buf[:n], buf[n:]


def big_body(n: int) -> bytes:
    """The body ``/big/<n>`` answers: ``n`` bytes of a recognisable pattern."""
    pattern = b"0123456789abcdefghijklmnopqrstuvwxyz\n"
    return (pattern * (n // len(pattern) + 1))[:n]


def _response(method: str, path: str, body: bytes, code: int = 200,
              payload: bytes | None = None) -> bytes:
    if payload is None and path.startswith("/big/"):
        payload = big_body(int(path[len("/big/"):]))
    elif payload is None and path.startswith("/echo"):
        payload = f"{method} {path}\n".encode() + body
    elif payload is None:
        payload = b"hello from origin\n"
    reason = {200: "OK", 426: "Upgrade Required"}[code]
    head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nX-Origin: test\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    return head + (payload if method != "HEAD" else b"")
