"""Opening-handshake rules towards clients, with real processes: our condure
(``--compression``) and the echo handler examples/handoffhandler.py (stream
listener), or examples/reqhandler.py (req listener), and real TCP clients:
raw sockets and the ``websockets`` library.

- An HTTP/1.0 request's ``Upgrade`` is ignored (RFC 9110 7.8; no 1xx to an
  HTTP/1.0 client, 15.2): it is a plain request in both listener modes.
- A ``Sec-WebSocket-Key`` that is not the base64 of 16 bytes, or comes
  twice, gets ``400 Bad Request`` (RFC 6455 4.2.1, 11.3.1).
- An accepted offer of ``server_max_window_bits=15`` is answered with that
  parameter (RFC 7692 7.1.2.1), which the ``websockets`` client insists on.

Debian's condure 1.9.1 answers 101 to all of these (the last one without
the parameter, and the ``websockets`` client then fails the connection), and
on a req listener refuses an HTTP/1.0 upgrade like any other: documented
differences (docs/differences-from-condure.md), so ours only.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.sync.client import connect as sync_connect

from tests.harness import echo_condure, procs
from tests.harness import ws_client as wc
from tests.harness.http_client import connect, request
from tests.harness.ws_library import LibraryClient

EXAMPLES = procs.REPO_ROOT / "examples"
KEY = "x3JJHMbDL1EzLkh9GBhXDw=="


def _handler(args: list[str], log_path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=log, env=procs.python_env())


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    """Our condure with --compression and the echo handler; yields condure
    once the handler has answered a first request."""
    workdir = tmp_path_factory.mktemp("ws-handshake-rules")
    args = ["--compression", "--compression-context", "keep"]  # the client's offer only
    with echo_condure.running(workdir, args) as condure:
        yield condure

def handshake(version: str = "1.1", path: str = "/ws", keys=(KEY,), extra: str = "") -> bytes:
    return (f"GET {path} HTTP/{version}\r\nHost: example.com\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\n"
            + "".join(f"Sec-WebSocket-Key: {k}\r\n" for k in keys)
            + f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def assert_still_serving(condure) -> None:
    with connect(condure.port) as c:
        c.send(request("GET", "/after"))
        assert c.read_response().body == b"ok /after\n"


# -- HTTP/1.0 ------------------------------------------------------------------

def test_http10_upgrade_is_a_plain_request(echo):
    with connect(echo.port) as c:
        c.send(handshake("1.0", "/old"))
        resp = c.read_response()
        assert resp.raw.startswith(b"HTTP/1.0 200 OK\r\n"), resp.raw  # no 101
        assert resp.body == b"ok /old\n"  # the handler served it as HTTP
        assert resp.header("Sec-WebSocket-Accept") is None
        assert c.read_until_close() == b""  # HTTP/1.0 without keep-alive
    with wc.WsConn(echo.port) as ws:  # the same handshake in HTTP/1.1 opens
        ws.send(handshake("1.1"))
        resp = ws.read_handshake()
        assert resp.code == 101 and resp.header("Sec-WebSocket-Accept") == \
            wc.accept_key(KEY).encode()
        ws.send_text("hi")
        assert ws.read_message()[:2] == (wc.OP_TEXT, b"hi")


# -- Sec-WebSocket-Key ----------------------------------------------------------

@pytest.mark.parametrize("keys", [
    ("",), ("x",), ("AAAAAAAAAAAAAAAAAAAA",), ("AAAAAAAAAAAAAAAAAAAAAA",),
    ("AAAAAAAAAAAAAAAAAAAAAAAA",), (KEY, "AAAAAAAAAAAAAAAAAAAAAA=="), (KEY, KEY),
], ids=["empty", "x", "15-bytes", "unpadded", "18-bytes", "two-keys", "same-key-twice"])
def test_bad_key_gets_400(echo, keys):
    with connect(echo.port) as c:
        c.send(handshake(keys=keys))
        resp = c.read_response()
        assert resp.code == 400, resp.raw
        assert resp.header("Connection") == b"close"
        assert resp.header("Sec-WebSocket-Accept") is None
        assert c.read_until_close() == b""
    assert_still_serving(echo)


def test_a_repeated_version_gets_400(echo):
    """RFC 6455 11.3.5: Sec-WebSocket-Version appears once in a request."""
    with connect(echo.port) as c:
        c.send(handshake(extra="Sec-WebSocket-Version: 13\r\n"))
        resp = c.read_response()
        assert resp.code == 400, resp.raw
        assert c.read_until_close() == b""
    assert_still_serving(echo)


# -- permessage-deflate; server_max_window_bits=15 ------------------------------

@pytest.mark.parametrize("takeover", [False, True], ids=["context-takeover", "no-takeover"])
def test_websockets_client_offering_server_max_window_bits(echo, takeover):
    factory = ClientPerMessageDeflateFactory(
        server_max_window_bits=15, server_no_context_takeover=takeover,
        client_no_context_takeover=takeover)
    client = LibraryClient(echo.port, "/bits", [factory])
    try:
        client.protocol.send_request(client.protocol.connect())
        client.flush()
        resp = client.next_event()
        assert isinstance(resp, Response) and resp.status_code == 101
        assert client.protocol.handshake_exc is None, client.protocol.handshake_exc
        assert client.protocol.state is State.OPEN
        takeover_params = ("client_no_context_takeover; server_no_context_takeover; "
                           if takeover else "")
        assert resp.headers["Sec-WebSocket-Extensions"] == \
            f"permessage-deflate; {takeover_params}server_max_window_bits=15"
        for n in range(3):
            text = f"echo me, compressed, number {n} " * 20
            client.raw.clear()
            client.sent.clear()
            client.protocol.send_text(text.encode())
            client.flush()
            assert client.sent[0] == 0xC1  # FIN, RSV1 (compressed), text: the client deflated
            frame = client.next_event()
            assert isinstance(frame, Frame)
            assert (frame.opcode, frame.data) == (Opcode.TEXT, text.encode())
            head = bytes(client.raw[:2])
            assert head[0] == 0xC1 and head[1] < len(text)  # condure deflated its echo
        client.protocol.send_close(1000, "done")
        client.flush()
        assert client.next_event().opcode is Opcode.CLOSE
        assert client.conn.read_until_close() == b""
    finally:
        client.conn.close()


def test_websockets_sync_client_with_server_max_window_bits(echo):
    factory = ClientPerMessageDeflateFactory(server_max_window_bits=15)
    with sync_connect(f"ws://127.0.0.1:{echo.port}/sync", extensions=[factory],
                      compression=None, open_timeout=10) as ws:
        assert ws.response.headers["Sec-WebSocket-Extensions"] == \
            "permessage-deflate; server_max_window_bits=15"
        payload = bytes(range(256)) * 40
        ws.send(payload)
        assert ws.recv(timeout=10) == payload
        ws.send("héllo " * 100)
        assert ws.recv(timeout=10) == "héllo " * 100


def test_raw_offer_of_server_max_window_bits(echo):
    with wc.WsConn(echo.port) as ws:
        ws.send(handshake(extra="Sec-WebSocket-Extensions: permessage-deflate; "
                                "server_max_window_bits=15\r\n"))
        resp = ws.read_handshake()
        assert resp.code == 101
        assert resp.header("Sec-WebSocket-Extensions") == \
            b"permessage-deflate; server_max_window_bits=15"
        ws.send_frame(wc.OP_TEXT, wc.deflate(b"raw " * 50), rsv1=True)
        frame = ws.read_frame()
        assert frame.opcode == wc.OP_TEXT and frame.rsv1
        assert wc.inflate(frame.payload) == b"raw " * 50


# -- req listener ---------------------------------------------------------------

@pytest.fixture(scope="module")
def req(tmp_path_factory):
    """Our condure with a req listener and examples/reqhandler.py."""
    workdir = tmp_path_factory.mktemp("ws-handshake-req")
    endpoint = f"ipc://{workdir}/req"
    condure = procs.start_condure("ours", workdir / "condure",
                                  listen=["127.0.0.1:{port},req"],
                                  extra_args=["--zclient-req", endpoint])
    try:
        handler = _handler([str(EXAMPLES / "reqhandler.py"), "--endpoint", endpoint],
                           workdir / "handler.stderr")
        try:
            with connect(condure.port, timeout=15) as c:
                c.send(request("GET", "/ready"))
                assert c.read_response().body == b"hello world\n"
            yield condure
        finally:
            procs.terminate(handler)
    finally:
        condure.stop()


def test_req_listener_serves_an_http10_upgrade(req):
    with connect(req.port) as c:
        c.send(handshake("1.0"))
        resp = c.read_response()
        assert resp.raw.startswith(b"HTTP/1.0 200 OK\r\n"), resp.raw
        assert resp.body == b"hello world\n"
    with connect(req.port) as c:  # in HTTP/1.1: Condure's refusal, as before
        c.send(handshake("1.1"))
        resp = c.read_response()
        assert resp.code == 400 and b"WebSockets not supported" in resp.body
