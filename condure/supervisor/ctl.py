"""The control socket: the supervisor's side of ``condure ctl``.

A Unix stream socket (``--control-socket``, by default ``condure-<id>.ctl``
in the runtime directory: condure/runtime.py), mode 0600, served on the
supervisor's asyncio loop. A client that is neither root nor condure's own
user (``SO_PEERCRED``) is refused (told so in one ``{"ok": false, ...}``
line, then disconnected) and logged; so is a client beyond
:data:`CLIENTS_MAX`. Each request is one line of
JSON, ``{"command": ...}``, and gets one line of JSON back, ``{"ok": true,
...}`` or ``{"ok": false, "error": "..."}``; a client may send several.

- ``status`` is answered from what the supervisor knows: its children and
  each one's last ``stats`` message (sent every second).
- ``connections`` and ``stacks`` are asked of the workers over their
  control sockets (``list``/``stacks``, answered ``list-result``/
  ``stacks-result``); a worker that has not answered within
  :data:`ASK_TIMEOUT` is reported as such.
- ``log-level`` sets the supervisor's level and sends ``log-level`` to
  every worker; workers started later get it too (main.py).
- ``reload`` is what SIGHUP does (supervisor/reloads.py); with ``"wait":
  true`` the answer comes once the reload that covers the request is done
  (or failed, or did not end within the request's ``timeout``).

:func:`open_server` checks the path as ipc files are checked
(condure/net/ipcclaim.py) before binding it: a socket another process
accepts on is never taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any, Protocol

from condure import log as condure_log
from condure import runtime
from condure.config import Config
from condure.net import control, ipcclaim
from condure.supervisor.children import Child, State
from condure.supervisor.moves import Moves, RestartStore
from condure.supervisor.reloads import ReloadRefused, Reloads

log = logging.getLogger("condure")

ASK_TIMEOUT = 2.0  # seconds a worker has to answer connections/stacks
IDLE_TIMEOUT = 60.0  # a client that sends nothing for this long is dropped
LINE_MAX = 64 * 1024  # a request line longer than this is refused
CLIENTS_MAX = 16  # control connections served at once
WAIT_DEFAULT = 80.0  # seconds `reload --wait` waits when the request names no timeout
WAIT_MAX = 3600.0
LIMIT_DEFAULT = 100  # connections listed per request
LIMIT_MAX = 500  # per worker: the answer must fit in one control message
KINDS = ("http", "websocket", "req", "outgoing")  # what `connections --kind` can select
COMMANDS = ("status", "connections", "stacks", "log-level", "reload")
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Host(Protocol):
    """What the server uses of the supervisor (condure/supervisor/main.py)."""

    config: Config
    state: State
    moves: Moves
    stopping: str | None
    restart_store: RestartStore | None
    reloads: Reloads
    announced: bool
    wake: asyncio.Event

    def children(self) -> list[Child]: ...
    def ask_reload(self, source: str) -> tuple[int, str]: ...
    def reload_outcome(self, number: int) -> asyncio.Future[str | None]: ...


class RequestError(Exception):
    """A request that cannot be served; its text goes back to the client."""


def open_server(host: Host, config: Config) -> ControlServer | None:
    """The control socket, bound (served once :meth:`ControlServer.start`
    runs on the loop), or None for none. A stale socket file at the path is
    removed first. Raises ipcclaim.ClaimError when ``--control-socket``
    names a path that is in use or cannot be bound; a default path in use
    is left to its owner, and condure runs without (logged)."""
    given = config.control_socket is not None
    path = runtime.control_socket_path(config.id, config.control_socket)
    if path is None:
        return None
    try:
        if ipcclaim.check(path) == ipcclaim.STALE:
            os.unlink(path)
        sock = bind(path)
    except (ipcclaim.ClaimError, OSError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if given:
            raise ipcclaim.ClaimError(f"cannot use control socket {path}: {why}") from None
        log.warning("no control socket: %s: %s (see --control-socket)", path, why)
        return None
    return ControlServer(host, path, sock)


def bind(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 from the start."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(CLIENTS_MAX)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ControlServer:
    def __init__(self, host: Host, path: str, sock: socket.socket) -> None:
        self.host = host
        self.path = path
        self.sock = sock
        self.inode = os.stat(path).st_ino
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.waiting: dict[int, tuple[Child, asyncio.Future[dict[str, Any] | None]]] = {}
        self.counter = 0
        self.log_level: int | None = None  # set at runtime: for workers started later
        self.started = time.monotonic()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._client, sock=self.sock,
                                                      limit=LINE_MAX)
        log.info("control socket %s", self.path)

    async def stop(self) -> None:
        """Stop serving: no new clients, the ones connected are dropped."""
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.close()

    def close(self) -> None:
        """Remove the socket file if it is still ours (at exit)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        self.sock.close()
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)

    # -- the workers' answers (main.py's on_control and on_exit) ----------------

    def answer(self, child: Child, message: dict[str, Any]) -> None:
        entry = self.waiting.get(message.get("req"))  # type: ignore[arg-type]
        if entry is not None and entry[0] is child and not entry[1].done():
            entry[1].set_result(message)

    def child_gone(self, child: Child) -> None:
        for who, future in self.waiting.values():
            if who is child and not future.done():
                future.set_result(None)

    async def _ask(self, child: Child, message: dict[str, Any]) -> dict[str, Any] | None:
        """Ask one worker; its answer, or None (gone, or silent for
        ASK_TIMEOUT)."""
        self.counter += 1
        req = self.counter
        future: asyncio.Future[dict[str, Any] | None] = \
            asyncio.get_running_loop().create_future()
        self.waiting[req] = (child, future)
        try:
            child.outbox.send({**message, "req": req}, timeout=ASK_TIMEOUT)
            return await asyncio.wait_for(future, ASK_TIMEOUT)
        except (OSError, control.ControlError, TimeoutError):
            return None
        finally:
            del self.waiting[req]

    # -- clients ----------------------------------------------------------------

    def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            pid, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        _UCRED.size))
        except OSError:
            writer.close()
            return
        if uid not in (0, os.getuid()):
            log.warning("control socket: refused a client (pid %d, uid %d): only root and "
                        "uid %d may use it", pid, uid, os.getuid())
            refuse(writer, f"refused: uid {uid} may not use this control socket (only root "
                           "and condure's own user may)")
            return
        if len(self.tasks) >= CLIENTS_MAX:
            log.warning("control socket: %d clients already; refusing one more", CLIENTS_MAX)
            refuse(writer, f"refused: {CLIENTS_MAX} clients are using the control socket "
                           "already; try again once one is done")
            return
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
                except (TimeoutError, ValueError, ConnectionError):
                    return  # silent, a line too long, or gone
                if not line:
                    return
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise RequestError("a request is a JSON object")
                    answer = {"ok": True, **await self.handle(request)}
                except (ValueError, RequestError) as e:
                    answer = {"ok": False, "error": str(e)}
                writer.write(json.dumps(answer).encode() + b"\n")
                try:
                    await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT)
                except (TimeoutError, ConnectionError):
                    return
        finally:
            writer.close()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command == "status":
            return self.status()
        if command == "connections":
            return await self.connections(request)
        if command == "stacks":
            return await self.stacks()
        if command == "log-level":
            return self.set_log_level(request.get("level"))
        if command == "reload":
            return await self.reload(request)
        raise RequestError(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")

    # -- commands ------------------------------------------------------------------

    def _workers(self) -> list[Child]:
        return sorted(self.host.children(), key=lambda c: (c.slot, c.generation))

    def _role(self, child: Child) -> str:
        st = self.host.state
        if st.slots[child.slot] is child:
            return "current"
        return "successor" if st.successors.get(child.slot) is child else "retiring"

    def supervisor_state(self) -> str:
        host = self.host
        if host.stopping:
            return "restarting" if host.restart_store is not None else "stopping"
        if host.state.reloading:
            return "reloading"
        return "running" if host.announced else "starting"

    def status(self) -> dict[str, Any]:
        host, st = self.host, self.host.state
        now = time.monotonic()
        workers = [worker_status(c, self._role(c), st.respawns.get(c.slot, 0), now)
                   for c in self._workers()]
        return {
            "pid": os.getpid(), "id": host.config.id, "state": self.supervisor_state(),
            "log_level": self.log_level if self.log_level is not None else host.config.log_level,
            "slots": len(st.slots), "workers": workers,
            "reload": {"pending": list(st.reload_pending), "starting": sorted(st.successors)},
            "respawn_due": sorted(st.respawn_at),
            "moved": host.moves.moved, "lost": host.moves.lost,
            "closed_by_clients": host.moves.closed_by_clients,
        }

    async def connections(self, request: dict[str, Any]) -> dict[str, Any]:
        slot, kind, limit = request.get("worker"), request.get("kind"), request.get("limit")
        slots = len(self.host.state.slots)
        if slot is not None and (not isinstance(slot, int) or isinstance(slot, bool)):
            raise RequestError("worker: a slot number")
        if slot is not None and not 0 <= slot < slots:
            raise RequestError(f"worker: no slot {slot} (slots 0..{slots - 1}: --workers "
                               f"{slots})")
        if kind is not None and kind not in KINDS:
            raise RequestError(f"kind: one of {', '.join(KINDS)}")
        limit = LIMIT_DEFAULT if limit is None else limit
        if not isinstance(limit, int) or limit < 0:
            raise RequestError("limit: a number >= 0")
        limit = min(limit, LIMIT_MAX)
        targets = [c for c in self._workers()
                   if c.ready and (slot is None or c.slot == slot)]
        answers = await asyncio.gather(*(self._ask(c, {"type": "list", "kind": kind,
                                                       "limit": limit}) for c in targets))
        listed: list[dict[str, Any]] = []
        total = 0
        silent = []
        for child, answer in zip(targets, answers, strict=True):
            if answer is None or "connections" not in answer:
                silent.append({"slot": child.slot, "pid": child.pid,
                               "error": answer.get("error") if answer else
                               f"no answer within {ASK_TIMEOUT:.0f} s"})
                continue
            total += int(answer.get("total", 0))
            for entry in answer["connections"]:
                if isinstance(entry, dict):
                    listed.append({"worker": child.slot, "pid": child.pid, **entry})
        return {"connections": listed[:limit], "total": total, "unanswered": silent}

    async def stacks(self) -> dict[str, Any]:
        targets = self._workers()
        answers = await asyncio.gather(*(self._ask(c, {"type": "stacks"}) for c in targets))
        workers = []
        for child, answer in zip(targets, answers, strict=True):
            item: dict[str, Any] = {"slot": child.slot, "pid": child.pid,
                                    "role": self._role(child)}
            if answer is not None and isinstance(answer.get("stacks"), str):
                item["stacks"] = answer["stacks"]
            else:
                item["error"] = (answer or {}).get("error") or (
                    f"no answer within {ASK_TIMEOUT:.0f} s (stuck? --worker-timeout "
                    "replaces a worker that stays silent)")
            workers.append(item)
        return {"supervisor": {"pid": os.getpid(), "stacks": own_stacks()}, "workers": workers}

    def set_log_level(self, level: Any) -> dict[str, Any]:
        if not isinstance(level, int) or isinstance(level, bool) or level < 0:
            raise RequestError("level: a number >= 0 (0 error .. 4 trace)")
        condure_log.setup(level)
        self.log_level = level
        told = 0
        for child in self.host.children():
            with contextlib.suppress(OSError, control.ControlError):
                child.outbox.send({"type": "log-level", "level": level})
                told += 1
        log.info("log level %d (condure ctl)", level)
        return {"log_level": level, "workers": told}

    async def reload(self, request: dict[str, Any]) -> dict[str, Any]:
        wait, timeout = request.get("wait", False), request.get("timeout", WAIT_DEFAULT)
        if not isinstance(wait, bool):
            raise RequestError("wait: true or false")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout <= WAIT_MAX:
            raise RequestError(f"timeout: seconds, more than 0 and at most {WAIT_MAX}")
        try:
            number, how = self.host.ask_reload("condure ctl")
        except ReloadRefused as e:
            raise RequestError(str(e)) from None
        self.host.wake.set()
        if not wait:
            return {"reload": how, "number": number}
        began = time.monotonic()
        outcome = self.host.reload_outcome(number)
        try:
            failure = await asyncio.wait_for(asyncio.shield(outcome), timeout)
        except TimeoutError:
            outcome.cancel()  # (no longer waited for)
            pending = list(self.host.state.reload_pending)
            where = (f"reload {number - 1} still under way" if number > self.host.reloads.begun
                     else f"slots still to replace {pending}" if pending
                     else "replaced workers still handing over")
            raise RequestError(f"reload {number} not done within {timeout:g} s ({where}); "
                               "it goes on: see condure ctl status") from None
        if failure is not None:
            raise RequestError(failure)
        return {"reload": "done", "number": number,
                "waited": round(time.monotonic() - began, 3)}


def refuse(writer: asyncio.StreamWriter, reason: str) -> None:
    """Tell a client it is not served, in the protocol's own words (one
    ``{"ok": false, "error": ...}`` line, which ``condure ctl`` prints),
    then close: the buffered line goes out before the close."""
    with contextlib.suppress(OSError):
        writer.write(json.dumps({"ok": False, "error": reason}).encode() + b"\n")
    writer.close()


def worker_state(child: Child) -> str:
    """starting, ready, handing over, stopping or hung."""
    reported = child.stats.get("state")
    if child.hung_since is not None:
        return "hung"
    if not child.ready:
        return "starting"
    if (child.handing_over and child.handed_over is None) or reported == "handing over":
        return "handing over"
    if child.stop_deadline is not None or reported == "stopping":
        return "stopping"
    return "ready"


def worker_status(child: Child, role: str, respawns: int, now: float) -> dict[str, Any]:
    stats = child.stats
    kinds = stats.get("kinds") or {}
    queues = stats.get("queues") or {}
    return {
        "slot": child.slot, "pid": child.pid, "generation": child.generation, "role": role,
        "state": worker_state(child),
        "up": round(now - child.started, 1),
        "heard": round(now - child.heard_at, 1) if child.heard_at else None,
        "connections": {k: int(kinds.get(k, 0)) for k in ("http", "websocket", "req",
                                                          "outgoing")},
        "total": child.connections,
        "waiting": int(stats.get("waiting", 0)),
        "lag_ms": stats.get("lag_ms"),
        "queues": {"router": int(queues.get("router", 0)), "push": int(queues.get("push", 0))},
        "requests": child.requests,
        "handover": child.handed_over or stats.get("handover"),
        "respawns": respawns,
        "limits": stats.get("limits") or {},  # docs/operations.md, "Limits"
    }


def own_stacks() -> str:
    """The supervisor's own threads (its loop, the ZeroMQ relays)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(f"Thread {names.get(ident, '?')} ({ident}):\n"
                     + "".join(traceback.format_stack(frame))
                     for ident, frame in sys._current_frames().items())
