"""The stream-mode WebSocket session: one upgraded client connection, sans-I/O.

Theory of operation. The HTTP session recognises an upgrade request
(reference 5.7.1), checks it (:mod:`condure.session.ws_handshake`) and
hands the connection to a :class:`WebSocketSession` with a
``SwitchSession`` action; the new session keeps the request's id.

``WAIT``    the upgrade request packet went out (seq 0, ``ws``/``wss`` uri,
            no ``stream``/``more``); the client is not served until the
            handler's first data packet. A 101 is the acceptance; anything
            else, or ``error``/``rejected``, is an HTTP answer after which
            the connection closes.
``OPEN``    frames both ways. Client payload goes to the handler against the
            credits it granted (at most ``min(credits, buffer_size)`` bytes a
            packet, ``more`` on all but a message's last packet); with no
            credits nothing is read. Handler packets become frames at once,
            one frame per packet, against the credits condure granted,
            which come back as the frames reach the client.

Closing follows Condure: a close frame from either side is relayed, never
answered by condure itself; the TCP connection ends once both sides have
sent one. Condure does not police the client; condure does what RFC 6455
requires of a server (7.1.7, 8.1): on a protocol error or invalid UTF-8 it
sends a close frame (1002 or 1007), ``cancel`` to the handler, and closes;
1011 when the handler's text is not UTF-8 (:mod:`condure.session.ws_output`).

The upgrade itself (checks, and the switch from the HTTP session) is in
:mod:`condure.session.ws_upgrade`.

The session never reads the clock; at a frame boundary with nothing owed,
or in a handover once the handler let go (even in the middle of a client
frame), it can be exported (``export_record``, :mod:`condure.session.records`).
"""

from __future__ import annotations

from condure.session.actions import Send, Write
from condure.session.contract import Kind, Settings
from condure.session.httpwire import response_fault
from condure.session.peer import HANDLER_GONE, MISSED_IN_MOVE, ZhttpPeer
from condure.session.records import WsRecord
from condure.session.states import (
    ASKED,
    CLOSED,
    OPEN,
    PROCEEDED,
    UNANSWERED,
    WAIT,
    WS_TABLE,
    Event,
    Handoff,
)
from condure.session.ws_frames import PING, PONG
from condure.session.ws_handshake import Deflate, accept_head, rejection
from condure.session.ws_input import ClientInput
from condure.session.ws_output import HandlerOutput, OutputError
from condure.zhttp.packets import (
    Cancel,
    Credit,
    Data,
    Error,
    HandoffProceed,
    HandoffStart,
    Header,
    Ident,
    KeepAlive,
    Packet,
    Ping,
    Pong,
)
from condure.zhttp.packets import Close as ClosePacket

__all__ = ["WebSocketSession"]


GOING_AWAY, SERVICE_RESTART = 1001, 1012  # close codes (RFC 6455 7.4.1, IANA registry)
# Client payload read but not yet forwarded (no credits) that may travel
# with an exported session; more than this and the session is closed instead.
MAX_PENDING_EXPORT = 16384
# What keeps a compressed session from moving (snapshot_obstacle).
CLIENT_CONTEXT = "permessage-deflate with the client's context takeover"
MID_MESSAGE = "a compressed client message is under way"


class WebSocketSession(ZhttpPeer):
    """One WebSocket connection in stream mode (see the module docstring)."""

    kind = Kind.WEBSOCKET
    table = WS_TABLE
    can_move = True
    handoff_needs_handler = True

    def __init__(self, *, instance_id: bytes, rid: bytes, key: bytes, deflate: Deflate | None,
                 buffer_size: int, stream_timeout: float, messages_max: int,
                 max_message_size: int = 0,
                 scheme: bytes, peer_address: bytes | None, peer_port: int | None,
                 session_deadline: float, stream_deadline: float, leftover: bytes = b"") -> None:
        super().__init__(instance_id=instance_id, buffer_size=buffer_size,
                         stream_timeout=stream_timeout, scheme=scheme,
                         peer_address=peer_address, peer_port=peer_port)
        self.rid = rid
        self.key = key
        self.deflate = deflate
        self.messages_max = messages_max
        self.session_deadline = session_deadline
        self.stream_deadline = stream_deadline
        self.state = WAIT
        self.handler: bytes | None = None
        self.out_seq = 0
        self.in_seq = 0
        self.paused = False
        self.client_gone = False
        self.max_message_size = max_message_size  # 0: no limit
        self.input = ClientInput(buffer_size, max_message_size, deflate, leftover)
        self.output = HandlerOutput(buffer_size, deflate, messages_max)
        # Moving to another process (handover): 0, ASKED (handoff-start
        # sent), PROCEEDED (the handler answered and sends nothing more) or
        # UNANSWERED (moving without its answer).
        self.handoff = Handoff.NONE
        # Credits earned while moving: nothing goes to the handler between
        # handoff-start and the resume, so they are sent after it.
        self.credits_owed = 0

    @classmethod
    def from_record(cls, record: WsRecord, *, settings: Settings, instance_id: bytes,
                    now: float) -> WebSocketSession:
        """Rebuild an exported session (handover). Nothing is sent yet:
        ``resume()`` tells the handler the session is back, then goes on
        with the leftover bytes. ``instance_id``: the adopting process's
        address, used when the record names none."""
        self = cls(
            instance_id=record.origin or instance_id, rid=record.rid, key=b"",
            deflate=record.deflate, buffer_size=settings.buffer_size,
            stream_timeout=settings.stream_timeout, messages_max=settings.messages_max,
            max_message_size=settings.max_message_size, scheme=record.scheme,
            peer_address=record.peer_address, peer_port=record.peer_port,
            session_deadline=now + record.session_left,
            stream_deadline=now + record.stream_left, leftover=record.leftover)
        self._advance(Event.ACCEPTED)
        self.adopted = True
        self.handler = record.handler
        self.out_seq = record.out_seq
        self.in_seq = record.in_seq
        self.input.credits = record.in_credits
        self.output.credits = record.out_credits
        self.input.restore(record)
        self.credits_owed = record.credits_owed
        self.output.restore(record.out_type, record.out_framed, record.out_utf8)
        return self

    def export_record(self, now: float) -> WsRecord | None:
        """The record of this session when it may leave now (``resumable``,
        or ``ready_to_export`` in a handover), else None."""
        if self.snapshot_obstacle() is not None or not (self.resumable or self.ready_to_export):
            return None
        frame_left, frame_offset, frame_mask, frame_fin = self.input.frame_fields()
        return WsRecord(
            scheme=self.scheme, peer_address=self.peer_address, peer_port=self.peer_port,
            leftover=bytes(self.input.inbuf),
            session_left=max(self.session_deadline - now, 0.0),
            stream_left=max(self.stream_deadline - now, 0.0), rid=self.rid,
            origin=self.instance_id, handler=self.handler, out_seq=self.out_seq,
            in_seq=self.in_seq, in_credits=self.input.credits, out_credits=self.output.credits,
            msg_opcode=self.input.msg_opcode, msg_size=self.input.msg_size,
            utf8_partial=self.input.utf8.getstate()[0] if self.input.utf8 is not None else b"",
            out_type=self.output.msg_type, out_framed=self.output.framed, deflate=self.deflate,
            pending=bytes(self.input.pending), msg_done=self.input.msg_done,
            credits_owed=self.credits_owed, frame_left=frame_left, frame_offset=frame_offset,
            frame_mask=frame_mask, frame_fin=frame_fin, out_utf8=self.output.utf8_held)

    def __repr__(self) -> str:
        return (f"<WebSocketSession id={self.rid!r} state={self.state} handler={self.handler!r} "
                f"out_seq={self.out_seq} in_seq={self.in_seq} credits={self.input.credits}/"
                f"{self.output.credits} closed={self.input.closed}/{self.output.closed}>")

    def send_request(self, method: bytes, uri: bytes, headers: tuple[Header, ...]) -> None:
        self.actions.append(Send(Data(
            from_=self.instance_id, ids=(Ident(self.rid, 0),), method=method, uri=uri,
            headers=headers or None, credits=self.output.limit,
            peer_address=self.peer_address, peer_port=self.peer_port), None))
        self.out_seq = 1

    # -- the session interface ----------------------------------------------

    @property
    def timeout_answerable(self) -> bool:
        return self.state is WAIT and not self.client_gone

    @property
    def wants_read(self) -> bool:
        if self.state is WAIT:
            # Only to notice a disconnect; frames wait for the acceptance.
            return not self.client_gone and len(self.input.inbuf) < self.buffer_size
        if self.handoff or self.input.at_boundary:
            # Nothing, not even the rest of a frame under way (it moves with
            # its parsing state): the client's bytes stay in the kernel.
            return False
        return (self.state is OPEN and not self.paused and not self.input.closed
                and self.input.credits > 0 and len(self.input.inbuf) < self.buffer_size)

    @property
    def resumable(self) -> bool:
        """At a frame boundary both ways with nothing owed to anyone, and no
        compression context to carry (see snapshot_obstacle)."""
        return (self.state is OPEN and not self.actions and not self.paused
                and self.input.frame is None and not self.input.pending and not self.input.msg_done
                and not self.output.unflushed and not self.output.closed and not self.input.closed
                and self.snapshot_obstacle() is None)

    @property
    def ready_to_export(self) -> bool:
        """Handover: the handler answered handoff-proceed and everything
        written reached the kernel. A client frame may be half read (its
        parsing state travels in the record), and client payload still
        waiting for credits travels too."""
        inp, out = self.input, self.output
        return (self.handoff >= PROCEEDED and self.state is OPEN and not self.actions
                and inp.exportable and not out.unflushed and not out.closed
                and not inp.closed and len(inp.pending) <= MAX_PENDING_EXPORT
                and self.snapshot_obstacle() is None)

    @property
    def close_wait(self) -> str | None:
        """A close frame went one way and not yet the other: the close
        frame this session waits for, else None. Such a session does not
        move; a handover lets its close finish here."""
        if self.state is not OPEN or self.input.closed == self.output.closed:
            return None
        return "the handler's close frame" if self.input.closed else "the client's close frame"

    @property
    def handoff_wait(self) -> str:
        """What a handover is still waiting for, or why the session cannot
        move (the log line when it gives up)."""
        if self.state is WAIT:
            return "the upgrade still waits for the handler's answer"
        if self.close_wait:
            return f"closing: {self.close_wait} did not come in time"
        if not self.handoff and (obstacle := self.snapshot_obstacle()):
            return obstacle  # (begin_handoff refused it)
        if self.handoff == ASKED:
            return "no handoff-proceed in time"
        if self.output.unflushed:
            return "the client does not take what was written to it"
        if len(self.input.pending) > MAX_PENDING_EXPORT:
            return "too much client payload waiting for the handler"
        return self.snapshot_obstacle() or "not at a resumable point in time"

    @property
    def awaiting_handler(self) -> bool:
        return self.state is WAIT

    @property
    def handing_off(self) -> bool:
        return bool(self.handoff)

    def begin_handoff(self, ask: bool = True) -> bool:
        """Handover starts: ask the handler to stop sending (handoff-start),
        or with ``ask`` False move without asking (UNANSWERED); False when
        this session cannot move (see snapshot_obstacle)."""
        if self.handoff:
            return True
        if (self.state is not OPEN or self.handler is None or self.output.closed
                or self.input.closed):
            return False
        obstacle = self.snapshot_obstacle()
        if obstacle is not None:
            # A compressed client message under way: read on to its end
            # only, then begin (handoff_later).
            self.input.stop_at_boundary = obstacle is MID_MESSAGE
            return False
        if ask:
            self._send(HandoffStart)
        self.handoff = ASKED if ask else UNANSWERED
        return True

    def move_unanswered(self) -> bool:
        """The handler did not answer handoff-start in time: move without
        its answer (False when it was not asked or has answered)."""
        if self.handoff != ASKED:
            return False
        self.handoff = UNANSWERED
        return True

    def resume(self) -> None:
        """In the adopting process: tell the handler the session is back (its
        next packet, a keep-alive), then carry on with any leftover input."""
        self.handoff = Handoff.NONE
        self._send_resume()
        if self.credits_owed:
            credits, self.credits_owed = self.credits_owed, 0
            self._send(Credit, credits=credits)
        self.input.pump(self)

    def keep_alive(self) -> tuple[bytes, Ident] | None:
        if self.handoff:
            return None  # the handler would take it for the resume
        return super().keep_alive()

    def snapshot_obstacle(self) -> str | None:
        """What keeps this session from moving now. Only the client's
        compression context matters: condure's own compressor may start
        afresh at any point of its output (a sync flush ends every frame
        on a deflate block boundary, and RFC 7692 never obliges a sender to
        refer back), so an adopted session does, mid-message too."""
        if self.deflate is not None and not self.deflate.client_no_context_takeover:
            return CLIENT_CONTEXT
        if self.input.mid_compressed:
            return MID_MESSAGE
        return None

    @property
    def handoff_later(self) -> bool:
        """begin_handoff waits for a compressed client message to end; it
        may begin once no more of it is under way."""
        return self.input.stop_at_boundary and self.state is OPEN and not self.input.closed

    def receive_data(self, data: bytes, now: float) -> None:
        if self.state is CLOSED:
            return
        if not data:
            if self.state is WAIT:
                self.client_gone = True  # answered with cancel later (5.10.2)
            elif not self.input.closed:
                self._cancel_and_close("client closed without a close frame")
            return
        self.input.inbuf += data
        if self.state is OPEN:
            self.stream_deadline = now + self.stream_timeout
            self.input.pump(self)

    def receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        if self.state is CLOSED:
            return
        if not self._accept_packet(packet, ident, now):
            return
        if isinstance(packet, Cancel) or (isinstance(packet, Error) and (
                self.state is OPEN or packet.condition != b"rejected")):
            self._close(graceful=False, reason="ended by handler")
        elif self.state is WAIT and self.client_gone:
            self._cancel_and_close("client closed")
        elif isinstance(packet, Credit):
            self.input.credits += packet.credits
        elif isinstance(packet, KeepAlive):
            pass
        elif isinstance(packet, HandoffProceed) and self.handoff in (ASKED, UNANSWERED):
            self.handoff = PROCEEDED  # (late: it still makes the move safe)
        elif isinstance(packet, HandoffProceed) and self.adopted and not self.handoff:
            self._send(KeepAlive)  # late, to where it moved from: it holds until one
        elif isinstance(packet, HandoffProceed) and self.output.closed:
            pass  # its close left the handoff (see _out_close): it stays here
        elif isinstance(packet, HandoffStart):
            self._send(HandoffProceed)
            if self.handoff:
                self.handoff = PROCEEDED  # crossed: both sides stopped sending
            else:
                self.paused = True
        elif self.state is WAIT:
            if isinstance(packet, Data):
                self._accept(packet, now)
            elif isinstance(packet, Error):
                fault = response_fault(packet.code or 0, packet.reason or b"",
                                       packet.headers or ())
                if fault is not None:
                    self._close(graceful=False, reason=fault, fault=True)
                    return
                self.actions.append(Write(rejection(
                    packet.code or 0, packet.reason or b"", packet.headers, packet.body)))
                self._close(graceful=True, reason="upgrade rejected by handler")
            else:
                self._close(graceful=False, reason=f"unexpected {type(packet).__name__} packet")
        elif isinstance(packet, Data):
            # Credits count on every data, ping and pong packet, not only
            # on credit packets (reference 5.2, 5.7).
            self.input.credits += packet.credits
            self._out_data(packet, now)
        elif isinstance(packet, (Ping, Pong)):
            self.input.credits += packet.credits
            self._out_control(PING if isinstance(packet, Ping) else PONG, packet.body)
        elif isinstance(packet, ClosePacket):
            self._out_close(packet)
        else:
            self._close(graceful=False, reason=f"unexpected {type(packet).__name__} packet")
        self.input.pump(self)

    def _missed(self, gap: str) -> None:
        self._fail(SERVICE_RESTART, f"{MISSED_IN_MOVE} ({gap})", missed=True)  # may reconnect

    def _gone(self) -> None:
        self._fail(SERVICE_RESTART, HANDLER_GONE, gone=True)  # (no cancel: see peer._gone)

    def abort_unknown(self, reason: str) -> None:
        if self.state is not CLOSED:
            self._close(graceful=False, reason=reason)

    def going_away(self, now: float | None = None, code: int | None = None) -> None:
        """Graceful stop of the process: close frame 1001 (RFC 6455 7.4.1),
        or 1012 when the service restarts and this session cannot move;
        cancel to the handler. A handshake still awaiting the handler is
        left alone (asked again once open)."""
        if self.state is OPEN:
            code = code or GOING_AWAY
            self._fail(code, "going away" if code == GOING_AWAY else "service restart")

    def stop_words(self) -> bytes:
        """Condure stops: close frame 1001 (going away, RFC 6455 7.4.1), as
        the graceful stop's, if none went out yet; not waited for."""
        return self.output.close(GOING_AWAY) if self.state is OPEN else b""

    def output_flushed(self, now: float) -> None:
        output = self.output
        output.messages = 0
        if output.unflushed and self.state is OPEN:
            credits = output.flushed()
            self.stream_deadline = now + self.stream_timeout
            if self.handoff:
                self.credits_owed += credits
            else:
                self._send_credit(credits)

    # -- handler -> client ----------------------------------------------------

    def _accept(self, packet: Data, now: float) -> None:
        code = packet.code or 0
        fault = response_fault(code, packet.reason or b"", packet.headers or (), upgrade=True)
        if fault is not None:
            self._cancel_and_close(fault, fault=True)
            return
        if code != 101:
            # Condure switches to WebSocket anyway (and 1.9.1 aborts when
            # there is a body); condure gives the client the answer as an
            # HTTP response and ends the session.
            self.actions.append(Write(rejection(
                code, packet.reason or b"", packet.headers, packet.body)))
            self._cancel_and_close(f"upgrade answered with {code}", graceful=True)
            return
        head = accept_head(code, packet.reason or b"", packet.headers, self.key, self.deflate)
        if len(head) > self.buffer_size:
            self._cancel_and_close("acceptance head larger than the buffer", fault=True)
            return
        self.actions.append(Write(head))
        self._advance(Event.ACCEPTED)
        self.input.credits += packet.credits or self.buffer_size
        self.stream_deadline = now + self.stream_timeout

    def _out_data(self, packet: Data, now: float) -> None:
        try:
            out = self.output.data(packet)
        except OutputError as e:
            self._output_fault(e)
            return
        if out:
            self.actions.append(Write(out))
        if packet.body:
            self.stream_deadline = now + self.stream_timeout

    def _out_control(self, opcode: int, body: bytes) -> None:
        try:
            out = self.output.control(opcode, body)
        except OutputError as e:
            self._output_fault(e)
            return
        if out:
            self.actions.append(Write(out))

    def _output_fault(self, e: OutputError) -> None:
        if e.close_code:  # with a close frame: 1011 for text that is not UTF-8
            self._fail(e.close_code, e.reason, fault=True)
        elif e.cancel:
            self._cancel_and_close(e.reason, fault=True)
        else:
            self._close(graceful=False, reason=e.reason, fault=True)

    def _out_close(self, packet: ClosePacket) -> None:
        if out := self.output.close(packet.code, packet.body):
            self.actions.append(Write(out))
            if self.input.closed:
                self._close(graceful=True, reason="closed by both sides")
            elif self.handoff:
                # The handler's close crossed the handoff (sent before it
                # read handoff-start, or in answer to it): the session can
                # no longer move. It stays here and reads the client again,
                # whose close frame (RFC 6455 7.1.1) goes to the handler as
                # any would, and ends it; a late handoff-proceed is ignored.
                self.handoff = Handoff.NONE
                self.credits_owed = 0  # (the handler sends nothing more)

    # -- endings ------------------------------------------------------------

    def _fail(self, code: int, reason: str, missed: bool = False, fault: bool = False,
              gone: bool = False) -> None:
        """Fail the WebSocket connection (RFC 6455 7.1.7): close frame,
        cancel to the handler (not when ``gone``), then a graceful TCP close."""
        if out := self.output.close(code):
            self.actions.append(Write(out))
        self._cancel_and_close(reason, graceful=True, missed=missed, fault=fault, gone=gone)
