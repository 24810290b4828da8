"""Inetd style (systemd ``Accept=yes``): serve one passed connection, exit.

systemd accepts the connection itself and starts one service instance per
connection with the connected socket as its only descriptor, named
``connection``. There is nothing to supervise: this process runs one
:class:`condure.worker.Worker` with no listeners (its ZeroMQ sockets bound
or connected as the options say, exactly as a lone worker's), adopts the
connection, and exits 0 once that connection has ended and the packets it
caused have left. SIGTERM/SIGINT end it early with Condure's shutdown
(a cancel to the handler).

Every instance binds the same ZeroMQ endpoints in bind mode, so two
connections served at once would collide; with ``Accept=yes`` prefer
``--zclient-connect`` and handlers that bind (docs/accept-modes.md).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from condure.net.conn import Conn
from condure.supervisor import early
from condure.supervisor.activation import local_address
from condure.supervisor.notify import Notifier
from condure.supervisor.sockets import Listeners
from condure.worker import Worker

log = logging.getLogger("condure")

CANCEL_FLUSH = 10.0  # as a worker's shutdown: at most this long for packets to leave


class OneConnectionWorker(Worker):
    """A Worker that stops once its last connection is released."""

    def release(self, conn: Conn) -> None:
        super().release(conn)
        if not any(self.counts.values()):
            self.mark_stopping("connection ended")


def install_stop_signals(loop: asyncio.AbstractEventLoop, worker: Worker) -> None:
    """Condure's stop signals for a worker running on its own: the first
    TERM/INT/QUIT stops it; a second one while stopping exits at once (1)."""

    def on_signal(signame: str) -> None:
        if worker.is_stopping:
            raise SystemExit(1)
        log.info("stopping...")
        worker.mark_stopping(signame)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        loop.add_signal_handler(sig, on_signal, sig.name)


def run(acquired: Listeners) -> int:
    """Serve ``acquired.connection`` to its end; returns the exit status."""
    item = acquired.connection
    assert item is not None and item.sock is not None  # a connected socket
    sock = item.sock
    config = acquired.config
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = OneConnectionWorker(config, loop, listen_socks=[])
    log.info("starting...")
    try:
        loop.run_until_complete(worker.start())
    except Exception as e:  # noqa: BLE001 - reported as a worker does
        log.error("%s", e)
        sock.close()
        loop.close()
        return 1

    install_stop_signals(loop, worker)
    try:
        peer = sock.getpeername()
    except OSError:
        peer = "?"
    log.info("serving one connection from %s on %s (inetd style)",
             peer[0] if isinstance(peer, tuple) else peer or "a local peer",
             local_address(sock))
    Notifier().ready()
    if not worker.adopt_connection(sock, 0):
        log.info("the connection was gone before it could be served")
        worker.mark_stopping("connection gone")
    elif any(sig != signal.SIGHUP for sig in early.take()):  # a stop came while starting
        log.info("stopping...")
        worker.mark_stopping("stop signal")
    try:
        loop.run_until_complete(worker.stopped)
        worker.stop()
        loop.run_until_complete(worker.settle(CANCEL_FLUSH))
    finally:
        worker.close()
        loop.close()
    log.info("stopped")
    return 0
