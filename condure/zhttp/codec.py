"""ZHTTP packets to bytes and back.

A packet on the wire is ``b"T"`` followed by one tnetstring map.

:func:`encode` writes the exact bytes Condure writes: fields in Condure's
order (``from``, ``id`` (+ ``seq``), ``ext``, ``type``, then the
type-specific fields) and fields that are empty, zero, false or absent left
out.

:func:`decode` is as strict as Condure's reader. Anything Condure would
discard as unparsable raises :class:`PacketError`: a known field with the
wrong tnetstring type, a negative (or out-of-range) integer, text fields
that are not UTF-8, more than 64 headers or 128 ids. Unknown keys and bytes
after the map are ignored. Only the fields of the packet's own type are
read, as Condure does: a ``credit`` packet may carry a malformed ``code``.
A packet of an unknown type raises :class:`UnknownType`, which carries the
ids so that the caller can abort those sessions.

Integer ranges: ``seq``, ``credits``, ``code`` (HTTP), ``max-size`` and
``timeout`` must fit 32 bits, ports and the WebSocket close code 16 bits.
Condure truncates larger values silently; rejecting them is safer.

Both functions run once per packet; they are written out per packet class
rather than driven by reflection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .packets import (
    Cancel,
    Close,
    Credit,
    Data,
    Error,
    HandoffProceed,
    HandoffStart,
    Header,
    Ident,
    KeepAlive,
    Packet,
    Ping,
    Pong,
)
from .tnetstring import TnetstringError, parse_at

try:
    # tnetstring3 (>= 0.4) is a C extension, several times faster than our
    # parser. It is used only as a first attempt: when it refuses a packet,
    # ours decides, and the checks below do not rely on its strictness.
    from tnetstring import pop as _fast_pop

    if _fast_pop(b"1:a,}") != (b"a", b"}"):  # not the version we know
        _fast_pop = None
except Exception:  # noqa: BLE001 # pragma: no cover - absent or broken
    _fast_pop = None
FAST_POP: Callable[[bytes], tuple[Any, bytes]] | None = _fast_pop  # (for zhttp.plain)

__all__ = ["PacketError", "UnknownType", "decode", "encode", "split_address"]

HEADERS_MAX = 64
IDS_MAX = 128
_MAX32 = 0xFFFFFFFF
_MAX16 = 0xFFFF


class PacketError(ValueError):
    """The bytes are not a packet Condure would accept."""


class UnknownType(PacketError):
    """A well-formed packet whose ``type`` is not a ZHTTP packet type."""

    def __init__(self, type_name: bytes, from_: bytes, ids: tuple[Ident, ...]) -> None:
        super().__init__(f"unknown packet type {type_name!r}")
        self.type_name = type_name
        self.from_ = from_
        self.ids = ids


# -- SUB framing --------------------------------------------------------------


def split_address(frame: bytes) -> tuple[bytes, bytes]:
    """Split a handler's SUB frame ``b"<address> T..."`` at the first space."""
    space = frame.find(b" ")
    if space < 0:
        raise PacketError("no address in frame")
    return frame[:space], frame[space + 1 :]


# -- encoding -----------------------------------------------------------------

_EXT_MULTI = b"3:ext,15:5:multi,4:true!}"


def _int(value: int) -> bytes:
    digits = b"%d" % value
    return b"%d:%b#" % (len(digits), digits)


def _headers(headers: tuple[Header, ...]) -> bytes:
    items = []
    for name, value in headers:
        item = b"%d:%b,%d:%b," % (len(name), name, len(value), value)
        items.append(b"%d:%b]" % (len(item), item))
    joined = b"".join(items)
    return b"7:headers,%d:%b]" % (len(joined), joined)


def _start(packet: Any, type_field: bytes, ext_multi: bool) -> list[bytes]:
    """Begin a packet: a slot for the prefix, then the common fields."""
    parts = [b""]
    from_ = packet.from_
    if from_:
        parts.append(b"4:from,%d:%b," % (len(from_), from_))
    ids = packet.ids
    if len(ids) == 1 and not packet.id_list:
        ident = ids[0]
        parts.append(b"2:id,%d:%b," % (len(ident.id), ident.id))
        if ident.seq is not None:
            parts.append(b"3:seq," + _int(ident.seq))
    elif ids or packet.id_list:
        entries = []
        for ident in ids:
            entry = b"2:id,%d:%b," % (len(ident.id), ident.id)
            if ident.seq is not None:
                entry += b"3:seq," + _int(ident.seq)
            entries.append(b"%d:%b}" % (len(entry), entry))
        joined = b"".join(entries)
        parts.append(b"2:id,%d:%b]" % (len(joined), joined))
    if ext_multi:
        parts.append(_EXT_MULTI)
    if type_field:
        parts.append(type_field)
    return parts


def _finish(parts: list[bytes]) -> bytes:
    parts.append(b"}")
    parts[0] = b"T%d:" % (sum(map(len, parts)) - 1)
    return b"".join(parts)


def _encode_data(p: Data, ext_multi: bool) -> bytes:
    parts = _start(p, b"", ext_multi)
    add = parts.append
    if p.method:
        add(b"6:method,%d:%b," % (len(p.method), p.method))
    if p.uri:
        add(b"3:uri,%d:%b," % (len(p.uri), p.uri))
    if p.code:
        add(b"4:code," + _int(p.code))
    if p.reason:
        add(b"6:reason,%d:%b," % (len(p.reason), p.reason))
    if p.headers:
        add(_headers(p.headers))
    if p.content_type:
        add(b"12:content-type,%d:%b," % (len(p.content_type), p.content_type))
    if p.body:
        add(b"4:body,%d:%b," % (len(p.body), p.body))
    if p.credits:
        add(b"7:credits," + _int(p.credits))
    if p.more:
        add(b"4:more,4:true!")
    if p.stream:
        add(b"6:stream,4:true!")
    if p.max_size:
        add(b"8:max-size," + _int(p.max_size))
    if p.timeout:
        add(b"7:timeout," + _int(p.timeout))
    if p.peer_address:
        add(b"12:peer-address,%d:%b," % (len(p.peer_address), p.peer_address))
        add(b"9:peer-port," + _int(p.peer_port or 0))
    if p.connect_host:
        add(b"12:connect-host,%d:%b," % (len(p.connect_host), p.connect_host))
    if p.connect_port:
        add(b"12:connect-port," + _int(p.connect_port))
    if p.ignore_policies:
        add(b"15:ignore-policies,4:true!")
    if p.trust_connect_host:
        add(b"18:trust-connect-host,4:true!")
    if p.ignore_tls_errors:
        add(b"17:ignore-tls-errors,4:true!")
    if p.follow_redirects:
        add(b"16:follow-redirects,4:true!")
    return _finish(parts)


def _encode_error(p: Error, ext_multi: bool) -> bytes:
    parts = _start(p, b"4:type,5:error,", ext_multi)
    condition = p.condition
    parts.append(b"9:condition,%d:%b," % (len(condition), condition))
    if condition == b"rejected":
        reason = p.reason or b""
        parts.append(b"4:code," + _int(p.code or 0))
        parts.append(b"6:reason,%d:%b," % (len(reason), reason))
        if p.headers:
            parts.append(_headers(p.headers))
        parts.append(b"4:body,%d:%b," % (len(p.body), p.body))
    return _finish(parts)


def _encode_credit(p: Credit, ext_multi: bool) -> bytes:
    parts = _start(p, b"4:type,6:credit,", ext_multi)
    parts.append(b"7:credits," + _int(p.credits))
    return _finish(parts)


def _encode_close(p: Close, ext_multi: bool) -> bytes:
    parts = _start(p, b"4:type,5:close,", ext_multi)
    if p.code is not None:
        parts.append(b"4:code," + _int(p.code))
        if p.body:
            parts.append(b"4:body,%d:%b," % (len(p.body), p.body))
    return _finish(parts)


def _encode_ping(p: Ping | Pong, ext_multi: bool) -> bytes:
    parts = _start(p, b"4:type,4:ping," if type(p) is Ping else b"4:type,4:pong,", ext_multi)
    if p.body:
        parts.append(b"4:body,%d:%b," % (len(p.body), p.body))
    return _finish(parts)


def _bare(type_field: bytes) -> Callable[[Any, bool], bytes]:
    def encode_bare(p: Any, ext_multi: bool) -> bytes:
        return _finish(_start(p, type_field, ext_multi))

    return encode_bare


_ENCODERS: dict[type, Callable[[Any, bool], bytes]] = {
    Data: _encode_data,
    Error: _encode_error,
    Credit: _encode_credit,
    KeepAlive: _bare(b"4:type,10:keep-alive,"),
    Cancel: _bare(b"4:type,6:cancel,"),
    HandoffStart: _bare(b"4:type,13:handoff-start,"),
    HandoffProceed: _bare(b"4:type,15:handoff-proceed,"),
    Close: _encode_close,
    Ping: _encode_ping,
    Pong: _encode_ping,
}


def encode(packet: Packet, *, ext_multi: bool = True) -> bytes:
    """Return ``b"T" + tnetstring`` for packet, byte for byte as Condure."""
    try:
        encoder = _ENCODERS[type(packet)]
    except KeyError:
        raise TypeError(f"not a ZHTTP packet: {type(packet).__name__}") from None
    return encoder(packet, ext_multi)


# -- decoding -----------------------------------------------------------------

# Kinds of field value, checked in _read_fields.
_K_BYTES, _K_TEXT, _K_U32, _K_U16, _K_BOOL, _K_HEADERS = range(6)

# key -> (index among the type-specific constructor arguments, kind)
_DATA_FIELDS = {
    b"method": (0, _K_TEXT),
    b"uri": (1, _K_TEXT),
    b"code": (2, _K_U32),
    b"reason": (3, _K_TEXT),
    b"headers": (4, _K_HEADERS),
    b"content-type": (5, _K_BYTES),
    b"body": (6, _K_BYTES),
    b"credits": (7, _K_U32),
    b"more": (8, _K_BOOL),
    b"stream": (9, _K_BOOL),
    b"max-size": (10, _K_U32),
    b"timeout": (11, _K_U32),
    b"peer-address": (12, _K_TEXT),
    b"peer-port": (13, _K_U16),
    b"connect-host": (14, _K_TEXT),
    b"connect-port": (15, _K_U16),
    b"ignore-policies": (16, _K_BOOL),
    b"trust-connect-host": (17, _K_BOOL),
    b"ignore-tls-errors": (18, _K_BOOL),
    b"follow-redirects": (19, _K_BOOL),
}
_DATA_DEFAULTS = (None,) * 6 + (b"", 0, False, False) + (None,) * 6 + (False,) * 4
_ERROR_FIELDS = {
    b"condition": (0, _K_TEXT),
    b"code": (1, _K_U32),
    b"reason": (2, _K_TEXT),
    b"headers": (3, _K_HEADERS),
    b"body": (4, _K_BYTES),
}
_CREDIT_FIELDS = {b"credits": (0, _K_U32)}
_CLOSE_FIELDS = {b"code": (0, _K_U16), b"body": (1, _K_TEXT)}
_PING_FIELDS = {b"body": (0, _K_BYTES), b"credits": (1, _K_U32)}
_NO_FIELDS: dict[bytes, tuple[int, int]] = {}

_TYPES: dict[bytes, tuple[Callable[..., Packet], dict[bytes, tuple[int, int]], tuple[Any, ...]]] = {
    b"": (Data, _DATA_FIELDS, _DATA_DEFAULTS),
    b"error": (Error, _ERROR_FIELDS, (b"", None, None, None, b"")),
    b"credit": (Credit, _CREDIT_FIELDS, (0,)),
    b"keep-alive": (KeepAlive, _NO_FIELDS, ()),
    b"cancel": (Cancel, _NO_FIELDS, ()),
    b"handoff-start": (HandoffStart, _NO_FIELDS, ()),
    b"handoff-proceed": (HandoffProceed, _NO_FIELDS, ()),
    b"close": (Close, _CLOSE_FIELDS, (None, b"")),
    b"ping": (Ping, _PING_FIELDS, (b"", 0)),
    b"pong": (Pong, _PING_FIELDS, (b"", 0)),
}
_KIND_NAMES = ("a string", "a UTF-8 string", "an integer 0..2^32-1", "an integer 0..65535",
               "a boolean", "a list of [name, value] lists")


def _check_keys(m: dict[bytes, Any]) -> None:
    """Map keys must be UTF-8 (the tnetstring layer already made them bytes)."""
    # Joining on a byte that is never part of a multi-byte sequence keeps a
    # bad key bad and good keys good, so one check covers them all.
    try:
        joined = b"\n".join(m)
    except TypeError:
        raise PacketError("map key is not a string") from None
    if not joined.isascii():
        try:
            joined.decode()
        except UnicodeDecodeError:
            raise PacketError("map key is not UTF-8") from None


def _is_utf8(value: bytes) -> bool:
    if value.isascii():
        return True
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _read_headers(value: object) -> tuple[Header, ...]:
    if type(value) is not list:
        raise PacketError("headers must be a list")
    if len(value) > HEADERS_MAX:
        raise PacketError(f"more than {HEADERS_MAX} headers")
    headers = []
    for item in value:
        if type(item) is not list or len(item) != 2:
            raise PacketError("header item must be a list of 2 strings")
        name, hvalue = item
        if type(name) is not bytes or type(hvalue) is not bytes:
            raise PacketError("header name and value must be strings")
        if not _is_utf8(name):
            raise PacketError("header name must be UTF-8")
        headers.append((name, hvalue))
    return tuple(headers)


def _read_fields(top: dict[bytes, Any], table: dict[bytes, tuple[int, int]],
                 values: list[Any]) -> None:
    """Check and store the type-specific fields present in top."""
    lookup = table.get
    for key, value in top.items():
        spec = lookup(key)
        if spec is None:
            continue
        index, kind = spec
        t = type(value)
        if kind == _K_BYTES:
            ok = t is bytes
        elif kind == _K_U32:
            ok = t is int and 0 <= value <= _MAX32
        elif kind == _K_TEXT:
            ok = t is bytes and _is_utf8(value)
        elif kind == _K_BOOL:
            ok = t is bool
        elif kind == _K_U16:
            ok = t is int and 0 <= value <= _MAX16
        else:
            value = _read_headers(value)
            ok = True
        if not ok:
            raise PacketError(f"{key.decode()} must be {_KIND_NAMES[kind]}")
        values[index] = value


def _read_ids(value: object, seq: int | None) -> tuple[tuple[Ident, ...], bool]:
    """Return (ids, id_list) from the ``id`` field and the top-level seq."""
    if type(value) is bytes:
        return (Ident(value, seq),), False
    if type(value) is not list:
        raise PacketError("id must be a string or a list of maps")
    if len(value) > IDS_MAX:
        raise PacketError(f"more than {IDS_MAX} ids")
    ids = []
    for entry in value:
        if type(entry) is not dict:
            raise PacketError("id list entries must be maps")
        _check_keys(entry)
        ident = entry.get(b"id", b"")
        if type(ident) is not bytes:
            raise PacketError("id must be a string")
        entry_seq = entry.get(b"seq")
        if (entry_seq is not None or b"seq" in entry) and (
                type(entry_seq) is not int or not 0 <= entry_seq <= _MAX32):
            raise PacketError("seq must be an integer 0..2^32-1")
        ids.append(Ident(ident, entry_seq))
    return tuple(ids), True


def decode(payload: bytes) -> Packet:
    """Parse one ZHTTP packet (``b"T"`` + tnetstring map)."""
    if payload[:1] != b"T":
        raise PacketError("packet does not start with T")
    top = None
    if _fast_pop is not None:
        try:
            top = _fast_pop(payload[1:])[0]
        except Exception:  # noqa: BLE001, S110 - any refusal: our parser decides below
            pass
    if top is None:
        try:
            top, _ = parse_at(payload, 1)
        except TnetstringError as e:
            raise PacketError(f"bad tnetstring: {e}") from None
    if type(top) is not dict:
        raise PacketError("packet is not a map")
    _check_keys(top)
    get = top.get

    from_ = get(b"from", b"")
    if type(from_) is not bytes:
        raise PacketError("from must be a string")
    seq = get(b"seq")
    if (seq is not None or b"seq" in top) and (type(seq) is not int or not 0 <= seq <= _MAX32):
        raise PacketError("seq must be an integer 0..2^32-1")
    ident = get(b"id")
    if ident is None and b"id" not in top:
        ids: tuple[Ident, ...] = (Ident(b"", seq),) if seq is not None else ()
        id_list = False
    else:
        ids, id_list = _read_ids(ident, seq)
    ext = get(b"ext")
    if ext is not None or b"ext" in top:
        if type(ext) is not dict:
            raise PacketError("ext must be a map")
        _check_keys(ext)
        if b"multi" in ext and type(ext[b"multi"]) is not bool:
            raise PacketError("ext.multi must be a boolean")
    type_name = get(b"type", b"")
    if type(type_name) is not bytes or not _is_utf8(type_name):
        raise PacketError("type must be a UTF-8 string")

    try:
        cls, table, defaults = _TYPES[type_name]
    except KeyError:
        raise UnknownType(type_name, from_, ids) from None
    if not table:
        return cls(from_, ids, id_list)
    values = list(defaults)
    _read_fields(top, table, values)
    if cls is Error and values[0] != b"rejected":
        # code, reason, headers and body only mean something for "rejected"
        return Error(from_, ids, id_list, values[0])
    if cls is Close and values[0] is None:
        # a reason without a code is ignored
        return Close(from_, ids, id_list)
    return cls(from_, ids, id_list, *values)
