"""The ``--pid-file`` of the supervisor, for deployments without systemd."""

from __future__ import annotations

import os


def write(path: str | None) -> None:
    if not path:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove(path: str | None) -> None:
    """Remove the pid file if it is still ours."""
    if not path:
        return
    try:
        with open(path, encoding="ascii") as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass
