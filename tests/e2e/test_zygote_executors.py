"""Command tasks on a real cluster, their containers' processes forked from the agent's zygote.

Each test drives the cluster as a user does (a framework on the SDK, a master and an agent as OS
processes) and then looks at the processes themselves: who forked the executor, which session and
cgroups it is in, and that nothing of a killed task or a stopped agent is left.

The agents run command tasks with the command executor (``--command-tasks=executor``): a
``mesa.command_executor`` forked from the zygote per task. What must hold for the default mode as
well (a task's command forked from the zygote and run directly) runs in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from mesa.task_state import TaskState
from tests.e2e.cluster import Cluster, Node
from tests.e2e.framework import command_task, start_framework
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(120)


def _cgroups_usable() -> str | None:
    """Why ``--isolation=cgroups`` cannot be used here, or None."""
    try:
        from mesa.isolators import resolve_isolation

        resolve_isolation("cgroups")
    except Exception as e:
        return str(e)
    return None


ISOLATIONS = [
    "posix",
    pytest.param(
        "cgroups",
        marks=pytest.mark.skipif(
            _cgroups_usable() is not None, reason=f"cgroups: {_cgroups_usable()}"
        ),
    ),
]


BOTH_MODES = pytest.mark.parametrize("command_tasks", ["executor", "direct"])


async def _poll(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    """``predicate`` reads another process's state over HTTP: run it off the loop."""
    return await eventually(lambda: asyncio.to_thread(predicate), what, timeout)


def _executor(agent: Node, task_id: str) -> dict[str, Any] | None:
    for fw in agent.state("/agent/state")["frameworks"]:
        for ex in fw["executors"]:
            if ex["id"] == task_id and ex["os_pid"]:
                return ex
    return None


def _zygote_pids(agent: Node) -> set[int]:
    """The agent's zygotes (it keeps one or more)."""
    assert agent.proc is not None
    pids = set()
    for child in psutil.Process(agent.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if "mesa.zygote" in " ".join(child.cmdline()):
                pids.add(child.pid)
    return pids


def _name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return ""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _session(pid: int) -> set[int]:
    out = set()
    for p in psutil.pids():
        try:
            if os.getsid(p) == pid:
                out.add(p)
        except OSError:
            continue
    return out


@pytest.mark.parametrize("isolation", ISOLATIONS)
async def test_forked_executor_runs_tasks_in_its_container(
    cluster: Cluster, isolation: str
) -> None:
    master = await cluster.start_master()
    agent = await cluster.start_agent(
        "agent", "cpus:2;mem:1024;disk:1024", f"--isolation={isolation}", command_tasks="executor"
    )
    fw, driver = await start_framework(master.endpoint)
    try:
        offer = await fw.offer()
        quick = command_task(offer, "quick", "echo hi-from-$MESA_TASK_ID")
        bad = command_task(offer, "bad", "exit 3")
        hold = command_task(offer, "hold", "sleep 60")
        driver.launch_tasks([offer.id], [quick, bad, hold])

        # The updates a command task always had, in order.
        await fw.state_of("quick", TaskState.TASK_FINISHED)
        states = [s.state for s in fw.updates if s.task_id == "quick"]
        assert states == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
        failed = await fw.state_of("bad", TaskState.TASK_FAILED)
        assert "3" in (failed.message or "")
        out = list(cluster.work_dir.glob("agent/**/executors/quick/runs/*/stdout"))
        assert out and "hi-from-quick" in out[0].read_text()

        # The running executor: forked by the agent's zygote, leader of its own session (the
        # posix container), working in its sandbox, with its container's environment.
        await fw.state_of("hold", TaskState.TASK_RUNNING)
        ex = await _poll(lambda: _executor(agent, "hold"), "hold's executor")
        pid, cid = ex["os_pid"], ex["container_id"]
        proc = psutil.Process(pid)
        assert proc.ppid() in _zygote_pids(agent)
        assert os.getsid(pid) == pid
        assert proc.cwd() == ex["directory"]
        members = await _poll(lambda: _session(pid) - {pid}, "the task's processes")
        # The executor took its container's environment after the fork (a forked process's
        # /proc/<pid>/environ keeps the zygote's), and the task was exec'd with it.
        task_env = psutil.Process(min(members)).environ()
        assert task_env["MESA_CONTAINER_ID"] == cid
        assert task_env["MESA_TASK_ID"] == "hold"
        if isolation == "cgroups":
            # Executor and task are in the container's cgroups, not the agent's.
            for p in {pid, *members}:
                lines = Path(f"/proc/{p}/cgroup").read_text().splitlines()
                in_container = [ln for ln in lines if ln.endswith(f"/{cid}")]
                assert in_container, (p, lines)
        metrics = agent.state("/metrics/snapshot")
        assert metrics["containerizer/zygote_executors_forked"] >= 3
    finally:
        await driver.stop()


@BOTH_MODES
async def test_kill_with_grace_period_leaves_nothing(cluster: Cluster, command_tasks: str) -> None:
    master = await cluster.start_master()
    agent = await cluster.start_agent(command_tasks=command_tasks)
    fw, driver = await start_framework(master.endpoint)
    try:
        offer = await fw.offer()
        # The command ignores SIGTERM (and so does its sleep): only SIGKILL after the grace
        # period ends it.
        task = command_task(offer, "stubborn", "trap '' TERM; sleep 60 & sleep 60; wait")
        driver.launch_tasks([offer.id], [task])
        await fw.state_of("stubborn", TaskState.TASK_RUNNING)
        ex = await _poll(lambda: _executor(agent, "stubborn"), "the executor")
        pid = ex["os_pid"]
        assert psutil.Process(pid).ppid() in _zygote_pids(agent)

        def sleeping() -> set[int]:
            # Both sleeps run only once the shell has set its trap: a SIGTERM sent earlier would
            # end the shell, and the task, before the grace period.
            members = _session(pid) - {pid}
            sleeps = [p for p in members if _name(p) == "sleep"]
            return members if len(sleeps) >= 2 else set()

        members = await _poll(sleeping, "the task's two sleeps (its trap set)")
        started = time.monotonic()
        driver.kill_task("stubborn", grace_period=0.5)
        killed = await fw.state_of("stubborn", TaskState.TASK_KILLED)
        assert time.monotonic() - started >= 0.45, "SIGKILL came before the grace period"
        assert killed.agent_id == offer.agent_id
        # The container goes, and with it every process of it.
        await _poll(lambda: _executor(agent, "stubborn") is None, "executor gone")
        await _poll(lambda: all(_gone(p) for p in {pid, *members}), "processes gone")
    finally:
        await driver.stop()


@BOTH_MODES
async def test_stopping_the_agent_takes_zygote_and_executors(
    cluster: Cluster, command_tasks: str
) -> None:
    master = await cluster.start_master()
    agent = await cluster.start_agent(command_tasks=command_tasks)
    fw, driver = await start_framework(master.endpoint)
    try:
        offer = await fw.offer()
        driver.launch_tasks([offer.id], [command_task(offer, "long", "sleep 60")])
        await fw.state_of("long", TaskState.TASK_RUNNING)
        ex = await _poll(lambda: _executor(agent, "long"), "the executor")
        pids = {*_zygote_pids(agent), ex["os_pid"], *_session(ex["os_pid"])}
        assert await agent.stop() == 0
        await _poll(lambda: all(_gone(p) for p in pids), "zygote and executors gone")
    finally:
        await driver.stop()


@BOTH_MODES
async def test_containers_start_cold_when_the_zygote_keeps_dying(
    cluster: Cluster, command_tasks: str
) -> None:
    master = await cluster.start_master()
    agent = await cluster.start_agent(command_tasks=command_tasks)
    fw, driver = await start_framework(master.endpoint)
    try:
        # A launch (re)starts the zygote it picks if that one is down; kill every zygote after
        # every launch until the agent has given up on them all (three failures each). (Not
        # until none is running after a launch: that launch may have gone cold because its own
        # zygote reached the limit, while another one has not yet.)
        await _poll(lambda: _zygote_pids(agent), "the agent's zygotes")

        def given_up() -> bool:
            m = agent.state("/metrics/snapshot")
            return m["containerizer/zygotes_given_up"] == m["containerizer/zygotes_configured"]

        i = 0
        while not given_up():
            assert i < 20, "the agent keeps restarting its zygotes"
            zygotes = _zygote_pids(agent)
            for zygote in zygotes:
                os.kill(zygote, 9)  # a descendant of the agent this test started
            await _poll(lambda zs=zygotes: all(_gone(z) for z in zs), "the zygotes gone")
            offer = await fw.offer()
            driver.launch_tasks([offer.id], [command_task(offer, f"t{i}", "true")])
            await fw.state_of(f"t{i}", TaskState.TASK_FINISHED)
            i += 1
        offer = await fw.offer()
        driver.launch_tasks([offer.id], [command_task(offer, "cold", "true")])
        await fw.state_of("cold", TaskState.TASK_FINISHED)
        metrics = agent.state("/metrics/snapshot")
        assert metrics["containerizer/cold_starts"] >= 1
        assert metrics["containerizer/zygotes"] == 0
        assert not _zygote_pids(agent)  # none was started again
    finally:
        await driver.stop()


async def test_a_direct_task_whose_zygote_dies_still_ends_and_is_reported(
    cluster: Cluster, tmp_path: Path
) -> None:
    master = await cluster.start_master()
    agent = await cluster.start_agent(command_tasks="direct")
    fw, driver = await start_framework(master.endpoint)
    flag = tmp_path / "go"
    try:
        offer = await fw.offer()
        waits = f"while [ ! -e {flag} ]; do sleep 0.05; done"  # the task polls, not the test
        driver.launch_tasks([offer.id], [command_task(offer, "waits", waits)])
        await fw.state_of("waits", TaskState.TASK_RUNNING)
        ex = await _poll(lambda: _executor(agent, "waits"), "the task's container")
        zygote = psutil.Process(ex["os_pid"]).ppid()  # the zygote that started it
        assert zygote in _zygote_pids(agent)
        os.kill(zygote, 9)  # a descendant of the agent this test started
        await _poll(lambda: _gone(zygote), "the zygote gone")
        flag.touch()
        # Its parent is gone, so its exit status is too; its end is not.
        ended = await fw.state_of("waits", TaskState.TASK_FAILED)
        assert ended.message == "Command exit status unknown"
        await _poll(lambda: _executor(agent, "waits") is None, "its container gone")
    finally:
        await driver.stop()


async def test_a_direct_task_does_not_outlive_an_agent_killed_with_sigkill(
    cluster: Cluster,
) -> None:
    master = await cluster.start_master()
    agent = await cluster.start_agent(command_tasks="direct")
    fw, driver = await start_framework(master.endpoint)
    try:
        offer = await fw.offer()
        # It leaves a child of its own behind too: the zygote adopted that orphan.
        driver.launch_tasks([offer.id], [command_task(offer, "long", "sleep 60 & exec sleep 60")])
        await fw.state_of("long", TaskState.TASK_RUNNING)
        ex = await _poll(lambda: _executor(agent, "long"), "the task's container")
        pid = ex["os_pid"]
        session = await _poll(
            lambda: _session(pid) if len(_session(pid)) >= 2 else set(),
            "the task and its background sleep",
        )
        pids = {*_zygote_pids(agent), *session}
        agent.kill9()  # no destroy: the agent just dies
        await _poll(lambda: all(_gone(p) for p in pids), "the zygote and the task gone")
    finally:
        await driver.stop()
