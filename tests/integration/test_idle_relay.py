"""Requests waiting for a handler cost no CPU (bind mode).

With no handler connected, the supervisor's relay cannot pass first
packets on: the public PUSH has no peer. It must then wait for one to
connect, not poll in a loop. 50 requests are queued, the CPU time of the
whole condure process tree (supervisor and workers, from /proc) is read
over 3 s, then a handler starts and every request gets its answer.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.harness.http_client import Conn, request

CLIENTS = 50
MEASURE = 3.0  # seconds of CPU measurement
MAX_CPU = 0.05 * MEASURE  # under 5% of a core
HOST = [("Host", "example.com")]
TICK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may hold spaces: fields count from its ")".
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def server_sockets(port: int) -> list[int]:
    """The receive queue (bytes not read yet) of each established TCP
    socket whose local port is ``port``: condure's side of the clients'
    connections, accepted or still in the accept queue."""
    queues = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            if local_port == port and cols[3] == "01":  # ESTABLISHED
                queues.append(int(cols[4].split(":")[1], 16))
    return queues


def wait_requests_read(port: int, timeout: float = 10.0) -> None:
    """Until a worker has read every client's request from its socket
    (condure's side holds CLIENTS connections, none with unread bytes).
    The worker hands a request read to ZeroMQ in the same or the next
    loop iteration, so from then on the requests wait in the relay."""
    deadline = time.monotonic() + timeout
    while True:
        queues = server_sockets(port)
        if len(queues) == CLIENTS and not any(queues):
            return
        assert time.monotonic() < deadline, f"server sockets: {queues}"
        time.sleep(0.02)


@pytest.mark.parametrize("workers", [1, 2])
def test_waiting_requests_do_not_spin(make_condure, make_handler, workers):
    condure = make_condure("ours", workers=workers)
    conns = [Conn(condure.port, timeout=10.0) for _ in range(CLIENTS)]
    try:
        for i, conn in enumerate(conns):
            conn.send(request("GET", f"/wait{i}", HOST))
        wait_requests_read(condure.port)
        pids = process_tree(condure.pid)
        assert len(pids) == 1 + workers, pids
        before = cpu_seconds(pids)
        time.sleep(MEASURE)  # the measurement window itself
        used = cpu_seconds(pids) - before
        assert used < MAX_CPU, f"condure used {used:.2f} s of CPU in {MEASURE} s while idle"

        handler = make_handler(condure)
        for _ in range(CLIENTS):
            req = handler.recv(10.0)
            assert req.socket == "pull" and req.type == "", req
            path = req["uri"].split(b"example.com", 1)[1]
            handler.reply(req, headers=[("Content-Type", "text/plain")],
                          body=b"answer " + path)
        for i, conn in enumerate(conns):
            resp = conn.read_response()
            assert (resp.code, resp.body) == (200, f"answer /wait{i}".encode())
    finally:
        for conn in conns:
            conn.close()
    assert condure.stop() == 0, condure.output()[-3000:]
