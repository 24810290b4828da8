#!/usr/bin/env python3
"""Memory per idle connection, and the scale run; used by bench/run.

Memory is that of condure's whole process tree (ours: the supervisor and
its workers; the reference: its one process), read from /proc: PSS from
``smaps_rollup`` (pages shared between processes counted once over the
tree) and RSS from ``status``, summed over the processes.

- ``idle_memory``: one condure of either kind, a baseline after one probe
  request, then N idle connections (HTTP keep-alive after one request, or
  WebSockets after their handshake) held by bench/idle_conns.py processes;
  memory per connection = (memory with N - memory with 0) / N held.
- ``scale_run``: ours only; WebSockets opened in steps up to a maximum,
  connections held and memory sampled over time, and at the end every held
  connection (or a sample) asked for one echo.

    python3 bench/memory_bench.py idle --kind ws --count 10000
    python3 bench/memory_bench.py scale --max 20000 --step 10000

Not a test: it needs /usr/bin/condure for the reference.
"""

import argparse
import collections
import json
import math
import random
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import http_bench  # noqa: E402

REPO = http_bench.REPO
PER_PROCESS = 15000  # connections per idle_conns.py process (descriptor cap 20,000)


def tree_memory(pid):
    """{"pss": bytes, "rss": bytes, "processes": n} of a process tree."""
    pss = rss = n = 0
    for p in http_bench.tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
            n += 1
        except (OSError, ValueError):
            continue
    return {"pss": pss, "rss": rss, "processes": n}


class IdleClients:
    """Enough bench/idle_conns.py processes for ``capacity`` connections,
    each from its own four 127/8 source addresses (the kernel's search for
    a free local port slows down as an address's ports fill up)."""

    def __init__(self, port, kind, capacity, python=sys.executable):
        count = max(1, math.ceil(capacity / PER_PROCESS))
        net = random.randrange(16, 250)  # fresh source addresses for every run
        self.procs = []
        try:
            for i in range(count):
                self.procs.append(subprocess.Popen(
                    [python, str(BENCH / "idle_conns.py"), "--port", str(port),
                     "--kind", kind, "--source",
                     ",".join(f"127.{net}.{i + 1}.{k}" for k in range(1, 5))],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        except BaseException:
            self.close()
            raise
        self.assigned = [0] * count

    def _ask(self, commands):
        """Send one command to each process (None: skip), then read the answers."""
        for proc, cmd in zip(self.procs, commands, strict=False):
            if cmd is not None:
                proc.stdin.write(json.dumps(cmd) + "\n")
                proc.stdin.flush()
        answers = []
        for proc, cmd in zip(self.procs, commands, strict=False):
            if cmd is None:
                answers.append(None)
                continue
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"idle_conns.py exited with status {proc.wait()}")
            answers.append(json.loads(line))
        return answers

    def open(self, n):
        """Open n more, spread over the processes; summed answer."""
        shares = [0] * len(self.procs)
        for _ in range(n):
            i = min(range(len(self.procs)), key=lambda k: self.assigned[k] + shares[k])
            shares[i] += 1
        for i, s in enumerate(shares):
            self.assigned[i] += s
        answers = self._ask([{"cmd": "open", "n": s} if s else None for s in shares])
        total = {"opened": 0, "failed": 0, "seconds": 0.0}
        for a in filter(None, answers):
            total["opened"] += a["opened"]
            total["failed"] += a["failed"]
            total["seconds"] = max(total["seconds"], a["seconds"])
        total["held"] = self.held()
        return total

    def held(self):
        return sum(a["held"] for a in self._ask([{"cmd": "held"}] * len(self.procs)))

    def closed(self):
        """Connections the server closed, by how ("close 1011", "eof", ...)."""
        how = collections.Counter()
        for a in self._ask([{"cmd": "closed"}] * len(self.procs)):
            how.update(a.get("how", {}))
        return dict(how)

    def echo(self, sample=0):
        """One echo (or request) on each held connection, or on ``sample``
        of them spread over the processes."""
        each = [0] * len(self.procs)
        if sample:
            for i in range(sample):
                each[i % len(self.procs)] += 1
        answers = self._ask([{"cmd": "echo", "n": n} if (n or not sample) else None
                             for n in each])
        answers = list(filter(None, answers))
        return {"asked": sum(a["asked"] for a in answers),
                "answered": sum(a["answered"] for a in answers),
                "max_wait": max((a["max_wait"] for a in answers), default=0.0)}

    def close(self):
        for proc in self.procs:
            try:
                if proc.poll() is None:
                    proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                    proc.stdin.flush()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass


def handler_for(kind, python):
    """The handler command (before the base): fast_handler.py for HTTP,
    examples/handoffhandler.py (answers condure's keep-alives) for WebSockets."""
    if kind == "http":
        return [python, str(BENCH / "fast_handler.py")]
    return [python, str(REPO / "examples" / "handoffhandler.py"), "--base"]


def server_args(opts, workers):
    return types.SimpleNamespace(workers=workers, python=opts.python,
                                 ref_binary=opts.ref_binary)


def settle_memory(pid, seconds=1.0):
    """Memory after ``seconds`` of quiet (lets workers finish what is in flight)."""
    time.sleep(seconds)
    return tree_memory(pid)


def idle_memory(impl, kind, count, opts, log=print):
    """Memory per idle connection of one implementation; a dict for the JSON."""
    extra = ["--stream-maxconn", str(max(10000, count + 1000))]
    server = http_bench.Server(impl, server_args(opts, opts.workers),
                               handler=handler_for(kind, opts.python), extra=extra)
    clients = None
    try:
        # Clients first: they map the same shared libraries, which lowers
        # condure's PSS (a shared page is split over more processes).
        clients = IdleClients(server.port, kind, count, opts.python)
        base = settle_memory(server.condure.pid)
        opened = clients.open(count)
        loaded = settle_memory(server.condure.pid)
        held = clients.held()
        result = {
            "impl": impl, "kind": kind, "asked": count, "opened": opened["opened"],
            "failed": opened["failed"], "open_seconds": opened["seconds"], "held": held,
            "base": base, "loaded": loaded,
            "pss_per_conn": (loaded["pss"] - base["pss"]) / held if held else None,
            "rss_per_conn": (loaded["rss"] - base["rss"]) / held if held else None,
        }
        log("memory {} {:4} {} connections held ({} failed, opened in {:.1f} s): "
            "{:.1f} KiB PSS, {:.1f} KiB RSS per connection".format(
                kind, impl, held, opened["failed"], opened["seconds"],
                (result["pss_per_conn"] or 0) / 1024, (result["rss_per_conn"] or 0) / 1024))
        return result
    finally:
        if clients is not None:
            clients.close()
        server.stop()


class Sampler(threading.Thread):
    """Samples a process tree's memory every ``interval`` seconds."""

    def __init__(self, pid, start, interval=1.0):
        super().__init__(daemon=True)
        self.pid, self.t0, self.interval = pid, start, interval
        self.samples = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            m = tree_memory(self.pid)
            self.samples.append({"t": round(time.monotonic() - self.t0, 2), **m})
            self.stopping.wait(self.interval)

    def stop(self):
        self.stopping.set()
        self.join()


def slope(points):
    """Least-squares line through (x, y) points: (slope, intercept)."""
    n = len(points)
    if n < 2:
        return None, None
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if not sxx:
        return None, None
    k = sum((x - mx) * (y - my) for x, y in points) / sxx
    return k, my - k * mx


def scale_run(opts, log=print):
    """Ours only: WebSockets opened in steps of ``opts.scale_step`` up to
    ``opts.scale_max``, held ``opts.scale_hold`` s after each step."""
    top = opts.scale_max
    workers = opts.scale_workers or max(2, math.ceil(top / 12500))
    # Each worker holds its share of --stream-maxconn; the kernel's spread
    # over the workers' listeners is uneven by a few percent, hence 1.2x.
    extra = ["--stream-maxconn", str(top * 6 // 5 + 1000)]
    server = http_bench.Server("ours", server_args(opts, workers),
                               handler=handler_for("ws", opts.python), extra=extra)
    clients = sampler = None
    t0 = time.monotonic()
    timeline, steps = [], []
    try:
        clients = IdleClients(server.port, "ws", top, opts.python)
        base = settle_memory(server.condure.pid)
        sampler = Sampler(server.condure.pid, t0)
        sampler.start()
        timeline.append({"t": round(time.monotonic() - t0, 2), "held": 0, **base})
        while clients.held() < top and sum(clients.assigned) < top:
            n = min(opts.scale_step, top - sum(clients.assigned))
            timeline.append({"t": round(time.monotonic() - t0, 2), "held": clients.held(),
                             **tree_memory(server.condure.pid)})  # the step begins
            opened = clients.open(n)
            end = time.monotonic() + opts.scale_hold
            while True:
                held = clients.held()
                timeline.append({"t": round(time.monotonic() - t0, 2), "held": held,
                                 **tree_memory(server.condure.pid)})
                if time.monotonic() >= end:
                    break
                time.sleep(1.0)
            steps.append({**opened, **timeline[-1], "closed_by_server": clients.closed()})
            log("scale: {} held ({} failed in this step, {:.1f} s), PSS {:.0f} MB, "
                "RSS {:.0f} MB{}".format(held, opened["failed"], opened["seconds"],
                                         timeline[-1]["pss"] / 2**20,
                                         timeline[-1]["rss"] / 2**20,
                                         ", closed by condure so far: {}".format(
                                             steps[-1]["closed_by_server"])
                                         if steps[-1]["closed_by_server"] else ""))
            if opened["opened"] == 0:
                break
        final_hold = opts.scale_final_hold
        if final_hold > 0:  # held a while longer, past rounds of keep-alives
            end = time.monotonic() + final_hold
            while time.monotonic() < end:
                time.sleep(min(5.0, max(end - time.monotonic(), 0.0)))
                timeline.append({"t": round(time.monotonic() - t0, 2), "held": clients.held(),
                                 **tree_memory(server.condure.pid)})
            log("scale: {} held after {:.0f} s more, closed by condure: {}".format(
                timeline[-1]["held"], final_hold, clients.closed() or "none"))
        began = time.monotonic()
        echo = clients.echo(opts.echo_sample)
        echo["seconds"] = round(time.monotonic() - began, 2)
        final_held = clients.held()
        timeline.append({"t": round(time.monotonic() - t0, 2), "held": final_held,
                         **tree_memory(server.condure.pid)})
        log("scale: echo check {}/{} answered (longest {:.2f} s), {} held at the end".format(
            echo["answered"], echo["asked"], echo["max_wait"], final_held))
    finally:
        if sampler is not None:
            sampler.stop()
        if clients is not None:
            clients.close()
        server.stop()
    k, b = slope([(s["held"], s["pss"]) for s in [timeline[0], *steps]])
    return {
        "max": top, "step": opts.scale_step, "workers": workers, "base": base,
        "steps": steps, "timeline": timeline, "memory": sampler.samples if sampler else [],
        "echo": echo, "held_at_end": final_held,
        "pss_slope_per_conn": k, "pss_intercept": b,
        "pss_for_1m": (b + k * 1_000_000) if k is not None else None,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("idle", "scale"))
    p.add_argument("--kind", choices=("http", "ws"), default="ws")
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--impl", choices=("ours", "ref"), action="append")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max", dest="scale_max", type=int, default=20000)
    p.add_argument("--step", dest="scale_step", type=int, default=10000)
    p.add_argument("--hold", dest="scale_hold", type=float, default=5.0)
    p.add_argument("--final-hold", dest="scale_final_hold", type=float, default=0.0)
    p.add_argument("--scale-workers", type=int, default=0)
    p.add_argument("--echo-sample", type=int, default=0)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--ref-binary", default="/usr/bin/condure")
    opts = p.parse_args()
    if opts.what == "idle":
        out = [idle_memory(i, opts.kind, opts.count, opts) for i in opts.impl or ("ours", "ref")]
    else:
        out = scale_run(opts)
        out.pop("memory")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
