"""Compressed WebSockets across a reload (SIGHUP), with a real condure,
examples/handoffhandler.py (an echo handler honouring the handoff) and real
clients offering permessage-deflate as browsers do
(``client_max_window_bits``, context takeover both ways).

By default (``--compression-context server``) condure answers with
``client_no_context_takeover`` and such a session moves; with Condure's
answer (``keep``) it cannot and is closed with 1012. A handover that finds
a compressed client message under way lets it end first
(docs/handover.md)."""

from __future__ import annotations

import json
import threading
import zlib

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.harness import ws_client as wc
from tests.integration.test_handover import (
    assert_no_complaints,
    fixture_handoff_handler,  # noqa: F401 - the fixture 'handoff_handler': pytest finds it here
    fixture_start,  # noqa: F401 - the fixture 'start': pytest finds it here
)

BROWSER_OFFER = "permessage-deflate; client_max_window_bits"  # Chromium's


def tick(n: int) -> str:
    return json.dumps({"type": "tick", "n": n, "user": "someone", "text": "hello " * 5})


@pytest.mark.parametrize("context", ["server", "none", "keep"])
def test_a_browser_like_client_survives_a_reload(start, handoff_handler, context):
    condure = start("--compression", "--compression-context", context)
    handler = handoff_handler(condure.base)
    with connect(f"ws://127.0.0.1:{condure.port}/ws", open_timeout=10) as ws:
        answer = ws.response.headers["Sec-WebSocket-Extensions"]
        assert answer == {"server": "permessage-deflate; client_no_context_takeover",
                          "none": "permessage-deflate; client_no_context_takeover; "
                                  "server_no_context_takeover",
                          "keep": "permessage-deflate"}[context]
        for i in range(5):
            ws.send(tick(i))
            assert ws.recv(timeout=5) == tick(i)
        lines = condure.reload()
        if context == "keep":
            assert lines == [(0, 1, 0)]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            return
        assert lines == [(1, 0, 0)]
        for i in range(5, 10):
            ws.send(tick(i))
            assert ws.recv(timeout=5) == tick(i)
        ws.send("x" * 100_000)  # a large one, to the adopting worker and back
        assert ws.recv(timeout=10) == "x" * 100_000
    assert_no_complaints(condure, handler)


def read_compressed(ws: wc.WsConn, inflater) -> bytes:
    _, payload, frames = ws.read_message(timeout=10)
    assert frames[0].rsv1
    return inflater.decompress(payload + wc.DEFLATE_TAIL)


def test_a_compressed_message_under_way_ends_before_the_session_moves(
        start, handoff_handler):
    """The client has sent part of a 70 KB compressed message in several
    frames when the reload starts: the session reads the message to its end
    (and no further), the echo comes back, then it moves, and a message
    after the move goes both ways. Before, it was closed with 1012 at once."""
    condure = start("--compression", "--log-level", "4")
    handler = handoff_handler(condure.base)
    message = json.dumps([{"n": i, "name": f"item {i}", "ok": i % 3 == 0}
                          for i in range(1400)]).encode()
    assert len(message) > 60_000
    payload = wc.deflate(message)
    cut = len(payload) // 3
    with wc.WsConn.open(condure.port, extensions=[BROWSER_OFFER]) as ws:
        resp = ws.read_handshake()
        assert resp.header("Sec-WebSocket-Extensions") == \
            b"permessage-deflate; client_no_context_takeover"
        inflater = zlib.decompressobj(-15)  # condure keeps its context: so does the client
        ws.send_frame(wc.OP_TEXT, wc.deflate(b"before"), rsv1=True)
        assert read_compressed(ws, inflater) == b"before"
        ws.send_frame(wc.OP_TEXT, payload[:cut], rsv1=True, fin=False)
        result: list = []
        reload = threading.Thread(target=lambda: result.append(condure.reload()))
        reload.start()
        try:
            condure.wait_log(lambda: "moves once the compressed client message" in condure.log())
            ws.send_frame(wc.OP_CONT, payload[cut:2 * cut], fin=False)
            ws.send_frame(wc.OP_CONT, payload[2 * cut:], fin=True)
            assert read_compressed(ws, inflater) == message
        finally:
            reload.join(30)
        assert result == [[(1, 0, 0)]]
        ws.send_frame(wc.OP_TEXT, wc.deflate(b"after"), rsv1=True)
        assert read_compressed(ws, inflater) == b"after"
    assert "cannot move" not in condure.log()
    assert_no_complaints(condure, handler)
