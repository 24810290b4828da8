"""What a client is owed when its connection ends early.

- A response that was complete before a cut is delivered in full: on a
  persistent connection a slow client may still be taking it when the
  next, pipelined request is cut (its handler cancels it, the client
  half-closes, a close-delimited response under way is reset); only the
  response actually cut loses its tail (condure/net/conn_end.py).
- A request condure gives up on because it stops (the drain deadline of
  a stop or reload, a fast stop) while nothing of its response went out
  gets ``503 Service Unavailable`` with ``Connection: close``, and the
  handler its cancel when it is known; so does a WebSocket upgrade
  still waiting for its handler (no 101 went out).

A real :class:`condure.worker.Worker` on a real event loop serves real TCP
connections on loopback (the rig of test_conn_cuts); its ZeroMQ side is
the I/O seam, a recorder of the packets it would send.
"""

from __future__ import annotations

import socket

import pytest

from condure.zhttp.packets import Cancel, KeepAlive
from tests.unit.test_conn_cuts import BIG, GET10, GET11, Client, Rig

WS_UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: e\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n"


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def first_answered(rig: Rig, requests: bytes) -> Client:
    """Pipelined ``requests`` on a slow connection: the first answered
    whole (BIG bytes, most of them still waiting in the adapter), the
    second sent to the handler; the Client of the second request."""
    c = rig.connect(requests, small=True)
    rig.handler(c, code=200, reason=b"OK", body=b"x" * BIG,
                headers=((b"Content-Length", b"%d" % BIG),))
    assert c.conn.out, "the small buffers should have left the response waiting"
    rig.until(lambda: len(rig.zmq.first) == 2)
    return Client(c.sock, c.conn, rig.zmq.first[-1].ids[0].id)


def test_a_pipelined_request_cancelled_leaves_the_earlier_response_whole(rig):
    second = first_answered(rig, GET11 + GET11.replace(b"/s", b"/t"))
    rig.handler(second, Cancel)
    got, end = rig.read(second)
    assert got == HEAD + b"x" * BIG
    assert end == "eof"


def test_a_half_close_after_a_response_leaves_it_whole(rig):
    """The client half-closes (it has sent all it will) while its answer
    still waits in the adapter: it still reads all of it, then the end."""
    c = rig.connect(GET11, small=True)
    rig.handler(c, code=200, reason=b"OK", body=b"x" * BIG,
                headers=((b"Content-Length", b"%d" % BIG),))
    assert c.conn.out
    c.sock.shutdown(socket.SHUT_WR)
    got, end = rig.read(c)
    assert got == HEAD + b"x" * BIG
    assert end == "eof"


def test_a_reset_cuts_only_the_response_it_cuts(rig):
    """A close-delimited response (HTTP/1.0) pipelined behind a complete
    one is cut: the complete one arrives whole, then the reset."""
    rig.worker.tick()  # the worker's timer (the reset waits for the client's acks)
    second = first_answered(rig, GET11 + GET10)
    rig.handler(second, code=200, reason=b"OK", body=b"part", more=True)
    rig.handler(second, Cancel)
    got, end = rig.read(second)
    assert got.startswith(HEAD + b"x" * BIG)
    assert end == "reset"


@pytest.mark.parametrize("known", [False, True], ids=["no handler yet", "handler known"])
def test_a_stop_answers_a_waiting_request_with_503(rig, known):
    c = rig.connect(GET11)
    if known:
        rig.handler(c, KeepAlive)  # the handler took it up, no response yet
    rig.stop()
    got, end = rig.read(c)
    assert got.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nConnection: close\r\n" in got and end == "eof"
    assert rig.zmq.ids_of(Cancel) == ([c.rid] if known else [])


def test_a_stop_answers_a_waiting_websocket_upgrade_with_503(rig):
    c = rig.connect(WS_UPGRADE)
    rig.stop()
    got, end = rig.read(c)
    assert got.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nConnection: close\r\n" in got and end == "eof"


def test_a_stop_leaves_a_response_under_way_cut(rig):
    """Something of the response went out: no 503 after it."""
    c = rig.connect(GET11)
    rig.handler(c, code=200, reason=b"OK", body=b"part", more=True)
    rig.read(c, until=b"part\r\n")
    rig.stop()
    assert rig.read(c) == (b"", "eof")


def test_a_stop_while_a_reset_waits_still_resets(rig):
    """The reset of a cut close-delimited response waits for the earlier
    response to be taken; a stop goes on waiting, within its bound: the
    earlier response arrives whole, then the reset."""
    second = first_answered(rig, GET11 + GET10)
    rig.handler(second, code=200, reason=b"OK", body=b"part", more=True)
    rig.handler(second, Cancel)
    assert second.conn.reset_after and not second.conn.closed
    rig.stop()
    got, end = rig.read(second)
    assert got.startswith(HEAD + b"x" * BIG)
    assert end == "reset"
