"""The executor SDK in-process: an ExecutorDriver against a fake agent actor.

The driver runs on the test's own loop (``run_async``) with its own runtime, so registration
retries, callback order, acknowledgement futures, resends, threads and the agent's death can all
be watched directly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agent_harness import wait_until

from libproc import UPID, Process, Runtime, handler
from mesa.executor import (
    DRIVER_ABORTED,
    DRIVER_STOPPED,
    Executor,
    ExecutorDriver,
    ExecutorEnvError,
)
from mesa.info import AgentInfo, CommandInfo, ExecutorInfo, FrameworkInfo, TaskInfo, TaskStatus
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


class FakeAgent(Process):
    """Ignores the first registration and withholds the first acknowledgement of each task."""

    def __init__(self) -> None:
        super().__init__("agent")
        self.registrations: list[RegisterExecutor] = []
        self.updates: list[StatusUpdate] = []
        self.messages: list[ExecutorToFramework] = []
        self.executor: UPID | None = None
        self._withheld: set[str] = set()

    @handler(RegisterExecutor.NAME)
    def _register(self, sender: UPID, msg: RegisterExecutor) -> None:
        self.registrations.append(msg)
        if len(self.registrations) == 1:
            return  # lost: the driver must retry
        self.executor = sender
        self.send(
            sender,
            ExecutorRegistered.NAME,
            ExecutorRegistered(
                ExecutorInfo(msg.executor_id, CommandInfo("x"), framework_id=msg.framework_id),
                FrameworkInfo("root", "fw", id=msg.framework_id),
                AgentInfo("host", "cpus:1", id="agent-1"),
            ),
        )

    @handler(StatusUpdate.NAME)
    def _update(self, sender: UPID, msg: StatusUpdate) -> None:
        self.updates.append(msg)
        task_id = msg.status.task_id
        if task_id not in self._withheld:
            self._withheld.add(task_id)
            return  # no ack this time: the driver must resend
        self.send(
            sender,
            StatusUpdateAcknowledgement.NAME,
            StatusUpdateAcknowledgement(msg.framework_id, "agent-1", task_id, msg.status.uuid),
        )

    @handler(ExecutorToFramework.NAME)
    def _message(self, sender: UPID, msg: ExecutorToFramework) -> None:
        self.messages.append(msg)


class Recorder(Executor):
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def registered(self, driver, executor_info, framework_info, agent_info):
        self.calls.append(("registered", executor_info.executor_id, agent_info.id))

    async def launch_task(self, driver, task):
        self.calls.append(("launch", task.task_id))
        if task.data == b"thread":
            threading.Thread(target=self._from_thread, args=(driver, task.task_id)).start()
            return
        await driver.send_status_update(TaskStatus(task.task_id, TaskState.TASK_RUNNING))
        self.calls.append(("acked", task.task_id))

    def _from_thread(self, driver, task_id):
        future = driver.send_status_update(TaskStatus(task_id, TaskState.TASK_FINISHED))
        future.result(timeout=10)
        self.calls.append(("thread-acked", task_id))

    def kill_task(self, driver, task_id, grace_period=None):
        self.calls.append(("kill", task_id, grace_period))

    def framework_message(self, driver, data):
        self.calls.append(("message", data))
        driver.send_framework_message(b"re:" + data)

    def disconnected(self, driver):
        self.calls.append(("disconnected",))

    def shutdown(self, driver):
        self.calls.append(("shutdown",))
        driver.stop()


class OldStyleKill(Recorder):
    def kill_task(self, driver, task_id):  # the two-argument form still works
        self.calls.append(("kill", task_id))


@pytest.fixture
async def agent() -> AsyncIterator[tuple[Runtime, FakeAgent]]:
    rt = await Runtime("127.0.0.1", 0).start()
    fake = FakeAgent()
    rt.spawn(fake)
    try:
        yield rt, fake
    finally:
        await rt.stop()


def environ(agent_pid: UPID) -> dict[str, str]:
    return {
        "MESA_AGENT_PID": str(agent_pid),
        "MESA_AGENT_ENDPOINT": agent_pid.address,
        "MESA_FRAMEWORK_ID": "fw-1",
        "MESA_EXECUTOR_ID": "ex-1",
        "MESA_CONTAINER_ID": "c-1",
        "MESA_SANDBOX": "/tmp",
        "MESA_EXECUTOR_SHUTDOWN_GRACE_PERIOD": "2",
    }


def task(task_id: str, data: bytes | None = None) -> TaskInfo:
    return TaskInfo(task_id, task_id, "agent-1", "cpus:0.1", command=CommandInfo("x"), data=data)


async def test_driver_registers_dispatches_and_makes_updates_reliable(agent):
    _, fake = agent
    executor = Recorder()
    driver = ExecutorDriver(executor, environ=environ(fake.pid), update_retry_interval=0.05)
    run = asyncio.ensure_future(driver.run_async())
    try:
        await wait_until(lambda: fake.executor is not None)
        assert len(fake.registrations) >= 2  # the first was ignored; the driver retried
        assert fake.registrations[0] == RegisterExecutor("fw-1", "ex-1", "c-1")
        assert driver.framework_info.id == "fw-1" and driver.agent_info.id == "agent-1"

        fake.send(fake.executor, RunTask.NAME, RunTask(driver.framework_info, "s@h:1", task("t1")))
        await wait_until(lambda: ("acked", "t1") in executor.calls)
        copies = [u for u in fake.updates if u.status.task_id == "t1"]
        assert len(copies) >= 2 and len({u.status.uuid for u in copies}) == 1
        status = copies[0].status
        assert status.state == TaskState.TASK_RUNNING
        assert status.source == Source.SOURCE_EXECUTOR
        assert status.executor_id == "ex-1" and status.agent_id == "agent-1"
        assert status.timestamp > 0 and len(status.uuid) == 16
        assert copies[0].framework_id == "fw-1" and copies[0].executor_id == "ex-1"

        # From another thread: a concurrent future, resolved on acknowledgement.
        fake.send(
            fake.executor,
            RunTask.NAME,
            RunTask(driver.framework_info, "s@h:1", task("t2", b"thread")),
        )
        await wait_until(lambda: ("thread-acked", "t2") in executor.calls)

        fake.send(fake.executor, KillTask.NAME, KillTask("fw-1", "t1", "agent-1", 1.5))
        fake.send(
            fake.executor,
            FrameworkToExecutor.NAME,
            FrameworkToExecutor("fw-1", "agent-1", "ex-1", b"hi"),
        )
        await wait_until(lambda: len(fake.messages) == 1)
        assert fake.messages[0] == ExecutorToFramework("fw-1", "agent-1", "ex-1", b"re:hi")
        fake.send(fake.executor, ShutdownExecutor.NAME, ShutdownExecutor("test"))
        assert await asyncio.wait_for(run, 10) == DRIVER_STOPPED
    finally:
        run.cancel()

    names = [c[0] for c in executor.calls]
    assert names[0] == "registered"
    assert ("kill", "t1", 1.5) in executor.calls
    assert names.index("kill") < names.index("message") < names.index("shutdown")


async def test_two_argument_kill_task_and_messages_from_strangers(agent):
    rt, fake = agent
    executor = OldStyleKill()
    driver = ExecutorDriver(executor, environ=environ(fake.pid))
    run = asyncio.ensure_future(driver.run_async())
    try:
        await wait_until(lambda: fake.executor is not None)
        # Only the agent is listened to.
        rt.send(fake.executor, KillTask.NAME, KillTask("fw-1", "nope"))
        rt.send(fake.executor, ShutdownExecutor.NAME, ShutdownExecutor())
        fake.send(fake.executor, KillTask.NAME, KillTask("fw-1", "t9"))
        await wait_until(lambda: ("kill", "t9") in executor.calls)
        assert ("kill", "nope") not in executor.calls
        assert ("shutdown",) not in executor.calls
        fake.send(fake.executor, ShutdownExecutor.NAME, ShutdownExecutor())
        assert await asyncio.wait_for(run, 10) == DRIVER_STOPPED
    finally:
        run.cancel()


async def test_agent_death_shuts_the_executor_down(agent):
    rt, fake = agent
    executor = Recorder()
    driver = ExecutorDriver(executor, environ=environ(fake.pid))
    run = asyncio.ensure_future(driver.run_async())
    try:
        await wait_until(lambda: fake.executor is not None)
        await rt.stop()  # the agent's whole runtime goes away
        assert await asyncio.wait_for(run, 20) == DRIVER_ABORTED
    finally:
        run.cancel()
    assert executor.calls[-2:] == [("disconnected",), ("shutdown",)]


async def test_status_updates_need_a_real_state(agent):
    _, fake = agent
    driver = ExecutorDriver(Recorder(), environ=environ(fake.pid))
    with pytest.raises(RuntimeError):
        driver.send_status_update(TaskStatus("t", TaskState.TASK_RUNNING))  # not running yet
    run = asyncio.ensure_future(driver.run_async())
    try:
        await wait_until(lambda: fake.executor is not None)
        with pytest.raises(ValueError):
            driver.send_status_update(TaskStatus("t", TaskState.TASK_STAGING))
        with pytest.raises(ValueError):
            driver.send_status_update(TaskStatus("t", "TASK_BOGUS"))
        with pytest.raises(TypeError):
            driver.send_status_update({"state": "TASK_RUNNING"})  # type: ignore[arg-type]
        driver.stop()
        assert await asyncio.wait_for(run, 10) == DRIVER_STOPPED
    finally:
        run.cancel()


def test_driver_outside_an_agent_says_so():
    with pytest.raises(ExecutorEnvError, match="MESA_AGENT_PID"):
        ExecutorDriver(Executor(), environ={})
