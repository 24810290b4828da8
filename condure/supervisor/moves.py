"""The supervisor's part in moving live connections (docs/handover.md).

Workers export sessions in batches (``sessions`` messages: records plus
descriptors, see condure/handover.py). The supervisor is the middle of
every move and keeps its own copy of each descriptor until the receiver
confirms, so nothing is lost if a process dies half-way:

- a reload passes each batch of the retiring worker on to the slot's
  current worker (``adopt``), and once that one answers ``adopted`` closes
  its copies and tells the retiring worker ``taken``. While the slot has no
  worker that can adopt (the new worker died and its replacement is not
  ready yet), the batch waits here, up to the retiring worker's drain time;
  a batch nobody can take (that time is over, condure stops, the adopting
  worker refuses it because it stops) is ``returned`` to the retiring
  worker, which closes those sessions politely (1012, or 1001 on a stop);
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
class Batch:
    """Sessions exported together, and our copies of their sockets."""

    source: Child | None  # the worker that exported the batch (None: from the store)
    number: object  # its batch number there
    records: list[Any]
    fds: list[int]
    slot: int = -1  # whose worker is to adopt it
    until: float = 0.0  # while no worker can adopt it, it waits until then


@dataclass
class Moves:
    """Batches in flight between processes, keyed by the number given to
    each ``adopt`` message, and batches waiting for a worker to adopt them."""

    # (child, message, fds) -> sent or queued (see SupervisorMoves._send_to)
    send: Callable[[Child, Message, Sequence[int]], bool]
    pending: dict[int, tuple[Child, Batch]] = field(default_factory=dict)
    held: list[Batch] = field(default_factory=list)
    counter: int = 0
    moved: int = 0
    lost: int = 0
    # sessions that left the fd store during a restart: their clients hung up
    closed_by_clients: int = 0

    def relay(self, target: Child, item: Batch) -> bool:
        """Pass ``item`` to ``target`` to adopt; False if it could not be
        sent (the batch is still ours)."""
        self.counter += 1
        key = self.counter
        if not self.send(target, {"type": "adopt", "batch": key, "records": item.records},
                         item.fds):
            return False
        self.pending[key] = (target, item)
        return True

    def adopted(self, target: Child, key: object, adopted: int, failed: int,
                refused: bool) -> Batch | None:
        """``target`` answered ``adopted``; the batch when it refused it
        (it stops: the batch is still ours, to place elsewhere)."""
        entry = self.pending.pop(key, None) if isinstance(key, int) else None
        if entry is None or entry[0] is not target:
            return None
        if refused:
            return entry[1]
        self.moved += adopted
        self._settle(entry[1], failed)
        return None

    def undelivered(self, target: Child, message: Message) -> Batch | None:
        """``message`` to ``target`` could not be sent in time: if it was an
        ``adopt``, its batch (never delivered: still ours)."""
        key = message.get("batch")
        if message.get("type") == "adopt" and isinstance(key, int):
            entry = self.pending.get(key)
            if entry is not None and entry[0] is target:
                del self.pending[key]
                return entry[1]
        return None

    def target_gone(self, target: Child) -> None:
        """``target`` exited: what it had not confirmed is lost (it may
        have adopted and served those sessions already)."""
        for key, (who, item) in list(self.pending.items()):
            if who is target:
                del self.pending[key]
                self._settle(item, len(item.fds))

    def give_back(self, item: Batch) -> None:
        """Nobody can adopt ``item``: back to the worker that exported it,
        which closes those sessions politely; lost if that one is gone."""
        control.close_fds(item.fds)
        if item.source is None or not self.send(
                item.source, {"type": "returned", "batch": item.number}, []):
            self.lost += len(item.fds)

    def drop(self, item: Batch) -> None:
        """``item`` is lost: our copies closed, its source told."""
        self._settle(item, len(item.fds))

    def _settle(self, item: Batch, lost: int) -> None:
        control.close_fds(item.fds)
        self.lost += lost
        if item.source is not None:
            self.send(item.source, {"type": "taken", "batch": item.number, "lost": lost}, [])

    def waiting_on(self, target: Child) -> bool:
        return any(who is target for who, _ in self.pending.values())

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.held)

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
        item = Batch(None, None, records, fds)
        if not self.relay(target, item):
            self._settle(item, len(fds))


class RestartStore:
    """A restart: every batch and the listeners the supervisor bound go
    into systemd's fd store; :meth:`finish` writes the manifest."""

    def __init__(self, generation: str, environ: Mapping[str, str] | None = None,
                 store_max: int | None = None) -> None:
        self.uploader = fdstore.Uploader(fdstore.FdStore(environ), generation, store_max)

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
    stopping: str | None
    moves: Moves
    restart_store: RestartStore | None
    recovered: fdstore.Recovered | None
    adopt_until: float | None
    moved_note: str

    def hand_over(self, child: Child, target: Child | None) -> None:
        """Ask ``child`` to export its sessions: to ``target`` (a reload's
        successor), or to the fd store (a restart)."""
        drain, handoff = float(self.config.drain_timeout), float(self.config.handoff_timeout)
        now = time.monotonic()
        child.graceful = True
        child.handover_to = target
        child.handing_over = True  # (its death before handover-done loses what it has)
        child.hold_until = now + drain
        child.stop_deadline = now + drain + handoff + HANDOVER_GRACE
        mode = self.config.handoff  # auto: ask only on a restart (a reload loses nothing)
        ask = mode == "ask" or (mode == "auto" and target is None)
        self._send_to(child, {"type": "handover", "drain": drain, "handoff_timeout": handoff,
                              "ask": ask})

    def _send_to(self, child: Child, message: Message, fds: Sequence[int] = ()) -> bool:
        """A control message that must arrive: sent now, or queued until the
        socket has room (control.SEND_TIMEOUT at most; then it counts as
        undelivered). False when it could not even be queued."""

        def failed() -> None:
            log.warning("worker %d: could not send %s", child.slot, message["type"])
            item = self.moves.undelivered(child, message)
            if item is not None:
                self.give_back(item)

        if child.gone:
            return False
        try:
            child.outbox.send(message, fds, on_fail=failed)
            return True
        except OSError:
            log.warning("worker %d: could not send %s", child.slot, message["type"])
            return False

    def on_sessions(self, child: Child, message: Message, fds: list[int]) -> None:
        records = message.get("records")
        records = records if isinstance(records, list) else []
        child.exported += len(fds)
        self.place(Batch(child, message.get("batch"), records, fds, child.slot,
                         child.hold_until))

    def on_adopted(self, child: Child, message: Message) -> None:
        adopted = int(message.get("adopted", 0))
        # Counted at once (STATUS=, ctl status), not only from the worker's
        # next statistics, a second later; those replace the figure.
        child.connections += adopted
        item = self.moves.adopted(child, message.get("batch"), adopted,
                                  int(message.get("failed", 0)), bool(message.get("refused")))
        if item is not None:
            self.place(item)

    def place(self, item: Batch, again: bool = False) -> None:
        """A batch exported by a worker goes to the fd store (a restart) or
        to its slot's current worker; while the slot has none that can
        adopt, it waits (``place_held``) until ``item.until``; when condure
        stops or that time is over, it goes back to its source."""
        if item.source is None:  # from the store: a target refused it or is stuck
            self.moves.drop(item)
            return
        if self.restart_store is not None:
            lost = self.restart_store.batch(item.slot, item.records, item.fds)
            self.moves.lost += lost
            self._send_to(item.source, {"type": "taken", "batch": item.number, "lost": lost})
            return
        if self.stopping:
            self.give_back(item)
            return
        # The slot's current worker: the successor, unless a later reload
        # has already replaced that one too, or a respawn after it died.
        target = self.state.slots[item.slot]
        if target is not None and target is not item.source and target.ready \
                and target.stop_deadline is None and target.popen.poll() is None \
                and self.moves.relay(target, item):
            return
        if time.monotonic() >= item.until:
            log.warning("worker %d: no worker took %d connections in time; closing them",
                        item.slot, len(item.fds))
            self.give_back(item)
            return
        if not again and not any(h.slot == item.slot for h in self.moves.held):
            log.info("worker %d: no worker to adopt connections yet; holding them until one "
                     "is ready", item.slot)
        self.moves.held.append(item)

    def place_held(self) -> None:
        """Batches waiting for a worker: placed again (each loop round)."""
        if self.moves.held:
            held, self.moves.held = self.moves.held, []
            for item in held:
                self.place(item, again=True)

    def give_back(self, item: Batch) -> None:
        self.moves.give_back(item)

    def retired_exit(self, child: Child, status: int, how: str) -> None:
        """A worker replaced by a reload, or stopping (a restart: handing
        over to the fd store), exited. If it died before its
        handover was done, the connections it still had (its last stats
        count, less what it exported since) are lost; batches it had
        passed to us still move."""
        if child.handed_over is None and child.handing_over:
            lost = max(child.connections - child.exported, 0)
            self.moves.lost += lost
            log.warning("worker %d (pid %d) exited with %s while handing over its connections; "
                        "%d lost", child.slot, child.pid, how, lost)
        elif status:
            log.warning("worker %d (pid %d) exited with %s while draining", child.slot,
                        child.pid, how)
        else:
            log.debug("worker %d (pid %d) exited with %s", child.slot, child.pid, how)

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
        self.moves.lost += rec.lost + rec.missing
        self.moves.closed_by_clients += rec.closed_by_clients
        for problem in rec.problems:
            log.warning("%s", problem)
        self.recovered = None
        self.report_adopted(rec.closed_by_clients)
        return True

    def report_adopted(self, left: int) -> None:
        """The log line and status note of an adoption after a restart;
        ``left``: connections whose clients hung up while they were in the
        fd store (not lost: there was nothing left to carry)."""
        moved, lost = self.moves.moved, self.moves.lost
        gone = f"; {left} closed by their clients while stored" if left else ""
        if self.stopping:  # a stop during the start: the workers' stop closes them
            (log.warning if lost else log.info)(
                "restart: %d connections from the previous start closed: stopping "
                "(%d lost%s)", moved, lost, gone)
            return
        (log.warning if lost else log.info)(
            "restart: %d connections adopted, %d lost%s", moved, lost, gone)
        self.moved_note = (f"; after restart {moved} adopted, {lost} lost"
                           + (f", {left} closed by their clients" if left else ""))
