"""RouterQueues against real ZeroMQ sockets (inproc): packets for a handler
whose queue is full wait in order, and the retry delay is short while the
handler drains, doubling up to Condure's 50 ms while nothing moves."""

from __future__ import annotations

import time

import pytest
import zmq

from condure.net.routerqueue import ROUTER_RETRY, ROUTER_RETRY_MIN, RouterQueues


@pytest.fixture
def pair():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, 4)
    handler = ctx.socket(zmq.ROUTER)
    handler.setsockopt(zmq.IDENTITY, b"h")
    handler.setsockopt(zmq.RCVHWM, 4)
    router.bind("inproc://rq")
    handler.connect("inproc://rq")
    # Until the handler's identity has reached the router, sends to it are
    # "unreachable"; wait for the route before the test begins.
    deadline = time.monotonic() + 5
    while True:
        try:
            router.send_multipart([b"h", b"", b"T-probe"], zmq.NOBLOCK)
            break
        except zmq.ZMQError:
            assert time.monotonic() < deadline, "handler never connected"
            time.sleep(0.001)
    assert handler.recv_multipart()[-1] == b"T-probe"
    yield router, handler
    for sock in (router, handler):
        sock.close(0)
    ctx.term()


def received(handler) -> list[bytes]:
    got = []
    while handler.poll(50):
        got.append(handler.recv_multipart()[-1])
    return got


def test_full_queue_waits_in_order_and_retries_sooner_while_draining(pair):
    router, handler = pair
    queues = RouterQueues(router)
    waited = [queues.offer([b"h", b"", b"T%d" % i]) for i in range(40)]
    assert not waited[0] and waited[-1]  # the pipe took some, then was full
    assert queues.waiting and queues.delay == ROUTER_RETRY_MIN

    # Nothing moves while the handler reads nothing: the delay doubles up
    # to Condure's 50 ms, never beyond.
    delays = []
    for _ in range(10):
        queues.retry()
        delays.append(queues.delay)
    assert delays[0] == 2 * ROUTER_RETRY_MIN
    assert delays == sorted(delays) and delays[-1] == ROUTER_RETRY

    # The handler reads: the next retry moves packets and the delay is
    # short again; everything arrives once, in order.
    got = received(handler)
    assert got
    queues.retry()
    assert queues.delay == ROUTER_RETRY_MIN
    while queues.waiting:
        got += received(handler)
        queues.retry()
    got += received(handler)
    assert got == [b"T%d" % i for i in range(40)]
    assert queues.dropped == 0
