"""sd_notify(3): the one way condure talks to systemd's notify socket.

:class:`NotifySocket` sends one datagram, optionally with descriptors
(``SCM_RIGHTS``), to the socket named by ``NOTIFY_SOCKET`` (a path, or an
abstract name when it starts with ``@``). :class:`Notifier` speaks the
service states with it and :class:`condure.supervisor.fdstore.FdStore`
the fd store; both go through :meth:`NotifySocket.send`. Without
``NOTIFY_SOCKET`` nothing is sent. Only the supervisor notifies: with
``NotifyAccess=main`` systemd would ignore the workers anyway, and they
are started without the variable.

See systemd.service(5) (``Type=notify``, ``WatchdogSec=``) and
sd_notify(3) for ``READY``, ``RELOADING``, ``STOPPING``, ``STATUS``,
``WATCHDOG``, ``MONOTONIC_USEC``, ``FDSTORE`` and ``BARRIER``.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence

log = logging.getLogger("condure.notify")


class NotifySocket:
    """The service manager's notify socket, from ``NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        target = env.get("NOTIFY_SOCKET") or ""
        self.enabled = bool(target)
        self.address = "\0" + target[1:] if target.startswith("@") else target

    def send(self, text: str, fds: Sequence[int] = ()) -> None:
        """One message (``KEY=value`` lines) with ``fds``; OSError when it
        cannot be sent (ENOTCONN without ``NOTIFY_SOCKET``)."""
        if not self.enabled:
            raise OSError(errno.ENOTCONN, "NOTIFY_SOCKET is not set")
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendmsg([text.encode()], ancillary, 0, self.address)


class Notifier:
    """The service's state for systemd; every call is a no-op without
    ``NOTIFY_SOCKET``, and a manager that went away is only logged."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket = NotifySocket(env)
        self.enabled = self.socket.enabled
        self.last_status: str | None = None
        self.watchdog_interval = _watchdog_interval(env)

    def notify(self, text: str) -> None:
        if not self.enabled:
            return
        try:
            self.socket.send(text)
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


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
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
