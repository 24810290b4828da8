"""The client role's req-mode session (reference 6.7), sans-I/O.

One request packet in, one :class:`client_contract.Reply` out: the whole
response (``code``, ``reason``, ``headers``, ``body``), or ``type: error``
with a condition. The reply carries ``id`` only when the request had one,
and no ``from``, ``seq`` or ``ext``. The request body is framed with
``Content-Length`` always; the response body must fit
``--body-buffer-size``; the whole exchange (connect, redirects, reading)
must end within ``--req-timeout`` (``connection-timeout``).
"""

from __future__ import annotations

from condure.session.client_base import CLOSED, RESPONSE, OriginExchange
from condure.session.client_contract import Reply
from condure.session.client_wire import ResponseHead
from condure.session.outbound import Condition
from condure.zhttp.packets import Data, Error, Ident, Packet

__all__ = ["ClientReqSession"]


class ClientReqSession(OriginExchange):
    """One req-mode request to an origin (see the module docstring)."""

    req_mode = True
    handler = None  # the reply goes on the request's envelope

    def __init__(self, packet: Data, *, now: float, buffer_size: int = 8192,
                 body_buffer_size: int = 100000, req_timeout: float = 30.0) -> None:
        super().__init__(packet, now=now, buffer_size=buffer_size,
                         stream_timeout=req_timeout)
        self.rid: bytes | None = packet.ids[0].id if packet.ids else None
        self.body_buffer_size = body_buffer_size
        self.response: ResponseHead | None = None
        self.collected = bytearray()
        self._open()

    def __repr__(self) -> str:
        return f"<ClientReqSession id={self.rid!r} phase={self.phase}>"

    @property
    def _ids(self) -> tuple[Ident, ...]:
        return () if self.rid is None else (Ident(self.rid),)

    # -- the adapter's calls ------------------------------------------------

    @property
    def deadline(self) -> float | None:
        return None if self.phase is CLOSED else self.stream_deadline

    @property
    def wants_read(self) -> bool:
        if self.phase is RESPONSE:
            return not self.reader.done
        return super().wants_read

    def receive_data(self, data: bytes, now: float) -> None:
        # The req timeout covers the whole exchange: activity does not move it.
        deadline = self.stream_deadline
        super().receive_data(data, now)
        self.stream_deadline = deadline

    def receive_packet(self, packet: Packet, ident: Ident, now: float) -> None:
        """Req mode has no later packets."""

    def abort_unknown(self, reason: str) -> None:
        """Req mode has no later packets."""

    def output_flushed(self, now: float) -> None:
        """Nothing waits for a flush in req mode."""

    def handle_timer(self, now: float) -> None:
        if self.phase is not CLOSED and now >= self.stream_deadline:
            self._fail(Condition.CONNECTION_TIMEOUT, "req timeout")

    def keep_alive(self) -> None:
        return None

    def shutdown(self) -> None:
        self._close(graceful=False, reason="shutdown")
        self.actions.clear()

    def connected(self, now: float) -> None:
        deadline = self.stream_deadline
        super().connected(now)
        self.stream_deadline = deadline

    # -- response -------------------------------------------------------------

    def _response(self, head: ResponseHead) -> None:
        self.response = head

    def _pump(self) -> None:
        reader = self.reader
        while True:
            piece = reader.body(self.buffer_size)
            if piece:
                if len(self.collected) + len(piece) > self.body_buffer_size:
                    self._fail(Condition.UNDEFINED, "response body too large")
                    return
                self.collected += piece
            if reader.done:
                break
            if not piece:
                return
        head = self.response
        assert head is not None
        self._release(head)
        self.actions.append(Reply(Data(ids=self._ids, code=head.code, reason=head.reason,
                                       headers=head.headers or None,
                                       body=bytes(self.collected))))
        self._close(graceful=True, reason="response complete")

    def _fail(self, condition: Condition, detail: str, *, fault: bool = False) -> None:
        if self.phase is CLOSED:
            return
        self.actions.append(Reply(Error(ids=self._ids, condition=condition.wire)))
        self._close(graceful=False, reason=detail, fault=fault)
