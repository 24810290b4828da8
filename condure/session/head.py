"""Reading request heads from client bytes: shared by the stream-mode and
req-mode HTTP sessions.

Input waits in ``inbuf`` until a request needs h11. A simple head (the
common case: a request line and plain headers, no body) is taken by the
fast path (:func:`condure.session.httpwire.parse_simple_head`) without
h11. Anything else goes to h11, which from then on owns the input of this
request, body included (:meth:`HeadReader.next_event`); the raw head is
kept, because h11 normalises some values (Transfer-Encoding, repeated
Content-Length) that condure forwards verbatim.

A chunked body is not h11's: from the end of its head the reader decodes
it with :mod:`condure.session.chunked` (the rules the client role reads
origins' responses by), and hands out h11's events for it.

The reader counts what it gave h11 (``fed``) and where h11's head ended,
so the size of the head and the bytes still unparsed while a head is read
come without looking into h11's private buffer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import h11

from condure.session import httpwire
from condure.session.chunked import MAX_LINE, ChunkedReader, ChunkError
from condure.zhttp.packets import Header

MAX_HEADERS = 64  # most request headers accepted (reference 7)
# The blank line that ends a head, by h11's own rule (it accepts bare LF).
_HEAD_END = re.compile(rb"\n\r?\n")


class Head(NamedTuple):
    """A request head as condure forwards it."""

    method: bytes
    target: bytes
    http11: bool
    headers: tuple[Header, ...]

    def keep_alive(self) -> bool:
        """Whether the client asked to keep the connection (RFC 9112 9.3),
        and may: a Transfer-Encoding with a Content-Length, or in an
        HTTP/1.0 request, is a framing the connection closes after
        (RFC 9112 6.1), whatever the client asked."""
        headers = self.headers
        names = [name.lower() for name, _ in headers]
        if b"transfer-encoding" in names and (not self.http11 or b"content-length" in names):
            return False
        return httpwire.keep_alive(self.http11, httpwire.header_tokens(headers, b"connection"))


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request condure answers itself with ``status``."""

    status: int
    detail: str = ""


class HeadReader:
    """The input of one request cycle (see the module docstring)."""

    __slots__ = ("body_buf", "buffer_size", "chunks", "ended", "fed", "inbuf", "parser",
                 "raw_head")

    def __init__(self, buffer_size: int, leftover: bytes) -> None:
        self.buffer_size = buffer_size
        self.inbuf = bytearray(leftover.lstrip(b"\r\n"))
        self.parser: h11.Connection | None = None
        self.raw_head = b""
        self.fed = 0  # bytes given to h11
        self.chunks: ChunkedReader | None = None  # a chunked body's decoder
        self.body_buf = bytearray()  # its input, not parsed yet
        self.ended = False  # its end was handed out

    def feed(self, data: bytes, head: bool) -> None:
        """Client bytes (not empty); ``head``: a head is being read."""
        parser = self.parser
        if self.chunks is not None:
            self.body_buf += data
        elif parser is None:
            inbuf = self.inbuf
            if not inbuf and head:
                # RFC 9112 2.2: ignore empty lines before a request line.
                data = data.lstrip(b"\r\n")
            inbuf += data
        else:
            self.fed += len(data)
            parser.receive_data(data)
            if head:
                self.raw_head += data

    def buffered(self, head: bool) -> int:
        """Client bytes read but not parsed yet. ``head``: no head has
        been read from them yet (h11 has consumed nothing of its input)."""
        parser = self.parser
        if self.chunks is not None:
            return len(self.body_buf)
        if parser is None:
            return len(self.inbuf)
        if head:
            return self.fed
        return len(parser.trailing_data[0])

    def leftover(self) -> bytes:
        """The unparsed bytes, for the next cycle or a record."""
        if self.chunks is not None:
            return bytes(self.body_buf)
        if self.parser is None:
            return bytes(self.inbuf)
        return bytes(self.parser.trailing_data[0])

    def read_head(self) -> Head | Refusal | None:
        """The request head, a refusal, or None while it is incomplete."""
        if self.parser is None:
            inbuf = self.inbuf
            end = inbuf.find(b"\r\n\r\n")
            if end < 0:
                if len(inbuf) <= self.buffer_size and b"\n\n" not in inbuf \
                        and b"\n\r\n" not in inbuf:
                    return None  # not complete yet
            elif end + 4 <= self.buffer_size:
                simple = httpwire.parse_simple_head(bytes(inbuf[:end]))
                if simple is not None:
                    del inbuf[:end + 4]
                    method, target, http11, fields = simple
                    if len(fields) > MAX_HEADERS:
                        return Refusal(431, "too many request headers")
                    return Head(method, target, http11, tuple(fields))
            self.raw_head = bytes(inbuf)
            self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.buffer_size)
            self.fed = len(inbuf)
            self.parser.receive_data(self.raw_head)
            inbuf.clear()
        try:
            event = self.parser.next_event()
        except h11.RemoteProtocolError as e:
            return Refusal(e.error_status_hint or 400, str(e))
        if event is h11.NEED_DATA:
            return None
        if type(event) is not h11.Request:
            return Refusal(400)
        if event.http_version not in (b"1.1", b"1.0"):
            return Refusal(505)
        match = _HEAD_END.search(self.raw_head)
        size = match.end() if match is not None else self.fed
        if size > self.buffer_size:
            return Refusal(431, "request head larger than the buffer")
        headers = httpwire.raw_headers(self.raw_head[:size])
        if headers is None:
            return Refusal(400, "obsolete line folding")
        if len(headers) > MAX_HEADERS:
            return Refusal(431, "too many request headers")
        refused = httpwire.target_refusal(event.method, event.target, headers)
        if refused is not None:
            return Refusal(*refused)
        chunked = False
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length" and any(
                    len(part.strip(b" \t")) > httpwire.MAX_LENGTH_DIGITS
                    for part in value.split(b",")):
                # (h11 reads up to 20 digits: past 2**64 at 20)
                return Refusal(400, "Content-Length of more than "
                                    f"{httpwire.MAX_LENGTH_DIGITS} digits")
            chunked = chunked or lower == b"transfer-encoding"
        if chunked:  # (h11 took no other coding than chunked: 501 above)
            self.chunks = ChunkedReader(min(MAX_LINE, self.buffer_size - 2))
            self.body_buf = bytearray(self.parser.trailing_data[0])
        return Head(event.method, event.target, event.http_version == b"1.1", headers)

    def next_event(self) -> object:
        """The next h11 event of the request body: h11's own, or one made
        for a chunked body (its ChunkError as h11's RemoteProtocolError)."""
        chunks = self.chunks
        if chunks is None:
            assert self.parser is not None
            return self.parser.next_event()
        buf = self.body_buf
        try:
            data = chunks.read(buf, len(buf) or 1)
        except ChunkError as e:
            raise h11.RemoteProtocolError(str(e), error_status_hint=400) from None
        if data:
            return h11.Data(data=data)
        if not chunks.done:
            return h11.NEED_DATA
        if self.ended:
            return h11.PAUSED
        self.ended = True
        return h11.EndOfMessage()
