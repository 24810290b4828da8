"""A read that brings exactly one simple request head, and a packet that
is the whole response to it, each in one step.

Most requests on a kept-alive connection arrive as one read holding one
head: a request line and a few plain fields, no body, no upgrade. For
those, :func:`take` does what the general path (``HeadReader`` and
``HttpSession._request``) does, with one match of the whole head, one pass
over its fields and the request packet encoded as it is built
(``zhttp.plain.encode_request``, sent as ``Send.wire``). Both paths
end in :func:`start_request`, which sends the request packet. Anything
else, or anything it is unsure of, it leaves to the general path by
returning False before touching the session; the tests run both paths on
the same input and compare what comes out (tests/unit/test_http_simple.py).

:func:`answer` does the same for the other direction: the handler's first
packet for a request without a body, when it is the whole response (no
``more``), becomes the response's bytes and the next cycle in one step,
as ``HttpSession._receive_packet`` and ``Response`` would make them.
"""

from __future__ import annotations

from typing import Any, Protocol

from condure.session import httpwire
from condure.session.actions import Send, Write
from condure.session.head import MAX_HEADERS, HeadReader
from condure.session.http_body import NO_BODY, RequestBody
from condure.session.http_response import Response
from condure.session.limits import BodyRate
from condure.session.peer import MAX_FROM, SESSION_TIMEOUT
from condure.session.states import HEAD, WAIT, Event, ResponseState
from condure.zhttp.packets import Data, Header, Ident
from condure.zhttp.plain import encode_request


class _Session(Protocol):
    """What :func:`take` uses of an ``HttpSession`` (which imports this
    module, so it is named by its parts)."""

    state: Any
    hold: bool
    reader: HeadReader
    response: Response
    buffer_size: int
    scheme: bytes
    instance_id: bytes
    rid: bytes
    peer_address: bytes | None
    peer_port: int | None
    head_deadline: float | None
    stream_deadline: float
    stream_timeout: float
    keep_alive_asked: bool
    out_seq: int
    in_seq: int
    handler: bytes | None
    session_deadline: float
    paused: bool
    client_gone: bool
    leaving: bool
    body: RequestBody
    rate: BodyRate | None
    actions: list[Any]

    def _advance(self, event: Event) -> None: ...

    def _maybe_finish(self, now: float) -> None: ...

# fields that need the general path: a body, or a protocol upgrade
_GENERAL = (b"content-length", b"transfer-encoding", b"upgrade")


def simple_head(data: bytes, reader: HeadReader, buffer_size: int,
                scheme: bytes) -> tuple[bytes, bytes, tuple[Header, ...], bool, bool] | None:
    """``(method, uri, headers, http11, keep_alive)`` of ``data`` if it is
    one whole simple head read on its own (nothing buffered before it);
    None otherwise. Reads nothing but its arguments."""
    if (reader.parser is not None or reader.inbuf or len(data) > buffer_size
            or not data.endswith(b"\r\n\r\n")):
        return None
    match = httpwire.SIMPLE_WHOLE_HEAD.fullmatch(data)
    if match is None:
        return None
    method, target, minor, block = match.groups()
    if target[:1] != b"/" or method == b"CONNECT":
        return None  # another form, or CONNECT: the general path decides
    fields = httpwire.SIMPLE_FIELD.findall(block)
    if len(fields) > MAX_HEADERS:
        return None
    http11 = minor == b"1"
    host = None
    connection: list[bytes] = []
    for name, value in fields:
        lower = name.lower()
        if lower == b"host":
            if host is not None or not httpwire.valid_host(value):
                return None
            host = value
        elif lower in _GENERAL:
            return None
        elif lower == b"connection":
            connection.extend(t.strip().lower() for t in value.split(b","))
    if host is None and http11:
        return None
    uri = scheme + b"://" + httpwire.uri_host(host) + target
    if len(uri) > httpwire.MAX_URI:
        return None
    return method, uri, tuple(fields), http11, httpwire.keep_alive(http11, connection)


def take(s: _Session, data: bytes, now: float) -> bool:
    """Serve ``data`` as the session's next request if it is one whole
    simple head read on its own; False (session untouched) otherwise."""
    if s.state is not HEAD or s.hold:
        return False
    simple = simple_head(data, s.reader, s.buffer_size, s.scheme)
    if simple is None:
        return False
    method, uri, headers, http11, keep_alive = simple
    # What _read_head does before _request:
    s.head_deadline = None
    s.stream_deadline = now + s.stream_timeout
    start_request(s, method, uri, headers, http11, keep_alive, more=False,
                  wire=encode_request(s.instance_id, s.rid, 0, method, uri, headers,
                                      s.buffer_size, True, s.peer_address, s.peer_port))
    return True


def start_request(s: _Session, method: bytes, uri: bytes, headers: tuple[Header, ...],
                  http11: bool, keep_alive: bool, *, more: bool, wire: bytes | None) -> None:
    """The request goes to the handler (both paths): the response's
    framing facts noted, the session in WAIT, the request packet queued
    (``wire``: that packet already encoded, or None)."""
    response = s.response
    response.http11 = http11
    response.is_head = method == b"HEAD"
    response.head_ends = not more
    s.keep_alive_asked = keep_alive
    s._advance(Event.REQUEST)
    packet = Data(from_=s.instance_id, ids=(Ident(s.rid, 0),), method=method, uri=uri,
                  headers=headers or None, credits=s.buffer_size, more=more, stream=True,
                  peer_address=s.peer_address, peer_port=s.peer_port)
    s.out_seq = 1
    s.actions.append(Send(packet, None, wire))


def answer(s: _Session, packet: Data, ident: Ident, now: float) -> bool:
    """Serve ``packet`` as the whole response to the request the session
    waits for, if it is one (the first packet, no ``more``, a status with
    a body, within the credits and the buffer); False (session untouched)
    otherwise."""
    response = s.response
    body = packet.body
    code = packet.code or 0
    if (s.state is not WAIT or packet.more or (ident.seq is not None and ident.seq != 0)
            or s.in_seq != 0
            or s.body is not NO_BODY or s.client_gone or s.rate is not None
            or len(packet.from_) > MAX_FROM or code < 200 or code == 204 or code == 304
            or len(body) > response.credits):
        return False
    headers = packet.headers or ()
    if httpwire.response_fault(code, packet.reason or b"", headers) is not None:
        return False  # the general path refuses it
    length: int | bytes = len(body)
    for key, value in headers:
        if key.lower() == b"content-length":
            length = value.strip()
            if httpwire.length_value(length) != len(body):
                return False  # the general path refuses it
    http11 = response.http11
    if s.keep_alive_asked and not s.leaving:
        connection = None if http11 else b"keep-alive"
    else:
        connection = b"close" if http11 else None
    head = httpwire.response_head(http11=http11, code=code, reason=packet.reason or b"",
                                  headers=headers, connection=connection,
                                  content_length=length, chunked=False)
    if len(head) > s.buffer_size:
        return False
    # What _accept_packet, _advance, Response.data and _response_data do:
    if ident.seq is not None:
        s.in_seq = 1
    s.handler = packet.from_
    s.session_deadline = now + SESSION_TIMEOUT
    s.paused = False
    s._advance(Event.ANSWERED)
    response.credits -= len(body)
    response.discard_body = response.is_head
    response.state = ResponseState.DONE
    s.actions.append(Write(head if response.is_head else head + body, ends_response=True))
    s.stream_deadline = now + s.stream_timeout
    s._maybe_finish(now)
    return True
