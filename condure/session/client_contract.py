"""The client role's contract: what the outbound adapter may ask of a client
session, what a client session asks of it, and its phases.

A client session (:mod:`condure.session.client_http`,
:mod:`condure.session.client_req`) is built from a handler's first packet;
it then owns one exchange with an origin. The adapter feeds it handler
packets (``receive_packet``), the origin's bytes (``receive_data``,
``b""`` at the origin's EOF), flush notices (``output_flushed``), the time
(``handle_timer``) and the outcome of a connection attempt (``connected``
or ``connect_failed``). It answers with actions from ``take_actions()``:

- :class:`Connect`: resolve ``target.connect_host``, keep the addresses
  :func:`condure.session.outbound.allowed_addresses` keeps, take a live
  pooled connection for (address, ``target.pool_key``) or connect to the
  addresses in order, with TLS when ``target.tls`` (``server_name`` as SNI
  and verified name, no verification when ``not target.verify``); then call
  ``connected(now)`` or ``connect_failed(condition, now)``. At most one
  origin connection is held at a time; a new ``Connect`` only follows a
  :class:`Release`.
- ``contract.Write``: bytes for the origin, in order.
- ``contract.Send``: a packet for the handler; ``to`` is the handler's
  address (published on PUB as ``"<to> T..."``).
- :class:`Reply`: req mode's one answer, on the request's envelope,
  encoded without ``ext`` (``codec.encode(packet, ext_multi=False)``).
- :class:`Release`: done with the origin connection: back to the pool
  when ``persistent`` (after the writes before it are flushed), else
  closed.
- ``contract.Close``: the session is over; any origin connection still
  held is dropped at once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from condure.session.contract import Close, Send, Write
from condure.session.outbound import Condition, Target
from condure.session.states import TransitionError
from condure.zhttp.packets import Data, Error, Ident, Packet


@dataclass(frozen=True, slots=True)
class Connect:
    """Connect to ``target`` (see the module docstring)."""

    target: Target


@dataclass(frozen=True, slots=True)
class Release:
    """The origin connection is no longer needed: pool it if persistent."""

    persistent: bool


@dataclass(frozen=True, slots=True)
class Reply:
    """Req mode: the answer to the request, on its envelope, without ext."""

    packet: Data | Error


ClientAction = Write | Send | Close | Connect | Release | Reply


class ClientPhase(enum.Enum):
    """Where a client exchange is."""

    CONNECTING = "CONNECTING"  # Connect asked, no connection yet
    EXCHANGE = "EXCHANGE"  # request going out, response head awaited
    RESPONSE = "RESPONSE"  # the response head reached the handler; body flowing
    CLOSED = "CLOSED"

    __hash__ = object.__hash__

    def __str__(self) -> str:
        return self.value


class ClientEvent(enum.Enum):
    CONNECTED = "connected"
    REDIRECT = "redirect"  # another hop: a new Connect
    RESPONSE = "response"
    CLOSE = "close"

    __hash__ = object.__hash__


ClientTable = Mapping[tuple[ClientPhase, ClientEvent], ClientPhase]

_C = ClientPhase
_E = ClientEvent

# Both modes: CONNECTING -connected-> EXCHANGE -response-> RESPONSE,
# EXCHANGE -redirect-> CONNECTING, every phase -close-> CLOSED. (Req mode
# goes from EXCHANGE to CLOSED: its response is the reply.)
CLIENT_TABLE: ClientTable = {
    (_C.CONNECTING, _E.CONNECTED): _C.EXCHANGE,
    (_C.EXCHANGE, _E.REDIRECT): _C.CONNECTING,
    (_C.EXCHANGE, _E.RESPONSE): _C.RESPONSE,
    (_C.CONNECTING, _E.CLOSE): _C.CLOSED,
    (_C.EXCHANGE, _E.CLOSE): _C.CLOSED,
    (_C.RESPONSE, _E.CLOSE): _C.CLOSED,
}


def client_advance(phase: ClientPhase, event: ClientEvent) -> ClientPhase:
    """The phase after ``event``; TransitionError for a move not in the table."""
    try:
        return CLIENT_TABLE[phase, event]
    except KeyError:
        raise TransitionError(f"{event.value} not allowed in {phase.value}") from None


class ClientSession(Protocol):
    """What every client session implements (see the module docstring)."""

    @property
    def rid(self) -> bytes | None:
        """The handler's session id (req mode: None when it sent none)."""

    @property
    def handler(self) -> bytes | None:
        """The handler's address (stream mode), or None."""

    @property
    def phase(self) -> ClientPhase: ...

    @property
    def wants_read(self) -> bool:
        """Whether the adapter should read from the origin now."""

    @property
    def deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next (None: never)."""

    def take_actions(self) -> list[ClientAction]: ...

    def connected(self, now: float) -> None:
        """The Connect asked for succeeded."""

    def connect_failed(self, condition: Condition, now: float) -> None:
        """The Connect asked for failed with ``condition``."""

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the origin; ``b""`` is the end of its input."""

    def receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        """A handler packet for this session (stream mode)."""

    def abort_unknown(self, reason: str) -> None:
        """The handler sent a packet of a type ZHTTP does not have: the
        exchange ends as for any unexpected packet (stream mode)."""

    def output_flushed(self, now: float) -> None:
        """Everything written to the origin reached the kernel."""

    def handle_timer(self, now: float) -> None: ...

    def keep_alive(self) -> tuple[bytes, Ident] | None:
        """(handler address, id+seq) of the keep-alive owed now, or None."""

    def shutdown(self) -> tuple[bytes, Ident] | None:
        """Stop at once; (handler address, id+seq) of the cancel owed."""
