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
sends a close frame (1002 or 1007), ``cancel`` to the handler, and closes.

The session never reads the clock; at a frame boundary with nothing owed
it can be exported (:mod:`condure.session.ws_snapshot`).
"""

from __future__ import annotations

import struct

from condure.session.actions import Action, Close, Send, SwitchSession, Write
from condure.session.httpwire import request_uri
from condure.session.peer import ZhttpPeer
from condure.session.states import CLOSED, WAIT
from condure.session.ws_frames import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    Deflater,
    Inflater,
    close_payload,
    frame,
)
from condure.session.ws_handshake import (
    Deflate,
    HandshakeError,
    accept_head,
    check_upgrade,
    is_upgrade,
    refusal,
    rejection,
)
from condure.session.ws_input import OPEN, InputMixin
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

__all__ = ["WebSocketSession", "is_upgrade", "upgrade"]

ASKED, PROCEEDED = 1, 2  # WebSocketSession.handoff
GOING_AWAY, SERVICE_RESTART = 1001, 1012  # close codes (RFC 6455 7.4.1, IANA registry)
# Client payload read but not yet forwarded (no credits) that may travel
# with an exported session; more than this and the session is closed instead.
MAX_PENDING_EXPORT = 16384


def upgrade(http, method: bytes, target: bytes, headers: tuple[Header, ...]) -> list[Action]:
    """Actions that end the HTTP session ``http`` on an upgrade request: the
    switch to a WebSocket session, or condure's refusal of a bad upgrade
    (400, or 426 for another version; Condure closed silently)."""
    try:
        up = check_upgrade(method, headers, compression=http.compression)
    except HandshakeError as e:
        return [Write(refusal(e.status, e.detail)),
                Close(graceful=True, reason=f"bad upgrade: {e.detail}")]
    scheme = b"wss" if http.scheme == b"https" else b"ws"
    ws = WebSocketSession(
        instance_id=http.instance_id, rid=http.rid, key=up.key, deflate=up.deflate,
        buffer_size=http.buffer_size, stream_timeout=http.stream_timeout,
        messages_max=http.messages_max, max_message_size=http.max_message_size, scheme=http.scheme, peer_address=http.peer_address,
        peer_port=http.peer_port, session_deadline=http.session_deadline,
        stream_deadline=http.stream_deadline, leftover=http._leftover())
    ws.send_request(method, request_uri(scheme, headers, target), headers)
    return [SwitchSession(ws)]


class WebSocketSession(ZhttpPeer, InputMixin):
    """One WebSocket connection in stream mode (see the module docstring)."""

    def __init__(self, *, instance_id: bytes, rid: bytes, key: bytes, deflate: Deflate | None,
                 buffer_size: int, stream_timeout: float, messages_max: int,
                 max_message_size: int = 0,
                 scheme: bytes, peer_address: bytes | None, peer_port: int | None,
                 session_deadline: float, stream_deadline: float, leftover: bytes = b"") -> None:
        self.instance_id = instance_id
        self.rid = rid
        self.key = key
        self.deflate = deflate
        self.buffer_size = buffer_size
        self.stream_timeout = stream_timeout
        self.messages_max = messages_max
        self.max_message_size = max_message_size  # 0: no limit
        self.msg_size = 0  # bytes of the client message under way
        self.scheme = scheme
        self.peer_address = peer_address
        self.peer_port = peer_port
        self.session_deadline = session_deadline
        self.stream_deadline = stream_deadline
        self.actions: list[Action] = []
        self.state = WAIT
        self.handler: bytes | None = None
        self.out_seq = 0
        self.in_seq = 0
        self.paused = False
        self.client_gone = False
        # client -> handler
        self.inbuf = bytearray(leftover)
        self.frame = None  # header of the data frame being read
        self.frame_left = 0
        self.frame_offset = 0
        self.msg_opcode = 0  # TEXT/BINARY while a client message is under way
        self.msg_compressed = False
        self.msg_done = False  # its last payload byte is in ``pending``
        self.pending = bytearray()  # payload for the handler, waiting for credits
        self.utf8 = None
        self.in_credits = 0
        self.in_closed = False  # the client sent its close frame
        # handler -> client; with compression a quarter of the write buffer
        # is the compressor's (reference 10.3)
        self.out_limit = buffer_size * 3 // 4 if deflate else buffer_size
        self.out_credits = self.out_limit
        self.unflushed = 0
        self.out_messages = 0
        self.out_type = 0  # opcode of the handler message under way
        self.out_framed = False  # its first frame was written
        self.out_closed = False  # a close frame went to the client
        # Moving to another process (handover): 0, ASKED (handoff-start
        # sent) or PROCEEDED (the handler answered and sends nothing more).
        self.handoff = 0
        # Credits earned while moving: nothing goes to the handler between
        # handoff-start and the resume, so they are sent after it.
        self.credits_owed = 0
        self.deflater = Deflater(deflate.server_no_context_takeover) if deflate else None
        self.inflater = Inflater(deflate.client_no_context_takeover) if deflate else None

    def __repr__(self) -> str:
        return (f"<WebSocketSession id={self.rid!r} state={self.state} handler={self.handler!r} "
                f"out_seq={self.out_seq} in_seq={self.in_seq} credits={self.in_credits}/"
                f"{self.out_credits} closed={self.in_closed}/{self.out_closed}>")

    def send_request(self, method: bytes, uri: bytes, headers: tuple[Header, ...]) -> None:
        self.actions.append(Send(Data(
            from_=self.instance_id, ids=(Ident(self.rid, 0),), method=method, uri=uri,
            headers=headers or None, credits=self.out_limit,
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
            return not self.client_gone and len(self.inbuf) < self.buffer_size
        if self.handoff:
            # Only to finish a frame under way: the rest stays in the kernel
            # and moves with the connection.
            return (self.state is OPEN and self.frame is not None and not self.in_closed
                    and len(self.inbuf) < self.buffer_size)
        return (self.state is OPEN and not self.paused and not self.in_closed
                and self.in_credits > 0 and len(self.inbuf) < self.buffer_size)

    @property
    def resumable(self) -> bool:
        """At a frame boundary both ways with nothing owed to anyone, and no
        compression context to carry (see ws_snapshot)."""
        return (self.state is OPEN and not self.actions and not self.paused
                and self.frame is None and not self.pending and not self.msg_done
                and not self.unflushed and not self.out_closed and not self.in_closed
                and self.snapshot_obstacle() is None)

    @property
    def ready_to_export(self) -> bool:
        """Handover: the handler answered handoff-proceed, no client frame is
        half read and everything written reached the kernel. Client payload
        still waiting for credits travels in the record."""
        return (self.handoff == PROCEEDED and self.state is OPEN and not self.actions
                and self.frame is None and not self.unflushed and not self.out_closed
                and not self.in_closed and len(self.pending) <= MAX_PENDING_EXPORT
                and self.snapshot_obstacle() is None)

    def begin_handoff(self) -> bool:
        """Handover starts: ask the handler to stop sending (handoff-start);
        False when this session cannot move (see snapshot_obstacle)."""
        if self.handoff:
            return True
        if (self.state is not OPEN or self.handler is None or self.out_closed
                or self.in_closed or self.snapshot_obstacle() is not None):
            return False
        self._send(HandoffStart)
        self.handoff = ASKED
        return True

    def resume(self) -> None:
        """In the adopting process: tell the handler the session is back (its
        next packet, a keep-alive), then carry on with any leftover input."""
        self.handoff = 0
        self._send(KeepAlive)
        if self.credits_owed:
            credits, self.credits_owed = self.credits_owed, 0
            self._send(Credit, credits=credits)
        self._pump()

    def keep_alive(self):
        if self.handoff:
            return None  # the handler would take it for the resume
        return super().keep_alive()

    def snapshot_obstacle(self) -> str | None:
        d = self.deflate
        if d is not None and not (d.client_no_context_takeover and d.server_no_context_takeover):
            return "permessage-deflate with context takeover"
        if d is not None and (self.msg_compressed or self.out_type):
            return "a compressed message is under way"
        return None

    def receive_data(self, data: bytes, now: float) -> None:
        if self.state is CLOSED:
            return
        if not data:
            if self.state is WAIT:
                self.client_gone = True  # answered with cancel later (5.10.2)
            elif not self.in_closed:
                self._cancel_and_close("client closed without a close frame")
            return
        self.inbuf += data
        if self.state is OPEN:
            self.stream_deadline = now + self.stream_timeout
            self._pump()

    def receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        if self.state is CLOSED:
            return
        if not self._accept_packet(packet, ident, now):
            return
        kind = type(packet)
        if kind is Cancel or kind is Error and (self.state is OPEN or packet.condition != b"rejected"):
            self._close(graceful=False, reason="ended by handler")
        elif self.state is WAIT and self.client_gone:
            self._cancel_and_close("client closed")
        elif kind is Credit:
            self.in_credits += packet.credits
        elif kind is KeepAlive:
            pass
        elif kind is HandoffProceed and self.handoff == ASKED:
            self.handoff = PROCEEDED
        elif kind is HandoffStart:
            self._send(HandoffProceed)
            if self.handoff == ASKED:
                self.handoff = PROCEEDED  # crossed: both sides stopped sending
            else:
                self.paused = True
        elif self.state is WAIT:
            if kind is Data:
                self._accept(packet, now)
            elif kind is Error:
                self.actions.append(Write(rejection(
                    packet.code or 0, packet.reason or b"", packet.headers, packet.body)))
                self._close(graceful=True, reason="upgrade rejected by handler")
            else:
                self._close(graceful=False, reason=f"unexpected {kind.__name__} packet")
        elif kind is Data:
            # Credits count on every data, ping and pong packet, not only
            # on credit packets (reference 5.2, 5.7).
            self.in_credits += packet.credits
            self._out_data(packet, now)
        elif kind is Ping or kind is Pong:
            self.in_credits += packet.credits
            self._out_control(PING if kind is Ping else PONG, packet.body, now)
        elif kind is ClosePacket:
            self._out_close(packet)
        else:
            self._close(graceful=False, reason=f"unexpected {kind.__name__} packet")
        self._pump()

    def abort_unknown(self, reason: str) -> None:
        if self.state is not CLOSED:
            self._close(graceful=False, reason=reason)

    def going_away(self, now: float | None = None, code: int = GOING_AWAY) -> None:
        """Graceful stop of the process: close frame 1001 (RFC 6455 7.4.1),
        or 1012 when the service restarts and this session cannot move;
        cancel to the handler. A handshake still awaiting the handler is
        left alone (asked again once open)."""
        if self.state is OPEN:
            self._fail(code, "going away" if code == GOING_AWAY else "service restart")

    def output_flushed(self, now: float) -> None:
        self.out_messages = 0
        if self.unflushed and self.state is OPEN:
            credits, self.unflushed = self.unflushed, 0
            self.out_credits += credits
            self.stream_deadline = now + self.stream_timeout
            if self.handoff:
                self.credits_owed += credits
            else:
                self._send(Credit, credits=credits)

    # -- handler -> client ----------------------------------------------------

    def _accept(self, packet: Data, now: float) -> None:
        code = packet.code or 0
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
            self._cancel_and_close("acceptance head larger than the buffer")
            return
        self.actions.append(Write(head))
        self.state = OPEN
        self.in_credits += packet.credits or self.buffer_size
        self.stream_deadline = now + self.stream_timeout

    def _out_data(self, packet: Data, now: float) -> None:
        if self.out_closed:
            return  # after its close, the handler's data is dropped (5.7.6)
        body = packet.body
        last = not packet.more
        if len(body) > self.out_credits:
            self._cancel_and_close("handler sent more than its credits")
            return
        if last and self.out_messages >= self.messages_max:
            self._cancel_and_close("too many messages queued")
            return
        self.out_credits -= len(body)
        if not self.out_type:
            self.out_type = BINARY if packet.content_type == b"binary" else TEXT
        if body or last:
            rsv1 = False
            if self.deflater is not None:
                body = self.deflater.compress(body, last)
                rsv1 = not self.out_framed
            opcode = CONT if self.out_framed else self.out_type
            self.actions.append(Write(frame(opcode, body, fin=last, rsv1=rsv1)))
            self.out_framed = True
        self.unflushed += len(packet.body)
        if last:
            self.out_type = 0
            self.out_framed = False
            self.out_messages += 1
        if packet.body:
            self.stream_deadline = now + self.stream_timeout

    def _out_control(self, opcode: int, body: bytes, now: float) -> None:
        if self.out_closed:
            return
        if len(body) > 125:
            self._close(graceful=False, reason="handler control payload over 125 bytes")
            return
        if len(body) > self.out_credits:
            self._cancel_and_close("handler sent more than its credits")
            return
        self.out_credits -= len(body)
        self.unflushed += len(body)
        self.actions.append(Write(frame(opcode, body)))

    def _out_close(self, packet: ClosePacket) -> None:
        if self.out_closed:
            return
        self.actions.append(Write(frame(CLOSE, close_payload(packet.code, packet.body))))
        self.out_closed = True
        if self.in_closed:
            self._close(graceful=True, reason="closed by both sides")

    # -- endings ------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket connection (RFC 6455 7.1.7): close frame,
        cancel to the handler, then a graceful TCP close."""
        if not self.out_closed:
            self.actions.append(Write(frame(CLOSE, struct.pack("!H", code))))
            self.out_closed = True
        self._cancel_and_close(reason, graceful=True)

