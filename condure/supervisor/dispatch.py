"""Dispatch mode (``--accept-mode dispatch``): the supervisor accepts and
passes each connection to the least-loaded worker over its control socket
(docs/accept-modes.md)."""

from __future__ import annotations

import errno
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable

from condure.supervisor.sockets import Listeners

log = logging.getLogger("condure")

DISPATCH_BATCH = 64  # connections the dispatcher accepts per wakeup
# Accept errors that mean "out of resources" (descriptors per process or
# system, socket buffers, kernel memory): retrying at once would spin, so
# accepting pauses and the connection waits in the backlog.
_ACCEPT_BACKOFF = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_BACKOFF = 0.1  # seconds
# The peer gave up between SYN and accept: skip it.
_ACCEPT_SKIP = {errno.ECONNABORTED, errno.EPROTO}
# A worker's control socket could not take a connection (full, or the
# worker just died): the connection waits here and is offered again after
# this long, to whichever worker is ready then.
HAND_OVER_RETRY = 0.05  # seconds


class LeastLoaded:
    """Which worker gets the next dispatched connection: the fewest
    connections by its last ``stats`` report plus those sent to it since
    (reports come once a second, so counting our own sends keeps a burst
    from landing on one worker)."""

    def __init__(self) -> None:
        self.reported: dict[int, int] = {}
        self.sent: dict[int, int] = {}
        self.turn = 0

    def report(self, index: int, connections: int) -> None:
        self.reported[index] = connections
        self.sent[index] = 0

    def forget(self, index: int) -> None:
        self.reported.pop(index, None)
        self.sent.pop(index, None)

    def pick(self, candidates: Iterable[int]) -> int | None:
        """The least-loaded candidate (ties rotate), or None."""
        best = None
        self.turn += 1
        for index in candidates:
            load = self.reported.get(index, 0) + self.sent.get(index, 0)
            key = (load, (index - self.turn) % 1024)
            if best is None or key < best[0]:
                best = (key, index)
        return None if best is None else best[1]

    def dispatched(self, index: int) -> None:
        self.sent[index] = self.sent.get(index, 0) + 1


class Dispatcher:
    """Accepts on every listener (dispatch mode) in the supervisor's asyncio
    loop and passes each connection on with ``send(sock, spec_index)``.

    ``send`` picks a worker and sends ``{"type": "conn", "spec": I}`` with
    the descriptor over its control socket; it returns False when no worker
    can take the connection now. The dispatcher closes its own copy of each
    connection once sent. Connections no worker took wait (accepting
    pauses) until :meth:`resume`, which the supervisor calls whenever a
    worker becomes ready; one a worker's control socket refused (full, or
    the worker just died) is offered again after ``HAND_OVER_RETRY``.
    """

    def __init__(self, listeners: Listeners, loop, send: Callable[[socket.socket, int], bool]):
        self.loop = loop
        self.send = send
        self.sockets = [(item.sock, item.spec) for item in listeners.items]
        self.pending: deque[tuple[socket.socket, int]] = deque()
        self.running = False
        self.backoff = None

    def start(self) -> None:
        self.resume()

    def resume(self) -> None:
        while self.pending:
            sock, spec = self.pending[0]
            if not self._hand_over(sock, spec):
                return
            self.pending.popleft()
        if not self.running and self.backoff is None:
            self.running = True
            for sock, spec in self.sockets:
                self.loop.add_reader(sock.fileno(), self._accept, sock, spec)

    def pause(self) -> None:
        if self.running:
            self.running = False
            for sock, _ in self.sockets:
                self.loop.remove_reader(sock.fileno())

    def close(self) -> None:
        """Stop accepting; connections not yet handed over are closed."""
        self.pause()
        if self.backoff is not None:
            self.backoff.cancel()
            self.backoff = None
        while self.pending:
            self.pending.popleft()[0].close()

    def _end_backoff(self) -> None:
        self.backoff = None
        self.resume()

    def _accept(self, lsock: socket.socket, spec: int) -> None:
        for _ in range(DISPATCH_BATCH):
            if not self.running:
                return
            try:
                sock, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _ACCEPT_SKIP:
                    continue
                if e.errno in _ACCEPT_BACKOFF:
                    log.warning("accept: %s; pausing accepts briefly", e)
                    self.pause()
                    self.backoff = self.loop.call_later(ACCEPT_BACKOFF, self._end_backoff)
                    return
                raise
            if not self._hand_over(sock, spec):
                self.pending.append((sock, spec))
                self.pause()
                return

    def _hand_over(self, sock: socket.socket, spec: int) -> bool:
        try:
            taken = self.send(sock, spec)
        except OSError as e:
            # Full (the worker is busy) is expected under load; anything
            # else (the worker just died) is worth a line. Either way: again soon.
            log.log(logging.DEBUG if isinstance(e, BlockingIOError) else logging.WARNING,
                    "passing a connection to a worker failed: %s; trying again", e)
            if self.backoff is None:
                self.backoff = self.loop.call_later(HAND_OVER_RETRY, self._end_backoff)
            taken = False
        if taken:
            sock.close()  # the worker has its own copy now
        return taken
