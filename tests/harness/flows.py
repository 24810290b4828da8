"""One running condure with one scripted handler, shared by many tests.

``running(workdir, extra_args)`` starts our condure (one worker) and a
scripted handler and stops both on exit. Tests that share it call
``Server.begin()`` first and ``Server.end()`` last (see the ``srv``
fixtures in tests/integration). ``begin`` sends a marker request and
discards whatever reaches the handler before it (leftovers of a test that
failed half-way); from then on packets of sessions older than the marker
(a late ``cancel``, say) are skipped instead of being taken for this
test's traffic. ``end`` closes the test's client connections and checks
the worker is still up.

``Server.probe()`` proves the worker still serves: a fresh connection, a
GET, a reply, the response. Because condure's first-packet socket keeps
order, the probe also proves that nothing was sent to the handler for
requests written before it: the probe's request must be the next packet.

``CONDURE_FLOWS_IMPL=reference`` in the environment runs these servers with
Debian's /usr/bin/condure instead, to cross-check expectations that come
from the reference (tests of documented differences then fail by design).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

from tests.harness import procs
from tests.harness.handler_client import HandlerClient, HandlerError, Pkt
from tests.harness.http_client import Conn, Response, connect, request

HOST = [("Host", "example.com")]
SILENCE = 0.3  # how long "nothing happens" is watched

_probe_numbers = itertools.count()


def id_counter(sid: str) -> int | None:
    """The per-worker counter in an id ``"<worker>-<slot>-<hex counter>"``."""
    try:
        return int(sid.rsplit("-", 1)[1], 16)
    except (IndexError, ValueError):
        return None


def id_worker(sid: str) -> str:
    """The worker part of an id (each worker counts on its own)."""
    return sid.split("-", 1)[0]


def packet_ids(pkt: Pkt) -> set[str]:
    ident = pkt.fields.get("id")
    if isinstance(ident, bytes):
        return {ident.decode()}
    if isinstance(ident, list):
        return {e.get("id").decode() for e in ident if hasattr(e, "get") and e.get("id")}
    return set()


class SharedHandler:
    """A HandlerClient that skips packets of sessions from earlier tests."""

    def __init__(self, client: HandlerClient) -> None:
        self.client = client
        self.stale: set[str] = set()
        self.current: set[str] = set()
        # per worker: sessions with a counter up to this are stale
        self.floors: dict[str, int] = {}

    def is_stale(self, sid: str) -> bool:
        counter = id_counter(sid)
        return sid in self.stale or (
            counter is not None and counter <= self.floors.get(id_worker(sid), -1))

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    def begin(self) -> None:
        self.stale |= self.current
        self.current = set()

    def recv_or_none(self, timeout: float = 3.0) -> Pkt | None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            pkt = self.client.recv_or_none(remaining)
            if pkt is None:
                return None
            ids = packet_ids(pkt)
            if ids and all(self.is_stale(sid) for sid in ids):
                continue
            self.current |= ids
            return pkt

    def recv(self, timeout: float = 3.0) -> Pkt:
        pkt = self.recv_or_none(timeout)
        if pkt is None:
            raise HandlerError(f"{self.client.name}: no packet from condure within {timeout}s")
        return pkt

    def expect_nothing(self, duration: float = SILENCE) -> None:
        pkt = self.recv_or_none(duration)
        if pkt is not None:
            raise HandlerError(f"{self.client.name}: unexpected packet {pkt!r}")


class Server:
    def __init__(self, condure: procs.CondureProcess, handler: SharedHandler,
                 workdir: Path) -> None:
        self.condure = condure
        self.handler = handler
        self.workdir = workdir
        self.conns: list[Conn] = []
        self.port = condure.port

    # -- per test ---------------------------------------------------------

    def begin(self) -> Server:
        self.handler.begin()
        path = f"/sync-{next(_probe_numbers)}"
        uri = b"http://example.com" + path.encode()
        with connect(self.port) as c:
            c.send(request("GET", path, HOST))
            while True:  # unfiltered: leftovers before the marker are dropped
                pkt = self.handler.client.recv(5.0)
                if pkt.get("uri") == uri and pkt.socket == "pull":
                    break
            counter = id_counter(pkt.id)
            if counter is not None:
                floors, worker = self.handler.floors, id_worker(pkt.id)
                floors[worker] = max(floors.get(worker, -1), counter)
            self.handler.reply(pkt, body=b"sync")
            assert c.read_response().body == b"sync"
        return self

    def end(self) -> None:
        self.close_conns()
        self.assert_healthy()

    def close_conns(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()

    # -- clients ----------------------------------------------------------

    def conn(self, timeout: float = 5.0) -> Conn:
        c = connect(self.port, timeout=timeout)
        self.conns.append(c)
        return c

    def get(self, c: Conn, path: str = "/", headers=HOST, version: str = "HTTP/1.1") -> Pkt:
        """Send a GET on ``c`` and return the request packet."""
        c.send(request("GET", path, headers, version=version))
        return self.handler.recv()

    def exchange(self, c: Conn, path: str = "/", body: bytes = b"ok") -> Response:
        """A whole GET/response cycle on ``c``."""
        req = self.get(c, path)
        assert req["uri"] == b"http://example.com" + path.encode(), req
        self.handler.reply(req, body=body)
        resp = c.read_response()
        assert resp.code == 200 and resp.body == body
        return resp

    # -- health -----------------------------------------------------------

    def assert_healthy(self) -> None:
        out = self.condure.output()
        assert self.condure.alive(), f"condure exited ({self.condure.popen.poll()}):\n{out[-3000:]}"
        assert "Traceback" not in out, f"condure logged a traceback:\n{out[-3000:]}"

    def probe(self) -> None:
        """The worker is alive, logged no traceback, and serves a fresh
        client; the probe request is the next packet the handler gets."""
        self.assert_healthy()
        path = f"/probe-{next(_probe_numbers)}"
        c = connect(self.port)
        try:
            req = self.get(c, path)
            assert req.socket == "pull" and req.seq == 0, req
            assert req["uri"] == b"http://example.com" + path.encode(), (
                f"expected the probe request, got {req!r}")
            self.handler.reply(req, body=b"alive")
            resp = c.read_response()
            assert resp.code == 200 and resp.body == b"alive", resp
        finally:
            c.close()
        self.assert_healthy()


@contextlib.contextmanager
def running(workdir: Path, extra_args=(), workers: int = 1) -> Iterator[Server]:
    """Our condure plus one scripted handler, both stopped on exit; a clean
    exit must end condure with status 0."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        impl = os.environ.get("CONDURE_FLOWS_IMPL", "ours")
        condure = procs.start_condure(impl, workdir / "condure", extra_args=list(extra_args),
                                      workers=workers)
        stack.callback(condure.stop)
        client = procs.start_handler(condure.base, workdir, sub_prefix=condure.instance_id,
                                     name="handler1")
        stack.callback(client.close)
        server = Server(condure, SharedHandler(client), workdir)
        stack.callback(server.close_conns)
        yield server
        server.close_conns()
        client.close()
        status = condure.stop()
        assert status == 0, f"condure exit status {status} after SIGTERM:\n{condure.pump.tail()}"


def serve_one(condure, handler, path: str = "/x") -> None:
    """One GET through ``condure``, answered by ``handler`` (a HandlerClient)
    with ``ok``: the endpoints and the handler are connected."""
    with connect(condure.port) as c:
        c.send(request("GET", path, HOST))
        req = handler.recv()
        assert req["uri"] == b"http://example.com" + path.encode()
        handler.reply(req, body=b"ok")
        resp = c.read_response()
        assert resp.code == 200 and resp.body == b"ok"


def assert_refused(server: Server, raw: bytes, status: int) -> Response:
    """Send ``raw`` on a new connection: condure answers ``status`` itself
    with ``Connection: close`` and closes; the handler hears nothing."""
    c = server.conn()
    c.send(raw)
    resp = c.read_response()
    assert (resp.version, resp.code) == (b"HTTP/1.1", status), (
        f"expected {status} for {raw[:120]!r}, got {resp.raw[:200]!r}")
    assert resp.header("Connection") == b"close", resp.raw
    assert resp.header("Content-Length") == str(len(resp.body)).encode(), resp.raw
    c.expect_closed()
    return resp
