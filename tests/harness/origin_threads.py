"""Origins in threads for the client role's process tests
(tests/integration/test_client_mode_origins.py), beside
test_client_mode_more.ScriptedOrigin (client_origin.Origin on its own
loop in a thread):

- ``WsOrigin``: a ``websockets`` echo server, optionally TLS and with or
  without permessage-deflate, recording the extensions each upgrade
  request offered and each connection agreed, and its close codes;
- ``Held``: a ``respond`` for client_origin.Origin that answers only once
  a given number of requests wait, so that they are in flight together;
- ``ended``: wait until condure closed some of an origin's connections.
"""

from __future__ import annotations

import asyncio
import ssl
import threading

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

from tests.harness.client_origin import Request, ok

WAIT = 10.0


class WsOrigin:
    """A ``websockets`` echo server (optionally TLS, with or without
    permessage-deflate) in a thread; records the extensions each upgrade
    request offered, each connection agreed and the close codes."""

    def __init__(self, context: ssl.SSLContext | None = None,
                 compression: str | None = "deflate") -> None:
        self.offered: list[list[str]] = []
        self.paths: list[str] = []
        self.agreed: list[list[str]] = []
        self.closes: list[int | None] = []
        self.done = threading.Event()
        self.server = serve(self._serve, "127.0.0.1", 0, ssl=context,
                            compression=compression, process_request=self._record)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _record(self, _connection, request) -> None:
        # before the 101 goes out
        self.offered.append(request.headers.get_all("Sec-WebSocket-Extensions"))
        self.paths.append(request.path)

    def _serve(self, ws) -> None:
        self.agreed.append([e.name for e in ws.protocol.extensions])
        try:
            for message in ws:
                ws.send(b"echo: " + message if isinstance(message, bytes)
                        else "echo: " + message)
        except ConnectionClosed:
            pass
        self.closes.append(ws.close_code)
        self.done.set()

    def __enter__(self) -> WsOrigin:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(WAIT)


class Held:
    """Answers only once ``want`` requests are waiting: they are then in
    flight at the same time, each on its own connection."""

    def __init__(self) -> None:
        self.want = 0
        self.waiting: list[asyncio.Future] = []

    async def respond(self, request: Request) -> bytes:
        gate = asyncio.get_running_loop().create_future()
        self.waiting.append(gate)
        if len(self.waiting) >= self.want:
            for g in self.waiting:
                g.set_result(None)
            self.waiting = []
        await gate
        return ok(b"conn %d" % request.conn)


def ended(origin, n: int) -> int:
    """Wait until at least ``n`` of the connections of ``origin`` (a
    ScriptedOrigin: client_origin.Origin on ``origin.loop``) were closed by
    their client; how many were."""
    async def wait() -> int:
        events = origin.origin.ended
        async with asyncio.timeout(WAIT):
            while sum(e.is_set() for e in events) < n:
                waits = [asyncio.ensure_future(e.wait()) for e in events if not e.is_set()]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
        return sum(e.is_set() for e in events)
    return asyncio.run_coroutine_threadsafe(wait(), origin.loop).result(WAIT + 1)
