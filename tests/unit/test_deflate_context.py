"""--compression-context: what condure adds to its permessage-deflate answer
(RFC 7692 7.1.1), and how a compressed WebSocket moves (docs/handover.md):
between client messages once the client compresses each message on its own,
with condure's compressor starting afresh in the adopting process (also in
the middle of a handler message), and a handover that finds a compressed
client message under way reads it to its end first."""

from __future__ import annotations

import zlib

import pytest
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from condure.config import Config, ConfigError
from condure.session.ws_handshake import CONTEXTS, negotiate, parse_extensions
from condure.session.ws_snapshot import restore_ws
from condure.zhttp.packets import Data, HandoffProceed, HandoffStart, KeepAlive
from tests.unit.test_handoff_session import adopt, carry
from tests.unit.test_websocket_session import SIMPLE, WsDriver, cframe, deflate

CNCT = "client_no_context_takeover"
SNCT = "server_no_context_takeover"

# offer -> answer with keep (Condure's), server, none; None: no compression
ANSWERS = {
    "permessage-deflate": (
        "permessage-deflate", f"permessage-deflate; {CNCT}",
        f"permessage-deflate; {CNCT}; {SNCT}"),
    # what Chromium and Firefox offer
    "permessage-deflate; client_max_window_bits": (
        "permessage-deflate", f"permessage-deflate; {CNCT}",
        f"permessage-deflate; {CNCT}; {SNCT}"),
    "permessage-deflate; client_max_window_bits=10": (
        "permessage-deflate", f"permessage-deflate; {CNCT}",
        f"permessage-deflate; {CNCT}; {SNCT}"),
    # 7.1.2.1: an offered server_max_window_bits is answered (15 only)
    "permessage-deflate; server_max_window_bits=15": (
        "permessage-deflate; server_max_window_bits=15",
        f"permessage-deflate; {CNCT}; server_max_window_bits=15",
        f"permessage-deflate; {CNCT}; {SNCT}; server_max_window_bits=15"),
    "permessage-deflate; server_max_window_bits=10": (None, None, None),
    # 7.1.1.1: an offered server_no_context_takeover is always in the answer
    f"permessage-deflate; {SNCT}": (
        f"permessage-deflate; {SNCT}", f"permessage-deflate; {CNCT}; {SNCT}",
        f"permessage-deflate; {CNCT}; {SNCT}"),
    f"permessage-deflate; {CNCT}": (
        f"permessage-deflate; {CNCT}", f"permessage-deflate; {CNCT}",
        f"permessage-deflate; {CNCT}; {SNCT}"),
    f"permessage-deflate; {CNCT}; {SNCT}": (
        f"permessage-deflate; {CNCT}; {SNCT}",) * 3,
    # the first acceptable offer wins; others are skipped
    "permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits": (
        "permessage-deflate", f"permessage-deflate; {CNCT}",
        f"permessage-deflate; {CNCT}; {SNCT}"),
    f"x-webkit-deflate-frame, permessage-deflate; foo=1, permessage-deflate; {SNCT}": (
        f"permessage-deflate; {SNCT}", f"permessage-deflate; {CNCT}; {SNCT}",
        f"permessage-deflate; {CNCT}; {SNCT}"),
    # parameters twice, or a value where none is allowed: not acceptable
    f"permessage-deflate; {CNCT}; {CNCT}": (None, None, None),
    f"permessage-deflate; {CNCT}=1": (None, None, None),
    "permessage-deflate; client_max_window_bits=16": (None, None, None),
}


@pytest.mark.parametrize("offer", list(ANSWERS))
@pytest.mark.parametrize("context", ["keep", "server", "none"])
def test_answers(offer, context):
    chosen = negotiate(parse_extensions(offer.encode()), context)
    want = ANSWERS[offer][("keep", "server", "none").index(context)]
    assert (chosen.header.decode() if chosen else None) == want


@pytest.mark.parametrize("context", ["server", "none"])
def test_a_browser_like_client_accepts_the_answer(context):
    """The websockets library, offering as browsers do (client_max_window_bits,
    context takeover), takes condure's answer and then compresses each
    message on its own."""
    factory = ClientPerMessageDeflateFactory(client_max_window_bits=True)
    offer = b"; ".join([factory.name.encode()]
                       + [k.encode() if v is None else f"{k}={v}".encode()
                          for k, v in factory.get_request_params()])
    chosen = negotiate(parse_extensions(offer), context)
    assert chosen is not None
    ((_, params),) = parse_extensions(chosen.header)
    ext = factory.process_response_params(
        [(k.decode(), v.decode() if v else None) for k, v in params], [])
    assert ext.local_no_context_takeover  # the client: no context between messages
    assert ext.remote_no_context_takeover is (context == "none")


def test_the_option_takes_three_values_and_moves_by_default():
    assert CONTEXTS == ("server", "none", "keep")
    assert Config().compression_context == "server"
    with pytest.raises(ConfigError):
        Config(compression_context="drop")


# -- sessions ------------------------------------------------------------------------

def browser(context: str, **kw) -> WsDriver:
    """An accepted session of a client offering what Chromium offers."""
    d = WsDriver(compression=True, **kw)
    d.session.deflate_context = context
    d.client(SIMPLE + b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
             b"\r\n\r\n")
    d.respond(101, b"Switching Protocols", credits=kw.get("buffer_size", 8192))
    d.new_output()
    d.new_sends()
    return d


def frames(out: bytes) -> list[tuple[int, bytes]]:
    """(first byte, payload) of the server's frames in ``out``."""
    got = []
    while out:
        n = out[1] & 0x7F
        at = 2
        if n == 126:
            n, at = int.from_bytes(out[2:4], "big"), 4
        elif n == 127:
            n, at = int.from_bytes(out[2:10], "big"), 10
        got.append((out[0], out[at:at + n]))
        out = out[at + n:]
    return got


def test_keep_does_not_move_and_does_not_wait():
    d = browser("keep")
    assert d.session.begin_handoff() is False
    assert not d.session.handoff_later  # closed at once (1012)


def test_server_context_moves_between_messages_and_mid_handler_message():
    """condure's compressor keeps its context (the second message refers back
    to the first), the session moves with a handler message half written,
    and the adopting process's fresh compressor goes on: the client's one
    decompressor, kept across messages, inflates everything."""
    d = browser("server")
    text = b'{"event":"tick","data":{"n":1,"ok":true}}'
    d.handler(Data, body=text)
    d.handler(Data, body=text)
    d.handler(Data, body=text[:20], more=True)
    d.flush()
    assert d.session.begin_handoff() is True
    d.drain()
    assert [type(p) for p in d.new_packets()][-1] is HandoffStart
    d.handler(HandoffProceed)
    out = d.new_output()
    d2 = adopt(d)
    assert type(d2.new_packets()[0]) is KeepAlive
    d2.handler(Data, body=text[20:])
    d2.handler(Data, body=text)
    out += d2.new_output()
    z = zlib.decompressobj(-15)  # the client's context, never reset
    messages, body = [], b""
    for b0, payload in frames(out):
        body += z.decompress(payload + (b"\x00\x00\xff\xff" if b0 & 0x80 else b""))
        if b0 & 0x80:
            messages.append(body)
            body = b""
    assert messages == [text] * 4
    sizes = [len(p) for _, p in frames(out)]
    assert sizes[1] < sizes[0]  # the second message referred back to the first
    assert not d2.closed


@pytest.mark.parametrize("context", ["server", "none"])
def test_a_compressed_client_message_under_way_is_read_to_its_end(context):
    """The handover starts inside a fragmented compressed message (70 KB):
    the session reads it to its end, forwards it, reads nothing after it,
    then moves, and the next message inflates in the adopting process."""
    d = browser(context, buffer_size=8192)
    message = bytes(range(256)) * 280  # 71680 bytes
    payload = deflate(message)
    second = b"next one " * 30
    stream = (cframe(2, payload[:200], rsv=0x40, fin=False) + cframe(0, payload[200:], fin=True)
              + cframe(1, deflate(second), rsv=0x40))
    d.client(stream[:150])
    assert d.session.begin_handoff() is False
    assert d.session.handoff_later
    d.client(stream[150:])
    got = b""
    while packets := [p for p in d.new_packets() if isinstance(p, Data)]:
        got += b"".join(p.body for p in packets)
        d.credit(sum(len(p.body) for p in packets))  # a handler that keeps up
    assert got == message  # forwarded whole, and nothing after it
    assert d.session.begin_handoff() is True
    d.drain()
    d.handler(HandoffProceed)
    assert d.session.ready_to_export
    record = carry(d)
    assert not record.get("frame_left") and record["pending"] == b""
    session = restore_ws(record, instance_id=b"condure.7", now=d.now, buffer_size=8192,
                         stream_timeout=1800.0, messages_max=100)
    d2 = WsDriver(session=session, now=d.now)
    d2.handler_seq = dict(d.handler_seq)
    d2.inbound = bytearray(d.inbound)
    session.resume()
    d2.pump()
    data = [p for p in d2.new_packets() if isinstance(p, Data)]
    assert [p.body for p in data] == [second]
    assert not d2.closed


def test_a_client_message_that_does_not_end_keeps_the_session_waiting():
    d = browser("server")
    d.client(cframe(2, deflate(b"x" * 1000)[:5], rsv=0x40, fin=False))
    assert d.session.begin_handoff() is False
    assert d.session.handoff_later
    assert d.session.handoff_wait == "a compressed client message is under way"
    d.client(cframe(9, b"p"))  # a ping inside the message: still waiting
    assert d.session.handoff_later
