#!/usr/bin/env python3
"""Soak: does anything leak or get lost over hundreds of reloads and restarts?

    .venv/bin/python bench/soak.py --phase reload --duration 900
    .venv/bin/python bench/soak.py --phase restart --duration 900   # needs root (systemd)

condure (``--workers 2``, stream mode) with examples/handoffhandler.py and
bench/soak_load.py's steady mixed load (WebSockets echoing, keep-alive and
``Connection: close`` requests, long-polls, misbehaving clients), while

- ``reload``: condure runs as a plain process (its ``TMPDIR`` a private
  directory, so that its runtime files can be told from others') and gets
  SIGHUP every ``--every`` (10-20 s);
- ``restart``: condure runs as the project's condure.service under a real
  systemd booted in private namespaces (tests/harness/systemd_ns.py), and
  gets an operation every ``--every`` (15-30 s), ``systemctl restart`` and
  ``systemctl reload`` in turn: a restart every 30-60 s, a reload between
  two.

Every ``--sample`` seconds (5): descriptors, RSS, PSS and threads of the
supervisor and of its children (workers, old ones still draining
included), ``condure ctl status`` (connections held, moved, lost), the fd
store's count (restart), and what the clients think they hold. At the end
the clients close, condure is sampled idle, gets one more reload/restart
with nobody connected and is sampled again (the baseline to compare with
is the idle sample before the load), and is stopped; then stray processes,
runtime files, ipc files and the fd store are checked.

Writes ``--out``/samples-PHASE.jsonl and prints a Markdown summary: the
curves (start, middle, end of the load; idle before and after), each lost
WebSocket or cut request with the operation before it, and what was left.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from condure import ctl  # noqa: E402

PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            out += [int(x) for x in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
        except OSError:
            pass
    return out


def proc_info(pid: int) -> dict | None:
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        status = Path(f"/proc/{pid}/status").read_text()
        pss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"pid": pid, "fds": fds, "rss_kb": int(fields["VmRSS"].split()[0]),
            "pss_kb": pss, "threads": int(fields["Threads"])}


def tree(sup: int | None) -> dict:
    if sup is None:
        return {}
    s = proc_info(sup)
    kids = [k for k in (proc_info(c) for c in children(sup)) if k]
    return {"sup": s, "workers": kids}


def ctl_status(path: str) -> dict | None:
    try:
        return ctl.request(path, {"command": "status"}, timeout=5)
    except (ctl.CtlError, OSError, ValueError):
        return None


def load_stats(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class Reload:
    """condure as a plain process; operations are SIGHUP."""

    name = "reload"

    def __init__(self, a: argparse.Namespace, out: Path) -> None:
        self.out, self.port = out, a.port
        self.run = out / "reload"
        self.run.mkdir(parents=True, exist_ok=True)
        (self.run / "tmp").mkdir(exist_ok=True)
        self.ctl = str(self.run / "tmp" / "condure-condure.ctl")
        self.base = f"ipc://{self.run}/client"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.run / "condure.log", "ab")  # noqa: SIM115 (Popen keeps it)
        self.proc = subprocess.Popen(
            [PY, "-m", "condure", "--workers", "2", "--listen", str(self.port),
             "--zclient-stream", self.base, "--drain-timeout", "5", "--handoff-timeout", "5"],
            cwd=self.run, env={**ENV, "TMPDIR": str(self.run / "tmp")},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: (ctl_status(self.ctl) or {}).get("state") == "running", 30)

    def supervisor(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def operate(self) -> str:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        return "SIGHUP"

    def fd_store(self) -> int | None:
        return None

    def stop(self) -> dict:
        assert self.proc is not None
        workers = children(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(60)
        time.sleep(1)
        return {"strays": [p for p in workers if Path(f"/proc/{p}").exists()],
                "runtime_files": sorted(os.listdir(self.run / "tmp")),
                "ipc_files": sorted(p.name for p in self.run.glob("client*")),
                "exit": self.proc.returncode}

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Restart:
    """condure.service under a private systemd; operations are
    ``systemctl restart`` with a ``systemctl reload`` between two."""

    name = "restart"
    SERVICE = "condure.service"

    def __init__(self, a: argparse.Namespace, out: Path) -> None:
        from tests.harness.systemd_ns import SystemdNamespace, project_units
        self.port = a.port
        self.run = out / "restart"
        self.run.mkdir(parents=True, exist_ok=True)
        self.base = f"ipc://{self.run}/client"
        args = ["--workers", "2", "--listen", "fd-name=http", "--zclient-stream", self.base,
                "--drain-timeout", "5", "--handoff-timeout", "5"]
        self.ns = SystemdNamespace(self.run, project_units(self.run, a.port, args))
        self.count = 0

    def start(self) -> None:
        self.ns.start()
        self.ns.systemctl("start", "condure.socket")
        self.ns.systemctl("start", self.SERVICE)

    @property
    def ctl(self) -> str:
        return f"/proc/{self.ns.pid}/root/run/condure/condure-condure.ctl"

    def supervisor(self) -> int | None:
        try:
            return self.ns.main_pid(self.SERVICE)
        except (AssertionError, subprocess.SubprocessError, OSError, ValueError):
            return None

    def operate(self) -> str:
        self.count += 1
        op = "reload" if self.count % 2 == 0 else "restart"
        self.ns.systemctl(op, self.SERVICE, timeout=90)
        return op

    def fd_store(self) -> int | None:
        try:
            return int(self.ns.show(self.SERVICE, "NFileDescriptorStore") or 0)
        except (AssertionError, subprocess.SubprocessError, OSError, ValueError):
            return None

    def stop(self) -> dict:
        root = Path(f"/proc/{self.ns.pid}/root")
        self.ns.systemctl("stop", self.SERVICE, timeout=90)
        left = self.ns.cgroup_pids(self.SERVICE)
        journal = self.ns.journal(self.SERVICE)
        (self.run / "journal.txt").write_text(journal)
        return {"strays": left, "fd_store_after_stop": self.fd_store(),
                "runtime_files": sorted(str(f) for d in ("tmp", "run")
                                        for f in (root / d).glob("condure*")),
                "ipc_files": sorted(p.name for p in self.run.glob("client*")),
                "journal_lost": [ln for ln in journal.splitlines()
                                 if re.search(r"lost [1-9]|[1-9]\d* lost|cannot move|"
                                              r"Traceback|ERROR|WARN", ln)][:20]}

    def close(self) -> None:
        self.ns.stop()


def wait_for(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condure did not come up")
        time.sleep(0.2)


def sample(target, stats_path: Path | None, label: str, t0: float) -> dict:
    sup = target.supervisor()
    st = ctl_status(target.ctl) or {}
    held = sum(w.get("total", 0) for w in st.get("workers", []))
    by_kind: dict[str, int] = {}
    for w in st.get("workers", []):
        for k, v in w.get("connections", {}).items():
            by_kind[k] = by_kind.get(k, 0) + v
    ld = load_stats(stats_path) if stats_path else {}
    think = {k: ld.get(k, 0) for k in ("ws_open", "http_open", "poll_open", "slowloris_open")}
    return {"t": round(time.time() - t0, 1), "label": label, "tree": tree(sup),
            "held": held, "by_kind": by_kind, "moved": st.get("moved"), "lost": st.get("lost"),
            "fd_store": target.fd_store(), "think": think,
            "ws_lost": len(ld.get("ws_lost", [])), "load": {
                k: ld.get(k) for k in ("ws_opened", "ws_echoed", "ws_mismatch", "http_ok",
                                       "poll_ok", "close_ok", "ws_longest_wait")}}


def brief(s: dict) -> str:
    tr = s["tree"]
    sup, ws = tr.get("sup") or {}, tr.get("workers", [])
    return (f"| {s['label']} | {s['t']:.0f} | {sup.get('fds')} | {sup.get('rss_kb')} | "
            f"{sup.get('pss_kb')} | {sup.get('threads')} | {len(ws)} | "
            f"{'/'.join(str(w['fds']) for w in ws)} | "
            f"{'/'.join(str(w['rss_kb'] // 1024) for w in ws)} | "
            f"{'/'.join(str(w['threads']) for w in ws)} | {s['held']} | "
            f"{sum(s['think'].values())} | {s['fd_store']} | {s['ws_lost']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase", choices=("reload", "restart"), required=True)
    p.add_argument("--duration", type=float, default=900)
    p.add_argument("--every", default=None, help="MIN,MAX seconds between operations")
    p.add_argument("--sample", type=float, default=5)
    p.add_argument("--port", type=int, default=62000)
    p.add_argument("--ws", type=int, default=300)
    p.add_argument("--ws-rate", type=float, default=2)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "soak"))
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    every = [float(x) for x in (a.every or ("10,20" if a.phase == "reload" else "15,30"))
             .split(",")]
    target = Reload(a, out) if a.phase == "reload" else Restart(a, out)
    samples: list[dict] = []
    ops: list[tuple[float, str, float, int | None]] = []  # when, what, took, fd store after
    stats_path = out / f"load-{a.phase}.json"
    handler = load = None
    t0 = time.time()
    log = open(out / f"samples-{a.phase}.jsonl", "w")  # noqa: SIM115

    def take(label: str, with_load: bool = True) -> dict:
        s = sample(target, stats_path if with_load else None, label, t0)
        samples.append(s)
        log.write(json.dumps(s) + "\n")
        log.flush()
        print(brief(s), file=sys.stderr, flush=True)
        return s

    try:
        target.start()
        handler = subprocess.Popen(
            [PY, str(REPO / "examples" / "handoffhandler.py"), "--base", target.base],
            env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(out / f"handler-{a.phase}.log", "w"))  # noqa: SIM115
        time.sleep(2)
        take("idle before", with_load=False)
        load = subprocess.Popen(
            [PY, str(REPO / "bench" / "soak_load.py"), "--port", str(a.port), "--stats",
             str(stats_path), "--ws", str(a.ws), "--ws-rate", str(a.ws_rate)],
            env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=open(out / f"load-{a.phase}.log", "w"), text=True)  # noqa: SIM115
        assert load.stdout is not None and load.stdout.readline().strip() == "READY"
        start = time.monotonic()
        next_op = start + 30 + random.uniform(*every)  # 30 s of load first
        next_sample = start
        while time.monotonic() - start < a.duration:
            now = time.monotonic()
            if now >= next_op:
                began = time.time()
                op = target.operate()
                ops.append((round(began - t0, 1), op, round(time.time() - began, 2),
                            target.fd_store()))
                next_op = time.monotonic() + random.uniform(*every)
            if now >= next_sample:
                take("load")
                next_sample = now + a.sample
            time.sleep(0.2)
        take("load end")
        load.send_signal(signal.SIGTERM)
        load.wait(150)
        final = load_stats(stats_path)
        time.sleep(15)
        take("idle after", with_load=False)
        op = target.operate()
        ops.append((round(time.time() - t0, 1), op + " (idle)", 0, target.fd_store()))
        time.sleep(15)
        take("idle after op", with_load=False)
        handler.terminate()
        handler.wait(10)
        left = target.stop()
    finally:
        for pr in (load, handler):
            if pr is not None and pr.poll() is None:
                pr.kill()
                pr.wait()
        target.close()
    report(a.phase, samples, ops, final, left, t0)


def report(phase: str, samples: list[dict], ops: list, final: dict, left: dict,
           t0: float) -> None:
    loaded = [s for s in samples if s["label"] == "load"]
    picks = [samples[0]]
    if loaded:
        picks += [loaded[min(6, len(loaded) - 1)], loaded[len(loaded) // 2]]
    picks += [s for s in samples if s["label"] != "load" and s is not samples[0]]
    picks.sort(key=lambda s: s["t"])
    print(f"## soak, phase {phase}: {len(ops)} operations\n")
    print("| when | t (s) | sup fds | sup RSS kB | sup PSS kB | sup threads | workers | "
          "worker fds | worker RSS MB | worker threads | held | clients think | fd store | "
          "WS lost |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in picks:
        print(brief(s))
    peak = max((s["fd_store"] or 0) for s in samples)
    print(f"\nfd store: peak {peak} in samples; operations took "
          f"{min((o[2] for o in ops), default=0)}-{max((o[2] for o in ops), default=0)} s; "
          f"fd store right after each: {sorted({o[3] for o in ops}, key=str)}")
    print(f"\nload: {json.dumps({k: v for k, v in final.items() if not isinstance(v, list)})}")
    for key in ("ws_lost", "ws_connect_failed", "http_cut", "poll_cut", "close_failed",
                "unanswered"):
        events = final.get(key, [])
        print(f"\n{key}: {len(events)}")
        for t, what in events[:30]:
            rel = t - t0
            before = [o for o in ops if o[0] <= rel]
            after = f"{before[-1][1]} at {before[-1][0]} (+{rel - before[-1][0]:.1f} s)" \
                if before else "no operation"
            print(f"- t={rel:.1f} {what} after {after}")
    print(f"\nleft at the end: {json.dumps(left)}")


if __name__ == "__main__":
    main()
