"""Read-side limits against abusive clients, sans-I/O.

Two limits bound how slowly a stream-mode client may send what condure is
waiting for (docs/operations.md, "Limits against abusive clients"):

- the **head timeout** (``--head-timeout``): a request head must be
  complete this long after the connection was accepted, or, on a kept-alive
  connection, after the first byte of the next request arrived. An idle
  kept-alive connection is not timed by it (the 60 s session timeout
  closes those, as in Condure). When it passes, a client that sent part of
  a request gets ``408 Request Timeout`` (RFC 9110 15.5.9) and the
  connection closes; one that sent nothing is closed without a response
  (an unsolicited 408 could cross a request already on its way).
- the **body rate** (``--body-min-rate``): while condure waits for request
  body bytes, the client must send at least ``rate * window`` bytes in each
  window of ``BODY_WINDOW`` seconds. Only time during which condure wants
  body bytes counts: while it holds reading back (the handler has not
  granted credits, a handoff pauses the session, or the adapter holds
  reads back under backpressure: ``reads_held``) the window's clock
  stands still. Held reads stop the head timeout's clock too.

:class:`ReadLimits` holds the settings and the counters of one process
(the worker reports the counters in its stats); :class:`BodyRate` is the
clock of one request body.
"""

from __future__ import annotations

BODY_WINDOW = 10.0  # seconds over which --body-min-rate is measured

# Counter names (the worker's stats, "limits").
HEAD_TIMEOUT = "head_timeout"  # a partial request head timed out: 408
NO_REQUEST = "no_request"  # a new connection sent nothing in time: closed
BODY_RATE = "body_rate"  # a request body came too slowly: 408 or closed


class ReadLimits:
    """The settings of the read-side limits and how often each fired
    (0 turns a limit off)."""

    __slots__ = ("body_min_rate", "body_window", "counts", "head_timeout")

    def __init__(self, head_timeout: float = 0.0, body_min_rate: int = 0,
                 body_window: float = BODY_WINDOW) -> None:
        self.head_timeout = head_timeout
        self.body_min_rate = body_min_rate
        self.body_window = body_window
        self.counts: dict[str, int] = {HEAD_TIMEOUT: 0, NO_REQUEST: 0, BODY_RATE: 0}

    def note(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


OFF = ReadLimits()
"""No limits: the default of sessions built without any (unit tests, say).
A worker builds its sessions, adopted ones too, with its own."""


class BodyRate:
    """The clock of one request body's minimum rate (see the module
    docstring). The session calls :meth:`sync` after each event that may
    change whether it wants body bytes, :meth:`received` for each read,
    and :meth:`expired` when its deadline passes."""

    __slots__ = ("got", "needed", "since", "spent", "window")

    def __init__(self, rate: int, window: float) -> None:
        self.window = window
        self.needed = rate * window  # bytes owed per window
        self.since: float | None = None  # when the clock last started running
        self.spent = 0.0  # time counted in this window before ``since``
        self.got = 0  # bytes received in this window

    def sync(self, now: float, wanting: bool) -> None:
        since = self.since
        if wanting and since is None:
            self.since = now
        elif not wanting and since is not None:
            self.spent += now - since
            self.since = None

    def received(self, size: int) -> None:
        self.got += size

    @property
    def deadline(self) -> float | None:
        since = self.since
        return None if since is None else since + self.window - self.spent

    def expired(self, now: float) -> bool:
        """At or past the deadline: True when the window ended short of
        its bytes; otherwise a new window starts."""
        since = self.since
        if since is None or now - since + self.spent < self.window:
            return False
        if self.got < self.needed:
            return True
        self.got, self.spent, self.since = 0, 0.0, now
        return False
