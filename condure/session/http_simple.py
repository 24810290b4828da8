"""A read that brings exactly one simple request head, in one step.

Most requests on a kept-alive connection arrive as one read holding one
head: a request line and a few plain fields, no body, no upgrade. For
those, :func:`take` does what the general path (``HeadReader`` and
``HttpSession._request``) does, with one match of the whole head, one pass
over its fields and the request packet encoded as it is built
(``zhttp.codec.encode_stream_request``, sent as ``Send.wire``). Both paths
end in :func:`start_request`, which sends the request packet. Anything
else, or anything it is unsure of, it leaves to the general path by
returning False before touching the session; the tests run both paths on
the same input and compare what comes out (tests/unit/test_http_simple.py).
"""

from __future__ import annotations

from typing import Any, Protocol

from condure.session import httpwire
from condure.session.actions import Send
from condure.session.head import MAX_HEADERS, HeadReader
from condure.session.http_response import Response
from condure.session.states import HEAD, Event
from condure.zhttp.codec import encode_stream_request
from condure.zhttp.packets import Data, Header, Ident


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
    actions: list[Any]

    def _advance(self, event: Event) -> None: ...

# fields that need the general path: a body, or a protocol upgrade
_GENERAL = (b"content-length", b"transfer-encoding", b"upgrade")


def take(s: _Session, data: bytes, now: float) -> bool:
    """Serve ``data`` as the session's next request if it is one whole
    simple head read on its own; False (session untouched) otherwise."""
    reader = s.reader
    if (s.state is not HEAD or s.hold or reader.parser is not None or reader.inbuf
            or len(data) > s.buffer_size or not data.endswith(b"\r\n\r\n")):
        return False
    match = httpwire.SIMPLE_WHOLE_HEAD.fullmatch(data)
    if match is None:
        return False
    method, target, minor, block = match.groups()
    if target[:1] != b"/":
        return False  # absolute form or "*": request_uri decides
    fields = httpwire.SIMPLE_FIELD.findall(block)
    if len(fields) > MAX_HEADERS:
        return False
    http11 = minor == b"1"
    host = None
    connection: list[bytes] = []
    for name, value in fields:
        lower = name.lower()
        if lower == b"host":
            if host is not None:
                return False
            host = value
        elif lower in _GENERAL:
            return False
        elif lower == b"connection":
            connection.extend(t.strip().lower() for t in value.split(b","))
    if host is None and http11:
        return False
    uri = s.scheme + b"://" + httpwire.uri_host(host) + target
    if len(uri) > httpwire.MAX_URI:
        return False
    # What _read_head does before _request:
    s.head_deadline = None
    s.stream_deadline = now + s.stream_timeout
    headers = tuple(fields)
    start_request(s, method, uri, headers, http11, httpwire.keep_alive(http11, connection),
                  more=False,
                  wire=encode_stream_request(s.instance_id, s.rid, method, uri, headers,
                                             s.buffer_size, s.peer_address, s.peer_port))
    return True


def start_request(s: _Session, method: bytes, uri: bytes, headers: tuple[Header, ...],
                  http11: bool, keep_alive: bool, *, more: bool, wire: bytes | None) -> None:
    """The request goes to the handler (both paths): the response's
    framing facts noted, the session in WAIT, the request packet queued
    (``wire``: that packet already encoded, or None)."""
    response = s.response
    response.http11 = http11
    response.is_head = method == b"HEAD"
    s.keep_alive_asked = keep_alive
    s._advance(Event.REQUEST)
    packet = Data(from_=s.instance_id, ids=(Ident(s.rid, 0),), method=method, uri=uri,
                  headers=headers or None, credits=s.buffer_size, more=more, stream=True,
                  peer_address=s.peer_address, peer_port=s.peer_port)
    s.out_seq = 1
    s.actions.append(Send(packet, None, wire))
