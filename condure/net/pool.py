"""The pool of idle origin connections of client mode (reference 6.2 step 12).

A connection whose exchange ended persistent goes back here with
:meth:`Pool.put` and is handed out again by :meth:`Pool.get` for the same
:class:`~condure.net.outconn.PoolKey` (address, TLS, URL host; for TLS also
the name checked and whether it was verified, so that a connection made
without verification never serves a request that asked for it).

- Size: at most ``capacity`` idle connections in all (Condure:
  ``(req_maxconn + stream_maxconn) / 10``, see :func:`capacity_for`); a
  connection offered to a full pool is closed, as in Condure.
- Idle lifetime: 55 s; one timer, armed for the oldest entry, sweeps the
  expired ones (entries expire in the order they came in, so the sweep
  only looks at the front).
- Staleness: before a pooled connection is handed out, a non-blocking peek
  checks that the origin has neither closed it nor sent anything unasked;
  a stale one is closed and the next is tried. So a request is never
  written to a connection already known to be dead.

Among the connections of one key the most recently used goes first: it
is the least likely to have been dropped by the origin's own idle timer.
"""

from __future__ import annotations

import asyncio
import logging

from condure.net.outconn import OutboundConn, PoolKey

log = logging.getLogger("condure.outbound")

IDLE_LIFETIME = 55.0  # seconds
SLACK = 0.01  # seconds of tolerance in the sweep timer


def capacity_for(req_maxconn: int, stream_maxconn: int, workers: int = 1) -> int:
    """Condure's pool size, ``(req_maxconn + stream_maxconn) / 10``, shared
    out between ``workers`` processes (each has its own pool)."""
    return (req_maxconn + stream_maxconn) // 10 // max(workers, 1)


class Pool:
    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int,
                 idle: float = IDLE_LIFETIME) -> None:
        self.loop = loop
        self.capacity = capacity
        self.idle = idle
        self._by_key: dict[PoolKey, list[OutboundConn]] = {}
        # every pooled connection -> its expiry, in the order they came in
        self._expiry: dict[OutboundConn, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.reused = 0  # statistics: handed out again
        self.stale = 0  # found dead when asked for
        self.expired = 0  # closed by the idle sweep

    def __len__(self) -> int:
        return len(self._expiry)

    def put(self, conn: OutboundConn) -> bool:
        """Keep ``conn`` for reuse; False (and ``conn`` is closed) when the
        pool is full or ``conn`` is not reusable (output pending, closed,
        at its end, failed)."""
        if len(self._expiry) >= self.capacity or conn in self._expiry or not conn.detach():
            if conn not in self._expiry:
                conn.close()
            return False
        expires = self.loop.time() + self.idle
        self._expiry[conn] = expires
        self._by_key.setdefault(conn.key, []).append(conn)
        if self._timer is None:
            self._timer = self.loop.call_at(expires, self._on_timer)
        return True

    def get(self, key: PoolKey) -> OutboundConn | None:
        """A live idle connection for ``key`` (taken out of the pool), or
        None. Stale ones met on the way are closed."""
        conns = self._by_key.get(key)
        found = None
        while conns:
            conn = conns.pop()
            del self._expiry[conn]
            if conn.probe():
                conn.reused = True
                self.reused += 1
                found = conn
                break
            log.debug("discarding stale pooled connection %r", conn)
            self.stale += 1
            conn.close()
        if conns is not None and not conns:
            del self._by_key[key]
        return found

    def sweep(self, now: float | None = None) -> int:
        """Close the connections idle past their lifetime at ``now`` (the
        loop's clock; default: the current time); returns how many."""
        if now is None:
            now = self.loop.time()
        count = 0
        expiry = self._expiry
        while expiry:
            conn, expires = next(iter(expiry.items()))
            if expires > now:
                break
            del expiry[conn]
            conns = self._by_key[conn.key]
            conns.remove(conn)
            if not conns:
                del self._by_key[conn.key]
            conn.close()
            count += 1
        self.expired += count
        return count

    def _on_timer(self) -> None:
        self._timer = None
        # call_at may fire up to the clock's resolution early: allow for it
        self.sweep(self.loop.time() + SLACK)
        if self._expiry:
            self._timer = self.loop.call_at(next(iter(self._expiry.values())), self._on_timer)

    def close(self) -> None:
        """Close every pooled connection (the worker is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conns = list(self._expiry)
        self._expiry.clear()
        self._by_key.clear()
        for conn in conns:
            conn.close()
