"""The fd store: sd_notify with descriptors, manifests, recovery by inode,
restart detection, and listeners reused across a restart.

A datagram socket bound in tmp_path stands in for systemd's notify socket."""

from __future__ import annotations

import os
import random
import select
import socket
import stat
import time

import pytest

from condure.config import Config, parse_listen
from condure.supervisor import activation, fdstore
from condure.supervisor.activation import ActivationError, identify
from condure.supervisor.fdstore import (
    MAX_FDS,
    STORE_PREFIX,
    FdStore,
    ManifestError,
    Uploader,
    inode,
    own_unit,
    read_manifest,
    recover,
    restart_in_jobs,
    restart_pending,
    write_manifest,
)
from condure.supervisor.sockets import acquire_listeners, match_listeners


class FakeManager:
    """The notify socket: what was sent, and the descriptors that came with it."""

    def __init__(self, address: str, env_value: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.env = {"NOTIFY_SOCKET": env_value}
        self.held: list[int] = []  # received descriptors not handed to a test yet

    def receive(self) -> list[tuple[dict[str, str], list[int], str]]:
        """Every message waiting: (fields, received fds, text)."""
        got = []
        while True:
            try:
                data, anc, flags, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(MAX_FDS * 4),
                    socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return got
            assert not flags & socket.MSG_CTRUNC
            fds = []
            for level, kind, payload in anc:
                assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
                fds += [int.from_bytes(payload[i:i + 4], "little")
                        for i in range(0, len(payload), 4)]
            self.held += fds
            text = data.decode()
            got.append((dict(line.split("=", 1) for line in text.split("\n")), fds, text))

    def passed(self, shuffle: bool = True) -> list[activation.Inherited]:
        """What the next start would get: every stored fd with its name, out of order."""
        named = [(fd, fields["FDNAME"]) for fields, fds, _ in self.receive() for fd in fds]
        if shuffle:
            random.Random(7).shuffle(named)
        self.held = [fd for fd in self.held if fd not in {fd for fd, _ in named}]
        return [identify(fd, name) for fd, name in named]

    def close(self) -> None:
        self.receive()
        for fd in self.held:
            os.close(fd)
        self.sock.close()


@pytest.fixture
def manager(tmp_path):
    made = FakeManager(str(tmp_path / "notify"), str(tmp_path / "notify"))
    yield made
    made.close()


@pytest.fixture
def pairs():
    """``pairs(n)`` -> n connected TCP (server, client) pairs on loopback; closed after."""
    made: list[socket.socket] = []

    def factory(n: int) -> list[tuple[socket.socket, socket.socket]]:
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            out = []
            for _ in range(n):
                client = socket.create_connection(lsock.getsockname())
                server, _ = lsock.accept()
                made.extend((server, client))
                out.append((server, client))
        return out

    yield factory
    for sock in made:
        sock.close()


def test_upload_sends_the_text_and_the_same_sockets(manager, pairs):
    ((server, _),) = pairs(1)
    a, b = socket.socketpair()
    with a, b:
        FdStore(manager.env).upload("condure-store-g-0", [server.fileno(), a.fileno()])
        FdStore(manager.env).remove("condure-store-g-0")
        (fields, fds, text), (_, none, removal) = manager.receive()
        assert text == "FDSTORE=1\nFDNAME=condure-store-g-0" and fields["FDSTORE"] == "1"
        assert [inode(fd) for fd in fds] == [inode(server.fileno()), inode(a.fileno())]
        assert removal == "FDSTOREREMOVE=1\nFDNAME=condure-store-g-0" and none == []


def test_abstract_notify_socket():
    name = f"condure-test-{os.getpid()}-{random.randrange(1 << 30)}"
    made = FakeManager("\0" + name, "@" + name)
    try:
        FdStore(made.env).upload("x", [made.sock.fileno()])
        ((fields, fds, _),) = made.receive()
        assert fields["FDNAME"] == "x" and inode(fds[0]) == inode(made.sock.fileno())
    finally:
        made.close()


def test_names_counts_and_no_notify_socket(manager):
    a, b = socket.socketpair()
    with a, b:
        store = FdStore(manager.env)
        for bad in ("", "a:b", "a\nFDSTOREREMOVE=1", "tab\there", "x" * 256, "é"):
            with pytest.raises(ValueError):
                store.upload(bad, [a.fileno()])
        with pytest.raises(ValueError):
            store.upload("ok", [])
        with pytest.raises(ValueError, match="253"):
            store.upload("ok", [a.fileno()] * 254)
        store.upload("x" * 255, [a.fileno()] * 253)
        ((fields, fds, _),) = manager.receive()
        assert fields["FDNAME"] == "x" * 255 and len(fds) == 253
        off = FdStore({})
        assert not off.enabled and store.enabled
        off.remove("ok")  # nothing to tell
        with pytest.raises(OSError):
            off.upload("ok", [a.fileno()])
        FdStore({"NOTIFY_SOCKET": "/nonexistent/notify"}).remove("ok")  # logged only


def test_uploader_batches_of_253_and_the_manifest(manager):
    a, b = socket.socketpair()
    dups = [os.dup(a.fileno()) for _ in range(300)]
    try:
        up = Uploader(FdStore(manager.env), "g1")
        up.add(dups, [{"kind": "session", "record": str(i)} for i in range(300)])
        assert up.finish() == 300 and (up.stored, up.failed) == (300, 0)
        batches = manager.receive()
        assert [(f["FDNAME"], len(fds)) for f, fds, _ in batches] == [
            ("condure-store-g1-0", 253), ("condure-store-g1-1", 47),
            ("condure-store-g1-manifest", 1)]
        manifest = read_manifest(batches[2][1][0])
        assert manifest["v"] == 1 and manifest["generation"] == "g1"
        entries = manifest["entries"]
        assert [e["record"] for e in entries] == [str(i) for i in range(300)]
        assert entries[0] == {"kind": "session", "record": "0", "name": "condure-store-g1-0",
                              "ino": inode(a.fileno())}
        assert {e["name"] for e in entries[253:]} == {"condure-store-g1-1"}
        assert {e["ino"] for e in entries} == {inode(a.fileno())}
        with pytest.raises(ValueError):
            up.add(dups[:2], [{}])
    finally:
        for fd in dups:
            os.close(fd)
        a.close()
        b.close()


def test_uploader_counts_failures_and_does_not_raise():
    a, b = socket.socketpair()
    with a, b:
        up = Uploader(FdStore({"NOTIFY_SOCKET": "/nonexistent/notify"}), "g")
        up.add([a.fileno(), b.fileno()], [{"kind": "session"}] * 2)
        assert (up.stored, up.failed) == (0, 2) and up.finish() == 0
    with pytest.raises(ValueError):
        Uploader(FdStore({}), "bad:generation")


def test_round_trip_matches_by_inode_not_by_order(manager, pairs):
    conns = pairs(6)
    spare = [socket.socketpair() for _ in range(2)]
    lsock = socket.create_server(("127.0.0.1", 0))
    up = Uploader(FdStore(manager.env), "g2")
    sessions = [server for server, _ in conns] + [s for s, _ in spare]
    up.add([s.fileno() for s in sessions[:4]],
           [{"kind": "session", "record": f"r{i}", "worker": i % 2} for i in range(4)])
    up.add([s.fileno() for s in sessions[4:]],
           [{"kind": "session", "record": f"r{i}", "worker": 0} for i in range(4, 8)])
    up.add([lsock.fileno()], [{"kind": "listener", "spec": 0, "slot": 1}])
    assert up.finish() == 9
    peers = {f"r{i}": peer for i, (_, peer) in enumerate(conns + spare)}
    for sock in sessions:  # the old process exits
        sock.close()
    lsock.close()
    items = manager.passed()
    manifest_fd = next(i.fd for i in items if i.name.endswith("-manifest"))
    got = recover(items)
    assert (got.lost, got.missing, got.problems) == (0, 0, [])
    assert got.names == {"condure-store-g2-0", "condure-store-g2-1", "condure-store-g2-2",
                         "condure-store-g2-manifest"}
    with pytest.raises(OSError):
        os.fstat(manifest_fd)  # read, then closed
    assert [e["record"] for _, e in got.sessions] == [f"r{i}" for i in range(8)]
    for fd, entry in got.sessions:
        with socket.socket(fileno=fd) as sock:
            sock.sendall(entry["record"].encode())
            assert peers[entry["record"]].recv(16) == entry["record"].encode()
    ((listener, entry),) = got.listeners
    with listener:
        assert entry["spec"] == 0 and entry["slot"] == 1 and entry["name"] == "condure-store-g2-2"
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    for _, b in spare:
        b.close()


def test_corrupt_manifest_missing_and_unknown_fds(manager, pairs):
    (s1, _), (s2, c2), (s3, c3) = pairs(3)
    up = Uploader(FdStore(manager.env), "old")
    up.add([s1.fileno(), s2.fileno()], [{"kind": "session"}, {"kind": "session"}])
    up.finish()
    junk = os.memfd_create("junk", os.MFD_CLOEXEC)
    os.write(junk, b'{"v": 1, "generation": "bad", "entries": [{"kind": 3}]}')
    store = FdStore(manager.env)
    store.upload(f"{STORE_PREFIX}bad-manifest", [junk])
    store.upload(f"{STORE_PREFIX}bad-0", [s3.fileno()])
    os.close(junk)
    for sock in (s1, s2, s3):
        sock.close()
    items = manager.passed()
    (gone,) = [i for i in items if i.sock is not None and i.sock.getpeername() == c2.getsockname()]
    items.remove(gone)  # s2 did not come back
    gone.sock.close()
    got = recover(items)
    assert got.missing == 1 and got.lost == 1 and len(got.sessions) == 1
    assert any("bad-manifest" in p and "bad manifest entry" in p for p in got.problems)
    assert any("did not come back" in p for p in got.problems)
    c3.settimeout(5)
    assert c3.recv(1) == b""  # the unknown fd was closed: its peer sees EOF
    os.close(got.sessions[0][0])


def test_two_generations_and_the_newer_entry_wins(manager, pairs):
    (s1, _), (s2, _) = pairs(2)
    store = FdStore(manager.env)
    a = Uploader(store, "a")
    a.add([s1.fileno(), s2.fileno()], [{"kind": "session", "record": "old"}] * 2)
    a.finish()
    before = time.time()
    while time.time() == before:  # manifests are ordered by their time
        pass
    b = Uploader(store, "b")  # a later start stored s2 again
    b.add([s2.fileno()], [{"kind": "session", "record": "new"}])
    b.finish()
    s1.close()
    s2.close()
    items = manager.passed()
    # systemd keeps one copy of a socket stored twice: drop the second.
    keep = {inode(i.fd) if i.sock else -i.fd: i for i in reversed(items)}
    for item in set(items) - set(keep.values()):
        item.sock.close()
    got = recover(list(keep.values()))
    assert (got.lost, got.missing) == (0, 0)
    records = sorted(entry["record"] for _, entry in got.sessions)
    assert records == ["new", "old"]
    for fd, _ in got.sessions:
        os.close(fd)


def test_manifest_write_read_and_errors():
    fd = write_manifest({"v": 1, "generation": "g", "entries": [
        {"kind": "session", "name": "n", "ino": 5, "record": "QUJD"}]})
    try:
        assert read_manifest(fd)["entries"][0]["record"] == "QUJD"
        with pytest.raises(OSError):
            os.write(fd, b"x")  # sealed
    finally:
        os.close(fd)
    for data in (b"not json", b"[]", b'{"v": 2, "generation": "g", "entries": []}',
                 b'{"v": 1, "entries": []}',
                 b'{"v": 1, "generation": "g", "entries": [{"kind": "session", "name": "n"}]}'):
        fd = os.memfd_create("m")
        os.write(fd, data)
        try:
            with pytest.raises(ManifestError):
                read_manifest(fd)
        finally:
            os.close(fd)


def test_identify_accepts_a_memfd_only_from_the_store():
    fd = os.memfd_create("m")
    try:
        item = identify(fd, f"{STORE_PREFIX}g-manifest")
        assert item.sock is None and item.stored and "not a socket" in item.describe()
        with pytest.raises(ActivationError, match="not a socket"):
            identify(fd, "web")
    finally:
        os.close(fd)


def test_own_unit_and_restart_jobs():
    assert own_unit("0::/system.slice/condure.service\n") == "condure.service"
    assert own_unit("0::/condure.service") == "condure.service"
    assert own_unit("1:name=systemd:/x\n0::/system.slice/app@1.service\n") == "app@1.service"
    assert own_unit("0::/user.slice/user-1000.slice/session-2.scope") is None
    assert own_unit("") is None
    jobs = ("123 condure.service restart running\n"
            "124 other.service start waiting\n")
    assert restart_in_jobs(jobs, "condure.service")
    assert not restart_in_jobs(jobs, "other.service")
    assert not restart_in_jobs("77 condure.service stop running\n", "condure.service")
    assert restart_in_jobs("8 condure.service try-restart waiting", "condure.service")
    assert not restart_in_jobs("", "condure.service")
    assert not restart_in_jobs("9 condure.socket restart running", "condure.service")
    assert fdstore.jobs_in("77 condure.service stop running\n9 condure.socket start waiting\n",
                           "condure.service") == {"stop"}


def test_restart_pending_runs_systemctl(tmp_path, monkeypatch):
    fake = tmp_path / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\n'
                    'echo "5 condure.service restart running"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert restart_pending("condure.service")
    assert (tmp_path / "args").read_text().split() == ["list-jobs", "--no-legend", "--plain"]
    assert not restart_pending("other.service") and not restart_pending(None)
    fake.write_text("#!/bin/sh\nexit 1\n")
    assert not restart_pending("condure.service")
    fake.unlink()
    assert not restart_pending("condure.service")  # no systemctl at all


# -- listeners across a restart ---------------------------------------------------


def listen(*values: str) -> Config:
    return Config(listen=tuple(parse_listen(v)[0] for v in values))


def restart(manager, monkeypatch, got, config, n_workers, mode=None):
    """Store ``got``'s bound listeners, close it as an exiting start does,
    and acquire again with what the store hands back."""
    up = Uploader(FdStore(manager.env), "g")
    fds, entries = zip(*got.store_entries(), strict=True)
    up.add(fds, entries)
    assert up.finish() == len(fds)
    got.close(keep_files=True)
    items = manager.passed()
    monkeypatch.setattr(activation, "inherited_sockets", lambda environ=None: items)
    return acquire_listeners(config, n_workers, mode, listen_given=True)


def test_reused_listeners_keep_their_queue(manager, monkeypatch, tmp_path):
    path = str(tmp_path / "u.sock")
    config = listen("127.0.0.1:0", f"{path},local")
    got = acquire_listeners(config, 2, environ={})
    port = got.items[0].sock.getsockname()[1]
    old = {(i.spec, i.slot): inode(i.sock.fileno()) for i in got.items}
    file_ino = os.stat(path).st_ino
    client = socket.create_connection(("127.0.0.1", port))  # waits in a backlog
    again = None
    try:
        again = restart(manager, monkeypatch, got, listen(f"127.0.0.1:{port}", f"{path},local"),
                        2)
        assert {(i.spec, i.slot): inode(i.sock.fileno()) for i in again.items} == old
        assert all(i.reused and i.sock.gettimeout() == 0.0 for i in again.items)
        assert again.recovered.names == {"condure-store-g-0", "condure-store-g-manifest"}
        assert os.stat(path).st_ino == file_ino  # not unlinked and bound again
        assert [(e["kind"], e["spec"]) for _, e in again.store_entries()] == [
            ("listener", 0), ("listener", 0), ("listener", 1)]
        tcp = [i.sock for i in again.items if i.spec == 0]
        ready, _, _ = select.select(tcp, [], [], 5)
        server, _ = ready[0].accept()
        with server:
            client.sendall(b"still here")
            assert server.recv(16) == b"still here"
    finally:
        client.close()
        if again is not None:
            again.close()
    assert not os.path.exists(path)  # a normal stop removes the reused file


def test_more_workers_bind_beside_and_changed_specs_close(manager, monkeypatch):
    got = acquire_listeners(listen("127.0.0.1:0"), 2, environ={})
    port = got.items[0].sock.getsockname()[1]
    old = {inode(i.sock.fileno()) for i in got.items}
    again = restart(manager, monkeypatch, got, listen("127.0.0.1:0"), 3)
    assert [i.reused for i in again.items] == [True, True, False]
    assert {i.sock.getsockname()[1] for i in again.items} == {port}
    assert {inode(i.sock.fileno()) for i in again.items[:2]} == old
    # Shared mode now: the reuseport sockets are not reused but closed first.
    shared = restart(manager, monkeypatch, again, listen(f"127.0.0.1:{port}"), 3, "shared")
    try:
        assert len(shared.items) == 1 and not shared.items[0].reused
        assert shared.items[0].sock.getsockname()[1] == port
    finally:
        shared.close()


def test_store_names_are_set_aside_not_listeners():
    lsock = identify(socket.create_server(("127.0.0.1", 0)).detach(), "web")
    a, b = socket.socketpair()
    conn = identify(a.detach(), f"{STORE_PREFIX}g-0")
    try:
        got = match_listeners(Config(), 2, "auto", False, [conn, lsock])
        assert got.connection is None and got.stored == [conn]
        assert [i.name for i in got.items] == ["web"] and got.store_entries() == []
        mixed = match_listeners(listen("fd-name=web", "127.0.0.1:0"), 2, "shared", True,
                                [lsock])
        assert [e for _, e in mixed.store_entries()] == [
            {"kind": "listener", "spec": 1, "slot": None}]
        mixed.items = [i for i in mixed.items if not i.inherited]
        mixed.close()
    finally:
        lsock.sock.close()
        conn.sock.close()
        b.close()


def test_a_listener_is_reused_only_for_its_own_address(tmp_path):
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "u.sock"))
    unix.listen()
    a, b = socket.socketpair()
    with tcp, unix, a, b:
        port = tcp.getsockname()[1]
        assert fdstore.match_listener(tcp, "127.0.0.1", port, None)
        assert fdstore.match_listener(tcp, "127.0.0.1", 0, None)
        assert not fdstore.match_listener(tcp, "127.0.0.1", port + 1, None)
        assert not fdstore.match_listener(tcp, "0.0.0.0", port, None)
        assert not fdstore.match_listener(tcp, "::1", port, None)
        assert fdstore.match_listener(unix, None, None, str(tmp_path / "u.sock"))
        assert not fdstore.match_listener(unix, None, None, str(tmp_path / "v.sock"))
        assert not fdstore.match_listener(a, None, None, "")  # not listening


@pytest.mark.parametrize("store_max, closed_by_clients, missing", [
    (16, 2, 0),    # 3 sessions + manifest back, 2 gone: never more than 6 <= 16 stored
    (5, 0, 2),     # 6 > 5: the store may have been full, so they count as missing
    (None, 0, 2),  # a manifest without the limit: nothing to tell them apart by
])
def test_sessions_gone_from_the_store_are_clients_that_left(manager, pairs, store_max,
                                                             closed_by_clients, missing):
    """systemd drops a stored descriptor whose peer hung up, or one that
    does not fit (FileDescriptorStoreMax=). The manifest records the limit:
    when the store can never have been full, a session that did not come
    back is a client that left, not a loss."""
    conns = pairs(5)
    up = Uploader(FdStore(manager.env), "g", store_max)
    up.add([s.fileno() for s, _ in conns], [{"kind": "session"} for _ in conns])
    assert up.finish() == 5
    for sock, _ in conns:
        sock.close()
    items = manager.passed()
    gone = [i for i in items if i.sock is not None and i.sock.getpeername()
            in {c.getsockname() for _, c in conns[:2]}]
    for item in gone:
        items.remove(item)
        item.sock.close()
    got = recover(items)
    assert (got.closed_by_clients, got.missing, got.lost) == (closed_by_clients, missing, 0)
    assert len(got.sessions) == 3
    for fd, _ in got.sessions:
        os.close(fd)
    problems = [p for p in got.problems if "did not come back" in p]
    assert len(problems) == (1 if missing else 0), got.problems
    assert all(not p.startswith("fd store: fd store") for p in got.problems)
    if store_max == 5:
        assert "FileDescriptorStoreMax=5" in problems[0]
