"""The supervisor/worker control channel: messages, descriptors, EOF,
truncation, and the Config's JSON form."""

from __future__ import annotations

import asyncio
import gc
import os
import socket

import pytest

from condure.config import Config, ListenSpec
from condure.net import control


@pytest.fixture
def pair():
    a, b = control.socketpair()
    yield a, b
    a.close()
    b.close()


def test_message_round_trip(pair):
    a, b = pair
    control.send(a, {"type": "stats", "connections": 3, "requests": 7})
    control.send(a, {"type": "ready"})
    assert control.recv(b) == ({"type": "stats", "connections": 3, "requests": 7}, [])
    assert control.recv(b) == ({"type": "ready"}, [])  # packet boundaries kept


def test_descriptor_arrives_close_on_exec(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        control.send(a, {"type": "conn", "spec": 1}, [r])
        message, fds = control.recv(b)
        assert message == {"type": "conn", "spec": 1} and len(fds) == 1
        assert not os.get_inheritable(fds[0])
        os.write(w, b"x")
        assert os.read(fds[0], 1) == b"x"  # the same pipe
        os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)


def test_eof(pair):
    a, b = pair
    a.close()
    assert control.recv(b) == (None, [])


def test_too_many_descriptors_is_an_error_and_leaks_nothing(pair):
    a, b = pair
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(20)]
    try:
        control.send(a, {"type": "conn"}, fds)
        before = _open_fds()
        with pytest.raises(control.ControlError, match="truncated"):
            control.recv(b, max_fds=16)
        assert _open_fds() == before  # received copies closed
    finally:
        for fd in fds:
            os.close(fd)


def test_malformed_packets(pair):
    a, b = pair
    a.send(b"not json")
    with pytest.raises(control.ControlError, match="JSON"):
        control.recv(b)
    a.send(b'{"no": "type"}')
    with pytest.raises(control.ControlError, match="type"):
        control.recv(b)


def test_nothing_waiting_raises_blocking(pair):
    _, b = pair
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        control.recv(b)


def test_seqpacket():
    a, b = control.socketpair()
    with a, b:
        assert a.type == socket.SOCK_SEQPACKET and not a.get_inheritable()


def test_config_json_round_trip():
    config = Config(workers=4, id="x", listen=(
        ListenSpec(host="127.0.0.1", port=1, tls=True, default_cert="c"),
        ListenSpec(host=None, port=None, path="/tmp/s", mode="req", file_mode=0o600)),
        zclient_stream=("ipc://a", "ipc://b"), drain_timeout=5, pid_file="/tmp/p")
    import json

    text = json.dumps(control.config_to_json(config))
    assert control.config_from_json(json.loads(text)) == config


# ------------------------------------------------------------------ Outbox


def _fill(sock: socket.socket) -> None:
    """Send until the socket is full."""
    sock.setblocking(False)
    while True:
        try:
            control.send(sock, {"type": "filler", "pad": "x" * 4000})
        except BlockingIOError:
            return


def _drain(sock: socket.socket) -> list[dict]:
    """Everything waiting on ``sock`` that is not filler (descriptors closed)."""
    sock.setblocking(False)
    got = []
    while True:
        try:
            message, fds = control.recv(sock)
        except BlockingIOError:
            return got
        if message["type"] != "filler":
            got.append(dict(message, fds=[os.readlink(f"/proc/self/fd/{fd}") for fd in fds]))
        control.close_fds(fds)


def _open_fds() -> int:
    gc.collect()  # sockets earlier tests left to the collector close now, not mid-count
    return len(os.listdir("/proc/self/fd"))


def test_outbox_waits_for_room_without_blocking_and_keeps_order(pair):
    a, b = pair
    loop = asyncio.new_event_loop()
    r, w = os.pipe()
    try:
        outbox = control.Outbox(loop, a)
        outbox.send({"type": "first"})  # room: sent at once
        assert _drain(b) == [{"type": "first", "fds": []}]
        _fill(a)
        outbox.send({"type": "sessions", "batch": 1}, [r], timeout=5.0)  # waits
        assert outbox.post({"type": "stats"})  # queued behind it, in order
        os.close(r)  # the caller's copy may go: the outbox holds its own
        r = -1
        assert len(outbox) == 2
        got: list[dict] = []

        async def receive() -> None:
            while len(got) < 2:
                got.extend(_drain(b))  # makes room; the loop's writer sends the rest
                await asyncio.sleep(0.01)

        loop.run_until_complete(asyncio.wait_for(receive(), 5))
        assert [m["type"] for m in got] == ["sessions", "stats"]
        assert got[0]["fds"][0].startswith("pipe:")  # the descriptor travelled
        assert len(outbox) == 0
    finally:
        loop.close()
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)


def test_outbox_gives_up_after_its_timeout_and_leaks_nothing(pair):
    a, b = pair
    loop = asyncio.new_event_loop()
    r, w = os.pipe()
    try:
        outbox = control.Outbox(loop, a)
        _fill(a)
        before = _open_fds()
        failed: list[str] = []
        outbox.send({"type": "adopt"}, [r, w], timeout=0.05, on_fail=lambda: failed.append("x"))
        assert _open_fds() == before + 2  # its own copies
        loop.run_until_complete(asyncio.sleep(0.2))
        assert failed == ["x"] and len(outbox) == 0
        assert _open_fds() == before  # the copies are closed
        assert [m["type"] for m in _drain(b)] == []  # nothing late arrived
    finally:
        loop.close()
        os.close(r)
        os.close(w)


def test_outbox_close_forgets_the_queue(pair):
    a, _ = pair
    loop = asyncio.new_event_loop()
    r, w = os.pipe()
    try:
        outbox = control.Outbox(loop, a)
        _fill(a)
        assert not outbox.post({"type": "stats"}) and len(outbox) == 0  # full: dropped
        before = _open_fds()
        failed: list[int] = []
        outbox.send({"type": "adopt"}, [r], on_fail=lambda: failed.append(1))
        outbox.close()
        assert len(outbox) == 0 and _open_fds() == before and failed == []
    finally:
        loop.close()
        os.close(r)
        os.close(w)
