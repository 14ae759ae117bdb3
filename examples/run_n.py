"""Run N copies of a shell command on a mesa cluster: a complete framework in one screen.

    python examples/run_n.py --master=127.0.0.1:5050 --count=10 --command='echo hi; sleep 1'

It packs as many tasks into each offer as fit, declines what it cannot use, prints every status
update, and exits 0 when all N finished (1 if any did not). See docs/frameworks.md.
"""

from __future__ import annotations

import argparse
import sys

from mesa.info import CommandInfo, FrameworkInfo, TaskInfo
from mesa.resources import Resources
from mesa.scheduler import DriverStatus, Scheduler, SchedulerDriver
from mesa.task_state import TaskState, is_terminal


class RunN(Scheduler):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.per_task = Resources.parse(f"cpus:{args.cpus};mem:{args.mem}")
        self.launched = 0  # tasks sent to the master so far
        self.finished = 0  # tasks that reached TASK_FINISHED
        self.failed = 0  # tasks that reached any other terminal state

    def registered(self, driver, framework_id, master_info):
        print(f"Registered as {framework_id} with master {master_info.pid}", flush=True)

    def resource_offers(self, driver, offers):
        for offer in offers:
            left = Resources.parse(offer.resources)
            tasks = []
            # Carve tasks out of the offer while there is room and work left to launch.
            while self.launched < self.args.count and left.contains(self.per_task):
                left -= self.per_task
                self.launched += 1
                tasks.append(
                    TaskInfo(
                        name=f"{self.args.name}-{self.launched}",
                        task_id=f"{self.args.name}-{self.launched}",
                        agent_id=offer.agent_id,
                        resources=str(self.per_task),
                        command=CommandInfo(self.args.command),
                    )
                )
            if tasks:
                driver.launch_tasks([offer.id], tasks)  # the rest of the offer is declined
            else:
                driver.decline_offer(offer.id, refuse_seconds=60)
        if self.launched == self.args.count:
            driver.suppress_offers()  # nothing left to launch: stop the offers coming

    async def status_update(self, driver, status):
        print(f"{status.task_id}: {status.state} {status.message or ''}".rstrip(), flush=True)
        if not is_terminal(status.state):
            return
        if status.state == TaskState.TASK_FINISHED:
            self.finished += 1
        else:
            self.failed += 1
        if self.finished + self.failed == self.args.count:
            await driver.stop()  # all done: tear the framework down

    def error(self, driver, message):
        print(f"error: {message}", file=sys.stderr)  # the driver aborts after this


def main() -> int:
    parser = argparse.ArgumentParser(description="Run N copies of a shell command on mesa.")
    parser.add_argument("--master", required=True, help="the master's HOST:PORT")
    parser.add_argument("--count", type=int, default=1, help="how many copies to run")
    parser.add_argument("--command", required=True, help="the shell command each task runs")
    parser.add_argument("--cpus", type=float, default=0.1, help="cpus per task")
    parser.add_argument("--mem", type=float, default=32, help="memory (MB) per task")
    parser.add_argument("--name", default="run-n", help="framework name and task id prefix")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")

    scheduler = RunN(args)
    framework = FrameworkInfo(user="", name=args.name)
    driver = SchedulerDriver(scheduler, framework, args.master)
    status = driver.run()  # blocks until stop() or an abort
    print(f"{scheduler.finished} finished, {scheduler.failed} failed", flush=True)
    ok = status is DriverStatus.DRIVER_STOPPED and scheduler.failed == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
