"""Bad client input against our condure (docs/differences-from-condure.md):
requests condure refuses itself get a status and ``Connection: close``, the
handler never hears of them, and the worker goes on serving new clients.
A malformed chunked body before the handler answered gets ``400`` with
``Connection: close`` and sends the handler a ``cancel``.
"""

from __future__ import annotations

import pytest

from tests.harness import flows
from tests.harness.flows import HOST, assert_refused
from tests.harness.http_client import request

QUIET = 0.2  # how long the handler is watched for a packet it must not get


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("bad-input")) as server:
        yield server


@pytest.fixture(scope="module")
def small_shared(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("bad-input-small"),
                       ["--buffer-size", "1024"]) as server:
        yield server


@pytest.fixture
def srv(shared):
    yield shared.begin()
    shared.end()


@pytest.fixture
def small(small_shared):
    yield small_shared.begin()
    small_shared.end()


def refused(server, raw: bytes, status: int) -> None:
    assert_refused(server, raw, status)
    server.handler.expect_nothing(QUIET)
    server.probe()


def headers(n: int) -> list[tuple[str, str]]:
    return HOST + [(f"X-H{i}", "v") for i in range(n - 1)]


@pytest.mark.parametrize("raw", [
    b"HELLO\r\n\r\n",
    b"GET /\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
    b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello
], ids=["no-method-target", "no-version", "extra-token", "non-ascii-target", "binary"])
def test_malformed_request_line(srv, raw):
    refused(srv, raw, 400)


@pytest.mark.parametrize("line", [
    b"Bad Header: x",
    b"NoColon",
    b": empty-name",
    b"X-Ctl: a\x00b",
], ids=["space-in-name", "no-colon", "empty-name", "nul-in-value"])
def test_bad_header_line(srv, line):
    refused(srv, b"GET / HTTP/1.1\r\nHost: a\r\n" + line + b"\r\n\r\n", 400)


def test_head_over_buffer_size(small):
    big = request("GET", "/", [*HOST, ("X-Big", "b" * 1100)])
    refused(small, big, 431)


def test_head_just_under_buffer_size_served(small):
    c = small.conn()
    req = small.get(c, "/", [*HOST, ("X-Big", "b" * 900)])
    assert req["headers"][1] == [b"X-Big", b"b" * 900]
    small.handler.reply(req, body=b"fits")
    assert c.read_response().body == b"fits"


def test_more_than_64_headers(small):
    refused(small, request("GET", "/", headers(65)), 431)


def test_64_headers_served(srv):
    c = srv.conn()
    req = srv.get(c, "/", headers(64))
    assert len(req["headers"]) == 64
    srv.handler.reply(req, body=b"64")
    assert c.read_response().body == b"64"


@pytest.mark.parametrize("value", ["gzip", "gzip, chunked", "identity"])
def test_unsupported_transfer_encoding(srv, value):
    refused(srv, request("POST", "/", [*HOST, ("Transfer-Encoding", value)]), 501)


@pytest.mark.parametrize("values", [["abc"], ["-1"], ["5", "6"], ["0x10"], ["9" * 20],
                                    ["0" * 15 + "12345"]],
                         ids=["abc", "negative", "conflicting", "hex", "past 2**64",
                              "20 digits"])
def test_bad_content_length(srv, values):
    raw = request("POST", "/", HOST + [("Content-Length", v) for v in values], b"hello")
    refused(srv, raw, 400)


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/3.0", "HTTP/0.9"])
def test_unsupported_version(srv, version):
    refused(srv, request("GET", "/", HOST, version=version), 505)


def test_uri_too_long(srv):
    refused(srv, request("GET", "/" + "u" * 5000, HOST), 414)


def test_uri_at_limit_served(srv):
    path = "/" + "u" * (4096 - len("http://example.com/"))
    c = srv.conn()
    req = srv.get(c, path)
    assert len(req["uri"]) == 4096
    srv.handler.reply(req, body=b"ok")
    assert c.read_response().body == b"ok"


def test_http11_without_host(srv):
    refused(srv, b"GET /nohost HTTP/1.1\r\nUser-Agent: t\r\n\r\n", 400)


def test_http10_without_host_served(srv):
    c = srv.conn()
    c.send(b"GET /nohost HTTP/1.0\r\nUser-Agent: t\r\n\r\n")
    req = srv.handler.recv()
    assert req["uri"] == b"http://localhost/nohost"
    srv.handler.reply(req, body=b"ten")
    assert c.read_until_close().endswith(b"\r\n\r\nten")


def test_refused_after_good_request_on_same_connection(srv):
    c = srv.conn()
    srv.exchange(c, "/first")
    c.send(b"BROKEN LINE\r\n\r\n")
    resp = c.read_response()
    assert resp.code == 400 and resp.header("Connection") == b"close"
    c.expect_closed()
    srv.handler.expect_nothing(QUIET)
    srv.probe()


@pytest.mark.parametrize("bad", [b"zz\r\nbad\r\n", b"3\r\nabcXX\r\n", b"\r\nhello\r\n"],
                         ids=["bad-size", "no-crlf-after-data", "empty-size-line"])
def test_malformed_chunked_body(srv, bad):
    h, c = srv.handler, srv.conn()
    c.send(request("POST", "/c", [*HOST, ("Transfer-Encoding", "chunked")], b"5\r\nhello\r\n"))
    req = h.recv()
    h.credit(req, 1000)
    first = h.recv()
    assert first.body == b"hello" and first["more"] is True
    c.send(bad)
    cancel = h.recv()
    assert (cancel.type, cancel.id, cancel.seq) == ("cancel", req.id, 2)
    resp = c.read_response()  # (no response had begun: the client is told why)
    assert resp.code == 400 and resp.header("Connection") == b"close", resp.raw
    c.expect_closed()
    h.expect_nothing(QUIET)
    srv.probe()


def test_body_longer_than_content_length_is_next_request(srv):
    """Bytes after a Content-Length body are a (here: broken) next request."""
    h, c = srv.handler, srv.conn()
    c.send(request("POST", "/p", [*HOST, ("Content-Length", "2")], b"hiGARBAGE\r\n\r\n"))
    req = h.recv()
    h.credit(req, 100)
    assert h.recv().body == b"hi"
    h.reply(req, body=b"ok")
    assert c.read_response().body == b"ok"
    resp = c.read_response()
    assert resp.code == 400
    c.expect_closed()
    h.expect_nothing(QUIET)
    srv.probe()


def test_client_closes_mid_head(srv):
    c = srv.conn()
    c.send(b"GET /partial HTTP/1.1\r\nHost: exa")
    c.shutdown_write()
    data = c.read_until_close()
    assert data == b"" or data.startswith(b"HTTP/1.1 400 "), data
    srv.handler.expect_nothing(QUIET)
    srv.probe()
