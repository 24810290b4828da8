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
and are retried. Requests are also handed to ZeroMQ as ``zmqio`` hands
its packets: at the end of the loop iteration that produced them, back to
back, so that one wakeup of ZeroMQ's I/O thread serves them all, and
``EVENTS`` is re-checked once per burst rather than once per request
(docs/performance.md, "Req mode: where the time went").
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import zmq

from condure.config import Config
from condure.net import curve
from condure.net.routerqueue import ROUTER_RETRY
from condure.net.zmqio import BATCH, FIRST_PACKET_HWM, _bind_or_connect

log = logging.getLogger("condure.zmq")

_NOBLOCK = int(zmq.NOBLOCK)
_MORE = _NOBLOCK | int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

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
        if not (zmq_spec or {}).get("proxy"):  # handlers' endpoints, not the relay
            curve.secure(self.sock, config, connect=connect)
        for spec in specs:
            _bind_or_connect(self.sock, spec, connect, config.ipc_file_mode)
            self.endpoints.append(spec)
        self.queue: deque[bytes] = deque()  # requests ZeroMQ could not take yet
        self._batch: list[bytes] = []  # requests of this loop iteration
        self._flush_scheduled = False
        self._retry: asyncio.TimerHandle | None = None
        self._scheduled = False
        self._closed = False
        self._fd = self.sock.getsockopt(zmq.FD)
        loop.add_reader(self._fd, self._ready)
        loop.call_soon(self._ready)  # the FD may already be signalled

    # -- receiving --------------------------------------------------------

    def _ready(self) -> None:
        self._scheduled = False
        if self._closed:
            return  # a read scheduled before close()
        if self.queue:
            self._flush_queue()
        sock = self.sock
        recv, more = sock.recv, sock.getsockopt
        for n in range(BATCH):
            # Most wakeups carry one reply: after it, ZMQ_EVENTS says more
            # cheaply than the EAGAIN of a receive that finds nothing.
            if n and not more(_EVENTS) & _POLLIN:
                return
            try:
                frames = [recv(_NOBLOCK)]
            except zmq.Again:
                return
            while more(_RCVMORE):
                frames.append(recv(_NOBLOCK))
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
        """A request packet, round-robin to handlers, handed to ZeroMQ at
        the end of this loop iteration; with no handler connected (or all
        queues full) it waits here."""
        self._batch.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand this iteration's requests to ZeroMQ, back to back."""
        self._flush_scheduled = False
        if self._batch:
            self._send_batch()
            self._recheck()

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        if self.queue:
            self.queue.extend(batch)
        else:
            send = self.sock.send
            for i, payload in enumerate(batch):
                try:
                    send(b"", _MORE)
                except zmq.Again:
                    self.queue.extend(batch[i:])
                    break
                send(payload, _NOBLOCK)  # once a first frame is taken, the rest is too
        if self.queue:
            self._arm_retry()

    def _recheck(self) -> None:
        """A send on this socket may consume the FD's edge that said a reply
        is waiting: look at ``EVENTS`` and read soon if so."""
        if not self._scheduled and self.sock.getsockopt(_EVENTS) & _POLLIN:
            self._scheduled = True
            self.loop.call_soon(self._ready)

    def _flush_queue(self) -> None:
        queue = self.queue
        send = self.sock.send
        while queue:
            try:
                send(b"", _MORE)
            except zmq.Again:
                return
            send(queue.popleft(), _NOBLOCK)

    def _arm_retry(self) -> None:
        if self._retry is None:
            self._retry = self.loop.call_later(ROUTER_RETRY, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._flush_queue()
        self._recheck()
        if self.queue:
            self._arm_retry()

    def close(self) -> None:
        self._send_batch()
        self._closed = True
        try:
            self.loop.remove_reader(self._fd)
        except (ValueError, zmq.ZMQError):
            pass
        if self._retry is not None:
            self._retry.cancel()
        self.sock.close(linger=0)
