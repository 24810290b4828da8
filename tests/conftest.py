"""Shared fixtures: every process or socket a test opens is closed here."""

from __future__ import annotations

import gc
import os
import sys
import warnings

import pytest

from tests.harness import http_client, procs


def reference_available() -> bool:
    return os.access(procs.REFERENCE_BIN, os.X_OK)


@pytest.fixture
def make_condure(tmp_path):
    """``make_condure(impl, **kw)`` -> CondureProcess, stopped at teardown.

    Each call gets its own directory under ``tmp_path`` (ipc base, logs).
    """
    started: list[procs.CondureProcess] = []

    def factory(impl: str, **kw) -> procs.CondureProcess:
        if impl == "reference" and not reference_available():
            pytest.skip(f"{procs.REFERENCE_BIN} is not installed")
        workdir = tmp_path / f"condure{len(started)}"
        proc = procs.start_condure(impl, workdir, **kw)
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop()


@pytest.fixture
def make_handler(tmp_path):
    """``make_handler(condure_or_base, identity="handler1", **kw)`` -> HandlerClient.

    Pass a running CondureProcess, or an ipc base string (e.g. with
    ``bind=True, wait=False`` before starting condure with --zclient-connect).
    """
    started = []

    def factory(condure, identity: str = "handler1", **kw):
        if isinstance(condure, procs.CondureProcess):
            kw.setdefault("sub_prefix", condure.instance_id)
            base = condure.base
        else:
            base = condure
        h = procs.start_handler(base, tmp_path, identity=identity,
                                name=f"handler{len(started)}-{identity}", **kw)
        started.append(h)
        return h

    yield factory
    for h in started:
        h.close()


@pytest.fixture
def make_conn():
    """``make_conn(port)`` -> http_client.Conn, closed at teardown."""
    conns: list[http_client.Conn] = []

    def factory(port: int, timeout: float = http_client.DEFAULT_TIMEOUT) -> http_client.Conn:
        conn = http_client.connect(port, timeout=timeout)
        conns.append(conn)
        return conn

    yield factory
    for conn in conns:
        conn.close()


def collect_earlier_garbage() -> None:
    """Collect what earlier tests left for the garbage collector (sockets in
    reference cycles, say) before a test that runs a collection itself
    (``condure --sizes`` does), so that their ResourceWarnings are not
    reported against that test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
def earlier_garbage() -> None:
    collect_earlier_garbage()


@pytest.fixture(autouse=True)
def nothing_unclosed_left_to_gc(request):
    """After each integration test (and all its other fixtures): collect
    what it left in reference cycles and fail it if that held something
    unclosed (a socket, a file, a transport), so that the leak is reported
    against this test rather than against whichever later test runs the
    collector. A failed test's frames count too: pytest keeps its exception
    in ``sys.last_*`` (until the next test runs), so it is let go first.

    Objects older than the test are frozen meanwhile: the collection then
    looks at the test's own objects only, which keeps it cheap however big
    the session's heap (older garbage is left to the collector as usual)."""
    if "integration" not in request.node.path.parts:
        yield
        return
    gc.freeze()
    try:
        yield
        for name in ("last_type", "last_value", "last_traceback", "last_exc"):
            if hasattr(sys, name):
                delattr(sys, name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            gc.collect()
    finally:
        gc.unfreeze()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    if unclosed:
        pytest.fail("left unclosed to the garbage collector:\n" + "\n".join(unclosed),
                    pytrace=False)
