"""Socket activation without systemd: an exec wrapper for tests.

    python -m tests.harness.activate --fd 7=web --fd 8=api -- CMD ARGS...

The test opens the sockets itself (so it knows their ports and keeps its
own copies) and passes them to this process (``pass_fds``). The wrapper
moves them to descriptors 3, 4, ... in the order given, sets
``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` (its own pid), and
execs CMD, which keeps the pid, just as systemd does for a service.

``--pid N`` puts another pid in ``LISTEN_PID`` (activation meant for
someone else); ``--no-names`` leaves ``LISTEN_FDNAMES`` unset.

:func:`start_activated` runs our condure this way and waits for readiness
(or its exit) like :func:`tests.harness.procs.start_condure`.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.harness import procs

FIRST = 3
SPARE = 100  # descriptors are parked at or above this while being moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.harness.activate")
    parser.add_argument("--fd", action="append", default=[], metavar="FD=NAME",
                        help="a descriptor to pass and its name")
    parser.add_argument("--pid", type=int, help="LISTEN_PID to set (default: own pid)")
    parser.add_argument("--no-names", action="store_true", help="leave LISTEN_FDNAMES unset")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    pairs = []
    for item in args.fd:
        fd_text, _, name = item.partition("=")
        pairs.append((int(fd_text), name))
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, SPARE) for fd, _ in pairs]
    for fd, _ in pairs:
        os.close(fd)
    for i, fd in enumerate(parked):
        os.dup2(fd, FIRST + i, inheritable=True)
        os.close(fd)
    env = dict(os.environ)
    env["LISTEN_FDS"] = str(len(pairs))
    env["LISTEN_PID"] = str(args.pid if args.pid is not None else os.getpid())
    if args.no_names:
        env.pop("LISTEN_FDNAMES", None)
    else:
        env["LISTEN_FDNAMES"] = ":".join(name for _, name in pairs)
    sys.stdout.flush()
    os.execvpe(command[0], command, env)
    return 127  # not reached


def start_activated(tmp_path: Path, passed: list[tuple[socket.socket, str]], args=(),
                    name: str = "condure", wait_ready: bool = True,
                    timeout: float = procs.READY_TIMEOUT) -> procs.CondureProcess:
    """Start ``python -m condure ARGS`` with ``passed`` (socket, name) pairs
    as activated sockets 3, 4, ...; the test keeps its own copies. Adds
    ``--zclient-stream`` (an ipc base in ``tmp_path``) unless given.

    ``wait_ready``: wait for READY=1 (raises StartupError if it exits
    first); otherwise return at once (tests of start-up failures).
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    base = f"ipc://{tmp_path}/client"
    args = list(args)
    if "--zclient-stream" not in args:
        args += ["--zclient-stream", base]
    fds = [sock.fileno() for sock, _ in passed]
    cmd = [sys.executable, "-m", "tests.harness.activate"]
    for (sock, fd_name) in passed:
        cmd += ["--fd", f"{sock.fileno()}={fd_name}"]
    cmd += ["--", sys.executable, "-m", "condure", *args]
    notify_path = tmp_path / f"{name}.notify"
    if notify_path.exists():
        notify_path.unlink()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = procs.python_env(procs.OURS_ROOT)
    env["NOTIFY_SOCKET"] = str(notify_path)
    popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=env, cwd=str(procs.OURS_ROOT),
                             start_new_session=True, pass_fds=fds)
    pump = procs.OutputPump(popen.stdout, tmp_path / f"{name}.log", None)
    cp = procs.CondureProcess(name, popen, pump, impl="ours", base=base, args=args)
    try:
        if wait_ready:
            procs._wait_notify(notify, cp, timeout)
    except (TimeoutError, procs.StartupError) as e:
        status = cp.stop(timeout=3)
        raise procs.StartupError(
            f"activated condure {'exited' if isinstance(e, procs.StartupError) else 'hung'}"
            f" (status {status})\n--- output ---\n{cp.pump.tail()}") from None
    finally:
        notify.close()
    return cp


if __name__ == "__main__":
    raise SystemExit(main())
