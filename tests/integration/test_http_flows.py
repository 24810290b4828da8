"""HTTP flows through our condure with real client sockets and the scripted
handler: request packets, framing, persistence, pipelining, 100-continue,
early responses, cancellation, handoff, credits, multi-id packets, HEAD/204,
``--stream-maxconn`` and ``--stream-timeout``. Most tests share one condure
and handler (fixture ``shared``); other options get their own.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.harness import flows
from tests.harness.flows import HOST, SILENCE
from tests.harness.http_client import request

FROM_RE = re.compile(rb"condure(\.[0-9]+)?")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("http-flows")) as server:
        yield server


@pytest.fixture
def srv(shared):
    yield shared.begin()
    shared.end()


def test_get_request_packet(srv):
    h, c = srv.handler, srv.conn()
    c.send(request("GET", "/path?x=1", [*HOST, ("User-Agent", "t"), ("Accept", "*/*")]))
    req = h.recv()
    assert req.socket == "pull" and req.seq == 0
    assert req.keys() == ["from", "id", "seq", "ext", "method", "uri", "headers", "credits",
                          "stream", "peer-address", "peer-port"]
    assert FROM_RE.fullmatch(req["from"])
    assert re.fullmatch(r"\d+-\d+-[0-9a-f]+", req.id)
    assert req["ext"] == [(b"multi", True)]
    assert (req["method"], req["uri"]) == (b"GET", b"http://example.com/path?x=1")
    assert req["headers"] == [[b"Host", b"example.com"], [b"User-Agent", b"t"],
                              [b"Accept", b"*/*"]]
    assert req["credits"] == 8192 and req["stream"] is True
    assert req["peer-address"] == b"127.0.0.1"
    assert req["peer-port"] == c.sock.getsockname()[1]
    h.reply(req, headers=[("Content-Type", "text/plain")], body=b"hello\n")
    assert c.read_response().raw == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                     b"Content-Length: 6\r\n\r\nhello\n")
    h.expect_nothing(SILENCE)  # no credit for a body that completed the response


def test_post_request_packet_and_body(srv):
    h, c = srv.handler, srv.conn()
    c.send(request("POST", "/up", [*HOST, ("Content-Length", "11")], b"hello world"))
    req = h.recv()
    assert req.keys() == ["from", "id", "seq", "ext", "method", "uri", "headers", "credits",
                          "more", "stream", "peer-address", "peer-port"]
    assert req["method"] == b"POST" and req["more"] is True and "body" not in req
    h.expect_nothing(SILENCE)  # no credits yet: no body
    h.credit(req, 4)
    part = h.recv()
    assert part.socket == "router" and part.seq == 1
    assert part.body == b"hell" and part["more"] is True
    h.credit(req, 1000)
    rest = h.recv()
    assert rest.seq == 2 and rest.body == b"o world" and "more" not in rest
    h.reply(req, body=b"got")
    resp = c.read_response()
    assert resp.body == b"got" and resp.header("Connection") is None
    srv.exchange(c, "/again")  # still persistent


def test_streamed_chunked_response_returns_credits(srv):
    h, c = srv.handler, srv.conn()
    req = srv.get(c, "/stream")
    h.reply(req, headers=[("Content-Type", "text/plain")], more=True)
    assert c.read_head() == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n")
    seq = 1
    for part in (b"x" * 8192, b"y" * 8192, b"z" * 100):
        # each full 8192-byte packet needs the credits of the previous one back
        h.body(req, part, more=True)
        assert c.read_exact(len(part) + len(b"%x\r\n\r\n" % len(part))) == (
            b"%x\r\n" % len(part) + part + b"\r\n")
        credit = h.recv()
        assert (credit.type, credit["credits"], credit.seq) == ("credit", len(part), seq)
        seq += 1
    h.body(req, b"end")
    assert c.read_exact(13) == b"3\r\nend\r\n0\r\n\r\n"
    h.expect_nothing(SILENCE)
    srv.exchange(c, "/after")


def test_http10_close_delimited_response(srv):
    h, c = srv.handler, srv.conn()
    c.send(b"GET /ten HTTP/1.0\r\n\r\n")
    req = h.recv()
    assert "headers" not in req and req["uri"] == b"http://localhost/ten"
    h.reply(req, headers=[("Content-Type", "text/plain")], more=True)
    assert c.read_head() == b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    h.body(req, b"a", more=True)
    assert c.read_exact(1) == b"a"
    assert h.recv()["credits"] == 1
    h.body(req, b"b")
    assert c.read_until_close() == b"b"


def test_handler_content_length_streamed(srv):
    h, c = srv.handler, srv.conn()
    req = srv.get(c, "/cl")
    h.reply(req, headers=[("Content-Length", "10"), ("Transfer-Encoding", "chunked")],
            body=b"01234", more=True)
    expected = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"
    assert c.read_exact(len(expected)) == expected
    assert h.recv()["credits"] == 5
    h.body(req, b"56789", more=True)
    assert c.read_exact(5) == b"56789"
    assert h.recv()["credits"] == 5
    h.body(req, b"")
    srv.exchange(c, "/next")


@pytest.mark.parametrize("version, conn_header, persistent, written", [
    ("HTTP/1.1", None, True, None),
    ("HTTP/1.1", "close", False, b"close"),
    ("HTTP/1.1", "Close", False, b"close"),  # case-insensitive (differences doc)
    ("HTTP/1.1", "keep-alive, CLOSE", False, b"close"),
    ("HTTP/1.0", None, False, None),
    ("HTTP/1.0", "keep-alive", True, b"keep-alive"),
    ("HTTP/1.0", "KEEP-ALIVE", True, b"keep-alive"),
    ("HTTP/1.0", "keep-alive, close", False, None),
])
def test_persistence(srv, version, conn_header, persistent, written):
    h, c = srv.handler, srv.conn()
    headers = HOST + ([("Connection", conn_header)] if conn_header else [])
    req = srv.get(c, "/p", headers, version=version)
    h.reply(req, headers=[("Content-Type", "text/plain"), ("Connection", "upgrade")], body=b"p")
    resp = c.read_response()
    assert resp.version == version.encode() and resp.body == b"p"
    expected = [(b"Content-Type", b"text/plain")]
    if written:
        expected.append((b"Connection", written))
    assert resp.headers == [*expected, (b"Content-Length", b"1")]
    if persistent:
        req2 = srv.get(c, "/p2", HOST, version=version)
        assert req2.id != req.id
        h.reply(req2, body=b"2")
        assert c.read_response().body == b"2"
    else:
        c.expect_closed()


def test_http10_keep_alive_streamed_unknown_length_closes(srv):
    h, c = srv.handler, srv.conn()
    req = srv.get(c, "/s", [*HOST, ("Connection", "keep-alive")], version="HTTP/1.0")
    h.reply(req, more=True)
    assert c.read_head() == b"HTTP/1.0 200 OK\r\n\r\n"
    h.body(req, b"data")
    assert c.read_until_close() == b"data"


def test_pipelining_three_requests(srv):
    h, c = srv.handler, srv.conn()
    c.send(request("GET", "/a", HOST) + request("POST", "/b", [*HOST, ("Content-Length", "3")],
                                                 b"xyz") + request("GET", "/c", HOST))
    a = h.recv()
    assert a["uri"] == b"http://example.com/a"
    h.expect_nothing(SILENCE)  # the next request waits for this response
    h.reply(a, body=b"A")
    b = h.recv()
    assert b["uri"] == b"http://example.com/b" and b["more"] is True
    h.credit(b, 100)
    assert h.recv().body == b"xyz"
    h.reply(b, body=b"B")
    cc = h.recv()
    assert cc["uri"] == b"http://example.com/c"
    h.reply(cc, body=b"C")
    ids = [a.id, b.id, cc.id]
    assert len(set(ids)) == 3 and {a.seq, b.seq, cc.seq} == {0}
    assert [c.read_response().body for _ in range(3)] == [b"A", b"B", b"C"]


@pytest.mark.parametrize("version, expect, interim", [
    ("HTTP/1.1", "100-continue", True),
    ("HTTP/1.1", "100-Continue", True),  # case-insensitive (differences doc)
    ("HTTP/1.0", "100-continue", False),
])
def test_expect_continue(srv, version, expect, interim):
    h, c = srv.handler, srv.conn()
    c.send(request("POST", "/e", [*HOST, ("Content-Length", "5"), ("Expect", expect)],
                   version=version))
    req = h.recv()
    c.expect_silence(SILENCE)  # nothing before the handler's first packet
    h.credit(req, 100)
    if interim:
        assert c.read_head() == b"HTTP/1.1 100 Continue\r\n\r\n"
    else:
        c.expect_silence(SILENCE)
    c.send(b"hello")
    assert h.recv().body == b"hello"
    h.reply(req, body=b"done")
    resp = c.read_response()
    assert resp.body == b"done" and resp.interim == []


def test_early_response_closes(srv):
    h, c = srv.handler, srv.conn()
    c.send(request("POST", "/big", [*HOST, ("Content-Length", "10")], b"12345"))
    req = h.recv()
    h.reply(req, code=413, reason="Too Large", body=b"nope\n")
    assert c.read_until_close() == (b"HTTP/1.1 413 Too Large\r\nConnection: close\r\n"
                                    b"Content-Length: 5\r\n\r\nnope\n")
    h.expect_nothing(SILENCE)  # no body, no cancel


def test_early_response_to_expect_continue_sends_no_100(srv):
    """RFC 9110 10.1.1: a final answer before the body is read needs no
    100 (Condure 1.9.1 writes ``100 Continue`` first)."""
    h, c = srv.handler, srv.conn()
    c.send(request("POST", "/big", [*HOST, ("Content-Length", "10"), ("Expect", "100-continue")]))
    req = h.recv()
    h.reply(req, code=413, reason="Too Large", body=b"nope\n")
    assert c.read_until_close() == (b"HTTP/1.1 413 Too Large\r\nConnection: close\r\n"
                                    b"Content-Length: 5\r\n\r\nnope\n")


def test_client_disconnect_mid_stream_sends_cancel(srv):
    h, c = srv.handler, srv.conn()
    req = srv.get(c, "/s")
    h.reply(req, more=True)
    c.read_head()
    c.close()
    cancel = h.recv()
    assert (cancel.type, cancel.seq, cancel.socket, cancel.id) == ("cancel", 1, "router", req.id)


def test_client_disconnect_during_request_body_sends_cancel(srv):
    h, c = srv.handler, srv.conn()
    c.send(request("POST", "/b", [*HOST, ("Content-Length", "100")], b"abc"))
    req = h.recv()
    h.credit(req, 1000)
    assert h.recv().body == b"abc"
    c.close()
    assert h.recv().type == "cancel"


def test_client_gone_before_handler_answer(srv):
    h, c = srv.handler, srv.conn()
    req = srv.get(c, "/gone")
    c.close()
    h.reply(req, body=b"late")
    cancel = h.recv()
    assert cancel.type == "cancel" and cancel.id == req.id


@pytest.mark.parametrize("kind", ["cancel", "error"])
@pytest.mark.parametrize("started", [True, False], ids=["mid-body", "before-response"])
def test_handler_ends_session(srv, kind, started):
    h, c = srv.handler, srv.conn()
    req = srv.get(c, "/s")
    if started:
        h.reply(req, more=True)
        c.read_head()
        h.body(req, b"abc", more=True)
        assert c.read_exact(8) == b"3\r\nabc\r\n"
        assert h.recv()["credits"] == 3
    if kind == "cancel":
        h.cancel(req)
    else:
        h.send(req, type="error", fields=[("condition", "bad-request")])
    assert c.read_until_close() == b""  # no (further) bytes: no final chunk
    h.expect_nothing(SILENCE)


def test_handler_keep_alive_accepted(srv):
    h, c = srv.handler, srv.conn()
    c.send(request("POST", "/k", [*HOST, ("Content-Length", "2")], b"hi"))
    req = h.recv()
    h.keep_alive(req)  # first packet: body reading starts, but no credits yet
    h.expect_nothing(SILENCE)
    h.keep_alive(req)
    h.credit(req, 10)  # seq 2: both keep-alives counted
    assert h.recv().body == b"hi"
    h.reply(req, more=True)
    c.read_head()
    h.keep_alive(req)
    h.body(req, b"")
    assert c.read_exact(5) == b"0\r\n\r\n"


def test_multi_id_packets(srv):
    h = srv.handler
    c1, c2 = srv.conn(), srv.conn()
    r1, r2 = srv.get(c1, "/1"), srv.get(c2, "/2")
    for r, c in ((r1, c1), (r2, c2)):
        h.reply(r, more=True)
        c.read_head()
    assert r1.sender == r2.sender
    entries = [{"id": r.id, "seq": h.next_seq(r.id)} for r in (r1, r2)]
    entries.append({"id": "0-999-0", "seq": 0})  # does not route: skipped
    h.send_fields([("from", h.identity), ("id", entries), ("body", b"shared"), ("more", True)],
                  address=r1.sender)
    for c in (c1, c2):
        assert c.read_exact(11) == b"6\r\nshared\r\n"
    credits = [h.recv(), h.recv()]
    assert sorted(p.id for p in credits) == sorted([r1.id, r2.id])
    assert all(p.type == "credit" and p["credits"] == 6 for p in credits)
    for r, c in ((r1, c1), (r2, c2)):
        h.body(r, b"")
        assert c.read_exact(5) == b"0\r\n\r\n"


def test_handoff(srv, make_handler):
    h = srv.handler
    h2 = make_handler(srv.condure, "handler2", pull=False)
    c = srv.conn()
    req = srv.get(c, "/h")
    h.reply(req, more=True)
    c.read_head()
    h.handoff_start(req)
    proceed = h.recv()
    assert (proceed.type, proceed.seq, proceed.socket) == ("handoff-proceed", 1, "router")
    h2.out_seq[req.id] = h.out_seq[req.id]
    h2.address[req.id] = h.address[req.id]
    h2.keep_alive(req.id)  # resumes, from now on the session answers handler2
    h2.body(req.id, b"two", more=True)
    assert c.read_exact(8) == b"3\r\ntwo\r\n"
    credit = h2.recv()
    assert (credit.type, credit.seq, credit["credits"]) == ("credit", 2, 3)
    h2.body(req.id, b"")
    assert c.read_exact(5) == b"0\r\n\r\n"
    h.expect_nothing(SILENCE)
    srv.exchange(c, "/next")


def test_head_response_has_no_body(srv):
    h, c = srv.handler, srv.conn()
    c.send(request("HEAD", "/h", HOST))
    req = h.recv()
    h.reply(req, headers=[("Content-Type", "text/plain")], body=b"hello")
    assert c.read_head() == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: 5\r\n\r\n")
    # A HEAD the handler answers with a stream that does not end (Pushpin
    # holding a GRIP stream): the exchange ends with the head, the handler
    # gets cancel, and the next request on the connection is served.
    c.send(request("HEAD", "/streamed", HOST))
    req = h.recv()
    h.reply(req, more=True, body=b"abc")
    head = c.read_head()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"chunked" not in head
    cancel = h.recv()
    assert (cancel.type, cancel.id) == ("cancel", req.id)
    h.body(req, b"de", more=True)  # too late: nothing of it reaches the client
    srv.exchange(c, "/after-head")  # no stray body bytes before this response


@pytest.mark.parametrize("code, reason", [(204, "No Content"), (304, "Not Modified")])
def test_no_body_status_drops_body(srv, code, reason):
    h, c = srv.handler, srv.conn()
    req = srv.get(c)
    h.reply(req, code=code, reason=reason, headers=[("X-A", "1")], body=b"hello")
    assert c.read_head() == f"HTTP/1.1 {code} {reason}\r\nX-A: 1\r\n\r\n".encode()
    srv.exchange(c, "/after")


def test_stream_maxconn_backlog(tmp_path):
    with flows.running(tmp_path, ["--stream-maxconn", "2"]) as server:
        h = server.handler
        c1, c2, c3 = server.conn(), server.conn(), server.conn()
        server.exchange(c1, "/1")
        server.exchange(c2, "/2")
        c3.send(request("GET", "/3", HOST))
        h.expect_nothing(SILENCE)  # c3 waits in the backlog
        c3.expect_silence(0.05)
        c1.close()
        req = h.recv()
        assert req["uri"] == b"http://example.com/3"
        h.reply(req, body=b"3")
        assert c3.read_response().body == b"3"
        server.exchange(c2, "/2-again")
        server.assert_healthy()


@pytest.fixture(scope="module")
def timeout_srv(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("stream-timeout"),
                       ["--stream-timeout", "1"]) as server:
        yield server


@pytest.fixture
def tsrv(timeout_srv):
    yield timeout_srv.begin()
    timeout_srv.end()


def test_stream_timeout_idle_response_cancels(tsrv):
    h, c = tsrv.handler, tsrv.conn()
    req = tsrv.get(c, "/idle")
    h.reply(req, more=True)
    c.read_head()
    start = time.monotonic()
    h.keep_alive(req)  # handler liveness does not count as client activity
    cancel = h.recv(timeout=4)
    assert cancel.type == "cancel" and cancel.id == req.id  # as Condure 1.10
    assert c.read_until_close(timeout=3) == b""
    assert 0.6 < time.monotonic() - start < 3.0


def test_stream_timeout_idle_connection(tsrv):
    c = tsrv.conn()
    start = time.monotonic()
    assert c.read_until_close(timeout=4) == b""
    assert 0.6 < time.monotonic() - start < 3.0
    tsrv.handler.expect_nothing(0.1)


def test_stream_timeout_refreshed_by_writes(tsrv):
    h, c = tsrv.handler, tsrv.conn()
    req = tsrv.get(c, "/slow")
    h.reply(req, more=True)
    c.read_head()
    start = time.monotonic()
    while time.monotonic() - start < 2.2:  # twice the timeout, in steps of 0.4 s
        c.expect_silence(0.4)
        h.body(req, b"z", more=True)
        assert c.read_exact(6) == b"1\r\nz\r\n"
        assert h.recv().type == "credit"
    h.body(req, b"")
    assert c.read_exact(5) == b"0\r\n\r\n"
