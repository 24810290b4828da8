"""condure.net.ipcclaim against real Unix sockets in a temp dir."""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import replace

import pytest

from condure.config import Config, ListenSpec
from condure.net import ipcclaim
from condure.net.ipcclaim import FREE, STALE, ClaimError


@pytest.fixture
def sockets():
    opened: list[socket.socket] = []

    def make(kind: int = socket.SOCK_STREAM) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, kind)
        opened.append(sock)
        return sock

    yield make
    for sock in opened:
        sock.close()


def listening(make, path, backlog: int = 8) -> socket.socket:
    sock = make()
    sock.bind(str(path))
    sock.listen(backlog)
    return sock


def stale(make, path) -> None:
    """A socket file whose socket is gone, as a killed process leaves it."""
    sock = make()
    sock.bind(str(path))
    sock.listen(1)
    sock.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_missing_file_is_free(tmp_path):
    assert ipcclaim.check(str(tmp_path / "none")) == FREE


def test_live_listener_is_refused_and_kept(tmp_path, sockets):
    path = tmp_path / "client-out"
    server = listening(sockets, path)
    with pytest.raises(ClaimError, match="another process is listening on " + str(path)):
        ipcclaim.check(str(path))
    # The probe was a real connection, and the file is still the listener's.
    server.settimeout(5)
    conn, _ = server.accept()
    assert conn.recv(1) == b""  # the probe closed its end
    conn.close()
    assert os.path.exists(path)


def test_listener_with_a_full_backlog_is_live(tmp_path, sockets):
    path = tmp_path / "busy"
    listening(sockets, path, backlog=0)
    filled = 0
    while True:  # a non-blocking connect gets EAGAIN once the backlog is full
        client = sockets()
        client.setblocking(False)
        if client.connect_ex(str(path)) != 0:
            break
        filled += 1
        assert filled < 100
    with pytest.raises(ClaimError, match="another process is listening"):
        ipcclaim.check(str(path))


def test_live_datagram_socket_is_refused(tmp_path, sockets):
    path = tmp_path / "dgram"
    sockets(socket.SOCK_DGRAM).bind(str(path))
    with pytest.raises(ClaimError, match="another process is listening"):
        ipcclaim.check(str(path))


def test_stale_socket_is_stale_and_claim_removes_it(tmp_path, sockets):
    path = tmp_path / "client-in"
    stale(sockets, path)
    assert ipcclaim.check(str(path)) == STALE
    assert ipcclaim.claim_endpoints([(f"ipc://{path}", "--zclient-stream x")]) == [str(path)]
    assert not os.path.lexists(path)


@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_not_a_socket_is_refused_and_left_alone(tmp_path, sockets, kind):
    path = tmp_path / "client-out"
    if kind == "file":
        path.write_text("keep me")
    elif kind == "dir":
        path.mkdir()
    else:
        target = tmp_path / "real"
        listening(sockets, target)
        path.symlink_to(target)
    with pytest.raises(ClaimError, match=f"{path} exists and is not a socket"):
        ipcclaim.claim_endpoints([(f"ipc://{path}", "--zclient-stream ipc://base")])
    assert os.path.lexists(path)
    if kind == "file":
        assert path.read_text() == "keep me"


def test_refusal_names_endpoint_and_option_and_removes_nothing(tmp_path, sockets):
    old = tmp_path / "a-out"
    stale(sockets, old)
    live = tmp_path / "a-in"
    listening(sockets, live)
    base = f"ipc://{tmp_path}/a"
    endpoints = [(f"{base}-out", f"--zclient-stream {base}"),
                 (f"{base}-in", f"--zclient-stream {base}")]
    with pytest.raises(ClaimError) as info:
        ipcclaim.claim_endpoints(endpoints)
    assert str(info.value).startswith(f"cannot bind {base}-in (--zclient-stream {base}): ")
    assert os.path.lexists(old), "a refusal must leave even stale files in place"


def test_relative_path_is_checked_from_the_working_directory(tmp_path, sockets, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listening(sockets, tmp_path / "client")
    with pytest.raises(ClaimError, match=r"ipc://client \(--zclient-req ipc://client\)"):
        ipcclaim.claim_endpoints([("ipc://client", "--zclient-req ipc://client")])


def test_paths_without_a_file_are_not_checked(tmp_path):
    for endpoint in ("ipc://@abstract-name", "ipc://*", "tcp://127.0.0.1:5555", "inproc://x"):
        assert ipcclaim.ipc_path(endpoint) is None
    # A path too long for a Unix socket address is left to the bind's own error.
    long_path = str(tmp_path / ("x" * 120))
    assert ipcclaim.check(long_path) == FREE
    os.mknod(long_path, stat.S_IFSOCK | 0o600)
    assert ipcclaim.check(long_path) == FREE


def test_duplicate_paths_are_checked_once(tmp_path, sockets):
    path = tmp_path / "dup"
    stale(sockets, path)
    endpoint = f"ipc://{path}"
    assert ipcclaim.claim_endpoints([(endpoint, "a"), (endpoint, "b")]) == [str(path)]


def test_bound_endpoints_follow_the_listener_modes():
    stream = ListenSpec(port=8000, mode="stream")
    req = ListenSpec(port=8001, mode="req")
    base = Config(listen=(stream,), zclient_stream=("ipc://s", "tcp://127.0.0.1:5000"),
                  zclient_req=("ipc://r",))
    assert ipcclaim.bound_endpoints(base) == [
        ("ipc://s-out", "--zclient-stream ipc://s"),
        ("ipc://s-out-stream", "--zclient-stream ipc://s"),
        ("ipc://s-in", "--zclient-stream ipc://s"),
        ("tcp://127.0.0.1:5000", "--zclient-stream tcp://127.0.0.1:5000"),
        ("tcp://127.0.0.1:5001", "--zclient-stream tcp://127.0.0.1:5000"),
        ("tcp://127.0.0.1:5002", "--zclient-stream tcp://127.0.0.1:5000"),
    ]
    assert ipcclaim.bound_endpoints(replace(base, listen=(req,))) == [
        ("ipc://r", "--zclient-req ipc://r")]
    assert len(ipcclaim.bound_endpoints(replace(base, listen=(stream, req)))) == 7
    assert ipcclaim.bound_endpoints(replace(base, zclient_connect=True)) == []


def test_claim_on_a_config_removes_stale_files_only_in_bind_mode(tmp_path, sockets):
    path = tmp_path / "client-out"
    stale(sockets, path)
    config = Config(zclient_stream=(f"ipc://{tmp_path}/client",))
    assert ipcclaim.claim(replace(config, zclient_connect=True)) == []
    assert os.path.lexists(path)
    assert ipcclaim.claim(config) == [str(path)]
    assert not os.path.lexists(path)


def test_bound_endpoints_include_the_client_role_unless_it_connects():
    config = Config(zserver_stream=("ipc://z", "tcp://127.0.0.1:6000"),
                    zserver_req=("ipc://zr",), zclient_connect=True)
    client_role = [
        ("ipc://zr", "--zserver-req ipc://zr"),
        ("ipc://z-in", "--zserver-stream ipc://z"),
        ("ipc://z-in-stream", "--zserver-stream ipc://z"),
        ("ipc://z-out", "--zserver-stream ipc://z"),
        ("tcp://127.0.0.1:6000", "--zserver-stream tcp://127.0.0.1:6000"),
        ("tcp://127.0.0.1:6001", "--zserver-stream tcp://127.0.0.1:6000"),
        ("tcp://127.0.0.1:6002", "--zserver-stream tcp://127.0.0.1:6000"),
    ]
    assert ipcclaim.bound_endpoints(config) == client_role
    # Both roles bound: the server role's first, then the client role's.
    both = ipcclaim.bound_endpoints(replace(config, zclient_connect=False))
    assert both[:3] == [(ep, "--zclient-stream ipc://client")
                        for ep in ("ipc://client-out", "ipc://client-out-stream",
                                   "ipc://client-in")]
    assert both[3:] == client_role
    # No listener: only the client role.
    assert ipcclaim.bound_endpoints(replace(config, zclient_connect=False,
                                            listen=())) == client_role
    assert ipcclaim.bound_endpoints(replace(config, zserver_connect=True)) == []


def test_claim_refuses_a_live_client_role_endpoint_naming_its_option(tmp_path, sockets):
    base = f"ipc://{tmp_path}/zurl"
    listening(sockets, tmp_path / "zurl-in-stream")
    config = Config(listen=(), zserver_stream=(base,))
    with pytest.raises(ClaimError) as info:
        ipcclaim.claim(config)
    assert str(info.value).startswith(
        f"cannot bind {base}-in-stream (--zserver-stream {base}): another process")
    assert ipcclaim.claim(replace(config, zserver_connect=True)) == []


def private_dir(parent, name: str, mode: int = 0o700):
    path = parent / name
    path.mkdir()
    path.chmod(mode)
    return path


def test_sweep_removes_private_dirs_that_nothing_listens_in(tmp_path, sockets):
    """A supervisor killed with SIGKILL leaves its private directory of ipc
    sockets; the next start removes such directories, and only those."""
    dead = private_dir(tmp_path, "condure-deadbeef")
    for name in ("stream-in", "stream-out", "stream-out-stream"):
        stale(sockets, dead / name)
    live = private_dir(tmp_path, "condure-livelive")
    stale(sockets, live / "stream-in")
    listening(sockets, live / "stream-out")  # one listener: a live condure
    empty = private_dir(tmp_path, "condure-emptyemp")  # just made, nothing bound yet
    other = private_dir(tmp_path, "condure-otherfil")
    stale(sockets, other / "stream-in")
    (other / "notes").write_text("not ours to judge")
    loose = private_dir(tmp_path, "condure-openmode", mode=0o755)
    stale(sockets, loose / "stream-in")
    named = private_dir(tmp_path, "condure-toolongname")
    stale(sockets, named / "stream-in")

    removed = ipcclaim.sweep_private_dirs(str(tmp_path), "condure-")

    assert removed == [str(dead)] and not dead.exists()
    for kept in (live, empty, other, loose, named):
        assert kept.exists(), kept
    assert ipcclaim.sweep_private_dirs(str(tmp_path / "missing"), "condure-") == []
