"""Handover, whole moves: HTTP connections leave between requests (a
request under way that cannot move finishes, the next one waits for the
adopting process; requests moved in flight are in test_handoff_inflight.py);
a WebSocket that moved behaves exactly as one that stayed; malformed
records are refused (docs/handover.md). The WebSocket session's handoff
step by step is in test_handoff_session.py."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from condure.session import snapshot
from condure.session.snapshot import SnapshotError, export_http, restore_http
from condure.session.states import HEAD
from condure.session.websocket import WebSocketSession
from condure.session.ws_snapshot import export_ws, restore_ws
from condure.zhttp import tnetstring
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
from tests.unit.session_helpers import (
    INSTANCE,
    Driver,
    EchoHandler,
    IdSource,
    decode_record,
    encode_record,
)
from tests.unit.test_handoff_session import adopt as adopt_ws
from tests.unit.test_handoff_session import seqs
from tests.unit.test_websocket_session import WsDriver, cframe, opened

FIRST = b"GET /one HTTP/1.1\r\nHost: e\r\n\r\n"
POST = b"POST /two HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\n\r\nhello"
NEXT = b"GET /three HTTP/1.1\r\nHost: e\r\n\r\n"
OTHER = b"condure.7"


def requests(packets) -> list[bytes]:
    return [p.uri for p in packets if isinstance(p, Data) and p.method is not None]


def adopt(d: Driver) -> tuple[Driver, EchoHandler]:
    """Export between requests, rebuild as another process would (its own
    ids and clock); unread client bytes move with the socket."""
    record = decode_record(encode_record(export_http(d.session, d.now)))
    session = restore_http(record, instance_id=OTHER, new_id=IdSource(b"9-0-"), now=5.0,
                           buffer_size=8192, stream_timeout=1800.0)
    d2 = Driver(session=session, now=5.0)
    d2.inbound = bytearray(d.inbound)
    d.inbound.clear()
    d2.pump()
    return d2, EchoHandler(d2)


@pytest.mark.parametrize("served", [0, 1])
def test_idle_connection_stops_reading_and_is_resumable(served):
    d = Driver()
    h = EchoHandler(d)
    if served:
        d.client(FIRST)
        h.react()
        assert d.new_output().startswith(b"HTTP/1.1 200 OK")
    d.new_sends()
    assert d.session.wants_read and d.session.resumable
    assert d.session.begin_handoff() is True
    assert not d.session.wants_read and d.session.resumable
    d.client(NEXT)  # stays in the kernel
    assert not d.new_sends() and bytes(d.inbound) == NEXT and not d.closed
    d2, h2 = adopt(d)
    h2.react()
    assert requests(d2.packets) == [b"http://e/three"]
    assert d2.packets[0].ids == (Ident(b"9-0-0", 0),) and d2.packets[0].from_ == OTHER
    assert d2.new_output().endswith(b"http://e/three 0") and not d2.closed


def test_request_in_flight_finishes_and_the_pipelined_one_waits():
    d = Driver()
    h = EchoHandler(d)
    d.client(POST + NEXT)  # one read: the next request is already buffered
    assert requests(d.new_packets()) == [b"http://e/two"]
    assert d.session.begin_handoff() is True
    assert not d.session.resumable
    h.react()  # credits, body, response
    assert b"http://e/two 5" in d.new_output()
    assert requests(d.new_packets()) == []  # the next request is not started
    s = d.session
    assert s.state is HEAD and s.resumable and not s.wants_read and not d.closed
    record = export_http(s, d.now)
    assert record["leftover"] == NEXT
    d2, h2 = adopt(d)
    [packet] = d2.new_packets()
    assert (packet.uri, packet.ids, packet.from_) == (
        b"http://e/three", (Ident(b"9-0-0", 0),), OTHER)
    h2.react()
    assert d2.new_output().startswith(b"HTTP/1.1 200 OK") and not d2.closed


def test_streamed_response_keeps_its_credits_while_held():
    """A response that starts streaming while the handover holds the
    connection is a request in flight at a resumable point: it asks its
    handler (test_handoff_inflight.py) and keeps the credits it earns; if
    the handler ends the response first, the connection moves between
    requests."""
    d = Driver()
    d.client(FIRST + NEXT[:10])
    d.new_sends()
    assert d.session.begin_handoff()
    d.respond(200, b"OK", headers=((b"Content-Length", b"6"),), body=b"abc", more=True)
    d.flush()
    assert [type(p) for p in d.new_packets()] == [HandoffStart]
    assert d.session.credits_owed == 3 and not d.session.resumable
    d.handler(Data, body=b"def")
    assert d.new_output().endswith(b"abcdef") and b"close" not in d.output.lower()
    assert d.session.resumable and not requests(d.new_packets())
    d2, h2 = adopt(d)
    assert not d2.new_packets()  # half a request head: waits for the rest
    d2.client(NEXT[10:])
    h2.react()
    assert requests(d2.packets) == [b"http://e/three"] and b"three 0" in d2.output


# -- a moved session behaves as one that stayed ---------------------------------------

_messages_st = st.lists(st.tuples(
    st.sampled_from([1, 2, 9]),  # text, binary, ping
    st.binary(max_size=100),
    st.integers(0, 2),  # continuation frames
), min_size=1, max_size=6)
_handler_steps = st.lists(st.one_of(
    st.tuples(st.just("data"), st.binary(max_size=20), st.booleans()),
    st.tuples(st.just("ping"), st.binary(max_size=10)),
    st.tuples(st.just("credit"), st.integers(1, 40)),
    st.just(("flush",)),
    st.just(("client",)), st.just(("client",)), st.just(("client",)),  # (more often)
), max_size=16)


def _client_stream(messages) -> bytes:
    out = b""
    for opcode, payload, conts in messages:
        if opcode == 1:
            payload = bytes(b & 0x7F for b in payload)  # ASCII: valid UTF-8 anywhere cut
        if opcode == 9:
            out += cframe(9, payload[:10])
            continue
        cut = [len(payload) * i // (conts + 1) for i in range(conts + 2)]
        for i in range(conts + 1):
            out += cframe(opcode if i == 0 else 0, payload[cut[i]:cut[i + 1]], fin=i == conts)
    return out


def _step(d: WsDriver, step) -> None:
    kind = step[0]
    if kind == "data":
        d.handler(Data, body=step[1], more=step[2], content_type=b"binary")
    elif kind == "ping":
        d.handler(Ping, body=step[1])
    elif kind == "credit":
        d.handler(Credit, credits=step[1])
    else:
        assert kind == "flush"
        d.flush()


def _seen(drivers) -> tuple[list, int]:
    """Client messages (joined) and control packets in order; credits granted."""
    out, cur, credits = [], None, 0
    for p in [p for d in drivers for p in d.packets][1:]:
        if isinstance(p, Data):
            assert p.body or not p.more  # no empty packet inside a message
            cur = (cur or b"") + p.body
            if not p.more:
                out.append((p.content_type, cur))
                cur = None
        elif isinstance(p, Credit):
            credits += p.credits
        elif not isinstance(p, (HandoffStart, HandoffProceed, KeepAlive)):
            out.append((type(p).__name__, p.body))
    return out, credits


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages_st, st.data())
def test_moved_session_equals_one_that_stayed(messages, data):
    stream = _client_stream(messages)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    steps = data.draw(_handler_steps)
    credits = data.draw(st.sampled_from([4, 1 << 20]))
    after_client = [i + 1 for i, step in enumerate(steps) if step == ("client",)]
    if after_client and data.draw(st.booleans()):  # likely inside a frame
        start = data.draw(st.sampled_from(after_client))
    else:
        start = data.draw(st.integers(0, len(steps)))
    proceed_after = data.draw(st.integers(0, 2))  # handler packets already on their way
    export_from = data.draw(st.integers(start, len(steps)))

    plain = opened(credits=credits)
    d = opened(credits=credits)
    drivers = [d]
    phase, held = "open", []

    def move():
        nonlocal d, phase
        session = d.session
        event(f"pending {bool(session.input.pending)}, leftover {bool(session.input.inbuf)}, "
              f"credits owed {bool(session.credits_owed)}")
        d = adopt_ws(d)
        drivers.append(d)
        phase = "open"
        for step in held:
            _step(d, step)

    for i, step in enumerate([*steps, None]):
        if i == start:
            assert d.session.begin_handoff()
            d.drain()
            event(f"handoff with a frame half read: {d.session.input.frame is not None}")
            phase = "asked"
        if phase == "asked" and (proceed_after == 0 or step is None):
            d.handler(HandoffProceed)
            phase = "held"
        if step is None:
            break
        if step[0] == "client":
            chunk = chunks.pop(0) if chunks else b""
            plain.client(chunk)
            d.client(chunk)
        else:
            _step(plain, step)
            if phase == "held":
                held.append(step)
            else:
                _step(d, step)
                proceed_after -= phase == "asked"
        if phase == "held" and i >= export_from and d.session.ready_to_export:
            event("moved mid-script")
            move()
    for chunk in chunks:
        plain.client(chunk)
        d.client(chunk)
    if phase == "held":
        d.flush()
        assert d.session.ready_to_export
        move()
    for driver in (plain, d):
        driver.handler(Credit, credits=1 << 20)
        driver.flush()

    assert len(drivers) == 2 and not plain.closed and not d.closed
    assert type(drivers[0].packets[-1]) is HandoffStart  # then silence until the resume
    assert b"".join(bytes(x.output) for x in drivers) == bytes(plain.output)
    assert _seen(drivers) == _seen([plain])
    sent = [p for x in drivers for p in x.packets]
    assert seqs(sent) == list(range(len(sent)))
    assert all(p.from_ == INSTANCE for p in sent)
    assert not any(isinstance(p, Cancel) for p in sent)


# -- records: what an adopting process refuses ---------------------------------------


def _moving_record() -> dict:
    d = opened(credits=3)
    d.client(cframe(1, b"abcdef"))
    assert d.session.begin_handoff()
    d.drain()
    d.handler(HandoffProceed)
    return export_ws(d.session, d.now)


def _restore(record: dict) -> WebSocketSession:
    return restore_ws(record, instance_id=OTHER, now=0.0, buffer_size=8192,
                      stream_timeout=1800.0, messages_max=100)


@pytest.mark.parametrize("change", [
    {"from": "condure"}, {"from": b""}, {"from": 7}, {"from": None}, {"from": [b"c"]},
    {"pending": "def"}, {"pending": 3}, {"pending": None},
    {"msg_done": 2}, {"msg_done": b"1"}, {"msg_done": -1}, {"msg_done": None},
    {"credits_owed": -1}, {"credits_owed": b"3"}, {"credits_owed": 1.5},
    {"credits_owed": True}, {"credits_owed": None},
    {"msg_opcode": 0},  # pending and msg_done without a message under way
    {"msg_opcode": 0, "msg_done": 0},  # pending alone
    {"msg_opcode": 0, "pending": b""},  # msg_done alone
], ids=repr)
def test_restore_rejects_bad_handover_fields(change):
    record = _moving_record()
    assert _restore(record).input.pending == b"def"  # the record itself is good
    with pytest.raises(SnapshotError):
        _restore({**record, **change})


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 1 << 70) | st.floats() | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=3), max_leaves=4)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_moving_record())), _values)
def test_restore_of_any_altered_field_is_a_session_or_snapshot_error(key, value):
    try:
        session = _restore({**_moving_record(), key: value})
    except SnapshotError:
        return
    session.resume()
    session.take_actions()


def test_encode_decode_record_round_trip():
    record = _moving_record()
    text = encode_record(record)
    assert isinstance(text, str) and text.isascii()
    assert decode_record(text) == record


@pytest.mark.parametrize("text", [
    b"NTpoZWxsbyw=",  # bytes, not str
    None,
    "not base64!",
    "abc",  # bad padding
    base64.b64encode(b"hello").decode(),  # not a tnetstring
    base64.b64encode(b"5:hello,trailing").decode(),
    base64.b64encode(b"5:hello,").decode(),  # a string, not a map
    base64.b64encode(tnetstring.dumps([b"v", 1])).decode(),
], ids=repr)
def test_decode_record_refuses_what_is_not_a_record(text):
    with pytest.raises(SnapshotError):
        decode_record(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.binary(max_size=60).map(
    lambda b: base64.b64encode(b).decode())))
def test_decode_record_gives_a_map_or_snapshot_error(text):
    try:
        record = decode_record(text)
    except SnapshotError:
        return
    assert isinstance(record, dict) and all(isinstance(k, str) for k in record)


def test_unpack_refuses_non_maps_directly():
    with pytest.raises(SnapshotError):
        snapshot.unpack(tnetstring.dumps(5))
    with pytest.raises(SnapshotError):
        snapshot.unpack(b"3:abc")
