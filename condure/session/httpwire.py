"""Pure helpers for the HTTP/1.x side: request URI, response heads, chunks.

These encode the rules of what condure writes to clients; the session
decides when. Nothing here keeps state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from condure.zhttp.packets import Header

# RFC 9110 5.6.2: a token (field names, methods)
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_WHOLE_TOKEN = re.compile(_TOKEN + rb"\Z")

MAX_URI = 4096  # longest URI condure builds for a request packet
MAX_CHUNK = 0xFFFF  # longest chunk written in a chunked response
MAX_LENGTH_DIGITS = 19  # a handler's Content-Length: below 2**64

# Response headers condure frames itself; the handler's copies are dropped.
_FRAMING = frozenset((b"connection", b"content-length", b"transfer-encoding"))

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def header_tokens(headers: Iterable[Header], name: bytes) -> list[bytes]:
    """Comma-separated tokens of every header called ``name`` (lower-case
    name given), trimmed and lower-cased (RFC 9110 5.6.1)."""
    out = []
    for key, value in headers:
        if key.lower() == name:
            for token in value.split(b","):
                token = token.strip()
                if token:
                    out.append(token.lower())
    return out


def request_uri(scheme: bytes, headers: Iterable[Header], target: bytes) -> bytes:
    """The absolute URI of a request, as condure puts it in ``uri``, for a
    head :func:`target_refusal` accepts.

    An origin-form target is appended to ``scheme://Host`` (``localhost``
    for an HTTP/1.0 request without Host); the asterisk form of
    ``OPTIONS *`` gives ``scheme://Host`` with an empty path (RFC 9112 3.3);
    an absolute-form target (RFC 9112 3.2.2) already is the URI and is used
    as it is.
    """
    if absolute_form(target):
        return target
    host = None
    for key, value in headers:
        if key.lower() == b"host":
            host = value
            break
    return scheme + b"://" + uri_host(host) + (b"" if target == b"*" else target)


def uri_host(host: bytes | None) -> bytes:
    """The host part of a request URI for the request's Host value (None:
    none, which only HTTP/1.0 may omit): ``localhost`` stands in for it."""
    return b"localhost" if host is None else host


def absolute_form(target: bytes) -> bool:
    """Whether a request target is in absolute form (``scheme://...``)."""
    colon = target.find(b":")
    return colon > 0 and target[:colon].isalpha() and target[colon:colon + 3] == b"://"


# RFC 9110 7.2, RFC 3986 3.2.2-3.2.3: a Host value is uri-host [":" port]:
# letters, digits, the unreserved and sub-delims marks, "%" (pct-encoded),
# ":" and the brackets of an IP literal. Anything else ("@", "/", a space,
# non-ASCII bytes...) would change what the URI built from it says.
_HOST = re.compile(rb"[-0-9A-Za-z.~_!$&'()*+,;=%:\[\]]+\Z")


def valid_host(value: bytes) -> bool:
    """Whether a Host field value is a host (and port): not empty, and
    nothing a URI would read as something else."""
    return _HOST.match(value) is not None


def target_refusal(method: bytes, target: bytes,
                   headers: Iterable[Header]) -> tuple[int, str] | None:
    """(status, detail) for a request condure must refuse although its head
    parsed (RFC 9112 3.2), else None: a Host value that is not a host
    (MUST 400), a request target in none of the forms a request may use
    (origin form ``/...``, absolute form, ``*`` for OPTIONS), and CONNECT,
    which asks for a tunnel condure does not make (RFC 9110 9.1: 501)."""
    if method == b"CONNECT":
        return 501, "CONNECT is not supported"
    if target[:1] != b"/" and not (target == b"*" and method == b"OPTIONS") \
            and not absolute_form(target):
        return 400, "invalid request target"
    for key, value in headers:
        if key.lower() == b"host":
            if not valid_host(value):
                return 400, "invalid Host"
            break
    return None


def keep_alive(http11: bool, connection: list[bytes]) -> bool:
    """Whether a client asked to keep the connection (RFC 9112 9.3), from
    its ``Connection`` tokens (lower case)."""
    if http11:
        return b"close" not in connection
    return b"keep-alive" in connection and b"close" not in connection


# RFC 9110 5.1, 5.5: a field name is a token; CR, LF and NUL in a value (or
# in a reason phrase, RFC 9112 4) would end the line early and let the
# rest be read as fields or a message of its own.
_LINE_BREAKER = re.compile(rb"[\x00\r\n]")


def length_value(value: bytes) -> int | None:
    """A Content-Length value as a number (RFC 9110 8.6: ``1*DIGIT``), or
    None when it is not one, or has more digits than a 64-bit length can
    (Python would take any number of them, up to refusing to convert)."""
    if not value.isdigit() or len(value) > MAX_LENGTH_DIGITS:
        return None
    return int(value)


def is_token(value: bytes) -> bool:
    """Whether ``value`` is a token (RFC 9110 5.6.2): a field name, a method."""
    return _WHOLE_TOKEN.match(value) is not None


def field_fault(name: bytes, value: bytes) -> str | None:
    """Why a header field cannot be written in a message head, or None."""
    if _WHOLE_TOKEN.match(name) is None:
        return f"an invalid header name {name[:40]!r}"
    if _LINE_BREAKER.search(value) is not None:
        return f"a {name[:40].decode('latin-1')} value with CR, LF or NUL"
    return None


def response_fault(code: int, reason: bytes, headers: Iterable[Header],
                   upgrade: bool = False) -> str | None:
    """Why a handler's response head cannot go to a client, or None. A
    gateway must refuse a field value with CR, LF or NUL (RFC 9110 5.5);
    the status must be a final one of three digits (RFC 9110 15), or 101
    for an ``upgrade`` condure carries out itself."""
    if not 200 <= code <= 599 and not (upgrade and code == 101):
        return f"handler sent status {code}"
    if _LINE_BREAKER.search(reason) is not None:
        return "handler sent a reason phrase with CR, LF or NUL"
    for name, value in headers:
        fault = field_fault(name, value)
        if fault is not None:
            return "handler sent " + fault
    return None


def error_response(status: int, detail: str = "") -> bytes:
    """A complete ``Connection: close`` response for a request condure
    refuses itself (the handler never sees it)."""
    reason = _REASONS.get(status, b"Error")
    body = reason + b"\n" if not detail else detail.encode("utf-8", "replace") + b"\n"
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"Content-Type: text/plain\r\nConnection: close\r\n",
            b"Content-Length: %d\r\n\r\n" % len(body),
            body,
        )
    )


def response_head(
    *,
    http11: bool,
    code: int,
    reason: bytes,
    headers: Iterable[Header],
    connection: bytes | None,
    content_length: int | bytes | None,
    chunked: bool,
) -> bytes:
    """The response head condure writes: the status line, the handler's
    headers minus framing ones, then condure's own framing headers in
    Condure's order."""
    parts = [b"HTTP/1.1 " if http11 else b"HTTP/1.0 ", b"%d " % code, reason, b"\r\n"]
    for key, value in headers:
        if key.lower() in _FRAMING:
            continue
        parts += (key, b": ", value, b"\r\n")
    if connection is not None:
        parts += (b"Connection: ", connection, b"\r\n")
    if chunked:
        parts.append(b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n")
        return b"".join(parts)
    if content_length is not None:
        if isinstance(content_length, int):
            content_length = b"%d" % content_length
        parts += (b"Content-Length: ", content_length, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def chunks(data: bytes, last: bool) -> bytes:
    """``data`` in chunked framing (chunks of at most 0xffff bytes), plus
    the terminating zero chunk when ``last``."""
    out: list[bytes] = []
    for i in range(0, len(data), MAX_CHUNK):
        piece = data[i:i + MAX_CHUNK]
        out += (b"%x\r\n" % len(piece), piece, b"\r\n")
    if last:
        out.append(b"0\r\n\r\n")
    return b"".join(out)


_LINE_END = re.compile(rb"\r?\n")


def raw_headers(head: bytes) -> tuple[Header, ...] | None:
    """The header fields of a request head h11 has accepted, as the client
    sent them (names and values verbatim, repeats kept, OWS trimmed), or
    None when the head uses obsolete line folding, which condure refuses
    (RFC 9112 5.2 allows either refusing or unfolding)."""
    lines = _LINE_END.split(head)
    headers: list[Header] = []
    for line in lines[1:]:
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            return None
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    return tuple(headers)


# -- fast path for simple request heads ---------------------------------------
#
# Most requests are a request line and a few plain headers with no body.
# Parsing those with h11 costs more than everything else condure does for a
# request, so heads that match this strict subset of h11's own grammar
# (RFC 9112) are taken here; anything else (a body, an odd line, a missing
# or repeated Host, a Host that is not a host name, a target not in origin
# form, CONNECT, bare LF endings) goes to h11 and target_refusal, which then
# decide, errors included.

_REQUEST_LINE = rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])"
_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_SIMPLE_REQUEST_LINE = re.compile(_REQUEST_LINE + rb"\Z")
_SIMPLE_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")[ \t]*\Z")
_BODY_FRAMING = (b"content-length", b"transfer-encoding")
# The same grammar over a whole head (CRLF CRLF included), for a read that
# brought exactly one simple head: one match for all of it, then its fields.
SIMPLE_WHOLE_HEAD = re.compile(
    _REQUEST_LINE + rb"\r\n((?:" + _TOKEN + rb":[ \t]*" + _VALUE + rb"[ \t]*\r\n)*)\r\n")
SIMPLE_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")[ \t]*\r\n")


def parse_simple_head(head: bytes) -> tuple[bytes, bytes, bool, list[Header]] | None:
    """(method, target, is HTTP/1.1, headers) of a request head without its
    final CRLF CRLF, or None when h11 must look at it."""
    lines = head.split(b"\r\n")
    match = _SIMPLE_REQUEST_LINE.match(lines[0])
    if match is None:
        return None
    headers = []
    hosts = 0
    for line in lines[1:]:
        field = _SIMPLE_HEADER.match(line)
        if field is None:
            return None
        name = field.group(1)
        lower = name.lower()
        if lower == b"host":
            hosts += 1
            if not valid_host(field.group(2)):
                return None
        elif lower in _BODY_FRAMING:
            return None
        headers.append((name, field.group(2)))
    http11 = match.group(3) == b"1"
    method, target = match.group(1), match.group(2)
    if hosts > 1 or (http11 and hosts == 0) or target[:1] != b"/" or method == b"CONNECT":
        return None
    return method, target, http11, headers
