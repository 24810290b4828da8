"""Start and stop real condure and handler processes for tests.

``start_condure("reference" | "ours", tmp_path, ...)`` runs Debian's
/usr/bin/condure or this repository's ``python -m condure`` with a free
loopback port and an ipc base under ``tmp_path``, and returns once it is
ready:

- ours: it sends ``READY=1`` to the datagram socket named by
  ``NOTIFY_SOCKET``, which the harness creates in ``tmp_path``;
- reference: it prints a line ending in ``started`` on stdout.

Output (stdout and stderr merged) is copied to ``tmp_path/<name>.log``.
``stop()`` sends SIGTERM, waits, kills after a timeout and returns the exit
status. Use the pytest fixtures in ``tests/conftest.py`` so every process is
stopped by a finalizer.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
OURS_ROOT = REPO_ROOT  # where ``python -m condure`` is run from
REFERENCE_BIN = "/usr/bin/condure"
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class StartupError(RuntimeError):
    """The process exited or did not become ready in time."""


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses now, chosen outside the
    kernel's ephemeral range: a port from that range (what binding port 0
    gives) can be taken by any client connection made before the test
    binds it, which made tests fail now and then with "address in use".
    A port is handed out once per test process."""
    low, high = _ephemeral_range()
    below = (10000, low - 1) if low - 1 - 10000 >= 1000 else (high + 1, 65535)
    for _ in range(500):
        port = random.randint(*below)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminate(popen: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM a helper process (a handler, say), SIGKILL if it has not
    ended within ``timeout``; reaps it either way."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()


def python_env(root: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(root or REPO_ROOT) + (os.pathsep + old if old else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class OutputPump:
    """Copies a child's stdout to a log file and watches for a line."""

    def __init__(self, stream, log_path: Path, marker: str | None) -> None:
        self.log_path = log_path
        self.marker = marker
        self.seen = threading.Event()
        self.done = threading.Event()
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream) -> None:
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace")
                log.write(line)
                log.flush()
                self.lines.append(line.rstrip("\n"))
                if self.marker and line.rstrip().endswith(self.marker):
                    self.seen.set()
        stream.close()
        self.done.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])


@dataclass
class Proc:
    """A child process with its output pump."""

    name: str
    popen: subprocess.Popen
    pump: OutputPump
    returncode: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal, wait (kill after ``timeout``) and return the exit status."""
        if self.returncode is not None:
            return self.returncode
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self.pump.join(timeout)
        for stream in (self.popen.stdin,):
            if stream is not None and not stream.closed:
                stream.close()
        self.returncode = self.popen.returncode
        return self.returncode

    def output(self) -> str:
        return "\n".join(self.pump.lines)


@dataclass
class CondureProcess(Proc):
    impl: str = "reference"
    port: int = 0
    ports: list[int] = field(default_factory=list)
    base: str = ""
    instance_id: str = "condure"
    args: list[str] = field(default_factory=list)


def _spawn(name: str, cmd: list[str], log_path: Path, marker: str | None, env=None,
           stdin=subprocess.DEVNULL, cwd=None) -> Proc:
    popen = subprocess.Popen(
        cmd,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    pump = OutputPump(popen.stdout, log_path, marker)
    return Proc(name, popen, pump)


def _wait_notify(sock: socket.socket, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        # wake up regularly to notice a child that died before notifying
        sock.settimeout(min(remaining, 0.2))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            if not proc.alive():
                raise StartupError("exited") from None
            continue
        if b"READY=1" in data.split(b"\n"):
            return


def start_condure(impl: str, tmp_path: Path, extra_args=(), listen: list[str] | None = None,
                  instance_id: str = "condure", workers: int | None = None,
                  name: str = "condure", timeout: float = READY_TIMEOUT) -> CondureProcess:
    """Start condure and wait for readiness.

    ``listen``: list of ``--listen`` values; ``{port}``, ``{port1}``... in them
    are replaced by free ports. Default: one stream listener on a free port.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    base = f"ipc://{tmp_path}/client"
    specs = listen if listen is not None else ["127.0.0.1:{port}"]
    ports: list[int] = []
    listen_args: list[str] = []
    for spec in specs:
        subst = {}
        for key in ("port", "port1", "port2", "port3"):
            if "{" + key + "}" in spec:
                p = free_port()
                ports.append(p)
                subst[key] = p
        listen_args += ["--listen", spec.format(**subst)]
    args = [*listen_args, "--zclient-stream", base, "--id", instance_id]
    if workers is not None:
        args += ["--workers", str(workers)]
    args += list(extra_args)
    log_path = tmp_path / f"{name}.log"
    notify = None
    if impl == "reference":
        if not os.path.exists(REFERENCE_BIN):
            raise StartupError(f"{REFERENCE_BIN} is not installed")
        proc = _spawn(name, [REFERENCE_BIN, *args], log_path, "started")
    elif impl == "ours":
        if not any(a.startswith("--drain-timeout") for a in args):
            # A test's last request may be left unanswered on purpose: the
            # graceful stop should not wait the default 30 s for it.
            args += ["--drain-timeout", "2"]
        notify_path = tmp_path / f"{name}.notify"
        if notify_path.exists():
            notify_path.unlink()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        env = python_env(OURS_ROOT)
        env["NOTIFY_SOCKET"] = str(notify_path)
        proc = _spawn(name, [sys.executable, "-m", "condure", *args], log_path, None,
                      env=env, cwd=str(OURS_ROOT))
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    cp = CondureProcess(proc.name, proc.popen, proc.pump, impl=impl,
                        port=ports[0] if ports else 0, ports=ports, base=base,
                        instance_id=instance_id, args=args)
    try:
        if notify is not None:
            _wait_notify(notify, cp, timeout)
        elif not cp.pump.seen.wait(timeout):
            raise TimeoutError
    except (TimeoutError, StartupError) as e:
        status = cp.stop(timeout=3)
        what = "exited" if isinstance(e, StartupError) else f"not ready after {timeout}s"
        raise StartupError(
            f"{impl} condure {what} (status {status}); command: {' '.join(cp.popen.args)}\n"
            f"--- output ---\n{cp.pump.tail()}"
        ) from None
    finally:
        if notify is not None:
            notify.close()
    return cp


def start_handler(base: str, tmp_path: Path, identity: str = "handler1", bind: bool = False,
                  pull: bool = True, sub_prefix: str = "condure", name: str | None = None,
                  timeout: float = READY_TIMEOUT, wait: bool = True):
    """Start ``tests/handlers/scripted_handler.py``; return a HandlerClient.

    With ``bind=True`` the handler is ready only once condure has connected:
    pass ``wait=False``, start condure with ``--zclient-connect``, then call
    ``handler.wait_ready()``.
    """
    from tests.harness.handler_client import HandlerClient

    cmd = [sys.executable, "-m", "tests.handlers.scripted_handler", "--base", base,
           "--identity", identity, "--sub-prefix", sub_prefix,
           "--ready-timeout", str(timeout)]
    if bind:
        cmd.append("--bind")
    if not pull:
        cmd.append("--no-pull")
    name = name or f"handler-{identity}"
    stderr_path = tmp_path / f"{name}.stderr"
    with open(stderr_path, "wb") as errf:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errf,
            env=python_env(),
            cwd=str(REPO_ROOT),
            start_new_session=True,
        )
    return HandlerClient(name, popen, stderr_path, identity, sub_prefix,
                         timeout=timeout, wait=wait)
