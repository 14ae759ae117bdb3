"""Command tasks run directly, the agent's default (``command_tasks="direct"``).

The task's container runs the task's own command and the agent is its executor: ``TASK_RUNNING``
once the container is up (no ``TASK_STARTING``), then ``TASK_FINISHED``/``TASK_FAILED`` from the
exit status; a kill is SIGTERM, the grace period, then the container's destroy. The terminal
update is sent only once the containerizer has reported the container gone, so at that moment no
process of the task may be running and no cgroup of it left.

Each test drives a real agent (with a fake master, as a user's framework would through a master)
running real processes, under posix and, where this machine allows, cgroups isolation. Nothing
sleeps a fixed time: tests await status updates, and poll with a deadline only for process state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from agent_harness import (
    DEADLINE,
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
    wait_until,
)
from isolation_support import leftover_cgroups, need_cgroups, unique_root

from libproc import Clock, filters, settle
from mesa.actors.agent import Agent
from mesa.actors.containerizer import source_root
from mesa.info import CommandInfo
from mesa.isolators import IsolationOptions
from mesa.isolators.cgroups import (
    CgroupsCpuIsolator,
    CgroupsFreezerIsolator,
    CgroupsMemIsolator,
    CgroupsPidsIsolator,
)
from mesa.messages import (
    ContainerLaunched,
    ExitedExecutor,
    PingAgent,
    PongAgent,
    ReregisterAgent,
)
from mesa.task_state import Reason, Source, TaskState
from tests.waiting import eventually

CGROUPS = (CgroupsCpuIsolator, CgroupsMemIsolator, CgroupsPidsIsolator, CgroupsFreezerIsolator)
ISOLATION = {
    "posix": "posix/cpu,posix/mem",
    "cgroups": ",".join(cls.name for cls in CGROUPS),
}

# Records its pid, then becomes `sleep 60` (same pid): dies of the SIGTERM of a kill.
POLITE = "echo $$ > {pidfile}; exec sleep 60"
# Ignores SIGTERM, and so does its sleep (an ignored signal stays ignored across fork and exec):
# only the SIGKILL after the grace period ends it. The pid is written after the trap is set.
STUBBORN = "trap '' TERM; echo $$ > {pidfile}; sleep 60; sleep 60"


@pytest.fixture
def root() -> Iterator[str]:
    """This test's own cgroup root, purged (with anything left in it) after the agent stopped."""
    with unique_root(required=False) as name:
        yield name


@pytest.fixture
async def cluster(tmp_path: Path, root: str) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as c:
        yield c


@pytest.fixture(params=["posix", "cgroups"])
def isolation(request: pytest.FixtureRequest) -> str:
    """The isolators of the agent: posix everywhere, cgroups where this machine has them."""
    if request.param == "cgroups":
        need_cgroups(*CGROUPS)
    return request.param


async def start(
    cluster: Cluster, isolation: str = "posix", root: str = "", **agent: Any
) -> FakeMaster:
    """A fake master and a registered agent (its defaults: command tasks run directly)."""
    await cluster.start_master()
    options = IsolationOptions(cgroups_root=root) if root else IsolationOptions()
    await cluster.start_agent(isolation=ISOLATION[isolation], isolation_options=options, **agent)
    return await cluster.registered()


def session_of(leader: int) -> set[int]:
    """Every live process of the session ``leader`` leads (a posix container)."""
    out = set()
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == leader and running(pid):
                out.add(pid)
        except OSError:
            continue
    return out


async def shell_and_child(shell: int) -> set[int]:
    """The processes of a posix container whose shell (the session leader) has started its
    child: the shell and that child."""

    def both() -> set[int] | None:
        members = session_of(shell)
        return members if len(members) >= 2 else None

    return await eventually(both, f"a child of {shell} in its session")


async def no_exited_executor(master: FakeMaster, executor_id: str) -> None:
    """The agent told the master of no executor ``executor_id`` ending: the master never heard
    of a direct task's executor. A ping answered is the barrier (the agent's messages arrive in
    the order it sent them)."""
    pongs = len(master.received(PongAgent.NAME))
    master.send(master.agent, PingAgent.NAME, PingAgent())
    await master.wait_for(PongAgent.NAME, count=pongs + 1)
    assert master.received(ExitedExecutor.NAME, lambda m: m.executor_id == executor_id) == []


async def nothing_left(root: str, isolation: str, *pids: int) -> None:
    """Right at a terminal update none of ``pids`` runs; the task's cgroups go right after."""
    assert not [p for p in pids if running(p)]
    if isolation == "cgroups":
        await wait_until(lambda: leftover_cgroups(root) == [])


# ------------------------------------------------------------------------------- the outcome


async def test_a_command_that_exits_0_finishes(cluster: Cluster, isolation: str, root: str):
    master = await start(cluster, isolation, root)
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, "echo out; echo err >&2"))
    finished = await master.wait_state(tid, TaskState.TASK_FINISHED)
    assert master.states(tid) == ["TASK_RUNNING", "TASK_FINISHED"]  # no TASK_STARTING
    running_update = master.updates(tid)[0]
    for update in (running_update, finished):
        assert update.framework_id == "fw-1"
        assert update.executor_id == tid
        assert update.status.source == Source.SOURCE_EXECUTOR
        assert update.status.reason is None
        assert update.status.agent_id == "agent-1"
        assert update.status.executor_id == tid
    assert finished.status.message == "Command exited with status 0"
    await nothing_left(root, isolation)
    await no_exited_executor(master, tid)

    executor = await cluster.executor_state(tid)
    assert executor["direct"] is True
    assert executor["exit_status"] == 0
    assert [t["state"] for t in executor["completed_tasks"]] == ["TASK_FINISHED"]
    sandbox = Path(executor["directory"])
    assert (sandbox / "stdout").read_text() == "out\n"
    assert (sandbox / "stderr").read_text() == "err\n"
    metrics = await cluster.http_get("/metrics/snapshot")
    assert metrics["agent/tasks_finished"] == 1
    assert metrics["containerizer/containers_launched"] == 1


@pytest.mark.parametrize(
    "command, message",
    [
        ("echo oops >&2; exit 3", "Command exited with status 3"),
        ("kill -USR1 $$", "Command terminated by signal SIGUSR1"),
    ],
)
async def test_a_failing_command_fails_with_its_status(
    cluster: Cluster, isolation: str, root: str, command: str, message: str
):
    master = await start(cluster, isolation, root)
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, command))
    failed = await master.wait_state(tid, TaskState.TASK_FAILED)
    assert failed.status.message == message
    assert failed.status.reason is None
    assert failed.status.source == Source.SOURCE_EXECUTOR
    assert master.states(tid) == ["TASK_RUNNING", "TASK_FAILED"]
    await nothing_left(root, isolation)
    await no_exited_executor(master, tid)
    assert cluster.agent_rt.metrics.get("agent/tasks_failed") == 1


async def test_a_task_killed_from_outside_fails(cluster: Cluster, tmp_path: Path):
    master = await start(cluster)
    pidfile = tmp_path / "task.pid"
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, POLITE.format(pidfile=pidfile)))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    os.kill(await read_pid(pidfile), signal.SIGKILL)  # the task's own process, nothing else
    failed = await master.wait_state(tid, TaskState.TASK_FAILED)
    assert failed.status.message == "Command terminated by signal SIGKILL"
    assert failed.status.reason is None
    assert failed.status.source == Source.SOURCE_EXECUTOR


async def test_a_finished_task_leaves_nothing_behind(
    cluster: Cluster, isolation: str, root: str, tmp_path: Path
):
    master = await start(cluster, isolation, root)
    bg_file = tmp_path / "background.pid"
    tid = new_task_id()
    # Exits at once, leaving a sleeper in its container: the container's end takes it.
    master.run_task(framework(), command_task(tid, f"sleep 60 & echo $! > {bg_file}; exit 0"))
    await master.wait_state(tid, TaskState.TASK_FINISHED)
    await nothing_left(root, isolation, await read_pid(bg_file))


async def test_the_command_sees_its_task_and_sandbox(cluster: Cluster, isolation: str, root: str):
    master = await start(cluster, isolation, root)
    tid = new_task_id()
    task = command_task(
        tid,
        'printf "%s\\n" "$MESA_TASK_ID" "$PWD" "$MESA_SANDBOX" "$MESA_DIRECTORY" '
        '"$MESA_EXECUTOR_ID" "$MESA_FRAMEWORK_ID" "$MESA_CONTAINER_ID" "$GREETING" "$PATH"',
    )
    task.command.environment = {"GREETING": "hello there"}
    master.run_task(framework(), task)
    await master.wait_state(tid, TaskState.TASK_FINISHED)
    executor = await cluster.executor_state(tid)
    sandbox = Path(executor["directory"])
    lines = (sandbox / "stdout").read_text().splitlines()
    task_id, pwd, mesa_sandbox, directory, eid, fid, cid, greeting, path = lines
    assert task_id == eid == tid
    assert pwd == mesa_sandbox == directory == str(sandbox)
    assert fid == "fw-1"
    assert cid == executor["container_id"]
    assert greeting == "hello there"
    assert path == os.environ["PATH"]  # the rest of the agent's environment, passed on


async def test_an_argv_command_runs_without_a_shell(cluster: Cluster):
    master = await start(cluster)
    tid = new_task_id()
    task = command_task(tid, "unused")
    task.command = CommandInfo(value="/bin/echo", shell=False, arguments=["echo", "a  b", "$HOME"])
    master.run_task(framework(), task)
    await master.wait_state(tid, TaskState.TASK_FINISHED)
    assert (await cluster.sandbox(tid) / "stdout").read_text() == "a  b $HOME\n"


# ------------------------------------------------------------------------------- kills


async def test_a_kill_ends_a_task_that_honours_sigterm(
    cluster: Cluster, isolation: str, root: str, tmp_path: Path
):
    master = await start(cluster, isolation, root)
    pidfile = tmp_path / "polite.pid"
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, POLITE.format(pidfile=pidfile)))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    pid = await read_pid(pidfile)
    executor = await cluster.executor_state(tid)
    assert executor["direct"] is True and executor["state"] == "RUNNING"
    assert executor["os_pid"] == pid  # the container's process is the task's command
    assert [t["state"] for t in executor["tasks"]] == ["TASK_RUNNING"]

    # A grace period far beyond any wait here: the TASK_KILLED that comes is SIGTERM's doing.
    master.kill("fw-1", tid, grace=10 * DEADLINE)
    killed = await master.wait_state(tid, TaskState.TASK_KILLED)
    assert killed.status.message == "Command terminated by signal SIGTERM"
    assert killed.status.source == Source.SOURCE_EXECUTOR
    assert master.states(tid) == ["TASK_RUNNING", "TASK_KILLED"]
    await nothing_left(root, isolation, pid)
    await no_exited_executor(master, tid)
    assert cluster.agent_rt.metrics.get("agent/tasks_killed") == 1


async def test_a_task_that_ignores_sigterm_is_killed_after_the_grace_period(
    cluster: Cluster, isolation: str, root: str, tmp_path: Path
):
    master = await start(cluster, isolation, root)
    pidfile = tmp_path / "stubborn.pid"
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, STUBBORN.format(pidfile=pidfile)))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    pid = await read_pid(pidfile)
    members = await shell_and_child(pid)
    if isolation == "cgroups":
        cid = (await cluster.executor_state(tid))["container_id"]
        for p in members:  # the shell and its sleep, in the container's cgroups
            lines = Path(f"/proc/{p}/cgroup").read_text().splitlines()
            assert [ln for ln in lines if ln.endswith(f"/{cid}")], (p, lines)

    grace = 0.5
    loop = asyncio.get_running_loop()
    started = loop.time()
    master.kill("fw-1", tid, grace=grace)
    killed = await master.wait_state(tid, TaskState.TASK_KILLED)
    # Correctness, not speed: SIGKILL may only come once the grace period is over (less a
    # margin for the event loop's clock, which may be millisecond-grained and cached).
    assert loop.time() - started >= grace - 0.05
    assert killed.status.message == "Command terminated by signal SIGKILL"
    assert master.states(tid) == ["TASK_RUNNING", "TASK_KILLED"]
    await nothing_left(root, isolation, *members)


async def test_the_tasks_grace_period_applies_when_the_kill_has_none(
    cluster: Cluster, tmp_path: Path
):
    master = await start(cluster)
    pidfile = tmp_path / "stubborn.pid"
    tid = new_task_id()
    task = command_task(tid, STUBBORN.format(pidfile=pidfile))
    task.kill_grace_period = 0.2
    master.run_task(framework(), task)
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    pid = await read_pid(pidfile)
    master.kill("fw-1", tid)
    killed = await master.wait_state(tid, TaskState.TASK_KILLED)
    assert killed.status.message == "Command terminated by signal SIGKILL"
    assert not running(pid)


@pytest.mark.parametrize(
    "graces",
    [(10 * DEADLINE, 0.1), (0.2, 10 * DEADLINE)],
    ids=["a-second-kill-shortens-the-wait", "a-longer-second-kill-does-not-postpone-it"],
)
async def test_only_the_earliest_sigkill_counts(
    cluster: Cluster, tmp_path: Path, graces: tuple[float, float]
):
    # Either way the SIGKILL comes at the earlier deadline: one far beyond the wait below
    # would make the task outlive it.
    master = await start(cluster)
    pidfile = tmp_path / "stubborn.pid"
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, STUBBORN.format(pidfile=pidfile)))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    pid = await read_pid(pidfile)
    for grace in graces:
        master.kill("fw-1", tid, grace=grace)
    killed = await master.wait_state(tid, TaskState.TASK_KILLED)
    assert killed.status.message == "Command terminated by signal SIGKILL"
    assert master.states(tid) == ["TASK_RUNNING", "TASK_KILLED"]  # two kills, one update
    assert not running(pid)


@pytest.mark.parametrize("capable", [True, False], ids=["TASK_KILLING_STATE", "no-capability"])
async def test_task_killing_only_for_frameworks_that_ask(
    cluster: Cluster, tmp_path: Path, capable: bool
):
    master = await start(cluster)
    pidfile = tmp_path / "polite.pid"
    tid = new_task_id()
    fw = framework(capabilities=["TASK_KILLING_STATE"] if capable else [])
    master.run_task(fw, command_task(tid, POLITE.format(pidfile=pidfile)))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    pid = await read_pid(pidfile)
    master.kill("fw-1", tid)
    await master.wait_state(tid, TaskState.TASK_KILLED)
    if capable:
        assert master.states(tid) == ["TASK_RUNNING", "TASK_KILLING", "TASK_KILLED"]
        killing = master.updates(tid)[1]
        assert killing.status.source == Source.SOURCE_EXECUTOR
    else:
        assert master.states(tid) == ["TASK_RUNNING", "TASK_KILLED"]
    assert not running(pid)


async def test_a_kill_before_the_container_is_up(
    cluster: Cluster, isolation: str, root: str, tmp_path: Path
):
    """The agent has not heard back from the containerizer (its answer is held back here) when
    the kill comes: nothing to be polite to, the container goes at once."""
    master = await start(cluster, isolation, root)
    pidfile = tmp_path / "task.pid"
    tid = new_task_id()
    held = filters.drop_messages(name=ContainerLaunched.NAME, to=cluster.agent.pid)
    try:
        master.run_task(framework(), command_task(tid, POLITE.format(pidfile=pidfile)))
        pid = await read_pid(pidfile)  # the process did start
        await wait_until(lambda: held.count == 1)
        master.kill("fw-1", tid, grace=10 * DEADLINE)
        killed = await master.wait_state(tid, TaskState.TASK_KILLED)
    finally:
        held.cancel()
    assert killed.status.reason == Reason.REASON_TASK_KILLED_DURING_LAUNCH
    assert master.states(tid) == ["TASK_KILLED"]  # never TASK_RUNNING
    await nothing_left(root, isolation, pid)
    await no_exited_executor(master, tid)


async def test_a_kill_right_after_the_launch(
    cluster: Cluster, isolation: str, root: str, tmp_path: Path
):
    """The kill follows the launch at once: whichever the agent sees first, the task ends
    killed, and with nothing left of it."""
    master = await start(cluster, isolation, root)
    pidfile = tmp_path / "task.pid"
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, POLITE.format(pidfile=pidfile)))
    master.kill("fw-1", tid, grace=10 * DEADLINE)
    killed = await master.wait_state(tid, TaskState.TASK_KILLED)
    if master.states(tid) == ["TASK_KILLED"]:
        assert killed.status.reason == Reason.REASON_TASK_KILLED_DURING_LAUNCH
    else:
        assert master.states(tid) == ["TASK_RUNNING", "TASK_KILLED"]
    pid = int(pidfile.read_text()) if pidfile.exists() and pidfile.read_text().strip() else None
    await nothing_left(root, isolation, *([pid] if pid else []))
    # The agent is fine: the next task runs.
    t2 = new_task_id()
    master.run_task(framework(), command_task(t2, "true"))
    await master.wait_state(t2, TaskState.TASK_FINISHED)


# ------------------------------------------------------------------------------- launch failure


async def test_a_command_that_cannot_start(
    cluster: Cluster, isolation: str, root: str, tmp_path: Path
):
    master = await start(cluster, isolation, root)
    tid = new_task_id()
    task = command_task(tid, "unused")
    task.command = CommandInfo(value=str(tmp_path / "no-such-program"), shell=False)
    master.run_task(framework(), task)
    failed = await master.wait_state(tid, TaskState.TASK_FAILED)
    assert failed.status.reason == Reason.REASON_CONTAINER_LAUNCH_FAILED
    assert failed.status.source == Source.SOURCE_AGENT
    assert "no-such-program" in failed.status.message
    assert master.states(tid) == ["TASK_FAILED"]
    await nothing_left(root, isolation)
    await no_exited_executor(master, tid)
    assert cluster.agent_rt.metrics.get("containerizer/launch_errors") == 1


# ------------------------------------------------------------------------------- frameworks


async def test_shutting_down_the_framework_kills_its_tasks(
    cluster: Cluster, isolation: str, root: str, tmp_path: Path
):
    # A kill's grace on shutdown: half the executor shutdown grace period (at most 3 s).
    master = await start(cluster, isolation, root, executor_shutdown_grace_period=1.0)
    polite_file, stubborn_file = tmp_path / "polite.pid", tmp_path / "stubborn.pid"
    t1, t2 = new_task_id("polite"), new_task_id("stubborn")
    master.run_task(framework(), command_task(t1, POLITE.format(pidfile=polite_file)))
    master.run_task(framework(), command_task(t2, STUBBORN.format(pidfile=stubborn_file)))
    await master.wait_state(t1, TaskState.TASK_RUNNING)
    await master.wait_state(t2, TaskState.TASK_RUNNING)
    polite, stubborn = await read_pid(polite_file), await read_pid(stubborn_file)
    members = await shell_and_child(stubborn)

    master.shutdown_framework("fw-1")
    k1 = await master.wait_state(t1, TaskState.TASK_KILLED)
    k2 = await master.wait_state(t2, TaskState.TASK_KILLED)
    assert k1.status.reason == k2.status.reason == Reason.REASON_FRAMEWORK_REMOVED
    assert k1.status.message == "Command terminated by signal SIGTERM"
    assert k2.status.message == "Command terminated by signal SIGKILL"
    await nothing_left(root, isolation, polite, *members)
    await no_exited_executor(master, t1)
    await no_exited_executor(master, t2)
    # Every update acknowledged, nothing running: the agent forgets the framework.

    async def forgotten() -> bool:
        return (await cluster.http_get("/agent/state"))["frameworks"] == []

    await eventually(forgotten, "the framework forgotten")


async def test_shutting_down_the_framework_before_the_container_is_up(
    cluster: Cluster, tmp_path: Path
):
    master = await start(cluster)
    pidfile = tmp_path / "task.pid"
    tid = new_task_id()
    held = filters.drop_messages(name=ContainerLaunched.NAME, to=cluster.agent.pid)
    try:
        master.run_task(framework(), command_task(tid, POLITE.format(pidfile=pidfile)))
        pid = await read_pid(pidfile)
        await wait_until(lambda: held.count == 1)
        master.shutdown_framework("fw-1")
        killed = await master.wait_state(tid, TaskState.TASK_KILLED)
    finally:
        held.cancel()
    assert master.states(tid) == ["TASK_KILLED"]
    assert not running(pid)
    # Why it was killed: the framework's removal (as for a command executor still launching).
    assert killed.status.reason == Reason.REASON_FRAMEWORK_REMOVED


EXAMPLE = Path(source_root()) / "examples" / "echo_executor.py"


async def test_reregistration_lists_the_task_but_no_executor(cluster: Cluster, tmp_path: Path):
    master = await start(cluster)
    pidfile = tmp_path / "task.pid"
    direct, custom = new_task_id("direct"), new_task_id("custom")
    master.run_task(framework(), command_task(direct, POLITE.format(pidfile=pidfile)))
    echo = executor_task(custom, python_executor("echo", EXAMPLE))
    echo.labels = {"seconds": "60"}
    master.run_task(framework(), echo)
    await master.wait_state(direct, TaskState.TASK_RUNNING)
    await master.wait_state(custom, TaskState.TASK_RUNNING)
    pid = await read_pid(pidfile)

    port = cluster.master_port
    await cluster.stop_master()
    await wait_until(lambda: not cluster.agent.registered)
    master = await cluster.start_master(port=port)
    rereg = (await master.wait_for(ReregisterAgent.NAME))[0]
    assert sorted(t.task_id for t in rereg.tasks) == sorted([direct, custom])
    assert {s.task_id: s.state for s in rereg.task_states} == {
        direct: TaskState.TASK_RUNNING,
        custom: TaskState.TASK_RUNNING,
    }
    # The master never heard of the direct task's executor: only the custom one is listed.
    assert [e.executor_id for e in rereg.executors] == ["echo"]
    await wait_until(lambda: cluster.agent.registered)

    # Still the direct task's executor with the new master.
    master.kill("fw-1", direct)
    await master.wait_state(direct, TaskState.TASK_KILLED)
    assert not running(pid)
    master.kill("fw-1", custom)
    await master.wait_state(custom, TaskState.TASK_KILLED)


async def test_a_filling_disk_removes_finished_sandboxes_before_the_gc_delay(cluster: Cluster):
    """As Mesos's --gc_disk_headroom: with a week's delay, a finished sandbox stays while the
    disk has room for it (half full: kept for 0.4 of the week) and goes once less than the
    headroom is left; a running task's sandbox is not touched. A look at the disk that fails
    is logged and the next is made all the same; a stopped agent looks no more."""
    master = await start(cluster, disk_watch_interval=0.05)
    agent = cluster.agent
    assert agent is not None
    seen: list[str] = []
    usage: float | None = None  # (None: the look fails)

    def disk(path: str) -> float:
        seen.append(path)
        if usage is None:
            raise OSError(5, "Input/output error")
        return usage

    agent.disk_usage = disk
    keep = new_task_id("keep")
    master.run_task(framework(), command_task(keep, "exec sleep 60"))
    await master.wait_state(keep, TaskState.TASK_RUNNING)
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, "echo written"))
    await master.wait_state(tid, TaskState.TASK_FINISHED)
    sandbox = await cluster.sandbox(tid)

    async def metric(name: str) -> float:
        return (await cluster.http_get("/metrics/snapshot"))[name]

    await eventually(lambda: metric("agent/sandboxes_awaiting_gc"), "the sandbox handed in")
    await eventually(lambda: len(seen) >= 3, "looks at the disk that fail, one after another")
    assert seen[0] == str(agent.work_dir)
    # A half-full disk: nothing goes.
    usage = 0.5

    async def half_full() -> bool:
        return await metric("agent/disk_usage") == 0.5  # (-1 until a look has succeeded)

    await eventually(half_full, "the usage seen")
    seen.clear()
    await eventually(lambda: len(seen) >= 2, "two more looks at the disk")
    assert await metric("agent/disk_usage") == 0.5
    assert await metric("agent/sandboxes_pruned") == 0 and (sandbox / "stdout").exists()

    usage = 0.95

    async def removed() -> bool:
        return await metric("agent/sandboxes_removed") >= 1

    await eventually(removed, "the finished sandbox removed early")
    assert await metric("agent/sandboxes_pruned") == 1
    assert not sandbox.exists()
    assert (await cluster.sandbox(keep)).exists()
    master.kill("fw-1", keep, grace=0.1)
    await master.wait_state(keep, TaskState.TASK_KILLED)
    await cluster.stop_agent()
    assert agent._disk_timer is not None and not agent._disk_timer.pending


async def test_a_restarted_agent_collects_the_sandboxes_its_earlier_run_left(cluster: Cluster):
    """What the last run left is due gc_delay (a day here) after it last changed: two days
    old goes at once (with the executor directory it empties), an hour old stays; this run's
    own sandboxes are not among them."""
    now = time.time()
    fw = cluster.work_dir / "agents" / "A-old" / "frameworks" / "F-old"
    old = fw / "executors" / "e1" / "runs" / "c1"
    recent = fw / "runs" / "c2"
    for path, age in ((old, 2 * 86400.0), (recent, 3600.0)):
        path.mkdir(parents=True)
        (path / "stdout").write_text("earlier\n")
        os.utime(path, (now - age, now - age))
    master = await start(cluster, gc_delay=86400.0)

    async def metric(name: str) -> float:
        return (await cluster.http_get("/metrics/snapshot"))[name]

    async def removed() -> bool:
        return await metric("agent/sandboxes_removed") >= 1

    await eventually(removed, "the two-day-old sandbox removed")
    assert not old.exists() and not old.parent.parent.exists()  # (e1 emptied: gone too)
    assert recent.exists() and await metric("agent/sandboxes_awaiting_gc") == 1
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, "true"))
    await master.wait_state(tid, TaskState.TASK_FINISHED)
    mine = await cluster.sandbox(tid)

    async def both_waiting() -> bool:
        return await metric("agent/sandboxes_awaiting_gc") == 2

    await eventually(both_waiting, "this run's sandbox handed in as well")
    assert mine.exists() and recent.exists()


@pytest.mark.parametrize(
    ("kw", "complaint"),
    [
        ({"gc_disk_headroom": 1.5}, "between 0 and 1"),
        ({"disk_watch_interval": 0}, "greater"),
        ({"disk_watch_interval": float("inf")}, "finite"),
        ({"gc_delay": float("inf")}, "finite"),
    ],
)
def test_the_agent_refuses_a_bad_headroom_or_watch_interval(
    tmp_path: Path, kw: dict[str, float], complaint: str
):
    with pytest.raises(ValueError, match=complaint):
        Agent("master@127.0.0.1:5050", tmp_path, containerizer="c@127.0.0.1:1", **kw)


@pytest.mark.parametrize("command_tasks", ["direct", "executor"])
async def test_a_finished_containers_sandbox_is_removed_after_the_gc_delay(
    cluster: Cluster, command_tasks: str
):
    master = await start(cluster, gc_delay=1.0, command_tasks=command_tasks)
    keep = new_task_id("keep")
    master.run_task(framework(), command_task(keep, "exec sleep 60"))
    await master.wait_state(keep, TaskState.TASK_RUNNING)

    async def metric(name: str) -> float:
        return (await cluster.http_get("/metrics/snapshot"))[name]

    # Paused time: the sandbox is kept for the delay of Clock time, however long this test
    # takes to read it (a second of real time can go by under load before it has).
    Clock.pause()
    try:
        tid = new_task_id()
        master.run_task(framework(), command_task(tid, "echo written"))
        await master.wait_state(tid, TaskState.TASK_FINISHED)
        sandbox = await cluster.sandbox(tid)
        # Kept for people to read for a while (nothing removes it the moment the task ends) ...
        assert (sandbox / "stdout").read_text() == "written\n"
        # (The command executor's container ends after its task's update.)
        await eventually(
            lambda: metric("agent/sandboxes_awaiting_gc"), "the sandbox handed to the collector"
        )
        Clock.advance(0.5)
        await settle()
        assert await metric("agent/sandboxes_awaiting_gc") == 1  # not yet due
        assert (sandbox / "stdout").exists()
        Clock.advance(1.0)
        await settle()

        # ... then gone. The removal runs on a worker thread (the sandbox, then its emptied
        # parents); the agent counts it when all of that is done, so that count is what to
        # wait for.
        async def removed() -> bool:
            return await metric("agent/sandboxes_removed") >= 1

        await eventually(removed, "the finished sandbox removed")
    finally:
        Clock.resume()
    assert not sandbox.exists()
    if command_tasks == "executor":
        assert not sandbox.parent.parent.exists()  # executors/<task id>, emptied, goes too
        assert sandbox.parent.parent.parent.exists()  # the framework's executors directory
    else:
        assert sandbox.parent.exists()  # the framework's runs directory
    # A running task's sandbox is not touched.
    assert (await cluster.sandbox(keep)).exists()
    master.kill("fw-1", keep, grace=0.1)
    await master.wait_state(keep, TaskState.TASK_KILLED)
