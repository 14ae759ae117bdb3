"""The agent, driven by a fake master over real ZeroMQ runtimes, with real executor processes.

Command tasks run the agent's default way (``command_tasks="direct"``: the task's container runs
its command, the agent is its executor); tests whose subject is the command executor process use
``"executor"``, and those that must hold either way run in both (the ``command_tasks`` fixture).
The direct path itself has its own tests in test_direct_tasks.py.

Nothing here sleeps for a fixed time: tests await the messages the fake master records, and poll
with a deadline only for things no message announces (a process's end, a pid file).
"""

from __future__ import annotations

import os
import signal
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_harness import (
    Cluster,
    FakeMaster,
    command_task,
    executor_task,
    framework,
    new_task_id,
    python_executor,
    read_pid,
    running,
    running_cluster,
    wait_gone,
    wait_until,
)

from libproc import UPID, Clock, Process, Runtime, handler, settle
from libproc import dispatch as libproc_dispatch
from mesa.actors.agent import Agent
from mesa.actors.containerizer import source_root
from mesa.info import CommandInfo, ExecutorInfo, FrameworkInfo, TaskInfo, TaskStatus
from mesa.messages import (
    ContainerLaunched,
    ContainerTerminated,
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
    StatusUpdate,
    StatusUpdateAcknowledgement,
    StatusUpdateAcknowledgements,
    UpdateFramework,
)
from mesa.task_state import Reason, Source, TaskState

BOTH_MODES = pytest.mark.parametrize("command_tasks", ["direct", "executor"])


@pytest.fixture
def command_tasks() -> str:
    """How the agent runs command tasks (its default); tests parametrize it to cover both."""
    return "direct"


@pytest.fixture
async def cluster(tmp_path: Path, command_tasks: str) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, command_tasks=command_tasks) as c:
        yield c


# A task that records its pid and then becomes `sleep 60` (same pid, thanks to exec).
SLEEPER = "echo $$ > {pidfile}; exec sleep 60"


def sleeper(tmp_path: Path, name: str = "task") -> tuple[str, Path]:
    pidfile = tmp_path / f"{name}.pid"
    return SLEEPER.format(pidfile=pidfile), pidfile


def exited_for(master, executor_id: str) -> list[ExitedExecutor]:
    return master.received(ExitedExecutor.NAME, lambda m: m.executor_id == executor_id)


# ------------------------------------------------------------------------------- registration


async def test_registers_with_resources_attributes_and_persists_its_id(cluster: Cluster):
    master = await cluster.registered()
    reg = master.received(RegisterAgent.NAME)[0]
    assert reg.agent.resources == "cpus:2;mem:1024;disk:4096;ports:[31000-32000]"
    assert reg.agent.attributes == {"rack": "r1", "zone": "a", "gen": 3.0}
    assert reg.agent.id is None
    assert reg.agent.port == cluster.agent_rt.port
    assert reg.agent.http_port == cluster.agent_rt.http_port
    assert (cluster.work_dir / "meta" / "agent_id").read_text().strip() == "agent-1"

    master.send(master.agent, PingAgent.NAME, PingAgent())
    pong = await master.wait_for(PongAgent.NAME)
    assert pong[0].agent_id == "agent-1"

    state = await cluster.http_get("/agent/state")
    assert state["id"] == "agent-1"
    assert state["registered"] is True
    assert state["master"] == str(UPID("master", "127.0.0.1", cluster.master_port))
    assert state["attributes"]["rack"] == "r1"
    metrics = await cluster.http_get("/metrics/snapshot")
    assert metrics["agent/registration_attempts"] >= 1
    assert metrics["agent/registered"] == 1


async def test_detects_resources_it_is_not_given(cluster: Cluster):
    master = await cluster.start_master()
    await cluster.start_agent(resources="cpus:1.5")
    reg = (await master.wait_for(RegisterAgent.NAME))[0]
    text = reg.agent.resources
    assert text.startswith("cpus:1.5;mem:")
    assert "disk:" in text and "ports:[31000-32000]" in text


async def test_restarted_agent_reregisters_with_its_id(cluster: Cluster):
    master = await cluster.registered()
    await cluster.stop_agent()
    await cluster.start_agent()
    rereg = (await master.wait_for(ReregisterAgent.NAME))[0]
    assert rereg.agent.id == "agent-1"
    assert rereg.tasks == [] and rereg.executors == []
    await wait_until(lambda: cluster.agent.registered)


@BOTH_MODES
async def test_reregisters_after_the_master_restarts(
    cluster: Cluster, tmp_path: Path, command_tasks: str
):
    master = await cluster.registered()
    command, pidfile = sleeper(tmp_path)
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, command))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    port = cluster.master_port

    await cluster.stop_master()
    await wait_until(lambda: not cluster.agent.registered)
    master = await cluster.start_master(port=port)
    rereg = (await master.wait_for(ReregisterAgent.NAME))[0]
    assert rereg.agent.id == "agent-1"
    assert [t.task_id for t in rereg.tasks] == [tid]
    assert [s.state for s in rereg.task_states] == [TaskState.TASK_RUNNING]
    assert rereg.task_frameworks == ["fw-1"]
    if command_tasks == "executor":
        assert [e.executor_id for e in rereg.executors] == [tid]
        assert rereg.executors[0].framework_id == "fw-1"
    else:  # the master never heard of a direct task's executor
        assert rereg.executors == []
    assert [f.id for f in rereg.frameworks] == ["fw-1"]
    await wait_until(lambda: cluster.agent.registered)

    # Still working with the new master.
    master.kill("fw-1", tid, grace=0.5)
    await master.wait_state(tid, TaskState.TASK_KILLED)
    await wait_gone(await read_pid(pidfile))


async def test_missing_pings_mean_the_master_is_gone(cluster: Cluster):
    master = await cluster.start_master(ping_interval=0.05)  # and it never pings
    await cluster.start_agent()
    await master.wait_for(RegisterAgent.NAME)
    rereg = (await master.wait_for(ReregisterAgent.NAME))[0]
    assert rereg.agent.id == "agent-1"
    assert cluster.agent_rt.metrics.get("agent/disconnections") >= 1


async def test_pings_keep_the_agent_connected_and_their_absence_does_not(cluster: Cluster):
    # Pings every 10 s: the agent gives up after 5 intervals without one (50 s, paused time).
    master = await cluster.start_master(ping_interval=10.0)
    await cluster.start_agent()
    await master.wait_for(RegisterAgent.NAME)
    await wait_until(lambda: cluster.agent.registered)
    Clock.pause()
    try:
        for n in range(1, 7):  # 6 pings 30 s apart: 180 s in all, far past one deadline
            master.send(master.agent, PingAgent.NAME, PingAgent())
            await master.wait_for(PongAgent.NAME, count=n)
            Clock.advance(30.0)
            await settle()
        assert cluster.agent.registered
        assert cluster.agent_rt.metrics.get("agent/disconnections") == 0
        Clock.advance(19.0)  # 49 s since the last ping: not yet
        await settle()
        assert cluster.agent_rt.metrics.get("agent/disconnections") == 0
        Clock.advance(1.01)  # 50 s (and then some: the deadline is float arithmetic): gone
        await settle()
        assert cluster.agent_rt.metrics.get("agent/disconnections") == 1
        await master.wait_for(ReregisterAgent.NAME)  # (and back at once: the fake answers)
    finally:
        Clock.resume()


async def test_a_master_that_does_not_know_the_agent_gets_it_back(cluster: Cluster):
    master = await cluster.registered()
    master.send(master.agent, PingAgent.NAME, PingAgent(connected=False))
    rereg = (await master.wait_for(ReregisterAgent.NAME))[0]
    assert rereg.agent.id == "agent-1"
    assert len(master.received(PongAgent.NAME)) == 1


async def test_reregistration_kills_tasks_the_master_does_not_know(
    cluster: Cluster, tmp_path: Path
):
    master = await cluster.registered()
    command, pidfile = sleeper(tmp_path)
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, command))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    pid = await read_pid(pidfile)
    port = cluster.master_port
    await cluster.stop_master()
    master = await cluster.start_master(port=port, kill_tasks=[["fw-1", tid]])
    await master.wait_for(ReregisterAgent.NAME)
    await master.wait_state(tid, TaskState.TASK_KILLED)
    await wait_gone(pid)


# ------------------------------------------------------------------------------- command tasks


def expected_states(command_tasks: str, *states: str) -> list[str]:
    """A command task's updates: the command executor sends TASK_STARTING first."""
    return ["TASK_STARTING", *states] if command_tasks == "executor" else list(states)


async def no_exited_executor_for(master, executor_id: str) -> None:
    """Assert the agent sent no ExitedExecutor for ``executor_id`` (a direct task's). A ping
    answered is the barrier: anything the agent sent before the pong has arrived by then."""
    pongs = len(master.received(PongAgent.NAME))
    master.send(master.agent, PingAgent.NAME, PingAgent())
    await master.wait_for(PongAgent.NAME, count=pongs + 1)
    assert exited_for(master, executor_id) == []


@BOTH_MODES
async def test_command_task_runs_and_finishes(cluster: Cluster, command_tasks: str):
    master = await cluster.registered()
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, "echo hello"))
    finished = await master.wait_state(tid, TaskState.TASK_FINISHED)
    assert master.states(tid) == expected_states(command_tasks, "TASK_RUNNING", "TASK_FINISHED")
    status = finished.status
    assert status.agent_id == "agent-1"
    assert status.executor_id == tid
    assert status.source == Source.SOURCE_EXECUTOR
    assert status.message == "Command exited with status 0"
    assert finished.framework_id == "fw-1"

    if command_tasks == "executor":
        exited = (await master.wait_for(ExitedExecutor.NAME))[0]
        assert (exited.agent_id, exited.framework_id, exited.executor_id, exited.status) == (
            "agent-1",
            "fw-1",
            tid,
            0,
        )
        runs = cluster.work_dir / "agents/agent-1/frameworks/fw-1/executors" / tid / "runs"
        [sandbox] = list(runs.iterdir())
        assert sandbox == await cluster.sandbox(tid)
    else:
        await no_exited_executor_for(master, tid)
        sandbox = await cluster.sandbox(tid)
    assert (sandbox / "stdout").read_text() == "hello\n"
    assert (sandbox / "stderr").exists()

    # Forgotten once the executor is gone and every update acknowledged.
    await wait_until(lambda: not cluster.agent._frameworks)
    state = await cluster.http_get("/agent/state")
    [done] = state["completed_frameworks"]
    [executor] = done["completed_executors"]
    assert executor["completed_tasks"][0]["state"] == "TASK_FINISHED"
    assert executor["direct"] is (command_tasks == "direct")
    metrics = await cluster.http_get("/metrics/snapshot")
    assert metrics["agent/tasks_launched"] == 1
    assert metrics["agent/tasks_finished"] == 1
    assert metrics["agent/executors_launched"] == 1
    assert metrics["agent/executors_terminated"] == 1
    acked = len(expected_states(command_tasks, "TASK_RUNNING", "TASK_FINISHED"))
    assert metrics["agent/status_updates_acked"] == acked
    assert metrics["containerizer/containers_launched"] == 1


@BOTH_MODES
async def test_failing_command_reports_its_exit_status(cluster: Cluster, command_tasks: str):
    master = await cluster.registered()
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, "echo oops >&2; exit 3"))
    failed = await master.wait_state(tid, TaskState.TASK_FAILED)
    assert failed.status.message == "Command exited with status 3"
    assert failed.status.source == Source.SOURCE_EXECUTOR
    assert master.states(tid) == expected_states(command_tasks, "TASK_RUNNING", "TASK_FAILED")
    if command_tasks == "executor":
        await master.wait_for(ExitedExecutor.NAME)
    else:
        assert failed.status.reason is None
    [stderr] = list(cluster.work_dir.rglob("stderr"))
    assert stderr == await cluster.sandbox(tid) / "stderr"
    assert "oops" in stderr.read_text()
    assert cluster.agent_rt.metrics.get("agent/tasks_failed") == 1


@BOTH_MODES
async def test_killing_a_task_leaves_no_process(
    cluster: Cluster, tmp_path: Path, command_tasks: str
):
    master = await cluster.registered()
    command, pidfile = sleeper(tmp_path)
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, command))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    pid = await read_pid(pidfile)
    state = await cluster.http_get("/agent/state")
    [executor] = state["frameworks"][0]["executors"]
    assert executor["tasks"][0]["state"] == "TASK_RUNNING"
    executor_pid = executor["os_pid"]
    assert running(pid) and running(executor_pid)

    master.kill("fw-1", tid, grace=1.0)
    killed = await master.wait_state(tid, TaskState.TASK_KILLED)
    assert "SIGTERM" in killed.status.message
    if command_tasks == "executor":
        await master.wait_for(ExitedExecutor.NAME)
        await wait_gone(pid, executor_pid)
    else:
        # A direct task's end is reported once its container is gone.
        assert not running(pid) and not running(executor_pid)
        await no_exited_executor_for(master, tid)


async def test_killing_a_task_kills_what_it_double_forked(cluster: Cluster, tmp_path: Path):
    master = await cluster.registered()
    orphan_file = tmp_path / "orphan.pid"
    main_file = tmp_path / "main.pid"
    # The subshell starts a sleeper and exits at once: the sleeper is re-parented away from the
    # task, but stays in its process group.
    command = f"(sleep 60 & echo $! > {orphan_file}); echo $$ > {main_file}; exec sleep 60"
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, command))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    orphan, main = await read_pid(orphan_file), await read_pid(main_file)
    assert running(orphan) and running(main)
    assert psutil_parent(orphan) != main

    master.kill("fw-1", tid)
    await master.wait_state(tid, TaskState.TASK_KILLED)
    await wait_gone(orphan, main)


def psutil_parent(pid: int) -> int | None:
    import psutil

    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


@pytest.mark.parametrize("command_tasks", ["executor"])  # a direct task has no executor process
async def test_executor_dying_fails_its_task(cluster: Cluster, tmp_path: Path):
    master = await cluster.registered()
    command, pidfile = sleeper(tmp_path)
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, command))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    task_pid = await read_pid(pidfile)
    state = await cluster.http_get("/agent/state")
    executor_pid = state["frameworks"][0]["executors"][0]["os_pid"]

    os.kill(executor_pid, signal.SIGKILL)
    failed = await master.wait_state(tid, TaskState.TASK_FAILED)
    assert failed.status.reason == Reason.REASON_EXECUTOR_TERMINATED
    assert failed.status.source == Source.SOURCE_AGENT
    assert "terminated by signal SIGKILL" in failed.status.message
    exited = (await master.wait_for(ExitedExecutor.NAME))[0]
    assert exited.status == -signal.SIGKILL
    # The containerizer swept the task the executor could not kill.
    await wait_gone(task_pid)


# ------------------------------------------------------------------------------- reliability


@BOTH_MODES
async def test_status_updates_are_retried_in_order_until_acknowledged(
    cluster: Cluster, command_tasks: str
):
    master = await cluster.start_master(auto_ack=False)
    await cluster.start_agent(status_update_backoff=0.05, status_update_backoff_max=0.2)
    await cluster.registered()
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, "echo hi"))

    expected_all = expected_states(command_tasks, "TASK_RUNNING", "TASK_FINISHED")
    for expected in expected_all:
        copies = await master.wait_for(
            StatusUpdate.NAME,
            lambda u, s=expected: u.status.task_id == tid and u.status.state == s,
            count=3,
        )
        assert len({u.status.uuid for u in copies}) == 1  # the same update, resent
        # Nothing behind the unacknowledged head has been sent.
        assert master.states(tid)[-1] == expected
        master.ack(copies[0])

    assert master.states(tid) == expected_all
    metrics = cluster.agent_rt.metrics
    await wait_until(lambda: metrics.get("agent/status_updates_acked") == len(expected_all))
    assert metrics.get("agent/status_updates_retried") >= 2 * len(expected_all)
    assert metrics.get("agent/status_updates_sent") == len(expected_all)
    # With every update delivered the framework is forgotten.
    if command_tasks == "executor":
        await master.wait_for(ExitedExecutor.NAME)
    await wait_until(lambda: not cluster.agent._frameworks)
    state = await cluster.http_get("/agent/state")
    assert state["pending_status_updates"] == []


async def test_a_batch_of_acknowledgements_takes_the_good_and_counts_the_bad(cluster: Cluster):
    """In one StatusUpdateAcknowledgements, a bad entry is refused alone: the good one beside
    it still moves its task's stream on (the next update goes out) and is counted once."""
    master = await cluster.start_master(auto_ack=False)
    await cluster.start_agent()
    await cluster.registered()
    metrics = cluster.agent_rt.metrics
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, "exit 0"))
    running = await master.wait_state(tid, TaskState.TASK_RUNNING)
    invalid = metrics.get("agent/invalid_messages")
    acked = metrics.get("agent/status_updates_acked")
    bad_uuid: Any = "not bytes"
    master.send(
        master.agent,  # type: ignore[arg-type]
        StatusUpdateAcknowledgements.NAME,
        StatusUpdateAcknowledgements(
            "fw-1",
            [master.agent_id] * 3,
            ["no-such-task", tid, tid],
            [b"0" * 16, running.status.uuid, bad_uuid],
        ),
    )
    finished = await master.wait_state(tid, TaskState.TASK_FINISHED)  # the stream moved on
    await wait_until(lambda: metrics.get("agent/invalid_messages") == invalid + 2)
    assert metrics.get("agent/status_updates_acked") == acked + 1
    master.ack(finished)
    await wait_until(lambda: not cluster.agent._frameworks)  # all delivered: forgotten


async def test_updates_wait_while_disconnected_and_go_to_the_new_master(
    cluster: Cluster, tmp_path: Path
):
    master = await cluster.registered()
    port = cluster.master_port
    await cluster.stop_master()
    await wait_until(lambda: not cluster.agent.registered)
    tid = new_task_id()
    # A kill for an unknown task while disconnected: the agent's own update must wait.
    cluster.agent_rt.send(
        cluster.agent.pid, KillTask.NAME, KillTask("fw-1", tid), sender=cluster.agent.master
    )
    await wait_until(lambda: len(cluster.agent._updates) == 1)
    master = await cluster.start_master(port=port)
    lost = await master.wait_state(tid, TaskState.TASK_LOST)
    assert lost.status.reason == Reason.REASON_TASK_UNKNOWN


# ------------------------------------------------------------------------------- custom executors

EXAMPLE = Path(source_root()) / "examples" / "echo_executor.py"


def echo_task(task_id: str, data: bytes | None = None, seconds: float = 0) -> TaskInfo:
    task = executor_task(task_id, python_executor("echo", EXAMPLE), data=data)
    task.labels = {"seconds": str(seconds)}
    return task


async def test_custom_executor_runs_several_tasks_and_talks(cluster: Cluster):
    master = await cluster.registered()
    t1, t2, t3 = new_task_id("a"), new_task_id("b"), new_task_id("c")
    # Both arrive before the executor can have registered: they queue, then go in order.
    master.run_task(framework(), echo_task(t1, b"one"))
    master.run_task(framework(), echo_task(t2, seconds=60))
    done = await master.wait_state(t1, TaskState.TASK_FINISHED)
    assert done.status.data == b"one"
    assert done.status.executor_id == "echo"
    assert done.status.source == Source.SOURCE_EXECUTOR
    await master.wait_state(t2, TaskState.TASK_RUNNING)
    # A third, straight to the registered executor.
    master.run_task(framework(), echo_task(t3, b"three"))
    await master.wait_state(t3, TaskState.TASK_FINISHED)

    master.send(
        master.agent,
        FrameworkToExecutor.NAME,
        FrameworkToExecutor("fw-1", "agent-1", "echo", b"ping"),
    )
    reply = (await master.wait_for(ExecutorToFramework.NAME))[0]
    assert (reply.framework_id, reply.agent_id, reply.executor_id, reply.data) == (
        "fw-1",
        "agent-1",
        "echo",
        b"ping",
    )
    master.send(master.agent, UpdateFramework.NAME, UpdateFramework("fw-1", "scheduler@10.0.0.1:9"))
    await wait_until(lambda: cluster.agent._frameworks["fw-1"].pid == "scheduler@10.0.0.1:9")
    state = await cluster.http_get("/agent/state")
    assert state["frameworks"][0]["pid"] == "scheduler@10.0.0.1:9"
    [executor] = state["frameworks"][0]["executors"]
    assert executor["id"] == "echo" and executor["state"] == "RUNNING"
    assert [t["id"] for t in executor["tasks"]] == [t2]
    assert {t["id"] for t in executor["completed_tasks"]} == {t1, t3}
    executor_pid = executor["os_pid"]

    master.kill("fw-1", t2)
    await master.wait_state(t2, TaskState.TASK_KILLED)
    master.shutdown_framework("fw-1")
    exited = (await master.wait_for(ExitedExecutor.NAME))[0]
    assert exited.executor_id == "echo" and exited.status == 0
    await wait_gone(executor_pid)
    assert master.states(t1) == ["TASK_RUNNING", "TASK_FINISHED"]
    assert cluster.agent_rt.metrics.get("agent/executors_launched") == 1


@BOTH_MODES
async def test_shutdown_framework_kills_its_tasks(
    cluster: Cluster, tmp_path: Path, command_tasks: str
):
    master = await cluster.registered()
    command, pidfile = sleeper(tmp_path)
    t1, t2 = new_task_id("cmd"), new_task_id("custom")
    master.run_task(framework(), command_task(t1, command))
    master.run_task(framework(), echo_task(t2, seconds=60))
    await master.wait_state(t1, TaskState.TASK_RUNNING)
    await master.wait_state(t2, TaskState.TASK_RUNNING)
    pid = await read_pid(pidfile)

    master.shutdown_framework("fw-1")
    killed = await master.wait_state(t1, TaskState.TASK_KILLED)
    await master.wait_state(t2, TaskState.TASK_KILLED)
    if command_tasks == "executor":
        await master.wait_for(ExitedExecutor.NAME, count=2)
    else:  # the custom executor's, not the direct task's
        assert killed.status.reason == Reason.REASON_FRAMEWORK_REMOVED
        await master.wait_for(ExitedExecutor.NAME, lambda m: m.executor_id == "echo")
        assert exited_for(master, t1) == []
    await wait_gone(pid)
    await wait_until(lambda: not cluster.agent._frameworks)
    # A task for a framework that is gone starts a fresh one.
    t3 = new_task_id()
    master.run_task(framework(), command_task(t3, "true"))
    await master.wait_state(t3, TaskState.TASK_FINISHED)


async def test_executor_that_hangs_on_shutdown_is_destroyed(cluster: Cluster, tmp_path: Path):
    stubborn = tmp_path / "stubborn.py"
    # A shutdown callback that blocks the executor's whole event loop: only destroy ends it.
    stubborn.write_text(
        textwrap.dedent(
            f"""
            import sys
            import time

            sys.path.insert(0, {str(EXAMPLE.parent)!r})
            from echo_executor import EchoExecutor
            from mesa.executor import ExecutorDriver

            class Stubborn(EchoExecutor):
                def shutdown(self, driver):
                    time.sleep(60)

            ExecutorDriver(Stubborn()).run()
            """
        )
    )
    master = await cluster.start_master()
    await cluster.start_agent(executor_shutdown_grace_period=0.5)
    await cluster.registered()
    tid = new_task_id()
    task = executor_task(tid, python_executor("stubborn", stubborn))
    task.labels = {"seconds": "60"}
    master.run_task(framework(), task)
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    master.shutdown_framework("fw-1")
    exited = (await master.wait_for(ExitedExecutor.NAME))[0]
    assert exited.executor_id == "stubborn"
    assert exited.status == -signal.SIGKILL
    assert cluster.agent_rt.metrics.get("containerizer/containers_destroyed") == 1
    killed = await master.wait_state(tid, TaskState.TASK_KILLED)
    assert killed.status.source == Source.SOURCE_AGENT


# ------------------------------------------------------------------------------- launch problems


def never_registers(tmp_path: Path, executor_id: str = "never") -> tuple[ExecutorInfo, Path]:
    pidfile = tmp_path / f"{executor_id}.pid"
    info = ExecutorInfo(executor_id, CommandInfo(value=SLEEPER.format(pidfile=pidfile)))
    return info, pidfile


async def test_a_live_task_id_is_refused_whichever_executor_holds_it(
    cluster: Cluster, tmp_path: Path
):
    # The agent finds a task by its id (a launch checks the id is free, a kill finds the task)
    # through an index of live tasks, not a walk over executors: here the id is held by a
    # custom executor, and the second launch is a direct task, an executor of its own.
    master = await cluster.registered()
    metrics = cluster.agent_rt.metrics
    info, pidfile = never_registers(tmp_path)
    tid = new_task_id()
    master.run_task(framework(), executor_task(tid, info))
    await read_pid(pidfile)
    refused = metrics.get("agent/invalid_messages")
    master.run_task(framework(), command_task(tid, "true"))
    await wait_until(lambda: metrics.get("agent/invalid_messages") > refused)
    master.kill("fw-1", tid)
    await master.wait_state(tid, TaskState.TASK_KILLED)
    # Ended, its id is free again.
    master.run_task(framework(), command_task(tid, "true"))
    await master.wait_state(tid, TaskState.TASK_FINISHED)


async def test_kill_before_the_executor_registers(cluster: Cluster, tmp_path: Path):
    master = await cluster.registered()
    info, pidfile = never_registers(tmp_path)
    tid = new_task_id()
    master.run_task(framework(), executor_task(tid, info))
    pid = await read_pid(pidfile)
    master.kill("fw-1", tid)
    killed = await master.wait_state(tid, TaskState.TASK_KILLED)
    assert killed.status.reason == Reason.REASON_TASK_KILLED_DURING_LAUNCH
    assert killed.status.source == Source.SOURCE_AGENT
    await master.wait_for(ExitedExecutor.NAME)
    await wait_gone(pid)


async def test_executor_registration_timeout(cluster: Cluster, tmp_path: Path):
    master = await cluster.start_master()
    await cluster.start_agent(executor_registration_timeout=0.3)
    await cluster.registered()
    info, pidfile = never_registers(tmp_path)
    tid = new_task_id()
    # Paused time: the timeout runs out once the executor's process is up, not while its
    # container is still starting (under load that can take longer than the timeout, and a
    # container destroyed before its command runs leaves no process whose end to check).
    Clock.pause()
    try:
        master.run_task(framework(), executor_task(tid, info))
        pid = await read_pid(pidfile)
        Clock.advance(0.3)
        failed = await master.wait_state(tid, TaskState.TASK_FAILED)
    finally:
        Clock.resume()
    assert failed.status.reason == Reason.REASON_EXECUTOR_REGISTRATION_TIMEOUT
    await master.wait_for(ExitedExecutor.NAME)
    await wait_gone(pid)


async def test_container_launch_failure(cluster: Cluster, tmp_path: Path):
    master = await cluster.registered()
    info = ExecutorInfo("broken", CommandInfo(value=str(tmp_path / "no-such-program"), shell=False))
    tid = new_task_id()
    master.run_task(framework(), executor_task(tid, info))
    failed = await master.wait_state(tid, TaskState.TASK_FAILED)
    assert failed.status.reason == Reason.REASON_CONTAINER_LAUNCH_FAILED
    assert "no-such-program" in failed.status.message
    await master.wait_for(ExitedExecutor.NAME)
    assert cluster.agent_rt.metrics.get("containerizer/launch_errors") == 1


async def test_invalid_tasks_are_errors(cluster: Cluster):
    master = await cluster.registered()
    tid = new_task_id()
    task = command_task(tid, "true")
    task.executor = ExecutorInfo("e", CommandInfo(value="true"))  # both: invalid
    master.run_task(framework(), task)
    error = await master.wait_state(tid, TaskState.TASK_ERROR)
    assert error.status.reason == Reason.REASON_TASK_INVALID
    bad_path = command_task("../../escape", "true")
    master.run_task(framework(), bad_path)
    await wait_until(lambda: cluster.agent_rt.metrics.get("agent/invalid_messages") >= 1)
    assert not list(cluster.tmp_path.rglob("escape"))


# ------------------------------------------------------------------------------- bad input


async def test_bad_input_is_counted_and_answered_never_fatal(cluster: Cluster, tmp_path: Path):
    master = await cluster.registered()
    agent, metrics = cluster.agent, cluster.agent_rt.metrics
    invalid = 0

    async def rejected() -> None:
        nonlocal invalid
        invalid += 1
        await wait_until(lambda: metrics.get("agent/invalid_messages") >= invalid)

    master.send(master.agent, RunTask.NAME, {"task": "not a record"})
    await rejected()
    fw_info = FrameworkInfo(user="", name="t", id="fw-batch")
    master.send(master.agent, RunTasks.NAME, RunTasks(fw_info, "s@127.0.0.1:1", []))
    await rejected()
    # A bad task in a batch is refused alone: its siblings run.
    good = TaskInfo("good", "good", "", "cpus:0.1;mem:16", command=CommandInfo("exit 0"))
    bad = TaskInfo("bad", "../bad", "", "cpus:0.1;mem:16", command=CommandInfo("exit 0"))
    master.send(master.agent, RunTasks.NAME, RunTasks(fw_info, "s@127.0.0.1:1", [bad, good]))
    await rejected()
    await master.wait_state("good", TaskState.TASK_FINISHED)
    master.send(master.agent, KillTask.NAME, ["nonsense"])
    await rejected()
    master.send(
        master.agent,
        StatusUpdateAcknowledgement.NAME,
        StatusUpdateAcknowledgement("fw-x", "agent-1", "nope", b"0" * 16),
    )
    await rejected()
    # A framework id that is not text (a list cannot even be looked up), alone or in a batch.
    bad_fid: Any = ["fw"]
    master.send(
        master.agent,
        StatusUpdateAcknowledgement.NAME,
        StatusUpdateAcknowledgement(bad_fid, "agent-1", "t", b"0" * 16),
    )
    await rejected()
    master.send(
        master.agent,
        StatusUpdateAcknowledgements.NAME,
        StatusUpdateAcknowledgements(bad_fid, ["agent-1"], ["t"], [b"0" * 16]),
    )
    await rejected()
    # In a batch, each bad acknowledgement counts alone: an unknown task, a uuid that is not
    # bytes; the good one among them (none here) would still be taken.
    master.send(
        master.agent,
        StatusUpdateAcknowledgements.NAME,
        StatusUpdateAcknowledgements("fw-x", ["a", "a"], ["nope", "t"], [b"0" * 16, "text"]),
    )
    await rejected()
    await rejected()
    # Only the master may give orders; only registered executors may send updates.
    stranger = cluster.agent_rt  # its anonymous sender is not the master
    stranger.send(agent.pid, KillTask.NAME, KillTask("fw-1", "t"))
    await rejected()
    stranger.send(
        agent.pid,
        StatusUpdate.NAME,
        StatusUpdate("fw-1", TaskStatus("t", TaskState.TASK_RUNNING, uuid=b"1" * 16)),
    )
    await rejected()
    stranger.send(agent.pid, StatusUpdate.NAME, StatusUpdate("fw-1", {"state": 1}))  # type: ignore[arg-type]
    await rejected()
    stranger.send(agent.pid, RegisterExecutor.NAME, RegisterExecutor("fw-1", "e", "c"))
    await rejected()

    # A kill for a task nobody knows is answered so the master can forget it.
    master.kill("fw-unknown", "ghost")
    lost = await master.wait_state("ghost", TaskState.TASK_LOST)
    assert lost.status.reason == Reason.REASON_TASK_UNKNOWN
    assert lost.status.source == Source.SOURCE_AGENT
    assert lost.framework_id == "fw-unknown"
    # … and with TASK_DROPPED to a partition-aware framework the agent knows.
    info, pidfile = never_registers(tmp_path)
    aware = framework("fw-aware", capabilities=["PARTITION_AWARE"])
    tid = new_task_id()
    master.run_task(aware, executor_task(tid, info))
    await read_pid(pidfile)
    master.kill("fw-aware", "ghost-2")
    dropped = await master.wait_state("ghost-2", TaskState.TASK_DROPPED)
    assert dropped.status.reason == Reason.REASON_TASK_UNKNOWN
    master.kill("fw-aware", tid)
    await master.wait_state(tid, TaskState.TASK_KILLED)

    # Still alive and well.
    master.send(master.agent, PingAgent.NAME, PingAgent())
    await master.wait_for(PongAgent.NAME)
    snapshot = await cluster.http_get("/metrics/snapshot")
    assert snapshot["agent/invalid_messages"] == invalid
    assert snapshot.get("libproc/handler_errors", 0) == 0


async def test_agent_stop_destroys_its_containers(cluster: Cluster, tmp_path: Path):
    master = await cluster.registered()
    command, pidfile = sleeper(tmp_path)
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, command))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    pid = await read_pid(pidfile)
    state = await cluster.http_get("/agent/state")
    executor_pid = state["frameworks"][0]["executors"][0]["os_pid"]
    await cluster.stop_agent()
    await wait_gone(pid, executor_pid)


# ------------------------------------------------------------------------- updates in bursts


class InstantContainerizer(Process):
    """Launches every container at once and ends them all when told: what a burst of tasks
    that start together and end together looks like to the agent."""

    def __init__(self) -> None:
        super().__init__("containerizer")
        self.running: dict[str, UPID] = {}

    @handler(LaunchContainer.NAME)
    def launch(self, sender: UPID, msg: LaunchContainer) -> None:
        self.running[msg.container_id] = sender
        self.send(sender, ContainerLaunched.NAME, ContainerLaunched(msg.container_id, pid=1))

    def end_all(self) -> None:
        for cid, owner in self.running.items():
            self.send(owner, ContainerTerminated.NAME, ContainerTerminated(cid, status=0))
        self.running.clear()


async def _instant_agent(
    tmp_path: Path,
    *,
    hold: float = Agent.update_hold,
    gap: float = Agent.update_gap,
    batch: int = Agent.update_batch,
    auto_ack: bool = False,
    per_message: int = 1000,
) -> tuple[Cluster, FakeMaster, Runtime, Agent, InstantContainerizer]:
    """An agent whose containers start at once, and a master that acknowledges every update
    (``auto_ack``) or only when told."""
    cluster = Cluster(tmp_path)
    master = await cluster.start_master(auto_ack=auto_ack)
    rt = await Runtime("127.0.0.1", 0).start()
    containerizer = InstantContainerizer()
    agent = Agent(
        UPID("master", "127.0.0.1", cluster.master_port),
        tmp_path / "work",
        resources="cpus:4;mem:1024",
        containerizer=rt.spawn(containerizer),
    )
    agent.update_hold = hold
    agent.update_gap = gap
    agent.update_batch = batch
    agent.updates_per_message = per_message
    try:
        rt.spawn(agent)
        await master.wait_for(RegisterAgent.NAME)
        await wait_until(lambda: agent.registered)
    except BaseException:
        await rt.stop()
        await cluster.stop_master()
        raise
    return cluster, master, rt, agent, containerizer


async def test_updates_wait_for_the_master_s_answer_to_the_message_before(tmp_path: Path) -> None:
    # The hold is a minute: only the master's answer can release what waits.
    cluster, master, rt, _agent, containerizer = await _instant_agent(tmp_path, hold=60.0)
    try:
        master.run_task(framework(), command_task("a", "true"))
        (running_a,) = await master.wait_for(StatusUpdate.NAME)
        # "a"'s message is unanswered, so "b"'s TASK_RUNNING waits for the answer.
        master.run_task(framework(), command_task("b", "true"))
        await wait_until(lambda: rt.metrics.get("agent/status_update_messages_held") == 1)
        assert master.updates("b") == []
        master.ack(running_a)
        running_b = await master.wait_state("b", TaskState.TASK_RUNNING)
        master.ack(running_b)
        await wait_until(lambda: rt.metrics.get("agent/status_updates_acked") == 2)
        # Answered: what the tasks say next goes at once (their ends, here, as one message).
        await libproc_dispatch(containerizer.pid, containerizer.end_all)
        await master.wait_for(
            StatusUpdate.NAME, lambda u: u.status.state == TaskState.TASK_FINISHED, count=2
        )
        assert master.batches == 1
        assert rt.metrics.get("agent/status_update_messages") == 3
        assert rt.metrics.get("agent/status_update_messages_held") == 1
    finally:
        await rt.stop()
        await cluster.stop_master()


async def test_without_an_answer_held_updates_go_when_the_hold_ends(tmp_path: Path) -> None:
    cluster, master, rt, _agent, _containerizer = await _instant_agent(tmp_path, hold=0.05)
    try:
        master.run_task(framework(), command_task("a", "true"))
        await master.wait_for(StatusUpdate.NAME)
        master.run_task(framework(), command_task("b", "true"))
        await master.wait_state("b", TaskState.TASK_RUNNING)  # never acknowledged "a"
        assert rt.metrics.get("agent/status_update_messages_held") == 1
        assert rt.metrics.get("agent/status_updates_retried") == 0
    finally:
        await rt.stop()
        await cluster.stop_master()


async def _three_start_together_and_end(
    master: FakeMaster, rt: Runtime, containerizer: InstantContainerizer
) -> list[StatusUpdate]:
    """Three tasks in one RunTasks; once their TASK_RUNNINGs are acknowledged they end: their
    TASK_FINISHED updates."""
    tasks = [command_task(f"g{i}", "true") for i in range(3)]
    master.send(master.agent, RunTasks.NAME, RunTasks(framework(), "s@127.0.0.1:1", tasks))  # type: ignore[arg-type]
    await wait_until(lambda: rt.metrics.get("agent/status_updates_acked") == 3)
    await libproc_dispatch(containerizer.pid, containerizer.end_all)
    return await master.wait_for(
        StatusUpdate.NAME, lambda u: u.status.state == TaskState.TASK_FINISHED, count=3
    )


@pytest.mark.parametrize("gap,spaced", [(2.0, 1), (0.0, 0)])
async def test_after_a_burst_the_next_updates_wait_for_the_gap(
    tmp_path: Path, gap: float, spaced: int
) -> None:
    """Three tasks start together (one message of three TASK_RUNNINGs) and end as soon as those
    are acknowledged: their TASK_FINISHEDs wait for the gap after the burst (two seconds here,
    far longer than the round trip), and still leave together."""
    cluster, master, rt, _agent, containerizer = await _instant_agent(
        tmp_path, auto_ack=True, gap=gap
    )
    try:
        finished = await _three_start_together_and_end(master, rt, containerizer)
        assert {u.status.task_id for u in finished} == {"g0", "g1", "g2"}
        assert master.batches == 2  # the RUNNINGs together, the FINISHEDs together
        assert rt.metrics.get("agent/status_update_messages_spaced") == spaced
    finally:
        await rt.stop()
        await cluster.stop_master()


async def test_a_burst_as_big_as_the_batch_does_not_wait_for_the_gap(tmp_path: Path) -> None:
    """The same three tasks with a gap of a minute and a batch of three: their TASK_FINISHEDs
    are a full batch, and leave at once."""
    cluster, master, rt, _agent, containerizer = await _instant_agent(
        tmp_path, auto_ack=True, gap=60.0, batch=3
    )
    try:
        await _three_start_together_and_end(master, rt, containerizer)
        assert master.batches == 2
        assert rt.metrics.get("agent/status_update_messages_full") == 1
    finally:
        await rt.stop()
        await cluster.stop_master()


@pytest.mark.parametrize("per_message,batches", [(1000, 1), (2, 1), (1, 0)])
async def test_updates_made_together_go_to_the_master_together(
    tmp_path: Path, per_message: int, batches: int
) -> None:
    # (With at most two to a message, the three go as a StatusUpdates of two and a lone one.)
    cluster, master, rt, _agent, containerizer = await _instant_agent(
        tmp_path, auto_ack=True, per_message=per_message
    )
    try:
        tasks = [command_task(f"b{i}", "true") for i in range(3)]
        master.send(master.agent, RunTasks.NAME, RunTasks(framework(), "s@127.0.0.1:1", tasks))  # type: ignore[arg-type]
        running = await master.wait_for(
            StatusUpdate.NAME, lambda u: u.status.state == TaskState.TASK_RUNNING, count=3
        )
        assert [u.status.task_id for u in running] == ["b0", "b1", "b2"]
        assert master.batches == batches  # StatusUpdates (each acknowledged with one message)
        await wait_until(lambda: rt.metrics.get("agent/status_updates_acked") == 3)
        # They end together: their TASK_FINISHEDs go together too.
        await libproc_dispatch(containerizer.pid, containerizer.end_all)
        finished = await master.wait_for(
            StatusUpdate.NAME, lambda u: u.status.state == TaskState.TASK_FINISHED, count=3
        )
        assert {u.status.task_id for u in finished} == {"b0", "b1", "b2"}
        assert master.batches == 2 * batches
        await wait_until(lambda: rt.metrics.get("agent/status_updates_acked") == 6)
        assert rt.metrics.get("agent/status_updates_retried") == 0
    finally:
        await rt.stop()
        await cluster.stop_master()
