"""WebSocket sessions through our condure, with hand-made frames
(tests/harness/ws_client.py), the ``websockets`` library client and the
scripted handler: accept, messages both ways, fragmentation, ping/pong relay,
closing both ways, cancel, rejection, credits, and permessage-deflate with
``--compression``. One condure without and one with compression are shared
by the tests of this module.

``CONDURE_FLOWS_IMPL=reference`` runs them against Debian's condure (tests
of documented differences are skipped there).
"""

from __future__ import annotations

import contextlib
import os
import zlib

import pytest
from websockets.exceptions import ConnectionClosed

from tests.harness import flows
from tests.harness import ws_client as wc
from tests.harness import ws_scenarios as W
from tests.harness.ws_scenarios import accept, expect_packet, message, quiet, recv

IMPL = os.environ.get("CONDURE_FLOWS_IMPL", "ours")
ours_only = pytest.mark.skipif(IMPL != "ours", reason="documented difference from Condure")


class SharedCtx:
    """Lets the differential scenarios run on a shared server."""

    def __init__(self, server: flows.Server, stack: contextlib.ExitStack) -> None:
        self.condure = server.condure
        self.impl = IMPL
        self.stack = stack
        self.conns = server.conns
        self._handler = server.handler

    def handler(self, identity: str = "handler1", pull: bool = True):
        return self._handler


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("ws")) as server:
        yield server


@pytest.fixture(scope="module")
def compressing(tmp_path_factory):
    # Condure's answers (ours adds client_no_context_takeover by default)
    keep = ["--compression-context", "keep"] if IMPL == "ours" else []
    with flows.running(tmp_path_factory.mktemp("ws-deflate"), ["--compression", *keep]) as server:
        yield server


@pytest.fixture
def srv(plain):
    yield plain.begin()
    plain.end()


@pytest.fixture
def csrv(compressing):
    yield compressing.begin()
    compressing.end()


@pytest.fixture
def lib_stack():
    """Library connections registered here are dropped at teardown."""
    with contextlib.ExitStack() as stack:
        yield stack


def ws(server: flows.Server, path: str = "/ws", **kw) -> wc.WsConn:
    conn = wc.WsConn.open(server.port, path, **kw)
    server.conns.append(conn)
    return conn


# -- the differential scenarios, on the shared servers ------------------------

PLAIN_SCENARIOS = [n for n, (_, extra) in W.SCENARIOS.items() if not extra]
DEFLATE_SCENARIOS = [n for n, (_, extra) in W.SCENARIOS.items() if extra]


@pytest.mark.parametrize("name", PLAIN_SCENARIOS)
def test_scenario(srv, name):
    with contextlib.ExitStack() as stack:
        W.SCENARIOS[name][0](SharedCtx(srv, stack))
    srv.handler.begin()  # late cancels of the scenario's sessions are not for the probe
    srv.probe()


@pytest.mark.parametrize("name", DEFLATE_SCENARIOS)
def test_compression_scenario(csrv, name):
    with contextlib.ExitStack() as stack:
        W.SCENARIOS[name][0](SharedCtx(csrv, stack))
    csrv.handler.begin()
    csrv.probe()


# -- raw clients ------------------------------------------------------------

def test_accept_key_and_head(srv):
    key = "x3JJHMbDL1EzLkh9GBhXDw=="
    c = ws(srv, "/k", key=key, host="h.example:81")
    req, resp = accept(srv.handler, c, headers=[("X-A", "1")])
    assert req["uri"] == b"ws://h.example:81/k"
    assert resp.raw == (b"HTTP/1.1 101 Switching Protocols\r\nX-A: 1\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                        + wc.accept_key(key).encode() + b"\r\n\r\n")
    assert "more" not in req and "stream" not in req and req["credits"] == 8192


def test_accept_without_credits_means_buffer_size(srv):
    h, c = srv.handler, ws(srv)
    req, _ = accept(h, c)  # no credits field
    data = bytes(range(256)) * 36  # 9216 bytes
    c.send_binary(data)
    got = b""
    while len(got) < 8192:  # as bytes arrive, up to the assumed 8192 credits
        got += expect_packet(h, content_type=b"binary", more=True).body
    assert got == data[:8192]
    quiet(h)
    h.credit(req, 5000)
    assert read_message_packets(h, b"binary") == data[8192:]


def test_zero_credits_reads_nothing(srv):
    h, c = srv.handler, ws(srv)
    req, _ = accept(h, c, credits=3)
    c.send_text("abc")
    expect_packet(h, body=b"abc")
    c.send_close(1000, "x")  # no credits left: not read
    quiet(h)
    h.credit(req, 10)
    expect_packet(h, "close", code=1000, body=b"x")


def test_large_handler_message_uses_extended_lengths(srv):
    h, c = srv.handler, ws(srv)
    req, _ = accept(h, c)
    body = b"z" * 8000
    message(h, req, body, binary=True)
    f = c.read_frame()
    assert f.raw[:4] == b"\x82\x7e\x1f\x40" and f.payload == body and not f.masked
    assert expect_packet(h, "credit")["credits"] == 8000


def read_message_packets(h, content_type: bytes, limit: int = 8192) -> bytes:
    """Concatenated bodies of packets up to the one without ``more``."""
    got = b""
    while True:
        p = expect_packet(h, content_type=content_type)
        assert len(p.body) <= limit, p
        got += p.body
        if "more" not in p:
            return got


def test_large_client_frame_64bit_length(srv):
    h, c = srv.handler, ws(srv)
    accept(h, c, credits=100000)
    data = b"q" * 70000
    c.send(wc.build_frame(wc.OP_BINARY, data))  # 127: 64-bit length
    assert read_message_packets(h, b"binary") == data


def test_interleaved_ping_in_fragmented_message(srv):
    """RFC 6455 5.4: control frames may come between fragments."""
    if IMPL != "ours":
        pytest.skip("Condure 1.9.1 cancels the session here")
    h, c = srv.handler, ws(srv)
    accept(h, c)
    c.send_text("frag", fin=False)
    expect_packet(h, body=b"frag", more=True)
    c.send_frame(wc.OP_PING, b"in")
    expect_packet(h, "ping", body=b"in")
    c.send_frame(wc.OP_CONT, b"ment")
    expect_packet(h, content_type=b"text", body=b"ment", more=None)


def test_handler_binary_fragmented_message(srv):
    h, c = srv.handler, ws(srv)
    req, _ = accept(h, c)
    message(h, req, b"ab", binary=True, more=True)
    message(h, req, b"cd", binary=True, more=True)
    message(h, req, b"ef", binary=True)
    op, payload, frames = c.read_message()
    assert (op, payload) == (wc.OP_BINARY, b"abcdef")
    assert frames[0].opcode == wc.OP_BINARY and not frames[0].fin
    assert all(f.opcode == wc.OP_CONT for f in frames[1:]) and frames[-1].fin


def test_two_sessions_independent(srv):
    h = srv.handler
    a, b = ws(srv, "/a"), None
    ra, _ = accept(h, a)
    b = ws(srv, "/b")
    rb, _ = accept(h, b)
    assert ra.id != rb.id
    message(h, rb, b"to-b")
    assert b.read_frame().payload == b"to-b"
    assert expect_packet(h, "credit", credits=4).id == rb.id
    message(h, ra, b"to-a!")
    assert a.read_frame().payload == b"to-a!"
    assert expect_packet(h, "credit", credits=5).id == ra.id
    a.close()
    cancel = W.expect_cancel(h)
    assert cancel.id == ra.id
    b.send_text("still here")
    assert expect_packet(h, body=b"still here").id == rb.id


def test_client_gone_before_accept(srv):
    h, c = srv.handler, ws(srv)
    req = recv(h)
    c.close()
    h.reply(req, code=101, reason=W.SWITCHING)
    W.expect_cancel(h)


# -- the websockets library client --------------------------------------------

def test_library_messages_both_ways(srv, lib_stack):
    h = srv.handler
    conn, req = W.lib_open(h, srv.port, "/lib?x=1")
    lib_stack.callback(W.lib_closer(conn))
    assert req["uri"] == b"ws://127.0.0.1:%d/lib?x=1" % srv.port
    conn.send("héllo")
    expect_packet(h, content_type=b"text", body="héllo".encode())
    conn.send(b"\x00\xff")
    expect_packet(h, content_type=b"binary", body=b"\x00\xff")
    message(h, req, "wörld".encode())
    assert conn.recv(3) == "wörld"
    expect_packet(h, "credit", credits=6)
    message(h, req, b"\x01\x02", binary=True)
    assert conn.recv(3) == b"\x01\x02"
    expect_packet(h, "credit", credits=2)
    conn.send(["frag", "ment", "ed"])  # one message in several frames
    assert read_message_packets(h, b"text") == b"fragmented"
    message(h, req, b"one-", more=True)
    message(h, req, b"two")
    assert conn.recv(3) == "one-two"


def test_library_ping_answered_by_handler(srv, lib_stack):
    h = srv.handler
    conn, req = W.lib_open(h, srv.port)
    lib_stack.callback(W.lib_closer(conn))
    pong_waiter = conn.ping(b"are you there")
    p = expect_packet(h, "ping", body=b"are you there")
    assert not pong_waiter.is_set()  # condure does not answer by itself
    W.pong(h, req, p.body)
    assert pong_waiter.wait(3)
    expect_packet(h, "credit", credits=13)
    W.ping(h, req, b"server ping")
    got = sorted((p.type, p.get("credits"), p.body) for p in (recv(h), recv(h)))
    assert got == [("credit", 11, b""), ("pong", None, b"server ping")]  # the library answered


def test_library_closes(srv, lib_stack):
    h = srv.handler
    conn, req = W.lib_open(h, srv.port)
    lib_stack.callback(W.lib_closer(conn))
    closing = W.in_thread(conn.close, 1001, "going away")
    expect_packet(h, "close", code=1001, body=b"going away")
    W.close(h, req, 1001, "ok")
    closing.result(5)
    assert (conn.close_code, conn.close_reason) == (1001, "ok")
    quiet(h)


def test_library_handler_closes(srv, lib_stack):
    h = srv.handler
    conn, req = W.lib_open(h, srv.port)
    lib_stack.callback(W.lib_closer(conn))
    W.close(h, req, 4000, "bye now")
    with pytest.raises(ConnectionClosed):
        conn.recv(3)
    assert (conn.close_code, conn.close_reason) == (4000, "bye now")
    expect_packet(h, "close", code=4000, body=b"bye now")  # the library's echo
    quiet(h)


@pytest.mark.parametrize("code", [1005, 1006, 999])
def test_library_handler_closes_with_a_code_no_endpoint_may_send(srv, lib_stack, code):
    # The websockets library fails the connection (1002) on such a code in a
    # close frame; condure sends the close frame without a status instead.
    h = srv.handler
    conn, req = W.lib_open(h, srv.port)
    lib_stack.callback(W.lib_closer(conn))
    W.close(h, req, code, "no")
    with pytest.raises(ConnectionClosed):
        conn.recv(3)
    assert (conn.close_code, conn.close_reason) == (1005, "")  # "no status received"
    expect_packet(h, "close", code=None, body=None)  # the library's echo: no status either
    quiet(h)


def test_library_handler_cancel(srv, lib_stack):
    h = srv.handler
    conn, req = W.lib_open(h, srv.port)
    lib_stack.callback(W.lib_closer(conn))
    h.cancel(req)
    assert conn.wait_closed(3)
    assert conn.close_code == 1006  # no close frame
    quiet(h)


def test_library_disconnect_sends_cancel(srv):
    h = srv.handler
    conn, _req = W.lib_open(h, srv.port)
    conn.send("x")
    expect_packet(h, body=b"x")
    W.lib_closer(conn)()
    W.expect_cancel(h)


# -- compression ------------------------------------------------------------

def test_no_extension_without_compression_option(srv):
    h, c = srv.handler, ws(srv, extensions=["permessage-deflate"])
    req, resp = accept(h, c)
    assert resp.header("Sec-WebSocket-Extensions") is None
    assert req["credits"] == 8192
    c.send_frame(wc.OP_TEXT, wc.deflate(b"x"), rsv1=True)  # RSV1 not negotiated: fatal
    W.expect_cancel(h)
    W.finish_after_error(c)


@pytest.mark.parametrize("offer,answer", W.COMPRESSION_OFFERS)
def test_negotiation_table(csrv, offer, answer):
    h, c = csrv.handler, ws(csrv, extensions=[offer])
    req, resp = accept(h, c, headers=[("Sec-WebSocket-Extensions", "bogus")])
    assert resp.header("Sec-WebSocket-Extensions") == (answer.encode() if answer else None)
    full = 6144 if IMPL == "ours" else 8192  # 1.10 offers 3/4 of the buffer (reference 10.3)
    assert req["credits"] == (full if answer else 8192)
    message(h, req, b"aaaaaaaaaaaaaaaaaaaaaaaa")
    f = c.read_frame()
    assert f.rsv1 == bool(answer)
    assert (wc.inflate(f.payload) if answer else f.payload) == b"a" * 24


def test_compressed_both_ways_context_takeover(csrv):
    h, c = csrv.handler, ws(csrv, extensions=["permessage-deflate"])
    req, _ = accept(h, c)
    text = b"the same words, the same words, the same words"
    dec = zlib.decompressobj(-15)
    payloads = []
    for _ in range(2):
        message(h, req, text)
        f = c.read_frame()
        assert f.rsv1 and f.opcode == wc.OP_TEXT and f.fin
        assert wc.inflate(f.payload, dec) == text
        payloads.append(f.payload)
        assert expect_packet(h, "credit")["credits"] == len(text)
    assert len(payloads[1]) < len(payloads[0])  # the window is kept between messages
    comp = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    for _ in range(2):
        c.send_frame(wc.OP_TEXT, wc.deflate(text, comp), rsv1=True)
        expect_packet(h, content_type=b"text", body=text)


def test_server_no_context_takeover(csrv):
    offer = "permessage-deflate; server_no_context_takeover"
    h, c = csrv.handler, ws(csrv, extensions=[offer])
    req, resp = accept(h, c)
    assert (resp.header("Sec-WebSocket-Extensions")
            == b"permessage-deflate; server_no_context_takeover")
    text = b"repeat repeat repeat repeat"
    payloads = []
    for _ in range(2):
        message(h, req, text)
        f = c.read_frame()
        assert wc.inflate(f.payload) == text  # each with a fresh context
        payloads.append(f.payload)
    assert payloads[0] == payloads[1]


@ours_only
def test_compressed_client_fragments(csrv):
    """RFC 7692 6.1: RSV1 on the first frame only. Condure 1.9.1 cancels."""
    h, c = csrv.handler, ws(csrv, extensions=["permessage-deflate"])
    accept(h, c)
    data = b"fragmented and compressed " * 4
    payload = wc.deflate(data)
    half = len(payload) // 2
    c.send_frame(wc.OP_BINARY, payload[:half], rsv1=True, fin=False)
    c.send_frame(wc.OP_CONT, payload[half:])
    got = b""
    while True:
        p = expect_packet(h, content_type=b"binary")
        got += p.body
        if "more" not in p:
            break
    assert got == data


@ours_only
def test_compressed_handler_fragments(csrv):
    """Condure 1.9.1 mangles these (fixed in 1.9.2); ours follows 1.10."""
    h, c = csrv.handler, ws(csrv, extensions=["permessage-deflate"])
    req, _ = accept(h, c)
    message(h, req, b"first half, ", more=True)
    message(h, req, b"second half")
    _, payload, frames = c.read_message()
    assert frames[0].rsv1 and not any(f.rsv1 for f in frames[1:])
    assert wc.inflate(payload) == b"first half, second half"


def test_compressed_credits_count_uncompressed_bytes(csrv):
    h, c = csrv.handler, ws(csrv, extensions=["permessage-deflate"])
    req, _ = accept(h, c, credits=10)
    data = b"0123456789" * 3
    c.send_frame(wc.OP_TEXT, wc.deflate(data), rsv1=True)  # 30 bytes inflated
    expect_packet(h, body=data[:10], more=True)
    quiet(h)
    h.credit(req, 10)
    expect_packet(h, body=data[10:20], more=True)
    quiet(h)
    h.credit(req, 100)
    assert read_message_packets(h, b"text") == data[20:]


def test_library_with_compression(csrv, lib_stack):
    h = csrv.handler
    conn, req = W.lib_open(h, csrv.port, compression="deflate")
    lib_stack.callback(W.lib_closer(conn))
    assert any(n == b"Sec-WebSocket-Extensions" for n, _ in req["headers"])
    text = "compress me " * 20
    conn.send(text)
    expect_packet(h, content_type=b"text", body=text.encode())
    message(h, req, text.encode())
    assert conn.recv(3) == text
    assert expect_packet(h, "credit")["credits"] == len(text)
    message(h, req, b"\x00" * 500, binary=True)
    assert conn.recv(3) == b"\x00" * 500


def test_deflate_bomb_streamed_against_credits(csrv):
    """No message size limit: a message that inflates to 1 MB reaches the
    handler in pieces of at most --buffer-size bytes, only against credits."""
    h, c = csrv.handler, ws(csrv, extensions=["permessage-deflate"])
    req, _ = accept(h, c, credits=4096)
    data = bytes(1_000_000)
    packed = wc.deflate(data)
    assert len(packed) < 2000
    c.send_frame(wc.OP_BINARY, packed, rsv1=True)
    got = b""
    while len(got) < 4096:
        got += expect_packet(h, content_type=b"binary", more=True).body
    assert len(got) == 4096
    quiet(h)
    h.credit(req, len(data))
    got += read_message_packets(h, b"binary")
    assert got == data
