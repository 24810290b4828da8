"""The WebSocket opening handshake, server side (RFC 6455 4.2; reference
5.7.1, 5.7.3, 5.7.7, 10.1).

Pure rules: whether a request is an upgrade, whether the upgrade is valid,
the ``Sec-WebSocket-Accept`` value, the parsing of
``Sec-WebSocket-Extensions`` offers and the permessage-deflate choice, and
the response heads condure writes. The session decides when.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from condure.zhttp.packets import Header

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY_BYTES = 16  # Sec-WebSocket-Key is the base64 of this many bytes (RFC 6455 4.1)

# --compression-context: which side keeps its permessage-deflate context
# (LZ77 window) from one message to the next. ``keep``: as the client
# offers (Condure's answer); the client's context cannot travel, so such a
# session never moves. ``server``: condure adds client_no_context_takeover
# (RFC 7692 7.1.1.2), so the session can move between client messages;
# condure's own compressor keeps its context (a moved session starts a
# fresh one, which the client cannot tell). ``none``: condure adds
# server_no_context_takeover too (7.1.1.1): nothing is kept between
# messages on either side.
CONTEXTS = ("server", "none", "keep")

# Headers condure writes itself in a 101 or a rejection; the handler's
# copies are dropped (reference 5.7.3, 5.7.7).
_OWN = frozenset((b"upgrade", b"connection", b"sec-websocket-accept",
                  b"sec-websocket-extensions", b"content-length", b"transfer-encoding"))


class HandshakeError(Exception):
    """A bad upgrade; ``status`` is the answer (400 or 426)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Deflate:
    """Negotiated permessage-deflate parameters. ``server_max_window_bits``
    is 15 when the client offered that parameter: RFC 7692 7.1.2.1 makes
    the answer carry it then (condure always deflates with a 15-bit
    window), None when it was not offered."""

    client_no_context_takeover: bool = False
    server_no_context_takeover: bool = False
    server_max_window_bits: int | None = None

    @property
    def header(self) -> bytes:
        value = b"permessage-deflate"
        if self.client_no_context_takeover:
            value += b"; client_no_context_takeover"
        if self.server_no_context_takeover:
            value += b"; server_no_context_takeover"
        if self.server_max_window_bits is not None:
            value += b"; server_max_window_bits=%d" % self.server_max_window_bits
        return value

    @classmethod
    def variants(cls) -> tuple[Deflate, ...]:
        """Every parameter set :func:`negotiate` can choose."""
        return tuple(cls(a, b, bits) for a in (False, True) for b in (False, True)
                     for bits in (None, 15))


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A valid upgrade request: what the session needs from it."""

    key: bytes
    deflate: Deflate | None


def is_upgrade(headers: Iterable[Header], *, http11: bool) -> bool:
    """Whether a request is a WebSocket handshake: an HTTP/1.1 request
    whose ``Upgrade`` header (name in any case) lists the token
    ``websocket`` in any case (RFC 6455 4.2.1; RFC 9110 7.8: a
    comma-separated list). Condure took only the exact value ``websocket``
    (reference 5.7.1: ``Upgrade: WebSocket`` was plain HTTP there), and in
    HTTP/1.0 requests too, where a server must ignore ``Upgrade`` (RFC 9110
    7.8) and may send no 1xx (RFC 9110 15.2): such a request is plain HTTP
    here. ``Connection`` is not looked at, as in Condure. The one test for
    both listener modes (stream upgrades, req refuses)."""
    if not http11:
        return False
    for key, value in headers:
        if len(key) == 7 and key.lower() == b"upgrade":
            for token in value.split(b","):
                if token.strip().lower() == b"websocket":
                    return True
    return False


def check_upgrade(method: bytes, headers: Iterable[Header], *, compression: bool,
                  context: str = "keep") -> Upgrade:
    """Validate an upgrade request (reference 5.7.1); raises HandshakeError.
    ``context``: see :data:`CONTEXTS`."""
    if method != b"GET":
        raise HandshakeError(400, "WebSocket upgrade must be a GET")
    key = version = None
    offers: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            if value.strip() != b"0":
                raise HandshakeError(400, "WebSocket upgrade with a body")
        elif lower == b"transfer-encoding":
            raise HandshakeError(400, "WebSocket upgrade with a body")
        elif lower == b"sec-websocket-version":
            if version is not None:  # RFC 6455 11.3.5: once in a request
                raise HandshakeError(400, "more than one Sec-WebSocket-Version")
            version = value
        elif lower == b"sec-websocket-key":
            if key is not None:
                raise HandshakeError(400, "more than one Sec-WebSocket-Key")
            key = value
        elif lower == b"sec-websocket-extensions":
            offers.append(value)
    if version != b"13":
        raise HandshakeError(426, "unsupported Sec-WebSocket-Version")
    if key is None:
        raise HandshakeError(400, "missing Sec-WebSocket-Key")
    if not valid_key(key):
        raise HandshakeError(400, "Sec-WebSocket-Key is not the base64 of 16 bytes")
    parsed = []
    for value in offers:
        try:
            parsed += parse_extensions(value)
        except ValueError as e:
            raise HandshakeError(400, f"bad Sec-WebSocket-Extensions: {e}") from None
    return Upgrade(key, negotiate(parsed, context) if compression else None)


def valid_key(key: bytes) -> bool:
    """Whether ``key`` is the base64 of 16 bytes, padding included (RFC
    6455 4.1, 4.2.1; 24 characters). Condure took any key up to 220 bytes,
    an empty one too."""
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == KEY_BYTES
    except binascii.Error:
        return False


def accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


# -- Sec-WebSocket-Extensions (RFC 6455 9.1) ---------------------------------

_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_OWS = re.compile(rb"[ \t]*")

Offer = tuple[bytes, list[tuple[bytes, bytes | None]]]


def parse_extensions(value: bytes) -> list[Offer]:
    """``name; key; key=value, name2`` -> [(name, [(key, value|None)])];
    raises ValueError on a syntax error (an empty element included)."""
    offers: list[Offer] = []
    pos = 0
    n = len(value)

    def ows() -> None:
        nonlocal pos
        match = _OWS.match(value, pos)
        assert match is not None  # OWS matches the empty string
        pos = match.end()

    def token(what: str) -> bytes:
        nonlocal pos
        m = _TOKEN.match(value, pos)
        if m is None:
            raise ValueError(f"expected {what} at offset {pos}")
        pos = m.end()
        return m.group()

    while True:
        ows()
        name = token("an extension name")
        params: list[tuple[bytes, bytes | None]] = []
        ows()
        while pos < n and value[pos:pos + 1] == b";":
            pos += 1
            ows()
            key = token("a parameter name")
            ows()
            val = None
            if value[pos:pos + 1] == b"=":
                pos += 1
                ows()
                if value[pos:pos + 1] == b'"':
                    m = _QUOTED.match(value, pos)
                    if m is None:
                        raise ValueError("unterminated quoted string")
                    val = re.sub(rb"\\(.)", rb"\1", m.group(1))
                    pos = m.end()
                else:
                    val = token("a parameter value")
                ows()
            params.append((key, val))
        offers.append((name, params))
        if pos == n:
            return offers
        if value[pos:pos + 1] != b",":
            raise ValueError(f"unexpected byte at offset {pos}")
        pos += 1


def _bits(value: bytes | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 2:
        return None
    return int(value)


def _acceptable(params: list[tuple[bytes, bytes | None]]) -> Deflate | None:
    seen: set[bytes] = set()
    for key, val in params:
        if key in seen:
            return None
        seen.add(key)
        if key in (b"client_no_context_takeover", b"server_no_context_takeover"):
            if val is not None:
                return None
        elif key == b"client_max_window_bits":
            if val is not None and not 8 <= (_bits(val) or 0) <= 15:
                return None
        elif key == b"server_max_window_bits":
            if _bits(val) != 15:  # condure only deflates with a 15-bit window
                return None
        else:
            return None
    return Deflate(b"client_no_context_takeover" in seen, b"server_no_context_takeover" in seen,
                   15 if b"server_max_window_bits" in seen else None)


def negotiate(offers: list[Offer], context: str = "keep") -> Deflate | None:
    """The first acceptable permessage-deflate offer (reference 10.1), with
    the no-context-takeover parameters ``context`` adds (:data:`CONTEXTS`;
    RFC 7692 lets a server add both to any offer it accepts)."""
    for name, params in offers:
        if name.lower() == b"permessage-deflate":
            chosen = _acceptable(params)
            if chosen is not None:
                if context != "keep":
                    chosen = replace(chosen, client_no_context_takeover=True)
                if context == "none":
                    chosen = replace(chosen, server_no_context_takeover=True)
                return chosen
    return None


# -- response heads ------------------------------------------------------------

def _handler_headers(headers: Iterable[Header] | None) -> list[bytes]:
    parts: list[bytes] = []
    for key, value in headers or ():
        if key.lower() not in _OWN:
            parts += (key, b": ", value, b"\r\n")
    return parts


def accept_head(code: int, reason: bytes, headers: Iterable[Header] | None, key: bytes,
                deflate: Deflate | None) -> bytes:
    """The 101 head (reference 5.7.3)."""
    parts = [b"HTTP/1.1 %d " % code, reason, b"\r\n", *_handler_headers(headers),
             b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
             accept_value(key), b"\r\n"]
    if deflate is not None:
        parts += (b"Sec-WebSocket-Extensions: ", deflate.header, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def rejection(code: int, reason: bytes, headers: Iterable[Header] | None, body: bytes) -> bytes:
    """A complete response refusing the upgrade, after which condure closes
    (reference 5.7.7, plus ``Connection: close``, RFC 9112 9.6)."""
    return b"".join((b"HTTP/1.1 %d " % code, reason, b"\r\n", *_handler_headers(headers),
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body), body))


def refusal(status: int, detail: str) -> bytes:
    """condure's own answer to a bad upgrade (RFC 6455 4.2.1, 4.4)."""
    if status == 426:
        return rejection(426, b"Upgrade Required", [(b"Sec-WebSocket-Version", b"13"),
                         (b"Content-Type", b"text/plain")], detail.encode() + b"\n")
    return rejection(400, b"Bad Request", [(b"Content-Type", b"text/plain")],
                     detail.encode() + b"\n")
