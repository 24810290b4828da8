"""The req-mode session, fed bytes and packets directly (no sockets)."""

from __future__ import annotations

import pytest

from condure.session.req import REQ_SOCKET, WEBSOCKET_REFUSAL, ReqSession
from condure.zhttp import encode
from condure.zhttp.packets import Cancel, Credit, Data, Error, KeepAlive
from tests.unit.session_helpers import INSTANCE, START, Driver, IdSource

GET = b"GET /hello?x=y HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n"
POST = b"POST /p HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\nhello there"
CHUNKED = (b"POST /p HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n there\r\n0\r\n\r\n")
HELLO = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n"


def make(read_size: int | None = None, buffer_size: int = 8192, body_buffer_size: int = 100000,
         req_timeout: float = 30.0, peer_port: int = 55326) -> Driver:
    ids = IdSource()
    session = ReqSession(instance_id=INSTANCE, new_id=ids, now=START, buffer_size=buffer_size,
                         body_buffer_size=body_buffer_size, req_timeout=req_timeout,
                         peer_address=b"127.0.0.1", peer_port=peer_port)
    return Driver(session=session, ids=ids, read_size=read_size, buffer_size=buffer_size)


def reply(d: Driver, body: bytes = b"hello world\n", **fields) -> None:
    fields.setdefault("headers", ((b"Content-Type", b"text/plain"),))
    d.handler(Data, seq=None, from_=b"", code=fields.pop("code", 200),
              reason=fields.pop("reason", b"OK"), body=body, **fields)


def only_request(d: Driver) -> Data:
    sends = d.new_sends()
    assert len(sends) == 1, sends
    assert sends[0].to is REQ_SOCKET
    return sends[0].packet


def test_get_packet_is_condures_bytes() -> None:
    d = make()
    d.client(GET)
    packet = only_request(d)
    assert encode(packet) == (
        b"T201:2:id,5:0-0-0,3:ext,15:5:multi,4:true!}6:method,3:GET,3:uri,28:http://example"
        b".com/hello?x=y,7:headers,48:22:4:Host,11:example.com,]18:10:User-Agent,1:t,]]12:pe"
        b"er-address,9:127.0.0.1,9:peer-port,5:55326#}")
    assert d.new_output() == b""
    reply(d)
    assert d.new_output() == HELLO
    assert not d.closed
    assert d.session.rid == b"0-0-1"


@pytest.mark.parametrize("read_size", [None, 1, 7])
@pytest.mark.parametrize("raw", [POST, CHUNKED], ids=["length", "chunked"])
def test_body_read_whole(raw: bytes, read_size: int | None) -> None:
    d = make(read_size=read_size)
    d.client(raw)
    packet = only_request(d)
    assert packet.body == b"hello there"
    assert packet.method == b"POST" and packet.credits == 0 and not packet.more
    assert not packet.stream and packet.from_ == b"" and packet.ids[0].seq is None


def test_packet_sent_only_when_body_complete() -> None:
    d = make()
    d.client(POST[:-3])
    assert d.new_sends() == []
    d.client(POST[-3:])
    assert only_request(d).body == b"hello there"


def test_trailing_data_is_the_next_request() -> None:
    d = make()
    d.client(POST + GET + b"GET /x HT")
    assert only_request(d).method == b"POST"
    reply(d, body=b"one")
    assert d.new_output().endswith(b"Content-Length: 3\r\n\r\none")
    second = only_request(d)
    assert second.uri == b"http://example.com/hello?x=y" and second.ids[0].id == b"0-0-1"
    reply(d, body=b"two")
    assert d.new_output().endswith(b"two")
    assert d.new_sends() == []
    d.client(b"TP/1.1\r\nHost: h\r\n\r\n")
    assert only_request(d).uri == b"http://h/x"


def test_http10_without_headers() -> None:
    d = make(peer_port=45842)
    d.client(b"GET /ten HTTP/1.0\r\n\r\n")
    packet = only_request(d)
    assert encode(packet) == (
        b"T131:2:id,5:0-0-0,3:ext,15:5:multi,4:true!}6:method,3:GET,3:uri,20:http://localhost"
        b"/ten,12:peer-address,9:127.0.0.1,9:peer-port,5:45842#}")
    reply(d, body=b"ten\n")
    assert d.new_output() == (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                              b"Content-Length: 4\r\n\r\nten\n")
    assert d.close.graceful


def test_http10_keep_alive_and_close_requests() -> None:
    d = make()
    d.client(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    only_request(d)
    reply(d, body=b"a")
    assert b"Connection: keep-alive\r\n" in d.new_output() and not d.closed
    d.client(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    only_request(d)
    reply(d, body=b"b")
    assert b"Connection: close\r\nContent-Length: 1\r\n\r\nb" in d.new_output()
    assert d.closed


def test_handler_framing_headers_dropped() -> None:
    d = make()
    d.client(GET)
    only_request(d)
    reply(d, body=b"x", more=True, headers=((b"A", b"1"), (b"Content-Length", b"99"),
                                            (b"Transfer-Encoding", b"chunked"),
                                            (b"Connection", b"keep-alive"), (b"B", b"2")))
    assert d.new_output() == b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 1\r\n\r\nx"


def test_expect_continue_answered_at_once() -> None:
    d = make()
    d.client(b"PUT /e HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert d.new_output() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert d.new_sends() == []
    d.client(b"hello")
    assert only_request(d).body == b"hello"


def test_websocket_upgrade_refused() -> None:
    d = make()
    d.client(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert d.new_output() == WEBSOCKET_REFUSAL
    assert d.sends == [] and d.close.graceful


@pytest.mark.parametrize("raw", [
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"6\r\nabcdef\r\n6\r\nabcdef\r\n",
], ids=["length", "chunked"])
def test_body_too_large(raw: bytes) -> None:
    d = make(body_buffer_size=10)
    d.client(raw)
    assert d.new_output().startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert d.sends == [] and d.close.graceful


def test_body_exactly_the_buffer_fits() -> None:
    d = make(body_buffer_size=11)
    d.client(POST)
    assert only_request(d).body == b"hello there"


def test_malformed_chunked_body() -> None:
    d = make()
    d.client(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert d.new_output().startswith(b"HTTP/1.1 400 ")
    assert d.sends == [] and d.closed


@pytest.mark.parametrize("raw,status", [
    (b"HELLO\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET /" + b"a" * 4100 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 70 + b"\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: h@evil.example\r\n\r\n", 400),
    (b"GET evil HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 501),
])
def test_bad_input_refused_as_in_stream_mode(raw: bytes, status: int) -> None:
    d = make()
    d.client(raw)
    assert d.new_output().startswith(b"HTTP/1.1 %d " % status)
    assert d.sends == [] and d.closed


def test_other_packet_types_ignored() -> None:
    d = make()
    d.client(GET)
    only_request(d)
    d.handler(KeepAlive)
    d.handler(Cancel)
    d.handler(Credit, credits=10)
    assert d.new_output() == b"" and not d.closed
    reply(d)
    assert d.new_output() == HELLO


@pytest.mark.parametrize("fault", [
    dict(code=0), dict(code=100), dict(code=600), dict(reason=b"OK\r\nX: y"),
    dict(headers=((b"X-A", b"a\r\nSet-Cookie: a=b"),)), dict(headers=((b"X A", b"1"),)),
], ids=range(6))
def test_faulty_response_gets_502(fault: dict) -> None:
    d = make()
    d.client(GET)
    only_request(d)
    reply(d, **fault)
    out = d.new_output()
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") and b"Set-Cookie" not in out
    assert d.closed and d.close.handler_fault


def test_handler_error_gets_502() -> None:
    d = make()
    d.client(GET)
    only_request(d)
    d.handler(Error, condition=b"bad-request")
    assert d.new_output().startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert d.close.graceful


def test_timeout_waiting_for_handler_gets_504() -> None:
    d = make(req_timeout=2.0)
    d.client(GET)
    only_request(d)
    d.advance(1.9)
    assert not d.closed
    d.advance(0.2)
    assert d.new_output().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert d.closed and d.close.graceful and d.close.unanswered
    reply(d)  # late: ignored
    assert d.new_output() == b""


def test_timeout_covers_the_whole_cycle_and_idle_time() -> None:
    d = make(req_timeout=2.0)
    d.advance(1.0)
    d.client(GET)  # the cycle started at the connection, not at the request
    only_request(d)
    reply(d)
    d.new_output()
    assert d.session.deadline == START + 1.0 + 2.0
    d.advance(2.1)
    assert d.new_output() == b"" and d.closed and not d.close.graceful


@pytest.mark.parametrize("part", [
    b"GET /hello HTTP/1.1\r\nHost: exa",
    b"POST /p HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
], ids=["head", "length", "chunked"])
def test_timeout_mid_request_gets_408(part: bytes) -> None:
    d = make(req_timeout=2.0)
    d.client(part)
    assert d.new_sends() == []
    d.advance(1.9)
    assert not d.closed and d.new_output() == b""
    d.advance(0.2)
    assert d.new_output().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert d.closed and d.close.graceful and not d.close.unanswered
    assert d.new_sends() == []


def test_timeout_after_a_response_with_part_of_the_next_request_gets_408() -> None:
    d = make(req_timeout=2.0)
    d.client(GET + b"GET /next HTT")
    only_request(d)
    reply(d)
    assert d.new_output() == HELLO
    d.advance(2.1)
    assert d.new_output().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert d.closed and d.close.graceful


def test_response_body_over_body_buffer_gets_502() -> None:
    d = make(body_buffer_size=5)
    d.client(GET)
    only_request(d)
    reply(d, body=b"123456")
    out = d.new_output()
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") and b"123456" not in out
    assert d.closed


def test_response_head_over_buffer_gets_502() -> None:
    d = make(buffer_size=256)
    d.client(GET)
    only_request(d)
    reply(d, headers=((b"X", b"y" * 300),))
    assert d.new_output().startswith(b"HTTP/1.1 502 ")


def test_head_and_no_content_responses() -> None:
    d = make()
    d.client(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    only_request(d)
    reply(d, body=b"abc")
    assert d.new_output() == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                              b"Content-Length: 3\r\n\r\n")
    d.client(GET)
    only_request(d)
    reply(d, code=204, reason=b"No Content", body=b"")
    assert d.new_output() == b"HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\n\r\n"
    assert not d.closed


def test_client_half_closed_after_its_request_is_answered_then_closed() -> None:
    """``nc -N`` shuts its side down after the request: the request still
    stands (Condure answers it too); the connection closes after it."""
    d = make()
    d.client(GET, eof=True)
    only_request(d)
    assert not d.closed and not d.session.wants_read
    reply(d, body=b"still here")
    assert d.output.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in d.output and d.output.endswith(b"still here")
    assert d.closed and d.close.graceful


def test_client_eof_mid_request_closes() -> None:
    for partial in (GET[:10], POST[:-2]):
        d = make()
        d.client(partial, eof=True)
        assert d.closed and not d.close.graceful and d.output == b""


@pytest.mark.parametrize("raw", [
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
], ids=["with-content-length", "http10"])
def test_transfer_encoding_framing_closes_after_the_response(raw: bytes) -> None:
    """RFC 9112 6.1: answered (by the chunked body), then the connection closes."""
    d = make()
    d.client(raw + GET)
    assert only_request(d).body == b"abc"
    reply(d, body=b"ok")
    assert b"keep-alive" not in d.output and d.closed and d.close.graceful


def test_no_keep_alives_and_nothing_owed_at_shutdown() -> None:
    d = make()
    d.client(GET)
    only_request(d)
    assert d.session.keep_alive() is None
    assert d.session.shutdown() is None
    assert d.session.deadline is None


@pytest.mark.parametrize("read_size", [1, 3, None])
def test_get_byte_by_byte_same_packet(read_size: int | None) -> None:
    whole = make()
    whole.client(GET)
    split = make(read_size=read_size)
    split.client(GET)
    assert encode(only_request(split)) == encode(only_request(whole))


@pytest.mark.parametrize("frames,expected", [
    ([b"", b"T1"], b"T1"),
    ([b"a", b"", b"T1", b"more"], b"T1"),
    ([b"e"] * 8 + [b"", b"T1"], b"T1"),
    ([b"e"] * 9 + [b"", b"T1"], None),
    ([b"T1"], None),
    ([b"a", b""], None),
])
def test_dealer_envelope(frames: list[bytes], expected: bytes | None) -> None:
    from condure.net.zmqreq import packet_frame

    assert packet_frame(frames) == expected


def test_a_stop_answers_a_waiting_request_with_503() -> None:
    """Condure stops (the drain deadline, a fast stop) while the handler
    has not answered: the client gets a 503 and the connection closes
    gracefully; between requests it just closes."""
    d = make()
    d.client(GET)
    only_request(d)
    assert d.session.shutdown() is None
    actions = d.session.take_actions()
    assert [type(a).__name__ for a in actions] == ["Write", "Close"]
    assert actions[0].data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nConnection: close\r\n" in actions[0].data and actions[1].graceful
    idle = make()
    assert idle.session.shutdown() is None and idle.session.take_actions() == []


@pytest.mark.parametrize("sent", [GET[:20], POST[:-4]],
                         ids=["head partly read", "body partly read"])
def test_a_stop_answers_a_request_partly_read_with_503(sent: bytes) -> None:
    """Bytes of a request came, not all of it: the client learns that it
    was not processed (RFC 9110 15.6.4). Empty lines before a request
    line (RFC 9112 2.2) are no request: the connection just closes."""
    d = make()
    d.client(sent)
    assert d.session.shutdown() is None
    actions = d.session.take_actions()
    assert [type(a).__name__ for a in actions] == ["Write", "Close"]
    assert actions[0].data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert actions[1].graceful
    blank = make()
    blank.client(b"\r\n")
    assert blank.session.shutdown() is None and blank.session.take_actions() == []
