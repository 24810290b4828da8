"""Pure helpers for the HTTP/1.x side: request URI, response heads, chunks.

These encode the rules of what condure writes to clients; the session
decides when. Nothing here keeps state.
"""

from __future__ import annotations

from collections.abc import Iterable

from condure.zhttp.packets import Header

MAX_URI = 4096  # longest URI condure builds for a request packet
MAX_CHUNK = 0xFFFF  # longest chunk written in a chunked response

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
    """The absolute URI of a request, as condure puts it in ``uri``.

    Origin-form targets are appended to ``scheme://Host``; ``localhost``
    stands in for a missing or non-UTF-8 Host. An absolute-form target
    (RFC 9112 3.2.2) already is the URI and is used as it is.
    """
    if not target.startswith(b"/") and target != b"*":
        colon = target.find(b":")
        if colon > 0 and target[:colon].isalpha() and target[colon:colon + 3] == b"://":
            return target
    host = b"localhost"
    for key, value in headers:
        if key.lower() == b"host":
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                host = value
            break
    return scheme + b"://" + host + target


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
    out = []
    for i in range(0, len(data), MAX_CHUNK):
        piece = data[i:i + MAX_CHUNK]
        out += (b"%x\r\n" % len(piece), piece, b"\r\n")
    if last:
        out.append(b"0\r\n\r\n")
    return b"".join(out)
