"""The adapter returns credits when a blocked write finally drains.

A real socket pair with small kernel buffers makes the response body wait
in the adapter; the worker side is a recorder of packets (the I/O seam).
"""

from __future__ import annotations

import asyncio
import socket
import time

from condure.net import conn as conn_module
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

    def send_packet(self, packet, to) -> None:
        self.packets.append(packet)

    def release(self, conn) -> None:
        self.released = True

    def schedule(self, conn) -> None:
        self.timers.schedule(conn)

    def note_unanswered(self, slot) -> None:
        pass


def test_credits_return_after_a_blocked_write_drains():
    loop = asyncio.new_event_loop()
    server, client = socket.socketpair()
    try:
        for sock in (server, client):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server.setblocking(False)
        worker = Recorder(loop)
        session = HttpSession(instance_id=b"condure", new_id=lambda: b"0-0-0", now=0.0)
        conn = Conn(worker, server, 0, session)
        conn.run()
        client.sendall(b"GET / HTTP/1.1\r\nHost: e\r\n\r\n")
        loop.run_until_complete(asyncio.sleep(0))  # let the reader fire
        loop.run_until_complete(asyncio.wait_for(_until(lambda: worker.packets), 2))
        rid = worker.packets[0].ids[0].id
        body = b"x" * 8192
        session.receive_packet(
            Data(from_=b"h", ids=(Ident(rid, 0),), code=200, reason=b"OK", body=body, more=True),
            Ident(rid, 0), 0.0)
        conn.run()
        assert conn.out, "the small buffers should have left output waiting"
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
    finally:
        server.close()
        client.close()
        loop.close()


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def test_a_graceful_close_gives_up_on_a_client_that_reads_nothing(monkeypatch):
    """A final response with ``Connection: close`` waits in the adapter for
    a client that takes nothing: after CLOSE_FLUSH_TIMEOUT without progress
    the connection is dropped and its slot freed (it was held for ever)."""
    monkeypatch.setattr(conn_module, "CLOSE_FLUSH_TIMEOUT", 0.2)
    loop = asyncio.new_event_loop()
    server, client = socket.socketpair()
    try:
        for sock in (server, client):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server.setblocking(False)
        worker = Recorder(loop)
        session = HttpSession(instance_id=b"condure", new_id=lambda: b"0-0-0", now=0.0)
        conn = Conn(worker, server, 0, session)
        conn.run()
        client.sendall(b"GET / HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
        loop.run_until_complete(asyncio.wait_for(_until(lambda: worker.packets), 2))
        rid = worker.packets[0].ids[0].id
        session.receive_packet(
            Data(from_=b"h", ids=(Ident(rid, 0),), code=200, reason=b"OK", body=b"x" * 8192),
            Ident(rid, 0), 0.0)
        conn.run()
        assert conn.closing and conn.out, "the response's end should wait in the adapter"
        assert not worker.released

        async def expire_until_released() -> None:
            while not worker.released:
                worker.timers.expire(time.monotonic(), lambda c: c.on_timer())
                await asyncio.sleep(0.05)
        loop.run_until_complete(asyncio.wait_for(expire_until_released(), 5))
        assert conn.closed
    finally:
        server.close()
        client.close()
        loop.close()
