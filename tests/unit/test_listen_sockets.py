"""Socket activation parsing, listener matching and binding, dispatch."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest

from condure import worker as worker_mod
from condure.config import Config, ConfigError, ListenSpec, parse_listen
from condure.supervisor import activation, fdstore, sockets
from condure.supervisor.activation import ActivationError, identify, listen_fds_with_names
from condure.supervisor.dispatch import Dispatcher, LeastLoaded
from condure.supervisor.sockets import (
    AcquireError,
    acquire_listeners,
    match_listeners,
)
from tests.harness.procs import REPO_ROOT, python_env

PID = 4242


def env(**kw: str) -> dict[str, str]:
    return {"OTHER": "x", **kw}


# -- listen_fds_with_names ------------------------------------------------------


def test_no_variables_means_no_sockets():
    e = env()
    assert listen_fds_with_names(True, e, PID) == []
    assert e == {"OTHER": "x"}


def test_other_pid_is_ignored_and_variables_removed():
    e = env(LISTEN_PID=str(PID + 1), LISTEN_FDS="2", LISTEN_FDNAMES="a:b")
    assert listen_fds_with_names(True, e, PID) == []
    assert e == {"OTHER": "x"}


def test_variables_kept_when_asked():
    e = env(LISTEN_PID=str(PID + 1), LISTEN_FDS="1")
    listen_fds_with_names(False, e, PID)
    assert e["LISTEN_FDS"] == "1"


@pytest.mark.parametrize("pid, fds, names", [
    ("abc", "1", None), ("-3", "1", None), ("0", "1", None),
    (str(PID), "x", None), (str(PID), "-1", None),
    (str(PID), "2", "only-one"), (str(PID), "1", "a:b"), (str(PID), "1", ""),
])
def test_malformed_variables_are_errors_and_removed(pid, fds, names):
    e = env(LISTEN_PID=pid, LISTEN_FDS=fds)
    if names is not None:
        e["LISTEN_FDNAMES"] = names
    with pytest.raises(ActivationError):
        listen_fds_with_names(True, e, PID)
    assert e == {"OTHER": "x"}


def test_zero_fds():
    assert listen_fds_with_names(True, env(LISTEN_PID=str(PID), LISTEN_FDS="0"), PID) == []


def test_identify_listening_connected_and_not_a_socket(tmp_path):
    lsock = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lsock.getsockname())
    server, _ = lsock.accept()
    path = tmp_path / "plain"
    path.write_text("x")
    fd = os.open(path, os.O_RDONLY)
    try:
        item = identify(lsock.detach(), "web")
        assert item.listening and item.family == socket.AF_INET
        assert item.type == socket.SOCK_STREAM and item.name == "web"
        assert '"web"' in item.describe() and "listening" in item.describe()
        conn = identify(server.detach(), "connection")
        assert not conn.listening
        with pytest.raises(ActivationError, match="not a socket"):
            identify(fd, "file")
    finally:
        os.close(fd)
        item.sock.close()
        conn.sock.close()
        client.close()


def run_activated(tmp_path, socks, code, *wrapper_args):
    """Run python ``code`` under the activation wrapper with ``socks``."""
    fds = [s.fileno() for s in socks]
    cmd = [sys.executable, "-m", "tests.harness.activate"]
    for i, fd in enumerate(fds):
        cmd += ["--fd", f"{fd}=name{i}"]
    cmd += [*wrapper_args, "--", sys.executable, "-c", code]
    out = subprocess.run(cmd, pass_fds=fds, capture_output=True, text=True, timeout=30,
                         env=python_env(), cwd=str(REPO_ROOT))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


PROBE = """
import fcntl, json, os
from condure.supervisor import activation
items = activation.inherited_sockets()
print(json.dumps({
    "items": [[i.fd, i.name, i.listening,
               bool(fcntl.fcntl(i.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)] for i in items],
    "env": [k for k in os.environ if k.startswith("LISTEN_")],
}))
"""


def test_wrapper_passes_sockets_like_systemd(tmp_path):
    a = socket.create_server(("127.0.0.1", 0))
    b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    b.bind(str(tmp_path / "s"))
    b.listen()
    with a, b:
        result = run_activated(tmp_path, [a, b], PROBE)
    assert result["items"] == [[3, "name0", True, True], [4, "name1", True, True]]
    assert result["env"] == []


def test_wrapper_other_pid_and_no_names(tmp_path):
    a = socket.create_server(("127.0.0.1", 0))
    with a:
        assert run_activated(tmp_path, [a], PROBE, "--pid", "1")["items"] == []
        assert run_activated(tmp_path, [a], PROBE, "--no-names")["items"] == [
            [3, activation.UNKNOWN_NAME, True, True]]


def test_wrapper_passes_the_fd_store_aside(tmp_path):
    """A session socket and its manifest (a memfd) through LISTEN_FDS: set
    aside from the listeners and recovered by acquire_listeners."""
    a, b = socket.socketpair()
    manifest = fdstore.write_manifest({"v": 1, "generation": "g", "entries": [
        {"kind": "session", "name": "condure-store-g-0", "ino": fdstore.inode(a.fileno())}]})
    code = ("import json; from condure.supervisor import sockets; from condure.config import "
            "Config, parse_listen; got = sockets.acquire_listeners(Config(listen=(parse_listen("
            "'127.0.0.1:0')[0],)), 1, listen_given=True); r = got.recovered; print(json.dumps("
            "[sorted(i.name for i in got.stored), len(r.sessions), r.lost, r.missing]))")
    cmd = [sys.executable, "-m", "tests.harness.activate", "--fd",
           f"{manifest}=condure-store-g-manifest", "--fd", f"{a.fileno()}=condure-store-g-0",
           "--", sys.executable, "-c", code]
    with a, b:
        out = subprocess.run(cmd, check=False, pass_fds=[manifest, a.fileno()],
                             capture_output=True, text=True, timeout=30, env=python_env(),
                             cwd=str(REPO_ROOT))
    os.close(manifest)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [["condure-store-g-0", "condure-store-g-manifest"], 1, 0, 0]


# -- listen parameters and options ----------------------------------------------


def test_parse_listen_fd_name():
    spec, keys = parse_listen("fd-name=web,tls,default-cert=x")
    assert spec.fd_name == "web" and spec.tls and spec.host is None and spec.port is None
    assert spec.address == "fd-name=web" and "fd-name" in keys
    spec, _ = parse_listen("127.0.0.1:80,fd-name=web,req")
    assert (spec.host, spec.port, spec.fd_name, spec.mode) == ("127.0.0.1", 80, "web", "req")
    spec, _ = parse_listen("/run/x.sock,local,fd-name=u")
    assert spec.path == "/run/x.sock" and spec.fd_name == "u"
    for bad in ("fd-name=", "fd-name=a:b", "fd-name=a,mode=600"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_accept_mode_validated():
    assert Config().accept_mode == "auto"
    with pytest.raises(ConfigError, match="accept-mode"):
        Config(accept_mode="fastest")


# -- matching passed sockets ------------------------------------------------------


@pytest.fixture
def passed():
    """``passed(name, ...)`` -> identified listening TCP sockets; closed after."""
    made: list[activation.Inherited] = []

    def factory(*names: str) -> list[activation.Inherited]:
        items = [identify(socket.create_server(("127.0.0.1", 0)).detach(), n) for n in names]
        made.extend(items)
        return items

    yield factory
    for item in made:
        item.sock.close()


def listen(*values: str) -> Config:
    return Config(listen=tuple(parse_listen(v)[0] for v in values))


def test_no_listen_uses_every_passed_socket_shared(passed):
    items = passed("a", "b")
    got = match_listeners(Config(), 4, "auto", False, items)
    assert got.mode == "shared" and got.config.accept_mode == "shared"
    assert [s.fd_name for s in got.config.listen] == ["a", "b"]
    assert got.config.listen[0].port == items[0].sock.getsockname()[1]
    assert [x["spec"] for x in got.worker_listeners(3)] == [0, 1]
    assert got.worker_listeners(0)[0]["fd"] == items[0].fd


def test_named_entries_match_and_same_name_groups(passed):
    web1, web2, api = passed("web", "web", "api")
    got = match_listeners(listen("fd-name=api,req", "fd-name=web"), 2, "auto", True,
                          [web1, web2, api])
    assert [(i.spec, i.name) for i in got.items] == [(0, "api"), (1, "web"), (1, "web")]
    assert got.config.listen[0].mode == "req"


def test_named_entry_takes_the_socket_address(tmp_path):
    usock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    usock.bind(str(tmp_path / "u.sock"))
    usock.listen()
    item = identify(usock.detach(), "u")
    try:
        got = match_listeners(listen("fd-name=u,req"), 2, "auto", True, [item])
        spec = got.config.listen[0]
        assert spec.path == str(tmp_path / "u.sock") and spec.is_local and spec.mode == "req"
    finally:
        item.sock.close()


def test_missing_name_is_an_error(passed):
    items = passed("web")
    with pytest.raises(AcquireError, match=r"fd-name=api.*passed: web"):
        match_listeners(listen("fd-name=web", "fd-name=api"), 2, "auto", True, items)


def test_unnamed_passed_socket_is_an_error(passed):
    items = passed("web", "extra")
    with pytest.raises(AcquireError, match=r"not named.*extra"):
        match_listeners(listen("fd-name=web"), 2, "auto", True, items)


def test_address_must_agree_with_the_passed_socket(passed):
    (item,) = passed("web")
    port = item.sock.getsockname()[1]
    match_listeners(listen(f"127.0.0.1:{port},fd-name=web"), 1, "auto", True, [item])
    with pytest.raises(AcquireError, match="passed socket is"):
        match_listeners(listen(f"127.0.0.1:{port + 1},fd-name=web"), 1, "auto", True, [item])


def test_connected_socket_is_inetd_style():
    lsock = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lsock.getsockname())
    server, _ = lsock.accept()
    item = identify(server.detach(), "connection")
    try:
        got = match_listeners(Config(), 2, "auto", False, [item])
        assert got.connection is item and got.items == []
        assert got.config.listen[0].fd_name == "connection"
        with pytest.raises(AcquireError, match="fd-name=connection"):
            match_listeners(listen("fd-name=web"), 2, "auto", True, [item])
    finally:
        item.sock.close()
        client.close()
        lsock.close()


def test_named_socket_without_activation_is_an_error():
    with pytest.raises(AcquireError, match="no sockets were passed"):
        acquire_listeners(listen("fd-name=web"), 2, environ={})


# -- binding ---------------------------------------------------------------------


def test_reuseport_binds_one_socket_per_worker_on_one_port(tmp_path):
    config = listen("127.0.0.1:0", f"{tmp_path}/u.sock,local")
    got = acquire_listeners(config, 4, environ={})
    try:
        assert got.mode == "reuseport"
        tcp = [i for i in got.items if i.spec == 0]
        assert [i.slot for i in tcp] == [0, 1, 2, 3]
        assert len({i.sock.getsockname()[1] for i in tcp}) == 1
        assert all(i.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for i in tcp)
        unix = [i for i in got.items if i.spec == 1]
        assert len(unix) == 1 and unix[0].slot is None  # Unix sockets are shared
        for slot in range(4):
            fds = [x["fd"] for x in got.worker_listeners(slot)]
            assert fds == [tcp[slot].sock.fileno(), unix[0].sock.fileno()]
    finally:
        got.close()
    assert not (tmp_path / "u.sock").exists()


def test_reuseport_refuses_a_port_already_served():
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen()
    with other, pytest.raises(AcquireError, match="failed to bind"):
        acquire_listeners(listen(f"127.0.0.1:{other.getsockname()[1]}"), 2, environ={})


@pytest.mark.parametrize("mode", ["shared", "dispatch"])
def test_shared_and_dispatch_bind_once(mode):
    got = acquire_listeners(listen("127.0.0.1:0"), 4, mode, environ={})
    try:
        assert len(got.items) == 1 and got.items[0].slot is None
        expect = [] if mode == "dispatch" else [got.items[0].sock.fileno()]
        assert [x["fd"] for x in got.worker_listeners(2)] == expect
    finally:
        got.close()


# -- dispatch -------------------------------------------------------------------


def test_least_loaded_counts_its_own_sends():
    ll = LeastLoaded()
    ll.report(0, 5)
    ll.report(1, 2)
    picks = []
    for _ in range(6):
        i = ll.pick([0, 1, 2])
        ll.dispatched(i)
        picks.append(i)
    # 0 (5) is never the least loaded; 1 (2) and 2 (0) end level at 4 each.
    assert 0 not in picks and 2 + picks.count(1) == picks.count(2) == 4
    assert ll.pick([]) is None


@pytest.fixture
def dispatch_listener():
    """(listeners, port, loop, clients): a dispatch-mode listener on a free
    port, a fresh loop, and the list of client sockets a test opens, all
    closed after it."""
    got = acquire_listeners(listen("127.0.0.1:0"), 2, "dispatch", environ={})
    loop = asyncio.new_event_loop()
    clients: list[socket.socket] = []
    yield got, got.items[0].sock.getsockname()[1], loop, clients
    for c in clients:
        c.close()
    loop.close()
    got.close()


def _run_until(loop: asyncio.AbstractEventLoop, cond) -> None:  # type: ignore[no-untyped-def]
    async def until() -> None:
        while not cond():
            await asyncio.sleep(0.01)
    loop.run_until_complete(asyncio.wait_for(until(), 5))


def test_dispatcher_hands_over_and_waits_when_nobody_can_take(dispatch_listener):
    got, port, loop, clients = dispatch_listener
    received: list[tuple[int, int]] = []
    accept = {"ok": False}

    def send(sock: socket.socket, spec: int) -> bool:
        if not accept["ok"]:
            return False
        received.append((sock.fileno(), spec))
        return True

    dispatcher = Dispatcher(got, loop, send)
    dispatcher.start()
    clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    _run_until(loop, lambda: dispatcher.pending)
    assert not dispatcher.running and len(dispatcher.pending) == 1
    accept["ok"] = True
    dispatcher.resume()
    _run_until(loop, lambda: len(received) == 3)
    assert {spec for _, spec in received} == {0} and not dispatcher.pending
    dispatcher.close()


@pytest.mark.parametrize("mode, workers, local, budget", [
    ("shared", 4, False, worker_mod.SHARED_ACCEPT_BUDGET),
    ("dispatch", 4, False, worker_mod.SHARED_ACCEPT_BUDGET),
    ("reuseport", 4, False, worker_mod.ACCEPT_BATCH),
    ("reuseport", 4, True, worker_mod.SHARED_ACCEPT_BUDGET),  # Unix: shared
    ("shared", 1, False, worker_mod.ACCEPT_BATCH),
])
def test_worker_accept_budget(mode, workers, local, budget):
    spec = ListenSpec(host=None, port=None, path="/x") if local else ListenSpec()
    loop = asyncio.new_event_loop()
    try:
        w = worker_mod.Worker(Config(workers=workers, accept_mode=mode, listen=(spec,)), loop)
        assert w._accept_budget(spec) == budget
    finally:
        loop.close()


def test_worker_adopt_connection_refuses_bad_spec_and_full():
    loop = asyncio.new_event_loop()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        w = worker_mod.Worker(Config(stream_maxconn=1, workers=1), loop)
        assert not w.adopt_connection(a, 5)
        assert a.fileno() == -1  # closed
        w.counts["stream"] = 1
        assert not w.adopt_connection(c, 0) and c.fileno() == -1
    finally:
        for s in (a, b, c, d):
            s.close()
        loop.close()


def test_sockets_module_defaults():
    assert Config().accept_mode == sockets.AUTO
    assert ListenSpec().fd_name is None


def test_dispatcher_offers_again_what_a_full_control_socket_refused(dispatch_listener):
    """A worker's control socket that cannot take a connection now (full:
    BlockingIOError) does not stop accepting: the connection is offered
    again shortly, with nobody calling resume()."""
    got, port, loop, clients = dispatch_listener
    received: list[int] = []
    refusals = [2]  # the first two offers find the socket full

    def send(sock: socket.socket, spec: int) -> bool:
        if refusals[0]:
            refusals[0] -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
        received.append(spec)
        return True

    dispatcher = Dispatcher(got, loop, send)
    dispatcher.start()
    clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    _run_until(loop, lambda: len(received) == 3)
    assert refusals == [0] and not dispatcher.pending and dispatcher.running
    clients.append(socket.create_connection(("127.0.0.1", port)))  # accepting goes on
    _run_until(loop, lambda: len(received) == 4)
    dispatcher.close()
