"""sd_notify(3) for the supervisor.

Messages go to the datagram socket named by ``NOTIFY_SOCKET`` through
systemd-python's ``systemd.daemon.notify`` when it is installed, else the
``sdnotify`` package. Without ``NOTIFY_SOCKET`` every call is a no-op.
Only the supervisor notifies: with ``NotifyAccess=main`` systemd would
ignore the workers anyway, and they are started without the variable.

See systemd.service(5) (``Type=notify``, ``WatchdogSec=``) and
sd_notify(3) for ``READY``, ``RELOADING``, ``STOPPING``, ``STATUS``,
``WATCHDOG`` and ``MONOTONIC_USEC``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

log = logging.getLogger("condure.notify")


def _backend() -> Callable[[str], object]:
    try:
        from systemd import daemon  # type: ignore[import-not-found]
    except ImportError:
        import sdnotify

        notifier = sdnotify.SystemdNotifier()
        return notifier.notify
    return daemon.notify


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._send = _backend() if self.enabled else None
        self.last_status: str | None = None
        self.watchdog_interval = _watchdog_interval(env)

    def notify(self, text: str) -> None:
        if self._send is None:
            return
        try:
            self._send(text)
        except OSError as e:  # the manager went away: nothing to tell
            log.debug("sd_notify: %s", e)

    def ready(self, status: str | None = None) -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))
        if status:
            self.last_status = status

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload match the reload to us.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        """STATUS=text, sent only when it changed."""
        if text != self.last_status:
            self.last_status = text
            self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")


def _watchdog_interval(env) -> float | None:
    """Half of ``WATCHDOG_USEC`` (sd_watchdog_enabled(3)), when it is meant
    for this process; None otherwise."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


def status_text(ready: int, total: int, connections: int) -> str:
    return f"workers {ready}/{total}, {connections} connections"
