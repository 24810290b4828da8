"""Handover of a stream-mode request whose body is still being read
(condure/session/http_snapshot.py, condure/session/body_record.py,
docs/handover.md): once its handler is known, it moves at a resumable
position of the body's framing with what was read and not sent, the
handler's credits and the seqs, and the adopting process reads the rest
from the client. Compared with a session that did not move (the oracle):
the same body reaches the handler, in order, under consecutive seqs, and
the client gets the same bytes."""

from __future__ import annotations

import pytest

from condure.session import records
from condure.session.body_record import BodyAt
from condure.session.records import RecordError
from condure.session.states import ACTIVE, ASKED, BodyState, Handoff
from condure.zhttp.packets import Cancel, Credit, Data, HandoffProceed, HandoffStart, KeepAlive
from tests.unit.session_helpers import Driver
from tests.unit.test_handoff_inflight import move, refused_with
from tests.unit.test_record_fixtures import text as fixture_text

BODY = bytes(range(256)) * 4  # 1 KiB
CL_HEAD = b"POST /up HTTP/1.1\r\nHost: e\r\nContent-Length: %d\r\n\r\n" % len(BODY)
TE_HEAD = b"POST /up HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: e\r\n\r\n"


def chunked(body: bytes, size: int = 300, trailer: bytes = b"") -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
             for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n" + trailer + b"\r\n"


CL_WIRE = CL_HEAD + BODY
TE_WIRE = TE_HEAD + chunked(BODY)
TE_TRAILER_WIRE = TE_HEAD + chunked(BODY, trailer=b"X-Sum: 1\r\n")

# name -> (the request on the wire, bytes sent before the move, credits the
# handler grants first, what the record says of the body)
POSITIONS = {
    "content-length, in the body": (CL_WIRE, len(CL_HEAD) + 100, 4096,
                                    dict(chunked=False, left=len(BODY) - 100, pending=b"")),
    "content-length, read but not sent": (CL_WIRE, len(CL_HEAD) + 700, 500,
                                          dict(chunked=False, left=len(BODY) - 700,
                                               pending=BODY[500:700], credits=0)),
    "chunked, in a chunk": (TE_WIRE, len(TE_HEAD) + 5 + 120, 4096,
                            dict(chunked=True, left=180, trailer=False)),
    "chunked, at a size line": (TE_WIRE, len(TE_HEAD) + 5 + 300 + 2, 4096,
                                dict(chunked=True, left=0, trailer=False)),
    "chunked, in a size line": (TE_WIRE, len(TE_HEAD) + 5 + 300 + 2 + 2, 4096,
                                dict(chunked=True, left=0, trailer=False)),
    "chunked, in the trailers": (TE_TRAILER_WIRE, len(TE_TRAILER_WIRE) - 6, 4096,
                                 dict(chunked=True, left=0, trailer=True)),
    "end read, not all sent": (CL_WIRE + NEXT, len(CL_WIRE) + 5, 1000,
                               dict(eom=True, left=0, pending=BODY[1000:], credits=0)),
}


def _serve(d: Driver, wire: bytes, cut: int, credits: int) -> None:
    d.client(wire[:cut])
    [request] = d.new_packets()
    assert request.method == b"POST" and request.more
    d.handler(Credit, credits=credits)


def _finish(d: Driver) -> None:
    """The handler grants what the rest needs, then answers once the body
    has ended."""
    d.handler(Credit, credits=len(BODY))
    assert d.session.body.state is BodyState.DONE, d.session
    d.handler(Data, code=200, reason=b"OK", body=b"got it")
    d.flush()


def _body(packets) -> bytes:
    return b"".join(p.body for p in packets if type(p) is Data and p.method is None)


@pytest.mark.parametrize("answer", [True, False], ids=["proceed", "unanswered"])
@pytest.mark.parametrize("name", POSITIONS)
def test_a_body_moves_at_each_resumable_position(name, answer):
    wire, cut, credits, expected = POSITIONS[name]
    d, oracle = Driver(), Driver()
    for drv in (d, oracle):
        _serve(drv, wire, cut, credits)
    s = d.session
    rid = s.rid
    assert s.state is ACTIVE and s.body.state is BodyState.READING and s.movable
    at = s._body_at()
    for key, value in expected.items():
        assert getattr(at, key) == value, (key, at)
    d2 = move(d, answer=answer)
    d2.client(wire[cut:])
    oracle.client(wire[cut:])
    _finish(d2)
    _finish(oracle)
    if wire.endswith(NEXT):
        d2.handler(Data, code=200, reason=b"OK", body=b"next")
        oracle.handler(Data, code=200, reason=b"OK", body=b"next")
    # the handler got the whole body, in order, under consecutive seqs
    mine = [p for p in d.packets + d2.packets if p.ids[0].id == rid]
    assert _body(mine) == _body(oracle.packets) == BODY
    body_packets = [p for p in mine if type(p) is Data and p.method is None]
    assert [p.more for p in body_packets][-1] is False and all(
        p.more for p in body_packets[:-1])
    seqs = [p.ids[0].seq for p in mine]
    assert seqs == list(range(len(seqs)))
    assert [type(p) for p in d2.packets][:1] == [KeepAlive]  # the resume
    assert (answer and HandoffStart in [type(p) for p in d.packets]) or (
        not answer and HandoffStart not in [type(p) for p in d.packets])
    # the client: the same response as the oracle's, the next request too
    assert bytes(d.output) + bytes(d2.output) == bytes(oracle.output)
    assert bytes(d2.output).startswith(b"HTTP/1.1 200 OK")
    assert not d2.closes and not oracle.closes
    if wire.endswith(NEXT):
        [nxt] = [p for p in d2.packets if type(p) is Data and p.method == b"GET"]
        assert nxt.uri == b"http://e/next" and nxt.ids[0].id != rid


def _between_data_and_crlf(credits: int) -> Driver:
    d = Driver()
    d.client(TE_HEAD + b"5\r\nhello")
    d.handler(Credit, credits=credits)
    return d


@pytest.mark.parametrize("credits", [4096, 5], ids=["credits left", "no credits left"])
def test_between_a_chunks_data_and_its_crlf_it_waits(credits):
    """Not a resumable position: the handoff does not begin (nothing asked,
    no record) and the session reads on; the CRLF's arrival makes it one."""
    d = _between_data_and_crlf(credits)
    s = d.session
    assert not s.movable
    d.new_packets()
    s.begin_handoff()
    d.pump()
    assert s.handoff is Handoff.NONE and s.export_record(d.now) is None and s.wants_read
    assert d.new_packets() == []
    assert s.handoff_wait == "request body still being read, not at a point it can move from"
    d.client(b"\r")  # half of it: still not
    assert s.handoff is Handoff.NONE and s.export_record(d.now) is None
    d.client(b"\n3\r\nab")
    assert s.handoff is ASKED and not s.wants_read
    packets = d.new_packets()
    assert type(packets[-1]) is HandoffStart
    assert _body(packets) == (b"ab" if credits > 5 else b"")
    d.handler(HandoffProceed)
    d.client(b"c\r\n0\r\n\r\n")  # stays in the kernel: not read while moving
    assert d.inbound == b"c\r\n0\r\n\r\n"
    d2 = move_proceeded(d)
    d2.handler(Credit, credits=100)
    assert _body(d2.packets) == (b"c" if credits > 5 else b"abc")
    assert d2.session.body.state is BodyState.DONE


def move_proceeded(d: Driver) -> Driver:
    """The rest of test_handoff_inflight.move for a session already asked
    and answered."""
    from condure.session.resume import restore
    from tests.unit.session_helpers import IdSource
    from tests.unit.test_handoff_inflight import OTHER, SETTINGS
    s = d.session
    assert s.ready_to_export
    record = records.decode(records.encode(s.export_record(d.now)))
    s2 = restore(record, settings=SETTINGS, instance_id=OTHER, new_id=IdSource(b"9-0-"),
                 now=d.now + 1)
    d2 = Driver(session=s2, now=d.now + 1)
    d2.handler_seq = dict(d.handler_seq)
    d2.inbound = bytearray(d.inbound)
    s2.resume()
    d2.pump()
    return d2


def test_nothing_goes_to_the_handler_while_moving():
    """Credits that cross handoff-start, and client bytes already read,
    wait: they travel in the record, and go out after the resume."""
    d = Driver()
    _serve(d, CL_WIRE, len(CL_HEAD) + 300, 100)
    d.new_packets()
    d.session.begin_handoff()
    d.pump()
    assert [type(p) for p in d.new_packets()] == [HandoffStart]
    d.handler(Credit, credits=150)  # sent before it saw handoff-start
    d.feed(BODY[300:310])  # (read before the adapter stopped reading)
    assert d.new_packets() == []
    d.handler(HandoffProceed)
    record = d.session.export_record(d.now)
    assert record.flight.body == BodyAt(chunked=False, left=len(BODY) - 300, trailer=False,
                                        eom=False, pending=BODY[100:300], credits=150)
    assert record.leftover == BODY[300:310]
    d2 = move_proceeded(d)
    assert _body(d2.packets) == BODY[100:250]
    d2.handler(Credit, credits=len(BODY))
    d2.client(BODY[310:])
    assert _body(d.packets + d2.packets) == BODY
    assert d2.session.body.state is BodyState.DONE


def test_a_handler_not_yet_known_still_does_not_move():
    d = Driver()
    d.client(CL_WIRE[:len(CL_HEAD) + 10])
    s = d.session
    s.begin_handoff()
    d.pump()
    assert not s.movable and s.export_record(d.now) is None and s.handoff is Handoff.NONE


def test_given_up_while_moving_the_request_ends_with_cancel():
    d = Driver()
    _serve(d, CL_WIRE, len(CL_HEAD) + 100, 4096)
    d.session.begin_handoff()
    d.pump()
    d.new_packets()
    d.session.going_away(d.now)
    d.pump()
    assert [type(p) for p in d.new_packets()] == [Cancel] and d.closed


def _body_fields() -> dict:
    d = Driver()
    _serve(d, CL_WIRE, len(CL_HEAD) + 700, 500)
    d.session.begin_handoff(ask=False)
    d.pump()
    return records.to_fields(d.session.export_record(d.now))


def test_record_of_a_body_being_read():
    fields = _body_fields()
    assert {k: v for k, v in fields.items() if k.startswith("body_")} == {
        "body_chunked": 0, "body_left": len(BODY) - 700, "body_trailer": 0, "body_eom": 0,
        "body_pending": BODY[500:700], "body_credits": 0}
    assert fields["resp"] == 0 and fields["out_seq"] == 2 and fields["in_seq"] == 1


@pytest.mark.parametrize("change", [
    {"body_left": None}, {"body_chunked": 2}, {"body_left": -1}, {"body_credits": -1},
    {"body_eom": 1}, {"body_trailer": 1}, {"body_left": 0}, {"resp": 1, "chunked": 1},
    {"body_pending": b"x" * 30000}])
def test_bad_body_records_are_refused(change):
    fields = _body_fields()
    assert records.from_fields(fields).flight.body is not None
    refused_with(fields, change)


def test_body_keys_without_a_request_in_flight_are_refused():
    fields = records.to_fields(Driver().session.export_record(START_NOW))
    fields.update({k: v for k, v in _body_fields().items() if k.startswith("body_")})
    with pytest.raises(RecordError, match="without a request in flight"):
        records.from_fields(fields)


START_NOW = 1000.0


@pytest.mark.parametrize("name", ["http_inflight_stream", "http_inflight_body_read"])
def test_in_flight_records_of_earlier_condure_load_as_before(name):
    """Records of requests in flight written before bodies moved (a
    streamed response; a body read to its end) load without a body
    position and encode back to the same text."""
    record = records.decode(fixture_text(name))
    assert record.flight is not None and record.flight.body is None
    assert records.encode(record) == fixture_text(name)
