"""WebSocket session records as plain maps (see :mod:`condure.session.snapshot`
and, for the fields, :mod:`condure.session.records`).

A WebSocket session is exportable when no frame is half read or half
written and nothing is owed (``resumable``), or in a handover once the
handler answered ``handoff-proceed`` (``ready_to_export``; client payload
may then wait in ``pending``, and a client frame may be half read: its
parsing state travels in the ``frame_*`` fields). permessage-deflate with
the client's context takeover needs the inflater's history, which does not
travel, so such sessions never move; with ``client_no_context_takeover``
they do, outside compressed client messages (condure's compressor starts
afresh in the adopting process, mid-message too).
"""

from __future__ import annotations

from condure.session import records
from condure.session.contract import Settings
from condure.session.records import WsRecord
from condure.session.snapshot import SnapshotError
from condure.session.websocket import WebSocketSession

VERSION = records.VERSION


def export_ws(session: WebSocketSession, now: float) -> dict[str, object]:
    """The record map of ``session``; SnapshotError when it cannot move now."""
    obstacle = session.snapshot_obstacle()
    if obstacle is not None:
        raise SnapshotError(f"cannot export a WebSocket session: {obstacle}")
    record = session.export_record(now)
    if record is None:
        raise SnapshotError(f"not at a resumable point: {session!r}")
    return records.to_fields(record)


def restore_ws(record: dict[str, object], *, instance_id: bytes, now: float, buffer_size: int,
               stream_timeout: float, messages_max: int,
               max_message_size: int = 0) -> WebSocketSession:
    """The session a record map describes; call ``resume()`` next."""
    typed = records.from_fields(record)
    if not isinstance(typed, WsRecord):
        raise SnapshotError(f"not a WebSocket record: {typed.kind!r}")
    settings = Settings(buffer_size=buffer_size, stream_timeout=stream_timeout,
                        messages_max=messages_max, max_message_size=max_message_size)
    return WebSocketSession.from_record(typed, settings=settings, instance_id=instance_id,
                                        now=now)
