"""The session contract: what an I/O adapter may ask of a session.

The adapters (``condure/net/conn.py``, ``condure/worker.py``,
``condure/workerproc.py``, ``condure/handover.py``) drive every kind of
session (stream HTTP, WebSocket, req mode, and the stand-in for a failed
one) through this protocol only; nothing else of a session is theirs to
touch. Calls feed the session (bytes, a packet, the time); what it wants
done comes back from :meth:`Session.take_actions` as actions
(:mod:`condure.session.actions`). ``wants_read`` and ``deadline`` are
re-read after every drain.

Handover (docs/handover.md) uses the second half: ``begin_handoff``,
``ready_to_export``/``export_record``, and on the other side a session
kind's ``from_record`` constructor followed by ``resume``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from condure.session.limits import OFF, ReadLimits
from condure.zhttp.packets import Ident, Packet

if TYPE_CHECKING:
    from condure.session.records import Record


# -- what a session asks of its adapter ------------------------------------------

@dataclass(frozen=True, slots=True)
class Write:
    """Bytes for the client, in order. ``ends_response``: these bytes end
    a response (they may be empty): everything queued up to here is owed
    to the client in full, and a later cut of the connection (a ``Close``
    that is not graceful, or resets) drops only what was queued after it
    (a pipelined response that is cut), once the rest is written."""

    data: bytes
    ends_response: bool = False


@dataclass(frozen=True, slots=True)
class Send:
    """A packet for the handler. ``to`` is the handler address for the
    later-packets socket (ROUTER); ``None`` means the first-packet socket
    (PUSH), used for a session's request packet; ``"req"`` (req mode's
    ``REQ_SOCKET``) the DEALER socket of a req-mode listener. ``wire``:
    the packet already encoded (``zhttp.encode`` with its defaults), when
    the session had it at hand; the adapter then sends it as it is."""

    packet: Packet
    to: bytes | str | None
    wire: bytes | None = None


@dataclass(frozen=True, slots=True)
class Close:
    """End the connection.

    ``graceful``: write out what is queued, then shut down the write side
    and let the client close (so an error response is not lost to a reset).
    Otherwise drop the connection at once, discarding queued output, but
    for the responses already complete (``Write.ends_response``): those are
    written out first.

    ``reset``: drop it with a TCP reset (an abortive close: ``SO_LINGER``
    on with a timeout of 0, then close) instead of a FIN, so that the
    client sees an error. Set when a response under way is cut whose
    framing cannot show the cut, a body delimited by the close (RFC 9112
    6.3 item 8): a FIN would make what came so far look complete. Never
    with ``graceful``. Complete responses queued before it are written
    and acknowledged by the client first.
    """

    graceful: bool = True
    reason: str = ""
    reset: bool = False
    # A request went out and no handler ever answered it (the adapter logs
    # which endpoint has no handler).
    unanswered: bool = False
    # The handler broke a rule of ZHTTP or HTTP (the adapter logs ``reason``
    # as a warning, throttled, so that a broken handler is seen).
    handler_fault: bool = False
    # The handler's packets were missed while the session moved without its
    # handoff (the adapter logs it at info level, throttled).
    missed: bool = False
    # The handler no longer had the session when it resumed after a move
    # (it answered with a cancel for an unknown id; logged the same way).
    gone: bool = False


@dataclass(frozen=True, slots=True)
class SwitchSession:
    """From now on ``session`` drives this connection (for example a
    WebSocket session after the upgrade). The adapter swaps sessions and
    goes on draining the new one's actions."""

    session: Session


Action = Write | Send | Close | SwitchSession


# -- what the adapter may ask of a session ----------------------------------------

class Kind(enum.Enum):
    """Which kind of session this is (for log lines and tests; the
    adapters' decisions go through the protocol's members instead)."""

    HTTP = "http"
    WEBSOCKET = "ws"
    REQ = "req"
    ENDED = "ended"


@runtime_checkable
class Session(Protocol):
    """What every session implements (see the module docstring)."""

    # -- identity (log lines, the worker's id registry) --------------------

    @property
    def kind(self) -> Kind:
        """The session's kind."""

    @property
    def rid(self) -> bytes:
        """The ZHTTP session id now in use (it changes between requests)."""

    @property
    def instance_id(self) -> bytes:
        """Condure's ZHTTP address for this session (``from``)."""

    @property
    def peer_address(self) -> bytes | None:
        """The client's address (None for a Unix-socket client)."""

    @property
    def peer_port(self) -> int | None:
        """The client's port (None for a Unix-socket client)."""

    # -- driving it --------------------------------------------------------

    @property
    def wants_read(self) -> bool:
        """Whether the adapter should read from the client now."""

    @property
    def deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next (None: never)."""

    def take_actions(self) -> list[Action]:
        """Everything asked for since the last call, in order."""

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the client; ``b""`` is the end of its input."""

    def receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        """A handler packet routed to this session's id."""

    def abort_unknown(self, reason: str) -> None:
        """A packet of an unknown type came for this session."""

    def output_flushed(self, now: float) -> None:
        """Everything the adapter was asked to write reached the kernel."""

    def reads_held(self, held: bool, now: float) -> None:
        """The adapter stops (``held``) or resumes reading from the client
        for reasons of its own (backpressure towards the handlers, whatever
        ``wants_read`` says): read-side clocks stand still meanwhile."""

    def handle_timer(self, now: float) -> None:
        """``deadline`` passed (or was near): act on it."""

    def keep_alive(self) -> tuple[bytes, Ident] | None:
        """(handler address, id+seq) of the keep-alive owed now, counted as
        sent, or None."""

    def shutdown(self) -> tuple[bytes, Ident] | None:
        """Stop at once (process exit); (handler address, id+seq) of the
        cancel owed, or None. Leaves no action behind but its
        :class:`Close`, if it had not closed before, which tells the
        adapter's drop whether to reset (``Conn.abort``), and before it,
        when a request is waiting whose response has not started, the
        ``503 Service Unavailable`` that answers it (a :class:`Write`;
        the Close is graceful then)."""

    def going_away(self, now: float | None = None, code: int | None = None) -> None:
        """Graceful stop of the process, called repeatedly while draining.
        ``code``: the WebSocket close code to use (None: going away, 1001);
        the other kinds ignore it."""

    # -- moving to another process (handover) ------------------------------

    @property
    def can_move(self) -> bool:
        """Whether this kind of session can ever move (ended sessions
        cannot: a handover closes them politely instead)."""

    @property
    def handoff_needs_handler(self) -> bool:
        """The handoff now waits for the handler's ``handoff-proceed``,
        bounded by the handoff timeout (else only for the request under way
        to finish or reach a point where it can move). Per session and it
        may change: always for a WebSocket; for an HTTP connection only
        while a request in flight is moving (it may become true some time
        after :meth:`begin_handoff`, once the request gets there, and false
        again if the request ends first)."""

    @property
    def awaiting_handler(self) -> bool:
        """A request went out and its handler has not answered yet."""

    @property
    def handoff_later(self) -> bool:
        """:meth:`begin_handoff` returned False but may begin soon: retry it
        (a WebSocket reading a compressed client message to its end)."""

    @property
    def handing_off(self) -> bool:
        """:meth:`begin_handoff` was called and accepted."""

    @property
    def close_wait(self) -> str | None:
        """A WebSocket whose close is under way (a close frame went one way):
        the close frame it waits for, in words; else None. It cannot move;
        a handover lets the close finish (within the handoff timeout)."""

    @property
    def resumable(self) -> bool:
        """Between requests or frames with nothing owed: exportable now."""

    @property
    def ready_to_export(self) -> bool:
        """A handover that began may take the session now."""

    @property
    def handoff_wait(self) -> str:
        """While not ``ready_to_export``: what the handover waits for, in
        words (the log line of a session it gives up on)."""

    def begin_handoff(self, ask: bool = True) -> bool:
        """Start a handover: finish what is under way, start nothing new.
        ``ask``: ask the handler to hold its packets (``handoff-start``),
        else move without its answer (``--handoff skip``). False when it
        cannot start now (retried while ``awaiting_handler`` or
        ``handoff_later``; otherwise the session is closed politely)."""

    def move_unanswered(self) -> bool:
        """The handler did not answer ``handoff-start`` in time: move
        without its answer. False when there was nothing to wait for."""

    def export_record(self, now: float) -> Record | None:
        """The record of this session if it is at a resumable point, else
        None (a handover asks only once ``ready_to_export``)."""

    def resume(self) -> None:
        """In the adopting process, after ``from_record``: carry on."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The listener and process settings a session is built with (the
    ones a resumed session takes from the process adopting it)."""

    buffer_size: int = 8192
    stream_timeout: float = 1800.0
    compression: bool = False
    deflate_context: str = "keep"  # --compression-context (ws_handshake.CONTEXTS)
    messages_max: int = 100
    max_message_size: int = 0  # 0: no limit
    read_limits: ReadLimits = OFF  # --head-timeout, --body-min-rate (session/limits.py)
    body_buffer_size: int = 100000  # req mode: --body-buffer-size
    req_timeout: float = 30.0  # req mode: --req-timeout
