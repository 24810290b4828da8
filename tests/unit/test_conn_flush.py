"""The adapter returns credits when a blocked write finally drains, and
gives up a graceful close on a client that reads nothing.

A real socket pair with small kernel buffers makes the response body wait
in the adapter; the worker side is a recorder of packets (the I/O seam).
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from condure.net import conn_end as conn_module
from condure.net.conn import Conn
from condure.net.timers import TimerWheel
from condure.session.http import HttpSession
from condure.zhttp.packets import Credit, Data, Ident


class Recorder:
    """Stands in for the worker (condure.net.conn.ConnHost): a loop, timers,
    slot release, and the packets the session sends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timers = TimerWheel()
        self.read_size = 8192
        self.holds_reads = False
        self.packets: list = []
        self.released = False

    def send_packet(self, packet, to, wire=None) -> None:
        self.packets.append(packet)

    def release(self, conn) -> None:
        self.released = True

    def schedule(self, conn) -> None:
        self.timers.schedule(conn)

    def note_unanswered(self, slot) -> None:
        pass

    def note_handler_fault(self, reason) -> None:
        pass


class Rig:
    """A real socket pair with small kernel buffers: condure's side driven
    by a Conn and a real HTTP session, the client's side plain."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server, self.client = socket.socketpair()
        for sock in (self.server, self.client):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.server.setblocking(False)
        self.worker = Recorder(self.loop)
        self.session = HttpSession(instance_id=b"condure", new_id=lambda: b"0-0-0", now=0.0)
        self.conn = Conn(self.worker, self.server, 0, self.session)
        self.conn.run()

    def request(self, head: bytes) -> bytes:
        """Send a request head; the id of the request packet it makes."""
        self.client.sendall(head)
        self.loop.run_until_complete(asyncio.wait_for(_until(lambda: self.worker.packets), 2))
        return self.worker.packets[0].ids[0].id

    def respond(self, rid: bytes, body: bytes, more: bool) -> None:
        self.session.receive_packet(
            Data(from_=b"h", ids=(Ident(rid, 0),), code=200, reason=b"OK", body=body, more=more),
            Ident(rid, 0), 0.0)
        self.conn.run()

    def close(self) -> None:
        self.server.close()
        self.client.close()
        self.loop.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def test_credits_return_after_a_blocked_write_drains(rig):
    worker, client, loop = rig.worker, rig.client, rig.loop
    rid = rig.request(b"GET / HTTP/1.1\r\nHost: e\r\n\r\n")
    body = b"x" * 8192
    rig.respond(rid, body, more=True)
    assert rig.conn.out, "the small buffers should have left output waiting"
    assert not any(isinstance(p, Credit) for p in worker.packets)

    # The client reads everything; the adapter's writer drains the rest
    # and the session must now hand the credits back.
    received = bytearray()

    async def drain_client():
        client.setblocking(False)
        while len(received) < len(body):
            try:
                chunk = client.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            received.extend(chunk)
    loop.run_until_complete(asyncio.wait_for(drain_client(), 5))
    loop.run_until_complete(asyncio.wait_for(
        _until(lambda: any(isinstance(p, Credit) for p in worker.packets)), 5))
    credits = [p for p in worker.packets if isinstance(p, Credit)]
    assert sum(c.credits for c in credits) == len(body)
    assert body in received


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def test_a_graceful_close_gives_up_on_a_client_that_reads_nothing(rig, monkeypatch):
    """A final response with ``Connection: close`` waits in the adapter for
    a client that takes nothing: after CLOSE_FLUSH_TIMEOUT without progress
    the connection is dropped and its slot freed (it was held for ever)."""
    monkeypatch.setattr(conn_module, "CLOSE_FLUSH_TIMEOUT", 0.2)
    rid = rig.request(b"GET / HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
    rig.respond(rid, b"x" * 8192, more=False)
    assert rig.conn.closing and rig.conn.out, "the response's end should wait in the adapter"
    assert not rig.worker.released

    async def expire_until_released() -> None:
        while not rig.worker.released:
            rig.worker.timers.expire(time.monotonic(), lambda c: c.on_timer())
            await asyncio.sleep(0.05)
    rig.loop.run_until_complete(asyncio.wait_for(expire_until_released(), 5))
    assert rig.conn.closed
