"""Bucketed timers for many thousands of connections.

One periodic tick (``RESOLUTION``) serves every connection instead of one
``call_later`` each. Deadlines move on almost every packet, so moving one
must be O(1): an entry is only added when a deadline comes earlier than the
bucket the owner already sits in; a later deadline is noticed when the old
bucket fires and the owner is filed again.

An owner that raises while its bucket is handled is logged and dropped
from the wheel (``Conn`` guards its own calls; this is the backstop): the
rest of the bucket is still handled, so one failure cannot leave other
owners filed under a bucket that is gone, never to fire again. An owner
fires at most once per tick: one whose deadline is still past after it
fired is met again on the next tick, so a session that fails to move its
deadline costs a call every ``RESOLUTION``, not the worker's loop.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

log = logging.getLogger("condure")

RESOLUTION = 0.1  # seconds per bucket: timeouts are whole seconds, 100 ms is plenty


class TimerOwner(Protocol):
    timer_key: int | None  # bucket the owner is filed in, None if none

    @property
    def deadline(self) -> float | None: ...


Owner = TypeVar("Owner", bound=TimerOwner)


class TimerWheel(Generic[Owner]):
    def __init__(self) -> None:
        self._buckets: dict[int, list[Owner]] = {}
        self._keys: list[int] = []  # heap of the keys in _buckets

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def schedule(self, owner: Owner) -> None:
        """File ``owner`` under its current deadline unless it already sits
        in a bucket that fires no later."""
        deadline = owner.deadline
        if deadline is None:
            return
        key = math.ceil(deadline / RESOLUTION)
        current = owner.timer_key
        if current is not None and current <= key:
            return
        owner.timer_key = key
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [owner]
            heapq.heappush(self._keys, key)
        else:
            bucket.append(owner)

    def expire(self, now: float, fire: Callable[[Owner], None]) -> None:
        """Call ``fire`` for every owner whose deadline has passed; file the
        others again under their current deadline."""
        limit = math.floor(now / RESOLUTION)
        keys = self._keys
        due = []
        while keys and keys[0] <= limit:
            key = heapq.heappop(keys)
            due.append((key, self._buckets.pop(key)))
        # Only the buckets due when the pass began: an owner whose deadline
        # is still past after it fired (a session that did not move it) is
        # filed in a new bucket and fires again on the next tick, instead of
        # in this pass again and again, which would hold the worker for good.
        for key, bucket in due:
            for owner in bucket:
                if owner.timer_key != key:
                    continue  # filed again in an earlier bucket meanwhile
                owner.timer_key = None
                try:
                    deadline = owner.deadline
                    if deadline is None:
                        continue
                    if deadline <= now:
                        fire(owner)
                    else:
                        self.schedule(owner)
                except Exception:
                    log.exception("a timer failed; its owner leaves the wheel")
