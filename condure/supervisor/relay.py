"""The first-packet relay of bind mode: a thread that sleeps while its
output is full.

It moves whole messages (every frame, in order) from the internal PULL
the workers push to, to the public PUSH handlers pull from. It reads its
input only while it holds nothing: a message the PUSH refuses
(``EAGAIN``: no handler connected, or every handler's queue full) is
held, and the relay then polls the PUSH for ``POLLOUT`` instead of the
PULL for ``POLLIN``. While it waits the thread sleeps in ``zmq_poll``;
messages behind the held one wait in the PULL's queue and, once that is
full, in the workers' own queues: none is lost or reordered.

``zmq.proxy`` is not used here: when its output cannot take a message
while its input has one, it polls in a loop without sleeping (libzmq
issue #4071), a core busy for as long as requests wait for a handler.

Messages move in batches of up to ``BATCH`` per wakeup, read and sent with
``NOBLOCK``; a single-frame message (every ZHTTP packet) costs one
``recv`` and one ``send``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import zmq

from condure.net.zmqio import BATCH

log = logging.getLogger("condure")

_NOBLOCK = int(zmq.NOBLOCK)
_MORE = _NOBLOCK | int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


def _send(dst: zmq.Socket, frames: list[zmq.Frame]) -> list[zmq.Frame] | None:
    """Send a message's frames; None when all went, else the frames that
    did not (only the first can be refused: once it is taken, ZeroMQ takes
    the rest of the message too, but a remainder is kept all the same)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        try:
            dst.send(frame, _MORE if i < last else _NOBLOCK, copy=False)
        except zmq.Again:
            return frames[i:]
    return None


def pump(src: zmq.Socket, dst: zmq.Socket,
         held: list[zmq.Frame] | None) -> list[zmq.Frame] | None:
    """Send ``held`` (if any), then move up to BATCH messages from ``src``
    to ``dst`` until ``src`` has none; returns what ``dst`` refused.
    Frames are received without a copy and sent on as they are."""
    if held is not None:
        held = _send(dst, held)
        if held is not None:
            return held
    recv, send, events = src.recv, dst.send, src.getsockopt
    for n in range(BATCH):
        # Most wakeups carry one message: asking ZMQ_EVENTS once is cheaper
        # than the EAGAIN exception of a receive that finds nothing more.
        if n == 1 and not int(events(_EVENTS)) & _POLLIN:
            return None
        try:
            frame = recv(_NOBLOCK, copy=False)
        except zmq.Again:
            return None
        if frame.more:
            frames = [frame]
            while frame.more:  # the rest of a message arrives with its first frame
                frame = recv(_NOBLOCK, copy=False)
                frames.append(frame)
            held = _send(dst, frames)
            if held is not None:
                return held
            continue
        try:
            send(frame, _NOBLOCK, copy=False)
        except zmq.Again:
            return [frame]
    return None


def run_until_stopped(control: zmq.Socket, items: list[tuple[zmq.Socket, int]],
                      step: Callable[[], list[tuple[zmq.Socket, int]]]) -> None:
    """The skeleton of a relay thread: sleep in ``zmq_poll`` on ``items``
    (``control`` first), return once ``control`` receives a message, else
    run ``step``, which does the work of one wakeup and returns the items
    to poll next. A terminated context ends the thread quietly; any other
    ZeroMQ error is logged and ends it."""
    poll = zmq.zmq_poll  # what Poller.poll calls, without its dict
    try:
        while True:
            ready = poll(items, -1)
            if not ready:
                continue
            if ready[0][0] is control:
                control.recv()
                return
            items = step()
    except zmq.ContextTerminated:
        pass
    except zmq.ZMQError as e:  # pragma: no cover - reported, thread ends
        log.error("zmq proxy %s: %s", threading.current_thread().name, e)


def wait_for_handler(control: zmq.Socket, ready: zmq.Socket, wait: float) -> bool:
    """Wait up to ``wait`` seconds for an event on ``ready`` (the monitor of
    the public socket handlers publish to: a handler connected, and our
    subscriptions are on their way to it); False when ``control`` stopped
    the thread meanwhile."""
    began = time.monotonic()
    items = [(control, _POLLIN), (ready, _POLLIN)]
    while (left := began + wait - time.monotonic()) > 0:
        for sock, _ in zmq.zmq_poll(items, int(left * 1000) + 1):
            if sock is control:
                control.recv()
                return False
            ready.recv_multipart()
            log.debug("a handler connected after %.0f ms", (time.monotonic() - began) * 1000)
            return True
    log.debug("no handler connected within %g s; passing requests on anyway", wait)
    return True


def relay_loop(src: zmq.Socket, dst: zmq.Socket, control: zmq.Socket,
               ready: zmq.Socket | None = None, wait: float = 0.0) -> None:
    """Thread body: ``src`` -> ``dst`` until ``control`` receives a message.

    Polls ``src`` for POLLIN or, while a message is held, ``dst`` for
    POLLOUT: never both, so a full output means no wakeups. With ``ready``,
    nothing is passed on before :func:`wait_for_handler` returns: a handler
    whose PULL socket reconnects before its PUB (after a restart of condure,
    say) would otherwise answer a request into a PUB that does not yet have
    our subscription, and the answer would be dropped."""
    if ready is not None and not wait_for_handler(control, ready, wait):
        return
    reading = [(control, _POLLIN), (src, _POLLIN)]
    writing = [(control, _POLLIN), (dst, _POLLOUT)]
    held: list[zmq.Frame] | None = None

    def step() -> list[tuple[zmq.Socket, int]]:
        nonlocal held
        held = pump(src, dst, held)
        return reading if held is None else writing

    run_until_stopped(control, reading, step)
