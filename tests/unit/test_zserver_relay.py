"""The supervisor's client-role relay (supervisor/zserver.py) between real sockets.

"Handler" sockets connect to the public endpoints the proxy binds, as a
handler (Pushpin, say) does; "worker" sockets connect to the internal ones
the worker spec names, as a worker behind the supervisor does.
"""

from __future__ import annotations

import logging
import os
import stat
import time

import pytest
import zmq

from condure.config import Config
from condure.net.zmqclient import pack_frames, unpack_frames
from condure.supervisor.zmqproxy import ZmqProxy
from tests.unit import zmq_sockets
from tests.unit.zmq_sockets import thread_cpu

ID = b"condure"

sock = zmq_sockets.sock  # the fixture


@pytest.fixture
def start_proxy(tmp_path):
    proxies: list[ZmqProxy] = []

    def start(**kw) -> tuple[ZmqProxy, dict]:
        kw.setdefault("listen", ())  # client role only, unless a test says
        kw.setdefault("zserver_stream", (f"ipc://{tmp_path}/zurl",))
        kw.setdefault("zserver_req", (f"ipc://{tmp_path}/zurl-req",))
        proxy = ZmqProxy(Config(**kw), runtime_dir=str(tmp_path))
        proxies.append(proxy)
        return proxy, proxy.start()

    yield start
    for p in proxies:
        p.close()


def recv_within(s: zmq.Socket, ms: int = 50) -> list[bytes] | None:
    return s.recv_multipart() if s.poll(ms) else None


def until_received(send, receivers, probe: bytes, deadline: float = 5.0) -> None:
    """Send ``probe`` again until every receiver has got it (a SUB's
    subscription, or a new connection, is on its way meanwhile); then drain
    the extra copies. The readiness check of PUB/SUB tests."""
    got: set[int] = set()
    end = time.monotonic() + deadline
    while len(got) < len(receivers):
        assert time.monotonic() < end, "probe never arrived"
        send(probe)
        for i, r in enumerate(receivers):
            frames = recv_within(r)
            if frames is not None:
                assert frames[-1].endswith(probe)
                got.add(i)
    for r in receivers:
        while recv_within(r, 20) is not None:
            pass


def send_later(router: zmq.Socket, payload: bytes) -> None:
    """A handler ROUTER's send to condure's ROUTER (identity --id); waits
    for the connection (ROUTER_MANDATORY) rather than dropping."""
    end = time.monotonic() + 5
    while True:
        try:
            router.send_multipart([ID, b"", payload])
            return
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH or time.monotonic() > end:
                raise
            time.sleep(0.01)


def test_spec_and_log_lines(start_proxy, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="condure")
    b1, b2 = f"ipc://{tmp_path}/a", f"ipc://{tmp_path}/b"
    proxy, spec = start_proxy(zserver_stream=(b1, b2), ipc_file_mode=0o660)
    [stream] = spec["zserver_stream"]
    [req] = spec["zserver_req"]
    assert set(stream) == {"in", "in_stream", "out"} and set(req) == {"in", "out"}
    for ep in (*stream.values(), *req.values()):
        assert ep.startswith(f"ipc://{proxy.dir}/")
    assert "proxy" not in spec and spec["connect"] is True  # server role not bound
    assert not os.path.exists(tmp_path / "client-out")
    messages = [r.getMessage() for r in caplog.records]
    assert f"zserver bind {b1}-in {b1}-in-stream {b1}-out" in messages
    assert f"zserver bind {b2}-in {b2}-in-stream {b2}-out" in messages
    assert f"zserver req bind ipc://{tmp_path}/zurl-req" in messages
    for name in ("a-in", "a-in-stream", "a-out", "b-out", "zurl-req"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o660


def test_first_packet_reaches_a_worker_from_every_base(start_proxy, sock, tmp_path):
    b1, b2 = f"ipc://{tmp_path}/a", f"ipc://{tmp_path}/b"
    _, spec = start_proxy(zserver_stream=(b1, b2))
    worker = sock(zmq.PULL, spec["zserver_stream"][0]["in"])
    for base in (b1, b2):
        handler = sock(zmq.PUSH, f"{base}-in")
        handler.send(b"T first " + base.encode())
        assert worker.recv_multipart() == [b"T first " + base.encode()]


def test_later_packets_reach_every_worker_without_envelope(start_proxy, sock, tmp_path):
    _, spec = start_proxy()
    stream = spec["zserver_stream"][0]
    workers = [sock(zmq.SUB, stream["in_stream"], SUBSCRIBE=b"") for _ in range(2)]
    handler = sock(zmq.ROUTER, f"ipc://{tmp_path}/zurl-in-stream", ROUTER_MANDATORY=1)
    until_received(lambda p: send_later(handler, p), workers, b"Tprobe")
    handler.send_multipart([ID, b"", b"T credits"])
    handler.send_multipart([ID, b"no delimiter"])  # malformed: dropped
    handler.send_multipart([ID, b"", b"T cancel"])
    for w in workers:
        assert w.recv_multipart() == [b"T credits"]
        assert w.recv_multipart() == [b"T cancel"]


def test_worker_packets_are_published_unchanged(start_proxy, sock, tmp_path):
    _, spec = start_proxy()
    worker = sock(zmq.PUSH, spec["zserver_stream"][0]["out"])
    mine = sock(zmq.SUB, f"ipc://{tmp_path}/zurl-out", SUBSCRIBE=b"handler1 ")
    other = sock(zmq.SUB, f"ipc://{tmp_path}/zurl-out", SUBSCRIBE=b"handler2 ")
    until_received(lambda p: worker.send(b"handler1 " + p), [mine], b"Tprobe")
    until_received(lambda p: worker.send(b"handler2 " + p), [other], b"Tprobe")
    worker.send(b"handler1 T response")
    worker.send(b"handler2 T other")
    assert mine.recv_multipart() == [b"handler1 T response"]
    assert other.recv_multipart() == [b"handler2 T other"]
    assert recv_within(mine, 100) is None


def test_req_round_trip_keeps_the_envelope(start_proxy, sock, tmp_path):
    _, spec = start_proxy()
    req = spec["zserver_req"][0]
    worker_in = sock(zmq.PULL, req["in"])
    worker_out = sock(zmq.PUSH, req["out"])
    handler = sock(zmq.DEALER, f"ipc://{tmp_path}/zurl-req")
    handler.send_multipart([b"", b"T request"])
    [data] = worker_in.recv_multipart()
    frames = unpack_frames(data)
    assert frames is not None and len(frames) == 3
    assert frames[1:] == [b"", b"T request"]  # frames[0]: the handler's routing id
    worker_out.send(b"junk")  # not a packing: dropped
    worker_out.send(pack_frames([frames[0], b"", b"T reply"]))
    assert handler.recv_multipart() == [b"", b"T reply"]
    # A REQ handler: its envelope comes back as it was.
    req_handler = sock(zmq.REQ, f"ipc://{tmp_path}/zurl-req")
    req_handler.send(b"T second")
    frames = unpack_frames(worker_in.recv())
    assert frames is not None and frames[-1] == b"T second"
    worker_out.send(pack_frames([*frames[:-1], b"T answer"]))
    assert req_handler.recv() == b"T answer"


def test_waiting_for_a_worker_costs_no_cpu(start_proxy, sock, tmp_path):
    _, spec = start_proxy()
    sock(zmq.PUSH, f"ipc://{tmp_path}/zurl-in").send(b"T waiting")
    dealer = sock(zmq.DEALER, f"ipc://{tmp_path}/zurl-req")
    dealer.send_multipart([b"", b"T waiting req"])
    names = ("zmq-proxy-zserver-in", "zmq-proxy-zserver-req")
    before = [thread_cpu(n) for n in names]
    time.sleep(1.0)  # the span measured, not a synchronisation
    used = [thread_cpu(n) - b for n, b in zip(names, before, strict=True)]
    assert all(u < 0.05 for u in used), used
    # The packets were held, not lost: a worker connecting now gets them.
    assert sock(zmq.PULL, spec["zserver_stream"][0]["in"]).recv() == b"T waiting"
    frames = unpack_frames(sock(zmq.PULL, spec["zserver_req"][0]["in"]).recv())
    assert frames is not None and frames[-1] == b"T waiting req"


def test_close_stops_every_thread_and_removes_the_files(start_proxy, tmp_path):
    proxy, _ = start_proxy()
    names = {t.name for t in proxy._threads}
    assert names == {"zmq-proxy-zserver-in", "zmq-proxy-zserver-in-stream",
                     "zmq-proxy-zserver-out", "zmq-proxy-zserver-req"}
    runtime = proxy.dir
    assert runtime is not None and os.path.exists(tmp_path / "zurl-in")
    threads = list(proxy._threads)
    proxy.close()
    assert not any(t.is_alive() for t in threads)
    for name in ("zurl-in", "zurl-in-stream", "zurl-out", "zurl-req"):
        assert not os.path.lexists(tmp_path / name)
    assert not os.path.exists(runtime)


def test_both_roles_bound_together(start_proxy, tmp_path):
    from condure.config import ListenSpec

    _, spec = start_proxy(listen=(ListenSpec(port=0),),
                          zclient_stream=(f"ipc://{tmp_path}/client",))
    assert spec["proxy"] is True and spec["stream"] and "zserver_stream" in spec
    assert os.path.exists(tmp_path / "client-out") and os.path.exists(tmp_path / "zurl-in")


def test_server_role_connect_mode_binds_only_the_client_role(start_proxy, tmp_path):
    base = f"ipc://{tmp_path}/client"
    from condure.config import ListenSpec

    _, spec = start_proxy(listen=(ListenSpec(port=0),), zclient_stream=(base,),
                          zclient_connect=True)
    assert spec["stream"] == [base] and "proxy" not in spec
    assert not os.path.exists(tmp_path / "client-out")
    assert os.path.exists(tmp_path / "zurl-out")


def test_zserver_connect_binds_nothing_for_the_client_role(start_proxy, tmp_path):
    from condure.config import ListenSpec

    _, spec = start_proxy(listen=(ListenSpec(port=0),),
                          zclient_stream=(f"ipc://{tmp_path}/client",), zserver_connect=True)
    assert "zserver_stream" not in spec and "zserver_req" not in spec
    assert not os.path.exists(tmp_path / "zurl-in")
