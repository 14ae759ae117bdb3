"""The isolator seam: what the containerizer asks of every isolator, at each step of a container.

An isolator is a libproc actor that the containerizer spawns next to itself and drives through a
container's life, in the order Mesos uses:

``recover`` (once, at start: forget or clean what a previous agent left) → ``prepare`` (before the
executor process exists: make a cgroup, set limits, add environment or a launcher prefix) →
``isolate`` (the process exists: put its pid in the cgroup; for ``gated`` isolators the process
waits, before running a single instruction of the executor, until every ``isolate`` returned) →
``watch`` (resolves with a :class:`Limitation` when the container hits a limit it cannot be
allowed past) → ``update`` (the executor gained or lost tasks: new totals) → ``usage`` (numbers
for ``/agent/containers``) → ``kill`` / ``pids`` (destroy: every process of the container must
die, including those that left the session and the process tree, which only a cgroup sees) →
``cleanup`` (every process is gone: remove the cgroup).

Every hook except ``watch`` is called with ``libproc.dispatch``, so it runs in the isolator's own
context, one at a time, and the isolator needs no locks. ``watch`` is the exception because it
waits for as long as the container lives: the containerizer awaits it outside the actor, and the
isolator resolves it from its own context by calling :meth:`Isolator.limit`. ``check`` is its
synchronous twin, asked when the executor has already died (an OOM kill may beat the watcher).

Writing one is documented in ``docs/isolators.md``; the base class does nothing, so override only
the hooks you need.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import psutil

from libproc import UPID, Process, ProcessNotFound, ProcessTerminated, get_logger
from mesa.messages import message
from mesa.resources import Resources

if TYPE_CHECKING:
    from mesa.info import ExecutorInfo

__all__ = [
    "MIN_CPUS",
    "MIN_MEMORY_BYTES",
    "ContainerConfig",
    "ContainerLimited",
    "IsolationOptions",
    "Isolator",
    "LaunchInfo",
    "Limitation",
    "MaybeAwaitable",
    "settled",
]

T = TypeVar("T")
# What a hook returns: its value, or an awaitable of it (when it is a coroutine method).
MaybeAwaitable = T | Awaitable[T]

# As in Mesos: a container is never given less than this, whatever its resources say, because
# an executor cannot run in less (and a zero would mean "no limit" to the kernel).
MIN_CPUS = 0.01
MIN_MEMORY_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Limitation:
    """A limit the container hit; the containerizer destroys the container and the agent fails
    its tasks with ``reason`` (a :class:`~mesa.task_state.Reason`) and ``message``."""

    reason: str
    message: str
    resources: str = ""  # what was exceeded, in resource-string form ("mem:64")


@message("containerizer.Limited")
class ContainerLimited:
    """From an isolator to the containerizer that drives it: ``container_id`` hit a limit."""

    NAME: ClassVar[str]
    container_id: str
    isolator: str
    reason: str
    message: str
    resources: str = ""


@dataclass
class IsolationOptions:
    """Knobs shared by the isolators (the agent's ``--cgroups-*`` and ``--container-*`` flags).

    ``cgroups_root`` is the path, below each cgroup hierarchy, under which this agent's
    containers live (``<hierarchy>/<cgroups_root>/<container_id>``). It must be private to one
    agent: on start an agent kills and removes every cgroup under it that holds no live
    container. The agent derives it from its work directory when it is None.
    """

    cgroups_root: str | None = None
    cgroups_enable_cfs: bool = False
    cgroups_cfs_period_us: int = 100_000
    cgroups_max_pids: int | None = 4096
    # How many emptied cgroups each cgroups isolator keeps for the next containers, instead of
    # removing them (v1; see mesa.isolators.cgroups). 0: every container's are made afresh.
    cgroups_spares: int = 64
    enforce_container_disk_quota: bool = False
    container_disk_watch_interval: float = 15.0
    # How often pollers look (posix/mem's rss, cgroups v2 memory.events, v1's safety net).
    poll_interval: float = 0.5
    # How long a kill waits for processes to leave a cgroup before giving up on it.
    kill_wait: float = 5.0

    @property
    def root(self) -> str:
        return (self.cgroups_root or "mesa/default").strip("/")


@dataclass
class ContainerConfig:
    """What ``prepare`` learns about a container: where it runs and what it may use."""

    container_id: str
    sandbox: Path
    resources: Resources
    executor: ExecutorInfo | None = None


@dataclass
class LaunchInfo:
    """What ``prepare`` may add to the launch: environment variables for the executor, a
    command prefix (e.g. ``unshare --pid --fork``) that runs the executor, and ``cgroups``.

    ``cgroups``: cgroup v1 directories the executor can be *born in* (a gated isolator's way of
    placing it). When every gated isolator names its cgroups and the zygote can start a child
    inside them, the executor starts there, with no gate, and those isolators' ``isolate`` is
    not called: there is nothing left for it to do. Otherwise the executor is gated and
    ``isolate`` places it, as always.
    """

    environment: dict[str, str] = field(default_factory=dict)
    command_prefix: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)


class Isolator(Process):
    """Base class: every hook does nothing. ``name`` is what ``--isolation`` calls it.

    ``gated``: set True when ``isolate`` must run before the executor does anything (a cgroup
    must hold the process before it can fork a child outside it). The containerizer then starts
    the executor behind a small gate that waits for every ``isolate`` to return.
    ``tracks_processes``: set True when ``pids`` sees every process of the container, even one
    that left its session (a cgroup's members). ``reports_limits``: set False when the isolator
    never calls :meth:`limit`.
    """

    name: ClassVar[str] = "base"
    gated: ClassVar[bool] = False
    # True when ``pids`` reports every process of a container, wherever it went (a cgroup):
    # the containerizer then does not scan the machine for the container's session.
    tracks_processes: bool = False
    # False when this isolator never calls ``limit``: the containerizer then keeps no watcher
    # on it (a task per container per isolator otherwise).
    reports_limits: bool = True

    def __init__(self, options: IsolationOptions | None = None, *, id: str | None = None) -> None:
        super().__init__(id)
        self.options = options if options is not None else IsolationOptions()
        self._limits: dict[str, asyncio.Future[Limitation]] = {}
        self._limits_to: UPID | None = None  # who hears of a limit by message
        self._known: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self.log: Any = get_logger("mesa.isolator").bind(isolator=self.name)

    @classmethod
    def unavailable(cls, options: IsolationOptions) -> str | None:
        """Why this isolator cannot work on this machine, or None when it can."""
        return None

    # ------------------------------------------------------------------ hooks to override

    # Each hook may be a plain method or a coroutine method (``async def``), whichever suits it:
    # the containerizer calls it with ``libproc.dispatch``, which awaits what needs awaiting. A
    # plain one costs no task: the built-in isolators' per-container hooks do their work at
    # once, and a task for each of them was a tenth of the agent's CPU per short task.

    def recover(self, live: set[str]) -> MaybeAwaitable[None]:
        """At start: ``live`` containers survive (agent recovery); anything else this isolator
        finds from an earlier run must be killed and removed."""
        return None

    def prepare(
        self, container_id: str, config: ContainerConfig
    ) -> MaybeAwaitable[LaunchInfo | None]:
        """Before launch. May return environment and a command prefix for the executor."""
        return None

    def isolate(self, container_id: str, pid: int) -> MaybeAwaitable[None]:
        """The executor process ``pid`` exists (and, if ``gated``, waits for us)."""
        return None

    def update(self, container_id: str, resources: Resources) -> MaybeAwaitable[None]:
        """The container's resources changed (its executor gained or lost tasks)."""
        return None

    def usage(self, container_id: str) -> MaybeAwaitable[dict[str, float]]:
        """Statistics in Mesos's ``ResourceStatistics`` names (``cpus_user_time_secs``,
        ``mem_rss_bytes``, ``mem_limit_bytes``, ``disk_used_bytes`` …)."""
        return {}

    def check(self, container_id: str) -> MaybeAwaitable[Limitation | None]:
        """Look now: has the container hit a limit? (Asked when the executor has died, in case
        the kernel's OOM killer was faster than the watcher.) Default: what ``limit`` recorded."""
        future = self._limits.get(container_id)
        if future is not None and future.done() and not future.cancelled():
            return future.result()
        return None

    def pids(self, container_id: str) -> MaybeAwaitable[set[int]]:
        """Every pid this isolator knows to be in the container."""
        return set()

    def kill(self, container_id: str) -> MaybeAwaitable[None]:
        """Destroy is under way: SIGKILL every process of the container this isolator can see
        (a freezer first stops a fork bomb from outrunning the kill)."""
        return None

    def cleanup(self, container_id: str) -> MaybeAwaitable[None]:
        """Every process of the container is gone: release what ``prepare`` made."""
        return None

    # ------------------------------------------------------------------ watch

    async def watch(self, container_id: str) -> Limitation:
        """Resolves when the container hits a limit. Awaited *outside* the actor (it waits for
        the container's whole life); resolved from inside by :meth:`limit`."""
        return await asyncio.shield(self._limit_future(container_id))

    def limit(self, container_id: str, limitation: Limitation) -> None:
        """For subclasses: report that ``container_id`` hit a limit (first report wins). The
        containerizer hears it as a message (see :meth:`report_limits_to`); ``watch`` resolves
        too, for whoever awaits it."""
        future = self._limit_future(container_id)
        if not future.done():
            self.log.debug(  # the containerizer logs it, naming this isolator
                "container_limitation",
                container_id=container_id,
                reason=limitation.reason,
                message=limitation.message,
            )
            future.set_result(limitation)
            if self._limits_to is not None:
                self.send(
                    self._limits_to,
                    ContainerLimited.NAME,
                    ContainerLimited(
                        container_id,
                        self.name,
                        str(limitation.reason),
                        limitation.message,
                        limitation.resources,
                    ),
                )

    def report_limits_to(self, pid: UPID) -> None:
        """Send each :meth:`limit` to ``pid`` (the containerizer, before it spawns this): a
        message, where awaiting ``watch`` would take a task per container for its whole life."""
        self._limits_to = pid

    def in_background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` outside the actor (a ``du``, an eventfd's follow-up) and keep it
        referenced until it ends; it reports back with ``self.runtime.dispatch(self.pid, …)``,
        or through :meth:`post`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """From a loop callback (outside the actor): run ``fn(*args)`` in the actor's context."""

        async def call() -> None:
            with contextlib.suppress(ProcessNotFound, ProcessTerminated):
                await self.runtime.dispatch(self.pid, fn, *args)

        self.in_background(call())

    def _limit_future(self, container_id: str) -> asyncio.Future[Limitation]:
        future = self._limits.get(container_id)
        if future is None:
            future = self._limits[container_id] = asyncio.get_running_loop().create_future()
        return future

    # ------------------------------------------------------------------ driven by the containerizer

    def _run_prepare(
        self, container_id: str, config: ContainerConfig
    ) -> MaybeAwaitable[LaunchInfo | None]:
        """Bookkeeping around ``prepare``: the isolator remembers what it holds, so that
        ``finalize`` can clean it even if its containerizer could not."""
        self._known.add(container_id)
        return self.prepare(container_id, config)

    def _run_cleanup(self, container_id: str) -> MaybeAwaitable[None]:
        """``cleanup``, then forget the container (once a cleanup that waits is over)."""
        try:
            pending = self.cleanup(container_id)
        except BaseException:
            self._forget(container_id)
            raise
        if inspect.isawaitable(pending):
            return self._forget_after(pending, container_id)
        self._forget(container_id)
        return None

    async def _forget_after(self, pending: Awaitable[None], container_id: str) -> None:
        try:
            await pending
        finally:
            self._forget(container_id)

    def _forget(self, container_id: str) -> None:
        self._known.discard(container_id)
        future = self._limits.pop(container_id, None)
        if future is not None and not future.done():
            future.cancel()

    async def finalize(self) -> None:
        """Going away (the agent stops, or the whole runtime): nothing this isolator holds may
        outlive it. Runs even when the containerizer is being torn down at the same moment."""
        for container_id in sorted(self._known):
            with contextlib.suppress(Exception):
                await settled(self.kill(container_id))
        for container_id in sorted(self._known):
            try:
                await self._wait_empty(container_id, self.options.kill_wait)
                await settled(self._run_cleanup(container_id))
            except Exception as e:
                self.log.warning("cleanup_on_exit_failed", container_id=container_id, error=repr(e))
        await settled(self.teardown())
        for task in list(self._background):
            task.cancel()

    def teardown(self) -> MaybeAwaitable[None]:
        """After the last cleanup when the isolator stops: remove shared state (a cgroup root)."""
        return None

    async def _wait_empty(self, container_id: str, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.005
        while any(_alive(pid) for pid in await settled(self.pids(container_id))):
            if loop.time() > deadline:
                return False
            await settled(self.kill(container_id))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


async def settled(value: MaybeAwaitable[T]) -> T:
    """What a hook returned, awaited if it is awaitable (a hook may be either kind)."""
    if inspect.isawaitable(value):
        return await value
    return value


def _alive(pid: int) -> bool:
    """A zombie is as good as gone: it cannot run again, and its parent reaps it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
