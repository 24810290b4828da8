"""One warning line when requests time out because no handler answers,
and one when handlers send packets condure cannot read (and one info line
for sessions whose handler's packets were missed while they moved).

A request that no handler answers ends with a 504 after the session
timeout (60 s in stream mode, ``--req-timeout`` in req mode). Left at that,
an operator whose handler is not running sees nothing in the log at the
default level; so the first such request logs a warning naming the ZeroMQ
endpoint the requests went to, and later ones are counted and reported at
most once a minute per endpoint, never once per request. Worker processes
under the supervisor only count (``Worker.unanswered_counts``, sent with
their stats) and the supervisor logs, so that several workers still make
one line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from condure.config import Config, stream_endpoints

log = logging.getLogger("condure")

INTERVAL = 60.0  # at most one warning per endpoint in this many seconds


class Throttled:
    """A warning about something that may happen on every packet: logged
    the first time, then at most once per ``interval`` with a count of the
    times since, so that a broken handler cannot flood the log."""

    def __init__(self, what: str, clock: Callable[[], float],
                 interval: float = INTERVAL) -> None:
        self.what = what
        self.clock = clock
        self.interval = interval
        self.last: float | None = None
        self.count = 0

    def due(self, count: int = 1) -> str | None:
        """Count ``count`` more; when a line is due, what it says of the
        ones left out since the last (" (N in the last S s)", "" the first
        time), else None."""
        now = self.clock()
        self.count += count
        last = self.last
        if last is not None and now - last < self.interval:
            return None
        since = "" if last is None else f" ({self.count} in the last {now - last:.0f} s)"
        self.count = 0
        self.last = now
        return since

    def note(self, detail: str) -> None:
        since = self.due()
        if since is not None:
            log.warning("%s%s; the last: %s", self.what, since, detail)


# Sessions closed because their handler's packets were missed while they
# moved without its handoff: WebSockets with 1012 (docs/handoff.md), HTTP
# requests in flight (docs/handover.md). Info, throttled; by "is HTTP".
_MISSED = {
    False: Throttled("closed WebSockets with 1012: their handler's packets were missed "
                     "while they moved", time.monotonic),
    True: Throttled("ended HTTP requests (connection closed, response cut short): "
                    "their handler's packets were missed while they moved", time.monotonic),
}


# Sessions whose handler no longer had them when they resumed after a move
# (it answered the resume with a cancel for an unknown id): info, throttled.
_GONE = {
    False: Throttled("closed WebSockets with 1012: their handler no longer had them when "
                     "they resumed after a move (its last packets were probably lost "
                     "meanwhile)", time.monotonic),
    True: Throttled("ended HTTP requests (connection closed, response cut short): their "
                    "handler no longer had them when they resumed after a move (its last "
                    "packets, probably the answer, were lost meanwhile)", time.monotonic),
}


def note_missed(http: bool, gone: bool = False) -> None:
    """A session (``http``: an HTTP request, else a WebSocket) was closed
    for its handler's packets missed while it moved (``gone``: the handler
    no longer had it when it resumed)."""
    missed = (_GONE if gone else _MISSED)[http]
    if (since := missed.due()) is not None:
        log.info("%s%s", missed.what, since)


class UnansweredLog:
    """Counts unanswered requests per mode and warns at most every INTERVAL."""

    def __init__(self, config: Config, clock: Callable[[], float],
                 interval: float = INTERVAL) -> None:
        # the endpoints a handler must connect to, as the operator gave them
        self.endpoints = {
            "stream": ", ".join(stream_endpoints(base)[0] for base in config.zclient_stream),
            "req": ", ".join(config.zclient_req),
        }
        self.throttles = {mode: Throttled("", clock, interval) for mode in self.endpoints}

    def note(self, mode: str, count: int = 1) -> None:
        """``count`` requests in ``mode`` ("stream" or "req") had no answer."""
        if mode not in self.endpoints or count <= 0:
            return
        since = self.throttles[mode].due(count)
        if since is not None:
            log.warning("no handler answered requests sent to %s%s: is a handler running and "
                        "connected? clients got 504 Gateway Timeout", self.endpoints[mode], since)

