"""Boot a real systemd as PID 1 of private PID + mount + cgroup namespaces.

``SystemdNamespace(workdir, units)`` writes a boot script and the units into
``workdir``, moves a launcher into a fresh cgroup of its own under
``/sys/fs/cgroup/unified`` and runs ``unshare --fork --pid --mount --cgroup``
on the boot script. The boot script, PID 1 of the new namespaces:

1. mounts a private tmpfs on every place systemd writes to (``/run``,
   ``/tmp``, ``/var/tmp``, ``/var/log``, ``/var/lib``, ``/var/cache``), and
   on the further directories a test names with ``private=`` (``/opt`` and
   ``/etc/systemd/system``, say, to install into them as a user would
   without touching the host's);
2. binds back, read-only unless it is ``workdir``, the few host directories
   under those places that the units need (``workdir`` itself, the Python
   environment of ``sys.executable``, and what ``keep=`` names), at the same
   paths;
3. refuses to go on unless ``/proc/self/mountinfo`` shows each of those
   places as a tmpfs, the cgroup namespace is a new one and it is PID 1;
4. mounts cgroup2 on ``/sys/fs/cgroup`` (the namespace sees only its own
   cgroup), copies the units to ``/run/systemd/system`` and execs systemd
   with ``--unit=test.target``.

Without these mounts a booting systemd would empty the host's ``/tmp`` and
write into its ``/var/log``: the script checks them before exec and the
harness never runs systemd any other way.

``stop()`` kills everything in the cgroup (``cgroup.kill``), waits until it
is empty and removes it with its sub-cgroups. Use it from a fixture
finalizer so it also runs when a test fails.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"
REPO_ROOT = Path(__file__).resolve().parents[2]
CGROUP2 = Path("/sys/fs/cgroup/unified")
CGROUP_PREFIX = "condure-systemd-"
PRIVATE_DIRS = ("/run", "/tmp", "/var/tmp", "/var/log", "/var/lib", "/var/cache")
BOOT_TIMEOUT = 20.0
SYSTEMCTL_TIMEOUT = 30.0

TEST_TARGET = """\
[Unit]
Description=Test target
DefaultDependencies=no
Wants=systemd-journald.service
After=systemd-journald.service
"""


class BootError(RuntimeError):
    """systemd did not come up in the namespace."""


def unavailable_reason() -> str | None:
    """Why systemd cannot be booted here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is not installed"
    if not (CGROUP2 / "cgroup.procs").exists():
        return f"no cgroup2 hierarchy at {CGROUP2}"
    return None


def under_private_dir(path: str, dirs: tuple[str, ...] = PRIVATE_DIRS) -> bool:
    return any(path == d or path.startswith(d + "/") for d in dirs)


def _quote_all(items) -> str:
    return " ".join(shlex.quote(str(i)) for i in items)


def boot_script(units: list[Path], keep_rw: list[str], keep_ro: list[str],
                host_cgroup_ns: str, private: tuple[str, ...] = PRIVATE_DIRS) -> str:
    """The shell script run as PID 1 of the new namespaces; ``private``:
    the places that get a tmpfs (each must exist)."""
    keep = [(p, "rw") for p in keep_rw] + [(p, "ro") for p in keep_ro]
    lines = ["#!/bin/sh", "set -eu",
             'die() { echo "boot: $*" >&2; exit 1; }',
             '[ "$$" = 1 ] || die "not PID 1 of a new PID namespace"',
             f'[ "$(readlink /proc/self/ns/cgroup)" != {shlex.quote(host_cgroup_ns)} ] '
             '|| die "cgroup namespace is the host one"']
    # Open the directories to keep before they are hidden by the tmpfs mounts.
    for i, (path, _) in enumerate(keep):
        lines.append(f"exec {i + 3}<{shlex.quote(path)}")
    lines.append("mount -t proc proc /proc")
    lines.append(f"for d in {_quote_all(private)}; do "
                 'mount -t tmpfs -o mode=755 tmpfs "$d"; done')
    # The topmost mount on each private place must be a tmpfs.
    lines.append(f"for d in {_quote_all(private)}; do")
    lines.append(
        "  t=$(awk -v d=\"$d\" '$5 == d { for (i = 7; i <= NF; i++) "
        "if ($i == \"-\") { t = $(i + 1) } } END { print t }' /proc/self/mountinfo)")
    lines.append('  [ "$t" = tmpfs ] || die "$d is not a private tmpfs ($t)"')
    lines.append("done")
    for i, (path, mode) in enumerate(keep):
        q = shlex.quote(path)
        lines.append(f"mkdir -p {q}")
        lines.append(f"mount --no-canonicalize --bind /proc/self/fd/{i + 3} {q}")
        if mode == "ro":
            lines.append(f"mount -o remount,bind,ro {q}")
        lines.append(f"exec {i + 3}<&-")
    lines += [
        "mount -t cgroup2 cgroup2 /sys/fs/cgroup",
        'grep -qx "0::/" /proc/self/cgroup || die "not at the root of its cgroup namespace"',
        "mkdir -p /run/systemd/system /run/systemd/journald.conf.d",
        "printf '[Journal]\\nStorage=volatile\\nReadKMsg=no\\n' "
        "> /run/systemd/journald.conf.d/test.conf",
        "ln -s /dev/null /run/systemd/system/systemd-journald-dev-log.socket",
        f"cp {_quote_all(units)} /run/systemd/system/",
        "exec env -i container=other PATH=/usr/sbin:/usr/bin:/sbin:/bin "
        f"{SYSTEMD} --system --unit=test.target",
    ]
    return "\n".join(lines) + "\n"


def _cgroup_pids(cg: Path) -> list[int]:
    pids = []
    for procs in cg.rglob("cgroup.procs"):
        try:
            pids += [int(x) for x in procs.read_text().split()]
        except OSError:
            pass
    return pids


def _remove_cgroup(cg: Path, timeout: float = 10.0) -> None:
    """Kill every process of ``cg``, wait until it is empty, remove it."""
    if not cg.exists():
        return
    kill = cg / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    deadline = time.monotonic() + timeout
    while True:
        pids = _cgroup_pids(cg)
        if not pids:
            break
        if not kill.exists():
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes left in {cg}: {pids}")
        time.sleep(0.02)
    for sub in sorted((p for p in cg.rglob("*") if p.is_dir()),
                      key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
    cg.rmdir()


def remove_stale_cgroups() -> None:
    """Remove cgroups left by earlier test runs whose process is gone."""
    for cg in CGROUP2.glob(CGROUP_PREFIX + "*"):
        owner = cg.name[len(CGROUP_PREFIX):].split("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _remove_cgroup(cg)


class SystemdNamespace:
    """A systemd booted in private namespaces; see the module docstring."""

    _count = 0

    def __init__(self, workdir: Path, units: dict[str, str],
                 keep: tuple[str, ...] = (), private: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir).resolve()
        self.units = dict(units)
        self.units.setdefault("test.target", TEST_TARGET)
        self.keep = keep
        self.private = PRIVATE_DIRS + tuple(p for p in private if p not in PRIVATE_DIRS)
        SystemdNamespace._count += 1
        self.cgroup = CGROUP2 / f"{CGROUP_PREFIX}{os.getpid()}-{SystemdNamespace._count}"
        self.launcher: subprocess.Popen | None = None
        self.pid: int | None = None  # systemd, as seen from the host
        self.log_path = self.workdir / "systemd-boot.log"

    # -- start and stop -------------------------------------------------

    def start(self) -> None:
        remove_stale_cgroups()
        unit_dir = self.workdir / "units"
        unit_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, text in self.units.items():
            (unit_dir / name).write_text(text)
            paths.append(unit_dir / name)
        keep_rw = ([str(self.workdir)] if under_private_dir(str(self.workdir), self.private)
                   else [])
        # What the units run must stay visible under the private tmpfs
        # mounts: the interpreter's prefix (a venv) and this checkout (the
        # editable install points at it), wherever they live (a fresh clone
        # may well be under /tmp).
        wanted = {os.path.realpath(p) for p in (sys.prefix, str(REPO_ROOT), *self.keep)}
        wanted = {p for p in wanted
                  if under_private_dir(p, self.private) and not p.startswith(str(self.workdir))}
        keep_ro = sorted(p for p in wanted
                         if not any(p != q and p.startswith(q + "/") for q in wanted))
        script = self.workdir / "boot.sh"
        script.write_text(boot_script(paths, keep_rw, keep_ro,
                                      os.readlink("/proc/self/ns/cgroup"), self.private))
        script.chmod(0o755)
        self.cgroup.mkdir()
        launch = ('echo $$ > "$1/cgroup.procs" && exec unshare --fork --pid --mount '
                  '--cgroup --propagation private "$2"')
        with open(self.log_path, "wb") as log:
            self.launcher = subprocess.Popen(
                ["/bin/sh", "-c", launch, "sh", str(self.cgroup), str(script)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            self._wait_booted()
        except BaseException:
            self.stop()
            raise

    def _find_pid1(self) -> int | None:
        assert self.launcher is not None
        children = Path(f"/proc/{self.launcher.pid}/task/{self.launcher.pid}/children")
        try:
            pids = children.read_text().split()
        except OSError:
            return None
        return int(pids[0]) if pids else None

    def _wait_booted(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            assert self.launcher is not None
            if self.launcher.poll() is not None:
                raise BootError(f"namespace exited early:\n{self.boot_log()}")
            if self.pid is None:
                self.pid = self._find_pid1()
            elif self._is_systemd():
                r = self.systemctl("is-active", "test.target", check=False, timeout=5)
                if r.stdout.strip() == "active":
                    return
            time.sleep(0.05)
        raise BootError(f"systemd did not reach test.target:\n{self.boot_log()}")

    def _is_systemd(self) -> bool:
        try:
            return Path(f"/proc/{self.pid}/comm").read_text().strip() == "systemd"
        except OSError:
            return False

    def boot_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        try:
            _remove_cgroup(self.cgroup)
        finally:
            if self.launcher is not None:
                try:
                    self.launcher.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.launcher.kill()
                    self.launcher.wait()

    def __enter__(self) -> SystemdNamespace:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- commands inside ------------------------------------------------

    def command(self, *argv: str) -> list[str]:
        """``argv`` run in the namespace's mount and PID namespaces."""
        return ["nsenter", "-t", str(self.pid), "-m", "-p", *argv]

    def run(self, *argv: str, timeout: float = SYSTEMCTL_TIMEOUT, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command in the namespace's mount and PID namespaces."""
        r = subprocess.run(self.command(*argv), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout, env=env)
        if check and r.returncode != 0:
            raise AssertionError(f"{argv} exited {r.returncode}:\n{r.stdout}{r.stderr}")
        return r

    def systemctl(self, *args: str, timeout: float = SYSTEMCTL_TIMEOUT,
                  check: bool = True) -> subprocess.CompletedProcess:
        return self.run("systemctl", "--no-pager", *args, timeout=timeout, check=check)

    def systemctl_async(self, *args: str) -> subprocess.Popen:
        """``systemctl`` started in the background (the caller waits)."""
        return subprocess.Popen(self.command("systemctl", "--no-pager", *args),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-P", prop, unit).stdout.strip()

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit,
                        check=False).stdout

    def host_pid(self, ns_pid: int) -> int | None:
        """The host pid of the namespace's process ``ns_pid`` (pids that
        systemctl shows, e.g. MainPID, are the namespace's)."""
        for pid in _cgroup_pids(self.cgroup):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:") and line.split()[-1] == str(ns_pid):
                    return pid
        return None

    def main_pid(self, unit: str) -> int | None:
        """Host pid of ``unit``'s main process (None when it has none)."""
        ns_pid = int(self.show(unit, "MainPID") or 0)
        return self.host_pid(ns_pid) if ns_pid else None

    def cgroup_pids(self, unit: str) -> list[int]:
        """Host pids of the processes of ``unit``'s cgroup."""
        path = self.show(unit, "ControlGroup")
        if not path:
            return []
        return _cgroup_pids(self.cgroup / path.lstrip("/"))


# -- the project's units, adapted to run from this checkout ---------------

def _set_in_section(text: str, section: str, key: str, values: list[str]) -> str:
    """Replace every ``key=`` line of ``section`` (continuations included)
    by one line per value, added at the end of the section."""
    out: list[str] = []
    current = None
    skipping = False
    for line in text.splitlines():
        stripped = line.strip()
        if skipping:
            skipping = stripped.endswith("\\")
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            if current == section:
                out += [f"{key}={v}" for v in values]
            current = stripped[1:-1]
        elif current == section and stripped.startswith(key + "="):
            skipping = stripped.endswith("\\")
            continue
        out.append(line)
    if current == section:
        out += [f"{key}={v}" for v in values]
    return "\n".join(out) + "\n"


def adapt_unit(text: str, settings: dict[tuple[str, str], list[str]]) -> str:
    """``text`` with ``DefaultDependencies=no`` in ``[Unit]`` (nothing of a
    normal boot is pulled in) and each ``(section, key)`` of ``settings``
    replaced by the given values."""
    text = _set_in_section(text, "Unit", "DefaultDependencies", ["no"])
    for (section, key), values in settings.items():
        text = _set_in_section(text, section, key, values)
    return text


def exec_start_python(module_args: list[str]) -> str:
    """An ExecStart= value running ``python -m condure`` with this interpreter."""
    return _quote_all([sys.executable, "-m", "condure", *module_args])


def exec_reload_python(service_text: str) -> str:
    """The unit's ExecReload= with its program (the installed condure)
    replaced by ``python -m condure`` with this interpreter; its arguments
    as the unit has them (``$MAINPID`` left for systemd)."""
    joined = service_text.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.startswith("ExecReload="))
    program, *rest = line[len("ExecReload="):].split()
    assert program.endswith("/bin/condure"), program
    return " ".join([_quote_all([sys.executable, "-m", "condure"]), *rest])


def project_units(workdir: Path, port: int, args: list[str],
                  service: dict[tuple[str, str], list[str]] | None = None) -> dict[str, str]:
    """The project's systemd/condure.socket and condure.service, adapted for
    a test: the socket on 127.0.0.1:``port``, the service running this
    checkout's ``python -m condure`` with ``args`` in ``workdir`` (and its
    ``condure ctl`` for ExecReload=), plus any
    ``service`` settings."""
    repo = Path(__file__).resolve().parents[2]
    service_text = (repo / "systemd" / "condure.service").read_text()
    settings = {
        ("Service", "ExecStart"): [exec_start_python(args)],
        ("Service", "ExecReload"): [exec_reload_python(service_text)],
        ("Service", "Environment"): [f"PYTHONPATH={repo}", "PYTHONUNBUFFERED=1"],
        ("Service", "WorkingDirectory"): [str(workdir)],
        **(service or {}),
    }
    return {
        "condure.service": adapt_unit(service_text, settings),
        "condure.socket": adapt_unit((repo / "systemd" / "condure.socket").read_text(), {
            ("Socket", "ListenStream"): [f"127.0.0.1:{port}"],
        }),
    }
