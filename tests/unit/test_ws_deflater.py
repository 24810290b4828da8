"""The WebSocket compressor's memory: made on the first message, kept with
context takeover, dropped after every message without it; its output
inflates back with any raw-deflate decoder whatever the memLevel."""

from __future__ import annotations

import json
import tracemalloc
import zlib

from condure.session.ws_frames import MEM_LEVEL, Deflater

TAIL = b"\x00\x00\xff\xff"
MESSAGES = [
    json.dumps({"seq": i, "channel": f"room-{i % 7}", "items": list(range(i % 50))}).encode()
    for i in range(300)]


def _inflate_all(chunks: list[bytes]) -> list[bytes]:
    z = zlib.decompressobj(-15)
    return [z.decompress(c + TAIL) for c in chunks]


def _heap_growth(make) -> int:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


def test_no_zlib_stream_until_the_first_message() -> None:
    assert _heap_growth(lambda: [Deflater(False) for _ in range(20)]) < 20 * 1024


def test_context_takeover_keeps_one_stream_and_round_trips() -> None:
    d = Deflater(False)
    out = [d.compress(m, True) for m in MESSAGES]
    assert _inflate_all(out) == MESSAGES
    # the stream is kept: later messages refer back to earlier ones
    fresh = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15, MEM_LEVEL)
    alone = fresh.compress(MESSAGES[-1]) + fresh.flush(zlib.Z_SYNC_FLUSH)
    assert len(out[-1]) < len(alone) - 4
    # and it holds zlib's state (window, hash table, pending buffer) while idle
    held = _heap_growth(lambda: [_used(Deflater(False)) for _ in range(5)])
    assert held > 5 * (1 << 17)


def test_without_context_takeover_nothing_is_held_between_messages() -> None:
    d = Deflater(True)
    first = d.compress(MESSAGES[5], True)
    again = d.compress(MESSAGES[5], True)
    assert first == again  # no history: each message alone
    assert zlib.decompressobj(-15).decompress(again + TAIL) == MESSAGES[5]
    idle = _heap_growth(lambda: [_used(Deflater(True)) for _ in range(5)])
    assert idle < 5 * 16 * 1024, idle


def test_fragments_of_one_message_share_the_stream() -> None:
    d = Deflater(True)
    parts = [d.compress(MESSAGES[40][:30], False), d.compress(MESSAGES[40][30:], True)]
    assert zlib.decompressobj(-15).decompress(b"".join(parts) + TAIL) == MESSAGES[40]


def _used(d: Deflater) -> Deflater:
    d.compress(MESSAGES[1], True)
    return d
