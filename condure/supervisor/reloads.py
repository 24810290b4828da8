"""Reloads asked for: numbered, coalesced, and awaited (docs/supervisor.md).

A reload is asked for by SIGHUP or by ``condure ctl reload`` (supervisor/
ctl.py). One asked for while none is under way begins at once (the workers
are then replaced one slot at a time by ``step_reload`` in main.py). One
asked for while a reload is under way is remembered: when the current one
is done, exactly one more follows, however many were asked for meanwhile;
it covers them all, since each of its workers starts after the last of
them was asked for (a configuration or certificate changed between two
quick reloads is not missed). A stop or a restart still takes precedence:
it ends the reload under way and forgets the one remembered.

Reloads are numbered from 1 in the order they begin. Whoever asks learns
the number of the reload that covers the request (the one it began, or
the one that follows the reload under way) and may wait for it
(:meth:`SupervisorReloads.reload_outcome`): ``condure ctl reload --wait``
returns when that reload is done, at the ``reloaded`` log line and
``READY=1``, or says why it was not.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from condure.supervisor.children import State
    from condure.supervisor.moves import RestartStore
    from condure.supervisor.notify import Notifier

log = logging.getLogger("condure")


class ReloadRefused(Exception):
    """No reload now (condure is stopping or restarting); the text says why."""


@dataclass
class Reloads:
    begun: int = 0  # reloads begun since the start; the last one's number
    ended: int = 0  # the number of the last reload that ended (done or not)
    again: bool = False  # one more was asked for during the one under way
    failure: str | None = None  # why the reload under way will not be complete
    # (number, future): resolved with None once that reload is done, or
    # with the reason it is not
    waiters: list[tuple[int, asyncio.Future[str | None]]] = field(default_factory=list)

    def settle(self, upto: int, failure: str | None) -> None:
        """Tell whoever waits for a reload numbered ``upto`` or lower."""
        keep = []
        for number, future in self.waiters:
            if number > upto:
                keep.append((number, future))
            elif not future.done():
                future.set_result(failure)
        self.waiters = keep


class SupervisorReloads:
    """Mixed into :class:`condure.supervisor.main.Supervisor`, whose state
    these methods use (declared here)."""

    n: int
    state: State
    notify: Notifier
    stopping: str | None
    restart_deferred: tuple[int | None] | None
    restart_store: RestartStore | None
    reloads: Reloads
    wake: asyncio.Event

    if TYPE_CHECKING:
        def status(self) -> str: ...

    def ask_reload(self, source: str) -> tuple[int, str]:
        """A reload asked for by ``source`` (``SIGHUP``, ``condure ctl``):
        (the number of the reload that covers it, ``started`` or
        ``queued``). Raises ReloadRefused while stopping or restarting."""
        if self.stopping or self.restart_deferred:
            raise ReloadRefused(self.stop_reason())
        book = self.reloads
        if not self.state.reloading:
            self._begin_reload(f"{source}: reloading")
            return book.begun, "started"
        if book.again:
            log.info("%s: a reload is already due after the one under way (%d); this "
                     "asks for nothing more", source, book.begun)
        else:
            log.info("%s: reload %d under way; another follows once it is done", source,
                     book.begun)
        book.again = True
        return book.begun + 1, "queued"

    def stop_reason(self) -> str:
        restarting = self.restart_deferred is not None or self.restart_store is not None
        return "condure is restarting" if restarting else "condure is stopping"

    def _begin_reload(self, why: str) -> None:
        st, book = self.state, self.reloads
        book.begun += 1
        book.failure = None
        log.info("%s (reload %d): replacing %d workers one by one", why, book.begun, self.n)
        self.notify.reloading()
        st.reloading = True
        st.reload_pending = list(range(self.n))

    def reload_outcome(self, number: int) -> asyncio.Future[str | None]:
        """Resolved with None once reload ``number`` is done, or with why
        it is not (it failed, condure stopped)."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        if number <= self.reloads.ended:
            future.set_result(None)  # (a reload asked for and done in one turn)
        else:
            self.reloads.waiters.append((number, future))
        return future

    def reload_failed(self, why: str) -> None:
        """(main.py) The reload under way gives up replacing workers; the
        slots not replaced keep their workers. It still ends as usual once
        the workers it did replace have handed over."""
        self.reloads.failure = why
        self.state.reload_pending.clear()

    def reload_done(self) -> None:
        """(step_reload) Every slot is replaced and the replaced workers
        have handed over: the reload is over. READY=1 for systemd; then
        the reload asked for meanwhile, if any."""
        st, book = self.state, self.reloads
        st.reloading = False
        book.ended = book.begun
        if book.failure is None:
            log.info("reloaded")
        else:
            log.warning("reload %d ended without replacing every worker: %s", book.begun,
                        book.failure)
        self.notify.ready(self.status())
        book.settle(book.ended, None if book.failure is None else f"reload failed: "
                    f"{book.failure}")
        if book.again:
            book.again = False
            self._begin_reload("reloading again, as asked for during the last reload")
            self.wake.set()

    def reloads_cut_short(self) -> None:
        """(signals.py) Stopping or restarting: the reload under way ends
        here and the one asked for meanwhile never comes."""
        book = self.reloads
        if self.state.reloading or book.again:
            book.ended = book.begun + (1 if book.again else 0)
            book.begun = book.ended
            book.again = False
        book.settle(book.begun, f"{self.stop_reason()}: the reload was cut short")
