"""The request body of a stream-mode request: moved from the client to
the handler against the handler's credits (reference 5.2); and where it
stands when the request moves to another process while its body is being
read (:func:`position`, :func:`resumed`; :mod:`condure.session.body_record`).

A Content-Length body is parsed by h11, a chunked one by condure's own
decoder (:mod:`condure.session.chunked`, set up by the head reader). The
position of a Content-Length body (bytes left) is read from h11's body
reader, the one place that looks inside h11; a reader it does not
recognise is not at a resumable position, so the request does not move.
A chunked body's position is its decoder's (bytes left of a chunk, or
the trailers). The adopting process builds a fresh parser at the same
position from a head of its own, and for a chunked body a decoder at the
same point, before the client's unparsed bytes.
"""

from __future__ import annotations

import h11

from condure.session.body_record import CARRY_MAX, BodyAt
from condure.session.chunked import MAX_LINE, ChunkedReader
from condure.session.head import HeadReader
from condure.session.states import BodyState


class RequestBody:
    """What is left of one request's body and where it stands.

    ``state`` follows :class:`BodyState`; the session sends what
    :meth:`take` gives and acts on the reasons :meth:`pull` reports."""

    __slots__ = ("credits", "eom", "expect_continue", "malformed", "pieces", "state")

    def __init__(self) -> None:
        self.state = BodyState.NONE
        self.pieces: list[bytes] = []  # read, not yet sent, as the client's pieces
        self.eom = False  # its end was parsed
        self.credits = 0  # bytes the handler may still take
        self.expect_continue = False  # a 100 Continue is owed when reading starts
        self.malformed = False  # the body broke its framing

    def expect(self, more: bool, expect_continue: bool) -> None:
        """The request has a body (``more``: of at least one byte)."""
        self.state = BodyState.PENDING
        self.expect_continue = expect_continue and more

    def pull(self, reader: HeadReader) -> str | None:
        """Parse buffered input until one body piece or the end is found;
        the reason the request must end, if it must."""
        pieces = self.pieces
        while not self.eom and not pieces:
            try:
                event = reader.next_event()
            except h11.RemoteProtocolError as e:
                self.malformed = True
                return f"malformed request body: {e}"
            kind = type(event)
            if kind is h11.Data:
                data = event.data  # type: ignore[attr-defined]
                if data:
                    pieces.append(bytes(data))
            elif kind is h11.EndOfMessage:
                self.eom = True
            elif kind is h11.ConnectionClosed:
                return "client closed during the request body"
            else:  # NEED_DATA, or PAUSED after the end
                return None
        return None

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the first piece (b"" when none)."""
        pieces = self.pieces
        if not pieces:
            return b""
        first = pieces[0]
        size = min(limit, len(first))
        if size == len(first):
            del pieces[0]
            return first
        pieces[0] = first[size:]
        return first[:size]

    @property
    def last(self) -> bool:
        """Everything of the body was taken."""
        return self.eom and not self.pieces


NO_BODY = RequestBody()
"""The body of every request without one (shared: never changed, as its
state stays ``NONE``; the session adds no credits to it)."""


def position(body: RequestBody, reader: HeadReader) -> BodyAt | None:
    """Where ``body`` (being read) stands, if at a resumable position (see
    :mod:`condure.session.body_record`), else None."""
    pending = b"".join(body.pieces)
    if len(pending) + reader.buffered(False) > CARRY_MAX:
        return None  # (until the handler's credits take some)
    at = BodyAt(chunked=False, left=0, trailer=False, eom=True, pending=pending,
                credits=body.credits)
    if body.eom:
        return at
    chunks = reader.chunks
    if chunks is not None:
        if chunks.done:  # (its end not handed out yet)
            return at
        where = chunks.position()
        if where is None:
            return None  # between a chunk's data and its CRLF
        return BodyAt(True, where[0], where[1], False, pending, body.credits)
    parser = reader.parser
    h11_reader = getattr(parser, "_reader", None)
    if type(h11_reader).__name__ == "ContentLengthReader":
        left = getattr(h11_reader, "_remaining", None)
        if type(left) is not int or left < 0:
            return None
        return at if left == 0 else BodyAt(False, left, False, False, pending, body.credits)
    return None


def resumed(at: BodyAt, buffer_size: int, leftover: bytes) -> tuple[RequestBody, HeadReader]:
    """The body and the reader of a request whose body was at ``at`` when
    it moved, with ``leftover`` (unparsed client bytes) to parse next."""
    body = RequestBody()
    body.state = BodyState.READING
    body.eom = at.eom
    body.credits = at.credits
    if at.pending:
        body.pieces.append(at.pending)
    if at.eom:
        reader = HeadReader(buffer_size, b"")
        reader.inbuf += leftover  # (a pipelined request: parsed next cycle)
        return body, reader
    head = b"POST / HTTP/1.1\r\nHost: condure\r\n"
    if at.chunked:
        head += b"Transfer-Encoding: chunked\r\n\r\n"
    else:
        head += b"Content-Length: %d\r\n\r\n" % at.left
    reader = HeadReader(buffer_size, b"")
    parser = reader.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=buffer_size)
    parser.receive_data(head)
    if type(parser.next_event()) is not h11.Request or parser.next_event() is not h11.NEED_DATA:
        raise AssertionError("h11 did not take the body position")  # (h11 changed)
    if at.chunked:  # (condure's own decoder, as read_head sets it up)
        reader.chunks = ChunkedReader.at(at.left, at.trailer, min(MAX_LINE, buffer_size - 2))
    if leftover:
        reader.feed(leftover, False)
    return body, reader
