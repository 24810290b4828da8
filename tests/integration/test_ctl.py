"""The control socket and ``condure ctl`` with real processes: condure
(supervisor and workers), a ZeroMQ handler in a thread or its own process,
real HTTP and WebSocket clients, and ``python -m condure ctl --json`` run as
a subprocess (docs/operations.md).

Every condure here gets ``RUNTIME_DIRECTORY`` = the test's tmp_path, so its
default control socket is ``tmp_path/condure-<id>.ctl`` and ``condure ctl``
(given the same environment) finds it by ``--id``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

from tests.harness import procs
from tests.harness import ws_client as wc
from tests.harness.http_client import Conn
from tests.harness.ws_scenarios import accept, recv
from tests.integration.test_supervisor import (
    children,
    fixture_handler,  # noqa: F401 - the fixture 'handler': pytest finds it here
    fixture_start,  # noqa: F401 - the fixture 'start': pytest finds it here
    get,
)


def ctl(tmp_path, *args, check=True):
    """``python -m condure ctl ARGS --json``: (exit status, answer)."""
    env = procs.python_env()
    env.pop("XDG_RUNTIME_DIR", None)
    env["RUNTIME_DIRECTORY"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "condure", "ctl", *args, "--json"],
                       capture_output=True, text=True, env=env, cwd=str(procs.REPO_ROOT),
                       timeout=30)
    answer = json.loads(r.stdout) if r.stdout.strip() else None
    if check:
        assert r.returncode == 0 and answer and answer["ok"], (r.returncode, r.stdout, r.stderr)
    return r.returncode, answer


def wait_status(tmp_path, pred, timeout=15.0, what=""):
    """Poll ``ctl status`` until ``pred(answer)``; the answer. (Workers
    report once a second; this waits for the report that shows it.)"""
    deadline = time.monotonic() + timeout
    while True:
        _, answer = ctl(tmp_path, "status")
        if pred(answer):
            return answer
        assert time.monotonic() < deadline, (what, json.dumps(answer, indent=1))
        time.sleep(0.2)


def totals(answer, kind):
    return sum(w["connections"][kind] for w in answer["workers"] if w["role"] == "current")


def test_status_counts_connections_by_kind(start, handler, tmp_path):
    proc = start(workers=2)
    conns = [Conn(proc.port) for _ in range(3)]
    wss = []
    try:
        for conn in conns:
            assert get(conn).startswith(b"condure.")  # then idle, kept alive
        for _ in range(2):
            ws = wc.WsConn.open(proc.port, "/ws")
            assert ws.read_handshake().code == 101
            wss.append(ws)
        answer = wait_status(tmp_path, lambda a: totals(a, "http") == 3
                             and totals(a, "websocket") == 2, what="3 http, 2 websocket")
        assert answer["state"] == "running" and answer["pid"] == proc.pid
        assert answer["slots"] == 2 and answer["id"] == "condure"
        workers = answer["workers"]
        assert sorted(w["slot"] for w in workers) == [0, 1]
        assert {w["pid"] for w in workers} == children(proc.pid)
        for w in workers:
            assert (w["role"], w["state"], w["respawns"]) == ("current", "ready", 0), w
            assert w["connections"]["req"] == 0 and w["connections"]["outgoing"] == 0
            assert w["waiting"] == 0
            assert isinstance(w["lag_ms"], float) and 0 <= w["lag_ms"] < 1000, w
            assert w["queues"] == {"router": 0, "push": 0}
            assert w["limits"]["head_timeout"] == 0 and w["limits"]["per_ip_refused"] == 0, w
            assert w["total"] == sum(w["connections"].values())
        assert sum(w["requests"] for w in workers) == 5  # 3 GETs, 2 upgrades
        # the same through --socket, for a person
        path = str(tmp_path / "condure-condure.ctl")
        r = subprocess.run([sys.executable, "-m", "condure", "ctl", "--socket", path, "status"],
                           capture_output=True, text=True, env=procs.python_env(),
                           cwd=str(procs.REPO_ROOT), timeout=30)
        assert r.returncode == 0, r.stderr
        assert f"(pid {proc.pid}): running" in r.stdout and "MOVED/CLOSED/LOST" in r.stdout
    finally:
        for c in conns + wss:
            c.close()
    # closed connections leave the counts
    wait_status(tmp_path, lambda a: totals(a, "http") + totals(a, "websocket") == 0,
                what="all closed")


def test_status_shows_connections_refused_per_ip(start, handler, tmp_path):
    """--max-conns-per-ip 1: a second connection from 127.0.0.1 is closed at
    once and counted; ``ctl status`` shows the count, in its JSON
    (``limits.per_ip_refused``) and in its table (PER_IP_REFUSED)."""
    proc = start("--max-conns-per-ip", "1", workers=1)
    first = Conn(proc.port)
    try:
        assert get(first).startswith(b"condure")  # then idle, kept alive
        second = Conn(proc.port)
        try:
            assert second.sock.recv(1) == b""  # closed without an answer
        except ConnectionResetError:
            pass
        finally:
            second.close()
        answer = wait_status(tmp_path, lambda a: a["workers"][0]["limits"].get(
            "per_ip_refused") == 1, what="per_ip_refused 1")
        [w] = answer["workers"]
        assert w["connections"]["http"] == 1, w
        path = str(tmp_path / "condure-condure.ctl")
        r = subprocess.run([sys.executable, "-m", "condure", "ctl", "--socket", path, "status"],
                           capture_output=True, text=True, env=procs.python_env(),
                           cwd=str(procs.REPO_ROOT), timeout=30)
        assert r.returncode == 0, r.stderr
        head, row = r.stdout.splitlines()[-2:]
        cells = dict(zip(head.split(), row.split(), strict=True))
        assert cells["PER_IP_REFUSED"] == "1" and cells["PID"] == str(w["pid"]), r.stdout
    finally:
        first.close()


def test_status_shows_requests_waiting_for_a_handler(start, tmp_path):
    proc = start(workers=1)  # no handler at all
    with Conn(proc.port) as conn:
        conn.send(b"GET /nobody HTTP/1.1\r\nHost: example.com\r\n\r\n")
        answer = wait_status(tmp_path, lambda a: a["workers"][0]["waiting"] == 1,
                             what="one waiting")
        assert answer["workers"][0]["connections"]["http"] == 1
        _, listed = ctl(tmp_path, "connections")
        assert [c["state"] for c in listed["connections"]] == ["wait"]


def test_connections_lists_peers_kinds_and_bytes(start, handler, tmp_path):
    proc = start(workers=2)
    conns = [Conn(proc.port) for _ in range(3)]
    ws = wc.WsConn.open(proc.port, "/ws")
    try:
        request = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
        for conn in conns:
            conn.send(request)
            assert conn.read_response().code == 200
        assert ws.read_handshake().code == 101
        ports = {c.sock.getsockname()[1]: "http" for c in conns}
        ports[ws.sock.getsockname()[1]] = "websocket"
        _, answer = ctl(tmp_path, "connections")
        assert answer["total"] == 4 and answer["unanswered"] == []
        listed = {int(c["peer"].rsplit(":", 1)[1]): c for c in answer["connections"]}
        assert {p: c["kind"] for p, c in listed.items()} == ports
        pids = children(proc.pid)
        for port, c in listed.items():
            assert c["peer"] == f"127.0.0.1:{port}"
            assert c["pid"] in pids and c["worker"] in (0, 1)
            assert c["age"] >= 0 and c["tls"] is False
            assert c["id"].startswith(f"{c['worker']}-{c['slot']}-")
            if c["kind"] == "http":
                # what the kernel counted: the request in, the response out
                assert c["bytes_in"] == len(request), c
                assert c["bytes_out"] > 60, c
                assert c["state"] == "head", c  # idle between requests
            else:
                assert c["state"] == "open", c
        _, only_ws = ctl(tmp_path, "connections", "--kind", "websocket")
        assert [c["kind"] for c in only_ws["connections"]] == ["websocket"]
        assert only_ws["total"] == 1
        _, one = ctl(tmp_path, "connections", "--limit", "1")
        assert len(one["connections"]) == 1 and one["total"] == 4
        slot = listed[ws.sock.getsockname()[1]]["worker"]
        _, of_one = ctl(tmp_path, "connections", "--worker", str(slot))
        assert {c["worker"] for c in of_one["connections"]} == {slot}
        code, bad = ctl(tmp_path, "connections", "--limit", "-1", check=False)
        assert code == 1 and not bad["ok"] and "limit" in bad["error"]
    finally:
        for c in [*conns, ws]:
            c.close()


def test_connections_lists_outgoing_exchanges(tmp_path):
    """The client role's exchanges are listed too: kind ``outgoing``, the
    exchange id, the origin's address once connected, the phase."""
    from tests.harness.origin_threads import Held
    from tests.integration.test_client_mode_more import ScriptedOrigin, started
    from tests.integration.test_client_mode_origins import client_process

    held = Held()
    held.want = 2  # the first request waits at the origin until a second comes
    with client_process(tmp_path, env={"RUNTIME_DIRECTORY": str(tmp_path)}) as client, \
            ScriptedOrigin(held.respond) as origin:
        started(client.handler, b"listed-1", f"http://127.0.0.1:{origin.port}/")
        deadline = time.monotonic() + 15
        while True:
            _, answer = ctl(tmp_path, "connections", "--kind", "outgoing")
            found = [c for c in answer["connections"] if c["peer"] != "-"]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert answer["total"] == 1, answer
        (entry,) = found
        assert (entry["kind"], entry["id"], entry["state"]) == ("outgoing", "listed-1", "exchange")
        assert entry["peer"] == f"127.0.0.1:{origin.port}" and entry["tls"] is False
        assert entry["bytes_out"] > 0  # the request went out
        _, http_only = ctl(tmp_path, "connections", "--kind", "http")
        assert http_only["total"] == 0
        started(client.handler, b"listed-2", f"http://127.0.0.1:{origin.port}/")  # frees both


def test_stacks_of_every_process_and_a_stopped_worker(start, handler, tmp_path):
    proc = start(workers=2)
    _, answer = ctl(tmp_path, "stacks")
    assert answer["supervisor"]["pid"] == proc.pid
    assert "supervisor" in answer["supervisor"]["stacks"]
    assert sorted(w["slot"] for w in answer["workers"]) == [0, 1]
    for w in answer["workers"]:
        assert "workerproc" in w["stacks"] and "MainThread" in w["stacks"], w
    stuck = answer["workers"][0]["pid"]
    os.kill(stuck, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        _, answer = ctl(tmp_path, "stacks")
        took = time.monotonic() - t0
        by_pid = {w["pid"]: w for w in answer["workers"]}
        assert "stacks" not in by_pid[stuck] and "no answer within 2 s" in by_pid[stuck]["error"]
        other = next(w for pid, w in by_pid.items() if pid != stuck)
        assert "workerproc" in other["stacks"]
        assert 1.5 < took < 10, took
    finally:
        os.kill(stuck, signal.SIGCONT)
    # it answers again once it runs
    _, answer = ctl(tmp_path, "stacks")
    assert all("workerproc" in w["stacks"] for w in answer["workers"])


def trace_lines(proc) -> list[str]:
    return [line for line in list(proc.pump.lines) if line.startswith("[TRACE]")]


def wait_for(pred, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_log_level_at_runtime_and_reload_keeping_connections(start, handler, tmp_path):
    proc = start(workers=2)
    conns = [Conn(proc.port) for _ in range(4)]
    try:
        for conn in conns:
            get(conn)
        assert trace_lines(proc) == []
        _, answer = ctl(tmp_path, "log-level", "5")
        assert answer == {"ok": True, "log_level": 5, "workers": 2}
        get(conns[0])
        wait_for(lambda: any("OUT (first)" in line for line in trace_lines(proc)),
                 "a trace line of the request packet")
        old = {w["pid"] for w in ctl(tmp_path, "status")[1]["workers"]}
        assert old == children(proc.pid)
        _, answer = ctl(tmp_path, "reload")
        assert answer == {"ok": True, "reload": "started", "number": 1}
        # done: every worker new, none left handing over, the supervisor running
        answer = wait_status(
            tmp_path, lambda a: a["state"] == "running" and len(a["workers"]) == 2
            and not ({w["pid"] for w in a["workers"]} & old)
            and all(w["state"] == "ready" for w in a["workers"]), timeout=30,
            what="reloaded")
        assert answer["moved"] == 4 and answer["lost"] == 0, answer
        assert answer["log_level"] == 5
        wait_for(lambda: not (children(proc.pid) & old), "the old workers gone")
        # the connections moved: each is served by a new worker, which
        # still traces at level 5
        before = len(trace_lines(proc))
        for conn in conns:
            assert get(conn).startswith(b"condure.")
        wait_for(lambda: len(trace_lines(proc)) > before, "trace lines from the new workers")
        _, answer = ctl(tmp_path, "log-level", "2")
        assert answer["log_level"] == 2
        before = len(trace_lines(proc))
        get(conns[1])
        assert get(conns[2]).startswith(b"condure.")
        time.sleep(0.3)  # a trace line would have been written by now
        assert len(trace_lines(proc)) == before
    finally:
        for c in conns:
            c.close()
    assert "Traceback" not in proc.output()


def test_status_during_a_reload_shows_the_worker_handing_over(start, tmp_path):
    """A handler that holds a WebSocket's handoff keeps the old worker
    handing over; ctl status shows it, then the move once it proceeds."""
    proc = start("--handoff", "ask", "--handoff-timeout", "20", "--drain-timeout", "30",
                 workers=1)
    h = procs.start_handler(proc.base, tmp_path, sub_prefix="condure", name="scripted")
    try:
        ws = wc.WsConn.open(proc.port, "/ws")
        with ws:
            req, _ = accept(h, ws, credits=100000)
            old = children(proc.pid)
            ctl(tmp_path, "reload")
            start_pkt = recv(h, timeout=15)
            assert (start_pkt.type, start_pkt.id) == ("handoff-start", req.id), start_pkt
            # (workers report once a second: wait for the report that has it)
            answer = wait_status(tmp_path, lambda a: any(
                w["state"] == "handing over" and w["connections"]["websocket"] == 1
                for w in a["workers"]), what="handing over")
            by_role = {w["role"]: w for w in answer["workers"]}
            assert by_role["retiring"]["pid"] in old
            assert by_role["retiring"]["state"] == "handing over"
            assert by_role["current"]["state"] == "ready"
            assert by_role["current"]["pid"] not in old
            assert answer["moved"] == 0
            # still handing over while the handler holds the handoff
            _, again = ctl(tmp_path, "status")
            assert any(w["state"] == "handing over" for w in again["workers"]), again
            h.send(req, type="handoff-proceed")
            answer = wait_status(tmp_path, lambda a: a["moved"] == 1 and all(
                w["role"] == "current" for w in a["workers"])
                and a["workers"][0]["connections"]["websocket"] == 1, what="moved")
            assert answer["workers"][0]["pid"] not in old
            assert answer["workers"][0]["handover"] is None  # the new one handed nothing
            assert answer["state"] == "running"
            # the client's connection lives on in the new worker
            ws.send_text(b"after")
            data = recv(h, timeout=10)
            while data.type == "credit":
                data = recv(h, timeout=10)
            assert (data.id, data.body) == (req.id, b"after"), data
    finally:
        h.close()


def test_socket_mode_owner_check_and_a_second_condure(start, handler, tmp_path):
    first = start(workers=1)
    path = tmp_path / "condure-condure.ctl"
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    # A second condure on the default path leaves it to the first one.
    second = start(workers=1, base=f"ipc://{tmp_path}/other")
    wait_for(lambda: "no control socket" in second.output(), "the second one's warning")
    assert ctl(tmp_path, "status")[1]["pid"] == first.pid
    assert second.stop() == 0
    assert ctl(tmp_path, "status")[1]["pid"] == first.pid
    # Given explicitly, a path in use stops a second condure with status 1.
    third = start("--control-socket", str(path), workers=1, base=f"ipc://{tmp_path}/third",
                  wait=False)
    third.popen.wait(30)
    assert third.stop() == 1
    assert "cannot use control socket" in third.output() and "another process" in \
        third.output()
    assert ctl(tmp_path, "status")[1]["pid"] == first.pid
    # Another uid that could reach the socket (its mode loosened here, and a
    # link to it where uid 65534 may look) is refused after SO_PEERCRED, and
    # logged.
    os.chmod(path, 0o666)
    reachable = tempfile.mkdtemp(prefix="condure-ctl-test-")
    try:
        os.chmod(reachable, 0o755)
        link = os.path.join(reachable, "ctl")
        os.link(path, link)
        probe = ("import socket, sys\n"
                 "s = socket.socket(socket.AF_UNIX)\n"
                 "s.connect(sys.argv[1])\n"
                 "try:\n"
                 "    s.sendall(b'{\"command\": \"status\"}\\n')\n"
                 "except OSError:\n"
                 "    pass  # refused already (condure ctl reads the reason anyway)\n"
                 "try:\n"
                 "    print('answer', repr(s.recv(200)))\n"
                 "except OSError as e:\n"
                 "    print('closed', e.errno)\n")
        r = subprocess.run(["/usr/bin/python3", "-c", probe, link], user=65534, group=65534,
                           capture_output=True, text=True, timeout=30, cwd="/")
    finally:
        shutil.rmtree(reachable)
    # connected (the link and mode let it), then told why and closed
    assert r.stdout.startswith("answer b'{\"ok\": false, \"error\": \"refused: uid 65534 "), \
        (r.stdout, r.stderr)
    wait_for(lambda: "refused a client" in first.output(), "the refusal logged")
    assert "uid 65534" in first.output()
    assert first.stop() == 0
    assert not path.exists()  # removed at exit


def test_explicit_path_and_none(start, handler, tmp_path):
    path = tmp_path / "here.ctl"
    proc = start("--control-socket", str(path), workers=1)
    assert path.exists() and not (tmp_path / "condure-condure.ctl").exists()
    code, _ = ctl(tmp_path, "status", check=False)  # by --id: not there
    assert code == 1
    assert ctl(tmp_path, "--socket", str(path), "status")[1]["pid"] == proc.pid
    assert proc.stop() == 0 and not path.exists()
    off = start("--control-socket", "", workers=1)
    assert not list(tmp_path.glob("*.ctl"))
    assert off.stop() == 0


def run_ctl(*args, **kwargs):
    """``python -m condure ctl ARGS`` for a person (no --json)."""
    return subprocess.run([sys.executable, "-m", "condure", "ctl", *args], env=procs.python_env(),
                          cwd=str(procs.REPO_ROOT), timeout=30, **kwargs)


def test_wrong_use_a_reader_gone_and_a_refused_client(start, handler, tmp_path):
    """What a person typing ``condure ctl`` can get wrong is told plainly:
    a slot that does not exist (refused, exit 1), a negative slot or a
    timeout of 0 or less (usage errors, exit 2); output into a pipe whose
    reader has gone (``| head``) ends quietly with 141, as SIGPIPE would;
    a client beyond the 16 served at once is told so, not just reset."""
    start(workers=2)
    path = str(tmp_path / "condure-condure.ctl")
    r = run_ctl("--socket", path, "connections", "--worker", "2", capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout)
    assert r.stderr == "condure ctl: worker: no slot 2 (slots 0..1: --workers 2)\n", r.stderr
    code, answer = ctl(tmp_path, "connections", "--worker", "1")
    assert code == 0 and {c["worker"] for c in answer["connections"]} <= {1}
    for args in (["connections", "--worker", "-1"], ["--timeout", "0", "status"],
                 ["--timeout", "-1", "status"]):
        r = run_ctl("--socket", path, *args, capture_output=True, text=True)
        assert r.returncode == 2 and r.stdout == "", (args, r.returncode, r.stdout)
        assert r.stderr.startswith("usage: condure ctl") and " error: argument " in r.stderr, \
            (args, r.stderr)
    # a reader that is gone before the answer comes
    for command in ("stacks", "status"):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            r = run_ctl("--socket", path, command, stdout=write_end, stderr=subprocess.PIPE)
        finally:
            os.close(write_end)
        assert (r.returncode, r.stderr) == (128 + signal.SIGPIPE, b""), (command, r)
    # 16 clients connected (and silent): the 17th is told why it is refused
    import socket
    held = []
    try:
        for _ in range(16):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            held.append(s)
        time.sleep(0.5)  # all accepted
        r = run_ctl("--socket", path, "status", capture_output=True, text=True)
        assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout)
        assert r.stderr == ("condure ctl: refused: 16 clients are using the control socket "
                            "already; try again once one is done\n"), r.stderr
    finally:
        for s in held:
            s.close()
    wait_for(lambda: run_ctl("--socket", path, "status", capture_output=True).returncode == 0,
             "served again once the 16 are gone")
