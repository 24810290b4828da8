"""The steady mixed load of bench/soak.py, in a process of its own.

    python bench/soak_load.py --port P --stats FILE [--ws 300] [--ws-rate 2]

Against examples/handoffhandler.py behind condure:

- ``--ws`` WebSockets (the ``websockets`` package), each sending a numbered
  text message ``--ws-rate`` times a second and checking its echo; each
  lives 60-240 s, is closed by the client and replaced (churn);
- ``--http-loops`` keep-alive loops of ``GET /http/N`` (about 10 a second
  each) and one loop of ``Connection: close`` requests (about 5 a second);
- ``--polls`` long-polls ``GET /poll/S`` (S 5-25 s) held by the handler,
  each reissued on the same connection once answered;
- misbehaving clients, about 2 a second: a head cut off, a body cut off,
  a WebSocket frame cut off (half of these end with a reset), garbage bytes
  (an answer or a close must come), a WebSocket opened and reset at once,
  and up to ``--slowloris`` slowloris clients (a header byte every 2 s).

What the clients think they hold and what went wrong goes to ``--stats``
(JSON, rewritten every 2 s and once more at the end). A WebSocket that
ends without the client closing it is "lost", with its time and close
code; a keep-alive connection that ends before its answer is "cut".
SIGTERM: every client closes cleanly, the last stats are written, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import struct
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

S: dict = {
    "ws_open": 0, "ws_opened": 0, "ws_closed_by_client": 0, "ws_lost": [],
    "ws_connect_failed": [], "ws_sent": 0, "ws_echoed": 0, "ws_mismatch": 0,
    "ws_longest_wait": 0.0,
    "http_open": 0, "http_ok": 0, "http_cut": [], "http_bad": 0,
    "close_ok": 0, "close_failed": [],
    "poll_open": 0, "poll_ok": 0, "poll_cut": [],
    "bad": {}, "slowloris_open": 0, "unanswered": [],
}
RUNNING = True


def note(key: str, detail: str) -> None:
    S[key].append([round(time.time(), 2), detail])


def bad(kind: str, outcome: str) -> None:
    S["bad"].setdefault(kind, {}).setdefault(outcome, 0)
    S["bad"][kind][outcome] += 1


async def ws_client(uri: str, i: int, rate: float) -> None:
    await asyncio.sleep(random.uniform(0, 10))
    while RUNNING:
        life = time.monotonic() + random.uniform(60, 240)
        opened = False
        try:
            async with connect(uri, open_timeout=30, close_timeout=10,
                               ping_interval=20, ping_timeout=30) as ws:
                opened = True
                S["ws_open"] += 1
                S["ws_opened"] += 1
                try:
                    n = 0
                    while RUNNING and time.monotonic() < life:
                        msg = f"{i}-{n}"
                        sent = time.monotonic()
                        await ws.send(msg)
                        S["ws_sent"] += 1
                        reply = await asyncio.wait_for(ws.recv(), 60)
                        S["ws_longest_wait"] = max(S["ws_longest_wait"],
                                                   time.monotonic() - sent)
                        S["ws_echoed"] += 1
                        if reply != msg:
                            S["ws_mismatch"] += 1
                        n += 1
                        await asyncio.sleep(random.uniform(0.5, 1.5) / rate)
                    await ws.close()
                    S["ws_closed_by_client"] += 1
                finally:
                    S["ws_open"] -= 1
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            note("ws_lost", f"{code} {e.rcvd.reason if e.rcvd else ''}".strip())
        except TimeoutError:
            note("ws_lost" if opened else "ws_connect_failed", "timeout")
        except (OSError, InvalidHandshake) as e:
            note("ws_lost" if opened else "ws_connect_failed", repr(e)[:80])
        await asyncio.sleep(random.uniform(0.1, 1.0))


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response (Content-Length bodies only, as the handler sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return head


async def keepalive_loop(port: int, key: str, path_of, pause: float) -> None:
    """Requests one after the other on one connection, reopened when cut."""
    while RUNNING:
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            S[f"{key}_open"] += 1
            try:
                while RUNNING:
                    path = path_of()
                    writer.write(f"GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
                    head = await asyncio.wait_for(read_response(reader), 90)
                    if head.startswith(b"HTTP/1.1 200"):
                        S[f"{key}_ok"] += 1
                    else:
                        S["http_bad"] += 1
                        note(f"{key}_cut", head.split(b"\r\n")[0].decode(errors="replace"))
                    await asyncio.sleep(pause * random.uniform(0.5, 1.5))
            finally:
                S[f"{key}_open"] -= 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                TimeoutError) as e:
            if RUNNING:
                note(f"{key}_cut", repr(e)[:80])
        finally:
            if writer is not None:
                writer.close()
        await asyncio.sleep(0.2)


async def close_loop(port: int) -> None:
    while RUNNING:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /close HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 30)
            writer.close()
            if data.startswith(b"HTTP/1.1 200"):
                S["close_ok"] += 1
            else:
                note("close_failed", data[:40].decode(errors="replace"))
        except (OSError, TimeoutError) as e:
            note("close_failed", repr(e)[:80])
        await asyncio.sleep(random.uniform(0.1, 0.3))


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and random.random() < 0.5:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


WS_UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


async def misbehave(port: int, kind: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if kind == "cut_head":
            writer.write(b"GET /cut HTTP/1.1\r\nHost: soak\r\nX-Half: ab")
            await writer.drain()
            await asyncio.sleep(random.uniform(0, 0.5))
        elif kind == "cut_body":
            writer.write(b"POST /up HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\n"
                         + os.urandom(random.randint(1, 30000)))
            await writer.drain()
            await asyncio.sleep(random.uniform(0, 0.5))
        elif kind in ("cut_frame", "ws_reset"):
            writer.write(WS_UPGRADE)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if not head.startswith(b"HTTP/1.1 101"):
                bad(kind, "not upgraded")
                return
            if kind == "cut_frame":
                size = random.randint(200, 60000)
                frame = struct.pack("!BBH", 0x82, 0x80 | 126, size) if size < 65536 else b""
                writer.write(frame + b"\0\0\0\0" + os.urandom(random.randint(0, size - 1)))
                await writer.drain()
                await asyncio.sleep(random.uniform(0, 0.5))
        elif kind == "garbage":
            writer.write(os.urandom(random.randint(1, 3000)) + b"\r\n\r\n")
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(200), 30)
            except TimeoutError:
                note("unanswered", kind)
                bad(kind, "unanswered")
                return
            except ConnectionResetError:
                data = b""
            bad(kind, data[:12].decode(errors="replace") if data else "closed")
            return
        elif kind == "slowloris":
            S["slowloris_open"] += 1
            try:
                for byte in b"GET /slow HTTP/1.1\r\nHost: soak\r\nX-Slow: " + b"a" * 200:
                    if not RUNNING:
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(2)
                    if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
                        break
                if not RUNNING:
                    return  # the load's end, not condure's doing
                data = await asyncio.wait_for(reader.read(200), 30)
                bad(kind, data[:12].decode(errors="replace") if data else "closed")
            finally:
                S["slowloris_open"] -= 1
            return
        bad(kind, "done")
    finally:
        _reset(writer)


async def misbehavers(port: int, slowloris: int) -> None:
    tasks: set[asyncio.Task] = set()
    kinds = ["cut_head", "cut_body", "cut_frame", "garbage", "ws_reset"]
    try:
        while RUNNING:
            kind = random.choice(kinds + (["slowloris"] if S["slowloris_open"] < slowloris
                                          else []))

            async def one(kind: str = kind) -> None:
                try:
                    await misbehave(port, kind)
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                    bad(kind, type(e).__name__)
            t = asyncio.create_task(one())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            await asyncio.sleep(random.uniform(0.2, 0.8))
    finally:
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def write_stats(path: str) -> None:
    while True:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"t": time.time(), **S}, f)
        os.replace(tmp, path)
        if not RUNNING and S["ws_open"] == 0:
            return
        await asyncio.sleep(2)


async def main(a: argparse.Namespace) -> None:
    global RUNNING
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    uri = f"ws://127.0.0.1:{a.port}/ws"
    counter = iter(range(10 ** 12))
    work = [asyncio.create_task(ws_client(uri, i, a.ws_rate)) for i in range(a.ws)]
    work += [asyncio.create_task(keepalive_loop(a.port, "http", lambda: f"/http/{next(counter)}",
                                                0.1)) for _ in range(a.http_loops)]
    work += [asyncio.create_task(keepalive_loop(
        a.port, "poll", lambda: f"/poll/{random.randint(5, 25)}", 0.1)) for _ in range(a.polls)]
    work += [asyncio.create_task(close_loop(a.port)),
             asyncio.create_task(misbehavers(a.port, a.slowloris))]
    stats = asyncio.create_task(write_stats(a.stats))
    print("READY", flush=True)
    await stop.wait()
    RUNNING = False
    # WebSockets finish their exchange and close; the rest is cancelled.
    ws_tasks, others = work[:a.ws], work[a.ws:]
    for t in others:
        t.cancel()
    await asyncio.wait(ws_tasks, timeout=90)
    for t in ws_tasks:
        t.cancel()
    await asyncio.gather(*work, return_exceptions=True)
    S["ws_open"] = 0
    await stats


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--stats", required=True)
    p.add_argument("--ws", type=int, default=300)
    p.add_argument("--ws-rate", type=float, default=2.0)
    p.add_argument("--http-loops", type=int, default=4)
    p.add_argument("--polls", type=int, default=20)
    p.add_argument("--slowloris", type=int, default=10)
    asyncio.run(main(p.parse_args()))
