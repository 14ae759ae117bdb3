"""The executor SDK: what a framework writes to run its tasks its own way.

An executor is a program the agent starts (in a container, with its sandbox as working
directory) when the first task that names it arrives. Subclass :class:`Executor`, override the
callbacks you need, and hand it to :class:`ExecutorDriver`::

    import asyncio, sys
    from mesa.executor import Executor, ExecutorDriver
    from mesa.info import TaskStatus
    from mesa.task_state import TaskState

    class Sleeper(Executor):
        def __init__(self):
            self.running = {}  # keep the tasks referenced, or the loop may collect them

        def launch_task(self, driver, task):  # start the work, return at once
            self.running[task.task_id] = asyncio.create_task(self.run(driver, task))

        async def run(self, driver, task):
            driver.send_status_update(TaskStatus(task.task_id, TaskState.TASK_RUNNING))
            await asyncio.sleep(1)
            await driver.send_status_update(TaskStatus(task.task_id, TaskState.TASK_FINISHED))

    if __name__ == "__main__":
        sys.exit(0 if ExecutorDriver(Sleeper()).run() == "DRIVER_STOPPED" else 1)

``examples/echo_executor.py`` is a complete one (kills, shutdown, messages); docs/executors.md
tells the rest.

Callbacks (Mesos's, with the driver first): ``registered``, ``reregistered``, ``disconnected``,
``launch_task``, ``kill_task``, ``framework_message``, ``shutdown``, ``error``. They run one at a
time in the order the agent's messages arrive, so an executor's state needs no locks. Each may be
a plain method or ``async def``; an async callback holds back the next callback until it returns
(as in the scheduler SDK), so a ``launch_task`` should start the task's real work as a task of its
own (``asyncio.create_task``) or a thread and return, or a kill could not reach it. Awaiting an
update's acknowledgement inside a callback is fine: acknowledgements do not wait for callbacks.

Status updates are reliable: :meth:`ExecutorDriver.send_status_update` returns a future that
resolves when the agent has the update (after which the agent owns delivering it to the
framework), and the driver resends unacknowledged updates until then. Wait for the terminal
update's future before exiting, or it may be lost with the process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Mapping
from typing import Any

from libproc import UPID, Runtime, get_logger
from libproc import run as run_loop
from mesa.actors.executor_driver import ExecutorProcess
from mesa.info import AgentInfo, ExecutorInfo, FrameworkInfo, TaskInfo, TaskStatus

__all__ = ["DRIVER_ABORTED", "DRIVER_STOPPED", "Executor", "ExecutorDriver", "ExecutorEnvError"]

DRIVER_STOPPED = "DRIVER_STOPPED"  # stop() was called
DRIVER_ABORTED = "DRIVER_ABORTED"  # the agent went away, or never answered

log = get_logger("mesa.executor")


class ExecutorEnvError(RuntimeError):
    """The ``MESA_*`` variables a mesa agent sets are missing: not started by an agent."""


class Executor:
    """Override the callbacks you need. Each may be sync or ``async def``."""

    def registered(
        self,
        driver: ExecutorDriver,
        executor_info: ExecutorInfo,
        framework_info: FrameworkInfo,
        agent_info: AgentInfo,
    ) -> Any:
        """The agent accepted this executor; tasks follow."""

    def reregistered(self, driver: ExecutorDriver, agent_info: AgentInfo) -> Any:
        """A restarted agent took this executor back (agent recovery, a later feature)."""

    def disconnected(self, driver: ExecutorDriver) -> Any:
        """The agent is gone. ``shutdown`` follows: the executor does not outlive its agent."""

    def launch_task(self, driver: ExecutorDriver, task: TaskInfo) -> Any:
        """Run ``task`` and report its states with ``driver.send_status_update``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement launch_task")

    def kill_task(
        self, driver: ExecutorDriver, task_id: str, grace_period: float | None = None
    ) -> Any:
        """Stop a task and send its terminal update (``TASK_KILLED``).

        ``grace_period`` is the framework's time between a polite and a forced stop, when it set
        one; an override that takes only ``(driver, task_id)`` works too.
        """

    def framework_message(self, driver: ExecutorDriver, data: bytes) -> Any:
        """Bytes from the framework's scheduler."""

    def shutdown(self, driver: ExecutorDriver) -> Any:
        """End every task and stop. The default stops the driver at once; an override should
        kill its tasks, wait for their updates to be acknowledged, then call ``driver.stop()``.
        The driver stops by itself when the agent's grace period is nearly over."""
        driver.stop()

    def error(self, driver: ExecutorDriver, message: str) -> Any:
        """Something went wrong in the driver or a callback raised."""
        log.error("executor_error", message=message)


class ExecutorDriver:
    """Connects an :class:`Executor` to the agent that launched this process.

    Everything it needs comes from the environment the agent set (``MESA_AGENT_PID``,
    ``MESA_FRAMEWORK_ID``, ``MESA_EXECUTOR_ID``, ``MESA_CONTAINER_ID``, ``MESA_SANDBOX``, …); pass
    ``environ`` to use another mapping. :meth:`run` blocks until the driver stops and returns
    :data:`DRIVER_STOPPED` or :data:`DRIVER_ABORTED`; inside an event loop use
    ``await driver.run_async()``. ``send_status_update``, ``send_framework_message`` and ``stop``
    may be called from callbacks, from other tasks on the loop, or from other threads.
    """

    def __init__(
        self,
        executor: Executor,
        *,
        environ: Mapping[str, str] | None = None,
        update_retry_interval: float = 5.0,
    ) -> None:
        env = os.environ if environ is None else environ
        missing = [
            name
            for name in (
                "MESA_AGENT_PID",
                "MESA_FRAMEWORK_ID",
                "MESA_EXECUTOR_ID",
                "MESA_CONTAINER_ID",
            )
            if not env.get(name)
        ]
        if missing:
            raise ExecutorEnvError(
                f"{', '.join(missing)} not set: executors are started by a mesa agent"
            )
        self.executor = executor
        self.agent_pid = UPID.parse(env["MESA_AGENT_PID"])
        self.framework_id = env["MESA_FRAMEWORK_ID"]
        self.executor_id = env["MESA_EXECUTOR_ID"]
        self.container_id = env["MESA_CONTAINER_ID"]
        self.sandbox = env.get("MESA_SANDBOX") or os.getcwd()
        endpoint = env.get("MESA_AGENT_ENDPOINT") or self.agent_pid.address
        self._host = endpoint.rpartition(":")[0] or self.agent_pid.host
        self._registration_timeout = _float(env, "MESA_EXECUTOR_REGISTRATION_TIMEOUT", 60.0)
        self.shutdown_grace_period = _float(env, "MESA_EXECUTOR_SHUTDOWN_GRACE_PERIOD", 5.0)
        self._update_retry_interval = update_retry_interval
        self._process: ExecutorProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._done: asyncio.Future[str] | None = None
        self._aborted = False  # the agent went away or never answered

    # ------------------------------------------------------------------ running

    def run(self) -> str:
        """Start, register, serve the executor until stopped; returns how it ended."""
        return run_loop(self.run_async())

    async def run_async(self) -> str:
        loop = asyncio.get_running_loop()
        self._loop, self._thread = loop, threading.get_ident()
        self._done = loop.create_future()
        runtime = Runtime(self._host, 0)
        await runtime.start()
        try:
            self._process = ExecutorProcess(
                self,
                self.executor,
                agent=self.agent_pid,
                framework_id=self.framework_id,
                executor_id=self.executor_id,
                container_id=self.container_id,
                registration_timeout=self._registration_timeout,
                update_retry_interval=self._update_retry_interval,
                shutdown_grace_period=self.shutdown_grace_period,
            )
            runtime.spawn(self._process)
            status = await self._done
        finally:
            await runtime.stop()
        log.info("executor_driver_stopped", status=status, executor_id=self.executor_id)
        return status

    def stop(self) -> None:
        """End :meth:`run`. Unacknowledged updates are not waited for: await them first."""
        self._call_soon(self._finished)

    def _finished(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(DRIVER_ABORTED if self._aborted else DRIVER_STOPPED)

    # ------------------------------------------------------------------ talking

    def send_status_update(
        self, status: TaskStatus
    ) -> asyncio.Future[None] | concurrent.futures.Future[None]:
        """Send a task's new state; the future resolves when the agent acknowledges it.

        ``uuid``, ``timestamp``, ``source``, ``executor_id`` and ``agent_id`` are filled in. From
        another thread the result is a ``concurrent.futures.Future``.
        """
        process = self._require_process()
        if self._on_loop_thread():
            return process.send_status_update(status)

        async def send_and_wait() -> None:
            await process.send_status_update(status)

        return asyncio.run_coroutine_threadsafe(send_and_wait(), self._loop)  # type: ignore[arg-type]

    def send_framework_message(self, data: bytes) -> None:
        """Bytes to the framework's scheduler (best effort, like Mesos's)."""
        process = self._require_process()
        self._call_soon(process.send_framework_message, data)

    # ------------------------------------------------------------------ what it knows

    @property
    def executor_info(self) -> ExecutorInfo | None:
        return self._process.executor_info if self._process else None

    @property
    def framework_info(self) -> FrameworkInfo | None:
        return self._process.framework_info if self._process else None

    @property
    def agent_info(self) -> AgentInfo | None:
        return self._process.agent_info if self._process else None

    @property
    def pid(self) -> UPID | None:
        """This executor's libproc address."""
        return self._process.pid if self._process else None

    # ------------------------------------------------------------------ threads

    def _require_process(self) -> ExecutorProcess:
        if self._process is None:
            raise RuntimeError("the driver is not running: call run() first")
        return self._process

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread

    def _call_soon(self, fn: Any, *args: Any) -> None:
        if self._loop is None or self._on_loop_thread():
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        return default
