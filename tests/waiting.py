"""Waiting for things no message announces: a pid's end, a cgroup file, an HTTP state.

Where a test can await an event (a future, ``expect_message``, a recorder's callback) it does.
Some conditions only exist outside the process — ``/proc``, ``/sys/fs/cgroup``, another process's
HTTP state — and for those this is the one polling loop: checks back off from 5 ms to 50 ms and
give up at a deadline with a message saying what never happened. It never sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["eventually"]


async def eventually(
    predicate: Callable[[], Any | Awaitable[Any]],
    what: str = "condition",
    timeout: float = 30.0,
) -> Any:
    """The first truthy result of ``predicate()`` (which may be async); TimeoutError after."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.005
    last: Any = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if loop.time() > deadline:
            raise TimeoutError(f"{what}: not met within {timeout}s (last: {str(last)[:500]})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
