"""Stop signals that come before the supervisor's loop can handle them.

systemd may send SIGTERM to a new condure at any moment, also while it is
still starting: a ``systemctl stop`` that catches a restart's start (the
new process holds every connection of the previous one, from the fd
store). Python's default action for SIGTERM ends the process at once, which
would drop those connections without a close frame and without a word in
the log. :func:`install`, called first thing by the command line, replaces
the default action of the stop and reload signals by a handler that only
records them; the loop that takes over the signals (the supervisor's, or
an inetd-style worker's) calls :func:`take` once its own handlers are in
place and acts on what came meanwhile.

What remains is the interpreter's own start-up, before ``condure.cli``
runs: a SIGTERM then still ends the process (docs/restarts.md).
"""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
_pending: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)


def install() -> None:
    """Record the stop and reload signals from now on (see above)."""
    for sig in SIGNALS:
        signal.signal(sig, _record)


def take() -> list[int]:
    """The signals recorded so far, in order; from now on, a signal whose
    handler is still the recording one gets its default action again."""
    for sig in SIGNALS:
        if signal.getsignal(sig) is _record:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)
    taken = list(_pending)
    _pending.clear()
    return taken
