"""The client role's pure rules (reference 6.1, 6.3, 6.5, 6.6, deny list)."""

from __future__ import annotations

import pytest

from condure.session.outbound import (
    MAX_REDIRECTS,
    Condition,
    Framing,
    OutboundError,
    allowed_addresses,
    denied,
    first_packet_problem,
    framing,
    parse_target,
    redirect,
    redirect_method,
    request_head,
    same_origin,
    without_credentials,
)
from condure.zhttp.packets import Credit, Data, Ident
from tests.unit.client_helpers import first


def target(uri: bytes = b"http://example.com/a?b=1", **fields: object):
    return parse_target(first(uri, **fields), req_mode=False)


# -- first packets ---------------------------------------------------------------

def test_first_packet_checks_stream_mode() -> None:
    assert first_packet_problem(first(), req_mode=False) is None
    assert "data" in first_packet_problem(Credit(from_=b"h", ids=(Ident(b"1", 0),)),
                                          req_mode=False)
    assert first_packet_problem(first(ids=(Ident(b"1", 1),)), req_mode=False) is not None
    assert first_packet_problem(first(ids=(Ident(b"1"),)), req_mode=False) is not None
    assert first_packet_problem(first(ids=()), req_mode=False) is not None
    assert first_packet_problem(first(ids=(Ident(b"1", 0), Ident(b"2", 0))),
                                req_mode=False) is not None
    assert first_packet_problem(first(from_=b"x" * 65), req_mode=False) is not None
    assert first_packet_problem(first(from_=b"x" * 64), req_mode=False) is None
    assert first_packet_problem(first(from_=b""), req_mode=False) is not None
    assert first_packet_problem(first(ids=(Ident(b"i" * 65, 0),)), req_mode=False) is not None


def test_first_packet_checks_req_mode() -> None:
    assert first_packet_problem(first(from_=b"", ids=()), req_mode=True) is None
    assert first_packet_problem(first(from_=b"", ids=(Ident(b"a"),)), req_mode=True) is None
    assert first_packet_problem(first(ids=(Ident(b"a"), Ident(b"b"))), req_mode=True)
    assert first_packet_problem(first(from_=b"x" * 65), req_mode=True)


# -- targets --------------------------------------------------------------------

def test_target_from_url() -> None:
    t = target(b"https://Example.COM:8443/p/q?x=1&y#frag")
    assert (t.scheme, t.host, t.port, t.tls) == ("https", "example.com", 8443, True)
    assert t.authority == b"example.com:8443"
    assert t.path == b"/p/q?x=1&y"
    assert (t.connect_host, t.connect_port, t.server_name, t.verify) == (
        "example.com", 8443, "example.com", True)


def test_idn_host_and_non_ascii_path_are_encoded() -> None:
    """As Condure's URL parser (WHATWG) and zurl: the host IDNA-encoded,
    for the Host header, the connection and TLS too; path and query
    percent-encoded as UTF-8 (the path's and the special query's sets)."""
    t = target("http://bücher.example:8080/café?q=é".encode())
    assert (t.host, t.connect_host, t.server_name) == ("xn--bcher-kva.example",) * 3
    assert t.authority == b"xn--bcher-kva.example:8080"
    assert t.path == b"/caf%C3%A9?q=%C3%A9"
    t = target("https://BÜCHER.example/a b/%41\"<>`{}'?x y\"<>`{}'&%41".encode())
    assert t.host == "xn--bcher-kva.example" and t.authority == b"xn--bcher-kva.example"
    assert t.path == b"/a%20b/%41%22%3C%3E%60%7B%7D'?x%20y%22%3C%3E`{}%27&%41"
    assert target("http://example.com/\U0001F600".encode()).path == b"/%F0%9F%98%80"
    n = redirect(target(follow_redirects=True), "http://bücher.example/ü".encode())
    assert n is not None and (n.host, n.path) == ("xn--bcher-kva.example", b"/%C3%BC")


def test_a_fragment_is_not_sent() -> None:
    """RFC 9112 3.2: the request target is the path and query only."""
    assert target(b"http://example.com/a?b=1#frag").path == b"/a?b=1"
    assert target(b"http://example.com/a#x?y").path == b"/a"


def test_target_defaults_and_ipv6() -> None:
    t = target(b"http://example.com")
    assert (t.port, t.path, t.authority, t.tls) == (80, b"/", b"example.com", False)
    t = target(b"http://example.com:80/")
    assert t.authority == b"example.com"  # the default port is not repeated
    t = target(b"https://[::1]:4443/x")
    assert (t.host, t.port, t.authority) == ("::1", 4443, b"[::1]:4443")
    t = target(b"wss://example.com/ws")
    assert (t.websocket, t.tls, t.port) == (True, True, 443)


def test_target_connect_host_and_flags() -> None:
    t = target(b"https://example.com/", connect_host=b"10.0.0.5", connect_port=9443,
               ignore_tls_errors=True, ignore_policies=True, follow_redirects=True)
    assert (t.connect_host, t.connect_port, t.server_name) == ("10.0.0.5", 9443, "example.com")
    assert (t.verify, t.ignore_policies, t.follow_redirects) == (False, True, True)
    t = target(b"https://example.com/", connect_host=b"backend", trust_connect_host=True)
    assert (t.connect_host, t.connect_port, t.server_name) == ("backend", 0, "backend")
    t = target(b"https://example.com/", trust_connect_host=True)
    assert t.server_name == "example.com"
    t = target(b"http://example.com/", connect_port=8080)
    assert (t.connect_host, t.connect_port) == ("example.com", 8080)


@pytest.mark.parametrize("uri", [
    b"", b"example.com/x", b"ftp://example.com/", b"http:///path", b"http://", b"http://a b/",
    b"http://example.com:99999/", b"http://example.com:x/", b"/relative",
    # hosts the IDNA codec refuses: an empty label, a label over 63 bytes
    b"http://b\xc3\xbccher..example/", b"http://" + b"\xc3\xbc" * 64 + b".example/",
    # control characters anywhere (Python's urlsplit would drop tab, CR, LF)
    b"http://example.com/a\r\nX: 1", b"http://example.com/a\tb", b"http://example.com/a\x00",
    b"http://example.com/?a\x7f", b"http://exa\nmple.com/",
])
def test_bad_urls_are_bad_requests(uri: bytes) -> None:
    with pytest.raises(OutboundError) as e:
        target(uri)
    assert e.value.condition is Condition.BAD_REQUEST


def test_method_rules() -> None:
    for method in (None, b"", b"GE T", b"G\r\n"):
        with pytest.raises(OutboundError) as e:
            target(method=method)
        assert e.value.condition is Condition.BAD_REQUEST
    assert target(b"ws://example.com/", method=None).websocket


def test_req_mode_takes_http_only() -> None:
    assert parse_target(first(b"https://e.com/"), req_mode=True).tls
    with pytest.raises(OutboundError):
        parse_target(first(b"ws://e.com/"), req_mode=True)


def test_condition_names() -> None:
    assert [c.wire for c in Condition] == [
        b"remote-connection-failed", b"connection-timeout", b"bad-request", b"tls-error",
        b"policy-violation", b"too-many-redirects", b"undefined-condition", b"rejected"]


# -- request heads ---------------------------------------------------------------

def test_golden_get_head() -> None:
    headers = ((b"host", b"ignored"), (b"User-Agent", b"t"), (b"Connection", b"close"),
               (b"Accept", b"*/*"), (b"X-Dup", b"1"), (b"X-Dup", b"2"))
    head = request_head(target(), b"GET", headers, framing(b"GET", headers, b"", False))
    assert head == (b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n"
                    b"Accept: */*\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n")


def test_golden_post_heads() -> None:
    t = target(b"http://example.com:8080/up")
    h = ((b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"gzip"))
    assert request_head(t, b"POST", h, framing(b"POST", h, b"hello", False)) == (
        b"POST /up HTTP/1.1\r\nHost: example.com:8080\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 5\r\n\r\n")
    assert request_head(t, b"POST", h, framing(b"POST", h, b"hel", True)) == (
        b"POST /up HTTP/1.1\r\nHost: example.com:8080\r\nContent-Type: text/plain\r\n"
        b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n")
    # a handler Content-Length wins, even with more to come
    h2 = ((b"content-length", b" 10 "),)
    assert framing(b"POST", h2, b"hel", True) == Framing(length=b"10", declared=10)
    assert request_head(t, b"POST", h2, framing(b"POST", h2, b"hel", True)).endswith(
        b"\r\nContent-Length: 10\r\n\r\n")


@pytest.mark.parametrize("value", [
    b"abc", b"-1", b"5, 5", b"+5", b"5 5", b"0x5", b"", b"18446744073709551616",
    b"99999999999999999999999", b"\xd9\xa5", b"9" * 5000,
])
def test_handler_content_length_must_be_digits(value: bytes) -> None:
    """RFC 9110 8.6: only 1*DIGIT is passed on (Condure parses a usize and
    fails the request, undefined-condition); a list, even of equal values,
    is refused as Condure's parse refuses it."""
    with pytest.raises(OutboundError) as e:
        framing(b"POST", ((b"Content-Length", value),), b"hello", False)
    assert e.value.condition is Condition.UNDEFINED and e.value.handler_fault


def test_handler_content_length_written_as_a_plain_decimal() -> None:
    assert framing(b"POST", ((b"Content-Length", b"005"),), b"hello", False) == Framing(
        length=b"5", declared=5)
    big = b"18446744073709551615"  # the largest 64-bit value
    assert framing(b"POST", ((b"Content-Length", big),), b"", True).length == big
    zeros = b"0" * 5000 + b"3"
    assert framing(b"POST", ((b"Content-Length", zeros),), b"abc", False).length == b"3"
    twice = ((b"Content-Length", b"5"), (b"content-length", b"5"))
    assert framing(b"POST", twice, b"hello", False).length == b"5"
    with pytest.raises(OutboundError):
        framing(b"POST", ((b"Content-Length", b"5"), (b"Content-Length", b"6")), b"hello", False)


def test_body_counted_against_the_handler_content_length() -> None:
    """Excess would reach the origin as a request of its own; a whole body
    that falls short would leave the origin waiting."""
    h = ((b"Content-Length", b"3"),)
    for body, more in ((b"hello", False), (b"hello", True)):
        with pytest.raises(OutboundError) as e:
            framing(b"POST", h, body, more)
        assert e.value.condition is Condition.UNDEFINED and "more body" in e.value.detail
    with pytest.raises(OutboundError) as e:
        framing(b"POST", ((b"Content-Length", b"30"),), b"hello", False)
    assert e.value.condition is Condition.UNDEFINED and "short" in e.value.detail
    assert framing(b"POST", h, b"he", True) == Framing(length=b"3", declared=3)
    assert framing(b"GET", ((b"Content-Length", b"0"),), b"", False) == Framing(declared=0)


def test_zero_length_left_out_for_get_head_options() -> None:
    for method in (b"GET", b"HEAD", b"OPTIONS"):
        assert framing(method, (), b"", False) == Framing()
        assert framing(method, (), b"", False, req_mode=True) == Framing()
    assert framing(b"POST", (), b"", False) == Framing(length=b"0")
    assert framing(b"DELETE", (), b"", False) == Framing(length=b"0")
    assert framing(b"GET", (), b"ab", False) == Framing(length=b"2")


def test_req_mode_framing_is_always_the_body_length() -> None:
    h = ((b"Content-Length", b"99"),)
    assert framing(b"POST", h, b"abc", True, req_mode=True) == Framing(length=b"3")


def test_websocket_head() -> None:
    t = target(b"ws://example.com/chat")
    h = ((b"Upgrade", b"x"), (b"Connection", b"y"), (b"Sec-WebSocket-Key", b"z"),
         (b"Sec-WebSocket-Version", b"8"), (b"Origin", b"http://o"))
    head = request_head(t, b"GET", h, Framing(), ws_key=b"a2V5", ws_deflate=True)
    assert head == (b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: a2V5\r\n"
                    b"Sec-WebSocket-Extensions: permessage-deflate\r\nOrigin: http://o\r\n\r\n")


def test_header_limit_counts_condure_headers() -> None:
    t = target()
    h = tuple((b"X-%d" % i, b"v") for i in range(62))
    assert request_head(t, b"POST", h, framing(b"POST", h, b"x", False)).count(b"\r\n") == 66
    h63 = tuple((b"X-%d" % i, b"v") for i in range(63))
    with pytest.raises(OutboundError) as e:
        request_head(t, b"POST", h63, framing(b"POST", h63, b"x", False))
    assert e.value.condition is Condition.BAD_REQUEST
    assert request_head(t, b"GET", h63, framing(b"GET", h63, b"", False))


def test_header_injection_refused() -> None:
    with pytest.raises(OutboundError):
        request_head(target(), b"GET", ((b"X", b"a\r\nEvil: 1"),), Framing())
    with pytest.raises(OutboundError):
        request_head(target(), b"GET", ((b"Bad Name", b"a"),), Framing())
    with pytest.raises(OutboundError):  # NUL, as CR and LF (RFC 9110 5.5)
        request_head(target(), b"GET", ((b"X", b"a\x00b"),), Framing())


# -- the deny list ---------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.10.10", "0.0.0.0", "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12::5",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:192.168.0.1", "not-an-address",
])
def test_denied(address: str) -> None:
    assert denied(address)


@pytest.mark.parametrize("address", [
    "93.184.216.34", "172.32.0.1", "172.15.255.255", "192.169.0.1", "8.8.8.8",
    "2606:4700::1111", "::ffff:8.8.8.8", "fec0::1",
])
def test_allowed(address: str) -> None:
    assert not denied(address)


def test_allowed_addresses() -> None:
    mixed = ["127.0.0.1", "93.184.216.34", "::1", "2606:4700::1"]
    assert allowed_addresses(mixed, deny_internal=True, ignore_policies=False) == [
        "93.184.216.34", "2606:4700::1"]
    assert allowed_addresses(mixed, deny_internal=False, ignore_policies=False) == mixed
    assert allowed_addresses(mixed[:1], deny_internal=True, ignore_policies=True) == mixed[:1]
    with pytest.raises(OutboundError) as e:
        allowed_addresses(["10.0.0.1", "::1"], deny_internal=True, ignore_policies=False)
    assert e.value.condition is Condition.POLICY_VIOLATION
    many = [f"8.8.8.{i}" for i in range(20)]
    assert len(allowed_addresses(many, deny_internal=True, ignore_policies=False)) == 16


# -- redirects --------------------------------------------------------------------

def test_redirect_resolution() -> None:
    t = target(b"http://example.com/a/b?q", follow_redirects=True)
    n = redirect(t, b"../c?d=1")
    assert n is not None
    assert (n.url, n.path, n.host, n.follow_redirects) == (
        "http://example.com/c?d=1", b"/c?d=1", "example.com", True)
    n = redirect(t, b"https://other.org:8443/x")
    assert n is not None and (n.tls, n.authority, n.connect_host, n.connect_port) == (
        True, b"other.org:8443", "other.org", 8443)
    n = redirect(t, b"//third.net/y")
    assert n is not None and n.url == "http://third.net/y"
    for bad in (b"ftp://example.com/", b"ws://example.com/", b"http://", b"\xff"):
        assert redirect(t, bad) is None


def test_redirect_keeps_connect_host_on_the_same_origin_only() -> None:
    t = target(b"https://example.com/a", connect_host=b"10.0.0.5", connect_port=9443,
               trust_connect_host=True)
    same = redirect(t, b"/b")
    assert same is not None and (same.connect_host, same.connect_port, same.server_name) == (
        "10.0.0.5", 9443, "10.0.0.5")
    other = redirect(t, b"https://elsewhere.com/b")
    assert other is not None and (other.connect_host, other.connect_port, other.server_name) == (
        "elsewhere.com", 443, "elsewhere.com")


def test_credentials_are_for_the_same_origin_only() -> None:
    t = target(b"http://example.com/a")
    assert same_origin(t, redirect(t, b"/b"))
    for other in (b"https://example.com/b", b"http://example.com:81/b", b"http://other.com/a"):
        n = redirect(t, other)
        assert n is not None and not same_origin(t, n)
    h = ((b"Authorization", b"Basic eDp5"), (b"X-A", b"1"), (b"cookie", b"s=1"),
         (b"PROXY-AUTHORIZATION", b"p"), (b"Cookie2", b"k"))
    assert without_credentials(h) == ((b"X-A", b"1"), (b"Cookie2", b"k"))


def test_websocket_redirects_stay_websocket() -> None:
    t = target(b"ws://example.com/a", method=None)
    assert redirect(t, b"wss://example.com/b") is not None
    assert redirect(t, b"http://example.com/b") is None


def test_redirect_method() -> None:
    for code in (301, 302, 303):
        assert redirect_method(code, b"POST") == (b"GET", False)
        assert redirect_method(code, b"GET") == (b"GET", True)
        assert redirect_method(code, b"PUT") == (b"PUT", True)
    assert redirect_method(307, b"POST") == (b"POST", True)
    assert redirect_method(308, b"POST") == (b"POST", True)
    assert MAX_REDIRECTS == 8


def test_first_packet_fields_round_trip_through_the_codec() -> None:
    """The client-role fields a handler sends survive the decoder."""
    from condure.zhttp.codec import decode, encode
    packet = first(b"https://example.com/", connect_host=b"h", connect_port=81,
                   trust_connect_host=True, ignore_tls_errors=True, ignore_policies=True,
                   follow_redirects=True, credits=100)
    back = decode(encode(packet))
    assert isinstance(back, Data)
    t = parse_target(back, req_mode=False)
    assert (t.connect_host, t.connect_port, t.server_name, t.verify, t.ignore_policies,
            t.follow_redirects) == ("h", 81, "h", False, True, True)
