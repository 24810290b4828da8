"""The control channel between the supervisor and one worker.

A ``SOCK_SEQPACKET`` socketpair: one JSON object per packet (UTF-8), with
descriptors as ``SCM_RIGHTS`` where the message type says so. Packets
keep their boundaries, so no framing is needed; a read of zero bytes is
the other side's end (EOF).

Received descriptors are close-on-exec from the start
(``MSG_CMSG_CLOEXEC``). A packet whose control data did not fit
(``MSG_CTRUNC``) or whose payload did not fit (``MSG_TRUNC``) is an error:
the descriptors that did arrive are closed and :class:`ControlError`
raised, since acting on half a message could leak a connection.

The worker spec (the ``CONDURE_WORKER`` variable) is built and read here
too, so both sides share one definition of the Config's JSON form.
"""

from __future__ import annotations

import array
import dataclasses
import json
import select
import socket
import time
from typing import Any

from condure.config import Config, ListenSpec

MAX_PACKET = 128 * 1024  # the largest message (a batch of session records)
MAX_FDS = 253  # descriptors accepted in one packet (the SCM_RIGHTS limit)
SPEC_VARIABLE = "CONDURE_WORKER"

Message = dict[str, Any]


class ControlError(Exception):
    """A malformed or truncated control packet."""


def socketpair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, worker end), both close-on-exec; the worker end is
    handed over with ``pass_fds``."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, message: Message, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message (and descriptors). Raises OSError as sendmsg does
    (BlockingIOError on a full non-blocking socket)."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_PACKET:
        raise ControlError(f"control message too large ({len(data)} bytes)")
    ancillary = []
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    sock.sendmsg([data], ancillary)


def recv(sock: socket.socket, max_fds: int = MAX_FDS) -> tuple[Message | None, list[int]]:
    """Receive one message: (message, descriptors), or (None, []) at EOF.

    Raises BlockingIOError when nothing is waiting on a non-blocking socket,
    ControlError for a truncated or malformed packet."""
    data, ancdata, flags, _ = sock.recvmsg(
        MAX_PACKET, socket.CMSG_SPACE(max_fds * 4), socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(array.array("i", payload[:usable]))
    try:
        if flags & socket.MSG_CTRUNC:
            raise ControlError("control packet descriptors truncated")
        if flags & socket.MSG_TRUNC:
            raise ControlError("control packet truncated")
        if not data:
            if fds:
                raise ControlError("descriptors without a message")
            return None, []
        try:
            message = json.loads(data)
        except ValueError as e:
            raise ControlError(f"control packet is not JSON: {e}") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ControlError("control message without a type")
    except ControlError:
        close_fds(fds)
        raise
    return message, fds


def send_waiting(sock: socket.socket, message: Message, fds: list[int] | tuple[int, ...] = (),
                 timeout: float = 2.0) -> None:
    """:func:`send` on a non-blocking socket, waiting up to ``timeout``
    seconds while it is full. Raises OSError (BlockingIOError on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            send(sock, message, fds)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0 or not wait(sock.fileno(), True, left):
                raise


def wait(fd: int, writable: bool, timeout: float) -> bool:
    """Wait until ``fd`` is readable (or writable); False on timeout. Uses
    poll(2): descriptors past 1024 are common with many connections."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT if writable else select.POLLIN)
    return bool(poller.poll(max(timeout, 0.0) * 1000))


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            socket.close(fd)
        except OSError:
            pass


# -- the worker spec ----------------------------------------------------------

def config_to_json(config: Config) -> dict[str, Any]:
    """Every Config field; ``listen`` as a list of ListenSpec dicts."""
    return dataclasses.asdict(config)


def config_from_json(data: dict[str, Any]) -> Config:
    fields = {f.name for f in dataclasses.fields(Config)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            continue
        if key == "listen":
            value = tuple(ListenSpec(**spec) for spec in value)
        elif isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return Config(**values)
