"""What is owed when a session fails inside condure (a bug).

A session that raises an unexpected exception costs its own connection
and nothing else: the adapter (``Conn.fail`` in condure/net/conn.py)
catches it and ends that connection. The broken object may be in any
state, so it is never called again: :func:`last_words` works out what is
owed from a few plain attributes, each read defensively, and
:class:`Ended` stands in for the session until the connection is gone.

What is owed: a ``500 Internal Server Error`` with ``Connection: close``
when a request is under way or being read and no byte of its response
was written (a WebSocket handshake not yet answered counts; an idle
connection between requests gets nothing), a close frame with code 1011 on an
open WebSocket that has not sent its close yet, and ``cancel`` to the
handler when one is known (none in req mode, whose handlers are never
cancelled). A response under way whose body is delimited by the close
ends with a reset instead (:func:`cut_unmarked`).
"""

from __future__ import annotations

import struct

from condure.session.actions import Action
from condure.session.contract import Kind
from condure.session.httpwire import error_response
from condure.session.peer import MAX_FROM
from condure.session.states import CLOSED, HEAD, OPEN, WAIT
from condure.session.ws_frames import CLOSE, frame
from condure.zhttp.packets import Cancel, Ident

INTERNAL_ERROR = 1011  # WebSocket close code (RFC 6455 7.4.1)
_MAX_SEQ = 0xFFFFFFFF


def _get(session: object, name: str, default: object = None) -> object:
    try:
        return getattr(session, name, default)
    except Exception:  # noqa: BLE001 - a broken object: take the default
        return default


def describe(session: object) -> str:
    """``peer ADDRESS:PORT, session ID`` for the log, whatever the state."""
    address, port, rid = (_get(session, n) for n in ("peer_address", "peer_port", "rid"))
    peer = (address.decode("ascii", "replace") if isinstance(address, bytes) else "local")
    if isinstance(port, int):
        peer += f":{port}"
    sid = rid.decode("ascii", "replace") if isinstance(rid, bytes) else "?"
    return f"peer {peer}, session {sid}"


def last_words(session: object, sender: bytes | None = None, reading: bool = False
               ) -> tuple[bytes, tuple[bytes, Cancel] | None]:
    """(bytes for the client, (handler address, cancel) or None) for a
    connection whose ``session`` failed. ``sender``: the ``from`` of the
    handler packet being delivered when it failed, used when the session
    did not know its handler yet; ``reading``: it failed on client bytes
    (a request is being read even if the session kept none of it)."""
    state = _get(session, "state")
    kind = _get(session, "kind")
    words = b""
    if kind is Kind.WEBSOCKET:
        if state is OPEN and _get(_get(session, "output"), "closed") is False:
            words = frame(CLOSE, struct.pack("!H", INTERNAL_ERROR))
        elif state is WAIT:
            words = error_response(500)  # no 101 went out
    elif (kind is Kind.HTTP or kind is Kind.REQ) and state is not CLOSED:
        # A request under way, or being read; not an idle connection
        # between requests, which is owed no response.
        mid = _get(session, "mid_request")
        reading = reading or mid is True or (mid is None and state is not HEAD)
        if _get(session, "answer_started") is False and reading:
            words = error_response(500)
    cancel = None
    if state is not CLOSED and kind is not Kind.REQ:
        address = _get(session, "handler")
        if not isinstance(address, bytes):
            address = sender
        rid, seq, origin = (_get(session, n) for n in ("rid", "out_seq", "instance_id"))
        if (isinstance(address, bytes) and 0 < len(address) <= MAX_FROM
                and isinstance(rid, bytes) and isinstance(origin, bytes)
                and type(seq) is int and 0 <= seq <= _MAX_SEQ):
            cancel = (address, Cancel(from_=origin, ids=(Ident(rid, seq),)))
    return words, cancel


def cut_unmarked(session: object) -> bool:
    """Whether ending the failed ``session``'s connection cuts a response
    whose framing cannot show it (``cut_unmarked`` of the HTTP session):
    the adapter then resets the connection instead of closing it."""
    return _get(session, "state") is not CLOSED and _get(session, "cut_unmarked") is True


class Ended:
    """Stands in for a failed session until its connection is gone: it
    answers every call the adapter, the worker and a handover make, and
    does nothing."""

    __slots__ = ("instance_id", "rid")
    kind = Kind.ENDED
    state = CLOSED
    peer_address = None
    peer_port = None
    can_move = False
    handoff_needs_handler = False
    awaiting_handler = False
    handoff_later = False
    handing_off = False
    close_wait = None
    handler = None
    deadline = None
    wants_read = False
    resumable = False
    ready_to_export = False
    handoff_wait = "ended"
    handoff = 0
    adopted = False

    def __init__(self, failed: object = None) -> None:
        rid = _get(failed, "rid")
        origin = _get(failed, "instance_id")
        self.rid = rid if isinstance(rid, bytes) else b""  # release() finds moved ones by it
        self.instance_id = origin if isinstance(origin, bytes) else b""

    def __repr__(self) -> str:
        return f"<Ended session id={self.rid!r}>"

    def take_actions(self) -> list[Action]:
        return []

    def receive_data(self, data: bytes, now: float) -> None:
        pass

    def receive_packet(self, packet: object, ident: object, now: float) -> None:
        pass

    def abort_unknown(self, reason: str) -> None:
        pass

    def output_flushed(self, now: float) -> None:
        pass

    def reads_held(self, held: bool, now: float) -> None:
        pass

    def handle_timer(self, now: float) -> None:
        pass

    def going_away(self, now: float | None = None, code: int | None = None) -> None:
        pass

    def begin_handoff(self, ask: bool = True) -> bool:
        return False

    def move_unanswered(self) -> bool:
        return False

    def export_record(self, now: float) -> None:
        return None

    def resume(self) -> None:
        pass

    def keep_alive(self) -> None:
        return None

    def shutdown(self) -> None:
        return None
