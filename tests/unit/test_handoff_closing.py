"""Handover, WebSocket side: a close that crosses a handoff. A session
whose close is under way (a close frame went one way) does not move: it
stays in its worker, reads the client again and ends once both close
frames were exchanged (RFC 6455 7.1.1), and condure answers nothing itself
(docs/handover.md, "What cannot move")."""

from __future__ import annotations

import zlib

import pytest

from condure.session.states import ASKED, UNANSWERED
from condure.session.websocket import CLIENT_CONTEXT, MID_MESSAGE
from condure.zhttp.packets import Cancel, Data, HandoffProceed, HandoffStart
from condure.zhttp.packets import Close as ClosePacket
from tests.unit.test_websocket_session import PMD, PMD_NCT, WsDriver, cframe, opened

CLOSE_4001 = b"\x88\x02\x0f\xa1"  # the handler's close frame, code 4001


def moving(how: str) -> WsDriver:
    """An open session whose handoff began: asked (handoff-start sent) or,
    as a reload does under --handoff auto, moving unasked."""
    d = opened()
    assert d.session.begin_handoff(ask=how == "asked")
    d.drain()
    sent = [type(p) for p in d.new_packets()]
    assert sent == ([HandoffStart] if how == "asked" else [])
    assert d.session.handoff == (ASKED if how == "asked" else UNANSWERED)
    assert not d.session.wants_read
    return d


@pytest.mark.parametrize("how", ["asked", "unanswered"])
def test_handler_close_during_a_handoff_leaves_it_and_the_clients_close_ends_it(how):
    d = moving(how)
    start_seq = d.session.out_seq
    d.handler(ClosePacket, code=4001)
    assert d.new_output() == CLOSE_4001
    s = d.session
    assert not s.handing_off and s.close_wait == "the client's close frame"
    assert s.wants_read and not s.ready_to_export and s.export_record(d.now) is None
    if how == "asked":
        d.handler(HandoffProceed)  # its answer to handoff-start, sent after the close
    assert not d.closed and not d.new_sends()
    d.client(cframe(8, b"\x0f\xa1"))  # the client answers the close at once
    (close,) = d.new_packets()
    assert type(close) is ClosePacket and close.code == 4001
    assert close.ids[0].seq == start_seq  # the next in condure's numbering
    assert d.close.graceful and d.close.reason == "closed by both sides"
    assert not d.new_output()  # condure adds no close frame of its own


def test_client_frames_held_by_the_handoff_are_relayed_before_its_close():
    """What the client sent while the session was moving stayed unread; once
    the handler's close ends the handoff it is read in order, as after any
    close of the handler's (reference 5.7.6)."""
    d = moving("asked")
    d.client(cframe(1, b"late") + cframe(8, b"\x0f\xa1"))
    assert not d.new_sends() and len(d.inbound) == 18  # still in the kernel
    d.handler(ClosePacket, code=4001)
    packets = d.new_packets()
    assert [(type(p), p.body) for p in packets] == [(Data, b"late"), (ClosePacket, b"")]
    assert packets[1].code == 4001 and d.close.graceful


def test_a_late_handoff_proceed_after_the_close_is_not_a_fault():
    d = moving("asked")
    d.handler(ClosePacket, code=4001)
    d.handler(HandoffProceed)
    assert not d.closed
    assert d.session.close_wait == "the client's close frame"
    assert d.session.handoff_wait == "closing: the client's close frame did not come in time"


def test_client_close_before_the_handover_waits_for_the_handlers_answer():
    """The client's close was read (and relayed) before the handover: the
    session cannot move, and what the client gets back is the handler's
    close, not condure's 1012 (RFC 6455 5.5.1: the answer to a close
    frame; condure relays it and never answers one itself)."""
    d = opened()
    d.client(cframe(8, b"\x03\xe8bye"))
    (close,) = d.new_packets()
    assert (type(close), close.code) == (ClosePacket, 1000)
    s = d.session
    assert s.close_wait == "the handler's close frame" and not s.handing_off
    assert s.begin_handoff() is False and not d.new_sends()
    assert s.handoff_wait == "closing: the handler's close frame did not come in time"
    d.handler(ClosePacket, code=1000, body=b"bye")
    assert d.new_output() == b"\x88\x05\x03\xe8bye"
    assert d.close.graceful and d.close.reason == "closed by both sides"
    assert not any(isinstance(p, Cancel) for p in d.new_packets())


def test_open_or_closed_sessions_have_no_close_wait():
    d = opened()
    assert d.session.close_wait is None
    d.handler(ClosePacket, code=4001)
    d.client(cframe(8, b"\x0f\xa1"))
    assert d.closed and d.session.close_wait is None


def test_why_a_compressed_session_cannot_move():
    """The reason begin_handoff refused the session, for the handover's
    ``cannot move (...)`` line, even with output not yet flushed (which a
    session that was never handing off does not wait for)."""
    d = opened(compression=True, headers=PMD)  # (the driver answers as Condure)
    d.handler(Data, body=b"half", more=True)
    assert d.session.output.unflushed
    assert d.session.begin_handoff() is False
    assert d.session.handoff_wait == CLIENT_CONTEXT


def test_why_a_compressed_session_waits():
    """In the middle of a compressed client message the session waits for
    its end (handoff_later); past the handoff timeout the handover's line
    gives that reason, even with output not yet flushed."""
    d = opened(compression=True, headers=PMD_NCT)
    d.handler(Data, body=b"half", more=True)
    z = zlib.compressobj(wbits=-15)
    part = z.compress(b"half of a message " * 10) + z.flush(zlib.Z_SYNC_FLUSH)
    d.client(cframe(1, part, rsv=0x40, fin=False))  # (its last frame still to come)
    assert d.session.output.unflushed
    assert d.session.begin_handoff() is False and d.session.handoff_later
    assert d.session.handoff_wait == MID_MESSAGE
