"""Snapshot records: a session at a resumable point, as data.

A session that moves to another process (docs/handover.md) travels as its
socket plus one of these records. They are typed, frozen and versioned;
:func:`encode` and :func:`decode` are the one way to turn them into text
and back, used by reload and restart alike. On the wire a record is a
tnetstring map (plain str keys; bytes, int and float values) in base64,
so it fits in the JSON control messages. Timers are stored as time
remaining, so a record does not depend on the exporting process's clock.

Reading is strict: a key the version does not know, a missing key that
version requires, or a value of the wrong type is a :class:`RecordError`,
never a silent default. Keys that version 1 made optional (a WebSocket's
``msg_size``, ``from``, ``pending``, ``msg_done``, ``credits_owed``, the
``frame_*`` keys) keep their version 1 defaults, so records written by
earlier condure still load (tests/unit/fixtures/records).

HTTP record, version 1::

    v, kind           1, b"http"
    scheme            b"http" | b"https"
    peer_address      bytes (b"" for Unix-socket clients)
    peer_port         int (0 for Unix-socket clients)
    leftover          bytes read from the client but not yet parsed
    session_left      seconds until the session timeout
    stream_left       seconds until the stream timeout
    head_left         seconds left for the request head (--head-timeout), when
                      one is due: a connection that has sent no request yet,
                      or part of one (optional: none due)

A request in flight (a held long-poll, a streamed response) adds these,
all of them or none (written only for such a request, so records between
requests stay what earlier condure wrote and reads; an earlier condure
refuses a record that has them, as it does any unknown key, so a downgrade
across a restart loses such a connection)::

    id             the request's session id (it does not change)
    from           condure's ZHTTP address for that request
    handler        the handler's address
    out_seq        next seq condure sends
    in_seq         next seq expected from the handler
    credits_owed   credits earned while moving, sent after the resume
    resp           0: no byte of the response written yet, 1: its head was
    resp_credits   bytes the handler may still send
    http11, is_head, head_ends, keep_alive
                   the request's facts the response's framing depends on (0/1)
    chunked, close_delimited, discard_body
                   the response's framing once its head was written (0/1)
    owed           body bytes its Content-Length still promises (-1: none)

A request whose body is still being read adds the ``body_*`` keys of
:mod:`condure.session.body_record` (all or none, only with the keys above
and ``resp`` 0; likewise written only then).

WebSocket record, version 1: the HTTP fields but ``leftover`` (client bytes
read, not parsed yet: starting at a frame, or inside the payload of the
client frame under way when ``frame_left`` is not 0), and::

    v, kind       1, b"ws"
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
    out_utf8      the unfinished UTF-8 sequence that ends the part of that
                  message written so far, when it is a text message in
                  several packets (optional: written only then, so other
                  records stay what earlier condure wrote and reads; without
                  it the rest of that message goes unchecked, as earlier
                  condure checked none)
    deflate       b"" or the negotiated Sec-WebSocket-Extensions value (one of
                  those ws_handshake.Deflate.variants() write)
    from          condure's ZHTTP address for this session (optional: the
                  adopting process's own)
    pending       client payload of the message under way not yet sent to
                  the handler for want of credits (optional)
    msg_done      1 when that message's last frame was read (optional)
    credits_owed  credits earned while moving, sent after the resume
                  (optional)
    frame_left    payload bytes of the client frame under way still to come
                  (its header was read; optional, default 0: no frame under
                  way). Only written when not 0, and only for a message that
                  is not compressed.
    frame_offset  payload bytes of that frame read so far (optional)
    frame_mask    its 4-byte masking key (optional; b"" without a frame)
    frame_fin     1 when that frame ends its message (optional)

Req record, version 1: an idle req-mode connection, its keys in
:mod:`condure.session.req_record` (kind ``b"req"``).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

from condure.session import body_record, req_record, utf8
from condure.session.body_record import BodyAt
from condure.session.req_record import ReqRecord
from condure.session.ws_handshake import Deflate
from condure.zhttp import tnetstring

VERSION = 1


class RecordError(Exception):
    """A record cannot be written now, or read."""


@dataclass(frozen=True, slots=True)
class InFlight:
    """The request in flight of an HTTP connection that moves (see the
    module docstring): its ZHTTP session and its response's framing."""

    rid: bytes
    origin: bytes  # ``from``
    handler: bytes
    out_seq: int
    in_seq: int
    credits_owed: int
    streaming: bool  # the response's head was written
    resp_credits: int
    http11: bool
    is_head: bool
    head_ends: bool
    keep_alive: bool
    chunked: bool
    close_delimited: bool
    discard_body: bool
    owed: int  # -1: no Content-Length of the handler's frames the body
    body: BodyAt | None = None  # the request body still being read


@dataclass(frozen=True, slots=True)
class HttpRecord:
    """A stream-mode HTTP connection between requests, or with a request
    in flight (``flight``)."""

    kind: ClassVar[bytes] = b"http"
    scheme: bytes
    peer_address: bytes | None
    peer_port: int | None
    leftover: bytes
    session_left: float
    stream_left: float
    head_left: float | None = None  # None: no request head is due
    flight: InFlight | None = None  # None: between requests
    version: int = VERSION

    @property
    def keeps_id(self) -> bool:
        """The handler goes on with the same id (a request in flight); else
        a new id comes with the next request."""
        return self.flight is not None


@dataclass(frozen=True, slots=True)
class WsRecord:
    """An open WebSocket session (at a frame boundary, or in the middle of
    an uncompressed client frame: ``frame_left``)."""

    kind: ClassVar[bytes] = b"ws"
    keeps_id: ClassVar[bool] = True  # the handler goes on with the same id
    scheme: bytes
    peer_address: bytes | None
    peer_port: int | None
    leftover: bytes
    session_left: float
    stream_left: float
    rid: bytes
    origin: bytes | None  # ``from``; None: the adopting process's own
    handler: bytes | None
    out_seq: int
    in_seq: int
    in_credits: int
    out_credits: int
    msg_opcode: int
    msg_size: int
    utf8_partial: bytes
    out_type: int
    out_framed: bool
    deflate: Deflate | None
    pending: bytes
    msg_done: bool
    credits_owed: int
    # The client frame under way (frame_left 0: none, leftover starts at a frame).
    frame_left: int = 0
    frame_offset: int = 0
    frame_mask: bytes = b""
    frame_fin: bool = False
    out_utf8: bytes | None = None  # None: the handler's message is not checked
    version: int = VERSION


Record = HttpRecord | WsRecord | ReqRecord

# -- version 1 keys: name -> (type, required) ----------------------------------

_COMMON = {"v": int, "kind": bytes, "scheme": bytes, "peer_address": bytes, "peer_port": int,
           "leftover": bytes, "session_left": float, "stream_left": float}
_WS_REQUIRED = {"id": bytes, "handler": bytes, "out_seq": int, "in_seq": int,
                "in_credits": int, "out_credits": int, "msg_opcode": int,
                "utf8_partial": bytes, "out_type": int, "out_framed": int, "deflate": bytes}
_WS_OPTIONAL: dict[str, tuple[type, object]] = {
    "msg_size": (int, 0), "from": (bytes, None), "pending": (bytes, b""), "msg_done": (int, 0),
    "credits_owed": (int, 0), "frame_left": (int, 0), "frame_offset": (int, 0),
    "frame_mask": (bytes, b""), "frame_fin": (int, 0), "out_utf8": (bytes, None)}
_FLIGHT = {"id": bytes, "from": bytes, "handler": bytes, "out_seq": int, "in_seq": int,
           "credits_owed": int, "resp": int, "resp_credits": int, "http11": int,
           "is_head": int, "head_ends": int, "keep_alive": int, "chunked": int,
           "close_delimited": int, "discard_body": int, "owed": int}
_FLIGHT_FLAGS = ("resp", "http11", "is_head", "head_ends", "keep_alive", "chunked",
                 "close_delimited", "discard_body")
_HTTP_OPTIONAL: dict[str, tuple[type, object]] = {"head_left": (float, None)} | {
    key: (kind, None) for key, kind in (_FLIGHT | body_record.KEYS).items()}
# The four values earlier condure wrote, and since server_max_window_bits is
# echoed (RFC 7692 7.1.2.1) the same with "; server_max_window_bits=15".
_DEFLATES = {d.header: d for d in Deflate.variants()}


def _typed(key: str, value: object, kind: type) -> object:
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise RecordError(f"record field {key!r} of the wrong type: {type(value).__name__}")
    return value


def from_fields(fields_: Mapping[str, object]) -> Record:
    """The record a version 1 map describes (see the module docstring)."""
    if fields_.get("v") != VERSION or type(fields_.get("v")) is not int:
        raise RecordError(f"unknown record version {fields_.get('v')!r}")
    kind = fields_.get("kind")
    if kind == HttpRecord.kind:
        table: dict[str, tuple[type, object]] = {k: (t, ...) for k, t in _COMMON.items()}
        table |= _HTTP_OPTIONAL
    elif kind == WsRecord.kind:
        table = {k: (t, ...) for k, t in (_COMMON | _WS_REQUIRED).items()} | _WS_OPTIONAL
    elif kind == ReqRecord.kind:
        table = {k: (t, ...) for k, t in req_record.KEYS.items()}
    else:
        raise RecordError(f"unknown record kind {kind!r}")
    unknown = set(fields_) - set(table)
    if unknown:
        raise RecordError(f"unknown record fields {sorted(unknown)}")
    values: dict[str, object] = {}
    for key, (kind_, default) in table.items():
        if key in fields_:
            values[key] = _typed(key, fields_[key], kind_)
        elif default is ...:
            raise RecordError(f"incomplete record: {key!r} missing")
        else:
            values[key] = default
    if kind == ReqRecord.kind:
        problem = req_record.problem(values)
        if problem is not None:
            raise RecordError(problem)
        return req_record.from_values(values)
    address = _bytes(values, "peer_address")
    http = HttpRecord(
        scheme=_bytes(values, "scheme"), peer_address=address or None,
        peer_port=_int(values, "peer_port") if address else None,
        leftover=_bytes(values, "leftover"), session_left=_float(values, "session_left"),
        stream_left=_float(values, "stream_left"))
    if kind == HttpRecord.kind:
        head_left = values["head_left"]
        if head_left is not None:
            if not 0.0 <= _float(values, "head_left") < math.inf:
                raise RecordError("bad head_left in record")
            http = replace(http, head_left=_float(values, "head_left"))
        present = [key for key in _FLIGHT if values[key] is not None]
        if not present:
            if any(values[key] is not None for key in body_record.KEYS):
                raise RecordError("a request body without a request in flight in record")
            return http
        if len(present) != len(_FLIGHT):
            raise RecordError("incomplete request in flight in record")
        if head_left is not None:
            raise RecordError("head_left with a request in flight in record")
        return replace(http, flight=_flight(values))
    return _ws_record(values, http)


def _flight(values: dict[str, object]) -> InFlight:
    """The request in flight of an HTTP record (its keys all present)."""
    for key in ("id", "from", "handler"):
        if not _bytes(values, key):
            raise RecordError(f"empty {key} in record")
    for key in _FLIGHT_FLAGS:
        if _int(values, key) not in (0, 1):
            raise RecordError(f"bad {key} in record")
    if _int(values, "out_seq") < 1 or _int(values, "in_seq") < 1:
        raise RecordError("bad seq of a request in flight in record")
    if _int(values, "credits_owed") < 0 or _int(values, "resp_credits") < 0:
        raise RecordError("bad credits in record")
    owed = _int(values, "owed")
    chunked, close = _int(values, "chunked"), _int(values, "close_delimited")
    if owed < -1 or chunked + close + (owed >= 0) > 1:
        raise RecordError("bad response framing in record")
    streaming = _int(values, "resp")
    if not streaming and (chunked or close or owed >= 0 or _int(values, "discard_body")):
        raise RecordError("response framing without a response in record")
    body = None
    present = [key for key in body_record.KEYS if values[key] is not None]
    if present:
        problem = ("incomplete request body in record" if len(present) != len(body_record.KEYS)
                   else "a request body with a response in record" if streaming
                   else body_record.problem(values))
        if problem is not None:
            raise RecordError(problem)
        body = body_record.from_values(values)
    return InFlight(
        rid=_bytes(values, "id"), origin=_bytes(values, "from"),
        handler=_bytes(values, "handler"), out_seq=_int(values, "out_seq"),
        in_seq=_int(values, "in_seq"), credits_owed=_int(values, "credits_owed"),
        streaming=bool(streaming), resp_credits=_int(values, "resp_credits"),
        http11=bool(_int(values, "http11")), is_head=bool(_int(values, "is_head")),
        head_ends=bool(_int(values, "head_ends")), keep_alive=bool(_int(values, "keep_alive")),
        chunked=bool(chunked), close_delimited=bool(close),
        discard_body=bool(_int(values, "discard_body")), owed=owed, body=body)


def _int(values: Mapping[str, object], key: str) -> int:
    value = values[key]
    assert type(value) is int
    return value


def _bytes(values: Mapping[str, object], key: str) -> bytes:
    value = values[key]
    assert type(value) is bytes
    return value


def _float(values: Mapping[str, object], key: str) -> float:
    value = values[key]
    assert type(value) is float
    return value


def _ws_record(values: dict[str, object], common: HttpRecord) -> WsRecord:
    msg_opcode, out_type = _int(values, "msg_opcode"), _int(values, "out_type")
    msg_done, out_framed = _int(values, "msg_done"), _int(values, "out_framed")
    pending = _bytes(values, "pending")
    if msg_opcode not in (0, 1, 2) or out_type not in (0, 1, 2):
        raise RecordError("bad message state in record")
    if msg_done not in (0, 1) or out_framed not in (0, 1):
        raise RecordError("bad msg_done or out_framed in record")
    if (pending or msg_done) and not msg_opcode:
        raise RecordError("pending payload without a message under way")
    for key in ("msg_size", "credits_owed", "out_seq", "in_seq", "frame_left", "frame_offset"):
        if _int(values, key) < 0:
            raise RecordError(f"bad {key} in record")
    frame_left, frame_fin = _int(values, "frame_left"), _int(values, "frame_fin")
    frame_mask = _bytes(values, "frame_mask")
    if frame_fin not in (0, 1):
        raise RecordError("bad frame_fin in record")
    if frame_left and (not msg_opcode or msg_done or len(frame_mask) != 4):
        raise RecordError("bad frame under way in record")
    if not frame_left and (frame_mask or frame_fin or _int(values, "frame_offset")):
        raise RecordError("frame fields without a frame under way in record")
    origin = values["from"]
    if origin is not None and not _bytes(values, "from"):
        raise RecordError("empty from in record")
    deflate = _bytes(values, "deflate")
    if deflate and deflate not in _DEFLATES:
        raise RecordError(f"unknown deflate parameters {deflate!r}")
    partial = _bytes(values, "utf8_partial")
    if msg_opcode == 1:
        try:
            utf8.decoder().decode(partial)
        except UnicodeDecodeError:
            raise RecordError("bad utf8_partial in record") from None
    out_utf8 = values["out_utf8"]
    if out_utf8 is not None:
        out_utf8 = _bytes(values, "out_utf8")
        if out_type != 1 or len(out_utf8) > 3 or not utf8.feed(utf8.decoder(), out_utf8):
            raise RecordError("bad out_utf8 in record")
    return WsRecord(
        scheme=common.scheme, peer_address=common.peer_address, peer_port=common.peer_port,
        leftover=common.leftover, session_left=common.session_left,
        stream_left=common.stream_left,
        rid=_bytes(values, "id"), origin=origin if origin is None else _bytes(values, "from"),
        handler=_bytes(values, "handler") or None, out_seq=_int(values, "out_seq"),
        in_seq=_int(values, "in_seq"), in_credits=_int(values, "in_credits"),
        out_credits=_int(values, "out_credits"), msg_opcode=msg_opcode,
        msg_size=_int(values, "msg_size"), utf8_partial=partial, out_type=out_type,
        out_framed=bool(out_framed), deflate=_DEFLATES.get(deflate), pending=pending,
        msg_done=bool(msg_done), credits_owed=_int(values, "credits_owed"),
        frame_left=frame_left, frame_offset=_int(values, "frame_offset"), frame_mask=frame_mask,
        frame_fin=bool(frame_fin), out_utf8=out_utf8)


def to_fields(record: Record) -> dict[str, object]:
    """The version 1 map of ``record``."""
    if isinstance(record, ReqRecord):
        return req_record.to_fields(record)
    out: dict[str, object] = {
        "v": record.version, "kind": record.kind, "scheme": record.scheme,
        "peer_address": record.peer_address or b"", "peer_port": record.peer_port or 0,
        "leftover": record.leftover, "session_left": record.session_left,
        "stream_left": record.stream_left}
    if isinstance(record, HttpRecord) and record.head_left is not None:
        out["head_left"] = record.head_left
    if isinstance(record, HttpRecord) and record.flight is not None:
        f = record.flight  # (else left out: what earlier condure wrote and reads)
        out.update({
            "id": f.rid, "from": f.origin, "handler": f.handler, "out_seq": f.out_seq,
            "in_seq": f.in_seq, "credits_owed": f.credits_owed, "resp": int(f.streaming),
            "resp_credits": f.resp_credits, "http11": int(f.http11), "is_head": int(f.is_head),
            "head_ends": int(f.head_ends), "keep_alive": int(f.keep_alive),
            "chunked": int(f.chunked), "close_delimited": int(f.close_delimited),
            "discard_body": int(f.discard_body), "owed": f.owed})
        if f.body is not None:  # (likewise)
            out.update(body_record.to_fields(f.body))
    if isinstance(record, WsRecord):
        out.update({
            "id": record.rid, "handler": record.handler or b"", "out_seq": record.out_seq,
            "in_seq": record.in_seq, "in_credits": record.in_credits,
            "out_credits": record.out_credits, "msg_opcode": record.msg_opcode,
            "msg_size": record.msg_size, "utf8_partial": record.utf8_partial,
            "out_type": record.out_type, "out_framed": int(record.out_framed),
            "deflate": record.deflate.header if record.deflate else b"",
            "pending": record.pending, "msg_done": int(record.msg_done),
            "credits_owed": record.credits_owed})
        if record.origin is not None:
            out["from"] = record.origin
        if record.out_utf8 is not None:  # (likewise)
            out["out_utf8"] = record.out_utf8
        if record.frame_left:  # (else left out: what earlier condure wrote and reads)
            out.update({"frame_left": record.frame_left, "frame_offset": record.frame_offset,
                        "frame_mask": record.frame_mask, "frame_fin": int(record.frame_fin)})
    return out


def pack(fields_: Mapping[str, object]) -> bytes:
    """A record map as bytes (a tnetstring map)."""
    return tnetstring.dumps({key.encode(): value for key, value in fields_.items()})


def unpack(data: bytes) -> dict[str, object]:
    """The map :func:`pack` made; RecordError for anything else."""
    try:
        value = tnetstring.loads(data)
    except tnetstring.TnetstringError as e:
        raise RecordError(f"unreadable record: {e}") from None
    if not isinstance(value, dict) or not all(isinstance(k, bytes) for k in value):
        raise RecordError("record is not a map")
    return {key.decode("ascii", "replace"): item for key, item in value.items()}


def encode(record: Record) -> str:
    """``record`` as text for a control message."""
    return base64.b64encode(pack(to_fields(record))).decode("ascii")


def decode(text: object) -> Record:
    """The record :func:`encode` made (or an earlier condure did)."""
    if not isinstance(text, str):
        raise RecordError("record is not a string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError("record is not base64") from None
    return from_fields(unpack(data))
