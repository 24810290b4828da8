"""ZeroMQ sockets of the server role in stream mode, on an asyncio loop.

Invariant: a ZeroMQ socket's FD is edge-triggered and only says "events
may have changed", so every wakeup drains the socket until EAGAIN (in
batches, yielding to the loop between batches), and every send re-checks
``EVENTS`` before trusting the FD again.

Packets are handed to ZeroMQ at the end of the loop iteration that
produced them, back to back (``flush``): each send that finds ZeroMQ's
I/O thread asleep wakes it, and on a busy machine that wakeup costs a
context switch; one wakeup for many packets instead of one each took
bench/ws_echo.py from about 13,700 to about 19,500 echoes a second
(docs/performance.md). Order is kept: one list, flushed in order.

Sockets (reference 3.2): PUSH (first packet of a session) to ``BASE-out``,
ROUTER (later packets, addressed by handler identity) to ``BASE-out-stream``,
SUB (everything from handlers, prefix ``"<id> "``) to ``BASE-in``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable

import zmq

from condure.config import Config, stream_endpoints
from condure.net import curve
from condure.net.routerqueue import ROUTER_RETRY, PackedQueues, RouterQueues, pack_later

log = logging.getLogger("condure.zmq")

_NOBLOCK = int(zmq.NOBLOCK)
BATCH = 256  # packets handled per wakeup before yielding to client I/O
FIRST_PACKET_HWM = 128  # Condure 1.10's SNDHWM for the first-packet socket
# The hop between the supervisor's relay and a worker (bind mode) holds
# this many times Condure's high-water mark.
INTERNAL_HWM_FACTOR = 100
# The other way (worker -> relay, later packets) never drops: a full pipe
# makes the sender queue, and a queue makes it read less from clients
# (``on_congestion``). A small pipe keeps what waits ahead of a packet
# that was just queued, a handoff-start say, to a fraction of a second.
LATER_HOP_HWM_FACTOR = 4


def congestion_marks(hwm: int) -> tuple[int, int]:
    """(high, low): packets waiting for handlers (beyond ZeroMQ's own
    queues) at which a worker stops reading from clients, and resumes."""
    high = 2 * max(hwm, 64)
    return high, high // 4


def _bind_or_connect(sock: zmq.Socket, endpoint: str, connect: bool, file_mode: int) -> None:
    if connect:
        sock.connect(endpoint)
        return
    sock.bind(endpoint)
    if file_mode and endpoint.startswith("ipc://"):
        os.chmod(endpoint[len("ipc://"):], file_mode)


class StreamSockets:
    """The PUSH/ROUTER/SUB trio, shared by every session of one worker.

    ``on_message(payload)`` is called with each message received on SUB,
    the address prefix already checked and removed.
    """

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[bytes], None],
        *,
        instance_id: bytes,
        context: zmq.Context | None = None,
        zmq_spec: dict | None = None,
    ) -> None:
        self.loop = loop
        self.on_message = on_message
        self.ctx = context or zmq.Context.instance()
        self.prefix = instance_id + b" "
        hwm = config.hwm
        # zmq_spec: the worker spec's "zmq" part (docs/supervisor.md); with
        # "proxy" the later-packets socket is a PUSH to the supervisor's
        # relay, one frame a packet: routerqueue.pack_later(handler-id, T...).
        spec = zmq_spec or {}
        bases = spec.get("stream", config.zclient_stream)
        connect = spec.get("connect", config.zclient_connect)
        self.proxied = bool(spec.get("proxy"))
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDHWM, FIRST_PACKET_HWM)
        self.router = self.ctx.socket(zmq.PUSH if self.proxied else zmq.ROUTER)
        self.router.setsockopt(zmq.SNDHWM, hwm * LATER_HOP_HWM_FACTOR if self.proxied else hwm)
        if not self.proxied:
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            # A handler that restarts with the same identity takes over its
            # route at once instead of being refused while the old pipe lingers.
            self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, hwm * INTERNAL_HWM_FACTOR if self.proxied else hwm)
        self.sub.setsockopt(zmq.SUBSCRIBE, self.prefix)
        self.extra_prefixes: set[bytes] = set()
        for sock in (self.push, self.router, self.sub):
            sock.setsockopt(zmq.LINGER, 0)
            if not self.proxied:  # handlers' endpoints, not the supervisor's relay
                curve.secure(sock, config, connect=connect)
        # Watched before connecting, so that no handshake goes unseen.
        self._sub_monitor = (self.sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
                             if self.proxied else None)
        self.endpoints: list[tuple[str, str, str]] = []
        for base in bases:
            out, out_stream, in_ = stream_endpoints(base)
            mode = config.ipc_file_mode
            _bind_or_connect(self.push, out, connect, mode)
            _bind_or_connect(self.router, out_stream, connect, mode)
            _bind_or_connect(self.sub, in_, connect, mode)
            self.endpoints.append((out, out_stream, in_))
        self.push_queue: deque[bytes] = deque()
        # Backpressure: called with True when packets for handlers pile up
        # past the high mark, with False once they are down to the low one.
        self.on_congestion: Callable[[bool], None] | None = None
        self.congested = False
        self._high, self._low = congestion_marks(hwm)
        self.router_queues = (PackedQueues if self.proxied else RouterQueues)(
            self.router, clock=loop.time)
        self._retry: asyncio.TimerHandle | None = None
        self._batch: list[list[bytes]] = []  # later packets of this iteration
        self._first: list[bytes] = []  # first packets of this iteration
        self._flush_scheduled = False
        self._sub_scheduled = False
        self._push_fd = self.push.getsockopt(zmq.FD)
        loop.add_reader(self.sub.getsockopt(zmq.FD), self._sub_ready)
        # The FD may already be signalled; look once now.
        loop.call_soon(self._sub_ready)

    def subscribe(self, address: bytes) -> None:
        """Also receive packets addressed to ``address``: sessions adopted
        from another process keep the address they had there."""
        prefix = address + b" "
        if prefix != self.prefix and prefix not in self.extra_prefixes:
            self.extra_prefixes.add(prefix)
            self.sub.setsockopt(zmq.SUBSCRIBE, prefix)

    async def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """Wait until the SUB socket's connections have completed their
        ZeroMQ handshake (at which point its subscription is on its way
        ahead of anything else), or ``timeout``; the loop runs meanwhile.
        Used by workers behind the supervisor's proxy before they start
        accepting: a reply for a request accepted earlier could otherwise
        reach the proxy before the worker's subscription does, and be lost."""
        monitor = self._sub_monitor
        if monitor is None:
            return True
        self._sub_monitor = None
        loop = self.loop
        fd = monitor.getsockopt(zmq.FD)
        woke = asyncio.Event()
        loop.add_reader(fd, woke.set)
        try:
            deadline = loop.time() + timeout
            done = 0
            while done < len(self.endpoints):
                try:
                    monitor.recv_multipart(zmq.NOBLOCK)
                    done += 1
                    continue
                except zmq.Again:
                    pass
                woke.clear()
                # The FD is edge-triggered: look again before sleeping on it.
                if monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    return False
                try:
                    await asyncio.wait_for(woke.wait(), left)
                except TimeoutError:
                    return False
            return True
        finally:
            loop.remove_reader(fd)
            self.sub.disable_monitor()
            monitor.close(0)

    # -- receiving --------------------------------------------------------

    def _sub_ready(self) -> None:
        self._sub_scheduled = False
        sub = self.sub
        prefix = self.prefix
        on_message = self.on_message
        for _ in range(BATCH):
            try:
                # (A Frame says whether more follow for less than asking
                # the socket: RCVMORE costs as much as the receive.)
                received = sub.recv(_NOBLOCK, copy=False)
            except zmq.Again:
                return
            if received.more:
                while sub.getsockopt(zmq.RCVMORE):
                    sub.recv()  # only the first frame counts (reference 3.2)
            frame = received.bytes
            try:
                if frame.startswith(prefix):
                    on_message(frame[len(prefix):])
                elif self.extra_prefixes:
                    for extra in self.extra_prefixes:
                        if frame.startswith(extra):
                            on_message(frame[len(extra):])
                            break
                # Other addresses are not ours (reference 4.9); drop quietly.
            except Exception:
                log.exception("a packet from a handler could not be handled")
        # More may be waiting: come back after client I/O has had a turn.
        if not self._sub_scheduled:
            self._sub_scheduled = True
            self.loop.call_soon(self._sub_ready)

    # -- sending ----------------------------------------------------------

    def send_first(self, payload: bytes) -> None:
        """The first packet of a session, round-robin to handlers (at the
        end of this loop iteration, like later packets). With no handler
        connected it waits until one connects."""
        self._first.append(payload)
        self._flush_soon()

    def _push_first(self, payload: bytes) -> None:
        if not self.push_queue:
            try:
                self.push.send(payload, _NOBLOCK)
                return
            except zmq.Again:
                pass
        self.push_queue.append(payload)
        if len(self.push_queue) == 1:
            self.loop.add_reader(self._push_fd, self._flush_push)
            self._arm_retry()

    def _flush_push(self) -> None:
        queue = self.push_queue
        while queue:
            try:
                self.push.send(queue[0], zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            queue.popleft()
        self.loop.remove_reader(self._push_fd)

    def send_to(self, address: bytes, payload: bytes) -> None:
        """A later packet, to the handler whose identity is ``address``
        (queued per handler while it cannot take it: net/routerqueue.py)."""
        if self.proxied:
            if len(address) > 255:
                log.debug("handler address too long, packet dropped")
                return
            frames = [address, pack_later(address, payload)]
        else:
            frames = [address, b"", payload]
        self._batch.append(frames)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand the packets of this loop iteration to ZeroMQ, back to back."""
        self._flush_scheduled = False
        if self._first:
            first, self._first = self._first, []
            for payload in first:
                self._push_first(payload)
        batch, self._batch = self._batch, []
        offer = self.router_queues.offer
        waited = False
        for frames in batch:
            waited = offer(frames) or waited
        if waited:
            self._arm_retry()
            self._check_congestion()

    @property
    def router_queue(self) -> bool:
        """Whether packets for handlers are still waiting."""
        return bool(self.router_queues.waiting or self._batch or self._first)

    def _arm_retry(self) -> None:
        if self._retry is None:
            # The first-packet queue also has its FD watched; 50 ms is a backstop.
            delay = self.router_queues.delay if self.router_queues.waiting else ROUTER_RETRY
            self._retry = self.loop.call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        if self.push_queue:
            self._flush_push()
        self.router_queues.retry()
        if self.push_queue or self.router_queues.waiting:
            self._arm_retry()
        self._check_congestion()

    def _check_congestion(self) -> None:
        queued = self.router_queues.queued
        if self.congested:
            if queued > self._low:
                return
        elif queued < self._high:
            return
        self.congested = not self.congested
        if self.on_congestion is not None:
            self.on_congestion(self.congested)

    def close(self) -> None:
        self.flush()
        for sock in (self.push, self.router, self.sub):
            try:
                self.loop.remove_reader(sock.getsockopt(zmq.FD))
            except (ValueError, zmq.ZMQError):
                pass
        if self._retry is not None:
            self._retry.cancel()
        # Give packets still queued inside ZeroMQ (shutdown cancels) a moment.
        self.router.close(linger=1000)
        self.push.close(linger=1000)
        self.sub.close()
