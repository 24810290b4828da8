"""Socket activation without systemd: tests/harness/activate.py passes
sockets exactly as systemd does (LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES,
descriptors from 3, the pid kept across exec)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from tests.harness import procs
from tests.harness.activate import start_activated
from tests.harness.http_client import connect, request

HOST = [("Host", "example.com")]
BACKLOG = 7  # an unusual backlog: a second listen() by condure would change it


@pytest.fixture
def stack(tmp_path):
    """Collects processes, handlers, sockets; closes them all at teardown."""
    items: list = []
    yield items
    for item in reversed(items):
        if isinstance(item, procs.Proc):
            item.stop()
        else:
            item.close()


def tcp_listener(stack) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(BACKLOG)
    stack.append(sock)
    return sock


def handler_for(stack, tmp_path, condure, prefix="condure"):
    h = procs.start_handler(condure.base, tmp_path, sub_prefix=prefix,
                            name=f"handler{len(stack)}")
    stack.append(h)
    return h


def get(port: int, handler, path: str = "/") -> str:
    """One GET answered by ``handler``; returns the request packet's ``from``."""
    with connect(port) as conn:
        conn.send(request("GET", path, HOST))
        pkt = handler.recv(timeout=10)
        assert pkt.get("uri").endswith(path.encode())
        handler.reply(pkt, body=b"hello")
        resp = conn.read_response(timeout=10)
    assert resp.code == 200 and resp.body == b"hello"
    return pkt.sender


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def listen_backlog(port: int) -> int | None:
    """The listen backlog of the socket on ``port`` (ss's Send-Q)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[2]) if len(out) >= 3 else None


def wait_exit(proc: procs.Proc, timeout: float = 15.0) -> int:
    try:
        return proc.popen.wait(timeout)
    finally:
        proc.pump.join(5)


def test_named_sockets_are_served(tmp_path, stack):
    web, api = tcp_listener(stack), tcp_listener(stack)
    condure = start_activated(tmp_path, [(web, "web"), (api, "api")],
                              ["--listen", "fd-name=web", "--listen", "fd-name=api",
                               "--workers", "2"])
    stack.append(condure)
    handler = handler_for(stack, tmp_path, condure)
    get(web.getsockname()[1], handler, "/web")
    get(api.getsockname()[1], handler, "/api")
    # The variables are gone from the workers' environment.
    workers = children(condure.pid)
    assert len(workers) >= 2
    for pid in workers:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
        assert b"LISTEN_FDS=" not in env and b"LISTEN_PID=" not in env
        assert b"LISTEN_FDNAMES=" not in env
    # Never listen()ed again: the backlog is still the one we set.
    if shutil.which("ss"):
        assert listen_backlog(web.getsockname()[1]) == BACKLOG
        assert listen_backlog(api.getsockname()[1]) == BACKLOG


def test_without_listen_every_passed_socket_is_served(tmp_path, stack):
    a, b = tcp_listener(stack), tcp_listener(stack)
    condure = start_activated(tmp_path, [(a, "one"), (b, "two")], ["--workers", "2"])
    stack.append(condure)
    handler = handler_for(stack, tmp_path, condure)
    get(a.getsockname()[1], handler)
    get(b.getsockname()[1], handler)


def test_missing_named_socket_is_an_error(tmp_path, stack):
    web = tcp_listener(stack)
    condure = start_activated(tmp_path, [(web, "web")],
                              ["--listen", "fd-name=web", "--listen", "fd-name=admin"],
                              wait_ready=False)
    stack.append(condure)
    assert wait_exit(condure) == 1
    assert any("fd-name=admin" in line and "[ERR]" in line for line in condure.pump.lines)


def test_unnamed_passed_socket_is_an_error(tmp_path, stack):
    web, extra = tcp_listener(stack), tcp_listener(stack)
    condure = start_activated(tmp_path, [(web, "web"), (extra, "extra")],
                              ["--listen", "fd-name=web"], wait_ready=False)
    stack.append(condure)
    assert wait_exit(condure) == 1
    assert any("extra" in line and "[ERR]" in line for line in condure.pump.lines)


def test_inetd_style_serves_one_connection_and_exits(tmp_path, stack):
    lsock = tcp_listener(stack)
    client = socket.create_connection(lsock.getsockname(), timeout=10)
    stack.append(client)
    server, _ = lsock.accept()
    stack.append(server)
    condure = start_activated(tmp_path, [(server, "connection")], ["--workers", "2"])
    stack.append(condure)
    server.close()  # condure has its own copy; ours must not keep it open
    handler = handler_for(stack, tmp_path, condure)
    client.sendall(request("GET", "/once", [*HOST, ("Connection", "close")]))
    pkt = handler.recv(timeout=10)
    assert pkt.get("uri").endswith(b"/once")
    handler.reply(pkt, body=b"bye")
    data = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        chunk = client.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"bye")
    assert wait_exit(condure) == 0
