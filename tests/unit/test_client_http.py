"""The client role's stream-mode HTTP session (reference 6.2-6.6), driven
through the fake adapter in ``client_helpers``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from condure.session.client_contract import ClientPhase
from condure.session.client_http import ClientHttpSession
from condure.session.outbound import Condition
from condure.zhttp.codec import encode
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
)
from tests.unit.client_helpers import HANDLER, INSTANCE, RID, START, ClientDriver, first

OK5 = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


def kinds(packets) -> list[str]:
    return [type(p).__name__ for p in packets]


def seqs(packets) -> list[int | None]:
    return [p.ids[0].seq for p in packets]


def connected(packet: Data | None = None, **kw) -> ClientDriver:
    d = ClientDriver.stream(packet or first(credits=1000), **kw)
    d.connect()
    d.new_packets()
    d.new_written()
    return d


def test_keep_alive_first_then_connect() -> None:
    d = ClientDriver.stream(first(b"https://example.com:8443/x", credits=10))
    assert [s.to for s in d.sends] == [HANDLER]
    assert encode(d.packets[0]) == (
        b"T86:4:from,7:condure,2:id,5:req-1,3:seq,1:0#3:ext,15:5:multi,4:true!}"
        b"4:type,10:keep-alive,}")
    assert len(d.connects) == 1
    t = d.connects[0].target
    assert (t.connect_host, t.connect_port, t.tls, t.server_name) == (
        "example.com", 8443, True, "example.com")
    assert d.session.phase is ClientPhase.CONNECTING
    assert not d.session.wants_read and not d.written


def test_first_packet_must_pass_the_checks() -> None:
    with pytest.raises(ValueError):
        ClientHttpSession(first(ids=(Ident(RID, 1),)), instance_id=INSTANCE, now=START)


@pytest.mark.parametrize("packet", [
    first(b"ftp://example.com/"), first(b"http:///x"), first(method=None),
    first(headers=tuple((b"X-%d" % i, b"v") for i in range(64))),
])
def test_bad_request(packet: Data) -> None:
    d = ClientDriver.stream(packet)
    assert kinds(d.packets) == ["KeepAlive", "Error"]
    assert seqs(d.packets) == [0, 1]
    assert d.packets[1].condition == b"bad-request"
    assert not d.connects and d.closed


def test_websocket_targets_are_refused_by_the_http_kind() -> None:
    d = ClientDriver.stream(first(b"ws://example.com/", method=None))
    assert d.packets[-1].condition == b"undefined-condition" and d.closed


def test_get_round_trip() -> None:
    d = ClientDriver.stream(first(headers=((b"Accept", b"*/*"), (b"Host", b"x")), credits=1000))
    d.connect()
    assert d.new_written() == (b"GET /path?x=1 HTTP/1.1\r\nHost: example.com\r\n"
                               b"Accept: */*\r\n\r\n")
    assert d.session.wants_read
    d.new_packets()
    d.origin(OK5)
    packets = d.new_packets()
    assert kinds(packets) == ["Data", "Data"]
    head, body = packets
    assert encode(head) == (
        b"T180:4:from,7:condure,2:id,5:req-1,3:seq,1:1#3:ext,15:5:multi,4:true!}"
        b"4:code,3:200#6:reason,2:OK,7:headers,60:30:12:Content-Type,10:text/plain,]"
        b"22:14:Content-Length,1:5,]]4:more,4:true!}")
    assert (body.body, body.more, body.ids[0].seq) == (b"hello", False, 2)
    assert [r.persistent for r in d.releases] == [True]
    assert d.closed and d.closes[0].graceful


def test_no_credits_no_body_not_even_an_empty_one() -> None:
    d = ClientDriver.stream(first())  # no credits
    d.connect()
    d.new_packets()
    d.origin(b"HTTP/1.1 204 No Content\r\n\r\n")
    packets = d.new_packets()
    assert kinds(packets) == ["Data"] and packets[0].more and packets[0].code == 204
    assert not d.closed and not d.session.wants_read
    d.credit(1)
    last = d.new_packets()
    assert kinds(last) == ["Data"] and (last[0].body, last[0].more) == (b"", False)
    assert d.closed and d.releases[0].persistent


def test_body_within_credits_and_buffer_size() -> None:
    d = connected(first(credits=3), buffer_size=64)
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
    packets = d.new_packets()
    assert [(p.body, p.more) for p in packets[1:]] == [(b"xxx", True)]
    assert not d.session.wants_read
    d.credit(100)
    assert [(len(p.body), p.more) for p in d.new_packets()] == [(64, True), (33, False)]
    # reading stops without credits: the rest stays with the origin
    d2 = connected(first(credits=2), buffer_size=8192, read_size=5)
    d2.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabcdef")
    assert d2.inbound  # not all read
    d2.credit(10)
    assert b"".join(p.body for p in d2.packets if isinstance(p, Data)) == b"abcdef"


def test_credits_in_handler_data_packets_count() -> None:
    d = connected(first())
    d.origin(OK5)
    d.handler(Data, credits=5)
    assert d.packets[-1].body == b"hello" and d.closed


def test_chunked_response() -> None:
    d = connected()
    d.origin(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert [(p.body, p.more) for p in d.new_packets()[1:]] == [(b"abc", True)]
    d.origin(b"0\r\n\r\n")
    assert [(p.body, p.more) for p in d.new_packets()] == [(b"", False)]
    assert d.releases[0].persistent


def test_streamed_request_body_with_credits_both_ways() -> None:
    d = ClientDriver.stream(first(method=b"POST", body=b"abc", more=True), buffer_size=100)
    assert d.connects and not d.session.follow
    d.new_packets()
    d.connect()
    assert d.new_written() == (b"POST /path?x=1 HTTP/1.1\r\nHost: example.com\r\n"
                               b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked"
                               b"\r\n\r\n3\r\nabc\r\n")
    assert [(type(p).__name__, getattr(p, "credits", None)) for p in d.new_packets()] == [
        ("Credit", 100)]
    d.handler(Data, body=b"0123456", more=True)
    assert d.new_written() == b"7\r\n0123456\r\n"
    d.flush()
    credit = d.new_packets()
    assert kinds(credit) == ["Credit"] and credit[0].credits == 7
    d.handler(Data, body=b"xy")
    assert d.new_written() == b"2\r\nxy\r\n0\r\n\r\n"
    d.flush()
    assert not d.new_packets()  # the body is done: no more credits
    d.origin(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    d.credit(1)
    assert d.closed and d.releases[0].persistent


def test_empty_last_packet_before_the_connection() -> None:
    d = ClientDriver.stream(first(method=b"POST", body=b"ab", more=True))
    d.handler(Data)  # no body, no more: the request body ends here
    assert not d.closed and not d.written
    d.connect()
    assert d.new_written().endswith(b"chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")
    assert not [p for p in d.new_packets() if isinstance(p, Credit)]


def test_handler_content_length_frames_a_streamed_body() -> None:
    d = ClientDriver.stream(first(method=b"PUT", body=b"ab", more=True,
                                  headers=((b"Content-Length", b"4"),)))
    d.connect()
    assert d.new_written().endswith(b"Content-Length: 4\r\n\r\nab")
    d.new_packets()
    d.handler(Data, body=b"cd")
    assert d.new_written() == b"cd"


def test_request_body_beyond_credits_ends_the_session() -> None:
    d = ClientDriver.stream(first(method=b"POST", more=True), buffer_size=4)
    d.connect()
    d.new_packets()
    d.handler(Data, body=b"12345", more=True)
    assert kinds(d.new_packets()) == ["Error"] and d.closed
    assert d.packets[-1].condition == b"undefined-condition"


def test_early_response_is_not_persistent() -> None:
    d = ClientDriver.stream(first(method=b"POST", more=True, credits=100))
    d.connect()
    d.origin(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert d.closed and [r.persistent for r in d.releases] == [False]


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nextra",
])
def test_not_persistent(response: bytes) -> None:
    d = connected()
    d.origin(response)
    assert d.closed and [r.persistent for r in d.releases] == [False]
    assert d.packets[-1].body == b""


def test_close_delimited_body_is_read_to_the_close() -> None:
    # RFC 9112 6.3; Condure 1.10 read no body here
    d = connected()
    d.origin(b"HTTP/1.1 200 OK\r\n\r\nclose-delimited")
    assert not d.closed
    d.origin(b" body", eof=True)
    assert d.closed and [r.persistent for r in d.releases] == [False]
    assert b"".join(getattr(p, "body", b"") for p in d.packets) == b"close-delimited body"
    assert not d.packets[-1].more


def test_persistent_1_0_with_keep_alive() -> None:
    d = connected()
    d.origin(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
    assert [r.persistent for r in d.releases] == [True]


@pytest.mark.parametrize("condition", list(Condition))
def test_connect_failures(condition: Condition) -> None:
    d = ClientDriver.stream(first())
    d.connect_failed(condition)
    assert kinds(d.packets) == ["KeepAlive", "Error"]
    assert d.packets[1].condition == condition.wire and d.closed


def test_origin_failures_before_and_after_the_head() -> None:
    d = connected()
    d.origin(eof=True)
    assert d.packets[-1].condition == b"undefined-condition" and d.closed
    d = connected()
    d.origin(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert d.packets[-1].condition == b"undefined-condition"
    d = connected()
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", eof=True)
    assert kinds(d.new_packets()) == ["Data", "Data", "Cancel"] and d.closed
    assert not d.releases


@pytest.mark.parametrize("kind", [Cancel, Error])
def test_handler_ends_send_nothing(kind: type) -> None:
    for started in (False, True):
        d = connected()
        if started:
            d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
            d.new_packets()
        d.handler(kind)
        assert d.closed and not d.new_packets()


def test_bad_seq_and_unexpected_packets_send_nothing() -> None:
    d = connected()
    d.handler(Credit, seq=5, credits=10)
    assert d.closed and not d.new_packets()
    d = connected()
    d.handler(Ping)
    assert d.closed and not d.new_packets()
    d = connected()
    d.handler(Credit, from_=b"x" * 65)
    assert d.closed and not d.new_packets()


def test_handoff_start_is_answered() -> None:
    d = connected()
    d.handler(HandoffStart)
    assert kinds(d.new_packets()) == ["HandoffProceed"] and not d.closed
    assert isinstance(d.packets[-1], HandoffProceed)


def test_session_timeout_and_keep_alives() -> None:
    d = connected()
    assert d.session.deadline == START + 60
    d.advance(59)
    d.handler(KeepAlive)
    d.advance(59)
    assert not d.closed
    assert d.session.keep_alive() == (HANDLER, Ident(RID, 1))
    assert d.session.keep_alive() == (HANDLER, Ident(RID, 2))
    d.origin(OK5)
    assert seqs(d.new_packets()) == [3, 4]  # keep-alives took 1 and 2
    d.advance(61)
    assert d.closed and not d.new_packets()  # silence: nothing sent
    assert d.session.keep_alive() is None and d.session.deadline is None


def test_stream_timeout() -> None:
    d = connected(stream_timeout=10)
    d.advance(5)
    d.handler(KeepAlive)
    d.advance(6)
    assert d.packets[-1].condition == b"connection-timeout" and d.closed
    d = connected(stream_timeout=10)
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    d.new_packets()
    d.advance(11)
    assert kinds(d.new_packets()) == ["Cancel"] and d.closed


def test_shutdown_owes_a_cancel() -> None:
    d = connected()
    assert d.session.shutdown() == (HANDLER, Ident(RID, 1))
    assert not d.session.take_actions()
    assert d.session.phase is ClientPhase.CLOSED


# -- redirects ------------------------------------------------------------------

def redirect_to(location: bytes, code: int = 302) -> bytes:
    return b"HTTP/1.1 %d Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % (code, location)


def test_redirect_followed() -> None:
    d = connected(first(b"http://example.com/a", credits=100, follow_redirects=True))
    d.origin(redirect_to(b"http://other.org:81/b"))
    assert not d.new_packets()
    assert [r.persistent for r in d.releases] == [True]
    assert len(d.connects) == 2 and d.connects[1].target.authority == b"other.org:81"
    assert d.session.phase is ClientPhase.CONNECTING and not d.session.wants_read
    d.connect()
    assert d.new_written() == b"GET /b HTTP/1.1\r\nHost: other.org:81\r\n\r\n"
    d.origin(OK5)
    assert [p.code for p in d.new_packets() if isinstance(p, Data) and p.code] == [200]


def test_post_becomes_get_after_303() -> None:
    d = connected(first(b"http://example.com/a", method=b"POST", body=b"data", credits=100,
                        headers=((b"Content-Length", b"4"),), follow_redirects=True))
    d.origin(redirect_to(b"/b", 303))
    d.connect()
    assert d.new_written() == b"GET /b HTTP/1.1\r\nHost: example.com\r\n\r\n"
    d.origin(redirect_to(b"/c", 307))
    d.connect()
    assert d.new_written() == b"GET /c HTTP/1.1\r\nHost: example.com\r\n\r\n"


def test_307_keeps_method_and_body() -> None:
    d = connected(first(b"http://example.com/a", method=b"POST", body=b"data",
                        follow_redirects=True))
    d.origin(redirect_to(b"/b", 307))
    d.connect()
    assert d.new_written() == (b"POST /b HTTP/1.1\r\nHost: example.com\r\n"
                               b"Content-Length: 4\r\n\r\ndata")


def test_too_many_redirects() -> None:
    d = connected(first(credits=100, follow_redirects=True))
    for i in range(8):
        d.origin(redirect_to(b"/hop%d" % i))
        d.connect()
    assert len(d.connects) == 9 and not d.new_packets()
    d.origin(redirect_to(b"/hop9"))
    assert kinds(d.new_packets()) == ["Error"]
    assert d.packets[-1].condition == b"too-many-redirects"


def test_redirects_not_followed_are_passed_on() -> None:
    for packet in (first(credits=100), first(credits=100, follow_redirects=True,
                                             method=b"POST", more=True)):
        d = connected(packet)
        d.origin(redirect_to(b"/elsewhere"))
        head = next(p for p in d.new_packets() if isinstance(p, Data))
        assert head.code == 302 and (b"Location", b"/elsewhere") in head.headers
    d = connected(first(credits=100, follow_redirects=True))
    d.origin(redirect_to(b"ftp://x/"))
    assert next(p for p in d.new_packets() if isinstance(p, Data)).code == 302


# -- splits -----------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(1, 30), min_size=1, max_size=8),
       st.integers(1, 300))
def test_any_split_of_the_origin_bytes_gives_the_same_body(
        body: bytes, sizes: list[int], read_size: int) -> None:
    pieces = [body[i:i + s] for i, s in zip(range(0, len(body), 30), sizes * 10, strict=False)]
    pieces = [p for p in pieces if p]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
    d = connected(first(credits=1 << 20), read_size=read_size)
    d.origin(data)
    datas = [p for p in d.packets if isinstance(p, Data)]
    got = b"".join(p.body for p in datas[1:])
    assert got == b"".join(pieces)
    assert [p.more for p in datas][-1] is False and all(p.more for p in datas[:-1])
    assert d.closed and d.releases[0].persistent
