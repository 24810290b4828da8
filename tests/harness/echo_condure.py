"""Our condure with examples/handoffhandler.py (a WebSocket and HTTP echo)
behind it, for tests that only need something to answer."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.harness import procs
from tests.harness.http_client import connect, request

HANDLER = procs.REPO_ROOT / "examples" / "handoffhandler.py"


@contextlib.contextmanager
def running(workdir: Path, extra_args: list[str] | None = None) -> Iterator[procs.CondureProcess]:
    """condure (``extra_args`` added) and the echo handler, yielded once the
    handler has answered a first request; at the end condure must still be
    alive and must not have logged a traceback."""
    condure = procs.start_condure("ours", workdir / "condure", extra_args=extra_args or [])
    try:
        with open(workdir / "handler.stderr", "wb") as log:
            handler = subprocess.Popen(
                [sys.executable, str(HANDLER), "--base", condure.base],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                env=procs.python_env())
        try:
            with connect(condure.port, timeout=15) as c:  # waits for the handler
                c.send(request("GET", "/ready"))
                resp = c.read_response()
                assert resp.code == 200 and resp.body == b"ok /ready\n", resp
            yield condure
            out = condure.output()
            assert condure.alive() and "Traceback" not in out, out[-3000:]
        finally:
            procs.terminate(handler)
    finally:
        condure.stop()
