"""--accept-mode reuseport | shared | dispatch with four workers."""

from __future__ import annotations

import collections
import json
import os
import signal
import time

import pytest

from tests.harness.http_client import request

HOST = [("Host", "example.com")]
WORKERS = 4


def worker_slots(pid: int) -> dict[int, int]:
    """Worker pid -> slot index, from each worker's spec in its environment."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        pids = [int(x) for x in f.read().split()]
    slots = {}
    for child in pids:
        with open(f"/proc/{child}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                if entry.startswith(b"CONDURE_WORKER="):
                    slots[child] = json.loads(entry.split(b"=", 1)[1])["index"]
    return slots


def serve_all(handler, conns, paths) -> list[str]:
    """Send one GET per connection, answer each, check every response;
    returns the ``from`` of each request packet."""
    for conn, path in zip(conns, paths, strict=True):
        conn.send(request("GET", path, HOST))
    senders = []
    for _ in conns:
        pkt = handler.recv(timeout=20)
        senders.append(pkt.sender)
        handler.reply(pkt, body=pkt.get("uri"))
    for conn, path in zip(conns, paths, strict=True):
        resp = conn.read_response(timeout=20)
        assert resp.code == 200 and resp.body.endswith(path.encode())
    return senders


@pytest.mark.parametrize("mode", ["reuseport", "shared", "dispatch"])
def test_each_mode_serves(make_condure, make_handler, make_conn, mode):
    condure = make_condure("ours", workers=WORKERS, extra_args=["--accept-mode", mode])
    handler = make_handler(condure)
    conns = [make_conn(condure.port) for _ in range(12)]
    senders = serve_all(handler, conns, [f"/{mode}/{i}" for i in range(12)])
    assert all(s.startswith("condure.") for s in senders)
    # And again on the same (keep-alive) connections.
    serve_all(handler, conns, [f"/again/{i}" for i in range(12)])


def test_reuseport_queue_survives_a_killed_worker(make_condure, make_handler, make_conn):
    condure = make_condure("ours", workers=WORKERS, extra_args=["--accept-mode", "reuseport"])
    handler = make_handler(condure)
    serve_all(handler, [make_conn(condure.port)], ["/warm"])
    slots = worker_slots(condure.pid)
    assert len(slots) == WORKERS
    victim, victim_slot = next(iter(slots.items()))
    # Stopped, the victim accepts nothing: connections the kernel puts on
    # its socket wait in that socket's queue.
    os.kill(victim, signal.SIGSTOP)
    try:
        conns = [make_conn(condure.port) for _ in range(40)]
        for i, conn in enumerate(conns):
            conn.send(request("GET", f"/q/{i}", HOST))
    finally:
        os.kill(victim, signal.SIGKILL)
    # The supervisor still holds the socket: the replacement worker accepts
    # the queued connections, none is reset.
    senders = collections.Counter()
    for _ in conns:
        pkt = handler.recv(timeout=20)
        senders[pkt.sender] += 1
        handler.reply(pkt, body=b"ok")
    for conn in conns:
        resp = conn.read_response(timeout=20)
        assert resp.code == 200 and resp.body == b"ok"
    assert senders[f"condure.{victim_slot}"] > 0, senders  # served by the replacement
    assert victim not in worker_slots(condure.pid)


def test_dispatch_spreads_connections(make_condure, make_handler, make_conn):
    condure = make_condure("ours", workers=WORKERS, extra_args=["--accept-mode", "dispatch"])
    handler = make_handler(condure)
    conns = [make_conn(condure.port) for _ in range(20)]
    senders = collections.Counter(serve_all(handler, conns, [f"/d/{i}" for i in range(20)]))
    assert len(senders) == WORKERS, senders
    assert max(senders.values()) - min(senders.values()) <= 3, senders


def test_dispatch_accepts_again_after_its_only_worker_is_replaced(
        make_condure, make_handler, make_conn):
    """A connection that arrives while no worker is ready waits in the
    supervisor; once the replacement is ready it is handed over and served,
    and accepting goes on (before, accepting stopped for good)."""
    condure = make_condure("ours", workers=1, extra_args=["--accept-mode", "dispatch"])
    handler = make_handler(condure)
    serve_all(handler, [make_conn(condure.port)], ["/warm"])
    (victim,) = worker_slots(condure.pid)
    os.kill(victim, signal.SIGKILL)
    # Once the supervisor has reaped it (a connection sent to a dying
    # worker dies with it, docs/accept-modes.md), and while its replacement
    # (respawned after 0.1 s) is still starting: the supervisor keeps the
    # connection until a worker can take it.
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{victim}"):  # gone once reaped (a zombie is still there)
        assert time.monotonic() < deadline, "the killed worker was not reaped"
        time.sleep(0.005)
    waiting = make_conn(condure.port)
    waiting.send(request("GET", "/while-down", HOST))
    pkt = handler.recv(timeout=20)
    handler.reply(pkt, body=pkt.get("uri"))
    resp = waiting.read_response(timeout=20)
    assert resp.code == 200 and resp.body.endswith(b"/while-down")
    assert victim not in worker_slots(condure.pid)
    serve_all(handler, [make_conn(condure.port) for _ in range(3)],
              [f"/after/{i}" for i in range(3)])
