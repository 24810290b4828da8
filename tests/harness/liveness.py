"""A running condure seen from outside (Linux /proc): its worker processes
and their open descriptors, and a handler process of any scripted kind.

Used by the tests that break sessions on purpose or feed them arbitrary
packets: the worker must be the same process afterwards, and once every
connection is gone it must hold exactly the descriptors it held before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import procs
from tests.harness.handler_client import HandlerClient


def worker_pids(supervisor_pid: int) -> list[int]:
    """The supervisor's children (its workers), oldest first."""
    path = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children")
    return sorted(int(p) for p in path.read_text().split())


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settle_fd_count(pid: int, expected: int, timeout: float = 5.0) -> int:
    """Wait (polling) for ``pid`` to hold ``expected`` descriptors; the
    count last seen. Closing is asynchronous: a client's FIN reaches the
    worker a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        count = fd_count(pid)
        if count == expected or time.monotonic() >= deadline:
            return count
        time.sleep(0.02)


def start_handler(module: str, base: str, tmp_path: Path, *, identity: str = "handler1",
                  sub_prefix: str = "condure", name: str = "handler",
                  timeout: float = procs.READY_TIMEOUT) -> HandlerClient:
    """Start ``python -m module`` with the scripted handler's arguments
    (``tests.handlers.burst_handler``, say); ready once it says so."""
    cmd = [sys.executable, "-m", module, "--base", base, "--identity", identity,
           "--sub-prefix", sub_prefix, "--ready-timeout", str(timeout)]
    stderr_path = tmp_path / f"{name}.stderr"
    with open(stderr_path, "wb") as errf:
        popen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=errf, env=procs.python_env(), cwd=str(procs.REPO_ROOT),
                                 start_new_session=True)
    return HandlerClient(name, popen, stderr_path, identity, sub_prefix, timeout=timeout)
