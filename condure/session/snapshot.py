"""Session records as plain maps: the version 1 wire fields of
:mod:`condure.session.records`, for tests and tools that look inside a
record. Handover itself uses the typed records (``export_record``,
``from_record``, ``records.encode``/``decode``)."""

from __future__ import annotations

from collections.abc import Callable

from condure.session import records
from condure.session.contract import Settings
from condure.session.http import HttpSession
from condure.session.records import VERSION, HttpRecord, RecordError, pack, unpack

__all__ = ["VERSION", "SnapshotError", "export_http", "pack", "restore_http", "unpack"]

SnapshotError = RecordError


def export_http(session: HttpSession, now: float) -> dict[str, object]:
    """The record map of ``session``; SnapshotError when it cannot move now."""
    record = session.export_record(now)
    if record is None:
        raise SnapshotError(f"not at a resumable point: {session!r}")
    return records.to_fields(record)


def restore_http(
    record: dict[str, object],
    *,
    instance_id: bytes,
    new_id: Callable[[], bytes],
    now: float,
    buffer_size: int,
    stream_timeout: float,
    compression: bool = False,
    messages_max: int = 100,
    max_message_size: int = 0,
) -> HttpSession:
    """The session a record map describes (see :func:`records.from_fields`)."""
    typed = records.from_fields(record)
    if not isinstance(typed, HttpRecord):
        raise SnapshotError(f"not an HTTP record: {typed.kind!r}")
    settings = Settings(buffer_size=buffer_size, stream_timeout=stream_timeout,
                        compression=compression, messages_max=messages_max,
                        max_message_size=max_message_size)
    return HttpSession.from_record(typed, settings=settings, instance_id=instance_id,
                                   new_id=new_id, now=now)
