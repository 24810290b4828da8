"""Megabytes each way through examples/handoffhandler.py, as a browser would.

The example handler grants its first 65,536 credits in the acceptance and
gives back what each client message cost inside the echo itself (a data
packet with ``credits``), never in a ``credit`` packet. A condure that
counted only ``credit`` packets stalls after 64 KiB; here the ``websockets``
client keeps several messages in flight (a sender and a receiver run
concurrently), text and binary, small and larger than the credit window,
with and without permessage-deflate, and every echo must come back whole
and in order.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import subprocess
import sys

import pytest
from websockets.asyncio.client import connect

from tests.harness import procs

HANDLER = procs.REPO_ROOT / "examples" / "handoffhandler.py"
TOTAL = 10 * 1024 * 1024  # bytes sent by the client; as many come back
IN_FLIGHT = 16  # messages sent and not yet echoed, at most


def messages(seed: int):
    """(is_text, payload) until TOTAL bytes: sizes from 1 byte to about 260 KB."""
    rng = random.Random(seed)
    sent = 0
    i = 0
    while sent < TOTAL:
        size = rng.choice((1, 100, 4000, 65535, 65536, 65537, 200_000))
        size = min(size, TOTAL - sent)
        if i % 2:
            payload = rng.randbytes(size)
            yield False, payload
            sent += size
        else:
            # text: mostly ASCII with some multi-byte characters
            text = ("héllo wörld €" * (size // 13 + 1))[:size]
            yield True, text
            sent += len(text.encode())
        i += 1


async def exchange(port: int, compression: bool) -> tuple[int, int]:
    """Send TOTAL bytes, check each echo; returns (bytes sent, bytes echoed)."""
    window = asyncio.Semaphore(IN_FLIGHT)
    expected: asyncio.Queue = asyncio.Queue()
    counts = [0, 0]
    async with connect(f"ws://127.0.0.1:{port}/bulk", max_size=None,
                       compression="deflate" if compression else None,
                       open_timeout=10, close_timeout=5) as ws:
        if compression:
            assert "permessage-deflate" in (ws.response.headers.get(
                "Sec-WebSocket-Extensions") or "")

        async def send() -> None:
            for is_text, payload in messages(seed=7 if compression else 3):
                await window.acquire()
                await ws.send(payload)
                counts[0] += len(payload.encode() if is_text else payload)
                await expected.put((is_text, hashlib.sha256(
                    payload.encode() if is_text else payload).digest()))
            await expected.put(None)

        async def receive() -> None:
            while (want := await expected.get()) is not None:
                got = await asyncio.wait_for(ws.recv(), 30)
                is_text, digest = want
                assert isinstance(got, str) == is_text
                data = got.encode() if isinstance(got, str) else got
                assert hashlib.sha256(data).digest() == digest, "echo differs"
                counts[1] += len(data)
                window.release()

        await asyncio.gather(send(), receive())
    return counts[0], counts[1]


@pytest.fixture(name="echo_condure")
def fixture_echo_condure(make_condure, tmp_path, request):
    compression = request.param
    condure = make_condure("ours", extra_args=["--compression"] if compression else [])
    with open(tmp_path / "handler.stderr", "wb") as log:
        handler = subprocess.Popen(
            [sys.executable, str(HANDLER), "--base", condure.base],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            env=procs.python_env())
        try:
            yield condure, compression
        finally:
            procs.terminate(handler)


@pytest.mark.parametrize("echo_condure", [False, True], indirect=True,
                         ids=["plain", "deflate"])
def test_ten_megabytes_each_way(echo_condure):
    condure, compression = echo_condure
    sent, echoed = asyncio.run(asyncio.wait_for(exchange(condure.port, compression), 120))
    assert sent >= TOTAL
    assert echoed == sent
