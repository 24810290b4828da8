"""The adapter performs the session's reset: a response cut short whose
body is delimited by the close reaches its client as a TCP reset
(ECONNRESET), not as an end that makes it look complete; a complete one,
and a cut one whose framing shows the cut (chunked: no last chunk), end
with a FIN. That holds for every way the adapter ends a connection: the
session's Close, the worker's stop (the drain deadline, a fast stop), a
session that raised, and a graceful close given up on a client that reads
nothing; and while part of the response still waits in the adapter.

A real :class:`condure.worker.Worker` on a real event loop serves real TCP
connections on loopback (a Unix socket pair has no reset); its ZeroMQ side
is the I/O seam, a recorder of the packets it would send.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from condure.config import Config
from condure.net import conn_end as conn_module
from condure.net.conn import Conn
from condure.worker import Worker
from condure.zhttp import encode
from condure.zhttp.packets import Cancel, Data, Ident
from tests.unit.test_fault_containment import ZmqRecorder, break_method

HANDLER = b"handler1"
GET10 = b"GET /s HTTP/1.0\r\nHost: e\r\n\r\n"
GET11 = b"GET /s HTTP/1.1\r\nHost: e\r\n\r\n"
SMALL = 4096  # kernel buffer sizes that leave a response waiting in the adapter
BIG = 60000  # a body part more than they hold (within the credits: --buffer-size 64 KiB)


class Client:
    """One client connection and the request the handler got from it."""

    def __init__(self, sock: socket.socket, conn: Conn, rid: bytes) -> None:
        self.sock = sock
        self.conn = conn
        self.rid = rid
        self.seq = 0  # the handler's next seq for this request


class Rig:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.worker = Worker(Config(stream_maxconn=8, workers=1, buffer_size=65536),
                             self.loop)
        self.zmq = self.worker.zmq = ZmqRecorder()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.socks: list[socket.socket] = []
        self.settling: asyncio.Task | None = None

    def connect(self, request: bytes, small: bool = False) -> Client:
        sock = socket.socket()
        self.socks.append(sock)
        if small:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
        sock.connect(self.listener.getsockname())
        ours, _ = self.listener.accept()
        if small:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
        fd = ours.fileno()
        assert self.worker.adopt_connection(ours, 0)
        [conn] = [c for c in self.worker.slots if c is not None and c.fd == fd]
        before = len(self.zmq.first)
        sock.sendall(request)
        self.until(lambda: len(self.zmq.first) > before)
        return Client(sock, conn, self.zmq.first[-1].ids[0].id)

    def handler(self, client: Client, kind: type = Data, **fields: object) -> None:
        """The handler sends a packet for ``client``'s request."""
        ident = Ident(client.rid, client.seq)
        client.seq += 1
        self.worker.on_message(encode(kind(from_=HANDLER, ids=(ident,), **fields)))

    def until(self, predicate, timeout: float = 3.0) -> None:
        async def wait() -> None:
            while not predicate():
                await asyncio.sleep(0.005)
        self.loop.run_until_complete(asyncio.wait_for(wait(), timeout))

    def read(self, client: Client, until: bytes | None = None) -> tuple[bytes, str | None]:
        """What the client reads (while the worker's loop runs) until
        ``until`` has come, or else to its end: (bytes, "eof" or "reset";
        None when it stopped at ``until``)."""
        sock = client.sock
        sock.setblocking(False)
        got = bytearray()

        async def read() -> str | None:
            while until is None or until not in got:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    await asyncio.sleep(0.005)
                    continue
                except ConnectionResetError:
                    return "reset"
                if not data:
                    return "eof"
                got.extend(data)
            return None
        end = self.loop.run_until_complete(asyncio.wait_for(read(), 3.0))
        return bytes(got), end

    def stop(self) -> None:
        """The worker's stop, carried on while the test reads
        (``Worker.settle``, as the worker process runs it)."""
        self.worker.stop()
        self.settling = self.loop.create_task(self.worker.settle(1.0))

    def close(self) -> None:
        if self.settling is not None and not self.settling.done():
            self.settling.cancel()
            self.loop.run_until_complete(asyncio.gather(self.settling, return_exceptions=True))
        for conn in self.worker.live_connections():
            conn.give_up()
        for sock in [*self.socks, self.listener]:
            sock.close()
        self.loop.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def streaming(rig: Rig, request: bytes, small: bool = False) -> Client:
    """A response under way whose first part reached the client."""
    c = rig.connect(request, small)
    rig.handler(c, code=200, reason=b"OK", body=b"part", more=True)
    part = b"\r\n\r\npart" if request == GET10 else b"\r\n\r\n4\r\npart\r\n"
    got, _ = rig.read(c, until=part)
    assert got.endswith(part), got
    return c


def test_a_cut_close_delimited_response_is_reset(rig):
    c = streaming(rig, GET10)
    rig.handler(c, Cancel)
    assert rig.read(c) == (b"", "reset")
    assert rig.worker.counts["stream"] == 0


def test_a_complete_close_delimited_response_ends_with_a_fin(rig):
    c = streaming(rig, GET10)
    rig.handler(c, body=b" and the end")
    assert rig.read(c) == (b" and the end", "eof")


def test_a_cut_chunked_response_ends_with_a_fin_and_no_last_chunk(rig):
    c = streaming(rig, GET11)
    rig.handler(c, Cancel)
    assert rig.read(c) == (b"", "eof")


@pytest.mark.parametrize("request_bytes, end", [(GET10, "reset"), (GET11, "eof")])
def test_a_cut_of_a_response_partly_written(rig, request_bytes, end):
    """Part of the response still waits in the adapter (the client is slow)
    when the handler cancels: what waits is dropped, and the end is the
    same as for a response written whole."""
    c = streaming(rig, request_bytes, small=True)
    rig.handler(c, body=b"x" * BIG, more=True)
    assert c.conn.out, "the small buffers should have left output waiting"
    rig.handler(c, Cancel)
    got, how = rig.read(c)
    assert how == end and len(got) < BIG
    assert not got.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize("request_bytes, end", [(GET10, "reset"), (GET11, "eof")])
def test_a_stop_cuts_a_response_as_the_session_says(rig, request_bytes, end):
    """The worker's stop (a fast stop, or the drain deadline): every handler
    gets its cancel, every connection is dropped, a close-delimited
    response under way with a reset."""
    c = streaming(rig, request_bytes)
    rig.stop()
    assert rig.zmq.ids_of(Cancel) == [c.rid]
    assert rig.read(c) == (b"", end)


def test_a_stop_ends_a_finished_connection_with_a_fin(rig):
    c = rig.connect(GET11)
    rig.handler(c, code=200, reason=b"OK", body=b"whole")
    got, _ = rig.read(c, until=b"whole")
    assert got.endswith(b"\r\n\r\nwhole")
    rig.stop()
    assert rig.read(c) == (b"", "eof")


@pytest.mark.parametrize("request_bytes, end", [(GET10, "reset"), (GET11, "eof")])
def test_a_session_that_raises_mid_response(rig, request_bytes, end, caplog):
    """A bug in condure costs the connection; a close-delimited response it
    cuts ends with a reset (failure.cut_unmarked)."""
    c = streaming(rig, request_bytes)
    break_method(c.conn.session, "receive_packet")
    rig.handler(c, body=b"more", more=True)
    assert rig.read(c) == (b"", end)
    assert rig.zmq.ids_of(Cancel) == [c.rid]


def test_a_graceful_close_given_up_is_a_reset(rig, monkeypatch):
    """A complete close-delimited response waits in the adapter for a
    client that takes nothing: when the adapter gives up (after
    CLOSE_FLUSH_TIMEOUT) what is left is lost, and a FIN would make the
    part the client got look complete."""
    monkeypatch.setattr(conn_module, "CLOSE_FLUSH_TIMEOUT", 0.2)
    c = rig.connect(GET10, small=True)
    rig.handler(c, code=200, reason=b"OK", body=b"x" * BIG, more=True)
    rig.handler(c, body=b"")
    assert c.conn.closing and c.conn.out, "the response's end should wait in the adapter"

    async def expire_until_closed() -> None:
        while not c.conn.closed:
            rig.worker.timers.expire(time.monotonic(), lambda conn: conn.on_timer())
            await asyncio.sleep(0.05)
    rig.loop.run_until_complete(asyncio.wait_for(expire_until_closed(), 5))
    got, end = rig.read(c)
    assert end == "reset" and len(got) < BIG
