"""The supervisor's req-mode relay (bind mode) between real sockets, in
bursts: requests that wait for a handler, and many replies for several
workers at once. Workers and the handler are plain pyzmq sockets, as in
test_zmqproxy.py."""

from __future__ import annotations

import time

import pytest
import zmq

from condure.config import Config, ListenSpec
from condure.net.zmqio import BATCH
from condure.net.zmqreq import routing_id
from condure.supervisor.reqrelay import reply_index
from condure.supervisor.zmqproxy import ZmqProxy
from condure.zhttp import tnetstring
from tests.unit import zmq_sockets
from tests.unit.zmq_sockets import thread_cpu

sock = zmq_sockets.sock  # the fixture


@pytest.fixture
def req_proxy(tmp_path):
    config = Config(listen=(ListenSpec(port=1, mode="req"),),
                    zclient_req=(f"ipc://{tmp_path}/req",))
    proxy = ZmqProxy(config, runtime_dir=str(tmp_path))
    spec = proxy.start()
    yield spec["req"][0], f"ipc://{tmp_path}/req"
    proxy.close()


def packet(rid: bytes, body: bytes = b"") -> bytes:
    return b"T" + tnetstring.dumps({b"id": rid, b"body": body})


def test_requests_wait_for_a_handler_in_order_without_spinning(req_proxy, sock):
    internal, public = req_proxy
    worker = sock(zmq.DEALER, internal, ROUTING_ID=routing_id(0, 1))
    # More than one relay batch and more than the public DEALER's queue.
    sent = [packet(b"0-0-%d" % i) for i in range(2 * BATCH + 10)]
    before = thread_cpu("zmq-proxy-req")
    for payload in sent:
        worker.send_multipart([b"", payload])
    time.sleep(1.0)  # what is measured: a second of waiting for a handler
    used = thread_cpu("zmq-proxy-req") - before
    assert used < 0.1, f"the relay used {used:.2f} s of CPU while waiting"
    handler = sock(zmq.ROUTER, public)
    got = []
    for _ in sent:
        _, empty, payload = handler.recv_multipart()
        assert empty == b""
        got.append(payload)
    assert got == sent


def test_bursts_of_replies_reach_their_workers_in_order(req_proxy, sock):
    internal, public = req_proxy
    workers = [sock(zmq.DEALER, internal, ROUTING_ID=routing_id(i, 100 + i)) for i in range(2)]
    handler = sock(zmq.ROUTER, public)
    count = BATCH + 50
    for n in range(count):
        for i, w in enumerate(workers):
            w.send_multipart([b"", packet(b"%d-0-%d" % (i, n), b"q")])
    requests = [handler.recv_multipart() for _ in range(2 * count)]
    for peer, empty, payload in requests:  # answered all at once
        handler.send_multipart([peer, empty, payload.replace(b"1:q,", b"1:a,")])
    for i, w in enumerate(workers):
        replies = [w.recv_multipart() for _ in range(count)]
        assert replies == [[b"", packet(b"%d-0-%d" % (i, n), b"a")] for n in range(count)]


def test_reply_index_reads_the_id_as_a_worker_does():
    # Bytes after the packet's map are ignored (codec.decode), so the
    # reply still goes to its worker; a malformed map is refused.
    assert reply_index(packet(b"3-1-2") + b"extra") == b"3"
    assert reply_index(b"T" + tnetstring.dumps({b"id": [{b"id": b"4-0-9"}, {b"id": b"5-0-1"}]})) \
        == b"4"
    assert reply_index(b"T11:2:id,3:1-x,}") == b"1"
    assert reply_index(b"T12:2:id,3:1-x,}") is None  # the map says 12 bytes, holds 11
    assert reply_index(b"T" + tnetstring.dumps({b"id": 7})) is None
    assert reply_index(b"T" + tnetstring.dumps({b"id": b"nodash"})) is None
