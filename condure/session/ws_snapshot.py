"""Export an open WebSocket session at a frame boundary and rebuild it.

A WebSocket session is exportable when no frame is half read or half
written: no partial frame is being parsed, no client payload waits for
credits, every byte written to the client was flushed (all credits are
back with the handler), no close frame went either way and the session
is not paused. A message may be under way in either direction (between
its frames). permessage-deflate with context takeover keeps a compressor
history that does not travel, so such sessions are never exportable; with
``client_no_context_takeover`` and ``server_no_context_takeover`` they are,
between messages. Whether the transport (TLS) can move is the adapter's
call, not the session's.

Record, version 1 (plain str keys; bytes and int values, floats for
timers as time remaining)::

    v             1
    kind          b"ws"
    scheme        b"http" | b"https" (of the listener)
    peer_address  bytes (b"" for Unix-socket clients)
    peer_port     int
    id            the session id (it does not change)
    handler       the handler's address (b"" when none is known)
    out_seq       next seq condure sends
    in_seq        next seq expected from the handler
    in_credits    bytes condure may still send the handler
    out_credits   bytes the handler may still send condure
    msg_opcode    1/2 while a client message is under way, else 0
    msg_size      bytes of that message so far (optional, default 0)
    utf8_partial  bytes of an unfinished UTF-8 sequence in that message
    out_type      1/2 while a handler message is under way, else 0
    out_framed    1 when that message's first frame was written
    deflate       b"" or the negotiated Sec-WebSocket-Extensions value
    leftover      client bytes read, not parsed yet (start at a frame)
    session_left  seconds until the session timeout
    stream_left   seconds until the stream timeout
    from          condure's ZHTTP address for this session (optional; it
                  never changes, so the adopting process keeps it)
    pending       client payload of the message under way not yet sent to
                  the handler for want of credits (optional)
    msg_done      1 when that message's last frame was read (optional)
    credits_owed  credits earned while moving, sent after the resume
                  (optional)

A session is exported either when ``resumable`` (nothing pending at all),
or in a handover once the handler answered ``handoff-proceed``
(``ready_to_export``): then client payload may wait in ``pending``.
"""

from __future__ import annotations

from condure.session.snapshot import SnapshotError
from condure.session.websocket import WebSocketSession
from condure.session.ws_handshake import Deflate
from condure.session.ws_input import OPEN, _utf8

VERSION = 1

_INTS = ("peer_port", "out_seq", "in_seq", "in_credits", "out_credits", "msg_opcode",
         "out_type", "out_framed")
_BYTES = ("scheme", "peer_address", "id", "handler", "utf8_partial", "deflate", "leftover")


def export_ws(session: WebSocketSession, now: float) -> dict[str, object]:
    obstacle = session.snapshot_obstacle()
    if obstacle is not None:
        raise SnapshotError(f"cannot export a WebSocket session: {obstacle}")
    if not (session.resumable or session.ready_to_export):
        raise SnapshotError(f"not at a frame boundary: {session!r}")
    partial = session.utf8.getstate()[0] if session.utf8 is not None else b""
    return {
        "v": VERSION,
        "kind": b"ws",
        "scheme": session.scheme,
        "peer_address": session.peer_address or b"",
        "peer_port": session.peer_port or 0,
        "id": session.rid,
        "handler": session.handler or b"",
        "out_seq": session.out_seq,
        "in_seq": session.in_seq,
        "in_credits": session.in_credits,
        "out_credits": session.out_credits,
        "msg_opcode": session.msg_opcode,
        "msg_size": session.msg_size,
        "utf8_partial": partial,
        "out_type": session.out_type,
        "out_framed": int(session.out_framed),
        "deflate": session.deflate.header if session.deflate else b"",
        "leftover": bytes(session.inbuf),
        "session_left": max(session.session_deadline - now, 0.0),
        "stream_left": max(session.stream_deadline - now, 0.0),
        "from": session.instance_id,
        "pending": bytes(session.pending),
        "msg_done": int(session.msg_done),
        "credits_owed": session.credits_owed,
    }


def _deflate(value: bytes) -> Deflate | None:
    if not value:
        return None
    for candidate in (Deflate(a, b) for a in (False, True) for b in (False, True)):
        if candidate.header == value:
            return candidate
    raise SnapshotError(f"unknown deflate parameters {value!r}")


def restore_ws(record: dict[str, object], *, instance_id: bytes, now: float, buffer_size: int,
               stream_timeout: float, messages_max: int,
               max_message_size: int = 0) -> WebSocketSession:
    """Rebuild an exported session. Nothing is sent yet: ``resume()`` tells
    the handler the session is back, then goes on with the leftover bytes."""
    if record.get("v") != VERSION or record.get("kind") != b"ws":
        raise SnapshotError(f"unknown record version or kind: {record.get('v')!r} "
                            f"{record.get('kind')!r}")
    try:
        ints = {k: record[k] for k in _INTS}
        raw = {k: record[k] for k in _BYTES}
        session_left = float(record["session_left"])  # type: ignore[arg-type]
        stream_left = float(record["stream_left"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"incomplete record: {e}") from None
    if not all(type(v) is int for v in ints.values()) or \
            not all(isinstance(v, bytes) for v in raw.values()):
        raise SnapshotError("record field of the wrong type")
    if ints["msg_opcode"] not in (0, 1, 2) or ints["out_type"] not in (0, 1, 2):
        raise SnapshotError("bad message state in record")
    address = raw["peer_address"]
    origin = record.get("from", instance_id)
    pending = record.get("pending", b"")
    msg_done = record.get("msg_done", 0)
    if not isinstance(origin, bytes) or not origin or not isinstance(pending, bytes) \
            or msg_done not in (0, 1):
        raise SnapshotError("bad from, pending or msg_done in record")
    if (pending or msg_done) and not ints["msg_opcode"]:
        raise SnapshotError("pending payload without a message under way")
    session = WebSocketSession(
        instance_id=origin, rid=raw["id"], key=b"", deflate=_deflate(raw["deflate"]),
        buffer_size=buffer_size, stream_timeout=stream_timeout, messages_max=messages_max,
        max_message_size=max_message_size,
        scheme=raw["scheme"], peer_address=address or None,
        peer_port=ints["peer_port"] if address else None,
        session_deadline=now + session_left, stream_deadline=now + stream_left,
        leftover=raw["leftover"])
    session.state = OPEN
    session.adopted = True
    session.handler = raw["handler"] or None
    session.out_seq = ints["out_seq"]
    session.in_seq = ints["in_seq"]
    session.in_credits = ints["in_credits"]
    session.out_credits = ints["out_credits"]
    session.msg_opcode = ints["msg_opcode"]
    msg_size = record.get("msg_size", 0)
    if not isinstance(msg_size, int) or isinstance(msg_size, bool) or msg_size < 0:
        raise SnapshotError("bad msg_size in record")
    session.msg_size = msg_size
    if session.msg_opcode == 1:
        session.utf8 = _utf8()
        try:
            session.utf8.decode(raw["utf8_partial"])
        except UnicodeDecodeError:
            raise SnapshotError("bad utf8_partial in record") from None
    owed = record.get("credits_owed", 0)
    if type(owed) is not int or owed < 0:
        raise SnapshotError("bad credits_owed in record")
    session.credits_owed = owed
    session.pending += pending
    session.msg_done = bool(msg_done)
    session.out_type = ints["out_type"]
    session.out_framed = bool(ints["out_framed"])
    return session
