#!/usr/bin/env python3
"""HTTP throughput and latency: this condure against the reference binary.

For each round, each implementation in turn (ours, then the reference) is
started with the same options on a free loopback port, with its ipc sockets
in a fresh temporary directory, together with a fresh bench/fast_handler.py.
After one probe request, wrk measures it at each connection count
(keep-alive, one wrk thread), and condure's CPU time (its whole process
tree, from /proc) is read before and after each wrk run. The Markdown
summary takes the median over rounds; the JSON file in bench/results/ keeps
every run.

    python3 bench/http_bench.py                 # both, 3 rounds of 10 s runs
    python3 bench/http_bench.py --only-ref --rounds 1 --duration 5
    python3 bench/http_bench.py --mode req      # a req-mode listener (--zclient-req)

Not a test: it needs wrk and, for the reference, /usr/bin/condure.
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
READY_TIMEOUT = 15.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(proc, text, timeout):
    """Read condure's stdout until it contains `text` (the reference's readiness)."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while text.encode() not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"condure did not print {text!r} within {timeout} s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"condure exited with status {proc.wait()}")
            buf += chunk


def wait_for_notify(sock, proc, timeout):
    """Wait for READY=1 on a NOTIFY_SOCKET (our condure's readiness)."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if b"READY=1" in sock.recv(4096).split(b"\n"):
                return
        except TimeoutError:
            if proc.poll() is not None:
                raise RuntimeError(f"condure exited with status {proc.returncode}") from None
    raise RuntimeError(f"condure sent no READY=1 within {timeout} s")


def tree_pids(pid):
    """``pid`` and its live descendants, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(children.get(p, []))
    return pids


def cpu_seconds(pid):
    """CPU time (user + system) of a process and its live descendants."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / hz
    return total


class Server:
    """One condure of either kind plus its fast handler, in a temp directory."""

    def __init__(self, impl, args, handler=None, extra=(), mode="stream"):
        """``handler``: the handler's command line before the base endpoint
        (default: bench/fast_handler.py, which answers "hello world");
        ``extra``: more condure options, for both implementations;
        ``mode``: "stream" (--zclient-stream BASE) or "req" (a req listener,
        --zclient-req SPEC, served by fast_handler.py --req)."""
        self.impl = impl
        self.mode = mode
        self.dir = tempfile.TemporaryDirectory(prefix="condure-bench-")
        self.port = free_port()
        listen = f"127.0.0.1:{self.port}"
        if mode == "req":
            base = f"ipc://{self.dir.name}/req"
            zmq_options = ["--listen", listen + ",req", "--zclient-req", base]
        elif mode == "stream":
            base = f"ipc://{self.dir.name}/client"
            zmq_options = ["--listen", listen, "--zclient-stream", base]
        else:
            raise ValueError(f"unknown mode {mode!r}")
        options = [*zmq_options, "--workers", str(args.workers), *extra]
        self.notify = None
        if impl == "ours":
            notify_path = os.path.join(self.dir.name, "notify")
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(notify_path)
            env = dict(os.environ, NOTIFY_SOCKET=notify_path, PYTHONPATH=str(REPO))
            cmd = [args.python, "-m", "condure", *options]
        else:
            env = dict(os.environ)
            env.pop("NOTIFY_SOCKET", None)
            cmd = [args.ref_binary, *options]
        self.condure = subprocess.Popen(
            cmd, cwd=self.dir.name, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.handler = None
        self.drain = None
        try:
            if impl == "ours":
                wait_for_notify(self.notify, self.condure, READY_TIMEOUT)
            else:
                wait_for_line(self.condure, "] started", READY_TIMEOUT)
            # Discard the rest of the log, so the pipe neither fills nor breaks.
            self.drain = threading.Thread(target=self._drain_log, daemon=True)
            self.drain.start()
            command = handler or [args.python, str(BENCH / "fast_handler.py")]
            if handler is None and mode == "req":
                command = [*command, "--req"]
            # The handler's output goes to stderr: stdout is for the results.
            self.handler = subprocess.Popen([*command, base], cwd=self.dir.name,
                                            stdout=sys.stderr)
            self.probe(b"hello world\n" if handler is None else None)
        except RuntimeError as e:
            output = self._startup_output()
            self.stop()
            raise RuntimeError("{} ({} condure: {})\n{}".format(
                e, impl, " ".join(cmd), output)) from e
        except BaseException:
            self.stop()
            raise

    def _startup_output(self):
        """What condure printed, when it failed to start (the log is not
        drained yet): the last 4 KB read within a second."""
        if self.drain is not None:
            return ""
        fd, out = self.condure.stdout.fileno(), b""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
        return out[-4096:].decode(errors="replace")

    def _drain_log(self):
        """Read condure's log so the pipe neither fills nor breaks; keep it in
        the file named by CONDURE_BENCH_LOG (appended), if set."""
        fd = self.condure.stdout.fileno()
        path = os.environ.get("CONDURE_BENCH_LOG")
        keep = open(path, "ab") if path else None  # noqa: SIM115
        try:
            while chunk := os.read(fd, 65536):
                if keep is not None:
                    keep.write(chunk)
        finally:
            if keep is not None:
                keep.close()

    def probe(self, expected=b"hello world\n"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=READY_TIMEOUT)
        try:
            conn.request("GET", "/probe")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200 or (expected is not None and body != expected):
            raise RuntimeError(f"probe got {resp.status} {body!r}")

    def stop(self):
        for proc in (self.handler, self.condure):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.drain is not None:
            self.drain.join(timeout=5)
        self.condure.stdout.close()
        if self.notify is not None:
            self.notify.close()
        self.dir.cleanup()


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unknown wrk duration {text!r}")
    return float(m.group(1)) * UNITS_MS[m.group(2)]


def parse_wrk(output):
    result = {"errors": {}, "non_2xx": 0}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    if not m:
        raise RuntimeError("no Requests/sec in wrk output:\n" + output)
    result["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", output)
    result["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.M)
        result["p" + pct + "_ms"] = to_ms(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        names = ("connect", "read", "write", "timeout")
        result["errors"] = dict(zip(names, map(int, m.groups()), strict=True))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if m:
        result["non_2xx"] = int(m.group(1))
    return result


def run_wrk(args, port, connections, pid=None):
    """One wrk run; with ``pid`` (condure's), also the CPU time of its
    process tree during the run, per request (``cpu_us``) and in all
    (``cpu_s``)."""
    cmd = [
        args.wrk, "-t1", f"-c{connections}", f"-d{args.duration}s",
        "--latency", f"http://127.0.0.1:{port}/",
    ]  # fmt: skip
    cpu_start = cpu_seconds(pid) if pid else None
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 60)
    cpu = cpu_seconds(pid) - cpu_start if pid else None
    if out.returncode != 0:
        raise RuntimeError("wrk failed: " + out.stderr)
    result = parse_wrk(out.stdout)
    if cpu is not None:
        result["cpu_s"] = cpu
        result["cpu_us"] = cpu / result["requests"] * 1e6 if result["requests"] else None
    return result


def median(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(results, impls, connection_counts):
    rows = {}
    for impl in impls:
        for c in connection_counts:
            runs = [r for r in results if r["impl"] == impl and r["connections"] == c]
            rows[(impl, c)] = {k: median(runs, k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us")}
            rows[(impl, c)]["rounds"] = len(runs)
    return rows


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def markdown(rows, impls, connection_counts):
    lines = [
        "| impl | connections | req/s | p50 (ms) | p99 (ms) | CPU per request (us) | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in connection_counts:
        for impl in impls:
            r = rows[(impl, c)]
            lines.append(
                "| {} | {} | {} | {} | {} | {} | {} |".format(
                    impl, c, fmt(r["rps"], ".0f"), fmt(r["p50_ms"], ".3f"),
                    fmt(r["p99_ms"], ".3f"), fmt(r["cpu_us"], ".1f"), r["rounds"],
                )
            )
    if "ours" in impls and "ref" in impls:
        lines += ["", "| connections | req/s ours/ref | p50 ours/ref | p99 ours/ref "
                  "| CPU per request ours/ref |"]
        lines.append("|---:|---:|---:|---:|---:|")
        for c in connection_counts:
            ours, ref = rows[("ours", c)], rows[("ref", c)]
            ratios = [
                fmt(ours[k] / ref[k], ".2f") if ours[k] and ref[k] else "-"
                for k in ("rps", "p50_ms", "p99_ms", "cpu_us")
            ]
            lines.append("| {} | {} |".format(c, " | ".join(ratios)))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of ours+ref (3)")
    p.add_argument("--connections", default="50,1", help="comma list of wrk -c values (50,1)")
    p.add_argument("--workers", type=int, default=2, help="condure --workers for both (2)")
    p.add_argument("--mode", choices=("stream", "req"), default="stream",
                   help="listener mode: stream (--zclient-stream) or req (--zclient-req)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--only-ref", action="store_true", help="measure the reference only")
    which.add_argument("--only-ours", action="store_true", help="measure ours only")
    p.add_argument("--ref-binary", default="/usr/bin/condure")
    p.add_argument("--python", default=sys.executable, help="interpreter for ours and handler")
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    p.add_argument("--results-dir", default=str(BENCH / "results"))
    args = p.parse_args()

    connection_counts = [int(c) for c in args.connections.split(",")]
    impls = ["ref"] if args.only_ref else ["ours"] if args.only_ours else ["ours", "ref"]

    results = []
    for round_no in range(1, args.rounds + 1):
        for impl in impls:
            server = Server(impl, args, mode=args.mode)
            try:
                for c in connection_counts:
                    r = run_wrk(args, server.port, c, pid=server.condure.pid)
                    r.update(impl=impl, mode=args.mode, connections=c, round=round_no)
                    results.append(r)
                    print(
                        "round {} {} {:4} c={:<3} {:>9.0f} req/s  p50 {:.3f} ms  p99 {:.3f} ms"
                        "  cpu {:.1f} us/req  errors {} non-2xx {}".format(
                            round_no, args.mode, impl, c, r["rps"], r["p50_ms"], r["p99_ms"],
                            r["cpu_us"] or 0.0, sum(r["errors"].values()), r["non_2xx"],
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                server.stop()

    rows = summarize(results, impls, connection_counts)
    table = markdown(rows, impls, connection_counts)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    report = {
        "date": stamp,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "options": vars(args),
        "runs": results,
        "summary": [{"impl": i, "connections": c, **rows[(i, c)]} for (i, c) in rows],
    }
    os.makedirs(args.results_dir, exist_ok=True)
    name = "http-{}.json" if args.mode == "stream" else "http-req-{}.json"
    path = os.path.join(args.results_dir, name.format(stamp))
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(table)
    print(f"\nresults: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
