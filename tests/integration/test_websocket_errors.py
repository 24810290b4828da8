"""WebSocket errors through our condure: frames RFC 6455 forbids (ours sends
the close frame the RFC asks for; Condure closed silently), refused upgrades
(ours answers 400/426; Condure closed silently), a non-101 acceptance with a
body (crashes Condure 1.9.1: never run against it), handler mistakes, and
``--messages-max`` / write-buffer overflow. After each failure the worker
must keep serving others (``probe``).

``CONDURE_FLOWS_IMPL=reference`` runs the shared tests against Debian's
condure; tests of documented differences check Condure's behaviour there.
"""

from __future__ import annotations

import os

import pytest

from tests.harness import flows
from tests.harness import ws_client as wc
from tests.harness import ws_scenarios as W
from tests.harness.http_client import request
from tests.harness.ws_scenarios import accept, expect_cancel, expect_packet, message, quiet, recv

IMPL = os.environ.get("CONDURE_FLOWS_IMPL", "ours")
ours_only = pytest.mark.skipif(IMPL != "ours", reason="documented difference from Condure")
MESSAGES_MAX = 4


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("ws-errors")) as server:
        yield server


@pytest.fixture
def srv(plain):
    yield plain.begin()
    plain.end()


@pytest.fixture
def limited(tmp_path_factory):
    args = ["--messages-max", str(MESSAGES_MAX)]
    with flows.running(tmp_path_factory.mktemp("ws-limited"), args) as server:
        yield server.begin()
        server.end()


def ws(server: flows.Server, path: str = "/ws", **kw) -> wc.WsConn:
    conn = wc.WsConn.open(server.port, path, **kw)
    server.conns.append(conn)
    return conn


def opened(server: flows.Server, **accept_kw):
    c = ws(server)
    req, _ = accept(server.handler, c, **accept_kw)
    return c, req


# -- frames a server must fail the connection for ------------------------------

F = wc.build_frame
BAD_FRAMES = {
    "invalid-utf8-text": ([F(wc.OP_TEXT, b"ok \xff\xfe")], 1007),
    "invalid-utf8-across-fragments": (
        [F(wc.OP_TEXT, b"caf\xc3", fin=False), F(wc.OP_CONT, b"(")], 1007),
    "truncated-utf8-at-message-end": ([F(wc.OP_TEXT, b"caf\xc3")], 1007),
    "invalid-utf8-close-reason": ([F(wc.OP_CLOSE, b"\x03\xe8\xff")], 1007),
    "unmasked": ([F(wc.OP_TEXT, b"hi", mask=False)], 1002),
    "rsv1-without-extension": ([F(wc.OP_TEXT, b"hi", rsv1=True)], 1002),
    "rsv2": ([F(wc.OP_TEXT, b"hi", rsv2=True)], 1002),
    "rsv3": ([F(wc.OP_BINARY, b"hi", rsv3=True)], 1002),
    "reserved-data-opcode": ([F(0x3, b"x")], 1002),
    "reserved-control-opcode": ([F(0xB, b"x")], 1002),
    "control-frame-over-125": ([F(wc.OP_PING, b"p" * 126)], 1002),
    "fragmented-control-frame": ([F(wc.OP_PING, b"p", fin=False)], 1002),
    "continuation-without-start": ([F(wc.OP_CONT, b"x")], 1002),
    "new-message-inside-fragmented": (
        [F(wc.OP_TEXT, b"a", fin=False), F(wc.OP_TEXT, b"b")], 1002),
    "close-payload-one-byte": ([F(wc.OP_CLOSE, b"\x03")], 1002),
    "close-code-1005": ([F(wc.OP_CLOSE, wc.close_payload(1005))], 1002),
    "close-code-999": ([F(wc.OP_CLOSE, wc.close_payload(999))], 1002),
    "close-code-1004": ([F(wc.OP_CLOSE, wc.close_payload(1004))], 1002),
    "close-code-1015": ([F(wc.OP_CLOSE, wc.close_payload(1015))], 1002),
    "close-code-2999": ([F(wc.OP_CLOSE, wc.close_payload(2999))], 1002),
    "close-code-5000": ([F(wc.OP_CLOSE, wc.close_payload(5000))], 1002),
    "64-bit-length-top-bit": ([b"\x82\xff\x80" + b"\x00" * 7 + b"\x01\x02\x03\x04"], 1002),
}

# with --compression negotiated
BAD_DEFLATE_FRAMES = {
    "rsv1-on-continuation": (
        [F(wc.OP_TEXT, wc.deflate(b"abc"), rsv1=True, fin=False),
         F(wc.OP_CONT, wc.deflate(b"d"), rsv1=True)], 1002),
    "rsv1-on-ping": ([F(wc.OP_PING, b"p", rsv1=True)], 1002),
    "not-inflatable": ([F(wc.OP_BINARY, b"\xff\xff\xff\xff", rsv1=True)], 1007),
    "inflates-to-invalid-utf8": ([F(wc.OP_TEXT, wc.deflate(b"\xc3("), rsv1=True)], 1007),
}


@pytest.fixture(scope="module")
def deflating(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("ws-errors-deflate"), ["--compression"]) as server:
        yield server


@pytest.fixture
def dsrv(deflating):
    yield deflating.begin()
    deflating.end()


@ours_only
@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_bad_frame_gets_close_code(srv, name):
    frames, code = BAD_FRAMES[name]
    check_failed(srv, ws(srv), frames, code, name)


@ours_only
@pytest.mark.parametrize("name", list(BAD_DEFLATE_FRAMES))
def test_bad_compressed_frame_gets_close_code(dsrv, name):
    frames, code = BAD_DEFLATE_FRAMES[name]
    c = ws(dsrv, extensions=["permessage-deflate"])
    check_failed(dsrv, c, frames, code, name)


def check_failed(srv: flows.Server, c: wc.WsConn, frames: list[bytes], code: int,
                 name: str) -> None:
    """Send ``frames`` on an accepted connection: the client gets a close
    frame with ``code``, the handler ``cancel``, the worker serves on."""
    h = srv.handler
    accept(h, c)
    c.send(b"".join(frames))
    while True:  # a valid prefix may reach the handler first
        p = recv(h)
        if p.type == "cancel":
            break
        assert p.type == "" and "more" in p, p
    got = W.finish_after_error(c)
    assert got is not None, f"closed without a close frame after {name}"
    assert got[0] == code, got
    assert c.end is not None
    quiet(h)
    srv.probe()


def test_bad_frame_on_reference_closes_silently(srv):
    if IMPL == "ours":
        pytest.skip("checks Condure's behaviour (CONDURE_FLOWS_IMPL=reference)")
    h = srv.handler
    c, _ = opened(srv)
    c.send_frame(0x3, b"x")
    expect_cancel(h)
    assert c.read_until_close() == b""


@ours_only
def test_valid_utf8_split_across_fragments(srv):
    h = srv.handler
    c, _ = opened(srv)
    c.send(F(wc.OP_TEXT, b"caf\xc3", fin=False) + F(wc.OP_CONT, b"\xa9!"))
    got = b""
    while True:
        p = expect_packet(h, content_type=b"text")
        got += p.body
        if "more" not in p:
            break
    assert got.decode() == "café!"


# -- refused upgrades ---------------------------------------------------------

BAD_UPGRADES = {
    "post": (dict(method="POST"), 400),
    "missing-key": (dict(key=None), 400),
    "missing-version": (dict(version=None), 426),
    "version-8": (dict(version="8"), 426),
    "request-body": (dict(extra=[("Content-Length", "5")]), 400),
    "key-over-220-bytes": (dict(key="k" * 221), 400),
    "empty-extension-offer": (dict(extensions=["foo, , bar"]), 400),
    "extension-empty-param": (dict(extensions=["permessage-deflate; ;"]), 400),
    "extension-unterminated-quote": (dict(extensions=['foo; a="unterminated']), 400),
}


@pytest.mark.parametrize("name", list(BAD_UPGRADES))
def test_bad_upgrade(srv, name):
    kw, status = BAD_UPGRADES[name]
    raw = wc.upgrade_request("/bad", **kw)
    if IMPL == "ours":
        resp = flows.assert_refused(srv, raw, status)
        if status == 426:
            assert resp.header("Sec-WebSocket-Version") == b"13", resp.raw
        assert resp.header("Upgrade") is None and resp.header("Sec-WebSocket-Accept") is None
    else:  # Condure closes without a word
        c = srv.conn()
        c.send(raw)
        assert c.read_until_close() == b""
    srv.probe()  # the handler heard nothing: the probe is its next packet


def test_upgrade_with_content_length_zero_accepted(srv):
    h = srv.handler
    c = wc.WsConn.open(srv.port, extra=[("Content-Length", "0")])
    srv.conns.append(c)
    accept(h, c)
    c.send_text("ok")
    expect_packet(h, body=b"ok")


def test_upgrade_header_not_lowercase(srv):
    """``Upgrade: WebSocket``: a handshake for us (RFC 6455 4.2.1, see
    docs/differences-from-condure.md), plain HTTP for Condure."""
    h, c = srv.handler, wc.WsConn(srv.port)
    srv.conns.append(c)
    c.send(request("GET", "/x", [*flows.HOST, ("Upgrade", "WebSocket"),
                                 ("Connection", "Upgrade"),
                                 ("Sec-WebSocket-Version", "13"),
                                 ("Sec-WebSocket-Key", wc.SAMPLE_KEY)]))
    req = recv(h)
    if IMPL == "ours":
        assert req["uri"] == b"ws://example.com/x", req
        accept(h, c, req=req)
        c.send_text("ok")
        expect_packet(h, body=b"ok")
        return
    assert req["uri"] == b"http://example.com/x" and req["stream"] is True
    h.reply(req, body=b"plain")
    assert c.read_response().body == b"plain"


@ours_only
def test_non_101_acceptance_with_body_is_a_rejection(srv):
    """Condure 1.9.1 aborts the whole process here (reference 5.7.3)."""
    h = srv.handler
    c = ws(srv)
    req = recv(h)
    h.reply(req, code=200, reason="OK", headers=[("Content-Type", "text/plain")],
            body=b"not a websocket\n")
    resp = c.read_response()
    assert (resp.code, resp.body) == (200, b"not a websocket\n")
    assert resp.header("Upgrade") is None and resp.header("Sec-WebSocket-Accept") is None
    c.expect_closed()
    p = h.recv_or_none(W.SILENCE)  # a cancel may follow; nothing else
    assert p is None or p.type in ("cancel", "keep-alive"), p
    srv.handler.begin()
    srv.probe()


@ours_only
def test_content_length_in_101_dropped(srv):
    h = srv.handler
    c = ws(srv)
    _, resp = accept(h, c, headers=[("Content-Length", "0"), ("Transfer-Encoding", "chunked"),
                                    ("X-Kept", "yes")])
    assert resp.header("Content-Length") is None and resp.header("Transfer-Encoding") is None
    assert resp.header("X-Kept") == b"yes"


# -- handler mistakes ---------------------------------------------------------

@ours_only
def test_handler_ping_over_125_bytes_aborts(srv):
    h = srv.handler
    c, req = opened(srv)
    W.ping(h, req, b"p" * 126)
    assert c.read_until_close() == b""
    quiet(h)  # handler-caused: no cancel
    srv.probe()


def test_handler_wrong_seq_aborts_without_cancel(srv):
    h = srv.handler
    c, req = opened(srv)
    message(h, req, b"x", seq=9)
    assert c.read_until_close() == b""
    quiet(h)
    srv.probe()


def test_handler_unexpected_type_aborts_without_cancel(srv):
    h = srv.handler
    c, req = opened(srv)
    h.send(req, type="handoff-proceed")
    assert c.read_until_close() == b""
    quiet(h)
    srv.probe()


def test_handler_message_within_and_beyond_buffer(srv):
    h = srv.handler
    c, req = opened(srv)
    message(h, req, b"a" * 8192, binary=True)  # exactly the offered credits
    assert c.read_frame().payload == b"a" * 8192
    assert expect_packet(h, "credit")["credits"] == 8192
    message(h, req, b"b" * 10000, binary=True)  # beyond credits and buffer
    expect_cancel(h)
    assert c.read_until_close() == b""
    srv.probe()


def drain(h, wait: float, credits: list[int]) -> bool:
    """Take every packet condure has sent (waiting ``wait`` for the first;
    the handler's recv needs a timeout above 0): credits go to ``credits``;
    True once a ``cancel`` came."""
    while (p := h.recv_or_none(wait)) is not None:
        wait = 0.001
        if p.type == "cancel":
            return True
        if p.type == "credit":
            credits.append(p["credits"])
        else:
            assert p.type == "keep-alive", p
    return False


def test_messages_max_flood(limited):
    """A handler that keeps sending while the client reads nothing. Big
    messages fill the client's socket; bursts of small ones use the credits
    left over. Once the socket is full, messages queue in condure, and more
    than ``--messages-max`` queued ends the session with ``cancel``."""
    srv, h = limited, limited.handler
    c = ws(srv, rcvbuf=4096)
    req, _ = accept(h, c)
    avail = req["credits"]
    burst = 3 * MESSAGES_MAX
    since_credit = 0  # messages sent since condure last gave credits back
    for _ in range(2000):  # bounded: loopback buffers hold a few MB
        if avail >= 8000 + burst:
            sizes = [8000]
        else:
            assert avail >= burst, "credits ran out without a cancel"
            sizes = [1] * burst
        for size in sizes:
            message(h, req, b"x" * size)
        avail -= sum(sizes)
        since_credit += len(sizes)
        if drain(h, 0.001 if sizes[0] > 1 else 0.02, credits := []):
            break
        if credits:
            avail += sum(credits)
            since_credit = 0
    else:
        pytest.fail("no cancel")
    # within the first burst queued behind a big message the socket did not take
    assert since_credit <= burst + 1, since_credit
    c.read_until_close(10)  # what was written, then the end
    assert c.end in ("eof", "reset")
    quiet(h)
    srv.probe()


# -- --max-message-size: condure's own limit, close 1009 ----------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    args = ["--max-message-size", "1000"]
    with flows.running(tmp_path_factory.mktemp("ws-capped"), args) as server:
        yield server


@pytest.fixture
def csrv(capped):
    yield capped.begin()
    capped.end()


def test_message_at_the_limit_passes(csrv):
    h = csrv.handler
    c = ws(csrv)
    accept(h, c, credits=100000)
    c.send(wc.build_frame(wc.OP_BINARY, b"x" * 600, fin=False)
           + wc.build_frame(wc.OP_CONT, b"x" * 400))
    got = b""
    while True:
        p = recv(h)
        got += p.body
        if "more" not in p:
            break
    assert got == b"x" * 1000


def test_oversized_message_gets_1009(csrv):
    c = ws(csrv)
    # Fragmented: the limit counts the whole message, not one frame.
    check_failed(csrv, c, [wc.build_frame(wc.OP_TEXT, b"y" * 600, fin=False),
                           wc.build_frame(wc.OP_CONT, b"y" * 401)], 1009, "oversized message")
