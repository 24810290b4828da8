"""Normalise condure-sent packets so that two runs can be compared byte-exact.

What legitimately varies between runs and implementations is replaced:

- session ids: ``<id0>``, ``<id1>``... in first-seen order (single-id and
  id-list forms);
- ``peer-port`` (an integer): replaced by ``0`` (a non-integer stays as is,
  so a type difference still shows);
- ``from``: the instance id, or the instance id followed by ``.<n>`` (one
  address per worker process), becomes ``<from>``.

Everything else stays as sent: the packet is decoded in order, the values
above are substituted and the map is re-encoded in the same order, so field
order, types and every other byte still count.
"""

from __future__ import annotations

import re
from typing import Any

from tests.harness import tnet


class Normalizer:
    def __init__(self, instance_id: str = "condure") -> None:
        self.ids: dict[bytes, bytes] = {}
        self.from_re = re.compile(re.escape(instance_id).encode() + rb"(\.[0-9]+)?")

    def map_id(self, value: Any) -> Any:
        if not isinstance(value, bytes):
            return value
        if value not in self.ids:
            self.ids[value] = b"<id%d>" % len(self.ids)
        return self.ids[value]

    def _id_field(self, value: Any) -> Any:
        if isinstance(value, list):
            out = []
            for entry in value:
                if isinstance(entry, tnet.OMap):
                    entry = tnet.OMap((k, self.map_id(v) if k == b"id" else v) for k, v in entry)
                out.append(entry)
            return out
        return self.map_id(value)

    def fields(self, fields: tnet.OMap) -> tnet.OMap:
        out = tnet.OMap()
        for key, value in fields:
            if key == b"id":
                value = self._id_field(value)
            elif key == b"peer-port" and isinstance(value, int) and not isinstance(value, bool):
                value = 0
            elif key == b"from" and isinstance(value, bytes) and self.from_re.fullmatch(value):
                value = b"<from>"
            out.append((key, value))
        return out

    def packet(self, raw: bytes) -> bytes:
        """Normalised bytes of one ``T...`` packet (undecodable: as is)."""
        try:
            fields = tnet.decode_packet(raw)
        except ValueError:
            return raw
        return tnet.encode_packet(self.fields(fields))


def without_keep_alives(packets) -> list:
    """``[(socket, raw)]`` of handler_client Pkt with condure's ``keep-alive``
    packets left out and the later seqs of their sessions renumbered: when
    the keep-alive sweep reaches a session depends on timing (anywhere in
    45 s after it starts), not on the implementation."""
    out = []
    dropped: dict[bytes, int] = {}
    for p in packets:
        ident = p.fields.get("id")
        if p.type == "keep-alive":
            entries = ident if isinstance(ident, list) else [tnet.OMap([(b"id", ident)])]
            for entry in entries:
                sid = entry.get("id")
                dropped[sid] = dropped.get(sid, 0) + 1
            continue
        raw = p.raw
        if isinstance(ident, bytes) and dropped.get(ident) and isinstance(p.seq, int):
            fields = tnet.OMap((k, v - dropped[ident] if k == b"seq" else v)
                               for k, v in p.fields)
            raw = tnet.encode_packet(fields)
        out.append((p.socket, raw))
    return out


def normalize_packets(packets, instance_id: str = "condure") -> list[tuple[str, bytes]]:
    """``[(socket, normalised bytes)]`` for a list of handler_client Pkt."""
    norm = Normalizer(instance_id)
    return [(p.socket, norm.packet(p.raw)) for p in packets]


def describe(records: list[tuple[str, bytes]]) -> str:
    """Readable multi-line form for assertion messages."""
    return "\n".join(f"  {sock:6} {raw!r}" for sock, raw in records)


def assert_same_result(result: dict, expected: dict, compare_http: bool = True) -> None:
    """A differential run (``{"packets", "http", "status"}``) against the
    reference's: the packets each handler got, the client bytes (unless a
    documented difference), the exit status after SIGTERM."""
    for handler, ref_packets in expected["packets"].items():
        got = result["packets"].get(handler, [])
        assert got == ref_packets, (
            f"packets to {handler} differ\n--- reference ---\n{describe(ref_packets)}\n"
            f"--- ours ---\n{describe(got)}"
        )
    if compare_http:
        assert result["http"] == expected["http"], (
            f"client bytes differ\nreference: {expected['http']!r}\nours:      {result['http']!r}"
        )
    assert result["status"] == expected["status"], "exit status after SIGTERM differs"
