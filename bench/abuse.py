#!/usr/bin/env python3
"""Under abuse: a well-behaved client's latency while condure holds an idle
flood and slowloris clients; also bench/run's case ``abuse``.

One run, for one implementation (ours or /usr/bin/condure) and one kind of
flood: condure with ``--workers 2``, a stream-mode listener,
``--stream-maxconn 20000`` and bench/fast_handler.py; then

1. the flood: ``--idle`` connections (10,000) held by bench/idle_conns.py,
   from their own 127/8 address, opened as fast as they go. ``silent``:
   each connects and sends nothing (ours closes them after --head-timeout,
   10 s: the defence at work; the reference keeps them); ``keepalive``: each
   sends one GET, reads the answer, and stays quiet (both close those after
   the 60 s session timeout, beyond the run); ``none``: no flood and no
   slowloris, the baseline;
2. as soon as the flood is open, for ``--duration`` seconds (30):
   ``--slowloris`` clients (100; ``slowloris`` below, its own process): each
   connects, sends a request line and then one header line a second,
   never the blank line; when condure cuts it (ours: 408 after 10 s) it
   reconnects at once and starts again;
3. meanwhile two well-behaved clients, each its own process (``client``
   below), one request at a time with ``--pause`` (5 ms) between requests:
   one on a single keep-alive connection, one opening a new connection per
   request (``Connection: close``); each request's latency (connect, send,
   whole response read);
4. every second: PSS and RSS of condure's process tree (bench/memory_bench.py),
   and how many flood connections are still held.

    .venv/bin/python bench/abuse.py                      # ours and the reference, both floods
    .venv/bin/python bench/abuse.py --impl ours --flood silent --duration 20
    .venv/bin/python bench/abuse.py slowloris --port P --clients 100 --duration 30
    .venv/bin/python bench/abuse.py client --port P --mode keepalive --duration 30

Writes bench/results/abuse-<date>.json and prints a Markdown summary.
Not a test: a measurement, with every process it starts stopped at the end.
"""

import argparse
import asyncio
import collections
import datetime
import json
import math
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import http_bench  # noqa: E402
import memory_bench  # noqa: E402

REPO = BENCH.parent
IP_BIND_ADDRESS_NO_PORT = 24  # Linux, <linux/in.h>
TARGET_P99_MS = 50.0


def percentile(sorted_values, q):
    """The nearest-rank q-quantile (0 < q <= 1) of sorted values, or None."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)] if sorted_values else None


def spread(values):
    """[min, median, max] of some numbers, rounded (empty: [])."""
    v = sorted(values)
    return [round(x, 3) for x in (v[0], v[len(v) // 2], v[-1])] if v else []


# -- the slowloris clients (their own process) --------------------------------


async def slowloris(port, clients, duration, source):
    """``clients`` slowloris connections for ``duration`` seconds, each
    reconnecting when cut; a summary dict."""
    loop = asyncio.get_running_loop()
    end = loop.time() + duration
    cuts, errors, still_open, lines = [], [], [], [0]

    async def one_connection(i):
        began = loop.time()
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 10)
            reader, writer = await asyncio.open_connection(sock=sock)
        except (OSError, TimeoutError) as e:
            sock.close()
            errors.append(type(e).__name__)
            await asyncio.sleep(0.1)
            return
        connected = loop.time()
        writer.write(b"GET /slow HTTP/1.1\r\n")
        answer = asyncio.ensure_future(reader.read(4096))
        n = 0
        try:
            while True:
                wait = min(1.0, end - loop.time())
                if wait <= 0:
                    still_open.append(loop.time() - connected)
                    return
                done, _ = await asyncio.wait([answer], timeout=wait)
                if done:
                    try:
                        data = answer.result()
                    except OSError:
                        data = b""
                    status = data.split(b" ", 2)[1].decode() if data[:5] == b"HTTP/" else "none"
                    cuts.append({"began": round(began, 3),
                                 "after": round(loop.time() - connected, 3),
                                 "status": status, "lines": n})
                    return
                if loop.time() >= end:
                    continue
                n += 1
                lines[0] += 1
                writer.write(b"X-Slow-%d: %d\r\n" % (n, i))
        finally:
            answer.cancel()
            writer.transport.abort()

    async def attacker(i):
        await asyncio.sleep(i / clients)  # spread over the first second
        while loop.time() < end:
            await one_connection(i)

    await asyncio.gather(*(attacker(i) for i in range(clients)))
    statuses = dict(collections.Counter(c["status"] for c in cuts))
    return {
        "clients": clients, "connections": len(cuts) + len(still_open), "cut": len(cuts),
        "cut_by_status": statuses, "cut_after": spread(c["after"] for c in cuts),
        "open_at_end": len(still_open), "open_at_end_for": spread(still_open),
        "header_lines_sent": lines[0], "connect_errors": len(errors),
        "cuts": cuts,
    }


# -- a well-behaved client (its own process) -------------------------------------


def read_response(sock, buf):
    """Read one response with a Content-Length; (status, rest of buffer)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response body")
        rest += chunk
    return int(lines[0].split()[1]), rest[length:]


def connect(port, source):
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(10.0)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def client(port, mode, duration, pause, source):
    """One request at a time for ``duration`` seconds; every latency."""
    keep = b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n"
    close = b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    end = time.monotonic() + duration
    samples, errors, reconnects, sock, buf = [], [], 0, None, b""
    while time.monotonic() < end:
        began = time.monotonic()
        try:
            if sock is None:
                sock, buf = connect(port, source), b""
                if mode == "keepalive" and samples:
                    reconnects += 1
            sock.sendall(keep if mode == "keepalive" else close)
            status, buf = read_response(sock, buf)
            latency = time.monotonic() - began
            if status != 200:
                errors.append(f"status {status}")
            else:
                samples.append((round(began, 4), latency))
        except (OSError, ValueError, IndexError) as e:
            errors.append(type(e).__name__)
            if sock is not None:
                sock.close()
            sock = None
        if mode == "new" and sock is not None:
            sock.close()
            sock = None
        if pause:
            time.sleep(pause)
    if sock is not None:
        sock.close()
    return {"mode": mode, "samples": samples, "errors": errors, "reconnects": reconnects}


def latency_summary(raw, t0):
    """Count, p50, p99 and max (ms) of a client's run, and per second."""
    lat = sorted(x for _, x in raw["samples"])
    per_second = {}
    for t, x in raw["samples"]:
        per_second.setdefault(int(t - t0), []).append(x)
    ms = 1000.0
    return {
        "mode": raw["mode"], "count": len(lat),
        "p50_ms": percentile(lat, 0.50) and percentile(lat, 0.50) * ms,
        "p99_ms": percentile(lat, 0.99) and percentile(lat, 0.99) * ms,
        "max_ms": lat[-1] * ms if lat else None,
        "over_50ms": sum(1 for x in lat if x > 0.05),
        "errors": len(raw["errors"]), "error_kinds": sorted(set(raw["errors"])),
        "reconnects": raw["reconnects"],
        "per_second": [
            {"t": s, "count": len(v), "p99_ms": round(percentile(sorted(v), 0.99) * ms, 3),
             "max_ms": round(max(v) * ms, 3)}
            for s, v in sorted(per_second.items())
        ],
    }


# -- one run ------------------------------------------------------------------


def ctl_limits(python, path):
    """Ours: the "limits" counters summed over the workers (condure ctl status)."""
    out = subprocess.run([python, "-m", "condure", "ctl", "--socket", path, "status", "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=20,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        status = json.loads(out.stdout)
    except ValueError:
        return None
    total = collections.Counter()
    for w in status.get("workers", []):
        total.update(w.get("limits") or {})
    return dict(total)


def sub(python, out, *args):
    """This file's ``slowloris`` or ``client`` in its own process, its JSON
    into the file ``out`` (a pipe could fill up before it is read)."""
    with open(out, "w") as f:
        return subprocess.Popen([python, str(Path(__file__).resolve()), *map(str, args)],
                                stdout=f)


def run(impl, flood, opts, log=print):
    """One implementation under one kind of flood; a dict for the JSON."""
    ctl_dir = tempfile.TemporaryDirectory(prefix="condure-abuse-")
    ctl_path = os.path.join(ctl_dir.name, "ctl")
    extra = ["--stream-maxconn", str(opts.maxconn)]
    if impl == "ours":
        extra += ["--control-socket", ctl_path]
    server = http_bench.Server(impl, types.SimpleNamespace(
        workers=opts.workers, python=opts.python, ref_binary=opts.ref_binary), extra=extra)
    idle = sampler = None
    procs = []
    net = random.randrange(16, 250)
    try:
        pid = server.condure.pid
        # "none": the baseline, no flood and no slowloris
        n_idle, n_loris = (0, 0) if flood == "none" else (opts.idle, opts.slowloris)
        idle = memory_bench.IdleClients(server.port, "silent" if flood == "silent" else "http",
                                        n_idle, opts.python)
        base = memory_bench.settle_memory(pid, 0.5)
        t0 = time.monotonic()
        sampler = memory_bench.Sampler(pid, t0)
        sampler.start()
        opened = idle.open(n_idle)
        t_open = time.monotonic() - t0
        log("abuse {:4} {:9}: {} flood connections open in {:.1f} s ({} failed)".format(
            impl, flood, opened["opened"], t_open, opened["failed"]))
        outs = [os.path.join(ctl_dir.name, f"out{i}.json") for i in range(3)]
        procs.append(sub(opts.python, outs[0], "slowloris", "--port", server.port, "--clients",
                         n_loris, "--duration", opts.duration,
                         "--source", f"127.{net}.200.1"))
        for i, mode in enumerate(("keepalive", "new")):
            procs.append(sub(opts.python, outs[i + 1], "client", "--port", server.port,
                             "--mode", mode, "--duration", opts.duration, "--pause",
                             opts.pause, "--source", f"127.{net}.201.{i + 1}"))
        held = []
        while any(p.poll() is None for p in procs[1:]):
            held.append({"t": round(time.monotonic() - t0, 2), "held": idle.held()})
            time.sleep(1.0)
        for p in procs:
            if p.wait(timeout=60):
                raise RuntimeError(f"{p.args[2:]} exited with status {p.returncode}")
        outputs = [json.loads(Path(out).read_text()) for out in outs]
        held.append({"t": round(time.monotonic() - t0, 2), "held": idle.held()})
        closed = idle._ask([{"cmd": "closed"}] * len(idle.procs))
        limits = ctl_limits(opts.python, ctl_path) if impl == "ours" else None
        end_memory = memory_bench.tree_memory(pid)
    finally:
        if sampler is not None:
            sampler.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        if idle is not None:
            idle.close()
        server.stop()
        ctl_dir.cleanup()
    loris = outputs[0]
    for c in loris["cuts"]:  # when the connection began, in seconds after the flood's start
        c["began"] = round(c["began"] - t0, 3)
    clients = [latency_summary(o, t0) for o in outputs[1:]]
    memory = sampler.samples
    result = {
        "impl": impl, "flood": flood, "idle_asked": n_idle, "opened": opened["opened"],
        "open_failed": opened["failed"], "open_seconds": round(t_open, 2),
        "flood_held": held, "flood_held_at_end": held[-1]["held"],
        "flood_cut": sum(c["closed"] for c in closed),
        # [min, median, max] seconds from connect to condure's close, per
        # idle_conns.py process (one holds up to 15,000)
        "flood_cut_after": [c["after"] for c in closed],
        "slowloris": loris, "clients": clients, "limits": limits,
        "memory_base": base, "memory_end": end_memory,
        "pss_max": max(m["pss"] for m in memory), "rss_max": max(m["rss"] for m in memory),
        "memory": memory,
    }
    log(f"abuse {impl:4} {flood:9}: flood held {held[-1]['held']} at the end "
        f"({result['flood_cut']} cut, after {cut_after(result)} s); slowloris cut "
        f"{loris['cut_by_status']} after {loris['cut_after']} s, {loris['open_at_end']} open "
        f"at the end; PSS max {result['pss_max'] >> 20} MiB, end {end_memory['pss'] >> 20} MiB")
    for c in clients:
        log(f"abuse {impl:4} {flood:9}: client {c['mode']:9} {c['count']} requests, p50 "
            f"{fmt(c['p50_ms'], '.2f')} ms, p99 {fmt(c['p99_ms'], '.2f')} ms, max "
            f"{fmt(c['max_ms'], '.1f')} ms, "
            f"{c['errors']} errors")
    return result


def cut_after(r):
    """Seconds from connect to condure's close of the flood's connections:
    "min/median/max" (the median of one idle_conns.py process's)."""
    spreads = [a for a in r["flood_cut_after"] if a]
    if not spreads:
        return "-"
    return f"{min(a[0] for a in spreads)}/{spreads[0][1]}/{max(a[2] for a in spreads)}"


def markdown(result):
    m = result["machine"]
    out = ["Load average (1 min) {:.2f} at the start, {:.2f} at the end; {} CPUs. "
           "`uptime` before: {}{}\n".format(
               m["loadavg_at_start"][0], m["loadavg_at_end"][0], m["cpus"], m["uptime"],
               " The machine was busy: compare with care."
               if max(m["loadavg_at_start"][0], m["loadavg_at_end"][0]) > 1.5 else ""),
           "| impl | flood | well-behaved client | requests | p50 (ms) | p99 (ms) | max (ms) "
           "| over 50 ms | errors |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        for c in r["clients"]:
            out.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                r["impl"], r["flood"], c["mode"], c["count"], fmt(c["p50_ms"], ".2f"),
                fmt(c["p99_ms"], ".2f"), fmt(c["max_ms"], ".1f"), c["over_50ms"], c["errors"]))
    out += ["", "| impl | flood | opened (in s) | held at the end | cut | cut after (s, "
            "min/median/max) | slowloris connections | cut (status: count) | cut after (s) "
            "| open at the end | PSS before (MiB) | PSS max (MiB) | PSS at the end (MiB) |",
            "|---|---|---:|---:|---:|---|---:|---|---|---:|---:|---:|---:|"]
    for r in result["runs"]:
        s = r["slowloris"]
        out.append("| {} | {} | {} ({:.1f}) | {} | {} | {} | {} | {} | {} | {} | {:.0f} | {:.0f} "
                   "| {:.0f} |".format(
                       r["impl"], r["flood"], r["opened"], r["open_seconds"],
                       r["flood_held_at_end"], r["flood_cut"], cut_after(r), s["connections"],
                       ", ".join(f"{k}: {v}" for k, v in sorted(s["cut_by_status"].items()))
                       or "-", "/".join(map(str, s["cut_after"])) or "-", s["open_at_end"],
                       r["memory_base"]["pss"] / 2**20, r["pss_max"] / 2**20,
                       r["memory_end"]["pss"] / 2**20))
    for r in (r for r in result["runs"] if r["limits"]):
        out.append("\nOurs, {} flood: `condure ctl status` limits {}.".format(
            r["flood"], ", ".join(f"{k} {v}" for k, v in sorted(r["limits"].items()))))
    return "\n".join(out)


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def run_all(opts, log=print, save=None):
    """Every implementation under every flood; the result dict (``save`` is
    called with it after each run)."""
    result = {
        "date": datetime.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_at_start": os.getloadavg(),
                    "uptime": subprocess.run(["uptime"], capture_output=True,
                                             text=True).stdout.strip()},
        "settings": {k: getattr(opts, k) for k in (
            "impl", "flood", "idle", "slowloris", "duration", "pause", "workers", "maxconn")},
        "target_p99_ms": TARGET_P99_MS,
        "runs": [],
    }
    for flood in opts.flood.split(","):
        for impl in opts.impl.split(","):
            result["runs"].append(run(impl, flood, opts, log=log))
            result["machine"]["loadavg_at_end"] = os.getloadavg()
            if save is not None:
                save(result)
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    return result


OPTIONS = (  # name, type, default, help
    ("impl", str, "ours,ref", "ours, ref or ours,ref"),
    ("flood", str, "silent,keepalive", "comma list of silent, keepalive, none (no abuse)"),
    ("idle", int, 10000, "flood connections"),
    ("slowloris", int, 100, "slowloris clients"),
    ("duration", float, 30.0, "seconds of slowloris and measured requests"),
    ("pause", float, 0.005, "seconds between a client's requests"),
    ("maxconn", int, 20000, "--stream-maxconn of both"),
)


def add_options(p, prefix="", unset=()):
    """The run's options; bench/run adds them as --abuse-NAME (dest
    abuse_NAME), leaving those in ``unset`` at None (its --quick picks)."""
    for name, kind, default, text in OPTIONS:
        p.add_argument(f"--{prefix}{name}", type=kind,
                       default=None if name in unset else default,
                       help=f"{text} ({default})")


def options_from(opts, prefix):
    """bench/run's --abuse-NAME options as this module's names."""
    return types.SimpleNamespace(
        **{name: getattr(opts, prefix + name) for name, *_ in OPTIONS},
        workers=opts.workers, python=opts.python, ref_binary=opts.ref_binary)


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("slowloris", "client"):
        p = argparse.ArgumentParser(prog=f"abuse.py {sys.argv[1]}")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--duration", type=float, default=30.0)
        p.add_argument("--source", default="127.0.0.1")
        if sys.argv[1] == "slowloris":
            p.add_argument("--clients", type=int, default=100)
            a = p.parse_args(sys.argv[2:])
            out = asyncio.run(slowloris(a.port, a.clients, a.duration, a.source))
        else:
            p.add_argument("--mode", choices=("keepalive", "new"), default="keepalive")
            p.add_argument("--pause", type=float, default=0.005)
            a = p.parse_args(sys.argv[2:])
            out = client(a.port, a.mode, a.duration, a.pause, a.source)
        print(json.dumps(out))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    add_options(p)
    p.add_argument("--workers", type=int, default=2, help="condure --workers for both (2)")
    p.add_argument("--python", default=sys.executable, help="interpreter for ours and helpers")
    p.add_argument("--ref-binary", default="/usr/bin/condure")
    p.add_argument("--results-dir", default=str(BENCH / "results"))
    opts = p.parse_args()
    os.makedirs(opts.results_dir, exist_ok=True)
    path = None

    def save(result):
        nonlocal path
        path = Path(opts.results_dir) / "abuse-{}.json".format(result["date"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)

    def log(text):
        print(text, file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what was started
    result = run_all(opts, log=log, save=save)
    save(result)
    print(markdown(result))
    log(f"results: {path}")


if __name__ == "__main__":
    main()
