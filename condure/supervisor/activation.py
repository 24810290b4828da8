"""Socket activation: the descriptors systemd (or inetd-style wrappers) pass.

The protocol is the one of ``sd_listen_fds_with_names(3)``:

- ``LISTEN_PID`` must be this process's pid, else nothing was meant for us
  (the variables were inherited by accident) and no descriptor is taken;
- ``LISTEN_FDS`` is the count N; the descriptors are 3 .. 3 + N - 1;
- ``LISTEN_FDNAMES`` holds N names separated by ``:``; without it every
  descriptor is named ``unknown``;
- ``FD_CLOEXEC`` is set on every passed descriptor, so it reaches a child
  only when handed over on purpose (``pass_fds``);
- the three variables are removed from the environment afterwards, whether
  they were valid or not, so no child process sees them.

Each descriptor is then identified: socket family and type, and whether it
is listening (``SO_ACCEPTCONN``) or one connected socket (``Accept=yes``).
Descriptors named with ``condure-store-`` come from systemd's fd store
(:mod:`condure.supervisor.fdstore`); they may be other than sockets (the
manifest is a memfd) and are no listeners.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
UNKNOWN_NAME = "unknown"  # the name of a descriptor when LISTEN_FDNAMES is unset
CONNECTION_NAME = "connection"  # systemd's name for the socket of Accept=yes
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_INT_MAX = 2**31 - 1
# Every name condure gives a descriptor in systemd's fd store starts with
# this (condure.supervisor.fdstore puts them there and recovers them).
STORE_PREFIX = "condure-store-"


def is_stored(name: str) -> bool:
    """Whether a passed descriptor's name says it comes from the fd store."""
    return name.startswith(STORE_PREFIX)


class ActivationError(Exception):
    """The activation variables or descriptors are unusable (a clear message)."""


@dataclass(frozen=True, slots=True)
class Inherited:
    """One passed descriptor, identified."""

    fd: int
    name: str
    sock: socket.socket | None  # None: a stored descriptor that is no socket
    family: int
    type: int
    listening: bool

    def need_sock(self) -> socket.socket:
        """The socket; only a stored descriptor may be no socket, so this
        is for passed sockets (listening or connected)."""
        if self.sock is None:
            raise ActivationError(f"{self.describe()} is not a socket")
        return self.sock

    @property
    def stored(self) -> bool:
        """From systemd's fd store (a name with STORE_PREFIX)."""
        return is_stored(self.name)

    def describe(self) -> str:
        """``fd 3 "web" (tcp 127.0.0.1:8000, listening)`` for messages."""
        if self.sock is None:
            return f'fd {self.fd} "{self.name}" (not a socket)'
        kinds: dict[int, str] = {socket.AF_INET: "tcp", socket.AF_INET6: "tcp6",
                                 socket.AF_UNIX: "unix"}
        kind = kinds.get(self.family, f"family {self.family}")
        if self.type != socket.SOCK_STREAM:
            kind += " non-stream"
        where = local_address(self.sock)
        state = "listening" if self.listening else "connected"
        return f'fd {self.fd} "{self.name}" ({kind} {where}, {state})'


def local_address(sock: socket.socket) -> str:
    """``127.0.0.1:8000``, ``[::1]:8000``, a socket path or ``?``."""
    try:
        addr = sock.getsockname()
    except OSError:
        return "?"
    if isinstance(addr, tuple):
        host, port = addr[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(addr, bytes):  # abstract Unix address
        return "@" + addr[1:].decode("utf-8", "replace")
    return addr or "?"


def listen_fds_with_names(unset_environment: bool = True,
                          environ: MutableMapping[str, str] | None = None,
                          pid: int | None = None) -> list[tuple[int, str]]:
    """The passed descriptors and their names, as ``sd_listen_fds_with_names``.

    Returns ``[]`` when no activation is meant for this process. Raises
    ActivationError when the variables are malformed. ``environ`` and ``pid``
    default to the real environment and ``os.getpid()`` (tests pass their own).
    """
    env = os.environ if environ is None else environ
    try:
        return _parse(env, os.getpid() if pid is None else pid)
    finally:
        if unset_environment:
            for name in _VARIABLES:
                env.pop(name, None)  # os.environ.pop also calls unsetenv()


def _parse(env: MutableMapping[str, str], pid: int) -> list[tuple[int, str]]:
    pid_text = env.get("LISTEN_PID")
    if pid_text is None:
        return []
    listen_pid = _number(pid_text, "LISTEN_PID")
    if listen_pid <= 0:
        raise ActivationError(f"invalid LISTEN_PID: {pid_text!r}")
    if listen_pid != pid:
        return []  # meant for another process (our parent, say)
    fds_text = env.get("LISTEN_FDS")
    if fds_text is None:
        return []
    count = _number(fds_text, "LISTEN_FDS")
    if count > _INT_MAX - LISTEN_FDS_START:
        raise ActivationError(f"invalid LISTEN_FDS: {fds_text!r}")
    if count == 0:
        return []
    names_text = env.get("LISTEN_FDNAMES")
    if names_text is None:
        names = [UNKNOWN_NAME] * count
    else:
        names = names_text.split(":") if names_text else []
        if len(names) != count:
            raise ActivationError(
                f"LISTEN_FDNAMES has {len(names)} names for {count} descriptors")
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
    for fd in fds:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            if not flags & fcntl.FD_CLOEXEC:
                fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        except OSError as e:
            raise ActivationError(f"passed descriptor {fd} is unusable: {e.strerror}") from None
    return list(zip(fds, names, strict=True))


def _number(text: str, variable: str) -> int:
    # Like systemd's safe_atoi/parse_pid: decimal digits, no sign games.
    stripped = text.strip()
    if not stripped.isascii() or not stripped.isdigit():
        raise ActivationError(f"invalid {variable}: {text!r}")
    return int(stripped)


def identify(fd: int, name: str) -> Inherited:
    """Wrap a passed descriptor; raises ActivationError if it is no socket
    (unless it comes from the fd store: then ``sock`` is None)."""
    try:
        sock = socket.socket(fileno=fd)  # family, type and protocol from the fd
    except OSError as e:
        if e.errno == errno.ENOTSOCK and is_stored(name):
            return Inherited(fd=fd, name=name, sock=None, family=0, type=0, listening=False)
        raise ActivationError(
            f'passed descriptor {fd} "{name}" is not a socket: {e.strerror}') from None
    try:
        listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        listening = False
    return Inherited(fd=fd, name=name, sock=sock, family=sock.family, type=sock.type,
                     listening=listening)


def inherited_sockets(environ: MutableMapping[str, str] | None = None,
                      pid: int | None = None) -> list[Inherited]:
    """Every socket passed to this process, identified; the activation
    variables are gone from the environment afterwards."""
    found = []
    try:
        for fd, name in listen_fds_with_names(True, environ, pid):
            found.append(identify(fd, name))
    except ActivationError:
        for item in found:
            if item.sock is not None:
                item.sock.detach()  # leave the descriptors as they were
        raise
    return found
