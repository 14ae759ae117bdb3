"""Test harness for the agent: a fake master actor, runtimes that always stop, process checks.

The fake master is a real libproc actor on its own ZeroMQ runtime: it answers registration,
acknowledges status updates (unless told not to), and records everything, so tests can await
"the first TASK_FINISHED for task t" instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from libproc import UPID, Clock, Process, Runtime, handler
from libproc import filters as _filters
from mesa.actors.agent import Agent
from mesa.info import CommandInfo, ExecutorInfo, FrameworkInfo, TaskInfo
from mesa.messages import (
    AgentRegistered,
    AgentReregistered,
    KillTask,
    RegisterAgent,
    ReregisterAgent,
    RunTask,
    ShutdownFramework,
    StatusUpdate,
    StatusUpdateAcknowledgement,
    StatusUpdateAcknowledgements,
    StatusUpdates,
)
from tests.ports import port_free
from tests.waiting import eventually

DEADLINE = 30.0  # generous upper bound for anything a test awaits; never a sleep


@dataclass
class Received:
    sender: UPID
    name: str
    body: Any


class FakeMaster(Process):
    """Stands in for the master: registers the agent, acks updates, records every message."""

    def __init__(
        self,
        agent_id: str = "agent-1",
        ping_interval: float = 60.0,
        auto_ack: bool = True,
        kill_tasks: list[list[str]] | None = None,
    ) -> None:
        super().__init__("master")
        self.agent_id = agent_id
        self.ping_interval = ping_interval
        self.auto_ack = auto_ack
        self.kill_tasks = kill_tasks or []
        self.inbox: list[Received] = []
        self.agent: UPID | None = None
        self.batches = 0  # StatusUpdates received
        self._changed = asyncio.Event()

    def _record(self, sender: UPID, name: str, body: Any) -> None:
        self.inbox.append(Received(sender, name, body))
        self._changed.set()

    def unhandled(self, sender: UPID, name: str, body: Any) -> None:
        self._record(sender, name, body)

    @handler(RegisterAgent.NAME)
    def _register(self, sender: UPID, msg: RegisterAgent) -> None:
        self._record(sender, RegisterAgent.NAME, msg)
        self.agent = sender
        self.send(sender, AgentRegistered.NAME, AgentRegistered(self.agent_id, self.ping_interval))

    @handler(ReregisterAgent.NAME)
    def _reregister(self, sender: UPID, msg: ReregisterAgent) -> None:
        self._record(sender, ReregisterAgent.NAME, msg)
        self.agent = sender
        self.send(
            sender,
            AgentReregistered.NAME,
            AgentReregistered(msg.agent.id, self.ping_interval, self.kill_tasks),
        )

    @handler(StatusUpdate.NAME)
    def _update(self, sender: UPID, msg: StatusUpdate) -> None:
        self._record(sender, StatusUpdate.NAME, msg)
        if self.auto_ack:
            self.ack(msg)

    @handler(StatusUpdates.NAME)
    def _updates(self, sender: UPID, msg: StatusUpdates) -> None:
        """Updates the agent sent together: recorded one by one, acknowledged in one message
        (as the master passes on a framework's acknowledgements of them)."""
        self.batches += 1
        for update in msg.updates:
            self._record(sender, StatusUpdate.NAME, update)
        if not self.auto_ack:
            return
        by_framework: dict[str, list[StatusUpdate]] = {}
        for update in msg.updates:
            by_framework.setdefault(update.framework_id, []).append(update)
        for framework_id, updates in by_framework.items():
            self.send(
                self.agent,  # type: ignore[arg-type]
                StatusUpdateAcknowledgements.NAME,
                StatusUpdateAcknowledgements(
                    framework_id,
                    [self.agent_id] * len(updates),
                    [u.status.task_id for u in updates],
                    [u.status.uuid for u in updates],
                ),
            )

    # ---------------------------------------------------------------- driving the agent

    def ack(self, update: StatusUpdate) -> None:
        self.send(
            self.agent,  # type: ignore[arg-type]
            StatusUpdateAcknowledgement.NAME,
            StatusUpdateAcknowledgement(
                update.framework_id, self.agent_id, update.status.task_id, update.status.uuid
            ),
        )

    def run_task(self, framework: FrameworkInfo, task: TaskInfo) -> None:
        self.send(self.agent, RunTask.NAME, RunTask(framework, "scheduler@127.0.0.1:1", task))  # type: ignore[arg-type]

    def kill(self, framework_id: str, task_id: str, grace: float | None = None) -> None:
        self.send(
            self.agent,  # type: ignore[arg-type]
            KillTask.NAME,
            KillTask(framework_id, task_id, self.agent_id, grace),
        )

    def shutdown_framework(self, framework_id: str) -> None:
        self.send(self.agent, ShutdownFramework.NAME, ShutdownFramework(framework_id))  # type: ignore[arg-type]

    # ---------------------------------------------------------------- waiting

    def received(self, name: str, where: Callable[[Any], bool] | None = None) -> list[Any]:
        return [r.body for r in self.inbox if r.name == name and (where is None or where(r.body))]

    async def wait_for(
        self,
        name: str,
        where: Callable[[Any], bool] | None = None,
        count: int = 1,
        timeout: float = DEADLINE,
    ) -> list[Any]:
        """Wait until ``count`` matching messages have arrived; returns all matches."""

        async def poll() -> list[Any]:
            while True:
                found = self.received(name, where)
                if len(found) >= count:
                    return found
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(poll(), timeout)

    def updates(self, task_id: str) -> list[StatusUpdate]:
        return self.received(StatusUpdate.NAME, lambda u: u.status.task_id == task_id)

    def states(self, task_id: str) -> list[str]:
        """Distinct states in arrival order (retries collapsed)."""
        out: list[str] = []
        seen: set[bytes] = set()
        for u in self.updates(task_id):
            if u.status.uuid not in seen:
                seen.add(u.status.uuid)
                out.append(str(u.status.state))
        return out

    async def wait_state(self, task_id: str, state: str, timeout: float = DEADLINE) -> StatusUpdate:
        found = await self.wait_for(
            StatusUpdate.NAME,
            lambda u: u.status.task_id == task_id and u.status.state == state,
            timeout=timeout,
        )
        return found[0]


def framework(fid: str = "fw-1", **kw: Any) -> FrameworkInfo:
    return FrameworkInfo(user="root", name="test", id=fid, **kw)


def command_task(task_id: str, command: str, **kw: Any) -> TaskInfo:
    return TaskInfo(
        name=task_id,
        task_id=task_id,
        agent_id="agent-1",
        resources="cpus:0.1;mem:32",
        command=CommandInfo(value=command),
        **kw,
    )


def executor_task(task_id: str, executor: ExecutorInfo, data: bytes | None = None) -> TaskInfo:
    return TaskInfo(
        name=task_id,
        task_id=task_id,
        agent_id="agent-1",
        resources="cpus:0.1;mem:32",
        executor=executor,
        data=data,
    )


def python_executor(executor_id: str, script: Path) -> ExecutorInfo:
    return ExecutorInfo(
        executor_id=executor_id,
        command=CommandInfo(
            value=sys.executable, shell=False, arguments=[sys.executable, str(script)]
        ),
    )


class Cluster:
    """A fake master and an agent, each on its own ZeroMQ runtime.

    ``agent_options`` are defaults for every agent it starts (``start_agent``'s own keywords
    win): ``command_tasks="executor"``, say, for tests of the command executor process.
    """

    def __init__(self, tmp_path: Path, **agent_options: Any) -> None:
        self.tmp_path = tmp_path
        self.agent_options = agent_options
        self.work_dir = tmp_path / "work"
        self.master_rt: Runtime | None = None
        self.agent_rt: Runtime | None = None
        self.master: FakeMaster | None = None
        self.agent: Agent | None = None
        self.master_port = 0

    async def start_master(self, port: int = 0, **kw: Any) -> FakeMaster:
        if port:
            # ZeroMQ closes a stopped runtime's listening socket in its own I/O thread, a moment
            # after stop() returns: wait for the port to be free before binding it again.
            await wait_until(lambda: port_free(port))
        self.master_rt = await Runtime("127.0.0.1", port).start()
        self.master_port = self.master_rt.port
        self.master = FakeMaster(**kw)
        self.master_rt.spawn(self.master)
        return self.master

    async def stop_master(self) -> None:
        if self.master_rt is not None:
            await self.master_rt.stop()
            self.master_rt = None

    async def start_agent(self, **kw: Any) -> Agent:
        assert self.master is not None
        kw = {**self.agent_options, **kw}
        kw.setdefault("resources", "cpus:2;mem:1024;disk:4096;ports:[31000-32000]")
        kw.setdefault("attributes", "rack:r1;zone:a;gen:3")
        kw.setdefault("registration_backoff", 0.1)
        kw.setdefault("registration_backoff_max", 0.5)
        kw.setdefault("status_update_backoff", 0.5)
        kw.setdefault("status_update_backoff_max", 2.0)
        kw.setdefault("executor_shutdown_grace_period", 3.0)
        self.agent_rt = await Runtime("127.0.0.1", 0, http_port=0).start()
        master_pid = UPID("master", "127.0.0.1", self.master_port)
        self.agent = Agent(master_pid, self.work_dir, **kw)
        self.agent_rt.spawn(self.agent)
        return self.agent

    async def stop_agent(self) -> None:
        if self.agent_rt is not None:
            await self.agent_rt.stop()
            self.agent_rt = None

    async def registered(self) -> FakeMaster:
        """Start both and wait for the agent to be registered."""
        master = self.master or await self.start_master()
        if self.agent is None:
            await self.start_agent()
        await master.wait_for(RegisterAgent.NAME)
        await wait_until(lambda: self.agent is not None and self.agent.registered)
        return master

    async def http_get(self, path: str) -> Any:
        import aiohttp

        assert self.agent_rt is not None
        url = f"http://127.0.0.1:{self.agent_rt.http_port}{path}"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def executor_state(self, executor_id: str) -> dict[str, Any]:
        """The executor's entry in /agent/state, live or completed (for a command task, its id
        is the task's)."""
        state = await self.http_get("/agent/state")
        for fw in [*state["frameworks"], *state["completed_frameworks"]]:
            for executor in [*fw["executors"], *fw["completed_executors"]]:
                if executor["id"] == executor_id:
                    return executor
        raise AssertionError(f"no executor {executor_id} in /agent/state")

    async def sandbox(self, executor_id: str) -> Path:
        """The executor's (or a command task's) sandbox, as /agent/state gives it."""
        return Path((await self.executor_state(executor_id))["directory"])

    async def close(self) -> None:
        await self.stop_agent()
        await self.stop_master()


async def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Poll a condition with a deadline (for things no message announces, like a pid's end)."""
    await eventually(predicate, "condition", timeout)


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie can never run again)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def wait_gone(*pids: int, timeout: float = DEADLINE) -> None:
    await wait_until(lambda: not any(running(p) for p in pids), timeout)


async def read_pid(path: Path) -> int:
    """Wait for a task to write its pid file, then read it."""
    await wait_until(lambda: path.exists() and path.read_text().strip().isdigit())
    return int(path.read_text().strip())


def new_task_id(prefix: str = "task") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def kill_leftovers(pid_files: list[Path]) -> None:
    """Teardown safety net: kill our own child processes and the pids our tasks wrote down."""
    me = psutil.Process()
    pids = {c.pid for c in me.children(recursive=True)}
    for f in pid_files:
        with contextlib.suppress(OSError, ValueError):
            pids.add(int(f.read_text().strip()))
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def running_cluster(tmp_path: Path, **agent_options: Any) -> AsyncIterator[Cluster]:
    """A :class:`Cluster` that is always taken down: runtimes stopped, processes killed.
    ``agent_options``: defaults for its agents (see :class:`Cluster`)."""
    c = Cluster(tmp_path, **agent_options)
    try:
        yield c
    finally:
        try:
            await c.close()
        finally:
            kill_leftovers(list(tmp_path.rglob("*.pid")))
            _filters.clear()
            Clock.reset()
