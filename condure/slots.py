"""The worker's connection registry: numbered slots and the ids naming them.

Ids are ``"<worker>-<slot>-<counter>"`` as Condure makes them (reference
1.3): the slot part is what routes a handler's packet to its connection,
and the full id must match the slot's current one, so packets for finished
requests are ignored. WebSocket sessions and HTTP requests in flight
adopted from another process keep their ids, which need not name the slot
they sit in here: those are routed by id (``moved``) for as long as the
session has that id (an HTTP connection's next request has a new one, of
its slot here, and a late packet for the moved request must not reach it).

:class:`Slots` is the base of :class:`condure.worker.Worker`; its public
methods are the registry API that handover and the worker process use.
"""

from __future__ import annotations

from condure.net.conn import Conn


class Slots:
    def __init__(self, index: int, first_id: int = 0) -> None:
        self.index = index
        self.slots: list[Conn | None] = []
        self.free: list[int] = []
        self.slot_modes: dict[int, str] = {}
        # Req and stream connections share the slots (and the id space) but
        # are counted (and limited) separately (reference 1.2).
        self.counts = {"stream": 0, "req": 0}
        self.moved: dict[bytes, Conn] = {}
        self.moved_ids: dict[int, bytes] = {}  # slot -> its id in ``moved``
        self.counter = first_id
        self.prefix = f"{index}-".encode()

    def take_slot(self, mode: str) -> int:
        """A free slot for a new connection of ``mode``, counted."""
        slot = self.free.pop() if self.free else len(self.slots)
        if slot == len(self.slots):
            self.slots.append(None)
        self.slot_modes[slot] = mode
        self.counts[mode] += 1
        return slot

    def free_slot(self, slot: int) -> str:
        """Give back a slot :meth:`take_slot` handed out; its mode."""
        self.free.append(slot)
        mode = self.slot_modes.pop(slot, "stream")
        self.counts[mode] -= 1
        return mode

    def next_id(self, slot: int) -> bytes:
        """A new session id naming ``slot``."""
        rid = b"%d-%d-%x" % (self.index, slot, self.counter)
        self.counter += 1
        if self.moved and rid in self.moved:
            return self.next_id(slot)  # an adopted session has it
        return rid

    def live_connections(self) -> list[Conn]:
        """Every connection this worker owns and has not closed, by slot."""
        return [conn for conn in self.slots if conn is not None and not conn.closed]

    def install(self, conn: Conn) -> None:
        """Register ``conn`` (built for a slot from :meth:`take_slot`)."""
        self.slots[conn.slot] = conn

    def unregister(self, conn: Conn) -> str | None:
        """Forget ``conn`` if it still holds its slot; the slot's mode then
        (the slot is free again), else None."""
        if self.slots[conn.slot] is not conn:
            return None
        if self.moved_ids:
            rid = self.moved_ids.pop(conn.slot, None)
            if rid is not None and self.moved.get(rid) is conn:
                del self.moved[rid]
        self.slots[conn.slot] = None
        return self.free_slot(conn.slot)

    def track(self, conn: Conn, rid: bytes) -> None:
        """Route ``rid`` to ``conn`` (adopted with it) while it has that id."""
        self.moved[rid] = conn
        self.moved_ids[conn.slot] = rid

    def route(self, rid: bytes) -> Conn | None:
        """The connection whose session has id ``rid`` now, or None."""
        if self.moved:
            conn = self.moved.get(rid)
            if conn is not None:
                if conn.session.rid == rid:
                    return conn
                del self.moved[rid]  # its request is over: the id is dead
                if self.moved_ids.get(conn.slot) == rid:
                    del self.moved_ids[conn.slot]
                return None
        if not rid.startswith(self.prefix):
            return None
        rest = rid[len(self.prefix):]
        slot_text, sep, _ = rest.partition(b"-")
        if not sep or not slot_text.isdigit():
            return None
        slot = int(slot_text)
        if slot >= len(self.slots):
            return None
        conn = self.slots[slot]
        if conn is None or conn.session.rid != rid:
            return None
        return conn
