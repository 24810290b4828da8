"""The client role's stream-mode session against a handler that breaks a
rule of HTTP or ZHTTP, and the origin-side rules that keep one exchange
from spilling into the next on a reused connection (a handler's
Content-Length counted against its body, a 101 not reused, credentials
not carried to another origin), driven through ``client_helpers``."""

from __future__ import annotations

import pytest

from condure.session.client_ws import ClientWsSession
from condure.zhttp.packets import Cancel, Credit, Data, Error, Ping
from tests.unit.client_helpers import INSTANCE, START, ClientDriver, first

OK5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def kinds(packets) -> list[str]:
    return [type(p).__name__ for p in packets]


def cl(value: bytes, body: bytes = b"", more: bool = False, **kw) -> Data:
    """A POST whose handler declares ``Content-Length: value``."""
    return first(method=b"POST", body=body, more=more, credits=1000,
                 headers=((b"Content-Length", value),), **kw)


def refused_before_connecting(d: ClientDriver, detail: str) -> None:
    assert kinds(d.packets) == ["KeepAlive", "Error"]
    assert d.packets[-1].condition == b"undefined-condition"
    assert not d.connects and not d.written and d.closed
    (close,) = d.closes
    assert close.handler_fault and detail in close.reason


# -- the handler's Content-Length --------------------------------------------------


@pytest.mark.parametrize("value", [b"abc", b"-1", b"5, 5", b"+5", b"99999999999999999999999"])
def test_content_length_not_digits_is_refused(value: bytes) -> None:
    """RFC 9110 8.6: never forwarded; Condure's usize parse fails the
    request the same way (undefined-condition)."""
    refused_before_connecting(ClientDriver.stream(cl(value, b"hello")), "invalid Content-Length")


def test_content_length_written_as_parsed() -> None:
    d = ClientDriver.stream(cl(b" 005 ", b"hello"))
    d.connect()
    assert d.new_written() == (b"POST /path?x=1 HTTP/1.1\r\nHost: example.com\r\n"
                               b"Content-Length: 5\r\n\r\nhello")


def test_whole_body_longer_or_shorter_than_the_content_length() -> None:
    """Nothing is written: the tail would reach the origin as a second
    request on the connection, a short body would leave it waiting."""
    refused_before_connecting(ClientDriver.stream(cl(b"3", b"hello")), "more body")
    refused_before_connecting(ClientDriver.stream(cl(b"30", b"hello")), "short")


def test_streamed_body_past_the_content_length() -> None:
    d = ClientDriver.stream(cl(b"4", b"ab", more=True))
    d.connect()
    assert d.new_written().endswith(b"Content-Length: 4\r\n\r\nab")
    d.new_packets()
    d.handler(Data, body=b"cdGET /smuggled HTTP/1.1\r\n\r\n", more=True)
    assert kinds(d.new_packets()) == ["Error"]
    assert d.packets[-1].condition == b"undefined-condition"
    assert d.new_written() == b"" and d.closed and not d.releases
    assert d.closes[-1].handler_fault and "more body" in d.closes[-1].reason


def test_streamed_body_ending_short_of_the_content_length() -> None:
    d = ClientDriver.stream(cl(b"10", b"ab", more=True))
    d.connect()
    d.new_packets()
    d.new_written()
    d.handler(Data, body=b"cd", more=True)
    assert d.new_written() == b"cd" and not d.closed
    d.handler(Data, body=b"ef")  # the last packet, 4 bytes short
    assert kinds(d.new_packets()) == ["Error"] and d.new_written() == b""
    assert d.closed and not d.releases and d.closes[-1].handler_fault


def test_streamed_body_short_after_an_early_response_is_cancel() -> None:
    """Once the handler has the response head, a fault is ``cancel`` and
    the connection is closed, not pooled."""
    d = ClientDriver.stream(cl(b"10", b"ab", more=True))
    d.connect()
    d.origin(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    d.new_packets()
    d.handler(Data, body=b"cd")
    assert kinds(d.new_packets()) == ["Cancel"]
    assert d.closed and not d.releases and d.closes[-1].handler_fault


def test_streamed_body_matching_the_content_length_is_reused() -> None:
    d = ClientDriver.stream(cl(b"6", b"ab", more=True))
    d.connect()
    d.new_written()
    d.handler(Data, body=b"cd", more=True)
    d.handler(Data, body=b"ef")
    assert d.new_written() == b"cdef"
    d.origin(OK5)
    assert d.closed and [r.persistent for r in d.releases] == [True]
    assert not d.closes[-1].handler_fault


# -- which ends are the handler's fault --------------------------------------------------


def connected() -> ClientDriver:
    d = ClientDriver.stream(first(credits=1000))
    d.connect()
    d.new_packets()
    return d


def test_rule_breaks_are_flagged_for_the_warning() -> None:
    d = connected()
    d.handler(Credit, seq=5, credits=10)
    assert d.closes[-1].handler_fault and "bad seq" in d.closes[-1].reason
    d = connected()
    d.handler(Ping)
    assert d.closes[-1].handler_fault
    d = ClientDriver.stream(first(method=b"POST", more=True), buffer_size=4)
    d.connect()
    d.handler(Data, body=b"12345", more=True)
    assert d.closes[-1].handler_fault and "credits" in d.closes[-1].reason


@pytest.mark.parametrize("kind", [Cancel, Error])
def test_handler_ending_its_session_is_no_fault(kind: type) -> None:
    d = connected()
    d.handler(kind)
    assert d.closed and not d.closes[-1].handler_fault


def test_origin_failures_are_no_fault() -> None:
    d = connected()
    d.origin(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert d.closed and not d.closes[-1].handler_fault


def test_websocket_handler_faults_are_flagged() -> None:
    d = ClientDriver(ClientWsSession(first(b"ws://example.com/", method=None, credits=10),
                                     instance_id=INSTANCE, now=START))
    d.connect()
    d.handler(Data, body=b"x", more=True)  # a message before the WebSocket opened
    assert d.closed and d.closes[-1].handler_fault


# -- origin side ----------------------------------------------------------------------


def test_101_to_a_plain_request_is_not_reused() -> None:
    """RFC 9110 15.2.2, 7.8: after a 101 the connection speaks another
    protocol; the next request must not be written into it."""
    d = connected()
    d.origin(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
    assert [p.code for p in d.packets if isinstance(p, Data) and p.code] == [101]
    assert d.closed and [r.persistent for r in d.releases] == [False]


def test_chunked_in_any_case() -> None:
    d = connected()
    d.origin(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert b"".join(getattr(p, "body", b"") or b"" for p in d.packets) == b"hello"
    assert d.closed and [r.persistent for r in d.releases] == [True]


CREDENTIALS = ((b"Authorization", b"Bearer t"), (b"Cookie", b"s=1"),
               (b"Proxy-Authorization", b"Basic eDp5"), (b"X-Keep", b"1"))


def redirect_to(location: bytes) -> bytes:
    return b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % location


def test_credentials_follow_a_redirect_on_the_same_origin_only() -> None:
    d = ClientDriver.stream(first(b"http://example.com/a", credits=100, headers=CREDENTIALS,
                                  follow_redirects=True))
    d.connect()
    d.new_written()
    d.origin(redirect_to(b"/b"))
    d.connect()
    assert d.new_written() == (b"GET /b HTTP/1.1\r\nHost: example.com\r\n"
                               b"Authorization: Bearer t\r\nCookie: s=1\r\n"
                               b"Proxy-Authorization: Basic eDp5\r\nX-Keep: 1\r\n\r\n")
    d.origin(redirect_to(b"http://example.com:8080/c"))  # another port: another origin
    d.connect()
    assert d.new_written() == b"GET /c HTTP/1.1\r\nHost: example.com:8080\r\nX-Keep: 1\r\n\r\n"
    d.origin(redirect_to(b"http://example.com/d"))  # back: they stay gone, as in curl
    d.connect()
    assert d.new_written() == b"GET /d HTTP/1.1\r\nHost: example.com\r\nX-Keep: 1\r\n\r\n"
    d.origin(OK5)
    assert d.closed and d.packets[-1].body == b"hello"
