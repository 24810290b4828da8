"""The request body of a stream-mode request: moved from the client to
the handler against the handler's credits (reference 5.2)."""

from __future__ import annotations

import h11

from condure.session.head import HeadReader
from condure.session.states import BodyState


class RequestBody:
    """What is left of one request's body and where it stands.

    ``state`` follows :class:`BodyState`; the session sends what
    :meth:`take` gives and acts on the reasons :meth:`pull` reports."""

    __slots__ = ("credits", "eom", "expect_continue", "pieces", "state")

    def __init__(self) -> None:
        self.state = BodyState.NONE
        self.pieces: list[bytes] = []  # read, not yet sent, as the client's pieces
        self.eom = False  # its end was parsed
        self.credits = 0  # bytes the handler may still take
        self.expect_continue = False  # a 100 Continue is owed when reading starts

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
            except h11.RemoteProtocolError:
                return "malformed request body"
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
