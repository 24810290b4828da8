#!/usr/bin/env python3
"""WebSocket echo capacity: this condure against the reference binary.

Each implementation in turn serves N WebSocket clients
(tests/harness/wsload.py, a message every --interval seconds each) through
examples/handoffhandler.py for --duration seconds. Printed per run: messages
sent and echoed per second, the longest wait for an echo, condure's own
CPU time (supervisor and workers, not the handler or the clients) per
message echoed, and the ratios ours / reference. When the offered rate is above what the
machine carries, echoes fall behind: the longest wait grows and "behind"
(sent but not echoed by the end, after a short wait) is large.

    python3 bench/ws_echo.py                        # 1000 clients, 20 msg/s each
    python3 bench/ws_echo.py --clients 1000 --interval 0.2
    python3 bench/ws_echo.py --connect --impl ours  # handler binds; one implementation

Not a test: it needs /usr/bin/condure for the reference.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import http_bench

REPO = http_bench.REPO


class Args:
    pass


cpu_seconds = http_bench.cpu_seconds  # client_bench.py imports it from here


def run(impl, opts):
    args = Args()
    args.workers, args.python, args.ref_binary = opts.workers, sys.executable, opts.ref_binary
    handler = [sys.executable, str(REPO / "examples" / "handoffhandler.py")]
    if opts.connect:
        handler.append("--bind")
    server = http_bench.Server(impl, args, handler=[*handler, "--base"],
                               extra=["--zclient-connect"] if opts.connect else [])
    result_path = Path(server.dir.name) / "load.json"
    load = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.wsload", "--port", str(server.port),
         "--clients", str(opts.clients), "--interval", str(opts.interval),
         "--result", str(result_path)],
        cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        if load.stdout.readline().strip() != "READY":
            raise RuntimeError("load client did not get ready")
        cpu_start = cpu_seconds(server.condure.pid)
        try:
            load.wait(opts.duration)
        except subprocess.TimeoutExpired:
            pass
        cpu = cpu_seconds(server.condure.pid) - cpu_start
        load.send_signal(signal.SIGTERM)
        load.wait(60)
        result = json.loads(result_path.read_text())
    finally:
        if load.poll() is None:
            load.kill()
        load.stdout.close()
        server.stop()
    seconds = result["duration"]
    return {"impl": impl, "sent/s": result["sent"] / seconds,
            "echoed/s": result["echoed"] / seconds, "max_stall": result["max_stall"],
            "max_stall_at": result.get("max_stall_at", 0.0),
            "slow": result.get("slow_echoes", 0),
            "behind": result["lost"], "disconnects": result["disconnects"],
            # condure's own CPU (supervisor and workers) per message echoed
            "cpu_us": cpu / max(result["echoed"], 1) * 1e6}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ref-binary", default="/usr/bin/condure")
    p.add_argument("--connect", action="store_true",
                   help="condure connects (--zclient-connect), the handler binds")
    p.add_argument("--impl", choices=("ours", "reference"), action="append",
                   help="run only this one (repeatable; default: both)")
    opts = p.parse_args()
    rows = [run(impl, opts) for impl in (opts.impl or ("ours", "reference"))]
    print(f"{opts.clients} clients, a message every {opts.interval} s each, "
          f"{opts.duration:.0f} s, {opts.workers} workers"
          + (", --zclient-connect" if opts.connect else ""))
    print("| impl | sent/s | echoed/s | longest wait for an echo (s) | sent at (s) "
          "| echoes over 1 s | behind at end | disconnects | condure CPU per echo (µs) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['sent/s']:.0f} | {r['echoed/s']:.0f} | "
              f"{r['max_stall']:.2f} | {r['max_stall_at']:.1f} | {r['slow']} | {r['behind']} | "
              f"{r['disconnects']} | {r['cpu_us']:.0f} |")
    if len(rows) == 2:
        print(f"echoed/s ratio ours/reference: {rows[0]['echoed/s'] / rows[1]['echoed/s']:.2f}; "
              f"CPU per echo ours/reference: {rows[0]['cpu_us'] / rows[1]['cpu_us']:.2f}")


if __name__ == "__main__":
    main()
