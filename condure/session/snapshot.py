"""Export a session at a resumable point and rebuild it elsewhere.

A resumable HTTP connection sits between requests: no request is being
served, nothing is owed to a handler or the client. It is described by a
small plain record (str keys; bytes, int and float values: tnetstring can
carry it as is) plus the connection's file descriptor, which travels
separately. Timers are stored as time remaining, so the record does not
depend on the exporting process's clock.

Record, version 1::

    v                 1
    kind              b"http"
    scheme            b"http" | b"https"
    peer_address      bytes (b"" for Unix-socket clients)
    peer_port         int (0 for Unix-socket clients)
    leftover          bytes read from the client but not yet parsed
    session_left      seconds until the session timeout
    stream_left       seconds until the stream timeout
"""

from __future__ import annotations

from collections.abc import Callable

from condure.session.http import HttpSession
from condure.zhttp import tnetstring

VERSION = 1


class SnapshotError(Exception):
    """The session cannot be exported now, or a record cannot be restored."""


def export_http(session: HttpSession, now: float) -> dict[str, object]:
    if not session.resumable:
        raise SnapshotError(f"not at a resumable point: {session!r}")
    leftover = session._leftover()
    return {
        "v": VERSION,
        "kind": b"http",
        "scheme": session.scheme,
        "peer_address": session.peer_address or b"",
        "peer_port": session.peer_port or 0,
        "leftover": bytes(leftover),
        "session_left": max(session.session_deadline - now, 0.0),
        "stream_left": max(session.stream_deadline - now, 0.0),
    }


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
    if record.get("v") != VERSION or record.get("kind") != b"http":
        raise SnapshotError(f"unknown record version or kind: {record.get('v')!r} "
                            f"{record.get('kind')!r}")
    try:
        scheme = record["scheme"]
        address = record["peer_address"]
        port = record["peer_port"]
        leftover = record["leftover"]
        session_left = float(record["session_left"])  # type: ignore[arg-type]
        stream_left = float(record["stream_left"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"incomplete record: {e}") from None
    if not (isinstance(scheme, bytes) and isinstance(address, bytes)
            and isinstance(port, int) and isinstance(leftover, bytes)):
        raise SnapshotError("record field of the wrong type")
    session = HttpSession(
        instance_id=instance_id,
        new_id=new_id,
        now=now,
        buffer_size=buffer_size,
        stream_timeout=stream_timeout,
        scheme=scheme,
        peer_address=address or None,
        peer_port=port if address else None,
        compression=compression,
        messages_max=messages_max,
        max_message_size=max_message_size,
    )
    session.session_deadline = now + session_left
    session.stream_deadline = now + stream_left
    if leftover:
        session.receive_data(leftover, now)
    return session


def pack(record: dict[str, object]) -> bytes:
    """A record as bytes (a tnetstring map), to travel between processes."""
    return tnetstring.dumps({key.encode(): value for key, value in record.items()})


def unpack(data: bytes) -> dict[str, object]:
    """The record :func:`pack` made; SnapshotError for anything else."""
    try:
        value = tnetstring.loads(data)
    except tnetstring.TnetstringError as e:
        raise SnapshotError(f"unreadable record: {e}") from None
    if not isinstance(value, dict):
        raise SnapshotError("record is not a map")
    return {key.decode("ascii", "replace"): item for key, item in value.items()}
