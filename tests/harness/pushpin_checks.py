"""Checks that Pushpin instances of test_pushpin.py (condure in front) and
test_pushpin_client_mode.py (condure also in client mode, no zurl) both pass:
the same requests, the same expectations, against the harness origin."""

from __future__ import annotations

import pytest

from tests.harness import pushpin
from tests.harness.ws_client import OP_BINARY, OP_TEXT, WsConn, accept_key

WAIT = 10.0


def http_get(inst: pushpin.PushpinInstance) -> None:
    resp = pushpin.fetch(inst.port, "GET", "/echo/get?x=1", headers=[("X-Test", "abc")])
    assert resp.code == 200
    assert resp.header("X-Origin") == b"test"
    assert resp.body == b"GET /echo/get?x=1\n"
    seen = [r for r in inst.origin.requests if r.path == "/echo/get?x=1"]
    assert len(seen) == 1
    assert seen[0].header("X-Test") == "abc"
    assert seen[0].header("Grip-Sig") is not None  # it did go through pushpin-proxy


def http_post_body(inst: pushpin.PushpinInstance) -> None:
    body = bytes(range(256)) * 40  # 10 KiB, larger than condure's 8 KiB buffer
    resp = pushpin.fetch(inst.port, "POST", "/echo/post", body=body,
                         headers=[("Content-Type", "application/octet-stream")])
    assert resp.code == 200
    assert resp.body == b"POST /echo/post\n" + body
    assert [r.body for r in inst.origin.requests if r.path == "/echo/post"] == [body]


def http_large_response(inst: pushpin.PushpinInstance) -> None:
    """A response far larger than condure's buffer: credits flow through."""
    n = 1_000_000
    resp = pushpin.fetch(inst.port, "GET", f"/big/{n}", timeout=20)
    assert resp.code == 200
    assert resp.body == pushpin.big_body(n)


def ws_echo(inst: pushpin.PushpinInstance, blob: bytes) -> None:
    """A WebSocket through Pushpin to the origin's WebSocket echo: text,
    ``blob`` as binary, close."""
    ws = WsConn.open(inst.port, "/ws/chat", host=f"127.0.0.1:{inst.port}")
    try:
        hs = ws.read_handshake()
        assert hs.code == 101, hs.raw
        assert hs.header("Sec-WebSocket-Accept") == accept_key(ws.key).encode()
        ws.send_text("hello pushpin")
        assert ws.read_message(timeout=WAIT)[:2] == (OP_TEXT, b"hello pushpin")
        ws.send_binary(blob)
        assert ws.read_message(timeout=WAIT)[:2] == (OP_BINARY, blob)
        ws.send_close(1000, "bye")
        code, _reason = ws.read_close(timeout=WAIT)
        assert code == 1000
    finally:
        ws.close()
    assert inst.origin.ws_received == ["hello pushpin", blob]
    assert [code for code, _ in inst.origin.ws_closes] == [1000]
    assert inst.origin.errors == []
    assert [r.path for r in inst.origin.requests if r.path.startswith("/ws/")] == ["/ws/chat"]


def stop_leaves_nothing(inst: pushpin.PushpinInstance) -> None:
    inst.stop()
    assert inst.leftovers() == []
    with pytest.raises(OSError):
        pushpin.http_client.Conn(inst.port, timeout=1).close()
