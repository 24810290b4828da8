"""The record of an idle req-mode connection (``--listen PORT,req``): the
part of :mod:`condure.session.records` that lets it move to another
process on a reload or a restart (docs/handover.md).

A req-mode connection moves only between requests: no request is being
read (nothing of its body), none waits for its handler, nothing of a
response is left to write. Bytes of the next request that were read but
not parsed (half a head, or a whole pipelined request the handover kept
from starting) travel as ``leftover``; the adopting process parses them
as its own. A req-mode request has no ZHTTP session that outlives it (the
handler answers on the DEALER socket by id, and the next request gets a
new id), so nothing of the handler's side travels and no handoff is
needed.

Req record, version 1 (kind ``b"req"``, which an earlier condure refuses
as an unknown kind, so a downgrade across a restart closes such a
connection instead of adopting it)::

    v, kind        1, b"req"
    scheme         b"http" | b"https"
    peer_address   bytes (b"" for Unix-socket clients)
    peer_port      int (0 for Unix-socket clients)
    leftover       bytes read from the client but not yet parsed
    req_left       seconds left of the --req-timeout cycle, which started
                   when the connection began waiting for this request (it
                   bounds the idle time and the next request alike)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

KEYS: dict[str, type] = {"v": int, "kind": bytes, "scheme": bytes, "peer_address": bytes,
                         "peer_port": int, "leftover": bytes, "req_left": float}


@dataclass(frozen=True, slots=True)
class ReqRecord:
    """An idle req-mode connection (see the module docstring)."""

    kind: ClassVar[bytes] = b"req"
    keeps_id: ClassVar[bool] = False  # the next request gets a new id
    scheme: bytes
    peer_address: bytes | None
    peer_port: int | None
    leftover: bytes
    req_left: float
    version: int = 1


def problem(values: Mapping[str, object]) -> str | None:
    """What is wrong with the values of a req record (all present, typed)."""
    req_left = values["req_left"]
    assert isinstance(req_left, float)
    if not 0.0 <= req_left < math.inf:
        return "bad req_left in record"
    return None


def from_values(values: Mapping[str, object]) -> ReqRecord:
    """The record of checked values (see :func:`problem`)."""
    scheme, address, port = values["scheme"], values["peer_address"], values["peer_port"]
    leftover, req_left = values["leftover"], values["req_left"]
    assert isinstance(scheme, bytes) and isinstance(address, bytes) and isinstance(port, int)
    assert isinstance(leftover, bytes) and isinstance(req_left, float)
    return ReqRecord(scheme=scheme, peer_address=address or None,
                     peer_port=port if address else None, leftover=leftover,
                     req_left=req_left)


def to_fields(record: ReqRecord) -> dict[str, object]:
    return {"v": record.version, "kind": record.kind, "scheme": record.scheme,
            "peer_address": record.peer_address or b"", "peer_port": record.peer_port or 0,
            "leftover": record.leftover, "req_left": record.req_left}
