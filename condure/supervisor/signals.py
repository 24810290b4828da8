"""The supervisor's answers to signals (docs/supervisor.md).

Signal handlers only enqueue (``main.py``); the loop then calls
:meth:`SupervisorSignals.dispatch_signal` for each, in order:

- SIGTERM stops every worker gracefully. When it is part of
  ``systemctl restart`` (systemd has a restart job queued for our unit),
  the workers hand their connections over to the next start through
  systemd's fd store instead (``moves.py``, ``fdstore.py``). Asking
  systemd runs ``systemctl`` in a thread, with a timeout, so the loop keeps
  serving the workers' control messages meanwhile.
- SIGINT and SIGQUIT stop every worker at once (Condure's fast stop).
- SIGHUP replaces the workers one slot at a time (a reload); one during a
  reload is remembered and carried out after it (``reloads.py``).

A stop that comes while a start after ``systemctl restart`` still has the
previous start's connections to adopt (before ``READY=1``) waits until the
workers are ready and have adopted them (:meth:`stop_when_adopted`), so
that the workers' stop closes them as it closes every connection (WebSocket
close 1001, ``cancel`` to the handler) instead of dropping them. Signals
that came before the loop ran were recorded (``early.py``) and are
handled first.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from condure.supervisor import early, fdstore
from condure.supervisor.moves import Moves, RestartStore
from condure.supervisor.notify import Notifier
from condure.supervisor.reloads import ReloadRefused

if TYPE_CHECKING:
    from condure.supervisor.children import Child, State
    from condure.supervisor.dispatch import Dispatcher
    from condure.supervisor.sockets import Listeners

log = logging.getLogger("condure")

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD)


def restart_planned(in_unit: bool) -> tuple[bool, int | None]:
    """Whether the SIGTERM we got is part of a restart of our own unit whose
    fd store can keep connections, and the store's size
    (``FileDescriptorStoreMax=``, None if unknown). Blocking (it runs
    ``systemctl``): call it in a thread."""
    unit = fdstore.own_unit() if in_unit else None
    if not fdstore.restart_pending(unit):
        return False, None
    size = fdstore.store_max(unit)
    if size == 0:
        log.warning("restart: FileDescriptorStoreMax=0 for %s, so connections cannot "
                    "survive it; closing them instead", unit)
        return False, 0
    return True, size


class SupervisorSignals:
    """Mixed into :class:`condure.supervisor.main.Supervisor`, whose state
    these methods use (declared here)."""

    n: int
    state: State
    notify: Notifier
    stopping: str | None  # "graceful" or "fast"
    restart_store: RestartStore | None
    store_id: str
    listeners: Listeners | None
    dispatcher: Dispatcher | None
    recovered: fdstore.Recovered | None
    stop_deferred: bool
    restart_deferred: tuple[int | None] | None  # a restart waiting for a reload's moves
    moves: Moves

    if TYPE_CHECKING:
        def children(self) -> list[Child]: ...
        def stop_child(self, child: Child, graceful: bool) -> None: ...
        def hand_over(self, child: Child, target: Child | None) -> None: ...
        def adopt_recovered(self, now: float) -> bool: ...
        def _enqueue(self, sig: int) -> None: ...
        def ask_reload(self, source: str) -> tuple[int, str]: ...
        def reloads_cut_short(self) -> None: ...

    async def dispatch_signal(self, sig: int) -> None:
        if sig == signal.SIGTERM:
            await self.handle_term()
        elif sig in (signal.SIGINT, signal.SIGQUIT):
            self.handle_int()
        elif sig == signal.SIGHUP:
            self.handle_hup()
        # SIGCHLD: the loop reaps after every wakeup

    async def handle_term(self) -> None:
        if self.stopping or self.restart_deferred:
            return
        # Only a service under systemd can be restarting.
        restart, size = (await asyncio.to_thread(restart_planned, True) if self.notify.enabled
                         else (False, None))
        if self.stopping:  # a fast stop came first
            return
        restart = restart and self.listeners is not None
        if restart and self._reload_moving():
            # Its sessions move without the handler's handoff (--handoff
            # auto): into the fd store, what the handler sends meanwhile
            # would be lost. They go to the successor first, and from there
            # into the store like any other (restart_after_reload).
            log.info("restarting, once the reload under way has moved its connections")
            self.notify.stopping()
            self.restart_deferred = (size,)
            self._no_more_starts()
            return
        log.info("restarting: moving connections to the next start" if restart
                 else "stopping...")
        self.notify.stopping()
        self.stopping = "graceful"
        if not restart:
            self._begin_stop(graceful=True)
            return
        self._begin_restart(size)

    def _begin_restart(self, size: int | None) -> None:
        assert self.listeners is not None
        self.restart_store = RestartStore(self.store_id, store_max=size)
        self.restart_store.listeners(self.listeners.store_entries())
        self._stop_all(graceful=True, hand_over=True)

    def _reload_moving(self) -> bool:
        """A worker replaced by a reload is still passing on its sessions."""
        return any(c.handing_over and c.handed_over is None and c.popen.poll() is None
                   for c in self.state.retiring)

    def restart_after_reload(self) -> None:
        """(maintain()) A restart held back by a reload's moves begins once
        they are done."""
        if self.restart_deferred is None or self.stopping or self._reload_moving():
            return
        (size,), self.restart_deferred = self.restart_deferred, None
        log.info("restarting: moving connections to the next start")
        self.stopping = "graceful"
        self._begin_restart(size)

    async def finish_restart(self) -> None:
        """A restart's last step, once every worker is gone: the manifest.
        Then, if a ``systemctl stop`` replaced the restart job meanwhile
        (it came during the handover), systemd will drop the store with
        everything in it once we exit: nothing can take those connections
        back from it, but the log says so (docs/restarts.md)."""
        if self.restart_store is None:
            return
        stored = await self.restart_store.finish()
        log.info("restart: %d connections in systemd's fd store (%d lost)", stored,
                 self.moves.lost)
        jobs = await asyncio.to_thread(fdstore.unit_jobs, fdstore.own_unit()) if stored else None
        if jobs and "stop" in jobs and not jobs & fdstore.RESTART_JOBS:
            log.warning("restart: a stop replaced the restart while the connections were "
                        "being stored; systemd closes the %d in its fd store without a "
                        "close frame", stored)

    def handle_int(self) -> None:
        if self.stopping == "fast":
            return
        self.restart_deferred = None
        if not self.stopping:
            log.info("stopping...")
            self.notify.stopping()
        self.stopping = "fast"
        self._begin_stop(graceful=False)

    def handle_hup(self) -> None:
        try:
            self.ask_reload("SIGHUP")  # (reloads.py)
        except ReloadRefused as e:
            log.info("SIGHUP: no reload: %s", e)

    def take_early_signals(self) -> None:
        """The signals that came before the loop's handlers were installed
        (early.py), queued as if they came now. A reload asked for then
        has nothing to do: the workers about to start are fresh."""
        for sig in early.take():
            if sig == signal.SIGHUP:
                log.info("reload asked for while starting: nothing to reload")
            else:
                self._enqueue(sig)

    def _begin_stop(self, graceful: bool) -> None:
        """Stop every worker; but while connections from the fd store wait
        to be adopted (a stop during a restart's start), only once they are
        (:meth:`stop_when_adopted`)."""
        rec = self.recovered
        if rec is None:
            self._stop_all(graceful)
            return
        self._no_more_starts()
        if not self.stop_deferred and rec.sessions:
            log.info("stopping: the %d connections from the previous start are adopted "
                     "first, to be closed politely", len(rec.sessions))
        self.stop_deferred = True

    def stop_when_adopted(self, now: float) -> None:
        """While stopping (maintain()): a stop held back for the fd store's
        connections goes on once every worker that is left is ready and
        has adopted its share (respawns are off while stopping)."""
        if not self.stop_deferred:
            return
        slots = self.state.slots
        if not all(c is None or (c.ready and c.stop_deadline is None) for c in slots):
            return
        if not self.adopt_recovered(now):
            return
        self.stop_deferred = False
        self._stop_all(graceful=self.stopping != "fast")

    def drop_recovered(self) -> None:
        """The loop ends with connections from the fd store not adopted:
        no worker was left to adopt them (or a restart came first: then
        they are still in the store, for the next start)."""
        rec = self.recovered
        if rec is None:
            return
        count = len(rec.sessions)
        rec.close()
        self.recovered = None
        if self.restart_store is not None:
            if count:
                log.info("restart: %d connections from the previous start stay in the fd "
                         "store", count)
        elif count:
            log.warning("%d connections from the previous start closed without a close "
                        "frame: no worker could adopt them", count)

    def _no_more_starts(self) -> None:
        """Stopping: no respawn, no reload step, no dispatched connection."""
        st = self.state
        self.reloads_cut_short()  # (reloads.py)
        st.respawn_at.clear()
        st.reload_pending.clear()
        st.reloading = False
        if self.dispatcher is not None:
            self.dispatcher.pause()

    def _stop_all(self, graceful: bool, hand_over: bool = False) -> None:
        self._no_more_starts()
        for child in self.children():
            if hand_over:
                if child.ready and child.stop_deadline is None:
                    self.hand_over(child, None)
                elif child.stop_deadline is None:
                    self.stop_child(child, graceful)
            elif child.stop_deadline is None or (not graceful and child.graceful) \
                    or child.handing_over:
                # (a reload's retiring worker ends its handover: what it has
                # not passed on yet is closed with 1001, see moves.py)
                self.stop_child(child, graceful)
