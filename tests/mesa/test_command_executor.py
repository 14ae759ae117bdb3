"""The command executor, as the agent runs it: argv and shell commands, environment, kills.

The agent runs these in ``command_tasks="executor"`` mode (the default is to run a command task
directly, tests/mesa/test_direct_tasks.py); what both modes must do alike runs in both.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_harness import (
    Cluster,
    command_task,
    framework,
    new_task_id,
    read_pid,
    running_cluster,
    wait_gone,
)

from mesa.actors.containerizer import source_root
from mesa.info import CommandInfo
from mesa.task_state import Reason, TaskState

BOTH_MODES = pytest.mark.parametrize("command_tasks", ["executor", "direct"])


@pytest.fixture
def command_tasks() -> str:
    """How the agent runs command tasks; tests that hold for both modes parametrize it."""
    return "executor"


@pytest.fixture
async def cluster(tmp_path: Path, command_tasks: str) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, command_tasks=command_tasks) as c:
        await c.registered()
        yield c


async def stdout_of(cluster: Cluster, task_id: str) -> str:
    return (await cluster.sandbox(task_id) / "stdout").read_text()


@BOTH_MODES
async def test_argv_command_without_a_shell(cluster: Cluster):
    master = cluster.master
    tid = new_task_id()
    task = command_task(tid, "unused")
    task.command = CommandInfo(value="/bin/echo", shell=False, arguments=["echo", "a  b", "$HOME"])
    master.run_task(framework(), task)
    await master.wait_state(tid, TaskState.TASK_FINISHED)
    assert await stdout_of(cluster, tid) == "a  b $HOME\n"  # no shell: nothing expanded or split


async def test_task_environment_and_working_directory(cluster: Cluster):
    master = cluster.master
    tid = new_task_id()
    task = command_task(
        tid,
        'printf "%s\\n" "$PWD" "$MESA_SANDBOX" "$MESA_DIRECTORY" "$MESA_FRAMEWORK_ID" '
        '"$MESA_EXECUTOR_ID" "$MESA_AGENT_PID" "$GREETING" "$PYTHONPATH" "$PATH"',
    )
    task.command.environment = {"GREETING": "hello there"}
    master.run_task(framework(), task)
    await master.wait_state(tid, TaskState.TASK_FINISHED)
    lines = (await stdout_of(cluster, tid)).splitlines()
    pwd, sandbox, directory, fid, eid, agent_pid, greeting, pythonpath, path = lines
    assert pwd == sandbox == directory == str(await cluster.sandbox(tid))
    assert Path(sandbox).parent.parent.name == tid  # …/executors/<tid>/runs/<container>
    assert (fid, eid) == ("fw-1", tid)
    assert agent_pid == str(cluster.agent.pid)
    assert greeting == "hello there"
    assert source_root() in pythonpath.split(":")
    assert path == os.environ["PATH"]  # the rest of the agent's environment, passed on


@BOTH_MODES
async def test_command_killed_by_a_signal(cluster: Cluster):
    master = cluster.master
    tid = new_task_id()
    master.run_task(framework(), command_task(tid, "kill -KILL $$"))
    failed = await master.wait_state(tid, TaskState.TASK_FAILED)
    assert failed.status.message == "Command terminated by signal SIGKILL"


async def test_command_that_cannot_start(cluster: Cluster, tmp_path: Path):
    master = cluster.master
    tid = new_task_id()
    task = command_task(tid, "unused")
    task.command = CommandInfo(value=str(tmp_path / "missing"), shell=False)
    master.run_task(framework(), task)
    failed = await master.wait_state(tid, TaskState.TASK_FAILED)
    assert failed.status.reason == Reason.REASON_COMMAND_EXECUTOR_FAILED
    assert "Failed to launch the command" in failed.status.message
    assert cluster.master.states(tid) == ["TASK_STARTING", "TASK_FAILED"]


async def test_kill_escalates_to_sigkill_after_the_grace_period(cluster: Cluster, tmp_path: Path):
    master = cluster.master
    pidfile = tmp_path / "stubborn.pid"
    tid = new_task_id()
    # Ignores SIGTERM (and so does its child, which inherits the ignored disposition).
    task = command_task(tid, f"trap '' TERM; echo $$ > {pidfile}; sleep 60; sleep 60")
    fw = framework(capabilities=["TASK_KILLING_STATE"])
    master.run_task(fw, task)
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    pid = await read_pid(pidfile)
    master.kill("fw-1", tid, grace=0.2)
    killed = await master.wait_state(tid, TaskState.TASK_KILLED)
    assert killed.status.message == "Command terminated by signal SIGKILL"
    assert master.states(tid) == [
        "TASK_STARTING",
        "TASK_RUNNING",
        "TASK_KILLING",
        "TASK_KILLED",
    ]
    await wait_gone(pid)


async def test_task_grace_period_applies_when_the_kill_has_none(cluster: Cluster, tmp_path: Path):
    master = cluster.master
    pidfile = tmp_path / "stubborn.pid"
    tid = new_task_id()
    task = command_task(tid, f"trap '' TERM; echo $$ > {pidfile}; sleep 60; sleep 60")
    task.kill_grace_period = 0.1
    master.run_task(framework(), task)  # no TASK_KILLING_STATE: no TASK_KILLING
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    pid = await read_pid(pidfile)
    master.kill("fw-1", tid)
    killed = await master.wait_state(tid, TaskState.TASK_KILLED)
    assert "SIGKILL" in killed.status.message
    assert "TASK_KILLING" not in master.states(tid)
    await wait_gone(pid)


def test_module_runs_as_a_script_outside_an_agent():
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "mesa.command_executor"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": source_root(), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "MESA_AGENT_PID" in result.stderr and "Traceback" not in result.stderr
