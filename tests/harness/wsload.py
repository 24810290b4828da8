"""Load client: many WebSocket echo clients and HTTP keep-alive loops.

    python -m tests.harness.wsload --port P --clients N [--procs K]
        [--interval 0.05] [--http-loops H] [--path /ws] [--result FILE]
        [--expect-close]

Each WebSocket client sends the text message ``"<client>:<seq>"`` (seq from
1) every ``interval`` seconds (send times rounded up to a 5 ms grid, so that
the clients due together send in one burst) and expects every echo back
once and in order.
Each HTTP loop sends ``GET /http`` on a keep-alive connection, one request
after the other. The clients are spread over K processes (default: one per
400 clients), each an asyncio loop with hand-made frames.

``READY`` is printed once every client has finished its handshake and every
HTTP loop its first request (failures are counted, not retried). The run
lasts until SIGTERM, SIGINT or the end of stdin (when stdin is a pipe);
then the clients stop sending, wait up to 2 s for echoes in flight, and the
figures summed over the processes are written as JSON to ``--result`` (or
stdout); ``Totals`` below lists the fields.

``--expect-close``: the server is expected to close every WebSocket
(``systemctl stop``); a close frame is answered with a close frame and is
not counted as a disconnect, but its code is counted in ``close_codes``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import multiprocessing
import os
import resource
import select
import signal
import stat
import sys
import time

RESULT_TIMEOUT = 30.0
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
IO_TIMEOUT = 10.0  # connect, handshake, HTTP response
CONNECTING = 64  # handshakes under way at once, per process
SEND_TICK = 0.005  # send times are rounded up to this grid (Run.schedule)


class Totals:
    """The figures of a run, summed over processes (counts added, times:
    the maximum, code tables merged). After a 101, a client that meets EOF,
    a reset or (unless --expect-close) a close frame counts as one of
    ``disconnects``; ``close_codes`` counts close frames by code ("none":
    empty). ``lost``: sent, never echoed; ``reordered``: echoed after a later
    one; ``unexpected``: not one of ours. ``max_stall``: longest time from a
    send to its echo (``max_stall_at``: when it was sent, seconds after
    READY); ``max_echo_gap``: longest time between two echoes on a client;
    ``slow_echoes``: echoes that came more than a second after their send.
    """

    FIELDS = dict.fromkeys(("clients", "connected", "handshake_failed", "disconnects", "sent",
                            "echoed", "lost", "duplicated", "reordered", "unexpected",
                            "http_loops", "http_ok", "http_failed", "slow_echoes"), 0)
    FIELDS.update(dict.fromkeys(
        ("max_stall", "max_stall_at", "max_echo_gap", "http_max_time"), 0.0))
    TABLES = ("close_codes", "disconnect_kinds", "http_errors")

    def __init__(self) -> None:
        self.__dict__.update(self.FIELDS, **{name: {} for name in self.TABLES})

    def count(self, table: str, key) -> None:
        d = getattr(self, table)
        d[str(key)] = d.get(str(key), 0) + 1

    def add(self, part: dict) -> None:
        if part["max_stall"] > self.max_stall:
            self.max_stall_at = part["max_stall_at"]
        for name, zero in self.FIELDS.items():
            if type(zero) is int:
                setattr(self, name, getattr(self, name) + part[name])
            elif name != "max_stall_at":
                setattr(self, name, max(getattr(self, name), part[name]))
        for name in self.TABLES:
            for key, n in part[name].items():
                getattr(self, name)[key] = getattr(self, name).get(key, 0) + n

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in (*self.FIELDS, *self.TABLES)}


def masked_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    keys = (key * (n // 4 + 1))[:n]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")
    body = masked.to_bytes(n, "little")
    return head + key + body


class WsClient(asyncio.Protocol):
    """One WebSocket client: handshake, then a message every interval."""

    def __init__(self, run: Run, index: int) -> None:
        self.run, self.t = run, run.totals
        self.name = b"%d" % index
        self.key = base64.b64encode(os.urandom(16))
        self.mask = os.urandom(4)
        self.state = "handshake"
        self.buf = bytearray()
        self.transport = None
        self.opened = run.loop.create_future()
        self.seq = 0
        self.outstanding: dict[int, float] = {}
        self.high = 0
        self.last_echo = 0.0
        self.fragments: list[bytes] = []
        self.next_send = 0.0

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(b"GET %s HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                        b"Sec-WebSocket-Key: %s\r\n\r\n" % (self.run.path, self.key))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.state == "handshake":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            del self.buf[:end + 4]
            accept = base64.b64encode(hashlib.sha1(self.key + GUID).digest()).lower()
            if (not head.startswith(b"http/1.1 101 ")
                    or b"sec-websocket-accept: " + accept not in head):
                self.transport.abort()
                return
            self.state = "open"
            self.t.connected += 1
            self.opened.set_result(True)
            self.next_send = self.run.loop.time() + self.run.interval * (int(self.name) % 97) / 97
            self.run.schedule(self, self.next_send)
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
            payload = bytes(buf[start:start + n])
            del buf[:start + n]
            self.frame(b0 & 0x0F, bool(b0 & 0x80), payload)

    def frame(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode in (0, 1, 2):
            self.fragments.append(payload)
            if fin:
                message, self.fragments = b"".join(self.fragments), []
                self.echo(message)
        elif opcode == 8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else "none"
            self.t.count("close_codes", code)
            if self.state == "open" and not self.run.expect_close:
                self.lost_connection("close")
            if self.state in ("open", "gone"):
                self.transport.write(masked_frame(8, payload[:2], self.mask))
            self.state = "closing"  # wait for the server's EOF
        elif opcode == 9:
            self.transport.write(masked_frame(10, payload, self.mask))

    def echo(self, message: bytes) -> None:
        name, _, number = message.partition(b":")
        sent = (self.outstanding.pop(int(number), None)
                if name == self.name and number.isdigit() else None)
        if sent is None:
            if name == self.name and number.isdigit() and int(number) <= self.seq:
                self.t.duplicated += 1
            else:
                self.t.unexpected += 1
            return
        now = self.run.loop.time()
        self.t.echoed += 1
        if now - sent > 1.0:
            self.t.slow_echoes += 1
        if now - sent > self.t.max_stall:
            self.t.max_stall = now - sent
            self.t.max_stall_at = sent - self.run.ready_at
        seq = int(number)
        if seq < self.high:
            self.t.reordered += 1
        self.high = max(self.high, seq)
        if self.last_echo:
            self.t.max_echo_gap = max(self.t.max_echo_gap, now - self.last_echo)
        self.last_echo = now

    def tick(self) -> None:
        if self.state != "open" or self.run.stopping:
            return
        now = self.run.loop.time()
        self.seq += 1
        self.outstanding[self.seq] = now
        self.t.sent += 1
        self.transport.write(masked_frame(1, b"%s:%d" % (self.name, self.seq), self.mask))
        self.next_send = max(self.next_send + self.run.interval, now)
        self.run.schedule(self, self.next_send)

    def lost_connection(self, kind: str) -> None:
        self.t.disconnects += 1
        self.t.count("disconnect_kinds", kind)
        self.state = "gone"

    def eof_received(self):
        if self.state == "open":
            self.lost_connection("eof")
        return False

    def connection_lost(self, exc) -> None:
        if self.state == "open":
            self.lost_connection("reset" if exc else "eof")
        self.state = "done" if self.state != "handshake" else "failed"
        if not self.opened.done():
            self.opened.set_result(False)


class Run:
    """The clients and HTTP loops of one worker process."""

    def __init__(self, args, clients: range, http_loops: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.args, self.totals = args, Totals()
        self.path, self.interval = args.path.encode(), args.interval
        self.expect_close = args.expect_close
        self.stopping = False
        self.ready_at = self.loop.time()
        self.stop = asyncio.Event()
        self.clients = [WsClient(self, i) for i in clients]
        self.totals.clients = len(self.clients)
        self.totals.http_loops = http_loops
        self.gate = asyncio.Semaphore(CONNECTING)
        self.due: dict[int, list[WsClient]] = {}  # send slot -> clients
        self.ticker: asyncio.TimerHandle | None = None

    def schedule(self, client: WsClient, when: float) -> None:
        """Have ``client.tick`` run at ``when``, rounded up to SEND_TICK:
        the clients due in one slot send together, one wakeup for all of
        them (a timer per client cost this process, and the machine, a
        wakeup per message)."""
        slot = math.ceil(when / SEND_TICK)
        self.due.setdefault(slot, []).append(client)
        if self.ticker is None or slot * SEND_TICK < self.ticker.when():
            if self.ticker is not None:
                self.ticker.cancel()
            self.ticker = self.loop.call_at(slot * SEND_TICK, self._send_due)

    def _send_due(self) -> None:
        self.ticker = None
        limit = (self.loop.time() + SEND_TICK / 2) / SEND_TICK
        for slot in sorted(s for s in self.due if s <= limit):
            for client in self.due.pop(slot):
                client.tick()
        if self.due and self.ticker is None:
            first = min(self.due)
            self.ticker = self.loop.call_at(first * SEND_TICK, self._send_due)

    async def open(self, client: WsClient) -> None:
        async with self.gate:
            try:
                await asyncio.wait_for(self.loop.create_connection(
                    lambda: client, self.args.host, self.args.port), IO_TIMEOUT)
                ok = await asyncio.wait_for(asyncio.shield(client.opened), IO_TIMEOUT)
            except (TimeoutError, OSError):
                ok = False
            if not ok:
                self.totals.handshake_failed += 1
                if client.transport is not None:
                    client.transport.abort()

    async def http_loop(self, first: asyncio.Future) -> None:
        t = self.totals
        request = b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % self.args.http_path.encode()
        writer = None
        while not self.stopping:
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(self.args.host, self.args.port), IO_TIMEOUT)
                began = self.loop.time()
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
                lines = head.lower().split(b"\r\n")
                length = [int(x[15:]) for x in lines if x.startswith(b"content-length:")]
                if not length:
                    raise ValueError("no content-length")
                await asyncio.wait_for(reader.readexactly(length[0]), IO_TIMEOUT)
                t.http_max_time = max(t.http_max_time, self.loop.time() - began)
                if lines[0].startswith(b"http/1.1 200 "):
                    t.http_ok += 1
                else:
                    t.http_failed += 1
                    t.count("http_errors", lines[0][9:12].decode(errors="replace"))
                if b"connection: close" in lines:
                    writer.close()
                    writer = None
            except (TimeoutError, OSError, EOFError, ValueError) as e:
                t.http_failed += 1
                t.count("http_errors", type(e).__name__)
                if writer is not None:
                    writer.transport.abort()
                writer = None
                await asyncio.sleep(0.1)  # no busy loop while the server is away
            finally:
                if not first.done():
                    first.set_result(None)
        if writer is not None:
            writer.close()

    async def main(self, conn) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop.set)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        firsts = [self.loop.create_future() for _ in range(self.totals.http_loops)]
        loops = [asyncio.ensure_future(self.http_loop(f)) for f in firsts]
        started = asyncio.gather(*(self.open(c) for c in self.clients), *firsts)
        stop_wait = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait([started, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        if not self.stop.is_set():
            conn.send("ready")
        self.ready_at = self.loop.time()
        await stop_wait
        self.stopping = True
        deadline = self.loop.time() + self.args.final_wait
        while self.loop.time() < deadline and any(
                c.outstanding for c in self.clients if c.state == "open"):
            await asyncio.sleep(0.01)
        for c in self.clients:
            self.totals.lost += len(c.outstanding)
            if c.state == "open":
                c.transport.write(masked_frame(8, b"\x03\xe8", c.mask))
            c.state = "done"
            if c.transport is not None:
                c.transport.close()
        if loops:
            await asyncio.wait(loops, timeout=max(deadline - self.loop.time(), 0.5))
        for task in [*loops, started]:
            task.cancel()
        conn.send(self.totals.as_dict())


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.harness.wsload",
                                description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--procs", type=int, default=0, help="worker processes (default ceil(N/400))")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between messages")
    p.add_argument("--http-loops", type=int, default=0)
    p.add_argument("--http-path", default="/http")
    p.add_argument("--path", default="/ws")
    p.add_argument("--result", default=None, help="JSON result file (default stdout)")
    p.add_argument("--expect-close", action="store_true")
    p.add_argument("--final-wait", type=float, default=2.0, help="wait for echoes in flight")
    args = p.parse_args(argv)
    args.procs = args.procs if args.procs > 0 else math.ceil(args.clients / 400)
    args.procs = max(1, min(args.procs, max(args.clients, args.http_loops, 1)))
    return args


def _child(args, index: int, conn) -> None:
    # SIGTERM and SIGINT stay blocked until the child's event loop handles them.
    def share(total: int) -> range:
        return range(total * index // args.procs, total * (index + 1) // args.procs)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(share(args.clients)) + len(share(args.http_loops)) + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    async def run():
        await Run(args, share(args.clients), len(share(args.http_loops))).main(conn)

    try:
        asyncio.run(run())
    finally:
        conn.close()


def _wait_for_stop(children) -> tuple[dict, float]:
    """Print READY when every child is ready; return on SIGTERM, SIGINT or
    the end of stdin (a pipe). Returns the results already sent and the
    time READY was printed."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        stdin = [0] if stat.S_ISFIFO(os.fstat(0).st_mode) else []
    except OSError:
        stdin = []
    results, not_ready, ready_at = {}, set(range(len(children))), None
    by_fd = {conn.fileno(): i for i, (_, conn) in enumerate(children)}
    while not stopping:
        readable = select.select([wake_r, *stdin, *by_fd], [], [])[0]
        if wake_r in readable:
            os.read(wake_r, 512)
        if stdin and stdin[0] in readable and not os.read(stdin[0], 4096):
            break
        for fd in set(readable) & set(by_fd):
            i = by_fd[fd]
            try:
                msg = children[i][1].recv()
            except EOFError:  # the child died; its figures are missing
                del by_fd[fd]
                msg = "ready"
            if msg != "ready":
                results[i] = msg
            not_ready.discard(i)
            if not not_ready and ready_at is None:
                print("READY", flush=True)
                ready_at = time.monotonic()
    return results, ready_at


def main(argv=None) -> int:
    args = parse_args(argv)
    ctx = multiprocessing.get_context("fork")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    children = []
    for index in range(args.procs):
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(args, index, child_end), daemon=True)
        proc.start()
        child_end.close()
        children.append((proc, parent_end))
    results, ready_at = _wait_for_stop(children)
    duration = time.monotonic() - ready_at if ready_at else 0.0
    for proc, _ in children:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
    for i, (proc, conn) in enumerate(children):
        while i not in results and conn.poll(RESULT_TIMEOUT):
            try:
                msg = conn.recv()
            except EOFError:
                break
            if msg != "ready":
                results[i] = msg
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    total = Totals()
    for part in results.values():
        total.add(part)
    out = dict(total.as_dict(), procs=args.procs, procs_failed=args.procs - len(results),
               duration=round(duration, 3))
    text = json.dumps(out, indent=1, sort_keys=True)
    if args.result:
        with open(args.result + ".tmp", "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(args.result + ".tmp", args.result)
    else:
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
