"""Loopback origins and a driver for condure.net.outconn.OutboundConn, in
the test's own event loop (tests/integration/test_outbound*.py).

``Origin`` is an HTTP/1.1 origin (optionally TLS) on 127.0.0.1 answering
every request with ``conn <n> req <m>``; ``Client`` collects what an
OutboundConn delivers; ``refusing_port`` and ``full_backlog`` give
loopback ports that refuse, or leave a connect hanging (a listener whose
accept queue is full: Linux drops the SYN).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import ssl

from condure.net.outconn import OutboundConn

WAIT = 5.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


class Origin:
    """An HTTP/1.1 origin: every request gets ``200`` with the body
    ``conn <n> req <m>`` (which connection, which request on it)."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.context = context
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.requests: list[tuple[int, bytes]] = []
        self.ended: list[asyncio.Event] = []  # per connection: the client went away
        self.arrived = asyncio.Event()

    async def start(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.writers)
        self.writers.append(writer)
        ended = asyncio.Event()
        self.ended.append(ended)
        self.arrived.set()
        count = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append((index, head))
                body = f"conn {index} req {count}".encode()
                count += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            ended.set()
            writer.close()

    async def accepted(self, n: int) -> None:
        """Wait until ``n`` connections have been accepted."""
        async with asyncio.timeout(WAIT):
            while len(self.writers) < n:
                self.arrived.clear()
                await self.arrived.wait()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


class Client:
    """Drives an OutboundConn: collects what the origin sends."""

    def __init__(self, conn: OutboundConn) -> None:
        self.conn = conn
        self.data = bytearray()
        self.eofs = 0
        self.flushes = 0
        self.changed = asyncio.Event()
        conn.start(self.on_read, self.on_flushed)

    def on_read(self, data: bytes) -> None:
        if data:
            self.data += data
        else:
            self.eofs += 1
        self.changed.set()

    def on_flushed(self) -> None:
        self.flushes += 1
        self.changed.set()

    async def until(self, predicate) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def get(self, path: str = "/", host: str = "origin.test") -> bytes:
        """One request; the response body."""
        self.data.clear()
        self.conn.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())

        def complete() -> bool:
            head, sep, body = bytes(self.data).partition(b"\r\n\r\n")
            if not sep:
                return False
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            return len(body) >= length

        await self.until(complete)
        head, _, body = bytes(self.data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        return body


def open_fds() -> int:
    """Descriptors open in this process, after a garbage collection, so
    that sockets an earlier test left for the collector do not close in
    the middle of a count."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


async def readable(sock: socket.socket) -> None:
    """Wait (on the loop) until ``sock`` has something to read."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        async with asyncio.timeout(WAIT):
            await ready
    finally:
        loop.remove_reader(sock.fileno())


@contextlib.contextmanager
def refusing_port():
    """A port on 127.0.0.1 that refuses connections (bound, not listening,
    so nobody else can take it meanwhile)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def full_backlog():
    """A listener whose accept queue is full: further SYNs are dropped and
    a connect hangs (loopback only)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        first = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        fillers.append(first)
        for _ in range(2):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            fillers.append(sock)
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()
