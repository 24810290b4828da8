"""The supervisor's record of its worker processes.

A :class:`Child` is one worker process and the supervisor's end of its
control channel; :class:`State` holds every child by role (the slot's
current worker, a reload's successor, retiring workers) and the respawn
bookkeeping. Shared by the supervisor's loop (``main.py``), its signal
handling (``signals.py``) and its part in moving connections
(``moves.py``).
"""

from __future__ import annotations

import signal
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Any

from condure.net.control import Outbox


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
    heard_at: float = 0.0  # its last message (stats come every second)
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
        """When it last said something (its readiness counts)."""
        return max(self.heard_at, self.ready_at or 0.0)


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


def describe_exit(status: int) -> str:
    """``status 1`` or ``signal SIGKILL`` for a Popen return code."""
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"
