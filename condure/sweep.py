"""What a worker owes handlers for many sessions at once: the keep-alive
sweep, and the batched ``keep-alive``/``cancel`` packets.

The sweep walks every slot position up to maxconn (adopted connections may
take slots past it), used or not, at the clock's pace: each session is
visited once per :data:`KEEP_ALIVE_INTERVAL` of real time (reference 5.8).
The pace follows the clock rather than the count of ticks, so that ticks
coming late on a busy machine (many workers, few cores) do not stretch the
round past the 60 s in which a handler must answer before its sessions are
ended; a late tick visits more positions at once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

from condure.clients import batched
from condure.net.conn import Conn
from condure.zhttp.packets import Ident, Packet

KEEP_ALIVE_INTERVAL = 45.0  # every session is visited once per 45 s (reference 5.8)


class KeepAliveSweep:
    """Which slot positions are due a keep-alive visit, tick by tick."""

    def __init__(self, maxconn: int, now: float) -> None:
        self.maxconn = maxconn
        self.pos = 0
        self.time = now  # when the last visit was counted
        self.due = 0.0  # positions owed a visit, fractions included

    def visit(self, slots: Sequence[Conn | None], now: float) -> Iterator[Conn]:
        """The connections whose turn came since the last call."""
        size = max(self.maxconn, len(slots))
        due = self.due + size * max(now - self.time, 0.0) / KEEP_ALIVE_INTERVAL
        self.time = now
        batch = min(int(due), size)
        self.due = due - batch if batch < size else 0.0  # a whole round at most
        pos = self.pos
        for _ in range(batch):
            pos = (pos + 1) % size
            conn = slots[pos] if pos < len(slots) else None
            if conn is not None:
                yield conn
        self.pos = pos


class Owed:
    """Ids owed one kind of packet, by (handler address, our address): one
    packet per pair and MAX_IDS ids (:func:`condure.clients.batched`); our
    address is the session's own (an adopted one keeps its)."""

    def __init__(self) -> None:
        self.ids: defaultdict[tuple[bytes, bytes], list[Ident]] = defaultdict(list)

    def add(self, conn: Conn, call: Callable[[], tuple[bytes, Ident] | None], doing: str) -> None:
        """Add what ``call`` (the session's keep_alive or shutdown) says the
        handler is owed; a session that raises is ended alone."""
        try:
            entry = call()
            if entry is not None:
                self.ids[entry[0], conn.session.instance_id].append(entry[1])
        except Exception:  # noqa: BLE001 - a bug in the session: end it alone
            conn.fail(doing)

    def packets(self, kind: type) -> Iterator[tuple[Packet, bytes]]:
        """(packet, handler address) for everything owed."""
        for (address, origin), idents in self.ids.items():
            for packet in batched(kind, origin, idents):
                yield packet, address
