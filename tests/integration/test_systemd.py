"""condure under a real systemd, booted in private namespaces.

The project's own ``systemd/condure.socket`` and ``systemd/condure.service``
are used, adapted only where the test must: the port (loopback), the
command line (this checkout's ``python -m condure``, ipc endpoints in the
test's directory) and ``DefaultDependencies=no``. See
``tests/harness/systemd_ns.py`` for how systemd is booted safely.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness import procs
from tests.harness.systemd_ns import (
    SystemdNamespace,
    project_units,
    unavailable_reason,
)

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(unavailable_reason() is not None,
                       reason=f"cannot boot systemd: {unavailable_reason()}"),
]

REPO = procs.REPO_ROOT
WORKERS = 2
SERVICE = "condure.service"
SOCKET = "condure.socket"
TIMEOUT = 20.0


def wait_for(predicate, timeout: float = TIMEOUT, what: str = "condition"):
    """Poll ``predicate`` (a state systemd or the kernel holds, for which
    there is no notification to wait on) until it returns a true value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- a trivial notify service: proves the namespace boot itself -----------

NOTIFY_SCRIPT = """\
import os, signal, socket
addr = os.environ["NOTIFY_SOCKET"]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect("\\0" + addr[1:] if addr.startswith("@") else addr)
print("fds", os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_FDNAMES"), flush=True)
s.send(b"READY=1\\nSTATUS=serving")
signal.sigwait([signal.SIGTERM])
"""


def test_namespace_boots_a_notify_service(tmp_path):
    port = procs.free_port()
    (tmp_path / "notify.py").write_text(NOTIFY_SCRIPT)
    units = {
        "demo.socket": "[Unit]\nDefaultDependencies=no\n[Socket]\n"
                       f"ListenStream=127.0.0.1:{port}\nFileDescriptorName=web\n",
        "demo.service": "[Unit]\nDefaultDependencies=no\n[Service]\nType=notify\n"
                        f"NotifyAccess=main\nExecStart={sys.executable} {tmp_path}/notify.py\n",
    }
    ns = SystemdNamespace(tmp_path, units)
    with ns:
        ns.systemctl("start", "demo.socket")
        assert ns.show("demo.service", "ActiveState") == "inactive"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            ns.systemctl("start", "demo.service")  # joins the job; returns on READY=1
            assert ns.show("demo.service", "ActiveState") == "active"
            assert ns.show("demo.service", "StatusText") == "serving"
            assert "fds 1 web" in ns.journal("demo.service")
            assert ns.run("findmnt", "-n", "-o", "FSTYPE", "/tmp").stdout.strip() == "tmpfs"
        # The socket too: the connection it queued would start the service again.
        ns.systemctl("stop", "demo.socket", "demo.service")
        assert ns.show("demo.service", "ActiveState") == "inactive"
        assert ns.cgroup_pids("demo.service") == []
    assert not ns.cgroup.exists()


# -- condure.socket + condure.service ---------------------------------------

class CondureUnit:
    def __init__(self, ns: SystemdNamespace, port: int, workdir: Path) -> None:
        self.ns = ns
        self.port = port
        self.workdir = workdir

    def main_pid(self) -> int | None:
        return self.ns.main_pid(SERVICE)

    def workers(self) -> set[int]:
        """Host pids of the service's processes other than the supervisor."""
        main = self.main_pid()
        return {p for p in self.ns.cgroup_pids(SERVICE) if p != main}

    def state(self) -> str:
        return self.ns.show(SERVICE, "ActiveState")


def build_units(workdir: Path, port: int, settings: dict | None = None) -> dict[str, str]:
    """The project's units for req mode on ``port``; ``settings``: more
    unit settings, as for ``project_units``."""
    args = ["--workers", str(WORKERS),
            "--listen", f"127.0.0.1:{port},req,fd-name=http",
            "--zclient-req", f"ipc://{workdir}/client",
            "--drain-timeout", "5"]
    return project_units(workdir, port, args,
                         {("Service", "TimeoutStopSec"): ["15"], **(settings or {})})


def start_reqhandler(workdir: Path) -> subprocess.Popen:
    """examples/reqhandler.py answers every request; it connects to
    ipc://client in its working directory, where condure binds it."""
    with open(workdir / "handler.stderr", "wb") as err:
        return subprocess.Popen(
            [sys.executable, str(REPO / "examples" / "reqhandler.py")], cwd=workdir,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            env=procs.python_env())


@contextlib.contextmanager
def booted_unit(workdir: Path, settings: dict | None = None):
    """systemd booted with the units, the req handler running and the socket
    unit started (the service is not); everything stopped on the way out."""
    port = procs.free_port()
    ns = SystemdNamespace(workdir, build_units(workdir, port, settings))
    handler = None
    try:
        ns.start()
        handler = start_reqhandler(workdir)
        ns.systemctl("start", SOCKET)
        yield CondureUnit(ns, port, workdir)
    except BaseException:
        print(ns.journal(SERVICE)[-6000:])
        raise
    finally:
        if handler is not None:
            handler.kill()
            handler.wait()
        ns.stop()


@pytest.fixture
def condure_unit(tmp_path):
    with booted_unit(tmp_path) as unit:
        yield unit


def get(port: int, conn: socket.socket | None = None, timeout: float = 5.0) -> bytes:
    """One GET; returns the response head and body (req mode: Content-Length)."""
    own = conn is None
    s = conn or socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.settimeout(timeout)
        s.sendall(b"GET / HTTP/1.1\r\nHost: example.com\r\n" +
                  (b"Connection: close\r\n" if own else b"") + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"hello world\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        if own:
            s.close()


def ok(response: bytes) -> bool:
    return response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"hello world\n")


def test_first_connection_activates_and_ready_follows_workers(condure_unit):
    u = condure_unit
    assert u.ns.show(SOCKET, "ActiveState") == "active"
    assert u.state() == "inactive"
    with socket.create_connection(("127.0.0.1", u.port), timeout=5) as conn:
        u.ns.systemctl("start", SERVICE)  # joins the activation job: returns on READY=1
        assert u.state() == "active"
        # READY=1 only once every worker is up and said ready.
        assert len(u.workers()) == WORKERS
        assert ok(get(u.port, conn))
    status = u.ns.systemctl("status", SERVICE, check=False).stdout
    assert "Status: \"" in status, status
    text = u.ns.show(SERVICE, "StatusText")
    assert "worker" in text.lower() and "connection" in text.lower(), text


def test_reload_under_load_fails_no_request(condure_unit):
    u = condure_unit
    assert ok(get(u.port))
    u.ns.systemctl("start", SERVICE)
    main, old = u.main_pid(), u.workers()
    assert len(old) == WORKERS
    results: list[bool] = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                results.append(ok(get(u.port)))
            except OSError:
                results.append(False)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(results) >= 20, what="requests before the reload")
        u.ns.systemctl("reload", SERVICE)
        wait_for(lambda: not (u.workers() & old) and len(u.workers()) == WORKERS
                 and u.state() == "active", what="every worker replaced")
        done = len(results)
        wait_for(lambda: len(results) >= done + 20, what="requests after the reload")
    finally:
        stop.set()
        t.join(10)
    assert u.main_pid() == main
    assert results.count(False) == 0, f"{results.count(False)} of {len(results)} failed"


def _client_ports_of(pid: int) -> set[int]:
    """Remote (client) ports of the TCP connections held by process ``pid``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes and fields[3] == "01":  # ESTABLISHED
            ports.add(int(fields[2].split(":")[1], 16))
    return ports


def test_killed_worker_is_respawned_others_keep_serving(condure_unit):
    u = condure_unit
    assert ok(get(u.port))
    u.ns.systemctl("start", SERVICE)
    main = u.main_pid()
    conns: dict[int, socket.socket] = {}
    try:
        by_worker: dict[int, set[int]] = {}
        for _ in range(40):
            c = socket.create_connection(("127.0.0.1", u.port), timeout=5)
            conns[c.getsockname()[1]] = c
            assert ok(get(u.port, c))
            by_worker = {w: _client_ports_of(w) & set(conns) for w in u.workers()}
            if len(by_worker) == WORKERS and all(by_worker.values()):
                break
        assert all(by_worker.values()), f"connections did not spread: {by_worker}"
        victim, survivor = sorted(by_worker, key=lambda w: len(by_worker[w]))[:2]
        subprocess.run(["kill", "-KILL", str(victim)], check=True)
        for port in by_worker[survivor]:
            assert ok(get(u.port, conns[port])), "a connection of the other worker broke"
        wait_for(lambda: victim not in u.workers() and len(u.workers()) == WORKERS,
                 what="the killed worker respawned")
        assert u.main_pid() == main and u.state() == "active"
        for port in by_worker[survivor]:
            assert ok(get(u.port, conns[port]))
        assert ok(get(u.port))
    finally:
        for c in conns.values():
            c.close()


def test_stop_is_clean(condure_unit):
    u = condure_unit
    assert ok(get(u.port))
    u.ns.systemctl("start", SERVICE)
    started = time.monotonic()
    u.ns.systemctl("stop", SERVICE, SOCKET)
    assert time.monotonic() - started < 10
    assert u.state() == "inactive"
    assert u.ns.show(SERVICE, "Result") == "success"
    assert u.ns.show(SERVICE, "ExecMainStatus") == "0"
    assert u.ns.cgroup_pids(SERVICE) == []
    assert "Traceback" not in u.ns.journal(SERVICE)


def test_watchdog_pings_and_a_hung_supervisor_is_restarted(tmp_path):
    """With ``WatchdogSec=`` the supervisor pings systemd while its workers
    are up; when the supervisor hangs (SIGSTOP here) the pings stop, systemd
    declares a watchdog timeout, kills the service and starts it again."""
    settings = {("Service", "WatchdogSec"): ["2"], ("Service", "TimeoutAbortSec"): ["5"]}
    with booted_unit(tmp_path, settings) as u:
        ns, port = u.ns, u.port
        ns.systemctl("start", SERVICE)  # returns on READY=1

        def last_ping() -> int:
            return int(ns.show(SERVICE, "WatchdogTimestampMonotonic") or 0)

        # Pings keep coming: the timestamp of the last one moves on, twice,
        # for longer than one WatchdogSec, and systemd never steps in.
        first = wait_for(last_ping, what="a first watchdog ping")
        second = wait_for(lambda: last_ping() > first and last_ping(), what="a second ping")
        wait_for(lambda: last_ping() > second + 2_000_000, timeout=10,
                 what="pings for more than WatchdogSec")
        assert ns.show(SERVICE, "NRestarts") == "0"
        hung = ns.main_pid(SERVICE)
        assert ok(get(port))

        os.kill(hung, signal.SIGSTOP)
        wait_for(lambda: ns.show(SERVICE, "NRestarts") == "1", timeout=30,
                 what="a restart after the watchdog timeout")
        wait_for(lambda: ns.show(SERVICE, "ActiveState") == "active", what="active again")
        assert ns.main_pid(SERVICE) not in (None, hung)
        wait_for(lambda: not os.path.exists(f"/proc/{hung}"), what="the hung supervisor gone")
        assert "Watchdog timeout" in ns.journal(SERVICE)
        assert ok(get(port))
