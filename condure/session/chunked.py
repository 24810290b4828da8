"""Reading the chunked transfer coding (RFC 9112 7.1): one decoder for
both roles, request bodies from clients (condure/session/head.py) and
responses from origins (condure/session/client_wire.py), so both refuse
the same inputs:

- a chunk size has 1 to :data:`MAX_SIZE_DIGITS` hex digits, leading zeros
  counted: its value always fits 64 bits (RFC 9112 7.1 asks recipients to
  guard against overflow), and a size no 64-bit parser can read is never
  taken for another one. Condure (httparse) and Go count digits the same
  way; nobody pads a size to 17 digits;
- SP or HTAB may follow the size, and surround ``;`` and ``=`` in chunk
  extensions (BWS, RFC 9112 7.1.1); an extension is a token, optionally
  ``=`` a token or a quoted string; extensions are checked, then ignored;
- every line (size lines, the end of each chunk's data, trailer fields,
  the empty line that ends the body) ends in CRLF: a bare LF, a CR or
  another control byte in a line is an error, as bytes a parser in front
  of condure could read differently (RFC 9112 2.2 allows a bare LF only in
  the start line and header fields);
- a size line or trailer line longer than ``max_line``, more than
  :data:`MAX_TRAILERS` trailer fields, or a trailer line that is not a
  field is an error; trailer fields are checked and dropped.

Sans-I/O: the decoder takes its input from the front of the caller's
buffer and raises :class:`ChunkError` on anything malformed.
"""

from __future__ import annotations

import re

MAX_SIZE_DIGITS = 16  # hex digits of a chunk size, leading zeros included
MAX_LINE = 1024  # longest size line (extensions included) or trailer line
MAX_TRAILERS = 64  # as many trailer fields as header fields

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'  # RFC 9110 5.6.4
_EXT = (rb"[ \t]*;[ \t]*" + _TOKEN
        + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?")
_SIZE_LINE = re.compile(
    rb"([0-9a-fA-F]{1,%d})(?:%s)*[ \t]*\Z" % (MAX_SIZE_DIGITS, _EXT))
_TRAILER = re.compile(_TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\Z")

_SIZE, _DATA, _DATA_END, _TRAILERS = range(4)


class ChunkError(ValueError):
    """The chunked framing is broken (the message says how)."""


def chunk_size(line: bytes) -> int:
    """The size a chunk-size line (without its CRLF) gives."""
    match = _SIZE_LINE.match(line)
    if match is None:
        if re.match(rb"[0-9a-fA-F]{%d}" % (MAX_SIZE_DIGITS + 1), line):
            raise ChunkError(f"chunk size of more than {MAX_SIZE_DIGITS} hex digits")
        raise ChunkError(f"bad chunk size line {line[:40]!r}")
    return int(match.group(1), 16)


class ChunkedReader:
    """Where one chunked body stands; :meth:`read` until :attr:`done`."""

    __slots__ = ("done", "left", "max_line", "state", "trailers")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.state = _SIZE
        self.left = 0  # data bytes left in this chunk
        self.trailers = 0  # trailer fields read
        self.done = False  # the empty line after the last chunk was read

    @classmethod
    def at(cls, left: int, trailer: bool, max_line: int = MAX_LINE) -> ChunkedReader:
        """A reader going on from where :meth:`position` said another
        stood: ``left`` bytes of a chunk's data to come, or among the
        trailers, or (neither) at the start of a size line."""
        reader = cls(max_line)
        if trailer:
            reader.state = _TRAILERS
        elif left:
            reader.state, reader.left = _DATA, left
        return reader

    def position(self) -> tuple[int, bool] | None:
        """(data bytes left of this chunk, among the trailers), for
        :meth:`at`; None between a chunk's data and its CRLF, the one
        point :meth:`at` does not take (and after the end: see
        :attr:`done`)."""
        if self.state == _DATA_END or self.done:
            return None
        return self.left, self.state == _TRAILERS

    def read(self, buf: bytearray, limit: int) -> bytes:
        """Up to ``limit`` (> 0) bytes of one chunk's data, taken from the
        front of ``buf`` with the framing before them; b"" when ``buf``
        holds no more data (more input is needed, or :attr:`done`)."""
        while not self.done:
            state = self.state
            if state == _DATA:
                size = min(limit, self.left, len(buf))
                if not size:
                    return b""
                piece = bytes(buf[:size])
                del buf[:size]
                self.left -= size
                if not self.left:
                    self.state = _DATA_END
                return piece
            if state == _DATA_END:
                if buf[:2] != b"\r\n"[:len(buf)]:
                    raise ChunkError("chunk data not followed by CRLF")
                if len(buf) < 2:
                    return b""
                del buf[:2]
                self.state = _SIZE
                continue
            line = self._line(buf)
            if line is None:
                return b""
            if state == _SIZE:
                self.left = chunk_size(line)
                self.state = _DATA if self.left else _TRAILERS
            elif line:
                if _TRAILER.match(line) is None:
                    raise ChunkError(f"bad trailer field {line[:40]!r}")
                self.trailers += 1
                if self.trailers > MAX_TRAILERS:
                    raise ChunkError(f"more than {MAX_TRAILERS} trailer fields")
            else:
                self.done = True
        return b""

    def _line(self, buf: bytearray) -> bytes | None:
        """The next line without its CRLF, taken from ``buf``; None while
        it is incomplete."""
        most = self.max_line + 2
        end = buf.find(b"\n", 0, most)
        if end < 0:
            if len(buf) >= most:
                raise ChunkError(f"chunk size or trailer line longer than {self.max_line} bytes")
            return None
        if not end or buf[end - 1] != 0x0D:
            raise ChunkError("bare LF in the chunked framing")
        line = bytes(buf[:end - 1])
        del buf[:end + 1]
        return line
