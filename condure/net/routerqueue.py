"""Packets for handlers on a ROUTER socket, queued per handler.

Condure sends later packets to a handler's identity with ROUTER_MANDATORY
and retries every 50 ms while that handler's queue is full. condure
retries sooner while the handler is draining its queue: 1 ms after a send
was refused, doubling up to 50 ms for as long as nothing goes through,
back to 1 ms once something does (a fixed 50 ms pause each time a busy
handler's queue fills caps it at a queue's worth of packets per 50 ms).
It also waits up to UNREACHABLE_GRACE seconds for a handler
whose connection is not up yet (``EHOSTUNREACH``, typically one that
started at the same moment) before dropping what it has for it; Condure
dropped at once. Packets wait in order, per handler, so one slow handler
never holds up the others. Used by a worker's own ROUTER and by the
supervisor's relay in front of the public ROUTER; the caller decides when
``retry`` runs (``delay`` seconds later, while ``waiting``). ``queued``
counts what waits, for the caller's backpressure (docs/handover.md,
"Bounded backlog").
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import zmq

from condure.net.unanswered import Throttled

_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_LAST = int(zmq.NOBLOCK)


ROUTER_RETRY = 0.05  # Condure retries a full handler queue every 50 ms
ROUTER_RETRY_MIN = 0.001  # condure's first retry; doubles up to ROUTER_RETRY
UNREACHABLE_GRACE = 1.0  # how long a handler that is still connecting is waited for


class RouterQueues:
    def __init__(self, router: zmq.Socket, clock: Callable[[], float] = time.monotonic) -> None:
        self.router = router
        self.clock = clock
        self.waiting: dict[bytes, deque[list[bytes]]] = {}
        self.since: dict[bytes, float] = {}  # when each queue last moved
        self.dropped = 0
        self.queued = 0  # packets waiting, all handlers together
        # Not in silence: its sessions wait for packets that never come.
        self.unreachable = Throttled(
            "dropped packets for a handler that is not connected (gone, or not back yet)", clock)
        self.delay = ROUTER_RETRY_MIN  # until the next retry() should run

    def offer(self, frames: list[bytes]) -> bool:
        """Send ``[handler-id, "", T...]`` now or queue it; True when it had
        to wait (the caller then makes sure ``retry`` runs)."""
        address = frames[0]
        queue = self.waiting.get(address)
        if queue is not None:
            queue.append(frames)
            self.queued += 1
            return True
        if self._send(frames) is None:
            return False
        if not self.waiting:
            self.delay = ROUTER_RETRY_MIN
        self.waiting[address] = deque((frames,))
        self.since[address] = self.clock()
        self.queued += 1
        return True

    def _send(self, frames: list[bytes]) -> bool | None:
        """None when sent; else whether the handler was unreachable."""
        send = self.router.send
        try:
            # Frame by frame with plain int flags: pyzmq's send_multipart
            # combines enum flags per frame, a cost at tens of thousands of
            # packets a second. Only the first frame can fail (the rest of
            # a message always follows it).
            for frame in frames[:-1]:
                send(frame, _MORE)
            send(frames[-1], _LAST)
        except zmq.Again:
            return False
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            return True
        return None

    def retry(self) -> None:
        now = self.clock()
        moved = False
        for address in list(self.waiting):
            queue = self.waiting[address]
            while queue:
                unreachable = self._send(queue[0])
                if unreachable is None:
                    queue.popleft()
                    self.queued -= 1
                    self.since[address] = now
                    moved = True
                    continue
                if unreachable and now - self.since[address] > UNREACHABLE_GRACE:
                    self.unreachable.note(f"{len(queue)} for {address.decode(errors='replace')}")
                    self.dropped += len(queue)
                    self.queued -= len(queue)
                    queue.clear()
                break
            if not queue:
                del self.waiting[address]
                del self.since[address]
        self.delay = ROUTER_RETRY_MIN if moved else min(self.delay * 2, ROUTER_RETRY)


def pack_later(address: bytes, payload: bytes) -> bytes:
    """One frame for the worker -> supervisor hop of bind mode: the handler
    address (at most 255 bytes, after a length byte), then the packet.
    Cheaper than a three-frame message on both sides of the hop."""
    return bytes((len(address),)) + address + payload


def unpack_later(data: bytes) -> list[bytes] | None:
    """``[handler-id, "", T...]`` from :func:`pack_later`'s frame, or None."""
    if not data:
        return None
    end = 1 + data[0]
    if len(data) <= end:
        return None
    return [data[1:end], b"", data[end:]]


class PackedQueues(RouterQueues):
    """RouterQueues for a PUSH to the supervisor's relay: queued per handler
    as usual, sent as one :func:`pack_later` frame (``frames[1]``)."""

    def _send(self, frames: list[bytes]) -> bool | None:
        try:
            self.router.send(frames[1], _LAST)
        except zmq.Again:
            return False
        return None
