"""Rebuild a session from its record, whatever its kind (handover); and the
one place that states every session kind is a :class:`Session`."""

from __future__ import annotations

from collections.abc import Callable

from condure.session.contract import Session, Settings
from condure.session.failure import Ended
from condure.session.http import HttpSession
from condure.session.records import HttpRecord, Record, WsRecord
from condure.session.req import ReqSession
from condure.session.req_record import ReqRecord
from condure.session.websocket import WebSocketSession


def restore(record: Record, *, settings: Settings, instance_id: bytes,
            new_id: Callable[[], bytes], now: float) -> Session:
    """The session ``record`` describes, in a process whose address is
    ``instance_id`` and whose ids come from ``new_id``. Call ``resume()``
    once the adapter is in place."""
    if isinstance(record, WsRecord):
        return WebSocketSession.from_record(record, settings=settings,
                                            instance_id=instance_id, now=now)
    if isinstance(record, ReqRecord):
        return ReqSession.from_record(record, settings=settings, instance_id=instance_id,
                                      new_id=new_id, now=now)
    assert isinstance(record, HttpRecord)
    return HttpSession.from_record(record, settings=settings, instance_id=instance_id,
                                   new_id=new_id, now=now)


def _every_kind_is_a_session(http: HttpSession, ws: WebSocketSession, req: ReqSession,
                             ended: Ended) -> list[Session]:
    """Never called: mypy checks here that every session kind implements
    the contract (condure/session/contract.py)."""
    return [http, ws, req, ended]
