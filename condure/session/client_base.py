"""What both client sessions share: one request to an origin and its
response head, redirects included (reference 6.2 steps 3-6, 6.3, 6.5).

:class:`OriginExchange` builds the target and the request head from the
handler's first packet, asks for a connection, writes the head and the
body it has, reads the response head and follows redirects. What happens
with the response is the subclass's: :meth:`_response` (the final head),
:meth:`_pump` (body bytes arrived), :meth:`_fail` (the exchange failed with
a condition). Phases move by :data:`client_contract.CLIENT_TABLE` only.
"""

from __future__ import annotations

from condure.session import httpwire
from condure.session.client_contract import (
    ClientAction,
    ClientEvent,
    ClientPhase,
    Connect,
    Release,
    client_advance,
)
from condure.session.client_wire import ResponseHead, ResponseReader, WireError
from condure.session.contract import Close, Write
from condure.session.outbound import (
    MAX_REDIRECTS,
    Condition,
    Framing,
    OutboundError,
    Target,
    first_packet_problem,
    framing,
    is_redirect,
    parse_target,
    redirect,
    redirect_method,
    request_head,
    same_origin,
    without_credentials,
)
from condure.zhttp.packets import Data, Header

CONNECTING, EXCHANGE, RESPONSE, CLOSED = (
    ClientPhase.CONNECTING, ClientPhase.EXCHANGE, ClientPhase.RESPONSE, ClientPhase.CLOSED)


class OriginExchange:
    """One request to an origin (see the module docstring)."""

    req_mode = False
    websocket_ok = False  # ws/wss targets are this class's (client_ws)

    def __init__(self, packet: Data, *, now: float, buffer_size: int,
                 stream_timeout: float) -> None:
        problem = first_packet_problem(packet, req_mode=self.req_mode)
        if problem is not None:
            raise ValueError(problem)
        self.buffer_size = buffer_size
        self.stream_timeout = stream_timeout
        self.actions: list[ClientAction] = []
        self.phase = CONNECTING
        self.stream_deadline = now + stream_timeout
        self.method = packet.method or b"GET"
        self.headers: tuple[Header, ...] = packet.headers or ()
        self.body = packet.body  # the first packet's body (kept for redirects)
        self.more = packet.more and not self.req_mode  # more body will come from the handler
        self.request_done = not self.more  # the whole request was queued for the origin
        self.redirects = 0
        self.reader = ResponseReader(buffer_size, self.method == b"HEAD")
        self.held = False  # an origin connection is held
        self.target: Target | None = None
        self.head_bytes = b""
        self.frame = Framing()
        # Request body the handler's Content-Length still promises (-1: none
        # declared, condure frames the body itself).
        self.owed = -1
        self.follow = False  # follow redirects (reference 6.5)
        self._packet = packet

    def _open(self) -> None:
        """Check the request and ask for the first connection (called by the
        subclass once it has said what it must say first)."""
        try:
            self.target = parse_target(self._packet, req_mode=self.req_mode)
            if self.target.websocket != self.websocket_ok:
                raise OutboundError(Condition.UNDEFINED,
                                    f"{self.target.scheme} target for the wrong session kind")
            self._build_head()
        except OutboundError as e:
            self._fail(e.condition, e.detail, fault=e.handler_fault)
            return
        self.follow = self.target.follow_redirects and not self.more
        self.actions.append(Connect(self.target))

    def _build_head(self) -> None:
        assert self.target is not None
        self.frame = framing(self.method, self.headers, self.body, self.more,
                             req_mode=self.req_mode)
        self.head_bytes = request_head(self.target, self.method, self.headers, self.frame)
        declared = self.frame.declared
        self.owed = declared - len(self.body) if declared >= 0 else -1

    # -- the adapter's calls ------------------------------------------------

    def take_actions(self) -> list[ClientAction]:
        actions, self.actions = self.actions, []
        return actions

    def connected(self, now: float) -> None:
        if self.phase is not CONNECTING:
            return
        self._advance(ClientEvent.CONNECTED)
        self.held = True
        self.stream_deadline = now + self.stream_timeout
        self.reader = ResponseReader(self.buffer_size, self.method == b"HEAD")
        # (an empty last packet may have come before the connection)
        self.actions.append(Write(self.head_bytes + self._framed(self.body, self.request_done)))
        self._connected()

    def connect_failed(self, condition: Condition, now: float) -> None:
        if self.phase is CONNECTING:
            self._fail(condition, f"connect failed: {condition.value}")

    def receive_data(self, data: bytes, now: float) -> None:
        if self.phase is not EXCHANGE and self.phase is not RESPONSE:
            return
        self.stream_deadline = now + self.stream_timeout
        reader = self.reader
        reader.feed(data)
        try:
            if self.phase is EXCHANGE:
                head = reader.head()
                if head is None:
                    return
                if self._redirected(head):
                    return
                self._advance(ClientEvent.RESPONSE)
                self._response(head)
            if self.phase is RESPONSE:
                self._pump()
        except WireError as e:
            self._fail(Condition.UNDEFINED, f"bad response: {e}")

    @property
    def wants_read(self) -> bool:
        return self.phase is EXCHANGE and self.reader.response is None

    # -- the request ----------------------------------------------------------

    def _framed(self, data: bytes, last: bool) -> bytes:
        if self.frame.chunked:
            return httpwire.chunks(data, last)
        return data

    def _connected(self) -> None:
        """Hook: the request head and first body went out."""

    # -- redirects ------------------------------------------------------------

    def _redirected(self, head: ResponseHead) -> bool:
        """Follow ``head`` if it is a redirect to follow (reference 6.5)."""
        if not self.follow or not is_redirect(head.code):
            return False
        location = head.header(b"location")
        assert self.target is not None
        nxt = None if location is None else redirect(self.target, location,
                                                     req_mode=self.req_mode)
        if nxt is None:
            return False
        if self.redirects >= MAX_REDIRECTS:
            self._fail(Condition.TOO_MANY_REDIRECTS, "too many redirects")
            return True
        self.redirects += 1
        self._release(head)
        method, keep_body = redirect_method(head.code, self.method)
        if not keep_body:
            self.body = b""
            self.headers = tuple(h for h in self.headers if h[0].lower() != b"content-length")
        self.method = method
        if not same_origin(self.target, nxt):
            self.headers = without_credentials(self.headers)
        self.target = nxt
        try:
            self._build_head()
        except OutboundError as e:
            self._fail(e.condition, e.detail, fault=e.handler_fault)
            return True
        self._advance(ClientEvent.REDIRECT)
        self.actions.append(Connect(nxt))
        return True

    # -- endings ----------------------------------------------------------------

    def _release(self, head: ResponseHead) -> None:
        """Give the origin connection back: to the pool when the origin
        allows it, the response was read to its end with nothing after it,
        and the whole request went out."""
        reader = self.reader
        persistent = (head.keep_alive and reader.done and not reader.buf
                      and self.request_done and not reader.eof)
        if self.held:
            self.held = False
            self.actions.append(Release(persistent))

    def _close(self, *, graceful: bool, reason: str, fault: bool = False) -> None:
        """``fault``: the handler broke a rule (the adapter warns)."""
        if self.phase is CLOSED:
            return
        self._advance(ClientEvent.CLOSE)
        self.held = False
        self.actions.append(Close(graceful=graceful, reason=reason, handler_fault=fault))

    def _advance(self, event: ClientEvent) -> None:
        self.phase = client_advance(self.phase, event)

    # -- the subclass's part ------------------------------------------------------

    def _response(self, head: ResponseHead) -> None:
        raise NotImplementedError

    def _pump(self) -> None:
        raise NotImplementedError

    def _fail(self, condition: Condition, detail: str, *, fault: bool = False) -> None:
        raise NotImplementedError
