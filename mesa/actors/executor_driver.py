"""The executor driver's actor: the executor's libproc half, talking to its agent.

It lives in the executor's OS process (libproc id ``executor``), registers with the agent that
launched it (``RegisterExecutor``, retried with back-off until ``ExecutorRegistered``), turns the
agent's messages into calls on the user's :class:`~mesa.executor.Executor`, and makes the
executor's status updates reliable on the first hop: each stays here until the agent
acknowledges its uuid and is resent, in order, every ``update_retry_interval`` seconds until
then. It links the agent: if the agent goes away the executor is told (``disconnected``, then
``shutdown``) and the driver stops, so no executor outlives its agent.

Users do not touch this class; :class:`~mesa.executor.ExecutorDriver` builds it from the
``MESA_*`` environment the agent sets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from libproc import UPID, Process, Timer, get_logger, handler
from mesa.info import AgentInfo, ExecutorInfo, FrameworkInfo, TaskInfo, TaskStatus, new_uuid_bytes
from mesa.messages import (
    ExecutorRegistered,
    ExecutorToFramework,
    FrameworkToExecutor,
    KillTask,
    RegisterExecutor,
    RunTask,
    ShutdownExecutor,
    StatusUpdate,
    StatusUpdateAcknowledgement,
)
from mesa.task_state import Source, TaskState

if TYPE_CHECKING:
    from mesa.executor import Executor, ExecutorDriver

__all__ = ["ExecutorProcess"]


class ExecutorProcess(Process):
    """Registers with the agent, dispatches its messages to the executor, keeps updates safe."""

    def __init__(
        self,
        driver: ExecutorDriver,
        executor: Executor,
        *,
        agent: UPID | str,
        framework_id: str,
        executor_id: str,
        container_id: str,
        registration_backoff: float = 0.5,
        registration_backoff_max: float = 5.0,
        registration_timeout: float = 60.0,
        update_retry_interval: float = 5.0,
        shutdown_grace_period: float = 5.0,
        id: str = "executor",
    ) -> None:
        super().__init__(id)
        self.driver = driver
        self.executor = executor
        self.agent = UPID.parse(str(agent))
        self.framework_id = framework_id
        self.executor_id = executor_id
        self.container_id = container_id
        self.registration_backoff = registration_backoff
        self.registration_backoff_max = registration_backoff_max
        self.registration_timeout = registration_timeout
        self.update_retry_interval = update_retry_interval
        self.shutdown_grace_period = shutdown_grace_period
        self.registered = False
        self.executor_info: ExecutorInfo | None = None
        self.framework_info: FrameworkInfo | None = None
        self.agent_info: AgentInfo | None = None
        self._delay = registration_backoff
        self._registration_timer: Timer | None = None
        self._registration_deadline: Timer | None = None
        self._retry_timer: Timer | None = None
        self._stop_timer: Timer | None = None
        self._shutting_down = False
        # uuid -> (update, future resolved on acknowledgement); dicts keep insertion order, which
        # is the order updates were sent and must be resent in.
        self._unacked: dict[bytes, tuple[StatusUpdate, asyncio.Future[None]]] = {}
        # Callbacks run in order on their own task, one at a time, so that an async callback
        # holds back the next callback but never this actor's mailbox: acknowledgements keep
        # arriving while a callback awaits one.
        self._callbacks: asyncio.Queue[tuple[str, tuple[Any, ...]]] | None = None
        self._callback_worker: asyncio.Task[None] | None = None
        self._kill_takes_grace = _accepts_positional(executor.kill_task, 3)
        self.log = get_logger("mesa.executor")

    # ------------------------------------------------------------------ lifecycle

    def initialize(self) -> None:
        self._callbacks = asyncio.Queue()
        self._callback_worker = asyncio.get_running_loop().create_task(self._run_callbacks())
        self.link(self.agent)
        self._registration_deadline = self.delay(
            self.registration_timeout, self._registration_timed_out
        )
        self._register()

    async def finalize(self) -> None:
        for timer in (
            self._registration_timer,
            self._registration_deadline,
            self._retry_timer,
            self._stop_timer,
        ):
            if timer is not None:
                timer.cancel()
        for _update, future in self._unacked.values():
            if not future.done():
                future.cancel()
        self._unacked.clear()
        worker = self._callback_worker
        if worker is not None and not worker.done():
            worker.cancel()
            await asyncio.wait([worker], timeout=1.0)

    def _register(self) -> None:
        self._registration_timer = None
        if self.registered:
            return
        self.send(
            self.agent,
            RegisterExecutor.NAME,
            RegisterExecutor(self.framework_id, self.executor_id, self.container_id),
        )
        self._registration_timer = self.delay(self._delay, self._register)
        self._delay = min(self._delay * 2, self.registration_backoff_max)

    def _registration_timed_out(self) -> None:
        if not self.registered:
            self.log.error("executor_registration_timed_out", agent=str(self.agent))
            self.driver._aborted = True
            self.driver._finished()

    def exited(self, pid: UPID) -> None:
        if pid != self.agent:
            return
        self.log.warning("agent_exited", agent=str(pid))
        self.registered = False
        self.driver._aborted = True
        self._invoke("disconnected")
        self._shutdown("agent exited")

    # ------------------------------------------------------------------ from the agent

    @handler(ExecutorRegistered.NAME)
    def _registered(self, sender: UPID, msg: Any) -> None:
        if not self._from_agent(sender, msg, ExecutorRegistered):
            return
        if self.registered:
            return
        self.registered = True
        self.executor_info = msg.executor
        self.framework_info = msg.framework
        self.agent_info = msg.agent
        for timer in (self._registration_timer, self._registration_deadline):
            if timer is not None:
                timer.cancel()
        self.log.info("executor_registered", agent=str(sender), executor_id=self.executor_id)
        self._invoke("registered", msg.executor, msg.framework, msg.agent)
        # Updates sent before registration waited for it.
        self._resend_unacked()

    @handler(RunTask.NAME)
    def _run_task(self, sender: UPID, msg: Any) -> None:
        if not self._from_agent(sender, msg, RunTask) or not isinstance(msg.task, TaskInfo):
            return
        if self._shutting_down:
            self.log.warning("task_after_shutdown", task_id=msg.task.task_id)
            return
        self._invoke("launch_task", msg.task)

    @handler(KillTask.NAME)
    def _kill_task(self, sender: UPID, msg: Any) -> None:
        if not self._from_agent(sender, msg, KillTask):
            return
        if self._kill_takes_grace:
            self._invoke("kill_task", msg.task_id, msg.grace_period)
        else:
            self._invoke("kill_task", msg.task_id)

    @handler(FrameworkToExecutor.NAME)
    def _framework_message(self, sender: UPID, msg: Any) -> None:
        if self._from_agent(sender, msg, FrameworkToExecutor):
            self._invoke("framework_message", msg.data)

    @handler(ShutdownExecutor.NAME)
    def _shutdown_message(self, sender: UPID, msg: Any) -> None:
        if self._from_agent(sender, msg, ShutdownExecutor):
            self._shutdown(msg.reason or "asked by the agent")

    def _shutdown(self, why: str) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True
        self.log.info("executor_shutting_down", reason=why)
        # The executor gets the grace period to end its tasks and call driver.stop(); after that
        # the driver stops anyway (and the agent destroys the container soon after).
        self._stop_timer = self.delay(
            max(0.1, self.shutdown_grace_period * 0.8), self.driver._finished
        )
        self._invoke("shutdown")

    @handler(StatusUpdateAcknowledgement.NAME)
    def _acknowledged(self, sender: UPID, msg: Any) -> None:
        if not self._from_agent(sender, msg, StatusUpdateAcknowledgement):
            return
        entry = self._unacked.pop(msg.uuid, None) if isinstance(msg.uuid, bytes) else None
        if entry is None:
            return  # a duplicate acknowledgement of a resent update
        _update, future = entry
        if not future.done():
            future.set_result(None)

    def _from_agent(self, sender: UPID, msg: Any, cls: type) -> bool:
        if sender != self.agent or not isinstance(msg, cls):
            self.metrics.inc("executor/invalid_messages")
            self.log.warning(
                "invalid_message",
                sender=str(sender),
                expected=cls.__name__,
                got=type(msg).__name__,
            )
            return False
        return True

    # ------------------------------------------------------------------ to the agent

    def send_status_update(self, status: TaskStatus) -> asyncio.Future[None]:
        """Stamp and send ``status``; the future resolves when the agent acknowledges it."""
        if not isinstance(status, TaskStatus):
            raise TypeError(f"expected a TaskStatus, got {type(status).__name__}")
        if status.state not in TaskState.__members__:
            raise ValueError(f"unknown task state {status.state!r}")
        if status.state == TaskState.TASK_STAGING:
            raise ValueError("executors may not send TASK_STAGING (the master's state)")
        status = dataclasses.replace(
            status,
            uuid=new_uuid_bytes(),
            timestamp=time.time(),
            source=Source.SOURCE_EXECUTOR,
            executor_id=self.executor_id,
            agent_id=self.agent_info.id if self.agent_info else status.agent_id,
        )
        update = StatusUpdate(self.framework_id, status, self.executor_id)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unacked[status.uuid] = (update, future)  # type: ignore[index]
        if self.registered:
            self.send(self.agent, StatusUpdate.NAME, update)
        self._arm_retry()
        return future

    def send_framework_message(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError("framework messages are bytes")
        self.send(
            self.agent,
            ExecutorToFramework.NAME,
            ExecutorToFramework(
                self.framework_id,
                self.agent_info.id if self.agent_info and self.agent_info.id else "",
                self.executor_id,
                data,
            ),
        )

    @property
    def unacknowledged(self) -> list[TaskStatus]:
        return [update.status for update, _ in self._unacked.values()]

    def _arm_retry(self) -> None:
        if self._retry_timer is None or not self._retry_timer.pending:
            self._retry_timer = self.delay(self.update_retry_interval, self._retry)

    def _retry(self) -> None:
        self._retry_timer = None
        if self._unacked:
            if self.registered:
                self.metrics.inc("executor/status_updates_retried", len(self._unacked))
                self._resend_unacked()
            self._arm_retry()

    def _resend_unacked(self) -> None:
        if not self.registered:
            return
        for update, _future in list(self._unacked.values()):
            self.send(self.agent, StatusUpdate.NAME, update)

    # ------------------------------------------------------------------ calling the executor

    def _invoke(self, name: str, *args: Any) -> None:
        """Queue ``executor.<name>(driver, *args)`` behind the callbacks already queued."""
        assert self._callbacks is not None
        self._callbacks.put_nowait((name, args))

    async def _run_callbacks(self) -> None:
        assert self._callbacks is not None
        while True:
            name, args = await self._callbacks.get()
            try:
                result = getattr(self.executor, name)(self.driver, *args)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._callback_failed(name, e)

    def _callback_failed(self, name: str, exc: BaseException) -> None:
        self.metrics.inc("executor/callback_errors")
        self.log.error("executor_callback_failed", callback=name, error=repr(exc), exc_info=exc)
        if name != "error":
            try:
                self.executor.error(self.driver, f"{name} raised {exc!r}")
            except Exception as e:  # the error callback failing is only worth a log line
                self.log.error("executor_error_callback_failed", error=repr(e))


def _accepts_positional(fn: Callable[..., Any], count: int) -> bool:
    """Does bound ``fn`` take ``count`` positional arguments? (Old-style kill_task has two.)"""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in params:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= count
