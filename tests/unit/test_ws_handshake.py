"""The WebSocket opening handshake rules (reference 5.7.1, 5.7.3, 5.7.7, 10.1)."""

from __future__ import annotations

import base64

import pytest

from condure.session.ws_handshake import (
    Deflate,
    HandshakeError,
    accept_head,
    accept_value,
    check_upgrade,
    is_upgrade,
    negotiate,
    parse_extensions,
    refusal,
    rejection,
    valid_key,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
BASE = ((b"Host", b"e"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", KEY), (b"Sec-WebSocket-Version", b"13"))


def with_(*extra, drop=()):
    return tuple(h for h in BASE if h[0] not in drop) + extra


@pytest.mark.parametrize("headers, expected", [
    (((b"Upgrade", b"websocket"),), True),
    (((b"uPGRADE", b"websocket"),), True),
    (((b"Upgrade", b"WebSocket"),), True),  # any case (RFC 6455 4.2.1), unlike Condure
    (((b"Upgrade", b"websocket, h2c"),), True),  # a list (RFC 9110 7.8)
    (((b"Upgrade", b"h2c"),), False),
    (((b"Connection", b"websocket"),), False),
    ((), False),
])
def test_is_upgrade(headers, expected):
    assert is_upgrade(headers, http11=True) is expected


def test_http10_upgrade_is_ignored():  # RFC 9110 7.8, 15.2
    assert is_upgrade(BASE, http11=True) is True
    assert is_upgrade(BASE, http11=False) is False


def test_accept_value_of_rfc_example():
    assert accept_value(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_valid_upgrade():
    up = check_upgrade(b"GET", BASE, compression=False)
    assert up.key == KEY and up.deflate is None
    assert check_upgrade(b"GET", with_((b"Content-Length", b"0")), compression=False).key == KEY


@pytest.mark.parametrize("method, headers, status", [
    (b"POST", BASE, 400),
    (b"GET", with_((b"Content-Length", b"5")), 400),
    (b"GET", with_((b"Transfer-Encoding", b"chunked")), 400),
    (b"GET", with_(drop=(b"Sec-WebSocket-Version",)), 426),
    (b"GET", with_((b"Sec-WebSocket-Version", b"8"), drop=(b"Sec-WebSocket-Version",)), 426),
    (b"GET", with_(drop=(b"Sec-WebSocket-Key",)), 400),
    (b"GET", with_((b"Sec-WebSocket-Key", b"k" * 221), drop=(b"Sec-WebSocket-Key",)), 400),
    # RFC 6455 4.2.1, 11.3.1: the base64 of 16 bytes, once (Condure took these)
    (b"GET", with_((b"Sec-WebSocket-Key", b""), drop=(b"Sec-WebSocket-Key",)), 400),
    (b"GET", with_((b"Sec-WebSocket-Key", b"x"), drop=(b"Sec-WebSocket-Key",)), 400),
    (b"GET", with_((b"Sec-WebSocket-Key", b"AAAAAAAAAAAAAAAAAAAAAA=="),), 400),  # twice
    (b"GET", with_((b"Sec-WebSocket-Key", KEY),), 400),  # the same key twice
    (b"GET", with_((b"Sec-WebSocket-Version", b"13"),), 400),  # RFC 6455 11.3.5: once
    (b"GET", with_((b"Sec-WebSocket-Key", KEY + b", " + KEY), drop=(b"Sec-WebSocket-Key",)),
     400),
    (b"GET", with_((b"Sec-WebSocket-Extensions", b"foo, , bar")), 400),
    (b"GET", with_((b"Sec-WebSocket-Extensions", b"permessage-deflate; ;")), 400),
    (b"GET", with_((b"Sec-WebSocket-Extensions", b'foo; a="unterminated')), 400),
])
def test_bad_upgrades(method, headers, status):
    for compression in (False, True):
        with pytest.raises(HandshakeError) as info:
            check_upgrade(method, headers, compression=compression)
        assert info.value.status == status


@pytest.mark.parametrize("key", [
    b"", b"x", b"k" * 220,
    b"AAAAAAAAAAAAAAAAAAAAAA",  # 16 bytes without the padding
    b"AAAAAAAAAAAAAAAAAAAA",  # 15 bytes
    b"AAAAAAAAAAAAAAAAAAAAAAAA",  # 18 bytes, 24 characters
    b"AAAAAAAAAAAAAAAAAAAAA===",
    b"AAAAAAAAAAAAAAAAAAA AA==",
    b"AAAAAAAAAAAAAAAAAAAA*A==",
    b"AAAAAAAAAAAAAAAAAAAAAA==AAAA",
])
def test_keys_that_are_not_base64_of_16_bytes(key):
    assert not valid_key(key)
    headers = with_((b"Sec-WebSocket-Key", key), drop=(b"Sec-WebSocket-Key",))
    with pytest.raises(HandshakeError) as info:
        check_upgrade(b"GET", headers, compression=False)
    assert info.value.status == 400


@pytest.mark.parametrize("raw", [bytes(16), b"\xff" * 16, bytes(range(16)),
                                 b"the sample nonce"])
def test_keys_that_are_base64_of_16_bytes(raw):
    key = base64.b64encode(raw)
    assert valid_key(key)
    headers = with_((b"Sec-WebSocket-Key", key), drop=(b"Sec-WebSocket-Key",))
    assert check_upgrade(b"GET", headers, compression=False).key == key


def test_extension_offer_accepted_without_compression():
    headers = with_((b"Sec-WebSocket-Extensions", b"permessage-deflate"))
    assert check_upgrade(b"GET", headers, compression=False).deflate is None
    assert check_upgrade(b"GET", headers, compression=True).deflate == Deflate()


def test_parse_extensions():
    assert parse_extensions(b'a; x; y=1 , b;z="q\\"uoted"') == [
        (b"a", [(b"x", None), (b"y", b"1")]), (b"b", [(b"z", b'q"uoted')])]
    for bad in (b"", b",", b"a,", b"a;", b"a; x=", b"a b", b'a; x="1', b"a;;x"):
        with pytest.raises(ValueError):
            parse_extensions(bad)


def _negotiated(*values: bytes) -> bytes | None:
    offers = []
    for value in values:
        offers += parse_extensions(value)
    chosen = negotiate(offers)
    return None if chosen is None else chosen.header


@pytest.mark.parametrize("offer, answer", [  # reference 10.1, table
    (b"permessage-deflate", b"permessage-deflate"),
    (b"permessage-deflate; client_max_window_bits", b"permessage-deflate"),
    (b"permessage-deflate; client_no_context_takeover; server_no_context_takeover",
     b"permessage-deflate; client_no_context_takeover; server_no_context_takeover"),
    (b"permessage-deflate; server_max_window_bits=10", None),
    (b"permessage-deflate; server_max_window_bits=10, permessage-deflate", b"permessage-deflate"),
    (b"x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=12",
     b"permessage-deflate"),
    (b"permessage-deflate; foo=1", None),
    # further rules of 10.1; an accepted server_max_window_bits is echoed (RFC 7692 7.1.2.1)
    (b"permessage-deflate; server_max_window_bits=15",
     b"permessage-deflate; server_max_window_bits=15"),
    (b'permessage-deflate; server_max_window_bits="15"',
     b"permessage-deflate; server_max_window_bits=15"),
    (b"permessage-deflate; server_max_window_bits=15; client_max_window_bits",
     b"permessage-deflate; server_max_window_bits=15"),
    (b"permessage-deflate; server_max_window_bits=15; client_no_context_takeover; "
     b"server_no_context_takeover",
     b"permessage-deflate; client_no_context_takeover; server_no_context_takeover; "
     b"server_max_window_bits=15"),
    (b"permessage-deflate; server_max_window_bits=14, permessage-deflate; "
     b"server_max_window_bits=15", b"permessage-deflate; server_max_window_bits=15"),
    (b"permessage-deflate; server_max_window_bits", None),
    (b"permessage-deflate; client_max_window_bits=7", None),
    (b"permessage-deflate; client_max_window_bits=16", None),
    (b"permessage-deflate; client_no_context_takeover=1", None),
    (b"permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
    (b"permessage-deflate; server_no_context_takeover",
     b"permessage-deflate; server_no_context_takeover"),
    (b"foo", None),
])
def test_negotiation_table(offer, answer):
    assert _negotiated(offer) == answer


def test_negotiation_over_several_headers():
    assert _negotiated(b"permessage-deflate; foo", b"permessage-deflate; client_no_context_takeover"
                       ) == b"permessage-deflate; client_no_context_takeover"


def test_deflate_variants_have_distinct_headers():
    variants = Deflate.variants()
    assert len({d.header for d in variants}) == len(variants) == 8
    assert Deflate() in variants and Deflate(True, True, 15) in variants
    for d in variants:
        (offer,) = parse_extensions(d.header)  # each answer parses as an offer...
        assert negotiate([offer]) == d  # ... and negotiates to itself


def test_accept_head_golden():  # reference 5.7.3
    headers = ((b"Sec-WebSocket-Protocol", b"chat"), (b"Upgrade", b"bogus"),
               (b"Connection", b"bogus"), (b"Sec-WebSocket-Accept", b"bogus"),
               (b"sec-websocket-extensions", b"bogus"))
    assert accept_head(101, b"Switching Protocols", headers, KEY, None) == (
        b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Protocol: chat\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    assert accept_head(101, b"OK", None, KEY, Deflate(True, False)).endswith(
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n\r\n")


def test_rejection_golden():  # reference 5.7.7, plus Connection: close
    headers = ((b"Content-Type", b"text/plain"), (b"Connection", b"x"))
    assert rejection(403, b"Forbidden", headers, b"go away\n") == (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: 8\r\n\r\ngo away\n")


def test_refusals():
    out = refusal(426, "unsupported Sec-WebSocket-Version")
    assert out.startswith(b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n")
    assert b"Connection: close\r\n" in out
    assert refusal(400, "x").startswith(b"HTTP/1.1 400 Bad Request\r\n")
