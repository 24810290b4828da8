"""Handler packets held at a restart's start until the workers subscribe
(condure/supervisor/subhold.py): the hold on its own, then in the
supervisor's relay between real ZeroMQ sockets ("worker" SUB sockets on the
internal endpoint, a "handler" XPUB on the public one, as in
test_zmqproxy.py)."""

from __future__ import annotations

import logging
import time

import pytest
import zmq

from condure.config import Config
from condure.supervisor import zmqproxy
from condure.supervisor.subhold import SubscriptionHold, address_of
from condure.supervisor.zmqproxy import ZmqProxy
from tests.unit import zmq_sockets

sock = zmq_sockets.sock  # the fixture

W0, W1 = b"condure.0 ", b"condure.1 "


# -- the hold ------------------------------------------------------------------


def test_address_of():
    assert address_of(b"condure.1 T{}") == b"condure.1 "
    assert address_of(b"nospace") == b"nospace"


def test_packets_wait_for_their_address_and_leave_in_order():
    hold = SubscriptionHold([W0, W1], max_packets=100)
    sent = [[b"condure.%d T%d" % (i % 2, i)] for i in range(10)]
    assert not any(hold.offer(p) for p in sent)
    assert not hold.done
    assert hold.subscribed(W1) == sent[1::2]
    assert hold.offer([b"condure.1 Tlater"])  # nothing waits for condure.1 any more
    assert not hold.offer([b"condure.0 Tlater"])  # behind what waits for condure.0
    assert hold.subscribed(W0) == [*sent[0::2], [b"condure.0 Tlater"]]
    assert hold.done and hold.total == 11 and hold.bytes == 0


def test_a_general_subscription_covers_every_address():
    hold = SubscriptionHold([W0], max_packets=100)
    assert not hold.offer([b"condure.0 Ta", b"more"])
    assert not hold.offer([b"condure.7 Tb"])
    assert hold.subscribed(b"condure.") == [[b"condure.0 Ta", b"more"], [b"condure.7 Tb"]]
    assert hold.done


def test_a_worker_gone_meanwhile_holds_again():
    hold = SubscriptionHold([W0], max_packets=100)
    hold.subscribed(W0)
    assert hold.offer([b"condure.0 Ta"])
    hold.unsubscribed(W0)
    assert not hold.offer([b"condure.0 Tb"])
    assert not hold.done


def test_the_hold_is_bounded_in_packets_and_bytes():
    hold = SubscriptionHold([W0], max_packets=3, max_bytes=1000)
    for i in range(5):
        hold.offer([b"condure.0 T%d" % i])
    assert (len(hold.held), hold.overflow) == (3, 2)
    hold = SubscriptionHold([W0], max_packets=100, max_bytes=1000)
    hold.offer([b"condure.0 T" + b"x" * 600])
    hold.offer([b"condure.0 T" + b"y" * 600])  # past 1000 bytes: dropped
    hold.offer([b"condure.0 Tsmall"])  # still fits
    assert (len(hold.held), hold.overflow) == (2, 1)
    assert [p[0][-5:] for p in hold.subscribed(W0)] == [b"xxxxx", b"small"]


def test_the_end_drops_what_nobody_took(caplog):
    hold = SubscriptionHold([W0], max_packets=2)
    hold.offer([b"condure.0 Ta"])
    hold.offer([b"condure.5 Tb"])
    hold.offer([b"condure.5 Tc"])  # beyond the bound
    hold.subscribed(W0)
    hold.end()
    with caplog.at_level(logging.INFO, logger="condure"):
        hold.report(5.0)
    assert hold.expired == 1 and hold.overflow == 1
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "1 held and delivered, 1 dropped beyond the bound (2 packets" in record.message
    assert "1 dropped for addresses no worker subscribed to within 5.0 s" in record.message


# -- in the supervisor's relay ---------------------------------------------------


@pytest.fixture
def start_proxy(tmp_path):
    proxies: list[ZmqProxy] = []

    def start(hold_for=("condure.0", "condure.1")) -> dict:
        config = Config(zclient_stream=(f"ipc://{tmp_path}/client",))
        proxy = ZmqProxy(config, runtime_dir=str(tmp_path),
                         hold_for=list(hold_for) if hold_for else None)
        proxies.append(proxy)
        return proxy.start()

    yield start
    for p in proxies:
        p.close()


def worker(sock, spec, prefix: bytes) -> zmq.Socket:
    return sock(zmq.SUB, spec["stream"][0] + "-in", SUBSCRIBE=prefix)


def handler(sock, tmp_path) -> zmq.Socket:
    return sock(zmq.XPUB, f"ipc://{tmp_path}/client-in", SNDHWM=0)


def test_packets_sent_before_the_workers_subscribe_reach_them(start_proxy, sock, tmp_path):
    spec = start_proxy()
    pub = handler(sock, tmp_path)
    # The supervisor's own subscription comes with the connection.
    assert pub.recv() == b"\x01condure"
    sent = [b"condure.%d T%d" % (i % 2, i) for i in range(1000)]
    for packet in sent:
        pub.send(packet)
    pub.send(b"condure.0 T", zmq.SNDMORE)  # a message of several frames stays whole
    pub.send(b"second frame")
    w0 = worker(sock, spec, W0)
    assert pub.recv() == b"\x01" + W0
    got0 = [w0.recv() for _ in range(500)]
    assert got0 == sent[0::2]  # everything, in order
    assert w0.recv_multipart() == [b"condure.0 T", b"second frame"]
    pub.send(b"condure.0 Tafter")
    assert w0.recv() == b"condure.0 Tafter"
    w1 = worker(sock, spec, W1)
    assert pub.recv() == b"\x01" + W1
    assert [w1.recv() for _ in range(500)] == sent[1::2]
    # Every worker subscribed: the supervisor's subscription goes.
    assert pub.recv() == b"\x00condure"
    pub.send(b"condure.1 Tlast")
    assert w1.recv() == b"condure.1 Tlast"


def test_without_a_hold_packets_before_the_subscriptions_are_dropped(start_proxy, sock,
                                                                     tmp_path):
    """What a start with nothing to adopt does (and every start did)."""
    spec = start_proxy(hold_for=None)
    pub = handler(sock, tmp_path)
    pub.send(b"condure.0 Tearly")
    w0 = worker(sock, spec, W0)
    assert pub.recv() == b"\x01" + W0
    pub.send(b"condure.0 Tlate")
    assert w0.recv() == b"condure.0 Tlate"


def test_what_no_worker_takes_is_dropped_at_the_end_of_the_hold(start_proxy, sock, tmp_path,
                                                               monkeypatch, caplog):
    monkeypatch.setattr(zmqproxy, "HOLD_TIME", 0.5)
    caplog.set_level(logging.INFO, logger="condure")
    spec = start_proxy()
    pub = handler(sock, tmp_path)
    assert pub.recv() == b"\x01condure"
    started = time.monotonic()
    pub.send(b"condure.9 Tnobody")
    pub.send(b"condure.0 Tzero")
    w0, w1 = worker(sock, spec, W0), worker(sock, spec, W1)
    assert w0.recv() == b"condure.0 Tzero"
    # Held for condure.9 until the hold time is over, then the relay as usual.
    assert pub.recv() in (b"\x01" + W0, b"\x01" + W1)
    assert pub.recv() in (b"\x01" + W0, b"\x01" + W1)
    assert pub.recv() == b"\x00condure"
    assert time.monotonic() - started >= 0.4
    pub.send(b"condure.1 Tone")
    assert w1.recv() == b"condure.1 Tone"
    deadline = time.monotonic() + 5
    while not any("dropped for addresses no worker" in r.message for r in caplog.records):
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.02)
    assert "1 held and delivered, 0 dropped beyond the bound" in caplog.text
    assert "1 dropped for addresses no worker subscribed to" in caplog.text


def test_close_during_the_hold(sock, tmp_path):
    config = Config(zclient_stream=(f"ipc://{tmp_path}/client",))
    proxy = ZmqProxy(config, runtime_dir=str(tmp_path), hold_for=["condure.0"])
    proxy.start()
    try:
        pub = handler(sock, tmp_path)
        assert pub.recv() == b"\x01condure"
        pub.send(b"condure.0 Theld")
        threads = list(proxy._threads)
        started = time.monotonic()
    finally:
        proxy.close()
    assert not any(t.is_alive() for t in threads)
    assert time.monotonic() - started < 2  # it stopped on TERMINATE, not after the hold
