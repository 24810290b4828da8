"""Handover of an HTTP request in flight (condure/session/http_snapshot.py,
docs/handover.md): a held long-poll or a streamed response moves with its
ZHTTP session, and behaves after the move exactly as a request that did
not move (the oracle): the same later handler packets give the same client
bytes and the same packets for the handler, but for the handoff itself
(``handoff-start``, the resume's ``keep-alive``) and the ids and ``from``.
The connection's next request is the adopting process's own."""

from __future__ import annotations

import dataclasses

import pytest

from condure.session import records
from condure.session.contract import Settings
from condure.session.http import HttpSession
from condure.session.peer import HANDLER_GONE, MISSED_IN_MOVE
from condure.session.records import HttpRecord, RecordError
from condure.session.resume import restore
from condure.session.states import (
    ACTIVE,
    ASKED,
    HEAD,
    PROCEEDED,
    UNANSWERED,
    Handoff,
    ResponseState,
)
from condure.zhttp.packets import (
    Cancel,
    Credit,
    Data,
    HandoffProceed,
    HandoffStart,
    Ident,
    KeepAlive,
    Packet,
)
from tests.unit.session_helpers import HANDLER, INSTANCE, Driver, IdSource
from tests.unit.test_record_fixtures import text as fixture_text

OTHER = b"condure.7"
SETTINGS = Settings(buffer_size=8192, stream_timeout=1800.0)
GET = b"GET /poll HTTP/1.1\r\nHost: e\r\n\r\n"
GET10 = b"GET /poll HTTP/1.0\r\nHost: e\r\n\r\n"
POST = b"POST /up HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\n\r\nhello"
NEXT = b"GET /next HTTP/1.1\r\nHost: e\r\n\r\n"
LENGTH = ((b"Content-Length", b"9"),)


def move(d: Driver, *, answer: bool = True) -> Driver:
    """Hand ``d``'s session over in flight (the handler answers the
    handoff-start if ``answer``, else the move is unanswered), through an
    encoded record, to a process with address OTHER and ids ``9-0-n``."""
    s = d.session
    d.new_packets()
    assert s.begin_handoff(ask=answer)
    d.pump()  # (the adapter runs the connection)
    if answer:
        [start] = d.new_packets()
        assert type(start) is HandoffStart and start.ids[0].id == s.rid
        assert s.handoff is ASKED and not s.ready_to_export
        d.handler(HandoffProceed)
    else:
        assert s.handoff is UNANSWERED and not d.new_packets()  # --handoff skip
    d.flush()
    assert s.ready_to_export, s
    record = records.decode(records.encode(s.export_record(d.now)))
    assert isinstance(record, HttpRecord) and record.keeps_id
    s2 = restore(record, settings=SETTINGS, instance_id=OTHER, new_id=IdSource(b"9-0-"),
                 now=d.now + 1)
    d2 = Driver(session=s2, now=d.now + 1)
    d2.handler_seq = dict(d.handler_seq)
    d2.inbound = bytearray(d.inbound)  # unread client bytes stay in the socket
    d.inbound.clear()
    s2.resume()
    d2.pump()
    return d2


def bare(packets: list[Packet]) -> list[Packet]:
    """Packets without ids and from (they differ across a move), and
    without the handoff's own packets."""
    return [dataclasses.replace(p, ids=(), from_=b"") for p in packets
            if type(p) not in (HandoffStart, HandoffProceed, KeepAlive)]


def pair(request: bytes, *first: tuple[type, dict]) -> tuple[Driver, Driver]:
    """Two sessions given the same request and handler packets: one to move
    and the oracle."""
    drivers = Driver(), Driver()
    for d in drivers:
        d.client(request)
        for kind, fields in first:
            d.handler(kind, **fields)
    return drivers


def later(d: Driver, steps: list[tuple]) -> None:
    for what, *args in steps:
        if what == "data":
            body, more = args
            d.handler(Data, body=body, more=more)
        elif what == "respond":
            d.handler(Data, code=200, reason=b"OK", **args[0])
        elif what == "flush":
            d.flush()


OK = {"code": 200, "reason": b"OK"}
SCENARIOS = {
    # a held long-poll: the handler answered (a keep-alive), no response byte
    "long-poll": (GET, [(KeepAlive, {})], [], [
        ("respond", {"body": b"news", "more": True}), ("flush",), ("data", b"", False)]),
    "long-poll answered whole": (GET, [(Credit, {"credits": 0})], [], [
        ("respond", {"body": b"news"})]),
    "chunked": (GET, [(Data, {**OK, "body": b"abc", "more": True})],
                [("flush",), ("data", b"de", True)],  # unflushed at the move: credits owed
                [("data", b"fgh", True), ("flush",), ("data", b"ij", False)]),
    "content-length": (GET, [(Data, {**OK, "headers": LENGTH, "body": b"abc", "more": True})],
                       [("data", b"def", True)],
                       [("flush",), ("data", b"gh", True), ("flush",), ("data", b"i", False)]),
    "http/1.0 close-delimited": (GET10, [(Data, {**OK, "body": b"x", "more": True})],
                                 [("flush",)],
                                 [("data", b"yy", True), ("flush",), ("data", b"z", False)]),
    "body done, pipelined next": (POST + NEXT, [(Credit, {"credits": 100})], [],
                                  [("respond", {"body": b"", "more": True}),
                                   ("data", b"up", False)]),
}


@pytest.mark.parametrize("answer", [True, False], ids=["proceed", "unanswered"])
@pytest.mark.parametrize("name", SCENARIOS)
def test_a_moved_request_behaves_as_one_that_stayed(name, answer):
    request, first, before, after = SCENARIOS[name]
    d, oracle = pair(request, *first)
    later(d, before)
    later(oracle, before)
    oracle.flush()  # (a move waits until the client took everything written)
    rid = d.session.rid
    assert d.session.state is ACTIVE and d.session.movable
    d2 = move(d, answer=answer)
    s2 = d2.session
    resume = d2.new_packets()[0]  # (then a credit, when some were owed)
    assert (type(resume), resume.ids, resume.from_) == (KeepAlive, (Ident(rid, d.session.out_seq),),
                                                        INSTANCE)
    assert (s2.rid, s2.instance_id, s2.adopted) == (rid, INSTANCE, True)
    later(d2, after)
    later(oracle, after)
    d2.client(NEXT)
    oracle.client(NEXT)
    # the client's bytes: what went out before the move, then after it
    assert bytes(d.output) + bytes(d2.output) == bytes(oracle.output)
    assert bare(d.packets + d2.packets) == bare(oracle.packets)
    assert [c.graceful for c in d2.closes] == [c.graceful for c in oracle.closes]
    assert not d.closes and not d.session.actions
    # every packet of the moved request kept its id and from; the next
    # request (if the connection persists) is the adopting process's own
    moved = [p for p in d2.packets if p.ids[0].id == rid]
    assert all(p.from_ == INSTANCE for p in moved)
    assert [p.ids[0].seq for p in moved] == list(range(resume.ids[0].seq,
                                                       resume.ids[0].seq + len(moved)))
    fresh = [p for p in d2.packets if p.ids[0].id != rid]
    if oracle.closes:
        assert not fresh and d2.closed
    else:
        [request_packet] = fresh
        assert request_packet.uri == b"http://e/next"
        assert (request_packet.ids, request_packet.from_) == ((Ident(b"9-0-1", 0),), OTHER)
        assert s2.state is not ACTIVE and not s2.adopted


def test_record_of_a_streamed_response_in_flight():
    d = Driver()
    d.client(GET)
    d.handler(Data, code=200, reason=b"OK", headers=LENGTH, body=b"abc", more=True)
    d.new_packets()
    d.session.begin_handoff()
    d.pump()
    d.handler(HandoffProceed)
    assert not d.session.ready_to_export  # written, not flushed
    assert d.session.handoff_wait == "the client does not take what was written to it"
    d.flush()
    assert [type(p) for p in d.new_packets()] == [HandoffStart]  # no credit while moving
    fields = records.to_fields(d.session.export_record(d.now))
    assert {k: fields[k] for k in ("id", "from", "handler", "out_seq", "in_seq",
                                   "credits_owed", "resp", "resp_credits", "owed", "chunked",
                                   "keep_alive")} == {
        "id": b"0-0-0", "from": INSTANCE, "handler": HANDLER, "out_seq": 2, "in_seq": 2,
        "credits_owed": 3, "resp": 1, "resp_credits": 8192, "owed": 6, "chunked": 0,
        "keep_alive": 1}
    assert "head_left" not in fields


def test_wait_does_not_move_until_the_handler_answers():
    """No handler answer yet (WAIT): nothing to ask, no record; once it
    answers the handoff starts, also with its body still being read
    (tests/unit/test_handoff_body.py)."""
    d = Driver()
    d.client(POST[:-2])
    s = d.session
    s.begin_handoff()
    d.pump()
    assert d.new_packets()[0].method == b"POST" and s.export_record(d.now) is None
    assert not s.handoff_needs_handler and s.handoff is Handoff.NONE
    d.handler(Credit, credits=100)
    assert [type(p) for p in d.new_packets()] == [Data, HandoffStart]  # 3 of 5 bytes sent
    assert s.handoff is ASKED and s.handoff_needs_handler and not s.wants_read


def test_a_request_that_ends_while_asked_moves_between_requests():
    d = Driver()
    d.client(GET)
    d.handler(KeepAlive)
    d.session.begin_handoff()
    d.pump()
    d.handler(Data, code=200, reason=b"OK", body=b"done")  # it had not seen the ask
    s = d.session
    assert s.state is HEAD and s.resumable and not s.handoff_needs_handler
    record = s.export_record(d.now)
    assert record.flight is None and not record.keeps_id
    d.handler(HandoffProceed, rid=b"0-0-0")  # late: for an id that is over
    assert not d.closed


def test_no_keep_alive_or_credit_while_moving_and_crossed_handoff_start():
    d = Driver()
    d.client(GET)
    d.handler(Data, code=200, reason=b"OK", body=b"abc", more=True)
    d.flush()
    d.new_packets()
    d.session.begin_handoff()
    d.pump()
    assert d.session.keep_alive() is None
    d.handler(HandoffStart)  # the handler moves too: both stopped
    assert [type(p) for p in d.new_packets()] == [HandoffStart, HandoffProceed]
    assert d.session.handoff is PROCEEDED and d.session.ready_to_export


def test_a_seq_gap_after_the_move_ends_the_request_with_cancel():
    """A restart's gap: the handler's answer to a long-poll was lost. No
    response byte was written: the connection closes (gracefully, nothing
    sent: the client may retry), the handler gets a cancel."""
    d = Driver()
    d.client(GET)
    d.handler(KeepAlive)
    d2 = move(d, answer=False)
    d2.new_packets()
    d2.handler_seq[d.session.rid] += 1  # lost on the way
    d2.handler(Data, code=200, reason=b"OK", body=b"late")
    assert d2.output == b"" and [type(p) for p in d2.new_packets()] == [Cancel]
    assert d2.close.graceful and d2.close.reason.startswith(MISSED_IN_MOVE)
    assert not d2.close.handler_fault


def test_a_seq_gap_during_a_stream_cuts_it():
    d = Driver()
    d.client(GET)
    d.handler(Data, code=200, reason=b"OK", body=b"abc", more=True)
    d2 = move(d, answer=False)
    d2.new_packets()
    d2.handler_seq[d.session.rid] += 1
    d2.handler(Data, body=b"def", more=True)
    assert d2.output == b"" and [type(p) for p in d2.new_packets()] == [Cancel]
    assert not d2.close.graceful and d2.close.reason.startswith(MISSED_IN_MOVE)


def _cancel_without_seq(d: Driver) -> None:
    """What a ZHTTP peer answers for an id it does not know (Pushpin's
    tryRespondCancel, examples/handoffhandler.py): a cancel with no seq."""
    d.handler(Cancel, seq=None)


def test_a_cancel_for_an_unknown_id_after_the_move_ends_the_request():
    """A restart's gap: the handler answered the long-poll (lost) and
    forgot the session, so it answers the resume's keep-alive with a cancel
    outside its numbering. Nothing was written: the connection closes
    gracefully at once (the client may retry) instead of waiting for the
    session timeout, and nothing goes back to the handler."""
    d = Driver()
    d.client(GET)
    d.handler(KeepAlive)
    d2 = move(d, answer=False)
    assert [type(p) for p in d2.new_packets()] == [KeepAlive]  # the resume
    _cancel_without_seq(d2)
    assert d2.output == b"" and d2.new_packets() == []
    assert d2.close.graceful and d2.close.gone and d2.close.reason == HANDLER_GONE
    assert not d2.close.missed and not d2.close.handler_fault


def test_a_cancel_for_an_unknown_id_after_the_move_cuts_a_stream():
    d = Driver()
    d.client(GET)
    d.handler(Data, code=200, reason=b"OK", body=b"abc", more=True)
    d2 = move(d, answer=False)
    d2.new_packets()
    _cancel_without_seq(d2)
    assert d2.new_packets() == [] and not d2.close.graceful and d2.close.gone


@pytest.mark.parametrize("case", ["not moved", "heard since the move", "numbered"])
def test_other_cancels_end_the_request_as_before(case):
    """A cancel from a handler that has the session: one with its seq, or
    any once the handler was heard after the move, or to a request that did
    not move: the handler ended it (dropped, nothing back, not logged)."""
    d = Driver()
    d.client(GET)
    d.handler(KeepAlive)
    if case != "not moved":
        d = move(d, answer=False)
    d.new_packets()
    if case == "heard since the move":
        d.handler(KeepAlive)
    if case == "numbered":
        d.handler(Cancel)
    else:
        _cancel_without_seq(d)
    assert d.closed and not d.close.graceful and d.close.reason == "ended by handler"
    assert not d.close.gone and d.new_packets() == []


def test_copies_the_old_process_took_and_a_late_proceed_are_ignored():
    d = Driver()
    d.client(GET)
    d.handler(KeepAlive)
    d2 = move(d)
    rid = d.session.rid
    stale = Ident(rid, 0)
    d2.send_raw(KeepAlive(from_=HANDLER, ids=(stale,)), stale)
    d2.new_packets()
    d2.handler(HandoffProceed)  # late: the handler holds until a keep-alive
    assert [type(p) for p in d2.new_packets()] == [KeepAlive]
    d2.handler(Data, code=200, reason=b"OK", body=b"ok")
    assert d2.new_output().endswith(b"\r\n\r\nok") and not d2.closed


def test_going_away_while_moving_ends_the_request_with_cancel():
    """A handover that gives up on a request whose handoff began (its
    handler may hold its packets for a resume that never comes)."""
    d = Driver()
    d.client(GET)
    d.handler(KeepAlive)
    d.session.begin_handoff()
    d.pump()
    d.new_packets()
    d.session.going_away(d.now)
    d.pump()
    assert [type(p) for p in d.new_packets()] == [Cancel] and d.close.graceful


def test_records_between_requests_are_what_they_were():
    """Without a request in flight nothing new is written, and records of
    an earlier condure read as before (tests/unit/fixtures/records)."""
    d = Driver()
    fields = records.to_fields(d.session.export_record(d.now))
    assert set(fields) == {"v", "kind", "scheme", "peer_address", "peer_port", "leftover",
                           "session_left", "stream_left"}
    for name in ("http_idle", "http_leftover", "http_unix_https"):
        record = records.decode(fixture_text(name))
        assert isinstance(record, HttpRecord) and record.flight is None
        assert not record.keeps_id
        assert records.encode(record) == fixture_text(name)


def _flight_fields() -> dict:
    d = Driver()
    d.client(GET)
    d.handler(Data, code=200, reason=b"OK", body=b"abc", more=True)
    d.flush()
    d.session.begin_handoff(ask=False)
    d.pump()
    return records.to_fields(d.session.export_record(d.now))


@pytest.mark.parametrize("change", [
    {"id": None}, {"handler": b""}, {"in_seq": 0}, {"resp": 2}, {"owed": -2},
    {"chunked": 1, "owed": 3}, {"resp": 0}, {"head_left": 1.0}, {"credits_owed": -1}])
def test_bad_in_flight_records_are_refused(change):
    fields = _flight_fields()
    assert records.from_fields(fields).flight is not None
    refused_with(fields, change)


def refused_with(fields: dict, change: dict) -> None:
    """``fields`` with ``change`` (a None value: the key left out) is
    refused as a record."""
    for key, value in change.items():
        if value is None:
            del fields[key]
        else:
            fields[key] = value
    with pytest.raises(RecordError):
        records.from_fields(fields)


def test_restored_response_state_is_the_exported_one():
    fields = _flight_fields()
    record = records.from_fields(fields)
    session = HttpSession.from_record(record, settings=SETTINGS, instance_id=OTHER,
                                      new_id=IdSource(b"9-0-"), now=0.0)
    r = session.response
    assert (r.state, r.chunked, r.owed, session.handoff) == (
        ResponseState.STREAMING, True, -1, PROCEEDED)
    assert session.keep_alive() is None  # until resume()
    session.resume()
    assert session.handoff is Handoff.NONE and session.keep_alive() is not None


class _Conn:
    """What Slots reads of a connection: its slot and its session's id."""

    def __init__(self, slot: int, rid: bytes) -> None:
        self.slot = slot
        self.session = type("S", (), {"rid": rid})()
        self.closed = False


def test_a_moved_id_routes_only_while_the_session_has_it():
    """slots.route: a request adopted in flight is routed by its old id
    until it is over; then a late packet for that id reaches nothing (not
    the connection's next request), and the entry is gone."""
    from condure.slots import Slots

    slots = Slots(9)
    slot = slots.take_slot("stream")
    conn = _Conn(slot, b"0-5-1a")
    slots.install(conn)  # type: ignore[arg-type]
    slots.track(conn, b"0-5-1a")  # type: ignore[arg-type]
    assert slots.route(b"0-5-1a") is conn
    conn.session.rid = slots.next_id(slot)  # the next request, this worker's own id
    assert slots.route(conn.session.rid) is conn
    assert slots.route(b"0-5-1a") is None
    assert not slots.moved and not slots.moved_ids
    slots.track(conn, conn.session.rid)  # (a WebSocket taking over: forgotten on release)
    assert slots.unregister(conn) == "stream"  # type: ignore[arg-type]
    assert not slots.moved and not slots.moved_ids
