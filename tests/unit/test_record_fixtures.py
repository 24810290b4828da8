"""Records written by an earlier condure still load, and yield the same
sessions: the fixtures in tests/unit/fixtures/records were exported by the
code before the typed records (version 1, dict based), the ``req_*`` ones
by the first condure that moved req-mode connections, and
``expected.json`` holds what the sessions rebuilt from them then did when
driven by ``replay.py``. Reading is strict: no unknown or misspelled key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from condure.session import records
from condure.session.contract import Kind, Session, Settings
from condure.session.records import HttpRecord, RecordError, WsRecord
from condure.session.req_record import ReqRecord
from condure.session.resume import restore
from condure.session.ws_handshake import Deflate
from tests.unit.fixtures.records.replay import FIXTURES, replay
from tests.unit.session_helpers import IdSource

HERE = Path(__file__).parent / "fixtures" / "records"
EXPECTED = json.loads((HERE / "expected.json").read_text())
SETTINGS = Settings(buffer_size=8192, stream_timeout=1800.0, compression=True,
                    messages_max=100, body_buffer_size=100000, req_timeout=30.0)
KINDS = {"http": (HttpRecord, Kind.HTTP), "ws": (WsRecord, Kind.WEBSOCKET),
         "req": (ReqRecord, Kind.REQ)}


def text(name: str) -> str:
    return (HERE / f"{name}.txt").read_text().strip()


def rebuilt(name: str, now: float) -> Session:
    return restore(records.decode(text(name)), settings=SETTINGS, instance_id=b"condure.9",
                   new_id=IdSource(b"9-0-"), now=now)


@pytest.mark.parametrize("name", FIXTURES)
def test_a_previous_record_yields_the_same_session(name):
    assert replay(name, lambda now: rebuilt(name, now)) == EXPECTED[name]


@pytest.mark.parametrize("name", FIXTURES)
def test_a_previous_record_is_typed_and_round_trips(name):
    record_type, kind = KINDS[name.partition("_")[0]]
    record = records.decode(text(name))
    assert isinstance(record, record_type)
    assert record.version == 1
    assert records.decode(records.encode(record)) == record
    session = rebuilt(name, 0.0)
    assert session.kind is kind
    assert isinstance(session, Session)


def test_record_fields_of_the_fixtures():
    ws = records.decode(text("ws_pending"))
    assert isinstance(ws, WsRecord)
    assert (ws.rid, ws.origin, ws.handler, ws.pending, ws.msg_done, ws.msg_opcode) == (
        b"0-0-0", b"condure", b"handler1", b"def", True, 1)
    unix = records.decode(text("http_unix_https"))
    assert isinstance(unix, HttpRecord)
    assert (unix.peer_address, unix.peer_port, unix.scheme) == (None, None, b"https")
    req = records.decode(text("req_leftover"))
    assert isinstance(req, ReqRecord)
    assert (req.peer_address, req.peer_port, req.leftover, req.req_left) == (
        b"127.0.0.1", 52996, b"GET /two HTTP/1.1\r\nHo", 30.0)
    deflate = records.decode(text("ws_deflate_nct"))
    assert isinstance(deflate, WsRecord) and deflate.deflate is not None
    assert deflate.deflate.client_no_context_takeover


@pytest.mark.parametrize("deflate", Deflate.variants())
def test_every_negotiated_deflate_round_trips(deflate):
    # the four values earlier condure wrote (the fixture's among them), and
    # the same with server_max_window_bits=15 (RFC 7692 7.1.2.1)
    record = records.decode(text("ws_deflate_nct"))
    assert isinstance(record, WsRecord)
    moved = dataclasses.replace(record, deflate=deflate)
    assert records.decode(records.encode(moved)).deflate == deflate


def test_deflate_values_read_are_exactly_the_negotiated_ones():
    fields = records.unpack(records.base64.b64decode(text("ws_deflate_nct")))
    for deflate in Deflate.variants():
        record = records.from_fields({**fields, "deflate": deflate.header})
        assert isinstance(record, WsRecord) and record.deflate == deflate
    for bad in (b"permessage-deflate; server_max_window_bits=14", b"x-webkit-deflate-frame",
                b"permessage-deflate; server_max_window_bits=15; client_no_context_takeover"):
        with pytest.raises(RecordError, match="deflate"):
            records.from_fields({**fields, "deflate": bad})


@pytest.mark.parametrize("name", ["http_idle", "ws_plain", "req_idle"])
@pytest.mark.parametrize("change", ["extra", "misspelled"])
def test_unknown_or_misspelled_keys_are_refused(name, change):
    fields = records.unpack(records.base64.b64decode(text(name)))
    timer, misspelled = (("req_left", "req_lefft") if name.startswith("req")
                         else ("session_left", "sesion_left"))
    if change == "extra":
        fields["surprise"] = 1
    else:
        fields[misspelled] = fields.pop(timer)
    with pytest.raises(RecordError):
        records.from_fields(fields)


def test_records_are_frozen():
    record = records.decode(text("http_idle"))
    with pytest.raises(AttributeError):
        record.leftover = b"x"  # type: ignore[misc]
