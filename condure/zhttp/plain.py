"""The two packets of a plain stream-mode exchange, in one step each.

Most requests are a head without a body, answered by one data packet.
:func:`encode_request` writes the first (``Data`` to bytes) without
building the packet for ``encode``; :func:`decode_data` reads the second
(bytes to ``Data``) without the general reader's per-field dispatch. Most
WebSocket traffic is whole messages and the credits for them:
:func:`encode_message` and :func:`encode_credit` write those. Each
does exactly what the general function does for its shape, and gives
anything else to it: :func:`decode` tries :func:`decode_data`, then
``codec.decode``. tests/unit/test_zhttp_plain.py holds both against the
general functions.
"""

from __future__ import annotations

from typing import Any

from .codec import (
    _EXT_MULTI,
    _MAX32,
    FAST_POP,
    PacketError,
    _headers,
    _int,
    _is_utf8,
    _read_headers,
)
from .codec import decode as decode_general
from .packets import Data, Header, Ident, Packet

__all__ = ["decode", "decode_data", "encode_credit", "encode_message", "encode_request"]


def encode_request(from_: bytes, rid: bytes, seq: int | None, method: bytes, uri: bytes,
                   headers: tuple[Header, ...], credits: int, stream: bool,
                   peer_address: bytes | None, peer_port: int | None) -> bytes:
    """``encode()`` of the request packet of a request without a body,
    ``Data(from_, (Ident(rid, seq),), method=, uri=, headers=, credits=,
    stream=, peer_address=, peer_port=)``, in one step (stream mode: seq
    0, credits, stream; req mode: no seq, no credits)."""
    parts = [b"4:from,%d:%b," % (len(from_), from_) if from_ else b"",
             b"2:id,%d:%b," % (len(rid), rid),
             b"" if seq is None else b"3:seq," + _int(seq), _EXT_MULTI,
             b"6:method,%d:%b," % (len(method), method) if method else b"",
             b"3:uri,%d:%b," % (len(uri), uri) if uri else b"",
             _headers(headers) if headers else b"",
             b"7:credits," + _int(credits) if credits else b"",
             b"6:stream,4:true!" if stream else b""]
    if peer_address:
        parts.append(b"12:peer-address,%d:%b," % (len(peer_address), peer_address))
        parts.append(b"9:peer-port," + _int(peer_port or 0))
    body = b"".join(parts)
    return b"T%d:%b}" % (len(body), body)


def _link_head(from_: bytes, rid: bytes, seq: int) -> bytes:
    digits = b"%d" % seq
    return b"%b2:id,%d:%b,3:seq,%d:%b#%b" % (
        b"4:from,%d:%b," % (len(from_), from_) if from_ else b"", len(rid), rid,
        len(digits), digits, _EXT_MULTI)


def encode_message(from_: bytes, rid: bytes, seq: int, content_type: bytes | None,
                   body: bytes) -> bytes:
    """``encode()`` of ``Data(from_, (Ident(rid, seq),), content_type=,
    body=)``: a whole WebSocket message (or a body piece without ``more``)
    for the handler, in one step."""
    inner = b"%b%b%b" % (
        _link_head(from_, rid, seq),
        b"12:content-type,%d:%b," % (len(content_type), content_type) if content_type else b"",
        b"4:body,%d:%b," % (len(body), body) if body else b"")
    return b"T%d:%b}" % (len(inner), inner)


def encode_credit(from_: bytes, rid: bytes, seq: int, credits: int) -> bytes:
    """``encode()`` of ``Credit(from_, (Ident(rid, seq),), credits=)``."""
    inner = _link_head(from_, rid, seq) + b"4:type,6:credit,7:credits," + _int(credits)
    return b"T%d:%b}" % (len(inner), inner)


# The keys of a plain data packet from a handler: one id (and its seq),
# the response fields, body and credits. Any other key (type, ext, an id
# list, request-direction fields) goes to the general reader.
_PLAIN = frozenset((b"from", b"id", b"seq", b"code", b"reason", b"headers", b"content-type",
                    b"body", b"credits", b"more"))


def decode_data(payload: bytes) -> Data | None:
    """``codec.decode(payload)`` when it is a plain data packet that
    reader accepts; None for anything else (including anything it would
    refuse: it decides, and words the refusal)."""
    if FAST_POP is None or payload[:1] != b"T":
        return None
    try:
        top: Any = FAST_POP(payload[1:])[0]
    except Exception:  # noqa: BLE001 - any refusal: the general reader decides
        return None
    if type(top) is not dict or not top.keys() <= _PLAIN or None in top.values():
        return None  # (a null is never a valid value: absent ones read as None below)
    get = top.get
    from_ = get(b"from", b"")
    rid = get(b"id")
    seq = get(b"seq")
    code = get(b"code")
    reason = get(b"reason")
    content_type = get(b"content-type")
    body = get(b"body", b"")
    credits = get(b"credits", 0)
    more = get(b"more", False)
    if (type(from_) is not bytes or type(rid) is not bytes
            or (seq is not None and (type(seq) is not int or not 0 <= seq <= _MAX32))
            or (code is not None and (type(code) is not int or not 0 <= code <= _MAX32))
            or (reason is not None and (type(reason) is not bytes or not _is_utf8(reason)))
            or (content_type is not None and type(content_type) is not bytes)
            or type(body) is not bytes or type(more) is not bool
            or type(credits) is not int or not 0 <= credits <= _MAX32):
        return None
    headers = get(b"headers")
    if headers is not None:
        try:
            headers = _read_headers(headers)
        except PacketError:
            return None
    return Data(from_, (Ident(rid, seq),), False, None, None, code, reason, headers,
                content_type, body, credits, more)


def decode(payload: bytes) -> Packet:
    """Parse one ZHTTP packet: ``codec.decode``, a plain data packet in
    one step."""
    packet = decode_data(payload)
    return packet if packet is not None else decode_general(payload)
