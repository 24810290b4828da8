"""The stream-mode HTTP session against the reference flows (sections 5 and 7).

Every test drives one :class:`HttpSession` through the fake adapter in
``session_helpers``: client bytes in, packets and client bytes out.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from condure.session.actions import Close
from condure.session.http import HttpSession
from condure.zhttp.packets import (
    Cancel,
    Credit,
    Data,
    Error,
    HandoffProceed,
    HandoffStart,
    Ident,
    KeepAlive,
    Ping,
    Pong,
)
from condure.zhttp.packets import Close as WsClose
from tests.unit.session_helpers import (
    HANDLER,
    INSTANCE,
    Driver,
    IdSource,
    body_of,
    run_split,
)

GET = b"GET /path?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n"
TEXT = ((b"Content-Type", b"text/plain"),)


def started(request: bytes = GET, **kw) -> Driver:
    """A driver whose client sent ``request``; the request packet is taken."""
    d = Driver(**kw)
    d.client(request)
    d.new_packets()
    return d


def post(length: int, extra: bytes = b"") -> bytes:
    return (b"POST /upload HTTP/1.1\r\nHost: example.com\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % length)


def kinds(packets) -> list[str]:
    return [type(p).__name__ for p in packets]


def seqs(packets) -> list[int | None]:
    return [p.ids[0].seq for p in packets]


# -- the request packet (5.1) -------------------------------------------------


def test_get_request_packet_matches_the_reference_trace():
    d = Driver()
    d.client(GET)
    [send] = d.sends
    assert send.to is None  # first-packet socket
    assert send.packet == Data(
        from_=INSTANCE,
        ids=(Ident(b"0-0-0", 0),),
        method=b"GET",
        uri=b"http://example.com/path?x=1",
        headers=((b"Host", b"example.com"), (b"User-Agent", b"t"), (b"Accept", b"*/*")),
        credits=8192,
        stream=True,
        peer_address=b"127.0.0.1",
        peer_port=52996,
    )
    assert d.output == b"" and not d.closed


def test_post_request_packet_has_more_and_no_body():
    d = Driver()
    d.client(post(20000, b"Content-Type: application/octet-stream\r\n") + b"a" * 20000)
    [packet] = d.packets
    assert packet.method == b"POST" and packet.uri == b"http://example.com/upload"
    assert packet.headers == ((b"Host", b"example.com"),
                              (b"Content-Type", b"application/octet-stream"),
                              (b"Content-Length", b"20000"))
    assert packet.more and packet.stream and packet.credits == 8192
    assert packet.body == b""
    # The body is not read until the handler answers (5.10.2).
    assert not d.session.wants_read


def test_http10_request_without_headers():
    d = Driver(peer_address=None, peer_port=None, buffer_size=4096)
    d.client(b"GET /close HTTP/1.0\r\n\r\n")
    [packet] = d.packets
    assert packet.headers is None  # absent, not an empty list (reference 12.12)
    assert packet.uri == b"http://localhost/close"
    assert packet.peer_address is None and packet.peer_port is None
    assert packet.credits == 4096 and not packet.more


@pytest.mark.parametrize("request_bytes, uri", [
    (b"GET http://other.example/abs?q HTTP/1.1\r\nHost: e\r\n\r\n", b"http://other.example/abs?q"),
    (b"OPTIONS * HTTP/1.1\r\nHost: e\r\n\r\n", b"http://e"),
], ids=["absolute-form", "asterisk"])
def test_request_uri(request_bytes, uri):
    d = Driver()
    d.client(request_bytes)
    assert d.packets[0].uri == uri


def test_https_scheme():
    d = Driver(scheme=b"https")
    d.client(GET)
    assert d.packets[0].uri == b"https://example.com/path?x=1"


@pytest.mark.parametrize("request_bytes", [
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: e\r\n\r\n",
    b"GET / HTTP/1.1\nHost: e\n\n",
])
def test_lenient_framing_is_accepted(request_bytes):
    d = Driver()
    d.client(request_bytes)
    assert kinds(d.packets) == ["Data"] and d.packets[0].uri == b"http://e/"


@pytest.mark.parametrize("headers, more", [
    (b"Content-Length: 0\r\n", False),
    (b"Content-Length: 00\r\n", False),  # a number, not a text (reference 5.1)
    (b"Content-Length: 000000\r\n", False),
    (b"Content-Length: 3\r\n", True),
    (b"Content-Length: 03\r\n", True),
    (b"Transfer-Encoding: chunked\r\n", True),
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", True),
])
def test_more_only_when_a_body_follows(headers, more):
    d = Driver()
    d.client(b"POST / HTTP/1.1\r\nHost: e\r\n" + headers + b"\r\n")
    assert d.packets[0].more is more


# -- persistence (5.4) --------------------------------------------------------


@pytest.mark.parametrize("version, connection, persistent, written", [
    (b"1.1", None, True, None),
    (b"1.1", b"close", False, b"close"),
    (b"1.1", b"Close", False, b"close"),  # matched in any case, unlike Condure
    (b"1.1", b"keep-alive, CLOSE", False, b"close"),
    (b"1.1", b"keep-alive", True, None),
    (b"1.0", None, False, None),
    (b"1.0", b"keep-alive", True, b"keep-alive"),
    (b"1.0", b"KEEP-ALIVE", True, b"keep-alive"),
    (b"1.0", b"keep-alive, close", False, None),
])
def test_persistence(version, connection, persistent, written):
    head = b"GET / HTTP/%s\r\nHost: e\r\n" % version
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    d = started(head + b"\r\n")
    d.respond(headers=TEXT, body=b"ten\n")
    expected = b"HTTP/%s 200 OK\r\nContent-Type: text/plain\r\n" % version
    if written is not None:
        expected += b"Connection: " + written + b"\r\n"
    assert d.new_output() == expected + b"Content-Length: 4\r\n\r\nten\n"
    if persistent:
        assert not d.closed
        assert d.session.rid == b"0-0-1" and d.session.wants_read
    else:
        assert d.closes == [Close(graceful=True, reason=d.close.reason)]
    assert d.new_packets() == []  # no credit for a body that completed the response



@pytest.mark.parametrize("head", [
    b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n",
    b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n",
], ids=["cl-te", "te-cl", "http10-te"])
def test_transfer_encoding_framing_closes_after_the_response(head):
    """RFC 9112 6.1: Transfer-Encoding with Content-Length, or in HTTP/1.0,
    is served by the chunked body, then the connection closes, whatever the
    client asked; a request pipelined behind it is not read."""
    d = started(head + b"\r\n3\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: e\r\n\r\n")
    d.credit(100)
    assert body_of(d.packets) == b"abc"
    d.respond(headers=TEXT, body=b"ten\n")
    out = d.new_output()
    assert b"keep-alive" not in out and out.endswith(b"ten\n")
    assert d.closes == [Close(graceful=True, reason=d.close.reason)]
    assert [p.uri.rsplit(b"/", 1)[1] for p in d.packets if isinstance(p, Data) and p.uri] == [b""]

def test_handler_framing_headers_are_replaced():
    d = started(b"GET / HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
    d.respond(headers=(*TEXT, (b"Connection", b"keep-alive"), (b"content-length", b" 7 "),
                       (b"Transfer-Encoding", b"chunked")), body=b"closed\n")
    assert d.new_output() == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                              b"Connection: close\r\nContent-Length: 7\r\n\r\nclosed\n")
    assert d.close.graceful


# RFC 9112 6.3: a body longer than the handler's Content-Length would be read
# as the start of the next response; a shorter one leaves the client waiting.
# Condure wrote both as they came.
@pytest.mark.parametrize("lengths, body", [
    ((b"2",), b"hello"), ((b"10",), b"hello"), ((b"5", b"6"), b"hello"), ((b"0",), b"x"),
    ((b"0" * 19 + b"5",), b"hello"),  # 20 digits: more than any 64-bit length has
    ((b"9" * 5000,), b"hello"),  # past what Python converts to an int at all
])
def test_whole_body_against_its_content_length_is_not_written(lengths, body):
    d = started()
    d.respond(headers=tuple((b"Content-Length", n) for n in lengths), body=body)
    assert d.new_output() == b""
    assert kinds(d.new_packets()) == ["Cancel"] and d.closed and not d.close.graceful
    assert d.close.handler_fault


@pytest.mark.parametrize("length", [b"9" * 19, b"9" * 20, b"9" * 5000])
def test_a_huge_streamed_content_length(length):
    """19 digits are a length (the body streams on); more are refused
    before anything is written, as any other invalid value."""
    d = started()
    d.respond(headers=((b"Content-Length", length),), body=b"abc", more=True)
    if len(length) == 19:
        assert d.new_output().endswith(b"Content-Length: " + length + b"\r\n\r\nabc")
        assert not d.closed
    else:
        assert d.new_output() == b"" and d.closed and d.close.handler_fault


def test_streamed_body_over_its_content_length_ends_the_connection():
    d = started()
    d.respond(headers=((b"Content-Length", b"5"),), body=b"abc", more=True)
    assert d.new_output() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc"
    d.handler(Data, body=b"def", more=True)  # one byte too many
    assert d.new_output() == b"" and kinds(d.new_packets())[-1] == "Cancel" and d.closed


def test_streamed_body_short_of_its_content_length_ends_the_connection():
    d = started()
    d.respond(headers=((b"Content-Length", b"5"),), body=b"abc", more=True)
    d.new_output()
    d.handler(Data, body=b"d")  # the end, one byte short
    assert d.new_output() == b"" and d.closed and not d.close.graceful


def test_streamed_body_that_meets_its_content_length_keeps_the_connection():
    d = started()
    d.respond(headers=((b"Content-Length", b"5"),), body=b"abc", more=True)
    d.handler(Data, body=b"de", more=True)
    d.handler(Data, body=b"")
    assert d.new_output() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde"
    assert not d.closed and d.session.wants_read


# -- pipelining ---------------------------------------------------------------


def test_pipelined_requests_are_served_in_order_with_new_ids():
    second = b"GET /two HTTP/1.1\r\nHost: e\r\n\r\n"
    d = Driver()
    d.client(GET + second)
    assert [p.uri for p in d.new_packets()] == [b"http://example.com/path?x=1"]
    d.respond(body=b"one")
    [packet] = d.new_packets()
    assert packet.uri == b"http://e/two" and packet.ids == (Ident(b"0-0-1", 0),)
    assert d.new_output() == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
    d.respond(body=b"two")
    assert d.new_output().endswith(b"two") and not d.closed
    assert d.session.rid == b"0-0-2"


def test_pipelined_request_after_a_body():
    d = Driver()
    d.client(post(5) + b"hello" + b"GET /two HTTP/1.1\r\nHost: e\r\n\r\n")
    d.new_packets()
    d.credit(100)
    assert body_of(d.new_packets()) == b"hello"
    d.respond(body=b"ok")
    assert [p.uri for p in d.new_packets()] == [b"http://e/two"]


def test_packets_between_requests_are_ignored():
    d = started()
    d.respond(body=b"one")
    d.new_output()
    d.handler(Data, rid=b"0-0-0", body=b"late")
    d.handler(Cancel, rid=b"0-0-0")
    assert d.new_output() == b"" and not d.closed and d.new_packets() == []


# -- request body (5.2) -------------------------------------------------------


def test_body_split_follows_credits_and_reads():
    head = post(20000, b"Content-Type: application/octet-stream\r\n")
    assert len(head) == 107
    d = started(head + b"a" * 20000)
    d.credit(5000)
    [p1] = d.new_packets()
    assert (p1.ids, len(p1.body), p1.more, d.sends[-1].to) == (
        (Ident(b"0-0-0", 1),), 5000, True, HANDLER)
    d.credit(100000)
    packets = d.new_packets()
    assert [(len(p.body), p.more) for p in packets] == [(3085, True), (8192, True), (3723, False)]
    assert seqs(packets) == [2, 3, 4]
    assert body_of([p1, *packets]) == b"a" * 20000
    d.respond(headers=TEXT, body=b"got it\n")
    assert d.new_output() == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                              b"Content-Length: 7\r\n\r\ngot it\n")
    assert not d.closed


def test_no_body_without_credits():
    d = started(post(10) + b"0123456789")
    d.handler(KeepAlive)
    assert d.new_packets() == []
    d.credit(4)
    assert [p.body for p in d.new_packets()] == [b"0123"]
    d.credit(100)
    assert [(p.body, p.more) for p in d.new_packets()] == [(b"456789", False)]


def test_chunked_body_is_dechunked_and_ends_with_an_empty_packet():
    d = started(b"POST /chunked HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n")
    d.credit(65536)
    packets = d.new_packets()
    assert body_of(packets) == b"hello world" and all(p.more for p in packets)
    d.client(b"0\r\nTrailer: x\r\n\r\n")
    [last] = d.new_packets()
    assert last == Data(from_=INSTANCE, ids=(Ident(b"0-0-0", len(packets) + 1),))


def test_empty_body_after_credit_keeps_the_connection():
    d = started(post(0))
    d.credit(10)
    assert d.new_packets() == [Data(from_=INSTANCE, ids=(Ident(b"0-0-0", 1),))]
    d.respond(body=b"ok")
    assert b"Connection" not in d.new_output() and not d.closed


def test_malformed_chunk_cancels_and_answers_400():
    """No response went out yet: the client gets 400 (as in req mode)."""
    d = started(b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    d.credit(100)
    assert kinds(d.new_packets()) == ["Cancel"]
    out = d.new_output()
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Connection: close\r\n" in out
    assert d.close.graceful


def test_client_eof_mid_body_cancels():
    d = started(post(10) + b"01234")
    d.credit(100)
    d.new_packets()
    d.client(eof=True)
    [cancel] = d.new_packets()
    assert isinstance(cancel, Cancel) and cancel.ids == (Ident(b"0-0-0", 2),)
    assert d.sends[-1].to == HANDLER and not d.close.graceful


# -- Expect: 100-continue (5.5) and early responses (5.6) ----------------------


def test_100_continue_written_when_body_reading_starts():
    d = started(post(5, b"Expect: 100-continue\r\n"))
    assert d.new_output() == b""
    d.credit(100)
    assert d.new_output() == b"HTTP/1.1 100 Continue\r\n\r\n"
    d.client(b"hello")
    assert body_of(d.new_packets()) == b"hello"


@pytest.mark.parametrize("request_bytes", [
    b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: e\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: e\r\nExpect: 100-continue\r\n\r\n",
])
def test_no_100_continue_without_an_http11_body(request_bytes):
    d = started(request_bytes)
    d.credit(100)
    assert b"100 Continue" not in d.new_output()


def test_early_response_closes_after_it():
    d = started(post(10, b"Expect: 100-continue\r\n") + b"01234")
    d.respond(413, b"Too Large", headers=TEXT, body=b"nope\n")
    assert d.new_output() == (b"HTTP/1.1 413 Too Large\r\nContent-Type: text/plain\r\n"
                              b"Connection: close\r\nContent-Length: 5\r\n\r\nnope\n")
    assert d.close.graceful and d.new_packets() == []


def test_early_response_to_empty_body_closes():
    d = started(post(0))
    d.respond(body=b"ok")
    assert b"Connection: close\r\n" in d.new_output() and d.close.graceful
    assert d.new_packets() == []


def test_early_streamed_response_reads_no_more_body():
    d = started(post(10) + b"01234")
    d.respond(more=True)
    d.credit(100)
    d.client(b"56789")
    assert d.new_packets() == [] and not d.session.wants_read
    d.handler(body=b"bye")
    assert d.new_output().endswith(b"3\r\nbye\r\n0\r\n\r\n") and d.close.graceful


# -- responses (5.3) ----------------------------------------------------------


def test_streamed_chunked_response_matches_the_reference_trace():
    d = started()
    d.respond(headers=TEXT, more=True)
    assert d.new_output() == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                              b"Connection: Transfer-Encoding\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n")
    for n, part in ((1, b"part one\n"), (2, b"part two\n")):
        d.handler(body=part, more=True)
        assert d.new_output() == b"9\r\n" + part + b"\r\n"
        assert d.new_packets() == []  # credits go back only once written out
        d.flush()
        assert d.new_packets() == [Credit(from_=INSTANCE, ids=(Ident(b"0-0-0", n),), credits=9)]
        assert d.sends[-1].to == HANDLER
    d.handler(body=b"last\n")
    assert d.new_output() == b"5\r\nlast\n\r\n0\r\n\r\n"
    d.flush()
    assert d.new_packets() == [] and not d.closed


def test_streamed_response_with_handler_content_length():
    d = started()
    d.respond(headers=((b"Content-Length", b"10"),), body=b"01234", more=True)
    assert d.new_output() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"
    d.flush()
    assert [(type(p), p.credits, p.ids[0].seq) for p in d.new_packets()] == [(Credit, 5, 1)]
    d.handler(body=b"56789", more=True)
    d.flush()
    assert [p.credits for p in d.new_packets()] == [5]
    d.handler()
    assert d.new_output() == b"56789" and not d.closed and d.session.rid == b"0-0-1"


def test_credits_accumulate_until_flushed():
    d = started()
    d.respond(more=True, body=b"ab")
    d.handler(body=b"cde", more=True)
    d.flush()
    assert [p.credits for p in d.new_packets()] == [5]
    d.flush()
    assert d.new_packets() == []


def test_http10_streamed_response_is_close_delimited():
    d = started(b"GET / HTTP/1.0\r\n\r\n")
    d.respond(headers=TEXT, more=True, body=b"a")
    d.handler(body=b"b", more=True)
    assert not d.closed
    d.handler()
    assert d.new_output() == b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nab"
    assert d.close.graceful


def test_http10_keep_alive_streamed_response_drops_persistence():
    d = started(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    d.respond(headers=TEXT, more=True, body=b"a")
    d.handler(body=b"b")
    assert d.new_output() == b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nab"
    assert d.close.graceful


def test_long_streamed_response_within_returned_credits():
    d = started()
    d.respond(more=True, body=b"x" * 8192)
    for _ in range(3):
        d.flush()
        [credit] = d.new_packets()
        assert credit.credits == 8192
        d.handler(body=b"y" * 8192, more=True)
        assert not d.closed, d.closes
    d.handler()
    assert len(d.output) > 4 * 8192 and not d.closed


def test_single_response_beyond_credits_cancels():
    d = started()
    d.respond(body=b"x" * 9000)
    assert d.output == b"" and kinds(d.new_packets()) == ["Cancel"]
    assert not d.close.graceful


def test_full_buffer_response_works():
    d = started()
    d.respond(body=b"x" * 8192)
    assert d.new_output().endswith(b"Content-Length: 8192\r\n\r\n" + b"x" * 8192)


def test_streamed_body_beyond_credits_cancels():
    d = started()
    d.respond(more=True, body=b"x" * 5000)
    d.handler(body=b"y" * 4000, more=True)  # 9000 > 8192, nothing returned yet
    [cancel] = d.new_packets()
    assert isinstance(cancel, Cancel) and cancel.ids == (Ident(b"0-0-0", 1),)
    assert not d.close.graceful


def test_response_head_over_buffer_cancels():
    d = started()
    d.respond(headers=((b"X-Big", b"v" * 9000),))
    assert d.output == b"" and kinds(d.new_packets()) == ["Cancel"]
    assert not d.close.graceful


def test_invalid_handler_content_length_cancels():
    d = started()
    d.respond(headers=((b"Content-Length", b"ten"),), body=b"x")
    assert d.output == b"" and kinds(d.new_packets()) == ["Cancel"]


@pytest.mark.parametrize("code, reason", [(204, b"No Content"), (304, b"Not Modified")])
def test_no_body_codes_drop_the_body(code, reason):
    d = started()
    d.respond(code, reason, headers=((b"X-A", b"1"), (b"Content-Length", b"4")), body=b"body")
    assert d.new_output() == b"HTTP/1.1 %d %s\r\nX-A: 1\r\n\r\n" % (code, reason)
    assert not d.closed


@pytest.mark.parametrize("request_bytes, code", [
    (b"HEAD /stream HTTP/1.1\r\nHost: e\r\n\r\n", 200),  # e.g. a GRIP stream held
    (b"GET / HTTP/1.1\r\nHost: e\r\n\r\n", 204),
    (b"GET / HTTP/1.1\r\nHost: e\r\n\r\n", 304),
], ids=["head", "204", "304"])
def test_a_response_without_a_body_ends_at_its_head(request_bytes, code):
    """RFC 9112 6.3: the client's exchange is over once the head is
    written; a handler that streams on (more) is cancelled, and the next
    request on the connection is served instead of waiting behind it."""
    d = started(request_bytes)
    first = d.session.rid
    d.respond(code, b"X", headers=TEXT, more=True, body=b"abc")
    assert d.new_output() == b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\n\r\n" % code
    assert kinds(d.new_packets()) == ["Cancel"] and not d.closed
    d.handler(body=b"more of the stream", more=True, rid=first)  # that exchange is over
    assert d.new_output() == b"" and d.new_packets() == []
    d.client(b"GET /next HTTP/1.1\r\nHost: e\r\n\r\n")
    assert [p.uri for p in d.new_packets()] == [b"http://e/next"]
    d.respond(headers=TEXT, body=b"next")
    assert d.new_output().endswith(b"\r\n\r\nnext") and not d.closed


def test_a_response_without_a_body_to_a_request_with_one_waits_for_the_handler():
    """With the request body still going to the handler the exchange is
    not cut at the head: the handler's end finishes it, as before."""
    d = started(b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 3\r\n\r\nabc")
    d.respond(204, b"No Content", more=True, body=b"abc")
    assert [p.credits for p in d.new_packets()] == [3]
    d.handler(body=b"de")
    assert d.new_output().startswith(b"HTTP/1.1 204 No Content\r\n")
    assert "Cancel" not in kinds(d.packets)


def test_head_response_has_no_body():
    d = started(b"HEAD / HTTP/1.1\r\nHost: e\r\n\r\n")
    d.respond(headers=TEXT, body=b"hello")
    assert d.new_output() == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                              b"Content-Length: 5\r\n\r\n")
    assert not d.closed


def test_head_streamed_response_is_neither_chunked_nor_closed():
    d = started(b"HEAD / HTTP/1.1\r\nHost: e\r\n\r\n")
    d.respond(headers=((b"Content-Length", b"7"),), more=True)
    d.handler(body=b"nothing")
    assert d.new_output() == b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"
    assert not d.closed


def test_missing_reason_is_written_as_is():
    d = started()
    d.handler(Data, code=200, body=b"x")
    assert d.new_output().startswith(b"HTTP/1.1 200 \r\n")


# RFC 9110 5.5, 15: what a gateway must not pass on. Condure wrote each as
# it came, a CR LF in a value or reason starting a header (or a response)
# of the handler's choosing.
FAULTY_RESPONSES = [
    dict(code=None), dict(code=99), dict(code=100), dict(code=101), dict(code=1000),
    dict(reason=b"OK\r\nSet-Cookie: a=b"),
    dict(reason=b"O\nK"),
    dict(headers=((b"X-A", b"a\r\nSet-Cookie: a=b"),)),
    dict(headers=((b"X-A", b"a\nb"),)),
    dict(headers=((b"X-A", b"a\x00b"),)),
    dict(headers=((b"X:A", b"1"),)),
    dict(headers=((b"X A", b"1"),)),
    dict(headers=((b"", b"1"),)),
]


@pytest.mark.parametrize("fault", FAULTY_RESPONSES, ids=range(len(FAULTY_RESPONSES)))
@pytest.mark.parametrize("more", [False, True])
def test_faulty_response_is_not_written(fault, more):
    d = started()
    fields = dict(code=200, reason=b"OK", headers=((b"X-B", b"1"),), body=b"x", more=more)
    fields.update(fault)
    d.handler(Data, **fields)
    assert d.new_output() == b""
    assert kinds(d.new_packets()) == ["Cancel"] and d.closed and d.close.handler_fault


# -- handler packets (4.5, 4.6, 5.9, 5.10) --------------------------------------


@pytest.mark.parametrize("kind", [Cancel, Error])
@pytest.mark.parametrize("streaming", [False, True])
def test_handler_cancel_or_error_closes_without_packets(kind, streaming):
    d = started()
    if streaming:
        d.respond(more=True, body=b"part")
    d.handler(kind)
    assert not d.close.graceful and d.new_packets() == []
    assert not d.output.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize("kind", [WsClose, Ping, Pong, HandoffProceed])
def test_unexpected_packet_aborts_without_cancel(kind):
    d = started()
    d.handler(kind)
    assert d.closed and not d.close.graceful and d.new_packets() == []


def test_unknown_packet_type_aborts_without_cancel():
    d = started()
    d.respond(more=True)
    d.session.abort_unknown("unknown type")
    d.drain()
    assert d.closed and d.new_packets() == []


@pytest.mark.parametrize("first", [True, False])
def test_bad_seq_closes_without_cancel(first):
    d = started()
    if not first:
        d.respond(more=True)
    d.handler(Data, seq=5, code=200, reason=b"OK")
    assert d.closed and not d.close.graceful and d.new_packets() == []


def test_missing_seq_is_accepted_without_advancing():
    d = started()
    d.respond(seq=None, more=True, body=b"a")
    d.handler(seq=None, body=b"b", more=True)
    d.handler(seq=0, body=b"c")
    assert d.new_output().endswith(b"1\r\nc\r\n0\r\n\r\n") and not d.closed


def test_each_packet_replaces_the_return_address():
    d = started()
    d.respond(more=True, body=b"a")
    d.handler(KeepAlive, from_=b"handler2")
    d.flush()
    assert d.sends[-1].to == b"handler2"


@pytest.mark.parametrize("size, aborted", [(64, False), (65, True)])
def test_long_from_aborts(size, aborted):
    d = started()
    d.respond(from_=b"h" * size, body=b"x")
    assert d.closed is aborted
    assert d.new_packets() == []


def test_handoff_pauses_until_the_next_packet():
    d = started(post(6) + b"abc")
    d.credit(100)
    d.new_packets()
    d.handler(HandoffStart)
    [proceed] = d.new_packets()
    assert proceed == HandoffProceed(from_=INSTANCE, ids=(Ident(b"0-0-0", 2),))
    assert d.sends[-1].to == HANDLER
    assert not d.session.wants_read
    d.client(b"def")
    assert d.new_packets() == []
    d.handler(KeepAlive, from_=b"handler2")
    [body] = d.new_packets()
    assert body.body == b"def" and body.ids == (Ident(b"0-0-0", 3),)
    assert d.sends[-1].to == b"handler2"


def test_handoff_during_streamed_response():
    d = started()
    d.respond(more=True)
    d.handler(HandoffStart)
    assert kinds(d.new_packets()) == ["HandoffProceed"]
    d.handler(KeepAlive, from_=b"handler2")
    d.handler(body=b"two", from_=b"handler2")
    assert d.new_output().endswith(b"3\r\ntwo\r\n0\r\n\r\n")


def test_session_timer_runs_during_handoff():
    d = started()
    d.respond(more=True)
    d.handler(HandoffStart)
    d.new_packets()
    d.advance(60)
    assert d.closed and d.new_packets() == []


def test_keep_alive_counts_as_a_sent_packet():
    d = started()
    assert d.session.keep_alive() is None  # no handler yet
    d.respond(more=True, body=b"abc")
    assert d.session.keep_alive() == (HANDLER, Ident(b"0-0-0", 1))
    assert d.session.keep_alive() == (HANDLER, Ident(b"0-0-0", 2))
    d.flush()
    assert seqs(d.new_packets()) == [3]
    d.handler()
    assert d.session.keep_alive() is None  # between requests


def test_shutdown_owes_a_cancel():
    d = started()
    d.respond(more=True, body=b"abc")
    assert d.session.shutdown() == (HANDLER, Ident(b"0-0-0", 1))
    # Only its Close is left, for the adapter's drop (a chunked cut: no reset).
    assert d.session.take_actions() == [Close(graceful=False, reason="shutdown")]
    assert d.session.deadline is None


# -- timers (5.8, 5.11) -------------------------------------------------------


GATEWAY_TIMEOUT = (b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\n"
                   b"Connection: close\r\nContent-Length: 16\r\n\r\nGateway Timeout\n")


def test_session_timeout_without_handler_answer_is_a_504():
    # Condure drops the connection (an empty reply); condure answers as a
    # gateway (RFC 9110 15.6.5) and tells the adapter nobody answered.
    d = started()
    assert d.session.deadline == d.now + 60
    d.advance(59.9)
    assert not d.closed
    d.advance(0.1)
    assert bytes(d.output) == GATEWAY_TIMEOUT
    assert d.closed and d.close.graceful and d.close.unanswered
    assert d.new_packets() == []  # no cancel: nobody to tell


def test_silent_handler_before_the_response_is_a_504_too():
    d = started(post(10))
    d.handler(Credit, credits=100)
    d.client(b"0123456789")
    d.new_packets()
    d.advance(60)
    assert bytes(d.output) == GATEWAY_TIMEOUT
    assert d.closed and d.close.graceful and not d.close.unanswered
    assert d.new_packets() == []  # no cancel for the session timeout (reference 5.8)


def test_handler_packets_restart_the_session_timer():
    d = started()
    d.respond(more=True)
    d.advance(50)
    d.handler(KeepAlive)
    d.advance(59)
    assert not d.closed
    d.advance(1)
    # the response had begun: the connection is cut, as Condure does
    assert d.closed and not d.close.graceful and not d.close.unanswered
    assert d.new_packets() == []  # no cancel for the session timeout


def test_idle_connection_closes_after_60s_whatever_the_stream_timeout():
    d = Driver()
    d.advance(60)
    assert d.closed and d.output == b""


def test_stream_timeout_cancels():
    d = started(stream_timeout=3)
    d.respond(more=True)
    for _ in range(2):
        d.advance(1)
        d.handler(KeepAlive)
    assert not d.closed
    d.advance(1)
    assert kinds(d.new_packets()) == ["Cancel"] and not d.close.graceful


def test_streaming_body_keeps_the_stream_timer_alive():
    d = started(stream_timeout=3, auto_flush=True)
    d.respond(more=True)
    for _ in range(5):
        d.advance(1)
        d.handler(body=b"tick", more=True)
    assert not d.closed


def test_idle_after_a_response_closes_60s_later():
    d = started()
    d.advance(30)
    d.respond(body=b"ok")
    d.advance(59.9)
    assert not d.closed
    d.advance(0.1)
    assert d.closed and d.new_packets() == []


def test_reading_the_head_restarts_the_stream_timer():
    d = Driver(stream_timeout=3)
    d.advance(2)
    d.client(GET)
    d.advance(2)
    assert not d.closed
    d.advance(1)
    assert d.closed and not d.close.graceful
    assert kinds(d.packets) == ["Data"]  # no handler known: nobody to cancel


def test_idle_connection_obeys_a_short_stream_timeout():
    d = Driver(stream_timeout=3)
    d.advance(3)
    assert d.closed and d.packets == []


# -- client end of input ---------------------------------------------------------


def test_client_eof_before_a_request():
    d = Driver()
    d.client(eof=True)
    assert d.closed and d.packets == [] and d.output == b""


def test_client_eof_mid_head():
    d = Driver()
    d.client(b"GET / HT", eof=True)
    assert d.closed and d.packets == []


def test_client_eof_mid_response_cancels():
    d = started()
    d.respond(more=True, body=b"a")
    d.client(eof=True)
    assert kinds(d.new_packets()) == ["Cancel"] and not d.close.graceful


def test_client_eof_while_waiting_is_noticed_after_the_first_packet():
    d = started()
    d.client(eof=True)
    assert not d.closed
    d.respond(more=True)
    assert kinds(d.new_packets()) == ["Cancel"]


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
def test_client_eof_after_request_cancels_like_condure(version):
    # A read EOF cannot tell a half-close (``nc -N``) from a full close;
    # like Condure (and nginx) condure takes it as the client going away:
    # the handler's answer is met with a cancel and nothing is written.
    d = Driver()
    d.client(b"GET / HTTP/%s\r\nHost: e\r\n\r\n" % version, eof=True)
    d.respond(body=b"hi")
    assert kinds(d.new_packets()[1:]) == ["Cancel"]
    assert b"hi" not in d.output and d.closed
    assert not d.close.handler_fault  # the client left: nothing to warn about


# -- bad input (differences from Condure: a status, then close) ----------------

H = b"Host: e\r\n"
BAD = [
    (b"HELLO\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + H + b"Bad Name: x\r\n\r\n", 400),
    (b"GET /\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: abc\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    (b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(64)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 9000 + b"\r\n\r\n", 431),
    # RFC 9112 3.2: a Host that is not a host, a target in no request form
    (b"GET /x HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: good@evil.example\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400),
    (b"GET @evil.example/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    (b"CONNECT e:443 HTTP/1.1\r\nHost: e:443\r\n\r\n", 501),
    (b"CONNECT / HTTP/1.1\r\n" + H + b"\r\n", 501),
]
REASONS = {400: b"Bad Request", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
           501: b"Not Implemented", 505: b"HTTP Version Not Supported"}


@pytest.mark.parametrize("request_bytes, status", BAD,
                         ids=[f"{s}-{i}" for i, (_, s) in enumerate(BAD)])
@pytest.mark.parametrize("mode", ["whole", "bytes", "trailing"])
def test_bad_input_is_refused(request_bytes, status, mode):
    d = Driver()
    if mode == "bytes":
        for i in range(len(request_bytes)):
            d.client(request_bytes[i:i + 1])
    else:
        trailing = b"GET / HTTP/1.1\r\nHost: e\r\n\r\n" if mode == "trailing" else b""
        d.client(request_bytes + trailing)
    reason = REASONS[status]
    body = reason + b"\n"
    assert d.output == (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (status, reason, len(body), body))
    assert d.close.graceful and d.packets == []


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(63)) + b"\r\n",
    b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 8100 + b"\r\n\r\n",
    b"GET /" + b"a" * (4096 - len(b"http://e/")) + b" HTTP/1.1\r\n" + H + b"\r\n",
])
def test_limits_are_inclusive(request_bytes):
    d = Driver()
    d.client(request_bytes)
    assert kinds(d.packets) == ["Data"] and not d.closed


def test_session_repr_shows_state():
    d = started()
    assert "state=WAIT" in repr(d.session) and "0-0-0" in repr(d.session)


def test_ids_come_from_the_caller():
    session = HttpSession(instance_id=b"x", new_id=IdSource(b"7-"), now=0.0)
    assert session.rid == b"7-0" and session.wants_read and session.resumable


# -- any split of the input gives the same packets and output ------------------

CORPUS = [
    b"GET /a HTTP/1.1\r\nHost: e\r\n\r\n",
    b"POST /b HTTP/1.1\r\nHost: e\r\nContent-Length: 600\r\n\r\n" + bytes(range(200)) * 3,
    b"POST /c HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n12c\r\n" + b"z" * 300 + b"\r\n0\r\nT: 1\r\n\r\n",
    b"\r\nPOST /d HTTP/1.1\r\nHost: e\r\nContent-Length: 0\r\n\r\n",
    b"GET /e HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD /f HTTP/1.1\nHost: e\n\n",
    b"GET /g HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n",
]
STREAM = b"".join(CORPUS)
SMALL = {"buffer_size": 256}


def test_pipelined_corpus_is_served_whole():
    requests, bodies, cancels, output, closes = run_split(STREAM, [], **SMALL)
    assert [p.uri for _, p in requests] == [
        b"http://e/a", b"http://e/b", b"http://e/c", b"http://e/d", b"http://localhost/e",
        b"http://e/f", b"http://e/g"]
    assert [rid for rid, _ in requests] == [b"0-0-%d" % i for i in range(7)]
    assert bodies[b"0-0-1"] == bytes(range(200)) * 3
    assert bodies[b"0-0-2"] == b"hello world" + b"z" * 300
    assert output.count(b"HTTP/1.1 200 OK\r\n") == 6 and output.count(b"HTTP/1.0 200 OK") == 1
    assert cancels == [] and closes == [True]


@pytest.mark.parametrize("request_bytes", CORPUS, ids=[f"r{i}" for i in range(len(CORPUS))])
@pytest.mark.parametrize("buffer_size", [256, 8192])
def test_whole_bytewise_and_trailing_data_agree(request_bytes, buffer_size):
    whole = run_split(request_bytes, [], eof=False, buffer_size=buffer_size)
    bytewise = run_split(request_bytes, list(range(1, len(request_bytes))), eof=False,
                         buffer_size=buffer_size)
    assert bytewise == whole
    trailing = run_split(request_bytes + b"GET /next HTTP/1.1\r\n", [], eof=False,
                         buffer_size=buffer_size)
    requests, bodies, _, output, _ = trailing
    assert requests[:1] == whole[0] and bodies == whole[1] and output == whole[3]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_split_gives_the_same_transcript(data):
    cuts = data.draw(st.lists(st.integers(1, len(STREAM) - 1), max_size=40, unique=True))
    assert run_split(STREAM, sorted(cuts), **SMALL) == run_split(STREAM, [], **SMALL)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(BAD), st.data())
def test_any_split_of_bad_input_gives_the_same_refusal(bad, data):
    request_bytes, status = bad
    cuts = data.draw(st.lists(st.integers(1, len(request_bytes) - 1), max_size=20, unique=True))
    _, _, _, output, closes = run_split(request_bytes, sorted(cuts))
    assert output.startswith(b"HTTP/1.1 %d " % status) and closes == [True]
