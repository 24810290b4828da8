"""Handler packets for sessions a worker does not have (yet).

During a reload the old and the new worker of a slot share one ZHTTP
address, so both receive what the handler sends. A WebSocket that moves
without the handler's ``handoff-proceed`` (``--handoff``, docs/handover.md)
has a window between its export by the old worker and its adoption here in
which a handler packet for it is taken by neither. So a worker keeps the
packets for ids it does not know for a short while, and on adoption hands
the session those of them it has not seen (the seq says which: the older
ones the old worker already served).

Bounded in time, count and bytes: packets for sessions that never arrive
(late packets for ended sessions, the other worker's own) simply age out.
"""

from __future__ import annotations

from collections import deque

from condure.zhttp.packets import Ident, Packet

KEEP = 30.0  # seconds a packet is kept
MAX_PACKETS = 4096
MAX_BYTES = 4 * 1024 * 1024  # of encoded packets


_Entry = tuple[float, int, Packet, Ident]  # arrival time, encoded size, packet, ident


class Parked:
    """Recent handler packets for unknown ids, by id."""

    __slots__ = ("by_id", "order", "size")

    def __init__(self) -> None:
        self.by_id: dict[bytes, list[_Entry]] = {}  # each id's in arrival order
        self.order: deque[_Entry] = deque()  # all of them, for expiry
        self.size = 0

    def __len__(self) -> int:
        return len(self.order)

    def park(self, packet: Packet, ident: Ident, size: int, now: float) -> None:
        """Keep ``packet`` (``size`` bytes encoded) for ``ident``'s id."""
        if ident.seq is None or size > MAX_BYTES:
            return  # req-mode and oversized packets: nothing to resume with
        self.expire(now, size)
        entry = (now, size, packet, ident)
        self.by_id.setdefault(ident.id, []).append(entry)
        self.order.append(entry)
        self.size += size

    def expire(self, now: float, room: int = 0) -> None:
        """Drop what is older than KEEP, and the oldest until ``room``
        more bytes and one more packet fit."""
        order, by_id = self.order, self.by_id
        while order and (order[0][0] < now - KEEP or len(order) >= MAX_PACKETS
                         or self.size + room > MAX_BYTES):
            entry = order.popleft()
            self.size -= entry[1]
            rid = entry[3].id
            kept = by_id.get(rid)
            if kept and kept[0] is entry:  # (not taken meanwhile)
                del kept[0]
                if not kept:
                    del by_id[rid]

    def take(self, rid: bytes) -> list[tuple[Packet, Ident]]:
        """The packets kept for ``rid``, in seq order, forgotten here (their
        entries in ``order`` age out)."""
        kept = self.by_id.pop(rid, None)
        if not kept:
            return []
        return [(packet, ident) for _, _, packet, ident in
                sorted(kept, key=lambda entry: entry[3].seq or 0)]
