"""The containerizer: runs executors as OS processes, and makes sure they and theirs go away.

One actor per agent (libproc id ``containerizer``). The agent asks by message —
:class:`~mesa.messages.LaunchContainer`, :class:`~mesa.messages.DestroyContainer` — and the
containerizer answers whoever launched the container (its *owner*) with
:class:`~mesa.messages.ContainerLaunched` and, when the executor process has ended and every
process of the container is gone, :class:`~mesa.messages.ContainerTerminated`.

A container, with posix isolation only, is a process *session*: the executor starts with
``start_new_session=True``, so it leads a new session and process group whose id is its pid, and
everything it forks stays in that session unless it calls ``setsid`` itself. Destroying a container
therefore kills the process group, every process still in the session (found by scanning the
process table, which also catches double-forked orphans whose parent is gone), and every
descendant of the executor (which catches those that left the session but not the tree). What
escapes all three is the cgroups isolators' business (a later issue): they plug in through the
``isolators`` list (:class:`~mesa.isolators.base.Isolator`) and can name more pids to kill.

When an executor exits by itself the same sweep runs before the agent hears of it, so a task the
executor forgot to kill never outlives its container.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from libproc import UPID, Clock, Process, ProcessNotFound, get_logger, handler, route
from mesa import exit_status
from mesa.commands import command_argv
from mesa.isolators.base import Isolator
from mesa.isolators.posix import PosixIsolator
from mesa.messages import (
    ContainerLaunched,
    ContainerTerminated,
    DestroyContainer,
    LaunchContainer,
)

__all__ = ["Containerizer", "source_root"]

# How long, after SIGKILL, to wait for the processes of a container to disappear.
_KILL_WAIT = 5.0


def source_root() -> str:
    """The directory holding the ``mesa`` package, so executors import the same code."""
    return str(Path(__file__).resolve().parent.parent.parent)


@dataclass
class _Container:
    id: str
    owner: UPID
    sandbox: Path
    pid: int | None = None
    process: asyncio.subprocess.Process | None = None
    watcher: asyncio.Task[None] | None = None
    destroying: bool = False
    doomed: set[int] = field(default_factory=set)  # pids already sent SIGKILL by destroy
    files: list[IO[bytes]] = field(default_factory=list)
    launched_at: float = 0.0


class Containerizer(Process):
    """Launches, watches and destroys executor containers for its owner (the agent).

    ``isolators``: hooks run at each step (default: posix only). ``kill_wait``: how long destroy
    waits for killed processes to disappear before reporting anyway.
    """

    def __init__(
        self,
        isolators: list[Isolator] | None = None,
        *,
        kill_wait: float = _KILL_WAIT,
        id: str = "containerizer",
    ) -> None:
        super().__init__(id)
        self.isolators: list[Isolator] = list(isolators) if isolators else [PosixIsolator()]
        self.kill_wait = kill_wait
        self._containers: dict[str, _Container] = {}
        self.log = get_logger("mesa.containerizer")

    def initialize(self) -> None:
        self.metrics.gauge("containerizer/containers_running", lambda: len(self._containers))

    # ------------------------------------------------------------------ launch

    @handler(LaunchContainer.NAME)
    async def _launch(self, sender: UPID, msg: Any) -> None:
        if not isinstance(msg, LaunchContainer) or not isinstance(msg.container_id, str):
            self._invalid(sender, "LaunchContainer", msg)
            return
        cid = msg.container_id
        if cid in self._containers:
            self._reply_launched(sender, cid, error=f"container {cid} already exists")
            return
        container = _Container(cid, sender, Path(msg.sandbox), launched_at=Clock.now())
        self._containers[cid] = container
        try:
            await self._start(container, msg)
        except Exception as e:
            self.metrics.inc("containerizer/launch_errors")
            self.log.warning("container_launch_failed", container_id=cid, error=repr(e))
            self._close_files(container)
            if container.pid is not None:
                self._kill_all(container, self._collect(container))
            del self._containers[cid]
            await self._cleanup_isolators(cid)
            command = msg.executor.command.value if msg.executor else None
            self._reply_launched(sender, cid, error=f"{type(e).__name__}: {e} ({command!r})")
            return
        self.metrics.inc("containerizer/containers_launched")
        self.log.info("container_launched", container_id=cid, pid=container.pid)
        container.watcher = asyncio.get_running_loop().create_task(self._watch(container))
        self._reply_launched(sender, cid, pid=container.pid)

    async def _start(self, container: _Container, msg: LaunchContainer) -> None:
        executable, argv = command_argv(msg.executor.command)
        sandbox = container.sandbox
        sandbox.mkdir(parents=True, exist_ok=True)
        env = self._environment(container, msg)
        for isolator in self.isolators:
            extra = await isolator.prepare(container.id, msg)
            if extra:
                env.update(extra)
        stdout = open(sandbox / "stdout", "ab")
        container.files.append(stdout)
        stderr = open(sandbox / "stderr", "ab")
        container.files.append(stderr)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            executable=executable,
            cwd=str(sandbox),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        container.process = proc
        container.pid = proc.pid
        # The child holds its own copies of the log files.
        self._close_files(container)
        for isolator in self.isolators:
            await isolator.isolate(container.id, proc.pid)

    def _environment(self, container: _Container, msg: LaunchContainer) -> dict[str, str]:
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (msg.environment or {}).items()})
        env.update({str(k): str(v) for k, v in (msg.executor.command.environment or {}).items()})
        env["MESA_CONTAINER_ID"] = container.id
        env["MESA_SANDBOX"] = str(container.sandbox)
        env["MESA_DIRECTORY"] = str(container.sandbox)
        # `python -m mesa.command_executor` must import this very code, installed or not; the
        # sandbox is the working directory, so the checkout must be on the path explicitly.
        root = source_root()
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in paths:
            paths.insert(0, root)
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _reply_launched(
        self, to: UPID, cid: str, pid: int | None = None, error: str | None = None
    ) -> None:
        self.send(to, ContainerLaunched.NAME, ContainerLaunched(cid, pid=pid, error=error))

    # ------------------------------------------------------------------ watch and reap

    async def _watch(self, container: _Container) -> None:
        """Runs outside the actor: wait for the executor, sweep what it left, then report."""
        assert container.process is not None
        status: int | None
        try:
            status = await container.process.wait()
        except Exception as e:  # pragma: no cover - the child watcher failed
            self.log.error("container_wait_failed", container_id=container.id, error=repr(e))
            status = None
        # Whatever is left in the session goes with the executor.
        leftovers = self._collect(container)
        if leftovers:
            self._kill_all(container, leftovers)
        await _wait_gone(leftovers | container.doomed, self.kill_wait)
        with contextlib.suppress(ProcessNotFound):
            await self.runtime.dispatch(self.pid, self._reaped, container.id, status)

    async def _reaped(self, cid: str, status: int | None) -> None:
        container = self._containers.pop(cid, None)
        if container is None:
            return
        await self._cleanup_isolators(cid)
        if container.destroying:
            self.metrics.inc("containerizer/containers_destroyed")
        message = f"Executor {exit_status.describe(status)}"
        self.log.info(
            "container_terminated",
            container_id=cid,
            pid=container.pid,
            status=status,
            destroyed=container.destroying,
        )
        self.send(
            container.owner,
            ContainerTerminated.NAME,
            ContainerTerminated(
                cid, status=status, destroyed=container.destroying, message=message
            ),
        )

    # ------------------------------------------------------------------ destroy

    @handler(DestroyContainer.NAME)
    async def _destroy(self, sender: UPID, msg: Any) -> None:
        if not isinstance(msg, DestroyContainer) or not isinstance(msg.container_id, str):
            self._invalid(sender, "DestroyContainer", msg)
            return
        container = self._containers.get(msg.container_id)
        if container is None:
            self.log.info("destroy_unknown_container", container_id=msg.container_id)
            return
        container.destroying = True
        pids = self._collect(container)
        for isolator in self.isolators:
            try:
                pids |= await isolator.pids(container.id)
            except Exception as e:
                self.log.warning("isolator_pids_failed", isolator=isolator.name, error=repr(e))
        self.log.info("destroying_container", container_id=container.id, pids=len(pids))
        container.doomed |= pids
        self._kill_all(container, pids)
        # The watcher sees the executor die, sweeps again, and reports ContainerTerminated.

    def _collect(self, container: _Container) -> set[int]:
        """Every pid of the container that posix can see: tree, session and process group."""
        pids: set[int] = set()
        leader = container.pid
        if leader is None:
            return pids
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(leader)
            pids.add(leader)
            pids.update(child.pid for child in root.children(recursive=True))
        for pid in psutil.pids():
            try:
                if os.getsid(pid) == leader or os.getpgid(pid) == leader:
                    pids.add(pid)
            except OSError:
                continue
        pids.discard(os.getpid())
        pids.discard(1)
        return pids

    def _kill_all(self, container: _Container, pids: set[int]) -> None:
        if container.pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(container.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ helpers

    async def _cleanup_isolators(self, cid: str) -> None:
        for isolator in reversed(self.isolators):
            try:
                await isolator.cleanup(cid)
            except Exception as e:
                self.log.warning("isolator_cleanup_failed", isolator=isolator.name, error=repr(e))

    def _close_files(self, container: _Container) -> None:
        for f in container.files:
            with contextlib.suppress(OSError):
                f.close()
        container.files.clear()

    def _invalid(self, sender: UPID, what: str, body: Any) -> None:
        self.metrics.inc("containerizer/invalid_messages")
        self.log.warning("invalid_message", sender=str(sender), message=what, body=repr(body)[:200])

    @route("containers")
    def _containers_route(self, request: Any) -> list[dict[str, Any]]:
        return [
            {
                "container_id": c.id,
                "pid": c.pid,
                "sandbox": str(c.sandbox),
                "destroying": c.destroying,
                "owner": str(c.owner),
            }
            for c in self._containers.values()
        ]

    # ------------------------------------------------------------------ shutdown

    async def finalize(self) -> None:
        """No orphans: the agent going away takes every container with it."""
        containers = list(self._containers.values())
        for container in containers:
            container.destroying = True
            self._kill_all(container, self._collect(container))
        watchers = [c.watcher for c in containers if c.watcher is not None]
        if watchers:
            await asyncio.wait(watchers, timeout=self.kill_wait + 1.0)
        for container in containers:
            self._close_files(container)
            await self._cleanup_isolators(container.id)
        self._containers.clear()
        if containers:
            self.log.info("containers_destroyed_on_exit", count=len(containers))


async def _wait_gone(pids: set[int], timeout: float) -> None:
    """Poll until none of ``pids`` runs (zombies count as gone: they cannot run again)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    remaining = set(pids)
    delay = 0.005
    while remaining and loop.time() < deadline:
        remaining = {pid for pid in remaining if _running(pid)}
        if remaining:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
