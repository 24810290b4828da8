"""A WebSocket adopted in a reload gets the handler's packets that reached
the new worker before it did (net/parked.py) as if they had come after:
each is written to the client before the next, so a burst larger than
--messages-max (messages the session may hold unwritten) is not taken for
a handler that ignores flow control.

Two real :class:`condure.worker.Worker` objects on one real event loop,
real socket pairs; the ZeroMQ side is the I/O seam, a recorder of the
packets the workers would send.
"""

from __future__ import annotations

import asyncio
import socket
import time

from condure import handover
from condure.config import Config
from condure.worker import Worker
from condure.zhttp import encode
from condure.zhttp.packets import Cancel, Data, Ident
from tests.unit.test_fault_containment import ZmqRecorder
from tests.unit.test_websocket_session import SIMPLE

HANDLER = b"handler1"
BURST = 250  # more than --messages-max (100)


def until(loop: asyncio.AbstractEventLoop, predicate, timeout: float = 3.0) -> None:
    async def wait():
        while not predicate():
            await asyncio.sleep(0.005)
    loop.run_until_complete(asyncio.wait_for(wait(), timeout))


def read_frames(loop, client: socket.socket, count: int) -> list[bytes]:
    """The payloads of ``count`` unmasked, unfragmented frames of at most
    125 bytes, after the 101 response."""
    client.setblocking(False)
    buf = bytearray()

    async def read():
        while True:
            try:
                data = client.recv(65536)
            except BlockingIOError:
                head = buf.find(b"\r\n\r\n")
                frames, i = [], head + 4
                while head >= 0 and i + 2 <= len(buf) and i + 2 + (buf[i + 1] & 0x7F) <= len(buf):
                    n = buf[i + 1] & 0x7F
                    frames.append(bytes(buf[i + 2:i + 2 + n]))
                    i += 2 + n
                if len(frames) >= count:
                    return frames
                await asyncio.sleep(0.005)
                continue
            assert data, "the worker closed the connection"
            buf.extend(data)
    return loop.run_until_complete(asyncio.wait_for(read(), 5.0))


def test_a_burst_of_parked_messages_larger_than_messages_max_reaches_the_client():
    loop = asyncio.new_event_loop()
    config = Config(stream_maxconn=2, workers=1)
    old, new = Worker(config, loop), Worker(config, loop)
    old.zmq, new.zmq = ZmqRecorder(), ZmqRecorder()
    ours, client = socket.socketpair()
    try:
        assert old.adopt_connection(ours, 0)
        client.sendall(SIMPLE + b"\r\n")
        until(loop, lambda: len(old.zmq.first) == 1)
        rid = old.zmq.first[0].ids[0].id
        old.on_message(encode(Data(from_=HANDLER, ids=(Ident(rid, 0),), code=101,
                                   reason=b"Switching Protocols", credits=1 << 20)))
        sent: list = []

        def send(records, fds):
            sent.append((records, [socket.dup(fd) for fd in fds]))
            return len(sent)
        exporter = handover.Exporter(old, send, handoff_timeout=1.0,
                                     drain_deadline=time.monotonic() + 5.0, ask=False)
        exporter.start()
        until(loop, lambda: exporter.poll() or bool(sent))
        ((texts, fds),) = sent
        # The handler, unaware of the move, publishes a burst meanwhile:
        # the new worker keeps it for the id it does not have yet.
        for seq in range(1, BURST + 1):
            new.on_message(encode(Data(from_=HANDLER, ids=(Ident(rid, seq),),
                                       content_type=b"text", body=b"m%d" % seq)))
        exporter.taken(1)
        assert handover.adopt(new, texts, fds) == (1, 0)
        frames = read_frames(loop, client, BURST)
        assert frames == [b"m%d" % seq for seq in range(1, BURST + 1)]
        assert not any(type(p) is Cancel for _, p in new.zmq.later), new.zmq.later
        assert [c for c in new.slots if c is not None], "the adopted session ended"
    finally:
        for worker in (old, new):
            for conn in [c for c in worker.slots if c is not None]:
                conn.give_up()
        client.close()
        loop.close()
