"""The end of a worker's stop: its connections close and its cancels leave.

When a worker stops (``Worker.stop``: after ``--drain-timeout`` on a
SIGTERM or at the end of a reload's or restart's drain, at once on a fast
stop) every connection left gets its last words: a 503 for a request
given up on, a WebSocket close frame, the rest of a response that was
complete. :meth:`condure.net.conn.Conn.abort` starts writing them and
closing as a graceful close does (write, FIN, the client's input read and
discarded until its end, RFC 9112 9.6); :func:`settle` keeps the event
loop running for that, and for the handlers' cancels, and bounds it.

The bound, ``STOP_LINGER`` (2 s) from the stop, is fixed rather than what
is left of the drain time: the stop comes when the drain time is over
(that is why anything is left), so what is left of it is nothing at the
moment the 503s are written. A client that reads takes a 503 or a close
frame in one round trip and answers our FIN with its own; 2 s is the wait
of every graceful close (``LINGER``), and stays well inside the time the
supervisor gives a stopping worker before SIGKILL (``--drain-timeout``
plus 5 s; 12 s for a fast stop), so a client that never reads costs the
stop 2 s at most, whatever the number of such clients. At the bound
(:meth:`Conn.give_up`) output the kernel never took is dropped with a
reset; what it took it still delivers after our close.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from condure.net.conn import Conn
    from condure.net.timers import TimerWheel

STOP_LINGER = 2.0  # seconds a stop gives its connections to take their last words and end
POLL = 0.01  # how often the ending is looked at


async def settle(live: Callable[[], list[Conn]], timers: TimerWheel[Conn],
                 pending: Callable[[], bool], budget: float,
                 linger: float | None = None) -> None:
    """Run until every connection of ``live()`` has ended and ``pending()``
    (packets for handlers still queued) is false, or the bounds passed:
    ``linger`` (default ``STOP_LINGER``) for the connections (then
    :meth:`Conn.give_up` ends the rest), ``budget`` for the packets. The
    worker's tick is stopped, so the connections' timers (the reset of a
    cut once the client has what it is owed, the end of a linger) are run
    from here."""
    start = time.monotonic()
    conns_until = start + (STOP_LINGER if linger is None else linger)
    packets_until = start + budget
    while True:
        now = time.monotonic()
        timers.expire(now, lambda conn: conn.on_timer())
        conns = live()
        if conns and now >= conns_until:
            for conn in conns:
                conn.give_up()
            conns = []
        if not conns and (not pending() or now >= packets_until):
            return
        await asyncio.sleep(POLL)
