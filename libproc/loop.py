"""Choosing the event loop: uvloop unless ``LIBPROC_LOOP=asyncio`` says otherwise."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["loop_name", "new_event_loop", "run"]

T = TypeVar("T")


def loop_name(choice: str | None = None) -> str:
    name = (choice or os.environ.get("LIBPROC_LOOP") or "uvloop").lower()
    if name not in ("uvloop", "asyncio"):
        raise ValueError(f"LIBPROC_LOOP must be 'uvloop' or 'asyncio', not {name!r}")
    return name


def new_event_loop(choice: str | None = None) -> asyncio.AbstractEventLoop:
    if loop_name(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], loop: str | None = None) -> T:
    """Run ``main`` to completion on uvloop (default) or asyncio's own loop."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(loop)) as runner:
        return runner.run(main)
