"""A session that raises (a bug in condure) costs its own connection only.

One real condure (supervisor and one worker) runs with deliberate faults in
its sessions (tests/harness/session_faults.py, installed in the worker
through the environment): they raise for input carrying the marker
``boom!`` and for nothing else. Each test sets one off while other
connections are live and checks what condure promises:

- the client gets a ``500 Internal Server Error`` with ``Connection:
  close`` when no response byte went out yet, an open WebSocket a close
  frame with code 1011; the handler gets ``cancel`` when it is known;
- the traceback is logged once, naming the client's address and the
  session id;
- the worker is the same process, and the other connections (an open
  WebSocket, an idle keep-alive HTTP connection) go on working;
- the slot is free again: with ``--stream-maxconn 4`` as many new
  connections as the limit leaves are all served;
- a fault in the middle of a batch of handler packets does not hold up the
  others in that batch, nor one during a graceful stop the other requests;
- once every client is gone the worker holds the descriptors it held
  before.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.harness import flows, liveness, procs, tnet
from tests.harness import ws_client as wc
from tests.harness.http_client import connect, request
from tests.harness.session_faults import MARKER, fault_env
from tests.harness.ws_scenarios import accept, expect_packet, message

MAXCONN = 4
HOST = [("Host", "example.com")]


class Faulty(flows.Server):
    """The shared condure and its (burst-capable) handler; per test,
    :meth:`setup` and :meth:`verify` (see the module docstring)."""

    def __init__(self, condure, handler, workdir) -> None:
        super().__init__(condure, flows.SharedHandler(handler), workdir)
        self.worker = self.only_worker()
        self.fds = liveness.fd_count(self.worker)
        self.faults = 0  # tracebacks the tests caused so far

    def only_worker(self) -> int:
        pids = liveness.worker_pids(self.condure.pid)
        assert len(pids) == 1, pids
        return pids[0]

    def setup(self) -> Faulty:
        self.begin()
        return self

    def fault_logged(self, port: int, sid: str | None) -> None:
        """The one new traceback, on an error line that names the client's
        address and (if known to the test) the session id."""
        self.faults += 1
        deadline = time.monotonic() + 3
        while True:
            out = self.condure.output()
            lines = [ln for ln in out.splitlines()
                     if f"peer 127.0.0.1:{port}," in ln and "unexpected error" in ln]
            if lines or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(lines) == 1, out[-3000:]
        assert lines[0].startswith("[ERR]"), lines
        if sid is not None:
            assert f"session {sid})" in lines[0], lines
        # The traceback follows the error line; its last line may still be
        # on its way through the log pipe.
        while (out.count("InjectedFault: ") < self.faults
               and time.monotonic() < deadline + 3):
            time.sleep(0.02)
            out = self.condure.output()
        assert out.count("Traceback (most recent call last)") == self.faults, out[-3000:]
        assert out.count("InjectedFault: ") == self.faults, out[-3000:]

    def verify(self, free: int) -> None:
        """Same worker, ``free`` slots serve new clients at once, and no
        descriptor is left over once every client is gone."""
        assert self.condure.alive(), self.condure.pump.tail()
        assert self.only_worker() == self.worker
        clients = [self.conn() for _ in range(free)]
        for i, c in enumerate(clients):
            c.send(request("GET", f"/fill-{i}", HOST))
        reqs = {}
        for _ in clients:
            pkt = self.handler.recv()
            reqs[pkt["uri"]] = pkt
        for i, c in enumerate(clients):
            self.handler.reply(reqs[b"http://example.com/fill-%d" % i], body=b"fill")
            assert c.read_response().body == b"fill"
        self.close_conns()
        count = liveness.settle_fd_count(self.worker, self.fds)
        assert count == self.fds, f"worker holds {count} descriptors, {self.fds} before"
        assert self.only_worker() == self.worker


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    with fault_env():
        condure = procs.start_condure("ours", workdir / "condure", workers=1,
                                      extra_args=["--stream-maxconn", str(MAXCONN)])
    try:
        handler = liveness.start_handler("tests.handlers.burst_handler", condure.base, workdir,
                                         sub_prefix=condure.instance_id)
        try:
            yield Faulty(condure, handler, workdir)
        finally:
            handler.close()
    finally:
        status = condure.stop()
    assert status == 0, condure.pump.tail()


@pytest.fixture
def srv(faulty):
    yield faulty.setup()
    faulty.close_conns()


class Bystanders:
    """An idle keep-alive HTTP connection and an open WebSocket."""

    def __init__(self, srv: Faulty) -> None:
        self.srv = srv
        self.http = srv.conn()
        srv.exchange(self.http, "/keep")
        self.ws = wc.WsConn.open(srv.port, "/bystander")
        srv.conns.append(self.ws)
        self.req, _ = accept(srv.handler, self.ws, credits=1000)

    def check(self) -> None:
        h = self.srv.handler
        self.srv.exchange(self.http, "/keep-again")
        self.ws.send_text("still there?")
        expect_packet(h, body=b"still there?")
        message(h, self.req, b"yes")
        assert self.ws.read_message()[1] == b"yes"
        expect_packet(h, "credit", credits=3)  # the bytes reached the client


def expect_500(c) -> int:
    """The client gets a 500 and the connection closes; the client's port
    (then it closes its end too)."""
    resp = c.read_response()
    assert (resp.code, resp.reason) == (500, b"Internal Server Error"), resp.raw
    assert resp.header("Connection") == b"close", resp.raw
    c.expect_closed()
    return ended(c)


def expect_1011(ws) -> int:
    assert ws.read_close() == (1011, b"")
    ws.expect_closed()
    return ended(ws)


def ended(c) -> int:
    port = c.sock.getsockname()[1]
    c.close()
    return port


def expect_cancel(srv: Faulty, sid: str, seq: int) -> None:
    """The next packet for ``sid`` other than a credit is its cancel."""
    while True:
        pkt = srv.handler.recv()
        if pkt.type != "credit":
            break
        assert pkt.id == sid, pkt
    assert (pkt.type, pkt.id, pkt.seq) == ("cancel", sid, seq), pkt
    assert pkt.sender == srv.condure.instance_id


def test_fault_on_a_handler_packet_http(srv):
    others = Bystanders(srv)
    c = srv.conn()
    req = srv.get(c, "/answer-me")
    srv.handler.reply(req, body=MARKER)  # its first packet: the handler is named in it
    port = expect_500(c)
    expect_cancel(srv, req.id, 1)
    srv.fault_logged(port, req.id)
    others.check()
    srv.verify(MAXCONN - 2)


def test_fault_after_the_response_began_just_closes(srv):
    others = Bystanders(srv)
    c = srv.conn()
    req = srv.get(c, "/stream")
    srv.handler.reply(req, headers=[("Content-Type", "text/plain")], body=b"part", more=True)
    assert c.read_response(head_only=True).code == 200
    srv.handler.body(req, MARKER, more=True)
    rest = c.read_until_close()
    assert b"500" not in rest and rest.startswith(b"4\r\npart\r\n"), rest  # no 500 mid-body
    expect_cancel(srv, req.id, 2)  # after the credit for "part"
    srv.fault_logged(ended(c), req.id)
    others.check()
    srv.verify(MAXCONN - 2)


def test_fault_on_a_request_line(srv):
    others = Bystanders(srv)
    c = srv.conn()
    c.send(request("GET", "/x?" + MARKER.decode(), HOST))
    port = expect_500(c)
    srv.handler.expect_nothing()  # nothing went out: no handler to tell
    srv.fault_logged(port, None)
    others.check()
    srv.verify(MAXCONN - 2)


def test_fault_on_request_body_bytes(srv):
    others = Bystanders(srv)
    c = srv.conn()
    c.send(request("POST", "/upload", [*HOST, ("Content-Length", "10")]))
    req = srv.handler.recv()
    srv.handler.credit(req, 100)
    c.send(MARKER + b"12345")
    port = expect_500(c)
    expect_cancel(srv, req.id, 1)
    srv.fault_logged(port, req.id)
    others.check()
    srv.verify(MAXCONN - 2)


def test_fault_on_a_timer(srv):
    others = Bystanders(srv)
    c = srv.conn()
    req = srv.get(c, "/boom-timer")
    port = expect_500(c)  # its timer fired (0.3 s) and raised
    srv.handler.expect_nothing()  # the handler had not answered: it is not known
    srv.fault_logged(port, req.id)
    others.check()
    srv.verify(MAXCONN - 2)


def test_fault_on_a_websocket_client_message(srv):
    others = Bystanders(srv)
    ws = wc.WsConn.open(srv.port, "/ws")
    srv.conns.append(ws)
    req, _ = accept(srv.handler, ws, credits=1000)
    ws.send_text(MARKER)
    port = expect_1011(ws)
    expect_cancel(srv, req.id, 1)
    srv.fault_logged(port, req.id)
    others.check()
    srv.verify(MAXCONN - 2)


def test_fault_on_a_websocket_handler_packet(srv):
    others = Bystanders(srv)
    ws = wc.WsConn.open(srv.port, "/ws")
    srv.conns.append(ws)
    req, _ = accept(srv.handler, ws, credits=1000)
    message(srv.handler, req, b"before")
    assert ws.read_message()[1] == b"before"
    message(srv.handler, req, MARKER)
    port = expect_1011(ws)
    expect_cancel(srv, req.id, 2)  # after the credit for "before"
    srv.fault_logged(port, req.id)
    others.check()
    srv.verify(MAXCONN - 2)


def test_fault_in_the_middle_of_a_batch(srv):
    """Replies for three sessions and the faulty packet reach condure back
    to back (one drain of the SUB socket): the three are all served."""
    clients = [srv.conn() for _ in range(4)]
    reqs = []
    for i, c in enumerate(clients):
        c.send(request("GET", f"/batch-{i}", HOST))
        reqs.append(srv.handler.recv())
    assert [r["uri"] for r in reqs] == [b"http://example.com/batch-%d" % i for i in range(4)]
    frames = []
    for i, req in enumerate(reqs):
        body = MARKER if i == 1 else b"served %d" % i
        fields = tnet.OMap([(b"from", b"handler1"), (b"id", req.id.encode()), (b"seq", 0),
                            (b"code", 200), (b"reason", b"OK"), (b"body", body)])
        frames.append((srv.handler.address[req.id].encode() + b" "
                       + tnet.encode_packet(fields)).hex())
    answer = srv.handler.command({"cmd": "send_many", "frames": frames}, 5.0)
    assert answer == {"ok": True, "sent": 4}
    for i in (0, 2, 3):
        assert clients[i].read_response(timeout=3).body == b"served %d" % i
    port = expect_500(clients[1])
    expect_cancel(srv, reqs[1].id, 1)
    srv.fault_logged(port, reqs[1].id)
    srv.close_conns()
    srv.verify(MAXCONN)


def test_no_fault_without_the_marker(faulty):
    """The faults are only where the marker is: a plain exchange through
    the same processes logs nothing."""
    srv = faulty.setup()
    before = srv.condure.output().count("Traceback")
    with connect(srv.port) as c:
        srv.exchange(c, "/plain")
    assert srv.condure.output().count("Traceback") == before


def test_fault_during_a_graceful_stop(tmp_path):
    """SIGTERM: the worker drains; the broken session ends with its 500 and
    the other request in flight still gets its answer; exit status 0."""
    with fault_env():
        condure = procs.start_condure("ours", tmp_path / "condure", workers=1)
    handler = None
    try:
        handler = procs.start_handler(condure.base, tmp_path, sub_prefix=condure.instance_id)
        worker = liveness.worker_pids(condure.pid)
        # closed whatever happens: a failure must not leave them to the
        # garbage collector (with the failed test's frames)
        with connect(condure.port) as bad, connect(condure.port) as good:
            bad.send(request("GET", "/boom-stop", HOST))
            assert handler.recv()["uri"] == b"http://example.com/boom-stop"
            good.send(request("GET", "/slow", HOST))
            req = handler.recv()
            assert req["uri"] == b"http://example.com/slow"
            condure.popen.send_signal(signal.SIGTERM)
            expect_500(bad)
            assert liveness.worker_pids(condure.pid) == worker  # still draining
            handler.reply(req, body=b"done")
            resp = good.read_response()
            assert (resp.code, resp.body) == (200, b"done")
            assert resp.header("Connection") == b"close"
        assert condure.stop() == 0, condure.pump.tail()
        out = condure.output()
        assert out.count("Traceback (most recent call last)") == 1, out[-3000:]
        assert "unexpected error while closing it for a stop" in out, out[-3000:]
    finally:
        if handler is not None:
            handler.close()
        condure.stop()
