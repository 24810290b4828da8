"""`Upgrade: WebSocket` is a WebSocket handshake (RFC 6455 4.2.1, RFC 9110
7.8): our condure and the echo handler examples/handoffhandler.py, each in
its own process, and real TCP clients: a raw socket with hand-made frames,
and the ``websockets`` library's client protocol with its request headers
recased before they are written.

Debian's condure 1.9.1 forwards `Upgrade: WebSocket` as a plain HTTP request
(reference 5.7.1), so this is ours only and not a differential scenario.
"""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State

from tests.harness import echo_condure
from tests.harness import ws_client as wc
from tests.harness.http_client import connect
from tests.harness.ws_library import LibraryClient

KEY = "x3JJHMbDL1EzLkh9GBhXDw=="


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    """Our condure with the echo handler; yields condure once the handler
    has answered a first request."""
    with echo_condure.running(tmp_path_factory.mktemp("upgrade-tokens"), None) as condure:
        yield condure

def handshake(upgrade: str, connection: str, path: str = "/ws") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: example.com\r\nUpgrade: {upgrade}\r\n"
            f"Connection: {connection}\r\nSec-WebSocket-Key: {KEY}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()


@pytest.mark.parametrize(("upgrade", "connection"), [
    ("WebSocket", "upgrade"),
    ("WEBSOCKET", "keep-alive, Upgrade"),
    ("h2c, WebSocket", "Upgrade"),
])
def test_raw_client(echo, upgrade, connection):
    with wc.WsConn(echo.port) as ws:
        ws.send(handshake(upgrade, connection))
        resp = ws.read_handshake()
        assert resp.code == 101, resp.raw
        assert resp.header("Sec-WebSocket-Accept") == wc.accept_key(KEY).encode()
        assert resp.header("Upgrade") == b"websocket"
        assert resp.header("Connection") == b"Upgrade"
        ws.send_text("héllo")  # masked, with a random key
        frame = ws.read_frame()
        assert (frame.opcode, frame.fin, frame.masked) == (wc.OP_TEXT, True, False)
        assert frame.payload == "héllo".encode()
        ws.send_binary(b"\x00\xff" * 100)
        assert ws.read_message()[:2] == (wc.OP_BINARY, b"\x00\xff" * 100)
        ws.send_close(1000, "bye")
        assert ws.read_close()[0] == 1000  # the handler answers with the code
        ws.expect_closed()


@pytest.mark.parametrize("upgrade", ["h2c", "websocket2"])
def test_other_upgrade_tokens_stay_http(echo, upgrade):
    with connect(echo.port) as c:
        c.send(handshake(upgrade, "Upgrade", path="/plain"))
        resp = c.read_response()
        assert resp.code == 200 and resp.body == b"ok /plain\n"



@pytest.mark.parametrize(("upgrade", "connection"), [
    ("WebSocket", "upgrade"),
    ("Websocket", "keep-alive, Upgrade"),
])
def test_websockets_library(echo, upgrade, connection):
    client = LibraryClient(echo.port)
    try:
        req = client.protocol.connect()
        del req.headers["Upgrade"]
        del req.headers["Connection"]
        req.headers["Upgrade"] = upgrade
        req.headers["Connection"] = connection
        client.protocol.send_request(req)
        client.flush()
        resp = client.next_event()
        # the library checked Upgrade, Connection and Sec-WebSocket-Accept
        assert isinstance(resp, Response) and resp.status_code == 101
        assert client.protocol.handshake_exc is None
        assert client.protocol.state is State.OPEN
        client.protocol.send_text(b"echo me")
        client.flush()
        frame = client.next_event()
        assert isinstance(frame, Frame)
        assert (frame.opcode, frame.data) == (Opcode.TEXT, b"echo me")
        client.protocol.send_close(1000, "done")
        client.flush()
        closing = client.next_event()
        assert closing.opcode is Opcode.CLOSE
        assert client.conn.read_until_close() == b""  # condure closes after both closes
        client.protocol.receive_eof()
        assert client.protocol.state is State.CLOSED
        assert client.protocol.close_rcvd.code == 1000
    finally:
        client.conn.close()
