"""The warning for requests no handler answered: one line per mode and
minute, naming the endpoints, with a count of what it left out."""

from __future__ import annotations

import logging

from condure.config import Config
from condure.net.unanswered import Throttled, UnansweredLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def warnings(caplog) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    caplog.clear()
    return lines


def test_one_line_a_minute_per_mode(caplog):
    caplog.set_level(logging.WARNING, logger="condure")
    clock = Clock()
    log = UnansweredLog(Config(zclient_stream=("ipc:///run/app/zhttp", "tcp://127.0.0.1:5000"),
                               zclient_req=("ipc:///run/app/req",)), clock)
    log.note("stream")
    (line,) = warnings(caplog)
    assert "ipc:///run/app/zhttp-out, tcp://127.0.0.1:5000" in line and "504" in line
    for _ in range(5):
        clock.now += 10
        log.note("stream", 2)
    assert warnings(caplog) == []
    log.note("req")  # another mode has its own minute
    (line,) = warnings(caplog)
    assert "ipc:///run/app/req" in line
    clock.now += 10.5  # 60.5 s after the first line
    log.note("stream")
    (line,) = warnings(caplog)
    assert "(11 in the last 60 s)" in line


def test_unknown_mode_or_nothing_counted_is_ignored(caplog):
    caplog.set_level(logging.WARNING, logger="condure")
    log = UnansweredLog(Config(), Clock())
    log.note("bogus")
    log.note("stream", 0)
    assert warnings(caplog) == []


def test_throttled_warning_counts_what_it_left_out(caplog):
    caplog.set_level(logging.WARNING, logger="condure")
    clock = Clock()
    bad = Throttled("dropped a packet", clock)
    bad.note("first")
    assert warnings(caplog) == ["dropped a packet; the last: first"]
    for i in range(3):
        clock.now += 19
        bad.note(f"n{i}")
    assert warnings(caplog) == []
    clock.now += 4  # 61 s after the first line
    bad.note("later")
    assert warnings(caplog) == ["dropped a packet (4 in the last 61 s); the last: later"]
