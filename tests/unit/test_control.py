"""The supervisor/worker control channel: messages, descriptors, EOF,
truncation, and the Config's JSON form."""

from __future__ import annotations

import os
import socket

import pytest

from condure.config import Config, ListenSpec
from condure.supervisor import control


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
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(control.ControlError, match="truncated"):
            control.recv(b, max_fds=16)
        assert len(os.listdir("/proc/self/fd")) == before  # received copies closed
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
