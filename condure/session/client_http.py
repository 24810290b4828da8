"""The client role's stream-mode HTTP session (reference 6.2), sans-I/O.

Built from a handler's first packet (already checked with
``outbound.first_packet_problem``). At once it publishes a ``keep-alive``
with seq 0, which tells the handler condure's address; then it checks the
request (``bad-request``) and asks for a connection
(:class:`client_contract.Connect`). Phases (``client_contract.CLIENT_TABLE``):

``CONNECTING``  waiting for ``connected``/``connect_failed``.
``EXCHANGE``    the head and the first packet's body went out; more body
                comes from the handler against credits (first
                ``--buffer-size``, then the bytes flushed to the origin);
                the origin's response head is awaited. A redirect to
                follow goes back to ``CONNECTING``.
``RESPONSE``    the head went to the handler as one packet (``more``, no
                credits); body packets of at most ``min(credits,
                --buffer-size)`` bytes follow as the handler grants
                credits, the last without ``more``. The origin is read
                only while there are credits.

Failures before the response head are ``error`` packets with a condition,
after it ``cancel``; handler-caused ends send nothing. The 60 s handler
silence timeout and keep-alives work as in the server role (reference 5.8);
the stream timeout bounds origin inactivity (``connection-timeout``).
"""

from __future__ import annotations

from condure.session.client_base import CLOSED, RESPONSE, OriginExchange
from condure.session.client_wire import ResponseHead
from condure.session.contract import Write
from condure.session.outbound import Condition
from condure.session.peer import SESSION_TIMEOUT, ZhttpLink
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
)

__all__ = ["ClientHttpSession"]


class ClientHttpSession(OriginExchange, ZhttpLink):
    """One outgoing HTTP request in stream mode (see the module docstring)."""

    def __init__(self, packet: Data, *, instance_id: bytes, now: float,
                 buffer_size: int = 8192, stream_timeout: float = 1800.0) -> None:
        super().__init__(packet, now=now, buffer_size=buffer_size,
                         stream_timeout=stream_timeout)
        self.instance_id = instance_id
        self.rid: bytes = packet.ids[0].id
        self.handler: bytes | None = packet.from_
        self.in_seq = 1
        self.out_seq = 0
        self.session_deadline = now + SESSION_TIMEOUT
        self.credits = packet.credits  # for response body, granted by the handler
        self.body_credits = 0  # for request body, granted to the handler
        self.unflushed = 0  # request body bytes written since the last credit
        self.response: ResponseHead | None = None
        self._send(KeepAlive)
        self._open()

    def __repr__(self) -> str:
        return (f"<ClientHttpSession id={self.rid!r} phase={self.phase} "
                f"credits={self.credits} out_seq={self.out_seq} in_seq={self.in_seq}>")

    # -- the adapter's calls ------------------------------------------------

    @property
    def deadline(self) -> float | None:
        if self.phase is CLOSED:
            return None
        return min(self.session_deadline, self.stream_deadline)

    @property
    def wants_read(self) -> bool:
        if self.phase is RESPONSE:
            return self.credits > 0 and not self.reader.done
        return super().wants_read

    def _accept(self, packet: Packet, ident: Ident, now: float) -> bool:
        """False when the session is over or the packet ended it (nothing
        is sent); see ``ZhttpLink._accept_packet``."""
        return self.phase is not CLOSED and self._accept_packet(packet, ident, now)

    def receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        if not self._accept(packet, ident, now):
            return
        kind = type(packet)
        if kind is Data:
            assert isinstance(packet, Data)
            self.credits += packet.credits
            if not self._request_body(packet, now):
                return
        elif kind is Credit:
            assert isinstance(packet, Credit)
            self.credits += packet.credits
        elif kind is KeepAlive:
            return
        elif kind is Cancel or kind is Error:
            self._close(graceful=False, reason="ended by handler")
            return
        elif kind is HandoffStart:
            self._send(HandoffProceed)
            return
        else:
            self._abort(f"unexpected {kind.__name__} packet")
            return
        if self.phase is RESPONSE:
            self._pump()

    def abort_unknown(self, reason: str) -> None:
        self._abort(reason)

    def output_flushed(self, now: float) -> None:
        if self.phase is CLOSED:
            return
        self.stream_deadline = now + self.stream_timeout
        if self.unflushed and not self.request_done:
            credits, self.unflushed = self.unflushed, 0
            self.body_credits += credits
            self._send(Credit, credits=credits)
        else:
            self.unflushed = 0

    def handle_timer(self, now: float) -> None:
        if self.phase is CLOSED:
            return
        if now >= self.session_deadline:
            # The handler's silence: nothing is sent (reference 5.8).
            self._close(graceful=False, reason="session timeout")
        elif now >= self.stream_deadline:
            self._fail(Condition.CONNECTION_TIMEOUT, "stream timeout")

    def keep_alive(self) -> tuple[bytes, Ident] | None:
        if self.phase is CLOSED or self.handler is None:
            return None
        return self.handler, self._next_ident()

    def shutdown(self) -> tuple[bytes, Ident] | None:
        owed = self.keep_alive()
        self._close(graceful=False, reason="shutdown")
        self.actions.clear()
        return owed

    # -- request body -----------------------------------------------------------

    def _connected(self) -> None:
        if not self.request_done:
            self.body_credits = self.buffer_size
            self._send(Credit, credits=self.buffer_size)

    def _request_body(self, packet: Data, now: float) -> bool:
        """A data packet from the handler carries request body while more is
        expected; False when it ended the session."""
        if self.request_done:
            return True  # (only its credits count)
        body = packet.body
        if len(body) > self.body_credits:
            self._fail(Condition.UNDEFINED, "request body beyond the credits given", fault=True)
            return False
        self.body_credits -= len(body)
        last = not packet.more
        if self.owed >= 0:
            # The handler's Content-Length frames the body (RFC 9112 6.3):
            # nothing past it is written, and a short end leaves nothing to
            # reuse (the connection is closed).
            self.owed -= len(body)
            if self.owed < 0:
                self._fail(Condition.UNDEFINED, "handler sent more body than its Content-Length",
                           fault=True)
                return False
            if self.owed and last:
                self._fail(Condition.UNDEFINED,
                           "handler ended its body short of its Content-Length", fault=True)
                return False
        if last:
            self.request_done = True
        data = self._framed(body, last)
        if data and self.held:
            self.actions.append(Write(data))
        self.unflushed += len(body)
        return True

    # -- response -------------------------------------------------------------

    def _response(self, head: ResponseHead) -> None:
        self.response = head
        self._send(Data, code=head.code, reason=head.reason, headers=head.headers or None,
                   more=True)

    def _pump(self) -> None:
        reader = self.reader
        while self.phase is RESPONSE and self.credits > 0:
            piece = reader.body(min(self.credits, self.buffer_size))
            if not piece and not reader.done:
                return
            self.credits -= len(piece)
            self._send(Data, body=piece, more=not reader.done)
            if reader.done:
                assert self.response is not None
                self._release(self.response)
                self._close(graceful=True, reason="response complete")

    # -- endings ----------------------------------------------------------------

    def _fail(self, condition: Condition, detail: str, *, fault: bool = False) -> None:
        """Before the response head: ``error`` with ``condition``; after it:
        ``cancel`` (reference 6.2 step 10). ``fault``: the handler broke a
        rule (the adapter warns)."""
        if self.phase is CLOSED:
            return
        if self.phase is RESPONSE:
            self._send(Cancel)
        else:
            self._send(Error, condition=condition.wire)
        self._close(graceful=False, reason=detail, fault=fault)

    def _abort(self, reason: str) -> None:
        """The handler broke a rule of ZHTTP (a wrong seq, an unexpected
        packet): close, tell the handler nothing, and warn."""
        self._close(graceful=False, reason=reason, fault=True)
