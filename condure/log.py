"""Logging in Condure's line format, on standard output:

    [LEVEL] YYYY-MM-DD HH:MM:SS.mmm [module] message

LEVEL is ERR, WARN, INFO, DEBUG or TRACE and the time is local. ``--log-level``
0..4 selects error, warn, info, debug, trace (anything above 4 is trace).

Trace logging sits on hot paths (every packet), so callers guard it with
:func:`trace_enabled` before building any message::

    if log.trace_enabled():
        log.trace(logger, "OUT %s", packet)
"""

from __future__ import annotations

import logging
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

_trace = False


class CondureFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        label = _LABEL.get(record.levelno, record.levelname)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        line = f"[{label}] {stamp}.{int(record.msecs):03d} [{record.name}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
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
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(CondureFormatter())
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
