"""The upgrade of an HTTP request to a WebSocket session, sans-I/O: the
request is checked (:mod:`condure.session.ws_handshake`) and the HTTP
session hands its connection to a
:class:`condure.session.websocket.WebSocketSession` (which keeps the
request's id), or condure refuses the upgrade itself."""

from __future__ import annotations

from typing import Protocol

from condure.session.actions import Action, Close, SwitchSession, Write
from condure.session.httpwire import request_uri
from condure.session.websocket import WebSocketSession
from condure.session.ws_handshake import HandshakeError, check_upgrade, is_upgrade, refusal
from condure.zhttp.packets import Header

__all__ = ["is_upgrade", "upgrade"]


class Upgrading(Protocol):
    """What :func:`upgrade` reads of the HTTP session it ends."""

    compression: bool
    deflate_context: str
    scheme: bytes
    instance_id: bytes
    rid: bytes
    buffer_size: int
    stream_timeout: float
    messages_max: int
    max_message_size: int
    peer_address: bytes | None
    peer_port: int | None
    session_deadline: float
    stream_deadline: float

    def leftover(self) -> bytes: ...


def upgrade(http: Upgrading, method: bytes, target: bytes, headers: tuple[Header, ...]
            ) -> list[Action]:
    """Actions that end the HTTP session ``http`` on an upgrade request: the
    switch to a WebSocket session, or condure's refusal of a bad upgrade
    (400, or 426 for another version; Condure closed silently)."""
    try:
        up = check_upgrade(method, headers, compression=http.compression,
                           context=http.deflate_context)
    except HandshakeError as e:
        return [Write(refusal(e.status, e.detail)),
                Close(graceful=True, reason=f"bad upgrade: {e.detail}")]
    scheme = b"wss" if http.scheme == b"https" else b"ws"
    ws = WebSocketSession(
        instance_id=http.instance_id, rid=http.rid, key=up.key, deflate=up.deflate,
        buffer_size=http.buffer_size, stream_timeout=http.stream_timeout,
        messages_max=http.messages_max, max_message_size=http.max_message_size,
        scheme=http.scheme, peer_address=http.peer_address, peer_port=http.peer_port,
        session_deadline=http.session_deadline, stream_deadline=http.stream_deadline,
        leftover=http.leftover())
    ws.send_request(method, request_uri(scheme, headers, target), headers)
    return [SwitchSession(ws)]
