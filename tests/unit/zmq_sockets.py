"""Pieces shared by the tests of the supervisor's ZeroMQ relays
(test_zmqproxy.py, test_zserver_relay.py): real sockets and per-thread CPU."""

from __future__ import annotations

import os
import threading

import pytest
import zmq

TIMEOUT_MS = 5000


class Sockets:
    """Makes test sockets and keeps them, so none is garbage-collected
    unclosed; closed at teardown."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.made: list[zmq.Socket] = []

    def __call__(self, kind, endpoint, **opts):
        s = self.ctx.socket(kind)
        self.made.append(s)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
        for name, value in opts.items():
            s.setsockopt(getattr(zmq, name), value)
        s.connect(endpoint)
        return s

    def close(self) -> None:
        for s in self.made:
            s.close(linger=0)
        self.ctx.term()


@pytest.fixture
def sock():
    sockets = Sockets()
    yield sockets
    sockets.close()


def thread_cpu(name: str) -> float:
    """CPU seconds (user + system) used so far by this process's thread called ``name``."""
    (thread,) = [t for t in threading.enumerate() if t.name == name]
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
