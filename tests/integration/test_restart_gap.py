"""Handler packets sent between a restart's bind and its workers'
subscriptions reach the moved sessions (condure/supervisor/subhold.py),
under a real systemd as in test_restarts.py.

The handler (examples/handoffhandler.py) behaves as Pushpin 1.36 does: it
ignores the handoff, publishes into the void while condure is away
(``--no-hold``) and refreshes every WebSocket with a ``keep-alive`` of its
own (``--keep-alive-every``; here every 50 ms from the moment the test
tells it to, and only while condure is subscribed to something). The
test tells it once the next process has bound the handler sockets (the
ipc file is a new one), so only the last part of the restart's gap is
measured: from the bind to the workers' subscriptions. The workers of the
next start are held 2 s before they run (a ``sitecustomize`` on the
unit's PYTHONPATH), which makes that part long enough to see every time.
(Holding worker 1 alone, as this test first did, tested little when the
listening socket gave worker 1 one session of 40.) Before, every
keep-alive in those 2 s was dropped by the handler's PUB, and the
adopting workers closed those WebSockets with 1012 (the seq gap).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.harness import procs
from tests.harness.systemd_ns import unavailable_reason
from tests.integration.test_restarts import (
    IGNORING,
    SERVICE,
    _EchoClients,
    _end_calls,
    _ends,
    _handler_log,
    _setup,
)

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(unavailable_reason() is not None,
                       reason=f"cannot boot systemd: {unavailable_reason()}"),
]

SLOW_START = 2.0  # seconds each worker of the next start waits before it runs
SITE = """\
import json, os, time
spec = os.environ.get("CONDURE_WORKER")
if spec and json.loads(spec).get("index") is not None and os.path.exists({flag!r}):
    time.sleep({delay})
"""


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` is (inode numbers may be reused at once)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


def test_handler_packets_between_the_bind_and_the_subscriptions_are_not_lost(tmp_path):
    clients = 40
    site = tmp_path / "site"
    site.mkdir()
    flag = tmp_path / "slow-start"
    (site / "sitecustomize.py").write_text(SITE.format(flag=str(flag), delay=SLOW_START))
    env = {("Service", "Environment"): [f"PYTHONPATH={site}{os.pathsep}{procs.REPO_ROOT}",
                                        "PYTHONUNBUFFERED=1"]}
    restart = None
    with contextlib.contextmanager(_setup)(
            tmp_path, env, condure_args=("--handoff", "skip"),
            handler_options=(*IGNORING, "--keep-alive-every", "0.05")) as setup:
        load = _EchoClients(setup.port, clients, 0.5)
        try:
            load.ready()
            socket_file = tmp_path / "client-in"
            before = _identity(socket_file)
            assert before is not None
            flag.touch()
            started = time.monotonic()
            restart = setup.ns.systemctl_async("restart", SERVICE)
            # The next process has bound the handler sockets (the old one
            # removed its file as it exited): the handler starts sending.
            while _identity(socket_file) in (before, None):
                assert time.monotonic() - started < 30, "the next process never bound"
                time.sleep(0.01)
            bound = time.monotonic() - started
            os.kill(setup.handler.pid, signal.SIGUSR1)
            _, errors = restart.communicate(timeout=60)
            assert restart.returncode == 0, errors
            took = time.monotonic() - started
            time.sleep(1.0)  # the load and the keep-alives after the restart
            load.finish()
        finally:
            _end_calls(restart)
            load.stop()
        journal = setup.ns.journal(SERVICE)
        handler_log = _handler_log(setup)
    ends = _ends(load)
    held = re.findall(r"restart: (\d+) handler packets that came before the workers "
                      r"subscribed were held and delivered", journal)
    print(f"\nrestart with the workers held {SLOW_START} s: bound after {bound:.2f} s, took "
          f"{took:.2f} s; handler packets held {held}; sessions {ends}")
    assert f"restart: {clients} connections adopted, 0 lost" in journal, journal[-5000:]
    assert ends == {"open": clients}, ends
    assert "missed while they moved" not in journal, journal[-5000:]
    # Every session got a keep-alive every 50 ms for 2 s: hundreds held
    # (with worker 1 alone held: 636-1251 in four runs, 80 with one session).
    assert held and int(held[0]) >= 100, journal[-5000:]
    assert "from condure, expected" not in handler_log, handler_log[-3000:]
