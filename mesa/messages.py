"""The protocol between schedulers, the master, agents and executors.

Every message is a record whose class attribute ``NAME`` is also its libproc message name, so a
handler is installed with ``@handler(RegisterFramework.NAME)`` and a message is sent with
``self.send(pid, msg.NAME, msg)``. Names follow Mesos's internal messages
(``RegisterFrameworkMessage`` → ``mesa.RegisterFramework``).

Who sends what:

* scheduler → master: RegisterFramework, ReregisterFramework, UnregisterFramework (teardown),
  DeactivateFramework (stop with failover), AcceptOffers, DeclineOffers, KillTask, ReconcileTasks,
  ReviveOffers, SuppressOffers, StatusUpdateAcknowledgement(s), FrameworkToExecutor.
* master → scheduler: FrameworkRegistered, FrameworkReregistered, ResourceOffers, RescindOffer,
  StatusUpdate(s), ExecutorToFramework, FrameworkError, LostAgent.
* agent → master: RegisterAgent, ReregisterAgent, StatusUpdate(s), ExecutorToFramework, PongAgent,
  ExitedExecutor, UnregisterAgent.
* master → agent: AgentRegistered, AgentReregistered, RunTask, KillTask,
  StatusUpdateAcknowledgement(s), FrameworkToExecutor, ShutdownFramework, UpdateFramework,
  PingAgent.
* executor ↔ agent: RegisterExecutor, ExecutorRegistered, RunTask, KillTask, StatusUpdate,
  StatusUpdateAcknowledgement, FrameworkToExecutor, ExecutorToFramework, ShutdownExecutor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from libproc import record
from mesa.info import (
    AgentInfo,
    ExecutorInfo,
    FrameworkInfo,
    MasterInfo,
    Offer,
    TaskInfo,
    TaskStatus,
)

T = TypeVar("T")


def message(name: str) -> Callable[[type[T]], type[T]]:
    """A dataclass record whose wire name is ``mesa.<name>``, also exposed as ``cls.NAME``."""

    def wrap(cls: type[T]) -> type[T]:
        cls = dataclass(cls)
        cls.NAME = f"mesa.{name}"  # type: ignore[attr-defined]
        return record(f"mesa.{name}")(cls)

    return wrap


# --------------------------------------------------------------------- scheduler ↔ master


@message("RegisterFramework")
class RegisterFramework:
    NAME: ClassVar[str]
    framework: FrameworkInfo


@message("ReregisterFramework")
class ReregisterFramework:
    """A framework with an id coming back (failover, or after a master change)."""

    NAME: ClassVar[str]
    framework: FrameworkInfo
    failover: bool = True


@message("FrameworkRegistered")
class FrameworkRegistered:
    NAME: ClassVar[str]
    framework_id: str
    master_info: MasterInfo


@message("FrameworkReregistered")
class FrameworkReregistered:
    NAME: ClassVar[str]
    framework_id: str
    master_info: MasterInfo


@message("UnregisterFramework")
class UnregisterFramework:
    """Teardown: kill every task and forget the framework."""

    NAME: ClassVar[str]
    framework_id: str


@message("DeactivateFramework")
class DeactivateFramework:
    """The scheduler stops but will fail over: keep its tasks for ``failover_timeout``."""

    NAME: ClassVar[str]
    framework_id: str


@message("ResourceOffers")
class ResourceOffers:
    NAME: ClassVar[str]
    offers: list[Offer]


@message("RescindOffer")
class RescindOffer:
    NAME: ClassVar[str]
    offer_id: str


@message("AcceptOffers")
class AcceptOffers:
    """Launch ``tasks`` on the resources of ``offer_ids`` (all on one agent)."""

    NAME: ClassVar[str]
    framework_id: str
    offer_ids: list[str]
    tasks: list[TaskInfo]
    refuse_seconds: float = 5.0


@message("DeclineOffers")
class DeclineOffers:
    NAME: ClassVar[str]
    framework_id: str
    offer_ids: list[str]
    refuse_seconds: float = 5.0


@message("KillTask")
class KillTask:
    NAME: ClassVar[str]
    framework_id: str
    task_id: str
    agent_id: str | None = None
    grace_period: float | None = None


@message("ReconcileTasks")
class ReconcileTasks:
    """Explicit with ``tasks`` (task_id, agent_id pairs); implicit (all known tasks) when empty."""

    NAME: ClassVar[str]
    framework_id: str
    tasks: list[list[str | None]] = field(default_factory=list)


@message("ReviveOffers")
class ReviveOffers:
    NAME: ClassVar[str]
    framework_id: str
    roles: list[str] = field(default_factory=list)


@message("SuppressOffers")
class SuppressOffers:
    NAME: ClassVar[str]
    framework_id: str
    roles: list[str] = field(default_factory=list)


@message("StatusUpdate")
class StatusUpdate:
    """A task's new state. ``status.uuid`` set means the sender wants an acknowledgement.

    ``latest_state`` (agent → master, as Mesos's field of that name): the state of the last
    update the agent holds for the task, when it is later than this one. An agent sends a
    task's updates one at a time, each after the last is acknowledged, so a task that ended
    while its ``TASK_RUNNING`` waited would hold its resources for another round trip; with a
    terminal ``latest_state`` the master frees them as soon as it hears of it. The framework
    still gets every update, in order."""

    NAME: ClassVar[str]
    framework_id: str
    status: TaskStatus
    executor_id: str | None = None
    latest_state: str | None = None


@message("StatusUpdateAcknowledgement")
class StatusUpdateAcknowledgement:
    NAME: ClassVar[str]
    framework_id: str
    agent_id: str
    task_id: str
    uuid: bytes


@message("StatusUpdates")
class StatusUpdates:
    """Several :class:`StatusUpdate` s in one message: agent → master (what its streams sent in
    one loop turn) and master → scheduler (what one such message held for that framework).

    Each update inside is exactly what its own ``StatusUpdate`` would have been: tracked,
    retried and acknowledged one by one. The batch only saves the per-message work on either
    side, which at thousands of tasks a second is most of what an update costs. A sender with
    one update to send sends a plain ``StatusUpdate``."""

    NAME: ClassVar[str]
    updates: list[StatusUpdate]


@message("StatusUpdateAcknowledgements")
class StatusUpdateAcknowledgements:
    """Several :class:`StatusUpdateAcknowledgement` s of one framework: scheduler → master (the
    updates one message brought it) and master → agent (those of them for that agent).

    Three parallel lists rather than a list of records: the i-th acknowledgement is
    ``(agent_ids[i], task_ids[i], uuids[i])``, and the lists decode without a record each."""

    NAME: ClassVar[str]
    framework_id: str
    agent_ids: list[str]
    task_ids: list[str]
    uuids: list[bytes]


@message("FrameworkToExecutor")
class FrameworkToExecutor:
    NAME: ClassVar[str]
    framework_id: str
    agent_id: str
    executor_id: str
    data: bytes


@message("ExecutorToFramework")
class ExecutorToFramework:
    NAME: ClassVar[str]
    framework_id: str
    agent_id: str
    executor_id: str
    data: bytes


@message("FrameworkError")
class FrameworkError:
    NAME: ClassVar[str]
    message: str


@message("LostAgent")
class LostAgent:
    NAME: ClassVar[str]
    agent_id: str


# --------------------------------------------------------------------- agent ↔ master


@message("RegisterAgent")
class RegisterAgent:
    NAME: ClassVar[str]
    agent: AgentInfo
    version: str = "0.1.0"


@message("ReregisterAgent")
class ReregisterAgent:
    """An agent with an id coming back: what it still runs lets the master rebuild its state."""

    NAME: ClassVar[str]
    agent: AgentInfo
    tasks: list[TaskInfo] = field(default_factory=list)
    task_states: list[TaskStatus] = field(default_factory=list)
    executors: list[ExecutorInfo] = field(default_factory=list)
    frameworks: list[FrameworkInfo] = field(default_factory=list)
    version: str = "0.1.0"
    task_frameworks: list[str] = field(default_factory=list)  # framework id of each of `tasks`


@message("AgentRegistered")
class AgentRegistered:
    NAME: ClassVar[str]
    agent_id: str
    ping_interval: float


@message("AgentReregistered")
class AgentReregistered:
    NAME: ClassVar[str]
    agent_id: str
    ping_interval: float
    kill_tasks: list[list[str]] = field(default_factory=list)  # [framework_id, task_id]


@message("UnregisterAgent")
class UnregisterAgent:
    NAME: ClassVar[str]
    agent_id: str


@message("RunTask")
class RunTask:
    """Master → agent (and agent → executor): start ``task`` for ``framework``."""

    NAME: ClassVar[str]
    framework: FrameworkInfo
    framework_pid: str
    task: TaskInfo


@message("RunTasks")
class RunTasks:
    """Master → agent: start every one of ``tasks`` for ``framework``, in order, as a
    :class:`RunTask` each would. The tasks of one accept all go to its offers' agent: one
    message, and one copy of the framework, instead of one per task."""

    NAME: ClassVar[str]
    framework: FrameworkInfo
    framework_pid: str
    tasks: list[TaskInfo]


@message("ExitedExecutor")
class ExitedExecutor:
    """Agent → master: an executor's process ended; its resources can be offered again."""

    NAME: ClassVar[str]
    agent_id: str
    framework_id: str
    executor_id: str
    status: int | None = None


@message("ShutdownFramework")
class ShutdownFramework:
    NAME: ClassVar[str]
    framework_id: str


@message("UpdateFramework")
class UpdateFramework:
    """The framework failed over to a new scheduler pid."""

    NAME: ClassVar[str]
    framework_id: str
    framework_pid: str


@message("PingAgent")
class PingAgent:
    NAME: ClassVar[str]
    connected: bool = True


@message("PongAgent")
class PongAgent:
    NAME: ClassVar[str]
    agent_id: str | None = None


# --------------------------------------------------------------------- executor ↔ agent


@message("RegisterExecutor")
class RegisterExecutor:
    NAME: ClassVar[str]
    framework_id: str
    executor_id: str
    container_id: str


@message("ExecutorRegistered")
class ExecutorRegistered:
    NAME: ClassVar[str]
    executor: ExecutorInfo
    framework: FrameworkInfo
    agent: AgentInfo


@message("ShutdownExecutor")
class ShutdownExecutor:
    NAME: ClassVar[str]
    reason: str = ""


def name_of(msg: Any) -> str:
    """The libproc message name of a message record."""
    return type(msg).NAME


# --------------------------------------------------------------------- master ↔ allocator
#
# The allocator lives in the master's runtime, so these never cross the wire and may carry
# ``Resources`` objects (typed ``Any`` here to keep this module free of the allocator's types).


@message("allocator.AddFramework")
class AllocatorAddFramework:
    NAME: ClassVar[str]
    framework_id: str
    roles: list[str]
    suppressed_roles: list[str] = field(default_factory=list)
    used: dict[str, Any] = field(default_factory=dict)  # agent_id -> Resources in use


@message("allocator.RemoveFramework")
class AllocatorRemoveFramework:
    NAME: ClassVar[str]
    framework_id: str


@message("allocator.ActivateFramework")
class AllocatorActivateFramework:
    NAME: ClassVar[str]
    framework_id: str


@message("allocator.DeactivateFramework")
class AllocatorDeactivateFramework:
    """No more offers to it (disconnected or failing over); what it holds stays allocated."""

    NAME: ClassVar[str]
    framework_id: str


@message("allocator.AddAgent")
class AllocatorAddAgent:
    NAME: ClassVar[str]
    agent_id: str
    hostname: str
    total: Any  # Resources
    used: dict[str, Any] = field(default_factory=dict)  # framework_id -> Resources in use
    attributes: dict[str, Any] = field(default_factory=dict)


@message("allocator.RemoveAgent")
class AllocatorRemoveAgent:
    NAME: ClassVar[str]
    agent_id: str


@message("allocator.ActivateAgent")
class AllocatorActivateAgent:
    NAME: ClassVar[str]
    agent_id: str


@message("allocator.DeactivateAgent")
class AllocatorDeactivateAgent:
    """An agent that stopped answering: offer nothing on it until it is back."""

    NAME: ClassVar[str]
    agent_id: str


@message("allocator.RecoverResources")
class AllocatorRecoverResources:
    """Resources come back (declined, rescinded, unused part of an accept, task ended).

    ``refuse_seconds`` set: do not offer these resources on this agent to this framework again
    for that long (a decline filter).
    """

    NAME: ClassVar[str]
    agent_id: str
    framework_id: str
    resources: Any  # Resources
    refuse_seconds: float | None = None
    # Which of the framework's roles they were offered to (``Allocations.roles``); None: the
    # allocator works it out from what the framework holds on the agent.
    role: str | None = None


@message("allocator.Revive")
class AllocatorRevive:
    NAME: ClassVar[str]
    framework_id: str
    roles: list[str] = field(default_factory=list)  # empty: all its roles


@message("allocator.Suppress")
class AllocatorSuppress:
    NAME: ClassVar[str]
    framework_id: str
    roles: list[str] = field(default_factory=list)  # empty: all its roles


@message("allocator.SetQuota")
class AllocatorSetQuota:
    NAME: ClassVar[str]
    role: str
    guarantee: Any  # Resources
    limit: Any | None = None  # Resources, or None for no limit


@message("allocator.SetWeight")
class AllocatorSetWeight:
    NAME: ClassVar[str]
    role: str
    weight: float


@message("allocator.Allocations")
class Allocations:
    """Allocator → master, once per cycle: what each framework is offered on which agent.

    ``items`` is a list of ``(framework_id, agent_id, Resources)``; ``roles[i]`` is the role
    ``items[i]`` is offered to (the offer's ``allocation_info.role`` in Mesos terms), which a
    framework subscribed to several roles needs, and which ``AllocatorRecoverResources.role``
    may hand back.
    """

    NAME: ClassVar[str]
    items: list[Any]
    roles: list[str] = field(default_factory=list)


# --------------------------------------------------------------------- agent ↔ containerizer
#
# The containerizer lives in the agent's runtime; these never cross the wire. The agent asks, the
# containerizer answers the asker (the *owner* of the container) by message, so neither holds the
# other's objects.


@message("containerizer.Launch")
class LaunchContainer:
    """Start ``executor.command`` in a new container whose working directory is ``sandbox``.

    ``resources`` is the container's total (the executor's own plus its tasks'): what the
    isolators limit it to.
    """

    NAME: ClassVar[str]
    container_id: str
    executor: ExecutorInfo
    sandbox: str
    environment: dict[str, str] = field(default_factory=dict)
    resources: str = ""


@message("containerizer.Launched")
class ContainerLaunched:
    """The answer to LaunchContainer: the executor's OS pid, or why it could not start."""

    NAME: ClassVar[str]
    container_id: str
    pid: int | None = None
    error: str | None = None


@message("containerizer.Update")
class UpdateContainer:
    """The container's executor gained or lost tasks: ``resources`` is its new total."""

    NAME: ClassVar[str]
    container_id: str
    resources: str = ""


@message("containerizer.Destroy")
class DestroyContainer:
    """Kill every process of the container; ContainerTerminated follows."""

    NAME: ClassVar[str]
    container_id: str


@message("containerizer.Signal")
class SignalContainer:
    """Send ``signal`` to the container's process group (its leader's session): the polite
    first half of a kill with a grace period. DestroyContainer is the other half."""

    NAME: ClassVar[str]
    container_id: str
    signal: int


@message("containerizer.Terminated")
class ContainerTerminated:
    """The container's executor process ended and every process of the container is gone.

    ``status`` is the executor's exit code, or minus the signal that ended it (as ``Popen``'s
    ``returncode``); ``None`` when it is unknown. ``destroyed`` says the end came from
    DestroyContainer or a limitation. ``reason`` is set when the container hit a limit
    (``REASON_CONTAINER_LIMITATION_MEMORY``, ``_DISK``); ``message`` then names the limit.
    """

    NAME: ClassVar[str]
    container_id: str
    status: int | None = None
    destroyed: bool = False
    message: str = ""
    reason: str | None = None
