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

__all__ = ["eventually", "runtime_at"]


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


async def runtime_at(port: int, timeout: float = 30.0) -> Any:
    """A libproc runtime on ``127.0.0.1:port``, once the last one there has let the port go.
    ZeroMQ closes a stopped runtime's listening socket in its own I/O thread, after
    ``Runtime.stop()`` has returned, so a restart on the same port may find it still bound for a
    moment (nothing announces its release)."""
    import errno

    import zmq

    from libproc import Runtime

    async def started() -> Runtime | None:
        try:
            return await Runtime("127.0.0.1", port).start()
        except zmq.ZMQError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            return None

    return await eventually(started, f"port {port} free again", timeout)
