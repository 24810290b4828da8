"""The client role's stream-mode entry point, :func:`stream_session`, and
the one place that states every client session kind is a
:class:`condure.session.client_contract.ClientSession`."""

from __future__ import annotations

import os
from collections.abc import Callable

from condure.session.client_contract import ClientSession
from condure.session.client_http import ClientHttpSession
from condure.session.client_req import ClientReqSession
from condure.session.client_ws import ClientWsSession
from condure.zhttp.packets import Data


def stream_session(packet: Data, *, instance_id: bytes, now: float, buffer_size: int = 8192,
                   stream_timeout: float = 1800.0, compression: bool = False,
                   messages_max: int = 100,
                   random: Callable[[int], bytes] = os.urandom) -> ClientHttpSession:
    """The session for a handler's first stream-mode packet: a
    :class:`ClientWsSession` for a ``ws``/``wss`` uri, else a
    :class:`ClientHttpSession` (ValueError when the packet opens none,
    see ``outbound.first_packet_problem``)."""
    scheme = (packet.uri or b"").split(b":", 1)[0].lower()
    if scheme in (b"ws", b"wss"):
        return ClientWsSession(packet, instance_id=instance_id, now=now,
                               buffer_size=buffer_size, stream_timeout=stream_timeout,
                               compression=compression, messages_max=messages_max,
                               random=random)
    return ClientHttpSession(packet, instance_id=instance_id, now=now,
                             buffer_size=buffer_size, stream_timeout=stream_timeout)


def _every_kind_is_a_client_session(http: ClientHttpSession, req: ClientReqSession,
                                    ws: ClientWsSession) -> list[ClientSession]:
    """Never called: mypy checks here that every kind implements the
    contract."""
    return [http, req, ws]
