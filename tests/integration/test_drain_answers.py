"""No request goes unanswered when condure gives up on it, and no complete
response loses its tail to a later cut.

- A request still waiting for its handler when ``--drain-timeout`` runs
  out (a stop, SIGTERM; or a reload, SIGHUP, whose handover could not
  move it) gets ``503 Service Unavailable`` with ``Connection: close``;
  the handler gets its ``cancel`` when it is known. A WebSocket upgrade
  still waiting for its handler gets the same (no 101 went out). Condure
  1.9.1 closes such connections without a word (curl: "Empty reply from
  server"; docs/differences-from-condure.md, "Closing").
- A response complete before the next, pipelined request on its
  connection is cancelled by its handler reaches a slow client whole.

Real processes: our condure, the scripted ZeroMQ handler
(tests/handlers/scripted_handler.py), raw TCP clients and curl.
"""

from __future__ import annotations

import signal
import socket
import subprocess

from tests.harness import flows
from tests.harness.http_client import request

HOST = [("Host", "example.com")]
UPGRADE = [("Host", "example.com"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
           ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]
BIG = 4_000_000  # more than the kernel buffers (4 MiB at most) take for a slow client


def curl(port: int, path: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["curl", "-sS", "-i", "--max-time", "20", f"http://127.0.0.1:{port}{path}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def assert_503(response: bytes) -> None:
    assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), response
    assert b"\r\nConnection: close\r\n" in response, response


def waiting_clients(srv: flows.Server, known: bool):
    """Clients waiting for their handler: a raw one whose request it has
    not answered, a WebSocket upgrade it has not answered, curl, and
    (``known``) one whose request it took up (a keep-alive: it is known,
    no response yet); (clients, curl, that request)."""
    unknown = srv.conn()
    srv.get(unknown, "/unknown")
    ws = srv.conn()
    ws.send(request("GET", "/ws", UPGRADE))
    assert srv.handler.recv()["uri"] == b"ws://example.com/ws"
    clients = [unknown, ws]
    req = None
    if known:
        c = srv.conn()
        req = srv.get(c, "/known")
        srv.handler.keep_alive(req)
        clients.append(c)
    cl = curl(srv.port, "/curl")
    assert srv.handler.recv()["uri"].endswith(b"/curl")
    return clients, cl, req


def assert_all_answered(clients, cl: subprocess.Popen) -> None:
    for c in clients:
        assert_503(c.read_until_close(timeout=15))
        assert c.end == "eof"
    out, err = cl.communicate(timeout=15)
    assert cl.returncode == 0, err
    assert_503(out)


def test_a_stop_answers_what_waits_at_the_drain_deadline_with_503(tmp_path):
    with flows.running(tmp_path, ["--drain-timeout", "1"]) as server:
        srv = server.begin()
        clients, cl, req = waiting_clients(srv, known=True)
        server.condure.popen.send_signal(signal.SIGTERM)
        assert_all_answered(clients, cl)
        cancels = [p for p in iter(lambda: srv.handler.recv_or_none(3.0), None)
                   if p.type == "cancel"]
        assert [p.id for p in cancels] == [req.id]  # the handler known
        assert server.condure.popen.wait(10) == 0
        server.close_conns()


def test_a_reload_answers_what_it_cannot_move_with_503(tmp_path):
    """A request the handler took up moves to the new worker (a held
    long-poll, docs/handover.md); those still waiting for its first
    packet cannot, and are answered at the drain deadline."""
    with flows.running(tmp_path, ["--drain-timeout", "1"]) as server:
        srv = server.begin()
        clients, cl, _ = waiting_clients(srv, known=False)
        server.condure.popen.send_signal(signal.SIGHUP)
        assert_all_answered(clients, cl)
        server.close_conns()
        srv.probe()  # the new worker serves


def test_a_cancelled_pipelined_request_leaves_the_earlier_response_whole(tmp_path):
    with flows.running(tmp_path, ["--buffer-size", str(BIG + 4096)]) as server:
        srv = server.begin()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow client
        sock.settimeout(10)
        sock.connect(("127.0.0.1", srv.port))
        try:
            sock.sendall(request("GET", "/first", HOST) + request("GET", "/second", HOST))
            first = srv.handler.recv()
            srv.handler.reply(first, headers=[("Content-Type", "text/plain")], body=b"x" * BIG)
            second = srv.handler.recv()  # the first response is complete
            assert second["uri"].endswith(b"/second"), second
            srv.handler.cancel(second)
            srv.handler.expect_nothing(0.3)  # (the cancel arrived; the client read nothing)
            got = bytearray()
            while data := sock.recv(65536):
                got += data
        finally:
            sock.close()
        head, _, body = bytes(got).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: %d" % BIG in head
        assert len(body) == BIG
        srv.probe()
