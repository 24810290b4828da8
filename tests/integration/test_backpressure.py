"""Backpressure towards handlers: a handler that falls behind makes condure
read less from its clients, instead of queueing their messages without
end (docs/handover.md, "Bounded backlog").

A real condure (bind mode through the supervisor's relay with two
workers, and connect mode with one), the echo handler
examples/handoffhandler.py in its own process, and raw WebSocket clients.
The handler is stopped (SIGSTOP) once the sessions are open; each client
then sends 4,000 small messages, fewer bytes than the handler's credits,
so credits alone would let condure read them all. With backpressure
condure stops reading once a bounded number of packets wait for the
handler, and the rest stays in the kernel (the server side's Recv-Q).
When the handler is continued, every message is echoed once and in
order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.harness import procs
from tests.harness import ws_client as wc
from tests.harness.http_client import connect
from tests.harness.http_client import request as http_request

HANDLER = procs.REPO_ROOT / "examples" / "handoffhandler.py"
CLIENTS = 20
MESSAGES = 4000  # each 8 bytes: 14 bytes framed, 56,000 per client (credits: 65,536)


def _message(ws: wc.WsConn) -> bytes:
    """One whole message (a message cut where a read stopped may arrive
    in fragments)."""
    parts = []
    while True:
        frame = ws.read_frame(timeout=30)
        parts.append(frame.payload)
        if frame.fin:
            return b"".join(parts)


def _unread(port: int) -> int:
    """Bytes condure has not read from its clients (server side Recv-Q)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if line.strip())


def settled_unread(port: int, quiet: float = 1.0, timeout: float = 30.0) -> int:
    """Wait until condure stops reading from its clients (nothing more read
    for ``quiet`` seconds); the bytes it left unread in the kernel."""
    unread, settled = _unread(port), time.monotonic()
    deadline = settled + timeout
    while time.monotonic() - settled < quiet:
        assert time.monotonic() < deadline, "condure never stopped reading"
        time.sleep(0.1)
        now = _unread(port)
        if now != unread:
            unread, settled = now, time.monotonic()
    return unread


@pytest.fixture(params=["bind", "connect"])
def echo(request: pytest.FixtureRequest, tmp_path):
    connect_mode = request.param == "connect"  # type: ignore[attr-defined]
    args = ["--zclient-connect"] if connect_mode else []
    condure = procs.start_condure("ours", tmp_path / "condure", extra_args=args,
                                  workers=1 if connect_mode else 2)
    with open(tmp_path / "handler.stderr", "wb") as log:
        handler = subprocess.Popen(
            [sys.executable, str(HANDLER), "--base", condure.base,
             "--bind" if connect_mode else "--connect"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            env=procs.python_env())
    try:
        with connect(condure.port, timeout=15) as c:  # waits for the handler
            c.send(http_request("GET", "/ready"))
            assert c.read_response().code == 200
        yield condure, handler
        out = condure.output()
        assert condure.alive() and "Traceback" not in out, out[-3000:]
    finally:
        os.kill(handler.pid, signal.SIGCONT)
        procs.terminate(handler)
        condure.stop()


def test_a_stopped_handler_makes_condure_stop_reading(echo):
    condure, handler = echo
    clients = []
    try:
        for _ in range(CLIENTS):
            ws = wc.WsConn.open(condure.port, timeout=30)
            assert ws.read_handshake().code == 101
            clients.append(ws)
        # every session is accepted (the handler granted its credits)
        clients[-1].send_text(b"ready...")
        assert clients[-1].read_frame().payload == b"ready..."
        os.kill(handler.pid, signal.SIGSTOP)
        frames = [wc.build_frame(wc.OP_TEXT, b"%08d" % i, mask=True) for i in range(MESSAGES)]
        burst = b"".join(frames)
        for ws in clients:
            ws.send(burst)  # the kernel's buffers take it all
        sent = len(burst) * CLIENTS
        # condure reads until packets pile up for the handler, then stops:
        # once it has settled (nothing read for a second), most of what the
        # clients sent is still unread in the kernel. Without backpressure
        # it settles at 0, everything queued inside condure.
        unread = settled_unread(condure.port)
        assert unread > sent // 2, f"condure took {sent - unread} of {sent} bytes"
        os.kill(handler.pid, signal.SIGCONT)
        for ws in clients:
            got = [_message(ws) for _ in range(MESSAGES)]
            assert got == [b"%08d" % i for i in range(MESSAGES)]
    finally:
        for ws in clients:
            ws.close()
