"""Req mode against our condure: real clients, a real req handler process
(REP and ROUTER variants) on the DEALER socket (reference 3.3, 5.12)."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import pytest

from tests.harness import procs, tnet
from tests.harness.http_client import connect, request
from tests.harness.req_handler import start_req_condure, start_req_handler

HOST = [("Host", "example.com")]
ID = re.compile(rb"0-[0-9]+-[0-9a-f]+")


@pytest.fixture
def stack(tmp_path):
    """Start processes through ``stack.condure(...)``/``stack.handler(...)``;
    all are stopped at teardown, and condure must not have logged a
    traceback."""

    class Stack:
        def __init__(self) -> None:
            self.procs: list = []

        def condure(self, extra_args=(), **kw):
            c = start_req_condure("ours", tmp_path / f"c{len(self.procs)}", extra_args,
                                  workers=1, **kw)
            self.procs.append(c)
            return c

        def handler(self, condure, kind="router", **kw):
            h = start_req_handler(condure, tmp_path, kind=kind,
                                  name=f"h{len(self.procs)}-{kind}", **kw)
            self.procs.append(h)
            return h

        def conn(self, port, timeout=5.0):
            c = connect(port, timeout=timeout)
            self.procs.append(c)
            return c

    s = Stack()
    yield s
    for p in reversed(s.procs):
        if isinstance(p, procs.CondureProcess):
            out = p.output()
            assert p.stop() == 0, out[-2000:]
            assert "Traceback" not in out, out[-3000:]
        else:
            p.close()


@pytest.fixture(params=["router", "rep"])
def kind(request):
    return request.param


def serve(stack, kind, extra_args=(), **kw):
    c = stack.condure(extra_args, **kw)
    return c, stack.handler(c, kind)


def test_get_and_keep_alive_new_ids(stack, kind) -> None:
    c, h = serve(stack, kind)
    conn = stack.conn(c.port)
    conn.send(request("GET", "/hello?x=y", [*HOST, ("User-Agent", "t")]))
    req = h.recv()
    assert req.socket == "req" and ID.fullmatch(req.id.encode())
    assert req.keys() == ["id", "ext", "method", "uri", "headers", "peer-address", "peer-port"]
    assert req["uri"] == b"http://example.com/hello?x=y"
    assert len(h.envelopes[req.id]) == (2 if kind == "router" else 0)
    h.req_reply(req, headers=[("Content-Type", "text/plain")], body=b"hello world\n")
    assert conn.read_response().raw == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                        b"Content-Length: 12\r\n\r\nhello world\n")
    conn.send(request("POST", "/p", [*HOST, ("Content-Length", "11")], b"hello there"))
    second = h.recv()
    assert second.id != req.id and second.body == b"hello there"
    h.req_reply(second, code=201, reason="Created", extra=[("more", True)])
    assert conn.read_response().raw == b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"


def test_chunked_body_and_pipelining(stack, kind) -> None:
    c, h = serve(stack, kind)
    conn = stack.conn(c.port)
    conn.send(request("POST", "/c", [*HOST, ("Transfer-Encoding", "chunked")])
              + b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n" + request("GET", "/next", HOST))
    first = h.recv()
    assert first.body == b"abcdefg"
    h.expect_nothing()  # one request at a time
    h.req_reply(first, body=b"1")
    assert conn.read_response().body == b"1"
    second = h.recv()
    assert second["uri"] == b"http://example.com/next"
    h.req_reply(second, body=b"2")
    assert conn.read_response().body == b"2"


def test_a_half_closed_client_is_answered_then_closed(stack, kind) -> None:
    """``printf ... | nc -N``: the request, then a shutdown of the client's
    side. The answer still comes (Condure answers too), then the close."""
    c, h = serve(stack, kind)
    conn = stack.conn(c.port)
    conn.send(request("POST", "/once", [*HOST, ("Content-Length", "3")], b"abc"))
    conn.shutdown_write()
    req = h.recv()
    assert req.body == b"abc"
    h.req_reply(req, body=b"answered\n")
    assert conn.read_until_close() == (b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                       b"Content-Length: 9\r\n\r\nanswered\n")


def test_transfer_encoding_with_content_length_closes_after_the_answer(stack, kind) -> None:
    """RFC 9112 6.1 (a request smuggling guard): served, then closed; the
    request pipelined behind it is not read."""
    c, h = serve(stack, kind)
    conn = stack.conn(c.port)
    conn.send(request("POST", "/c", [*HOST, ("Content-Length", "3"),
                                     ("Transfer-Encoding", "chunked")])
              + b"3\r\nabc\r\n0\r\n\r\n" + request("GET", "/next", HOST))
    req = h.recv()
    assert req.body == b"abc"
    h.req_reply(req, body=b"1")
    raw = conn.read_until_close()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\nConnection: close\r\n") and raw.endswith(b"1")
    h.expect_nothing()

def test_expect_continue_answered_before_the_handler(stack, kind) -> None:
    c, h = serve(stack, kind)
    conn = stack.conn(c.port)
    conn.send(request("PUT", "/e", [*HOST, ("Content-Length", "5"), ("Expect", "100-continue")]))
    assert conn.read_head() == b"HTTP/1.1 100 Continue\r\n\r\n"
    h.expect_nothing()
    conn.send(b"hello")
    req = h.recv()
    assert req.body == b"hello"
    h.req_reply(req, body=b"done")
    assert conn.read_response().body == b"done"


def test_websocket_upgrade_refused(stack) -> None:
    c, h = serve(stack, "router")
    conn = stack.conn(c.port)
    conn.send(request("GET", "/ws", [
        *HOST, ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]))
    assert conn.read_until_close() == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 48\r\n\r\n"
        b"WebSockets not supported on req mode interface.\n")
    h.expect_nothing()


@pytest.mark.parametrize("headers,body", [
    ([("Content-Length", "20")], b"x" * 20),
    ([("Transfer-Encoding", "chunked")], b"14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n"),
], ids=["length", "chunked"])
def test_request_body_too_large_gets_413(stack, headers, body) -> None:
    c, h = serve(stack, "router", ["--body-buffer-size", "10"])
    conn = stack.conn(c.port)
    conn.send(request("POST", "/big", HOST + headers, body))
    resp = conn.read_response()
    assert (resp.code, resp.reason) == (413, b"Content Too Large")
    assert resp.header("Connection") == b"close"
    conn.expect_closed()
    h.expect_nothing()


def test_handler_error_gets_502(stack, kind) -> None:
    c, h = serve(stack, kind)
    conn = stack.conn(c.port)
    conn.send(request("GET", "/", HOST))
    req = h.recv()
    h.req_send(req, type="error", fields=[("condition", "bad-request")])
    resp = conn.read_response()
    assert (resp.code, resp.reason) == (502, b"Bad Gateway")
    conn.expect_closed()


def test_other_packet_types_ignored(stack) -> None:
    c, h = serve(stack, "router")
    conn = stack.conn(c.port)
    conn.send(request("GET", "/", HOST))
    req = h.recv()
    h.req_send(req, type="keep-alive")
    h.req_send(req, type="cancel")
    h.req_send(req, type="credit", fields=[("credits", 5)])
    conn.expect_silence()
    h.req_reply(req, body=b"late but fine")
    assert conn.read_response().body == b"late but fine"


@pytest.mark.parametrize("part", [
    b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\nabc",
    b"POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    b"GET /up HTTP/1.1\r\nHost: exam",
], ids=["length", "chunked", "head"])
def test_req_timeout_mid_request_gets_408(stack, part) -> None:
    """A client that stops partway through its request gets 408 when the
    req timeout passes, as a stream listener answers a late head or body."""
    c, h = serve(stack, "router", ["--req-timeout", "1"])
    conn = stack.conn(c.port)
    conn.send(part)
    resp = conn.read_response(timeout=4)
    assert (resp.code, resp.reason) == (408, b"Request Timeout")
    assert resp.header("Connection") == b"close"
    conn.expect_closed()
    h.expect_nothing()


def test_req_timeout_waiting_gets_504_and_idle_just_closes(stack) -> None:
    c, h = serve(stack, "router", ["--req-timeout", "1"])
    conn = stack.conn(c.port)
    conn.send(request("GET", "/slow", HOST))
    req = h.recv()
    started = time.monotonic()
    resp = conn.read_response(timeout=3)
    assert (resp.code, resp.reason) == (504, b"Gateway Timeout")
    assert time.monotonic() - started < 1.5
    conn.expect_closed()
    h.req_reply(req, body=b"too late")  # ignored
    idle = stack.conn(c.port)
    idle.send(request("GET", "/quick", HOST))
    h.req_reply(h.recv(), body=b"q")
    assert idle.read_response().body == b"q"
    assert idle.expect_closed(timeout=3) == "eof"  # idle keep-alive: no bytes


def test_response_body_too_large_gets_502(stack) -> None:
    c, h = serve(stack, "router", ["--body-buffer-size", "10"])
    conn = stack.conn(c.port)
    conn.send(request("GET", "/", HOST))
    h.req_reply(h.recv(), body=b"y" * 11)
    resp = conn.read_response()
    assert resp.code == 502 and b"y" * 11 not in resp.raw
    conn.expect_closed()


@pytest.mark.parametrize("raw,status", [
    (b"HELLO\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 70 + b"\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET /" + b"a" * 4100 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
])
def test_bad_input(stack, raw, status) -> None:
    c, h = serve(stack, "router")
    conn = stack.conn(c.port)
    conn.send(raw)
    resp = conn.read_response()
    assert resp.code == status and resp.header("Connection") == b"close"
    conn.expect_closed()
    h.expect_nothing()


def test_envelope_limit(stack) -> None:
    c, h = serve(stack, "router")
    conn = stack.conn(c.port)
    conn.send(request("GET", "/", HOST))
    req = h.recv()
    dealer = h.envelopes[req.id][0]

    def payload(body: bytes) -> bytes:
        return tnet.encode_packet(tnet.OMap([(b"id", req.id.encode()), (b"code", 200),
                                             (b"reason", b"OK"), (b"body", body)]))

    too_many = [dealer] + [b"e%d" % i for i in range(9)] + [b"", payload(b"9")]
    h.req_send_raw(too_many)  # 9 envelope frames: dropped
    conn.expect_silence()
    enough = [dealer] + [b"e%d" % i for i in range(8)] + [b"", payload(b"8"), b"extra"]
    h.req_send_raw(enough)
    assert conn.read_response().body == b"8"


def test_only_the_dealer_is_created(stack) -> None:
    c = stack.condure(["--ipc-file-mode", "600"])
    workdir = c.base[len("ipc://"):].rsplit("/", 1)[0]
    req_path = os.path.join(workdir, "req")
    assert stat.S_IMODE(os.stat(req_path).st_mode) == 0o600
    assert not os.path.exists(c.base[len("ipc://"):] + "-out")
    assert f"zhttp client bind ipc://{req_path}" in c.output()


def test_req_and_stream_listeners_together(stack) -> None:
    c = stack.condure(stream=True)
    h = stack.handler(c, "rep")
    stream_handler = procs.start_handler(c.base, Path(c.base[len("ipc://"):]).parent,
                                         sub_prefix=c.instance_id, name="stream-h")
    stack.procs.append(stream_handler)
    sconn = stack.conn(c.ports[1])
    sconn.send(request("GET", "/s", HOST))
    sreq = stream_handler.recv()
    assert sreq.socket == "pull" and sreq["stream"] is True
    rconn = stack.conn(c.port)
    rconn.send(request("GET", "/r", HOST))
    rreq = h.recv()
    assert rreq.id != sreq.id and "stream" not in rreq
    h.req_reply(rreq, body=b"req")
    stream_handler.reply(sreq, body=b"stream")
    assert rconn.read_response().body == b"req"
    assert sconn.read_response().body == b"stream"


def test_req_maxconn_separate_from_stream(stack) -> None:
    c = stack.condure(["--req-maxconn", "1", "--stream-maxconn", "1"], stream=True)
    h = stack.handler(c, "router")
    first = stack.conn(c.port)
    first.send(request("GET", "/1", HOST))
    req1 = h.recv()
    second = stack.conn(c.port)  # accepted by the kernel, not by condure
    second.send(request("GET", "/2", HOST))
    h.expect_nothing()
    stream = stack.conn(c.ports[1])  # a stream slot is still free
    stream.send(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n")
    assert stream.read_response().code == 505
    h.req_reply(req1, body=b"1")
    assert first.read_response().body == b"1"
    first.close()
    req2 = h.recv()
    assert req2["uri"] == b"http://example.com/2"
    h.req_reply(req2, body=b"2")
    assert second.read_response().body == b"2"


def test_handler_connecting_late_and_zclient_connect(stack, tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/bound-req"
    h = start_req_handler(endpoint, tmp_path, kind="rep", bind=True, wait=False)
    stack.procs.append(h)
    c = stack.condure(["--zclient-connect"], req_endpoint=endpoint)
    h.wait_ready()
    conn = stack.conn(c.port)
    conn.send(request("GET", "/x", HOST))
    req = h.recv()
    h.req_reply(req, body=b"connected")
    assert conn.read_response().body == b"connected"


def test_request_held_until_a_handler_connects(stack, tmp_path) -> None:
    c = stack.condure()
    conn = stack.conn(c.port)
    conn.send(request("GET", "/held", HOST))
    conn.expect_silence()
    h = stack.handler(c, "rep")
    req = h.recv()
    assert req["uri"] == b"http://example.com/held"
    h.req_reply(req, body=b"held")
    assert conn.read_response().body == b"held"
