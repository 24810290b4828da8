"""What every stream-mode session shares: its end of one ZHTTP session.

The HTTP and WebSocket sessions differ in what they do with a packet, not
in how a packet is accepted (address length, sequence number, liveness),
how condure numbers its own packets, or how a session ends. That part
lives here: :class:`ZhttpLink` (accepting and numbering packets, shared
with the client role's stream sessions) and :class:`ZhttpPeer` (the
server role's timers and endings). A subclass sets ``rid``, ``state``,
``handler``, ``out_seq``, ``in_seq``, ``paused``, ``session_deadline`` and
``stream_deadline``; the handler is known (``handler`` is not None) only
while a ZHTTP session is under way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from condure.session.actions import Action, Close, Send, Write
from condure.session.httpwire import error_response
from condure.session.states import CLOSED, Event, Phase, Table, advance
from condure.zhttp.packets import Cancel, Credit, Data, Ident, KeepAlive, Packet
from condure.zhttp.plain import encode_credit, encode_message

SESSION_TIMEOUT = 60.0  # handler silence that ends a session (reference 5.8)
MAX_FROM = 64  # longest handler address accepted (reference 4.2)


class ZhttpLink:
    """Accepting the handler's packets and numbering condure's, for a
    stream-mode session of either role."""

    # Slots here and in the classes below it: an HttpSession has no
    # instance dict (see there); other subclasses may have one.
    __slots__ = ("handler", "in_seq", "out_seq", "session_deadline")

    instance_id: bytes
    rid: bytes
    handler: bytes | None
    out_seq: int
    in_seq: int
    session_deadline: float
    actions: list[Any]
    adopted = False  # rebuilt from a record exported by another process

    def _next_ident(self) -> Ident:
        ident = Ident(self.rid, self.out_seq)
        self.out_seq += 1
        return ident

    def _send(self, kind: Callable[..., Packet], **fields: Any) -> None:
        ident = self._next_ident()
        self.actions.append(Send(kind(from_=self.instance_id, ids=(ident,), **fields),
                                 self.handler))

    def _send_message(self, content_type: bytes | None, body: bytes) -> None:
        """``_send(Data, content_type=, body=)``, the packet encoded as it is
        built (the common WebSocket message)."""
        ident = self._next_ident()
        from_ = self.instance_id
        self.actions.append(Send(
            Data(from_=from_, ids=(ident,), content_type=content_type, body=body),
            self.handler, encode_message(from_, ident.id, self.out_seq - 1, content_type, body)))

    def _send_credit(self, credits: int) -> None:
        """``_send(Credit, credits=)``, the packet encoded as it is built."""
        ident = self._next_ident()
        from_ = self.instance_id
        self.actions.append(Send(Credit(from_=from_, ids=(ident,), credits=credits),
                                 self.handler,
                                 encode_credit(from_, ident.id, self.out_seq - 1, credits)))

    def _accept_packet(self, packet: Packet, ident: Ident, now: float) -> bool:
        """Reference 4.2 and 4.6: check the sender's address and the seq;
        an accepted packet names the handler and proves it alive. False when
        the packet ended the session instead, or (adopted sessions only) was
        an old copy to ignore."""
        if len(packet.from_) > MAX_FROM:
            self._abort("handler address too long")
            return False
        if ident.seq is not None:
            if ident.seq < self.in_seq and self.adopted:
                # Moved here from another worker that shares our address:
                # the handler's packets reached both, and that one already
                # took this (handover). A copy, not a protocol error.
                return False
            if ident.seq != self.in_seq:
                if self.adopted and ident.seq > self.in_seq:
                    self._missed(f"seq {ident.seq}, expected {self.in_seq}")
                else:
                    self._abort(f"bad seq {ident.seq}, expected {self.in_seq}")
                return False
            self.in_seq += 1
        self.handler = packet.from_
        self.session_deadline = now + SESSION_TIMEOUT
        return True

    def _abort(self, reason: str) -> None:
        """Handler-caused end: close, and tell the handler nothing."""
        raise NotImplementedError

    def move_unanswered(self) -> bool:
        """See the session contract; only a WebSocket waits for an answer."""
        return False

    def _missed(self, gap: str) -> None:
        """An adopted session's handler packet skips seq numbers: packets
        sent while it moved without the handler's handoff were missed."""
        self._abort(f"bad seq ({gap})")


# The start of the reason of a session closed for handler packets missed
# while it moved (the adapter logs these at info level, throttled).
MISSED_IN_MOVE = "handler packets missed while it moved"
# The reason of a session whose handler no longer had it when it resumed
# (see ZhttpPeer._accept_packet; logged the same way).
HANDLER_GONE = "the handler no longer had it when it resumed after a move"


class ZhttpPeer(ZhttpLink):
    """The ZHTTP end of a stream-mode session (see the module docstring)."""

    __slots__ = ("actions", "adopted", "buffer_size", "instance_id", "paused", "peer_address",
                 "peer_port", "scheme", "state", "stream_timeout", "unheard")

    table: Table  # the session kind's transition table (condure/session/states.py)
    state: Phase
    paused: bool
    stream_deadline: float

    def __init__(self, *, instance_id: bytes, buffer_size: int, stream_timeout: float,
                 scheme: bytes, peer_address: bytes | None, peer_port: int | None) -> None:
        self.instance_id = instance_id
        self.buffer_size = buffer_size
        self.stream_timeout = stream_timeout
        self.scheme = scheme
        self.peer_address = peer_address
        self.peer_port = peer_port
        self.actions: list[Action] = []
        self.adopted = False  # rebuilt from a record exported by another process
        self.unheard = False  # resumed after a move, nothing from the handler since

    def _advance(self, event: Event) -> None:
        try:
            self.state = self.table[self.state, event]
        except KeyError:
            advance(self.table, self.state, event)  # raises TransitionError

    @property
    def timeout_answerable(self) -> bool:
        """A request is waiting and nothing of its answer reached the client:
        a session timeout is answered with 504 (set by each session kind)."""
        return False

    @property
    def cut_unmarked(self) -> bool:
        """Closing now would cut a response whose framing cannot show the
        cut, so the close must be a reset (``Close.reset``; set by the
        session kinds that have such responses)."""
        return False

    @property
    def deadline(self) -> float | None:
        """When ``handle_timer`` must be called next (None: never)."""
        if self.state is CLOSED:
            return None
        return min(self.session_deadline, self.stream_deadline)

    def take_actions(self) -> list[Action]:
        actions, self.actions = self.actions, []
        return actions

    def handle_timer(self, now: float) -> None:
        if self.state is CLOSED:
            return
        if now >= self.session_deadline:
            # No cancel: the handler's silence is the cause (reference 5.8).
            # Condure drops the connection; when the client has had nothing
            # yet, condure answers as a gateway should (RFC 9110 15.6.5).
            if self.timeout_answerable:
                self.actions.append(Write(error_response(504)))
                unanswered = self.handler is None
                self._close(graceful=True, unanswered=unanswered,
                            reason="no handler answered" if unanswered else "session timeout")
            else:
                self._close(graceful=False, reason="session timeout")
        elif now >= self.stream_deadline:
            self._cancel_and_close("stream timeout")  # Condure 1.10 sends cancel

    def reads_held(self, held: bool, now: float) -> None:
        """The adapter holds reads back (contract.Session.reads_held): no
        read-side clock here (HTTP sessions have theirs)."""

    def keep_alive(self) -> tuple[bytes, Ident] | None:
        """The (handler address, id+seq) of a keep-alive for this session,
        counted as sent, or None when no handler is known."""
        if self.handler is None or self.state is CLOSED:
            return None
        return self.handler, self._next_ident()

    def shutdown(self) -> tuple[bytes, Ident] | None:
        """Stop now (process exit): the cancel owed to the handler, if any.
        Only the Close stays queued (it says whether the drop resets),
        after a ``503 Service Unavailable`` for a request still waiting
        whose response has not started (``timeout_answerable``): condure
        gives up on it because it stops or restarts, not because the
        handler is silent (that is the 504 of handle_timer), and the
        client may try again (RFC 9110 15.6.4); or after what else the
        session kind owes its client at a stop (``stop_words``)."""
        owed = ZhttpPeer.keep_alive(self)  # even while moving (see WebSocketSession)
        self.actions.clear()
        if self.state is CLOSED:
            return owed
        words = error_response(503) if self.timeout_answerable else self.stop_words()
        if words:
            self.actions.append(Write(words))
            self._close(graceful=True, reason="stopping: answered with its last words")
        else:
            self._close(graceful=False, reason="shutdown")
        return owed

    def stop_words(self) -> bytes:
        """What the client is owed when condure stops, apart from the 503
        of a request waiting for its handler (b"": nothing)."""
        return b""

    def _accept_packet(self, packet: Packet, ident: Ident, now: float) -> bool:
        if not super()._accept_packet(packet, ident, now):
            return False
        if self.unheard:
            # The handler's first packet since the resume's keep-alive. A
            # cancel outside its numbering (no seq) is what a ZHTTP peer
            # answers for an id it does not know: the session ended on its
            # side while it moved (its last packets, the answer of a long-
            # poll say, went out while no condure was subscribed).
            self.unheard = False
            if ident.seq is None and type(packet) is Cancel:
                self._gone()
                return False
        self.paused = False
        return True

    def _send_resume(self) -> None:
        """In the adopting process: the keep-alive that tells the handler
        the session is back; the session is ``unheard`` until the handler's
        next packet (see _accept_packet)."""
        self.unheard = True
        self._send(KeepAlive)

    def _gone(self) -> None:
        """The handler no longer had this session when it resumed after a
        move (see _accept_packet): end it, with nothing to tell the handler.
        Dropped here; the HTTP and WebSocket sessions end it as one whose
        handler packets were missed (``_missed``), but for the cancel."""
        self._close(graceful=False, reason=HANDLER_GONE, gone=True)

    def _cancel_and_close(self, reason: str, graceful: bool = False, fault: bool = False,
                          missed: bool = False, gone: bool = False) -> None:
        """``fault``: the handler broke a rule (the adapter warns);
        ``missed``: its packets were missed in a move; ``gone``: the handler
        no longer has the session, so no cancel goes to it (see Close)."""
        if self.handler is not None and self.state is not CLOSED and not gone:
            self._send(Cancel)
        self._close(graceful=graceful, reason=reason, fault=fault, missed=missed, gone=gone)

    def _abort(self, reason: str) -> None:
        """Handler-caused end: close, and tell the handler nothing."""
        self._close(graceful=False, reason=reason, fault=True)

    def _close(self, *, graceful: bool, reason: str, unanswered: bool = False,
               fault: bool = False, missed: bool = False, gone: bool = False) -> None:
        if self.state is CLOSED:
            return
        reset = self.cut_unmarked  # (whatever the cause: the client must see the cut)
        self._advance(Event.CLOSE)
        self.actions.append(Close(graceful=graceful and not reset, reason=reason, reset=reset,
                                  unanswered=unanswered, handler_fault=fault, missed=missed,
                                  gone=gone))
