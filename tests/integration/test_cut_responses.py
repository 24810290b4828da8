"""A response cut short must not look complete to its client (RFC 9112 6.3
item 8, 9.6): a body delimited by the close, cut by the handler's
``cancel`` or ``error``, by a handler fault or by the drain deadline of a
stop, reaches the client as a TCP reset (a raw socket's ECONNRESET; curl's
exit status 56, "Recv failure: Connection reset by peer"), while a complete
one ends with a FIN. A chunked response cut short ends with a FIN and no
last chunk (curl: exit status 18). Condure itself closes a cut
close-delimited body with a FIN (the reference test at the end;
docs/differences-from-condure.md, "Closing").

Real processes: our condure, the scripted ZeroMQ handler
(tests/handlers/scripted_handler.py), raw TCP clients and curl.
"""

from __future__ import annotations

import select
import signal
import subprocess
import time

import pytest

from tests.harness import flows, procs
from tests.harness.http_client import connect, request

HOST = [("Host", "example.com")]
CURL_RESET = 56  # CURLE_RECV_ERROR: "Recv failure: Connection reset by peer"
CURL_PARTIAL = 18  # CURLE_PARTIAL_FILE: "transfer closed with outstanding read data remaining"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("cut-responses")) as server:
        yield server


@pytest.fixture
def srv(shared):
    yield shared.begin()
    shared.end()


def streaming(srv, version: str = "HTTP/1.0"):
    """A client whose response is under way: its head and a first part
    came, with no length (HTTP/1.0: delimited by the close; HTTP/1.1:
    chunked)."""
    c = srv.conn()
    req = srv.get(c, "/stream", version=version)
    srv.handler.reply(req, headers=[("Content-Type", "text/plain")], body=b"part", more=True)
    head = c.read_head()
    assert head.startswith(version.encode() + b" 200 OK\r\n"), head
    assert b"Content-Length" not in head
    first = b"part" if version == "HTTP/1.0" else b"4\r\npart\r\n"
    assert c.read_exact(len(first)) == first
    credit = srv.handler.recv()  # the part was written: its credits come back
    assert (credit.type, credit.id, credit["credits"]) == ("credit", req.id, 4), credit
    return c, req


CUTS = {
    "cancel": lambda h, req: h.cancel(req),
    "error": lambda h, req: h.send(req, type="error", fields=[("condition", "bad-request")]),
    "handler fault (bad seq)": lambda h, req: h.body(req, b"x", more=True, seq=9),
}


@pytest.mark.parametrize("cut", CUTS)
def test_a_cut_close_delimited_body_is_reset(srv, cut):
    c, req = streaming(srv)
    CUTS[cut](srv.handler, req)
    assert c.read_until_close() == b""
    assert c.end == "reset"
    srv.probe()


def test_a_complete_close_delimited_body_ends_with_a_fin(srv):
    c, req = streaming(srv)
    srv.handler.body(req, b" and the end")
    assert c.read_until_close() == b" and the end"
    assert c.end == "eof"


@pytest.mark.parametrize("cut", CUTS)
def test_a_cut_chunked_body_ends_without_its_last_chunk(srv, cut):
    c, req = streaming(srv, "HTTP/1.1")
    CUTS[cut](srv.handler, req)
    assert c.read_until_close() == b""
    assert c.end == "eof" and b"0\r\n\r\n" not in c.received


def test_a_refusal_of_condure_ends_with_a_fin(srv):
    c = srv.conn()
    c.send(b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n")
    response = c.read_until_close()
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n") and c.end == "eof"
    srv.handler.expect_nothing()


# -- curl ---------------------------------------------------------------------------

class Curl:
    """curl writing what it receives at once (-N), its errors to stderr."""

    def __init__(self, port: int, *args: str) -> None:
        self.proc = subprocess.Popen(
            ["curl", "-sS", "-N", "--max-time", "20", *args, f"http://127.0.0.1:{port}/curl"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = b""

    def read_until(self, data: bytes, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while data not in self.out:
            ready, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            assert ready, f"curl wrote {self.out!r}, not {data!r}"
            chunk = self.proc.stdout.read1(65536)
            assert chunk, f"curl ended after {self.out!r}"
            self.out += chunk

    def end(self) -> tuple[int, bytes, str]:
        """(exit status, everything it wrote, its stderr)."""
        rest, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, self.out + rest, err.decode()


@pytest.fixture
def curl(srv):
    started: list[Curl] = []

    def start(*args: str) -> tuple[Curl, object]:
        cl = Curl(srv.port, *args)
        started.append(cl)
        req = srv.handler.recv()
        assert req["uri"].endswith(b"/curl"), req
        srv.handler.reply(req, body=b"part", more=True)
        cl.read_until(b"part")
        assert srv.handler.recv().type == "credit"
        return cl, req
    yield start
    for cl in started:
        if cl.proc.poll() is None:
            cl.proc.kill()
        cl.proc.communicate()


def test_curl_http10_sees_a_cut_as_a_reset(srv, curl):
    cl, req = curl("--http1.0")
    srv.handler.cancel(req)
    status, out, err = cl.end()
    assert (status, out) == (CURL_RESET, b"part"), err
    assert "Connection reset by peer" in err


def test_curl_http10_sees_a_complete_body_end(srv, curl):
    cl, req = curl("--http1.0")
    srv.handler.body(req, b" and the end")
    assert cl.end() == (0, b"part and the end", "")


def test_curl_http11_sees_a_cut_chunked_body_as_partial(srv, curl):
    cl, req = curl()
    srv.handler.cancel(req)
    status, out, err = cl.end()
    assert (status, out) == (CURL_PARTIAL, b"part"), err


# -- the drain deadline of a stop -------------------------------------------------------

def test_the_drain_deadline_resets_a_cut_close_delimited_body(tmp_path):
    """SIGTERM: the responses still under way when --drain-timeout is over
    are cut; the close-delimited one with a reset, the chunked one with a
    FIN and no last chunk."""
    with flows.running(tmp_path, ["--drain-timeout", "1"]) as server:
        srv = server.begin()
        closed, _ = streaming(srv)
        chunked, _ = streaming(srv, "HTTP/1.1")
        server.condure.popen.send_signal(signal.SIGTERM)
        assert closed.read_until_close(timeout=10) == b"" and closed.end == "reset"
        assert chunked.read_until_close(timeout=10) == b"" and chunked.end == "eof"
        assert b"0\r\n\r\n" not in chunked.received
        assert server.condure.popen.wait(10) == 0
        server.close_conns()


# -- Condure --------------------------------------------------------------------------

@pytest.mark.reference
def test_condure_ends_a_cut_close_delimited_body_with_a_fin(make_condure, make_handler):
    """The reference closes it as it closes any other connection, so the
    cut cannot be told from the end (the difference this file tests)."""
    condure = make_condure("reference")
    handler = make_handler(condure)
    flows.serve_one(condure, handler)
    with connect(condure.port) as c:
        c.send(request("GET", "/stream", HOST, version="HTTP/1.0"))
        req = handler.recv()
        handler.reply(req, body=b"part", more=True)
        c.read_head()
        assert c.read_exact(4) == b"part"
        handler.cancel(req)
        assert c.read_until_close() == b"" and c.end == "eof"
    assert procs.REFERENCE_BIN in condure.popen.args[0]
