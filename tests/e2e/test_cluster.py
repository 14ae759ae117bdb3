"""The whole cluster, as a user runs it: master and agents as OS processes over real sockets.

Frameworks are written on the SDK inside the test process (so the test can await their
callbacks), or run as ``python -m mesa.execute`` subprocesses.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from mesa.task_state import TaskState
from tests.e2e.cluster import Cluster, env
from tests.e2e.framework import command_task, start_framework

pytestmark = pytest.mark.timeout(180)


async def _execute(master: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesa.execute",
        f"--master={master}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env(),
    )
    try:
        async with asyncio.timeout(120):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode()  # type: ignore[return-value]


async def test_execute_runs_a_task_to_finished(cluster: Cluster) -> None:
    master = await cluster.start_master()
    await cluster.start_agent()
    code, out = await _execute(
        master.endpoint,
        "--name=hello",
        "--command=echo hello-from-mesa",
        "--resources=cpus:0.1;mem:32",
    )
    assert code == 0, out
    assert "TASK_RUNNING" in out and "TASK_FINISHED" in out
    stdout_files = list(cluster.work_dir.glob("agent/**/stdout"))
    assert any("hello-from-mesa" in p.read_text() for p in stdout_files)


async def test_execute_reports_failure_exit_code(cluster: Cluster) -> None:
    master = await cluster.start_master()
    await cluster.start_agent()
    code, out = await _execute(
        master.endpoint, "--name=bad", "--command=exit 3", "--resources=cpus:0.1;mem:32"
    )
    assert code != 0
    assert "TASK_FAILED" in out
    assert "3" in out


async def test_launch_kill_and_validation(cluster: Cluster) -> None:
    master = await cluster.start_master()
    await cluster.start_agent(resources="cpus:1;mem:256;disk:64")
    fw, driver = await start_framework(master.endpoint)
    try:
        offer = await fw.offer()
        # Over the offer: TASK_ERROR with a reason; the sleeper fits and runs.
        too_big = command_task(offer, "too-big", "true", resources="cpus:8;mem:32")
        sleeper = command_task(offer, "sleeper", "sleep 60", resources="cpus:0.5;mem:64")
        duplicate = command_task(offer, "sleeper", "true", resources="cpus:0.1;mem:32")
        driver.launch_tasks([offer.id], [too_big, sleeper, duplicate])
        error = await fw.state_of("too-big", TaskState.TASK_ERROR)
        assert "more resources" in (error.message or "")
        dup = await fw.until(
            lambda: [s for s in fw.updates if s.task_id == "sleeper" and s.state == "TASK_ERROR"],
            "duplicate rejected",
        )
        assert "already in use" in (dup[0].message or "")
        await fw.state_of("sleeper", TaskState.TASK_RUNNING)

        # A spent offer id: the task is dropped with the reason.
        driver.launch_tasks([offer.id], [command_task(offer, "late", "true")])
        dropped = await fw.state_of("late", TaskState.TASK_DROPPED)
        assert dropped.reason == "REASON_INVALID_OFFERS"

        driver.kill_task("sleeper")
        killed = await fw.state_of("sleeper", TaskState.TASK_KILLED)
        assert killed.agent_id == offer.agent_id
        state = await cluster.wait_for(
            lambda s: s["frameworks"] and s["frameworks"][0]["completed_tasks"], "completed task"
        )
        assert state[0]["id"] == "sleeper"
    finally:
        await driver.stop()


async def test_reconciliation_explicit_and_implicit(cluster: Cluster) -> None:
    master = await cluster.start_master()
    await cluster.start_agent()
    fw, driver = await start_framework(master.endpoint)
    try:
        offer = await fw.offer()
        driver.launch_tasks([offer.id], [command_task(offer, "r1", "sleep 60")])
        await fw.state_of("r1", TaskState.TASK_RUNNING)
        before = len(fw.updates)
        driver.reconcile_tasks()  # implicit: every task the master knows
        implicit = await fw.until(
            lambda: [s for s in fw.updates[before:] if s.reason == "REASON_RECONCILIATION"],
            "implicit reconciliation",
        )
        assert implicit[0].task_id == "r1" and implicit[0].state == TaskState.TASK_RUNNING
        from mesa.info import TaskStatus

        before = len(fw.updates)
        driver.reconcile_tasks(
            [
                TaskStatus("r1", "TASK_STAGING", agent_id=offer.agent_id),
                TaskStatus("nope", "TASK_STAGING", agent_id=offer.agent_id),
            ]
        )
        explicit = await fw.until(
            lambda: (
                len([s for s in fw.updates[before:] if s.reason == "REASON_RECONCILIATION"]) >= 2
                and fw.updates[before:]
            ),
            "explicit reconciliation",
        )
        by_id = {s.task_id: s.state for s in explicit}
        assert by_id["r1"] == TaskState.TASK_RUNNING
        assert by_id["nope"] == TaskState.TASK_LOST
    finally:
        await driver.stop()


async def test_many_tasks_at_once(cluster: Cluster) -> None:
    master = await cluster.start_master()
    await cluster.start_agent("a1", "cpus:2;mem:2048;disk:64")
    await cluster.start_agent("a2", "cpus:2;mem:2048;disk:64")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "examples/run_n.py",
        f"--master={master.endpoint}",
        "--count=40",
        "--command=echo $MESA_TASK_ID",
        "--cpus=0.1",
        "--mem=16",
        "--name=many",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env(),
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    try:
        async with asyncio.timeout(150):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text[-3000:]
    assert text.count("TASK_FINISHED") == 40
    state = master.state("/master/state")
    done = state["completed_frameworks"][0]["completed_tasks"]
    assert {t["agent_id"] for t in done} == {a["id"] for a in state["agents"]}


async def test_agent_killed_then_back(cluster: Cluster) -> None:
    master = await cluster.start_master("--agent-ping-interval=0.2", "--max-agent-ping-timeouts=3")
    agent = await cluster.start_agent("agent")
    plain, plain_driver = await start_framework(master.endpoint, "plain")
    aware, aware_driver = await start_framework(
        master.endpoint, "aware", capabilities=["PARTITION_AWARE"]
    )
    try:
        for fw, driver, task_id in ((plain, plain_driver, "p1"), (aware, aware_driver, "a1")):
            offer = await fw.offer()
            driver.launch_tasks([offer.id], [command_task(offer, task_id, "sleep 60")])
            await fw.state_of(task_id, TaskState.TASK_RUNNING)
        agent.kill9()
        lost = await plain.state_of("p1", TaskState.TASK_LOST)
        assert "unreachable" in (lost.message or "")
        await aware.state_of("a1", TaskState.TASK_UNREACHABLE)
        await plain.until(lambda: plain.lost_agents, "agent_lost callback")
        state = await cluster.wait_for(lambda s: s["unreachable"] and s, "agent unreachable")
        assert state["agents"] == []

        # The agent comes back with the same work dir: same id, reregistered.
        old_id = state["unreachable"][0]["id"]
        await cluster.start_agent("agent")
        state = await cluster.wait_for(lambda s: s["agents"] and s, "agent back")
        assert state["agents"][0]["id"] == old_id
        assert state["unreachable"] == []
        # Its executors died with it, so the partition-aware task is gone for good.
        await aware.state_of("a1", TaskState.TASK_GONE)
    finally:
        await plain_driver.stop()
        await aware_driver.stop()


async def test_framework_failover_within_and_past_timeout(cluster: Cluster) -> None:
    master = await cluster.start_master()
    await cluster.start_agent()
    fw, driver = await start_framework(master.endpoint, "failing", failover_timeout=3600.0)
    offer = await fw.offer()
    driver.launch_tasks([offer.id], [command_task(offer, "keep", "sleep 60")])
    await fw.state_of("keep", TaskState.TASK_RUNNING)
    framework_id = driver.framework_id
    await driver.stop(failover=True)

    # A new scheduler with the same id takes the framework and its task over.
    fw2, driver2 = await start_framework(
        master.endpoint, "failing", id=framework_id, failover_timeout=1.0
    )
    try:
        driver2.reconcile_tasks()
        status = await fw2.state_of("keep", TaskState.TASK_RUNNING)
        assert status.reason == "REASON_RECONCILIATION"
        state = master.state("/master/state")
        assert state["frameworks"][0]["id"] == framework_id
        assert state["frameworks"][0]["tasks"][0]["id"] == "keep"
    finally:
        await driver2.stop(failover=True)

    # Past the (now 1 s) failover timeout the framework is torn down and its task killed.
    state = await cluster.wait_for(
        lambda s: s["completed_frameworks"] and s, "framework removed after failover timeout"
    )
    removed = state["completed_frameworks"][0]
    assert removed["id"] == framework_id
    assert removed["completed_tasks"][0]["state"] == "TASK_KILLED"


async def test_custom_executor_runs_tasks_and_carries_framework_messages(cluster: Cluster) -> None:
    from mesa.info import CommandInfo, ExecutorInfo, TaskInfo

    master = await cluster.start_master()
    await cluster.start_agent()
    fw, driver = await start_framework(master.endpoint, "custom")
    try:
        offer = await fw.offer()
        script = str(Path(__file__).resolve().parents[2] / "examples" / "echo_executor.py")
        executor = ExecutorInfo(
            "echo",
            CommandInfo(sys.executable, shell=False, arguments=[sys.executable, script]),
            resources="cpus:0.1;mem:32",
        )
        tasks = [
            TaskInfo(
                f"e{i}",
                f"e{i}",
                offer.agent_id,
                "cpus:0.1;mem:16",
                executor=executor,
                data=f"payload-{i}".encode(),
                labels={"seconds": "0"},
            )
            for i in range(2)
        ]
        driver.launch_tasks([offer.id], tasks)
        for i in range(2):
            done = await fw.state_of(f"e{i}", TaskState.TASK_FINISHED)
            assert done.data == f"payload-{i}".encode()
        # One executor ran both tasks; a message to it comes back through the master.
        driver.send_framework_message("echo", offer.agent_id, b"ping")
        await fw.until(lambda: fw.messages, "echoed framework message")
        assert fw.messages[0] == ("echo", offer.agent_id, b"ping")
        state = master.state("/master/state")
        assert state["frameworks"][0]["executors"] == [
            {"agent_id": offer.agent_id, "executor_id": "echo"}
        ]
    finally:
        await driver.stop()


async def test_partitioned_agent_comes_back_with_its_tasks(cluster: Cluster) -> None:
    import signal

    master = await cluster.start_master("--agent-ping-interval=0.2", "--max-agent-ping-timeouts=3")
    agent = await cluster.start_agent("agent")
    fw, driver = await start_framework(master.endpoint, "aware", capabilities=["PARTITION_AWARE"])
    try:
        offer = await fw.offer()
        driver.launch_tasks([offer.id], [command_task(offer, "survivor", "sleep 60")])
        await fw.state_of("survivor", TaskState.TASK_RUNNING)
        # Freeze the agent: it cannot answer pings, but its tasks go on running.
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGSTOP)
        try:
            await fw.state_of("survivor", TaskState.TASK_UNREACHABLE)
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        # Thawed, it misses the master's pings, reregisters, and reports the task still running.
        back = await fw.until(
            lambda: [
                s
                for s in fw.updates
                if s.task_id == "survivor"
                and s.state == TaskState.TASK_RUNNING
                and fw.updates.index(s) > 1
            ],
            "task back after reregistration",
        )
        assert back[-1].agent_id == offer.agent_id
        state = await cluster.wait_for(lambda s: s["agents"] and s, "agent reregistered")
        assert state["unreachable"] == []
        assert state["frameworks"][0]["tasks"][0]["state"] == "TASK_RUNNING"
    finally:
        await driver.stop()
