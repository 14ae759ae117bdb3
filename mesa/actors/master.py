"""The master: frameworks, agents, offers and tasks.

The master is the switchboard of two-level scheduling. It admits agents and frameworks, turns the
allocator's decisions into offers, checks every launch against the offers it spends, and carries
status updates from agents to frameworks and acknowledgements back. It never runs anything itself.

Everything it knows about tasks is derivable from what agents and frameworks report: a master that
restarts (or, later, a newly elected leader) rebuilds its task table from reregistering agents. So
the state here is a cache of the cluster, not its record of truth, and a message from an agent
about a task always wins over what the master believed.

Failure handling follows Mesos:

* an agent that stops answering pings for ``max_agent_ping_timeouts`` intervals is *unreachable*:
  its offers are rescinded, its tasks become TASK_UNREACHABLE for partition-aware frameworks and
  TASK_LOST for the others; if it reregisters its tasks come back.
* a framework whose scheduler disconnects keeps its tasks for ``failover_timeout`` seconds; a
  scheduler that reregisters with the framework id in time takes them over; after that the
  framework is torn down and its tasks killed.
"""

from __future__ import annotations

import collections
import itertools
import json
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from libproc import UPID, Clock, Process, Timer, handler, route
from mesa.actors.allocator import Allocator
from mesa.info import AgentInfo, FrameworkInfo, MasterInfo, Offer, TaskInfo, TaskStatus, new_id
from mesa.messages import (
    AcceptOffers,
    AgentRegistered,
    AgentReregistered,
    Allocations,
    AllocatorActivateAgent,
    AllocatorActivateFramework,
    AllocatorAddAgent,
    AllocatorAddFramework,
    AllocatorDeactivateAgent,
    AllocatorDeactivateFramework,
    AllocatorRecoverResources,
    AllocatorRemoveAgent,
    AllocatorRemoveFramework,
    AllocatorRevive,
    AllocatorSuppress,
    DeactivateFramework,
    DeclineOffers,
    ExecutorToFramework,
    ExitedExecutor,
    FrameworkError,
    FrameworkRegistered,
    FrameworkReregistered,
    FrameworkToExecutor,
    KillTask,
    LostAgent,
    PingAgent,
    PongAgent,
    ReconcileTasks,
    RegisterAgent,
    RegisterExecutor,
    RegisterFramework,
    ReregisterAgent,
    ReregisterFramework,
    RescindOffer,
    ResourceOffers,
    ReviveOffers,
    RunTask,
    RunTasks,
    ShutdownFramework,
    StatusUpdate,
    StatusUpdateAcknowledgement,
    StatusUpdateAcknowledgements,
    StatusUpdates,
    SuppressOffers,
    UnregisterAgent,
    UnregisterFramework,
    UpdateFramework,
)
from mesa.resources import ResourceError, Resources
from mesa.task_state import Reason, Source, TaskState, is_terminal
from mesa.validation import check_id, check_task, parse_resources

__all__ = ["Master", "MasterFlags"]

_COMPLETED_TASKS = 1000  # per framework, as Mesos's --max_completed_tasks_per_framework
_COMPLETED_FRAMEWORKS = 50
_PING_SLICE_MAX = 1000  # agents pinged in one go
_PING_STEP_MIN = 0.05  # seconds between two slices, at least
_PING_EARLY = 0.001  # seconds: a timer may fire up to the loop's resolution early


def ping_plan(agents: int, interval: float) -> tuple[int, float]:
    """How one round of pings is cut: ``(agents per slice, seconds between slices)``.

    Mesos gives each agent a ping timer of its own, so pings (and their pongs) are spread over
    the interval as the agents registered. One timer for the lot is cheaper but puts every ping
    and pong in one burst, and whatever arrives meanwhile (launches, status updates) waits behind
    it: ten slices of 5,000 agents held the master for tens of milliseconds twice a second. So a
    round is cut in slices of at most ``_PING_SLICE_MAX`` agents, as long as that leaves at least
    ``_PING_STEP_MIN`` between two slices. Not much smaller: the pings of a slice and their
    pongs travel in a few frames, and slices of 100 (a frame every 10 ms each way) cost the
    master of 50,000 agents about a tenth more CPU per launch, and the launch rate as much.
    """
    slices = max(1, min(-(-agents // _PING_SLICE_MAX), int(interval / _PING_STEP_MIN)))
    size = max(1, -(-agents // slices))
    return size, interval / max(1, -(-agents // size))  # (the slices that size makes)


@dataclass
class MasterFlags:
    """The master's tunables; ``python -m mesa.node --role=master --help`` documents each."""

    hostname: str | None = None
    allocation_interval: float = 1.0
    # How long after an event (resources back, an agent or framework added) its cycle runs, so a
    # burst of events costs one cycle: latency of reuse against allocator CPU.
    allocation_batch_delay: float = 0.01
    agent_ping_interval: float = 1.0
    max_agent_ping_timeouts: int = 5
    offer_timeout: float | None = None
    http_port: int | None = None


@dataclass
class _Task:
    info: TaskInfo
    framework_id: str
    agent_id: str
    resources: Resources
    executor_id: str | None
    role: str | None = None  # the role its offers were allocated to
    state: str = TaskState.TASK_STAGING
    status: TaskStatus | None = None
    statuses: list[dict[str, Any]] = field(default_factory=list)
    unreachable: bool = False

    @property
    def told(self) -> str | None:
        """The state of the last update its framework was sent (Mesos's status_update_state):
        ``status`` is that update, the agent's or the master's own. ``state`` is the latest the
        master knows, which a terminal latest_state puts ahead: a task can be over while its
        framework has been told only TASK_RUNNING."""
        return self.status.state if self.status is not None else None

    @property
    def told_ended(self) -> bool:
        """Its framework has been sent a terminal update for it."""
        return self.told is not None and is_terminal(self.told)


@dataclass
class _Framework:
    info: FrameworkInfo
    pid: UPID | None
    registered_time: float
    active: bool = True
    connected: bool = True
    tasks: dict[str, _Task] = field(default_factory=dict)
    completed: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=_COMPLETED_TASKS)
    )
    offers: set[str] = field(default_factory=set)
    # (agent_id, executor_id) -> resources the executor itself holds
    executors: dict[tuple[str, str], Resources] = field(default_factory=dict)
    failover_timer: Timer | None = None
    unregistered_time: float | None = None

    @property
    def id(self) -> str:
        return self.info.id  # type: ignore[return-value]


@dataclass
class _Agent:
    info: AgentInfo
    pid: UPID
    total: Resources
    registered_time: float
    connected: bool = True
    missed_pings: int = 0
    tasks: dict[tuple[str, str], _Task] = field(default_factory=dict)  # (fid, tid)
    offers: set[str] = field(default_factory=set)
    executors: dict[tuple[str, str], Resources] = field(default_factory=dict)  # (fid, eid)

    @property
    def id(self) -> str:
        return self.info.id  # type: ignore[return-value]

    def used(self) -> Resources:
        parts = [t.resources for t in self.tasks.values() if not is_terminal(t.state)]
        parts.extend(self.executors.values())
        return Resources.sum(parts)

    def used_by_framework(self) -> dict[str, Resources]:
        by: dict[str, list[Resources]] = {}
        for (fid, _tid), task in self.tasks.items():
            if not is_terminal(task.state):
                by.setdefault(fid, []).append(task.resources)
        for (fid, _eid), res in self.executors.items():
            by.setdefault(fid, []).append(res)
        return {fid: Resources.sum(parts) for fid, parts in by.items()}


class _Offer:
    """An outstanding offer: what the master needs to check an accept and take it back.

    Not the :class:`Offer` record itself: that is sent and dropped, so the ten thousand offers
    a large cluster has out at any time are one small object each for the garbage collector to
    walk, not three."""

    __slots__ = ("agent_id", "framework_id", "id", "resources", "role", "timer")

    def __init__(
        self,
        offer_id: str,
        framework_id: str,
        agent_id: str,
        resources: Resources,
        role: str | None,
    ) -> None:
        self.id = offer_id
        self.framework_id = framework_id
        self.agent_id = agent_id
        self.resources = resources
        self.role = role
        self.timer: Timer | None = None


def _gone_state(task: _Task, framework: _Framework) -> str:
    """What a framework is told of a task whose agent went away without it: its end, when a
    terminal latest_state brought one, else TASK_GONE (partition-aware) or TASK_LOST."""
    if is_terminal(task.state):
        return task.state
    return TaskState.TASK_GONE if framework.info.partition_aware else TaskState.TASK_LOST


def _completed(task: _Task) -> dict[str, Any]:
    """What the master keeps of a task that has ended: what ``/state`` shows of it, as a dict of
    strings, bytes, numbers and None only.

    A framework keeps its last thousand, so these are most of the tasks a busy master holds.
    Keeping the whole :class:`_Task` (its TaskInfo, CommandInfo, statuses, ...) made them most
    of what every garbage collection walked, and its pauses tens of milliseconds long; a dict
    holding no container is never tracked by the collector at all. So the resources stay in
    their text form, and of the last ten statuses the states are joined by ``;`` and the
    timestamps packed as doubles. (Formatting each timestamp as text was most of this
    function's time, which every task pays when it ends: about 2 µs, a fortieth of the
    master's CPU per launch in ``bench.offers``.) Statuses only a faulty agent sends (a state
    that is not text or holds a ``;``, a timestamp that is not a number) are kept as JSON text
    instead, and shown as they came.
    """
    status = task.status
    recent = task.statuses[-10:]
    states: str | None = None
    try:
        joined = ";".join([s["state"] for s in recent])
        timestamps: bytes | str = _TIMESTAMPS[len(recent)].pack(*[s["timestamp"] for s in recent])
        if not recent or joined.count(";") == len(recent) - 1:
            states = joined  # (else a state held a ";": it would not split back)
    except (TypeError, struct.error):
        pass
    if states is None:
        # A faulty agent's: the statuses as JSON text, each value as it came (what JSON
        # cannot hold, as its repr).
        states = json.dumps([[s["state"], s["timestamp"]] for s in recent], default=repr)
        timestamps = ""
    return {
        "id": task.info.task_id,
        "name": task.info.name,
        "framework_id": task.framework_id,
        "executor_id": task.executor_id or "",
        "agent_id": task.agent_id,
        "state": str(task.state),
        "resources": task.info.resources,
        "states": states,
        "timestamps": timestamps,
        "message": status.message if status is not None else None,
    }


# How an ended task's last (up to ten) timestamps are packed, by their number.
_TIMESTAMPS = [struct.Struct(f"={n}d") for n in range(11)]


def _resources_json(r: Resources) -> dict[str, Any]:
    """Mesos's JSON shape for resources in /state: scalars as numbers, ranges as text."""
    out: dict[str, Any] = {name: value for name, value in r.scalars().items()}
    for name in r.names():
        ranges = r.ranges(name)
        if ranges:
            out[name] = "[" + ",".join(f"{b}-{e}" for b, e in ranges) + "]"
    for name in ("cpus", "mem", "disk", "gpus"):
        out.setdefault(name, 0.0)
    return out


class Master(Process):
    """The master actor (libproc id ``master``)."""

    def __init__(self, flags: MasterFlags | None = None, *, id: str = "master") -> None:
        super().__init__(id=id)
        self.flags = flags or MasterFlags()
        self.master_id = new_id()
        # Offer ids as Mesos makes them, ``<master id>-O<n>``: unique across masters (the
        # master id is a uuid) and far cheaper than a uuid per offer.
        self._offer_ids = itertools.count()
        self.start_time = time.time()
        self.frameworks: dict[str, _Framework] = {}
        self.completed_frameworks: collections.deque[_Framework] = collections.deque(
            maxlen=_COMPLETED_FRAMEWORKS
        )
        self.framework_by_pid: dict[UPID, str] = {}
        self.agents: dict[str, _Agent] = {}
        self.agent_by_pid: dict[UPID, str] = {}
        self.unreachable: dict[str, tuple[_Agent, float]] = {}
        self.offers: dict[str, _Offer] = {}
        self.allocator_pid: UPID | None = None
        self._ping_timer: Timer | None = None
        # What is left to ping of this round, a slice at a time.
        self._ping_slices: collections.deque[list[_Agent]] = collections.deque()
        self._ping_step = self.flags.agent_ping_interval
        self._ping_due = 0.0  # when the next slice is due (Clock time)

    # ================================================================== lifecycle

    def initialize(self) -> None:
        self.log = self.log.bind(component="master")
        self.allocator_pid = self.spawn(
            Allocator(
                self.pid,
                interval=self.flags.allocation_interval,
                batch_delay=self.flags.allocation_batch_delay,
            )
        )
        m = self.metrics
        m.gauge("master/frameworks_active", lambda: self._count_frameworks(True))
        m.gauge("master/frameworks_inactive", lambda: self._count_frameworks(False))
        m.gauge("master/agents_active", lambda: sum(a.connected for a in self.agents.values()))
        m.gauge("master/agents_registered", lambda: len(self.agents))
        m.gauge("master/agents_unreachable", lambda: len(self.unreachable))
        m.gauge("master/outstanding_offers", lambda: len(self.offers))
        m.gauge("master/tasks_active", self._count_active_tasks)
        m.gauge("master/uptime_secs", lambda: time.time() - self.start_time)
        m.gauge("master/elected", lambda: 1)
        self._ping_due = Clock.now() + self.flags.agent_ping_interval
        self._ping_timer = self.delay(self.flags.agent_ping_interval, self._ping_agents)
        self.log.info("master_started", pid=str(self.pid), master_id=self.master_id)

    def _count_frameworks(self, active: bool) -> int:
        return sum(1 for f in self.frameworks.values() if f.active == active)

    def _count_active_tasks(self) -> int:
        return sum(len(f.tasks) for f in self.frameworks.values())

    @property
    def info(self) -> MasterInfo:
        return MasterInfo(
            id=self.master_id,
            pid=str(self.pid),
            hostname=self.flags.hostname or socket.gethostname(),
            port=self.pid.port,
            http_port=self.flags.http_port,
        )

    def _to_allocator(self, message: Any) -> None:
        """Tell the allocator (an actor in this runtime) what changed."""
        self.send(self.allocator_pid, message.NAME, message)  # type: ignore[arg-type]

    def _invalid(self, what: str, sender: UPID, detail: str, fatal: bool = False) -> None:
        """Count and log a message we cannot act on.

        ``fatal``: the sender believes in a framework we do not know (or may not speak for), so
        it gets a FrameworkError, which makes a driver abort. A registered framework's bad call
        is only counted and logged — as in Mesos, one bad call must not kill a framework.
        """
        self.metrics.inc("master/invalid_messages")
        self.metrics.inc(f"master/invalid_messages/{what}")
        self.log.warning("invalid_message", kind=what, sender=str(sender), detail=detail)
        if fatal:
            self.send(sender, FrameworkError.NAME, FrameworkError(f"{what}: {detail}"))

    def _framework_of(self, sender: UPID, framework_id: Any, what: str) -> _Framework | None:
        """The framework a scheduler call is about, if the sender may speak for it."""
        framework = self.frameworks.get(framework_id) if isinstance(framework_id, str) else None
        if framework is None:
            self._invalid(what, sender, f"Framework {framework_id!r} is not registered", fatal=True)
            return None
        if framework.pid != sender:
            self._invalid(
                what, sender, f"{sender} does not speak for framework {framework_id}", fatal=True
            )
            return None
        return framework

    # ================================================================== frameworks

    @handler(RegisterFramework.NAME)
    def register_framework(self, sender: UPID, body: Any) -> None:
        if not isinstance(body, RegisterFramework) or not isinstance(body.framework, FrameworkInfo):
            self._reject_registration(sender, "RegisterFramework needs a FrameworkInfo")
            return
        info = body.framework
        error = self._check_framework_info(info)
        if error:
            self._reject_registration(sender, error)
            return
        if info.id:
            # A framework with an id asking to register is failing over.
            self.reregister_framework(sender, ReregisterFramework(info, failover=True))
            return
        existing = self.framework_by_pid.get(sender)
        if existing is not None:
            # Our FrameworkRegistered was lost and the driver retried: answer again.
            self.send(sender, FrameworkRegistered.NAME, FrameworkRegistered(existing, self.info))
            return
        info.id = new_id()
        framework = _Framework(info=info, pid=sender, registered_time=time.time())
        self.frameworks[info.id] = framework
        self.framework_by_pid[sender] = info.id
        self.link(sender)
        self._to_allocator(AllocatorAddFramework(info.id, list(info.roles)))
        self.metrics.inc("master/frameworks_registered")
        self.log.info("framework_registered", framework_id=info.id, name=info.name, pid=str(sender))
        self.send(sender, FrameworkRegistered.NAME, FrameworkRegistered(info.id, self.info))

    def _check_framework_info(self, info: FrameworkInfo) -> str | None:
        if not isinstance(info.name, str) or not info.name:
            return "framework name must be a non-empty string"
        if not isinstance(info.user, str):
            return "framework user must be a string"
        if not isinstance(info.roles, list) or not info.roles:
            return "framework must subscribe to at least one role ('*' is the default role)"
        for role in info.roles:
            if not isinstance(role, str) or not role or role in (".", "..") or " " in role:
                return f"invalid role {role!r}"
        if info.id is not None:
            return check_id("framework id", info.id)
        if not isinstance(info.failover_timeout, int | float) or info.failover_timeout < 0:
            return "failover_timeout must be a non-negative number of seconds"
        return None

    def _reject_registration(self, sender: UPID, message: str) -> None:
        self.metrics.inc("master/invalid_messages")
        self.metrics.inc("master/invalid_messages/register_framework")
        self.log.warning("framework_rejected", sender=str(sender), reason=message)
        self.send(sender, FrameworkError.NAME, FrameworkError(message))

    @handler(ReregisterFramework.NAME)
    def reregister_framework(self, sender: UPID, body: Any) -> None:
        if not isinstance(body, ReregisterFramework) or not isinstance(
            body.framework, FrameworkInfo
        ):
            self._reject_registration(sender, "ReregisterFramework needs a FrameworkInfo")
            return
        info = body.framework
        error = self._check_framework_info(info) or (None if info.id else "framework id missing")
        if error:
            self._reject_registration(sender, error)
            return
        fid: str = info.id  # type: ignore[assignment]
        framework = self.frameworks.get(fid)
        if framework is None:
            if any(f.id == fid for f in self.completed_frameworks):
                self._reject_registration(sender, f"framework {fid} has been removed")
                return
            # Unknown id: the master restarted (or is a new leader). Take the framework back;
            # its tasks return as agents reregister.
            framework = _Framework(info=info, pid=sender, registered_time=time.time())
            self.frameworks[fid] = framework
            self._to_allocator(AllocatorAddFramework(fid, list(info.roles)))
        else:
            old_pid = framework.pid
            if old_pid is not None and old_pid != sender:
                # Failover to a new scheduler: the old one must stop acting for the framework.
                self.framework_by_pid.pop(old_pid, None)
                self.unlink(old_pid)
                self.send(old_pid, FrameworkError.NAME, FrameworkError("Framework failed over"))
            if framework.failover_timer is not None:
                framework.failover_timer.cancel()
                framework.failover_timer = None
            framework.info = info
            framework.pid = sender
            for offer_id in list(framework.offers):
                self._rescind(offer_id, notify=False)
            if not framework.active:
                framework.active = True
                self._to_allocator(AllocatorActivateFramework(fid))
        framework.connected = True
        framework.active = True
        self.framework_by_pid[sender] = fid
        self.link(sender)
        for agent in self.agents.values():
            if any(key[0] == fid for key in agent.tasks) or any(
                key[0] == fid for key in agent.executors
            ):
                self.send(agent.pid, UpdateFramework.NAME, UpdateFramework(fid, str(sender)))
        self.metrics.inc("master/frameworks_reregistered")
        self.log.info("framework_reregistered", framework_id=fid, pid=str(sender))
        self.send(sender, FrameworkReregistered.NAME, FrameworkReregistered(fid, self.info))

    @handler(UnregisterFramework.NAME)
    def unregister_framework(self, sender: UPID, body: Any) -> None:
        framework = self._framework_of(sender, getattr(body, "framework_id", None), "teardown")
        if framework is not None:
            self.log.info("framework_teardown", framework_id=framework.id)
            self._remove_framework(framework)

    @handler(DeactivateFramework.NAME)
    def deactivate_framework(self, sender: UPID, body: Any) -> None:
        framework = self._framework_of(sender, getattr(body, "framework_id", None), "deactivate")
        if framework is not None:
            self._disconnect_framework(framework)

    def _disconnect_framework(self, framework: _Framework) -> None:
        """The scheduler is gone for now: no offers; tasks wait ``failover_timeout``."""
        if framework.pid is not None:
            self.framework_by_pid.pop(framework.pid, None)
            self.unlink(framework.pid)
        framework.connected = False
        if framework.active:
            framework.active = False
            self._to_allocator(AllocatorDeactivateFramework(framework.id))
        for offer_id in list(framework.offers):
            self._rescind(offer_id, notify=False)
        timeout = float(framework.info.failover_timeout or 0.0)
        self.log.info("framework_disconnected", framework_id=framework.id, failover_timeout=timeout)
        if framework.failover_timer is not None:
            framework.failover_timer.cancel()
        framework.failover_timer = self.delay(timeout, self._failover_expired, framework.id)

    def _failover_expired(self, framework_id: str) -> None:
        framework = self.frameworks.get(framework_id)
        if framework is None or framework.connected:
            return
        self.metrics.inc("master/frameworks_failover_expired")
        self.log.info("framework_failover_timeout", framework_id=framework_id)
        self._remove_framework(framework)

    def _remove_framework(self, framework: _Framework) -> None:
        """Tear a framework down: its tasks are killed, its offers withdrawn, it is forgotten."""
        fid = framework.id
        if framework.failover_timer is not None:
            framework.failover_timer.cancel()
        for offer_id in list(framework.offers):
            self._rescind(offer_id, notify=False)
        agents = {t.agent_id for t in framework.tasks.values()}
        agents.update(aid for aid, _eid in framework.executors)
        for agent_id in agents:
            agent = self.agents.get(agent_id)
            if agent is not None:
                self.send(agent.pid, ShutdownFramework.NAME, ShutdownFramework(fid))
        for task in list(framework.tasks.values()):
            if not is_terminal(task.state):
                task.state = TaskState.TASK_KILLED
            self._remove_task(task, framework)
        for agent_id, eid in list(framework.executors):
            agent = self.agents.get(agent_id)
            if agent is not None:
                agent.executors.pop((fid, eid), None)
        framework.executors.clear()
        if framework.pid is not None:
            self.framework_by_pid.pop(framework.pid, None)
            self.unlink(framework.pid)
        framework.active = framework.connected = False
        framework.unregistered_time = time.time()
        del self.frameworks[fid]
        self.completed_frameworks.append(framework)
        self._to_allocator(AllocatorRemoveFramework(fid))
        self.metrics.inc("master/frameworks_removed")

    def exited(self, pid: UPID) -> None:
        fid = self.framework_by_pid.get(pid)
        if fid is not None and fid in self.frameworks:
            self.metrics.inc("master/frameworks_disconnected")
            self._disconnect_framework(self.frameworks[fid])
            return
        aid = self.agent_by_pid.get(pid)
        if aid is not None and aid in self.agents:
            agent = self.agents[aid]
            if agent.connected:
                # Not yet unreachable: pings decide that. Stop offering its resources now.
                self.log.info("agent_disconnected", agent_id=aid, pid=str(pid))
                agent.connected = False
                for offer_id in list(agent.offers):
                    self._rescind(offer_id)
                self._to_allocator(AllocatorDeactivateAgent(aid))

    # ================================================================== offers

    @handler(Allocations.NAME)
    def allocations(self, sender: UPID, body: Any) -> None:
        if sender != self.allocator_pid:
            self._invalid("allocations", sender, "only the allocator hands out resources")
            return
        by_framework: dict[str, list[Offer]] = {}
        roles = body.roles if isinstance(body.roles, list) else []
        for i, (framework_id, agent_id, resources) in enumerate(body.items):
            role = roles[i] if i < len(roles) else None
            framework = self.frameworks.get(framework_id)
            agent = self.agents.get(agent_id)
            if (
                framework is None
                or not framework.active
                or framework.pid is None
                or agent is None
                or not agent.connected
            ):
                if agent is not None and framework is not None:
                    self._recover(agent_id, framework_id, resources, role=role)
                continue
            offer = Offer(
                id=f"{self.master_id}-O{next(self._offer_ids)}",
                framework_id=framework_id,
                agent_id=agent_id,
                hostname=agent.info.hostname,
                resources=str(resources),
                attributes=agent.info.attributes,
                url=str(agent.pid),
                allocation_role=role,
            )
            record = _Offer(offer.id, framework_id, agent_id, resources, role)
            if self.flags.offer_timeout is not None:
                record.timer = self.delay(self.flags.offer_timeout, self._offer_expired, offer.id)
            self.offers[offer.id] = record
            framework.offers.add(offer.id)
            agent.offers.add(offer.id)
            by_framework.setdefault(framework_id, []).append(offer)
        for framework_id, offers in by_framework.items():
            framework = self.frameworks[framework_id]
            self.metrics.inc("master/offers_sent", len(offers))
            self.send(framework.pid, ResourceOffers.NAME, ResourceOffers(offers))  # type: ignore[arg-type]

    def _recover(
        self,
        agent_id: str,
        framework_id: str,
        resources: Resources,
        refuse: float | None = None,
        role: str | None = None,
    ) -> None:
        if resources:
            self._to_allocator(
                AllocatorRecoverResources(agent_id, framework_id, resources, refuse, role)
            )

    def _take_offer(self, offer_id: str) -> _Offer | None:
        record = self.offers.pop(offer_id, None)
        if record is None:
            return None
        if record.timer is not None:
            record.timer.cancel()
        framework = self.frameworks.get(record.framework_id)
        if framework is not None:
            framework.offers.discard(offer_id)
        agent = self.agents.get(record.agent_id)
        if agent is not None:
            agent.offers.discard(offer_id)
        return record

    def _rescind(self, offer_id: str, notify: bool = True, recover: bool = True) -> None:
        record = self._take_offer(offer_id)
        if record is None:
            return
        self.metrics.inc("master/offers_rescinded")
        framework = self.frameworks.get(record.framework_id)
        if notify and framework is not None and framework.pid is not None:
            self.send(framework.pid, RescindOffer.NAME, RescindOffer(offer_id))
        if recover and record.agent_id in self.agents:
            self._recover(record.agent_id, record.framework_id, record.resources, role=record.role)

    def _offer_expired(self, offer_id: str) -> None:
        if offer_id in self.offers:
            self.metrics.inc("master/offers_expired")
            self._rescind(offer_id)

    @handler(DeclineOffers.NAME)
    def decline_offers(self, sender: UPID, body: Any) -> None:
        framework = self._framework_of(sender, getattr(body, "framework_id", None), "decline")
        if framework is None:
            return
        refuse = _refuse_seconds(body.refuse_seconds)
        for offer_id in body.offer_ids if isinstance(body.offer_ids, list) else []:
            record = self.offers.get(offer_id)
            if record is None or record.framework_id != framework.id:
                self.metrics.inc("master/invalid_declines")
                continue
            self._take_offer(offer_id)
            self.metrics.inc("master/offers_declined")
            self._recover(record.agent_id, framework.id, record.resources, refuse, record.role)

    @handler(AcceptOffers.NAME)
    def accept_offers(self, sender: UPID, body: Any) -> None:
        framework = self._framework_of(sender, getattr(body, "framework_id", None), "accept")
        if framework is None:
            return
        tasks: list[Any] = body.tasks if isinstance(body.tasks, list) else []
        offer_ids: list[Any] = body.offer_ids if isinstance(body.offer_ids, list) else []
        refuse = _refuse_seconds(body.refuse_seconds)

        # 1. The offers: all known, all this framework's, all on one agent, none used twice.
        error = None
        if not offer_ids:
            error = "no offers given"
        elif len(set(map(str, offer_ids))) != len(offer_ids):
            error = "an offer id appears more than once"
        records: list[_Offer] = []
        for offer_id in offer_ids:
            record = self.offers.get(offer_id) if isinstance(offer_id, str) else None
            if record is None:
                error = error or f"offer {offer_id!r} is no longer valid"
            elif record.framework_id != framework.id:
                error = error or f"offer {offer_id!r} belongs to another framework"
                record = None
            if record is not None:
                records.append(record)
        agents = {r.agent_id for r in records}
        if len(agents) > 1:
            error = error or "offers span more than one agent"
        agent = self.agents.get(next(iter(agents))) if len(agents) == 1 else None
        if len({r.role for r in records}) > 1:
            error = error or "offers were allocated to different roles"
        if error is None and (agent is None or not agent.connected):
            error = "the offers' agent is no longer available"
        if error is not None:
            # Valid offers among them go back untouched (no filter); every task is dropped.
            for record in records:
                self._take_offer(record.id)
                self._recover(record.agent_id, framework.id, record.resources, role=record.role)
            self.metrics.inc("master/invalid_accepts")
            for task in tasks:
                self._task_error(
                    framework,
                    task,
                    TaskState.TASK_DROPPED,
                    Reason.REASON_INVALID_OFFERS,
                    f"Task launched with invalid offers: {error}",
                )
            if not tasks:
                self._invalid("accept", sender, error)
            return

        assert agent is not None
        role = records[0].role
        remaining = Resources.sum(r.resources for r in records)
        for record in records:
            self._take_offer(record.id)
        self.metrics.inc("master/offers_accepted", len(records))

        # 2. The tasks, in order, each paid for out of what remains of the offers.
        seen: set[str] = set()
        launched: list[TaskInfo] = []
        for task in tasks:
            problem, resources = check_task(task, agent.id)
            if problem is None:
                assert resources is not None
                if task.task_id in framework.tasks or task.task_id in seen:
                    problem = f"task id {task.task_id!r} is already in use by this framework"
                else:
                    needed = resources
                    executor = task.executor
                    if executor is not None:
                        key = (agent.id, executor.executor_id)
                        if key not in framework.executors and executor.resources:
                            try:
                                needed = needed + parse_resources(executor.resources)
                            except ResourceError as e:
                                problem = f"invalid executor resources: {e}"
                    if problem is None and not remaining.contains(needed):
                        problem = (
                            f"task uses more resources ({needed}) than remain in its offers"
                            f" ({remaining})"
                        )
            if problem is not None:
                self._task_error(
                    framework, task, TaskState.TASK_ERROR, Reason.REASON_TASK_INVALID, problem
                )
                continue
            assert resources is not None
            seen.add(task.task_id)
            remaining = remaining - needed
            self._launch(framework, agent, task, resources, needed - resources, role)
            launched.append(task)
        if len(launched) == 1:
            only = launched[0]
            self.send(agent.pid, RunTask.NAME, RunTask(framework.info, str(framework.pid), only))
        elif launched:
            self.send(
                agent.pid,
                RunTasks.NAME,
                RunTasks(framework.info, str(framework.pid), launched),
            )

        # 3. Whatever was not used goes back, filtered for refuse_seconds.
        self._recover(agent.id, framework.id, remaining, refuse, role)

    def _launch(
        self,
        framework: _Framework,
        agent: _Agent,
        task: TaskInfo,
        resources: Resources,
        executor_resources: Resources,
        role: str | None,
    ) -> None:
        task.agent_id = agent.id
        executor_id = task.executor.executor_id if task.executor is not None else None
        if task.executor is not None:
            task.executor.framework_id = framework.id
            key = (agent.id, task.executor.executor_id)
            if key not in framework.executors:
                framework.executors[key] = executor_resources
                agent.executors[(framework.id, task.executor.executor_id)] = executor_resources
        record = _Task(
            info=task,
            framework_id=framework.id,
            agent_id=agent.id,
            resources=resources,
            executor_id=executor_id,
            role=role,
        )
        framework.tasks[task.task_id] = record
        agent.tasks[(framework.id, task.task_id)] = record
        self.metrics.inc("master/tasks_launched")  # (the caller sends it, with its siblings)

    def _task_error(
        self, framework: _Framework, task: Any, state: str, reason: str, message: str
    ) -> None:
        """Answer a task we will not launch; master-made updates need no acknowledgement."""
        task_id = getattr(task, "task_id", None)
        task_id = task_id if isinstance(task_id, str) else repr(task_id)
        self.metrics.inc(f"master/tasks_{state.lower().removeprefix('task_')}")
        self.log.info(
            "task_rejected", framework_id=framework.id, task_id=task_id, state=state, why=message
        )
        status = TaskStatus(
            task_id=task_id,
            state=state,
            message=message,
            source=Source.SOURCE_MASTER,
            reason=reason,
            agent_id=getattr(task, "agent_id", None) or None,
            timestamp=time.time(),
        )
        self.send(framework.pid, StatusUpdate.NAME, StatusUpdate(framework.id, status))  # type: ignore[arg-type]

    # ================================================================== framework calls

    @handler(KillTask.NAME)
    def kill_task(self, sender: UPID, body: Any) -> None:
        framework = self._framework_of(sender, getattr(body, "framework_id", None), "kill")
        if framework is None:
            return
        task = framework.tasks.get(body.task_id)
        if task is None:
            # Unknown to us: answer as reconciliation would (Mesos does the same).
            self.metrics.inc("master/kill_unknown_task")
            self._reconcile_one(framework, body.task_id, body.agent_id)
            return
        agent = self.agents.get(task.agent_id)
        if agent is None:
            self.metrics.inc("master/kill_task_agent_unreachable")
            return
        self.metrics.inc("master/tasks_kill_requested")
        self.send(
            agent.pid,
            KillTask.NAME,
            KillTask(framework.id, task.info.task_id, agent.id, body.grace_period),
        )

    @handler(ReviveOffers.NAME)
    def revive_offers(self, sender: UPID, body: Any) -> None:
        self._offer_wish(sender, body, "revive", AllocatorRevive)

    @handler(SuppressOffers.NAME)
    def suppress_offers(self, sender: UPID, body: Any) -> None:
        self._offer_wish(sender, body, "suppress", AllocatorSuppress)

    def _offer_wish(self, sender: UPID, body: Any, kind: str, message: Any) -> None:
        """A framework wants offers again (revive) or no more (suppress), for its roles."""
        framework = self._framework_of(sender, getattr(body, "framework_id", None), kind)
        if framework is not None:
            self.metrics.inc(f"master/{kind}")
            self._to_allocator(message(framework.id, list(body.roles or [])))

    @handler(ReconcileTasks.NAME)
    def reconcile_tasks(self, sender: UPID, body: Any) -> None:
        framework = self._framework_of(sender, getattr(body, "framework_id", None), "reconcile")
        if framework is None:
            return
        self.metrics.inc("master/reconciliations")
        wanted = body.tasks if isinstance(body.tasks, list) else []
        if not wanted:
            # Implicit: the latest state of every task the master knows for the framework.
            for task in list(framework.tasks.values()):
                self._send_reconciled(
                    framework, task.info.task_id, task.agent_id, task.told or task.state
                )
            return
        for entry in wanted:
            if isinstance(entry, list | tuple) and entry:
                task_id = entry[0]
                agent_id = entry[1] if len(entry) > 1 else None
            else:
                task_id, agent_id = (
                    getattr(entry, "task_id", None),
                    getattr(entry, "agent_id", None),
                )
            self._reconcile_one(framework, task_id, agent_id)

    def _reconcile_one(self, framework: _Framework, task_id: Any, agent_id: Any) -> None:
        task = framework.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is not None:
            # What the framework was last sent, as Mesos answers (its next update is on its
            # way): not a terminal latest_state the framework would take for the task's end
            # before the end's own update, with its reason and message, arrives.
            self._send_reconciled(
                framework, task.info.task_id, task.agent_id, task.told or task.state
            )
            return
        pa = framework.info.partition_aware
        if isinstance(agent_id, str) and agent_id in self.unreachable:
            state = TaskState.TASK_UNREACHABLE if pa else TaskState.TASK_LOST
        elif isinstance(agent_id, str) and agent_id in self.agents:
            state = TaskState.TASK_GONE if pa else TaskState.TASK_LOST
        else:
            state = TaskState.TASK_UNKNOWN if pa else TaskState.TASK_LOST
        self._send_reconciled(framework, str(task_id), agent_id, state)

    def _send_reconciled(
        self, framework: _Framework, task_id: str, agent_id: Any, state: str
    ) -> None:
        status = TaskStatus(
            task_id=task_id,
            state=state,
            message="Reconciliation: latest task state",
            source=Source.SOURCE_MASTER,
            reason=Reason.REASON_RECONCILIATION,
            agent_id=agent_id if isinstance(agent_id, str) else None,
            timestamp=time.time(),
        )
        if framework.pid is not None:
            self.send(framework.pid, StatusUpdate.NAME, StatusUpdate(framework.id, status))

    @handler(StatusUpdateAcknowledgement.NAME)
    def acknowledge(self, sender: UPID, body: Any) -> None:
        framework = self._framework_of(sender, getattr(body, "framework_id", None), "ack")
        if framework is None:
            return
        agent = self._acknowledged(framework, body.agent_id, body.task_id, body.uuid)
        if agent is not None:
            self.send(agent.pid, StatusUpdateAcknowledgement.NAME, body)

    @handler(StatusUpdateAcknowledgements.NAME)
    def acknowledge_many(self, sender: UPID, body: Any) -> None:
        """Several acknowledgements of one framework, each as its own message would be; each
        agent gets those of its updates in one message."""
        framework = self._framework_of(sender, getattr(body, "framework_id", None), "ack")
        if framework is None:
            return
        agent_ids, task_ids, uuids = body.agent_ids, body.task_ids, body.uuids
        if (
            not isinstance(agent_ids, list)
            or not isinstance(task_ids, list)
            or not isinstance(uuids, list)
            or not len(agent_ids) == len(task_ids) == len(uuids)
        ):
            self._invalid("acks", sender, "agent_ids, task_ids and uuids must be lists alike")
            return
        by_agent: dict[str, tuple[_Agent, list[str], list[bytes]]] = {}
        for agent_id, task_id, uuid in zip(agent_ids, task_ids, uuids, strict=True):
            if type(agent_id) is not str or type(task_id) is not str or type(uuid) is not bytes:
                self._invalid("acks", sender, f"a bad acknowledgement for {task_id!r}")
                continue
            agent = self._acknowledged(framework, agent_id, task_id, uuid)
            if agent is None:
                continue
            entry = by_agent.get(agent_id)
            if entry is None:
                by_agent[agent_id] = (agent, [task_id], [uuid])
            else:
                entry[1].append(task_id)
                entry[2].append(uuid)
        fid = framework.id
        for agent_id, (agent, tids, uids) in by_agent.items():
            if len(tids) == 1:
                ack: Any = StatusUpdateAcknowledgement(fid, agent_id, tids[0], uids[0])
            else:
                ack = StatusUpdateAcknowledgements(fid, [agent_id] * len(tids), tids, uids)
            self.send(agent.pid, ack.NAME, ack)

    def _acknowledged(
        self, framework: _Framework, agent_id: Any, task_id: Any, uuid: Any
    ) -> _Agent | None:
        """One acknowledgement: an ended task's last update is acknowledged, so the master
        forgets the task (not before: the framework is told each update, and the last may
        still be on its way when ``latest_state`` ended the task). Returns the agent to pass
        the acknowledgement on to."""
        agent = self.agents.get(agent_id)
        if agent is None:
            self.metrics.inc("master/acks_for_unknown_agent")
            return None
        self.metrics.inc("master/status_update_acks")
        task = framework.tasks.get(task_id)
        status = task.status if task is not None else None
        if status is not None and status.uuid == uuid and is_terminal(status.state):
            self._remove_task(task, framework)  # type: ignore[arg-type]
        return agent

    @handler(FrameworkToExecutor.NAME)
    def framework_to_executor(self, sender: UPID, body: Any) -> None:
        framework = self._framework_of(sender, getattr(body, "framework_id", None), "message")
        if framework is None:
            return
        agent = self.agents.get(body.agent_id)
        if agent is None:
            self.metrics.inc("master/messages_to_unknown_agent")
            return
        self.metrics.inc("master/framework_messages")
        self.send(agent.pid, FrameworkToExecutor.NAME, body)

    # ================================================================== agents

    @handler(RegisterAgent.NAME)
    def register_agent(self, sender: UPID, body: Any) -> None:
        if not isinstance(body, RegisterAgent) or not isinstance(body.agent, AgentInfo):
            self._invalid("register_agent", sender, "RegisterAgent needs an AgentInfo")
            return
        existing = self.agent_by_pid.get(sender)
        if existing is not None and existing in self.agents:
            self.send(
                sender,
                AgentRegistered.NAME,
                AgentRegistered(existing, self.flags.agent_ping_interval),
            )
            return
        try:
            total = parse_resources(body.agent.resources)
        except (ResourceError, TypeError) as e:
            self._invalid("register_agent", sender, f"bad resources: {e}")
            return
        info = body.agent
        info.id = new_id("A-")
        self._add_agent_to_allocator(self._admit_agent(sender, info, total))
        self.metrics.inc("master/agents_registered_total")
        self.log.info("agent_registered", agent_id=info.id, pid=str(sender), resources=str(total))
        self.send(
            sender, AgentRegistered.NAME, AgentRegistered(info.id, self.flags.agent_ping_interval)
        )

    def _admit_agent(self, pid: UPID, info: AgentInfo, total: Resources) -> _Agent:
        agent = _Agent(info=info, pid=pid, total=total, registered_time=time.time())
        self.agents[info.id] = agent  # type: ignore[index]
        self.agent_by_pid[pid] = info.id  # type: ignore[assignment]
        self.link(pid)
        return agent

    def _add_agent_to_allocator(self, agent: _Agent) -> None:
        info = agent.info
        self._to_allocator(
            AllocatorAddAgent(
                agent.id, info.hostname, agent.total, agent.used_by_framework(), info.attributes
            )
        )

    @handler(ReregisterAgent.NAME)
    def reregister_agent(self, sender: UPID, body: Any) -> None:
        if (
            not isinstance(body, ReregisterAgent)
            or not isinstance(body.agent, AgentInfo)
            or not body.agent.id
        ):
            self._invalid("reregister_agent", sender, "ReregisterAgent needs an AgentInfo with id")
            return
        info = body.agent
        aid: str = info.id  # type: ignore[assignment]
        try:
            total = parse_resources(info.resources)
        except (ResourceError, TypeError) as e:
            self._invalid("reregister_agent", sender, f"bad resources: {e}")
            return
        old = self.agents.get(aid)
        previous_tasks: dict[tuple[str, str], _Task] = {}
        if old is not None:
            # Known and registered: a reconnect (new pid after a restart, or a blip).
            previous_tasks = dict(old.tasks)
            self._drop_agent(old, remove_from_allocator=True)
        elif aid in self.unreachable:
            previous_tasks = dict(self.unreachable.pop(aid)[0].tasks)
        agent = None
        kill: list[list[str]] = []
        reported: dict[tuple[str, str], TaskStatus | None] = {}
        states = {s.task_id: s for s in body.task_states if isinstance(s, TaskStatus)}
        tasks: list[_Task] = []
        owners = body.task_frameworks if isinstance(body.task_frameworks, list) else []
        for i, task in enumerate(body.tasks):
            if not isinstance(task, TaskInfo):
                continue
            fid = owners[i] if i < len(owners) and isinstance(owners[i], str) else None
            status = states.get(task.task_id)
            if fid is None:
                self.metrics.inc("master/reregistered_tasks_without_framework")
                continue
            if fid not in self.frameworks:
                if any(f.id == fid for f in self.completed_frameworks):
                    kill.append([fid, task.task_id])
                    continue
                info_f = next((f for f in body.frameworks if f.id == fid), None)
                if info_f is None:
                    continue
                # A framework we have not heard from yet (master restarted): hold its place.
                framework = _Framework(
                    info=info_f,
                    pid=None,
                    registered_time=time.time(),
                    active=False,
                    connected=False,
                )
                self.frameworks[fid] = framework
                self._to_allocator(AllocatorAddFramework(fid, list(info_f.roles)))
                self._to_allocator(AllocatorDeactivateFramework(fid))
                framework.failover_timer = self.delay(
                    float(info_f.failover_timeout or 0.0), self._failover_expired, fid
                )
            try:
                resources = parse_resources(task.resources)
            except ResourceError:
                continue
            state = status.state if status is not None else TaskState.TASK_STAGING
            record = _Task(
                info=task,
                framework_id=fid,
                agent_id=aid,
                resources=resources,
                executor_id=task.executor.executor_id if task.executor is not None else None,
                state=state,
                status=status,
            )
            reported[(fid, task.task_id)] = status
            tasks.append(record)
        agent = self._admit_agent(sender, info, total)
        for record in tasks:
            framework = self.frameworks[record.framework_id]
            framework.tasks[record.info.task_id] = record
            agent.tasks[(record.framework_id, record.info.task_id)] = record
        for ex in body.executors:
            if getattr(ex, "framework_id", None) in self.frameworks:
                res = parse_resources(ex.resources) if ex.resources else Resources.empty()
                agent.executors[(ex.framework_id, ex.executor_id)] = res
                self.frameworks[ex.framework_id].executors[(aid, ex.executor_id)] = res
        self._add_agent_to_allocator(agent)
        # Tasks we believed ran there but the agent did not report are gone.
        for key, task in previous_tasks.items():
            if key in reported or task.told_ended:
                continue
            framework = self.frameworks.get(task.framework_id)
            if framework is None:
                continue
            framework.tasks.pop(task.info.task_id, None)
            task.state = _gone_state(task, framework)
            self._send_master_update(
                framework,
                task,
                task.state,
                Reason.REASON_AGENT_RESTARTED,
                "Task was not reported by its reregistering agent",
            )
            framework.completed.append(_completed(task))
        # Tasks that were reported unreachable are back: tell their frameworks where they are.
        for key, _status in reported.items():
            previous = previous_tasks.get(key)
            framework = self.frameworks.get(key[0])
            if previous is not None and previous.unreachable and framework is not None:
                task = agent.tasks[key]
                self._send_master_update(
                    framework,
                    task,
                    task.state,
                    Reason.REASON_RECONCILIATION,
                    "Agent reregistered; task is back",
                )
        self.metrics.inc("master/agents_reregistered")
        self.log.info("agent_reregistered", agent_id=aid, pid=str(sender), tasks=len(tasks))
        self.send(
            sender,
            AgentReregistered.NAME,
            AgentReregistered(aid, self.flags.agent_ping_interval, kill),
        )

    def _send_master_update(
        self, framework: _Framework, task: _Task, state: str, reason: str, message: str
    ) -> None:
        status = TaskStatus(
            task_id=task.info.task_id,
            state=state,
            message=message,
            source=Source.SOURCE_MASTER,
            reason=reason,
            agent_id=task.agent_id,
            executor_id=task.executor_id,
            timestamp=time.time(),
        )
        task.statuses.append({"state": state, "timestamp": status.timestamp})
        task.status = status
        if framework.pid is not None and framework.connected:
            self.send(framework.pid, StatusUpdate.NAME, StatusUpdate(framework.id, status))

    @handler(UnregisterAgent.NAME)
    def unregister_agent(self, sender: UPID, body: Any) -> None:
        aid = self.agent_by_pid.get(sender)
        if aid is None or aid not in self.agents or getattr(body, "agent_id", None) != aid:
            self._invalid("unregister_agent", sender, "unknown agent")
            return
        agent = self.agents[aid]
        self.log.info("agent_unregistered", agent_id=aid)
        self._drop_agent(agent, remove_from_allocator=True)
        for task in list(agent.tasks.values()):
            framework = self.frameworks.get(task.framework_id)
            if framework is None or task.told_ended:
                continue
            task.state = _gone_state(task, framework)
            self._send_master_update(
                framework, task, task.state, Reason.REASON_AGENT_REMOVED, "Agent was removed"
            )
            self._remove_task(task, framework)

    def _drop_agent(self, agent: _Agent, remove_from_allocator: bool) -> None:
        """Forget an agent's registration (its tasks are handled by the caller)."""
        for offer_id in list(agent.offers):
            self._rescind(offer_id, recover=False)
        self.agents.pop(agent.id, None)
        if self.agent_by_pid.get(agent.pid) == agent.id:
            del self.agent_by_pid[agent.pid]
            self.unlink(agent.pid)
        for fid, eid in agent.executors:
            framework = self.frameworks.get(fid)
            if framework is not None:
                framework.executors.pop((agent.id, eid), None)
        if remove_from_allocator:
            self._to_allocator(AllocatorRemoveAgent(agent.id))

    @handler(PongAgent.NAME)
    def pong(self, sender: UPID, body: Any) -> None:
        aid = self.agent_by_pid.get(sender)
        agent = self.agents.get(aid) if aid else None
        if agent is None:
            self.metrics.inc("master/pongs_from_unknown_agents")
            return
        agent.missed_pings = 0
        if not agent.connected:
            agent.connected = True
            self.link(sender)
            self._to_allocator(AllocatorActivateAgent(agent.id))

    def _ping_agents(self) -> None:
        """One tick for every agent: ping it, and give up on those silent too long.

        A cluster is pinged in slices spread over the interval (each agent still once per
        interval; see :func:`ping_plan`). Each slice is due at a fixed time, counted from the
        first round: a timer that fires late (the master was busy) pings every slice due by
        now. Armed afresh from each late firing instead, with a hundred slices a round the
        lateness added up, a round took several intervals, and agents gave the master up for
        lost and registered again, which loaded it more.
        """
        now = Clock.now()
        interval = self.flags.agent_ping_interval
        limit = self.flags.max_agent_ping_timeouts
        if now - self._ping_due > interval:
            # More than a round behind (the master stalled): catching up would ping agents
            # several times at once, each ping a missed one until it is answered, and give up
            # on agents that did nothing wrong. Start afresh from now.
            self._ping_due = now
        while self._ping_due <= now + _PING_EARLY:
            if not self._ping_slices:
                agents = list(self.agents.values())
                size, self._ping_step = ping_plan(len(agents), interval)
                self._ping_slices = collections.deque(
                    agents[i : i + size] for i in range(0, len(agents), size)
                ) or collections.deque([[]])
            for agent in self._ping_slices.popleft():
                if self.agents.get(agent.id) is not agent:
                    continue  # removed (or re-registered) since the round began
                if agent.missed_pings >= limit:
                    self._mark_unreachable(agent)
                    continue
                agent.missed_pings += 1
                self.send(agent.pid, PingAgent.NAME, PingAgent(agent.connected))
            self._ping_due += self._ping_step
        self._ping_timer = self.delay(max(0.0, self._ping_due - now), self._ping_agents)

    def _mark_unreachable(self, agent: _Agent) -> None:
        self.metrics.inc("master/agents_marked_unreachable")
        self.log.warning("agent_unreachable", agent_id=agent.id, pid=str(agent.pid))
        self._drop_agent(agent, remove_from_allocator=True)
        self.unreachable[agent.id] = (agent, time.time())
        for task in list(agent.tasks.values()):
            framework = self.frameworks.get(task.framework_id)
            if framework is None or task.told_ended:
                continue
            if is_terminal(task.state):
                # It ended (latest_state said so) and its end's update is stuck behind the
                # partition: the framework is told that end now, not that the task is lost.
                self._send_master_update(
                    framework,
                    task,
                    task.state,
                    Reason.REASON_AGENT_REMOVED,
                    f"Agent {agent.id} is unreachable; the task had ended",
                )
                self._remove_task(task, framework)
                continue
            if framework.info.partition_aware:
                task.unreachable = True
                task.state = TaskState.TASK_UNREACHABLE
                self._send_master_update(
                    framework,
                    task,
                    task.state,
                    Reason.REASON_AGENT_REMOVED,
                    f"Agent {agent.id} is unreachable",
                )
            else:
                task.state = TaskState.TASK_LOST
                self._send_master_update(
                    framework,
                    task,
                    task.state,
                    Reason.REASON_AGENT_REMOVED,
                    f"Agent {agent.id} is unreachable",
                )
                self._remove_task(task, framework)
        for framework in self.frameworks.values():
            if framework.pid is not None and framework.connected:
                self.send(framework.pid, LostAgent.NAME, LostAgent(agent.id))

    # ================================================================== status updates

    @handler(StatusUpdate.NAME)
    def status_update(self, sender: UPID, body: Any) -> None:
        if not isinstance(body, StatusUpdate) or not isinstance(body.status, TaskStatus):
            self._invalid("status_update", sender, "StatusUpdate needs a TaskStatus")
            return
        aid = self.agent_by_pid.get(sender)
        agent = self.agents.get(aid) if aid else None
        if agent is None:
            self.metrics.inc("master/invalid_status_updates")
            self.log.warning("status_update_from_unknown_agent", sender=str(sender))
            return
        framework = self._apply_update(sender, agent, body, None)
        if framework is not None:
            self.send(framework.pid, StatusUpdate.NAME, body)  # type: ignore[arg-type]

    @handler(StatusUpdates.NAME)
    def status_updates(self, sender: UPID, body: Any) -> None:
        """Several updates from one agent, each handled as its own ``StatusUpdate`` would be.
        What they free goes back to the allocator as one recovery per framework and role, and
        each framework gets its updates in one message."""
        if not isinstance(body, StatusUpdates) or not isinstance(body.updates, list):
            self._invalid("status_update", sender, "StatusUpdates needs a list of updates")
            return
        aid = self.agent_by_pid.get(sender)
        agent = self.agents.get(aid) if aid else None
        if agent is None:
            self.metrics.inc("master/invalid_status_updates", len(body.updates))
            self.log.warning("status_update_from_unknown_agent", sender=str(sender))
            return
        freed: dict[tuple[str, str | None], list[Resources]] = {}
        out: dict[str, tuple[_Framework, list[StatusUpdate]]] = {}
        for update in body.updates:
            if not isinstance(update, StatusUpdate) or not isinstance(update.status, TaskStatus):
                self._invalid("status_update", sender, "StatusUpdate needs a TaskStatus")
                continue
            framework = self._apply_update(sender, agent, update, freed)
            if framework is not None:
                entry = out.get(framework.id)
                if entry is None:
                    out[framework.id] = (framework, [update])
                else:
                    entry[1].append(update)
        for (framework_id, role), parts in freed.items():
            self._recover(agent.id, framework_id, Resources.sum(parts), role=role)
        for framework, updates in out.values():
            if len(updates) == 1:
                self.send(framework.pid, StatusUpdate.NAME, updates[0])  # type: ignore[arg-type]
            else:
                self.send(framework.pid, StatusUpdates.NAME, StatusUpdates(updates))  # type: ignore[arg-type]

    def _apply_update(
        self,
        sender: UPID,
        agent: _Agent,
        body: StatusUpdate,
        freed: dict[tuple[str, str | None], list[Resources]] | None,
    ) -> _Framework | None:
        """Track one update from ``agent``; returns the framework to forward it to, if any.

        The resources of a task that ended are recovered at once, or, with ``freed``, added
        there (by framework and role) for the caller to recover together."""
        status = body.status
        status.agent_id = agent.id
        framework = self.frameworks.get(body.framework_id)
        if framework is None:
            # Its framework is gone: acknowledge for it so the agent stops retrying.
            self.metrics.inc("master/status_updates_for_unknown_framework")
            if status.uuid is not None:
                self.send(
                    sender,
                    StatusUpdateAcknowledgement.NAME,
                    StatusUpdateAcknowledgement(
                        body.framework_id, agent.id, status.task_id, status.uuid
                    ),
                )
            return None
        task = framework.tasks.get(status.task_id)
        if task is not None:
            was_terminal = is_terminal(task.state)
            # The task's state is the latest the agent knows (Mesos's latest_state), which may
            # be terminal while the update itself, what the framework is told, is not yet.
            state = status.state
            latest = body.latest_state
            if type(latest) is str and latest != state and is_terminal(latest):
                state = latest
                if not was_terminal:
                    self.metrics.inc("master/tasks_ended_by_latest_state")
            task.state = state
            task.status = status
            task.unreachable = False
            task.statuses.append({"state": status.state, "timestamp": status.timestamp})
            if is_terminal(state) and not was_terminal:
                self.metrics.inc(f"master/tasks_{state.lower().removeprefix('task_')}")
                # The resources are free now; the task itself stays until acknowledged.
                if freed is None:
                    self._recover(agent.id, framework.id, task.resources, role=task.role)
                else:
                    key = (framework.id, task.role)
                    parts = freed.get(key)
                    if parts is None:
                        freed[key] = [task.resources]
                    else:
                        parts.append(task.resources)
                if status.uuid is None and is_terminal(status.state):
                    self._remove_task(task, framework)
        self.metrics.inc("master/status_updates")
        if framework.pid is not None and framework.connected:
            return framework
        return None

    def _remove_task(self, task: _Task, framework: _Framework) -> None:
        framework.tasks.pop(task.info.task_id, None)
        agent = self.agents.get(task.agent_id)
        if agent is not None:
            agent.tasks.pop((framework.id, task.info.task_id), None)
        framework.completed.append(_completed(task))

    @handler(ExitedExecutor.NAME)
    def exited_executor(self, sender: UPID, body: Any) -> None:
        aid = self.agent_by_pid.get(sender)
        agent = self.agents.get(aid) if aid else None
        if agent is None or not isinstance(body, ExitedExecutor):
            self.metrics.inc("master/invalid_messages")
            return
        self.metrics.inc("master/executors_exited")
        resources = agent.executors.pop((body.framework_id, body.executor_id), None)
        framework = self.frameworks.get(body.framework_id)
        if framework is not None:
            framework.executors.pop((agent.id, body.executor_id), None)
        if resources:
            self._recover(agent.id, body.framework_id, resources)

    @handler(ExecutorToFramework.NAME)
    def executor_to_framework(self, sender: UPID, body: Any) -> None:
        framework = self.frameworks.get(getattr(body, "framework_id", None))  # type: ignore[arg-type]
        if framework is None or framework.pid is None or sender not in self.agent_by_pid:
            self.metrics.inc("master/invalid_framework_messages")
            return
        self.metrics.inc("master/executor_messages")
        self.send(framework.pid, ExecutorToFramework.NAME, body)

    @handler(RegisterExecutor.NAME)
    def misdirected_executor(self, sender: UPID, body: Any) -> None:
        self._invalid("register_executor", sender, "executors register with their agent")

    # ================================================================== HTTP

    @route("state")
    def state(self, request: Any) -> dict[str, Any]:
        """``/master/state``: Mesos's field names where they exist."""
        total = Resources.sum(a.total for a in self.agents.values())
        used = Resources.sum(a.used() for a in self.agents.values())
        offered = Resources.sum(o.resources for o in self.offers.values())
        return {
            "version": "0.1.0",
            "id": self.master_id,
            "pid": str(self.pid),
            "hostname": self.info.hostname,
            "leader": str(self.pid),
            "leader_info": {
                "id": self.master_id,
                "pid": str(self.pid),
                "hostname": self.info.hostname,
                "port": self.pid.port,
            },
            "start_time": self.start_time,
            "activated_agents": sum(a.connected for a in self.agents.values()),
            "deactivated_agents": sum(not a.connected for a in self.agents.values()),
            "unreachable_agents": len(self.unreachable),
            "resources": {
                "total": _resources_json(total),
                "used": _resources_json(used),
                "offered": _resources_json(offered),
            },
            "frameworks": [self._framework_json(f) for f in self.frameworks.values()],
            "completed_frameworks": [self._framework_json(f) for f in self.completed_frameworks],
            "agents": [self._agent_json(a) for a in self.agents.values()],
            "unreachable": [
                {"id": aid, "hostname": a.info.hostname, "since": t}
                for aid, (a, t) in self.unreachable.items()
            ],
            "offers": [self._offer_json(o) for o in self.offers.values()],
        }

    @route("health")
    def health(self, request: Any) -> dict[str, Any]:
        return {"healthy": True, "pid": str(self.pid)}

    def _framework_json(self, f: _Framework) -> dict[str, Any]:
        used = Resources.sum(
            [t.resources for t in f.tasks.values() if not is_terminal(t.state)]
            + list(f.executors.values())
        )
        return {
            "id": f.id,
            "name": f.info.name,
            "user": f.info.user,
            "roles": list(f.info.roles),
            "principal": f.info.principal,
            "pid": str(f.pid) if f.pid else None,
            "active": f.active,
            "connected": f.connected,
            "failover_timeout": f.info.failover_timeout,
            "checkpoint": f.info.checkpoint,
            "capabilities": list(f.info.capabilities),
            "registered_time": f.registered_time,
            "unregistered_time": f.unregistered_time,
            "used_resources": _resources_json(used),
            "offered_resources": _resources_json(
                Resources.sum(self.offers[o].resources for o in f.offers if o in self.offers)
            ),
            "tasks": [_task_json(t) for t in f.tasks.values()],
            "completed_tasks": [_completed_json(t) for t in f.completed],
            "offers": [self._offer_json(self.offers[o]) for o in f.offers if o in self.offers],
            "executors": [{"agent_id": a, "executor_id": e} for a, e in f.executors],
        }

    def _agent_json(self, a: _Agent) -> dict[str, Any]:
        return {
            "id": a.id,
            "pid": str(a.pid),
            "hostname": a.info.hostname,
            "port": a.info.port,
            "http_port": a.info.http_port,
            "resources": _resources_json(a.total),
            "used_resources": _resources_json(a.used()),
            "offered_resources": _resources_json(
                Resources.sum(self.offers[o].resources for o in a.offers if o in self.offers)
            ),
            "attributes": a.info.attributes,
            "active": a.connected,
            "registered_time": a.registered_time,
            "tasks": len(a.tasks),
        }

    def _offer_json(self, o: _Offer) -> dict[str, Any]:
        return {
            "id": o.id,
            "framework_id": o.framework_id,
            "agent_id": o.agent_id,
            "resources": _resources_json(o.resources),
        }


def _task_json(t: _Task) -> dict[str, Any]:
    return {
        "id": t.info.task_id,
        "name": t.info.name,
        "framework_id": t.framework_id,
        "executor_id": t.executor_id or "",
        "agent_id": t.agent_id,
        "state": str(t.state),
        "resources": _resources_json(t.resources),
        "statuses": t.statuses[-10:],
        "message": t.status.message if t.status else None,
    }


def _completed_json(t: dict[str, Any]) -> dict[str, Any]:
    """``/state``'s form of a :func:`_completed` task."""
    out = {k: v for k, v in t.items() if k not in ("states", "timestamps", "message")}
    out["resources"] = _resources_json(parse_resources(t["resources"]))
    timestamps = t["timestamps"]
    if isinstance(timestamps, bytes):
        states = t["states"].split(";") if timestamps else []
        pairs = zip(states, _TIMESTAMPS[len(timestamps) // 8].unpack(timestamps), strict=True)
    else:  # (a faulty agent's, kept as JSON text)
        pairs = json.loads(t["states"])
    out["statuses"] = [{"state": state, "timestamp": timestamp} for state, timestamp in pairs]
    out["message"] = t["message"]
    return out


def _refuse_seconds(value: Any) -> float:
    if isinstance(value, int | float) and value >= 0:
        return float(min(value, 365 * 24 * 3600))
    return 5.0
