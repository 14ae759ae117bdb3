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


_Base: Any = structlog.make_filtering_bound_logger(logging.DEBUG)


def _dropped(level: int) -> bool:
    """Whether an event at ``level`` would be dropped by :func:`_filter_level` anyway.

    Only while that processor is in force: ``structlog.testing.capture_logs`` swaps the
    processors for its own and must then see every event, whatever the level.
    """
    return level < _level and bool(_processors) and _processors[0] is _filter_level


class _BoundLogger(_Base):  # type: ignore[misc,valid-type]
    """structlog's bound logger, with debug and info lines below the level dropped at the call.

    A hot path (a status update, a launch) logs at info; with the level at warning, building
    the event dict and running it through the processors only to drop it was a tenth of a busy
    agent's time. The check reads the level live, so loggers bound before :func:`configure` obey
    a later configuration, as they do through the processor.
    """

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _dropped(logging.DEBUG):
            return None
        return _Base.debug(self, event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _dropped(logging.INFO):
            return None
        return _Base.info(self, event, *args, **kw)

    msg = info

    def get_effective_level(self) -> int:
        """The level in force (structlog's answer is the one this class was made with)."""
        filtering = bool(_processors) and _processors[0] is _filter_level
        return _level if filtering else logging.DEBUG

    def is_enabled_for(self, level: int) -> bool:
        """Whether a line at ``level`` would be written: for a hot line whose fields cost
        something to compute (``if log.is_enabled_for(logging.INFO): log.info(...)``).
        structlog's own answer only knows the level this class was made with (all of them)."""
        return not _dropped(level)


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
        wrapper_class=_BoundLogger,
        logger_factory=_logger_factory,
        cache_logger_on_first_use=False,
    )
    _configured = True


_plain: dict[str, Any] = {}


def get_logger(name: str, **context: Any) -> Any:
    """A structlog logger bound to ``logger=name``; configures defaults on first use.

    Bound loggers are immutable (``bind`` makes a new one), so the plain one of each name is
    made once: every actor takes one when it is created, and an actor per task is common.
    """
    if not _configured:
        configure()
    if not context:
        logger = _plain.get(name)
        if logger is None:
            logger = _plain[name] = structlog.get_logger().bind(logger=name)
        return logger
    return structlog.get_logger().bind(logger=name, **context)
