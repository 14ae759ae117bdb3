"""A custom executor in thirty lines: each task sleeps ``labels["seconds"]``, then finishes with
its ``data`` echoed back; framework messages are echoed too. See docs/executors.md.

A framework runs it by naming it in a task's executor (the agent starts one per framework and
executor id, and sends it every task that names the same executor)::

    ExecutorInfo("echo", CommandInfo(sys.executable, shell=False,
                                     arguments=[sys.executable, "examples/echo_executor.py"]))
"""

import asyncio
import sys

from mesa.executor import DRIVER_STOPPED, Executor, ExecutorDriver
from mesa.info import TaskStatus
from mesa.task_state import TaskState


class EchoExecutor(Executor):
    def __init__(self):
        self.running = {}  # task id -> the asyncio task doing its work

    def launch_task(self, driver, task):
        # Start the work and return: callbacks run one at a time, and a kill must get through.
        self.running[task.task_id] = asyncio.create_task(self.run(driver, task))

    async def run(self, driver, task):
        driver.send_status_update(TaskStatus(task.task_id, TaskState.TASK_RUNNING))
        try:
            await asyncio.sleep(float(task.labels.get("seconds", 0)))
            state, data = TaskState.TASK_FINISHED, task.data
        except asyncio.CancelledError:
            state, data = TaskState.TASK_KILLED, None
        del self.running[task.task_id]
        await driver.send_status_update(TaskStatus(task.task_id, state, data=data))

    def kill_task(self, driver, task_id):
        if task_id in self.running:
            self.running[task_id].cancel()

    def framework_message(self, driver, data):
        driver.send_framework_message(data)

    async def shutdown(self, driver):
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks)  # each sends TASK_KILLED and waits for the agent to take it
        driver.stop()


if __name__ == "__main__":
    sys.exit(0 if ExecutorDriver(EchoExecutor()).run() == DRIVER_STOPPED else 1)
