"""Listening sockets: TCP (``[ADDR:]PORT``) and Unix (``PATH,local``).

A Unix listener replaces whatever file is at its path, then applies the
listener's ``mode=`` (octal), ``user=`` and ``group=`` to the socket file;
any failure stops startup with a message naming the path. The socket file is
removed again when the listener is closed (Condure 1.9.1 left it behind).
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat

from condure.config import ListenSpec

BACKLOG = 1024

# Unix socket files this process created: path -> (st_dev, st_ino), so that
# closing removes our file and never one another process bound since.
_owned: dict[str, tuple[int, int]] = {}


class ListenError(OSError):
    """A listener could not be set up; the message is for the log."""


def bind(spec: ListenSpec) -> socket.socket:
    """A non-blocking listening socket for ``spec``; raises ListenError."""
    if spec.path is not None:
        return _bind_unix(spec)
    host = spec.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, spec.port or 0))
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise ListenError(f"failed to bind {host}:{spec.port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def _bind_unix(spec: ListenSpec) -> socket.socket:
    path = spec.path
    assert path is not None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ListenError(f"failed to bind {path}: {e.strerror or e}") from None
    else:
        if stat.S_ISDIR(st.st_mode):
            raise ListenError(f"failed to bind {path}: Is a directory")
        try:
            os.unlink(path)
        except OSError as e:
            raise ListenError(f"failed to remove {path}: {e.strerror or e}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise ListenError(f"failed to bind {path}: {e.strerror or e}") from None
    try:
        st = os.stat(path)
        _owned[path] = (st.st_dev, st.st_ino)
        _apply_file_params(spec, path)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        _owned.pop(path, None)
        _unlink_quietly(path)
        raise
    sock.setblocking(False)
    return sock


def _apply_file_params(spec: ListenSpec, path: str) -> None:
    if spec.file_mode is not None:
        try:
            os.chmod(path, spec.file_mode)
        except OSError as e:
            raise ListenError(f"failed to set mode on {path}: {e.strerror or e}") from None
    uid = gid = -1
    if spec.user is not None:
        try:
            uid = pwd.getpwnam(spec.user).pw_uid
        except KeyError:
            raise ListenError(
                f"failed to set user on {path}: no such user: {spec.user}") from None
    if spec.group is not None:
        try:
            gid = grp.getgrnam(spec.group).gr_gid
        except KeyError:
            raise ListenError(
                f"failed to set group on {path}: no such group: {spec.group}") from None
    if uid != -1 or gid != -1:
        try:
            os.chown(path, uid, gid)
        except OSError as e:
            what = "user" if uid != -1 else "group"
            raise ListenError(f"failed to set {what} on {path}: {e.strerror or e}") from None


def describe(sock: socket.socket, spec: ListenSpec) -> str:
    """``127.0.0.1:8000``, ``[::1]:8000`` or the socket path, for the log."""
    if spec.path is not None:
        return spec.path
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def close(sock: socket.socket, spec: ListenSpec) -> None:
    """Close a listener; a Unix listener's socket file goes with it."""
    path = spec.path
    if path is not None and path in _owned:
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == _owned.pop(path):
                os.unlink(path)
        except OSError:
            pass
    sock.close()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
