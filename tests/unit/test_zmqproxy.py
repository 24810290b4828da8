"""The supervisor's ZeroMQ relay between real sockets.

Workers and handlers are plain pyzmq sockets here: "worker" sockets connect
to the internal endpoints the proxy returns, "handler" sockets connect to
the public ones, as examples/ handlers do.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time

import pytest
import zmq

from condure.config import Config, ListenSpec
from condure.net.routerqueue import UNREACHABLE_GRACE, pack_later
from condure.net.zmqreq import routing_id
from condure.supervisor.reqrelay import reply_index
from condure.supervisor.zmqproxy import ZmqProxy
from condure.zhttp import tnetstring
from tests.unit import zmq_sockets
from tests.unit.zmq_sockets import thread_cpu

sock = zmq_sockets.sock  # the fixture


@pytest.fixture
def start_proxy(tmp_path):
    proxies: list[ZmqProxy] = []

    def start(**kw) -> tuple[ZmqProxy, dict]:
        base = f"ipc://{tmp_path}/client"
        kw.setdefault("zclient_stream", (base,))
        kw.setdefault("zclient_req", (f"ipc://{tmp_path}/req",))
        config = Config(**kw)
        proxy = ZmqProxy(config, runtime_dir=str(tmp_path))
        proxies.append(proxy)
        return proxy, proxy.start()

    yield start
    for p in proxies:
        p.close()


def internal(spec, suffix):
    return spec["stream"][0] + suffix


def test_spec_and_runtime_dir(start_proxy, tmp_path):
    proxy, spec = start_proxy()
    assert spec["connect"] is True and spec["proxy"] is True
    assert spec["req"] == []  # no req listener: no req socket, as Condure
    assert spec["stream"][0].startswith(f"ipc://{proxy.dir}/")
    assert stat.S_IMODE(os.stat(proxy.dir).st_mode) == 0o700
    for name in ("client-out", "client-out-stream", "client-in"):
        assert (tmp_path / name).exists()
    directory = proxy.dir
    proxy.close()
    assert not os.path.exists(directory)
    proxy.close()  # twice is fine


def test_ipc_file_mode_applies_to_public_endpoints(start_proxy, tmp_path):
    start_proxy(ipc_file_mode=0o660)
    for name in ("client-out", "client-out-stream", "client-in"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o660


def test_first_packets_reach_a_handler(start_proxy, sock, tmp_path):
    _, spec = start_proxy()
    workers = [sock(zmq.PUSH, internal(spec, "-out")) for _ in range(2)]
    handler = sock(zmq.PULL, f"ipc://{tmp_path}/client-out")
    # Sent before or after the handler is up: kept until delivered.
    workers[0].send(b"T-first-0")
    workers[1].send(b"T-first-1")
    assert {handler.recv(), handler.recv()} == {b"T-first-0", b"T-first-1"}


def test_first_packets_wait_for_a_handler_without_spinning(start_proxy, sock, tmp_path):
    _, spec = start_proxy()
    worker = sock(zmq.PUSH, internal(spec, "-out"))
    # More than the relay's input queue holds (128), some of several frames.
    sent = [[b"T%d" % i] if i % 3 else [b"T%d" % i, b"", b"part %d" % i] for i in range(300)]
    before = thread_cpu("zmq-proxy-out")
    for frames in sent:
        worker.send_multipart(frames)
    time.sleep(1.0)  # what is measured: a second of waiting for a handler
    used = thread_cpu("zmq-proxy-out") - before
    assert used < 0.1, f"the relay used {used:.2f} s of CPU while waiting"
    handler = sock(zmq.PULL, f"ipc://{tmp_path}/client-out")
    assert [handler.recv_multipart() for _ in sent] == sent


def test_later_packets_routed_by_handler_identity(start_proxy, sock, tmp_path):
    _, spec = start_proxy()
    worker = sock(zmq.PUSH, internal(spec, "-out-stream"))
    h1 = sock(zmq.ROUTER, f"ipc://{tmp_path}/client-out-stream", ROUTING_ID=b"h1")
    h2 = sock(zmq.ROUTER, f"ipc://{tmp_path}/client-out-stream", ROUTING_ID=b"h2")
    for i in range(5):
        worker.send(pack_later(b"h1", b"T1-%d" % i))
        worker.send(pack_later(b"h2", b"T2-%d" % i))
    # Packets to a handler that never comes are dropped without blocking others.
    worker.send(pack_later(b"nobody", b"Tlost"))
    worker.send(pack_later(b"h1", b"T1-last"))
    got1 = [h1.recv_multipart()[1:] for _ in range(6)]
    got2 = [h2.recv_multipart()[1:] for _ in range(5)]
    assert got1 == [[b"", b"T1-%d" % i] for i in range(5)] + [[b"", b"T1-last"]]
    assert got2 == [[b"", b"T2-%d" % i] for i in range(5)]


def test_later_packets_wait_for_a_connecting_handler(start_proxy, sock, tmp_path):
    _, spec = start_proxy()
    worker = sock(zmq.PUSH, internal(spec, "-out-stream"))
    for i in range(3):
        worker.send(pack_later(b"late", b"T%d" % i))
    # Connects well within the grace period (it is 1 s).
    handler = sock(zmq.ROUTER, f"ipc://{tmp_path}/client-out-stream", ROUTING_ID=b"late")
    got = [handler.recv_multipart()[2] for _ in range(3)]
    assert got == [b"T0", b"T1", b"T2"]


def test_later_packets_dropped_after_grace(start_proxy, sock, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="condure")
    _, spec = start_proxy()
    worker = sock(zmq.PUSH, internal(spec, "-out-stream"))
    worker.send(pack_later(b"gone", b"Told"))
    time.sleep(UNREACHABLE_GRACE + 0.5)  # the behaviour under test is a timeout
    handler = sock(zmq.ROUTER, f"ipc://{tmp_path}/client-out-stream", ROUTING_ID=b"gone")
    # The handshake may take a moment: keep sending until something arrives.
    handler.setsockopt(zmq.RCVTIMEO, 100)
    deadline = time.monotonic() + 5
    while True:
        worker.send(pack_later(b"gone", b"Tnew"))
        try:
            frames = handler.recv_multipart()
            break
        except zmq.Again:
            assert time.monotonic() < deadline
    assert frames[2] == b"Tnew"
    # not in silence (it was a debug line): its sessions wait for nothing
    assert ("dropped packets for a handler that is not connected (gone, or not back yet); "
            "the last: 1 for gone") in caplog.text


def test_later_packets_wait_for_a_handler_without_spinning(start_proxy, sock):
    _, spec = start_proxy()
    worker = sock(zmq.PUSH, internal(spec, "-out-stream"))
    (thread,) = [t for t in threading.enumerate() if t.name == "zmq-proxy-out-stream"]
    path = f"/proc/self/task/{thread.native_id}/schedstat"
    if not os.path.exists(path):
        pytest.skip("no schedstat in /proc")

    def cpu_ns() -> int:
        with open(path) as f:
            return int(f.read().split()[0])

    before = cpu_ns()
    worker.send(pack_later(b"nobody", b"Tlost"))
    # What is measured: the whole wait for a handler that never comes
    # (retries at growing intervals, then the packet is dropped).
    time.sleep(UNREACHABLE_GRACE + 0.3)
    used = (cpu_ns() - before) / 1e9
    # About 4 ms; polls that round their timeout down to 0 took over 20.
    assert used < 0.012, f"the relay used {used * 1000:.1f} ms of CPU while waiting"


def test_malformed_worker_packets_are_dropped(start_proxy, sock, tmp_path):
    _, spec = start_proxy()
    worker = sock(zmq.PUSH, internal(spec, "-out-stream"))
    handler = sock(zmq.ROUTER, f"ipc://{tmp_path}/client-out-stream", ROUTING_ID=b"h")
    worker.send(b"Tjust-one-frame")
    worker.send(b"")  # no address
    worker.send(b"\x09h")  # an address longer than the frame
    worker.send_multipart([b"\x01h", b"Tx"])  # several frames
    worker.send(pack_later(b"h", b"Tgood"))
    assert handler.recv_multipart()[1:] == [b"", b"Tgood"]


def wait_subscription(xpub, prefix: bytes) -> None:
    while True:
        msg = xpub.recv()
        if msg == b"\x01" + prefix:
            return


def test_handler_packets_reach_the_subscribed_worker(start_proxy, sock, tmp_path):
    _, spec = start_proxy()
    w0 = sock(zmq.SUB, internal(spec, "-in"), SUBSCRIBE=b"condure.0 ")
    w1 = sock(zmq.SUB, internal(spec, "-in"), SUBSCRIBE=b"condure.1 ")
    handler = sock(zmq.XPUB, f"ipc://{tmp_path}/client-in")
    # The workers' subscriptions travel to the handler (readiness signal).
    seen = {handler.recv(), handler.recv()}
    assert seen == {b"\x01condure.0 ", b"\x01condure.1 "}
    handler.send(b"condure.1 Tone")
    handler.send(b"condure.0 Tzero")
    handler.send(b"other Tnobody")
    assert w0.recv() == b"condure.0 Tzero"
    assert w1.recv() == b"condure.1 Tone"
    w0.setsockopt(zmq.RCVTIMEO, 200)
    with pytest.raises(zmq.Again):
        w0.recv()


def test_handler_messages_stay_whole_and_in_order(start_proxy, sock, tmp_path):
    _, spec = start_proxy()
    worker = sock(zmq.SUB, internal(spec, "-in"), SUBSCRIBE=b"condure ")
    handler = sock(zmq.XPUB, f"ipc://{tmp_path}/client-in")
    assert handler.recv() == b"\x01condure "
    sent = [[b"condure T%d" % i] if i % 2 else [b"condure T%d" % i, b"more", b"%d" % i]
            for i in range(500)]
    for frames in sent:
        handler.send_multipart(frames)
    assert [worker.recv_multipart() for _ in sent] == sent
    # Unsubscribing travels to the handler too.
    worker.setsockopt(zmq.UNSUBSCRIBE, b"condure ")
    assert handler.recv() == b"\x00condure "


def test_handler_packets_for_a_stalled_worker_cost_nothing_later(start_proxy, sock, tmp_path):
    _, spec = start_proxy()
    stalled = sock(zmq.SUB, internal(spec, "-in"), SUBSCRIBE=b"condure ", RCVHWM=10)
    probe = sock(zmq.SUB, internal(spec, "-in"), SUBSCRIBE=b"probe ")
    handler = sock(zmq.XPUB, f"ipc://{tmp_path}/client-in", SNDHWM=0)
    assert {handler.recv(), handler.recv()} == {b"\x01condure ", b"\x01probe "}
    # More than the relay's queue to the worker holds (100 high-water
    # marks: 50,500 here), and the worker reads nothing: the relay's
    # output to it is full.
    for i in range(150_000):
        handler.send(b"condure T%d" % i)
    handler.send(b"probe Tend")
    probe.setsockopt(zmq.RCVTIMEO, 20_000)
    assert probe.recv() == b"probe Tend"  # the relay has passed everything on
    before = thread_cpu("zmq-proxy-in")
    time.sleep(1.0)  # what is measured: a second with a stalled worker
    used = thread_cpu("zmq-proxy-in") - before
    assert used < 0.1, f"the relay used {used:.2f} s of CPU with a stalled worker"
    assert stalled.recv() == b"condure T0"  # what did not fit was dropped


def req_packet(rid: bytes, body: bytes) -> bytes:
    return b"T" + tnetstring.dumps({b"id": rid, b"body": body})


@pytest.mark.parametrize("kind", ["rep", "router"])
def test_req_replies_return_to_the_asking_worker(start_proxy, sock, tmp_path, kind):
    _, spec = start_proxy(listen=(ListenSpec(port=1, mode="req"),))
    assert spec["stream"] == [] and len(spec["req"]) == 1
    workers = [sock(zmq.DEALER, spec["req"][0], ROUTING_ID=routing_id(i, 100 + i))
               for i in range(3)]
    handler = sock(zmq.REP if kind == "rep" else zmq.ROUTER, f"ipc://{tmp_path}/req")
    for i, w in enumerate(workers):
        w.send_multipart([b"", req_packet(b"%d-0-0" % i, b"q%d" % i)])
    for _ in workers:
        if kind == "rep":
            packet = handler.recv()
            handler.send(packet.replace(b"q", b"a"))
        else:
            # The handler sees what one condure sends: its peer, "", packet.
            peer, empty, packet = handler.recv_multipart()
            assert empty == b""
            # Replies are routed by id, whatever the envelope says.
            handler.send_multipart([peer, b"x", b"y", b"", packet.replace(b"q", b"a")])
    for i, w in enumerate(workers):
        assert w.recv_multipart() == [b"", req_packet(b"%d-0-0" % i, b"a%d" % i)]


def test_req_reply_index_parsing():
    assert reply_index(req_packet(b"12-3-4", b"")) == b"12"
    multi = b"T" + tnetstring.dumps({b"id": [{b"id": b"2-0-1"}]})
    assert reply_index(multi) == b"2"
    assert reply_index(b"Tnot a tnetstring") is None
    assert reply_index(b"xyz") is None


def test_bind_failure_undoes_everything(start_proxy, tmp_path):
    with pytest.raises(zmq.ZMQError):
        start_proxy(zclient_stream=("tcp://256.0.0.1:1",))
    # the private directory of the failed proxy is gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("condure-")]


def test_close_with_traffic_in_flight(start_proxy, sock, tmp_path):
    proxy, spec = start_proxy()
    worker = sock(zmq.PUSH, internal(spec, "-out-stream"))
    for i in range(100):
        worker.send(pack_later(b"nobody", b"T%d" % i))
    started = time.monotonic()
    proxy.close()
    assert time.monotonic() - started < 4


def test_later_packets_back_up_to_the_workers_while_a_handler_lags(start_proxy, sock, tmp_path):
    """Backpressure: while a handler does not read, the relay stops taking
    the workers' packets past its high mark (docs/handover.md, "Bounded
    backlog"), so a worker's sends are refused after a bounded number,
    instead of the relay queueing without end; nothing is lost or
    reordered when the handler reads again."""
    _, spec = start_proxy(stream_maxconn=20, req_maxconn=0)  # hwm 1: marks (128, 32)
    handler = sock(zmq.ROUTER, f"ipc://{tmp_path}/client-out-stream",
                   ROUTING_ID=b"slow", RCVHWM=1)
    worker = sock(zmq.PUSH, internal(spec, "-out-stream"), SNDHWM=4)
    payload = b"x" * 4096
    worker.send(pack_later(b"slow", b"T0" + payload))
    assert handler.recv_multipart()[2] == b"T0" + payload  # connected, routed
    accepted = 1
    progress = time.monotonic()  # the last send the relay let through
    while accepted < 3000 and time.monotonic() - progress < 0.5:
        try:
            worker.send(pack_later(b"slow", b"T%d" % accepted + payload), zmq.NOBLOCK)
        except zmq.Again:
            time.sleep(0.001)
            continue
        accepted += 1
        progress = time.monotonic()
    # Kernel buffers and ZeroMQ's pipes hold a few hundred of these; the
    # relay's own queue at most 128. Unbounded, all 3000 went in.
    assert accepted < 1000, accepted
    handler.setsockopt(zmq.RCVTIMEO, 5000)
    got = [handler.recv_multipart()[2] for _ in range(accepted - 1)]
    assert got == [b"T%d" % i + payload for i in range(1, accepted)]
