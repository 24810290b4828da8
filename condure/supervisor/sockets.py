"""The supervisor's listening sockets: inherited or bound, per accept mode.

:func:`acquire_listeners` decides, once at start-up, which sockets exist and
which worker accepts on which (docs/accept-modes.md):

- sockets passed by systemd (:mod:`condure.supervisor.activation`) are
  matched to ``--listen`` entries by ``fd-name=NAME``; a named socket that is
  missing, or a passed socket no entry names, is an error (a socket nobody
  accepts on would leave clients hanging). Without any ``--listen``, every
  passed socket is a stream listener. Inherited sockets are never
  ``listen()``ed again and are always shared (or dispatched): one cannot
  make SO_REUSEPORT siblings of a socket systemd bound;
- other entries are bound here: ``reuseport`` binds one SO_REUSEPORT socket
  per worker slot for each TCP entry (Unix sockets cannot be balanced by
  the kernel and are shared), ``shared`` and ``dispatch`` one socket each.

The supervisor keeps every socket for its whole life, so connections
queued on a worker's socket survive that worker's death and wait for its
replacement. Across a full restart the sockets it bound go through systemd's
fd store (:mod:`condure.supervisor.fdstore`): passed descriptors named
``condure-store-...`` are set aside (``Listeners.stored``) and recovered
(``Listeners.recovered``); a recovered listener with the same entry, slot
and address is used instead of binding (its queue is intact). In
``dispatch`` mode the :class:`Dispatcher` accepts and hands each connection
to a worker.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass, field, replace

from condure.config import Config, ListenSpec
from condure.net import listeners as binder
from condure.supervisor import activation, fdstore
from condure.supervisor.activation import Inherited, local_address

log = logging.getLogger("condure")

REUSEPORT, SHARED, DISPATCH, AUTO = "reuseport", "shared", "dispatch", "auto"


class AcquireError(Exception):
    """The listeners cannot be set up; the message is for the log (exit 1)."""


@dataclass(slots=True)
class Listener:
    sock: socket.socket
    spec: int  # index of its entry in Listeners.config.listen
    slot: int | None = None  # reuseport: the worker slot it belongs to; None: all
    name: str | None = None  # the descriptor name, for inherited sockets
    reused: bool = False  # bound by an earlier start, recovered from the fd store
    file_id: tuple[int, int] | None = None  # reused Unix socket: its file's (dev, ino)

    @property
    def inherited(self) -> bool:
        return self.name is not None


@dataclass(slots=True)
class Listeners:
    """What the supervisor owns. ``config`` is the Config the workers get:
    ``listen`` completed from the passed sockets, ``accept_mode`` resolved."""

    config: Config
    mode: str
    items: list[Listener] = field(default_factory=list)
    connection: Inherited | None = None  # inetd style: one connected socket
    stored: list[Inherited] = field(default_factory=list)  # fd store descriptors passed
    recovered: fdstore.Recovered | None = None  # what acquire_listeners recovered from them

    def store_entries(self) -> list[tuple[int, dict]]:
        """The listeners condure bound (not the activated ones), as
        (fd, manifest entry) for :class:`fdstore.Uploader`."""
        return [(item.sock.fileno(), {"kind": "listener", "spec": item.spec, "slot": item.slot})
                for item in self.items if not item.inherited]

    def for_worker(self, index: int) -> list[Listener]:
        """The sockets worker slot ``index`` accepts on (none in dispatch mode)."""
        if self.mode == DISPATCH:
            return []
        return [item for item in self.items if item.slot in (None, index)]

    def worker_listeners(self, index: int) -> list[dict[str, int]]:
        """The worker spec's ``listeners`` list; the fds go in ``pass_fds``."""
        return [{"fd": item.sock.fileno(), "spec": item.spec} for item in self.for_worker(index)]

    def close(self, keep_files: bool = False) -> None:
        """Close every socket. A Unix socket file condure made goes too,
        unless ``keep_files`` (the listeners went to the fd store)."""
        for item in self.items:
            path = self.config.listen[item.spec].path
            if item.inherited or keep_files:
                item.sock.close()
            elif item.file_id is not None and path is not None:
                _unlink_if_same(path, item.file_id)
                item.sock.close()
            else:  # a bound Unix socket's file goes too
                binder.close(item.sock, self.config.listen[item.spec])
        self.items.clear()
        if self.connection is not None and self.connection.sock is not None:
            self.connection.sock.close()


def acquire_listeners(config: Config, n_workers: int, accept_mode: str | None = None, *,
                      listen_given: bool | None = None,
                      environ: MutableMapping[str, str] | None = None) -> Listeners:
    """Take the passed sockets and bind the rest; raises AcquireError.

    ``accept_mode`` defaults to ``config.accept_mode``. ``listen_given``
    says whether ``--listen`` was on the command line; when None it is
    guessed from ``config.listen`` differing from the built-in default.
    """
    try:
        passed = activation.inherited_sockets(environ)
    except activation.ActivationError as e:
        raise AcquireError(f"socket activation: {e}") from None
    if listen_given is None:
        listen_given = config.listen != Config().listen
    stored = [item for item in passed if item.stored]
    passed = [item for item in passed if not item.stored]
    recovered = fdstore.recover(stored) if stored else None
    try:
        result = match_listeners(config, n_workers, accept_mode or config.accept_mode,
                                 listen_given, passed, stored_listeners=(
                                     recovered.listeners if recovered else None))
    except BaseException:
        for item in passed:
            item.need_sock().close()
        if recovered is not None:
            recovered.close()
        raise
    result.stored, result.recovered = stored, recovered
    return result


def match_listeners(config: Config, n_workers: int, requested: str, listen_given: bool,
                    passed: list[Inherited], *,
                    stored_listeners: list[tuple[socket.socket, dict]] | None = None
                    ) -> Listeners:
    """The matching and binding of :func:`acquire_listeners`, given the
    passed sockets already identified (tests call this directly). Passed
    fd store descriptors are only set aside (``Listeners.stored``);
    ``stored_listeners`` are the recovered ones to reuse (the rest is closed)."""
    stored = [item for item in passed if item.stored]
    passed = [item for item in passed if not item.stored]
    pool = list(stored_listeners or ())
    for item in passed:
        if item.type != socket.SOCK_STREAM:
            raise AcquireError(f"passed {item.describe()} is not a stream socket")
    connected = [item for item in passed if not item.listening]
    if connected:
        if len(passed) > 1:
            raise AcquireError(f"passed {connected[0].describe()} is a connected socket "
                               "(Accept=yes); it must be the only one passed")
        fdstore.take_listeners(pool, [])
        result = _inetd(config, connected[0], listen_given)
        result.stored = stored
        return result
    mode = requested
    if mode == AUTO:
        mode = SHARED if passed else REUSEPORT
    if passed and not listen_given:
        found = tuple(_spec_for(item) for item in passed)
        items = [Listener(item.need_sock(), i, None, item.name) for i, item in enumerate(passed)]
        config = replace(config, listen=found, accept_mode=mode)
        fdstore.take_listeners(pool, [])
        result = Listeners(config, mode, items, stored=stored)
        _log(result)
        return result
    specs = list(config.listen)
    result = Listeners(replace(config, accept_mode=mode), mode, stored=stored)
    unused = list(passed)
    reused = fdstore.take_listeners(pool, [
        (index, slot, spec.host, spec.port, spec.path)
        for index, spec in enumerate(specs) if spec.fd_name is None
        for slot in (range(max(n_workers, 1)) if mode == REUSEPORT and not spec.is_local
                     else [None])])
    try:
        for index, spec in enumerate(specs):
            if spec.fd_name is not None:
                matched = [item for item in unused if item.name == spec.fd_name]
                if not matched:
                    raise AcquireError(_missing(spec, passed))
                for item in matched:
                    _check_address(spec, item)
                    unused.remove(item)
                    result.items.append(Listener(item.need_sock(), index, None, item.name))
                if len(matched) == 1 and spec.host is None and spec.path is None:
                    # "fd-name=web" alone: the entry takes the socket's address
                    # (for the log, and so a Unix socket counts as local).
                    specs[index] = replace(_spec_for(matched[0]), mode=spec.mode,
                                           tls=spec.tls, default_cert=spec.default_cert)
            elif mode == REUSEPORT and not spec.is_local:
                for slot, (sock, was) in enumerate(_reuseport(spec, index, n_workers, reused)):
                    result.items.append(Listener(sock, index, slot, reused=was))
            else:
                if mode == REUSEPORT:
                    log.info("listen %s: a Unix socket is shared by all workers "
                             "(no SO_REUSEPORT for Unix sockets)", spec.path)
                kept = reused.pop((index, None), None)
                if kept is None:
                    result.items.append(Listener(binder.bind(spec), index))
                else:
                    result.items.append(Listener(kept, index, reused=True,
                                                 file_id=_file_id(spec.path)))
        if unused:
            names = ", ".join(item.describe() for item in unused)
            raise AcquireError(f"passed socket not named by any --listen fd-name=: {names}")
    except BaseException as e:
        # Passed sockets are closed by the caller; close only what we bound.
        result.items = [bound for bound in result.items if not bound.inherited]
        for bound in result.items:
            bound.file_id = None  # a reused socket's file stays for the next start
        result.close()
        for sock in reused.values():
            sock.close()
        if isinstance(e, binder.ListenError):
            raise AcquireError(str(e)) from None
        raise
    result.config = replace(result.config, listen=tuple(specs))
    _log(result)
    return result


def _inetd(config: Config, item: Inherited, listen_given: bool) -> Listeners:
    if listen_given:
        named = [spec for spec in config.listen if spec.fd_name == item.name]
        if not named:
            raise AcquireError(f"passed {item.describe()} is not named by any "
                               f"--listen (add --listen fd-name={item.name})")
        spec = named[0]
    else:
        spec = ListenSpec(host=None, port=None, fd_name=item.name)
    config = replace(config, listen=(spec,), accept_mode=SHARED)
    return Listeners(config, SHARED, [], item)


def _spec_for(item: Inherited) -> ListenSpec:
    """A stream ListenSpec describing a passed listening socket."""
    if item.family == socket.AF_UNIX:
        return ListenSpec(host=None, port=None, path=local_address(item.need_sock()),
                          fd_name=item.name)
    host, port = item.need_sock().getsockname()[:2]
    return ListenSpec(host=host, port=port, fd_name=item.name)


def _missing(spec: ListenSpec, passed: list[Inherited]) -> str:
    if not passed:
        return (f"--listen fd-name={spec.fd_name}: no sockets were passed "
                "(LISTEN_FDS unset or not for this process)")
    names = ", ".join(sorted({item.name for item in passed}))
    return f"--listen fd-name={spec.fd_name}: no passed socket has that name (passed: {names})"


def _check_address(spec: ListenSpec, item: Inherited) -> None:
    """An entry that gives an address as well as a name must agree with the
    socket (a guard against a unit and a command line drifting apart)."""
    if spec.path is not None:
        ok = item.family == socket.AF_UNIX and local_address(item.need_sock()) == spec.path
    elif spec.host is not None:
        ok = item.family in (socket.AF_INET, socket.AF_INET6) and (
            not spec.port or item.need_sock().getsockname()[1] == spec.port)
    else:
        return
    if not ok:
        raise AcquireError(f"--listen {spec.address},fd-name={spec.fd_name}: "
                           f"the passed socket is {item.describe()}")


def _reuseport(spec: ListenSpec, index: int, count: int,
               reused: dict[tuple[int, int | None], socket.socket]
               ) -> list[tuple[socket.socket, bool]]:
    """One socket per slot: recovered ones where there are, the rest bound
    beside them (same port, no probe: the port is ours already)."""
    count = max(count, 1)
    have = {slot: reused.pop((index, slot)) for slot in range(count) if (index, slot) in reused}
    if not have:
        return [(sock, False) for sock in bind_reuseport(spec, count)]
    extra: list[socket.socket] = []
    if len(have) < count:
        port = next(iter(have.values())).getsockname()[1]
        try:
            extra = bind_reuseport(replace(spec, port=port), count - len(have),
                                   check_free=False)
        except BaseException:
            for sock in have.values():
                sock.close()
            raise
    return [(have[slot], True) if slot in have else (extra.pop(0), False)
            for slot in range(count)]


def _file_id(path: str | None) -> tuple[int, int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if st else None


def _unlink_if_same(path: str, file_id: tuple[int, int]) -> None:
    """Remove a reused Unix socket's file, unless another took the path since."""
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == file_id:
            os.unlink(path)
    except OSError:
        pass


def bind_reuseport(spec: ListenSpec, count: int, check_free: bool = True
                   ) -> list[socket.socket]:
    """``count`` listening TCP sockets on one address with SO_REUSEPORT.

    A plain bind is tried first (``check_free``) so that a port some other
    process already serves, even with SO_REUSEPORT, is refused instead of
    silently shared. Port 0: the first socket's port is used for the rest."""
    host = spec.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    port = spec.port or 0
    socks: list[socket.socket] = []
    try:
        if port and check_free:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind((host, port))
        for _ in range(max(count, 1)):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(binder.BACKLOG)
            sock.setblocking(False)
            port = sock.getsockname()[1]
    except OSError as e:
        for sock in socks:
            sock.close()
        raise binder.ListenError(f"failed to bind {host}:{spec.port}: {e.strerror}") from None
    return socks


def _log(result: Listeners) -> None:
    for item in result.items:
        if item.slot:
            continue  # one line per reuseport group
        group = [other for other in result.items if other.spec == item.spec]
        if item.inherited:
            how = f'passed fd {item.sock.fileno()} "{item.name}"'
        elif item.slot == 0:
            how = f"{len(group)} SO_REUSEPORT sockets"
            reused = sum(1 for other in group if other.reused)
            if reused:
                how += f", {reused} of them from the fd store"
        else:
            how = "from the fd store" if item.reused else "bound"
        mode = SHARED if result.mode == REUSEPORT and item.slot is None else result.mode
        log.info("listen %s (%s, %s mode)", local_address(item.sock), how, mode)
