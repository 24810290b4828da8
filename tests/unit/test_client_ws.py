"""The client role's WebSocket session (reference 6.2 steps 6, 8, 9; 6.3;
10.4), byte-level, through the fake adapter in ``client_helpers``. The
origin's frames are built, and condure's masked frames read back, with the
server role's own frame codec."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from condure.session.client_kinds import stream_session
from condure.session.client_ws import WINDOW, ClientWsSession
from condure.session.ws_frames import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    Deflater,
    FrameError,
    Inflater,
    frame,
    mask_frame,
    masked_frame,
    parse_header,
    parse_origin_header,
    unmask,
)
from condure.session.ws_handshake import accept_value
from condure.zhttp.codec import encode
from condure.zhttp.packets import (
    Cancel,
    Close,
    Credit,
    Data,
    Error,
    Packet,
    Ping,
    Pong,
)
from tests.unit.client_helpers import INSTANCE, START, ClientDriver, first

URI = b"ws://example.com:8080/chat?room=1"
KEY = b"AAECAwQFBgcICQoLDA0ODw=="  # base64 of bytes 0..15, the first 16 random bytes


class Counting:
    """The session's randomness, made predictable: 0, 1, 2, ... (mod 256)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, size: int) -> bytes:
        out = bytes((self.n + i) & 0xFF for i in range(size))
        self.n += size
        return out


def session(packet: Data | None = None, *, compression: bool = False,
            buffer_size: int = 8192, window: int = WINDOW, **kw: object) -> ClientDriver:
    s = ClientWsSession(packet or first(URI, method=None, credits=1000), instance_id=INSTANCE,
                        now=START, buffer_size=buffer_size, compression=compression,
                        random=Counting(), window=window)
    return ClientDriver(s, **kw)  # type: ignore[arg-type]


def switching(key: bytes = KEY, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_value(key) + b"\r\n"
            + extra + b"\r\n")


def opened(packet: Data | None = None, **kw: object) -> ClientDriver:
    d = session(packet, **kw)  # type: ignore[arg-type]
    d.connect()
    d.origin(switching(extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
                       if kw.get("compression") else b""))
    d.new_packets()
    d.new_written()
    return d


def client_frames(data: bytes) -> list[tuple[int, bool, bool, bytes, bytes]]:
    """(opcode, fin, rsv1, mask, payload) of condure's frames to the origin,
    read with the server role's parser (which insists on masks)."""
    out = []
    buf = bytearray(data)
    while buf:
        hdr = parse_header(buf, rsv1_allowed=True)
        assert hdr is not None
        payload = unmask(bytes(buf[hdr.size:hdr.size + hdr.length]), hdr.mask, 0)
        assert len(payload) == hdr.length
        del buf[:hdr.size + hdr.length]
        out.append((hdr.opcode, hdr.fin, hdr.rsv1, hdr.mask, payload))
    return out


def summary(packets: list[Packet]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for p in packets:
        if isinstance(p, Data):
            rows.append(("data", p.content_type, p.body, p.more))
        elif isinstance(p, Close):
            rows.append(("close", p.code, p.body))
        elif isinstance(p, (Ping, Pong)):
            rows.append((type(p).__name__.lower(), p.body))
        else:
            rows.append((type(p).__name__.lower(),))
    return rows


# -- the handshake ---------------------------------------------------------------

def test_golden_upgrade_head() -> None:
    d = session(first(URI, method=b"POST", credits=10, body=b"ignored", headers=(
        (b"Sec-WebSocket-Protocol", b"chat"), (b"Connection", b"x"), (b"Upgrade", b"y"),
        (b"Sec-WebSocket-Key", b"z"), (b"Sec-WebSocket-Version", b"8"), (b"Host", b"h"),
        (b"Content-Length", b"7"))), compression=True)
    assert [type(p).__name__ for p in d.packets] == ["KeepAlive"]
    target = d.connects[0].target
    assert (target.connect_host, target.connect_port, target.tls) == ("example.com", 8080, False)
    assert not d.written
    d.connect()
    assert d.new_written() == (
        b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com:8080\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n\r\n")
    assert d.session.wants_read


def test_wss_without_compression_offers_nothing() -> None:
    d = session(first(b"wss://example.com/", method=None))
    assert d.connects[0].target.tls
    d.connect()
    head = d.new_written()
    assert head.startswith(b"GET / HTTP/1.1\r\nHost: example.com\r\n")
    assert b"Extensions" not in head


def test_switching_protocols_opens_the_session() -> None:
    assert accept_value(KEY) == b"Bz3qJYTGdOe8gUSpLosEdiLKDrk="
    d = session()
    d.connect()
    d.new_packets()
    d.origin(switching(extra=b"Sec-WebSocket-Protocol: chat\r\n"))
    (packet,) = d.new_packets()
    # credits: the window, 2**18 + 5 (Condure 1.10: --buffer-size)
    assert encode(packet) == (
        b"T295:4:from,7:condure,2:id,5:req-1,3:seq,1:1#3:ext,15:5:multi,4:true!}"
        b"4:code,3:101#6:reason,19:Switching Protocols,7:headers,151:"
        b"22:7:Upgrade,9:websocket,]24:10:Connection,7:Upgrade,]"
        b"56:20:Sec-WebSocket-Accept,28:Bz3qJYTGdOe8gUSpLosEdiLKDrk=,]"
        b"33:22:Sec-WebSocket-Protocol,4:chat,]]7:credits,6:262149#}")
    assert not d.closed and d.session.wants_read and not d.releases


@pytest.mark.parametrize(("buffer_size", "window", "credits"), [
    (8192, WINDOW, 262_149), (300_000, WINDOW, 300_000), (256, 256, 256), (8192, 256, 8192)])
def test_the_window_is_the_larger_of_the_buffer_and_window(
        buffer_size: int, window: int, credits: int) -> None:
    d = opened(buffer_size=buffer_size, window=window)
    assert d.session.output.credits == credits
    d.handler(Data, body=b"x" * credits)  # the whole window at once is fine
    assert len(client_frames(d.new_written())[0][4]) == credits
    assert not d.new_packets() and not d.closed


def test_compression_credits_are_three_quarters() -> None:
    d = session(compression=True, window=8192)
    d.connect()
    d.new_packets()
    d.origin(switching(extra=b"Sec-WebSocket-Extensions: permessage-deflate; "
                       b"client_max_window_bits=15; server_no_context_takeover\r\n"))
    (packet,) = d.new_packets()
    assert packet.code == 101 and packet.credits == 6144
    d = opened(compression=True)
    assert d.session.output.credits == 196_611


def test_bad_accept_is_undefined_condition() -> None:
    d = session()
    d.connect()
    d.new_packets()
    d.origin(switching(key=b"something else"))
    (packet,) = d.new_packets()
    assert isinstance(packet, Error) and packet.condition == b"undefined-condition"
    assert d.closed and not d.closes[0].graceful


@pytest.mark.parametrize(("compression", "answer"), [
    (False, b"permessage-deflate"),
    (True, b"permessage-deflate, permessage-deflate"),
    (True, b"x-webkit-deflate-frame"),
    (True, b"permessage-deflate; client_max_window_bits=10"),
    (True, b"permessage-deflate; foo"),
    (True, b"permessage-deflate; client_no_context_takeover=1"),
    (True, b"permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
    (True, b"permessage-deflate; ;"),
])
def test_bad_extension_answer_is_undefined_condition(compression: bool, answer: bytes) -> None:
    d = session(compression=compression)
    d.connect()
    d.new_packets()
    d.origin(switching(extra=b"Sec-WebSocket-Extensions: " + answer + b"\r\n"))
    (packet,) = d.new_packets()
    assert isinstance(packet, Error) and packet.condition == b"undefined-condition"


def test_non_101_is_rejected_with_body() -> None:
    d = session()
    d.connect()
    d.new_packets()
    d.origin(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
             b"Content-Length: 8\r\n\r\ngo ")
    assert not d.new_packets() and d.session.wants_read
    d.origin(b"away\n")
    (packet,) = d.new_packets()
    assert encode(packet) == (
        b"T229:4:from,7:condure,2:id,5:req-1,3:seq,1:1#3:ext,15:5:multi,4:true!}"
        b"4:type,5:error,9:condition,8:rejected,4:code,3:403#6:reason,9:Forbidden,"
        b"7:headers,60:30:12:Content-Type,10:text/plain,]22:14:Content-Length,1:8,]]"
        b"4:body,8:go away\n,}")
    assert d.closed and [r.persistent for r in d.releases] == [True]


def test_rejected_body_stops_at_the_buffer_size() -> None:
    d = session(buffer_size=256)
    d.connect()
    d.new_packets()
    d.origin(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"200\r\n" + b"x" * 512 + b"\r\n0\r\n\r\n")
    (packet,) = d.new_packets()
    assert isinstance(packet, Error) and packet.condition == b"rejected"
    assert packet.body == b"x" * 256 and packet.code == 500
    assert [r.persistent for r in d.releases] == [False]


def test_origin_closes_before_the_head() -> None:
    d = session()
    d.connect()
    d.new_packets()
    d.origin(b"HTTP/1.1 101 Swi", eof=True)
    (packet,) = d.new_packets()
    assert isinstance(packet, Error) and packet.condition == b"undefined-condition"


def test_redirect_followed_with_a_fresh_key() -> None:
    d = session(first(URI, method=None, follow_redirects=True))
    d.connect()
    d.new_written()
    d.origin(b"HTTP/1.1 302 Found\r\nLocation: /other\r\nContent-Length: 0\r\n\r\n")
    assert len(d.connects) == 2 and d.connects[1].target.path == b"/other"
    d.connect()
    head = d.new_written()
    key = b"EBESExQVFhcYGRobHB0eHw=="  # bytes 16..31
    assert head.startswith(b"GET /other HTTP/1.1\r\n") and key in head
    d.new_packets()
    d.origin(switching(key))
    assert d.new_packets()[0].code == 101


def test_stream_session_picks_the_kind() -> None:
    ws = stream_session(first(b"WSS://example.com/", method=None), instance_id=INSTANCE,
                        now=START)
    http = stream_session(first(), instance_id=INSTANCE, now=START)
    assert type(ws) is ClientWsSession and type(http).__name__ == "ClientHttpSession"


# -- frames both ways --------------------------------------------------------------

def test_golden_masked_frames_with_a_fresh_key_each() -> None:
    d = opened()
    d.handler(Data, body=b"hi there")
    d.handler(Data, content_type=b"binary", body=b"\xff\x00")
    d.handler(Ping, body=b"hp")
    d.handler(Pong, body=b"hq")
    assert d.new_written() == (
        bytes.fromhex("8188 10111213 7878326778746076")  # "hi there", key 10 11 12 13
        + bytes.fromhex("8282 14151617 eb15")  # ff 00, key 14 15 16 17
        + bytes.fromhex("8982 18191a1b 7069")  # ping "hp"
        + bytes.fromhex("8a82 1c1d1e1f 746c"))  # pong "hq"
    assert not d.new_packets()
    d.flush()
    (credit,) = d.new_packets()
    assert isinstance(credit, Credit) and credit.credits == 14


def test_fragmented_handler_message() -> None:
    d = opened()
    d.handler(Data, body=b"part1-", more=True)
    d.handler(Data, body=b"part2")
    frames = client_frames(d.new_written())
    assert [(op, fin, payload) for op, fin, _, _, payload in frames] == [
        (TEXT, False, b"part1-"), (CONT, True, b"part2")]
    assert frames[0][3] != frames[1][3]


@pytest.mark.parametrize(("buffer_size", "window"), [(256, 256), (8192, WINDOW)])
def test_handler_beyond_its_credits_is_cancelled(buffer_size: int, window: int) -> None:
    d = opened(buffer_size=buffer_size, window=window)
    d.handler(Data, body=b"x" * (max(buffer_size, window) + 1))
    assert summary(d.new_packets()) == [("cancel",)] and d.closed


def test_origin_messages_within_credits() -> None:
    d = opened(first(URI, method=None, credits=10))
    d.origin(frame(TEXT, b"0123456789abcdefghij") + frame(BINARY, b"\x00\x01"))
    assert summary(d.new_packets()) == [("data", b"text", b"0123456789", True)]
    assert not d.session.wants_read
    d.credit(15)
    assert summary(d.new_packets()) == [("data", b"text", b"abcdefghij", False),
                                        ("data", b"binary", b"\x00\x01", False)]
    d.handler(Data, credits=100)  # credits in a data packet count too
    # a fragmented message goes as one packet when the credits allow
    d.origin(frame(TEXT, b"frag", fin=False) + frame(CONT, b"", fin=False)
             + frame(CONT, b"ment") + frame(TEXT, b""))
    assert summary(d.new_packets()) == [("data", b"text", b"fragment", False),
                                        ("data", b"text", b"", False)]


def test_origin_message_held_until_complete() -> None:
    """Each origin message is one packet when credits and window allow,
    whatever the reads (pushpin-proxy 1.36 then never has to split it)."""
    d = opened(first(URI, method=None, credits=WINDOW))
    d.read_size = 8192
    blob = bytes(range(256)) * 256  # 64 KiB, eight reads and more
    d.origin(frame(BINARY, blob))
    assert summary(d.new_packets()) == [("data", b"binary", blob, False)]
    parts = [bytes([i]) * 10000 for i in range(5)]
    d.origin(b"".join(frame(BINARY if i == 0 else CONT, part, fin=i == 4)
                      for i, part in enumerate(parts)))
    assert summary(d.new_packets()) == [("data", b"binary", b"".join(parts), False)]


def test_origin_message_beyond_the_credits_or_window_goes_in_pieces() -> None:
    d = opened(first(URI, method=None, credits=1000), buffer_size=256, window=300)
    d.read_size = 100
    whole = frame(TEXT, b"a" * 700)
    d.origin(whole[:200])
    assert not d.new_packets() and d.session.wants_read  # held, reading on
    d.origin(whole[200:])  # pieces of the window
    assert summary(d.new_packets()) == [("data", b"text", b"a" * 300, True),
                                        ("data", b"text", b"a" * 300, True),
                                        ("data", b"text", b"a" * 100, False)]
    d.origin(frame(TEXT, b"c" * 500))  # 300 credits left: a piece of 300
    assert summary(d.new_packets()) == [("data", b"text", b"c" * 300, True)]
    assert not d.session.wants_read  # no credits: nothing more is read
    d.credit(100)
    assert summary(d.new_packets()) == [("data", b"text", b"c" * 100, True)]
    d.credit(1000)
    assert summary(d.new_packets()) == [("data", b"text", b"c" * 100, False)]
    assert d.session.input.credits == 900


def test_control_frame_inside_a_held_message_keeps_its_place() -> None:
    d = opened()
    d.origin(frame(TEXT, b"fr", fin=False) + frame(PING, b"p") + frame(CONT, b"ag")
             + frame(TEXT, b"x", fin=False) + frame(CLOSE, b""))
    assert summary(d.new_packets()) == [("data", b"text", b"fr", True), ("ping", b"p"),
                                        ("data", b"text", b"ag", False),
                                        ("data", b"text", b"x", True), ("close", None, b"")]


def test_origin_control_frames() -> None:
    d = opened()
    d.origin(frame(PING, b"pp") + frame(PONG, b"qq"))
    assert summary(d.new_packets()) == [("ping", b"pp"), ("pong", b"qq")]
    assert not d.new_written()  # condure does not answer pings itself


def test_control_frames_wait_for_credits() -> None:
    d = opened(first(URI, method=None, credits=1))
    d.origin(frame(PING, b"pp"))
    assert not d.new_packets()
    d.handler(Ping, body=b"", credits=1)
    assert summary(d.new_packets()) == [("ping", b"pp")]


@pytest.mark.parametrize("bad", [
    mask_frame(frame(TEXT, b"masked"), b"abcd"),  # RFC 6455 5.1
    frame(CONT, b"x"),
    bytes((0x83, 0)),  # reserved opcode
    frame(TEXT, b"x", rsv1=True),  # no compression negotiated
    frame(TEXT, b"\xff"),  # not UTF-8
])
def test_origin_protocol_error_fails_the_connection(bad: bytes) -> None:
    d = opened()
    d.origin(bad)
    assert summary(d.new_packets()) == [("cancel",)]
    ((opcode, _, _, _, payload),) = client_frames(d.new_written())
    assert opcode == CLOSE and struct.unpack("!H", payload[:2])[0] in (1002, 1007)
    assert d.closed


def test_origin_eof_without_close_is_cancel() -> None:
    d = opened()
    d.origin(eof=True)
    assert summary(d.new_packets()) == [("cancel",)] and d.closed


# -- closing ---------------------------------------------------------------------------

def test_origin_closes_first() -> None:
    d = opened()
    d.origin(frame(CLOSE, struct.pack("!H", 1001) + b"bye"))
    assert summary(d.new_packets()) == [("close", 1001, b"bye")]
    assert not d.session.wants_read and not d.closed
    d.handler(Data, body=b"late")  # still delivered until the handler's close
    d.handler(Close, code=1001, body=b"ok")
    frames = client_frames(d.new_written())
    assert [(op, p) for op, _, _, _, p in frames] == [(TEXT, b"late"), (CLOSE, b"\x03\xe9ok")]
    assert d.closed and d.closes[0].graceful and [r.persistent for r in d.releases] == [False]
    assert not d.new_packets()


def test_handler_closes_first() -> None:
    d = opened()
    d.handler(Close)
    assert client_frames(d.new_written()) == [(CLOSE, True, False, b"\x10\x11\x12\x13",
                                               b"\x03\xe8")]
    d.handler(Data, body=b"dropped")
    assert not d.new_written()
    d.origin(frame(TEXT, b"still") + frame(CLOSE, b""))
    assert summary(d.new_packets()) == [("data", b"text", b"still", False), ("close", None, b"")]
    assert d.closed and d.closes[0].graceful


@pytest.mark.parametrize("code", [1005, 1006, 999, 5000])
def test_handler_close_code_no_endpoint_may_send_goes_without_status(code: int) -> None:
    d = opened()
    d.handler(Close, code=code, body=b"why")
    assert [(op, p) for op, _, _, _, p in client_frames(d.new_written())] == [(CLOSE, b"")]


def test_handler_cancel_sends_nothing() -> None:
    d = opened()
    d.handler(Cancel)
    assert not d.new_packets() and not d.new_written() and d.closed


def test_timeouts() -> None:
    d = opened()
    d.advance(59)
    d.handler(Credit, credits=1)  # the handler's packets keep the session up
    d.advance(59)
    assert not d.closed
    d.advance(2)  # 60 s of handler silence: closed, nothing sent
    assert d.closed and not d.new_packets()
    s = ClientWsSession(first(URI, method=None), instance_id=INSTANCE, now=START,
                        stream_timeout=10.0, random=Counting())
    d2 = ClientDriver(s)
    d2.connect()
    d2.origin(switching())
    d2.new_packets()
    d2.advance(11)  # the origin's silence after the 101: cancel
    assert summary(d2.new_packets()) == [("cancel",)] and d2.closed


# -- permessage-deflate --------------------------------------------------------------

@pytest.mark.parametrize("takeover", [b"", b"; client_no_context_takeover; "
                                           b"server_no_context_takeover"])
def test_deflate_round_trip(takeover: bytes) -> None:
    no_ct = bool(takeover)
    d = session(compression=True)
    d.connect()
    d.origin(switching(extra=b"Sec-WebSocket-Extensions: permessage-deflate" + takeover
                       + b"\r\n"))
    d.new_packets()
    d.new_written()
    # handler -> origin: compressed, masked; inflated by the origin's Inflater
    origin_in = Inflater(no_ct)
    for text in (b"compress me compress me", b"compress me compress me"):
        d.handler(Data, body=text)
        ((opcode, fin, rsv1, _, payload),) = client_frames(d.new_written())
        assert (opcode, fin, rsv1) == (TEXT, True, True)
        origin_in.feed(payload, last=True)
        assert origin_in.take(1000) == text
        origin_in.end_message()
    d.handler(Data, body=b"half ", more=True)
    d.handler(Data, body=b"and half")
    frames = client_frames(d.new_written())
    assert [(op, rsv1) for op, _, rsv1, _, _ in frames] == [(TEXT, True), (CONT, False)]
    origin_in.feed(frames[0][4])
    origin_in.feed(frames[1][4], last=True)
    assert origin_in.take(1000) == b"half and half"
    # origin -> handler: the origin's Deflater, inflated by condure
    origin_out = Deflater(no_ct)
    for text in (b"hello hello hello", b"hello hello hello"):
        d.origin(frame(TEXT, origin_out.compress(text, True), rsv1=True))
        assert summary(d.new_packets()) == [("data", b"text", text, False)]
    d.origin(frame(BINARY, b"plain"))  # frames without RSV1 are taken as they are
    assert summary(d.new_packets()) == [("data", b"binary", b"plain", False)]


# -- the parser ----------------------------------------------------------------------

def test_origin_header_parser() -> None:
    assert parse_origin_header(b"\x81", rsv1_allowed=False) is None
    assert parse_origin_header(b"\x81\x7e\x01", rsv1_allowed=False) is None
    hdr = parse_origin_header(b"\x82\x7e\x01\x00", rsv1_allowed=False)
    assert hdr is not None and (hdr.opcode, hdr.length, hdr.size, hdr.mask) == (BINARY, 256, 4, b"")
    with pytest.raises(FrameError):
        parse_origin_header(b"\x81\x80abcd", rsv1_allowed=False)
    with pytest.raises(FrameError):
        parse_origin_header(b"\x09\x00", rsv1_allowed=False)  # fragmented ping
    assert masked_frame(TEXT, b"", b"abcd") == b"\x81\x80abcd"
    big = masked_frame(BINARY, b"\x00" * 70000, b"\x01\x02\x03\x04")
    assert big[:14] == b"\x82\xff" + struct.pack("!Q", 70000) + b"\x01\x02\x03\x04"


ORIGIN_BYTES = (switching() + frame(TEXT, b"hello") + frame(BINARY, b"\x00" * 600)
                + frame(PING, b"p") + frame(TEXT, b"fr", fin=False) + frame(CONT, b"ag")
                + frame(CLOSE, struct.pack("!H", 1000) + b"done"))


def run_split(cuts: list[int], credits: int, window: int = 256) -> list[tuple[object, ...]]:
    d = session(first(URI, method=None, credits=credits), buffer_size=256, window=window)
    d.connect()
    d.new_packets()
    points = sorted({0, len(ORIGIN_BYTES), *(c % (len(ORIGIN_BYTES) + 1) for c in cuts)})
    for a, b in itertools.pairwise(points):
        d.origin(ORIGIN_BYTES[a:b])
    for _ in range(200):
        if d.session.input.closed:
            break
        d.credit(credits)
    return summary(d.new_packets())


EXPECTED = run_split([], 10000)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10000), max_size=12))
def test_any_split_of_the_origin_bytes_gives_the_same_messages(cuts: list[int]) -> None:
    # Payload goes to the handler as soon as it arrives (reference 5.7.4), so
    # packet boundaries follow the reads and the credits; the messages, the
    # control packets and their order do not.
    assert messages(run_split(cuts, 10000)) == messages(EXPECTED)
    assert messages(run_split(cuts, 7)) == messages(EXPECTED)
    assert messages(run_split(cuts, 7, WINDOW)) == messages(EXPECTED)
    # with room in the credits and the window, each message is one packet
    assert run_split(cuts, 10000, WINDOW) == messages(EXPECTED)


def messages(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    joined: list[tuple[object, ...]] = []
    for row in rows:
        if joined and row[0] == "data" and joined[-1][0] == "data" and joined[-1][3]:
            prev = joined.pop()
            row = ("data", prev[1], prev[2] + row[2], row[3])  # type: ignore[operator]
        joined.append(row)
    return joined


def test_the_split_reference() -> None:
    assert messages(EXPECTED) == [
        ("data", None, b"", False), ("data", b"text", b"hello", False),
        ("data", b"binary", b"\x00" * 600, False),
        ("ping", b"p"), ("data", b"text", b"frag", False), ("close", 1000, b"done")]
    # a window of 256 bytes: the 600-byte message goes in pieces of 256
    assert [len(r[2]) for r in EXPECTED[2:5]] == [256, 256, 88]  # type: ignore[arg-type]
