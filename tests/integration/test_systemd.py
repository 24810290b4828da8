"""condure under a real systemd, booted in private namespaces.

``test_documented_install_...`` follows docs/systemd.md's install steps as
written inside the namespace (a virtualenv in ``/opt/condure``, the units
into ``/etc/systemd/system``, all private to the namespace) and serves
through the shipped units, whose ``ExecStart=`` is left as it is. The other
tests use the project's own ``systemd/condure.socket`` and
``systemd/condure.service`` adapted only where the test must: the port
(loopback), the command line (this checkout's ``python -m condure``, ipc
endpoints in the test's directory) and ``DefaultDependencies=no``. See
``tests/harness/systemd_ns.py`` for how systemd is booted safely.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from condure import manpage
from tests.harness import procs
from tests.harness.doccmds import code_blocks, commands
from tests.harness.systemd_ns import (
    SystemdNamespace,
    adapt_unit,
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


# -- docs/systemd.md's install steps, as written ------------------------------

DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where the install steps write; each gets a tmpfs in the namespace.
INSTALL_PLACES = ("/opt", "/etc/systemd/system", "/usr/local/share/man")
PIP_TIMEOUT = 300.0
# pip's words when it cannot reach the package index at all (no network)
OFFLINE = ("NewConnectionError", "Temporary failure in name resolution",
           "Network is unreachable")


def checkout_copy(dest: Path, port: int) -> Path:
    """What ``pip install .`` and the ``install`` lines read, copied (the
    build writes into the tree); the units as shipped but for
    ``DefaultDependencies=no`` (nothing of a normal boot may start in the
    namespace) and the socket on a free loopback port instead of 8000."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    for name in ("condure", "man", "systemd"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    service = dest / "systemd" / "condure.service"
    service.write_text(adapt_unit(service.read_text(), {}))
    sock = dest / "systemd" / "condure.socket"
    sock.write_text(adapt_unit(sock.read_text(), {
        ("Socket", "ListenStream"): [f"127.0.0.1:{port}"]}))
    return dest


def install_env() -> dict[str, str]:
    """A root shell's environment on Debian: no virtualenv, no PYTHONPATH
    (pip's own settings, such as a local index, are kept)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
           and not k.startswith("PYENV")}
    env["PATH"] = DEBIAN_PATH
    env["PIP_NO_CACHE_DIR"] = "1"  # write nothing outside the namespace's tmpfs
    return env


def host_has_packages(line: str) -> None:
    """An ``apt-get install`` line is not run in the namespace (it has no
    dpkg database); what it installs must be on the host instead."""
    for package in line.split()[2:]:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", package],
                           capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            pytest.skip(f"Debian's {package} is not installed (scripts/setup installs it)")


def test_documented_install_serves_through_the_shipped_units(tmp_path):
    """docs/systemd.md's install block, line by line, as root in the
    namespace with Debian's PATH: ``python3 -m venv /opt/condure``, the real
    ``pip install .`` (dependencies from the package index), the units and
    the man page installed, ``systemctl enable --now condure.socket``.
    Only ``apt-get install`` is not run (the namespace has no dpkg
    database): the host must have those packages. Then the handler line of
    examples/README.md serves the unit's ``/run/condure/client`` and a first
    connection starts condure.service, which runs ``/opt/condure/bin/condure``."""
    port = procs.free_port()
    copy = checkout_copy(tmp_path / "checkout", port)
    install = commands(code_blocks(REPO / "docs" / "systemd.md", "Install", lang="sh")[0])
    for line in install:
        if line.startswith("apt-get install "):
            host_has_packages(line)
    handler_line = [c for b in code_blocks(REPO / "examples" / "README.md", lang="sh")
                    for c in commands(b) if "/run/condure/" in c]
    assert len(handler_line) == 1, handler_line
    opt = tuple(str(p) for p in Path("/opt").iterdir() if p.name != "condure")
    ns = SystemdNamespace(tmp_path, {}, keep=opt, private=INSTALL_PLACES)
    handler = None
    try:
        ns.start()
        env = install_env()
        for line in install:
            if line.startswith("apt-get install "):
                continue
            t0 = time.monotonic()
            r = ns.run("sh", "-c", f"cd {copy} && {line}", env=env, check=False,
                       timeout=PIP_TIMEOUT)
            print(f"{time.monotonic() - t0:.1f} s: {line}")
            if r.returncode != 0 and any(sign in r.stdout + r.stderr for sign in OFFLINE):
                pytest.skip(f"the package index is unreachable: {line}\n{r.stderr[-2000:]}")
            assert r.returncode == 0, f"{line}\n{r.stdout}{r.stderr}"
        assert ns.show(SOCKET, "ActiveState") == "active"
        assert ns.show(SOCKET, "UnitFileState") == "enabled"
        assert ns.show(SERVICE, "FragmentPath") == "/etc/systemd/system/condure.service"
        assert f"path={manpage.PROGRAM} " in ns.show(SERVICE, "ExecStart")
        ns.run("test", "-x", manpage.PROGRAM)
        ns.run("test", "-f", "/usr/local/share/man/man1/condure.1")
        # What examples/README.md and this page say /opt/condure/bin/python has.
        ns.run(f"{manpage.PREFIX}/bin/python", "-c", "import zmq, tnetstring", env=env)
        assert ns.show(SERVICE, "ActiveState") == "inactive"

        with open(tmp_path / "handler.log", "wb") as log:
            handler = subprocess.Popen(
                ns.command("sh", "-c", f"cd {REPO} && exec {handler_line[0]}"),
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            ns.systemctl("start", SERVICE)  # joins the activation job: returns on READY=1
            conn.settimeout(10)
            conn.sendall(b"GET /hello HTTP/1.1\r\nHost: example.com\r\n"
                         b"Connection: close\r\n\r\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
        assert data.endswith(b"\r\n\r\nok /hello\n"), data
        # The supervisor is the venv's interpreter running its condure script.
        cmdline = Path(f"/proc/{ns.main_pid(SERVICE)}/cmdline").read_bytes().split(b"\0")
        assert manpage.PROGRAM.encode() in cmdline[:2], cmdline
        # The unit's ExecReload= as shipped (the installed `condure ctl reload
        # --wait`): `systemctl reload` returns with every worker replaced.
        status = [manpage.PROGRAM, "ctl", "--socket", "/run/condure/condure-condure.ctl",
                  "--json", "status"]
        before = {w["pid"] for w in json.loads(ns.run(*status).stdout)["workers"]}
        ns.systemctl("reload", SERVICE, timeout=100)
        after = json.loads(ns.run(*status).stdout)
        assert after["state"] == "running", after
        current = {w["pid"] for w in after["workers"] if w["role"] == "current"}
        assert len(current) == 2 and not current & before, (before, after)
        ns.systemctl("stop", SERVICE, SOCKET)
        assert ns.show(SERVICE, "Result") == "success"
    except BaseException:
        print(ns.journal(SERVICE)[-6000:])
        print((tmp_path / "handler.log").read_text(errors="replace")
              if (tmp_path / "handler.log").exists() else "")
        raise
    finally:
        if handler is not None:
            os.killpg(handler.pid, signal.SIGKILL)
            handler.wait()
        ns.stop()
