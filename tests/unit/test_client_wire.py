"""The origin response reader (reference 6.8), byte by byte and by hypothesis."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from condure.session.client_wire import BodyKind, ResponseReader, WireError, parse_head


def read_all(data: bytes, cuts: list[int], *, limit: int = 7, eof: bool = True,
             max_head: int = 8192) -> tuple:
    """Feed ``data`` cut at ``cuts``; return (head, body pieces joined, done)
    or ("error",) when the reader refused it."""
    r = ResponseReader(max_head)
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    body = bytearray()
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    if eof:
        pieces.append(b"")
    try:
        for piece in pieces:
            r.feed(piece)
            if r.head() is None:
                continue
            while not r.done:
                got = r.body(limit)
                if not got:
                    break
                body += got
        assert r.response is not None
        return r.response, bytes(body), r.done, r.leftover
    except WireError:
        return ("error",)


def test_content_length_body() -> None:
    head, body, done, leftover = read_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", [])
    assert (head.code, head.reason, head.http11, head.body, head.length) == (
        200, b"OK", True, BodyKind.LENGTH, 5)
    assert head.headers == ((b"Content-Type", b"text/plain"), (b"Content-Length", b"5"))
    assert (body, done, leftover, head.keep_alive) == (b"hello", True, False, True)


def test_chunked_body_with_extensions_and_trailers() -> None:
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")
    head, body, done, leftover = read_all(data, [])
    assert (head.body, body, done, leftover, head.keep_alive) == (
        BodyKind.CHUNKED, b"hello world", True, False, True)


def test_no_framing_means_a_body_to_the_close_and_no_reuse() -> None:
    # RFC 9112 6.3 (Condure 1.10 read no body here)
    head, body, done, leftover = read_all(b"HTTP/1.1 200 OK\r\n\r\nclose-delimited", [3])
    assert (head.body, body, done, leftover, head.keep_alive) == (
        BodyKind.CLOSE, b"close-delimited", True, False, False)
    head, body, done, _ = read_all(b"HTTP/1.0 200 OK\r\n\r\n1.0 origin", [20, 22])
    assert (head.body, body, done, head.keep_alive) == (BodyKind.CLOSE, b"1.0 origin", True,
                                                        False)
    head, *_ = read_all(b"HTTP/1.1 204 No Content\r\n\r\n", [])
    assert head.keep_alive
    head, *_ = read_all(b"HTTP/1.1 304 Not Modified\r\n\r\n", [])
    assert head.keep_alive


def test_answers_to_head_have_no_body() -> None:
    # RFC 9110 9.3.2 (Condure 1.10 waited for a Content-Length's worth)
    for framing in (b"Content-Length: 10", b"Transfer-Encoding: chunked", b"X-None: 1"):
        r = ResponseReader(8192, head_request=True)
        r.feed(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n")
        head = r.head()
        assert head is not None and head.body is BodyKind.NONE and r.done
        assert head.keep_alive
    r = ResponseReader(8192)
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    head = r.head()
    assert head is not None and head.body is BodyKind.LENGTH and not r.done


def test_persistence_rules() -> None:
    def ka(head: bytes) -> bool:
        return parse_head(head + b"\r\nContent-Length: 0").keep_alive
    assert ka(b"HTTP/1.1 200 OK")
    assert not ka(b"HTTP/1.1 200 OK\r\nConnection: close")
    assert not ka(b"HTTP/1.1 200 OK\r\nConnection: Upgrade, Close")
    assert not ka(b"HTTP/1.0 200 OK")
    assert ka(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive")
    # both framings: read as chunked, not reused
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked")
    assert head.body is BodyKind.CHUNKED and not head.keep_alive
    # after a 101 the connection speaks another protocol (RFC 9110 15.2.2)
    assert not ka(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c")


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED", b"cHuNkEd"])
def test_chunked_in_any_case(value: bytes) -> None:
    """Transfer-coding names are case-insensitive (RFC 9112 7); Condure
    1.10 took only ``chunked`` exactly."""
    head, body, done, leftover = read_all(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + value + b"\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n", [20, 41])
    assert head.body is BodyKind.CHUNKED and head.keep_alive
    assert (body, done, leftover) == (b"hello", True, False)


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: CHUNKED",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0x10",
    b"HTTP/2 200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"ICY 200 OK", b"",
    b"HTTP/1.1 200 OK\r\nBad Header: x",
    b"HTTP/1.1 200 OK\r\n folded: x",
    b"HTTP/1.1 200 OK\r\nNo-Colon",
    b"HTTP/1.1 200 OK\r\nX: a\x00b",
    b"HTTP/1.1 200 OK\r\nX: a\rb",
])
def test_bad_heads(head: bytes) -> None:
    with pytest.raises(WireError):
        parse_head(head)


def test_same_content_length_twice_is_fine() -> None:
    head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3")
    assert head.length == 3


def test_header_limit() -> None:
    ok = b"HTTP/1.1 200 OK" + b"".join(b"\r\nX-%d: v" % i for i in range(64))
    assert len(parse_head(ok).headers) == 64
    with pytest.raises(WireError):
        parse_head(ok + b"\r\nX-64: v")


def test_reason_may_be_empty_or_missing() -> None:
    assert parse_head(b"HTTP/1.1 200 ").reason == b""
    assert parse_head(b"HTTP/1.1 599").reason == b""
    assert parse_head(b"HTTP/1.1 404 Not \xc3\xa9 Found").reason == b"Not \xc3\xa9 Found"


def test_interim_responses_are_skipped() -> None:
    head, body, *_ = read_all(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", [])
    assert (head.code, body) == (201, b"ok")


def test_head_too_large() -> None:
    assert read_all(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200 + b"\r\n\r\n", [],
                    max_head=100) == ("error",)
    r = ResponseReader(100)
    r.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200)
    with pytest.raises(WireError):
        r.head()


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200",
])
def test_truncated_or_broken_bodies(data: bytes) -> None:
    assert read_all(data, []) == ("error",)


def test_bytes_after_the_body_are_leftover() -> None:
    *_, done, leftover = read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab", [])
    assert done and leftover


def test_body_respects_the_limit() -> None:
    r = ResponseReader(8192)
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
    r.head()
    assert r.body(0) == b""
    assert r.body(4) == b"0123"
    assert not r.done
    assert r.body(100) == b"456789"
    assert r.done


# -- hypothesis --------------------------------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABC0123456789", min_size=1, max_size=12)
_value = st.binary(max_size=20).filter(
    lambda v: all(b == 9 or 0x20 <= b != 0x7F for b in v))


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    code = draw(st.integers(100, 599).filter(lambda c: c not in range(100, 200) or c == 101))
    headers = draw(st.lists(st.tuples(_token, _value), max_size=8))
    headers = [(k, v) for k, v in headers
               if k.lower() not in ("content-length", "transfer-encoding", "connection")]
    body = draw(st.binary(max_size=300))
    kind = draw(st.sampled_from(["length", "chunked", "none"]))
    head = b"HTTP/1.%d %d R\r\n" % (draw(st.integers(0, 1)), code)
    head += b"".join(k.encode() + b": " + v + b"\r\n" for k, v in headers)
    if kind == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if kind == "chunked":
        sizes = draw(st.lists(st.integers(1, 50), max_size=10))
        out, pos = [], 0
        for size in sizes:
            piece = body[pos:pos + size]
            if not piece:
                break
            out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
            pos += len(piece)
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(out) + b"0\r\n\r\n"
    return head + b"\r\n"


@settings(max_examples=300, deadline=None)
@given(responses(), st.lists(st.integers(0, 2000), max_size=12), st.integers(1, 64))
def test_any_split_gives_the_same_result(data: bytes, cuts: list[int], limit: int) -> None:
    whole = read_all(data, [], limit=limit)
    assert whole != ("error",)
    assert read_all(data, cuts, limit=limit) == whole
    assert read_all(data, list(range(len(data))), limit=3) == whole


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_garbage_only_raises_wire_errors(data: bytes, cuts: list[int]) -> None:
    read_all(b"HTTP/1.1 200 OK\r\n" + data, cuts)
    read_all(data, cuts)


@settings(max_examples=300, deadline=None)
@given(responses(), st.integers(0, 400), st.binary(min_size=1, max_size=5))
def test_mutated_responses_only_raise_wire_errors(data: bytes, at: int, junk: bytes) -> None:
    at = min(at, len(data))
    read_all(data[:at] + junk + data[at:], [at])
    read_all(data[:at], [])
