#!/usr/bin/env python3
"""Hold many idle HTTP keep-alive connections or WebSockets; one process.

    python3 bench/idle_conns.py --port P --kind http|ws|silent --source 127.0.9.1

Used by bench/memory_bench.py, which starts several of these (each process
may hold at most about 19,000 descriptors) and drives them with one JSON
command per line on stdin; each command gets one JSON line on stdout:

- ``{"cmd": "open", "n": N}``: open N more connections, at most 256
  connecting at once. An HTTP connection sends one ``GET /idle`` and reads
  the whole response, then stays open and quiet (keep-alive); a WebSocket
  finishes its handshake (``GET /ws``, 101) and stays quiet; a ``silent``
  one (bench/abuse.py) connects and sends nothing at all. Answer:
  ``{"opened": k, "failed": f, "held": h, "seconds": t}``.
- ``{"cmd": "held"}``: ``{"held": h}``, the connections open and not
  closed by the server.
- ``{"cmd": "closed"}``: ``{"closed": c, "after": [min, median, max], "how":
  {"close 1001": n, "eof": n, ...}}``,
  the connections the server closed, and seconds from connect to close.
- ``{"cmd": "echo", "n": N}``: on N of the held connections (spread evenly;
  0 or absent: all), 512 at a time, send one more request (HTTP) or one
  text message (WebSocket) and wait up to 10 s for its answer (a 200, or
  the same text back). Answer: ``{"asked": a, "answered": b, "max_wait": s}``.
- ``{"cmd": "quit"}``: close everything and exit.

Every connection is bound to a ``--source`` address (any 127/8 address
works on loopback; a comma list is used in turn) with
IP_BIND_ADDRESS_NO_PORT, so that the local port is picked at connect time:
each source address gives about 28,000 connections to one server port, but
the kernel's search for a free port grows costly well before that (past
about 10,000 a connect costs the client a lot of system time), so large
counts want several addresses per process.
"""

import argparse
import asyncio
import base64
import collections
import hashlib
import json
import os
import resource
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24  # Linux, <linux/in.h>
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TIMEOUT = 15.0
CONNECTING = 256
ECHOING = 512


class Conn(asyncio.Protocol):
    """One client connection; ``ask`` sends a request or message and
    returns a future for its answer."""

    def __init__(self, kind):
        self.kind = kind
        self.transport = None
        self.buf = bytearray()
        self.waiter = None
        self.expect = None  # the echo payload awaited
        self.handshake = True
        self.open = False
        self.mask = os.urandom(4)
        self.began = None  # when connected
        self.lifetime = None  # seconds from connect to the server's close
        self.end = None  # how the server ended it: "close <code>", "eof", or the error

    def connection_made(self, transport):
        self.transport = transport
        self.began = time.monotonic()

    def ask(self, loop, data, expect=None):
        self.waiter = loop.create_future()
        self.expect = expect
        self.transport.write(data)
        return self.waiter

    def _done(self, ok):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(ok)

    def data_received(self, data):
        self.buf += data
        if self.kind == "http" or self.handshake:
            self._response()
        else:
            self._frames()

    def _response(self):
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.buf[:end]).lower().split(b"\r\n")
        if self.kind == "ws":
            del self.buf[: end + 4]
            self.handshake = False
            self._done(lines[0].startswith(b"http/1.1 101 ") and self.expect in lines)
            self._frames()
            return
        length = [int(x[15:]) for x in lines if x.startswith(b"content-length:")]
        if not length:
            self._done(False)
            return
        if len(self.buf) < end + 4 + length[0]:
            return
        del self.buf[: end + 4 + length[0]]
        self._done(lines[0].startswith(b"http/1.1 200 "))

    def _frames(self):
        buf = self.buf
        while len(buf) >= 2:
            b0, n = buf[0], buf[1] & 0x7F
            start = 2
            if n == 126:
                n, start = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                n, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + n:
                return
            payload = bytes(buf[start : start + n])
            del buf[: start + n]
            opcode = b0 & 0x0F
            if opcode in (1, 2):
                self._done(payload == self.expect)
            elif opcode == 9:
                self.transport.write(frame(10, payload, self.mask))
            elif opcode == 8:
                if self.open and self.end is None:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    self.end = f"close {code}"
                    self.lifetime = time.monotonic() - self.began
                self.open = False
                self.transport.close()

    def _closed(self):
        if self.open and self.lifetime is None:
            self.lifetime = time.monotonic() - self.began
        self.open = False
        self._done(False)

    def eof_received(self):
        if self.open and self.end is None:
            self.end = "eof"
        self._closed()
        return False

    def connection_lost(self, exc):
        if self.open and self.end is None:
            self.end = type(exc).__name__ if exc is not None else "lost"
        self._closed()


def frame(opcode, payload, key):
    """A masked client frame (payload under 126 bytes)."""
    n = len(payload)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | n)) + key + masked


class Holder:
    def __init__(self, args):
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.conns = []
        self.gate = asyncio.Semaphore(CONNECTING)
        self.sources = args.source.split(",")
        self.attempts = 0  # connections tried, to take the sources in turn
        self.request = b"GET /idle HTTP/1.1\r\nHost: localhost\r\n\r\n"

    async def open_one(self):
        async with self.gate:
            conn = Conn(self.args.kind)
            sock = socket.socket()
            try:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.sources[self.attempts % len(self.sources)], 0))
                self.attempts += 1
                sock.setblocking(False)
                await asyncio.wait_for(
                    self.loop.sock_connect(sock, ("127.0.0.1", self.args.port)), TIMEOUT
                )
                await self.loop.create_connection(lambda: conn, sock=sock)
                if self.args.kind == "silent":
                    ok = True
                elif self.args.kind == "http":
                    ok = await asyncio.wait_for(conn.ask(self.loop, self.request), TIMEOUT)
                else:
                    key = base64.b64encode(os.urandom(16))
                    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).lower()
                    head = (
                        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                        b"Sec-WebSocket-Key: %s\r\n\r\n" % key
                    )
                    expect = b"sec-websocket-accept: " + accept
                    ok = await asyncio.wait_for(conn.ask(self.loop, head, expect), TIMEOUT)
            except (OSError, TimeoutError):
                ok = False
            if not ok:
                if conn.transport is not None:
                    conn.transport.abort()
                else:
                    sock.close()
                return False
            conn.open = True
            self.conns.append(conn)
            return True

    def held(self):
        return sum(1 for c in self.conns if c.open)

    def closed(self):
        after = sorted(c.lifetime for c in self.conns if c.lifetime is not None)
        spread = [after[0], after[len(after) // 2], after[-1]] if after else []
        how = collections.Counter(c.end for c in self.conns if c.end is not None)
        return {"closed": len(after), "after": [round(x, 3) for x in spread], "how": dict(how)}

    async def open(self, n):
        began = time.monotonic()
        results = await asyncio.gather(*(self.open_one() for _ in range(n)))
        opened = sum(results)
        return {"opened": opened, "failed": n - opened, "held": self.held(),
                "seconds": round(time.monotonic() - began, 3)}

    async def echo(self, n):
        live = [c for c in self.conns if c.open]
        if n and n < len(live):
            live = [live[i * len(live) // n] for i in range(n)]
        gate = asyncio.Semaphore(ECHOING)
        waits = []

        async def one(i, conn):
            async with gate:
                began = time.monotonic()
                if self.args.kind == "http":
                    fut = conn.ask(self.loop, self.request)
                else:
                    payload = b"echo %d" % i
                    fut = conn.ask(self.loop, frame(1, payload, conn.mask), payload)
                try:
                    ok = await asyncio.wait_for(fut, 10.0)
                except TimeoutError:
                    ok = False
                if ok:
                    waits.append(time.monotonic() - began)
                return ok

        results = await asyncio.gather(*(one(i, c) for i, c in enumerate(live)))
        return {"asked": len(live), "answered": sum(results),
                "max_wait": round(max(waits, default=0.0), 4)}

    async def serve(self):
        while True:
            line = await self.loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            cmd = json.loads(line)
            if cmd["cmd"] == "open":
                answer = await self.open(cmd["n"])
            elif cmd["cmd"] == "held":
                answer = {"held": self.held()}
            elif cmd["cmd"] == "closed":
                answer = self.closed()
            elif cmd["cmd"] == "echo":
                answer = await self.echo(cmd.get("n", 0))
            elif cmd["cmd"] == "quit":
                break
            else:
                answer = {"error": "unknown command"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.abort()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--kind", choices=("http", "ws", "silent"), required=True)
    p.add_argument("--source", default="127.0.0.1",
                   help="local address to connect from (a comma list: used in turn)")
    args = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def run():
        await Holder(args).serve()

    asyncio.run(run())


if __name__ == "__main__":
    main()
