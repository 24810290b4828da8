"""What a client gets when the worker stops (a fast stop, the end of a
stop's or a reload's drain): its last words delivered whole, then a close
that is no reset, within the stop's bound (condure/net/conn_stop.py).

- A 503 behind an owed response larger than the socket buffers, to a
  client that reads slowly, arrives whole.
- A client whose upload condure has not read gets its 503 and an end,
  not a reset (RFC 9112 9.6: condure reads and discards until the
  client's end).
- A request head partly received gets a 503; an idle connection, or one
  that sent only the empty lines a server ignores, is just closed.
- An open WebSocket gets close 1001 and its handler a cancel.
- A client that never reads holds the stop no longer than the bound.

The rig of test_conn_cuts: a real :class:`condure.worker.Worker` on a
real event loop with real TCP connections on loopback; its ZeroMQ side
is the I/O seam, a recorder of the packets it would send. ``Rig.stop``
runs the worker's stop and then ``Worker.settle`` as the worker process
does, while the test's client reads.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios

import pytest

from condure.net import conn_stop
from condure.zhttp.packets import Cancel, Data, KeepAlive
from tests.unit.test_conn_cuts import BIG, GET11, Client, Rig
from tests.unit.test_conn_owed import HEAD, WS_UPGRADE, first_answered

UPLOAD = 8_000_000  # more than the kernel buffers hold between client and worker


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def is_503(got: bytes) -> bool:
    return (got.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            and b"\r\nConnection: close\r\n" in got)


def test_an_owed_response_larger_than_the_buffers_then_the_503_arrive_whole(rig):
    """The first response (BIG bytes, most of them still waiting in the
    adapter for a slow client) is complete; the pipelined second request
    waits for its handler when the worker stops: the client reads all of
    the first, then the 503, then the end. (Before: one write of what the
    kernel took, then the close: the client read a few KiB of the first
    response and an end.)"""
    second = first_answered(rig, GET11 + GET11.replace(b"/s", b"/t"))
    rig.stop()
    got, end = rig.read(second)
    assert got.startswith(HEAD + b"x" * BIG)
    assert is_503(got[len(HEAD) + BIG:]) and end == "eof"


def upload_then_read(rig: Rig, c: Client) -> tuple[bytes, str, str | None]:
    """The client goes on sending its body while it reads (as curl does):
    what it read, how it ended ("eof" or "reset"), and the error its
    sending met, if any (a reset: condure closed with its input unread)."""
    sock = c.sock
    sock.setblocking(False)
    got = bytearray()
    left = [UPLOAD]
    error: list[str] = []
    chunk = b"u" * 65536

    async def run() -> str:
        while True:
            if left[0] > 0:
                try:
                    left[0] -= sock.send(chunk[:left[0]])
                except BlockingIOError:
                    pass
                except OSError as e:
                    error.append(type(e).__name__)
                    left[0] = 0  # (it stops sending, and reads)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(0.002)
                continue
            except ConnectionResetError:
                return "reset"
            if not data:
                if left[0] > 0:  # (our end came; the rest of the body goes too)
                    await asyncio.sleep(0.002)
                    continue
                return "eof"
            got.extend(data)
    end = rig.loop.run_until_complete(asyncio.wait_for(run(), 5.0))
    return bytes(got), end, error[0] if error else None


def test_an_upload_condure_did_not_read_gets_its_503_and_no_reset(rig):
    """The handler took the request up and has not asked for its body:
    the client's body fills the kernel's buffers, unread. At the stop the
    client gets the 503 and an end while it is still sending, and condure
    reads and discards the rest of the body until the client's end: no
    reset, which on a real network can overtake the 503 or, at the client,
    destroy it unread (RFC 9112 9.6). (Before: the 503 went out, a few
    reads were discarded, then the close with input unread: the client's
    next send met a reset.)"""
    head = b"POST /up HTTP/1.1\r\nHost: e\r\nContent-Length: %d\r\n\r\n" % UPLOAD
    c = rig.connect(head)
    rig.handler(c, KeepAlive)  # (known, no credits: the body stays unread)
    c.sock.setblocking(False)
    try:
        while True:
            c.sock.send(b"u" * 65536)
    except BlockingIOError:
        pass  # the buffers are full
    rig.stop()
    got, end, error = upload_then_read(rig, c)
    assert is_503(got), got[:200]
    assert (end, error) == ("eof", None)
    assert rig.zmq.ids_of(Cancel) == [c.rid]


def connect_raw(rig: Rig, data: bytes):
    """A client that sent ``data``, which is no whole request: (its
    socket, the worker's connection), once the worker has read it."""
    sock = socket.socket()
    rig.socks.append(sock)
    sock.connect(rig.listener.getsockname())
    ours, _ = rig.listener.accept()
    fd = ours.fileno()
    assert rig.worker.adopt_connection(ours, 0)
    [conn] = [c for c in rig.worker.slots if c is not None and c.fd == fd]
    sock.sendall(data)
    rig.until(lambda: unread(conn.sock) == 0)
    return Client(sock, conn, b"")


def unread(sock: socket.socket) -> int:
    """Bytes the kernel holds for ``sock`` that it has not read."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def test_a_request_head_partly_received_gets_a_503(rig):
    """Bytes of a request came, not all of its head: the client learns
    that the request was not processed (RFC 9110 15.6.4) and may retry.
    (Before: an end, nothing else.)"""
    c = connect_raw(rig, b"GET /s HTTP/1.1\r\nHost: e\r\nX-Half: ")
    assert c.conn.session.reader.buffered(True)  # (read, not complete)
    rig.stop()
    got, end = rig.read(c)
    assert is_503(got) and end == "eof"
    assert rig.zmq.first == []  # no request went to a handler


@pytest.mark.parametrize("sent", [b"", b"\r\n\r\n"], ids=["nothing", "empty lines"])
def test_an_idle_connection_is_just_closed(rig, sent):
    """No bytes of a request (empty lines before a request line are
    ignored, RFC 9112 2.2): nothing to answer, an end."""
    c = connect_raw(rig, sent)
    rig.stop()
    assert rig.read(c) == (b"", "eof")


def ws_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the unmasked frames in ``data``."""
    frames = []
    while data:
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        at = 2
        if size == 126:
            size, at = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            size, at = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((opcode, data[at:at + size]))
        data = data[at + size:]
    return frames


def test_an_open_websocket_gets_close_1001_at_the_stop(rig):
    """A fast stop (or the end of a drain) finds a WebSocket open: the
    client gets close 1001 (going away, as the graceful stop sends) and
    then the end; the handler gets its cancel. (Before: the end alone,
    which a browser reports as 1006.)"""
    c = rig.connect(WS_UPGRADE)
    rig.handler(c, Data, code=101, reason=b"Switching Protocols", credits=1 << 16)
    got, _ = rig.read(c, until=b"\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 101 ")
    rig.handler(c, Data, content_type=b"text", body=b"hello")
    got, _ = rig.read(c, until=b"hello")
    rig.stop()
    rest, end = rig.read(c)
    assert ws_frames(rest) == [(8, struct.pack("!H", 1001))]
    assert end == "eof"
    assert rig.zmq.ids_of(Cancel) == [c.rid]


def test_a_client_that_never_reads_holds_the_stop_no_longer_than_the_bound(rig, monkeypatch):
    """Two clients that read nothing and never close: one owed a response
    larger than the buffers (what the kernel never took is dropped with a
    reset: its end would make it look complete), one owed only a 503 that
    the kernel took (closed; the kernel still delivers it). The stop's
    settling ends at the bound with both connections gone."""
    monkeypatch.setattr(conn_stop, "STOP_LINGER", 0.3)
    owed = rig.connect(GET11, small=True)
    rig.handler(owed, code=200, reason=b"OK", body=b"x" * BIG,
                headers=((b"Content-Length", b"%d" % BIG),))
    assert owed.conn.out
    waiting = rig.connect(GET11)
    rig.worker.stop()
    rig.loop.run_until_complete(asyncio.wait_for(rig.worker.settle(1.0), 3.0))
    assert owed.conn.closed and waiting.conn.closed
    assert rig.worker.live_connections() == []
    got, end = rig.read(owed)
    assert len(got) < len(HEAD) + BIG and end == "reset"
    got, end = rig.read(waiting)
    assert is_503(got) and end == "eof"
