"""The supervisor's part in moving live connections (docs/handover.md).

Workers export sessions in batches (``sessions`` messages: records plus
descriptors, see condure/handover.py). The supervisor is the middle of
every move and keeps its own copy of each descriptor until the receiver
confirms, so nothing is lost if a process dies half-way:

- a reload passes each batch of the retiring worker on to its successor
  (``adopt``), and once the successor answers ``adopted`` closes its copies
  and tells the retiring worker ``taken``;
- a restart puts each batch into systemd's fd store (``fdstore.Uploader``),
  then answers ``taken``; the manifest goes last, just before exiting;
- after a restart, the sessions found in the store are dealt out to the
  new workers (to the worker of the same slot when there is one, so their
  ``from`` address is that worker's own) and removed from the store once
  adopted.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Callable
from dataclasses import dataclass, field

from condure.supervisor import control, fdstore

log = logging.getLogger("condure")

MAX_BATCH_BYTES = 48 * 1024  # as condure.handover: records in one control message


@dataclass(eq=False)
class _Pending:
    source: object | None  # the Child that exported the batch (None: from the store)
    batch: object  # its batch number there
    fds: list[int]


@dataclass
class Moves:
    """Batches in flight between processes, keyed by the number given to
    each ``adopt`` message."""

    send: Callable[[object, dict, list[int]], bool]  # (child, message, fds) -> sent
    pending: dict[int, tuple[object, _Pending]] = field(default_factory=dict)
    counter: int = 0
    moved: int = 0
    lost: int = 0

    def relay(self, source, batch, records: list, fds: list[int], target) -> None:
        """A batch from ``source`` goes to ``target`` (None: nobody can take
        it; the sessions are lost)."""
        if target is None or not self._adopt(target, records, _Pending(source, batch, fds)):
            self._settle(_Pending(source, batch, fds), len(fds))

    def _adopt(self, target, records: list, item: _Pending) -> bool:
        self.counter += 1
        key = self.counter
        if not self.send(target, {"type": "adopt", "batch": key, "records": records}, item.fds):
            return False
        self.pending[key] = (target, item)
        return True

    def adopted(self, target, key, adopted: int, failed: int) -> None:
        entry = self.pending.pop(key, None) if isinstance(key, int) else None
        if entry is None or entry[0] is not target:
            return
        self.moved += adopted
        self._settle(entry[1], failed)

    def target_gone(self, target) -> None:
        """``target`` exited: what it had not confirmed is lost."""
        for key, (who, item) in list(self.pending.items()):
            if who is target:
                del self.pending[key]
                self._settle(item, len(item.fds))

    def _settle(self, item: _Pending, lost: int) -> None:
        control.close_fds(item.fds)
        self.lost += lost
        if item.source is not None:
            self.send(item.source, {"type": "taken", "batch": item.batch, "lost": lost}, [])

    def waiting_on(self, target) -> bool:
        return any(who is target for who, _ in self.pending.values())

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    # -- after a restart -------------------------------------------------------

    def deal(self, sessions: list[tuple[int, dict]], targets: dict[int, object]) -> None:
        """Sessions recovered from the fd store, to the ready workers by
        slot (``entry["worker"]``), in batches."""
        if not targets:
            control.close_fds([fd for fd, _ in sessions])
            self.lost += len(sessions)
            return
        slots = sorted(targets)
        groups: dict[int, list[tuple[int, str]]] = {}
        for fd, entry in sessions:
            slot = entry.get("worker")
            if slot not in targets:
                slot = slots[hash(fd) % len(slots)]
            groups.setdefault(slot, []).append((fd, entry.get("record")))
        for slot, items in groups.items():
            records: list = []
            fds: list[int] = []
            size = 0
            for fd, record in items:
                text = record if isinstance(record, str) else ""
                if fds and (len(fds) >= fdstore.MAX_FDS or size + len(text) > MAX_BATCH_BYTES):
                    self._deal_batch(targets[slot], records, fds)
                    records, fds, size = [], [], 0
                records.append(text)
                fds.append(fd)
                size += len(text)
            if fds:
                self._deal_batch(targets[slot], records, fds)

    def _deal_batch(self, target, records: list, fds: list[int]) -> None:
        item = _Pending(None, None, fds)
        if not self._adopt(target, records, item):
            self._settle(item, len(fds))


class RestartStore:
    """A restart: every batch and the listeners the supervisor bound go
    into systemd's fd store; :meth:`finish` writes the manifest."""

    def __init__(self, generation: str, environ=None) -> None:
        self.uploader = fdstore.Uploader(fdstore.FdStore(environ), generation)

    def listeners(self, entries: list[tuple[int, dict]]) -> None:
        if entries:
            self.uploader.add([fd for fd, _ in entries], [entry for _, entry in entries])

    def batch(self, slot: int, records: list, fds: list[int]) -> int:
        """Store one worker batch; the number of sessions that could not be."""
        failed = self.uploader.failed
        entries = [{"kind": "session", "record": r, "worker": slot} for r in records]
        self.uploader.add(fds[:len(entries)], entries)
        control.close_fds(fds)
        return self.uploader.failed - failed + max(len(fds) - len(entries), 0)

    def finish(self) -> int:
        stored = self.uploader.finish()
        barrier(self.uploader.store)
        return stored


def barrier(store: fdstore.FdStore, timeout: float = 5.0) -> bool:
    """``BARRIER=1`` (sd_notify_barrier(3)): returns once systemd has
    processed every message sent before, so the store is complete before
    this process exits. False when that could not be confirmed."""
    if not store.enabled:
        return False
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            store._send("BARRIER=1", [write_end])
        except OSError as e:
            log.debug("sd_notify barrier: %s", e)
            return False
        os.close(write_end)
        write_end = -1
        ready, _, _ = select.select([read_end], [], [], timeout)
        return bool(ready)  # EOF: systemd closed its copy
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
