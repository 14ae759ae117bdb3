"""``python -m mesa.execute``: run one shell command on the cluster, like ``mesos-execute``.

It is the smallest complete framework, and the quickest way to check that a cluster works: it
registers, waits for an offer that holds the requested resources (declining the others), launches
one task, prints every status update with its message, reason and source, and tears the framework
down when the task ends, so nothing it started outlives it. The exit status is 0 only for
``TASK_FINISHED``, so scripts and CI can use it as a probe.

Example::

    python -m mesa.execute --master=127.0.0.1:5050 --name=hello \\
        --command='echo hello from $(hostname)' --resources='cpus:0.1;mem:32'
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import TextIO

import libproc
from mesa import flags
from mesa.info import CommandInfo, FrameworkInfo, MasterInfo, Offer, TaskInfo, TaskStatus
from mesa.resources import ResourceError, Resources
from mesa.scheduler import (
    DriverStatus,
    NotConnectedError,
    Scheduler,
    SchedulerDriver,
    parse_master,
)
from mesa.task_state import TaskState, is_terminal

__all__ = ["build_parser", "main"]

DEFAULT_RESOURCES = "cpus:0.1;mem:32"

# Exit statuses: 0 the task finished; 1 it did not (failed, killed, lost, or the framework was
# refused); 2 a bad command line (argparse's); 130 interrupted (SIGINT), 143 terminated (SIGTERM).
EXIT_FINISHED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 130, 143


# ---------------------------------------------------------------------------- flag values


def _master(text: str) -> str:
    try:
        parse_master(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _resources(text: str) -> Resources:
    try:
        resources = Resources.parse(text)
    except ResourceError as e:
        raise argparse.ArgumentTypeError(f"invalid resources {text!r}: {e}") from None
    if not resources:
        raise argparse.ArgumentTypeError(
            f"{text!r} names no resources; give some, e.g. {DEFAULT_RESOURCES!r}"
        )
    return resources


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _prog() -> str:
    # The console script shows its own name; `python -m` would otherwise show "execute.py".
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("mesa-execute") else "python -m mesa.execute"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description=(
            "Run one shell command as a task on a mesa cluster, print each of its status"
            " updates, and exit 0 if it finished (TASK_FINISHED), 1 otherwise."
        ),
        epilog=(
            "example:\n  python -m mesa.execute --master=127.0.0.1:5050 --name=hello \\\n"
            "      --command='echo hello' --resources='cpus:0.1;mem:32'\n\n"
            "exit status: 0 task finished; 1 task failed, was killed or lost, or the master"
            " refused the framework; 2 bad flags; 130/143 interrupted/terminated by SIGINT/SIGTERM"
            " (the framework is torn down first)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--master",
        required=True,
        type=_master,
        metavar="HOST:PORT",
        help="the master's libproc endpoint (the --ip/--port it was started with)",
    )
    parser.add_argument(
        "--name",
        required=True,
        type=_non_empty,
        help="the task's name, also used as its task id",
    )
    parser.add_argument(
        "--command",
        required=True,
        type=_non_empty,
        help="the shell command the task runs (through /bin/sh -c on the agent)",
    )
    parser.add_argument(
        "--resources",
        type=_resources,
        default=DEFAULT_RESOURCES,
        metavar="RESOURCES",
        help=(
            "what the task needs, in Mesos's text form, e.g. 'cpus:0.5;mem:256;disk:100'"
            f" (default: {DEFAULT_RESOURCES}); offers that cannot hold it are declined"
        ),
    )
    parser.add_argument(
        "--framework-name",
        default="mesa-execute",
        type=_non_empty,
        help="the framework's name as the master and its UI show it (default: mesa-execute)",
    )
    parser.add_argument(
        "--role",
        default="*",
        type=_non_empty,
        help="the role to register in, for resources reserved to it (default: '*', unreserved)",
    )
    parser.add_argument(
        "--kill-after",
        type=flags.seconds,
        metavar="SECONDS",
        help="kill the task this many seconds after it is TASK_RUNNING (then exit 1)",
    )
    parser.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="log lines (on stderr) as key=value for people or one JSON object each for"
        " pipelines (default: console); status updates always go to stdout as text",
    )
    return parser


# ---------------------------------------------------------------------------- the framework


class _Execute(Scheduler):
    """Launches the task on the first offer that fits, then reports on it."""

    def __init__(self, args: argparse.Namespace, out: TextIO = sys.stdout) -> None:
        self.args = args
        self.out = out
        self.task_id: str = args.name
        self.agent_id: str | None = None
        self.launched = False
        self.kill_requested = False
        self._kill_timer: asyncio.TimerHandle | None = None
        self.result: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def registered(self, driver: SchedulerDriver, framework_id: str, info: MasterInfo) -> None:
        self.say(f"Registered with master {info.pid} as framework '{framework_id}'")
        self.say(f"Waiting for an offer with {self.args.resources}")

    def reregistered(self, driver: SchedulerDriver, info: MasterInfo) -> None:
        self.say(f"Re-registered with master {info.pid}")
        if self.launched and not self.result.done():
            # What happened while we were away? The answer comes as a status update.
            driver.reconcile_tasks(
                [TaskStatus(self.task_id, "TASK_STAGING", agent_id=self.agent_id)]
            )
            if self.kill_requested:
                self._kill(driver)

    def disconnected(self, driver: SchedulerDriver) -> None:
        self.say("Disconnected from the master; waiting for it to come back")

    def _fit(self, offer: Offer) -> Resources | None:
        """The task's resources as this offer can hold them: unreserved, or reserved for our
        role (the master checks a launch against the offer role by role)."""
        try:
            offered = Resources.parse(offer.resources)
        except ResourceError:
            return None
        wanted = [self.args.resources]
        if self.args.role != "*":
            wanted.append(Resources.parse(str(self.args.resources), default_role=self.args.role))
        return next((w for w in wanted if offered.contains(w)), None)

    def resource_offers(self, driver: SchedulerDriver, offers: list[Offer]) -> None:
        for offer in offers:
            fit = None if self.launched else self._fit(offer)
            if fit is None:
                driver.decline_offer(offer.id, refuse_seconds=3600 if self.launched else 5)
                continue
            command = CommandInfo(value=self.args.command, shell=True)
            task = TaskInfo(self.args.name, self.task_id, offer.agent_id, str(fit), command)
            driver.launch_tasks([offer.id], [task])
            self.launched = True
            self.agent_id = offer.agent_id
            self.say(f"Submitted task '{self.args.name}' to agent '{offer.agent_id}'")
            driver.suppress_offers()

    def status_update(self, driver: SchedulerDriver, status: TaskStatus) -> None:
        if status.task_id != self.task_id:
            return
        self.say(f"Received status update {status.state} for task '{self.args.name}'")
        for field in ("message", "reason", "source"):
            value = getattr(status, field)
            if value:
                self.say(f"  {field}: {value}")
        if status.state == TaskState.TASK_RUNNING and self.args.kill_after:
            if self._kill_timer is None and not self.kill_requested:
                loop = asyncio.get_running_loop()
                self._kill_timer = loop.call_later(self.args.kill_after, self._kill, driver)
        if is_terminal(status.state) and not self.result.done():
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            finished = status.state == TaskState.TASK_FINISHED
            self.result.set_result(EXIT_FINISHED if finished else EXIT_FAILED)

    def _kill(self, driver: SchedulerDriver) -> None:
        self.kill_requested = True
        if self.result.done():
            return
        try:
            driver.kill_task(self.task_id, self.agent_id)
            self.say(f"Killing task '{self.args.name}'")
        except NotConnectedError:
            self.say("Not connected to the master; the task is killed once re-registered")

    def error(self, driver: SchedulerDriver, message: str) -> None:
        print(f"Framework error: {message}", file=sys.stderr, flush=True)
        if not self.result.done():
            self.result.set_result(EXIT_FAILED)


async def _execute(args: argparse.Namespace) -> int:
    scheduler = _Execute(args)
    framework = FrameworkInfo(user="", name=args.framework_name, roles=[args.role])
    driver = SchedulerDriver(scheduler, framework, args.master)
    # SIGTERM (kill, timeout, a supervisor) tears down like Ctrl-C does: never leave the task.
    loop = asyncio.get_running_loop()
    terminated = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, terminated.set)
    await driver.start()
    ended = asyncio.ensure_future(driver.join())
    signalled = asyncio.ensure_future(terminated.wait())
    try:
        await asyncio.wait(
            [scheduler.result, ended, signalled], return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:  # Ctrl-C
        scheduler.say("Interrupted: tearing the framework down")
        if driver.status is DriverStatus.DRIVER_RUNNING:
            await driver.stop(failover=False)
        raise
    finally:
        signalled.cancel()
        loop.remove_signal_handler(signal.SIGTERM)
    if terminated.is_set() and not scheduler.result.done():
        scheduler.say("Terminated: tearing the framework down")
    if driver.status is DriverStatus.DRIVER_RUNNING:
        await driver.stop(failover=False)  # teardown: the master forgets the framework
    await ended
    if scheduler.result.done():
        return scheduler.result.result()
    return EXIT_TERMINATED if terminated.is_set() else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mesa.execute`` and the ``mesa-execute`` script."""
    args = build_parser().parse_args(argv)
    libproc.configure_logging(args.log_format)
    try:
        return libproc.run(_execute(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
