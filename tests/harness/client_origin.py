"""A scriptable HTTP/1.1 origin and a recording client host, for the
tests of condure.net.clientconn (tests/integration/test_clientconn.py).

``Origin`` runs on 127.0.0.1 in the test's loop (optionally TLS): it reads
each request (Content-Length or chunked body) and answers with what
``respond(request)`` returns (None: no answer, it waits for the client to
go; a coroutine function may be given, so that an origin can hold its
answers until something happens). ``Host`` is what a ClientConn needs from
the worker: it records the packets published to handlers, the req-mode
replies and the releases, and keeps one ``call_at`` timer per exchange.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from condure.net.clientconn import ClientConn
from condure.net.outbound import Connector
from condure.net.pool import Pool
from condure.zhttp.packets import Data, Error, Packet
from tests.harness.outbound_origin import WAIT

# -- a scriptable origin ------------------------------------------------------------


@dataclass
class Request:
    conn: int  # which connection (0, 1, ...)
    method: bytes
    path: bytes
    headers: dict[bytes, bytes]
    body: bytes


# None: answer nothing, wait for EOF; an awaitable is awaited for the answer
Respond = Callable[[Request], "bytes | Awaitable[bytes | None] | None"]


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += await reader.readexactly(size)
        await reader.readexactly(2)


class Origin:
    def __init__(self, respond: Respond, context: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.context = context
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.ended: list[asyncio.Event] = []  # per connection: our client went away
        self.requests: list[Request] = []
        self.tasks: set[asyncio.Task] = set()  # the connections' _serve tasks

    async def start(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        index = len(self.writers)
        self.writers.append(writer)
        ended = asyncio.Event()
        self.ended.append(ended)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head[:-4].split(b"\r\n")
                method, path, _ = line.split(b" ")
                headers = {k.strip().lower(): v.strip()
                           for k, v in (f.split(b":", 1) for f in fields)}
                if headers.get(b"transfer-encoding") == b"chunked":
                    body = await _read_chunked(reader)
                else:
                    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
                request = Request(index, method, path, headers, body)
                self.requests.append(request)
                answer = self.respond(request)
                if inspect.isawaitable(answer):
                    answer = await answer
                if answer is None:
                    await reader.read()  # hold the request until the client goes
                    break
                writer.write(answer)
                await writer.drain()
                if b"\r\nconnection: close\r\n" in answer.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # stop() ends it: an ordinary end for asyncio's stream callback
        finally:
            ended.set()
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        # Stop accepting first and let the connections already accepted get
        # their transports: Python 3.11's asyncio leaks the socket of a
        # connection accepted just before Server.close() (its transport
        # fails to attach to the closed server, silently).
        loop = asyncio.get_running_loop()
        for sock in self.server.sockets:
            loop.remove_reader(sock.fileno())
        await asyncio.sleep(0.05)
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()
        for writer in self.writers:
            try:
                async with asyncio.timeout(WAIT):
                    await writer.wait_closed()
            except (TimeoutError, ConnectionError, ssl.SSLError):
                writer.transport.abort()
        # End every connection still served (one accepted while the others
        # closed, say), so that no socket is left to the garbage collector
        # with its task.
        pending = [t for t in self.tasks if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.sleep(0)  # (abort closes the socket on the next turn)


class OriginThread:
    """An Origin on its own event loop in a thread, for tests whose own
    thread blocks (on ZeroMQ sockets, say)."""

    THREAD_WAIT = 10.0

    def __init__(self, respond: Respond) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.origin = asyncio.run_coroutine_threadsafe(
            Origin(respond).start(), self.loop).result(self.THREAD_WAIT)
        self.port = self.origin.port

    def requests(self) -> list[Request]:
        return asyncio.run_coroutine_threadsafe(self._copy(), self.loop).result(self.THREAD_WAIT)

    async def _copy(self) -> list[Request]:
        return list(self.origin.requests)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.origin.stop(), self.loop).result(self.THREAD_WAIT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(self.THREAD_WAIT)
        self.loop.close()


# -- the recording host ---------------------------------------------------------------


class Host:
    """What a ClientConn needs from the worker; records what it is given."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connector: Connector,
                 pool: Pool) -> None:
        self.loop = loop
        self.connector = connector
        self.pool = pool
        self.sent: list[tuple[bytes | str | None, Packet]] = []
        self.replies: list[tuple[object, Data | Error]] = []
        self.released: list[ClientConn] = []
        self.faults: list[str] = []  # note_handler_fault's reasons
        self.timers: dict[ClientConn, asyncio.TimerHandle] = {}
        self.changed = asyncio.Event()

    def send_packet(self, packet: Packet, to: bytes | str | None) -> None:
        self.sent.append((to, packet))
        self.changed.set()

    def reply(self, envelope: object, packet: Data | Error) -> None:
        self.replies.append((envelope, packet))
        self.changed.set()

    def schedule(self, conn: ClientConn) -> None:
        old = self.timers.pop(conn, None)
        if old is not None:
            old.cancel()
        deadline = conn.deadline
        if deadline is not None:
            self.timers[conn] = self.loop.call_at(deadline, conn.on_timer)

    def note_handler_fault(self, reason: str) -> None:
        self.faults.append(reason)

    def release(self, conn: ClientConn) -> None:
        old = self.timers.pop(conn, None)
        if old is not None:
            old.cancel()
        self.released.append(conn)
        self.changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def packets(self) -> list[Packet]:
        return [p for _to, p in self.sent]

    def response(self) -> tuple[Data, bytes]:
        """The response head the handler got and the body of the packets after it."""
        data = [p for p in self.packets() if isinstance(p, Data)]
        assert data and data[0].code is not None
        assert all(p.code is None for p in data[1:])
        assert data[-1].more is False and all(p.more for p in data[:-1])
        return data[0], b"".join(p.body for p in data[1:])
