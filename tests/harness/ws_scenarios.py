"""WebSocket helpers for handler-side packets and the ``websockets`` library
client, and the WebSocket scenarios of the differential test
(tests/integration/test_websocket_differential.py).

Handler side (``h`` is a HandlerClient or flows.SharedHandler):

    req, resp = accept(h, ws)                  # request packet, 101 head
    message(h, req, b"hi", binary=True)        # data packet for the client
    close(h, req, 1000, "bye"); ping(h, req, b"p")

Library side: ``lib_open(h, port)`` connects the ``websockets`` sync client
while the handler accepts; ``lib_closer(ws)`` ends it without waiting.

Each differential scenario gets a ``scenarios.Ctx`` with a running condure
and drives raw clients (``ws_conn(ctx)``, a fixed Sec-WebSocket-Key so the
packets compare) and the scripted handler, asserting the documented
behaviour so it passes against the reference first.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import time
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.harness import ws_client as wc
from tests.harness.scenarios import SILENCE, Ctx

SWITCHING = "Switching Protocols"


# -- handler side -----------------------------------------------------------

def recv(h, timeout: float = 3.0):
    """The next packet that is not a ``keep-alive`` (condure's keep-alive
    sweep reaches a session at a time that depends on its slot, so any
    test may see one)."""
    deadline = time.monotonic() + timeout
    while True:
        p = h.recv(max(deadline - time.monotonic(), 0.01))
        if p.type != "keep-alive":
            return p


def quiet(h, duration: float = SILENCE) -> None:
    """Assert condure sends the handler nothing but keep-alives for a while."""
    deadline = time.monotonic() + duration
    while (remaining := deadline - time.monotonic()) > 0:
        p = h.recv_or_none(remaining)
        if p is None:
            return
        assert p.type == "keep-alive", f"unexpected packet {p!r}"


def accept(h, ws: wc.WsConn | None = None, req=None, headers=(), credits: int | None = None,
           code: int = 101, reason: str = SWITCHING):
    """Receive the upgrade request (unless given), accept it and, with a raw
    client, read and check the 101 head. Returns (request packet, Response)."""
    if req is None:
        req = recv(h)
    assert req.socket == "pull" and req["uri"].startswith(b"ws://"), req
    h.reply(req, code=code, reason=reason, headers=headers, credits=credits)
    resp = None
    if ws is not None:
        resp = ws.read_handshake()
        if code == 101:
            assert resp.code == 101, resp.raw
            assert resp.header("Sec-WebSocket-Accept") == wc.accept_key(ws.key).encode()
    return req, resp


def message(h, target, body: bytes = b"", binary: bool = False, more: bool = False,
            content_type: str | None = None, **kw) -> None:
    """A data packet for the client: text by default (no content-type)."""
    fields: list[tuple[str, Any]] = []
    if binary or content_type is not None:
        fields.append(("content-type", content_type or "binary"))
    if body:
        fields.append(("body", body))
    if more:
        fields.append(("more", True))
    h.send(target, fields=fields, **kw)


def close(h, target, code: int | None = None, reason: str | bytes | None = None, **kw) -> None:
    fields: list[tuple[str, Any]] = []
    if code is not None:
        fields.append(("code", code))
    if reason is not None:
        fields.append(("body", reason.encode() if isinstance(reason, str) else reason))
    h.send(target, type="close", fields=fields, **kw)


def ping(h, target, body: bytes = b"", **kw) -> None:
    h.send(target, type="ping", fields=[("body", body)] if body else [], **kw)


def pong(h, target, body: bytes = b"", **kw) -> None:
    h.send(target, type="pong", fields=[("body", body)] if body else [], **kw)


def expect_packet(h, type_: str = "", **want):
    """Next packet has this type (``""`` = data) and these field values."""
    p = recv(h)
    assert p.type == type_, f"expected {type_ or 'data'} packet, got {p!r}"
    for key, value in want.items():
        key = key.replace("_", "-")
        if value is None:
            assert key not in p, f"unexpected {key} in {p!r}"
        else:
            assert p.get(key) == value, f"{key}: {p.get(key)!r} != {value!r} in {p!r}"
    return p


def expect_cancel(h):
    return expect_packet(h, "cancel")


# -- websockets library client ------------------------------------------------

_LEGACY_FLAG = "legacy" in inspect.signature(connect).parameters


def lib_open(h, port: int, path: str = "/lib", compression: str | None = None,
             credits: int | None = None, headers=(), **kw) -> tuple[ClientConnection, Any]:
    """Connect the ``websockets`` sync client; the handler accepts meanwhile.
    Returns (connection, request packet)."""
    kw.setdefault("open_timeout", 5)
    kw.setdefault("close_timeout", 3)
    kw.setdefault("ping_interval", None)
    if _LEGACY_FLAG:  # a connection object returned directly, without a warning
        kw.setdefault("legacy", True)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(connect, f"ws://127.0.0.1:{port}{path}", compression=compression, **kw)
        try:
            req = recv(h)
            h.reply(req, code=101, reason=SWITCHING, headers=headers, credits=credits)
        finally:
            ws = fut.result(10)
    return ws, req


def in_thread(fn, *args, **kw) -> concurrent.futures.Future:
    """Run a blocking library call (e.g. ``ws.close``) while the test drives
    the handler; the caller takes ``.result(timeout)``."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    fut = pool.submit(fn, *args, **kw)
    pool.shutdown(wait=False)
    return fut


def lib_closer(ws: ClientConnection):
    """A finalizer that drops the connection without a closing handshake."""
    def _close() -> None:
        ws.close_socket()
        ws.recv_events_thread.join(5)
    return _close


def finish_after_error(ws: wc.WsConn) -> tuple[int | None, bytes] | None:
    """After a protocol error: read the close frame if one comes (answering
    it, as a client should), then the end of the connection. Returns the
    close code and reason, or None when the connection just closed."""
    try:
        frame = ws.read_frame()
    except AssertionError:  # closed without a close frame
        assert ws.end is not None
        return None
    code_reason = frame.close_code_reason()
    try:
        ws.send_close(code_reason[0] or 1000)
    except OSError:
        pass
    ws.read_until_close()
    return code_reason


def read_refusal(ws: wc.WsConn):
    """A refused upgrade: the Response condure answered with, or None when it
    closed without a word. The client closes its side afterwards."""
    try:
        resp = ws.read_response()
    except AssertionError:
        assert ws.end is not None, "neither a response nor a close"
        return None
    ws.close()
    return resp


# -- differential scenarios -------------------------------------------------

UPGRADE_EXTRA = [("Sec-WebSocket-Protocol", "chat"), ("Origin", "http://example.com")]


def ws_conn(ctx: Ctx, path: str = "/ws", **kw) -> wc.WsConn:
    """A raw WebSocket client that sent its upgrade request, recorded in ctx."""
    ws = wc.WsConn.open(ctx.condure.port, path, **kw)
    ctx.stack.callback(ws.close)
    ctx.conns.append(ws)
    return ws


def ws_accept(ctx: Ctx) -> None:
    h = ctx.handler()
    ws = ws_conn(ctx, "/ws?q=1", extra=UPGRADE_EXTRA)
    req = recv(h)
    assert req.keys() == ["from", "id", "seq", "ext", "method", "uri", "headers", "credits",
                          "peer-address", "peer-port"]
    assert req["uri"] == b"ws://example.com/ws?q=1" and req["credits"] == 8192
    bogus = [("Sec-WebSocket-Protocol", "chat"), ("Upgrade", "bogus"), ("Connection", "bogus"),
             ("Sec-WebSocket-Accept", "bogus")]
    _, resp = accept(h, ws, req, headers=bogus, credits=1024)
    assert resp.raw == (b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Protocol: chat\r\n"
                        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Accept: " + wc.SAMPLE_ACCEPT.encode() + b"\r\n\r\n")
    quiet(h)


def ws_exchange(ctx: Ctx) -> None:
    h, ws = ctx.handler(), ws_conn(ctx)
    req, _ = accept(h, ws)
    ws.send_text("hello")
    expect_packet(h, content_type=b"text", body=b"hello", more=None)
    ws.send_binary(b"\x00\x01\x02")
    expect_packet(h, content_type=b"binary", body=b"\x00\x01\x02")
    ws.send_text(b"")
    expect_packet(h, content_type=b"text", body=None, more=None)
    message(h, req, b"hi there")
    assert ws.read_frame().raw == b"\x81\x08hi there"
    assert expect_packet(h, "credit")["credits"] == 8
    message(h, req, b"\xff\x00", binary=True)
    assert ws.read_frame().raw == b"\x82\x02\xff\x00"
    assert expect_packet(h, "credit")["credits"] == 2
    big = bytes(range(256)) * 4
    message(h, req, big, binary=True)
    assert ws.read_frame().raw == b"\x82\x7e\x04\x00" + big
    assert expect_packet(h, "credit")["credits"] == 1024


def ws_fragments(ctx: Ctx) -> None:
    h, ws = ctx.handler(), ws_conn(ctx)
    req, _ = accept(h, ws)
    ws.send_text("frag", fin=False)
    expect_packet(h, content_type=b"text", body=b"frag", more=True)
    ws.send_frame(wc.OP_CONT, b"", fin=False)  # empty non-final fragment: not forwarded
    ws.send_frame(wc.OP_CONT, b"ment")
    expect_packet(h, content_type=b"text", body=b"ment", more=None)
    message(h, req, b"part1-", more=True)
    assert ws.read_frame().raw == b"\x01\x06part1-"
    expect_packet(h, "credit")
    message(h, req, b"part2")
    assert ws.read_frame().raw == b"\x80\x05part2"
    assert expect_packet(h, "credit")["credits"] == 5


def ws_credits(ctx: Ctx) -> None:
    h, ws = ctx.handler(), ws_conn(ctx)
    req, _ = accept(h, ws, credits=10)
    ws.send_text("0123456789abcdefghij")
    expect_packet(h, content_type=b"text", body=b"0123456789", more=True)
    ws.send_frame(wc.OP_PING, b"pp")
    quiet(h)  # no credits left: nothing is read, pings included
    h.credit(req, 15)
    expect_packet(h, content_type=b"text", body=b"abcdefghij", more=None)
    expect_packet(h, "ping", body=b"pp")


def ws_credits_in_data(ctx: Ctx) -> None:
    """Credits granted only inside data packets, as an echo handler gives
    back what it consumed (reference 5.2, 5.7, section 12 item 23). The
    client writes only once the handler has its packets, so the order of
    packets is fixed."""
    h, ws = ctx.handler(), ws_conn(ctx)
    req, _ = accept(h, ws, credits=10)
    ws.send_text("0123456789")
    expect_packet(h, content_type=b"text", body=b"0123456789", more=None)
    h.send(req, fields=[("body", b"echo"), ("credits", 6)])
    assert ws.read_frame().raw == b"\x81\x04echo"
    assert expect_packet(h, "credit")["credits"] == 4
    ws.send_text("abcdef")
    expect_packet(h, content_type=b"text", body=b"abcdef", more=None)
    h.send(req, fields=[("body", b"more"), ("more", True), ("credits", 4)])
    assert ws.read_frame().raw == b"\x01\x04more"
    assert expect_packet(h, "credit")["credits"] == 4
    ws.send_text("ghij")
    expect_packet(h, content_type=b"text", body=b"ghij", more=None)
    h.send(req, fields=[("credits", 100)])  # a message's empty end still grants
    assert ws.read_frame().raw == b"\x80\x00"
    ws.send_binary(b"\x00" * 50)
    expect_packet(h, content_type=b"binary", body=b"\x00" * 50)


def ws_ping_pong(ctx: Ctx) -> None:
    h, ws = ctx.handler(), ws_conn(ctx)
    req, _ = accept(h, ws)
    ws.send_frame(wc.OP_PING, b"pp")
    expect_packet(h, "ping", body=b"pp")
    ws.expect_silence(SILENCE)  # condure does not answer pings itself
    ws.send_frame(wc.OP_PONG, b"qq")
    expect_packet(h, "pong", body=b"qq")
    ws.send_frame(wc.OP_PING)
    expect_packet(h, "ping", body=None)
    ping(h, req, b"hp")
    pong(h, req, b"hq")
    assert ws.read_frame().raw == b"\x89\x02hp"
    assert ws.read_frame().raw == b"\x8a\x02hq"
    assert [expect_packet(h, "credit")["credits"] for _ in range(2)] == [2, 2]


def ws_client_closes(ctx: Ctx) -> None:
    h, ws = ctx.handler(), ws_conn(ctx)
    req, _ = accept(h, ws)
    ws.send_close(1001, "bye")
    expect_packet(h, "close", code=1001, body=b"bye")
    message(h, req, b"still")  # handler messages are still delivered
    assert ws.read_frame().raw == b"\x81\x05still"
    expect_packet(h, "credit")
    close(h, req, 1001, "ok")
    assert ws.read_frame().raw == b"\x88\x04\x03\xe9ok"
    ws.read_until_close()
    assert ws.end in ("eof", "reset")
    quiet(h)


def ws_handler_closes(ctx: Ctx) -> None:
    h, ws = ctx.handler(), ws_conn(ctx)
    req, _ = accept(h, ws)
    close(h, req, 4000, "going")
    assert ws.read_frame().raw == b"\x88\x07\x0f\xa0going"
    ws.send_text("late")  # still read and forwarded
    expect_packet(h, content_type=b"text", body=b"late")
    message(h, req, b"discarded")  # after the handler's close: dropped
    ws.send_close(4000)
    expect_packet(h, "close", code=4000, body=None)
    assert ws.read_until_close() == b""
    quiet(h)


def ws_close_without_code(ctx: Ctx) -> None:
    h, ws = ctx.handler(), ws_conn(ctx)
    req, _ = accept(h, ws)
    ws.send_close()
    expect_packet(h, "close", code=None, body=None)
    close(h, req)
    assert ws.read_frame().raw == b"\x88\x02\x03\xe8"
    assert ws.read_until_close() == b""


def ws_client_disconnects(ctx: Ctx) -> None:
    h, ws = ctx.handler(), ws_conn(ctx)
    accept(h, ws)
    ws.send_text("bye")
    expect_packet(h, body=b"bye")
    ws.close()
    expect_cancel(h)


def ws_handler_cancels(ctx: Ctx) -> None:
    h, ws = ctx.handler(), ws_conn(ctx)
    req, _ = accept(h, ws)
    h.cancel(req)
    assert ws.read_until_close() == b""
    quiet(h)


def ws_rejected(ctx: Ctx) -> None:
    h, ws = ctx.handler(), ws_conn(ctx)
    req = recv(h)
    h.send(req, type="error", fields=[
        ("condition", "rejected"), ("code", 403), ("reason", "Forbidden"),
        ("headers", [["Content-Type", "text/plain"], ["Connection", "x"],
                     ["Upgrade", "websocket"], ["Sec-WebSocket-Accept", "x"]]),
        ("body", b"go away\n")])
    # ours says it closes (RFC 9112 9.6); Condure adds no Connection header
    close_header = b"Connection: close\r\n" if ctx.impl == "ours" else b""
    assert ws.read_until_close() == (b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                                     + close_header + b"Content-Length: 8\r\n\r\ngo away\n")
    quiet(h)


def ws_handler_error(ctx: Ctx) -> None:
    h, ws = ctx.handler(), ws_conn(ctx)
    req = recv(h)
    h.send(req, type="error", fields=[("condition", "bad-request")])
    assert ws.read_until_close() == b""
    quiet(h)


def ws_bad_frame(ctx: Ctx) -> None:
    """A reserved opcode: Condure closes without a close frame, ours sends
    1002 (HTTP bytes differ by design); the handler gets ``cancel`` alike."""
    h, ws = ctx.handler(), ws_conn(ctx)
    accept(h, ws)
    ws.send_frame(0x3, b"x")
    expect_cancel(h)
    finish_after_error(ws)


def ws_bad_upgrades(ctx: Ctx) -> None:
    """Upgrades condure refuses: the handler never hears of them (Condure
    closes silently, ours answers 400/426: HTTP bytes differ by design)."""
    h = ctx.handler()
    for kw in ({"method": "POST"}, {"key": None}, {"version": "8"},
               {"extensions": ["foo, , bar"]}):
        ws = ws_conn(ctx, **kw)
        read_refusal(ws)
    ws = ws_conn(ctx, "/good")
    req = recv(h)
    assert req["uri"] == b"ws://example.com/good"


COMPRESSION_OFFERS = [
    ("permessage-deflate", "permessage-deflate"),
    ("permessage-deflate; client_max_window_bits", "permessage-deflate"),
    ("permessage-deflate; client_no_context_takeover; server_no_context_takeover",
     "permessage-deflate; client_no_context_takeover; server_no_context_takeover"),
    ("permessage-deflate; server_max_window_bits=10", None),
    ("permessage-deflate; server_max_window_bits=10, permessage-deflate", "permessage-deflate"),
    ("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=12",
     "permessage-deflate"),
    ("permessage-deflate; foo=1", None),
]


def ws_compression_negotiation(ctx: Ctx) -> None:
    h = ctx.handler()
    for offer, answer in COMPRESSION_OFFERS:
        ws = ws_conn(ctx, extensions=[offer])
        req, resp = accept(h, ws, headers=[("Sec-WebSocket-Extensions", "bogus")])
        assert [offer.encode()] == [v for n, v in req["headers"]
                                    if n == b"Sec-WebSocket-Extensions"]
        got = resp.header("Sec-WebSocket-Extensions")
        assert got == (answer.encode() if answer else None), (offer, resp.raw)
        h.cancel(req)
        ws.read_until_close()


def ws_compressed_messages(ctx: Ctx) -> None:
    h, ws = ctx.handler(), ws_conn(ctx, extensions=["permessage-deflate"])
    req, _ = accept(h, ws)
    message(h, req, b"compress me compress me")
    f = ws.read_frame()
    assert f.raw == bytes.fromhex("c111" "4acecf2d284a2d2e56c84d554846b00100")
    assert expect_packet(h, "credit")["credits"] == 23  # uncompressed bytes
    ping(h, req, b"hp")  # control frames are never compressed
    assert ws.read_frame().raw == b"\x89\x02hp"
    expect_packet(h, "credit")
    ws.send_frame(wc.OP_TEXT, wc.deflate(b"abcabcabcabc"), rsv1=True)
    expect_packet(h, content_type=b"text", body=b"abcabcabcabc")
    ws.send_binary(b"plain")  # no RSV1: taken uncompressed
    expect_packet(h, content_type=b"binary", body=b"plain")


# scenario name -> (function, extra condure args)
SCENARIOS = {
    "ws_accept": (ws_accept, []),
    "ws_exchange": (ws_exchange, []),
    "ws_fragments": (ws_fragments, []),
    "ws_credits": (ws_credits, []),
    "ws_credits_in_data": (ws_credits_in_data, []),
    "ws_ping_pong": (ws_ping_pong, []),
    "ws_client_closes": (ws_client_closes, []),
    "ws_handler_closes": (ws_handler_closes, []),
    "ws_close_without_code": (ws_close_without_code, []),
    "ws_client_disconnects": (ws_client_disconnects, []),
    "ws_handler_cancels": (ws_handler_cancels, []),
    "ws_rejected": (ws_rejected, []),
    "ws_handler_error": (ws_handler_error, []),
    "ws_bad_frame": (ws_bad_frame, []),
    "ws_bad_upgrades": (ws_bad_upgrades, []),
    "ws_compression_negotiation": (ws_compression_negotiation, ["--compression"]),
    "ws_compressed_messages": (ws_compressed_messages, ["--compression"]),
}
