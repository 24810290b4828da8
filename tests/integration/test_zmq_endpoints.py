"""ZeroMQ endpoint options: --ipc-file-mode, tcp bases, several bases,
--zclient-connect (reference 2.1, 3.1, 3.5)."""

from __future__ import annotations

import os
import stat

import pytest

from tests.harness import procs
from tests.harness.flows import HOST
from tests.harness.http_client import connect, request


def serve_one(condure, handler, path="/x"):
    with connect(condure.port) as c:
        c.send(request("GET", path, HOST))
        req = handler.recv()
        assert req["uri"] == b"http://example.com" + path.encode()
        handler.reply(req, body=b"ok")
        resp = c.read_response()
        assert resp.code == 200 and resp.body == b"ok"


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
