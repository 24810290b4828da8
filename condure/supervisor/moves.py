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

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from condure.config import Config
from condure.net import control
from condure.supervisor import fdstore
from condure.supervisor.children import Child, State

log = logging.getLogger("condure")

MAX_BATCH_BYTES = 48 * 1024  # as condure.handover: records in one control message
ADOPT_TIMEOUT = 10.0  # after a restart, workers get this long to adopt the stored sessions
# A worker handing over gets drain + handoff timeout + this before SIGKILL.
HANDOVER_GRACE = 10.0


Message = dict[str, Any]


@dataclass(eq=False)
class _Pending:
    source: Child | None  # the worker that exported the batch (None: from the store)
    batch: object  # its batch number there
    fds: list[int]


@dataclass
class Moves:
    """Batches in flight between processes, keyed by the number given to
    each ``adopt`` message."""

    # (child, message, fds) -> sent or queued (see SupervisorMoves._send_to)
    send: Callable[[Child, Message, Sequence[int]], bool]
    pending: dict[int, tuple[Child, _Pending]] = field(default_factory=dict)
    counter: int = 0
    moved: int = 0
    lost: int = 0

    def relay(self, source: Child, batch: object, records: list[Any], fds: list[int],
              target: Child | None) -> None:
        """A batch from ``source`` goes to ``target`` (None: nobody can take
        it; the sessions are lost)."""
        if target is None or not self._adopt(target, records, _Pending(source, batch, fds)):
            self._settle(_Pending(source, batch, fds), len(fds))

    def _adopt(self, target: Child, records: list[Any], item: _Pending) -> bool:
        self.counter += 1
        key = self.counter
        if not self.send(target, {"type": "adopt", "batch": key, "records": records}, item.fds):
            return False
        self.pending[key] = (target, item)
        return True

    def adopted(self, target: Child, key: object, adopted: int, failed: int) -> None:
        entry = self.pending.pop(key, None) if isinstance(key, int) else None
        if entry is None or entry[0] is not target:
            return
        self.moved += adopted
        self._settle(entry[1], failed)

    def undelivered(self, target: Child, message: Message) -> None:
        """``message`` to ``target`` could not be sent in time: if it was an
        ``adopt``, its sessions are lost."""
        key = message.get("batch")
        if message.get("type") == "adopt" and isinstance(key, int):
            entry = self.pending.get(key)
            if entry is not None and entry[0] is target:
                del self.pending[key]
                self._settle(entry[1], len(entry[1].fds))

    def target_gone(self, target: Child) -> None:
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

    def waiting_on(self, target: Child) -> bool:
        return any(who is target for who, _ in self.pending.values())

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    # -- after a restart -------------------------------------------------------

    def deal(self, sessions: list[tuple[int, dict[str, Any]]], targets: dict[int, Child]) -> None:
        """Sessions recovered from the fd store, to the ready workers by
        slot (``entry["worker"]``), in batches."""
        if not targets:
            control.close_fds([fd for fd, _ in sessions])
            self.lost += len(sessions)
            return
        slots = sorted(targets)
        groups: dict[int, list[tuple[int, object]]] = {}
        for fd, entry in sessions:
            slot = entry.get("worker")
            if slot not in targets:
                slot = slots[hash(fd) % len(slots)]
            groups.setdefault(slot, []).append((fd, entry.get("record")))
        for slot, items in groups.items():
            records: list[Any] = []
            fds: list[int] = []
            size = 0
            for fd, record in items:
                text = record if isinstance(record, str) else ""
                if fds and (len(fds) >= control.MAX_FDS or size + len(text) > MAX_BATCH_BYTES):
                    self._deal_batch(targets[slot], records, fds)
                    records, fds, size = [], [], 0
                records.append(text)
                fds.append(fd)
                size += len(text)
            if fds:
                self._deal_batch(targets[slot], records, fds)

    def _deal_batch(self, target: Child, records: list[Any], fds: list[int]) -> None:
        item = _Pending(None, None, fds)
        if not self._adopt(target, records, item):
            self._settle(item, len(fds))


class RestartStore:
    """A restart: every batch and the listeners the supervisor bound go
    into systemd's fd store; :meth:`finish` writes the manifest."""

    def __init__(self, generation: str, environ: Mapping[str, str] | None = None) -> None:
        self.uploader = fdstore.Uploader(fdstore.FdStore(environ), generation)

    def listeners(self, entries: list[tuple[int, dict[str, Any]]]) -> None:
        if entries:
            self.uploader.add([fd for fd, _ in entries], [entry for _, entry in entries])

    def batch(self, slot: int, records: list[Any], fds: list[int]) -> int:
        """Store one worker batch; the number of sessions that could not be."""
        failed = self.uploader.failed
        entries = [{"kind": "session", "record": r, "worker": slot} for r in records]
        self.uploader.add(fds[:len(entries)], entries)
        control.close_fds(fds)
        return self.uploader.failed - failed + max(len(fds) - len(entries), 0)

    async def finish(self) -> int:
        stored = self.uploader.finish()
        await barrier(self.uploader.store)
        return stored


async def barrier(store: fdstore.FdStore, timeout: float = 5.0) -> bool:
    """``BARRIER=1`` (sd_notify_barrier(3)): returns once systemd has
    processed every message sent before, so the store is complete before
    this process exits. False when that could not be confirmed."""
    if not store.enabled:
        return False
    loop = asyncio.get_running_loop()
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    closed: asyncio.Future[bool] = loop.create_future()

    def on_eof() -> None:
        if not closed.done():
            closed.set_result(True)

    try:
        try:
            store.barrier(write_end)
        except OSError as e:
            log.debug("sd_notify barrier: %s", e)
            return False
        os.close(write_end)
        write_end = -1
        # EOF on the pipe: systemd closed its copy of the write end.
        loop.add_reader(read_end, on_eof)
        try:
            return await asyncio.wait_for(closed, timeout)
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(read_end)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


class SupervisorMoves:
    """The Supervisor's methods for moving connections (mixed into
    condure.supervisor.main.Supervisor, whose state they use, declared
    here)."""

    config: Config
    state: State
    moves: Moves
    restart_store: RestartStore | None
    recovered: fdstore.Recovered | None
    adopt_until: float | None
    moved_note: str

    def hand_over(self, child: Child, target: Child | None) -> None:
        """Ask ``child`` to export its sessions: to ``target`` (a reload's
        successor), or to the fd store (a restart)."""
        drain, handoff = float(self.config.drain_timeout), float(self.config.handoff_timeout)
        child.graceful = True
        child.handover_to = target
        child.stop_deadline = time.monotonic() + drain + handoff + HANDOVER_GRACE
        self._send_to(child, {"type": "handover", "drain": drain, "handoff_timeout": handoff})

    def _send_to(self, child: Child, message: Message, fds: Sequence[int] = ()) -> bool:
        """A control message that must arrive: sent now, or queued until the
        socket has room (control.SEND_TIMEOUT at most; then it counts as
        undelivered). False when it could not even be queued."""

        def failed() -> None:
            log.warning("worker %d: could not send %s", child.slot, message["type"])
            self.moves.undelivered(child, message)

        try:
            child.outbox.send(message, fds, on_fail=failed)
            return True
        except OSError:
            log.warning("worker %d: could not send %s", child.slot, message["type"])
            return False

    def on_sessions(self, child: Child, message: Message, fds: list[int]) -> None:
        records = message.get("records")
        records = records if isinstance(records, list) else []
        if self.restart_store is not None:
            lost = self.restart_store.batch(child.slot, records, fds)
            self.moves.lost += lost
            self._send_to(child, {"type": "taken", "batch": message.get("batch"), "lost": lost})
            return
        # The slot's current worker: the successor, unless a later reload
        # has already replaced that one too.
        target = self.state.slots[child.slot]
        if target is None or target is child or not target.ready \
                or target.stop_deadline is not None or target.popen.poll() is not None:
            target = None
        self.moves.relay(child, message.get("batch"), records, fds, target)

    def adopt_recovered(self, now: float) -> bool:
        """After a restart: deal the sessions found in the fd store to the
        workers, and once they are adopted (or ADOPT_TIMEOUT passed) remove
        everything of ours from the store. True when done."""
        rec = self.recovered
        if rec is None:
            return True
        if self.adopt_until is None:
            self.adopt_until = now + ADOPT_TIMEOUT
            targets = {c.slot: c for c in self.state.slots if c is not None}
            sessions, rec.sessions = rec.sessions, []
            try:
                self.moves.deal(sessions, targets)
            except Exception:
                log.exception("fd store: dealing the stored connections failed")
        if self.moves.busy and now < self.adopt_until:
            return False
        for child in self.state.slots:
            if child is not None:
                self.moves.target_gone(child)  # unanswered batches count as lost
        store = fdstore.FdStore()
        for name in sorted(rec.names):
            try:
                store.remove(name)
            except OSError as e:
                log.warning("fd store: cannot remove %s: %s", name, e)
        lost = self.moves.lost + rec.lost + rec.missing
        for problem in rec.problems:
            log.warning("fd store: %s", problem)
        (log.warning if lost else log.info)(
            "restart: %d connections adopted, %d lost", self.moves.moved, lost)
        self.moved_note = f"; after restart {self.moves.moved} adopted, {lost} lost"
        self.recovered = None
        return True

