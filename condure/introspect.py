"""What ``condure ctl`` sees inside one worker (docs/operations.md).

:class:`Census` runs once a second with the worker's ``stats`` message: one
pass over the connections counts them by kind, counts the sessions waiting
for a handler's first answer, and notes when each connection was first
seen (its age, to the second: no cost on the accept path).
:func:`listing` describes connections one by one for ``condure ctl
connections``; bytes each way come from the kernel (``TCP_INFO``), so
nothing is counted on the data path. :func:`stacks` is every thread's
Python stack, for ``condure ctl stacks``.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import traceback
from typing import Any

from condure.net.clientconn import ClientConn
from condure.net.conn import Conn
from condure.session.client_contract import ClientPhase
from condure.session.http import HttpSession
from condure.session.req import ReqSession
from condure.session.states import Phase
from condure.session.websocket import WebSocketSession
from condure.worker import Worker

KINDS = ("http", "websocket", "req", "outgoing")
_KIND_OF: dict[type, str] = {HttpSession: "http", WebSocketSession: "websocket",
                             ReqSession: "req"}
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, tcpi_bytes_received.
_TCP_INFO_SIZE = 256
_TCP_BYTES_AT = 120
STACKS_MAX = 64 * 1024  # characters of stacks in one answer (one control message)


def kind_of(conn: Conn) -> str:
    """http, websocket or req; ``other`` for a session ended by a bug."""
    return _KIND_OF.get(type(conn.session), "other")


def state_of(conn: Conn) -> str:
    """The session's phase in lower case (head, body, wait, active, open,
    closed), ``closing`` while the last bytes go out."""
    if conn.closing:
        return "closing"
    phase = getattr(conn.session, "state", None)
    return phase.value.lower() if isinstance(phase, Phase) else "ended"


class Census:
    """Counts for the stats message, and first-seen times (see above)."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[Conn, float]] = {}
        self.seen_out: dict[int, tuple[ClientConn, float]] = {}  # outgoing, by id()

    def count(self, worker: Worker, now: float) -> dict[str, Any]:
        kinds = dict.fromkeys(KINDS, 0)
        waiting = 0
        seen = self.seen
        fresh: dict[int, tuple[Conn, float]] = {}
        for conn in worker.slots:
            if conn is None or conn.closed:
                continue
            kind = _KIND_OF.get(type(conn.session))
            if kind is not None:
                kinds[kind] += 1
            if getattr(conn.session, "state", None) is Phase.WAIT:
                waiting += 1
            entry = seen.get(conn.slot)
            fresh[conn.slot] = entry if entry is not None and entry[0] is conn else (conn, now)
        self.seen = fresh
        kinds["outgoing"] = len(worker.clients) if worker.clients is not None else 0
        fresh_out: dict[int, tuple[ClientConn, float]] = {}
        if worker.clients is not None:
            for _rid, out in worker.clients.exchanges():
                old = self.seen_out.get(id(out))
                fresh_out[id(out)] = old if old is not None and old[0] is out else (out, now)
        self.seen_out = fresh_out
        return {"kinds": kinds, "waiting": waiting}

    def since(self, conn: Conn) -> float | None:
        entry = self.seen.get(conn.slot)
        return entry[1] if entry is not None and entry[0] is conn else None

    def since_out(self, exchange: ClientConn) -> float | None:
        entry = self.seen_out.get(id(exchange))
        return entry[1] if entry is not None and entry[0] is exchange else None


def _peer(sock: socket.socket) -> str:
    try:
        addr = sock.getpeername()
    except OSError:
        return "?"
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "unix"


def _tcp_bytes(sock: socket.socket) -> tuple[int | None, int | None]:
    """(in, out) as the kernel counts them: bytes received, bytes the client
    acknowledged. None for Unix sockets."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None, None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None, None
    if len(info) < _TCP_BYTES_AT + 16:
        return None, None
    acked, received = struct.unpack_from("<QQ", info, _TCP_BYTES_AT)
    return received, acked


def describe(conn: Conn, since: float | None, now: float) -> dict[str, Any]:
    bytes_in, bytes_out = _tcp_bytes(conn.sock)
    rid = getattr(conn.session, "rid", b"")
    return {
        "slot": conn.slot,
        "id": rid.decode("utf-8", "replace") if isinstance(rid, bytes) else "",
        "peer": _peer(conn.sock),
        "age": round(now - since, 1) if since is not None else 0.0,
        "kind": kind_of(conn),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "state": state_of(conn),
        "tls": conn.tls is not None,
    }


def describe_outgoing(rid: bytes, conn: ClientConn, since: float | None,
                      now: float) -> dict[str, Any]:
    """An exchange of the client role: its origin connection, once it has one."""
    origin = conn.origin
    sock = origin.sock if origin is not None else None
    bytes_in, bytes_out = _tcp_bytes(sock) if sock is not None else (None, None)
    phase = getattr(conn.session, "phase", None)
    return {
        "slot": "-",
        "id": rid.decode("utf-8", "replace"),
        "peer": _peer(sock) if sock is not None else "-",
        "age": round(now - since, 1) if since is not None else 0.0,
        "kind": "outgoing",
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "state": phase.value.lower() if isinstance(phase, ClientPhase) else "ended",
        "tls": origin is not None and origin.tls is not None,
    }


def listing(worker: Worker, census: Census, kind: str | None, limit: int,
            now: float) -> tuple[list[dict[str, Any]], int]:
    """Up to ``limit`` connections (of ``kind`` when given) described, and
    how many there are; outgoing exchanges (the client role) after the
    client connections."""
    out: list[dict[str, Any]] = []
    total = 0
    for conn in worker.slots:
        if conn is None or conn.closed or (kind is not None and kind_of(conn) != kind):
            continue
        total += 1
        if len(out) < limit:
            out.append(describe(conn, census.since(conn), now))
    if worker.clients is not None and kind in (None, "outgoing"):
        for rid, exchange in worker.clients.exchanges():
            if exchange.closed:
                continue
            total += 1
            if len(out) < limit:
                out.append(describe_outgoing(rid, exchange, census.since_out(exchange), now))
    return out, total


def stacks() -> str:
    """Every Python thread's stack, innermost call last, as text."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"Thread {names.get(ident, '?')} ({ident}):\n"
                     + "".join(traceback.format_stack(frame)))
    text = "\n".join(parts)
    if len(text) > STACKS_MAX:
        text = text[:STACKS_MAX] + "\n... (cut)\n"
    return text
