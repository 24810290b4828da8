"""A reload that goes wrong half-way: the new worker dies, condure is
stopped, the old worker is killed (docs/handover.md, "When a reload goes
wrong").

Real condure processes, the scripted test handler (it holds its
``handoff-proceed`` until the test has arranged the fault) and raw
WebSocket clients. Faults are forced with SIGKILL and SIGSTOP of worker
pids found through /proc (``Condure.children``); the fixtures are
test_handover.py's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.harness import procs
from tests.harness import ws_client as wc
from tests.harness.ws_scenarios import accept, recv
from tests.integration.test_handover import (
    Condure,
    assert_no_complaints,
    fixture_start,  # noqa: F401 - the fixture 'start': pytest finds it here
)


def new_worker(condure: Condure, known: set[int], timeout: float = 10.0) -> int:
    """The pid of a worker that is not in ``known``, as soon as it runs the
    worker's code (stopped before that, it would hold the supervisor in
    the fork-exec of subprocess.Popen)."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in condure.children() - known:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"condure.workerproc" in f.read():
                        return pid
            except OSError:
                pass
        assert time.monotonic() < deadline, condure.proc.pump.tail()
        time.sleep(0.005)


def ctl_status(path: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "condure", "ctl", "--socket", path, "--json",
                        "status"], capture_output=True, text=True, env=procs.python_env(),
                       cwd=str(procs.REPO_ROOT), timeout=30)
    answer = json.loads(r.stdout)
    assert answer["ok"], answer
    return answer


def wait_status(path: str, pred, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = ctl_status(path)
        if pred(answer):
            return answer
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)


def retiring(answer: dict) -> dict | None:
    return next((w for w in answer["workers"] if w["role"] == "retiring"), None)


def log_has(condure: Condure, text: str):
    return lambda: text in condure.log()


class Moving:
    """One WebSocket, accepted by the scripted handler, in a reload whose
    ``handoff-start`` the handler has received and not answered yet."""

    def __init__(self, condure: Condure, tmp_path, *args: str) -> None:
        self.condure = condure
        self.h = procs.start_handler(condure.base, tmp_path, sub_prefix="condure",
                                     name="scripted")
        self.ws = wc.WsConn.open(condure.port, "/ws")
        self.req, _ = accept(self.h, self.ws)
        self.old = condure.children()
        condure.proc.popen.send_signal(signal.SIGHUP)
        start_pkt = recv(self.h, timeout=15)
        assert (start_pkt.type, start_pkt.id) == ("handoff-start", self.req.id), start_pkt
        # The old worker hands over only once its successor is ready.
        (self.successor,) = condure.children() - self.old
        self.stopped: list[int] = []

    def proceed(self) -> None:
        self.h.send(self.req, type="handoff-proceed")

    def kill_successor_hold_respawn(self) -> int:
        """SIGKILL the new worker, SIGSTOP its replacement before it is ready."""
        os.kill(self.successor, signal.SIGKILL)
        respawn = new_worker(self.condure, self.old | {self.successor})
        os.kill(respawn, signal.SIGSTOP)
        self.stopped.append(respawn)
        assert f"ready (pid {respawn})" not in self.condure.log()
        return respawn

    def closed_with(self, code: int) -> None:
        """The client gets close ``code``, the handler ``cancel``."""
        assert self.ws.read_close(timeout=10)[0] == code
        self.ws.send_close(code)
        cancel = recv(self.h, timeout=10)
        assert (cancel.type, cancel.id) == ("cancel", self.req.id), cancel

    def close(self) -> None:
        for pid in self.stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.ws.close()
        self.h.close()


HOLDING = "no worker to adopt connections yet; holding them"


def test_sessions_wait_for_the_replacement_of_a_new_worker_that_died(start, tmp_path):
    """The new worker dies while the old one hands over: its sessions wait
    for the replacement and move to it, nothing is lost."""
    condure = start("--handoff", "ask")
    m = Moving(condure, tmp_path)
    try:
        respawn = m.kill_successor_hold_respawn()
        m.proceed()
        condure.wait_log(log_has(condure, HOLDING))
        os.kill(respawn, signal.SIGCONT)
        condure.wait_log(lambda: condure.handovers() == [(1, 0, 0)])
        # the replacement has it: both ways work
        m.ws.send_text(b"after")
        data = recv(m.h, timeout=10)
        while data.type == "credit":
            data = recv(m.h, timeout=10)
        assert (data.id, data.body) == (m.req.id, b"after"), data
        m.h.body(m.req, b"answer")
        assert m.ws.read_message(timeout=5)[:2] == (wc.OP_TEXT, b"answer")
        assert "exited with signal SIGKILL" in condure.log()
    finally:
        m.close()
    assert_no_complaints(condure)


def test_sessions_nobody_adopts_in_time_are_closed_politely(start, tmp_path):
    """No replacement is ready within --drain-timeout (5 s here): the
    sessions go back to the old worker, which closes them with 1012 and
    tells the handler (cancel) instead of dropping them."""
    condure = start("--handoff", "ask")
    m = Moving(condure, tmp_path)
    try:
        m.kill_successor_hold_respawn()
        m.proceed()
        condure.wait_log(log_has(condure, HOLDING))
        m.closed_with(1012)
        condure.wait_log(lambda: condure.handovers() == [(0, 1, 0)])
        assert "no worker took 1 connections in time; closing them" in condure.log()
    finally:
        m.close()
    assert_no_complaints(condure)


def test_stop_while_sessions_wait_for_a_worker_closes_them_with_1001(start, tmp_path):
    condure = start("--handoff", "ask")
    m = Moving(condure, tmp_path)
    try:
        m.kill_successor_hold_respawn()
        m.proceed()
        condure.wait_log(log_has(condure, HOLDING))
        condure.proc.popen.send_signal(signal.SIGTERM)
        m.closed_with(1001)
        condure.wait_log(lambda: condure.handovers() == [(0, 1, 0)])
    finally:
        m.close()
    assert condure.proc.popen.wait(30) == 0
    assert_no_complaints(condure)


@pytest.mark.parametrize("proceed", [False, True], ids=["silent", "proceeds"])
def test_stop_during_a_reload_closes_the_sessions_with_1001(start, tmp_path, proceed):
    """SIGTERM while the old worker waits for ``handoff-proceed``: the
    handover ends and its sessions are closed as on any stop (1001 and
    cancel), whether or not the handler answers meanwhile."""
    condure = start("--handoff", "ask", "--handoff-timeout", "10")
    m = Moving(condure, tmp_path)
    try:
        condure.proc.popen.send_signal(signal.SIGTERM)
        if proceed:  # crosses the stop: exported, given back, closed
            m.proceed()
        m.closed_with(1001)
        assert condure.proc.popen.wait(30) == 0
        (moved, _, lost), = condure.handovers()
        assert (moved, lost) == (0, 0)
    finally:
        m.close()
    assert_no_complaints(condure)


def test_old_worker_killed_during_handover_is_reported(start, tmp_path):
    """SIGKILL of the old worker while it waits for ``handoff-proceed``:
    a warning names what it lost, and ``condure ctl status`` counts it."""
    path = str(tmp_path / "ctl.sock")
    condure = start("--handoff", "ask", "--control-socket", path)
    m = Moving(condure, tmp_path)
    try:
        answer = wait_status(path, lambda a: (retiring(a) or {}).get("total") == 1)
        os.kill(retiring(answer)["pid"], signal.SIGKILL)
        condure.wait_log(log_has(condure, "while handing over its connections; 1 lost"))
        line = next(x for x in condure.log().splitlines() if "while handing over" in x)
        assert line.startswith("[WARN]"), line
        assert wait_status(path, lambda a: retiring(a) is None)["lost"] == 1
    finally:
        m.close()


def test_sessions_lost_with_a_new_worker_are_a_warning(start, tmp_path):
    """A batch the new worker took but never confirmed is lost when it
    dies: the old worker's ``handover: ...`` line says so as a warning."""
    path = str(tmp_path / "ctl.sock")
    condure = start("--handoff", "ask", "--control-socket", path)
    m = Moving(condure, tmp_path)
    try:
        os.kill(m.successor, signal.SIGSTOP)
        m.stopped.append(m.successor)
        m.proceed()
        # exported: no longer the old worker's (its stats come after the batch)
        wait_status(path, lambda a: (retiring(a) or {}).get("total") == 0)
        os.kill(m.successor, signal.SIGKILL)
        condure.wait_log(lambda: condure.handovers() == [(0, 0, 1)])
        condure.wait_log(log_has(condure, "handed over 0 connections, closed 0, lost 1"))
        lines = [x for x in condure.log().splitlines()
                 if "handover: 0 connections moved" in x or "handed over 0" in x]
        assert len(lines) == 2 and all(x.startswith("[WARN]") for x in lines), lines
        assert wait_status(path, lambda a: retiring(a) is None)["lost"] == 1
    finally:
        m.close()
