"""Reloads asked for during a reload, and ``condure ctl reload --wait``, with
real processes: condure (supervisor and workers), a handler in its own
process (examples/handoffhandler.py, or the scripted handler where a test
holds a handover back), real WebSocket clients, and ``python -m condure
ctl`` as a subprocess (docs/operations.md, ``reload``; docs/supervisor.md).

The test's NOTIFY_SOCKET (tests/integration/test_supervisor.py's ``start``)
records condure's ``RELOADING=1`` and ``READY=1`` in the order they were
sent: a datagram sent before ``condure ctl`` got its answer is already
queued there when ``condure ctl`` exits.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest

from tests.harness import procs
from tests.harness import ws_client as wc
from tests.harness.ws_scenarios import accept, recv
from tests.integration.test_ctl import ctl, wait_for
from tests.integration.test_supervisor import (
    Notify,
    children,
    fixture_start,  # noqa: F401 - the fixture 'start': pytest finds it here
)

REPO = procs.REPO_ROOT


def ctl_run(tmp_path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """``python -m condure ctl ARGS`` (no --json added), finished."""
    return subprocess.run(ctl_command(args), capture_output=True, text=True,
                          env=ctl_env(tmp_path), cwd=str(REPO), timeout=timeout)


def ctl_command(args) -> list[str]:
    return [sys.executable, "-m", "condure", "ctl", *args]


def ctl_env(tmp_path) -> dict[str, str]:
    env = procs.python_env()
    env.pop("XDG_RUNTIME_DIR", None)
    env["RUNTIME_DIRECTORY"] = str(tmp_path)
    return env


def queued_notifications(notify) -> list[str]:
    """The datagrams condure has sent to NOTIFY_SOCKET and the test has
    not read yet: those queued now, without waiting for more."""
    got = []
    notify.sock.setblocking(False)
    try:
        while True:
            try:
                got.append(notify.sock.recv(4096).decode())
            except BlockingIOError:
                return got
    finally:
        notify.sock.setblocking(True)


def reloaded_lines(proc) -> int:
    return sum(1 for line in list(proc.pump.lines) if line.endswith("[condure] reloaded"))


def log_has(proc, text: str):
    return lambda: any(text in line for line in list(proc.pump.lines))


def current(answer) -> list[dict]:
    return [w for w in answer["workers"] if w["role"] == "current"]


@pytest.fixture
def echo_handler(tmp_path):
    """examples/handoffhandler.py (an echo handler) on ipc://tmp_path/client."""
    with open(tmp_path / "handler.log", "wb") as out:
        popen = subprocess.Popen(
            [sys.executable, str(REPO / "examples" / "handoffhandler.py"),
             "--base", f"ipc://{tmp_path}/client", "--connect"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=procs.python_env())
    yield popen
    procs.terminate(popen)


def open_echoing(port: int, count: int) -> list[wc.WsConn]:
    clients = []
    for i in range(count):
        ws = wc.WsConn.open(port, "/ws")
        assert ws.read_handshake().code == 101
        clients.append(ws)
        echo(ws, f"hello {i}")
    return clients


def echo(ws: wc.WsConn, text: str) -> None:
    ws.send_text(text)
    _, data, _ = ws.read_message(timeout=10)
    assert data == text.encode(), data


def test_ctl_reload_wait_returns_once_the_reload_is_done(start, echo_handler, tmp_path):
    """`ctl reload --wait` exits 0 only once the reload is over: by then
    condure has sent READY=1 after its RELOADING=1, every slot has a new
    worker, no old worker is still handing over, and the WebSocket
    clients held open across it have moved and still echo."""
    proc = start(workers=2)
    clients = open_echoing(proc.port, 3)
    try:
        before = max(w["generation"] for w in ctl(tmp_path, "status")[1]["workers"])
        queued_notifications(proc.notify)  # the start's: READY=1
        r = ctl_run(tmp_path, "reload", "--wait", "--json")
        # at once, what condure has told systemd and what it says now
        sent = [m.split("\n")[0] for m in queued_notifications(proc.notify)
                if not m.startswith("STATUS=")]
        _, status = ctl(tmp_path, "status")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert status["state"] == "running", status
        assert not any(w["state"] == "handing over" for w in status["workers"]), status
        assert sorted(w["generation"] for w in current(status)) == [before + 1, before + 2]
        assert (status["moved"], status["lost"]) == (3, 0), status
        assert sent == ["RELOADING=1", "READY=1"], sent
        answer = json.loads(r.stdout)
        assert (answer["ok"], answer["reload"], answer["number"]) == (True, "done", 1), answer
        wait_for(lambda: reloaded_lines(proc) == 1, "the reloaded line")
        for i, ws in enumerate(clients):
            echo(ws, f"after {i}")
    finally:
        for ws in clients:
            ws.close()
    # A plain `ctl reload` answers at once, with the reload's number.
    r = ctl_run(tmp_path, "reload", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["number"] == 2, (r.stdout, r.stderr)
    assert "Traceback" not in proc.output()


def test_a_sighup_during_a_reload_gives_one_more_reload(start, echo_handler, tmp_path):
    """A second SIGHUP that comes while the first one's reload is under
    way is not dropped: a second reload follows the first, replacing the
    workers the first one started, and the connections move twice."""
    proc = start(workers=2)
    clients = open_echoing(proc.port, 2)
    try:
        before = max(w["generation"] for w in ctl(tmp_path, "status")[1]["workers"])
        proc.popen.send_signal(signal.SIGHUP)
        wait_for(log_has(proc, "replacing 2 workers one by one"), "the first reload")
        proc.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: reloaded_lines(proc) == 2, "two reloads", timeout=30)
        # (the second SIGHUP came while the first reload was under way)
        assert log_has(proc, "SIGHUP: reload 1 under way; another follows")()
        _, status = ctl(tmp_path, "status")
        # two reloads and no third: every slot's worker is of the second one
        assert status["state"] == "running", status
        assert sorted(w["generation"] for w in current(status)) == [before + 3, before + 4]
        assert (status["moved"], status["lost"]) == (4, 0), status
        replaced = [line.split("(pid ")[1].rstrip(")").split(" -> ")
                    for line in proc.output().splitlines() if "replaced (pid" in line]
        assert len(replaced) == 4, replaced
        first_new = {new for _, new in replaced[:2]}
        assert {old for old, _ in replaced[2:]} == first_new, replaced
        for i, ws in enumerate(clients):
            echo(ws, f"after {i}")
    finally:
        for ws in clients:
            ws.close()


@pytest.fixture
def held(start, tmp_path):
    """One worker, `--handoff ask` and the scripted handler, which answers
    a handoff-start only when the test says so: a reload stays under way
    (its old worker handing over) until then. Yields (condure, handler,
    open WebSocket)."""
    proc = start("--handoff", "ask", "--handoff-timeout", "30", "--drain-timeout", "30",
                 workers=1)
    h = procs.start_handler(proc.base, tmp_path, sub_prefix="condure", name="scripted")
    try:
        ws = wc.WsConn.open(proc.port, "/ws")
        with ws:
            accept(h, ws, credits=100000)
            yield proc, h, ws
    finally:
        h.close()


def handoff_start(h):
    pkt = recv(h, timeout=15)
    while pkt.type in ("credit", "keep-alive"):
        pkt = recv(h, timeout=15)
    assert pkt.type == "handoff-start", pkt
    return pkt


def test_reloads_asked_for_during_a_reload_coalesce_into_one_that_ctl_waits_for(
        held, tmp_path):
    """While a reload is held back by its handover: a `ctl reload --wait`
    that gives up after 1 s says so (status 1) and leaves a reload due;
    another SIGHUP and another `ctl reload --wait` add nothing to it. That
    waiting `ctl` returns only when the one reload that follows the held
    one is done, and no third reload comes."""
    proc, h, ws = held
    before = current(ctl(tmp_path, "status")[1])[0]["generation"]
    proc.popen.send_signal(signal.SIGHUP)
    first = handoff_start(h)  # reload 1's old worker waits for the handler
    r = ctl_run(tmp_path, "reload", "--wait", "--timeout", "1")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "reload 2 not done within 1 s (reload 1 still under way); it goes on" \
        in r.stderr, r.stderr
    proc.popen.send_signal(signal.SIGHUP)
    wait_for(log_has(proc, "SIGHUP: a reload is already due after the one under way (1)"),
             "the third request")
    waiter = subprocess.Popen(ctl_command(["reload", "--wait", "--json"]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ctl_env(tmp_path), cwd=str(REPO))
    try:
        wait_for(log_has(proc, "condure ctl: a reload is already due"), "the waiting ctl")
        assert waiter.poll() is None
        assert ctl(tmp_path, "status")[1]["state"] == "reloading"
        h.send(first, type="handoff-proceed")
        # reload 2 moves the session again
        second = handoff_start(h)
        wait_for(lambda: reloaded_lines(proc) == 1, "reload 1 done")
        assert waiter.poll() is None  # reload 1 does not cover it
        h.send(second, type="handoff-proceed")
        out, err = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 0, (out, err)
    assert json.loads(out)["number"] == 2, out
    status = ctl(tmp_path, "status")[1]
    assert status["state"] == "running", status  # no third reload
    assert [w["generation"] for w in status["workers"] if w["role"] == "current"] == \
        [before + 2], status
    wait_for(lambda: reloaded_lines(proc) == 2, "reload 2's line")
    # the client's connection lives on in the newest worker
    ws.send_text(b"after")
    data = recv(h, timeout=10)
    while data.type == "credit":
        data = recv(h, timeout=10)
    assert data.body == b"after", data


def test_a_stop_cuts_a_waited_for_reload_short(held, tmp_path):
    proc, h, _ = held
    waiter = subprocess.Popen(ctl_command(["reload", "--wait"]), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ctl_env(tmp_path),
                              cwd=str(REPO))
    try:
        handoff_start(h)  # the reload is held
        proc.popen.send_signal(signal.SIGTERM)
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert waiter.returncode == 1, (out, err)
    assert "condure ctl: condure is stopping: the reload was cut short" in err, err
    assert proc.popen.wait(60) == 0


def test_without_a_control_socket_reload_falls_back_to_sighup(start, echo_handler, tmp_path):
    """--control-socket "": `ctl reload --wait --fallback-pid PID` (the
    unit's ExecReload=) sends SIGHUP instead, says it cannot wait, and
    exits 0; without --fallback-pid it fails."""
    proc = start("--control-socket", "", workers=1)
    r = ctl_run(tmp_path, "reload", "--wait")
    assert r.returncode == 1 and "cannot connect to" in r.stderr, (r.stdout, r.stderr)
    r = ctl_run(tmp_path, "reload", "--wait", "--fallback-pid", str(proc.pid))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert f"sent SIGHUP to pid {proc.pid} instead" in r.stderr, r.stderr
    wait_for(lambda: reloaded_lines(proc) == 1, "the reload SIGHUP asked for")
    # usage errors: a pid that would signal a group, --timeout of 0
    for args in (("--fallback-pid", "0"), ("--timeout", "0")):
        r = ctl_run(tmp_path, "reload", "--wait", *args)
        assert r.returncode == 2 and "usage:" in r.stderr, (args, r.stderr)


def test_a_reload_whose_workers_cannot_start_fails_ctl_reload_wait(tmp_path):
    """condure runs from a copy of its package; once the copy's worker
    module is made to exit at once, a reload's new workers cannot start:
    `ctl reload --wait` exits 1 with the reason and the running workers
    stay. With the module back, the next reload is done and exits 0."""
    code = tmp_path / "code"
    shutil.copytree(REPO / "condure", code / "condure",
                    ignore=shutil.ignore_patterns("__pycache__"))
    worker_module = code / "condure" / "workerproc.py"
    good = worker_module.read_text()
    notify = Notify(tmp_path / "notify")
    env = ctl_env(tmp_path)
    env.update(procs.python_env(code), NOTIFY_SOCKET=notify.path)
    env.pop("XDG_RUNTIME_DIR", None)
    cmd = [sys.executable, "-m", "condure", "--listen", f"127.0.0.1:{procs.free_port()}",
           "--zclient-stream", f"ipc://{tmp_path}/client", "--workers", "2"]
    proc = procs._spawn("condure", cmd, tmp_path / "condure.log", None, env=env, cwd=str(code))
    try:
        notify.wait(lambda m: "READY=1" in m.split("\n"), timeout=30)
        running = children(proc.pid)
        worker_module.write_text("raise SystemExit(3)\n")
        r = ctl_run(tmp_path, "reload", "--wait")
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "condure ctl: reload failed: new workers cannot start (3 failures in a row)" \
            in r.stderr, r.stderr
        assert children(proc.pid) == running
        assert ctl(tmp_path, "status")[1]["state"] == "running"
        worker_module.write_text(good)
        r = ctl_run(tmp_path, "reload", "--wait")
        assert r.returncode == 0 and "reload 2 done" in r.stdout, (r.stdout, r.stderr)
        assert not {w["pid"] for w in current(ctl(tmp_path, "status")[1])} & running
        assert "reload 1 ended without replacing every worker" in proc.output()
    finally:
        proc.stop()
        notify.sock.close()
