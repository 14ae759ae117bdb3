"""The agent: one per machine; offers the machine to the master and runs what it is told to.

The agent (libproc id ``agent``) registers with the master, answers its pings, launches executors
through the containerizer, passes tasks, kills and framework messages to them, and carries their
status updates back to the master *reliably*: each update stays in the task's
:class:`~mesa.status_update_stream.StatusUpdateStream` until the master acknowledges it, and the
updates of one task reach the master in the order the executor sent them.

Lifecycle, as in Mesos:

* **Registration.** ``RegisterAgent`` the first time, retried with back-off until
  ``AgentRegistered``; the id is written to ``<work_dir>/meta/agent_id`` so that an agent started
  again on the same work directory comes back as the same agent, with ``ReregisterAgent``
  (everything it still runs: nothing after a restart until executor recovery exists).
* **Disconnection.** When the master's actor ends (``exited``) or no ``PingAgent`` arrives for
  ``max_missed_pings`` ping intervals, the agent pauses its status updates and re-registers,
  listing its live tasks and executors so a new master can rebuild its state from them.
* **Executors.** A command task runs under the command executor (``python -m
  mesa.command_executor``) whose executor id is the task id; a task with an ``ExecutorInfo`` goes
  to that framework's executor, launched on first use. Tasks wait in the executor's queue until it
  registers (``RegisterExecutor``), then go to it in order. Every run gets a sandbox,
  ``<work_dir>/agents/<agent_id>/frameworks/<fid>/executors/<eid>/runs/<container_id>``, removed
  ``gc_delay`` after its container ended (sooner on a filling disk; an earlier run's, found at
  start, ``gc_delay`` after they last changed: see :mod:`mesa.sandbox_gc`).
* **Endings.** When the containerizer reports an executor's process gone, the agent fails the
  tasks it left behind (``TASK_FAILED``/``REASON_EXECUTOR_TERMINATED`` with the exit status, or
  ``TASK_KILLED`` if the agent was shutting it down), tells the master (``ExitedExecutor``) and
  keeps a bounded history for ``/agent/state``.

Input from the network is checked before it is believed: a malformed body, a message from someone
other than the master (or the executor it claims to be), an acknowledgement for an update that is
not in flight — each is counted under ``agent/invalid_messages``, logged and dropped; a kill for a
task the agent does not know is answered with ``TASK_LOST`` (``TASK_DROPPED`` for partition-aware
frameworks) so the master can clean up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import os
import re
import shlex
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from logging import INFO
from pathlib import Path
from typing import Any

from libproc import UPID, Clock, Process, Timer, get_logger, handler, route
from mesa import exit_status
from mesa.actors.containerizer import Containerizer
from mesa.attributes import parse_attributes
from mesa.host_resources import resolve_resources
from mesa.info import (
    AgentInfo,
    CommandInfo,
    ExecutorInfo,
    FrameworkInfo,
    TaskInfo,
    TaskStatus,
    new_uuid,
    new_uuid_bytes,
)
from mesa.isolators import IsolationOptions, Isolator, resolve_isolation
from mesa.messages import (
    AgentRegistered,
    AgentReregistered,
    ContainerLaunched,
    ContainerTerminated,
    DestroyContainer,
    ExecutorRegistered,
    ExecutorToFramework,
    ExitedExecutor,
    FrameworkToExecutor,
    KillTask,
    LaunchContainer,
    PingAgent,
    PongAgent,
    RegisterAgent,
    RegisterExecutor,
    ReregisterAgent,
    RunTask,
    RunTasks,
    ShutdownExecutor,
    ShutdownFramework,
    SignalContainer,
    StatusUpdate,
    StatusUpdateAcknowledgement,
    StatusUpdateAcknowledgements,
    StatusUpdates,
    UpdateContainer,
    UpdateFramework,
)
from mesa.resources import ResourceError, Resources
from mesa.sandbox_gc import SandboxCollector, disk_usage, find_sandboxes, max_age
from mesa.status_update_stream import Accept, Ack, StatusUpdateManager
from mesa.task_state import Reason, Source, TaskState, is_terminal
from mesa.update_outbox import UpdateOutbox
from mesa.validation import parse_resources

__all__ = [
    "COMMAND_EXECUTOR_RESOURCES",
    "Agent",
    "agent_cgroups_root",
    "command_executor_info",
    "master_upid",
]

# What the command executor itself is given on top of its task's resources (Mesos's
# DEFAULT_EXECUTOR_CPUS and DEFAULT_EXECUTOR_MEM): its container is limited to the sum.
COMMAND_EXECUTOR_RESOURCES = "cpus:0.1;mem:32"

# Ids become path components of sandboxes: keep them to one harmless component.
_SAFE_ID = re.compile(r"[^/\x00]{1,255}")


def master_upid(master: UPID | str) -> UPID:
    """``master@host:port`` from a UPID, its text, or the bare ``host:port`` of the master's
    runtime (what ``--master`` takes: the master actor's id is always ``master``)."""
    if isinstance(master, UPID):
        return master
    text = str(master).strip()
    return UPID.parse(text if "@" in text else f"master@{text}")


def agent_cgroups_root(work_dir: str | os.PathLike[str]) -> str:
    """The cgroup root of the agent working in ``work_dir``: ``mesa/agent-<hash>``. Stable
    across restarts (so a restarted agent finds what its predecessor left) and distinct for two
    agents on one machine (so neither cleans up the other's containers)."""
    digest = hashlib.sha1(str(Path(work_dir).resolve()).encode()).hexdigest()[:12]
    return f"mesa/agent-{digest}"


def command_executor_info(task: TaskInfo, framework_id: str) -> ExecutorInfo:
    """The executor that runs a command task: ``python -m mesa.command_executor``, id = task id.

    It uses this interpreter, so an agent running from a virtualenv or a checkout starts its
    executors with the same code.
    """
    return ExecutorInfo(
        executor_id=task.task_id,
        command=CommandInfo(value=f"{shlex.quote(sys.executable)} -m mesa.command_executor"),
        framework_id=framework_id,
        name=f"Command Executor (Task: {task.task_id})",
    )


def direct_task_executor_info(task: TaskInfo, framework_id: str) -> ExecutorInfo:
    """A command task run directly: its container runs the task's own command, and the agent is
    its executor (see :class:`Agent`, ``command_tasks``). The id is the task id, as for the
    command executor, so sandboxes and ``/agent/state`` look the same."""
    assert task.command is not None
    return ExecutorInfo(
        executor_id=task.task_id,
        command=task.command,
        framework_id=framework_id,
        name=f"Task {task.task_id}",
    )


# How long a finished container's sandbox is kept (Mesos's --gc_delay default: a week).
DEFAULT_GC_DELAY = 7 * 24 * 3600.0
# The share of the disk the sandboxes must leave free, and how often the agent looks (Mesos's
# --gc_disk_headroom and --disk_watch_interval defaults; see mesa.sandbox_gc).
DEFAULT_GC_DISK_HEADROOM = 0.1
DEFAULT_DISK_WATCH_INTERVAL = 60.0

# How long a killed direct task gets between SIGTERM and SIGKILL when neither the kill nor the
# task names a grace period (the command executor's default).
DEFAULT_KILL_GRACE_PERIOD = 3.0

COMMAND_TASKS = ("direct", "executor")


class _ExecutorState(StrEnum):
    LAUNCHING = "LAUNCHING"  # container started (or starting), executor not registered yet
    RUNNING = "RUNNING"  # registered: tasks go straight to it
    TERMINATING = "TERMINATING"  # being shut down or destroyed
    TERMINATED = "TERMINATED"


@dataclass
class _Task:
    info: TaskInfo
    framework_id: str
    executor_id: str
    status: TaskStatus | None = None  # the latest update, from the executor or the agent

    @property
    def state(self) -> str:
        return self.status.state if self.status is not None else TaskState.TASK_STAGING

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.info.task_id,
            "name": self.info.name,
            "framework_id": self.framework_id,
            "executor_id": self.executor_id,
            "state": str(self.state),
            "resources": self.info.resources,
            "message": self.status.message if self.status else None,
            "reason": self.status.reason if self.status else None,
        }


@dataclass
class _Executor:
    info: ExecutorInfo
    framework_id: str
    container_id: str
    sandbox: str  # (a string: a Path costs more to make than the whole path is worth here)
    command_executor: bool
    # The container runs the task's command itself and the agent is its executor.
    direct: bool = False
    state: _ExecutorState = _ExecutorState.LAUNCHING
    pid: UPID | None = None  # its libproc address, once registered
    os_pid: int | None = None
    tasks: dict[str, _Task] = field(default_factory=dict)  # live (non-terminal) tasks
    queued: list[str] = field(default_factory=list)  # task ids not yet sent to it
    completed_tasks: deque[_Task] = field(default_factory=lambda: deque(maxlen=100))
    # Why the agent is ending it, which decides what its leftover tasks become.
    kill_state: str | None = None
    kill_reason: str | None = None
    launch_error: str | None = None
    exit_status: int | None = None
    exit_message: str = ""
    timers: list[Timer] = field(default_factory=list)
    registration_timer: Timer | None = None  # also in timers; cancelled once it registers
    container_resources: str = ""  # the total the container was last given
    kill_deadline: float | None = None  # a direct task being killed: when SIGKILL is due
    escalation: Timer | None = None  # ... and the timer that SIGKILLs it when that runs out
    # Its executor id (info.executor_id; info never changes): read several times per update.
    id: str = field(init=False)

    def __post_init__(self) -> None:
        self.id = self.info.executor_id

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.info.name,
            "framework_id": self.framework_id,
            "container_id": self.container_id,
            "directory": self.sandbox,
            "state": str(self.state),
            "pid": str(self.pid) if self.pid else None,
            "os_pid": self.os_pid,
            "command": self.info.command.value,
            "direct": self.direct,
            "tasks": [
                t.describe() for t in self.tasks.values() if t.info.task_id not in self.queued
            ],
            "queued_tasks": [self.tasks[t].describe() for t in self.queued if t in self.tasks],
            "completed_tasks": [t.describe() for t in self.completed_tasks],
            "exit_status": self.exit_status,
        }


@dataclass
class _Framework:
    info: FrameworkInfo
    pid: str
    executors: dict[str, _Executor] = field(default_factory=dict)
    completed_executors: deque[_Executor] = field(default_factory=lambda: deque(maxlen=50))
    # Each live task's executor, by task id: a launch (is the id taken?) and a kill find the
    # task without a walk over every executor, of which direct tasks make one each.
    live_tasks: dict[str, _Executor] = field(default_factory=dict)
    terminating: bool = False
    directory: str | None = None  # where its sandboxes go, once known

    @property
    def id(self) -> str:
        return self.info.id or ""

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.info.name,
            "user": self.info.user,
            "pid": self.pid,
            "terminating": self.terminating,
            "executors": [e.describe() for e in self.executors.values()],
            "completed_executors": [e.describe() for e in self.completed_executors],
        }


class Agent(Process):
    """The agent actor. Spawn it in a runtime whose address the master can reach.

    ``master``: the master's UPID (``master@host:port``), or just the ``host:port`` of the
    master's runtime. ``work_dir``: sandboxes and the
    checkpointed agent id. ``resources``: a resource string; names it leaves out are detected.
    ``attributes``: ``"rack:r1;zone:a"`` or a dict. ``containerizer``: the UPID of a containerizer
    in the same runtime; by default the agent spawns its own and stops it (destroying every
    container) when it ends. That containerizer drives the isolators ``isolation`` names
    (``"cgroups/cpu,cgroups/mem"``; None: the best this machine offers, see
    :func:`mesa.isolators.default_isolation`), built with ``isolation_options`` (whose
    ``cgroups_root`` defaults to :func:`agent_cgroups_root`), or the ready ``isolators`` given.
    ``hostname`` and ``http_port`` are what the agent advertises
    (defaults: this host's name, and the runtime's HTTP port).

    Timing knobs (seconds, all on the libproc Clock): ``registration_backoff`` doubling to
    ``registration_backoff_max`` between registration attempts; ``status_update_backoff``
    doubling to ``status_update_backoff_max`` between resends of an unacknowledged update;
    ``max_missed_pings`` ping intervals without a ping mean the master is gone;
    ``executor_registration_timeout`` for a launched executor to register;
    ``executor_shutdown_grace_period`` between ShutdownExecutor and destroying its container.

    ``command_tasks``: how a task with a ``command`` runs. ``"direct"`` (the default): in a
    container of its own that runs the command itself, with the agent as its executor — it
    reports ``TASK_RUNNING`` once the container is up and ``TASK_FINISHED``/``TASK_FAILED``
    from the exit status, and kills with SIGTERM, the grace period, then the container's
    destroy. No interpreter starts per task, which is what makes short tasks cheap.
    ``"executor"``: Mesos's way, a ``python -m mesa.command_executor`` process per task in that
    container, which runs the command as its child (``TASK_STARTING`` first, then the same).

    ``gc_delay``: seconds a finished container's sandbox is kept (for people to read what its
    tasks wrote) before it is removed (Mesos's ``--gc_delay``; a week by default). Every
    ``disk_watch_interval`` the agent looks at its work directory's disk and removes sooner the
    sandboxes a filling disk cannot keep (``gc_disk_headroom``, Mesos's formula: see
    :mod:`mesa.sandbox_gc`).
    """

    # Status updates in one StatusUpdates message, at most (a burst's are sent together).
    updates_per_message: int = 1000
    # The longest an update waits for the master to answer the message before it (seconds; see
    # mesa.update_outbox), unless the gap below is longer.
    update_hold: float = 0.005
    # The least time between a message that carried a burst of updates and the next (seconds;
    # see mesa.update_outbox): under load, bursts as big as the load makes them.
    update_gap: float = 0.006
    # A burst this big leaves at once, waiting neither for the master's answer nor for the gap
    # (0: every burst waits; see mesa.update_outbox).
    update_batch: int = 12

    def __init__(
        self,
        master: UPID | str,
        work_dir: str | os.PathLike[str],
        *,
        resources: str | None = None,
        attributes: str | dict[str, Any] | None = None,
        hostname: str | None = None,
        http_port: int | None = None,
        containerizer: UPID | str | None = None,
        isolators: list[Isolator] | None = None,
        isolation: str | Sequence[str] | None = None,
        isolation_options: IsolationOptions | None = None,
        registration_backoff: float = 1.0,
        registration_backoff_max: float = 10.0,
        status_update_backoff: float = 1.0,
        status_update_backoff_max: float = 60.0,
        max_missed_pings: int = 5,
        executor_registration_timeout: float = 60.0,
        executor_shutdown_grace_period: float = 5.0,
        command_tasks: str = "direct",
        gc_delay: float = DEFAULT_GC_DELAY,
        gc_disk_headroom: float = DEFAULT_GC_DISK_HEADROOM,
        disk_watch_interval: float = DEFAULT_DISK_WATCH_INTERVAL,
        id: str = "agent",
    ) -> None:
        super().__init__(id)
        self.master = master_upid(master)
        self.work_dir = Path(work_dir).resolve()
        self.attributes = parse_attributes(attributes)
        self.hostname = hostname or socket.gethostname()
        self._http_port = http_port
        self._containerizer = UPID.parse(str(containerizer)) if containerizer else None
        self._own_containerizer = containerizer is None
        self._isolators: list[Isolator] | None = None
        self._isolation_reasons: list[str] = []
        if registration_backoff <= 0 or registration_backoff_max < registration_backoff:
            raise ValueError("need 0 < registration_backoff <= registration_backoff_max")
        self.registration_backoff = registration_backoff
        self.registration_backoff_max = registration_backoff_max
        self.status_update_backoff = status_update_backoff
        self.status_update_backoff_max = status_update_backoff_max
        self.max_missed_pings = max_missed_pings
        self.executor_registration_timeout = executor_registration_timeout
        self.executor_shutdown_grace_period = executor_shutdown_grace_period
        if command_tasks not in COMMAND_TASKS:
            raise ValueError(f"command_tasks must be one of {', '.join(COMMAND_TASKS)}")
        self.command_tasks = command_tasks
        self._sandboxes = SandboxCollector(gc_delay, self.delay)
        if not 0.0 <= gc_disk_headroom <= 1.0:
            raise ValueError("gc_disk_headroom must be between 0 and 1")
        if not 0 < disk_watch_interval < math.inf:
            raise ValueError("disk_watch_interval must be a finite number greater than zero")
        self.gc_disk_headroom = gc_disk_headroom
        self.disk_watch_interval = disk_watch_interval
        # How full the work directory's disk is (a fraction; tests stand in for the disk here).
        self.disk_usage: Callable[[str], float] = disk_usage
        self._disk_used: float | None = None  # (as last seen)
        self._disk_timer: Timer | None = None

        # Fail here, in the constructor, on a bad resource string or an unusable work dir, so a
        # command line reports it instead of an actor logging it.
        self.resources = str(resolve_resources(resources, self.work_dir))
        (self.work_dir / "meta").mkdir(parents=True, exist_ok=True)
        if self._own_containerizer:
            if isolators is not None:
                self._isolators = list(isolators)
                self._isolation_reasons = ["isolators given by the caller"]
            else:
                options = dataclasses.replace(isolation_options or IsolationOptions())
                if options.cgroups_root is None:
                    options.cgroups_root = agent_cgroups_root(self.work_dir)
                chosen = resolve_isolation(isolation, options)
                self._isolators = chosen.isolators
                self._isolation_reasons = chosen.reasons
        self.agent_id: str | None = self._read_agent_id()
        self.registered = False
        self._registration_timer: Timer | None = None
        self._registration_delay = registration_backoff
        self._ping_interval: float | None = None
        self._ping_timer: Timer | None = None
        self._last_ping = 0.0  # Clock time of the last ping from the master
        self._frameworks: dict[str, _Framework] = {}
        self._completed_frameworks: deque[_Framework] = deque(maxlen=50)
        self._containers: dict[str, _Executor] = {}
        self._executor_pids: dict[UPID, _Executor] = {}
        self._updates = StatusUpdateManager(
            send=self._forward_update,
            schedule=self.delay,
            backoff=status_update_backoff,
            backoff_max=status_update_backoff_max,
            paused=True,
        )
        # What the streams send leaves in bursts, clocked by the master's answers (its knobs
        # are set in initialize: a caller may change them on the instance until then).
        self._outbox = UpdateOutbox(self._send_updates, self.defer, self.delay)
        self._executor_env: dict[str, str] | None = None  # (once the pid is known)
        self.log = get_logger("mesa.agent")

    # ================================================================== lifecycle

    def initialize(self) -> None:
        if self._containerizer is None:
            assert self._isolators is not None
            self.log.info(
                "isolation",
                isolators=[i.name for i in self._isolators],
                why=self._isolation_reasons,
            )
            self._containerizer = self.spawn(Containerizer(self._isolators))
        self._outbox.configure(
            window=self._outbox.window,
            hold=self.update_hold,
            gap=self.update_gap,
            per_message=self.updates_per_message,
            batch=self.update_batch,
        )
        m = self.metrics
        m.gauge("agent/registered", lambda: 1 if self.registered else 0)
        m.gauge("agent/frameworks_active", lambda: len(self._frameworks))
        m.gauge("agent/executors_running", lambda: len(self._containers))
        m.gauge("agent/tasks_running", self._count_live_tasks)
        m.gauge("agent/status_update_streams", lambda: len(self._updates))
        m.gauge("agent/status_update_messages", lambda: self._outbox.messages)
        m.gauge("agent/status_update_messages_held", lambda: self._outbox.held)
        m.gauge("agent/status_update_messages_spaced", lambda: self._outbox.spaced)
        m.gauge("agent/status_update_messages_full", lambda: self._outbox.full)
        m.gauge("agent/sandboxes_awaiting_gc", lambda: len(self._sandboxes))
        m.gauge("agent/sandboxes_removed", lambda: self._sandboxes.removed)
        m.gauge("agent/sandboxes_pruned", lambda: self._sandboxes.pruned)
        # (-1 until the first look, at start, has come back.)
        m.gauge("agent/disk_usage", lambda: -1.0 if self._disk_used is None else self._disk_used)
        self._watch_disk()
        self._collect_left_sandboxes()
        self.log.info(
            "agent_started",
            master=str(self.master),
            work_dir=str(self.work_dir),
            resources=self.resources,
            attributes=self.attributes,
            agent_id=self.agent_id,
        )
        self.link(self.master)
        self._register()

    async def finalize(self) -> None:
        """Stop timers and take every container down with the agent: no orphan executors."""
        self._outbox.flush()  # (what the streams sent goes, as it would have unbatched)
        self._outbox.close()
        if self._registration_timer is not None:
            self._registration_timer.cancel()
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        for executor in self._containers.values():
            executor.cancel_timers()
        self._updates.close()
        self._sandboxes.close()
        if self._disk_timer is not None:
            self._disk_timer.cancel()
        if self._containerizer is None:
            return
        if self._own_containerizer:
            self.runtime.terminate(self._containerizer)
            await self.runtime.wait(self._containerizer)
        else:
            for cid in list(self._containers):
                self.send(self._containerizer, DestroyContainer.NAME, DestroyContainer(cid))

    # ================================================================== registration

    def _read_agent_id(self) -> str | None:
        path = self.work_dir / "meta" / "agent_id"
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as e:
            self.log.warning("agent_id_unreadable", path=str(path), error=repr(e))
            return None
        return text if text and _SAFE_ID.fullmatch(text) else None

    def _write_agent_id(self, agent_id: str) -> None:
        path = self.work_dir / "meta" / "agent_id"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(agent_id + "\n")
        os.replace(tmp, path)

    def _info(self) -> AgentInfo:
        return AgentInfo(
            hostname=self.hostname,
            resources=self.resources,
            attributes=dict(self.attributes),
            id=self.agent_id,
            port=self.pid.port,
            http_port=self._http_port if self._http_port is not None else self.runtime.http_port,
        )

    def _register(self) -> None:
        """One registration attempt; schedules the next until the master answers."""
        self._registration_timer = None
        if self.registered:
            return
        self.metrics.inc("agent/registration_attempts")
        self._registration_timer = self.delay(self._registration_delay, self._register)
        self._registration_delay = min(self._registration_delay * 2, self.registration_backoff_max)
        self.link(self.master)
        if self.agent_id is None:
            self.log.info("registering", master=str(self.master))
            self._to_master(RegisterAgent.NAME, RegisterAgent(self._info()))
        else:
            msg = self._reregister_message()
            self.log.info("reregistering", master=str(self.master), tasks=len(msg.tasks))
            self._to_master(ReregisterAgent.NAME, msg)

    def _reregister_message(self) -> ReregisterAgent:
        tasks: list[TaskInfo] = []
        states: list[TaskStatus] = []
        task_fids: list[str] = []
        executors: list[ExecutorInfo] = []
        frameworks: list[FrameworkInfo] = []
        for framework in self._frameworks.values():
            listed = False
            for executor in framework.executors.values():
                if executor.state == _ExecutorState.TERMINATED:
                    continue
                listed = True
                if not executor.direct:  # the master never knew a direct task's executor
                    executors.append(executor.info)
                # Terminal tasks whose update the master has not acknowledged are still news.
                unacked = [
                    t
                    for t in executor.completed_tasks
                    if self._updates.stream(framework.id, t.info.task_id) is not None
                ]
                for task in [*executor.tasks.values(), *unacked]:
                    tasks.append(task.info)
                    states.append(task.status or self._staging_status(task))
                    task_fids.append(framework.id)
            if listed:
                frameworks.append(framework.info)
        return ReregisterAgent(
            agent=self._info(),
            tasks=tasks,
            task_states=states,
            executors=executors,
            frameworks=frameworks,
            task_frameworks=task_fids,
        )

    def _staging_status(self, task: _Task) -> TaskStatus:
        return TaskStatus(
            task_id=task.info.task_id,
            state=TaskState.TASK_STAGING,
            source=Source.SOURCE_AGENT,
            agent_id=self.agent_id,
            executor_id=task.executor_id,
            timestamp=time.time(),
        )

    @handler(AgentRegistered.NAME)
    def _registered(self, sender: UPID, msg: Any) -> None:
        if not self._valid(sender, msg, AgentRegistered, from_master=True):
            return
        if not _is_id(msg.agent_id) or not _is_interval(msg.ping_interval):
            self._invalid(sender, AgentRegistered.NAME, "bad agent id or ping interval", msg)
            return
        if self.agent_id is not None and msg.agent_id != self.agent_id:
            self._invalid(
                sender, AgentRegistered.NAME, f"registered as {msg.agent_id}, am {self.agent_id}"
            )
            return
        if self.registered:
            return  # the answer to a retried RegisterAgent
        if self.agent_id is None:
            self.agent_id = msg.agent_id
            self._write_agent_id(msg.agent_id)
        self._connected(msg.ping_interval)
        self.log.info("registered", agent_id=self.agent_id, master=str(sender))

    @handler(AgentReregistered.NAME)
    def _reregistered(self, sender: UPID, msg: Any) -> None:
        if not self._valid(sender, msg, AgentReregistered, from_master=True):
            return
        if msg.agent_id != self.agent_id or not _is_interval(msg.ping_interval):
            self._invalid(sender, AgentReregistered.NAME, "wrong agent id or ping interval", msg)
            return
        if self.registered:
            return
        self._connected(msg.ping_interval)
        self.log.info("reregistered", agent_id=self.agent_id, master=str(sender))
        # The master does not know these tasks (it forgot them, or they belong to a framework
        # it removed): they must not keep running.
        for pair in msg.kill_tasks or []:
            if isinstance(pair, list | tuple) and len(pair) == 2 and all(map(_is_id, pair)):
                self._kill_task(str(pair[0]), str(pair[1]), None)
            else:
                self._invalid(sender, AgentReregistered.NAME, f"bad kill_tasks entry {pair!r}")

    def _connected(self, ping_interval: float) -> None:
        self.registered = True
        if self._registration_timer is not None:
            self._registration_timer.cancel()
            self._registration_timer = None
        self._registration_delay = self.registration_backoff
        self._ping_interval = float(ping_interval)
        if self._ping_timer is not None:  # armed for the old interval, which may be longer
            self._ping_timer.cancel()
            self._ping_timer = None
        self._reset_ping_timer()
        self._outbox.reset()
        self._updates.resume()

    def _disconnected(self, why: str) -> None:
        """Lost the master: hold status updates and register again (with back-off)."""
        if self.registered:
            self.registered = False
            self.metrics.inc("agent/disconnections")
            self.log.warning("master_disconnected", master=str(self.master), reason=why)
            self._updates.pause()
            if self._ping_timer is not None:
                self._ping_timer.cancel()
                self._ping_timer = None
        if self._registration_timer is None or not self._registration_timer.pending:
            self._registration_delay = self.registration_backoff
            self._register()

    def _reset_ping_timer(self) -> None:
        """The master is alive: it has ``max_missed_pings`` intervals from now to ping again.

        A ping only notes the time; the one timer, when it fires, arms itself again for what
        is left. (Cancelling it and arming a new one on every ping made a timer and a dead
        heap entry per ping: thousands a second where thousands of agents share a process.)
        """
        self._last_ping = Clock.now()
        if self._ping_timer is None and self._ping_interval is not None:
            self._ping_timer = self.delay(
                self._ping_interval * self.max_missed_pings, self._ping_deadline
            )

    def _ping_deadline(self) -> None:
        self._ping_timer = None
        if self._ping_interval is None:
            return
        left = self._last_ping + self._ping_interval * self.max_missed_pings - Clock.now()
        if left > 0.001:  # (a timer may fire up to the loop's resolution early)
            self._ping_timer = self.delay(left, self._ping_deadline)
            return
        self._ping_timed_out()

    def _ping_timed_out(self) -> None:
        self._ping_timer = None
        if self.registered:
            self._disconnected("no ping from the master")

    @handler(PingAgent.NAME)
    def _ping(self, sender: UPID, msg: Any) -> None:
        self.send(sender, PongAgent.NAME, PongAgent(self.agent_id))
        if sender != self.master:
            return
        if self.registered:
            self._reset_ping_timer()
            if isinstance(msg, PingAgent) and msg.connected is False:
                # The master does not count us as registered (it failed over, or removed us).
                self._disconnected("master says the agent is not registered")

    def exited(self, pid: UPID) -> None:
        if pid == self.master:
            self._disconnected("master exited")
            return
        executor = self._executor_pids.get(pid)
        if executor is not None and executor.state != _ExecutorState.TERMINATED:
            # Its process normally ends too and the containerizer reports it; if it hangs on
            # without its libproc half, take it down after the grace period.
            self.log.info("executor_disconnected", executor_id=executor.id, pid=str(pid))
            executor.timers.append(
                self.delay(
                    self.executor_shutdown_grace_period,
                    self._destroy_if_alive,
                    executor.container_id,
                    "executor disconnected",
                )
            )

    # ================================================================== tasks in

    @handler(RunTask.NAME)
    def _run_task(self, sender: UPID, msg: Any) -> None:
        if not self._valid(sender, msg, RunTask, from_master=True):
            return
        self._run_tasks(sender, RunTask.NAME, msg.framework, msg.framework_pid, [msg.task])

    @handler(RunTasks.NAME)
    def _run_task_batch(self, sender: UPID, msg: Any) -> None:
        """The tasks of one accept (the master sends them together), each as a RunTask."""
        if not self._valid(sender, msg, RunTasks, from_master=True):
            return
        if not isinstance(msg.tasks, list) or not msg.tasks:
            self._invalid(sender, RunTasks.NAME, "no list of tasks", msg)
            return
        self._run_tasks(sender, RunTasks.NAME, msg.framework, msg.framework_pid, msg.tasks)

    def _run_tasks(
        self, sender: UPID, name: str, framework_info: Any, framework_pid: Any, tasks: list[Any]
    ) -> None:
        if (
            not isinstance(framework_info, FrameworkInfo)
            or not _is_id(framework_info.id)
            or not isinstance(framework_pid, str)
        ):
            self._invalid(sender, name, "bad framework or id", framework_info)
            return
        if self.agent_id is None:
            self._invalid(sender, name, "not registered yet")
            return
        fid = framework_info.id
        framework = self._frameworks.get(fid)
        if framework is None:
            framework = self._frameworks[fid] = _Framework(framework_info, framework_pid)
        else:
            framework.info = framework_info
            framework.pid = framework_pid
        for task in tasks:
            if not isinstance(task, TaskInfo) or not _is_id(task.task_id):
                self._invalid(sender, name, "bad task or task id", task)
                continue
            self._run_one(sender, framework, task)

    def _run_one(self, sender: UPID, framework: _Framework, task: TaskInfo) -> None:
        fid = framework.id
        if framework.terminating:
            self._send_agent_update(
                fid,
                None,
                task.task_id,
                _lost_state(framework.info),
                Reason.REASON_FRAMEWORK_REMOVED,
                "The framework is being shut down on this agent",
            )
            return
        if self._find_task(framework, task.task_id)[1] is not None:
            self._invalid(sender, RunTask.NAME, f"task {task.task_id} is already running")
            return

        has_command, has_executor = task.command is not None, task.executor is not None
        executor_info: ExecutorInfo | None = None
        direct = False
        if has_command and not has_executor and isinstance(task.command, CommandInfo):
            direct = self.command_tasks == "direct"
            if direct:
                executor_info = direct_task_executor_info(task, fid)
            else:
                executor_info = command_executor_info(task, fid)
        elif has_executor and not has_command and isinstance(task.executor, ExecutorInfo):
            executor_info = dataclasses.replace(task.executor, framework_id=fid)
            if not _is_id(executor_info.executor_id) or not isinstance(
                executor_info.command, CommandInfo
            ):
                executor_info = None
        if executor_info is None:
            self._send_agent_update(
                fid,
                None,
                task.task_id,
                TaskState.TASK_ERROR,
                Reason.REASON_TASK_INVALID,
                "A task needs exactly one of a command and a valid executor",
            )
            return

        executor = framework.executors.get(executor_info.executor_id)
        if executor is not None and executor.state in (
            _ExecutorState.TERMINATING,
            _ExecutorState.TERMINATED,
        ):
            self._send_agent_update(
                fid,
                None,
                task.task_id,
                _lost_state(framework.info),
                Reason.REASON_EXECUTOR_TERMINATED,
                "The executor is shutting down",
            )
            return
        if executor is None:
            executor = self._launch_executor(framework, executor_info, has_command, task, direct)
        elif direct:  # a container with this id (an earlier run of it, an executor) is still here
            self._send_agent_update(
                fid,
                None,
                task.task_id,
                _lost_state(framework.info),
                Reason.REASON_TASK_INVALID,
                f"A container for {task.task_id!r} is still running or ending on this agent",
            )
            return
        self.metrics.inc("agent/tasks_launched")
        executor.tasks[task.task_id] = _Task(task, fid, executor.id)
        framework.live_tasks[task.task_id] = executor
        if not direct:  # (a direct task's container was made for it, with its resources)
            self._update_container(executor)
        self.log.info(
            "task_launching",
            framework_id=fid,
            task_id=task.task_id,
            executor_id=executor.id,
            executor_state=str(executor.state),
        )
        if direct:
            return  # the container launched above runs it
        if executor.state == _ExecutorState.RUNNING:
            self._send_to_executor(executor, framework, task)
        else:
            executor.queued.append(task.task_id)

    def _launch_executor(
        self,
        framework: _Framework,
        info: ExecutorInfo,
        command_executor: bool,
        first: TaskInfo,
        direct: bool = False,
    ) -> _Executor:
        cid = new_uuid()
        if framework.directory is None:
            framework.directory = os.path.join(
                self.work_dir, "agents", str(self.agent_id), "frameworks", framework.id
            )
        if direct:
            # One new directory per task, not three: where making a directory costs a fraction
            # of a millisecond of CPU (it does on the VMs this runs on), that is most of what a
            # short task costs. /agent/state gives each task's directory.
            sandbox = f"{framework.directory}/runs/{cid}"
        else:
            sandbox = f"{framework.directory}/executors/{info.executor_id}/runs/{cid}"
        executor = _Executor(
            info, framework.id, cid, sandbox, command_executor and not direct, direct
        )
        framework.executors[info.executor_id] = executor
        self._containers[cid] = executor
        if self._executor_env is None:  # (what every executor is told alike, made once)
            self._executor_env = {
                "MESA_AGENT_PID": str(self.pid),
                "MESA_AGENT_ENDPOINT": self.pid.address,
                "MESA_EXECUTOR_REGISTRATION_TIMEOUT": str(self.executor_registration_timeout),
                "MESA_EXECUTOR_SHUTDOWN_GRACE_PERIOD": str(self.executor_shutdown_grace_period),
            }
        env = {
            **self._executor_env,
            "MESA_FRAMEWORK_ID": framework.id,
            "MESA_EXECUTOR_ID": info.executor_id,
        }
        if direct:
            # Like Mesos's MESOS_TASK_ID: a command can tell which task it is.
            env["MESA_TASK_ID"] = first.task_id
        self.log.info(
            "executor_launching",
            framework_id=framework.id,
            executor_id=info.executor_id,
            container_id=cid,
            sandbox=sandbox,
        )
        if direct and isinstance(first.resources, str):
            executor.container_resources = first.resources  # the task's own, as validated
        else:
            executor.container_resources = self._container_resources(executor, [first])
        self.send(
            self._containerizer,  # type: ignore[arg-type]
            LaunchContainer.NAME,
            LaunchContainer(cid, info, sandbox, env, executor.container_resources),
        )
        if not direct:  # a direct task has no executor process to register
            executor.registration_timer = self.delay(
                self.executor_registration_timeout, self._registration_timed_out, cid
            )
            executor.timers.append(executor.registration_timer)
        return executor

    def _container_resources(self, executor: _Executor, extra: Sequence[TaskInfo] = ()) -> str:
        """What the executor's container may use: the executor's own resources (for the command
        executor, :data:`COMMAND_EXECUTOR_RESOURCES`) plus those of its live tasks."""
        texts = [executor.info.resources or ""]
        if executor.command_executor:
            texts.append(COMMAND_EXECUTOR_RESOURCES)
        texts.extend(t.info.resources for t in executor.tasks.values())
        texts.extend(t.resources for t in extra)
        parsed = []
        for text in texts:
            try:
                # Through the cache: the same few strings recur for every task (a launch and
                # an end of each would otherwise parse every live task's resources again).
                parsed.append(parse_resources(text) if isinstance(text, str) else Resources())
            except ResourceError as e:  # the master validated them; never fatal here
                self.log.warning("bad_task_resources", executor_id=executor.id, error=str(e))
        return str(Resources.sum(parsed))

    def _update_container(self, executor: _Executor) -> None:
        """Tasks came or went: give the container its new total (custom executors run many)."""
        if executor.state in (_ExecutorState.TERMINATING, _ExecutorState.TERMINATED):
            return
        total = self._container_resources(executor)
        if total == executor.container_resources:
            return
        executor.container_resources = total
        self.send(
            self._containerizer,  # type: ignore[arg-type]
            UpdateContainer.NAME,
            UpdateContainer(executor.container_id, total),
        )

    def _registration_timed_out(self, cid: str) -> None:
        executor = self._containers.get(cid)
        if executor is None or executor.state != _ExecutorState.LAUNCHING:
            return
        self.log.warning("executor_registration_timeout", executor_id=executor.id)
        self._destroy(
            executor,
            TaskState.TASK_FAILED,
            Reason.REASON_EXECUTOR_REGISTRATION_TIMEOUT,
        )

    def _send_to_executor(self, executor: _Executor, framework: _Framework, task: TaskInfo) -> None:
        assert executor.pid is not None
        self.send(executor.pid, RunTask.NAME, RunTask(framework.info, framework.pid, task))

    @handler(ContainerLaunched.NAME)
    def _container_launched(self, sender: UPID, msg: Any) -> None:
        if not self._valid(sender, msg, ContainerLaunched):
            return
        if sender != self._containerizer:
            self._invalid(sender, ContainerLaunched.NAME, "not from the containerizer")
            return
        executor = self._containers.get(msg.container_id)
        if executor is None:
            return
        if msg.error is not None:
            self.log.warning("executor_launch_failed", executor_id=executor.id, error=msg.error)
            executor.launch_error = msg.error
            self._executor_terminated(executor, None, f"Failed to launch container: {msg.error}")
            return
        executor.os_pid = msg.pid
        self.metrics.inc("agent/executors_launched")
        if executor.direct and executor.state == _ExecutorState.LAUNCHING:
            executor.state = _ExecutorState.RUNNING
            for task in list(executor.tasks.values()):
                self._send_direct_update(executor, task.info.task_id, TaskState.TASK_RUNNING)

    # ================================================================== executors

    @handler(RegisterExecutor.NAME)
    def _register_executor(self, sender: UPID, msg: Any) -> None:
        if not self._valid(sender, msg, RegisterExecutor):
            return
        framework = self._frameworks.get(msg.framework_id)
        executor = framework.executors.get(msg.executor_id) if framework else None
        if (
            framework is None
            or executor is None
            or executor.container_id != msg.container_id
            or executor.state not in (_ExecutorState.LAUNCHING, _ExecutorState.RUNNING)
        ):
            self._invalid(sender, RegisterExecutor.NAME, "unknown or ending executor", msg)
            self.send(sender, ShutdownExecutor.NAME, ShutdownExecutor("unknown executor"))
            return
        if executor.state == _ExecutorState.RUNNING:
            if executor.pid == sender:  # it retried before our answer arrived
                self._reply_registered(sender, framework, executor)
            else:
                self._invalid(sender, RegisterExecutor.NAME, "executor already registered")
                self.send(sender, ShutdownExecutor.NAME, ShutdownExecutor("duplicate executor"))
            return
        executor.state = _ExecutorState.RUNNING
        executor.pid = sender
        if executor.registration_timer is not None:
            # Done with: a live timer would sit in the clock's heap for the whole timeout.
            executor.registration_timer.cancel()
            executor.registration_timer = None
        self._executor_pids[sender] = executor
        self.link(sender)
        self.log.info("executor_registered", executor_id=executor.id, pid=str(sender))
        self._reply_registered(sender, framework, executor)
        queued, executor.queued = executor.queued, []
        for task_id in queued:
            task = executor.tasks.get(task_id)
            if task is not None:
                self._send_to_executor(executor, framework, task.info)

    def _reply_registered(self, to: UPID, framework: _Framework, executor: _Executor) -> None:
        self.send(
            to,
            ExecutorRegistered.NAME,
            ExecutorRegistered(executor.info, framework.info, self._info()),
        )

    @handler(ContainerTerminated.NAME)
    def _container_terminated(self, sender: UPID, msg: Any) -> None:
        if not self._valid(sender, msg, ContainerTerminated):
            return
        if sender != self._containerizer:
            self._invalid(sender, ContainerTerminated.NAME, "not from the containerizer")
            return
        executor = self._containers.get(msg.container_id)
        if executor is None:
            return
        reason = msg.reason if isinstance(msg.reason, str) and msg.reason else None
        self._executor_terminated(executor, msg.status, msg.message, reason)

    def _executor_terminated(
        self,
        executor: _Executor,
        status: int | None,
        message: str,
        limitation: str | None = None,
    ) -> None:
        """The executor's process is gone: settle its tasks, tell the master, keep a record.

        ``limitation``: the container hit a limit (a ``REASON_CONTAINER_LIMITATION_*``), and
        ``message`` names it; its tasks fail with that reason unless the agent had already
        decided what they become."""
        self._containers.pop(executor.container_id, None)
        executor.cancel_timers()
        if executor.escalation is not None:
            executor.escalation.cancel()
            executor.escalation = None
        if executor.pid is not None:
            self._executor_pids.pop(executor.pid, None)
            self.unlink(executor.pid)
        executor.state = _ExecutorState.TERMINATED
        executor.exit_status = status
        executor.exit_message = message
        self.metrics.inc("agent/executors_terminated")
        framework = self._frameworks.get(executor.framework_id)
        self.log.info(
            "executor_terminated",
            framework_id=executor.framework_id,
            executor_id=executor.id,
            status=status,
            message=message,
            limitation=limitation,
        )
        source = Source.SOURCE_AGENT
        if executor.direct:
            # Its command was the container's process: its exit is the task's outcome, reported
            # as its executor would (unless the launch failed or a limit ended it).
            source = Source.SOURCE_EXECUTOR
            if executor.launch_error is None and limitation is None:
                message = f"Command {exit_status.describe(status)}"
        if executor.kill_state is not None:
            # What the agent decided comes first: a kill during the launch is a kill, whatever
            # became of the launch.
            state, reason = executor.kill_state, executor.kill_reason
            if reason == Reason.REASON_TASK_KILLED_DURING_LAUNCH or executor.launch_error:
                source = Source.SOURCE_AGENT  # it never ran as its own executor's task
        elif executor.launch_error is not None:
            state, reason = TaskState.TASK_FAILED, Reason.REASON_CONTAINER_LAUNCH_FAILED
            source = Source.SOURCE_AGENT
        elif limitation is not None:
            state, reason = TaskState.TASK_FAILED, limitation
            source = Source.SOURCE_AGENT
            self.metrics.inc("agent/executors_limited")
        elif framework is not None and framework.terminating:
            state, reason = TaskState.TASK_KILLED, Reason.REASON_FRAMEWORK_REMOVED
        elif executor.direct:
            state = TaskState.TASK_FINISHED if status == 0 else TaskState.TASK_FAILED
            reason = None
        else:
            state, reason = TaskState.TASK_FAILED, Reason.REASON_EXECUTOR_TERMINATED
        for task in list(executor.tasks.values()):
            self._send_agent_update(
                executor.framework_id,
                executor,
                task.info.task_id,
                state,
                reason,
                message,
                source,
            )
        for task_id in executor.tasks:
            self._forget_task(executor, task_id)
        executor.tasks.clear()
        executor.queued.clear()
        # The master never heard of a direct task's executor: nothing to tell it.
        if self.agent_id is not None and not executor.direct:
            self._to_master(
                ExitedExecutor.NAME,
                ExitedExecutor(self.agent_id, executor.framework_id, executor.id, status),
            )
        self._collect_sandbox(executor)
        if framework is not None:
            if framework.executors.get(executor.id) is executor:
                del framework.executors[executor.id]
            framework.completed_executors.append(executor)
            self._maybe_remove_framework(framework)

    def _collect_left_sandboxes(self) -> None:
        """An earlier run of this agent left sandboxes (no executor outlives its agent, so none
        of them is in use): find them, and hand them to the collector, each due ``gc_delay``
        after it was last changed. Without this they stayed for good."""
        self._off_thread(
            "left_sandboxes_unknown",
            self._left_sandboxes_found,
            find_sandboxes,
            str(self.work_dir / "agents"),
            time.time(),
        )

    def _left_sandboxes_found(self, found: list[tuple[float, str, tuple[str, ...]]]) -> None:
        count = self._sandboxes.adopt(found, time.time())
        if count:
            self.log.info("left_sandboxes_collected", count=count)

    def _watch_disk(self) -> None:
        """Look at the work directory's disk; :meth:`_disk_seen` acts on what it finds. The
        next look is due an interval after this one, whatever this one finds."""
        self._disk_timer = self.delay(self.disk_watch_interval, self._watch_disk)
        self._off_thread("disk_usage_unknown", self._disk_seen, self.disk_usage, str(self.work_dir))

    def _disk_seen(self, used: float) -> None:
        """Finished sandboxes the disk has no room for go now (see mesa.sandbox_gc)."""
        self._disk_used = used
        age = max_age(self._sandboxes.delay, self.gc_disk_headroom, used)
        pruned = self._sandboxes.prune(age)
        if pruned:
            self.log.info("sandboxes_pruned", count=pruned, disk_usage=round(used, 3), max_age=age)

    def _off_thread(
        self, failed: str, then: Callable[[Any], None], fn: Callable[..., Any], *args: Any
    ) -> None:
        """``fn(*args)`` on a worker thread (file system work, which on a network filesystem
        that hangs must not stall the agent), and ``then`` its result back in the agent's
        context; a failure is logged as ``failed`` instead."""
        work = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        work.add_done_callback(lambda done: self.defer(self._back_from_thread, failed, then, done))

    def _back_from_thread(
        self, failed: str, then: Callable[[Any], None], done: asyncio.Future[Any]
    ) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            self.log.warning(failed, work_dir=str(self.work_dir), error=repr(error))
            return
        then(done.result())

    def _collect_sandbox(self, executor: _Executor) -> None:
        """Its container is gone: its sandbox goes after ``gc_delay`` (and, for an executor, the
        ``runs`` and executor directories above it, if that leaves them empty)."""
        if executor.direct:
            self._sandboxes.add(executor.sandbox)
            return
        runs = os.path.dirname(executor.sandbox)
        self._sandboxes.add(executor.sandbox, (runs, os.path.dirname(runs)))

    def _maybe_remove_framework(self, framework: _Framework) -> None:
        """Forget a framework with no executors left, once its updates are delivered (or, when
        the master shut it down, at once: the master will not acknowledge them)."""
        if framework.executors:
            return
        if framework.terminating:
            dropped = self._updates.cleanup(framework.id)
            if dropped:
                self.log.info("status_updates_dropped", framework_id=framework.id, count=dropped)
        elif self._updates.has_pending(framework.id):
            return
        if self._frameworks.get(framework.id) is framework:
            del self._frameworks[framework.id]
            self._completed_frameworks.append(framework)
            self.log.info("framework_removed", framework_id=framework.id)

    def _destroy(self, executor: _Executor, state: str, reason: str | None) -> None:
        """End an executor from the agent's side: its leftover tasks become ``state``."""
        if executor.state == _ExecutorState.TERMINATED:
            return
        if executor.kill_state is None:
            executor.kill_state, executor.kill_reason = state, reason
        executor.state = _ExecutorState.TERMINATING
        self.send(
            self._containerizer,  # type: ignore[arg-type]
            DestroyContainer.NAME,
            DestroyContainer(executor.container_id),
        )

    def _destroy_if_alive(self, cid: str, why: str) -> None:
        """A timer's verdict on an executor that should have gone by now. Its leftover tasks
        fail, unless the agent had already decided what they become (a shutdown: killed)."""
        executor = self._containers.get(cid)
        if executor is not None and executor.state != _ExecutorState.TERMINATED:
            self.log.warning("destroying_executor", executor_id=executor.id, reason=why)
            self._destroy(executor, TaskState.TASK_FAILED, Reason.REASON_EXECUTOR_TERMINATED)

    def _shutdown_executor(self, executor: _Executor) -> None:
        if executor.state in (_ExecutorState.TERMINATING, _ExecutorState.TERMINATED):
            return
        if executor.direct:
            # What the command executor does on shutdown: a kill, with a grace period that
            # fits inside the executor's own.
            grace = min(DEFAULT_KILL_GRACE_PERIOD, self.executor_shutdown_grace_period * 0.5)
            self._kill_direct(executor, grace, Reason.REASON_FRAMEWORK_REMOVED)
            return
        if executor.state == _ExecutorState.LAUNCHING or executor.pid is None:
            self._destroy(executor, TaskState.TASK_KILLED, Reason.REASON_FRAMEWORK_REMOVED)
            return
        executor.state = _ExecutorState.TERMINATING
        executor.kill_state = TaskState.TASK_KILLED
        executor.kill_reason = Reason.REASON_FRAMEWORK_REMOVED
        self.send(executor.pid, ShutdownExecutor.NAME, ShutdownExecutor("framework shut down"))
        executor.timers.append(
            self.delay(
                self.executor_shutdown_grace_period,
                self._destroy_if_alive,
                executor.container_id,
                "did not exit after ShutdownExecutor",
            )
        )

    # ================================================================== status updates

    @handler(StatusUpdate.NAME)
    def _status_update(self, sender: UPID, msg: Any) -> None:
        """From an executor: record it, acknowledge it, and send it on to the master."""
        if not self._valid(sender, msg, StatusUpdate):
            return
        status = msg.status
        if (
            not isinstance(status, TaskStatus)
            or not _is_id(status.task_id)
            or not isinstance(status.state, str)
            or status.state not in TaskState.__members__
            or not isinstance(status.uuid, bytes)
            or not status.uuid
        ):
            self._invalid(sender, StatusUpdate.NAME, "bad status", msg)
            return
        executor = self._executor_pids.get(sender)
        if executor is None or executor.framework_id != msg.framework_id:
            self._invalid(sender, StatusUpdate.NAME, "not from a registered executor", msg)
            return
        status = dataclasses.replace(
            status,
            agent_id=self.agent_id,
            executor_id=executor.id,
            source=Source.SOURCE_EXECUTOR,
            timestamp=status.timestamp or time.time(),
        )
        result = self._record_update(executor.framework_id, executor, status)
        if result is Accept.REJECTED:
            self._invalid(
                sender, StatusUpdate.NAME, f"update after a terminal one for {status.task_id}"
            )
        # Acknowledge even duplicates and rejects, or the executor would resend them forever.
        self.send(
            sender,
            StatusUpdateAcknowledgement.NAME,
            StatusUpdateAcknowledgement(
                executor.framework_id, self.agent_id or "", status.task_id, status.uuid
            ),
        )

    def _send_agent_update(
        self,
        framework_id: str,
        executor: _Executor | None,
        task_id: str,
        state: str,
        reason: str | None,
        message: str,
        source: str = Source.SOURCE_AGENT,
    ) -> None:
        """An update the agent makes itself (the executor cannot, or the agent is the task's
        executor: a direct task): same streams, fresh uuid."""
        status = TaskStatus(
            task_id=task_id,
            state=state,
            message=message,
            source=source,
            reason=reason,
            agent_id=self.agent_id,
            executor_id=executor.id if executor else None,
            timestamp=time.time(),
            uuid=new_uuid_bytes(),
        )
        self._record_update(framework_id, executor, status)

    def _send_direct_update(self, executor: _Executor, task_id: str, state: str) -> None:
        """A direct task's non-terminal update (RUNNING, KILLING), made as its executor."""
        self._send_agent_update(
            executor.framework_id, executor, task_id, state, None, "", Source.SOURCE_EXECUTOR
        )

    def _record_update(
        self, framework_id: str, executor: _Executor | None, status: TaskStatus
    ) -> Accept:
        update = StatusUpdate(framework_id, status, executor.id if executor else None)
        result = self._updates.update(framework_id, update)
        if result is not Accept.ACCEPTED:
            return result
        if self.log.is_enabled_for(INFO):  # (twice per task: the fields cost more than a check)
            self.log.info(
                "status_update",
                framework_id=framework_id,
                task_id=status.task_id,
                state=str(status.state),
                source=str(status.source),
                reason=str(status.reason) if status.reason else None,
            )
        task = executor.tasks.get(status.task_id) if executor else None
        if task is not None:
            task.status = status
            if is_terminal(status.state):
                del executor.tasks[status.task_id]  # type: ignore[union-attr]
                self._forget_task(executor, status.task_id)  # type: ignore[arg-type]
                if status.task_id in executor.queued:  # type: ignore[union-attr]
                    executor.queued.remove(status.task_id)  # type: ignore[union-attr]
                executor.completed_tasks.append(task)  # type: ignore[union-attr]
                self.metrics.inc(_task_counter(status.state))
                self._update_container(executor)  # type: ignore[arg-type]
        return result

    def _forward_update(self, update: StatusUpdate, retry: bool) -> None:
        """The streams' way out: to the master, through the outbox (bursts as one message,
        clocked by the master's answers; see :mod:`mesa.update_outbox`). Each update is still
        its stream's own, retried until acknowledged."""
        self.metrics.inc("agent/status_updates_retried" if retry else "agent/status_updates_sent")
        self._outbox.put(update)

    def _send_updates(self, updates: list[StatusUpdate]) -> None:
        try:
            if len(updates) == 1:
                self.send(self.master, StatusUpdate.NAME, updates[0])
            else:
                self.send(self.master, StatusUpdates.NAME, StatusUpdates(updates))
        except Exception as e:  # back-pressure or a dead peer: the streams retry
            self.log.warning("status_update_send_failed", error=repr(e), updates=len(updates))

    def _to_master(self, name: str, body: Any) -> None:
        """Send to the master, after the status updates waiting to go: what the agent says
        reaches the master in the order it said it."""
        if self._outbox:
            self._outbox.flush()
        self.send(self.master, name, body)

    @handler(StatusUpdateAcknowledgement.NAME)
    def _acknowledgement(self, sender: UPID, msg: Any) -> None:
        if not self._valid(sender, msg, StatusUpdateAcknowledgement, from_master=True):
            return
        if (
            not isinstance(msg.uuid, bytes)
            or not isinstance(msg.task_id, str)
            or not isinstance(msg.framework_id, str)
        ):
            self._invalid(sender, StatusUpdateAcknowledgement.NAME, "bad ack", msg)
            return
        self._acknowledged(sender, msg.framework_id, msg.task_id, msg.uuid)

    @handler(StatusUpdateAcknowledgements.NAME)
    def _acknowledgements(self, sender: UPID, msg: Any) -> None:
        """Several acknowledgements of one framework's updates. Each settles its stream as its
        own message would (a bad one is counted alone); what concerns the message as a whole
        (the master has answered, the count, whether the framework can now be forgotten) is
        settled once, after all of them."""
        if not self._valid(sender, msg, StatusUpdateAcknowledgements, from_master=True):
            return
        task_ids, uuids = msg.task_ids, msg.uuids
        if (
            not isinstance(msg.framework_id, str)
            or not isinstance(task_ids, list)
            or not isinstance(uuids, list)
            or len(task_ids) != len(uuids)
        ):
            self._invalid(sender, StatusUpdateAcknowledgements.NAME, "bad acks", msg)
            return
        framework_id, acknowledge, acked = msg.framework_id, self._updates.acknowledge, 0
        self._outbox.answered()
        for task_id, uuid_ in zip(task_ids, uuids, strict=True):
            if not isinstance(uuid_, bytes) or not isinstance(task_id, str):
                self._invalid(sender, StatusUpdateAcknowledgements.NAME, "bad ack", task_id)
                continue
            result = acknowledge(framework_id, task_id, uuid_)
            if result is Ack.OK:
                acked += 1
            else:
                self._bad_ack(sender, result, framework_id, task_id)
        if acked:
            self._acked(framework_id, acked)

    def _acknowledged(self, sender: UPID, framework_id: str, task_id: str, uuid_: bytes) -> None:
        self._outbox.answered()
        result = self._updates.acknowledge(framework_id, task_id, uuid_)
        if result is not Ack.OK:
            self._bad_ack(sender, result, framework_id, task_id)
            return
        self._acked(framework_id, 1)

    def _acked(self, framework_id: str, count: int) -> None:
        self.metrics.inc("agent/status_updates_acked", count)
        framework = self._frameworks.get(framework_id)
        if framework is not None:
            self._maybe_remove_framework(framework)

    def _bad_ack(self, sender: UPID, result: Ack, framework_id: str, task_id: str) -> None:
        self._invalid(
            sender,
            StatusUpdateAcknowledgement.NAME,
            f"{result} acknowledgement for {framework_id}/{task_id}",
        )

    # ================================================================== from the master

    @handler(KillTask.NAME)
    def _kill(self, sender: UPID, msg: Any) -> None:
        if not self._valid(sender, msg, KillTask, from_master=True):
            return
        if not _is_id(msg.framework_id) or not _is_id(msg.task_id):
            self._invalid(sender, KillTask.NAME, "bad ids", msg)
            return
        grace = msg.grace_period if _is_interval(msg.grace_period, zero_ok=True) else None
        self._kill_task(msg.framework_id, msg.task_id, grace)

    def _kill_task(self, framework_id: str, task_id: str, grace_period: float | None) -> None:
        framework = self._frameworks.get(framework_id)
        executor, task = self._find_task(framework, task_id) if framework else (None, None)
        if framework is None or executor is None or task is None:
            if framework is not None and self._is_completed(framework, task_id):
                self.log.info("kill_completed_task", framework_id=framework_id, task_id=task_id)
                return
            self.log.info("kill_unknown_task", framework_id=framework_id, task_id=task_id)
            self._send_agent_update(
                framework_id,
                None,
                task_id,
                _lost_state(framework.info if framework else None),
                Reason.REASON_TASK_UNKNOWN,
                "Task unknown to the agent",
            )
            return
        self.log.info("killing_task", framework_id=framework_id, task_id=task_id)
        if executor.direct:
            grace = _first_set(grace_period, task.info.kill_grace_period, DEFAULT_KILL_GRACE_PERIOD)
            self._kill_direct(executor, grace, None)
            return
        if task_id in executor.queued:
            # Not handed to the executor yet: it never needs to hear of it.
            executor.queued.remove(task_id)
            self._send_agent_update(
                framework_id,
                executor,
                task_id,
                TaskState.TASK_KILLED,
                Reason.REASON_TASK_KILLED_DURING_LAUNCH,
                "Killed before the executor registered",
            )
            if not executor.tasks and executor.state == _ExecutorState.LAUNCHING:
                self._destroy(
                    executor, TaskState.TASK_KILLED, Reason.REASON_TASK_KILLED_DURING_LAUNCH
                )
            return
        if executor.state == _ExecutorState.RUNNING and executor.pid is not None:
            self.send(
                executor.pid,
                KillTask.NAME,
                KillTask(framework_id, task_id, self.agent_id, grace_period),
            )
        else:
            # Terminating: its tasks are settled when the container is gone.
            self.log.info("kill_while_executor_terminating", task_id=task_id)

    def _kill_direct(self, executor: _Executor, grace: float, reason: str | None) -> None:
        """Kill a direct task as the command executor would: ``TASK_KILLING`` to frameworks that
        asked for it, SIGTERM to its process group, its container destroyed (SIGKILL to all of
        it) when ``grace`` runs out, then ``TASK_KILLED``."""
        if executor.state == _ExecutorState.TERMINATED:
            return
        if executor.state == _ExecutorState.LAUNCHING:
            # Its command has not started: nothing to be polite to.
            self._destroy(
                executor, TaskState.TASK_KILLED, reason or Reason.REASON_TASK_KILLED_DURING_LAUNCH
            )
            return
        deadline = Clock.now() + grace
        if executor.kill_state is not None:
            # Already being killed: a second kill may only bring the SIGKILL forward.
            if executor.escalation is not None and deadline < (executor.kill_deadline or 0.0):
                executor.escalation.cancel()
                executor.kill_deadline = deadline
                executor.escalation = self.delay(grace, self._escalate, executor.container_id)
            return
        executor.kill_state, executor.kill_reason = TaskState.TASK_KILLED, reason
        executor.kill_deadline = deadline
        framework = self._frameworks.get(executor.framework_id)
        if framework is not None and "TASK_KILLING_STATE" in framework.info.capabilities:
            for task in list(executor.tasks.values()):
                self._send_direct_update(executor, task.info.task_id, TaskState.TASK_KILLING)
        self.send(
            self._containerizer,  # type: ignore[arg-type]
            SignalContainer.NAME,
            SignalContainer(executor.container_id, int(signal.SIGTERM)),
        )
        executor.escalation = self.delay(grace, self._escalate, executor.container_id)

    def _escalate(self, cid: str) -> None:
        """A killed direct task's grace period is over: take its whole container down."""
        executor = self._containers.get(cid)
        if executor is not None:
            executor.escalation = None
            if executor.state != _ExecutorState.TERMINATED:
                self._destroy(executor, TaskState.TASK_KILLED, executor.kill_reason)

    @handler(ShutdownFramework.NAME)
    def _shutdown_framework(self, sender: UPID, msg: Any) -> None:
        if not self._valid(sender, msg, ShutdownFramework, from_master=True):
            return
        framework = self._frameworks.get(msg.framework_id)
        if framework is None:
            self.log.info("shutdown_unknown_framework", framework_id=msg.framework_id)
            return
        self.log.info("shutting_down_framework", framework_id=framework.id)
        framework.terminating = True
        for executor in list(framework.executors.values()):
            self._shutdown_executor(executor)
        self._maybe_remove_framework(framework)

    @handler(FrameworkToExecutor.NAME)
    def _framework_message(self, sender: UPID, msg: Any) -> None:
        if not self._valid(sender, msg, FrameworkToExecutor, from_master=True):
            return
        framework = self._frameworks.get(msg.framework_id)
        executor = framework.executors.get(msg.executor_id) if framework else None
        if executor is None or executor.state != _ExecutorState.RUNNING or executor.pid is None:
            self._invalid(sender, FrameworkToExecutor.NAME, "no such running executor", msg)
            return
        self.send(executor.pid, FrameworkToExecutor.NAME, msg)

    @handler(ExecutorToFramework.NAME)
    def _executor_message(self, sender: UPID, msg: Any) -> None:
        if not self._valid(sender, msg, ExecutorToFramework):
            return
        executor = self._executor_pids.get(sender)
        if executor is None or executor.framework_id != msg.framework_id:
            self._invalid(sender, ExecutorToFramework.NAME, "not from a registered executor", msg)
            return
        self._to_master(
            ExecutorToFramework.NAME,
            ExecutorToFramework(msg.framework_id, self.agent_id or "", executor.id, msg.data),
        )

    @handler(UpdateFramework.NAME)
    def _update_framework(self, sender: UPID, msg: Any) -> None:
        if not self._valid(sender, msg, UpdateFramework, from_master=True):
            return
        framework = self._frameworks.get(msg.framework_id)
        if framework is not None and isinstance(msg.framework_pid, str):
            framework.pid = msg.framework_pid
            self.log.info("framework_updated", framework_id=framework.id, pid=framework.pid)

    # ================================================================== helpers

    def _find_task(
        self, framework: _Framework, task_id: str
    ) -> tuple[_Executor | None, _Task | None]:
        executor = framework.live_tasks.get(task_id)
        task = executor.tasks.get(task_id) if executor is not None else None
        return (executor, task) if task is not None else (None, None)

    def _forget_task(self, executor: _Executor, task_id: str) -> None:
        """``task_id`` left ``executor`` (it ended, or the executor did)."""
        framework = self._frameworks.get(executor.framework_id)
        if framework is not None and framework.live_tasks.get(task_id) is executor:
            del framework.live_tasks[task_id]

    def _is_completed(self, framework: _Framework, task_id: str) -> bool:
        executors = [*framework.executors.values(), *framework.completed_executors]
        return any(t.info.task_id == task_id for e in executors for t in e.completed_tasks)

    def _count_live_tasks(self) -> int:
        return sum(len(e.tasks) for e in self._containers.values())

    def _valid(self, sender: UPID, msg: Any, cls: type, from_master: bool = False) -> bool:
        if not isinstance(msg, cls):
            self._invalid(sender, cls.NAME, f"body is a {type(msg).__name__}", msg)  # type: ignore[attr-defined]
            return False
        if from_master and sender != self.master:
            self._invalid(sender, cls.NAME, "not from the master")  # type: ignore[attr-defined]
            return False
        return True

    def _invalid(self, sender: UPID, name: str, why: str, body: Any = None) -> None:
        self.metrics.inc("agent/invalid_messages")
        self.log.warning(
            "invalid_message",
            message=name,
            sender=str(sender),
            reason=why,
            body=repr(body)[:300] if body is not None else None,
        )

    # ================================================================== HTTP

    @route("state")
    def _http_state(self, request: Any) -> dict[str, Any]:
        return {
            "id": self.agent_id,
            "pid": str(self.pid),
            "hostname": self.hostname,
            "resources": self.resources,
            "attributes": self.attributes,
            "master": str(self.master),
            "registered": self.registered,
            "work_dir": str(self.work_dir),
            "ping_interval": self._ping_interval,
            "clock": Clock.now(),
            "frameworks": [f.describe() for f in self._frameworks.values()],
            "completed_frameworks": [f.describe() for f in self._completed_frameworks],
            "pending_status_updates": self._updates.describe(),
        }

    @route("containers")
    async def _http_containers(self, request: Any) -> list[dict[str, Any]]:
        """Each running container with its usage, in the shape of Mesos's ``/containers``."""
        if self._containerizer is None:
            return []
        report = await self.runtime.dispatch(self._containerizer, "usage_report")
        out = []
        for entry in report:
            executor = self._containers.get(entry["container_id"])
            out.append(
                {
                    "container_id": entry["container_id"],
                    "executor_id": executor.id if executor else None,
                    "executor_name": executor.info.name if executor else None,
                    "framework_id": executor.framework_id if executor else None,
                    "source": executor.info.name if executor else None,
                    "resources": entry["resources"],
                    "status": {"executor_pid": entry["pid"]},
                    "limitation": entry["limitation"],
                    "statistics": entry["statistics"],
                }
            )
        return out


_TASK_COUNTERS: dict[str, str] = {}


def _task_counter(state: str) -> str:
    """``agent/tasks_finished`` for ``TASK_FINISHED``: the counter of tasks that ended so (made
    once per state, not once per task)."""
    name = _TASK_COUNTERS.get(state)
    if name is None:
        name = f"agent/tasks_{str(state).removeprefix('TASK_').lower()}"
        if len(_TASK_COUNTERS) < 64:  # (states are the few TaskStates; an executor's are checked)
            _TASK_COUNTERS[state] = name
    return name


def _lost_state(framework: FrameworkInfo | None) -> str:
    """What a task the agent cannot run becomes: DROPPED for frameworks that know the word."""
    if framework is not None and framework.partition_aware:
        return TaskState.TASK_DROPPED
    return TaskState.TASK_LOST


def _first_set(*values: Any) -> float:
    """The first of ``values`` that is a usable grace period (a number >= 0)."""
    for value in values:
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return DEFAULT_KILL_GRACE_PERIOD


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and value not in (".", "..") and bool(_SAFE_ID.fullmatch(value))


def _is_interval(value: Any, zero_ok: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return value >= 0 if zero_ok else value > 0
