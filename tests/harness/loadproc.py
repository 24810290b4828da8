"""tests/harness/wsload.py run from a test, in its own process group.

    load = LoadProcess(tmp_path / "load.json", port, clients=100, http_loops=2)
    load.ready()              # its READY line
    ...
    result = load.finish()    # SIGTERM, then the JSON result
    load.kill()               # always (a finalizer): it and its client processes
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

from tests.harness import procs


class LoadProcess:
    def __init__(self, result: Path, port: int, clients: int, http_loops: int = 0,
                 extra: list[str] | tuple[str, ...] = ()) -> None:
        self.result = result
        cmd = [sys.executable, "-m", "tests.harness.wsload", "--port", str(port),
               "--clients", str(clients), "--http-loops", str(http_loops),
               "--result", str(result), *extra]
        # Its own process group: its client processes go with it (kill).
        self.proc = subprocess.Popen(cmd, cwd=str(procs.REPO_ROOT), env=procs.python_env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)

    def ready(self, timeout: float = 60.0) -> None:
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if readable else ""
        assert line.strip() == "READY", (line, self.proc.poll())

    def finish(self, timeout: float = 90.0) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        assert self.proc.returncode == 0, self.proc.stderr.read()
        return json.loads(self.result.read_text())

    def kill(self) -> None:
        """Kill it with its client processes, unless it has finished (which
        it does after its clients)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
