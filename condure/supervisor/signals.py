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
- SIGHUP replaces the workers one slot at a time (a reload).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from condure.supervisor import fdstore
from condure.supervisor.moves import RestartStore
from condure.supervisor.notify import Notifier

if TYPE_CHECKING:
    from condure.supervisor.children import Child, State
    from condure.supervisor.dispatch import Dispatcher
    from condure.supervisor.sockets import Listeners

log = logging.getLogger("condure")

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD)


def restart_planned(in_unit: bool) -> bool:
    """Whether the SIGTERM we got is part of a restart of our own unit whose
    fd store can keep connections. Blocking (it runs ``systemctl``): call
    it in a thread."""
    unit = fdstore.own_unit() if in_unit else None
    if not fdstore.restart_pending(unit):
        return False
    if fdstore.store_max(unit) == 0:
        log.warning("restart: FileDescriptorStoreMax=0 for %s, so connections cannot "
                    "survive it; closing them instead", unit)
        return False
    return True


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

    if TYPE_CHECKING:
        def children(self) -> list[Child]: ...
        def stop_child(self, child: Child, graceful: bool) -> None: ...
        def hand_over(self, child: Child, target: Child | None) -> None: ...

    async def dispatch_signal(self, sig: int) -> None:
        if sig == signal.SIGTERM:
            await self.handle_term()
        elif sig in (signal.SIGINT, signal.SIGQUIT):
            self.handle_int()
        elif sig == signal.SIGHUP:
            self.handle_hup()
        # SIGCHLD: the loop reaps after every wakeup

    async def handle_term(self) -> None:
        if self.stopping:
            return
        # Only a service under systemd can be restarting.
        restart = self.notify.enabled and await asyncio.to_thread(restart_planned, True)
        if self.stopping:  # a fast stop came first
            return
        log.info("restarting: moving connections to the next start" if restart
                 else "stopping...")
        self.notify.stopping()
        self.stopping = "graceful"
        if not restart or self.listeners is None:
            self._stop_all(graceful=True)
            return
        self.restart_store = RestartStore(self.store_id)
        self.restart_store.listeners(self.listeners.store_entries())
        self._stop_all(graceful=True, hand_over=True)

    def handle_int(self) -> None:
        if self.stopping == "fast":
            return
        if not self.stopping:
            log.info("stopping...")
            self.notify.stopping()
        self.stopping = "fast"
        self._stop_all(graceful=False)

    def handle_hup(self) -> None:
        st = self.state
        if self.stopping:
            return
        if st.reloading:
            log.info("reload already under way")
            return
        log.info("reloading: replacing %d workers one by one", self.n)
        self.notify.reloading()
        st.reloading = True
        st.reload_pending = list(range(self.n))

    def _stop_all(self, graceful: bool, hand_over: bool = False) -> None:
        st = self.state
        st.respawn_at.clear()
        st.reload_pending.clear()
        st.reloading = False
        if self.dispatcher is not None:
            self.dispatcher.pause()
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
