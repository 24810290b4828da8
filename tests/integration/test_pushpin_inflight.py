"""Pushpin 1.36 (Debian package): its long-polls and GRIP streams move
across a reload of condure (SIGHUP to the condure Pushpin's runner
started) while they are held, and a publish after the reload reaches both
clients (docs/handover.md, docs/pushpin.md). Pushpin ignores
``handoff-start``: with ``--handoff ask`` the requests move after
--handoff-timeout (5 s), with the default ``--handoff auto`` (which does
not ask on a reload) at once.

Paths: client -> condure -> pushpin-proxy -> zurl -> a GRIP origin on
Python's http.server defined here (``Grip-Hold: response`` for
``/grip/poll``, ``Grip-Hold: stream`` otherwise); the publish goes to
pushpin-handler's ``POST /publish/``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.harness import pushpin

REASON = pushpin.missing()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

CHANNEL = "inflight"
MOVED = re.compile(r"handover: (\d+) connections moved, (\d+) closed, (\d+) lost")
IN_FLIGHT = re.compile(r"handover: (\d+) HTTP requests in flight moved without their "
                       r"handler's handoff-proceed \(([^)]*)\)")


class _Grip(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/grip/poll"):
            hold, body = "response", b"timeout\n"
        else:
            hold, body = "stream", b"stream open\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Grip-Hold", hold)
        self.send_header("Grip-Channel", CHANNEL)
        self.send_header("Grip-Timeout", "50")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def grip_origin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Grip)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(10)


def _supervisor(workdir: Path) -> int:
    """The pid of the condure supervisor Pushpin's runner started (its
    workers are its children)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if "-m condure" in cmdline and str(workdir) in cmdline and "--zclient-stream" in cmdline:
            pids[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    [sup] = [pid for pid, parent in pids.items() if parent not in pids]
    return sup


def _request(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
    return sock


def _read_until(sock: socket.socket, buf: bytes, needle: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while needle not in buf:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        data = sock.recv(65536)
        assert data, buf
        buf += data
    return buf


@pytest.mark.parametrize("handoff", ["ask", "auto"])
def test_pushpin_long_poll_and_stream_move_on_reload(tmp_path, grip_origin, monkeypatch,
                                                      handoff):
    if handoff == "ask":  # condure's arguments come from Pushpin's runner
        write = pushpin.write_condure_wrapper

        def with_ask(path: Path, impl: str, argv_log: Path) -> None:
            write(path, impl, argv_log)
            path.write_text(path.read_text().replace('-m condure "$@"',
                                                     '-m condure "$@" --handoff ask'))

        monkeypatch.setattr(pushpin, "write_condure_wrapper", with_ask)
    inst = pushpin.start_pushpin("ours", tmp_path / "pp", log_level=3,
                                 routes=[f"*,path_beg=/grip/ 127.0.0.1:{grip_origin}"])
    stream = poll = None
    try:
        stream = _request(inst.port, "/grip/stream")
        got = _read_until(stream, b"", b"stream open\n", 10)
        assert b"chunked" in got.lower(), got
        poll = _request(inst.port, "/grip/poll")
        time.sleep(1.0)  # held: Pushpin has answered condure (the request is ACTIVE)
        poll.settimeout(0.2)
        with pytest.raises(TimeoutError):
            poll.recv(4096)
        workers = len(re.findall(r"worker \d+ ready", inst.output()))
        t0 = time.monotonic()
        os.kill(_supervisor(tmp_path / "pp"), signal.SIGHUP)
        deadline = t0 + 30
        while len(MOVED.findall(inst.output())) < workers:
            assert time.monotonic() < deadline, inst.output()[-5000:]
            time.sleep(0.05)
        took = time.monotonic() - t0
        out = inst.output()
        assert sum(int(m) for m, _, _ in MOVED.findall(out)) == 2, out[-5000:]
        assert all((c, lost) == ("0", "0") for _, c, lost in MOVED.findall(out)), out[-5000:]
        why = "not asked" if handoff == "auto" else "it did not answer in time"
        flights = IN_FLIGHT.findall(out)
        assert sum(int(n) for n, _ in flights) == 2 and {w for _, w in flights} == {why}, \
            out[-5000:]
        assert "cannot move" not in out
        if handoff == "auto":
            assert took < 3.0, took
        else:
            assert 5.0 <= took < 10.0, took  # --handoff-timeout, not --drain-timeout (30)
        item = {"channel": CHANNEL, "formats": {
            "http-stream": {"content": "published 1\n"},
            "http-response": {"body": "published poll\n"}}}
        resp = pushpin.fetch(inst.control_port, "POST", "/publish/",
                             headers=[("Content-Type", "application/json")],
                             body=json.dumps({"items": [item]}).encode())
        assert resp.code == 200, resp
        _read_until(stream, b"", b"published 1\n", 10)
        answer = _read_until(poll, b"", b"published poll\n", 10)
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer
    finally:
        for sock in (stream, poll):
            if sock is not None:
                sock.close()
        inst.stop()
    print(f"\nPushpin, --handoff {handoff}: a held long-poll and a GRIP stream moved "
          f"in {took:.2f} s")
