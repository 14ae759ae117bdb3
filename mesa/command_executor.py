"""The command executor: runs one task's shell command. ``python -m mesa.command_executor``.

The agent starts it for a task that has a ``command`` and no executor of its own. It is an
ordinary executor built on the SDK (:mod:`mesa.executor`), so it doubles as the reference for
writing one:

* ``launch_task``: ``TASK_STARTING``, start the command in the sandbox in a process group of its
  own, ``TASK_RUNNING``; when it exits, ``TASK_FINISHED`` (status 0) or ``TASK_FAILED`` with
  "Command exited with status N" / "Command terminated by signal S".
* ``kill_task``: ``TASK_KILLING`` (to frameworks that asked for it with the ``TASK_KILLING_STATE``
  capability), SIGTERM to the group, SIGKILL after the grace period (the kill's, else the task's
  ``kill_grace_period``, else 3 s), then ``TASK_KILLED``.
* ``shutdown`` (and the agent going away): kill as above.

The task gets its own process group so that a kill reaches everything it forked, and stays in the
executor's session so the containerizer can still find all of it if the executor itself dies.
Whatever is left of the group when the command exits is killed too. The executor exits once the
agent has acknowledged the terminal update (or after ``ACK_TIMEOUT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

from libproc import get_logger
from mesa import exit_status
from mesa.commands import command_argv
from mesa.executor import DRIVER_STOPPED, Executor, ExecutorDriver, ExecutorEnvError
from mesa.info import AgentInfo, ExecutorInfo, FrameworkInfo, TaskInfo, TaskStatus
from mesa.task_state import Reason, TaskState

__all__ = ["ACK_TIMEOUT", "DEFAULT_GRACE_PERIOD", "CommandExecutor", "main"]

DEFAULT_GRACE_PERIOD = 3.0
ACK_TIMEOUT = 5.0  # how long to wait for the agent to take the terminal update before exiting

log = get_logger("mesa.command_executor")


class CommandExecutor(Executor):
    """Runs exactly one command task (as Mesos's command executor does)."""

    def __init__(self) -> None:
        self.task: TaskInfo | None = None
        self.framework: FrameworkInfo | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._runner: asyncio.Task[None] | None = None
        self._killing = False
        self._kill_grace: float | None = None
        self._escalation: asyncio.TimerHandle | None = None
        self._terminal_sent = False

    # ------------------------------------------------------------------ callbacks

    def registered(
        self,
        driver: ExecutorDriver,
        executor_info: ExecutorInfo,
        framework_info: FrameworkInfo,
        agent_info: AgentInfo,
    ) -> None:
        self.framework = framework_info
        log.info("registered", executor_id=executor_info.executor_id, agent_id=agent_info.id)

    def launch_task(self, driver: ExecutorDriver, task: TaskInfo) -> None:
        if self.task is not None:
            driver.send_status_update(
                TaskStatus(
                    task.task_id,
                    TaskState.TASK_FAILED,
                    message="The command executor runs one task; use a new executor per task",
                    reason=Reason.REASON_TASK_INVALID,
                )
            )
            return
        self.task = task
        self._runner = asyncio.ensure_future(self._run(driver, task))

    def kill_task(
        self, driver: ExecutorDriver, task_id: str, grace_period: float | None = None
    ) -> None:
        if self.task is None or task_id != self.task.task_id:
            log.warning("kill_unknown_task", task_id=task_id)
            return
        self._kill(driver, grace_period)

    def shutdown(self, driver: ExecutorDriver) -> None:
        if self.task is None:
            driver.stop()
            return
        grace = min(DEFAULT_GRACE_PERIOD, driver.shutdown_grace_period * 0.5)
        self._kill(driver, grace)

    # ------------------------------------------------------------------ running the task

    async def _run(self, driver: ExecutorDriver, task: TaskInfo) -> None:
        driver.send_status_update(TaskStatus(task.task_id, TaskState.TASK_STARTING))
        try:
            if task.command is None:
                raise ValueError("the task has no command")
            executable, argv = command_argv(task.command)
            env = dict(os.environ)
            # Like Mesos's MESOS_TASK_ID: a command can tell which task it is.
            env["MESA_TASK_ID"] = task.task_id
            env.update({str(k): str(v) for k, v in (task.command.environment or {}).items()})
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                executable=executable,
                cwd=driver.sandbox,
                env=env,
                stdin=subprocess.DEVNULL,
                preexec_fn=os.setpgrp,  # its own group, still this session
            )
        except Exception as e:
            log.warning("command_launch_failed", error=repr(e))
            await self._finish(
                driver,
                TaskState.TASK_FAILED,
                f"Failed to launch the command: {e}",
                Reason.REASON_COMMAND_EXECUTOR_FAILED,
            )
            return
        log.info("command_started", task_id=task.task_id, pid=self._proc.pid, argv=argv)
        driver.send_status_update(TaskStatus(task.task_id, TaskState.TASK_RUNNING))
        if self._killing:  # the kill arrived while the command was starting
            self._signal_group(signal.SIGTERM)
            self._arm_escalation()
        returncode = await self._proc.wait()
        self._signal_group(signal.SIGKILL)  # whatever it left behind in its group
        if self._escalation is not None:
            self._escalation.cancel()
        message = f"Command {exit_status.describe(returncode)}"
        log.info("command_exited", task_id=task.task_id, returncode=returncode)
        if self._killing:
            await self._finish(driver, TaskState.TASK_KILLED, message, None)
        elif returncode == 0:
            await self._finish(driver, TaskState.TASK_FINISHED, message, None)
        else:
            await self._finish(driver, TaskState.TASK_FAILED, message, None)

    async def _finish(
        self, driver: ExecutorDriver, state: str, message: str, reason: str | None
    ) -> None:
        """Send the terminal update, wait (bounded) for the agent to take it, then stop."""
        assert self.task is not None
        self._terminal_sent = True
        acked = driver.send_status_update(
            TaskStatus(self.task.task_id, state, message=message, reason=reason)
        )
        try:
            await asyncio.wait_for(asyncio.wrap_future(acked), ACK_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("terminal_update_not_acknowledged", task_id=self.task.task_id)
        finally:
            driver.stop()

    def _kill(self, driver: ExecutorDriver, grace_period: float | None) -> None:
        if self._terminal_sent:
            return
        assert self.task is not None
        grace = _first_set(grace_period, self.task.kill_grace_period, DEFAULT_GRACE_PERIOD)
        if self._killing:
            # A second kill may only shorten the wait.
            if self._kill_grace is not None and grace < self._kill_grace:
                self._kill_grace = grace
                self._arm_escalation()
            return
        self._killing = True
        self._kill_grace = grace
        log.info("killing_task", task_id=self.task.task_id, grace_period=grace)
        if self.framework is not None and "TASK_KILLING_STATE" in self.framework.capabilities:
            driver.send_status_update(TaskStatus(self.task.task_id, TaskState.TASK_KILLING))
        if self._proc is not None and self._proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            self._arm_escalation()

    def _arm_escalation(self) -> None:
        if self._escalation is not None:
            self._escalation.cancel()
        loop = asyncio.get_running_loop()
        self._escalation = loop.call_later(
            self._kill_grace or 0.0, self._signal_group, signal.SIGKILL
        )

    def _signal_group(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(self._proc.pid, sig)

    def cleanup(self) -> None:
        """On the way out: nothing of the task may outlive the executor."""
        self._signal_group(signal.SIGKILL)


def _first_set(*values: Any) -> float:
    for value in values:
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return DEFAULT_GRACE_PERIOD


def main() -> int:
    executor = CommandExecutor()
    try:
        driver = ExecutorDriver(executor)
    except ExecutorEnvError as e:
        print(f"mesa.command_executor: {e}", file=sys.stderr)
        return 2
    try:
        status = driver.run()
    finally:
        executor.cleanup()
    return 0 if status == DRIVER_STOPPED else 1


if __name__ == "__main__":
    sys.exit(main())
