"""ZeroMQ endpoint options: --ipc-file-mode, tcp bases, several bases,
--zclient-connect (reference 2.1, 3.1, 3.5)."""

from __future__ import annotations

import os
import stat
import time

import pytest

from tests.harness import procs
from tests.harness.flows import HOST, serve_one
from tests.harness.http_client import connect, request


@pytest.mark.parametrize("mode", ["600", "660"])
def test_ipc_file_mode_is_octal(tmp_path, make_handler, mode):
    condure = procs.start_condure("ours", tmp_path, extra_args=["--ipc-file-mode", mode])
    try:
        for suffix in ("-out", "-out-stream", "-in"):
            st = os.stat(tmp_path / f"client{suffix}")
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == int(mode, 8), (suffix, oct(st.st_mode))
        serve_one(condure, make_handler(condure))
    finally:
        assert condure.stop() == 0


def test_tcp_base_binds_three_consecutive_ports_alongside_ipc(tmp_path, make_handler):
    # Several bases: every socket binds every base's endpoint; the handler
    # here is connected to the tcp ones only.
    port = procs.free_port()
    while True:
        try:
            for p in (port, port + 1, port + 2):
                with __import__("socket").create_server(("127.0.0.1", p)):
                    pass
            break
        except OSError:
            port = procs.free_port()
    base = f"tcp://127.0.0.1:{port}"
    condure = procs.start_condure("ours", tmp_path, extra_args=["--zclient-stream", base])
    try:
        serve_one(condure, make_handler(base, sub_prefix=condure.instance_id), "/tcp")
    finally:
        assert condure.stop() == 0


def test_zclient_connect_reaches_a_binding_handler(tmp_path, make_handler):
    # start_condure names the base ipc://<dir>/client; the handler binds it.
    (tmp_path / "c").mkdir()
    handler = make_handler(f"ipc://{tmp_path}/c/client", bind=True, wait=False)
    condure = procs.start_condure("ours", tmp_path / "c", extra_args=["--zclient-connect"])
    try:
        handler.wait_ready()
        serve_one(condure, handler, "/connect")
    finally:
        assert condure.stop() == 0


def test_packets_wait_for_a_handler_still_connecting(tmp_path):
    """A handler whose ROUTER connects a moment after it answered still gets
    condure's next packets (they wait up to a second, per handler)."""
    import tnetstring
    import zmq

    condure = procs.start_condure("ours", tmp_path, workers=1)  # its address is --id
    ctx = zmq.Context()
    try:
        pull = ctx.socket(zmq.PULL)
        pull.connect(f"{condure.base}-out")
        pub = ctx.socket(zmq.XPUB)
        pub.connect(f"{condure.base}-in")
        assert pub.poll(5000) and pub.recv().startswith(b"\x01")  # condure subscribed
        with connect(condure.port) as c:
            c.send(request("POST", "/late", [*HOST, ("Content-Length", "5")]) + b"hello")
            assert pull.poll(5000)
            req = tnetstring.loads(pull.recv()[1:])
            credit = {b"from": b"late", b"id": req[b"id"], b"seq": 0,
                      b"type": b"credit", b"credits": 100}
            pub.send(condure.instance_id.encode() + b" T" + tnetstring.dumps(credit))
            # The handler's ROUTER comes up a while later (several of
            # condure's 50 ms retries), well within the grace.
            time.sleep(0.3)
            router = ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.IDENTITY, b"late")
            router.connect(f"{condure.base}-out-stream")
            assert router.poll(5000), "the body packet was dropped"
            _cid, _empty, payload = router.recv_multipart()
            body = tnetstring.loads(payload[1:])
            assert body[b"id"] == req[b"id"] and body[b"body"] == b"hello"
            router.close(0)
    finally:
        ctx.destroy(0)
        assert condure.stop() == 0


def test_requests_wait_for_a_handler_whose_pub_connects_late(tmp_path):
    """After condure starts (a restart, say) a handler's sockets reconnect,
    each on its own timer. A request passed on to a PULL that is back
    before the handler's PUB would be answered into a PUB that does not have
    condure's subscription yet, and the answer would be dropped: first
    packets wait (up to a few seconds) until a handler has connected to
    BASE-in."""
    import tnetstring
    import zmq

    condure = procs.start_condure("ours", tmp_path, workers=1)
    ctx = zmq.Context()
    try:
        pull = ctx.socket(zmq.PULL)
        pull.connect(f"{condure.base}-out")
        with connect(condure.port) as c:
            c.send(request("GET", "/late", HOST))
            assert not pull.poll(300), "the request went out before the handler's PUB connected"
            pub = ctx.socket(zmq.PUB)
            pub.connect(f"{condure.base}-in")
            assert pull.poll(5000)
            req = tnetstring.loads(pull.recv()[1:])
            answer = {b"from": b"late", b"id": req[b"id"], b"seq": 0, b"code": 200,
                      b"reason": b"OK", b"headers": [[b"Content-Length", b"4"]],
                      b"body": b"late"}
            pub.send(condure.instance_id.encode() + b" T" + tnetstring.dumps(answer))  # at once
            resp = c.read_response(timeout=5)
            assert (resp.code, resp.body) == (200, b"late")
    finally:
        ctx.destroy(0)
        assert condure.stop() == 0
