"""Typed netstrings (tnetstrings), the value encoding inside ZHTTP packets.

A value is ``LENGTH:PAYLOAD TAG`` where LENGTH is the payload size in ASCII
decimal and TAG one byte naming the type::

    ,  string      #  integer     ^  float      !  boolean (true / false)
    ~  null        ]  list        }  map (alternating keys and values)

Decoding is strict: anything that is not exactly one well-formed value
raises :class:`TnetstringError` (a ``ValueError``) and nothing else, whatever
the input bytes. Strings decode to ``bytes``; map keys must be strings.
Integers follow Condure's reader: an optional sign, then ASCII digits.

This runs once per ZeroMQ message, so the decoder works on one ``bytes``
object with index arithmetic: the only copies made are the string values it
returns. Each container costs one Python call; scalars inside containers
are decoded inline.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["TnetstringError", "dumps", "loads", "parse_at", "pop"]


class TnetstringError(ValueError):
    """The input is not a valid tnetstring (or a value cannot be encoded)."""


# A length prefix longer than this cannot describe data we hold in memory;
# bounding the search keeps a bad prefix from scanning a large body.
_MAX_PREFIX = 20
_FLOAT_CHARS = b"0123456789+-.eE"


def _build_heads() -> dict[bytes, int]:
    """Map the first 3 bytes of a value with a length below 100 to
    ``(header size + length) << 2 | header size``.

    Most values in a packet are short; one dict lookup replaces a search
    for the colon and an int() call.
    """
    heads = {}
    for length in range(10):
        for follow in range(256):
            heads[b"%d:%c" % (length, follow)] = (2 + length) << 2 | 2
    for length in range(100):
        heads[b"%02d:" % length] = (3 + length) << 2 | 3
    return heads


_HEADS = _build_heads()


def _long_head(data: bytes, pos: int) -> tuple[int, int]:
    """Return (start, stop) of the payload of the value at data[pos]."""
    colon = data.find(b":", pos, pos + _MAX_PREFIX)
    if colon < 0 or not (digits := data[pos:colon]).isdigit():
        raise TnetstringError("invalid length prefix")
    return colon + 1, colon + 1 + int(digits)


_COMMA, _HASH, _BANG, _TILDE, _CARET, _RBRACKET, _RBRACE = b",#!~^]}"


def _int(raw: bytes) -> int:
    if not raw.isdigit() and not (raw[:1] in (b"-", b"+") and raw[1:].isdigit()):
        raise TnetstringError(f"invalid integer {raw[:32]!r}")
    try:
        return int(raw)
    except ValueError:  # beyond Python's digit limit for int()
        raise TnetstringError("integer too long") from None


def _float(raw: bytes) -> float:
    if not raw or raw.translate(None, _FLOAT_CHARS):
        raise TnetstringError(f"invalid float {raw[:32]!r}")
    try:
        return float(raw)
    except ValueError:
        raise TnetstringError(f"invalid float {raw[:32]!r}") from None


def _scalar(data: bytes, tag: int, start: int, stop: int) -> object:
    """Decode a non-string scalar whose payload is data[start:stop]."""
    if tag == _HASH:
        return _int(data[start:stop])
    if tag == _BANG:
        raw = data[start:stop]
        if raw == b"true":
            return True
        if raw == b"false":
            return False
        raise TnetstringError(f"invalid boolean {raw[:32]!r}")
    if tag == _TILDE:
        if start != stop:
            raise TnetstringError("null with a payload")
        return None
    if tag == _CARET:
        return _float(data[start:stop])
    raise TnetstringError(f"unknown type tag {bytes((tag,))!r}")


def _list(data: bytes, pos: int, end: int) -> list[Any]:
    """Decode the items in data[pos:end] (a list payload)."""
    out: list[Any] = []
    append = out.append
    heads = _HEADS.get
    while pos < end:
        head = heads(data[pos : pos + 3])
        if head is None:
            start, stop = _long_head(data, pos)
        else:
            start = pos + (head & 3)
            stop = pos + (head >> 2)
        if stop >= end:
            raise TnetstringError("value runs past its container")
        tag = data[stop]
        if tag == 44:
            append(data[start:stop])
        elif tag == 125:
            append(_map(data, start, stop))
        elif tag == 93:
            append(_list(data, start, stop))
        else:
            append(_scalar(data, tag, start, stop))
        pos = stop + 1
    return out


def _map(data: bytes, pos: int, end: int) -> dict[bytes, Any]:
    """Decode the key/value items in data[pos:end] (a map payload)."""
    out: dict[bytes, Any] = {}
    heads = _HEADS.get
    while pos < end:
        # key: always a string
        head = heads(data[pos : pos + 3])
        if head is None:
            start, stop = _long_head(data, pos)
        else:
            start = pos + (head & 3)
            stop = pos + (head >> 2)
        if stop >= end:
            raise TnetstringError("map key runs past its container")
        if data[stop] != 44:
            raise TnetstringError("map key is not a string")
        key = data[start:stop]
        pos = stop + 1
        if pos >= end:
            raise TnetstringError("map key without a value")
        # value
        head = heads(data[pos : pos + 3])
        if head is None:
            start, stop = _long_head(data, pos)
        else:
            start = pos + (head & 3)
            stop = pos + (head >> 2)
        if stop >= end:
            raise TnetstringError("map value runs past its container")
        tag = data[stop]
        if tag == 44:
            out[key] = data[start:stop]
        elif tag == 125:
            out[key] = _map(data, start, stop)
        elif tag == 93:
            out[key] = _list(data, start, stop)
        else:
            out[key] = _scalar(data, tag, start, stop)
        pos = stop + 1
    return out


def parse_at(data: bytes, pos: int = 0) -> tuple[object, int]:
    """Decode the value starting at ``data[pos]``.

    Returns the value and the offset just past it; bytes after it are not
    looked at. Lets a caller skip a prefix (ZHTTP's ``T``) without copying.
    """
    end = len(data)
    colon = data.find(b":", pos, pos + _MAX_PREFIX)
    if colon < 0 or not (digits := data[pos:colon]).isdigit():
        raise TnetstringError("invalid length prefix")
    start = colon + 1
    stop = start + int(digits)
    if stop >= end:
        raise TnetstringError("value runs past the end of the data")
    tag = data[stop]
    try:
        if tag == 44:
            return data[start:stop], stop + 1
        if tag == 125:
            return _map(data, start, stop), stop + 1
        if tag == 93:
            return _list(data, start, stop), stop + 1
        return _scalar(data, tag, start, stop), stop + 1
    except RecursionError:
        # Nesting costs 3 bytes a level, so small inputs can nest deeply.
        raise TnetstringError("nested too deeply") from None


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"expected bytes, not {type(data).__name__}")


def loads(data: bytes) -> object:
    """Decode exactly one value; trailing bytes are an error."""
    data = _as_bytes(data)
    value, end = parse_at(data)
    if end != len(data):
        raise TnetstringError("trailing data after the value")
    return value


def pop(data: bytes) -> tuple[object, bytes]:
    """Decode the first value; return it and the bytes that follow it."""
    data = _as_bytes(data)
    value, end = parse_at(data)
    return value, data[end:]


# -- encoding ---------------------------------------------------------------


def _dump(value: Any, out: list[bytes]) -> int:
    """Append the encoding of value to out; return its length in bytes."""
    t = type(value)
    if t is bytes:
        piece = b"%d:%b," % (len(value), value)
    elif t is str:
        raw = value.encode()
        piece = b"%d:%b," % (len(raw), raw)
    elif t is bool:
        piece = b"4:true!" if value else b"5:false!"
    elif t is int:
        digits = b"%d" % value
        piece = b"%d:%b#" % (len(digits), digits)
    elif value is None:
        piece = b"0:~"
    elif t is float:
        if not math.isfinite(value):
            raise TnetstringError("cannot encode a non-finite float")
        text = repr(value).encode()
        piece = b"%d:%b^" % (len(text), text)
    elif t is list or t is tuple or t is dict:
        index = len(out)
        out.append(b"")  # the length prefix, filled in below
        size = 0
        if t is dict:
            for key, item in value.items():
                if type(key) is not bytes and type(key) is not str:
                    raise TnetstringError(f"map key must be bytes or str, not {type(key)}")
                size += _dump(key, out)
                size += _dump(item, out)
            out.append(b"}")
        else:
            for item in value:
                size += _dump(item, out)
            out.append(b"]")
        prefix = b"%d:" % size
        out[index] = prefix
        return len(prefix) + size + 1
    elif isinstance(value, (bytes, bytearray, memoryview)):
        return _dump(bytes(value), out)
    elif isinstance(value, bool):
        return _dump(bool(value), out)
    elif isinstance(value, int):
        return _dump(int(value), out)
    elif isinstance(value, str):
        return _dump(str(value), out)
    elif isinstance(value, float):
        return _dump(float(value), out)
    elif isinstance(value, dict):
        return _dump(dict(value), out)
    elif isinstance(value, (list, tuple)):
        return _dump(list(value), out)
    else:
        raise TnetstringError(f"cannot encode {type(value).__name__}")
    out.append(piece)
    return len(piece)


def dumps(value: Any) -> bytes:
    """Encode value (bytes, str, int, bool, None, float, list, tuple, dict)."""
    t = type(value)
    if t is bytes:
        return b"%d:%b," % (len(value), value)
    out: list[bytes] = []
    try:
        _dump(value, out)
    except RecursionError:
        raise TnetstringError("nested too deeply") from None
    return b"".join(out)
