"""Export an HTTP session between requests, restore it, carry on."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from condure.session.snapshot import VERSION, SnapshotError, export_http, restore_http
from condure.zhttp import tnetstring
from condure.zhttp.packets import Data, Ident
from tests.unit.session_helpers import INSTANCE, Driver, EchoHandler, IdSource, transcript

FIRST = b"GET /one HTTP/1.1\r\nHost: e\r\n\r\n"
SECOND = b"POST /two HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\n\r\nhello"
THIRD = b"GET /three HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n"


def restored(d: Driver, h: EchoHandler, *, prefix: bytes = b"9-0-", **kw) -> tuple:
    """Export ``d``'s session and rebuild it in a new driver, as another
    process would (its own ids, its own clock)."""
    record = export_http(d.session, d.now)
    now = kw.pop("now", 50.0)
    session = restore_http(record, instance_id=INSTANCE, new_id=IdSource(prefix), now=now,
                           buffer_size=kw.pop("buffer_size", 8192),
                           stream_timeout=kw.pop("stream_timeout", 1800.0))
    d2 = Driver(session=session, now=now, **kw)
    d2.pump()
    return d2, EchoHandler(d2)


def served(data: bytes, **kw) -> tuple[Driver, EchoHandler]:
    d = Driver(**kw)
    h = EchoHandler(d)
    d.client(data)
    h.react()
    return d, h


def strip_rids(t: tuple) -> tuple:
    """A transcript with session ids replaced by their order of appearance."""
    requests, bodies, cancels, output, closes = t
    return ([p for _, p in requests], list(bodies.values()), len(cancels), output, closes)


def test_export_record_fields():
    d, _ = served(FIRST + b"GET /two HT", peer_address=b"10.0.0.1", peer_port=4321)
    assert d.session.resumable
    d.advance(7)
    record = export_http(d.session, d.now)
    assert record == {
        "v": VERSION, "kind": b"http", "scheme": b"http", "peer_address": b"10.0.0.1",
        "peer_port": 4321, "leftover": b"GET /two HT",
        "session_left": pytest.approx(53.0), "stream_left": pytest.approx(1793.0),
    }


def test_export_of_a_unix_socket_client():
    d = Driver(peer_address=None, peer_port=None, scheme=b"https")
    record = export_http(d.session, d.now)
    assert (record["peer_address"], record["peer_port"], record["scheme"]) == (b"", 0, b"https")
    assert record["leftover"] == b""


def test_restore_then_continue_equals_continue():
    d, h = served(FIRST + SECOND[:20])
    d2, h2 = restored(d, h)
    for driver, handler in ((d, h), (d2, h2)):
        driver.new_output()
        driver.client(SECOND[20:] + THIRD)
        handler.react()
    t1, t2 = transcript(d, h), transcript(d2, h2)
    # The original also served FIRST; compare what came after the export.
    assert strip_rids(t2)[0] == strip_rids(t1)[0][1:]
    assert strip_rids(t2)[1] == strip_rids(t1)[1][1:]
    assert d2.output == d.output[len(d.output) - len(d2.output):]
    assert d2.output.count(b"HTTP/1.1 200 OK") == 2
    assert [c.graceful for c in d2.closes] == [c.graceful for c in d.closes] == [True]
    # The restored session numbers from its own id source, seq from 0.
    assert d2.packets[0].ids == (Ident(b"9-0-0", 0),)


def test_restored_request_packet_matches_the_original():
    d, h = served(FIRST + b"GET /two HTTP/1.1\r\n", peer_address=b"10.0.0.1", peer_port=4321)
    d2, _ = restored(d, h)
    rest = b"Host: e\r\n\r\n"
    d.new_packets()
    d.client(rest)
    d2.client(rest)
    [p1], [p2] = d.new_packets(), d2.new_packets()
    assert p2 == Data(**{**_fields(p1), "ids": (Ident(b"9-0-0", 0),)})
    assert p2.peer_address == b"10.0.0.1" and p2.peer_port == 4321


def _fields(packet: Data) -> dict:
    return {name: getattr(packet, name) for name in Data.__slots__}


def test_restored_timers_keep_their_remaining_time():
    d = Driver()
    d.advance(40)
    d2, _ = restored(d, EchoHandler(d), now=500.0)
    assert d2.session.deadline == pytest.approx(520.0)
    d2.advance(19.9)
    assert not d2.closed
    d2.advance(0.1)
    assert d2.closed and d2.output == b""


def test_restore_with_unix_client_has_no_peer_fields():
    d = Driver(peer_address=None, peer_port=None)
    d2, _ = restored(d, EchoHandler(d))
    d2.client(FIRST)
    assert d2.packets[0].peer_address is None and d2.packets[0].peer_port is None


def test_record_survives_tnetstring():
    d, _ = served(FIRST + b"GET /two HT")
    record = export_http(d.session, d.now)
    decoded = tnetstring.loads(tnetstring.dumps(record))
    assert isinstance(decoded, dict)
    again = {k.decode(): v for k, v in decoded.items()}
    assert again == record
    session = restore_http(again, instance_id=INSTANCE, new_id=IdSource(), now=0.0,
                           buffer_size=8192, stream_timeout=1800.0)
    assert session.resumable


# -- refusals -----------------------------------------------------------------


def test_export_refuses_while_waiting_for_the_handler():
    d = Driver()
    d.client(FIRST)
    with pytest.raises(SnapshotError):
        export_http(d.session, d.now)


def test_export_refuses_during_a_response_and_a_body():
    d = Driver()
    d.client(SECOND[:-2])
    d.handler(Data, code=200, reason=b"OK", more=True)
    with pytest.raises(SnapshotError):
        export_http(d.session, d.now)


def test_export_refuses_with_actions_not_taken():
    d = Driver()
    d.session.receive_data(b"HELLO\r\n\r\n", d.now)  # a refusal is queued, not drained
    with pytest.raises(SnapshotError):
        export_http(d.session, d.now)


def test_export_refuses_a_closed_session():
    d = Driver()
    d.client(eof=True)
    with pytest.raises(SnapshotError):
        export_http(d.session, d.now)


def good_record() -> dict:
    return {"v": VERSION, "kind": b"http", "scheme": b"http", "peer_address": b"127.0.0.1",
            "peer_port": 80, "leftover": b"", "session_left": 60.0, "stream_left": 1800.0}


@pytest.mark.parametrize("change", [
    {"v": 2}, {"v": 0}, {"v": None}, {"kind": b"ws"}, {"kind": "http"},
    {"scheme": "http"}, {"peer_address": "127.0.0.1"}, {"peer_port": "80"},
    {"leftover": "GET"}, {"session_left": "soon"}, {"stream_left": None},
    {"session_left": b"x"},
], ids=repr)
def test_restore_rejects_bad_records(change):
    record = {**good_record(), **change}
    with pytest.raises(SnapshotError):
        restore_http(record, instance_id=INSTANCE, new_id=IdSource(), now=0.0,
                     buffer_size=8192, stream_timeout=1800.0)


@pytest.mark.parametrize("missing", sorted(set(good_record()) - {"v", "kind"}))
def test_restore_rejects_missing_fields(missing):
    record = good_record()
    del record[missing]
    with pytest.raises(SnapshotError):
        restore_http(record, instance_id=INSTANCE, new_id=IdSource(), now=0.0,
                     buffer_size=8192, stream_timeout=1800.0)


# -- snapshot at any resumable point ----------------------------------------------

STREAM = FIRST + SECOND + THIRD


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, len(STREAM) - 1), max_size=12, unique=True), st.data())
def test_snapshot_anywhere_resumable_changes_nothing(cuts, data):
    """Feed the stream in pieces; after one of them, if the session is
    resumable, move it to a new driver. The client sees the same bytes and
    the handlers the same requests as without the move."""
    cuts = sorted(cuts)
    bounds = [0, *cuts, len(STREAM)]
    move_after = data.draw(st.integers(0, len(bounds) - 2))
    plain = Driver()
    ph = EchoHandler(plain)
    d = Driver()
    h = EchoHandler(d)
    parts: list[tuple[Driver, EchoHandler]] = []
    for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
        for driver, handler in ((plain, ph), (d, h)):
            driver.client(STREAM[start:stop])
            handler.react()
        if i == move_after and d.session.resumable:
            event("moved")
            parts.append((d, h))
            d, h = restored(d, h)
    parts.append((d, h))
    output = b"".join(bytes(p.output) for p, _ in parts)
    requests = [strip_rids(transcript(p, q))[0] for p, q in parts]
    bodies = [strip_rids(transcript(p, q))[1] for p, q in parts]
    assert output == bytes(plain.output)
    assert [r for part in requests for r in part] == strip_rids(transcript(plain, ph))[0]
    assert [b for part in bodies for b in part] == strip_rids(transcript(plain, ph))[1]
    assert [c.graceful for c in d.closes] == [c.graceful for c in plain.closes]
