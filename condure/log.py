"""Logging in Condure's line format, on standard output:

    [LEVEL] YYYY-MM-DD HH:MM:SS.mmm [module] message

LEVEL is ERR, WARN, INFO, DEBUG or TRACE and the time is local. ``--log-level``
0..4 selects error, warn, info, debug, trace (anything above 4 is trace).

Under systemd, when standard output is the journal (``JOURNAL_STREAM``
names its device and inode, see systemd.exec(5)), each line starts with
the syslog priority in angle brackets (``<3>`` error ... ``<7>`` debug and
trace), which journald strips and records as the entry's priority.

Trace logging sits on hot paths (every packet), so callers guard it with
:func:`trace_enabled` before building any message::

    if log.trace_enabled():
        log.trace(logger, "OUT %s", packet)
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

DEFAULT_LEVEL = 2
ROOT = "condure"

_LEVEL_BY_NUMBER = (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG, TRACE)
_LABEL = {
    logging.CRITICAL: "ERR",
    logging.ERROR: "ERR",
    logging.WARNING: "WARN",
    logging.INFO: "INFO",
    logging.DEBUG: "DEBUG",
    TRACE: "TRACE",
}

# syslog priorities journald understands as a "<N>" line prefix (sd-daemon(3))
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
    TRACE: 7,
}

_trace = False


def writes_to_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal stream systemd connected us to:
    ``JOURNAL_STREAM`` is ``DEVICE:INODE`` of that stream, and must match
    (a child whose output was redirected inherits the variable)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


class CondureFormatter(logging.Formatter):
    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        label = _LABEL.get(record.levelno, record.levelname)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        line = f"[{label}] {stamp}.{int(record.msecs):03d} [{record.name}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if self.journal:
            # Every physical line gets the prefix: journald reads line by line.
            prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
            line = "\n".join(prefix + part for part in line.split("\n"))
        return line


def level_for(number: int) -> int:
    """The :mod:`logging` level for a ``--log-level`` number."""
    return _LEVEL_BY_NUMBER[min(max(number, 0), len(_LEVEL_BY_NUMBER) - 1)]


def setup(level: int, stream: TextIO | None = None) -> None:
    """Send the ``condure`` logger tree to ``stream`` (standard output by
    default) at ``--log-level`` ``level``. Calling it again replaces the
    previous setup."""
    global _trace
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    stream = sys.stdout if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CondureFormatter(journal=writes_to_journal(stream)))
    logger.addHandler(handler)
    logger.setLevel(level_for(level))
    # Output is the product; it must not also go through whatever the
    # embedding program has put on the root logger.
    logger.propagate = False
    _trace = level_for(level) <= TRACE


def trace_enabled() -> bool:
    return _trace


def get_logger(name: str) -> logging.Logger:
    """A logger under ``condure`` (``"condure.worker"``, or ``"worker"``
    which means the same)."""
    if name != ROOT and not name.startswith(ROOT + "."):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)


def trace(logger: logging.Logger, msg: str, *args: Any) -> None:
    logger.log(TRACE, msg, *args)
