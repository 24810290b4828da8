"""The request-body half of :class:`condure.session.http.HttpSession`:
moving the client's body to the handler against the handler's credits."""

from __future__ import annotations

import h11

from condure.session.actions import Write
from condure.session.states import (
    BODY_DONE,
    BODY_PENDING,
    BODY_READING,
    CLOSED,
)
from condure.zhttp.packets import Data


class BodyMixin:
    """Request body flow (reference 5.2). Mixed into HttpSession."""

    def _begin_body(self, now: float) -> None:
        if self.body_state is not BODY_PENDING:
            return
        self.body_state = BODY_READING
        if self.expect_continue:
            self.actions.append(Write(b"HTTP/1.1 100 Continue\r\n\r\n"))
        self._pump_body(now)

    def _pump_body(self, now: float) -> None:
        """Move parsed body bytes to the handler as credits allow: one
        packet per piece the parser yields (a chunk, or what one read
        brought), split further only by credits and the buffer size. The
        last piece carries no ``more`` when the end is already known."""
        pieces = self.body_pieces
        while self.body_credits > 0:
            if not pieces and not self.body_eom:
                self._pull_body()
                if self.state is CLOSED or (not pieces and not self.body_eom):
                    return
            if pieces:
                first = pieces[0]
                size = min(self.body_credits, self.buffer_size, len(first))
                piece = first[:size]
                if size == len(first):
                    del pieces[0]
                else:
                    pieces[0] = first[size:]
            else:
                size, piece = 0, b""
            if not pieces and not self.body_eom:
                self._pull_body()  # does the body end right after this piece?
                if self.state is CLOSED:
                    return
            self.body_credits -= size
            last = self.body_eom and not pieces
            self._send(Data, body=piece, more=not last)
            if last:
                self.body_state = BODY_DONE
                self._maybe_finish(now)
                return

    def _pull_body(self) -> None:
        """Parse buffered input until one body piece or the end is found."""
        pieces = self.body_pieces
        while not self.body_eom and not pieces:
            try:
                event = self.parser.next_event()
            except h11.RemoteProtocolError:
                self._cancel_and_close("malformed request body")
                return
            kind = type(event)
            if kind is h11.Data:
                if event.data:
                    pieces.append(bytes(event.data))
            elif kind is h11.EndOfMessage:
                self.body_eom = True
            elif kind is h11.ConnectionClosed:
                self._cancel_and_close("client closed during the request body")
                return
            else:  # NEED_DATA, or PAUSED after the end
                return

