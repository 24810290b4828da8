"""--max-conns-per-ip across `systemctl restart` (docs/operations.md):
connections that come back from systemd's fd store count against the limit
of their address in the worker that adopts them. Real systemd in private
namespaces (tests/harness/systemd_ns.py), the project's units, one worker,
examples/handoffhandler.py, raw TCP clients from their own 127.0.0.x
addresses. The same over a reload: tests/integration/test_limits_reload.py."""

from __future__ import annotations

import re

import pytest

from tests.harness.http_client import Conn
from tests.harness.systemd_ns import unavailable_reason
from tests.integration.test_limits_reload import CLIENT, LIMIT, OTHER, refused, served
from tests.integration.test_restarts import SERVICE, _setup

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(unavailable_reason() is not None,
                       reason=f"cannot boot systemd: {unavailable_reason()}"),
]


@pytest.fixture
def one_worker(tmp_path):
    yield from _setup(tmp_path, condure_args=("--max-conns-per-ip", str(LIMIT)), workers=1)


def test_connections_back_from_the_fd_store_keep_counting(one_worker):
    setup = one_worker
    held = [Conn(setup.port, source=CLIENT) for _ in range(LIMIT)]
    try:
        for n, conn in enumerate(held):
            served(conn, f"/held-{n}")
        refused(setup.port, CLIENT)
        setup.ns.systemctl("restart", SERVICE, timeout=60)
        for n, conn in enumerate(held):  # each moved, and works
            served(conn, f"/held-{n}-after")
        refused(setup.port, CLIENT)  # still at its limit in the new process
        with Conn(setup.port, source=OTHER) as other:
            served(other, "/other")
    finally:
        for conn in held:
            conn.close()
    journal = setup.ns.journal(SERVICE)
    assert re.search(rf"restart: {LIMIT} connections adopted, 0 lost", journal), journal[-5000:]
