"""The chunked transfer coding as both roles read it (RFC 9112 7.1): request
bodies from clients (HeadReader, server role) and responses from origins
(ResponseReader, client role) take and refuse the same inputs."""

from __future__ import annotations

import h11
import pytest

from condure.session.chunked import MAX_LINE, MAX_TRAILERS, ChunkedReader, ChunkError
from condure.session.client_wire import ResponseReader, WireError
from condure.session.head import Head, HeadReader

ERROR = "error"
TAIL = b"\r\nhello\r\n0\r\n\r\n"

GOOD = [
    ("one-digit", b"5" + TAIL),
    ("16-leading-zeros", b"0000000000000005" + TAIL),  # 16 digits: fits
    ("upper-case", b"0000000000000A\r\n0123456789\r\n0\r\n\r\n"),
    ("extension", b"5;name=value" + TAIL),
    ("quoted-extension", b'5;name="a;b \\"c\\""' + TAIL),
    ("two-extensions", b"5;a;b=c" + TAIL),
    ("bws-around-extension", b"5 ; a = b" + TAIL),
    ("whitespace-after-size", b"5 \t" + TAIL),
    ("trailers", b"5\r\nhello\r\n0\r\nX-T: 1\r\nX-U:\r\n\r\n"),
    ("max-line", b"5;" + b"a" * (MAX_LINE - 2) + TAIL),
    ("max-trailers", b"5\r\nhello\r\n0\r\n" + b"X-T: 1\r\n" * MAX_TRAILERS + b"\r\n"),
]

BAD = [
    ("17-digits", b"10000000000000000" + TAIL),  # 2**64: overflows 64 bits
    ("17-leading-zeros", b"00000000000000005" + TAIL),
    ("20-digits", b"fffffffffffffffffff1" + TAIL),
    ("21-digits", b"000000000000000000005" + TAIL),
    ("empty-size", TAIL),
    ("minus", b"-5" + TAIL),
    ("hex-prefix", b"0x5" + TAIL),
    ("leading-space", b" 5" + TAIL),
    ("bare-lf-size", b"5\nhello\r\n0\r\n\r\n"),
    ("bare-lf-after-data", b"5\r\nhello\n0\r\n\r\n"),
    ("bare-lf-last-chunk", b"5\r\nhello\r\n0\n\r\n"),
    ("bare-lf-end", b"5\r\nhello\r\n0\r\n\n"),
    ("bare-lf-trailer", b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n"),
    ("bare-cr-extension", b"5;a\rb" + TAIL),
    ("nul-extension", b"5;a\x00b" + TAIL),
    ("extension-without-name", b"5;" + TAIL),
    ("extension-space-in-value", b"5;a=b c" + TAIL),
    ("unclosed-quote", b'5;a="b' + TAIL),
    ("data-longer-than-size", b"3\r\nhello\r\n0\r\n\r\n"),
    ("bad-trailer", b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n"),
    ("trailer-with-cr", b"5\r\nhello\r\n0\r\nX-T: a\rb\r\n\r\n"),
    ("line-too-long", b"5;" + b"a" * (MAX_LINE - 1) + TAIL),
    ("too-many-trailers", b"5\r\nhello\r\n0\r\n" + b"X-T: 1\r\n" * (MAX_TRAILERS + 1) + b"\r\n"),
]

CASES = [pytest.param(body, id=name) for name, body in GOOD + BAD]
EXPECTED = {body: ERROR if (name, body) in BAD else None for name, body in GOOD + BAD}


def decoded(body: bytes) -> bytes:
    """What a body of GOOD decodes to."""
    reader, buf, out = ChunkedReader(), bytearray(body), bytearray()
    while not reader.done:
        out += reader.read(buf, 1000)
    return bytes(out)


def server_reads(body: bytes, step: int, buffer_size: int = 8192) -> bytes | str:
    """A POST with ``body`` fed ``step`` bytes at a time to the server
    role's reader: the body, or ERROR."""
    reader = HeadReader(buffer_size, b"")
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", True)
    assert isinstance(reader.read_head(), Head)
    out = bytearray()
    for at in range(0, len(body), step):
        reader.feed(body[at:at + step], False)
        while True:
            try:
                event = reader.next_event()
            except h11.RemoteProtocolError:
                return ERROR
            if type(event) is h11.Data:
                out += event.data  # type: ignore[attr-defined]
            elif type(event) is h11.EndOfMessage:
                return bytes(out)
            else:
                assert event is h11.NEED_DATA
                break
        assert reader.buffered(False) <= max(buffer_size, step)
    return "incomplete"


def client_reads(body: bytes, step: int) -> bytes | str:
    """An origin's chunked response with ``body``, fed ``step`` bytes at a
    time to the client role's reader: the body, or ERROR."""
    reader = ResponseReader(8192)
    reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert reader.head() is not None
    out = bytearray()
    try:
        for at in range(0, len(body), step):
            reader.feed(body[at:at + step])
            while not reader.done and (piece := reader.body(7)):
                out += piece
            if reader.done:
                return bytes(out)
    except WireError:
        return ERROR
    return "incomplete"


@pytest.mark.parametrize("body", CASES)
@pytest.mark.parametrize("step", [1, 3, 10_000])
def test_both_roles_agree(body: bytes, step: int) -> None:
    want = EXPECTED[body] or decoded(body)
    assert server_reads(body, step) == want
    assert client_reads(body, step) == want


def test_sixteen_digits_fit_and_the_data_follows() -> None:
    """The largest size (2**64 - 1): a chunk that reads on."""
    for read in (server_reads, client_reads):
        assert read(b"ffffffffffffffff\r\nhello", 100) == "incomplete"
    reader, buf = ChunkedReader(), bytearray(b"ffffffffffffffff\r\nhello")
    assert reader.read(buf, 100) == b"hello" and reader.left == 2**64 - 1 - 5


def test_the_reasons_say_what_is_wrong() -> None:
    with pytest.raises(ChunkError, match="more than 16 hex digits"):
        ChunkedReader().read(bytearray(b"00000000000000005\r\n"), 10)
    with pytest.raises(ChunkError, match="bare LF"):
        ChunkedReader().read(bytearray(b"5\n"), 10)


def test_a_size_line_longer_than_a_small_buffer_is_refused_not_awaited() -> None:
    """With a 512-byte buffer the session stops reading at 512 unparsed
    bytes: a longer size line must be refused by then, not waited for."""
    body = b"5;" + b"a" * 600 + TAIL
    assert server_reads(body, 512, buffer_size=512) == ERROR
    assert server_reads(b"5;" + b"a" * 500 + TAIL, 512, buffer_size=512) == b"hello"


def test_bytes_after_the_body_are_left_for_the_next_request() -> None:
    reader = HeadReader(8192, b"")
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\nGET /next", True)
    assert isinstance(reader.read_head(), Head)
    events = [reader.next_event() for _ in range(3)]
    assert type(events[0]) is h11.Data and type(events[1]) is h11.EndOfMessage
    assert events[2] is h11.PAUSED
    assert reader.leftover() == b"GET /next" and reader.buffered(False) == 9
