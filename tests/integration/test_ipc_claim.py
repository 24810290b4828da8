"""A second condure on the same ipc base refuses to start instead of taking
the live one's socket files; files left by a killed condure are reused
(condure/net/ipcclaim.py)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time

from tests.harness import procs
from tests.harness.flows import serve_one

SUFFIXES = ("-out", "-out-stream", "-in")
REFUSAL_TIMEOUT = 15.0


def inodes(directory) -> dict[str, int]:
    return {s: os.lstat(directory / f"client{s}").st_ino for s in SUFFIXES}


def start_second(directory, base: str) -> tuple[int | None, str, float]:
    """Run a condure on ``base`` and wait for it to exit; (status or None if
    it was still running after REFUSAL_TIMEOUT, its output, seconds)."""
    port = procs.free_port()
    cmd = [sys.executable, "-m", "condure", "--listen", f"127.0.0.1:{port}",
           "--zclient-stream", base, "--workers", "1", "--drain-timeout", "1"]
    started = time.monotonic()
    popen = subprocess.Popen(cmd, cwd=str(procs.REPO_ROOT), env=procs.python_env(),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = popen.communicate(timeout=REFUSAL_TIMEOUT)
        return popen.returncode, out.decode(errors="replace"), time.monotonic() - started
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGINT)
        try:
            out, _ = popen.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            out, _ = popen.communicate()
        return None, out.decode(errors="replace"), time.monotonic() - started


def wait_for_line(condure: procs.CondureProcess, text: str, timeout: float = 5.0) -> bool:
    """Whether a line containing ``text`` shows in the output; it was
    written before readiness, so only the output pump may lag."""
    deadline = time.monotonic() + timeout
    while not any(text in line for line in condure.pump.lines):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_group(condure: procs.CondureProcess) -> None:
    """SIGKILL the supervisor and its workers: nothing gets to clean up."""
    try:
        os.killpg(condure.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    condure.popen.wait(10)
    condure.stop()  # collects the output pump; the process is gone


def test_second_condure_refuses_a_live_base_and_reuses_a_dead_ones(tmp_path, make_handler):
    first = procs.start_condure("ours", tmp_path, workers=1, name="first")
    third = None
    try:
        before = inodes(tmp_path)
        status, output, elapsed = start_second(tmp_path, first.base)
        assert status == 1, f"second condure: status {status} after {elapsed:.1f}s\n{output}"
        out_path = f"{tmp_path}/client-out"
        errors = [line for line in output.splitlines() if line.startswith("[ERR]")]
        assert errors, output
        assert out_path in errors[0] and f"--zclient-stream {first.base}" in errors[0], errors
        assert "another process is listening" in errors[0], errors
        # Refused before anything was taken: no listener, no bind.
        assert [line.split("] ", 2)[2] for line in output.splitlines()
                if not line.startswith("[ERR]")] == ["starting..."], output
        assert inodes(tmp_path) == before

        # The first still owns its endpoints: a handler started now reaches it.
        handler = make_handler(first)
        serve_one(first, handler, "/after-refusal")

        # Killed, the first leaves its socket files behind; nobody listens.
        kill_group(first)
        for suffix in SUFFIXES:
            path = tmp_path / f"client{suffix}"
            assert stat.S_ISSOCK(os.lstat(path).st_mode), path
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                assert probe.connect_ex(str(path)) != 0
        handler.close()

        third = procs.start_condure("ours", tmp_path, workers=1, name="third",
                                    extra_args=["--log-level", "3"])
        assert wait_for_line(third, f"removed stale socket file {out_path}"), third.output()
        serve_one(third, make_handler(third, identity="handler2"), "/after-restart")
        assert third.stop() == 0
        # A clean stop removes the socket files, as Condure does.
        assert not any((tmp_path / f"client{s}").exists() for s in SUFFIXES)
    finally:
        first.stop()
        if third is not None:
            third.stop()
