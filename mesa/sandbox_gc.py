"""Removing the sandboxes of finished containers, a while after they finished.

Every container gets a sandbox (a directory with the task's ``stdout`` and ``stderr``), and an
agent running short tasks makes hundreds a second: kept forever they fill the disk. Mesos keeps a
finished executor's sandbox for ``--gc_delay`` (a week by default) so that people can read what a
task wrote, then removes it; so does mesa (``--gc-delay``).

The collector is a plain object the agent owns, like the status-update streams: the agent hands it
a sandbox when the container is gone, and its own ``delay`` to schedule with, so sweeps run in the
agent's context on the libproc Clock. Sandboxes are due in the order they were handed in (one
delay for all), so a deque and a single timer (for the oldest) are enough, however many wait.
The removal itself (``rmtree``, which on a slow filesystem takes a while) runs on a worker thread,
never on the agent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from libproc import Clock, Timer, get_logger

__all__ = ["SandboxCollector"]

log = get_logger("mesa.sandbox_gc")


def remove_sandbox(path: str, parents: Sequence[str]) -> None:
    """Remove ``path`` and then each of ``parents`` (innermost first) that is left empty."""
    shutil.rmtree(path, ignore_errors=True)
    for parent in parents:
        try:
            os.rmdir(parent)
        except OSError:  # not empty (another run of the same executor), or already gone
            return


class SandboxCollector:
    """Removes each sandbox ``delay`` seconds after :meth:`add`.

    ``schedule(seconds, fn) -> Timer`` is normally the owner's ``delay``. ``removed`` counts the
    sandboxes removed; ``len()`` is how many wait.
    """

    def __init__(self, delay: float, schedule: Callable[..., Timer]) -> None:
        if delay < 0:
            raise ValueError("the delay must not be negative")
        self.delay = delay
        self._schedule = schedule
        self._due: deque[tuple[float, str, tuple[str, ...]]] = deque()
        self._timer: Timer | None = None
        self._removals: set[asyncio.Future[Any]] = set()
        self.removed = 0

    def __len__(self) -> int:
        return len(self._due)

    def add(self, path: str, parents: Sequence[str] = ()) -> None:
        """``path`` is no longer in use; remove it (and ``parents`` it leaves empty) later."""
        self._due.append((Clock.now() + self.delay, path, tuple(parents)))
        if self._timer is None:
            self._arm()

    def close(self) -> None:
        """Stop sweeping (the agent is stopping); what is due stays on disk."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self._timer = self._schedule(max(0.0, self._due[0][0] - Clock.now()), self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = Clock.now()
        batch: list[tuple[str, tuple[str, ...]]] = []
        while self._due and self._due[0][0] <= now:
            _, path, parents = self._due.popleft()
            batch.append((path, parents))
        if batch:
            loop = asyncio.get_running_loop()
            removal = loop.run_in_executor(None, _remove_all, batch)
            self._removals.add(removal)
            removal.add_done_callback(self._removed)
        if self._due:
            self._arm()

    def _removed(self, removal: asyncio.Future[int]) -> None:
        """Back on the loop's thread."""
        self._removals.discard(removal)
        if not removal.cancelled() and removal.exception() is None:
            self.removed += removal.result()


def _remove_all(batch: list[tuple[str, tuple[str, ...]]]) -> int:
    """On a worker thread: remove each sandbox of ``batch``; how many."""
    for path, parents in batch:
        with contextlib.suppress(Exception):
            remove_sandbox(path, parents)
    log.debug("sandboxes_removed", count=len(batch))
    return len(batch)
