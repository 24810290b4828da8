"""A session that raises costs its own connection, in the worker's loops
that tests through a whole process cannot reach quickly: the keep-alive
sweep (each slot once per 45 s), the fast stop's cancels, a handover's
export, a packet for several ids, and the timer wheel's backstop; and
what a failed session is owed in each state.

A real :class:`condure.worker.Worker` on a real event loop serves real
socket pairs; its ZeroMQ side is the I/O seam, stood in for by a recorder
of the packets it would send. One session is broken on purpose (a method
of that one object raises); the others must carry on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from condure import handover
from condure.config import Config
from condure.net.timers import RESOLUTION, TimerWheel
from condure.session import failure
from condure.session.httpwire import error_response
from condure.session.req import ReqSession
from condure.worker import Worker
from condure.zhttp import decode, encode
from condure.zhttp.packets import Cancel, Data, Ident, KeepAlive
from tests.unit.session_helpers import Driver
from tests.unit.test_websocket_session import SIMPLE, WsDriver

HANDLER = b"handler1"


class Bug(RuntimeError):
    pass


def broken(*args, **kwargs):
    raise Bug("deliberate")


def break_method(session, name: str, replacement=broken) -> None:
    """Make ``session.<name>`` raise Bug (or be ``replacement``): its class
    becomes a subclass with that method replaced (sessions may keep their
    attributes in slots, so an instance attribute cannot shadow the method)."""
    cls = type(session)
    session.__class__ = type(f"Broken{cls.__name__}", (cls,),
                             {"__slots__": (), name: replacement})


class ZmqRecorder:
    """Stands in for StreamSockets: the packets the worker sends."""

    def __init__(self) -> None:
        self.first: list = []
        self.later: list = []
        self.congested = False
        self.router_queue = 0  # (nothing waits for handlers: --handoff skip moves at once)

    def send_first(self, payload: bytes) -> None:
        self.first.append(decode(payload))

    def send_to(self, address: bytes, payload: bytes) -> None:
        self.later.append((address, decode(payload)))

    def ids_of(self, kind: type) -> list[bytes]:
        return [i.id for _, p in self.later if type(p) is kind for i in p.ids]


class Rig:
    """A worker with ``n`` client connections, each with a request the
    handler has answered with a keep-alive (so the handler is known)."""

    def __init__(self, n: int, answered: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.worker = Worker(Config(stream_maxconn=n, workers=1), self.loop)
        self.zmq = self.worker.zmq = ZmqRecorder()
        self.clients: list[socket.socket] = []
        for _ in range(n):
            ours, theirs = socket.socketpair()
            assert self.worker.adopt_connection(ours, 0)
            self.clients.append(theirs)
        if answered:
            for c in self.clients:
                c.sendall(b"GET / HTTP/1.1\r\nHost: e\r\n\r\n")
            self.until(lambda: len(self.zmq.first) == n)
            for req in self.zmq.first:
                rid = req.ids[0].id
                self.worker.on_message(encode(KeepAlive(from_=HANDLER, ids=(Ident(rid, 0),))))

    @property
    def conns(self):
        return [c for c in self.worker.slots if c is not None]

    def until(self, predicate, timeout: float = 2.0) -> None:
        async def wait():
            while not predicate():
                await asyncio.sleep(0.005)
        self.loop.run_until_complete(asyncio.wait_for(wait(), timeout))

    def read_all(self, client: socket.socket) -> bytes:
        """What the client got until the worker closed (it closes too)."""
        client.setblocking(False)
        got = bytearray()

        async def read():
            while True:
                try:
                    data = client.recv(65536)
                except BlockingIOError:
                    await asyncio.sleep(0.005)
                    continue
                if not data:
                    return
                got.extend(data)
        self.loop.run_until_complete(asyncio.wait_for(read(), 2.0))
        client.close()
        return bytes(got)

    def close(self) -> None:
        for conn in self.conns:
            conn.give_up()
        for c in self.clients:
            c.close()
        self.loop.close()


@pytest.fixture
def rig_factory():
    rigs = []

    def make(n: int, **kw) -> Rig:
        rig = Rig(n, **kw)
        rigs.append(rig)
        return rig
    yield make
    for rig in rigs:
        rig.close()


def one_fault_logged(caplog, rid: bytes) -> None:
    records = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].exc_info and records[0].exc_info[0] is Bug
    assert f"session {rid.decode()})" in records[0].getMessage()


def test_a_broken_session_in_the_keep_alive_sweep(rig_factory, caplog):
    rig = rig_factory(3)
    bad = rig.conns[1]
    rid = bad.session.rid
    break_method(bad.session, "keep_alive")
    start = rig.worker.sweep.time
    for i in range(3):  # three slots, one every 15 s of the 45 s round
        rig.worker._sweep_keep_alives(start + 15.0 * (i + 1))
    others = [c.session.rid for c in rig.conns if c is not bad]
    assert sorted(rig.zmq.ids_of(KeepAlive)) == sorted(others)
    assert rig.zmq.ids_of(Cancel) == [rid]
    out = rig.read_all(rig.clients[1])
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), out
    rig.until(lambda: rig.worker.slots[1] is None)  # its slot is free
    assert rig.worker.counts["stream"] == 2
    one_fault_logged(caplog, rid)


def test_a_broken_session_at_a_fast_stop(rig_factory, caplog):
    rig = rig_factory(3)
    rids = [c.session.rid for c in rig.conns]
    break_method(rig.conns[0].session, "shutdown")
    rig.worker.stop()
    assert sorted(rig.zmq.ids_of(Cancel)) == sorted(rids)  # every handler told
    for client in rig.clients:
        client.close()  # (the clients leave: their connections end at once)
    rig.loop.run_until_complete(rig.worker.settle(1.0))
    assert all(c is None for c in rig.worker.slots)
    assert rig.worker.counts["stream"] == 0
    one_fault_logged(caplog, rids[0])


def test_a_broken_session_in_a_handover(rig_factory, caplog):
    rig = rig_factory(3, answered=False)  # idle connections: they can move at once
    bad = rig.conns[2]
    rid = bad.session.rid
    break_method(bad.session, "begin_handoff")
    sent = []

    def send(records, fds):
        sent.append((records, fds))
        return len(sent)
    exporter = handover.Exporter(rig.worker, send, handoff_timeout=1.0,
                                 drain_deadline=time.monotonic() + 1.0)
    exporter.start()
    exporter.poll()
    assert len(sent) == 1 and len(sent[0][0]) == 2  # the other two moved
    exporter.taken(1)
    assert exporter.done and exporter.moved == 2
    # idle between requests: closed, with no response nobody asked for
    assert rig.read_all(rig.clients[2]) == b""
    rig.until(lambda: all(c is None for c in rig.worker.slots))
    one_fault_logged(caplog, rid)


def test_a_broken_session_on_a_handler_packet_in_a_list(rig_factory, caplog):
    """One packet for several ids (a batched credit, say): the broken
    session does not keep the others from getting theirs."""
    rig = rig_factory(3)
    sessions = [c.session for c in rig.conns]
    break_method(sessions[0], "receive_packet")
    ids = tuple(Ident(s.rid, 1) for s in sessions)
    rig.worker.on_message(encode(KeepAlive(from_=HANDLER, ids=ids, id_list=True)))
    assert [s.in_seq for s in sessions[1:]] == [2, 2]  # taken by the other two
    assert rig.zmq.ids_of(Cancel) == [sessions[0].rid]
    one_fault_logged(caplog, sessions[0].rid)


class Owner:
    def __init__(self, deadline, fire_breaks: bool = False) -> None:
        self._deadline = deadline
        self.timer_key = None
        self.fired = 0
        self.fire_breaks = fire_breaks

    @property
    def deadline(self):
        if self._deadline == "broken":
            raise Bug("deadline")
        return self._deadline


def test_the_timer_wheel_goes_on_past_a_broken_owner(caplog):
    wheel = TimerWheel()
    owners = [Owner(1.0), Owner(1.0, fire_breaks=True), Owner(1.0), Owner(1.0), Owner(5.0)]
    for owner in owners:
        wheel.schedule(owner)
    owners[2]._deadline = "broken"

    def fire(owner):
        owner.fired += 1
        owner._deadline = None
        if owner.fire_breaks:
            raise Bug("fire")
    wheel.expire(1.0 + RESOLUTION, fire)
    assert [o.fired for o in owners] == [1, 1, 0, 1, 0]
    assert [o.timer_key for o in owners[:4]] == [None] * 4  # none left filed in a dead bucket
    assert len(wheel) == 1  # the later one is still filed
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2


def test_an_owner_whose_deadline_stays_past_fires_once_per_tick():
    """fire() files the owner again (as Conn.run does) without moving its
    deadline: the pass ends, and the next tick fires it once more."""
    wheel = TimerWheel()
    stuck, other = Owner(1.0), Owner(1.0)

    def fire(owner):
        owner.fired += 1
        if owner.fired > 100:
            raise Bug("fired again and again in one pass")
        if owner is stuck:
            wheel.schedule(owner)
        else:
            owner._deadline = None
    for owner in (stuck, other):
        wheel.schedule(owner)
    wheel.expire(1.0 + RESOLUTION, fire)
    assert (stuck.fired, other.fired) == (1, 1)
    wheel.expire(1.0 + 2 * RESOLUTION, fire)
    assert (stuck.fired, other.fired) == (2, 1)
    assert len(wheel) == 1


def test_a_session_that_leaves_its_deadline_past_does_not_hold_the_worker(rig_factory):
    """Its timer does nothing: the worker's tick returns (before, it looped
    for good and the supervisor replaced the hung worker with all of its
    connections) and the other connections are served."""
    rig = rig_factory(3)
    bad = rig.conns[1]
    calls = []

    def handle_timer(self, now):
        calls.append(now)
        if len(calls) > 100:
            raise Bug("called again and again in one tick")
    break_method(bad.session, "handle_timer", handle_timer)
    bad.session.session_deadline = time.monotonic() - 1.0
    rig.worker.schedule(bad)
    rig.worker.tick()
    assert len(calls) == 1
    rig.worker.tick_handle.cancel()
    rig.worker.tick()
    assert len(calls) == 2  # once per tick
    rig.worker.tick_handle.cancel()
    good = rig.conns[0]
    rig.worker.on_message(encode(Data(from_=HANDLER, ids=(Ident(good.session.rid, 1),),
                                      code=200, reason=b"OK", body=b"fine")))
    rig.clients[0].settimeout(2.0)
    assert rig.clients[0].recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")


# -- what a failed session is owed (condure/session/failure.py) ----------------

def test_last_words_by_state():
    d = Driver()
    assert failure.last_words(d.session)[0] == b""  # idle: no response nobody asked for
    assert failure.last_words(d.session, reading=True)[0] == error_response(500)
    d.client(b"GET / HTT")
    assert failure.last_words(d.session)[0] == error_response(500)  # a request being read
    d = Driver()
    d.client(b"GET / HTTP/1.1\r\nHost: e\r\n\r\n")
    assert failure.last_words(d.session) == (error_response(500), None)  # no handler yet
    words, (address, cancel) = failure.last_words(d.session, HANDLER)
    assert address == HANDLER and cancel.ids == (Ident(d.session.rid, 1),)
    d.respond(200, body=b"x", more=True)  # the head went out: nothing more for the client
    words, (address, cancel) = failure.last_words(d.session)
    assert words == b"" and address == HANDLER

    ws = WsDriver()
    ws.client(SIMPLE + b"\r\n")
    assert failure.last_words(ws.session)[0].startswith(b"HTTP/1.1 500 ")  # not accepted yet
    ws.respond(101, b"Switching Protocols")
    words, (address, cancel) = failure.last_words(ws.session)
    assert words == b"\x88\x02\x03\xf3" and address == HANDLER  # close 1011
    ws.session.output.closed = True
    assert failure.last_words(ws.session)[0] == b""
    ws.handler(Cancel)
    assert failure.last_words(ws.session) == (b"", None)  # it had ended itself

    req = ReqSession(instance_id=b"condure", new_id=lambda: b"0-0-0", now=0.0)
    req.receive_data(b"GET / HTTP/1.1\r\nHost: e\r\n\r\n", 0.0)
    assert failure.last_words(req, HANDLER)[1] is None  # req handlers are never cancelled

    class Weird:
        @property
        def state(self):
            raise RuntimeError("corrupt")
    assert failure.last_words(Weird(), HANDLER) == (b"", None)
    assert failure.describe(Weird()) == "peer local, session ?"
