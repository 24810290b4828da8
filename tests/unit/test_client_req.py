"""The client role's req-mode session (reference 6.7)."""

from __future__ import annotations

import pytest

from condure.session.client_req import ClientReqSession
from condure.session.outbound import Condition
from condure.zhttp.codec import decode, encode
from condure.zhttp.packets import Data, Error, Ident
from tests.unit.client_helpers import START, ClientDriver, first


def reply_bytes(d: ClientDriver) -> bytes:
    assert len(d.replies) == 1, d.replies
    return encode(d.replies[0].packet, ext_multi=False)


def test_whole_response_in_one_reply() -> None:
    d = ClientDriver.req(first(b"http://example.com/r", method=b"POST", body=b"abc",
                               from_=b"", ids=(Ident(b"q1"),), more=True))
    assert not d.sends  # nothing is published in req mode
    d.connect()
    # always Content-Length, even when the handler said more
    assert bytes(d.written) == (b"POST /r HTTP/1.1\r\nHost: example.com\r\n"
                                b"Content-Length: 3\r\n\r\nabc")
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n")
    assert reply_bytes(d) == (
        b"T135:2:id,2:q1,4:code,3:200#6:reason,2:OK,7:headers,69:30:12:Content-Type,"
        b"10:text/plain,]31:17:Transfer-Encoding,7:chunked,]]4:body,5:hello,}")
    assert d.closed and [r.persistent for r in d.releases] == [True]


def test_reply_without_id_when_the_request_had_none() -> None:
    d = ClientDriver.req(first(from_=b"", ids=()))
    d.connect()
    d.origin(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert reply_bytes(d) == b"T36:4:code,3:204#6:reason,10:No Content,}"
    back = decode(reply_bytes(d))
    assert isinstance(back, Data) and back.ids == ()


def test_get_without_body_has_no_content_length() -> None:
    d = ClientDriver.req(first(from_=b"handler", ids=(Ident(b"q"),)))
    d.connect()
    assert bytes(d.written) == b"GET /path?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n"


def test_req_mode_refuses_websocket_and_bad_urls() -> None:
    for uri in (b"ws://example.com/", b"nope"):
        d = ClientDriver.req(first(uri, from_=b"", ids=(Ident(b"q"),)))
        assert reply_bytes(d) == b"T51:2:id,1:q,4:type,5:error,9:condition,11:bad-request,}"
        assert d.closed and not d.connects


def test_more_than_one_id_is_refused() -> None:
    with pytest.raises(ValueError):
        ClientReqSession(first(ids=(Ident(b"a"), Ident(b"b"))), now=START)


@pytest.mark.parametrize("condition", [Condition.REMOTE_CONNECTION_FAILED,
                                       Condition.TLS_ERROR, Condition.POLICY_VIOLATION])
def test_connect_failure_reply(condition: Condition) -> None:
    d = ClientDriver.req(first(from_=b"", ids=(Ident(b"q"),)))
    d.connect_failed(condition)
    packet = d.replies[0].packet
    assert isinstance(packet, Error) and packet.condition == condition.wire and d.closed


def test_req_timeout_covers_the_whole_exchange() -> None:
    d = ClientDriver.req(first(from_=b"", ids=(Ident(b"q"),)), req_timeout=5)
    assert d.session.deadline == START + 5
    d.advance(3)
    d.connect()
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert d.session.deadline == START + 5  # activity does not extend it
    d.advance(2)
    assert d.replies[0].packet.condition == b"connection-timeout" and d.closed


def test_body_must_fit_the_body_buffer() -> None:
    d = ClientDriver.req(first(from_=b"", ids=(Ident(b"q"),)), body_buffer_size=4)
    d.connect()
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert d.replies[0].packet.condition == b"undefined-condition"
    d = ClientDriver.req(first(from_=b"", ids=(Ident(b"q"),)), body_buffer_size=5)
    d.connect()
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert d.replies[0].packet.body == b"hello"


def test_bad_and_truncated_responses() -> None:
    d = ClientDriver.req(first(from_=b"", ids=(Ident(b"q"),)))
    d.connect()
    d.origin(b"garbage\r\n\r\n")
    assert d.replies[0].packet.condition == b"undefined-condition"
    d = ClientDriver.req(first(from_=b"", ids=(Ident(b"q"),)))
    d.connect()
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", eof=True)
    assert d.replies[0].packet.condition == b"undefined-condition"
    assert not d.releases


def test_redirects_in_req_mode() -> None:
    d = ClientDriver.req(first(b"http://example.com/a", method=b"POST", body=b"x", from_=b"",
                               ids=(Ident(b"q"),), follow_redirects=True))
    d.connect()
    d.origin(b"HTTP/1.1 301 Moved\r\nLocation: /b\r\nContent-Length: 0\r\n\r\n")
    assert len(d.connects) == 2 and not d.replies
    d.written.clear()
    d.connect()
    assert bytes(d.written) == b"GET /b HTTP/1.1\r\nHost: example.com\r\n\r\n"
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert d.replies[0].packet.body == b"ok"


def test_later_packets_and_keep_alives_do_nothing() -> None:
    d = ClientDriver.req(first(from_=b"", ids=(Ident(b"q"),)))
    assert d.session.keep_alive() is None
    d.session.receive_packet(Data(body=b"x"), Ident(b"q"), START)
    d.session.output_flushed(START)
    assert not d.session.take_actions()
    d.session.shutdown()
    assert d.session.deadline is None and not d.session.take_actions()
