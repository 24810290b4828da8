"""Live connections across a reload (SIGHUP) without systemd: the
supervisor replaces each worker and the old one hands its sessions to the
new one (docs/handover.md).

condure runs as ``python -m condure`` with a NOTIFY_SOCKET bound by the
test, so the end of a reload is seen as ``RELOADING=1`` followed by
``READY=1``; the old workers' ``handover: N connections moved, M closed,
L lost`` lines tell what became of their connections. The handler is
examples/handoffhandler.py (an echo handler honouring the handoff) or,
where the handler must misbehave, the scripted test handler.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import procs
from tests.harness import ws_client as wc
from tests.harness.http_client import Conn
from tests.harness.loadproc import LoadProcess
from tests.harness.ws_scenarios import accept, recv

REPO = procs.REPO_ROOT
HANDOFF_HANDLER = REPO / "examples" / "handoffhandler.py"
MOVED = re.compile(r"handover: (\d+) connections moved, (\d+) closed, (\d+) lost")
DEFLATE_BOTH = "permessage-deflate; client_no_context_takeover; server_no_context_takeover"


class Notify:
    """The NOTIFY_SOCKET condure reports to: keeps every datagram, and
    waits for one that comes after a given position."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = str(path)
        self.messages: list[str] = []

    def wait(self, pred, after: int = 0, timeout: float = 20.0) -> int:
        """Index of the first message from ``after`` on that satisfies ``pred``."""
        deadline = time.monotonic() + timeout
        i = after
        while True:
            while i < len(self.messages):
                if pred(self.messages[i]):
                    return i
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such notification; got {self.messages[after:]}")
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                pass


def has(line: str):
    return lambda msg: line in msg.split("\n")


class Condure:
    """Our condure, its notifications and its log."""

    def __init__(self, proc: procs.Proc, notify: Notify, ports: list[int], base: str,
                 workers: int) -> None:
        self.proc, self.notify, self.ports, self.base = proc, notify, ports, base
        self.port = ports[0]
        self.workers = workers

    def children(self) -> set[int]:
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return {int(x) for x in f.read().split()}
        except OSError:
            return set()

    def handovers(self) -> list[tuple[int, int, int]]:
        """(moved, closed, lost) of every finished handover so far."""
        return [tuple(int(n) for n in m.groups())
                for m in map(MOVED.search, list(self.proc.pump.lines)) if m]

    def wait_log(self, pred, timeout: float = 20.0) -> None:
        """Wait until the log satisfies ``pred`` (log lines are the only
        sign of a finished handover)."""
        deadline = time.monotonic() + timeout
        while not pred():
            assert self.proc.alive(), self.proc.pump.tail()
            assert time.monotonic() < deadline, self.proc.pump.tail()
            time.sleep(0.02)

    def reload(self) -> list[tuple[int, int, int]]:
        """SIGHUP, wait for RELOADING=1 then READY=1, then for every old
        worker's handover line and its exit; returns those handover lines."""
        before = self.children()
        done = len(self.handovers())
        start = len(self.notify.messages)
        self.proc.popen.send_signal(signal.SIGHUP)
        at = self.notify.wait(lambda m: m.startswith("RELOADING=1"), after=start)
        self.notify.wait(has("READY=1"), after=at + 1, timeout=30)
        self.wait_log(lambda: len(self.handovers()) >= done + self.workers)
        self.wait_log(lambda: not (self.children() & before))
        assert len(self.children()) == self.workers
        return self.handovers()[done:]

    def log(self) -> str:
        return self.proc.output()


@pytest.fixture(name="start")
def fixture_start(tmp_path):
    """``start(*args, workers=1, listen=[...], base=None)`` -> Condure,
    ready. In ``listen``, ``{port}`` is replaced by a free port (one per
    entry); ``base`` is the --zclient-stream base (default: an ipc base in
    tmp_path)."""
    started: list[Condure] = []

    def go(*args, workers: int = 1, listen=("127.0.0.1:{port}",), base: str | None = None
           ) -> Condure:
        ports = [procs.free_port() for _ in listen]
        base = base or f"ipc://{tmp_path}/client"
        notify = Notify(tmp_path / f"notify{len(started)}")
        env = procs.python_env()
        env["NOTIFY_SOCKET"] = notify.path
        cmd = [sys.executable, "-m", "condure", "--zclient-stream", base,
               "--workers", str(workers), "--drain-timeout", "5"]
        if "--log-level" not in args:
            cmd += ["--log-level", "3"]
        for spec, port in zip(listen, ports, strict=True):
            cmd += ["--listen", spec.format(port=port)]
        proc = procs._spawn("condure", cmd + list(args),
                            tmp_path / f"condure{len(started)}.log", None,
                            env=env, cwd=str(REPO))
        condure = Condure(proc, notify, ports, base, workers)
        started.append(condure)
        try:
            notify.wait(has("READY=1"), timeout=30)
        except AssertionError:
            raise AssertionError(f"condure not ready:\n{proc.pump.tail()}") from None
        return condure

    yield go
    for condure in started:
        condure.notify.sock.close()
        pids = condure.children()
        condure.proc.stop()
        for pid in pids:  # workers of a condure that had to be killed
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(name="handoff_handler")
def fixture_handoff_handler(tmp_path):
    """``handoff_handler(base, bind=False)``: examples/handoffhandler.py,
    returned once it has printed its ready line. What it complains about
    (a seq out of order, for one) is in ``proc.stderr_path``."""
    started: list[subprocess.Popen] = []

    def go(base: str, bind: bool = False) -> subprocess.Popen:
        cmd = [sys.executable, str(HANDOFF_HANDLER), "--base", base]
        if bind:
            cmd.append("--bind")
        stderr_path = tmp_path / f"handoffhandler{len(started)}.stderr"
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=err, env=procs.python_env(), cwd=str(REPO))
        proc.stderr_path = stderr_path
        started.append(proc)
        readable, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline().decode() if readable else ""
        assert "ready" in line, (line, proc.poll())
        return proc

    yield go
    for proc in started:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture
def load(tmp_path):
    """``load(port, clients, http_loops)``: tests/harness/wsload.py,
    returned once it printed READY; ``.finish()`` gives its result."""
    started: list[LoadProcess] = []

    def go(port: int, clients: int, http_loops: int = 0) -> LoadProcess:
        ld = LoadProcess(tmp_path / f"load{len(started)}.json", port, clients, http_loops)
        started.append(ld)
        ld.ready()
        return ld

    yield go
    for ld in started:
        ld.kill()


def assert_no_complaints(condure: Condure, handler: subprocess.Popen | None = None) -> None:
    log = condure.log()
    assert "Traceback" not in log and "[ERR]" not in log, log[-3000:]
    if handler is not None:
        complaints = handler.stderr_path.read_text()
        assert complaints == "", complaints


def assert_clean_run(result: dict, clients: int, condure: Condure) -> None:
    """wsload's figures say nothing went amiss; if something did, the
    message has the figures and condure's lines about closed connections."""
    closing = [line for line in condure.log().splitlines() if "closing:" in line]
    why = json.dumps(result, sort_keys=True) + "\n" + "\n".join(closing[:20])
    assert result["connected"] == clients, why
    assert result["disconnects"] == 0, why
    assert result["sent"] > clients * 5 and result["echoed"] == result["sent"], why
    assert (result["lost"], result["duplicated"], result["reordered"]) == (0, 0, 0), why
    assert result["unexpected"] == 0, why
    assert result["http_ok"] > 0 and result["http_failed"] == 0, why
    assert result["close_codes"] == {}, why


# -- many clients, several reloads -------------------------------------------

def test_reloads_under_load_lose_nothing(start, handoff_handler, load):
    condure = start(workers=2)
    handler = handoff_handler(condure.base)
    clients, loops = 60, 2
    ld = load(condure.port, clients, http_loops=loops)
    reloads = [condure.reload() for _ in range(3)]
    result = ld.finish()
    assert_clean_run(result, clients, condure)
    for lines in reloads:
        # every connection moved: the WebSockets and the HTTP loops' ones
        assert sum(m for m, _, _ in lines) == clients + loops, reloads
        assert all((closed, lost) == (0, 0) for _, closed, lost in lines), reloads
    assert_no_complaints(condure, handler)


def test_reload_with_zclient_connect(start, handoff_handler, load, tmp_path):
    base = f"ipc://{tmp_path}/handler"
    handler = handoff_handler(base, bind=True)
    condure = start("--zclient-connect", workers=2, base=base)
    clients, loops = 60, 2
    ld = load(condure.port, clients, http_loops=loops)
    lines = condure.reload()
    result = ld.finish()
    assert_clean_run(result, clients, condure)
    assert sum(m for m, _, _ in lines) == clients + loops, lines
    assert all((closed, lost) == (0, 0) for _, closed, lost in lines), lines
    assert_no_complaints(condure, handler)


# -- handlers that do not answer handoff-start ---------------------------------

def _through_the_move(condure: Condure, h, req, ws: wc.WsConn) -> int:
    """The handler sends numbered messages in bursts of 20 (within its
    credits), the next burst as soon as the client has the last one, until
    the handover is over and a few bursts after: some are nearly always on
    their way while the session moves (the new worker keeps them until the
    session arrives). Each must reach the client once and in order. How
    many were sent."""
    sent = after = 0
    deadline = time.monotonic() + 20
    while after < 5:
        assert time.monotonic() < deadline, condure.proc.pump.tail()
        for i in range(sent, sent + 20):
            h.body(req, b"m %d" % i)
        for i in range(sent, sent + 20):
            op, payload, _ = ws.read_message(timeout=5)
            assert (op, payload) == (wc.OP_TEXT, b"m %d" % i)
        sent += 20
        if condure.handovers():
            after += 1
    return sent


def _works_from_the_new_worker(h, req, ws: wc.WsConn) -> None:
    """The adopting worker resumed the session (with a keep-alive, which the
    test handler counts rather than returns) and serves it both ways."""
    ws.send_text(b"after")
    data = recv(h, timeout=10)
    while data.type == "credit":  # owed for what the client was sent
        data = recv(h, timeout=10)
    assert (data.id, data.body) == (req.id, b"after"), data
    assert data.skipped >= 1  # the resume
    h.body(req, b"answer")
    assert ws.read_message(timeout=5)[:2] == (wc.OP_TEXT, b"answer")


@pytest.mark.parametrize("sends", ["keep-alives", "data"])
def test_handler_silent_on_handoff_start_has_its_session_moved_anyway(start, tmp_path, sends):
    """A handler that ignores ``handoff-start`` (Pushpin 1.36 does not
    implement it): the session moves without the answer (it used to be
    closed with 1012). Keep-alives (what Pushpin sends for a held session)
    do not count as progress: the move comes after --handoff-timeout (1 s),
    not --drain-timeout (5 s). Data does, since condure cannot tell it from
    a handler that is behind: the move comes at --drain-timeout. What the
    handler sends meanwhile and during the move (kept by the new worker,
    which shares the address, until the session arrives) reaches the client
    once each, in order."""
    condure = start("--handoff", "ask", "--handoff-timeout", "1")
    h = procs.start_handler(condure.base, tmp_path, sub_prefix="condure", name="scripted")
    try:
        ws = wc.WsConn.open(condure.port, "/ws")
        with ws:
            req, _ = accept(h, ws)
            t0 = time.monotonic()
            condure.proc.popen.send_signal(signal.SIGHUP)
            start_pkt = recv(h, timeout=15)
            assert (start_pkt.type, start_pkt.id) == ("handoff-start", req.id), start_pkt
            if sends == "keep-alives":
                while not condure.handovers():
                    assert time.monotonic() - t0 < 10, condure.proc.pump.tail()
                    h.send(req, type="keep-alive")
                    time.sleep(0.1)
                elapsed = time.monotonic() - t0
                assert 1.0 <= elapsed < 3.0, elapsed  # --handoff-timeout, not --drain-timeout
            sent = _through_the_move(condure, h, req, ws)
            if sends == "data":
                elapsed = time.monotonic() - t0
                assert 5.0 <= elapsed < 9.0, elapsed  # --drain-timeout
            assert condure.handovers() == [(1, 0, 0)] and sent >= 100, sent
            _works_from_the_new_worker(h, req, ws)
        log = condure.log()
        assert "handover: 1 WebSockets moved without their handler's handoff-proceed " \
               "(it did not answer in time)" in log, log[-3000:]
        assert "cannot move" not in log
    finally:
        h.close()
    assert_no_complaints(condure)


@pytest.mark.parametrize("mode", ["skip", "auto"])
def test_handoff_skip_moves_at_once_without_asking(start, tmp_path, mode):
    """``--handoff skip``, and a reload with ``auto`` (the default): no
    ``handoff-start``; the session moves at once (well within
    --handoff-timeout) while the handler keeps sending, and nothing the
    handler sends is lost, duplicated or reordered."""
    condure = start(*(["--handoff", mode] if mode != "auto" else []))
    h = procs.start_handler(condure.base, tmp_path, sub_prefix="condure", name="scripted")
    try:
        ws = wc.WsConn.open(condure.port, "/ws")
        with ws:
            req, _ = accept(h, ws)
            t0 = time.monotonic()
            condure.proc.popen.send_signal(signal.SIGHUP)
            _through_the_move(condure, h, req, ws)
            assert condure.handovers() == [(1, 0, 0)]
            _works_from_the_new_worker(h, req, ws)
            assert time.monotonic() - t0 < 4.0
        log = condure.log()
        assert "moved without their handler's handoff-proceed (not asked)" in log
        assert "handoff-start" not in [p.type for p in h.received]
    finally:
        h.close()
    assert_no_complaints(condure)


def test_a_handler_that_answers_is_waited_for_while_it_sends(start, tmp_path):
    """The handoff timeout counts the handler's silence once it has shown it
    takes part (it answered another session's ``handoff-start``): a session
    whose answer comes late, while the handler keeps sending (it is working
    through a backlog), is waited for and moves with the answer."""
    condure = start("--handoff", "ask", "--handoff-timeout", "1")
    h = procs.start_handler(condure.base, tmp_path, sub_prefix="condure", name="scripted")
    try:
        quick = wc.WsConn.open(condure.port, "/ws/quick")
        late = wc.WsConn.open(condure.port, "/ws/late")
        with quick, late:
            req_quick, _ = accept(h, quick)
            req, _ = accept(h, late, credits=100000)
            condure.proc.popen.send_signal(signal.SIGHUP)
            starts = {recv(h, timeout=15).id, recv(h, timeout=15).id}
            assert starts == {req_quick.id, req.id}
            h.send(req_quick, type="handoff-proceed")
            t0 = time.monotonic()
            sent = 0
            while time.monotonic() - t0 < 2.5:  # 2.5 times the handoff timeout
                h.body(req, b"late %d" % sent)
                op, payload, _ = late.read_message(timeout=5)
                assert (op, payload) == (wc.OP_TEXT, b"late %d" % sent)
                sent += 1
                time.sleep(0.2)
            assert condure.handovers() == []  # still waiting for the answer
            h.send(req, type="handoff-proceed")
            condure.wait_log(lambda: condure.handovers() == [(2, 0, 0)])
            late.send_text(b"after")
            data = recv(h, timeout=10)
            while data.type == "credit" or data.id != req.id:
                data = recv(h, timeout=10)
            assert data.body == b"after", data
        log = condure.log()
        assert "cannot move" not in log and "without their handler" not in log, log[-3000:]
    finally:
        h.close()
    assert_no_complaints(condure)


def tls_identity(directory: Path) -> object:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("www.example.com")
    cert.private_key_pem.write_to_path(str(directory / "www.example.com.key"))
    (directory / "www.example.com.crt").write_bytes(
        b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return ca


def echo(ws: wc.WsConn, text: bytes) -> None:
    ws.send_text(text)
    op, payload, _ = ws.read_message(timeout=5)
    assert (op, payload) == (wc.OP_TEXT, text)


def test_tls_websocket_closed_plain_one_moved(start, handoff_handler, tmp_path):
    identities = tmp_path / "identities"
    identities.mkdir()
    ca = tls_identity(identities)
    condure = start("--tls-identities-dir", str(identities),
                    listen=("127.0.0.1:{port}", "127.0.0.1:{port},tls"))
    handler = handoff_handler(condure.base)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with wc.WsConn(condure.ports[1]) as secure, wc.WsConn.open(condure.port) as plain:
        secure.sock = ctx.wrap_socket(secure.sock, server_hostname="www.example.com")
        secure.send(wc.upgrade_request("/ws"))
        assert secure.read_handshake().code == 101
        assert plain.read_handshake().code == 101
        one_closed_one_moved(condure, secure, plain, echo)
    assert "cannot move (TLS); closing it" in condure.log()
    assert_no_complaints(condure, handler)


def one_closed_one_moved(condure, closing, moving, exchange) -> None:
    """Both echo; on a reload ``closing`` (cannot move) gets close 1012 and
    ``moving`` moves and goes on echoing."""
    exchange(closing, b"before")
    exchange(moving, b"before")
    assert condure.reload() == [(1, 1, 0)]
    assert closing.read_close(timeout=10)[0] == 1012
    for i in range(5):
        exchange(moving, b"after %d" % i)


def test_idle_keep_alive_with_half_a_request_moves(start, handoff_handler):
    condure = start(workers=2)
    handler = handoff_handler(condure.base)
    with Conn(condure.port) as conn:
        conn.send(b"GET /first HTTP/1.1\r\nHost: example.com\r\n\r\n")
        resp = conn.read_response()
        assert (resp.code, resp.body) == (200, b"ok /first\n")
        conn.send(b"GET /second HTTP/1.1\r\nHo")
        lines = condure.reload()  # returns once the old workers are gone
        assert sorted(lines) == [(0, 0, 0), (1, 0, 0)], lines
        conn.send(b"st: example.com\r\n\r\n")
        resp = conn.read_response()
        assert (resp.code, resp.body) == (200, b"ok /second\n")
        conn.send(b"GET /third HTTP/1.1\r\nHost: example.com\r\n\r\n")
        resp = conn.read_response()
        assert (resp.code, resp.body) == (200, b"ok /third\n")
        assert conn.end is None
    assert_no_complaints(condure, handler)


def test_half_a_request_keeps_its_head_timeout_across_a_reload(start, handoff_handler):
    """--head-timeout counts from the head's first byte, not from the
    adoption: a slow client does not get a fresh clock at each reload."""
    condure = start("--head-timeout", "4", workers=1)
    handler = handoff_handler(condure.base)
    with Conn(condure.port) as conn:
        began = time.monotonic()
        conn.send(b"GET /slow HTTP/1.1\r\nHo")
        time.sleep(2.0)  # half the head timeout passes before the move
        assert condure.reload() == [(1, 0, 0)]
        resp = conn.read_response(timeout=10)
        elapsed = time.monotonic() - began
    assert resp.code == 408, resp
    # 4 s from the first byte (a fresh clock would make it 6 s and more)
    assert 3.5 <= elapsed < 5.5, elapsed
    assert_no_complaints(condure, handler)


def deflate_echo(ws: wc.WsConn, text: bytes) -> None:
    """A compressed message each way, each with a fresh context."""
    ws.send_frame(wc.OP_TEXT, wc.deflate(text), rsv1=True)
    frame = ws.read_frame(timeout=5)
    assert frame.opcode == wc.OP_TEXT and frame.rsv1 and frame.fin, frame
    assert wc.inflate(frame.payload) == text


def test_deflate_moves_only_without_context_takeover(start, handoff_handler):
    condure = start("--compression", "--compression-context", "keep")
    handler = handoff_handler(condure.base)
    with wc.WsConn.open(condure.port, extensions=["permessage-deflate"]) as keeping, \
            wc.WsConn.open(condure.port, extensions=[DEFLATE_BOTH]) as fresh:
        resp = keeping.read_handshake()
        assert resp.code == 101
        assert resp.header("Sec-WebSocket-Extensions") == b"permessage-deflate", resp.raw
        resp = fresh.read_handshake()
        assert resp.code == 101
        assert resp.header("Sec-WebSocket-Extensions") == DEFLATE_BOTH.encode(), resp.raw
        one_closed_one_moved(condure, keeping, fresh, deflate_echo)
    # one line for the session that could not move, with the reason
    lines = [line for line in condure.log().splitlines() if "cannot move" in line]
    assert len(lines) == 1 and lines[0].endswith(
        ": cannot move (permessage-deflate with the client's context takeover); closing it"), lines
    assert_no_complaints(condure, handler)


def test_deflate_with_server_max_window_bits_moves(start, handoff_handler):
    """The answer echoes server_max_window_bits=15 (RFC 7692 7.1.2.1); the
    record carries that value, so the session still moves when it has no
    context takeover."""
    condure = start("--compression", "--compression-context", "keep")
    handler = handoff_handler(condure.base)
    bits = "; server_max_window_bits=15"
    with wc.WsConn.open(condure.port, extensions=["permessage-deflate" + bits]) as keeping, \
            wc.WsConn.open(condure.port, extensions=[DEFLATE_BOTH + bits]) as fresh:
        resp = keeping.read_handshake()
        assert resp.code == 101
        assert resp.header("Sec-WebSocket-Extensions") == \
            ("permessage-deflate" + bits).encode(), resp.raw
        resp = fresh.read_handshake()
        assert resp.code == 101
        assert resp.header("Sec-WebSocket-Extensions") == (DEFLATE_BOTH + bits).encode(), resp.raw
        one_closed_one_moved(condure, keeping, fresh, deflate_echo)
    assert_no_complaints(condure, handler)


def test_a_late_handoff_proceed_reaching_the_adopter_resumes_the_handler(start, tmp_path):
    """The handler answers handoff-start after --handoff-timeout: the session
    has moved without its answer, and the adopter's resume (a keep-alive)
    reached the handler before it answered. The handler then holds its
    packets until condure's next keep-alive (docs/handoff.md), which the
    adopter sends on the late answer: echoes go on at once, not after the
    next round of keep-alives (45 s)."""
    condure = start("--handoff", "ask", "--handoff-timeout", "1")
    log_path = tmp_path / "late.log"
    with open(log_path, "wb") as out:
        handler = subprocess.Popen(
            [sys.executable, "-u", str(HANDOFF_HANDLER), "--base", condure.base,
             "--handoff-delay", "3", "--verbose"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=procs.python_env(), cwd=str(REPO))
    proceeded = re.compile(r"^OUT .*handoff-proceed", re.M)
    try:
        _wait_for(lambda: "ready" in log_path.read_text(), log_path)
        with wc.WsConn.open(condure.port) as ws:
            assert ws.read_handshake().code == 101
            echo(ws, b"before")
            condure.reload()  # moved without the answer after 1 s
            _wait_for(lambda: proceeded.search(log_path.read_text()), log_path)
            echo(ws, b"after")  # within 5 s
    finally:
        handler.terminate()
        handler.wait(10)
    text = log_path.read_text()
    late = proceeded.search(text).end()
    assert "keep-alive" in text[late:], text[-3000:]  # what let it go on
    assert_no_complaints(condure)


def _wait_for(predicate, path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.05)
