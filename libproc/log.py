"""structlog set-up shared by every libproc program.

``key=value`` on a terminal, one JSON object per line with ``format="json"`` (``--log-format=json``
on mesa's command lines), so the same log lines serve a person and a log pipeline.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

__all__ = ["configure", "get_logger"]

_configured = False
_level = logging.INFO

# One processor list for the life of the process, changed in place by configure(). structlog
# loggers capture the processor list, wrapper class and output stream when they are bound, and
# libproc binds its module loggers at import time — before any program has had a chance to call
# configure(). Replacing the list (as structlog.configure does) would leave those loggers on the
# old format and level, and blind to structlog.testing.capture_logs after a reconfiguration.
_processors: list[Any] = []

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "err": logging.ERROR,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "failure": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def _filter_level(logger: Any, method_name: str, event_dict: Any) -> Any:
    """Drop events below the configured level (a processor, so it applies to loggers bound
    before the level was set)."""
    if _LEVELS.get(method_name, logging.INFO) < _level:
        raise structlog.DropEvent
    return event_dict


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is at the moment of the call, so redirections
    made after a logger was bound (pytest's capture, a daemon's log file) are honoured."""

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg


def _logger_factory(*args: Any) -> _StderrLogger:
    return _StderrLogger()


def configure(fmt: str | None = None, level: str | int | None = None) -> None:
    """Configure structlog once for the process (later calls reconfigure).

    ``fmt`` is ``"console"`` (key=value) or ``"json"``; the default is ``LIBPROC_LOG_FORMAT``.
    ``level`` defaults to ``LIBPROC_LOG_LEVEL`` or ``info``. A reconfiguration applies to every
    logger, including those bound before it.
    """
    global _configured, _level
    fmt = fmt or os.environ.get("LIBPROC_LOG_FORMAT", "console")
    if fmt not in ("console", "json"):
        raise ValueError(f"log format must be 'console' or 'json', not {fmt!r}")
    level = level or os.environ.get("LIBPROC_LOG_LEVEL", "info")
    if isinstance(level, str):
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"unknown log level {level!r}")
        level = numeric
    processors: list[Any] = [
        _filter_level,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors += [
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(
                key_order=["timestamp", "level", "event"], drop_missing=True
            ),
        ]
    _level = level
    _processors[:] = processors
    structlog.configure(
        processors=_processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str, **context: Any) -> Any:
    """A structlog logger bound to ``logger=name``; configures defaults on first use."""
    if not _configured:
        configure()
    return structlog.get_logger().bind(logger=name, **context)
