"""Moving a req-mode connection to another process (handover,
docs/handover.md): the part of :class:`condure.session.req.ReqSession`
that exports it and takes it up again.

A req-mode connection moves between requests only (``HEAD``, nothing
queued): half a head read so far, or a whole next request the handover
kept from starting, travels as unparsed bytes (``leftover``), and the
``--req-timeout`` cycle as the time left of it
(:mod:`condure.session.req_record`). The handover holds the connection
(``hold``): it reads nothing more from the client between requests (the
client's bytes stay in the kernel and move with the socket) and starts no
new request, so a request being read or waiting for its handler finishes
here, answered as usual (keeping the connection alive when the client
asked for it), and the connection then moves. Nothing is owed to the
handler at that point (it answers a req-mode request with one packet,
addressed by id on the DEALER socket), so no handoff is asked for; the
adopting process's next request gets its own id.
"""

from __future__ import annotations

from condure.session.actions import Action
from condure.session.head import HeadReader
from condure.session.req_record import ReqRecord
from condure.session.states import HEAD, Phase


class ReqMoves:
    """The handover part of :class:`condure.session.req.ReqSession`."""

    can_move = True
    handoff_needs_handler = False  # nothing of the handler's side travels
    handoff_later = False
    close_wait = None

    # (the session's own)
    state: Phase
    reader: HeadReader
    actions: list[Action]
    hold: bool  # handover: no new request from here on
    req_deadline: float
    scheme: bytes
    peer_address: bytes | None
    peer_port: int | None

    @property
    def resumable(self) -> bool:
        """Between requests with nothing queued: it can move now (bytes of a
        next request read so far travel with it)."""
        return self.state is HEAD and not self.actions

    @property
    def ready_to_export(self) -> bool:
        return self.resumable

    @property
    def handing_off(self) -> bool:
        return self.hold

    # what a handover is still waiting for (the log line when it gives up)
    handoff_wait = "request still under way"

    def begin_handoff(self, ask: bool = True) -> bool:
        """Handover starts: no new request from here on. One under way
        finishes first (as it would without the handover, but for the
        connection, which stays open when the client asked for that)."""
        self.hold = True
        return True

    def move_unanswered(self) -> bool:
        return False  # the handler is never asked

    def export_record(self, now: float) -> ReqRecord | None:
        """The record of this connection if it is between requests, else None."""
        if not self.resumable:
            return None
        return ReqRecord(scheme=self.scheme, peer_address=self.peer_address,
                         peer_port=self.peer_port, leftover=self.reader.leftover(),
                         req_left=max(self.req_deadline - now, 0.0))

    def restore(self, record: ReqRecord, now: float) -> None:
        """Take up the ``--req-timeout`` cycle where ``record`` left it (the
        leftover was parsed as the connection's first input)."""
        self.req_deadline = now + record.req_left

    def resume(self) -> None:
        """In the adopting process: nothing to tell anyone (a next request
        that travelled whole has already gone to the handler)."""
