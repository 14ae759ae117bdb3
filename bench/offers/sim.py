"""A simulated containerizer and executor, so that the real agent runs tasks without processes.

The agent (``mesa.actors.agent.Agent``) is given ``containerizer=<UPID of SimContainerizer>``. It
speaks the real agent ↔ containerizer protocol (``LaunchContainer`` → ``ContainerLaunched``, later
``ContainerTerminated``; ``DestroyContainer``), and instead of starting an OS process the
containerizer simulates what would run in it. A *direct* command task (the agent's default: the
container runs the task's command, the agent is its executor) is just a timer: the container is
reported launched at once and terminated with status 0 after the task's duration, exactly the
messages the real containerizer sends, so the agent's own update, acknowledgement and teardown
code runs for every task. For an executor (``--command-tasks=executor``, or a framework's own)
the containerizer spawns a :class:`SimExecutor` actor in the same runtime. That actor is what a real
executor's libproc half would be: it registers with the agent (``RegisterExecutor``), is handed
tasks (``RunTask``), reports ``TASK_RUNNING`` at once and ``TASK_FINISHED`` after the task's
duration as status updates that carry a uuid and wait for the agent's acknowledgement, and ends
(its container reported terminated) when a command executor's task is done or when the agent
shuts it down. So the agent's real registration, launch, status-update-stream and
acknowledgement code runs for every task; only the fork/exec and the executor's OS process are
simulated, and agent ↔ executor messages stay inside one runtime (no serialisation), as they
would not on a real host.

One SimContainerizer serves every agent in its runtime: it answers whoever asked (the container's
owner), exactly as the real containerizer does.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any

from libproc import UPID, Clock, Process, Timer, handler
from mesa.info import TaskStatus, new_uuid_bytes
from mesa.messages import (
    ContainerLaunched,
    ContainerTerminated,
    DestroyContainer,
    ExecutorRegistered,
    KillTask,
    LaunchContainer,
    RegisterExecutor,
    RunTask,
    ShutdownExecutor,
    SignalContainer,
    StatusUpdate,
    StatusUpdateAcknowledgement,
    UpdateContainer,
)
from mesa.task_state import Source, TaskState

__all__ = ["SimContainerizer", "SimExecutor"]

_fake_pids = itertools.count(1_000_000)


class SimContainerizer(Process):
    """Answers LaunchContainer by spawning a :class:`SimExecutor`; reports its end."""

    def __init__(self, task_seconds: float, id: str = "containerizer") -> None:
        super().__init__(id)
        self.task_seconds = task_seconds
        self.containers: dict[str, tuple[UPID, UPID]] = {}  # cid -> (owner agent, executor)
        self.tasks: dict[str, UPID] = {}  # direct tasks running: cid -> its owner agent
        # Every direct task runs task_seconds, so they end in the order they began: a FIFO of
        # (end, cid) and one timer for its head, not a timer per task (which, thousands a
        # second, was a good part of what the simulation cost the agent processes).
        self._ends: deque[tuple[float, str]] = deque()
        self._end_timer: Timer | None = None
        self.launched = 0

    @handler(LaunchContainer.NAME)
    def _launch(self, sender: UPID, msg: LaunchContainer) -> None:
        cid = msg.container_id
        if cid in self.containers or cid in self.tasks:
            self.send(sender, ContainerLaunched.NAME, ContainerLaunched(cid, error="exists"))
            return
        env = msg.environment
        if "MESA_TASK_ID" in env:  # a direct task: no executor, the command "runs" for a while
            self.tasks[cid] = sender
            self._ends.append((Clock.now() + self.task_seconds, cid))
            if self._end_timer is None:
                self._end_timer = self.delay(self.task_seconds, self._tasks_done)
            self.launched += 1
            self.send(sender, ContainerLaunched.NAME, ContainerLaunched(cid, pid=next(_fake_pids)))
            return
        executor = SimExecutor(
            self.pid,
            self.task_seconds,
            agent=UPID.parse(env["MESA_AGENT_PID"]),
            framework_id=env["MESA_FRAMEWORK_ID"],
            executor_id=env["MESA_EXECUTOR_ID"],
            container_id=cid,
            command_executor="mesa.command_executor" in (msg.executor.command.value or ""),
        )
        pid = self.spawn(executor)
        self.containers[cid] = (sender, pid)
        self.launched += 1
        self.send(sender, ContainerLaunched.NAME, ContainerLaunched(cid, pid=next(_fake_pids)))

    def _tasks_done(self) -> None:
        """The head of the FIFO is due: end every task due by now (those killed or destroyed
        meanwhile are gone already), and wait for the next."""
        self._end_timer = None
        ends = self._ends
        now = Clock.now() + 0.001  # (a timer may fire up to the loop's resolution early)
        while ends and ends[0][0] <= now:
            self._end_task(ends.popleft()[1], status=0)
        if ends:
            self._end_timer = self.delay(max(0.0, ends[0][0] - Clock.now()), self._tasks_done)

    def finalize(self) -> None:
        if self._end_timer is not None:
            self._end_timer.cancel()

    def _end_task(self, cid: str, status: int, destroyed: bool = False) -> None:
        owner = self.tasks.pop(cid, None)
        if owner is not None:
            self.send(
                owner,
                ContainerTerminated.NAME,
                ContainerTerminated(cid, status=status, destroyed=destroyed),
            )

    @handler(SignalContainer.NAME)
    def _signal(self, sender: UPID, msg: SignalContainer) -> None:
        self._end_task(msg.container_id, status=-msg.signal)  # a simulated command obeys

    @handler(DestroyContainer.NAME)
    def _destroy(self, sender: UPID, msg: DestroyContainer) -> None:
        if msg.container_id in self.tasks:
            self._end_task(msg.container_id, status=-9, destroyed=True)
            return
        entry = self.containers.get(msg.container_id)
        if entry is not None:
            self.runtime.terminate(entry[1])
            self.terminated(msg.container_id, status=-9, destroyed=True)

    @handler(UpdateContainer.NAME)
    def _update(self, sender: UPID, msg: UpdateContainer) -> None:
        pass  # nothing is isolated here: the new total only matters to real isolators

    @handler("sim.ExecutorExited")
    def _exited(self, sender: UPID, body: list[Any]) -> None:
        self.terminated(body[0], body[1])

    def terminated(self, cid: str, status: int, destroyed: bool = False) -> None:
        """The executor is gone: tell its agent, as the real containerizer does."""
        entry = self.containers.pop(cid, None)
        if entry is not None:
            self.send(
                entry[0],
                ContainerTerminated.NAME,
                ContainerTerminated(cid, status=status, destroyed=destroyed),
            )


class SimExecutor(Process):
    """An executor's libproc half: register, run tasks for ``task_seconds``, report, end."""

    def __init__(
        self,
        containerizer: UPID,
        task_seconds: float,
        *,
        agent: UPID,
        framework_id: str,
        executor_id: str,
        container_id: str,
        command_executor: bool,
    ) -> None:
        super().__init__(f"executor-{container_id}")
        self.containerizer = containerizer
        self.task_seconds = task_seconds
        self.agent = agent
        self.framework_id = framework_id
        self.executor_id = executor_id
        self.container_id = container_id
        self.command_executor = command_executor
        self.unacked: dict[bytes, bool] = {}  # uuid -> terminal
        self.live_tasks = 0
        self.timers: list[Timer] = []
        self.done = False

    def initialize(self) -> None:
        self.send(
            self.agent,
            RegisterExecutor.NAME,
            RegisterExecutor(self.framework_id, self.executor_id, self.container_id),
        )

    def finalize(self) -> None:
        for timer in self.timers:
            timer.cancel()

    @handler(ExecutorRegistered.NAME)
    def _registered(self, sender: UPID, msg: Any) -> None:
        pass

    @handler(RunTask.NAME)
    def _run_task(self, sender: UPID, msg: RunTask) -> None:
        task_id = msg.task.task_id
        self.live_tasks += 1
        self._update(task_id, TaskState.TASK_RUNNING)
        seconds = self.task_seconds
        label = msg.task.labels.get("duration") if msg.task.labels else None
        if label is not None:
            seconds = float(label)
        self.timers.append(self.delay(seconds, self._finish, task_id, TaskState.TASK_FINISHED))

    @handler(KillTask.NAME)
    def _kill(self, sender: UPID, msg: KillTask) -> None:
        self._finish(msg.task_id, TaskState.TASK_KILLED)

    @handler(ShutdownExecutor.NAME)
    def _shutdown(self, sender: UPID, msg: Any) -> None:
        self._exit(0)

    @handler(StatusUpdateAcknowledgement.NAME)
    def _ack(self, sender: UPID, msg: StatusUpdateAcknowledgement) -> None:
        terminal = self.unacked.pop(msg.uuid, None)
        if terminal and self.command_executor and not self.live_tasks and not self.unacked:
            self._exit(0)  # a command executor ends with its task

    def _finish(self, task_id: str, state: str) -> None:
        if self.done:
            return
        self.live_tasks -= 1
        self._update(task_id, state)

    def _update(self, task_id: str, state: str) -> None:
        status = TaskStatus(
            task_id=task_id,
            state=state,
            source=Source.SOURCE_EXECUTOR,
            executor_id=self.executor_id,
            timestamp=time.time(),
            uuid=new_uuid_bytes(),
        )
        self.unacked[status.uuid] = state != TaskState.TASK_RUNNING  # type: ignore[index]
        self.send(
            self.agent, StatusUpdate.NAME, StatusUpdate(self.framework_id, status, self.executor_id)
        )

    def _exit(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        self.send(self.containerizer, "sim.ExecutorExited", [self.container_id, status])
        self.terminate()
