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

Both ends use this module (the supervisor above, the worker process
below), which is why it lives here and not in ``condure/supervisor/``.
A message that must not be dropped when the socket is full waits in an
:class:`Outbox`, which the event loop flushes when the socket becomes
writable; nothing here blocks.

The worker spec (the ``CONDURE_WORKER`` variable) is built and read here
too, so both sides share one definition of the Config's JSON form.
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import json
import logging
import os
import select
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from condure.config import Config, ListenSpec

log = logging.getLogger("condure")

MAX_PACKET = 128 * 1024  # the largest message (a batch of session records)
# Descriptors in one message: the kernel's SCM_RIGHTS limit (SCM_MAX_FD).
# The one definition: handover batches, fd store uploads and this channel.
MAX_FDS = 253
SEND_TIMEOUT = 2.0  # seconds a queued message may wait for room
SPEC_VARIABLE = "CONDURE_WORKER"

Message = dict[str, Any]


class ControlError(Exception):
    """A malformed or truncated control packet."""


def socketpair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, worker end), both close-on-exec; the worker end is
    handed over with ``pass_fds``."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, message: Message, fds: Sequence[int] = ()) -> None:
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


def wait(fd: int, writable: bool, timeout: float) -> bool:
    """Wait until ``fd`` is readable (or writable); False on timeout. Uses
    poll(2): descriptors past 1024 are common with many connections."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT if writable else select.POLLIN)
    return bool(poller.poll(max(timeout, 0.0) * 1000))


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            socket.close(fd)
        except OSError:
            pass


@dataclass(eq=False)
class _Queued:
    message: Message
    fds: list[int]  # our own duplicates, closed once sent or dropped
    deadline: float
    on_fail: Callable[[], None] | None


class Outbox:
    """Messages for one control socket, in order, without blocking.

    :meth:`send` writes at once when nothing is queued and the socket has
    room; otherwise the message (with duplicates of its descriptors, so the
    caller may close its own) waits, and the loop writes it when the socket
    becomes writable. A message still unsent after its ``timeout`` is
    dropped and its ``on_fail`` called: what it carried counts as lost, as
    with a peer that is gone."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.queue: deque[_Queued] = deque()
        self._writing = False
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.queue)

    def send(self, message: Message, fds: Sequence[int] = (), *,
             timeout: float = SEND_TIMEOUT, on_fail: Callable[[], None] | None = None) -> None:
        """Send ``message`` now or as soon as there is room (see above).
        Raises OSError (other than a full socket) and ControlError as
        :func:`send` does, when it tries at once."""
        if not self.queue:
            try:
                send(self.sock, message, fds)
                return
            except BlockingIOError:
                pass
        copies: list[int] = []
        try:
            for fd in fds:
                copies.append(os.dup(fd))
        except OSError:
            close_fds(copies)
            raise
        self.queue.append(_Queued(message, copies, self.loop.time() + timeout, on_fail))
        if not self._writing:
            self._writing = True
            self.loop.add_writer(self.sock.fileno(), self._flush)
        self._arm()

    def post(self, message: Message) -> bool:
        """Best effort: a message worth sending only if there is room now
        (statistics, notices). Queued behind messages already waiting, so
        the order holds; False when dropped."""
        try:
            if self.queue:
                self.send(message)
            else:
                send(self.sock, message)
        except OSError:
            return False
        return True

    def _flush(self) -> None:
        queue = self.queue
        while queue:
            item = queue[0]
            try:
                send(self.sock, item.message, item.fds)
            except BlockingIOError:
                break
            except (OSError, ControlError) as e:
                log.debug("control: %s not sent: %s", item.message.get("type"), e)
                queue.popleft()
                self._drop(item)
                continue
            queue.popleft()
            close_fds(item.fds)
        if not queue:
            self._stop()

    def _arm(self) -> None:
        if self._timer is None and self.queue:
            deadline = min(item.deadline for item in self.queue)
            self._timer = self.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.loop.time()
        late = [item for item in self.queue if item.deadline <= now]
        if late:
            self.queue = deque(item for item in self.queue if item.deadline > now)
            for item in late:
                log.debug("control: %s not sent in time", item.message.get("type"))
                self._drop(item)
        if not self.queue:
            self._stop()
        self._arm()

    def _drop(self, item: _Queued) -> None:
        close_fds(item.fds)
        if item.on_fail is not None:
            item.on_fail()

    def _stop(self) -> None:
        if self._writing:
            self._writing = False
            try:
                self.loop.remove_writer(self.sock.fileno())
            except (ValueError, OSError):
                pass  # the socket is closed already
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Forget every queued message (the peer is gone): descriptors are
        closed, no ``on_fail`` is called."""
        queue, self.queue = self.queue, deque()
        for item in queue:
            close_fds(item.fds)
        self._stop()


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
