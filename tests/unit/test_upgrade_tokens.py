"""The WebSocket handshake tokens are case-insensitive (RFC 6455 4.1, 4.2.1;
RFC 9110 7.6.1, 7.8), byte-level through the sans-I/O sessions.

Condure 1.9.1 took only the exact value ``Upgrade: websocket`` as a
handshake and forwarded ``Upgrade: WebSocket`` as a plain HTTP request
(reference 5.7.1, 12 item 21); condure takes the ``websocket`` token in
any case, also inside a list. ``Connection`` is not checked, as in
Condure, so its ``upgrade`` token may come in any case or list. The
client role opens on the origin's 101 whatever case its ``Upgrade`` and
``Connection`` values have.
"""

from __future__ import annotations

import pytest

from condure.session.client_ws import ClientWsSession
from condure.session.req import WEBSOCKET_REFUSAL
from condure.session.websocket import WebSocketSession
from condure.session.ws_frames import TEXT, parse_header, unmask
from condure.session.ws_handshake import accept_value, is_upgrade
from condure.zhttp.packets import Cancel, Data
from tests.unit.client_helpers import INSTANCE, START, ClientDriver, first
from tests.unit.test_req_session import make as req_session
from tests.unit.test_req_session import reply as req_reply
from tests.unit.test_websocket_session import WsDriver, cframe

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3


def handshake(upgrade: bytes, connection: bytes) -> bytes:
    return (b"GET /ws HTTP/1.1\r\nHost: e\r\nUpgrade: " + upgrade + b"\r\nConnection: "
            + connection + b"\r\nSec-WebSocket-Key: " + KEY
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


HANDSHAKES = [
    (b"WebSocket", b"upgrade"),
    (b"WEBSOCKET", b"keep-alive, Upgrade"),
    (b"websocket", b"upgrade"),
    (b"websocket", b"keep-alive, Upgrade"),
    (b"wEbSoCkEt", b"UPGRADE"),
    (b"h2c, WebSocket", b"Upgrade"),
    (b" websocket , foo", b"Upgrade, HTTP2-Settings"),
]


@pytest.mark.parametrize(("upgrade", "connection"), HANDSHAKES)
def test_handshake_opens_a_websocket_session(upgrade: bytes, connection: bytes) -> None:
    d = WsDriver()
    d.client(handshake(upgrade, connection))
    assert isinstance(d.session, WebSocketSession)
    (packet,) = d.new_packets()
    assert packet.uri == b"ws://e/ws" and not packet.stream and not packet.more
    assert (b"Upgrade", upgrade.strip()) in packet.headers  # forwarded as the client wrote it
    assert not d.output
    d.respond(101, b"Switching Protocols", credits=100)
    assert d.new_output() == (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + ACCEPT
                              + b"\r\n\r\n")
    d.client(cframe(TEXT, b"hello"))
    (message,) = d.new_packets()
    assert message.body == b"hello" and message.content_type == b"text"
    d.handler(Data, body=b"hello")
    assert d.new_output() == b"\x81\x05hello"  # unmasked text frame
    assert not d.closed


def test_handshake_split_byte_by_byte() -> None:
    d = WsDriver(read_size=1)
    d.client(handshake(b"WebSocket", b"upgrade"))
    assert isinstance(d.session, WebSocketSession)
    assert d.packets[0].uri == b"ws://e/ws"


@pytest.mark.parametrize("upgrade", [b"h2c", b"websocket2", b"websocket/13", b"web socket",
                                     b"TLS/1.2"])
def test_other_upgrade_tokens_are_plain_http(upgrade: bytes) -> None:
    d = WsDriver()
    d.client(handshake(upgrade, b"Upgrade"))
    (packet,) = d.new_packets()
    assert packet.uri == b"http://e/ws" and packet.stream
    assert not isinstance(d.session, WebSocketSession)


@pytest.mark.parametrize(("headers", "expected"), [
    (((b"Upgrade", b"WebSocket"),), True),
    (((b"UPGRADE", b"WEBSOCKET"),), True),
    (((b"Upgrade", b"h2c, WebSocket"),), True),
    (((b"Upgrade", b"foo"), (b"upgrade", b"websocket")), True),
    (((b"Upgrade", b"h2c"),), False),
    (((b"Upgrade", b""),), False),
    (((b"Upgrade", b","),), False),
    (((b"Upgrades", b"websocket"),), False),
    (((b"Connection", b"websocket, Upgrade"),), False),
])
def test_is_upgrade(headers: tuple, expected: bool) -> None:
    assert is_upgrade(headers, http11=True) is expected
    assert is_upgrade(headers, http11=False) is False  # RFC 9110 7.8


# -- HTTP/1.0: Upgrade is ignored (RFC 9110 7.8), no 101 (RFC 9110 15.2) -------------

def http10(handshake_: bytes) -> bytes:
    return handshake_.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)


@pytest.mark.parametrize("upgrade", [b"websocket", b"WebSocket", b"h2c, websocket"])
def test_http10_handshake_is_a_plain_request(upgrade: bytes) -> None:
    d = WsDriver()
    d.client(http10(handshake(upgrade, b"Upgrade")))
    assert not isinstance(d.session, WebSocketSession)
    (packet,) = d.new_packets()
    assert isinstance(packet, Data)
    assert packet.uri == b"http://e/ws" and packet.stream and packet.method == b"GET"
    assert (b"Upgrade", upgrade) in packet.headers  # forwarded as it came, like any header
    d.respond(200, b"OK", body=b"plain\n")
    out = d.new_output()
    assert out.startswith(b"HTTP/1.0 200 OK\r\n") and out.endswith(b"\r\n\r\nplain\n")
    assert d.close.graceful  # HTTP/1.0 without keep-alive


def test_http10_handshake_answered_101_is_a_handler_fault() -> None:
    d = WsDriver()
    d.client(http10(handshake(b"websocket", b"Upgrade")))
    d.new_packets()
    d.respond(101, b"Switching Protocols")  # no 1xx to an HTTP/1.0 client (RFC 9110 15.2)
    assert not d.output and not isinstance(d.session, WebSocketSession)
    assert d.close.handler_fault and d.close.reason == "handler sent status 101"
    assert [type(p) for p in d.new_packets()] == [Cancel]


def test_req_listener_passes_an_http10_handshake_on() -> None:
    d = req_session()
    d.client(http10(handshake(b"websocket", b"Upgrade")))
    assert not d.new_output()
    (send,) = d.new_sends()
    assert isinstance(send.packet, Data) and send.packet.uri == b"http://e/ws"
    assert (b"Upgrade", b"websocket") in send.packet.headers
    req_reply(d, body=b"hello\n")
    out = d.new_output()
    assert out.startswith(b"HTTP/1.0 200 OK\r\n") and out.endswith(b"hello\n")


@pytest.mark.parametrize("upgrade", [b"WebSocket", b"h2c, websocket"])
def test_req_listener_refuses_any_case(upgrade: bytes) -> None:
    # the same test decides for both listener modes
    d = req_session()
    d.client(handshake(upgrade, b"upgrade"))
    assert d.new_output() == WEBSOCKET_REFUSAL
    assert d.sends == [] and d.close.graceful


# -- client role: the origin's 101 ------------------------------------------------

CLIENT_KEY = b"AAECAwQFBgcICQoLDA0ODw=="  # base64 of the first 16 "random" bytes


class Counting:
    """Predictable randomness: 0, 1, 2, ... so the key is CLIENT_KEY."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, size: int) -> bytes:
        out = bytes((self.n + i) & 0xFF for i in range(size))
        self.n += size
        return out


@pytest.mark.parametrize(("upgrade", "connection"), [
    (b"WebSocket", b"upgrade"),
    (b"WEBSOCKET", b"UPGRADE"),
    (b"websocket", b"keep-alive, Upgrade"),
])
def test_client_opens_on_any_case_101(upgrade: bytes, connection: bytes) -> None:
    s = ClientWsSession(first(b"ws://example.com/chat", method=None, credits=1000),
                        instance_id=INSTANCE, now=START, buffer_size=8192, compression=False,
                        random=Counting())
    d = ClientDriver(s)  # type: ignore[arg-type]
    d.connect()
    assert b"Sec-WebSocket-Key: " + CLIENT_KEY + b"\r\n" in d.new_written()
    d.new_packets()
    d.origin(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + upgrade + b"\r\nConnection: "
             + connection + b"\r\nSec-WebSocket-Accept: " + accept_value(CLIENT_KEY)
             + b"\r\n\r\n")
    (packet,) = d.new_packets()
    assert isinstance(packet, Data) and packet.code == 101 and packet.credits  # opened
    assert not d.closed and d.session.wants_read
    d.origin(b"\x81\x02hi")  # an unmasked origin frame reaches the handler
    (message,) = d.new_packets()
    assert message.body == b"hi"
    d.handler(Data, body=b"yo")
    out = bytearray(d.new_written())
    hdr = parse_header(out, rsv1_allowed=False)
    assert hdr is not None and hdr.opcode == TEXT and hdr.mask
    assert unmask(bytes(out[hdr.size:]), hdr.mask, 0) == b"yo"
