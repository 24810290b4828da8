"""What a session asks its I/O adapter to do.

A session never touches a socket, the event loop or the clock. Each call
that feeds it (bytes, EOF, a packet, a timer) appends actions to a list the
adapter drains with ``session.take_actions()``; the adapter executes them in
order. Reading is not an action but a property (``session.wants_read``)
that the adapter re-checks after every drain, and so is the next deadline
(``session.deadline``).
"""

from __future__ import annotations

from dataclasses import dataclass

from condure.zhttp.packets import Packet


@dataclass(frozen=True, slots=True)
class Write:
    """Bytes for the client, in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Send:
    """A packet for the handler. ``to`` is the handler address for the
    later-packets socket (ROUTER); ``None`` means the first-packet socket
    (PUSH), used for a session's request packet."""

    packet: Packet
    to: bytes | None


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection.

    ``graceful``: write out what is queued, then shut down the write side
    and let the client close (so an error response is not lost to a reset).
    Otherwise drop the connection at once, discarding queued output.
    """

    graceful: bool = True
    reason: str = ""
    # A request went out and no handler ever answered it (the adapter logs
    # which endpoint has no handler).
    unanswered: bool = False


@dataclass(frozen=True, slots=True)
class SwitchSession:
    """From now on ``session`` drives this connection (for example a
    WebSocket session after the upgrade). The adapter swaps sessions and
    goes on draining the new one's actions."""

    session: object


Action = Write | Send | Close | SwitchSession
