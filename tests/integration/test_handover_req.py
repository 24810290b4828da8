"""Req-mode keep-alive connections (``--listen PORT,req``) across a reload
(SIGHUP) and a restart under systemd: an idle one moves to the new
process and serves its next request on the same connection (the client's
port unchanged, no reconnect); a request under way when the reload begins
is answered as usual (kept alive), then the connection moves
(docs/handover.md).

A real condure, the scripted req handler (a ROUTER facing condure's
DEALER, in its own process: tests/harness/req_handler.py), raw keep-alive
clients; the restart runs under a real systemd booted in private
namespaces (tests/harness/systemd_ns.py).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.harness import procs
from tests.harness.http_client import Conn
from tests.harness.req_handler import ReqHandlerClient, start_req_handler
from tests.harness.systemd_ns import SystemdNamespace, project_units, unavailable_reason
from tests.integration.test_handover import (
    Condure,
    fixture_start,  # noqa: F401 - the fixture 'start': pytest finds it here
)


def req_condure(start, tmp_path: Path, *args: str) -> tuple[Condure, ReqHandlerClient]:
    endpoint = f"ipc://{tmp_path}/req"
    condure = start("--zclient-req", endpoint, *args, listen=("127.0.0.1:{port},req",))
    return condure, start_req_handler(endpoint, tmp_path)


def get(conn: Conn, path: str) -> None:
    conn.send(b"GET %s HTTP/1.1\r\nHost: example.com\r\n\r\n" % path.encode())


def answered(conn: Conn, h: ReqHandlerClient, path: str, body: bytes,
             timeout: float = 5.0) -> None:
    """The handler gets the request for ``path`` from this very connection
    (its port) and answers; the client reads the answer, kept alive."""
    req = h.recv(timeout)
    assert req["uri"] == b"http://example.com" + path.encode(), req
    assert req["peer-port"] == conn.sock.getsockname()[1], req
    h.req_reply(req, body=body)
    resp = conn.read_response(timeout=timeout)
    assert (resp.code, resp.body) == (200, body), resp
    assert resp.header("Connection") is None, resp.raw


def test_an_idle_req_connection_moves_on_a_reload(start, tmp_path):
    condure, h = req_condure(start, tmp_path)
    try:
        with Conn(condure.port) as conn:
            get(conn, "/first")
            answered(conn, h, "/first", b"one")
            # the old worker has handed over and exited when this returns
            assert condure.reload() == [(1, 0, 0)]
            get(conn, "/second")
            answered(conn, h, "/second", b"two")
            assert conn.end is None
            with Conn(condure.port) as fresh:  # (the new worker serves new clients too)
                get(fresh, "/fresh")
                answered(fresh, h, "/fresh", b"three")
    finally:
        h.close()
    assert "cannot adopt" not in condure.log()


def test_a_req_connection_waiting_for_its_handler_moves_once_answered(start, tmp_path):
    """The reload finds a request waiting for its handler and a pipelined
    one behind it: the first is answered by the old worker, kept alive (no
    ``Connection: close``); the second is not started there but moves with
    the connection and is served by the new worker."""
    condure, h = req_condure(start, tmp_path)
    try:
        with Conn(condure.port) as conn:
            get(conn, "/first")
            first = h.recv()
            get(conn, "/second")  # read and kept by the old worker
            done = len(condure.handovers())
            condure.proc.popen.send_signal(signal.SIGHUP)
            condure.wait_log(lambda: "handover begins" in condure.log())
            h.expect_nothing(0.3)  # (the second request is not started)
            h.req_reply(first, body=b"one")
            resp = conn.read_response(timeout=5)
            assert (resp.code, resp.body) == (200, b"one"), resp
            assert resp.header("Connection") is None, resp.raw
            condure.wait_log(lambda: len(condure.handovers()) > done)
            assert condure.handovers()[done:] == [(1, 0, 0)]
            answered(conn, h, "/second", b"two")
            get(conn, "/third")
            answered(conn, h, "/third", b"three")
            assert conn.end is None
    finally:
        h.close()


# -- a restart under systemd ----------------------------------------------------------

@pytest.mark.systemd
@pytest.mark.skipif(unavailable_reason() is not None,
                    reason=f"cannot boot systemd: {unavailable_reason()}")
def test_an_idle_req_connection_moves_through_a_restart(tmp_path):
    """`systemctl restart`: the idle connection goes through systemd's fd
    store to the new condure, which serves its next request; the client
    neither reconnects nor notices (the handler sees the same client port)."""
    port = procs.free_port()
    endpoint = f"ipc://{tmp_path}/req"
    args = ["--workers", "2", "--listen", "fd-name=http,req", "--zclient-req", endpoint,
            "--drain-timeout", "5"]
    ns = SystemdNamespace(tmp_path, project_units(tmp_path, port, args,
                                                  {("Service", "TimeoutStopSec"): ["60"]}))
    h = None
    try:
        ns.start()
        ns.systemctl("start", "condure.socket")
        ns.systemctl("start", "condure.service")
        h = start_req_handler(endpoint, tmp_path)
        with Conn(port, timeout=10) as conn:
            get(conn, "/first")
            answered(conn, h, "/first", b"one", timeout=10)
            ns.systemctl("restart", "condure.service", timeout=60)
            journal = ns.journal("condure.service")
            assert "handover: 1 connections moved, 0 closed, 0 lost" in journal, journal[-4000:]
            get(conn, "/second")
            answered(conn, h, "/second", b"two", timeout=10)
            assert conn.end is None
        journal = ns.journal("condure.service")
        assert "restart: 1 connections adopted, 0 lost" in journal, journal[-4000:]
        assert "cannot adopt" not in journal, journal[-4000:]
    except BaseException:
        print(ns.journal("condure.service")[-20000:])
        raise
    finally:
        if h is not None:
            h.close()
        ns.stop()
