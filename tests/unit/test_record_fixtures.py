"""Records written by an earlier condure still load, and yield the same
sessions: the fixtures in tests/unit/fixtures/records were exported by the
code before the typed records (version 1, dict based), and
``expected.json`` holds what the sessions rebuilt from them then did when
driven by ``replay.py``. Reading is strict: no unknown or misspelled key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from condure.session import records
from condure.session.contract import Kind, Session, Settings
from condure.session.records import HttpRecord, RecordError, WsRecord
from condure.session.resume import restore
from tests.unit.fixtures.records.replay import FIXTURES, replay
from tests.unit.session_helpers import IdSource

HERE = Path(__file__).parent / "fixtures" / "records"
EXPECTED = json.loads((HERE / "expected.json").read_text())
SETTINGS = Settings(buffer_size=8192, stream_timeout=1800.0, compression=True,
                    messages_max=100)


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
    record = records.decode(text(name))
    assert isinstance(record, HttpRecord if name.startswith("http") else WsRecord)
    assert record.version == 1
    assert records.decode(records.encode(record)) == record
    session = rebuilt(name, 0.0)
    assert session.kind is (Kind.HTTP if name.startswith("http") else Kind.WEBSOCKET)
    assert isinstance(session, Session)


def test_record_fields_of_the_fixtures():
    ws = records.decode(text("ws_pending"))
    assert isinstance(ws, WsRecord)
    assert (ws.rid, ws.origin, ws.handler, ws.pending, ws.msg_done, ws.msg_opcode) == (
        b"0-0-0", b"condure", b"handler1", b"def", True, 1)
    unix = records.decode(text("http_unix_https"))
    assert isinstance(unix, HttpRecord)
    assert (unix.peer_address, unix.peer_port, unix.scheme) == (None, None, b"https")
    deflate = records.decode(text("ws_deflate_nct"))
    assert isinstance(deflate, WsRecord) and deflate.deflate is not None
    assert deflate.deflate.client_no_context_takeover


@pytest.mark.parametrize("name", ["http_idle", "ws_plain"])
@pytest.mark.parametrize("change", ["extra", "misspelled"])
def test_unknown_or_misspelled_keys_are_refused(name, change):
    fields = records.unpack(records.base64.b64decode(text(name)))
    if change == "extra":
        fields["surprise"] = 1
    else:
        fields["sesion_left"] = fields.pop("session_left")
    with pytest.raises(RecordError):
        records.from_fields(fields)


def test_records_are_frozen():
    record = records.decode(text("http_idle"))
    with pytest.raises(AttributeError):
        record.leftover = b"x"  # type: ignore[misc]
