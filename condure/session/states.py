"""Session states and the one table per session kind of what may follow what.

Each session kind moves through its :class:`enum.Enum` of phases only by
:func:`advance`, which looks the (phase, event) pair up in that kind's
table and refuses anything the table does not list (a bug in condure,
contained like any other: see condure/session/failure.py). Reading a
table answers "what may follow what" for that kind in one place.

Stream-mode HTTP (:class:`condure.session.http.HttpSession`)::

    HEAD   --request-->   WAIT     the request packet went out
    HEAD   --upgrade-->   CLOSED   a WebSocket session took the connection
    WAIT   --answered-->  ACTIVE   the handler's first packet
    ACTIVE --next-->      HEAD     response done, body read: next request
    any    --close-->     CLOSED

Req mode (:class:`condure.session.req.ReqSession`)::

    HEAD  --request--> WAIT     no body: the request packet went out
    HEAD  --body-->    BODY     reading the body into the body buffer
    BODY  --request--> WAIT
    WAIT  --next-->    HEAD     the response is queued; next request
    any   --close-->   CLOSED

WebSocket (:class:`condure.session.websocket.WebSocketSession`)::

    WAIT --accepted--> OPEN     the handler's 101 went to the client
    any  --close-->    CLOSED

The request body and the response of a stream-mode request have their own
small machines (:class:`BodyState`, :class:`ResponseState`), owned by the
objects that move them (condure/session/http_body.py, http_response.py).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class _Fast(enum.Enum):
    """Members hash by identity (C speed; Enum's own hash is Python code,
    and transition tables are looked up on every request)."""

    __hash__ = object.__hash__


class Phase(_Fast):
    """Where a session is in its cycle (every kind uses a subset)."""

    HEAD = "HEAD"  # reading a request head
    BODY = "BODY"  # req mode: reading the request body
    WAIT = "WAIT"  # the request went out; no answer from the handler yet
    ACTIVE = "ACTIVE"  # stream HTTP: the handler answered
    OPEN = "OPEN"  # WebSocket: frames both ways
    CLOSED = "CLOSED"

    def __str__(self) -> str:
        return self.value


class Event(_Fast):
    REQUEST = "request"
    UPGRADE = "upgrade"
    BODY = "body"
    ANSWERED = "answered"
    ACCEPTED = "accepted"
    NEXT = "next"
    CLOSE = "close"


class BodyState(_Fast):
    """The request body of a stream-mode request."""

    NONE = "none"  # the request has no body
    PENDING = "pending"  # it has one; the handler has not asked for it yet
    READING = "reading"  # moving to the handler against its credits
    DONE = "done"  # read to its end
    ABANDONED = "abandoned"  # the handler answered first: not read, no reuse

    def __str__(self) -> str:
        return self.value


class ResponseState(_Fast):
    """The response of a stream-mode request."""

    NONE = "none"  # nothing of it written yet
    STREAMING = "streaming"  # its head went out
    DONE = "done"  # its last byte went out

    def __str__(self) -> str:
        return self.value


Table = Mapping[tuple[Phase, Event], Phase]


class TransitionError(RuntimeError):
    """A session tried a move its table does not allow (a bug)."""


def _with_close(moves: dict[tuple[Phase, Event], Phase], phases: tuple[Phase, ...]) -> Table:
    for phase in phases:
        moves[phase, Event.CLOSE] = Phase.CLOSED
    return moves


HTTP_TABLE: Table = _with_close({
    (Phase.HEAD, Event.REQUEST): Phase.WAIT,
    (Phase.HEAD, Event.UPGRADE): Phase.CLOSED,
    (Phase.WAIT, Event.ANSWERED): Phase.ACTIVE,
    (Phase.ACTIVE, Event.NEXT): Phase.HEAD,
}, (Phase.HEAD, Phase.WAIT, Phase.ACTIVE))

REQ_TABLE: Table = _with_close({
    (Phase.HEAD, Event.REQUEST): Phase.WAIT,
    (Phase.HEAD, Event.BODY): Phase.BODY,
    (Phase.BODY, Event.REQUEST): Phase.WAIT,
    (Phase.WAIT, Event.NEXT): Phase.HEAD,
}, (Phase.HEAD, Phase.BODY, Phase.WAIT))

WS_TABLE: Table = _with_close({
    (Phase.WAIT, Event.ACCEPTED): Phase.OPEN,
}, (Phase.WAIT, Phase.OPEN))


def advance(table: Table, phase: Phase, event: Event) -> Phase:
    """The phase after ``event`` in ``phase``, by ``table``."""
    try:
        return table[phase, event]
    except KeyError:
        raise TransitionError(f"{event.value} not allowed in {phase.value}") from None


# Names the tests and older modules use.
HEAD, BODY, WAIT, ACTIVE, OPEN, CLOSED = (
    Phase.HEAD, Phase.BODY, Phase.WAIT, Phase.ACTIVE, Phase.OPEN, Phase.CLOSED)
NO_BODY, BODY_PENDING, BODY_READING, BODY_DONE, BODY_ABANDONED = (
    BodyState.NONE, BodyState.PENDING, BodyState.READING, BodyState.DONE, BodyState.ABANDONED)
RESP_NONE, RESP_STREAMING, RESP_DONE = (
    ResponseState.NONE, ResponseState.STREAMING, ResponseState.DONE)


class Handoff(enum.IntEnum):
    """A session's handoff (WebSocketSession, HttpSession): moving to another process (handover)."""

    NONE = 0
    ASKED = 1  # handoff-start went to the handler
    PROCEEDED = 2  # the handler answered and sends nothing more
    # Moving without the handler's answer: it was not asked (--handoff
    # skip) or did not answer in time. What it sends meanwhile is served
    # here until the export, then reaches the adopting worker (a reload) or
    # is missed, which the adopter sees as a gap in the seq numbers.
    UNANSWERED = 3


ASKED, PROCEEDED, UNANSWERED = Handoff.ASKED, Handoff.PROCEEDED, Handoff.UNANSWERED
