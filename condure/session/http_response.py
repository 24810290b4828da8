"""The response half of :class:`condure.session.http.HttpSession`: the
handler's response written to the client, with Condure's framing rules
(reference 5.3, 5.4) and condure's credits."""

from __future__ import annotations

from condure.session import httpwire
from condure.session.actions import Write
from condure.session.states import RESP_DONE, RESP_NONE, RESP_STREAMING
from condure.zhttp.packets import Credit, Data


class ResponseMixin:
    """Response flow. Mixed into HttpSession."""

    def _response_data(self, packet: Data, now: float) -> None:
        if self.resp_state is RESP_DONE:
            return
        body = packet.body
        if len(body) > self.resp_credits:
            self._cancel_and_close("handler sent more than its credits")
            return
        self.resp_credits -= len(body)
        if self.resp_state is RESP_NONE:
            if not self._response_head(packet, now):
                return
        elif self.chunked:
            if body or not packet.more:
                self.actions.append(Write(httpwire.chunks(body, not packet.more)))
        elif body and not self.discard_body:
            self.actions.append(Write(body))
        if packet.more:
            if self.discard_body and body:
                # Nothing reaches the client (HEAD, 204, 304): the credits
                # come straight back so the handler can finish.
                self.resp_credits += len(body)
                self._send(Credit, credits=len(body))
            else:
                self.unflushed += len(body)
            if body:
                self.stream_deadline = now + self.stream_timeout
            return
        self.resp_state = RESP_DONE
        self._maybe_finish(now)

    def _response_head(self, packet: Data, now: float) -> bool:
        code = packet.code or 0
        headers = packet.headers or ()
        length: int | bytes | None = None
        for key, value in headers:
            if key.lower() == b"content-length":
                value = value.strip()
                if not value.isdigit():
                    self._cancel_and_close("handler sent an invalid Content-Length")
                    return False
                length = value
        no_body = code < 200 or code in (204, 304)
        self.discard_body = no_body or self.is_head
        if no_body:
            length = None
        elif length is None and not packet.more:
            length = len(packet.body)
        elif length is None and self.http11 and not self.is_head:
            self.chunked = True
        elif length is None and not self.is_head:
            # HTTP/1.0 and no length: only closing can end the body.
            self.close_delimited = True
            self.persistent = False
        if self.persistent:
            connection = None if self.http11 else b"keep-alive"
        else:
            connection = b"close" if self.http11 else None
        head = httpwire.response_head(
            http11=self.http11, code=code, reason=packet.reason or b"", headers=headers,
            connection=connection, content_length=length, chunked=self.chunked)
        if len(head) > self.buffer_size:
            self._cancel_and_close("response head larger than the buffer")
            return False
        body = packet.body
        if self.chunked:
            head += httpwire.chunks(body, not packet.more)
        elif body and not self.discard_body:
            head += body
        self.actions.append(Write(head))
        self.resp_state = RESP_STREAMING
        self.stream_deadline = now + self.stream_timeout
        return True

