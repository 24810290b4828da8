"""The session contract (condure/session/contract.py) and the transition
tables (condure/session/states.py): every kind answers the protocol, and
a move a table does not list is refused."""

from __future__ import annotations

import pytest

from condure.session.contract import Kind, Session
from condure.session.failure import Ended
from condure.session.req import ReqSession
from condure.session.states import (
    HTTP_TABLE,
    REQ_TABLE,
    WS_TABLE,
    Event,
    Phase,
    TransitionError,
    advance,
)
from condure.zhttp.packets import Data
from tests.unit.session_helpers import Driver, IdSource
from tests.unit.test_websocket_session import opened


def kinds() -> list[object]:
    req = ReqSession(instance_id=b"c", new_id=IdSource(), now=0.0)
    return [Driver().session, opened().session, req, Ended(req)]


def test_every_kind_is_a_session():
    sessions = kinds()
    assert [s.kind for s in sessions] == [Kind.HTTP, Kind.WEBSOCKET, Kind.REQ, Kind.ENDED]
    for s in sessions:
        assert isinstance(s, Session), s
    assert not isinstance(object(), Session)


def test_going_away_has_one_signature():
    for s in kinds():
        s.going_away(1.0, 1012)
        s.going_away(None)


@pytest.mark.parametrize("table", [HTTP_TABLE, REQ_TABLE, WS_TABLE])
def test_every_phase_of_a_table_can_close_and_closed_is_final(table):
    phases = {p for p, _ in table}
    for phase in phases:
        assert advance(table, phase, Event.CLOSE) is Phase.CLOSED
    for event in Event:
        with pytest.raises(TransitionError):
            advance(table, Phase.CLOSED, event)


def test_moves_off_the_table_are_refused():
    with pytest.raises(TransitionError, match="answered not allowed in HEAD"):
        advance(HTTP_TABLE, Phase.HEAD, Event.ANSWERED)
    with pytest.raises(TransitionError):
        advance(REQ_TABLE, Phase.WAIT, Event.ANSWERED)
    with pytest.raises(TransitionError):
        advance(WS_TABLE, Phase.OPEN, Event.ACCEPTED)


def test_a_request_cycle_follows_the_http_table():
    d = Driver()
    seen = [d.session.state]
    d.client(b"GET / HTTP/1.1\r\nHost: e\r\n\r\n")
    seen.append(d.session.state)
    d.handler(Data, code=200, reason=b"OK", more=True)
    seen.append(d.session.state)
    d.handler(Data, body=b"")
    seen.append(d.session.state)
    assert seen == [Phase.HEAD, Phase.WAIT, Phase.ACTIVE, Phase.HEAD]
