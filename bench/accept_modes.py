#!/usr/bin/env python3
"""How connections and requests spread over workers, per accept mode.

For each accept mode (reuseport, shared, dispatch) this starts our condure
with ``--workers 4 --accept-mode MODE`` and bench/fast_handler.py in
counting mode, runs ``wrk -t2 -c1000`` (1000 keep-alive connections) for a
while, then reads how many connections and requests each worker served
(from the request ids) and prints the max/min ratios. 1.0 is a perfect
spread.

    python3 bench/accept_modes.py [--duration 10] [--connections 1000] [--workers 4]

Not a test: it needs wrk. Results go to bench/results/ as JSON as well.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from http_bench import free_port, wait_for_notify  # noqa: E402

MODES = ("reuseport", "shared", "dispatch")


def run_mode(mode, args):
    with tempfile.TemporaryDirectory(prefix="condure-accept-") as d:
        port = free_port()
        base = f"ipc://{d}/client"
        notify_path = os.path.join(d, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path, PYTHONPATH=str(REPO))
        condure = subprocess.Popen(
            [args.python, "-m", "condure", "--listen", f"127.0.0.1:{port}",
             "--zclient-stream", base, "--workers", str(args.workers),
             "--accept-mode", mode],
            cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        counts_path = os.path.join(d, "counts.json")
        handler = None
        try:
            wait_for_notify(notify, condure, 30)
            handler = subprocess.Popen(
                [args.python, str(BENCH / "fast_handler.py"), base, "--count", counts_path],
                cwd=d)
            out = subprocess.run(
                [args.wrk, "-t2", f"-c{args.connections}", f"-d{args.duration}s",
                 f"http://127.0.0.1:{port}/"],
                capture_output=True, text=True, check=True).stdout
            rps = float(next(line.split()[1] for line in out.splitlines()
                             if line.startswith("Requests/sec")))
            handler.send_signal(signal.SIGTERM)
            handler.wait(timeout=15)
            counts = json.loads(Path(counts_path).read_text())
        finally:
            for proc in (handler, condure):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            notify.close()
    workers = [str(i) for i in range(args.workers)]
    conns = [counts.get(w, {}).get("connections", 0) for w in workers]
    reqs = [counts.get(w, {}).get("requests", 0) for w in workers]

    def ratio(values):
        return max(values) / min(values) if min(values) else float("inf")

    return {"mode": mode, "rps": rps, "connections": conns, "requests": reqs,
            "connections_ratio": ratio(conns), "requests_ratio": ratio(reqs)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    args = p.parse_args()
    rows = [run_mode(mode, args) for mode in args.modes.split(",")]
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    (results / time.strftime("accept-%Y%m%d-%H%M%S.json")).write_text(json.dumps(rows, indent=1))
    print("| mode | req/s | connections per worker | max/min | requests per worker | max/min |")
    print("|---|---:|---|---:|---|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['rps']:.0f} | {r['connections']} | "
              f"{r['connections_ratio']:.2f} | {r['requests']} | {r['requests_ratio']:.2f} |")


if __name__ == "__main__":
    main()
