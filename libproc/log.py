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


def configure(fmt: str | None = None, level: str | int | None = None) -> None:
    """Configure structlog once for the process (later calls reconfigure).

    ``fmt`` is ``"console"`` (key=value) or ``"json"``; the default is ``LIBPROC_LOG_FORMAT``.
    ``level`` defaults to ``LIBPROC_LOG_LEVEL`` or ``info``.
    """
    global _configured
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
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str, **context: Any) -> Any:
    """A structlog logger bound to ``logger=name``; configures defaults on first use."""
    if not _configured:
        configure()
    return structlog.get_logger().bind(logger=name, **context)
