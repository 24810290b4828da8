"""Pure rules of the client role (reference 6): what condure reads from a
handler's request, the request head it writes to the origin, the deny list
and redirects.

Nothing here keeps state or does I/O; the client sessions
(:mod:`condure.session.client_http`, :mod:`condure.session.client_req`)
decide when, and the outbound connector applies :func:`allowed_addresses`
to what it resolved.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from urllib.parse import urljoin, urlsplit

from condure.session.httpwire import field_fault, is_token
from condure.session.peer import MAX_FROM
from condure.zhttp.packets import Data, Header

MAX_HEADERS = 64  # request headers written, condure's own included (reference 6.1)
MAX_ADDRESSES = 16  # addresses of one name tried (reference 6.2 step 4)
MAX_REDIRECTS = 8  # redirects followed (reference 6.5)
MAX_ID = 64  # longest session id accepted (reference 6.1)

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_STREAM_SCHEMES = frozenset(_DEFAULT_PORTS)
_REQ_SCHEMES = frozenset(("http", "https"))


class Condition(enum.Enum):
    """The conditions condure puts in ``error`` packets (reference 6.6)."""

    REMOTE_CONNECTION_FAILED = "remote-connection-failed"
    CONNECTION_TIMEOUT = "connection-timeout"
    BAD_REQUEST = "bad-request"
    TLS_ERROR = "tls-error"
    POLICY_VIOLATION = "policy-violation"
    TOO_MANY_REDIRECTS = "too-many-redirects"
    UNDEFINED = "undefined-condition"
    REJECTED = "rejected"

    @property
    def wire(self) -> bytes:
        """The value of the ``condition`` field."""
        return self.value.encode()


class OutboundError(Exception):
    """The exchange fails with ``condition``; ``detail`` is for the log."""

    def __init__(self, condition: Condition, detail: str, *,
                 handler_fault: bool = False) -> None:
        super().__init__(detail)
        self.condition = condition
        self.detail = detail
        self.handler_fault = handler_fault  # the handler broke a rule of HTTP


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes and how (reference 6.1)."""

    url: str  # the absolute URL, for log lines and resolving redirects
    scheme: str  # http, https, ws or wss (lower case)
    host: str  # the URL host (no brackets for IPv6)
    port: int  # the URL port (explicit or the scheme's default)
    authority: bytes  # the Host header value
    path: bytes  # path and query, the request target
    connect_host: str  # what to resolve and connect to
    connect_port: int
    server_name: str  # the TLS name to send (SNI) and verify
    verify: bool = True  # verify the origin's certificate
    ignore_policies: bool = False  # skip the deny list
    follow_redirects: bool = False

    @property
    def tls(self) -> bool:
        return self.scheme in ("https", "wss")

    @property
    def websocket(self) -> bool:
        return self.scheme in ("ws", "wss")

    @property
    def pool_key(self) -> tuple[bool, str]:
        """With a resolved address, what a pooled connection must match
        to be reused (reference 6.2 step 4): TLS or not, the URL host."""
        return self.tls, self.host


def first_packet_problem(packet: object, *, req_mode: bool) -> str | None:
    """Why a first packet is dropped without an answer (reference 6.2
    step 1, 6.7), or None when it opens a session."""
    if not isinstance(packet, Data):
        return "first packet is not a data packet"
    if len(packet.from_) > MAX_FROM:
        return "handler address too long"
    ids = packet.ids
    if req_mode:
        if len(ids) > 1 or packet.id_list:
            return "more than one id"
    else:
        if not packet.from_:
            return "no handler address"
        if len(ids) != 1 or packet.id_list:
            return "not exactly one id"
        if ids[0].seq != 0:
            return "first packet without seq 0"
    if ids and len(ids[0].id) > MAX_ID:
        return "id too long"
    return None


def _bad(detail: str) -> OutboundError:
    return OutboundError(Condition.BAD_REQUEST, detail)


# WHATWG URL Standard, percent-encode sets (C0 controls and above 0x7E
# are encoded too): the path's, and the query's for special schemes.
_PATH_ENCODED = frozenset(' "#<>?`{}')
_QUERY_ENCODED = frozenset(' "#<>\'')
_CONTROLS = frozenset(map(chr, [*range(0x20), 0x7F]))


def _percent_encode(text: str, encoded: frozenset[str]) -> str:
    """``text`` with each character of ``encoded`` or beyond ASCII written
    as the %XX of its UTF-8 bytes (an existing ``%`` is left alone)."""
    if text.isascii() and not any(c in encoded for c in text):
        return text
    out = []
    for c in text:
        if c in encoded or not c.isascii():
            out.append("".join(f"%{b:02X}" for b in c.encode()))
        else:
            out.append(c)
    return "".join(out)


def _ascii_host(host: str) -> str:
    """The host as sent (DNS, SNI, ``Host``): a name beyond ASCII IDNA-encoded
    (``bücher.example`` -> ``xn--bcher-kva.example``), as the URL parser
    Condure uses does; bad-request when the codec refuses it."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise _bad(f"host not encodable as IDNA: {e}") from None


def parse_url(url: str, *, req_mode: bool) -> tuple[str, str, int, bytes, bytes]:
    """(scheme, host, port, Host value, path+query) of an absolute URL, or
    OutboundError bad-request. A host beyond ASCII is IDNA-encoded, the
    path and query percent-encoded (as WHATWG URL parsing does); a control
    character anywhere (CR, LF, tab, NUL...) is refused."""
    if any(c in _CONTROLS for c in url):
        raise _bad("control character in URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise _bad(f"bad URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in (_REQ_SCHEMES if req_mode else _STREAM_SCHEMES):
        raise _bad(f"unsupported scheme {scheme!r}")
    host = parts.hostname or ""
    if not host:
        raise _bad("URL without a host")
    if ":" not in host:
        host = _ascii_host(host)
    if any(c in host for c in " \t\r\n/\\@") or not host.isascii():
        raise _bad("bad host in URL")
    default = _DEFAULT_PORTS[scheme]
    name = f"[{host}]" if ":" in host else host
    # Host carries the port only when it is not the scheme's default (as
    # the URL parser Condure uses normalises it away).
    authority = name if port is None or port == default else f"{name}:{port}"
    path = _percent_encode(parts.path or "/", _PATH_ENCODED)
    if parts.query:
        path += "?" + _percent_encode(parts.query, _QUERY_ENCODED)
    return scheme, host, default if port is None else port, authority.encode(), path.encode()


def parse_target(packet: Data, *, req_mode: bool) -> Target:
    """The target of a handler's first packet; OutboundError bad-request for a
    bad URL, scheme, host or method (reference 6.1, 6.2 step 3)."""
    if not packet.uri:
        raise _bad("no uri")
    url = packet.uri.decode()  # the decoder checked it is UTF-8
    scheme, host, port, authority, path = parse_url(url, req_mode=req_mode)
    if scheme in _REQ_SCHEMES and not is_token(packet.method or b""):
        raise _bad("missing or bad method")
    if packet.connect_host:
        connect_host = packet.connect_host.decode()
        connect_port = packet.connect_port or 0  # used as is (reference 6.1)
    else:
        connect_host, connect_port = host, packet.connect_port or port
    server_name = connect_host if packet.trust_connect_host and packet.connect_host else host
    return Target(url=url, scheme=scheme, host=host, port=port, authority=authority,
                  path=path, connect_host=connect_host, connect_port=connect_port,
                  server_name=server_name, verify=not packet.ignore_tls_errors,
                  ignore_policies=packet.ignore_policies,
                  follow_redirects=packet.follow_redirects)


# -- the request head ----------------------------------------------------------

_ALWAYS_DROPPED = frozenset((b"host", b"content-length", b"transfer-encoding"))
_HTTP_DROPPED = _ALWAYS_DROPPED | {b"connection"}
_WS_DROPPED = _ALWAYS_DROPPED | {b"connection", b"upgrade", b"sec-websocket-version",
                                 b"sec-websocket-key"}
_NO_ZERO_LENGTH = frozenset((b"GET", b"HEAD", b"OPTIONS"))


_MAX_LENGTH = 2**64 - 1  # (Condure parses the value as a 64-bit usize)


@dataclass(frozen=True, slots=True)
class Framing:
    """How the request body is framed: a length, chunked, or nothing."""

    length: bytes | None = None  # the Content-Length value written
    chunked: bool = False
    # The handler's own Content-Length, which the body must match, or -1.
    declared: int = -1


def _handler_length(headers: Iterable[Header]) -> int:
    """The handler's ``Content-Length`` (-1: none). RFC 9110 8.6: only
    1*DIGIT is passed on, written as a plain decimal; anything else (a
    sign, a list such as ``5, 5``, two different values, more than a 64-bit
    number) is a handler fault, ``undefined-condition`` as Condure's
    failed parse."""
    length = -1
    for key, value in headers:
        if key.lower() != b"content-length":
            continue
        value = value.strip(b" \t")
        digits = value.lstrip(b"0") or b"0"  # (int() refuses over 4300 digits)
        if not value.isdigit() or len(digits) > 20 or int(digits) > _MAX_LENGTH:
            raise OutboundError(Condition.UNDEFINED, "handler sent an invalid Content-Length",
                                handler_fault=True)
        if length >= 0 and int(digits) != length:
            raise OutboundError(Condition.UNDEFINED, "handler sent two Content-Length values",
                                handler_fault=True)
        length = int(digits)
    return length


def framing(method: bytes, headers: Iterable[Header], body: bytes, more: bool,
            *, req_mode: bool = False) -> Framing:
    """Reference 6.3: a handler ``Content-Length`` wins (stream mode); else
    without ``more`` the body's length; else chunked. A zero length is
    left out for GET, HEAD and OPTIONS. Req mode always writes the body's
    length. A handler length is checked (:func:`_handler_length`) and the
    body must not overrun it, nor, without ``more``, fall short of it (RFC
    9112 6.3: the excess would reach the origin as a request of its own;
    a short body leaves the origin waiting): ``undefined-condition``."""
    declared = -1 if req_mode else _handler_length(headers)
    if declared >= 0:
        if len(body) > declared:
            raise OutboundError(Condition.UNDEFINED,
                                "handler sent more body than its Content-Length",
                                handler_fault=True)
        if len(body) < declared and not more:
            raise OutboundError(Condition.UNDEFINED,
                                "handler ended its body short of its Content-Length",
                                handler_fault=True)
        length = declared
    elif more and not req_mode:
        return Framing(chunked=True)
    else:
        length = len(body)
    if length == 0 and method in _NO_ZERO_LENGTH:
        return Framing(declared=declared)
    return Framing(length=b"%d" % length, declared=declared)


def request_head(target: Target, method: bytes, headers: Iterable[Header], frame: Framing,
                 *, ws_key: bytes | None = None, ws_deflate: bool = False) -> bytes:
    """The request head written to the origin (reference 6.3); OutboundError
    bad-request when it would have more than 64 headers."""
    lines: list[Header] = [(b"Host", target.authority)]
    if ws_key is not None:
        lines += [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
                  (b"Sec-WebSocket-Version", b"13"), (b"Sec-WebSocket-Key", ws_key)]
        if ws_deflate:
            lines.append((b"Sec-WebSocket-Extensions", b"permessage-deflate"))
        dropped = _WS_DROPPED
    else:
        dropped = _HTTP_DROPPED
    for key, value in headers:
        if key.lower() not in dropped:
            lines.append((key, value))
    if frame.length is not None:
        lines.append((b"Content-Length", frame.length))
    elif frame.chunked:
        lines += [(b"Connection", b"Transfer-Encoding"), (b"Transfer-Encoding", b"chunked")]
    if len(lines) > MAX_HEADERS:
        raise _bad(f"more than {MAX_HEADERS} request headers")
    for key, value in lines:
        if field_fault(key, value) is not None:
            raise _bad("bad request header")
    parts = [method, b" ", target.path, b" HTTP/1.1\r\n"]
    for key, value in lines:
        parts += (key, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


# -- the deny list ---------------------------------------------------------------

_DENIED_NETS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/32",  # unspecified
    "127.0.0.0/8",  # loopback
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # private
    "169.254.0.0/16",  # link-local
    "::/128",  # unspecified
    "::1/128",  # loopback
    "fe80::/10",  # link-local
    "fc00::/7",  # unique-local
))


def denied(address: str) -> bool:
    """Whether ``--deny-out-internal`` refuses this resolved address
    (an IPv4-mapped IPv6 address counts as its IPv4 address). Something
    that is not an IP address is denied."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in _DENIED_NETS)


def allowed_addresses(addresses: Iterable[str], *, deny_internal: bool,
                      ignore_policies: bool) -> list[str]:
    """The resolved addresses to try, in order (at most 16); OutboundError
    policy-violation when the deny list removed every one."""
    found = list(addresses)[:MAX_ADDRESSES]
    if not deny_internal or ignore_policies:
        return found
    kept = [a for a in found if not denied(a)]
    if found and not kept:
        raise OutboundError(Condition.POLICY_VIOLATION, "every address is denied")
    return kept


# -- redirects -------------------------------------------------------------------

_SWITCH_TO_GET = frozenset((301, 302, 303))


def is_redirect(code: int) -> bool:
    return 300 <= code <= 399


def redirect(target: Target, location: bytes, *, req_mode: bool = False) -> Target | None:
    """The target a ``Location`` leads to (relative to the current URL), or
    None when it is not one to follow (reference 6.5): another scheme
    family, no host, not a URL. ``connect-host`` applies to the first
    target's authority only and is dropped when the redirect leaves it."""
    try:
        text = location.decode().strip()
        url = text if urlsplit(text).scheme else urljoin(target.url, text)
        scheme, host, port, authority, path = parse_url(url, req_mode=req_mode)
    except (UnicodeDecodeError, ValueError, OutboundError):
        return None
    if (scheme in ("ws", "wss")) != target.websocket:
        return None
    same = (scheme, host, port) == (target.scheme, target.host, target.port)
    connect_host = target.connect_host if same else host
    connect_port = target.connect_port if same else port
    server_name = target.server_name if same else host
    return replace(target, url=url, scheme=scheme, host=host, port=port, authority=authority,
                   path=path, connect_host=connect_host, connect_port=connect_port,
                   server_name=server_name)


# Request headers that carry credentials: not sent to another origin.
_CREDENTIALS = frozenset((b"authorization", b"proxy-authorization", b"cookie"))


def same_origin(a: Target, b: Target) -> bool:
    """Same scheme, host and port (RFC 6454)."""
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def without_credentials(headers: Iterable[Header]) -> tuple[Header, ...]:
    """``headers`` less ``Authorization``, ``Proxy-Authorization`` and
    ``Cookie``, for a redirect to another origin (as browsers and curl do;
    Condure 1.10 sent them on)."""
    return tuple(h for h in headers if h[0].lower() not in _CREDENTIALS)


def redirect_method(code: int, method: bytes) -> tuple[bytes, bool]:
    """(method, keep the body) for the next hop: 301, 302 and 303 after a
    POST switch to GET without a body (reference 6.5)."""
    if method == b"POST" and code in _SWITCH_TO_GET:
        return b"GET", False
    return method, True
