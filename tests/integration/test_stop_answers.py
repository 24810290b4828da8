"""What clients get when condure stops: its last words, whole, then an
end that is no reset, within a bound (docs/restarts.md, "What a stop
writes").

- A client that reads slowly gets all of a response that was complete
  and then the 503 of its pipelined request given up on at the drain
  deadline (SIGTERM).
- A client whose input condure did not read (an upload the handler did
  not ask for; pipelined requests beyond what condure reads ahead) still
  gets its 503 and an end, with no reset: condure reads and discards
  until the client's end (RFC 9112 9.6). curl uploading gets the 503.
- A request head partly received at the stop gets a 503.
- An open WebSocket gets close 1001 on the fast stop (SIGINT); the
  ``websockets`` client reports 1001, not 1006, and the handler gets its
  ``cancel``.
- A client that never reads and never closes does not hold the stop:
  condure exits, and that client's unsent output ends with a reset.

Real processes: our condure, the scripted ZeroMQ handler
(tests/handlers/scripted_handler.py), raw TCP clients, curl and the
``websockets`` library client.
"""

from __future__ import annotations

import signal
import socket
import subprocess

import pytest
from websockets.exceptions import ConnectionClosed

from tests.harness import flows
from tests.harness import ws_scenarios as W
from tests.harness.http_client import Conn, request

HOST = [("Host", "example.com")]
BIG = 4_000_000  # more than the kernel buffers (4 MiB at most) take for a slow client
UPLOAD = 16_000_000  # a body far larger than those buffers
DRAIN = ["--drain-timeout", "1"]


def is_503(data: bytes) -> bool:
    return (data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            and b"\r\nConnection: close\r\n" in data.partition(b"\r\n\r\n")[0] + b"\r\n")


def cancels(h: flows.SharedHandler, timeout: float = 10.0) -> list[str]:
    """The ids of the cancels the handler gets until it hears nothing more."""
    got = []
    while (p := h.recv_or_none(timeout)) is not None:
        if p.type == "cancel":
            got.append(p.id)
            timeout = 0.5
    return got


def slow_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def read_to_end(sock: socket.socket) -> tuple[bytes, str]:
    got = bytearray()
    try:
        while data := sock.recv(65536):
            got += data
    except ConnectionResetError:
        return bytes(got), "reset"
    return bytes(got), "eof"


def test_a_slow_reader_gets_the_owed_response_and_its_503_whole(tmp_path):
    """The first response (4 MB, complete) still waits in condure for a
    client that has read nothing; its pipelined second request waits for
    its handler. At the drain deadline the client reads all of the first
    response, then the 503, then the end. (Before: one write of what the
    kernel took, then the close: a truncated first response, no 503.)"""
    with flows.running(tmp_path, ["--buffer-size", str(BIG + 4096), *DRAIN]) as server:
        srv = server.begin()
        h = srv.handler
        sock = slow_socket(srv.port)
        try:
            sock.sendall(request("GET", "/first", HOST) + request("GET", "/second", HOST))
            first = h.recv()
            h.reply(first, headers=[("Content-Type", "text/plain")], body=b"x" * BIG)
            second = h.recv()
            h.keep_alive(second)  # (known: it gets a cancel)
            srv.exchange(srv.conn(), "/after")  # (the worker has the keep-alive)
            server.condure.popen.send_signal(signal.SIGTERM)
            assert cancels(h) == [second.id]  # the worker stopped; the client reads only now
            got, end = read_to_end(sock)
        finally:
            sock.close()
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: %d" % BIG in head
        assert rest[:BIG] == b"x" * BIG
        assert is_503(rest[BIG:]), rest[BIG:BIG + 200]
        assert end == "eof"
        assert server.condure.popen.wait(10) == 0


def send_all_then_read(sock: socket.socket, data: bytes) -> tuple[bytes, str, str | None]:
    """A client that sends everything it has, then reads: what it read,
    how the connection ended, and the error its sending met (None: all of
    it went)."""
    error = None
    try:
        sock.sendall(data)
    except OSError as e:
        error = type(e).__name__
    got, end = read_to_end(sock)
    return got, end, error


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_pipelined_requests_condure_did_not_read_still_get_the_503_and_no_reset(tmp_path, stop):
    """The client pipelines far more requests than condure reads ahead
    (it reads on only while a request waits, up to its buffer), then reads.
    The first waits for its handler when condure stops: the client's
    sending meets no reset, and it reads the 503 and the end. (Before: a
    few reads of its input were discarded, then the close with input
    unread, a reset: the client's sending failed with ECONNRESET or
    EPIPE.)"""
    with flows.running(tmp_path, DRAIN) as server:
        srv = server.begin()
        h = srv.handler
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        try:
            one = request("GET", "/p", HOST)
            sock.sendall(one)
            req = h.recv()
            h.keep_alive(req)
            srv.exchange(srv.conn(), "/after")  # (the worker has the keep-alive)
            server.condure.popen.send_signal(getattr(signal, stop))
            got, end, error = send_all_then_read(sock, one * (UPLOAD // len(one)))
        finally:
            sock.close()
        assert is_503(got), got[:200]
        assert (end, error) == ("eof", None)
        assert cancels(h) == [req.id]
        assert server.condure.popen.wait(10) == 0


def test_curl_uploading_gets_the_503(tmp_path):
    """curl sends a 16 MB body whose request the handler never answers
    (nor asks for the body): at the drain deadline it gets the 503 and
    exits 0. (curl got it before too: on loopback the reset came after
    the 503 had arrived, and curl stops at the 503's Content-Length; the
    raw client above is the one that met the reset.)"""
    body = tmp_path / "body"
    body.write_bytes(b"u" * UPLOAD)
    with flows.running(tmp_path / "run", DRAIN) as server:
        srv = server.begin()
        h = srv.handler
        cl = subprocess.Popen(
            ["curl", "-sS", "-i", "--max-time", "20", "--data-binary", f"@{body}",
             "-H", "Expect:", f"http://127.0.0.1:{srv.port}/up"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            req = h.recv()
            assert req["uri"].endswith(b"/up")
            server.condure.popen.send_signal(signal.SIGTERM)
            out, err = cl.communicate(timeout=20)
        finally:
            if cl.poll() is None:
                cl.kill()
                cl.wait()
        assert cl.returncode == 0, err
        assert is_503(out), out[:300]
        assert server.condure.popen.wait(10) == 0


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_a_request_head_partly_received_gets_a_503(tmp_path, stop):
    """(Before: the end, nothing else.) An idle connection is just closed."""
    with flows.running(tmp_path, DRAIN) as server:
        srv = server.begin()
        half = Conn(srv.port, timeout=10)
        idle = Conn(srv.port, timeout=10)
        try:
            half.send(b"GET /half HTTP/1.1\r\nHost: example.com\r\nX-Half: ")
            srv.exchange(srv.conn(), "/after")  # (the worker has read what came first)
            server.condure.popen.send_signal(getattr(signal, stop))
            got = half.read_until_close()
            assert is_503(got), got
            assert half.end == "eof"
            assert idle.expect_closed() == "eof"
        finally:
            half.close()
            idle.close()
        assert server.condure.popen.wait(10) == 0


def test_a_fast_stop_sends_open_websockets_close_1001(tmp_path):
    """SIGINT (the fast stop): the ``websockets`` client gets close 1001
    (going away, as on a graceful stop), not an end without a close frame
    (1006); the handler gets its cancel."""
    with flows.running(tmp_path, DRAIN) as server:
        srv = server.begin()
        h = srv.handler
        conn, req = W.lib_open(h, srv.port)
        try:
            conn.send("hi")
            W.expect_packet(h, content_type=b"text", body=b"hi")
            W.message(h, req, b"there")
            assert conn.recv(5) == "there"
            server.condure.popen.send_signal(signal.SIGINT)
            with pytest.raises(ConnectionClosed):
                conn.recv(10)
            assert conn.close_code == 1001
        finally:
            W.lib_closer(conn)()
        assert req.id in cancels(h)
        assert server.condure.popen.wait(10) == 0


def test_a_client_that_never_reads_does_not_hold_the_stop(tmp_path):
    """A client that reads nothing of a complete 4 MB response and never
    closes: the fast stop ends all the same (within the stop's bound,
    2 s, long before the supervisor's 12 s kill), and that client's end
    is a reset (what it was owed and never took is lost)."""
    with flows.running(tmp_path, ["--buffer-size", str(BIG + 4096), *DRAIN]) as server:
        srv = server.begin()
        h = srv.handler
        sock = slow_socket(srv.port)
        try:
            sock.sendall(request("GET", "/never", HOST))
            h.reply(h.recv(), headers=[("Content-Type", "text/plain")], body=b"x" * BIG)
            srv.exchange(srv.conn(), "/after")  # (the response went to the worker)
            server.condure.popen.send_signal(signal.SIGINT)
            assert server.condure.popen.wait(10) == 0
            out = server.condure.output()
            assert "SIGKILL" not in out and "killed" not in out, out[-2000:]
            got, end = read_to_end(sock)
        finally:
            sock.close()
        assert len(got) < BIG and end == "reset"
