"""Unix-socket listeners (``PATH,local``): file mode, owner and group, requests
without a peer address, an existing file replaced at start and the socket
file removed at exit. The plain request also runs against Debian's condure
(1.9.1 knows ``local`` but not ``mode``/``user``/``group``)."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import subprocess
import sys

import pytest

from tests.harness import http_client, procs


class UnixConn(http_client.Conn):
    """The harness client over a Unix stream socket."""

    def __init__(self, path: str, timeout: float = http_client.DEFAULT_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.timeout = timeout
        self.buf = b""
        self.received = b""
        self.end = None


@pytest.fixture
def unix_conns():
    conns: list[UnixConn] = []

    def factory(path) -> UnixConn:
        conn = UnixConn(str(path))
        conns.append(conn)
        return conn

    yield factory
    for conn in conns:
        conn.close()


def exchange(handler, conn, path: str = "/x") -> None:
    conn.send(http_client.request("GET", path, [("Host", "example.com")]))
    req = handler.recv()
    assert req["uri"] == b"http://example.com" + path.encode()
    assert "peer-address" not in req and "peer-port" not in req, req
    handler.reply(req, body=b"over unix")
    resp = conn.read_response()
    assert resp.code == 200 and resp.body == b"over unix"


@pytest.mark.parametrize("impl", ["ours", pytest.param("reference", marks=pytest.mark.reference)])
def test_requests_have_no_peer_address(make_condure, make_handler, unix_conns, tmp_path,
                                       impl) -> None:
    path = tmp_path / "c.sock"
    condure = make_condure(impl, listen=[f"{path},local"])
    handler = make_handler(condure)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    conn = unix_conns(path)
    exchange(handler, conn, "/one")
    exchange(handler, conn, "/two")  # persistent, new id, still no peer fields


def test_tls_is_ignored_on_local_listeners(make_condure, make_handler, unix_conns,
                                           tmp_path) -> None:
    path = tmp_path / "c.sock"
    condure = make_condure("ours", listen=[f"{path},local,tls,default-cert=none"])
    handler = make_handler(condure)
    exchange(handler, unix_conns(path))  # plain HTTP, scheme http


def test_mode_existing_file_replaced_and_removed_at_exit(make_condure, make_handler,
                                                         unix_conns, tmp_path) -> None:
    path = tmp_path / "c.sock"
    path.write_text("stale")  # e.g. left behind by a crash
    condure = make_condure("ours", listen=[f"{path},local,mode=600",
                                           "127.0.0.1:{port}"])
    handler = make_handler(condure)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    exchange(handler, unix_conns(path))
    with http_client.connect(condure.port) as tcp:  # the TCP listener beside it
        tcp.send(http_client.request("GET", "/tcp", [("Host", "example.com")]))
        req = handler.recv()
        assert req["peer-address"] == b"127.0.0.1"
        handler.reply(req, body=b"tcp")
        assert tcp.read_response().body == b"tcp"
    assert condure.stop() == 0
    assert not path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_user_and_group(make_condure, make_handler, unix_conns, tmp_path) -> None:
    user = pwd.getpwnam("nobody")
    group = grp.getgrnam("nogroup")
    path = tmp_path / "c.sock"
    condure = make_condure("ours", listen=[f"{path},local,mode=660,user=nobody,group=nogroup"])
    handler = make_handler(condure)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (user.pw_uid, group.gr_gid)
    assert stat.S_IMODE(st.st_mode) == 0o660
    exchange(handler, unix_conns(path))


def run_condure(tmp_path, *listen: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "condure", "--zclient-stream", f"ipc://{tmp_path}/z"]
    for value in listen:
        args += ["--listen", value]
    return subprocess.run(args, capture_output=True, text=True, timeout=30,
                          env=procs.python_env(), cwd=str(procs.REPO_ROOT))


@pytest.mark.parametrize("param, message", [
    ("user=no-such-user-x", "failed to set user on {path}: no such user: no-such-user-x"),
    ("group=no-such-group-x", "failed to set group on {path}: no such group: no-such-group-x"),
], ids=["user", "group"])
def test_unknown_user_or_group_stops_startup(tmp_path, param, message) -> None:
    path = tmp_path / "c.sock"
    result = run_condure(tmp_path, f"{path},local,{param}")
    assert result.returncode == 1, result
    assert message.format(path=path) in result.stdout
    assert not path.exists()


def test_unusable_path_stops_startup(tmp_path) -> None:
    path = tmp_path / "missing-dir" / "c.sock"
    result = run_condure(tmp_path, f"{path},local")
    assert result.returncode == 1, result
    assert f"failed to bind {path}: No such file or directory" in result.stdout
    longer = tmp_path / ("x" * 120 + ".sock")  # past sockaddr_un's 108 bytes
    result = run_condure(tmp_path, f"{longer},local")
    assert result.returncode == 1, result
    assert f"failed to bind {longer}: AF_UNIX path too long" in result.stdout  # not "None"


def test_failure_later_in_startup_removes_the_socket_file(tmp_path) -> None:
    path = tmp_path / "c.sock"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_condure(tmp_path, f"{path},local", f"127.0.0.1:{port}")
    assert result.returncode == 1, result
    assert f"failed to bind 127.0.0.1:{port}" in result.stdout
    assert not path.exists()
