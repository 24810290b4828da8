"""Order-preserving tnetstring codec for the test side.

The tests must not rely on the project's own ZHTTP codec, so they carry this
small one. Scalars go through tnetstring3; maps are handled here because
tnetstring3 does not keep the order of map keys, and field order is part of
what the tests check.

Decoded maps are ``OMap`` objects: a list of ``(key, value)`` pairs (keys are
bytes) with dict-like lookups. Strings stay ``bytes``.
"""

from __future__ import annotations

import json
from typing import Any

import tnetstring


class OMap(list):
    """A tnetstring map as an ordered list of (key, value) pairs."""

    def get(self, key: bytes | str, default: Any = None) -> Any:
        if isinstance(key, str):
            key = key.encode()
        for k, v in self:
            if k == key:
                return v
        return default

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, (bytes, str)):
            marker = object()
            value = self.get(key, marker)
            if value is marker:
                raise KeyError(key)
            return value
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:  # type: ignore[override]
        marker = object()
        return self.get(key, marker) is not marker

    def keys(self) -> list[bytes]:
        return [k for k, _ in self]

    def replaced(self, key: bytes, value: Any) -> OMap:
        return OMap((k, value if k == key else v) for k, v in self)


def encode(value: Any) -> bytes:
    """Encode a value; ``dict`` and ``OMap`` keep their iteration order."""
    if isinstance(value, (OMap, dict)):
        items = value if isinstance(value, OMap) else list(value.items())
        parts = []
        for k, v in items:
            if isinstance(k, str):
                k = k.encode()
            parts.append(tnetstring.dumps(k))
            parts.append(encode(v))
        body = b"".join(parts)
        return b"%d:%s}" % (len(body), body)
    if isinstance(value, (list, tuple)):
        body = b"".join(encode(v) for v in value)
        return b"%d:%s]" % (len(body), body)
    if isinstance(value, str):
        value = value.encode()
    return tnetstring.dumps(value)


def decode_one(data: bytes) -> tuple[Any, bytes]:
    """Decode one value from the front of ``data``; return it and the rest."""
    colon = data.index(b":")
    if colon == 0 or colon > 10 or not data[:colon].isdigit():
        raise ValueError("bad tnetstring length prefix")
    size = int(data[:colon])
    end = colon + 1 + size
    if len(data) <= end:
        raise ValueError("truncated tnetstring")
    payload, tag, rest = data[colon + 1 : end], data[end : end + 1], data[end + 1 :]
    if tag == b"}":
        pairs = OMap()
        while payload:
            key, payload = decode_one(payload)
            if not isinstance(key, bytes):
                raise ValueError("map key is not a string")
            if not payload:
                raise ValueError("map key without value")
            value, payload = decode_one(payload)
            pairs.append((key, value))
        return pairs, rest
    if tag == b"]":
        items = []
        while payload:
            item, payload = decode_one(payload)
            items.append(item)
        return items, rest
    return tnetstring.loads(data[: end + 1]), rest


def decode(data: bytes) -> Any:
    value, _rest = decode_one(data)
    return value


def decode_packet(raw: bytes) -> OMap:
    """Decode a ZHTTP packet (``T`` + map)."""
    if not raw.startswith(b"T"):
        raise ValueError(f"not a T packet: {raw[:20]!r}")
    value = decode(raw[1:])
    if not isinstance(value, OMap):
        raise ValueError("packet is not a map")
    return value


def encode_packet(fields: Any) -> bytes:
    return b"T" + encode(fields)


# JSON form, used on the pipe between tests and the scripted handler:
# JSON strings are UTF-8 text, {"$hex": "..."} is raw bytes, objects are maps
# in the order written, arrays are lists, numbers/booleans/null as is.


def to_json(value: Any) -> Any:
    if isinstance(value, (OMap, dict)):
        items = value if isinstance(value, OMap) else list(value.items())
        return {(k.decode() if isinstance(k, bytes) else k): to_json(v) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"$hex": value.hex()}
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if list(value.keys()) == ["$hex"]:
            return bytes.fromhex(value["$hex"])
        return OMap((k.encode(), from_json(v)) for k, v in value.items())
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, str):
        return value.encode()
    return value


def dumps_json(value: Any) -> str:
    return json.dumps(to_json(value), separators=(",", ":"))
