"""Claim the ``ipc://`` socket files condure is about to bind.

Binding an ``ipc://`` endpoint, ZeroMQ first unlinks whatever file is at
the path and then binds a new socket there. A second condure started with
the same base (two instances in one directory with the default
``ipc://client``, say) would so take the files over from a live one, whose
handlers would never reach it again, and nothing would be logged.

So before anything is bound, every ``ipc://`` path condure will bind is
looked at (:func:`claim`):

- no file: nothing to do;
- a Unix socket on which a connection is accepted (a plain ``AF_UNIX``
  stream connect, non-blocking: ZeroMQ's ipc transport is a stream socket):
  a live process owns it, and start-up stops with :class:`ClaimError`;
- a Unix socket nobody listens on (``ECONNREFUSED``): left behind by a
  process that died; it is removed;
- anything else at the path (a regular file, a directory, a symlink):
  :class:`ClaimError`, and the file is left alone.

Every path is checked before any stale file is removed, so a refusal
changes nothing. Abstract-namespace endpoints (``ipc://@name``) have no
file and are not checked (binding a live one fails by itself), nor is the
wildcard ``ipc://*``. tcp endpoints need no check: a port in use fails the
bind.

The check and the bind are not atomic: a process binding the same path
between the two still wins, as before. The check is for the common
mistake, not a lock.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import Iterable

from condure.config import Config, client_endpoints, stream_endpoints

log = logging.getLogger("condure")

FREE = "free"
STALE = "stale"

# connect() errors that mean a process is bound to the path and accepting
# (EAGAIN: its backlog is full; EPROTOTYPE: bound, but not as a stream socket).
_LIVE = (errno.EAGAIN, errno.EINPROGRESS, errno.EPROTOTYPE)


class ClaimError(Exception):
    """An ipc path is taken or unusable; the message is for the log."""


def ipc_path(endpoint: str) -> str | None:
    """The file an ``ipc://`` endpoint binds, or None (not ipc, abstract,
    wildcard)."""
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://"):]
    if not path or path.startswith("@") or path == "*":
        return None
    return path


def bound_endpoints(config: Config) -> list[tuple[str, str]]:
    """(endpoint, where it comes from) for every ZeroMQ endpoint condure
    binds with this config. Server role: none with ``--zclient-connect``,
    the req specs if a listener is in req mode, the three endpoints of each
    stream base if one is in stream mode (what the supervisor's relay, or a
    lone worker, binds). The listeners' modes are known before they are
    acquired: passed sockets taken without ``--listen`` are stream
    listeners, as the default listener is. Client role: none with
    ``--zserver-connect``, else every ``--zserver-req`` spec and the three
    endpoints of every ``--zserver-stream`` base."""
    found: list[tuple[str, str]] = []
    if not config.zclient_connect:
        if config.uses_req:
            found += [(spec, f"--zclient-req {spec}") for spec in config.zclient_req]
        if config.uses_stream:
            for base in config.zclient_stream:
                found += [(ep, f"--zclient-stream {base}") for ep in stream_endpoints(base)]
    if not config.zserver_connect:
        found += [(spec, f"--zserver-req {spec}") for spec in config.zserver_req]
        for base in config.zserver_stream:
            found += [(ep, f"--zserver-stream {base}") for ep in client_endpoints(base)]
    return found


def check(path: str) -> str:
    """:data:`FREE` or :data:`STALE` for one path; raises ClaimError with
    the reason (without the endpoint) if it must not be bound."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return FREE
    except OSError as e:
        raise ClaimError(f"cannot look at {path}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ClaimError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        # A Unix stream connect either completes at once or fails at once.
        code = probe.connect_ex(path)
    except OSError as e:  # the path is too long for sun_path: the bind will say
        log.debug("ipc path %s not checked: %s", path, e)
        return FREE
    finally:
        probe.close()
    if code == 0 or code in _LIVE:
        raise ClaimError(f"another process is listening on {path} "
                         "(another condure on the same endpoints?)")
    if code == errno.ECONNREFUSED:
        return STALE
    if code == errno.ENOENT:
        return FREE  # removed since lstat
    raise ClaimError(f"cannot tell whether {path} is in use: {os.strerror(code)}")


def claim_endpoints(endpoints: Iterable[tuple[str, str]]) -> list[str]:
    """Check every ipc path of ``endpoints`` ((endpoint, origin) pairs), then
    remove the stale socket files; returns their paths. Raises ClaimError
    naming the endpoint and its origin, having removed nothing."""
    stale: list[str] = []
    seen: set[str] = set()
    for endpoint, origin in endpoints:
        path = ipc_path(endpoint)
        if path is None or path in seen:
            continue
        seen.add(path)
        try:
            state = check(path)
        except ClaimError as e:
            raise ClaimError(f"cannot bind {endpoint} ({origin}): {e}") from None
        if state == STALE:
            stale.append(path)
    for path in stale:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ClaimError(f"cannot remove stale socket file {path}: {e.strerror}") from None
        log.debug("removed stale socket file %s (nothing was listening on it)", path)
    return stale


def claim(config: Config) -> list[str]:
    """:func:`claim_endpoints` for everything ``config`` makes condure bind."""
    return claim_endpoints(bound_endpoints(config))


def sweep_private_dirs(parent: str, prefix: str) -> list[str]:
    """Remove the private directories of ipc sockets (``<prefix>XXXXXXXX``
    in ``parent``, as the supervisor's relay makes with ``mkdtemp``) that
    processes killed with SIGKILL left behind; the paths removed.

    A directory goes only if it is ours (uid, mode 0700) and holds at least
    one file, every one of them a socket :func:`check` finds stale (nobody
    is bound to it, whatever pid namespace the owner ran in). An empty
    directory may be one another condure has just made and not bound in
    yet: it is left alone, as is anything this cannot read."""
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    uid = os.getuid()
    for name in names:
        if not name.startswith(prefix) or len(name) != len(prefix) + 8:
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
            if (not stat.S_ISDIR(st.st_mode) or st.st_uid != uid
                    or stat.S_IMODE(st.st_mode) != 0o700):
                continue
            files = [os.path.join(path, entry) for entry in os.listdir(path)]
            if not files or any(check(file) != STALE for file in files):
                continue
            for file in files:
                os.unlink(file)
            os.rmdir(path)
        except (ClaimError, OSError):
            continue
        removed.append(path)
    return removed
