"""``condure --sizes``: what one connection costs in a worker's heap.

Each figure is measured, not computed from declarations: :func:`measure`
builds ``count`` connections of one kind the way a worker builds them (the
session of :meth:`condure.worker.Worker.make_session` with the default
options, wrapped in the adapter's :class:`condure.net.conn.Conn`), drives
each into the stated state through the sessions' own entry points, and
reports the growth of the Python heap as :mod:`tracemalloc` sees it,
divided by ``count``. What every connection of a worker shares (the
options, the read limits, the id counter, the worker) is built before the
first reading and not counted; what each connection makes for itself (its
session, its ids, the closure that draws them, its buffers) is.

- ``req_connection``: a req-mode connection idle after one request and its
  response;
- ``stream_connection``: a stream-mode HTTP connection idle (kept alive)
  after one request and its response;
- ``websocket_connection``: a WebSocket without compression, accepted by
  its handler, idle after one message each way;
- ``deflate_codec_state``: what permessage-deflate adds to such a
  WebSocket (its zlib streams, see :data:`ZLIB_DEFLATE` and
  :data:`ZLIB_INFLATE`).

Not counted: the socket itself (kernel buffers, and the one Python socket
object per connection, ~100 bytes), and the worker's registry entries for a
connection (its slot, its timer), which grow in amortised steps. Sending
nothing and binding nothing, this module needs no running worker.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from condure.session.ws_frames import MEM_LEVEL

COUNT = 200  # connections of each kind per measurement
NAMES = ("req_connection", "stream_connection", "websocket_connection", "deflate_codec_state")

# zlib's documented needs (zconf.h) for the streams condure makes
# (condure/session/ws_frames.py: compressobj(Z_DEFAULT_COMPRESSION, DEFLATED,
# -15, MEM_LEVEL), decompressobj(-15)): deflate
# (1 << (windowBits + 2)) + (1 << (memLevel + 9)) bytes "plus a few
# kilobytes for small objects", inflate 1 << windowBits "plus about 7
# kilobytes". CPython's zlib module allocates those through PyMem_RawMalloc,
# which tracemalloc traces, so the measured deflate_codec_state includes
# them; these lower bounds are what tests/unit/test_sizes.py checks it
# against (a Python whose zlib allocations went unseen would fall short).
ZLIB_DEFLATE = (1 << (15 + 2)) + (1 << (MEM_LEVEL + 9))  # 139264
# 32768, allocated on the first message inflated; kept between messages only
# when the client keeps its context (--compression-context keep)
ZLIB_INFLATE = 1 << 15

_HANDLER = b"handler-%08d"  # a per-connection handler address, as decoded
_HTTP_REQUEST = (b"GET /path?x=1 HTTP/1.1\r\nHost: example.com\r\n"
                 b"User-Agent: condure-sizes\r\nAccept: */*\r\n\r\n")
_WS_REQUEST = (b"GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n")
_PMD = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
_MESSAGE = b"hello, this is a message of some length " * 2
_MASK = b"\x01\x02\x03\x04"


def _client_frame(payload: bytes, rsv1: bool) -> bytes:
    """A masked, final text frame from a client (payload under 126 bytes)."""
    from condure.session.ws_frames import unmask  # (XOR with the mask: it masks too)

    return (bytes((0x81 | (0x40 if rsv1 else 0), 0x80 | len(payload))) + _MASK
            + unmask(payload, _MASK, 0))


class _Shared:
    """What a worker's connections share, built before the first reading:
    a worker (not started: no socket, no running loop) per setting of
    ``--compression``, whose ``make_session`` and ids are the ones its
    connections get, and the client frames."""

    def __init__(self) -> None:
        import asyncio
        from dataclasses import replace

        from condure.config import Config
        from condure.session.ws_frames import Deflater
        from condure.worker import Worker

        self.loop = asyncio.new_event_loop()
        config = Config()
        self.workers = {compression: Worker(replace(config, compression=compression), self.loop)
                        for compression in (False, True)}
        stream = config.listen[0]
        self.specs = {"stream": stream, "req": replace(stream, mode="req")}
        self.sock = _Socket()
        self.compressed_frame = _client_frame(Deflater(False).compress(_MESSAGE, True), rsv1=True)
        self.plain_frame = _client_frame(_MESSAGE, rsv1=False)

    def conn(self, mode: str, slot: int, compression: bool = False) -> Any:
        """A connection on ``slot`` as the worker makes it (session and Conn)."""
        from condure.net.conn import Conn

        worker = self.workers[compression]
        session = worker.make_session(self.specs[mode], slot, b"127.0.0.1", 40000 + slot)
        return Conn(worker, self.sock, slot, session)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.close()


class _Socket:
    """Stands for the client socket: Conn reads only its descriptor when built."""

    def fileno(self) -> int:
        return -1


def _settle(conn: Any, now: float) -> None:
    """The adapter's rhythm (Conn.run) with a kernel that takes every write
    at once: packets for handlers are dropped (sent), writes flushed."""
    from condure.session.actions import Close, SwitchSession, Write

    while True:
        actions = conn.session.take_actions()
        if not actions:
            return
        wrote = False
        for action in actions:
            if isinstance(action, Write):
                conn.out += action.data
                wrote = True
            elif isinstance(action, SwitchSession):
                conn.session = action.session
            elif isinstance(action, Close):
                raise RuntimeError(f"--sizes: a connection closed: {action.reason}")
        if wrote:
            del conn.out[:]
            conn.session.output_flushed(now)


def _answer(conn: Any, now: float, seq: int | None, from_: bytes, **fields: Any) -> None:
    from condure.zhttp.packets import Data, Ident

    ident = Ident(conn.session.rid, seq)
    conn.session.receive_packet(Data(from_=from_, ids=(ident,), **fields), ident, now)
    _settle(conn, now)


def _req(shared: _Shared, slot: int, now: float) -> Any:
    conn = shared.conn("req", slot)
    conn.session.receive_data(_HTTP_REQUEST, now)
    _settle(conn, now)
    _answer(conn, now, None, b"", code=200, reason=b"OK",
            headers=((b"Content-Type", b"text/plain"),), body=b"hello\n")
    return conn


def _stream(shared: _Shared, slot: int, now: float) -> Any:
    conn = shared.conn("stream", slot)
    conn.session.receive_data(_HTTP_REQUEST, now)
    _settle(conn, now)
    _answer(conn, now, 0, _HANDLER % slot, code=200, reason=b"OK",
            headers=((b"Content-Type", b"text/plain"),), body=b"hello\n")
    return conn


def _websocket(shared: _Shared, slot: int, now: float, compression: bool = False) -> Any:
    from condure.session.websocket import WebSocketSession

    conn = shared.conn("stream", slot, compression)
    conn.session.receive_data(_WS_REQUEST + (_PMD if compression else b"") + b"\r\n", now)
    _settle(conn, now)
    handler = _HANDLER % slot
    _answer(conn, now, 0, handler, code=101, reason=b"Switching Protocols")
    if not isinstance(conn.session, WebSocketSession):
        raise RuntimeError("--sizes: the WebSocket was not accepted")
    conn.session.receive_data(shared.compressed_frame if compression else shared.plain_frame,
                              now)
    _settle(conn, now)
    _answer(conn, now, 1, handler, body=_MESSAGE)
    return conn


def _per_connection(build: Callable[[int, float], Any], count: int) -> float:
    """Heap growth per connection of ``count`` built by ``build(slot, now)``."""
    now = time.monotonic()  # (the clock make_session gives the sessions)
    build(count, now)  # first use: caches, interned names, lazy imports
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    kept = [build(slot, now) for slot in range(count)]
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    del kept
    return grown / count


def measure(count: int = COUNT) -> dict[str, int]:
    """The figures of ``condure --sizes``, in bytes, by name (see the module
    docstring)."""
    shared = _Shared()  # (before tracing: shared, so never counted)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        req = _per_connection(lambda slot, now: _req(shared, slot, now), count)
        stream = _per_connection(lambda slot, now: _stream(shared, slot, now), count)
        ws = _per_connection(lambda slot, now: _websocket(shared, slot, now), count)
        wsz = _per_connection(lambda slot, now: _websocket(shared, slot, now, True), count)
    finally:
        if started:
            tracemalloc.stop()
        shared.close()
    return dict(zip(NAMES, (round(req), round(stream), round(ws), round(wsz - ws)), strict=True))


def lines(count: int = COUNT) -> list[str]:
    """The output of ``condure --sizes``: one ``name: N bytes`` line each."""
    return [f"{name}: {size} bytes" for name, size in measure(count).items()]
