"""Backpressure towards the handlers stops the read clocks of the worker's
sessions (condure/net/conn.py ``note_reads_held``): a client is not cut for
a slowness that is condure's. A real Worker on a real loop serves a real
socket pair; its ZeroMQ side is the recorder of test_fault_containment."""

from __future__ import annotations

import asyncio
import socket

from condure.config import Config
from condure.worker import Worker
from condure.zhttp import encode
from condure.zhttp.packets import Credit, Ident
from tests.unit.test_fault_containment import HANDLER, ZmqRecorder


def test_congestion_stops_and_restarts_the_body_clock():
    loop = asyncio.new_event_loop()
    worker = Worker(Config(stream_maxconn=1, workers=1, body_min_rate=100), loop)
    zmq = worker.zmq = ZmqRecorder()
    ours, client = socket.socketpair()
    try:
        assert worker.adopt_connection(ours, 0)
        client.sendall(b"POST /u HTTP/1.1\r\nHost: e\r\nContent-Length: 100000\r\n\r\n")

        async def until(predicate) -> None:
            while not predicate():
                await asyncio.sleep(0.005)
        loop.run_until_complete(asyncio.wait_for(until(lambda: zmq.first), 2))
        rid = zmq.first[0].ids[0].id
        worker.on_message(encode(Credit(from_=HANDLER, ids=(Ident(rid, 0),), credits=100000)))
        conn = next(c for c in worker.slots if c is not None)
        session = conn.session
        assert session.rate is not None and session.rate.since is not None  # running

        zmq.congested = True
        worker._on_congestion(True)  # what StreamSockets calls past its mark
        assert worker.holds_reads
        assert session.held_since is not None and session.rate.since is None  # stands still
        assert conn.deadline == min(session.session_deadline, session.stream_deadline)

        zmq.congested = False
        worker._on_congestion(False)
        assert session.held_since is None and session.rate.since is not None  # runs again
        assert conn.reading  # and the worker reads from the client again
    finally:
        for conn in [c for c in worker.slots if c is not None]:
            conn.give_up()
        client.close()
        loop.close()


def test_an_accept_backoff_ending_after_the_stop_leaves_accepting_off():
    """EMFILE pauses accepting and a timer turns it back on 100 ms later; a
    worker that began stopping meanwhile has closed its listeners, and the
    timer must not watch them again (add_reader(-1) raised in the loop)."""
    loop = asyncio.new_event_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    worker = Worker(Config(workers=1), loop)
    spec = worker.config.listen[0]
    worker.listeners.append((listener, spec))
    try:
        worker.set_accepting(True)
        assert worker.accepting
        worker.set_accepting(False)  # the EMFILE backoff
        worker.mark_stopping("stop")
        worker.set_accepting(False)
        worker.close_listeners()
        worker.set_accepting(True)  # the backoff's timer, late
        assert not worker.accepting
    finally:
        listener.close()
        loop.close()
