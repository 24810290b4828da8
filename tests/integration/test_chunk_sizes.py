"""Chunk sizes and chunked framing (RFC 9112 7.1) through real condure
processes, both roles by the same rules (condure/session/chunked.py):

- server role: a raw client sends a chunked request body; a size of 17 or
  more hex digits (2**64, or 5 behind leading zeros), a bare LF or a bad
  extension gets ``400 Bad Request`` with ``Connection: close`` and the
  handler a ``cancel``; 16 digits (leading zeros included) are read on;
- client role: a raw origin answers chunked; a size the server role
  refuses fails the exchange (``error`` undefined-condition in req mode,
  ``cancel`` after the head in stream mode); 16 digits are read.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from condure.zhttp.packets import Cancel, Data, Error
from tests.harness import flows
from tests.harness.flows import HOST
from tests.harness.http_client import request
from tests.integration.test_client_mode_more import started
from tests.integration.test_client_mode_origins import client_process

QUIET = 0.2
POST = request("POST", "/c", [*HOST, ("Transfer-Encoding", "chunked")])
TAIL = b"\r\nhello\r\n0\r\n\r\n"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with flows.running(tmp_path_factory.mktemp("chunk-sizes")) as server:
        yield server


@pytest.fixture
def srv(shared):
    yield shared.begin()
    shared.end()


@pytest.mark.parametrize("body", [
    b"10000000000000000" + TAIL,  # 17 digits: 2**64
    b"fffffffffffffffffff1" + TAIL,  # 20 digits
    b"00000000000000005" + TAIL,  # 17 digits, leading zeros
    b"5\nhello\r\n0\r\n\r\n",  # bare LF
    b"5\r\nhello\r\n0\n\n",  # bare LFs at the end (h11 waited for a CRLF)
    b"5;a\rb" + TAIL,  # a CR in an extension
    b"5;" + b"x" * 9000 + TAIL,  # a size line longer than the buffer (was awaited)
], ids=["17-digits", "20-digits", "17-leading-zeros", "bare-lf", "bare-lf-end", "cr-in-extension",
        "line-over-the-buffer"])
def test_server_refuses_with_400(srv, body):
    h, c = srv.handler, srv.conn()
    c.send(POST)
    req = h.recv()
    h.credit(req, 100_000)
    c.send(body)
    resp = c.read_response()
    assert resp.code == 400 and resp.header("Connection") == b"close", resp.raw
    c.expect_closed()
    packets = [h.recv()]
    if packets[0].type != "cancel":  # (a body piece before the bad framing)
        packets.append(h.recv())
    assert packets[-1].type == "cancel" and packets[-1].id == req.id, packets
    h.expect_nothing(QUIET)
    srv.probe()


@pytest.mark.parametrize("size", [b"0000000000000005", b"5", b"5 ; a = \"b;c\""],
                         ids=["16-leading-zeros", "plain", "quoted-extension"])
def test_server_reads_sizes_that_fit(srv, size):
    h, c = srv.handler, srv.conn()
    c.send(POST + size + TAIL)
    req = h.recv()
    h.credit(req, 1000)
    body = b""
    while True:
        packet = h.recv()
        body += packet.body
        if not packet.get("more"):
            break
    assert body == b"hello"
    h.reply(req, body=b"done")
    assert c.read_response().body == b"done"
    srv.probe()


def test_server_reads_on_after_the_largest_size(srv):
    """ffffffffffffffff (2**64 - 1): the chunk's data streams to the handler."""
    h, c = srv.handler, srv.conn()
    c.send(POST + b"ffffffffffffffff\r\nhello")
    req = h.recv()
    h.credit(req, 1000)
    packet = h.recv()
    assert packet.body == b"hello" and packet["more"] is True
    c.send(b" world")
    assert h.recv().body == b" world"
    h.reply(req, body=b"enough")
    assert c.read_response().body == b"enough"


# -- client role ---------------------------------------------------------------------


class RawOrigin:
    """A TCP server that answers every request on a connection with the
    same bytes (and reads nothing more than the request head)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
                data = b""
                while b"\r\n\r\n" not in data:
                    more = conn.recv(4096)
                    if not more:
                        break
                    data += more
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with client_process(tmp_path_factory.mktemp("chunk-sizes-client")) as proc:
        yield proc


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@contextlib.contextmanager
def origin(answer: bytes):
    o = RawOrigin(answer)
    try:
        yield f"http://127.0.0.1:{o.port}/"
    finally:
        o.close()


@pytest.mark.parametrize("size", [b"10000000000000000", b"00000000000000005", b"5;a\rb"],
                         ids=["17-digits", "17-leading-zeros", "cr-in-extension"])
def test_client_role_refuses_what_the_server_role_refuses(client, size):
    rid = b"bad-" + size[:20].replace(b"\r", b"r").replace(b";", b"s")
    with origin(CHUNKED + size + TAIL) as url:
        reply = client.req(rid + b"-req", url)
        assert isinstance(reply, Error) and reply.condition == b"undefined-condition", reply
        started(client.handler, rid, url)
        head = client.handler.next(rid)
        assert isinstance(head, Data) and head.code == 200 and head.more, head
        assert isinstance(client.handler.next(rid), Cancel)


def test_client_role_reads_bare_lf_no_more(client):
    with origin(CHUNKED + b"5\nhello\r\n0\r\n\r\n") as url:
        reply = client.req(b"bare-lf-req", url)
        assert isinstance(reply, Error) and reply.condition == b"undefined-condition", reply


def test_client_role_reads_sixteen_digits(client):
    """16 digits with leading zeros (Condure 1.10 and condure before
    refused more than 15)."""
    with origin(CHUNKED + b"0000000000000005" + TAIL) as url:
        reply = client.req(b"sixteen", url)
        assert isinstance(reply, Data) and reply.code == 200 and reply.body == b"hello", reply


def test_client_role_reads_on_after_the_largest_size(client):
    with origin(CHUNKED + b"ffffffffffffffff\r\nhello") as url:
        started(client.handler, b"largest", url)
        head = client.handler.next(b"largest")
        assert isinstance(head, Data) and head.code == 200 and head.more, head
        packet = client.handler.next(b"largest")
        assert isinstance(packet, Data) and packet.body == b"hello" and packet.more, packet
