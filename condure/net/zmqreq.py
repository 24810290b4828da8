"""The req-mode DEALER socket of the server role, on an asyncio loop.

Reference 3.3: requests leave as ``["", "T..."]`` and spread round-robin
over the connected handlers (a REP socket, or a ROUTER that echoes the
envelope). Replies are read up to the first empty frame (at most 8
envelope frames, otherwise the message is dropped), then the first content
frame is the packet; later frames are discarded. The envelope plays no
part in routing: the packet's ``id`` does.

As with the stream sockets (``zmqio``), the socket's FD is edge-triggered:
every wakeup drains until EAGAIN, in batches, and requests that cannot be
queued in ZeroMQ (no handler connected, high-water mark reached) wait here
and are retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import zmq

from condure.config import Config
from condure.net.routerqueue import ROUTER_RETRY
from condure.net.zmqio import BATCH, FIRST_PACKET_HWM, _bind_or_connect

log = logging.getLogger("condure.zmq")

MAX_ENVELOPE = 8  # routing frames accepted before the empty delimiter


def packet_frame(frames: list[bytes]) -> bytes | None:
    """The content frame of a received message, or None when the message
    has no empty delimiter within the first ``MAX_ENVELOPE + 1`` frames or
    nothing after it."""
    for i, frame in enumerate(frames[:MAX_ENVELOPE + 1]):
        if not frame:
            return frames[i + 1] if i + 1 < len(frames) else None
    return None


def routing_id(index: int, pid: int) -> bytes:
    """The DEALER identity of worker ``index`` (process ``pid``) behind the
    supervisor's req relay, which routes replies back by it."""
    return b"%d-%d" % (index, pid)


class ReqSocket:
    """The DEALER socket shared by every req-mode session of one worker.

    ``on_message(payload)`` is called with each packet received.
    """

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[bytes], None],
        *,
        context: zmq.Context | None = None,
        zmq_spec: dict | None = None,
        routing_id: bytes | None = None,
    ) -> None:
        self.loop = loop
        self.on_message = on_message
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        if routing_id is not None:
            # Behind the supervisor's relay, which routes replies by it.
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        self.sock.setsockopt(zmq.SNDHWM, FIRST_PACKET_HWM)
        self.sock.setsockopt(zmq.RCVHWM, config.hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoints: list[str] = []
        # zmq_spec: the worker spec's "zmq" part (docs/supervisor.md).
        specs = (zmq_spec or {}).get("req", config.zclient_req)
        connect = (zmq_spec or {}).get("connect", config.zclient_connect)
        for spec in specs:
            _bind_or_connect(self.sock, spec, connect, config.ipc_file_mode)
            self.endpoints.append(spec)
        self.queue: deque[bytes] = deque()
        self._retry: asyncio.TimerHandle | None = None
        self._scheduled = False
        self._fd = self.sock.getsockopt(zmq.FD)
        loop.add_reader(self._fd, self._ready)
        loop.call_soon(self._ready)  # the FD may already be signalled

    # -- receiving --------------------------------------------------------

    def _ready(self) -> None:
        self._scheduled = False
        if self.queue:
            self._flush()
        sock = self.sock
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            payload = packet_frame(frames)
            if payload is None:
                log.debug("dropping req-mode message without a usable envelope")
                continue
            try:
                self.on_message(payload)
            except Exception:
                log.exception("a packet from a handler could not be handled")
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._ready)

    # -- sending ----------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """A request packet, round-robin to handlers; with no handler
        connected (or all queues full) it waits here."""
        if not self.queue:
            try:
                self.sock.send_multipart((b"", payload), zmq.NOBLOCK, copy=True)
                self._recheck()
                return
            except zmq.Again:
                pass
        self.queue.append(payload)
        self._arm_retry()

    def _recheck(self) -> None:
        """A send on this socket may consume the FD's edge that said a reply
        is waiting: look at ``EVENTS`` and read soon if so."""
        if not self._scheduled and self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._scheduled = True
            self.loop.call_soon(self._ready)

    def _flush(self) -> None:
        queue = self.queue
        while queue:
            try:
                self.sock.send_multipart((b"", queue[0]), zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            queue.popleft()

    def _arm_retry(self) -> None:
        if self._retry is None:
            self._retry = self.loop.call_later(ROUTER_RETRY, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._flush()
        self._recheck()
        if self.queue:
            self._arm_retry()

    def close(self) -> None:
        try:
            self.loop.remove_reader(self._fd)
        except (ValueError, zmq.ZMQError):
            pass
        if self._retry is not None:
            self._retry.cancel()
        self.sock.close(linger=0)
