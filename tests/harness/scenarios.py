"""Scenarios for the differential test (tests/integration/test_differential.py).

Each scenario gets a ``Ctx`` with a running condure, starts its handlers and
HTTP connections through it, drives them step by step and asserts the
documented behaviour (so it already passes against the reference). What the
handlers received and what the clients received is recorded by the harness
objects themselves and compared afterwards.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tests.harness import procs
from tests.harness.handler_client import HandlerClient, Pkt
from tests.harness.http_client import Conn, connect, request

HOST = [("Host", "example.com")]
SILENCE = 0.3  # how long "nothing happens" is watched


class Ctx:
    def __init__(self, impl: str, condure: procs.CondureProcess, workdir: Path,
                 stack: contextlib.ExitStack) -> None:
        self.impl = impl
        self.condure = condure
        self.workdir = workdir
        self.stack = stack
        self.handlers: list[HandlerClient] = []
        self.conns: list[Conn] = []

    def handler(self, identity: str = "handler1", pull: bool = True) -> HandlerClient:
        # With --zclient-connect condure connects: the handler binds.
        bind = self.impl.endswith("-connect")
        h = procs.start_handler(self.condure.base, self.workdir, identity=identity, pull=pull,
                                bind=bind,
                                sub_prefix=self.condure.instance_id,
                                name=f"h{len(self.handlers)}-{identity}")
        self.stack.callback(h.close)
        self.handlers.append(h)
        return h

    def conn(self) -> Conn:
        c = connect(self.condure.port)
        self.stack.callback(c.close)
        self.conns.append(c)
        return c

    @staticmethod
    def recv_unordered(h: HandlerClient, n: int) -> list[Pkt]:
        """Receive ``n`` packets whose relative order is not significant.

        They are recorded ordered by when their session first appeared.
        """
        first_seen: dict[str, int] = {}
        for i, p in enumerate(h.received):
            first_seen.setdefault(p.id, i)
        got = [h.recv() for _ in range(n)]
        del h.received[-n:]
        got.sort(key=lambda p: first_seen.get(p.id, len(first_seen)))
        h.received.extend(got)
        return got


def _get(c: Conn, path: str = "/", headers=HOST, version: str = "HTTP/1.1") -> None:
    c.send(request("GET", path, headers, version=version))


def simple_get(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    _get(c, "/path", [*HOST, ("User-Agent", "t"), ("Accept", "*/*")])
    req = h.recv()
    assert req.socket == "pull" and req.seq == 0
    assert req.keys() == ["from", "id", "seq", "ext", "method", "uri", "headers", "credits",
                          "stream", "peer-address", "peer-port"]
    assert req["uri"] == b"http://example.com/path"
    h.reply(req, headers=[("Content-Type", "text/plain"), ("X-Foo", "bar")], body=b"hello world\n")
    resp = c.read_response()
    assert resp.raw == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Foo: bar\r\n"
                        b"Content-Length: 12\r\n\r\nhello world\n")
    h.expect_nothing(SILENCE)


def get_query(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    _get(c, "/search?q=a%20b&x=1&y", [("Host", "example.com:8080")])
    req = h.recv()
    assert req["uri"] == b"http://example.com:8080/search?q=a%20b&x=1&y"
    h.reply(req, body=b"q")
    assert c.read_response().body == b"q"


def http10_no_headers(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    c.send(b"GET /ten HTTP/1.0\r\n\r\n")
    req = h.recv()
    assert "headers" not in req and req["uri"] == b"http://localhost/ten"
    h.reply(req, headers=[("Content-Type", "text/plain")], body=b"ten\n")
    assert c.read_until_close() == (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                                    b"Content-Length: 4\r\n\r\nten\n")


def post_credits_two_steps(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    body = b"abcdefghijklmnopqrst"
    c.send(request("POST", "/upload", [*HOST, ("Content-Length", "20")], body))
    req = h.recv()
    assert req["more"] is True and "body" not in req
    h.expect_nothing(SILENCE)  # no credits, no body
    h.credit(req, 5)
    part = h.recv()
    assert part.socket == "router" and part.body == body[:5] and part["more"] is True
    h.expect_nothing(SILENCE)
    h.credit(req, 100)
    rest = h.recv()
    assert rest.body == body[5:] and "more" not in rest
    h.reply(req, headers=[("Content-Type", "text/plain")], body=b"got it\n")
    resp = c.read_response()
    assert resp.body == b"got it\n" and resp.header("Connection") is None


def chunked_request_body(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    c.send(request("POST", "/chunked", [*HOST, ("Transfer-Encoding", "chunked")],
                   b"5\r\nhello\r\n6\r\n world\r\n"))
    req = h.recv()
    assert req["more"] is True
    h.credit(req, 65536)
    got = b""
    while len(got) < 11:
        p = h.recv()
        assert p["more"] is True
        got += p.body
    assert got == b"hello world"
    c.send(b"0\r\n\r\n")
    last = h.recv()
    assert "body" not in last and "more" not in last
    h.reply(req, body=b"ok")
    assert c.read_response().body == b"ok"


def streamed_response_more(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    _get(c, "/stream")
    req = h.recv()
    h.reply(req, headers=[("Content-Type", "text/plain")], more=True)
    assert c.read_head() == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n")
    for i, part in enumerate([b"part one\n", b"part two\n"]):
        h.body(req, part, more=True)
        assert c.read_exact(len(part) + 5) == b"9\r\n" + part + b"\r\n"
        credit = h.recv()
        assert credit.type == "credit" and credit["credits"] == 9 and credit.seq == i + 1, credit
    h.body(req, b"last\n")
    assert c.read_exact(15) == b"5\r\nlast\n\r\n0\r\n\r\n"
    h.expect_nothing(SILENCE)


def streamed_content_length(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    _get(c, "/cl")
    req = h.recv()
    h.reply(req, headers=[("Content-Length", "10")], body=b"01234", more=True)
    assert c.read_exact(43) == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123"
    assert c.read_exact(1) == b"4"
    assert h.recv()["credits"] == 5
    h.body(req, b"56789", more=True)
    assert c.read_exact(5) == b"56789"
    assert h.recv()["credits"] == 5
    h.body(req, b"")
    _get(c, "/again")
    req2 = h.recv()
    assert req2.id != req.id and req2.socket == "pull"
    h.reply(req2, body=b"again")
    assert c.read_response().body == b"again"


def keep_alive_two_requests(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    ids = []
    for path in ("/one", "/two"):
        _get(c, path)
        req = h.recv()
        ids.append(req.id)
        h.reply(req, body=path.encode())
        assert c.read_response().body == path.encode()
    assert ids[0] != ids[1]


def pipelined(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    c.send(request("GET", "/a", HOST) + request("GET", "/b", HOST))
    first = h.recv()
    assert first["uri"].endswith(b"/a")
    h.reply(first, body=b"A")
    assert c.read_response().body == b"A"
    second = h.recv()
    assert second["uri"].endswith(b"/b") and second.id != first.id
    h.reply(second, body=b"B")
    assert c.read_response().body == b"B"


def expect_continue(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    c.send(request("POST", "/e", [*HOST, ("Content-Length", "5"), ("Expect", "100-continue")]))
    req = h.recv()
    c.expect_silence(SILENCE)
    h.credit(req, 100)
    assert c.read_head() == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"hello")
    body = h.recv()
    assert body.body == b"hello" and "more" not in body
    h.reply(req, body=b"done")
    assert c.read_response().body == b"done"


def early_response(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    c.send(request("POST", "/big", [*HOST, ("Content-Length", "10")], b"12345"))
    req = h.recv()
    h.reply(req, code=413, reason="Too Large", headers=[("Content-Type", "text/plain")],
            body=b"nope\n")
    assert c.read_until_close() == (b"HTTP/1.1 413 Too Large\r\nContent-Type: text/plain\r\n"
                                    b"Connection: close\r\nContent-Length: 5\r\n\r\nnope\n")
    h.expect_nothing(SILENCE)


def handler_cancel_mid_response(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    _get(c, "/s")
    req = h.recv()
    h.reply(req, more=True)
    c.read_head()
    h.body(req, b"abc", more=True)
    assert c.read_exact(8) == b"3\r\nabc\r\n"
    assert h.recv()["credits"] == 3
    h.cancel(req)
    assert c.read_until_close() == b""
    h.expect_nothing(SILENCE)


def client_disconnect_mid_stream(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    _get(c, "/s")
    req = h.recv()
    h.reply(req, more=True)
    c.read_head()
    c.close()
    cancel = h.recv()
    assert cancel.type == "cancel" and cancel.seq == 1 and cancel.socket == "router"


def multi_id_data(ctx: Ctx) -> None:
    h = ctx.handler()
    c1, c2 = ctx.conn(), ctx.conn()
    _get(c1, "/1")
    r1 = h.recv()
    _get(c2, "/2")
    r2 = h.recv()
    for r, c in ((r1, c1), (r2, c2)):
        h.reply(r, more=True)
        c.read_head()
    # one packet per condure address (all sessions share one with one worker)
    groups: dict[str, list[Pkt]] = {}
    for r in (r1, r2):
        groups.setdefault(r.sender, []).append(r)
    for address, reqs in groups.items():
        entries = [{"id": r.id, "seq": h.next_seq(r.id)} for r in reqs]
        h.send_fields([("from", h.identity), ("id", entries), ("body", b"shared"), ("more", True)],
                      address=address)
    for c in (c1, c2):
        assert c.read_exact(11) == b"6\r\nshared\r\n"
    credits = ctx.recv_unordered(h, 2)
    assert sorted(p.id for p in credits) == sorted([r1.id, r2.id])
    assert all(p["credits"] == 6 for p in credits)
    for r, c in ((r1, c1), (r2, c2)):
        h.body(r, b"")
        assert c.read_exact(5) == b"0\r\n\r\n"


def handoff(ctx: Ctx) -> None:
    h = ctx.handler()
    h2 = ctx.handler("handler2", pull=False)
    c = ctx.conn()
    _get(c, "/h")
    req = h.recv()
    h.reply(req, more=True)
    c.read_head()
    h.handoff_start(req)
    proceed = h.recv()
    assert proceed.type == "handoff-proceed" and proceed.seq == 1
    h2.out_seq[req.id] = h.out_seq[req.id]
    h2.address[req.id] = h.address[req.id]
    h2.keep_alive(req.id)
    h2.body(req.id, b"two", more=True)
    assert c.read_exact(8) == b"3\r\ntwo\r\n"
    credit = h2.recv()
    assert credit.type == "credit" and credit.seq == 2
    h2.body(req.id, b"")
    assert c.read_exact(5) == b"0\r\n\r\n"
    h.expect_nothing(SILENCE)
    _get(c, "/next")
    nxt = h.recv()
    h.reply(nxt, body=b"n")
    assert c.read_response().body == b"n"


def wrong_seq(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    _get(c)
    req = h.recv()
    h.reply(req, body=b"x", seq=5)
    assert c.read_until_close() == b""
    h.expect_nothing(SILENCE)


def unknown_id(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    _get(c)
    req = h.recv()
    for bogus in ("9-9-9", "abc"):
        h.reply(bogus, body=b"wrong", address=req.sender)
    c.expect_silence(SILENCE)
    h.reply(req, body=b"right")
    assert c.read_response().body == b"right"


def type_data(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    _get(c)
    req = h.recv()
    h.send(req, type="data", fields=[("code", 200), ("reason", "OK"), ("body", b"x")])
    assert c.read_until_close() == b""
    h.expect_nothing(SILENCE)


def no_content_with_body(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    _get(c)
    req = h.recv()
    h.reply(req, code=204, reason="No Content", headers=[("X-A", "1")], body=b"hello")
    assert c.read_head() == b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
    _get(c, "/after")
    req2 = h.recv()
    h.reply(req2, body=b"after")
    assert c.read_response().body == b"after"


def empty_post_after_credit(ctx: Ctx) -> None:
    h, c = ctx.handler(), ctx.conn()
    c.send(request("POST", "/empty", [*HOST, ("Content-Length", "0")]))
    req = h.recv()
    h.credit(req, 1000)
    end = h.recv()
    assert "body" not in end and "more" not in end
    h.reply(req, body=b"ok")
    resp = c.read_response()
    assert resp.body == b"ok" and resp.header("Connection") is None
    _get(c, "/still-open")
    h.reply(h.recv(), body=b"yes")
    assert c.read_response().body == b"yes"


SCENARIOS = {
    f.__name__: f
    for f in (
        simple_get, get_query, http10_no_headers, post_credits_two_steps, chunked_request_body,
        streamed_response_more, streamed_content_length, keep_alive_two_requests, pipelined,
        expect_continue, early_response, handler_cancel_mid_response,
        client_disconnect_mid_stream, multi_id_data, handoff, wrong_seq, unknown_id, type_data,
        no_content_with_body, empty_post_after_credit,
    )
}

# Scenarios with a second handler process: in connect mode both would have
# to bind the same endpoints.
TWO_HANDLERS = frozenset({"handoff"})
