"""Handover of req-mode connections (docs/handover.md): an idle one moves
with what it read of the next request and the time left of its
--req-timeout cycle; a request under way finishes first, answered as
usual, and the connection moves then. The record round trips, and an
adopted session serves the next request exactly as a fresh one does (the
general path, one read after another, as the oracle)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from condure.session import records
from condure.session.contract import Kind, Session, Settings
from condure.session.records import RecordError
from condure.session.req import REQ_SOCKET, ReqSession
from condure.session.req_record import ReqRecord
from condure.session.resume import restore
from condure.session.states import HEAD, WAIT
from condure.zhttp.packets import Data, Ident
from tests.unit.session_helpers import INSTANCE, START, Driver, IdSource
from tests.unit.test_http_simple import compare_actions, read_once_and_twice, requests
from tests.unit.test_req_session import GET, HELLO, POST, make, only_request, reply
from tests.unit.test_req_simple import state

NEXT = b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n"
OTHER = b"condure.7"
SETTINGS = Settings(buffer_size=8192, body_buffer_size=100000, req_timeout=30.0)


def adopt(d: Driver, now: float | None = None) -> Driver:
    """Export between requests; rebuild as another process would (through
    the encoded record, its own ids); client bytes not read move with the
    socket."""
    now = d.now if now is None else now
    record = d.session.export_record(d.now)
    assert record is not None
    moved = restore(records.decode(records.encode(record)), settings=SETTINGS,
                    instance_id=OTHER, new_id=IdSource(b"9-0-"), now=now)
    assert isinstance(moved, ReqSession) and isinstance(moved, Session)
    d2 = Driver(session=moved, now=now)
    d2.inbound = bytearray(d.inbound)
    d.inbound.clear()
    moved.resume()
    d2.pump()
    return d2


def served(d: Driver) -> None:
    """A first request answered; the connection is idle."""
    d.client(GET)
    only_request(d)
    reply(d)
    assert d.new_output() == HELLO and not d.closed


# -- the record ----------------------------------------------------------------------

@pytest.mark.parametrize("address", [(b"127.0.0.1", 41000), (None, None)])
def test_record_round_trips(address):
    record = ReqRecord(scheme=b"https", peer_address=address[0], peer_port=address[1],
                       leftover=b"GET /x HT", req_left=12.5)
    assert records.decode(records.encode(record)) == record
    fields = records.to_fields(record)
    assert fields == {"v": 1, "kind": b"req", "scheme": b"https",
                      "peer_address": address[0] or b"", "peer_port": address[1] or 0,
                      "leftover": b"GET /x HT", "req_left": 12.5}
    assert not record.keeps_id


@pytest.mark.parametrize("change", [
    {"surprise": 1}, {"session_left": 60.0}, {"req_left": -1.0}, {"req_left": math.inf},
    {"req_left": b"5"}, {"leftover": 5}, {"v": 2}])
def test_bad_records_are_refused(change):
    fields = records.to_fields(ReqRecord(scheme=b"http", peer_address=b"127.0.0.1",
                                         peer_port=1, leftover=b"", req_left=1.0))
    with pytest.raises(RecordError):
        records.from_fields({**fields, **change})
    del fields["req_left"]
    with pytest.raises(RecordError, match="req_left"):
        records.from_fields(fields)


# -- an idle connection moves -------------------------------------------------------------

@pytest.mark.parametrize("first", [False, True], ids=["fresh", "after-a-request"])
def test_idle_connection_moves_and_serves_the_next_request(first):
    d = make(req_timeout=30.0)
    if first:
        served(d)
    s = d.session
    assert s.can_move and s.wants_read and s.resumable and not s.handoff_needs_handler
    assert s.begin_handoff() is True and s.handing_off
    assert not s.wants_read and s.ready_to_export
    d.client(NEXT)  # stays in the kernel, moves with the socket
    assert d.new_sends() == [] and bytes(d.inbound) == NEXT and not d.closed
    d.advance(10.0)
    d2 = adopt(d)
    assert d2.session.kind is Kind.REQ and not d2.session.hold
    request = only_request(d2)
    assert (request.uri, request.ids, request.peer_port) == (
        b"http://example.com/next", (Ident(b"9-0-0"),), 55326)
    # the --req-timeout cycle runs on from where it was (30 s from its start)
    assert d2.session.deadline == START + 30.0
    reply(d2)
    assert d2.new_output() == HELLO and not d2.closed and d2.session.wants_read


def test_half_a_head_travels_and_keeps_its_cycle():
    d = make(req_timeout=4.0)
    d.client(b"GET /next HTTP/1.1\r\nHo")
    d.advance(3.0)
    assert d.session.begin_handoff() and d.session.resumable
    record = d.session.export_record(d.now)
    assert record.leftover == b"GET /next HTTP/1.1\r\nHo" and record.req_left == 1.0
    d2 = adopt(d, now=50.0)
    assert d2.new_sends() == [] and d2.session.deadline == 51.0
    d2.advance(1.1)  # 4 s from the first byte, not a fresh clock: 408
    assert d2.new_output().startswith(b"HTTP/1.1 408 Request Timeout\r\n") and d2.closed


@pytest.mark.parametrize("pipelined", [b"", NEXT, NEXT[:9]], ids=["none", "whole", "part"])
@pytest.mark.parametrize("first", [GET, POST], ids=["get", "post"])
def test_a_request_under_way_finishes_then_the_connection_moves(first, pipelined):
    """Waiting for its handler when the handover begins: answered as usual,
    kept alive (no Connection: close), and a pipelined request is not
    started here but travels and starts in the adopting process."""
    d = make()
    d.client(first + pipelined)
    only_request(d)
    s = d.session
    assert s.state is WAIT and not s.resumable and s.export_record(d.now) is None
    assert s.begin_handoff() is True
    assert s.handoff_wait == "request still under way"
    reply(d)
    assert d.new_output() == HELLO  # keep-alive: no Connection header
    assert d.new_sends() == [] and s.state is HEAD and s.ready_to_export
    assert s.export_record(d.now).leftover == pipelined
    d2 = adopt(d)
    if pipelined == NEXT:
        assert only_request(d2).ids == (Ident(b"9-0-0"),)
    else:
        assert d2.new_sends() == []
        d2.client(NEXT[len(pipelined):])
        only_request(d2)


def test_a_body_being_read_is_read_to_its_end_first():
    d = make()
    d.client(POST[:-4])
    assert d.session.begin_handoff() and not d.session.resumable and d.session.wants_read
    d.client(POST[-4:])
    assert only_request(d).body == b"hello there"
    reply(d)
    assert d.new_output() == HELLO and d.session.ready_to_export


def test_a_handover_that_gives_up_answers_the_kept_request_with_close():
    """The drain time ran out (or condure stops during the handover): the
    pipelined request the hold kept back goes to the handler after all,
    and its answer closes the connection, as on any stop."""
    d = make()
    d.client(GET + NEXT)
    only_request(d)
    d.session.begin_handoff()
    reply(d)
    d.new_output()
    d.session.going_away(d.now)
    d.pump()
    assert only_request(d).uri == b"http://example.com/next"
    reply(d)
    assert b"\r\nConnection: close\r\n" in d.new_output() and d.closed


def test_an_idle_connection_given_up_on_closes_as_on_a_stop():
    d = make()
    served(d)
    d.session.begin_handoff()
    d.session.going_away(d.now)
    d.advance(1.1)
    d.session.going_away(d.now)
    d.pump()
    assert d.closed and d.close.reason == "going away: no request came"


# -- the adopted session serves as a fresh one ---------------------------------------

def _pair(buffer_size: int, read_first: bool) -> tuple[ReqSession, ReqSession]:
    """(a fresh session, one exported and adopted), in the same state: the
    same ids from here on and the same clock."""
    def fresh() -> ReqSession:
        return ReqSession(instance_id=INSTANCE, new_id=IdSource(), now=0.0,
                          buffer_size=buffer_size, body_buffer_size=1000, scheme=b"https",
                          peer_address=b"127.0.0.1", peer_port=40000)

    stayed, left = fresh(), fresh()
    for s in (stayed, left) if read_first else ():
        s.receive_data(b"GET /first HTTP/1.1\r\nHost: e\r\n\r\n", 0.5)
        s.receive_packet(Data(ids=(Ident(s.rid),), code=200, reason=b"OK", body=b"x"),
                         Ident(s.rid), 0.5)
        s.take_actions()
    left.begin_handoff()
    record = records.decode(records.encode(left.export_record(0.75)))
    ids = IdSource()
    ids.count = stayed.new_id.count - 1  # type: ignore[attr-defined]
    moved = restore(record, settings=Settings(buffer_size=buffer_size, body_buffer_size=1000),
                    instance_id=INSTANCE, new_id=ids, now=0.75)
    assert isinstance(moved, ReqSession) and moved.take_actions() == []
    return stayed, moved


@settings(max_examples=300, deadline=None)
@given(data=requests(), buffer_size=st.sampled_from([64, 512, 8192]),
       read_first=st.booleans(), code=st.sampled_from([200, 204, 304]))
def test_an_adopted_session_serves_the_next_request_as_a_fresh_one(
        data: bytes, buffer_size: int, read_first: bool, code: int) -> None:
    stayed, moved = _pair(buffer_size, read_first)
    assert state(moved) == state(stayed)
    # the adopted one in one read (the one-step path where it applies), the
    # one that stayed in two (the general path): the oracle
    read_once_and_twice(moved, stayed, data)
    assert state(moved) == state(stayed)
    if moved.awaiting_handler:
        answer = Data(ids=(Ident(moved.rid),), code=code, reason=b"OK",
                      headers=((b"Content-Type", b"text/plain"),), body=b"hello")
        for s in (moved, stayed):
            s.receive_packet(answer, answer.ids[0], 2.0)
        compare_actions(moved.take_actions(), stayed.take_actions())
        assert state(moved) == state(stayed)


@settings(max_examples=100, deadline=None)
@given(data=requests())
def test_bytes_that_travelled_are_parsed_as_if_just_read(data: bytes) -> None:
    """A next request that travelled in the record (read before the move)
    gives what the same bytes read after the move give."""
    stayed, _ = _pair(8192, True)
    left = ReqSession(instance_id=INSTANCE, new_id=IdSource(), now=0.0,
                      body_buffer_size=1000, scheme=b"https",
                      peer_address=b"127.0.0.1", peer_port=40000)
    left.receive_data(b"GET /first HTTP/1.1\r\nHost: e\r\n\r\n", 0.5)
    left.begin_handoff()
    left.receive_packet(Data(ids=(Ident(left.rid),), code=200, reason=b"OK", body=b"x"),
                        Ident(left.rid), 0.5)
    left.take_actions()
    left.receive_data(data, 0.6)  # (held: not parsed)
    assert left.take_actions() == []
    ids = IdSource()
    ids.count = 1
    record = records.decode(records.encode(left.export_record(0.75)))
    moved = restore(record, settings=Settings(body_buffer_size=1000), instance_id=INSTANCE,
                    new_id=ids, now=0.75)
    stayed.receive_data(data[:1], 1.0)
    stayed.receive_data(data[1:], 1.0)
    compare_actions(moved.take_actions(), stayed.take_actions())
    assert state(moved) == state(stayed)


def test_a_whole_request_read_before_the_move_goes_out_on_adoption():
    s, _ = _pair(8192, True)
    s.begin_handoff()
    s.receive_data(NEXT, 1.0)
    assert s.take_actions() == []
    moved = restore(records.decode(records.encode(s.export_record(1.0))), settings=SETTINGS,
                    instance_id=OTHER, new_id=IdSource(b"9-0-"), now=1.0)
    [send] = moved.take_actions()
    assert send.to is REQ_SOCKET and send.packet.uri == b"https://example.com/next"
