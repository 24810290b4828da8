"""Reading an origin's response (reference 6.8): a small strict parser.

h11's client role reads bodies delimited by the connection's close and
special-cases HEAD; Condure does neither, so the response side of the
client role has its own reader:

- at most 64 header fields; a head larger than the buffer is an error;
- the body is framed by ``Transfer-Encoding: chunked`` (in any case;
  Condure 1.10 took only that exact value) or ``Content-Length``; with
  neither (and a status that has a body) it runs to the connection's close
  (RFC 9112 6.3), and the connection is not reused; any other ``Transfer-Encoding`` is an error.
  Condure 1.10 read no body at all there;
- a chunked body is read by :mod:`condure.session.chunked`, by the rules
  request bodies follow (at most 16 hex digits in a chunk size, CRLF
  line ends, checked extensions and trailers);
- the answer to a HEAD request has no body whatever its headers say
  (RFC 9110 9.3.2); Condure 1.10 read a Content-Length's worth after it,
  and its handler never saw the response end;
- HTTP/1.0 is persistent only with ``Connection: keep-alive``, 1.1 unless
  ``Connection: close``;
- interim 1xx responses (other than 101) are skipped; after a 101 the
  connection speaks another protocol and is never reused.

Every malformed input raises :class:`WireError` and nothing else.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from condure.session.chunked import MAX_LINE, ChunkedReader, ChunkError
from condure.session.httpwire import header_tokens
from condure.zhttp.packets import Header

MAX_HEADERS = 64
MAX_CHUNK_LINE = MAX_LINE  # longest chunk-size line (with extensions) or trailer line
_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?\Z")
_FIELD = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*(.*?)[ \t]*\Z", re.S)
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class WireError(Exception):
    """The origin's response is not valid HTTP/1.x (condition
    ``undefined-condition``)."""


class BodyKind(enum.Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # no framing: the body ends when the origin closes


@dataclass(frozen=True, slots=True)
class ResponseHead:
    http11: bool
    code: int
    reason: bytes
    headers: tuple[Header, ...]
    body: BodyKind
    length: int  # for BodyKind.LENGTH
    keep_alive: bool  # the origin allows another request on the connection

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def parse_head(head: bytes, head_request: bool = False) -> ResponseHead:
    """A response head without its final empty line (``head_request``: it
    answers a HEAD request, so it has no body)."""
    lines = head.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    status = _STATUS.match(lines[0])
    if status is None:
        raise WireError("bad status line")
    http11 = status.group(1) == b"1"
    code = int(status.group(2))
    headers: list[Header] = []
    for line in lines[1:]:
        field = _FIELD.match(line)
        if field is None:
            raise WireError("bad header line")
        value = field.group(2)
        if _BAD_VALUE.search(value):
            raise WireError("bad header value")
        headers.append((field.group(1), value))
        if len(headers) > MAX_HEADERS:
            raise WireError(f"more than {MAX_HEADERS} response headers")
    body, length, closes = BodyKind.NONE, 0, False
    lengths = set()
    for key, value in headers:
        name = key.lower()
        if name == b"transfer-encoding":
            # (transfer-coding names are case-insensitive, RFC 9112 7)
            if value.lower() != b"chunked" or body is BodyKind.CHUNKED:
                raise WireError("unsupported transfer-encoding")
            body = BodyKind.CHUNKED
        elif name == b"content-length":
            for item in value.split(b","):
                item = item.strip(b" \t")
                if not item.isdigit() or len(item) > 18:
                    raise WireError("bad content-length")
                lengths.add(int(item))
    if len(lengths) > 1:
        raise WireError("conflicting content-length")
    if head_request or code in (204, 304) or 100 <= code <= 199:
        body = BodyKind.NONE  # no body, whatever the framing headers say
    elif body is BodyKind.CHUNKED:
        closes = bool(lengths)  # both: read as chunked, then do not reuse
    elif lengths:
        body, length = BodyKind.LENGTH, lengths.pop()
    else:
        body, closes = BodyKind.CLOSE, True  # to the connection's close
    tokens = header_tokens(headers, b"connection")
    keep_alive = (b"close" not in tokens if http11 else b"keep-alive" in tokens) and not closes
    if code == 101:
        keep_alive = False  # the connection now speaks another protocol (RFC 9110 15.2.2)
    return ResponseHead(http11=http11, code=code, reason=status.group(3) or b"",
                        headers=tuple(headers), body=body, length=length,
                        keep_alive=keep_alive)


class ResponseReader:
    """The bytes of one response, fed as they come: :meth:`head` once, then
    :meth:`body` until :attr:`done`."""

    def __init__(self, max_head: int, head_request: bool = False) -> None:
        self.max_head = max_head
        self.head_request = head_request
        self.buf = bytearray()
        self.eof = False
        self.response: ResponseHead | None = None
        self.done = False
        self._left = 0  # body bytes left of the length
        self._chunks = ChunkedReader(MAX_CHUNK_LINE)

    def feed(self, data: bytes) -> None:
        if data:
            self.buf += data
        else:
            self.eof = True

    @property
    def buffered(self) -> int:
        return len(self.buf)

    @property
    def leftover(self) -> bool:
        """Bytes beyond the end of the response (not a reusable connection)."""
        return self.done and bool(self.buf)

    def head(self) -> ResponseHead | None:
        """The final response head once complete (interim ones skipped)."""
        while self.response is None:
            end = self.buf.find(b"\n\r\n")
            end2 = self.buf.find(b"\n\n")
            cands = [(e, 3) for e in (end,) if e >= 0] + [(e, 2) for e in (end2,) if e >= 0]
            if not cands:
                if len(self.buf) > self.max_head:
                    raise WireError("response head too large")
                if self.eof:
                    raise WireError("connection closed before the response head")
                return None
            at, skip = min(cands)
            if at + skip > self.max_head:
                raise WireError("response head too large")
            head = parse_head(bytes(self.buf[:at + 1]).rstrip(b"\r\n"), self.head_request)
            del self.buf[:at + skip]
            if 100 <= head.code <= 199 and head.code != 101:
                continue
            self.response = head
            if head.body is BodyKind.NONE:
                self.done = True
            elif head.body is BodyKind.LENGTH:
                self._left = head.length
                self.done = head.length == 0
        return self.response

    def body(self, limit: int) -> bytes:
        """Up to ``limit`` body bytes read so far (b"" when none); sets
        :attr:`done` at the end; WireError when the origin closed early or
        broke the chunked framing."""
        assert self.response is not None
        if self.done or limit <= 0:
            return b""
        if self.response.body is BodyKind.LENGTH:
            out = self._take(min(limit, self._left))
            self._left -= len(out)
            if not self._left:
                self.done = True
            elif not out and self.eof:
                raise WireError("connection closed inside the body")
            return out
        if self.response.body is BodyKind.CLOSE:
            out = self._take(limit)
            if not self.buf and self.eof:
                self.done = True  # the origin's close ends the body
            return out
        return self._chunked(limit)

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _chunked(self, limit: int) -> bytes:
        out: list[bytes] = []
        got = 0
        chunks = self._chunks
        try:
            while got < limit:
                piece = chunks.read(self.buf, limit - got)
                if not piece:
                    break
                out.append(piece)
                got += len(piece)
        except ChunkError as e:
            raise WireError(str(e)) from None
        if chunks.done:
            self.done = True
        elif not out and self.eof:
            raise WireError("connection closed inside the body")
        return b"".join(out)
