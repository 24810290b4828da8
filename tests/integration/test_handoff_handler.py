"""examples/handoffhandler.py: echo under load, and the handler's side of
condure's handoff.

- Against Debian's Condure (reference): HTTP and WebSocket echo, large
  messages (credits given back in the echo packets), ping, close, and a
  short run of the load client tests/harness/wsload.py with no loss.
- Against a fake condure played by the test (PUSH, ROUTER and SUB sockets
  bound on the handler's endpoints): handoff-start is answered with
  handoff-proceed, nothing is sent until condure's next keep-alive, then the
  held echoes follow in order; credits, several ids in one packet, a session
  cancelled while held; packets for unknown ids answered with cancel.

"Nothing is sent" is checked with a barrier, not a pause: the handler reads
the ROUTER socket in order, so once the echo of a later packet for another
session has arrived, every earlier packet has been handled.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tnetstring
import zmq

from tests.harness import http_client, procs
from tests.harness.ws_client import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WsConn

HANDLER = procs.REPO_ROOT / "examples" / "handoffhandler.py"
IDENTITY = b"echo-under-test"
TIMEOUT = 10.0


@pytest.fixture
def start_handler(tmp_path):
    """``start_handler(base)``: the example handler, stopped at teardown."""
    started = []

    def start(base: str) -> tuple[subprocess.Popen, Path]:
        errors = tmp_path / f"handler{len(started)}.stderr"
        with open(errors, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(HANDLER), "--base", base, "--identity", IDENTITY.decode()],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                env=procs.python_env())
        started.append(proc)
        return proc, errors

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    # A clean stop on SIGTERM: exit status 0.
    assert all(p.returncode == 0 for p in started), [p.returncode for p in started]


# -- against the reference condure ---------------------------------------

@pytest.fixture
def reference(make_condure, start_handler):
    condure = make_condure("reference")
    start_handler(condure.base)
    return condure


@pytest.mark.reference
def test_http_and_websocket_echo(reference):
    with http_client.connect(reference.port, timeout=TIMEOUT) as conn:
        conn.send(b"GET /some/path HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = conn.read_response()
        assert resp.code == 200
        assert resp.header("Content-Type") == b"text/plain"
        assert resp.body == b"ok /some/path\n"
    ws = WsConn.open(reference.port, "/ws", timeout=TIMEOUT)
    try:
        assert ws.read_handshake().code == 101
        # 100 x 3000 bytes: far more than the 65536 credits of the accept,
        # so this only passes if the echoes give the credits back.
        for i in range(100):
            payload = bytes([i]) * 3000
            ws.send_binary(payload)
            opcode, data, _ = ws.read_message()
            assert (opcode, data) == (OP_BINARY, payload)
        ws.send_text("héllo")
        assert ws.read_message()[:2] == (OP_TEXT, "héllo".encode())
        ws.send_frame(OP_PING, b"are you there")
        frame = ws.read_frame()
        assert (frame.opcode, frame.payload) == (OP_PONG, b"are you there")
        ws.send_close(4001, "bye")
        frame = ws.read_frame()
        assert frame.opcode == OP_CLOSE
        assert frame.close_code_reason()[0] == 4001
    finally:
        ws.close()


@pytest.mark.reference
def test_wsload_sees_every_echo(reference, tmp_path):
    result = tmp_path / "result.json"
    load = procs._spawn(
        "wsload",
        [sys.executable, "-m", "tests.harness.wsload", "--port", str(reference.port),
         "--clients", "50", "--procs", "2", "--http-loops", "2", "--result", str(result)],
        tmp_path / "wsload.log", "READY", env=procs.python_env(), cwd=str(procs.REPO_ROOT))
    try:
        assert load.pump.seen.wait(30), load.pump.tail()
        time.sleep(2.0)  # the length of the run, not a synchronisation
    finally:
        status = load.stop(signal.SIGTERM, timeout=30)
    assert status == 0, load.pump.tail()
    r = json.loads(result.read_text())
    assert r["connected"] == 50 and r["handshake_failed"] == 0
    assert r["disconnects"] == 0 and r["close_codes"] == {}
    assert r["sent"] >= 50 * 20  # about 40 a client in 2 s
    assert r["echoed"] == r["sent"]
    assert (r["lost"], r["duplicated"], r["reordered"], r["unexpected"]) == (0, 0, 0, 0)
    assert r["http_ok"] > 0 and r["http_failed"] == 0
    assert r["procs"] == 2 and r["procs_failed"] == 0


# -- against a fake condure ----------------------------------------------

class FakeCondure:
    """condure's three stream sockets, bound; packets built by hand."""

    def __init__(self, base: str) -> None:
        self.ctx = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"condure ")
        for sock, suffix in ((self.push, "-out"), (self.router, "-out-stream"), (self.sub, "-in")):
            sock.linger = 0
            sock.bind(base + suffix)
        self.seq: dict[bytes, int] = {}

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    def request(self, rid: bytes, uri: bytes = b"ws://example.com/ws", credits: int = 8192) -> None:
        self.seq[rid] = 1
        self.push.send(b"T" + tnetstring.dumps({
            b"from": b"condure", b"id": rid, b"seq": 0, b"ext": {b"multi": True},
            b"method": b"GET", b"uri": uri, b"headers": [[b"Host", b"example.com"]],
            b"credits": credits}))

    def next_seq(self, rid: bytes) -> int:
        seq = self.seq[rid]
        self.seq[rid] = seq + 1
        return seq

    def send(self, rid, **fields) -> None:
        """One packet on the ROUTER; ``rid`` a list: the id-list form."""
        packet = {b"from": b"condure", b"ext": {b"multi": True}}
        if isinstance(rid, list):
            packet[b"id"] = [{b"id": r, b"seq": self.next_seq(r)} for r in rid]
        else:
            packet[b"id"] = rid
            packet[b"seq"] = fields.pop("seq", None)
            if packet[b"seq"] is None:
                packet[b"seq"] = self.next_seq(rid)
        packet.update({k.replace("_", "-").encode(): v for k, v in fields.items()})
        frames = [IDENTITY, b"", b"T" + tnetstring.dumps(packet)]
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                self.router.send_multipart(frames)
                return
            except zmq.ZMQError as e:  # not connected yet (ROUTER_MANDATORY)
                if e.errno != zmq.EHOSTUNREACH or time.monotonic() > deadline:
                    raise
                self.router.poll(10, zmq.POLLOUT)

    def data(self, rid: bytes, body: bytes, binary: bool = False) -> None:
        self.send(rid, content_type=b"binary" if binary else b"text", body=body)

    def recv(self) -> dict:
        assert self.sub.poll(TIMEOUT * 1000), "no packet from the handler"
        raw = self.sub.recv()
        assert raw.startswith(b"condure T"), raw
        packet = tnetstring.loads(raw[len(b"condure T"):])
        assert packet[b"from"] == IDENTITY
        return packet

    def open(self, rid: bytes, credits: int = 8192) -> dict:
        self.request(rid, credits=credits)
        accept = self.recv()
        assert (accept[b"id"], accept[b"seq"], accept[b"code"]) == (rid, 0, 101)
        return accept

    def echo(self, rid: bytes, body: bytes) -> int:
        """Send ``body`` and return the seq of its echo, checked."""
        self.data(rid, body)
        packet = self.recv()
        assert (packet[b"id"], packet.get(b"body", b"")) == (rid, body), packet
        return packet[b"seq"]


@pytest.fixture
def fake(tmp_path, start_handler):
    base = f"ipc://{tmp_path}/client"
    condure = FakeCondure(base)
    _, errors = start_handler(base)
    condure.handler_errors = errors
    yield condure
    condure.close()


def test_handoff_holds_echoes_until_resumed(fake):
    a, b = b"0-1-1", b"0-2-1"
    assert fake.open(a)[b"credits"] > 0
    fake.open(b)
    assert fake.echo(a, b"one") == 1

    fake.send(a, type=b"handoff-start")  # condure's seq 2
    proceed = fake.recv()
    assert (proceed[b"id"], proceed[b"seq"], proceed[b"type"]) == (a, 2, b"handoff-proceed")
    # Client data may still come after handoff-start: held, not echoed.
    fake.data(a, b"two")
    fake.data(a, b"\x00three", binary=True)
    fake.send(a, type=b"ping", body=b"p")
    assert fake.echo(b, b"barrier") == 1  # nothing for a came before this

    fake.send(a, type=b"keep-alive")  # the session is back
    two, three, pong = fake.recv(), fake.recv(), fake.recv()
    assert [(p[b"id"], p[b"seq"]) for p in (two, three, pong)] == [(a, 3), (a, 4), (a, 5)]
    assert (two[b"content-type"], two[b"body"], two[b"credits"]) == (b"text", b"two", 3)
    assert (three[b"content-type"], three[b"body"]) == (b"binary", b"\x00three")
    assert (pong[b"type"], pong[b"body"]) == (b"pong", b"p")
    assert fake.echo(a, b"four") == 6
    # The seq check of the handler: a gap is logged, then followed.
    fake.send(a, type=b"keep-alive", seq=fake.seq[a] + 5)
    assert fake.echo(b, b"barrier 2") == 2
    assert "expected" in fake.handler_errors.read_text()


def test_several_ids_in_one_keep_alive(fake):
    a, b, c = b"0-1-1", b"0-2-1", b"0-3-1"
    for rid in (a, b, c):
        fake.open(rid)
    for rid in (a, b, c):
        fake.send(rid, type=b"handoff-start")
    assert {p[b"id"]: p[b"type"] for p in (fake.recv(), fake.recv(), fake.recv())} == \
        {a: b"handoff-proceed", b: b"handoff-proceed", c: b"handoff-proceed"}
    fake.data(a, b"for a")
    fake.data(b, b"for b")
    fake.data(c, b"for c")
    fake.send(c, type=b"cancel")  # c ends while held: its echo is dropped
    fake.send([a, b, c], type=b"keep-alive")
    got = [fake.recv(), fake.recv(), fake.recv()]
    # c is unknown now: its keep-alive is answered with a cancel, no seq
    assert sorted((p[b"id"], p.get(b"seq"), p.get(b"type"), p.get(b"body")) for p in got) == \
        [(a, 2, None, b"for a"), (b, 2, None, b"for b"), (c, None, b"cancel", None)]
    d = b"0-4-1"
    fake.open(d)
    assert fake.echo(d, b"barrier") == 1  # and nothing more came for c


def test_echoes_respect_condure_credits(fake):
    a = b"0-1-1"
    fake.open(a, credits=10)
    assert fake.echo(a, b"abcdefgh") == 1  # 2 credits left
    fake.data(a, b"ijklmn")  # does not fit: waits for credits
    fake.send(a, type=b"credit", credits=3)  # 5: still not enough
    b = b"0-2-1"
    fake.open(b)
    assert fake.echo(b, b"barrier") == 1
    fake.send(a, type=b"credit", credits=5)  # 10
    packet = fake.recv()
    assert (packet[b"id"], packet[b"seq"], packet[b"body"]) == (a, 2, b"ijklmn")
    assert b"more" not in packet
    # A message larger than condure can ever hold goes out in parts.
    fake.send(a, type=b"credit", credits=6)  # 10 again
    fake.data(a, b"0123456789abcdef")
    first = fake.recv()
    assert (first[b"body"], first[b"more"], first[b"credits"]) == (b"0123456789", True, 16)
    fake.send(a, type=b"credit", credits=10)
    last = fake.recv()
    assert (last[b"seq"], last[b"body"], last.get(b"more")) == (4, b"abcdef", None)


def test_close_is_answered_and_ends_the_session(fake):
    a = b"0-1-1"
    fake.open(a)
    fake.send(a, type=b"close", code=1001, body=b"going")
    packet = fake.recv()
    assert (packet[b"seq"], packet[b"type"], packet[b"code"]) == (1, b"close", 1001)
    fake.data(a, b"after close")  # the session is gone: no echo, a cancel
    cancel = fake.recv()
    assert (cancel[b"id"], cancel[b"type"], b"seq" in cancel) == (a, b"cancel", False)
    b = b"0-2-1"
    fake.open(b)
    assert fake.echo(b, b"barrier") == 1


def test_packets_for_unknown_ids_are_answered_with_cancel(fake):
    """As a ZHTTP peer does (Pushpin's zhttpmanager answers so on its
    first-packet socket): every packet type but cancel and error, with no
    seq, to the sender's address; so that condure ends at once a session
    the handler no longer has (after a restart, docs/restarts.md)."""
    gone = b"0-9-9"
    for kind in (b"keep-alive", b"credit", b"", b"handoff-start"):
        fake.send(gone, type=kind, seq=3, credits=10)
        cancel = fake.recv()
        assert cancel == {b"from": IDENTITY, b"id": gone, b"type": b"cancel"}, (kind, cancel)
    fake.send(gone, type=b"cancel", seq=4)
    fake.send(gone, type=b"error", seq=5, condition=b"bad-request")
    b = b"0-2-1"
    fake.open(b)
    assert fake.echo(b, b"barrier") == 1  # nothing for the cancel and the error


def test_http_request(fake):
    fake.request(b"0-1-1", uri=b"http://example.com/path?q=1")
    packet = fake.recv()
    assert (packet[b"code"], packet[b"body"]) == (200, b"ok /path?q=1\n")
    assert packet[b"headers"] == [[b"Content-Type", b"text/plain"]]
