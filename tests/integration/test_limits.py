"""Limits against abusive clients (docs/operations.md), with real processes:
our condure, a handler in its own process (the scripted handler, or a
streaming handler written below), and raw TCP clients.

- a slowloris client (a header line a second) gets 408 at --head-timeout
  while well-behaved clients are served; a connection that sends nothing is
  closed without a response; an idle kept-alive connection is not timed;
- a request body trickled below --body-min-rate gets 408, the handler a cancel;
- a client that does not read: the handler can only send within the
  credits condure returns as the kernel takes the bytes, so condure
  buffers a bounded amount; when the client reads, everything arrives;
- a flood of connections from many 127.0.0.x addresses beyond
  --max-conns-per-ip: the extra ones are closed at once, the others and
  a well-behaved client are served;
- at --stream-maxconn new connections wait in the backlog and are served
  when a slot frees; requests in flight are never reset.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness import procs
from tests.harness.flows import HOST, Server, running
from tests.harness.http_client import connect, request


def _serve(server: Server, path: str) -> None:
    """One well-behaved request, answered."""
    with connect(server.port) as c:
        c.send(request("GET", path, HOST))
        req = server.handler.recv(5.0)
        assert req["uri"] == b"http://example.com" + path.encode(), req
        server.handler.reply(req, body=b"fine")
        resp = c.read_response()
        assert resp.code == 200 and resp.body == b"fine"


# -- the request head (--head-timeout) ------------------------------------------

def _slowloris(port: int, results: list[tuple[float, bytes]], stop: threading.Event) -> None:
    """Start a request, then send one header line a second, never the end."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: example.com\r\n")
        got = b""
        s.settimeout(1.0)
        n = 0
        while not stop.is_set():
            try:
                data = s.recv(65536)
            except TimeoutError:
                n += 1
                try:
                    s.sendall(b"X-Slow-%d: %s\r\n" % (n, b"a" * 10))
                except OSError:
                    break
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            got += data
    results.append((time.monotonic() - started, got))


def test_slowloris_clients_get_408_while_others_are_served(tmp_path):
    with running(tmp_path, ["--head-timeout", "3"]) as server:
        server.begin()
        results: list[tuple[float, bytes]] = []
        stop = threading.Event()
        threads = [threading.Thread(target=_slowloris, args=(server.port, results, stop))
                   for _ in range(20)]
        for t in threads:
            t.start()
        try:
            served = 0
            began = time.monotonic()
            while time.monotonic() - began < 4.0:
                _serve(server, f"/good-{served}")
                served += 1
            for t in threads:
                t.join(10)
        finally:
            stop.set()
        assert served >= 10
        assert len(results) == 20
        for elapsed, got in results:
            assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), got
            assert b"Connection: close\r\n" in got
            assert 2.5 <= elapsed <= 5.5, elapsed
        # the slow requests never reached the handler
        server.handler.expect_nothing(0.3)
        server.end()


def test_silent_connection_is_closed_and_idle_keep_alive_is_not(tmp_path):
    with running(tmp_path, ["--head-timeout", "2"]) as server:
        server.begin()
        began = time.monotonic()
        silent = server.conn()
        kept = server.conn()
        server.exchange(kept, "/first")
        assert silent.expect_closed(timeout=5) in ("eof", "reset")  # no 408 for nothing sent
        assert 1.5 <= time.monotonic() - began <= 4.0
        # an idle kept-alive connection is governed by the session timeout,
        # not the head timeout: a request after 3 s idle is served
        time.sleep(max(3.0 - (time.monotonic() - began), 0))
        server.exchange(kept, "/second")
        # a kept-alive connection that starts a request and stalls: 408
        kept.send(b"GET /stalled HTTP/1.1\r\n")
        began = time.monotonic()
        resp = kept.read_response(timeout=5)
        assert resp.code == 408 and resp.header("Connection") == b"close"
        assert 1.5 <= time.monotonic() - began <= 4.0
        kept.expect_closed(timeout=5)
        server.probe()
        server.end()


# -- the request body (--body-min-rate) ------------------------------------------

def test_a_trickled_body_is_cut_with_408_and_the_handler_cancelled(tmp_path):
    with running(tmp_path, ["--body-min-rate", "100"]) as server:  # 1000 B per 10 s
        server.begin()
        c = server.conn()
        c.send(request("POST", "/upload", [*HOST, ("Content-Length", "100000")]))
        req = server.handler.recv()
        server.handler.credit(req, 100000)
        began = time.monotonic()
        got_408 = None
        while time.monotonic() - began < 15:
            try:
                c.send(b"x" * 20)  # 40 bytes a second
            except OSError:
                break
            try:
                data = c.read_some(timeout=0.5)
            except AssertionError:
                continue
            if data:
                c.buf = data + c.buf
                got_408 = c.read_response(timeout=2)
                break
        assert got_408 is not None and got_408.code == 408, got_408
        assert 9.0 <= time.monotonic() - began <= 12.0
        # the handler got body pieces, then a cancel
        kinds = []
        while True:
            pkt = server.handler.recv(3.0)
            kinds.append(pkt.type)
            if pkt.type == "cancel":
                break
        assert set(kinds[:-1]) <= {""}, kinds
        server.probe()
        server.end()


# -- a client that does not read: bounded buffering ------------------------------

STREAMER = r'''
import sys, zmq
from condure.zhttp import tnetstring
base, ident, total = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
ctx = zmq.Context()
pull = ctx.socket(zmq.PULL); pull.connect(base + "-out")
router = ctx.socket(zmq.ROUTER); router.identity = ident; router.connect(base + "-out-stream")
pub = ctx.socket(zmq.XPUB); pub.connect(base + "-in")
pub.recv()  # condure's subscription arrived: nothing published is lost
print("ready", flush=True)
BLOCK = bytes(range(251)) * 70
def pattern(start, size):
    return BLOCK[start % 251:start % 251 + size]
req = tnetstring.loads(pull.recv()[1:])
rid, to, credits = req[b"id"], req[b"from"], req[b"credits"]
seq = 0
sent = 0
def send(fields):
    global seq
    packet = {b"from": ident, b"id": rid, b"seq": seq, **fields}
    seq += 1
    pub.send(to + b" T" + tnetstring.dumps(packet))
first = True
while sent < total:
    if credits:
        size = min(credits, total - sent, 16384)
        body = pattern(sent, size)
        fields = {b"body": body, b"more": True}
        if first:
            fields.update({b"code": 200, b"reason": b"OK",
                           b"headers": [[b"Content-Type", b"application/octet-stream"]]})
            first = False
        send(fields)
        sent += size
        credits -= size
        print("sent", sent, flush=True)
        continue
    packet = tnetstring.loads(router.recv_multipart()[-1][1:])
    credits += packet.get(b"credits", 0)
send({b"body": b""})
print("done", flush=True)
pull.recv()  # wait to be stopped
'''


def _worker_rss(supervisor_pid: int) -> int:
    """The resident size (kB) of condure's (single) worker process."""
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text().split()
    assert len(children) == 1, children
    for line in Path(f"/proc/{children[0]}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _read_chunked_response(s: socket.socket, timeout: float) -> tuple[bytes, bytes]:
    """(head, body) of one chunked response, read whole (a big one: no
    quadratic copying)."""
    data = bytearray()
    s.settimeout(timeout)
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = s.recv(1 << 20)
        assert chunk, f"closed after {len(data)} bytes"
        data += chunk
    end = data.index(b"\r\n\r\n") + 4
    head, body, pos = bytes(data[:end]), bytearray(), end
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol], 16)
        if size == 0:
            return head, bytes(body)
        body += data[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


def test_a_client_that_does_not_read_is_buffered_boundedly(tmp_path):
    total = 16 * 1024 * 1024
    condure = procs.start_condure("ours", tmp_path / "condure", workers=1)
    script = tmp_path / "streamer.py"
    script.write_text(STREAMER)
    with open(tmp_path / "streamer.err", "wb") as err:
        handler = subprocess.Popen(
            [sys.executable, str(script), condure.base, "streamer", str(total)],
            stdout=subprocess.PIPE, stderr=err, env=procs.python_env(), cwd=str(procs.REPO_ROOT))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(
        line.decode().strip() for line in iter(handler.stdout.readline, b"")), daemon=True)
    try:
        reader.start()
        deadline = time.monotonic() + 10
        while "ready" not in lines:
            assert time.monotonic() < deadline, "streamer not ready"
            time.sleep(0.05)
        rss_before = _worker_rss(condure.pid)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        s.connect(("127.0.0.1", condure.port))
        s.sendall(request("GET", "/stream", HOST))

        def sent() -> int:
            counts = [int(x.split()[1]) for x in list(lines) if x.startswith("sent ")]
            return counts[-1] if counts else 0

        # the handler sends until credits stop coming back, then waits
        last, still = -1, time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() - still < 1.5:
            assert time.monotonic() < deadline, "the handler never stalled"
            time.sleep(0.1)
            now = sent()
            if now != last:
                last, still = now, time.monotonic()
        assert 0 < last < 10 * 1024 * 1024, f"{last} bytes left the handler with no reader"
        rss_stalled = _worker_rss(condure.pid)
        assert rss_stalled - rss_before < 8 * 1024, (rss_before, rss_stalled)
        # the client reads now: every byte arrives, in order
        head, body = _read_chunked_response(s, 30.0)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and len(body) == total
        assert body == (bytes(range(251)) * (total // 251 + 1))[:total]
        assert "done" in lines
        s.close()
        assert condure.alive() and "Traceback" not in condure.output()
    finally:
        handler.kill()
        handler.wait()
        handler.stdout.close()
        condure.stop()


# -- connections per client address (--max-conns-per-ip) -------------------------

def _open_from(address: str, port: int) -> socket.socket:
    s = socket.socket()
    s.bind((address, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def _closed_soon(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_flood_from_many_addresses_is_capped_per_address(tmp_path):
    per_ip, addresses = 4, [f"127.0.0.{n}" for n in range(2, 42)]
    with running(tmp_path, ["--max-conns-per-ip", str(per_ip)]) as server:
        server.begin()
        kept: list[socket.socket] = []
        extra: list[socket.socket] = []
        try:
            for address in addresses:
                kept += [_open_from(address, server.port) for _ in range(per_ip)]
            # every address is at its limit (the worker has accepted them
            # all once a later connection from 127.0.0.1 is served)
            _serve(server, "/meanwhile")
            for address in addresses:
                extra += [_open_from(address, server.port) for _ in range(2)]
            began = time.monotonic()
            assert all(_closed_soon(s, 3.0) for s in extra), "a connection over the limit stayed"
            assert time.monotonic() - began < 3.0
            assert not any(_closed_soon(s, 0.01) for s in kept), "one within the limit closed"
            # a well-behaved client (another address) is served meanwhile
            _serve(server, "/well-behaved")
            # the kept connections work
            sample = kept[0]
            sample.sendall(request("GET", "/kept", HOST))
            req = server.handler.recv()
            assert req["uri"] == b"http://example.com/kept"
            server.handler.reply(req, body=b"kept")
            sample.settimeout(5)
            assert sample.recv(4096).endswith(b"kept")
            # a slot of an address freed: a new connection from it is taken
            kept.pop(1).close()
            deadline = time.monotonic() + 3  # until the worker has seen the close
            while True:
                again = _open_from(addresses[0], server.port)
                if not _closed_soon(again, 0.3):
                    break
                again.close()
                assert time.monotonic() < deadline, "the freed place was not given back"
            kept.append(again)
        finally:
            for s in kept + extra:
                s.close()
        server.probe()
        server.end()


# -- at --stream-maxconn: the backlog -----------------------------------------

def test_at_maxconn_new_connections_wait_and_nothing_in_flight_is_reset(tmp_path):
    with running(tmp_path, ["--stream-maxconn", "2"]) as server:
        server.begin()
        close = [*HOST, ("Connection", "close")]
        first = server.conn()
        first.send(request("GET", "/one", close))
        one = server.handler.recv(5.0)
        second = server.conn()
        second.send(request("GET", "/two", close))
        two = server.handler.recv(5.0)  # (waits for the marker's slot, if need be)
        assert (one["uri"], two["uri"]) == (b"http://example.com/one", b"http://example.com/two")
        # both slots taken: a third client connects (the kernel's backlog)
        # and its request waits there, unread
        third = server.conn()
        third.send(request("GET", "/three", close))
        server.handler.expect_nothing(1.0)
        third.expect_silence(0.3)
        # the requests in flight finish normally
        server.handler.reply(one, body=b"one")
        server.handler.reply(two, body=b"two")
        assert first.read_response().body == b"one"
        assert second.read_response().body == b"two"
        # a slot frees: the waiting client is served
        req = server.handler.recv(5.0)
        assert req["uri"] == b"http://example.com/three"
        server.handler.reply(req, body=b"three")
        assert third.read_response().body == b"three"
        server.end()


def test_maxconn_is_shared_among_workers(tmp_path):
    """Each worker holds ``--stream-maxconn / --workers`` connections, as
    each of Condure's worker threads does: with 2 workers and a limit of 2,
    a third connection waits even though each worker holds only one.
    (``shared``: a full worker stops accepting, so the other takes the
    second connection whichever worker took the first.)"""
    extra = ["--stream-maxconn", "2", "--accept-mode", "shared"]
    with running(tmp_path, extra, workers=2) as server:
        server.begin()
        close = [*HOST, ("Connection", "close")]
        conns, reqs = [], []
        for path in ("/one", "/two"):
            c = server.conn()
            c.send(request("GET", path, close))
            conns.append(c)
            reqs.append(server.handler.recv(5.0))
        assert len({r["from"] for r in reqs}) == 2  # one connection in each worker
        third = server.conn()
        third.send(request("GET", "/three", close))
        server.handler.expect_nothing(1.0)  # a share of 1 each: the third waits
        server.handler.reply(reqs[0], body=b"one")
        assert conns[0].read_response().body == b"one"
        req = server.handler.recv(5.0)  # a slot freed: the waiting client is served
        assert req["uri"] == b"http://example.com/three"
        server.handler.reply(req, body=b"three")
        assert third.read_response().body == b"three"
        server.handler.reply(reqs[1], body=b"two")
        assert conns[1].read_response().body == b"two"
        server.end()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
