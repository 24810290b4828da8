"""Handler packets that come after a restart's bind, before the workers
have subscribed: held in the supervisor, not lost.

A handler publishes on a PUB socket, which drops every packet no
subscriber wants. After ``systemctl restart`` the new supervisor binds
the public XSUB (``BASE-in``) and the handlers' PUB sockets connect to it
at once, but the workers' subscriptions reach it only once the workers
have started (half a second or more on a loaded machine): whatever a
handler sends meanwhile to the sessions that are being moved (Pushpin's
periodic ``keep-alive``, say) would be dropped by its PUB, and the
adopting worker would see a gap in that session's seq numbers and close it
with 1012.

So in bind mode, when the start has connections from the previous one to
adopt (systemd's fd store), the supervisor subscribes itself, as soon as
it has bound the XSUB, to its ``--id`` (a prefix of every address its
workers use: ``<id>`` or ``<id>.<slot>``, stable by slot across
restarts, and of the addresses moved sessions keep). The subscription is
in the XSUB before any handler connects, so each handler's PUB gets it
with the connection's first frames. The "in" relay thread then runs
:func:`hold_then_relay`: packets no worker has subscribed to yet are held
(:class:`SubscriptionHold`), and each worker subscription that the
internal XPUB passes up releases those it covers, in the order they came,
ahead of anything later for the same address.

The hold ends once every worker's own address is subscribed and nothing
is held, or after ``HOLD_TIME`` seconds (what is still held then, for
addresses no worker took, is dropped); the supervisor then unsubscribes
and the thread becomes libzmq's ``proxy_steerable``, as on any other
start: from there on a packet costs what it always did. The hold is
bounded (``max_packets``, ``max_bytes``): what comes beyond is dropped,
and one warning line counts it.

A reload needs none of this: a worker's successor has the same address
and subscribes before the old worker leaves, so the address never loses
its subscriber.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable

import zmq

from condure.net.zmqio import BATCH

log = logging.getLogger("condure")

_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)

HOLD_TIME = 5.0  # seconds after the bind: by then the workers have subscribed
HOLD_MAX_BYTES = 64 << 20  # what the held packets may take at most


def address_of(frame: bytes) -> bytes:
    """A handler packet's address with its space (``b"condure.1 "``), as
    workers subscribe to it; the whole frame when it has no space."""
    end = frame.find(b" ")
    return frame if end < 0 else frame[:end + 1]


class SubscriptionHold:
    """Which handler packets wait for a worker's subscription (no sockets).

    ``expected``: the subscriptions the workers will make for their own
    addresses (``b"condure.0 "``...): the hold is done once each is there
    and nothing waits."""

    def __init__(self, expected: Iterable[bytes], *, max_packets: int,
                 max_bytes: int = HOLD_MAX_BYTES) -> None:
        self.expected = list(expected)
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.subs: set[bytes] = set()  # workers' subscriptions, as the XPUB passes them
        self.held: deque[tuple[bytes, list[bytes]]] = deque()  # (address, frames)
        self.waiting: Counter[bytes] = Counter()  # held packets by address
        self.bytes = 0
        self.total = 0  # packets held, over the whole hold
        self.overflow = 0  # dropped: beyond max_packets or max_bytes
        self.expired = 0  # dropped: still held at the end (end())

    def covered(self, topic: bytes) -> bool:
        subs = self.subs
        return any(topic.startswith(p) for p in subs) if subs else False

    @property
    def done(self) -> bool:
        return not self.held and all(self.covered(p) for p in self.expected)

    def offer(self, frames: list[bytes]) -> bool:
        """A packet from a handler: True to send it on now, False when it
        is held (or dropped: beyond the bounds)."""
        first = frames[0]
        address = address_of(first)
        if not self.waiting[address] and self.covered(first):
            return True
        size = sum(len(f) for f in frames)
        if len(self.held) >= self.max_packets or self.bytes + size > self.max_bytes:
            self.overflow += 1
            return False
        self.held.append((address, frames))
        self.waiting[address] += 1
        self.bytes += size
        self.total += 1
        return False

    def subscribed(self, prefix: bytes) -> list[list[bytes]]:
        """A worker's subscription came: the held packets it covers, in the
        order they came (a packet stays while an earlier one for its
        address does)."""
        self.subs.add(prefix)
        if not self.held:
            return []
        released: list[list[bytes]] = []
        kept: deque[tuple[bytes, list[bytes]]] = deque()
        blocked: set[bytes] = set()
        for address, frames in self.held:
            if address not in blocked and self.covered(frames[0]):
                released.append(frames)
                self.waiting[address] -= 1
                if not self.waiting[address]:
                    del self.waiting[address]
                self.bytes -= sum(len(f) for f in frames)
            else:
                blocked.add(address)
                kept.append((address, frames))
        self.held = kept
        return released

    def unsubscribed(self, prefix: bytes) -> None:
        self.subs.discard(prefix)

    def end(self) -> None:
        """The hold is over: what is still held is dropped (counted)."""
        self.expired += len(self.held)
        self.held.clear()
        self.waiting.clear()
        self.bytes = 0

    def report(self, took: float) -> None:
        """One line about the hold, if anything was held or dropped."""
        delivered = self.total - self.expired
        if self.overflow or self.expired:
            log.warning("restart: handler packets that came before the workers subscribed: "
                        "%d held and delivered, %d dropped beyond the bound (%d packets, "
                        "%d bytes), %d dropped for addresses no worker subscribed to "
                        "within %.1f s", delivered, self.overflow, self.max_packets,
                        self.max_bytes, self.expired, took)
        elif delivered:
            log.info("restart: %d handler packets that came before the workers subscribed "
                     "were held and delivered (%.2f s)", delivered, took)


def hold_then_relay(xsub: zmq.Socket, xpub: zmq.Socket, control: zmq.Socket, *,
                    hold: SubscriptionHold, prefix: bytes, until: float,
                    then: Callable[[zmq.Socket, zmq.Socket, zmq.Socket], None]) -> None:
    """The "in" relay while ``hold`` lasts (until the monotonic time
    ``until`` at most); then unsubscribe ``prefix`` (the supervisor's own
    subscription, made at bind) and hand the sockets to ``then``."""
    started = time.monotonic()
    try:
        if not _hold(xsub, xpub, control, hold, until):
            return  # closing
        hold.end()
        xsub.send(b"\x00" + prefix)
    except zmq.ContextTerminated:
        return
    hold.report(time.monotonic() - started)
    then(xsub, xpub, control)


def _hold(xsub: zmq.Socket, xpub: zmq.Socket, control: zmq.Socket,
          hold: SubscriptionHold, until: float) -> bool:
    """Relay both ways, holding; False when told to stop meanwhile."""
    items = [(control, _POLLIN), (xpub, _POLLIN), (xsub, _POLLIN)]
    poll = zmq.zmq_poll
    while not hold.done:
        left = until - time.monotonic()
        if left <= 0:
            break
        ready = [s for s, _ in poll(items, math.ceil(left * 1000))]
        if control in ready:
            control.recv()
            return False
        if xpub in ready:  # subscriptions, on their way up first
            for _ in range(BATCH):
                try:
                    frames = xpub.recv_multipart(_NOBLOCK)
                except zmq.Again:
                    break
                xsub.send_multipart(frames)
                event = frames[0]
                if len(frames) == 1 and event[:1] == b"\x01":
                    for packet in hold.subscribed(event[1:]):
                        xpub.send_multipart(packet)
                elif len(frames) == 1 and event[:1] == b"\x00":
                    hold.unsubscribed(event[1:])
        if xsub in ready:
            for _ in range(BATCH):
                try:
                    frames = xsub.recv_multipart(_NOBLOCK)
                except zmq.Again:
                    break
                if hold.offer(frames):
                    xpub.send_multipart(frames)
    return True
