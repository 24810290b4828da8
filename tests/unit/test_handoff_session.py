"""Handover, WebSocket side: handoff-start/proceed, what the session holds
back while it moves, its record (pending payload, credits owed, ``from``)
and its resume in the adopting process (docs/handover.md, docs/handoff.md)."""

from __future__ import annotations

import pytest

from condure.session.peer import HANDLER_GONE
from condure.session.states import ASKED, PROCEEDED, UNANSWERED
from condure.session.websocket import WebSocketSession
from condure.session.ws_snapshot import export_ws, restore_ws
from condure.zhttp.packets import (
    Cancel,
    Credit,
    Data,
    HandoffProceed,
    HandoffStart,
    Ident,
    KeepAlive,
    Ping,
)
from condure.zhttp.packets import Close as ClosePacket
from tests.unit.session_helpers import HANDLER, INSTANCE, decode_record, encode_record
from tests.unit.test_websocket_session import (
    MASK,
    PMD,
    PMD_NCT,
    SIMPLE,
    WsDriver,
    cframe,
    opened,
)

OTHER = b"condure.7"  # the adopting process's own address
RID = b"0-0-0"
CLOSE_1012 = b"\x88\x02\x03\xf4"


def let_go(d: WsDriver) -> None:
    """handoff-start, answered with handoff-proceed."""
    assert d.session.begin_handoff()
    d.drain()
    d.handler(HandoffProceed)


def handing_off(**kw) -> WsDriver:
    """An open session that has just sent handoff-start (marks reset)."""
    d = opened(**kw)
    assert d.session.begin_handoff()
    d.drain()
    assert [type(p) for p in d.new_packets()] == [HandoffStart]
    return d


def ready(**kw) -> WsDriver:
    """A session the handler let go: handoff-proceed received."""
    d = handing_off(**kw)
    d.handler(HandoffProceed)
    assert d.session.ready_to_export
    return d


def carry(d: WsDriver) -> dict:
    """The record as the adopting process decodes it."""
    return decode_record(encode_record(export_ws(d.session, d.now)))


def adopt(d: WsDriver, record: dict | None = None, *, instance_id: bytes = OTHER) -> WsDriver:
    """Rebuild ``d``'s session as another process would: its own address,
    the unread client bytes (still in the kernel) travel with the socket,
    the handler keeps its numbering. Resumed like condure.handover.adopt:
    restore, resume, then the adapter drains."""
    record = carry(d) if record is None else record
    session = restore_ws(record, instance_id=instance_id, now=d.now, buffer_size=8192,
                         stream_timeout=1800.0, messages_max=100)
    d2 = WsDriver(session=session, now=d.now)
    d2.handler_seq = dict(d.handler_seq)
    d2.inbound = bytearray(d.inbound)
    d.inbound.clear()
    session.resume()
    d2.pump()
    return d2


def seqs(packets) -> list[int]:
    return [p.ids[0].seq for p in packets]


# -- begin_handoff --------------------------------------------------------------------


def test_begin_handoff_sends_one_handoff_start_with_the_next_seq():
    d = opened()
    d.handler(Data, body=b"hi")
    d.flush()
    assert [(type(p), p.ids[0].seq) for p in d.new_packets()] == [(Credit, 1)]
    assert d.session.begin_handoff() is True
    d.drain()
    (send,) = d.new_sends()
    assert type(send.packet) is HandoffStart and send.to == HANDLER
    assert send.packet.ids == (Ident(RID, 2),) and send.packet.from_ == INSTANCE
    assert d.session.handoff == ASKED
    assert d.session.begin_handoff() is True  # asked once only
    d.drain()
    assert not d.new_sends() and d.session.out_seq == 3 and not d.closed


def _refused_case(case: str) -> WsDriver:
    if case == "waiting for the acceptance":
        d = WsDriver()
        d.client(SIMPLE + b"\r\n")
        assert isinstance(d.session, WebSocketSession) and d.session.handler is None
    elif case == "context takeover":
        d = opened(compression=True, headers=PMD)
    elif case == "compressed client message under way":
        d = opened(compression=True, headers=PMD_NCT)
        d.client(cframe(1, b"\xf2\x48\xcd", fin=False, rsv=0x40))
    else:
        d = opened()
        {"client closed": lambda: d.client(cframe(8, b"\x03\xe8")),
         "handler closed": lambda: d.handler(ClosePacket, code=1000),
         "cancelled": lambda: d.handler(Cancel)}[case]()
    return d


@pytest.mark.parametrize("case", ["client closed", "handler closed", "cancelled",
                                  "waiting for the acceptance", "context takeover",
                                  "compressed client message under way"])
def test_begin_handoff_refused(case):
    d = _refused_case(case)
    d.new_sends()
    assert d.session.begin_handoff() is False
    d.drain()
    assert not d.new_sends() and d.session.handoff == 0


def test_begin_handoff_without_context_takeover_between_messages():
    d = opened(compression=True, headers=PMD_NCT)
    d.handler(Data, body=b"whole")
    d.new_sends()
    assert d.session.begin_handoff() is True
    d.drain()
    assert [type(p) for p in d.new_packets()] == [HandoffStart]


# -- nothing goes to the handler from handoff-start on ------------------------------


def test_client_frames_are_not_parsed_while_moving():
    d = handing_off()
    assert not d.session.wants_read
    d.client(cframe(1, b"hello") + cframe(9, b"p"))
    assert not d.new_sends()
    assert bytes(d.inbound) == cframe(1, b"hello") + cframe(9, b"p")  # still in the kernel
    data = bytes(d.inbound)
    d.inbound.clear()
    d.feed(data)  # even bytes that were read anyway are only kept
    assert not d.new_sends()
    assert not d.session.input.pending and d.session.input.frame is None
    assert bytes(d.session.input.inbuf) == data


def test_a_frame_half_read_stays_half_read_while_moving():
    d = opened(credits=100)
    whole = cframe(1, b"abcdef")
    d.client(whole[:9])  # header and "abc"
    assert [(p.body, p.more) for p in d.new_packets()] == [(b"abc", True)]
    assert d.session.begin_handoff()
    d.drain()
    d.new_sends()
    assert not d.session.wants_read  # the rest moves with the connection
    d.client(whole[9:] + cframe(2, b"xyz"))
    s = d.session
    assert bytes(d.inbound) == whole[9:] + cframe(2, b"xyz")
    d.inbound.clear()
    d.feed(whole[9:11])  # bytes that were read anyway are only kept
    assert not d.new_sends()
    assert (bytes(s.input.pending), s.input.msg_done, s.input.frame_left) == (b"", False, 3)
    assert bytes(s.input.inbuf) == whole[9:11] and not s.wants_read
    assert s.input.credits == 97
    d.handler(Credit, credits=50)  # credits do not release it either
    assert not d.new_sends() and s.input.credits == 147
    d.handler(HandoffProceed)
    assert s.ready_to_export  # in the middle of the frame


def test_flushed_output_earns_credits_owed_not_a_credit_packet():
    d = opened()
    d.handler(Data, body=b"hello")
    assert d.session.begin_handoff()
    d.drain()
    d.new_sends()
    d.flush()
    assert not d.new_sends()
    assert (d.session.credits_owed, d.session.output.credits, d.session.output.unflushed) == (
        5, 8192, 0)
    d.flush()
    assert d.session.credits_owed == 5


def test_no_keep_alive_while_moving():
    d = handing_off()
    out_seq = d.session.out_seq
    assert d.session.keep_alive() is None
    d.handler(HandoffProceed)
    assert d.session.keep_alive() is None
    assert d.session.out_seq == out_seq


def test_handler_packets_before_proceed_reach_the_client():
    d = handing_off()
    d.handler(Data, body=b"late")
    d.handler(Ping, body=b"p")
    assert d.new_output() == b"\x81\x04late\x89\x01p"
    assert not d.session.ready_to_export  # not asked to proceed yet
    d.handler(HandoffProceed)
    assert d.session.handoff == PROCEEDED
    assert not d.session.ready_to_export  # written, not flushed
    d.flush()
    assert d.session.ready_to_export and d.session.credits_owed == 5
    assert not d.new_sends() and not d.closed


def test_crossing_handoff_start_counts_as_proceed():
    d = handing_off()
    d.handler(HandoffStart)
    (send,) = d.new_sends()
    assert type(send.packet) is HandoffProceed and send.packet.ids == (Ident(RID, 2),)
    assert d.session.handoff == PROCEEDED and d.session.ready_to_export


@pytest.mark.parametrize("asked", [False, True])
def test_unexpected_handoff_proceed_ends_the_session(asked):
    d = ready() if asked else opened()  # a second proceed is as unexpected
    d.handler(HandoffProceed)
    assert d.closed and not d.close.graceful
    assert not any(isinstance(p, Cancel) for p in d.new_packets())


def test_handler_too_slow_is_closed_with_1012():
    d = handing_off()
    d.session.going_away(d.now, 1012)
    d.drain()
    assert d.new_output() == CLOSE_1012
    assert [type(p) for p in d.new_packets()] == [Cancel]
    assert d.closed and d.close.graceful


# -- export, adopt, resume ----------------------------------------------------------------


def test_record_of_a_moving_session():
    d = opened(credits=3)
    d.client(cframe(1, b"abcdef"))  # "abc" sent, "def" waits for credits
    d.handler(Data, body=b"12345")
    let_go(d)
    d.flush()
    record = carry(d)
    assert record == export_ws(d.session, d.now)
    assert (record["from"], record["pending"], record["msg_done"], record["credits_owed"]) == (
        INSTANCE, b"def", 1, 5)
    assert (record["out_seq"], record["in_seq"], record["in_credits"]) == (3, 3, 0)


def test_adopted_session_keeps_id_from_and_seqs_and_resumes_with_keep_alive():
    d = opened()
    d.handler(Data, body=b"12345")
    let_go(d)
    d.flush()
    record = carry(d)
    assert (record["out_seq"], record["in_seq"], record["credits_owed"]) == (2, 3, 5)
    d2 = adopt(d, record, instance_id=OTHER)
    s = d2.session
    assert (s.rid, s.instance_id, s.out_seq, s.in_seq) == (RID, INSTANCE, 4, 3)
    sends = d2.new_sends()
    assert [(type(x.packet), x.packet.ids, x.packet.from_, x.to) for x in sends] == [
        (KeepAlive, (Ident(RID, 2),), INSTANCE, HANDLER),
        (Credit, (Ident(RID, 3),), INSTANCE, HANDLER)]
    assert sends[1].packet.credits == 5 and s.credits_owed == 0 and s.handoff == 0
    d2.handler(Data, body=b"held")  # the handler's queue, numbered on
    assert d2.new_output() == b"\x81\x04held" and not d2.closed
    assert s.keep_alive() == (HANDLER, Ident(RID, 4))


def test_resume_without_credits_owed_is_a_keep_alive_only():
    d2 = adopt(ready())
    assert [(type(p), p.ids[0].seq) for p in d2.new_packets()] == [(KeepAlive, 2)]


def test_record_without_from_takes_the_adopting_address():
    d = ready()
    record = carry(d)
    del record["from"]
    d2 = adopt(d, record, instance_id=OTHER)
    assert d2.session.instance_id == OTHER
    assert d2.new_packets()[0].from_ == OTHER


def test_pending_payload_goes_out_once_the_handler_grants_credits():
    d = opened(credits=3)
    d.client(cframe(1, b"abcdef"))
    d.new_sends()
    let_go(d)
    d2 = adopt(d)
    assert [type(p) for p in d2.new_packets()] == [KeepAlive]  # no credits yet
    d2.handler(Credit, credits=2)
    d2.handler(Credit, credits=10)
    got = [(p.body, p.more, p.content_type, p.ids[0].seq) for p in d2.new_packets()]
    assert got == [(b"de", True, b"text", 4), (b"f", False, b"text", 5)]
    assert d2.session.input.credits == 9 and d2.session.input.msg_opcode == 0


def _moved_with_leftover() -> tuple[WsDriver, dict]:
    """A frame half read when the move starts: two more of its bytes read
    along (leftover, raw), the rest of it, a whole next frame and a ping
    still in the kernel, and one more frame sent later."""
    d = opened(credits=100)
    whole = cframe(1, b"abcdef")
    d.client(whole[:9])
    d.new_sends()
    let_go(d)
    d.feed(whole[9:11])
    d.client(whole[11:] + cframe(2, b"xyz") + cframe(9, b"p"))
    d.client(cframe(1, b"later"))
    d.new_sends()
    record = carry(d)
    assert record["leftover"] == whole[9:11]
    assert (record["frame_left"], record["frame_offset"], record["frame_mask"],
            record["frame_fin"], record["msg_opcode"]) == (3, 3, MASK, 1, 1)
    assert bytes(d.inbound) == whole[11:] + cframe(2, b"xyz") + cframe(9, b"p") + cframe(
        1, b"later")
    return d, record


def test_leftover_and_pending_are_forwarded_in_order_after_the_move():
    d, record = _moved_with_leftover()
    d2 = adopt(d, record)
    packets = d2.new_packets()
    assert seqs(packets) == list(range(record["out_seq"], record["out_seq"] + 6))
    moved = [(type(p).__name__, p.body, getattr(p, "more", False))
             for p in packets if type(p) is not KeepAlive]
    assert moved == [("Data", b"de", True), ("Data", b"f", False), ("Data", b"xyz", False),
                     ("Ping", b"p", False), ("Data", b"later", False)]
    assert all(p.from_ == INSTANCE for p in packets) and not d2.closed


def test_resume_keep_alive_comes_before_anything_held():
    d, record = _moved_with_leftover()
    d2 = adopt(d, record)
    (first, *_) = d2.new_packets()
    assert type(first) is KeepAlive and first.ids == (Ident(RID, record["out_seq"]),)


def test_adopted_session_ignores_copies_the_previous_owner_took():
    """Old and new worker share an address, so handler packets the old one
    already counted may still reach the new one after adoption: dropped,
    not a seq error. Any other session still ends on a wrong seq."""
    d = ready()
    proceed_seq = d.handler_seq[RID] - 1
    d2 = adopt(d)
    d2.new_packets()
    d2.handler(HandoffProceed, seq=proceed_seq)  # the stale copy
    assert not d2.closed and d2.new_packets() == []
    d2.handler(Data, body=b"echo", content_type=b"text")  # the next seq: accepted
    assert not d2.closed and b"echo" in d2.new_output()
    fresh = opened()
    fresh.handler(Data, seq=0, body=b"x")  # seq 0 again, not adopted
    assert fresh.closed


# -- moving without the handler's answer (--handoff) ----------------------------


def test_skip_moves_without_handoff_start_and_holds_credits_back():
    """``begin_handoff(ask=False)``: nothing goes to the handler, the client
    is not read, what the handler sends is still written, and the credits
    for it wait for the resume; the session may leave once flushed."""
    d = opened()
    assert d.session.begin_handoff(ask=False) is True
    d.drain()
    assert d.new_packets() == [] and d.session.handoff == UNANSWERED
    assert not d.session.wants_read
    d.handler(Data, body=b"still", content_type=b"text")
    assert b"still" in d.new_output()
    d.flush()
    assert d.new_packets() == [] and d.session.credits_owed == 5
    assert d.session.ready_to_export and not d.closed
    d2 = adopt(d)
    kinds = [(type(p), getattr(p, "credits", 0)) for p in d2.new_packets()]
    assert kinds == [(KeepAlive, 0), (Credit, 5)]


def test_unanswered_handoff_start_moves_after_move_unanswered():
    d = handing_off()
    assert not d.session.ready_to_export
    assert d.session.handoff_wait == "no handoff-proceed in time"
    assert d.session.move_unanswered() is True
    assert d.session.ready_to_export and d.session.handoff == UNANSWERED
    assert d.session.move_unanswered() is False  # once
    d2 = adopt(d)
    d2.new_packets()
    # the handler's late answer reaches the adopter: not an error; the
    # handler now holds its packets until a keep-alive (docs/handoff.md),
    # and may have taken the resume's before it answered: another goes out
    d2.handler(HandoffProceed)
    assert not d2.closed and [type(p) for p in d2.new_packets()] == [KeepAlive]
    d2.handler(Data, body=b"echo", content_type=b"text")
    assert not d2.closed and b"echo" in d2.new_output()


def test_move_unanswered_needs_an_unanswered_ask():
    assert opened().session.move_unanswered() is False  # not moving
    assert ready().session.move_unanswered() is False  # answered


def test_a_late_answer_before_the_export_makes_it_a_proceeded_move():
    d = handing_off()
    assert d.session.move_unanswered()
    d.handler(HandoffProceed)
    assert d.session.handoff == PROCEEDED and not d.closed


def test_a_gap_in_the_handlers_seq_after_a_move_closes_with_1012_and_cancel():
    """Packets the handler sent while no process took them (a restart
    without its handoff) are missed: the next one's seq skips. The client
    gets close 1012 (service restart: it may reconnect at once), the handler
    a cancel; a session that did not move still ends on any wrong seq."""
    d = handing_off()
    assert d.session.move_unanswered()
    d2 = adopt(d)
    d2.new_packets()
    d2.handler_seq[RID] += 1  # one packet lost on the way
    d2.handler(Data, body=b"after the gap", content_type=b"text")
    assert d2.new_output().startswith(CLOSE_1012)
    assert [type(p) for p in d2.new_packets()] == [Cancel]
    assert d2.closed and not d2.close.handler_fault



@pytest.mark.parametrize("heard", [False, True])
def test_a_cancel_for_an_unknown_id_after_a_move_closes_with_1012(heard):
    """The handler no longer has the session when it resumes (its answer
    to the resume's keep-alive is a cancel without seq): close 1012, so
    that the client may reconnect, and no cancel back. Once the handler was
    heard after the move, such a cancel ends the session as any cancel."""
    d = handing_off()
    assert d.session.move_unanswered()
    d2 = adopt(d)
    assert [type(p) for p in d2.new_packets()] == [KeepAlive]  # the resume
    if heard:
        d2.handler(KeepAlive)
    d2.handler(Cancel, seq=None)
    assert d2.closed and d2.new_packets() == []
    if heard:
        assert d2.new_output() == b"" and not d2.close.gone
        assert d2.close.reason == "ended by handler"
    else:
        assert d2.new_output() == CLOSE_1012 and d2.close.graceful
        assert d2.close.gone and not d2.close.missed and d2.close.reason == HANDLER_GONE
