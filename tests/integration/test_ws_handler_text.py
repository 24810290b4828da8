"""A handler's WebSocket text that is not UTF-8, through a real condure, a
real handler process (tests/handlers/scripted_handler.py) and real clients
(raw frames, and the ``websockets`` library, which checks text as browsers
do). RFC 6455 5.6 and 8.1 forbid sending it; Condure writes it, and the
client fails the connection with 1007, blaming itself. condure writes none
of it: the client gets close 1011, the handler ``cancel``, the operator a
warning, and the worker goes on serving (docs/differences-from-condure.md).
Valid text split across packets at any byte passes unchanged."""

from __future__ import annotations

import contextlib
import time

import pytest
from websockets.exceptions import ConnectionClosed

from tests.harness import flows
from tests.harness import ws_client as wc
from tests.harness import ws_scenarios as W
from tests.harness.ws_scenarios import (
    accept,
    expect_cancel,
    expect_packet,
    message,
    quiet,
    recv,
)

TEXT = "café ☃ 𝄞 ü".encode()  # 2-, 3- and 4-byte characters


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("ws-handler-text")) as server:
        yield server


@pytest.fixture
def srv(plain):
    yield plain.begin()
    plain.end()


@pytest.fixture(scope="module")
def deflating(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("ws-handler-text-deflate"),
                       ["--compression"]) as server:
        yield server


@pytest.fixture
def dsrv(deflating):
    yield deflating.begin()
    deflating.end()


def ws(server: flows.Server, path: str = "/ws", **kw) -> wc.WsConn:
    conn = wc.WsConn.open(server.port, path, **kw)
    server.conns.append(conn)
    return conn


def wait_for_line(server: flows.Server, text: str, timeout: float = 5.0) -> list[str]:
    """The log lines holding ``text``, once there is one."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in server.condure.output().splitlines() if text in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def handler_fails_it(h, req) -> None:
    """The handler gets ``cancel`` for the session (after the credits for
    what was written before, if any), and nothing more."""
    while (p := recv(h)).type == "credit":
        assert p.id == req.id, p
    assert (p.type, p.id) == ("cancel", req.id), p
    quiet(h)


def next_connection_served(server: flows.Server) -> None:
    """A fresh WebSocket exchanges text both ways, then a fresh HTTP request."""
    h = server.handler
    c = ws(server, "/next")
    req, _ = accept(h, c)
    message(h, req, TEXT)
    assert c.read_message()[:2] == (wc.OP_TEXT, TEXT)
    expect_packet(h, "credit", credits=len(TEXT))
    c.send_text(TEXT)
    expect_packet(h, body=TEXT)
    server.probe()


def test_invalid_text_is_a_handler_fault(tmp_path):
    # A condure of its own, so that the (throttled) warning is this test's.
    with flows.running(tmp_path) as server:
        srv = server.begin()
        h, c = srv.handler, ws(srv)
        req, _ = accept(h, c)
        message(h, req, b"ok \xff\xfe")
        frame = c.read_frame()
        assert frame.opcode == wc.OP_CLOSE and frame.close_code_reason() == (1011, b""), frame
        c.send_close(1011)
        assert c.read_until_close() == b""
        handler_fails_it(h, req)
        lines = wait_for_line(srv, "broke a rule")
        assert len(lines) == 1 and "[WARN]" in lines[0] and "not UTF-8" in lines[0], lines
        next_connection_served(srv)
        server.end()


# (packet bodies of one text message, whether a valid beginning of it is
# written before the close)
BAD = {
    "whole": ([b"ok \xff\xfe"], False),
    "cut-at-the-end": ([b"caf\xc3"], False),
    "surrogate": ([b"\xed\xa0\x80"], False),
    "invalid-only-together": ([b"caf\xc3", b"("], True),
    "cut-across-packets": ([b"one ", b"two \xe2\x82", b""], True),
    "surrogate-at-a-packet-end": ([b"ab\xed\xa0", b"\x80"], False),  # fails at once
}


def send_packets(h, req, bodies: list[bytes]) -> None:
    for i, body in enumerate(bodies):
        message(h, req, body, more=i < len(bodies) - 1)


@pytest.mark.parametrize("name", list(BAD))
def test_library_client_gets_1011_not_invalid_text(srv, name):
    check_library_client(srv, *BAD[name], compression=None)


@pytest.mark.parametrize("name", ["whole", "invalid-only-together", "cut-across-packets"])
def test_compressed_session_gets_1011_not_invalid_text(dsrv, name):
    check_library_client(dsrv, *BAD[name], compression="deflate")


def check_library_client(server: flows.Server, bodies: list[bytes], begun: bool,
                         compression) -> None:
    """The ``websockets`` client, which fails the connection with 1007 on
    text that is not UTF-8, gets close 1011 and answers it: with 1011, or,
    when a beginning of the message came before, with 1002 (that library
    takes a close frame inside a fragmented message for a protocol error,
    although RFC 6455 5.4 allows control frames there)."""
    h = server.handler
    conn, req = W.lib_open(h, server.port, compression=compression)
    with contextlib.ExitStack() as stack:
        stack.callback(W.lib_closer(conn))
        if compression:
            assert "permessage-deflate" in (conn.response.headers.get(
                "Sec-WebSocket-Extensions") or ""), conn.response.headers
        send_packets(h, req, bodies)
        with pytest.raises(ConnectionClosed) as info:
            conn.recv(5)
        closed = info.value
        assert closed.rcvd is not None and closed.rcvd.code == 1011, closed
        assert closed.sent is not None, closed
        if begun:
            assert (closed.sent.code, closed.sent.reason) == (
                1002, "incomplete fragmented message"), closed
        else:
            assert closed.sent.code == 1011, closed
        handler_fails_it(h, req)
    next_connection_served(server)


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_valid_text_split_at_every_byte_passes(request, compression):
    server = request.getfixturevalue("dsrv" if compression else "srv")
    h = server.handler
    conn, req = W.lib_open(h, server.port, compression=compression)
    with contextlib.ExitStack() as stack:
        stack.callback(W.lib_closer(conn))
        splits = [[TEXT[:i], TEXT[i:]] for i in range(len(TEXT) + 1)]
        splits.append([TEXT[i:i + 1] for i in range(len(TEXT))])
        for bodies in splits:
            send_packets(h, req, bodies)
            assert conn.recv(5) == TEXT.decode(), bodies
        while (p := h.recv_or_none(W.SILENCE)) is not None:  # credits only
            assert p.type in ("credit", "keep-alive"), p
    expect_cancel(h)  # (the client went away without a close)


def test_raw_client_sees_a_valid_beginning_then_the_close(srv):
    h, c = srv.handler, ws(srv)
    req, _ = accept(h, c)
    message(h, req, b"caf\xc3", more=True)
    first = c.read_frame()
    assert (first.opcode, first.fin, first.payload) == (wc.OP_TEXT, False, b"caf\xc3")
    message(h, req, b"(")
    frame = c.read_frame()
    assert frame.opcode == wc.OP_CLOSE and frame.close_code_reason() == (1011, b""), frame
    handler_fails_it(h, req)
    next_connection_served(srv)


def test_close_reason_not_utf8_never_reaches_the_client(srv):
    """A close packet whose reason is not UTF-8 is not valid ZHTTP: dropped
    as in Condure (and logged, docs/differences-from-condure.md); the same
    seq with a valid reason is taken."""
    h, c = srv.handler, ws(srv)
    req, _ = accept(h, c)
    W.close(h, req, 4000, b"bad \xff", seq=1)
    c.expect_silence(W.SILENCE)
    W.close(h, req, 4000, "fine", seq=1)
    frame = c.read_frame()
    assert frame.close_code_reason() == (4000, b"fine"), frame
    c.send_close(4000)
    expect_packet(h, "close", code=4000)
    assert c.read_until_close() == b""
    next_connection_served(srv)
