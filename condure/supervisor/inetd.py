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

import sdnotify

from condure.net.conn import Conn
from condure.supervisor.activation import local_address
from condure.supervisor.sockets import Listeners
from condure.worker import Worker, flush_cancels, install_stop_signals

log = logging.getLogger("condure")

CANCEL_FLUSH = 10.0  # as a worker's shutdown: at most this long for packets to leave


class OneConnectionWorker(Worker):
    """A Worker that stops once its last connection is released."""

    def release(self, conn: Conn) -> None:
        super().release(conn)
        if not any(self.counts.values()) and not self.stopped.done():
            self.stopped.set_result("connection ended")


def run(acquired: Listeners) -> int:
    """Serve ``acquired.connection`` to its end; returns the exit status."""
    item = acquired.connection
    assert item is not None
    config = acquired.config
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = OneConnectionWorker(config, loop, listen_socks=[])
    log.info("starting...")
    try:
        worker.start()
    except Exception as e:  # noqa: BLE001 - reported as a worker does
        log.error("%s", e)
        item.sock.close()
        loop.close()
        return 1

    install_stop_signals(loop, worker)
    try:
        peer = item.sock.getpeername()
    except OSError:
        peer = "?"
    log.info("serving one connection from %s on %s (inetd style)",
             peer[0] if isinstance(peer, tuple) else peer or "a local peer",
             local_address(item.sock))
    sdnotify.SystemdNotifier().notify("READY=1")
    if not worker.adopt_connection(item.sock, 0):
        log.info("the connection was gone before it could be served")
        if not worker.stopped.done():
            worker.stopped.set_result("connection gone")
    try:
        loop.run_until_complete(worker.stopped)
        worker.stop()
        loop.run_until_complete(flush_cancels(worker, CANCEL_FLUSH))
    finally:
        if worker.zmq is not None:
            worker.zmq.close()
        if worker.req is not None:
            worker.req.close()
        loop.close()
    log.info("stopped")
    return 0
