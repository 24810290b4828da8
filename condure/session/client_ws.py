"""The client role's WebSocket session (reference 6.2 steps 6, 8, 9; 6.3;
10.4), sans-I/O: condure opens a WebSocket to an origin for a handler.

It is the stream-mode HTTP session (:mod:`condure.session.client_http`)
with another request and another life after the response head. The first
packet (uri ``ws``/``wss``) gets the ``keep-alive`` with seq 0, then a
``Connect``; once connected condure writes the upgrade head: always
``GET``, with a ``Sec-WebSocket-Key`` made of 16 bytes from ``random``
(a parameter, so that tests can fix it) and, with ``compression``,
``Sec-WebSocket-Extensions: permessage-deflate``. Redirects are followed
as for HTTP (to ``ws``/``wss`` only), each hop with a fresh key.

The response head:

- ``101`` with the right ``Sec-WebSocket-Accept`` and an acceptable
  extension answer (at most one ``permessage-deflate``, only when offered,
  ``client_max_window_bits`` absent or 15; no other extension) opens the
  session: one data packet to the handler with ``code``, ``reason``,
  ``headers``, no ``more``, and ``credits`` = the window (three quarters
  with compression, reference 10.3; see below). A wrong accept value or
  extension answer is ``error`` ``undefined-condition``.
- Any other code is ``error`` ``rejected`` with ``code``, ``reason``,
  ``headers`` and the body (framed as reference 6.8, read to its end or to
  the buffer size, whichever comes first).

Once open, frames flow as in the server role (reference 5.7) mirrored, and
the halves of :class:`condure.session.websocket.WebSocketSession` are
reused: :class:`OriginInput` (a :class:`ClientInput` that takes unmasked
frames and refuses masked ones, RFC 6455 5.1) turns origin frames into
data/ping/pong/close packets within the handler's credits (first its
first packet's ``credits``, then every credit, data, ping and pong
packet's); :class:`HandlerOutput` turns handler packets into frames, each
then masked with a fresh 4-byte key from ``random``, and its credits
return to the handler as the bytes reach the origin (``output_flushed``).
A close frame from either side is relayed, never answered by condure; the
connection ends once both sides have sent one. Failures before the 101
are ``error`` packets with a condition, after it ``cancel``; a protocol
error from the origin also sends it a close frame (1002 or 1007), and so
does a handler's text message that is not UTF-8 (1011: it is not written,
as in the server role, see :mod:`condure.session.ws_output`).

The window (a difference from Condure 1.10, which uses the buffer size
for both): the handler is offered ``window`` = ``max(buffer_size,
WINDOW)`` credits (just over 256 KiB by default; three quarters with
compression), and each origin message goes to the handler as one packet
when the handler's credits and the window allow: its payload is held until
the message is complete, or until it fills the handler's credits or the
window, whichever comes first (then that much goes as a piece with
``more``). A control frame in the middle of a fragmented message sends the
part held so far first, so payload and control packets keep the origin's
order. Memory per connection stays bounded by the window both ways.

Pushpin's proxy (1.36) needs both. It reads a peer's next frame only after
a write that leaves it credits, so a credit grant that exactly covers the
rest of a frame it holds leaves it idle for good (docs/pushpin.md). With
the buffer size as window, and messages in several packets, such exact
grants are common. The proxy's limit towards this session is the window
plus every byte returned so far, that is the window plus a position in
the stream it sends, and the frames of that stream come from the listening
condure in packets of its buffer size (a power of two) or cut at the
200,000 credits the proxy gives it. A window that is a multiple of such a
size, or 200,000 itself (zurl's), keeps putting the limit exactly on a
frame's end: messages from 256 KiB up stalled now and then in tests. So
``WINDOW`` is 2**18 + 5: odd, and three quarters of it too, and more than
the 200,000 bytes the listening condure may send in one burst.

The permessage-deflate roles are mirrored: the server session's
"client" parameters describe the peer. Here the peer is the origin, so
the compressor resets per message when the origin answered
``client_no_context_takeover`` and the decompressor when it answered
``server_no_context_takeover``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any

from condure.session.client_base import CLOSED, EXCHANGE, RESPONSE
from condure.session.client_contract import Release
from condure.session.client_http import ClientHttpSession
from condure.session.client_wire import ResponseHead
from condure.session.contract import Write
from condure.session.outbound import Condition, Framing, request_head
from condure.session.states import CLOSED as WS_CLOSED
from condure.session.states import OPEN, Phase
from condure.session.ws_frames import (
    CLOSE,
    CONTROL_OPCODES,
    PING,
    PONG,
    close_payload,
    frame,
    mask_frame,
    parse_origin_header,
)
from condure.session.ws_handshake import Deflate, accept_value, parse_extensions
from condure.session.ws_input import ClientInput, Owner
from condure.session.ws_output import HandlerOutput, OutputError
from condure.zhttp.packets import (
    Cancel,
    Credit,
    Data,
    Error,
    HandoffProceed,
    HandoffStart,
    Ident,
    KeepAlive,
    Packet,
    Ping,
    Pong,
)
from condure.zhttp.packets import Close as ClosePacket

__all__ = ["ClientWsSession", "origin_deflate"]

MESSAGES_MAX = 100  # handler messages pending before a flush (as --messages-max)
WINDOW = 2**18 + 5  # least credits offered, largest packet sent to the handler


def origin_deflate(values: list[bytes], offered: bool) -> Deflate | None:
    """The permessage-deflate the origin's ``Sec-WebSocket-Extensions``
    values agree to (None: no compression), in the server session's terms
    where ``client_*`` is the peer (see the module docstring); ValueError
    when the answer is not acceptable (reference 10.4): an extension not
    offered, ``permessage-deflate`` twice, a parameter twice, unknown or
    with a bad value, ``client_max_window_bits`` other than 15."""
    found: Deflate | None = None
    for value in values:
        for name, params in parse_extensions(value):
            if name.lower() != b"permessage-deflate" or not offered:
                raise ValueError(f"extension {name.decode(errors='replace')!r} not offered")
            if found is not None:
                raise ValueError("permessage-deflate answered twice")
            seen: set[bytes] = set()
            for key, val in params:
                key = key.lower()
                if key in seen:
                    raise ValueError(f"parameter {key.decode()} twice")
                seen.add(key)
                if key in (b"client_no_context_takeover", b"server_no_context_takeover"):
                    ok = val is None
                elif key == b"client_max_window_bits":
                    ok = val is None or val == b"15"
                elif key == b"server_max_window_bits":
                    ok = val is not None and val.isdigit() and 8 <= int(val[:3]) <= 15
                else:
                    ok = False
                if not ok:
                    raise ValueError(f"bad permessage-deflate parameter {key.decode()}")
            # Mirrored: the server session's "client" is the peer, here the
            # origin (a server), whose own compressor is "server_*".
            found = Deflate(client_no_context_takeover=b"server_no_context_takeover" in seen,
                            server_no_context_takeover=b"client_no_context_takeover" in seen)
    return found


class OriginInput(ClientInput):
    """Origin frames to handler packets: :class:`ClientInput` with frames
    that come unmasked (a masked one fails the connection), each message
    held back until it can go as one packet (see the module docstring).
    Its ``buffer_size`` is the session's window: the largest packet."""

    __slots__ = ("cut",)

    # The rest of frame reading is ClientInput's: an empty mask unmasks
    # nothing.
    read_header = staticmethod(parse_origin_header)

    def __init__(self, window: int, deflate: Deflate | None, leftover: bytes) -> None:
        super().__init__(window, 0, deflate, leftover)
        self.cut = False  # send what is held now: a control frame comes next

    def _whole(self, s: Owner) -> bool:
        return False  # ClientInput's one-step path reads masked frames only

    def _forward(self, s: Owner) -> bool:
        if (self.msg_opcode and not self.msg_done and not self.cut
                and len(self.pending) < min(self.credits, self.buffer_size)):
            return False  # the message is not complete and there is room for more
        if not super()._forward(s):
            return False
        self.cut = False
        return True

    def _parse(self, s: Owner) -> bool:
        if len(self.pending) >= min(self.credits, self.buffer_size):
            return False  # a packet's worth is held: it goes first (or waits for credits)
        if self.pending and self.frame is None and self._control_next():
            self.cut = True
            return True
        return super()._parse(s)

    def _control_next(self) -> bool:
        """A control frame's header is next (between two frames of a
        message, not inside a compressed one's inflation)."""
        inflater = self.inflater
        if self.msg_compressed and inflater is not None and not inflater.idle:
            return False
        hdr = self.read_header(self.inbuf, rsv1_allowed=inflater is not None)
        return hdr is not None and hdr.opcode in CONTROL_OPCODES


class _Owner:
    """What :class:`OriginInput` sees of its session (``ws_input.Owner``)."""

    __slots__ = ("s",)
    paused = False
    handoff = 0

    def __init__(self, s: ClientWsSession) -> None:
        self.s = s

    @property
    def state(self) -> Phase:
        return OPEN if self.s.open and self.s.phase is RESPONSE else WS_CLOSED

    @property
    def output(self) -> HandlerOutput:
        return self.s.output

    def _send(self, kind: Callable[..., Packet], **fields: Any) -> None:
        self.s._send(kind, **fields)

    def _send_message(self, content_type: bytes | None, body: bytes) -> None:
        self.s._send_message(content_type, body)

    def _fail(self, code: int, reason: str) -> None:
        self.s._fail_origin(code, reason)

    def _close(self, *, graceful: bool, reason: str, unanswered: bool = False) -> None:
        self.s._close(graceful=graceful, reason=reason)


class ClientWsSession(ClientHttpSession):
    """One outgoing WebSocket in stream mode (see the module docstring)."""

    websocket_ok = True

    def __init__(self, packet: Data, *, instance_id: bytes, now: float,
                 buffer_size: int = 8192, stream_timeout: float = 1800.0,
                 compression: bool = False, messages_max: int = MESSAGES_MAX,
                 random: Callable[[int], bytes] = os.urandom, window: int = WINDOW) -> None:
        self.random = random
        self.compression = compression
        self.messages_max = messages_max
        self.window = max(buffer_size, window)  # see the module docstring
        self.key = b""
        self.open = False  # the 101 went to the handler
        self.rejected_body = bytearray()  # a non-101 answer's body, read so far
        self.input = OriginInput(self.window, None, b"")
        self.input.credits = packet.credits
        self.output = HandlerOutput(self.window, None, messages_max)
        self.owner = _Owner(self)
        super().__init__(packet, instance_id=instance_id, now=now, buffer_size=buffer_size,
                         stream_timeout=stream_timeout)
        # No request body on an upgrade: the first packet's is not written.
        self.body = b""
        self.more = False
        self.request_done = True

    def __repr__(self) -> str:
        return (f"<ClientWsSession id={self.rid!r} phase={self.phase} open={self.open} "
                f"credits={self.input.credits}/{self.output.credits} out_seq={self.out_seq} "
                f"in_seq={self.in_seq} closed={self.input.closed}/{self.output.closed}>")

    def _build_head(self) -> None:
        assert self.target is not None
        self.frame = Framing()
        self.key = base64.b64encode(self.random(16))
        self.head_bytes = request_head(self.target, b"GET", self.headers, self.frame,
                                       ws_key=self.key, ws_deflate=self.compression)

    # -- the adapter's calls ------------------------------------------------

    @property
    def wants_read(self) -> bool:
        if self.phase is EXCHANGE:
            return self.reader.response is None
        if self.phase is not RESPONSE:
            return False
        if not self.open:
            return not self.reader.done and len(self.rejected_body) < self.buffer_size
        inp = self.input
        return not inp.closed and inp.credits > 0 and len(inp.inbuf) < self.buffer_size

    def receive_data(self, data: bytes, now: float) -> None:
        if not self.open:
            super().receive_data(data, now)
            return
        if self.phase is CLOSED:
            return
        self.stream_deadline = now + self.stream_timeout
        if not data:
            if not self.input.closed:
                self._fail(Condition.UNDEFINED, "origin closed without a close frame")
            return
        self.input.inbuf += data
        self.input.pump(self.owner)

    def receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        if not self._accept(packet, ident, now):
            return
        kind = type(packet)
        if kind is KeepAlive:
            return
        if kind is Cancel or kind is Error:
            self._close(graceful=False, reason="ended by handler")
            return
        if kind is HandoffStart:
            self._send(HandoffProceed)
            return
        if kind is Credit:
            assert isinstance(packet, Credit)
            self.input.credits += packet.credits
        elif kind is Data or kind is Ping or kind is Pong:
            # Credits count on data, ping and pong packets too (5.2, 5.7).
            assert isinstance(packet, (Data, Ping, Pong))
            self.input.credits += packet.credits
            if not self.open:
                if not (isinstance(packet, Data) and not packet.body and not packet.more):
                    self._abort(f"{kind.__name__} packet before the WebSocket opened")
                    return
            elif isinstance(packet, Data):
                self._out(lambda: self.output.data(packet), packet.body, now)
            else:
                opcode = PING if kind is Ping else PONG
                self._out(lambda: self.output.control(opcode, packet.body), packet.body, now)
        elif kind is ClosePacket:
            assert isinstance(packet, ClosePacket)
            if not self.open:
                self._abort("close packet before the WebSocket opened")
                return
            out = self.output.close(packet.code, packet.body)
            if out:
                self.actions.append(Write(mask_frame(out, self.random(4))))
                if self.input.closed:
                    self._close(graceful=True, reason="closed by both sides")
                    return
        else:
            self._abort(f"unexpected {kind.__name__} packet")
            return
        if self.open and self.phase is RESPONSE:
            self.input.pump(self.owner)

    def _out(self, build: Callable[[], bytes], body: bytes, now: float) -> None:
        try:
            out = build()
        except OutputError as e:
            if e.close_code:
                self._fail_origin(e.close_code, e.reason, fault=True)
            elif e.cancel:
                self._fail(Condition.UNDEFINED, e.reason, fault=True)
            else:
                self._abort(e.reason)
            return
        if out:
            self.actions.append(Write(mask_frame(out, self.random(4))))
        if body:
            self.stream_deadline = now + self.stream_timeout

    def output_flushed(self, now: float) -> None:
        if self.phase is CLOSED:
            return
        self.stream_deadline = now + self.stream_timeout
        output = self.output
        output.messages = 0
        if self.open and output.unflushed:
            self._send(Credit, credits=output.flushed())

    # -- the response head --------------------------------------------------------

    def _response(self, head: ResponseHead) -> None:
        self.response = head
        if head.code != 101:
            return  # rejected: the body is read by _pump
        if head.header(b"sec-websocket-accept") != accept_value(self.key):
            self._fail(Condition.UNDEFINED, "bad Sec-WebSocket-Accept")
            return
        values = [v for k, v in head.headers if k.lower() == b"sec-websocket-extensions"]
        try:
            deflate = origin_deflate(values, self.compression)
        except ValueError as e:
            self._fail(Condition.UNDEFINED, f"bad Sec-WebSocket-Extensions: {e}")
            return
        credits = self.input.credits
        self.input = OriginInput(self.window, deflate, bytes(self.reader.buf))
        self.input.credits = credits
        self.reader.buf.clear()
        self.output = HandlerOutput(self.window, deflate, self.messages_max)
        self.open = True
        self._send(Data, code=head.code, reason=head.reason, headers=head.headers or None,
                   credits=self.output.limit)

    def _pump(self) -> None:
        if self.open:
            self.input.pump(self.owner)
            return
        reader, head = self.reader, self.response
        assert head is not None
        room = self.buffer_size - len(self.rejected_body)
        self.rejected_body += reader.body(room)
        if not reader.done and len(self.rejected_body) < self.buffer_size:
            return
        self._send(Error, condition=Condition.REJECTED.wire, code=head.code,
                   reason=head.reason, headers=head.headers or None,
                   body=bytes(self.rejected_body))
        self._release(head)
        self._close(graceful=True, reason=f"upgrade rejected with {head.code}")

    # -- endings ----------------------------------------------------------------

    def _fail(self, condition: Condition, detail: str, *, fault: bool = False) -> None:
        """Before the 101: ``error`` with ``condition``; after it: ``cancel``."""
        if self.phase is CLOSED:
            return
        if self.open:
            self._send(Cancel)
        else:
            self._send(Error, condition=condition.wire)
        self._close(graceful=False, reason=detail, fault=fault)

    def _fail_origin(self, code: int, reason: str, fault: bool = False) -> None:
        """The origin broke the protocol (or the handler did, ``fault``): a
        close frame to the origin (unless one went already), ``cancel`` to
        the handler, then close."""
        if self.phase is CLOSED:
            return
        if not self.output.closed:
            self.output.closed = True
            out = frame(CLOSE, close_payload(code, b""))
            self.actions.append(Write(mask_frame(out, self.random(4))))
        self._send(Cancel)
        self._close(graceful=True, reason=reason, fault=fault)

    def _close(self, *, graceful: bool, reason: str, fault: bool = False) -> None:
        if self.phase is CLOSED:
            return
        if self.held and graceful:
            # (a WebSocket connection is never reused; what was written,
            # a close frame perhaps, goes out before it is closed)
            self.held = False
            self.actions.append(Release(False))
        super()._close(graceful=graceful, reason=reason, fault=fault)
