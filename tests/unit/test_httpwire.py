"""Golden bytes for what condure writes to HTTP clients (httpwire)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from condure.session.httpwire import (
    MAX_CHUNK,
    chunks,
    error_response,
    header_tokens,
    request_uri,
    response_head,
    target_refusal,
)

# -- header_tokens ------------------------------------------------------------


def test_header_tokens_split_trim_and_lower_case():
    headers = ((b"Connection", b" Keep-Alive ,, Upgrade"), (b"Host", b"e"),
               (b"CONNECTION", b"CLOSE"))
    assert header_tokens(headers, b"connection") == [b"keep-alive", b"upgrade", b"close"]
    assert header_tokens(headers, b"expect") == []
    assert header_tokens((), b"connection") == []


# -- request_uri (reference 5.1, with absolute-form kept as is) ---------------


@pytest.mark.parametrize("headers, target, uri", [
    (((b"Host", b"example.com"),), b"/path?x=1", b"http://example.com/path?x=1"),
    ((), b"/close", b"http://localhost/close"),
    (((b"host", b"a:8080"), (b"Host", b"b")), b"/x", b"http://a:8080/x"),
    (((b"Host", b"e"),), b"http://other.example/abs?q", b"http://other.example/abs?q"),
    (((b"Host", b"e"),), b"HTTPS://o.example/", b"HTTPS://o.example/"),
    (((b"Host", b"e"),), b"*", b"http://e"),  # OPTIONS *: an empty path (RFC 9112 3.3)
    (((b"Host", b"[::1]:8080"),), b"/", b"http://[::1]:8080/"),
])
def test_request_uri(headers, target, uri):
    assert target_refusal(b"OPTIONS", target, headers) is None
    assert request_uri(b"http", headers, target) == uri


# -- target_refusal (RFC 9112 3.2, RFC 9110 9.1) -------------------------------


BAD_TARGET = (400, "invalid request target")
BAD_HOST = (400, "invalid Host")
NO_TUNNEL = (501, "CONNECT is not supported")


@pytest.mark.parametrize("method, target, host, refusal", [
    (b"GET", b"/", b"example.com:80", None),
    (b"GET", b"/", None, None),  # HTTP/1.0 may omit Host; h11 refuses it in 1.1
    (b"GET", b"http://o.example/", b"other", None),
    (b"OPTIONS", b"*", b"e", None),
    (b"GET", b"/", b"xn--bcher-kva.example", None),
    (b"GET", b"/", b"a.b-c_d~e!$&'()*+,;=%41", None),
    (b"GET", b"/", b"[2001:db8::1]", None),
    # "e:80" is the authority form, only for CONNECT
    *[(b"GET", bad, b"good", BAD_TARGET) for bad in (
        b"*", b"foo", b"@evil.example/", b".evil.example/", b"?q", b"e:80", b"1http://x/",
        b"http:/x")],
    (b"CONNECT", b"example.com:443", b"example.com:443", NO_TUNNEL),
    (b"CONNECT", b"/", b"e", NO_TUNNEL),
    *[(b"GET", b"/", bad, BAD_HOST) for bad in (
        b"", b"a b", b"user@a", b"good@evil.example", b"a/b", b"a?b", b"a#b", b"a\\b",
        b"\xff", "bücher.example".encode())],
    (b"GET", b"http://o.example/", b"a b", BAD_HOST),
])
def test_target_refusal(method, target, host, refusal):
    headers = ((b"X-A", b"1"), (b"Host", host)) if host is not None else ((b"X-A", b"1"),)
    assert target_refusal(method, target, headers) == refusal


def test_request_uri_scheme():
    assert request_uri(b"https", ((b"Host", b"e"),), b"/") == b"https://e/"


# -- error_response -------------------------------------------------------------


def test_error_response_golden():
    assert error_response(400) == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: 12\r\n\r\nBad Request\n")


@pytest.mark.parametrize("status, reason", [
    (408, b"Request Timeout"), (413, b"Content Too Large"), (414, b"URI Too Long"),
    (431, b"Request Header Fields Too Large"), (500, b"Internal Server Error"),
    (501, b"Not Implemented"), (505, b"HTTP Version Not Supported"), (599, b"Error"),
])
def test_error_response_reasons(status, reason):
    head, body = error_response(status).split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d %s\r\n" % (status, reason))
    assert body == reason + b"\n"
    assert head.endswith(b"Content-Length: %d" % len(body))


def test_error_response_detail_is_the_body():
    response = error_response(400, "bad chunk \u00e9")
    assert response.endswith(b"Content-Length: 13\r\n\r\nbad chunk \xc3\xa9\n")


# -- response_head (reference 5.4) --------------------------------------------


def head(**kw):
    args = dict(http11=True, code=200, reason=b"OK", headers=(), connection=None,
                content_length=None, chunked=False)
    args.update(kw)
    return response_head(**args)


def test_response_head_order_and_framing_headers_dropped():
    headers = ((b"Content-Type", b"text/plain"), (b"connection", b"keep-alive"),
               (b"X-Foo", b"bar"), (b"CONTENT-LENGTH", b"999"),
               (b"Transfer-Encoding", b"chunked"))
    assert head(headers=headers, connection=b"close", content_length=b"999") == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Foo: bar\r\n"
        b"Connection: close\r\nContent-Length: 999\r\n\r\n")


def test_response_head_http10_keep_alive_with_int_length():
    assert head(http11=False, headers=((b"Content-Type", b"text/plain"),),
                connection=b"keep-alive", content_length=6) == (
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n"
        b"Content-Length: 6\r\n\r\n")


def test_response_head_chunked():
    assert head(headers=((b"Content-Type", b"text/plain"),), chunked=True) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: Transfer-Encoding\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")


def test_response_head_without_length_and_odd_status():
    assert head(code=204, reason=b"No Content", headers=((b"X-A", b"1"),)) == (
        b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
    assert head(code=0, reason=b"") == b"HTTP/1.1 0 \r\n\r\n"
    assert head(content_length=0) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


# -- chunks (reference 5.3) ---------------------------------------------------


def test_chunks_golden():
    assert chunks(b"last\n", True) == b"5\r\nlast\n\r\n0\r\n\r\n"
    assert chunks(b"part one\n", False) == b"9\r\npart one\n\r\n"
    assert chunks(b"", False) == b""
    assert chunks(b"", True) == b"0\r\n\r\n"
    assert chunks(b"x" * 26, False) == b"1a\r\n" + b"x" * 26 + b"\r\n"


def test_chunks_split_at_0xffff():
    data = b"a" * MAX_CHUNK + b"bc"
    assert MAX_CHUNK == 0xFFFF
    assert chunks(data, False) == (b"ffff\r\n" + b"a" * MAX_CHUNK + b"\r\n2\r\nbc\r\n")


def dechunk(wire: bytes) -> tuple[bytes, bool]:
    body, pos = bytearray(), 0
    while pos < len(wire):
        eol = wire.index(b"\r\n", pos)
        size = int(wire[pos:eol], 16)
        assert wire[pos:eol] == b"%x" % size  # lower case, no padding
        if size == 0:
            assert wire[eol:] == b"\r\n\r\n"
            return bytes(body), True
        assert 0 < size <= MAX_CHUNK
        body += wire[eol + 2:eol + 2 + size]
        assert wire[eol + 2 + size:eol + 4 + size] == b"\r\n"
        pos = eol + 4 + size
    return bytes(body), False


@given(st.binary(max_size=3 * MAX_CHUNK), st.booleans())
def test_chunks_round_trip(data, last):
    assert dechunk(chunks(data, last)) == (data, last)
