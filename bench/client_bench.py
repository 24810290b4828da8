#!/usr/bin/env python3
"""Client mode throughput: this condure against Debian's zurl.

A driver process keeps --concurrency outgoing GET requests in flight in req
mode (a DEALER socket sending ``T`` + tnetstring {id, method, uri} and
reading the replies) for --duration seconds, through ours
(``--zserver-req ipc://...``, no listener) or zurl (its ``in_req_spec``,
from a private config in a temp dir), each in turn for --rounds rounds. The
origin is a keep-alive HTTP/1.1 server on loopback in its own process that
answers every request with a fixed small 200 and a Content-Length.

Reported per run: requests completed per second, p50/p99 latency (from the
driver's send to the reply), and CPU seconds per request of the whole
implementation's process tree (utime + stime from /proc, live children
included), then medians and ratios ours / zurl.

    .venv/bin/python bench/client_bench.py                      # 3 rounds of 10 s
    .venv/bin/python bench/client_bench.py --rounds 3 --duration 8
    .venv/bin/python bench/client_bench.py --impl ours --rounds 1

Not a test: it needs /usr/bin/zurl.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from ws_echo import cpu_seconds  # noqa: E402

BODY = b"hello world\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


# -- the origin (own process) ---------------------------------------------------------


class OriginProtocol(asyncio.Protocol):
    """Answers each request head (GET, no body) with RESPONSE; keep-alive."""

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.transport.write(RESPONSE * n)


async def origin_main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(OriginProtocol, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    # stop when the parent closes our stdin
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


# -- the driver (own process) ---------------------------------------------------------


def driver_main(spec, uri, concurrency, duration):
    import zmq

    from tests.harness import tnet

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(spec)

    def send(rid):
        sock.send_multipart([b"", tnet.encode_packet(tnet.OMap(
            [(b"id", rid), (b"method", b"GET"), (b"uri", uri)]))])

    sent = {}
    seq = 0

    def fire():
        nonlocal seq
        seq += 1
        rid = b"%d" % seq
        sent[rid] = time.monotonic()
        send(rid)

    # warm up: one request at a time until one is answered (zurl's and our
    # sockets may not be connected yet)
    deadline = time.monotonic() + 10
    while True:
        fire()
        if sock.poll(500):
            break
        if time.monotonic() > deadline:
            print(json.dumps({"error": "no reply to the probe"}), flush=True)
            return
    sock.recv_multipart()
    sent.clear()
    for _ in range(concurrency):
        fire()
    latencies, errors, done = [], 0, 0
    start = time.monotonic()
    end = start + duration
    print("GO", flush=True)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if not sock.poll(int((end - now) * 1000) + 1):
            continue
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            packet = tnet.decode_packet(frames[-1])
            t0 = sent.pop(packet.get(b"id"), None)
            if t0 is None:
                continue
            if packet.get(b"code") == 200 and packet.get(b"body") == BODY:
                latencies.append(time.monotonic() - t0)
                done += 1
            else:
                errors += 1
            if time.monotonic() < end:
                fire()
    elapsed = time.monotonic() - start
    latencies.sort()

    def pct(p):
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000

    print(json.dumps({"done": done, "errors": errors, "elapsed": elapsed,
                      "p50_ms": pct(0.50), "p99_ms": pct(0.99)}), flush=True)
    ctx.destroy(linger=0)


# -- one run --------------------------------------------------------------------------


def start_impl(impl, workdir, req, workers):
    from tests.harness import procs, zurl_diff
    base = f"ipc://{workdir}/base"
    if impl == "zurl":
        return zurl_diff.start_zurl(workdir, base, req)
    return procs.start_condure("ours", workdir, listen=[], instance_id="condure",
                               workers=workers,
                               extra_args=["--zserver-stream", base, "--zserver-req", req])


def run(impl, opts, origin_port):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory(prefix=f"client-bench-{impl}-") as tmp:
        workdir = Path(tmp)
        req = f"ipc://{workdir}/req"
        proc = start_impl(impl, workdir, req, opts.workers)
        driver = None
        try:
            driver = subprocess.Popen(
                [sys.executable, __file__, "--role", "driver", "--spec", req,
                 "--uri", f"http://127.0.0.1:{origin_port}/bench",
                 "--concurrency", str(opts.concurrency), "--duration", str(opts.duration)],
                cwd=REPO, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
            line = driver.stdout.readline().strip()
            if line != "GO":
                raise RuntimeError(f"{impl}: driver did not start: {line}")
            cpu0 = cpu_seconds(proc.pid)
            t0 = time.monotonic()
            result = json.loads(driver.stdout.readline())
            cpu = cpu_seconds(proc.pid) - cpu0
            wall = time.monotonic() - t0
            driver.wait(30)
        finally:
            if driver is not None:
                if driver.poll() is None:
                    driver.kill()
                    driver.wait()
                driver.stdout.close()
            proc.stop()
    done = max(result["done"], 1)
    return {"impl": impl, "req/s": result["done"] / result["elapsed"],
            "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
            "errors": result["errors"], "requests": result["done"],
            "cpu_s": cpu, "cpu_wall_s": wall, "cpu_us_per_req": cpu / done * 1e6,
            "cores": cpu / wall if wall else None}


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=["bench", "origin", "driver"], default="bench")
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--uri", help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--workers", type=int, default=2, help="ours: --workers")
    p.add_argument("--impl", choices=["both", "ours", "zurl"], default="both")
    p.add_argument("--results-dir", default=str(BENCH / "results"))
    opts = p.parse_args()
    if opts.role == "origin":
        asyncio.run(origin_main())
        return
    if opts.role == "driver":
        driver_main(opts.spec, opts.uri.encode(), opts.concurrency, opts.duration)
        return

    impls = ["ours", "zurl"] if opts.impl == "both" else [opts.impl]
    origin = subprocess.Popen([sys.executable, __file__, "--role", "origin"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    runs = []
    try:
        port = int(origin.stdout.readline())
        for rnd in range(1, opts.rounds + 1):
            for impl in impls:
                r = run(impl, opts, port)
                r["round"] = rnd
                runs.append(r)
                print(f"round {rnd} {impl}: {r['req/s']:.0f} req/s, "
                      f"p50 {fmt(r['p50_ms'], '.2f')} ms, p99 {fmt(r['p99_ms'], '.2f')} ms, "
                      f"{r['cpu_us_per_req']:.0f} µs CPU/req, "
                      f"{r['cores']:.2f} cores, errors {r['errors']}", file=sys.stderr, flush=True)
    finally:
        origin.stdin.close()
        try:
            origin.wait(5)
        except subprocess.TimeoutExpired:
            origin.kill()
            origin.wait()
        origin.stdout.close()

    med = {}
    for impl in impls:
        rs = [r for r in runs if r["impl"] == impl]
        med[impl] = {k: statistics.median(r[k] for r in rs)
                     for k in ("req/s", "p50_ms", "p99_ms", "cpu_us_per_req", "cores")}
    print("| impl | req/s | p50 ms | p99 ms | CPU µs/req | cores busy |")
    print("|---|---|---|---|---|---|")
    for impl in impls:
        m = med[impl]
        print(f"| {impl} | {m['req/s']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
              f"{m['cpu_us_per_req']:.0f} | {m['cores']:.2f} |")
    ratios = None
    if len(impls) == 2:
        ratios = {k: med["ours"][k] / med["zurl"][k] for k in med["ours"] if med["zurl"][k]}
        print("| ours / zurl | " + " | ".join(f"{ratios[k]:.2f}" for k in
              ("req/s", "p50_ms", "p99_ms", "cpu_us_per_req", "cores")) + " |")
    out = Path(opts.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"client-{stamp}.json"
    path.write_text(json.dumps({
        "date": stamp, "host": platform.node(), "cpus": os.cpu_count(),
        "options": {k: getattr(opts, k) for k in ("duration", "rounds", "concurrency", "workers")},
        "runs": runs, "median": med, "ratios": ratios}, indent=2))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
