"""The containerizer: runs each executor in a container, and makes sure nothing of it outlives it.

One actor per agent (libproc id ``containerizer``). The agent asks by message —
:class:`~mesa.messages.LaunchContainer`, :class:`~mesa.messages.UpdateContainer`,
:class:`~mesa.messages.DestroyContainer` — and the containerizer answers whoever launched the
container (its *owner*) with :class:`~mesa.messages.ContainerLaunched` and, when the executor has
ended and every process of the container is gone, :class:`~mesa.messages.ContainerTerminated`
(with the :class:`~mesa.isolators.base.Limitation` that ended it, if one did).

A container is a process session (the executor starts with ``start_new_session=True``) plus
whatever the isolators make of it: cgroups, a pid namespace. The isolators are actors the
containerizer spawns next to itself and drives through each container's life (see
:mod:`mesa.isolators.base`): recover at start, then prepare → launch → isolate → watch → update
→ usage → kill → cleanup. When an isolator is ``gated`` (cgroups), the executor is started
behind a gate — a few lines of Python that block on a pipe and then ``exec`` the executor — so
it is inside its cgroups before it runs a single instruction of its own, and nothing it forks can
start outside them.

Destroying a container kills everything the containerizer and its isolators can see: the session,
the process group, the executor's descendants (posix), and every member of its cgroups (forks
stopped first, so a fork bomb cannot outrun the kill). It then waits until the executor has
exited and every isolator reports its container empty, and only then tells the owner; the
isolators clean up (remove the cgroups) right after, off the path from a task's end to its status
update. When an executor exits by itself the same sweep runs first, so a task
the executor forgot to kill never outlives its container. When an isolator's ``watch`` resolves
(out of memory, over the disk quota), the container is destroyed and the owner is told why.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from libproc import (
    UPID,
    Clock,
    Process,
    ProcessNotFound,
    ProcessTerminated,
    Timer,
    get_logger,
    handler,
    route,
)
from mesa import exit_status
from mesa.commands import command_argv, simple_command
from mesa.isolators.base import (
    ContainerConfig,
    ContainerLimited,
    Isolator,
    Limitation,
)
from mesa.isolators.posix import session_pids
from mesa.messages import (
    ContainerLaunched,
    ContainerTerminated,
    DestroyContainer,
    LaunchContainer,
    SignalContainer,
    UpdateContainer,
)
from mesa.resources import ResourceError, Resources
from mesa.spawn import Child, gated_argv, spawn
from mesa.validation import parse_resources
from mesa.zygote import (
    Zygote,
    ZygoteChild,
    ZygoteError,
    ZygoteLostSpawn,
    is_command_executor,
)

__all__ = ["USAGE_KEYS", "Containerizer", "source_root"]

# How long, after SIGKILL, to wait for the processes of a container to disappear.
_KILL_WAIT = 5.0

# Hooks whose base implementation does nothing and returns None: not dispatched unless overridden.
_SKIPPABLE_HOOKS = frozenset({"isolate", "update", "usage", "pids", "kill"})

# Statistics summed over live containers into /metrics/snapshot (containerizer/<key>).
USAGE_KEYS = (
    "cpus_limit",
    "cpus_user_time_secs",
    "cpus_system_time_secs",
    "cpus_throttled_time_secs",
    "mem_rss_bytes",
    "mem_total_bytes",
    "mem_limit_bytes",
    "disk_used_bytes",
    "disk_limit_bytes",
    "processes",
)


@functools.cache
def source_root() -> str:
    """The directory holding the ``mesa`` package, so executors import the same code."""
    return str(Path(__file__).resolve().parent.parent.parent)


@dataclass
class _Container:
    id: str
    owner: UPID
    sandbox: Path
    resources: Resources = field(default_factory=Resources.empty)
    pid: int | None = None
    process: Child | ZygoteChild | asyncio.subprocess.Process | None = None
    watcher: asyncio.Task[None] | None = None
    watches: list[asyncio.Task[None]] = field(default_factory=list)
    destroying: bool = False
    limitation: Limitation | None = None
    doomed: set[int] = field(default_factory=set)  # pids already sent SIGKILL
    files: list[IO[bytes]] = field(default_factory=list)
    gate: int | None = None  # write end of the gate's pipe, until the executor is let go
    launched_at: float = 0.0
    starting: asyncio.Task[None] | None = None  # the start, while it runs (outside the actor)


class Containerizer(Process):
    """Launches, watches, updates and destroys executor containers for its owner (the agent).

    ``isolators``: the isolator actors to drive (default: posix/cpu and posix/mem); the
    containerizer spawns them and stops them when it stops. ``kill_wait``: how long destroy waits
    for killed processes to disappear before reporting anyway. ``usage_interval``: how often the
    usage behind ``/metrics/snapshot`` is refreshed (``/agent/containers`` always reads afresh).
    ``live``: containers an isolator must not clean up at start (for agent recovery).
    """

    def __init__(
        self,
        isolators: list[Isolator] | None = None,
        *,
        kill_wait: float = _KILL_WAIT,
        usage_interval: float = 5.0,
        live: set[str] | None = None,
        zygote: bool = True,
        zygotes: int | None = None,
        id: str = "containerizer",
    ) -> None:
        super().__init__(id)
        # The agent's environment with this checkout on the path, read once (copying
        # os.environ decodes every variable): the base of every container's, and the zygote's.
        self._base_env = _zygote_env()
        # Containers are started by warm zygotes (mesa/zygote.py says why), more than one: a
        # zygote waits in vfork until its child has exec'd, and on a busy machine the child
        # first waits for a CPU. One zygote then spent most of its time waiting, and launches
        # queued behind it (measured: blocked 78% of the time on 1,000 `true` tasks, for
        # 0.2 ms of CPU per spawn). With two, one spawns while the other waits.
        count = zygotes if zygotes is not None else default_zygotes()
        self.zygotes: list[Zygote] = (
            [Zygote(self._base_env) for _ in range(max(1, count))] if zygote else []
        )
        self._next_zygote = 0
        if isolators is None:
            from mesa.isolators.posix import PosixCpuIsolator, PosixMemIsolator

            isolators = [PosixCpuIsolator(), PosixMemIsolator()]
        self.isolators: list[Isolator] = list(isolators)
        self.kill_wait = kill_wait
        self.usage_interval = usage_interval
        self._live = set(live or ())
        self._containers: dict[str, _Container] = {}
        self._usage: dict[str, dict[str, float]] = {}
        self._usage_timer: Timer | None = None
        self._spawned: list[Isolator] = []
        # Isolator cleanups after a report, by container: a launch that reuses the id of one
        # waits for it (its cgroups are removed before they are made again).
        self._releases: dict[str, asyncio.Task[None]] = {}
        self._found: dict[tuple[str, str | None], float] = {}  # executables seen, until when
        # Programs that simple shell commands run without the shell: (name, PATH) -> (where it
        # is, or None when the shell must run it), until when.
        self._programs: dict[tuple[str, str], tuple[str | None, float]] = {}
        # An isolator that knows every process of a container (a cgroup's members, escaped
        # sessions included) makes the scan of every process on the machine for the session
        # redundant.
        self._tracks_processes = any(i.tracks_processes for i in self.isolators)
        # Who is asked what an ended executor left (see _kill): a gated tracking isolator, whose
        # cgroup held the executor before it could fork (cgroups/cpu takes it as it starts).
        tracking = [i for i in self.isolators if i.tracks_processes]
        gated = [i for i in tracking if i.gated]
        self._leftover_askers = (gated or tracking)[:1]
        self.log = get_logger("mesa.containerizer")

    async def initialize(self) -> None:
        for isolator in self.isolators:
            isolator.report_limits_to(self.pid)
            self.spawn(isolator)
            self._spawned.append(isolator)
        for isolator in self.isolators:
            try:
                await self.runtime.dispatch(isolator.pid, isolator.recover, set(self._live))
            except Exception as e:
                self.log.warning("isolator_recover_failed", isolator=isolator.name, error=repr(e))
        m = self.metrics
        m.gauge("containerizer/containers_running", lambda: len(self._containers))
        # Ended containers whose isolators are still releasing what they made (cgroups, ...):
        # reported ended already (a task's end does not wait for this), not yet gone.
        m.gauge("containerizer/releases_pending", lambda: len(self._releases))
        for key in USAGE_KEYS:
            m.gauge(f"containerizer/{key}", lambda k=key: self._aggregate(k))
        self._usage_timer = self.delay(self.usage_interval, self._refresh_usage)
        if self.zygotes:
            zs = self.zygotes
            m.gauge("containerizer/zygotes", lambda: sum(z.alive for z in zs))
            m.set("containerizer/zygotes_configured", len(zs))
            # Zygotes that died max_failures times: launches they would take start cold.
            m.gauge("containerizer/zygotes_given_up", lambda: sum(z.given_up for z in zs))
            m.gauge("containerizer/zygote_executors_forked", lambda: sum(z.forked for z in zs))
            m.gauge("containerizer/zygote_executors_exited", lambda: sum(z.exited for z in zs))
            m.gauge(
                "containerizer/zygote_abandoned_killed",
                lambda: sum(z.abandoned_killed for z in zs),
            )
            m.gauge(
                "containerizer/zygote_executor_cpu_seconds",
                lambda: sum(z.executor_cpu_seconds for z in zs),
            )
            # Warm them now, off the actor: the first launch awaits one if it is not ready yet.
            for z in zs:
                warm = asyncio.ensure_future(z.start())
                warm.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.log.info("containerizer_started", isolators=[i.name for i in self.isolators])

    # ------------------------------------------------------------------ calling isolators

    async def _call(self, isolator: Isolator, method: str, *args: Any) -> Any:
        """Run an isolator hook in the isolator's own context — unless the isolator left that
        hook as the base class's no-op: a dispatch per hook per isolator per container adds up
        to a good part of a short task's cost, and asking a no-op is pure overhead. (An idle
        isolator runs a plain hook at once: see ``Runtime.submit``.)"""
        if method in _SKIPPABLE_HOOKS and getattr(type(isolator), method) is getattr(
            Isolator, method
        ):
            return None
        return await self.runtime.submit(isolator.pid, getattr(isolator, method), *args)

    def _submit(self, isolator: Isolator, method: str, *args: Any) -> asyncio.Future[Any]:
        """The same, as a future (failing, not raising, when the isolator is gone)."""
        try:
            return self.runtime.submit(isolator.pid, getattr(isolator, method), *args)
        except Exception as e:
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(e)
            return failed

    async def _call_quiet(self, isolator: Isolator, method: str, *args: Any) -> Any:
        """The same, for hooks whose failure must not stop a destroy or a cleanup."""
        try:
            return await self._call(isolator, method, *args)
        except (ProcessNotFound, ProcessTerminated):
            return None  # it is stopping, and cleans up what it holds itself
        except Exception as e:
            self.log.warning(f"isolator_{method}_failed", isolator=isolator.name, error=repr(e))
            return None

    # ------------------------------------------------------------------ launch

    @handler(LaunchContainer.NAME)
    def _launch(self, sender: UPID, msg: Any) -> None:
        """Register the container and start it *outside* the actor: a start waits on the
        isolators and the zygote, and a burst of launches (an offer's worth of tasks) would
        otherwise wait for each other, and every other request with them."""
        if not isinstance(msg, LaunchContainer) or not isinstance(msg.container_id, str):
            self._invalid(sender, "LaunchContainer", msg)
            return
        cid = msg.container_id
        if cid in self._containers:
            self._reply_launched(sender, cid, error=f"container {cid} already exists")
            return
        container = _Container(cid, sender, Path(msg.sandbox), launched_at=Clock.now())
        self._containers[cid] = container
        loop = asyncio.get_running_loop()
        container.starting = loop.create_task(self._start_safely(container, msg))
        # Back into the actor when it is over (defer: a mailbox event, no task of its own).
        container.starting.add_done_callback(
            lambda start: start.cancelled() or self.defer(self._started, container, msg, start)
        )

    async def _start_safely(self, container: _Container, msg: LaunchContainer) -> Exception | None:
        """Outside the actor: start the container; the error, if it failed."""
        try:
            container.resources = _parse_resources(msg.resources)
            await self._start(container, msg)
        except Exception as e:
            return e
        return None

    def _started(
        self, container: _Container, msg: LaunchContainer, start: asyncio.Task[Exception | None]
    ) -> Awaitable[None] | None:
        """Back in the actor: the start succeeded (watch it) or failed (undo it, say why).
        Synchronous when it succeeded, as it mostly does: a deferred plain function costs no
        task; the failure and the late kill return what the mailbox then awaits."""
        cid, sender = container.id, container.owner
        container.starting = None
        error = start.result()
        if error is not None:
            return self._start_failed(container, msg, error)
        self.metrics.inc("containerizer/containers_launched")
        self.log.info(
            "container_launched",
            container_id=cid,
            pid=container.pid,
            resources=container.resources,
        )
        loop = asyncio.get_running_loop()
        for isolator in self.isolators:
            # Limits come by message (ContainerLimited); only an isolator with a watch of its
            # own is awaited, by a task for the container's life.
            if isolator.reports_limits and type(isolator).watch is not Isolator.watch:
                container.watches.append(loop.create_task(self._watch_limits(container, isolator)))
        container.watcher = loop.create_task(self._watch(container))
        self._reply_launched(sender, cid, pid=container.pid)
        if container.destroying:  # destroyed while it was starting: now there is a pid to kill
            return self._kill(container)
        return None

    async def _start_failed(
        self, container: _Container, msg: LaunchContainer, error: Exception
    ) -> None:
        """Undo a start that failed: kill what it started, clean up, and say why."""
        cid, sender = container.id, container.owner
        if isinstance(error, _DestroyedWhileStarting):
            self.metrics.inc("containerizer/destroyed_while_starting")
            self.log.info("container_destroyed_while_starting", container_id=cid)
        else:
            self.metrics.inc("containerizer/launch_errors")
            self.log.warning("container_launch_failed", container_id=cid, error=repr(error))
        self._close_files(container)
        self._close_gate(container)
        pids = await self._kill(container)
        if container.process is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(container.process.wait(), self.kill_wait)
        await self._wait_empty(container, pids)
        del self._containers[cid]
        await self._cleanup_isolators(container)
        command = msg.executor.command.value if msg.executor else None
        why = f"{type(error).__name__}: {error} ({command!r})"
        self._reply_launched(sender, cid, error=why)

    async def _start(self, container: _Container, msg: LaunchContainer) -> None:
        release = self._releases.get(container.id)
        if release is not None:  # an earlier container of that id is still being cleaned up
            await asyncio.shield(release)
        executable, argv = command_argv(msg.executor.command)
        sandbox = container.sandbox
        overlay = self._overlay(container, msg)
        config = ContainerConfig(container.id, sandbox, container.resources, msg.executor)
        prefix: list[str] = []
        birthplace: dict[Isolator, list[str]] = {}  # isolator -> the cgroups it can be born in
        # Every isolator prepares at once, as in Mesos: each is an actor of its own. Plain
        # hooks of idle isolators are over before the next is asked (the futures come back
        # done); only one that waits is waited for. (When one fails, the others still finish
        # before the failure is handled, so the cleanup that follows finds what they made.)
        futures = [self._submit(i, "_run_prepare", container.id, config) for i in self.isolators]
        if not all(f.done() for f in futures):
            await asyncio.wait(futures)
        errors = [future.exception() for future in futures]  # (each looked at: retrieved)
        for error in errors:
            if error is not None:
                raise error
        results = [future.result() for future in futures]
        for isolator, info in zip(self.isolators, results, strict=True):
            if info is not None:
                overlay.update({str(k): str(v) for k, v in info.environment.items()})
                prefix.extend(info.command_prefix)
                if info.cgroups:
                    birthplace[isolator] = info.cgroups
        if prefix:
            # The launcher runs the command by path; argv[0] becomes that path.
            executable, argv = prefix[0], [*prefix, executable, *argv[1:]]
        gated = any(isolator.gated for isolator in self.isolators)
        zygote = self._pick_zygote()
        if gated or zygote is not None:
            # A clear launch error now, rather than an exit status 127 from the gate or the
            # zygote's child later.
            path = overlay.get("PATH", self._base_env.get("PATH"))
            now = time.monotonic()  # (about the filesystem: real time, not the Clock's)
            if self._found.get((executable, path), 0.0) < now:
                _check_executable(executable, path)
                # Found: believed for a second (every task of a burst runs the same /bin/sh).
                if len(self._found) > 1024:
                    self._found.clear()
                self._found[executable, path] = now + 1.0
        if zygote is not None and not prefix:
            command = msg.executor.command
            forked = None if is_command_executor(command) else argv
            words = simple_command(command.value) if forked and command.shell else None
            _check_not_destroyed(container)
            try:
                await self._start_forked(
                    zygote, container, overlay, forked, executable, gated, birthplace, words
                )
                return
            except ZygoteLostSpawn:
                # The zygote may have started the command before it died: kill whatever it
                # started, and fail this launch rather than run the command a second time. The
                # failure is reported once they are gone (_start_failed waits for the doomed).
                self.metrics.inc("containerizer/zygote_errors")
                found = await asyncio.to_thread(
                    kill_processes_of_container, container.id, str(container.sandbox)
                )
                container.doomed.update(found)
                raise
            except ZygoteError as e:  # nothing started: start it cold; a later launch restarts
                self.metrics.inc("containerizer/zygote_errors")  # the zygote
                self.log.warning("zygote_spawn_failed", container_id=container.id, error=repr(e))
        _check_not_destroyed(container)
        # Started by the agent itself: no zygote (none configured, every one given up on, or
        # this one failed before it started anything), or a launcher prefix to run.
        self.metrics.inc("containerizer/cold_starts")
        env = {**self._base_env, **overlay}
        sandbox.mkdir(parents=True, exist_ok=True)
        stdout = open(sandbox / "stdout", "ab")
        container.files.append(stdout)
        stderr = open(sandbox / "stderr", "ab")
        container.files.append(stderr)
        common: dict[str, Any] = {
            "cwd": str(sandbox),
            "env": env,
            "stdin": subprocess.DEVNULL,
            "stdout": stdout,
            "stderr": stderr,
            "start_new_session": True,
        }
        if gated:
            read_end, container.gate = os.pipe()
            try:
                proc = await spawn(gated_argv(executable, argv), **{**common, "stdin": read_end})
            finally:
                os.close(read_end)
        else:
            proc = await spawn(argv, executable=executable, **common)
        container.process = proc
        container.pid = proc.pid
        # The child holds its own copies of the log files.
        self._close_files(container)
        for isolator in self.isolators:
            await self._call(isolator, "isolate", container.id, proc.pid)
        _check_not_destroyed(container)  # (the error path closes the gate: it never runs)
        if container.gate is not None:
            os.write(container.gate, b"go\n")
            self._close_gate(container)

    def _program(self, name: str, overlay: dict[str, str]) -> str | None:
        """Where ``exec`` finds ``name`` on the container's ``PATH``, if it can run it itself;
        None leaves the command to the shell. Believed for a second, as :attr:`_found` is."""
        path = overlay.get("PATH", self._base_env.get("PATH"))
        if path is None:
            return None  # (the shell has a PATH of its own then)
        if not all(entry.startswith("/") for entry in path.split(os.pathsep)):
            return None  # (".", "" or a relative directory: the sandbox's, to the shell)
        now = time.monotonic()
        seen = self._programs.get((name, path))
        if seen is not None and seen[1] >= now:
            return seen[0]
        found = _exec_target(name, path)
        if len(self._programs) > 1024:
            self._programs.clear()
        self._programs[name, path] = (found, now + 1.0)
        return found

    def _pick_zygote(self) -> Zygote | None:
        """The zygote with the fewest spawns in flight (the next in turn among equals); None
        when there is none, or every one was given up on (launches then start cold)."""
        best: Zygote | None = None
        n = len(self.zygotes)
        for k in range(n):
            z = self.zygotes[(self._next_zygote + k) % n]
            if not z.given_up and (best is None or z.spawning < best.spawning):
                best = z
        if n:
            self._next_zygote = (self._next_zygote + 1) % n
        return best

    async def _start_forked(
        self,
        zygote: Zygote,
        container: _Container,
        overlay: dict[str, str],
        argv: list[str] | None,
        executable: str,
        gated: bool,
        birthplace: dict[Isolator, list[str]],
        words: list[str] | None = None,
    ) -> None:
        """A child of the zygote: the command executor itself, or (``argv``) a process that
        ``exec``s the container's command. When an isolator is ``gated`` it parks at its gate
        until every isolator has placed it (the zygote's gate does what ``GATE_SCRIPT`` does for a
        cold start) — unless every gated isolator gave cgroups it can be born in, and the
        zygote can start it there: then it needs no gate, and those isolators no ``isolate``.
        The zygote makes the sandbox and opens its ``stdout``/``stderr``: on a slow
        filesystem those are most of what a launch costs, and the agent's thread need not
        wait for them."""
        await zygote.start()  # (what it can do is known once it is up)
        _check_not_destroyed(container)  # (a destroy may have come while it started)
        cgroups: list[str] = []
        if (
            gated
            and argv is not None
            and zygote.can_place
            and all(i in birthplace for i in self.isolators if i.gated)
        ):
            cgroups = list(dict.fromkeys(p for paths in birthplace.values() for p in paths))
            gated = False
        else:
            birthplace = {}  # placed the usual way: every isolator's isolate
        sandbox = overlay["MESA_SANDBOX"]
        program = self._program(words[0], overlay) if words and not gated else None
        if program is not None:
            # What `sh -c` would only have looked up and run, run without it (and without the
            # fork it makes first): see mesa.commands. Only here, started straight from the
            # zygote: behind a gate its `exec` would show the program's path as argv[0], and
            # under a launcher (`unshare --pid`) the program would be its namespace's pid 1,
            # which ignores a SIGTERM it has no handler for. PWD: dash exports it.
            assert words is not None
            executable, argv = program, words
            overlay = {**overlay, "PWD": sandbox}
            self.metrics.inc("containerizer/shell_skipped")
        child = await zygote.spawn(
            container.id,
            cwd=sandbox,
            overlay=overlay,  # (the zygote's own environment is the base: self._base_env)
            stdout=sandbox + "/stdout",
            stderr=sandbox + "/stderr",
            argv=argv,
            executable=executable,
            make_cwd=True,
            gated=gated,
            cgroups=cgroups,
        )
        container.process = child
        container.pid = child.pid
        try:
            for isolator in self.isolators:
                if isolator not in birthplace:
                    await self._call(isolator, "isolate", container.id, child.pid)
            _check_not_destroyed(container)
        except BaseException:
            child.abort()
            raise
        child.release()

    def _overlay(self, container: _Container, msg: LaunchContainer) -> dict[str, str]:
        """What a container's environment sets on top of the base (the agent's own, with this
        checkout on ``PYTHONPATH``: the zygote's too). Only these few variables travel to the
        zygote; a cold start gets the base with them on top."""
        env = {str(k): str(v) for k, v in (msg.environment or {}).items()}
        env.update({str(k): str(v) for k, v in (msg.executor.command.environment or {}).items()})
        env["MESA_CONTAINER_ID"] = container.id
        env["MESA_SANDBOX"] = env["MESA_DIRECTORY"] = str(msg.sandbox)
        if "PYTHONPATH" in env:
            # `python -m mesa.command_executor` must import this very code, installed or not;
            # the sandbox is the working directory, so the checkout must be on the path.
            env["PYTHONPATH"] = _with_source_root(env["PYTHONPATH"])
        if "PYTHONUNBUFFERED" not in env and "PYTHONUNBUFFERED" not in self._base_env:
            env["PYTHONUNBUFFERED"] = "1"
        return env

    def _reply_launched(
        self, to: UPID, cid: str, pid: int | None = None, error: str | None = None
    ) -> None:
        self.send(to, ContainerLaunched.NAME, ContainerLaunched(cid, pid=pid, error=error))

    # ------------------------------------------------------------------ update

    @handler(UpdateContainer.NAME)
    async def _update(self, sender: UPID, msg: Any) -> None:
        if not isinstance(msg, UpdateContainer) or not isinstance(msg.container_id, str):
            self._invalid(sender, "UpdateContainer", msg)
            return
        container = self._containers.get(msg.container_id)
        if container is None or container.destroying:
            self.log.info("update_unknown_container", container_id=msg.container_id)
            return
        try:
            resources = _parse_resources(msg.resources)
        except ResourceError as e:
            self._invalid(sender, "UpdateContainer", f"bad resources: {e}")
            return
        if resources == container.resources:
            return
        container.resources = resources
        self.log.info("container_updated", container_id=container.id, resources=str(resources))
        self.metrics.inc("containerizer/containers_updated")
        for isolator in self.isolators:
            await self._call_quiet(isolator, "update", container.id, resources)

    # ------------------------------------------------------------------ limits

    async def _watch_limits(self, container: _Container, isolator: Isolator) -> None:
        """Outside the actor: wait for the isolator to report a limit, then act on it inside."""
        try:
            limitation = await isolator.watch(container.id)
        except asyncio.CancelledError:
            return
        with contextlib.suppress(ProcessNotFound, ProcessTerminated):
            await self.runtime.dispatch(
                self.pid, self._limited, container.id, isolator.name, limitation
            )

    @handler(ContainerLimited.NAME)
    def _on_limited(self, sender: UPID, msg: Any) -> Awaitable[None] | None:
        if not isinstance(msg, ContainerLimited) or not any(
            sender == i.pid for i in self.isolators
        ):
            self._invalid(sender, "ContainerLimited", msg)
            return None
        limitation = Limitation(msg.reason, msg.message, msg.resources)
        return self._limited(msg.container_id, msg.isolator, limitation)

    async def _limited(self, cid: str, source: str, limitation: Limitation) -> None:
        container = self._containers.get(cid)
        if container is None or container.limitation is not None:
            return
        container.limitation = limitation
        kind = str(limitation.reason).removeprefix("REASON_CONTAINER_LIMITATION").strip("_")
        self.metrics.inc(f"containerizer/limitations_{(kind or 'other').lower()}")
        self.log.warning(
            "container_limitation",
            container_id=cid,
            isolator=source,
            reason=limitation.reason,
            message=limitation.message,
        )
        await self._destroy_container(container)

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
        try:
            # Whatever is left in the container goes with the executor.
            pids = await self.runtime.dispatch(self.pid, self._exited, container, status)
        except (ProcessNotFound, ProcessTerminated):
            return  # the containerizer is stopping: finalize takes it from here
        if pids is None:
            return  # nothing was left: reported already
        await self._wait_empty(container, pids)
        with contextlib.suppress(ProcessNotFound, ProcessTerminated):
            await self.runtime.dispatch(self.pid, self._reaped, container.id, status)

    async def _exited(self, container: _Container, status: int | None) -> set[int] | None:
        """In the actor, once the executor is gone: kill what it left and return those pids to
        wait for; or, when it left nothing (most containers), report it now, in the same visit,
        and return None."""
        pids = await self._kill(container)
        if pids or container.doomed:
            return pids
        await self._reaped(container.id, status)
        return None

    async def _reaped(self, cid: str, status: int | None) -> None:
        container = self._containers.pop(cid, None)
        if container is None:
            return
        self._usage.pop(cid, None)
        # The kernel may have been quicker than the watcher (a v2 OOM kill of the whole group):
        # each isolator that can report a limit looks now. Not after a clean exit: a command
        # that says it succeeded did (as in Mesos, a limit counts once a watcher has seen it),
        # and that is most containers, which then cost no reads of the limits' counters.
        for isolator in self.isolators:
            if container.limitation is not None or status == 0:
                break
            if isolator.reports_limits:
                found = await self._call_quiet(isolator, "check", cid)
                if isinstance(found, Limitation):
                    container.limitation = found
        if container.destroying:
            self.metrics.inc("containerizer/containers_destroyed")
        limitation = container.limitation
        message = limitation.message if limitation else f"Executor {exit_status.describe(status)}"
        self.log.info(
            "container_terminated",
            container_id=cid,
            pid=container.pid,
            status=status,
            destroyed=container.destroying,
            reason=limitation.reason if limitation else None,
        )
        self.send(
            container.owner,
            ContainerTerminated.NAME,
            ContainerTerminated(
                cid,
                status=status,
                destroyed=container.destroying,
                message=message,
                reason=str(limitation.reason) if limitation else None,
            ),
        )
        # Every process is gone, which is what the agent waits for (as in Mesos, a task's end
        # does not wait for its cgroups to go). The isolators release what they made after the
        # report and outside this actor: a burst of ends then reaches the master before the
        # burst's cgroups are removed, not after, and launches meanwhile are not held up.
        release = asyncio.get_running_loop().create_task(self._release(cid))
        self._releases[cid] = release
        release.add_done_callback(
            lambda done: self._releases.pop(cid) if self._releases.get(cid) is done else None
        )

    async def _release(self, cid: str) -> None:
        """Every isolator cleans up after the container, the last one first."""
        for isolator in reversed(self.isolators):
            await self._call_quiet(isolator, "_run_cleanup", cid)

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
        await self._destroy_container(container)

    @handler(SignalContainer.NAME)
    def _signal(self, sender: UPID, msg: Any) -> None:
        """A signal to the container's process group: what a graceful kill starts with."""
        if (
            not isinstance(msg, SignalContainer)
            or not isinstance(msg.container_id, str)
            or not isinstance(msg.signal, int)
            or isinstance(msg.signal, bool)
            or msg.signal not in signal.valid_signals()
        ):
            self._invalid(sender, "SignalContainer", msg)
            return
        container = self._containers.get(msg.container_id)
        if container is None or container.pid is None or container.destroying:
            self.log.info("signal_unknown_container", container_id=msg.container_id)
            return
        self.metrics.inc("containerizer/containers_signalled")
        with contextlib.suppress(OSError):
            os.killpg(container.pid, msg.signal)

    async def _destroy_container(self, container: _Container) -> None:
        container.destroying = True
        if container.starting is not None:
            # The start sees the flag: it stops before the command runs, or (the process exists
            # by then) _started kills it. Killing now could not be complete, and could hit the
            # zygote's thread while it is inside the container's cgroups starting the child.
            self.log.info("destroying_starting_container", container_id=container.id)
            return
        pids = await self._kill(container)
        self.log.info("destroying_container", container_id=container.id, pids=len(pids))
        # The watcher sees the executor die, sweeps again, and reports ContainerTerminated.

    async def _kill(self, container: _Container) -> set[int]:
        """SIGKILL every process of the container anyone can see; returns the pids."""
        pids: set[int] = set()
        reaped = container.process is not None and container.process.returncode is not None
        if container.pid is not None and not self._tracks_processes:
            found = None
            if reaped and isinstance(container.process, ZygoteChild):
                # The zygote, a subreaper, saw what it left when it reaped it: its adopted
                # orphans, where a scan of the session must ask every process on the machine.
                found = container.process.left
            pids = found if found is not None else session_pids(container.pid, not reaped)
        # After the executor's end one cgroup's members are every process of the container: one
        # isolator is asked, not one per hierarchy. Anything that left that cgroup still holds
        # another, whose rmdir then fails until that isolator's cleanup has killed it.
        asked = self._leftover_askers if reaped and self._tracks_processes else self.isolators
        for isolator in asked:
            found = await self._call_quiet(isolator, "pids", container.id)
            if found:
                pids |= found
        if pids or not reaped:
            # (A task that ended and left nothing behind needs no freezing and no sweeping:
            # that is most containers, and it saves a round of hooks per isolator.)
            for isolator in self.isolators:
                await self._call_quiet(isolator, "kill", container.id)
        self._kill_all(container, pids)
        container.doomed |= pids
        return pids

    async def _wait_empty(self, container: _Container, pids: set[int]) -> None:
        """Poll (outside the actor) until none of ``pids`` runs and every isolator reports the
        container empty, killing latecomers; give up after ``kill_wait``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.kill_wait
        remaining = set(pids) | container.doomed
        if not remaining:
            # Nothing was left when we looked, and only a member can fork into a session or a
            # cgroup: the container stays empty. The common case needs no second look.
            return
        delay = 0.005
        while True:
            remaining = {pid for pid in remaining if _running(pid)}
            if container.pid is not None and not self._tracks_processes:
                remaining |= {p for p in session_pids(container.pid) if _running(p)}
            for isolator in self.isolators:
                found = await self._call_quiet(isolator, "pids", container.id)
                remaining |= {pid for pid in found or () if _running(pid)}
            if not remaining:
                return
            if loop.time() > deadline:
                self.log.warning(
                    "container_processes_survived",
                    container_id=container.id,
                    pids=sorted(remaining),
                )
                return
            for pid in remaining:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _kill_all(self, container: _Container, pids: set[int]) -> None:
        if container.pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(container.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ usage

    async def usage_report(self) -> list[dict[str, Any]]:
        """Every container with fresh statistics from every isolator (``/agent/containers``)."""
        out = []
        for container in list(self._containers.values()):
            stats: dict[str, float] = {"timestamp": time.time()}
            if not container.destroying and container.pid is not None:
                for isolator in self.isolators:
                    found = await self._call_quiet(isolator, "usage", container.id)
                    if found:
                        stats.update(found)
                if container.id in self._containers:
                    self._usage[container.id] = stats
            out.append(
                {
                    "container_id": container.id,
                    "pid": container.pid,
                    "sandbox": str(container.sandbox),
                    "resources": str(container.resources),
                    "destroying": container.destroying,
                    "owner": str(container.owner),
                    "limitation": (
                        {
                            "reason": container.limitation.reason,
                            "message": container.limitation.message,
                        }
                        if container.limitation
                        else None
                    ),
                    "statistics": stats,
                }
            )
        return out

    async def _refresh_usage(self) -> None:
        self._usage_timer = None
        try:
            await self.usage_report()
        finally:
            self._usage_timer = self.delay(self.usage_interval, self._refresh_usage)

    def _aggregate(self, key: str) -> float:
        return sum(
            stats.get(key, 0)
            for cid, stats in self._usage.items()
            if cid in self._containers and not self._containers[cid].destroying
        )

    @route("containers")
    async def _containers_route(self, request: Any) -> list[dict[str, Any]]:
        return await self.usage_report()

    # ------------------------------------------------------------------ helpers

    async def _cleanup_isolators(self, container: _Container) -> None:
        for task in container.watches:
            task.cancel()
        container.watches.clear()
        await self._release(container.id)

    def _close_files(self, container: _Container) -> None:
        for f in container.files:
            with contextlib.suppress(OSError):
                f.close()
        container.files.clear()

    def _close_gate(self, container: _Container) -> None:
        """Closing the gate's pipe unwritten makes a waiting executor exit without running."""
        if container.gate is not None:
            with contextlib.suppress(OSError):
                os.close(container.gate)
            container.gate = None

    def _invalid(self, sender: UPID, what: str, body: Any) -> None:
        self.metrics.inc("containerizer/invalid_messages")
        self.log.warning("invalid_message", sender=str(sender), message=what, body=repr(body)[:200])

    # ------------------------------------------------------------------ shutdown

    async def finalize(self) -> None:
        """No orphans: the agent going away takes every container with it, then the isolators
        (which remove the agent's cgroup roots)."""
        if self._usage_timer is not None:
            self._usage_timer.cancel()
        # Starts still under way finish first (bounded by the zygote's spawn timeout), so that
        # every process that will ever exist in a container is known before the kill.
        starting = [c.starting for c in self._containers.values() if c.starting is not None]
        if starting:
            await asyncio.gather(*starting, return_exceptions=True)
        containers = list(self._containers.values())
        for container in containers:
            container.destroying = True
            self._close_gate(container)
            await self._kill(container)
        for container in containers:
            if container.process is not None and container.process.returncode is None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(container.process.wait(), self.kill_wait)
            # Its watcher may be waiting on a dispatch into this (terminating) actor, which
            # would only fail once finalize is over: it has nothing left to do but report.
            if container.watcher is not None:
                container.watcher.cancel()
            await self._wait_empty(container, container.doomed)
            self._close_files(container)
            await self._cleanup_isolators(container)
        self._containers.clear()
        if containers:
            self.log.info("containers_destroyed_on_exit", count=len(containers))
        if self._releases:  # cleanups of containers that ended: done before the isolators go
            await asyncio.gather(*self._releases.values(), return_exceptions=True)
        for z in self.zygotes:
            await z.stop()
        for isolator in self._spawned:
            self.runtime.terminate(isolator.pid)
        for isolator in self._spawned:
            await self.runtime.wait(isolator.pid)


class _DestroyedWhileStarting(Exception):
    """A DestroyContainer came while the start was under way: it stops there, before the command
    runs if it has not started yet (``started``: it had, and was killed)."""

    def __init__(self, started: bool) -> None:
        super().__init__(started)
        self.started = started

    def __str__(self) -> str:
        if self.started:
            return "the container was destroyed while it was starting; its command was killed"
        return "the container was destroyed before its command started"


def _check_not_destroyed(container: _Container) -> None:
    if container.destroying:
        process = container.process
        parked = container.gate is not None or (
            isinstance(process, ZygoteChild) and not process.released
        )
        raise _DestroyedWhileStarting(started=container.pid is not None and not parked)


def processes_of_container(container_id: str, sandbox: str | None = None) -> list[int]:
    """Every process whose environment names ``container_id`` (``MESA_CONTAINER_ID``) or, given
    ``sandbox``, whose working directory is that sandbox: what a zygote that died mid-start may
    have left, whose pid nobody heard. A slow scan, for that rare case only.

    The environment alone misses a child the zygote had not finished starting. The zygote waits
    in vfork until its child has exec'd; killed meanwhile, it leaves a child that still has the
    zygote's environment (shared memory, until the exec) and execs the command a moment later,
    unseen. That child was born in its sandbox (the zygote goes there to start it), and stays
    there until the command it becomes moves; by then its environment names the container."""
    marker = f"MESA_CONTAINER_ID={container_id}".encode()
    home = os.path.realpath(sandbox) if sandbox is not None else None
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        if home is not None:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{name}/cwd") == home:
                    found.append(int(name))
                    continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return [pid for pid in found if pid not in (os.getpid(), 1)]


def kill_processes_of_container(
    container_id: str, sandbox: str | None = None, rounds: int = 20
) -> set[int]:
    """SIGKILL every process :func:`processes_of_container` finds, and look again until a look
    finds none alive: one it found may have forked between the look and the kill, and the child
    carries the same environment and working directory. Returns every pid killed."""
    killed: set[int] = set()
    for _ in range(rounds):
        found = [pid for pid in processes_of_container(container_id, sandbox) if pid not in killed]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        killed.update(found)
    return killed


def default_zygotes() -> int:
    """Zygotes per agent: two where there are two cores or more (one can spawn while the other
    waits for its child to exec), up to four on big machines; one on a single core."""
    return max(1, min(4, os.cpu_count() or 1))


def _zygote_env() -> dict[str, str]:
    """The zygote's own environment: the agent's, with this checkout on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = _with_source_root(env.get("PYTHONPATH", ""))
    return env


def _with_source_root(pythonpath: str) -> str:
    paths = [p for p in pythonpath.split(os.pathsep) if p]
    if source_root() not in paths:
        paths.insert(0, source_root())
    return os.pathsep.join(paths)


def _check_executable(executable: str, path: str | None) -> None:
    """FileNotFoundError unless ``executable`` (searched on ``path`` if it has no slash) is an
    executable file. (A path is checked directly: ``shutil.which`` would parse ``PATH`` first.)"""
    if os.sep in executable:
        if os.access(executable, os.X_OK) and not os.path.isdir(executable):
            return
    elif shutil.which(executable, path=path or os.defpath) is not None:
        return
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), executable)


def _exec_target(name: str, path: str) -> str | None:
    """The absolute path of the file ``exec`` would run for ``name`` (a bare name searched on
    ``path``, or an absolute path), when ``exec`` can run it: a binary, or a script whose
    ``#!`` line names an interpreter that is there. A script without one the shell would read
    itself, and a name it cannot find, a missing interpreter or a ``#!`` line ending in a
    carriage return get the shell's own "not found" and status 127: all stay with the shell."""
    found = name if name.startswith("/") else shutil.which(name, path=path)
    if found is None or not _runnable(found):
        return None
    try:
        with open(found, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if head.startswith(b"\x7fELF"):
        return found
    if not head.startswith(b"#!"):
        return None
    line, newline, _ = head[2:].partition(b"\n")
    words = line.split()
    if not newline or b"\r" in line or not words:
        return None
    interpreter = os.fsdecode(words[0])
    return found if interpreter.startswith("/") and _runnable(interpreter) else None


def _runnable(path: str) -> bool:
    return path.startswith("/") and os.access(path, os.X_OK) and not os.path.isdir(path)


def _parse_resources(text: Any) -> Resources:
    if not text:
        return Resources.empty()
    if not isinstance(text, str):
        raise ResourceError(f"resources must be a string, not {type(text).__name__}")
    return parse_resources(text)  # (cached: every task of a kind has the same string)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
