"""Where a request body being read stands, as data: the part of an HTTP
record (:mod:`condure.session.records`) that lets a request move while its
body is still coming from the client (docs/handover.md).

A body is carried at a resumable position of its framing only:

- ``Content-Length``: anywhere (``left`` bytes of the body to come);
- chunked: inside a chunk's data (``left`` bytes of it to come), at the
  start of a chunk-size line (``left`` 0; a part of the line already read
  is unparsed input, carried as the record's ``leftover``), or among the
  trailers (``trailer``; likewise). Not between a chunk's last data byte
  and the CRLF that ends it: the session reads on past those two bytes
  (:meth:`condure.session.http_snapshot.HttpMoves.movable`);
- the body's end was read (``eom``): what is left is ``pending``.

Record keys (optional, all of them or none, only with a request in flight;
an earlier condure refuses a record that has them, as any unknown key)::

    body_chunked   0/1: the framing
    body_left      see above
    body_trailer   0/1: a chunked body's trailers are being read
    body_eom       0/1: the body's end was read
    body_pending   body bytes read from the client, not sent to the handler
    body_credits   bytes the handler may still be sent
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Body bytes read and not sent, plus unparsed client bytes, carried at most:
# beyond this a request waits for its handler's credits before it moves (the
# record must fit in a control message; with the default --buffer-size the
# two together stay under 16 KiB).
CARRY_MAX = 24 * 1024


@dataclass(frozen=True, slots=True)
class BodyAt:
    """A request body under way at a resumable position (module docstring)."""

    chunked: bool
    left: int
    trailer: bool
    eom: bool
    pending: bytes
    credits: int


KEYS: dict[str, type] = {"body_chunked": int, "body_left": int, "body_trailer": int,
                         "body_eom": int, "body_pending": bytes, "body_credits": int}


def problem(values: Mapping[str, object]) -> str | None:
    """What is wrong with the body keys of a record (all present, typed)."""
    flags = [values[key] for key in ("body_chunked", "body_trailer", "body_eom")]
    if any(flag not in (0, 1) for flag in flags):
        return "bad body flags in record"
    chunked, trailer, eom = flags
    left, credits = values["body_left"], values["body_credits"]
    assert isinstance(left, int) and isinstance(credits, int)
    if left < 0 or credits < 0:
        return "bad body_left or body_credits in record"
    if eom and (left or trailer):
        return "body position after its end in record"
    if trailer and (not chunked or left):
        return "bad chunked trailer position in record"
    if not chunked and not eom and not left:
        return "a Content-Length body with nothing left in record"
    pending = values["body_pending"]
    assert isinstance(pending, bytes)
    if len(pending) > CARRY_MAX:
        return "body_pending too large in record"
    return None


def from_values(values: Mapping[str, object]) -> BodyAt:
    """The body position of checked values (see :func:`problem`)."""
    pending = values["body_pending"]
    left, credits = values["body_left"], values["body_credits"]
    assert isinstance(pending, bytes) and isinstance(left, int) and isinstance(credits, int)
    return BodyAt(chunked=bool(values["body_chunked"]), left=left,
                  trailer=bool(values["body_trailer"]), eom=bool(values["body_eom"]),
                  pending=pending, credits=credits)


def to_fields(body: BodyAt) -> dict[str, object]:
    return {"body_chunked": int(body.chunked), "body_left": body.left,
            "body_trailer": int(body.trailer), "body_eom": int(body.eom),
            "body_pending": body.pending, "body_credits": body.credits}
