"""The supervisor's record of its worker processes.

A :class:`Child` is one worker process and the supervisor's end of its
control channel; :class:`State` holds every child by role (the slot's
current worker, a reload's successor, retiring workers) and the respawn
bookkeeping. Shared by the supervisor's loop (``main.py``), its signal
handling (``signals.py``) and its part in moving connections
(``moves.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from condure.net.control import Outbox

log = logging.getLogger("condure")


def worker_address(base: str, n: int, slot: int) -> str:
    """The ZHTTP address (``from``, SUB prefix) of slot ``slot``'s worker
    of ``n``: ``--id`` with one worker, ``<id>.<slot>`` with several. The
    same across restarts, so that a slot's moved sessions keep theirs."""
    return base if n == 1 else f"{base}.{slot}"


@dataclass(eq=False)
class Child:
    slot: int
    generation: int
    popen: subprocess.Popen[bytes]
    ctl: socket.socket  # the supervisor's end
    outbox: Outbox  # messages to it that wait for room (condure.net.control)
    started: float
    ready_at: float | None = None
    connections: int = 0
    requests: int = 0
    stop_deadline: float | None = None
    graceful: bool = True
    handover_to: Child | None = None  # a reload's successor, taking the sessions
    hold_until: float = 0.0  # its exported sessions wait for an adopting worker until then
    exported: int = 0  # sessions it exported since its last stats message
    gone: bool = False  # it exited (its control channel is closed)
    heard_at: float = 0.0  # its last message (stats come every second)
    excused_until: float = 0.0  # the supervisor was not watching before this (excuse_stall)
    hung_since: float | None = None  # found silent: asked for its stacks, then killed
    # For condure ctl status (supervisor/ctl.py): its last stats message, a
    # reload's handover under way, that handover's outcome.
    stats: dict[str, Any] = field(default_factory=dict)
    handing_over: bool = False
    handed_over: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def ready(self) -> bool:
        return self.ready_at is not None

    @property
    def last_heard(self) -> float:
        """When it last said something (its readiness counts), or when
        the supervisor came back from a stall, if that is later."""
        return max(self.heard_at, self.ready_at or 0.0, self.excused_until)


@dataclass
class State:
    slots: list[Child | None]
    successors: dict[int, Child] = field(default_factory=dict)
    retiring: list[Child] = field(default_factory=list)
    respawn_at: dict[int, float] = field(default_factory=dict)
    crashes: dict[int, int] = field(default_factory=dict)
    respawns: dict[int, int] = field(default_factory=dict)  # per slot, since the start
    reload_pending: list[int] = field(default_factory=list)
    reloading: bool = False

    def children(self) -> list[Child]:
        """Every worker process there is, in every role."""
        return ([c for c in self.slots if c is not None] + list(self.successors.values())
                + self.retiring)


# Signals a starting worker must not die of: its own handlers (ignoring
# both) come only once Python has started and imported condure, and a
# `systemctl kill -s HUP`, a `kill -HUP` of the process group or a
# terminal's Ctrl-C in that moment would end it. They are blocked in the
# supervisor's thread while it forks, so the new process starts with them
# blocked (a blocked mask survives exec) until workerproc ignores them.
WORKER_START_BLOCKED = frozenset({signal.SIGHUP, signal.SIGINT})


def start_worker(args: list[str], env: dict[str, str],
                 fds: list[int]) -> subprocess.Popen[bytes]:
    """The worker process, started with WORKER_START_BLOCKED blocked."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_START_BLOCKED)
    try:
        return subprocess.Popen(args, env=env, pass_fds=fds, close_fds=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def describe_exit(status: int) -> str:
    """``status 1`` or ``signal SIGKILL`` for a Popen return code."""
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


HUNG_KILL_GRACE = 1.0  # a hung worker's time to write its stacks before SIGKILL
STALL = 2.0  # the supervisor's maintenance (every 0.5 s) this late: it was not running


def excuse_stall(workers: Iterable[Child], gap: float, now: float) -> None:
    """The supervisor itself had no turn for ``gap`` seconds (the machine
    or its VM paused, or was overloaded): it could not hear the workers
    then, and they were likely starved as well. That time is not held
    against them: each gets a whole --worker-timeout from ``now``, and a
    worker still starting gets ``gap`` more to become ready."""
    for child in workers:
        child.excused_until = now
        if not child.ready:
            child.started += gap


def check_answering(child: Child, limit: float, now: float) -> None:
    """A worker silent for ``limit`` seconds (--worker-timeout; 0: no
    check) is hung: SIGABRT makes it write its Python stacks to the log
    (faulthandler) and end; SIGKILL follows if it has not ended a moment
    later. The exit respawns it."""
    if not limit:
        return
    heard = child.last_heard
    if child.hung_since is None:
        if now - heard < limit:
            return
        child.hung_since = now
        log.warning("worker %d (pid %d) has not answered for %.0fs; its stacks follow, "
                    "then it is replaced", child.slot, child.pid, now - heard)
        for sig in (signal.SIGABRT, signal.SIGCONT):  # SIGCONT: in case it was stopped
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, sig)
    elif now - child.hung_since >= HUNG_KILL_GRACE and child.popen.poll() is None:
        child.popen.kill()


def all_answering(workers: Iterable[Child], limit: float, now: float) -> bool:
    """Every ready worker was heard from within ``limit`` (the systemd
    watchdog is pinged only then)."""
    return not limit or all(now - c.last_heard < limit
                            for c in workers if c.ready and c.stop_deadline is None)
