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

A week is long for an agent that runs short tasks: at a thousand a second it makes 600 million
sandboxes in one, and the disk (its inodes first: each sandbox is a directory and two files)
runs out long before. So, as Mesos's ``--gc_disk_headroom`` does, the agent looks at its disk
every ``--disk-watch-interval`` and removes now every sandbox older than
``gc_delay * max(0, 1 - headroom - usage)`` (:func:`max_age`, :meth:`SandboxCollector.prune`):
the fuller the disk, the sooner they go, all of them once less than ``headroom`` is left. Unlike
Mesos, usage is the larger of the blocks and the inodes used (:func:`disk_usage`), since tiny
sandboxes fill the inode table first.

An agent started again finds the sandboxes its earlier run left (:func:`find_sandboxes`: no
executor outlives its agent, so none is in use) and hands them over too
(:meth:`SandboxCollector.adopt`), each due ``delay`` after it last changed, as Mesos does at
recovery; before, they stayed for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from libproc import Clock, Timer, get_logger

__all__ = ["SandboxCollector", "disk_usage", "find_sandboxes", "max_age"]

log = get_logger("mesa.sandbox_gc")


def remove_sandbox(path: str, parents: Sequence[str]) -> None:
    """Remove ``path`` and then each of ``parents`` (innermost first) that is left empty."""
    shutil.rmtree(path, ignore_errors=True)
    for parent in parents:
        try:
            os.rmdir(parent)
        except OSError:  # not empty (another run of the same executor), or already gone
            return


def disk_usage(path: str) -> float:
    """The fraction of the filesystem holding ``path`` that is used: of its blocks or of its
    inodes, whichever is more (a filesystem that does not count inodes reports none). What is
    reserved for root (ext4 keeps 5 %) counts as used: the headroom is kept clear of it, so an
    agent running as root does not eat into what the system keeps for itself."""
    st = os.statvfs(path)
    used = 1.0 - st.f_bavail / st.f_blocks if st.f_blocks else 0.0
    if st.f_files:
        used = max(used, 1.0 - st.f_favail / st.f_files)
    return min(1.0, max(0.0, used))


def find_sandboxes(agents: str, before: float) -> list[tuple[float, str, tuple[str, ...]]]:
    """The sandboxes under an agent's ``<work_dir>/agents`` last changed before ``before``
    (seconds since the epoch): what an earlier run of the agent left, oldest first, each as
    ``(mtime, path, parents)`` (:meth:`SandboxCollector.add`'s ``parents``: an executor's
    ``runs`` and executor directories). For a worker thread: there may be millions."""
    found: list[tuple[float, str, tuple[str, ...]]] = []

    def runs_in(runs: str, parents: tuple[str, ...]) -> None:
        with contextlib.suppress(OSError), os.scandir(runs) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        mtime = entry.stat(follow_symlinks=False).st_mtime
                        if mtime < before:
                            found.append((mtime, entry.path, parents))

    def subdirs(path: str) -> list[str]:
        with contextlib.suppress(OSError), os.scandir(path) as entries:
            return [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        return []

    for agent in subdirs(agents):
        for framework in subdirs(os.path.join(agent, "frameworks")):
            runs_in(os.path.join(framework, "runs"), ())  # direct tasks'
            for executor in subdirs(os.path.join(framework, "executors")):
                runs = os.path.join(executor, "runs")
                runs_in(runs, (runs, executor))
    found.sort()
    return found


def max_age(delay: float, headroom: float, usage: float) -> float:
    """How long a finished sandbox may be kept with the disk ``usage`` full (Mesos's formula):
    the whole ``delay`` on an empty disk, less as it fills, nothing once less than ``headroom``
    is left."""
    return delay * max(0.0, 1.0 - headroom - usage)


class SandboxCollector:
    """Removes each sandbox ``delay`` seconds after :meth:`add`.

    ``schedule(seconds, fn) -> Timer`` is normally the owner's ``delay``. ``removed`` counts the
    sandboxes removed, ``pruned`` those sent for removal before their delay was over
    (:meth:`prune`); ``len()`` is how many wait.
    """

    def __init__(self, delay: float, schedule: Callable[..., Timer]) -> None:
        if not 0 <= delay < math.inf:  # (also refuses nan)
            raise ValueError("the delay must be a finite number of seconds, not negative")
        self.delay = delay
        self._schedule = schedule
        # One waiting sandbox is the same index in three deques, not a tuple in one. A tuple is
        # an object of the garbage collector's, and one made per task and kept for days is a
        # steady +1 per task in the allocation count that starts its young collections: on an
        # agent whose other objects come and go, one then came every threshold's worth of tasks
        # (20,000 for mesa.node's agent), and each walked everything made since the last (the
        # records of the last tasks: in bench.agent_bench 190,000-310,000 objects, 100-260 ms,
        # collecting nothing). Floats and strings are not the collector's, and a direct task's
        # parents are the one empty tuple: with nothing else growing, the count stays level.
        self._when: deque[float] = deque()
        self._paths: deque[str] = deque()
        self._parents: deque[tuple[str, ...]] = deque()
        self._timer: Timer | None = None
        self._removals: set[asyncio.Future[Any]] = set()
        self.removed = 0
        self.pruned = 0

    def __len__(self) -> int:
        return len(self._when)

    def add(self, path: str, parents: Sequence[str] = ()) -> None:
        """``path`` is no longer in use; remove it (and ``parents`` it leaves empty) later."""
        due, up = Clock.now() + self.delay, tuple(parents) if parents else ()
        # (All of it first: a bad ``parents`` raises before any deque has the entry.)
        self._when.append(due)
        self._paths.append(path)
        self._parents.append(up)
        if self._timer is None:
            self._arm()

    def adopt(self, found: list[tuple[float, str, tuple[str, ...]]], now: float) -> int:
        """Sandboxes an earlier run of the agent left (:func:`find_sandboxes`; ``now`` in the
        same seconds since the epoch): each is due ``delay`` after it was last changed, as
        Mesos schedules what it finds at recovery; those overdue go at the next sweep. Returns
        how many."""
        if not found:
            return 0
        shift = Clock.now() - now + self.delay  # (epoch seconds -> due on the Clock)
        adopted = [(mtime + shift, path, tuple(parents)) for mtime, path, parents in found]
        waiting = zip(self._when, self._paths, self._parents, strict=True)
        merged = sorted([*adopted, *waiting], key=lambda entry: entry[0])
        self._when = deque(entry[0] for entry in merged)
        self._paths = deque(entry[1] for entry in merged)
        self._parents = deque(entry[2] for entry in merged)
        self._rearm()
        return len(adopted)

    def close(self) -> None:
        """Stop sweeping (the agent is stopping); what is due stays on disk."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self._timer = self._schedule(max(0.0, self._when[0] - Clock.now()), self._sweep)

    def _rearm(self) -> None:
        """The oldest sandbox changed: the timer is for it (or for none, when none waits)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._when:
            self._arm()

    def prune(self, age: float) -> int:
        """Remove now every sandbox handed in at least ``age`` seconds ago, before its delay is
        over (the disk is filling: see :func:`max_age`); returns how many."""
        if age >= self.delay:
            return 0  # (none is due sooner than it is already)
        count = self._remove_due(Clock.now() - age + self.delay)
        self.pruned += count
        if count:
            self._rearm()  # (the timer was for the oldest, which has gone)
        return count

    def _sweep(self) -> None:
        self._timer = None
        self._remove_due(Clock.now())
        if self._when:
            self._arm()

    def _remove_due(self, until: float) -> int:
        """Hand every sandbox due by ``until`` to a worker thread for removal; how many."""
        batch: list[tuple[str, tuple[str, ...]]] = []
        when, paths, parents = self._when, self._paths, self._parents
        while when and when[0] <= until:
            when.popleft()
            batch.append((paths.popleft(), parents.popleft()))
        if batch:
            loop = asyncio.get_running_loop()
            removal = loop.run_in_executor(None, _remove_all, batch)
            self._removals.add(removal)
            removal.add_done_callback(self._removed)
        return len(batch)

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
