"""Req mode, differential: our condure against Debian's condure 1.9.1.

Each scenario drives raw HTTP clients and a ROUTER req handler; the packets
condure sends on its DEALER (normalised: ids, peer port; the DEALER's
identity, chosen by libzmq, is not compared) and
the bytes each client receives must be the same for both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import reference_available
from tests.harness import procs
from tests.harness.http_client import Conn, connect, request
from tests.harness.normalize import Normalizer, describe
from tests.harness.req_handler import ReqHandlerClient, start_req_condure, start_req_handler

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(not reference_available(), reason=f"{procs.REFERENCE_BIN} missing"),
]

HOST = [("Host", "example.com")]


class Ctx:
    def __init__(self, condure: procs.CondureProcess, handler: ReqHandlerClient,
                 stack: contextlib.ExitStack) -> None:
        self.condure = condure
        self.h = handler
        self.stack = stack
        self.conns: list[Conn] = []

    def conn(self) -> Conn:
        c = connect(self.condure.port)
        self.conns.append(c)
        self.stack.callback(c.close)
        return c

    def answer(self, body: bytes = b"hello world\n", **kw) -> None:
        req = self.h.recv(5.0)
        assert req.socket == "req", req
        self.h.req_reply(req, headers=[("Content-Type", "text/plain")], body=body, **kw)


def s_get(ctx: Ctx) -> None:
    c = ctx.conn()
    c.send(b"GET /hello?x=y HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n")
    ctx.answer()
    c.read_response()


def s_post_body(ctx: Ctx) -> None:
    c = ctx.conn()
    c.send(request("POST", "/p", [*HOST, ("Content-Length", "11")], b"hello there"))
    ctx.answer(b"created\n", code=201, reason="Created")
    c.read_response()


def s_chunked(ctx: Ctx) -> None:
    c = ctx.conn()
    c.send(request("POST", "/c", [*HOST, ("Transfer-Encoding", "chunked")]))
    c.send(b"5\r\nhello\r\n")
    c.send(b"6\r\n world\r\n0\r\n\r\n")
    ctx.answer(b"ok\n")
    c.read_response()


def s_http10_no_headers(ctx: Ctx) -> None:
    c = ctx.conn()
    c.send(b"GET /ten HTTP/1.0\r\n\r\n")
    ctx.answer(b"ten\n")
    c.read_until_close()


def s_keep_alive(ctx: Ctx) -> None:
    c = ctx.conn()
    c.send(request("GET", "/one", HOST))
    ctx.answer(b"one\n")
    c.read_response()
    c.send(request("POST", "/two", [*HOST, ("Content-Length", "3")], b"abc"))
    ctx.answer(b"two\n", extra=[("more", True)])
    c.read_response()
    c.send(request("GET", "/three", [("Host", "example.com"), ("Connection", "close")]))
    ctx.answer(b"three\n")
    c.read_response()
    c.read_until_close()


def s_http10_keep_alive(ctx: Ctx) -> None:
    c = ctx.conn()
    c.send(request("GET", "/a", [*HOST, ("Connection", "keep-alive")], version="HTTP/1.0"))
    ctx.answer(b"a\n")
    c.read_response()
    c.send(request("GET", "/b", HOST, version="HTTP/1.0"))
    ctx.answer(b"b\n")
    c.read_until_close()


def s_pipelining(ctx: Ctx) -> None:
    c = ctx.conn()
    c.send(request("GET", "/1", HOST)
           + request("POST", "/2", [*HOST, ("Content-Length", "4")], b"body")
           + request("GET", "/3", HOST))
    for i in range(3):
        ctx.answer(b"r%d\n" % i)
        c.read_response()


def s_expect_continue(ctx: Ctx) -> None:
    c = ctx.conn()
    c.send(request("PUT", "/e", [*HOST, ("Content-Length", "5"), ("Expect", "100-continue")]))
    assert c.read_head() == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"hello")
    ctx.answer(b"put\n")
    c.read_response()


def s_response_headers(ctx: Ctx) -> None:
    c = ctx.conn()
    c.send(request("GET", "/h", HOST))
    req = ctx.h.recv(5.0)
    ctx.h.req_reply(req, headers=[("X-A", "1"), ("Content-Length", "999"),
                                  ("Transfer-Encoding", "chunked"), ("Connection", "x"),
                                  ("X-B", "2")], body=b"framed\n")
    c.read_response()


SCENARIOS: dict[str, Callable[[Ctx], None]] = {
    "get": s_get,
    "post_body": s_post_body,
    "chunked": s_chunked,
    "http10_no_headers": s_http10_no_headers,
    "keep_alive": s_keep_alive,
    "http10_keep_alive": s_http10_keep_alive,
    "pipelining": s_pipelining,
    "expect_continue": s_expect_continue,
    "response_headers": s_response_headers,
}

_reference: dict[str, dict] = {}


def run(impl: str, name: str, workdir: Path) -> dict:
    with contextlib.ExitStack() as stack:
        workers = 1 if impl == "reference" else None
        condure = start_req_condure(impl, workdir, workers=workers)
        stack.callback(condure.stop)
        handler = start_req_handler(condure, workdir, kind="router")
        stack.callback(handler.close)
        ctx = Ctx(condure, handler, stack)
        try:
            SCENARIOS[name](ctx)
        except Exception as e:
            condure.stop()
            raise AssertionError(f"{impl}: scenario {name} failed: {e}\n"
                                 f"--- condure output ---\n{condure.pump.tail(40)}") from e
        for c in ctx.conns:
            c.close()
        norm = Normalizer()
        packets = [(p.socket, norm.packet(p.raw)) for p in handler.received]
        http = [(c.received, "open" if c.end is None else "closed") for c in ctx.conns]
        return {"packets": packets, "http": http, "status": condure.stop()}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_req_scenario(name: str, tmp_path: Path) -> None:
    expected = run("reference", name, tmp_path / "reference")
    got = run("ours", name, tmp_path / "ours")
    assert expected["packets"] and expected["http"][0][0], "the reference saw no traffic"
    assert got["packets"] == expected["packets"], (
        f"req packets differ\n--- reference ---\n{describe(expected['packets'])}\n"
        f"--- ours ---\n{describe(got['packets'])}")
    assert got["http"] == expected["http"], (
        f"HTTP bytes differ\nreference: {expected['http']!r}\nours:      {got['http']!r}")
    assert got["status"] == expected["status"] == 0
