"""The agent alone: what one direct task costs an agent's process, its containerizer simulated.

Run ``python -m bench.agent_bench`` (``--agents 100 --tasks 40000 --runs 5 --json PATH``).

``bench.offers`` times the whole offer loop, and there the simulated agents are the largest user
of the two cores (about 100 µs of CPU per launch, against the master's 78): every microsecond
an agent spends on a task is taken from the master. ``bench.tasks`` pays the same agent code per
real task. But both runs share two cores among a master, agents, frameworks and tasks, and their
rates move by a fifth from one run to the next on these machines, more than most changes to the
agent are worth. This suite takes the agent's side alone, so that a change to it can be told
from noise in one run:

* this process runs ``--agents`` real :class:`~mesa.actors.agent.Agent` actors on one libproc
  runtime, with the simulated containerizer of ``bench.offers`` (``bench.offers.sim``): a direct
  task's container is reported launched at once and its command ended after ``--task-seconds``;
* a stub master in a child process (``--serve-master``, the same module) registers them, sends
  each agent a ``RunTasks`` of ``--tasks-per-launch`` command tasks (as one accept of one offer
  would), acknowledges every status update at once (as master and framework together would),
  and sends the next batch to an agent once all of its last have finished.

So every task is the agent's real path: ``RunTasks`` decoded from the wire, the executor and
container records, the launch message, ``TASK_RUNNING`` and ``TASK_FINISHED`` through the
status-update streams and the outbox, onto the wire, and both acknowledgements back. The figure
is this process's CPU time (``getrusage``: user and system) per finished task over a measured
stretch, after a warm-up, as a median of ``--runs`` stretches; the master's side is in the other
process and not counted. The simulated containerizer and the libproc runtime are counted, as
they are in ``bench.offers``'s agent processes.

The process is set up as ``mesa.node`` sets up an agent's: its garbage collector's thresholds,
and everything made before the tasks start frozen out of the collector's sight; what the
collector costs per task is part of the figure. Two things differ from a real cluster, both on
purpose: the stub master answers at once (no allocation cycle, no framework round trip), so the
agent's outbox batches less than it would against a busy master, and 100 agents share one
process, so the heap is a hundred agents' worth.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from typing import Any

import libproc
from bench.offers.worker import DISK_WATCH_INTERVAL, STATUS_UPDATE_BACKOFF, cpu_seconds
from libproc import UPID, Process, Runtime, handler
from mesa.info import CommandInfo, FrameworkInfo, TaskInfo
from mesa.messages import (
    AgentRegistered,
    PongAgent,
    RegisterAgent,
    RunTasks,
    StatusUpdate,
    StatusUpdateAcknowledgements,
    StatusUpdates,
)
from mesa.task_state import is_terminal

FRAMEWORK_ID = "bench-agent-framework"


class StubMaster(Process):
    """Registers agents, keeps each busy with batches of tasks, acknowledges every update.

    It is the master and the framework in one, reduced to what the agent sees of them: the
    allocation cycle, the offers and the framework's round trip are left out, so each agent's
    next batch follows the end of its last as closely as the wire allows."""

    def __init__(self, per_launch: int, resources: str) -> None:
        super().__init__("master")
        self.per_launch = per_launch
        self.resources = resources
        self.framework = FrameworkInfo(user="bench", name="agent-bench", id=FRAMEWORK_ID)
        self.agents: dict[UPID, str] = {}
        self.running: dict[UPID, int] = defaultdict(int)
        self.serial = 0
        self.started = False

    @handler(RegisterAgent.NAME)
    def _register(self, sender: UPID, msg: RegisterAgent) -> None:
        aid = self.agents.get(sender) or f"bench-agent-{len(self.agents)}"
        self.agents[sender] = aid
        self.send(sender, AgentRegistered.NAME, AgentRegistered(aid, 3600.0))

    @handler(PongAgent.NAME)
    def _pong(self, sender: UPID, msg: Any) -> None:
        pass

    @handler("bench.Start")
    def _start(self, sender: UPID, body: Any) -> None:
        self.started = True
        for agent in self.agents:
            self._launch(agent)

    def _launch(self, agent: UPID) -> None:
        aid = self.agents[agent]
        tasks = []
        for _ in range(self.per_launch):
            self.serial += 1
            tid = f"t{self.serial}"
            tasks.append(TaskInfo(tid, tid, aid, self.resources, command=CommandInfo("true")))
        self.running[agent] += len(tasks)
        self.send(agent, RunTasks.NAME, RunTasks(self.framework, "scheduler@127.0.0.1:1", tasks))

    @handler(StatusUpdate.NAME)
    def _update(self, sender: UPID, msg: StatusUpdate) -> None:
        self._updates(sender, [msg])

    @handler(StatusUpdates.NAME)
    def _batch(self, sender: UPID, msg: StatusUpdates) -> None:
        self._updates(sender, msg.updates)

    def _updates(self, sender: UPID, updates: list[StatusUpdate]) -> None:
        aid = self.agents.get(sender)
        if aid is None:
            return
        task_ids, uuids, ended = [], [], 0
        for update in updates:
            status = update.status
            if status.uuid is not None:
                task_ids.append(status.task_id)
                uuids.append(status.uuid)
            if is_terminal(status.state):
                ended += 1
        if task_ids:
            self.send(
                sender,
                StatusUpdateAcknowledgements.NAME,
                StatusUpdateAcknowledgements(FRAMEWORK_ID, [aid] * len(task_ids), task_ids, uuids),
            )
        if ended:
            self.running[sender] -= ended
            if self.running[sender] <= 0 and self.started:
                self._launch(sender)


async def serve_master(per_launch: int, resources: str) -> None:
    """The child process: print the stub master's address, run until stdin closes."""
    runtime = await Runtime("127.0.0.1", 0).start()
    runtime.spawn(StubMaster(per_launch, resources))
    print(runtime.address, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await runtime.stop(timeout=2.0)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from bench.offers.sim import SimContainerizer
    from mesa.actors.agent import Agent
    from mesa.node import AGENT_GC_THRESHOLD

    gc.set_threshold(*AGENT_GC_THRESHOLD)  # as mesa.node sets an agent's
    loop = asyncio.get_running_loop()
    work = ""
    child: subprocess.Popen[str] | None = None
    runtime: Runtime | None = None
    agents: list[Any] = []
    try:
        work = tempfile.mkdtemp(prefix="mesa-agent-bench-")
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.agent_bench",
                "--serve-master",
                "--tasks-per-launch",
                str(args.tasks_per_launch),
                "--task-resources",
                args.task_resources,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        try:
            address = await asyncio.wait_for(
                loop.run_in_executor(None, child.stdout.readline), args.timeout
            )
        except TimeoutError:
            raise RuntimeError(f"the stub master said nothing in {args.timeout} s") from None
        if not address.strip():
            raise RuntimeError("the stub master did not start")
        master = UPID.parse(f"master@{address.strip()}")
        runtime = await Runtime("127.0.0.1", 0).start()
        containerizer = SimContainerizer(args.task_seconds)
        cz = runtime.spawn(containerizer)
        for i in range(args.agents):
            agent = Agent(
                master,
                os.path.join(work, f"a{i}"),
                resources=args.agent_resources,
                hostname=f"sim{i}",
                containerizer=cz,
                id=f"agent{i}",
                status_update_backoff=STATUS_UPDATE_BACKOFF,
                disk_watch_interval=DISK_WATCH_INTERVAL,
            )
            runtime.spawn(agent)
            agents.append(agent)
        await _until(lambda: sum(a.registered for a in agents), len(agents), args.timeout)
        # As mesa.node does once its agent is made: what exists now lives as long as the
        # agents, out of the collector's sight.
        gc.collect()
        gc.freeze()
        starter = _Starter()
        runtime.spawn(starter)
        starter.send(master, "bench.Start", b"")
        metrics = runtime.metrics  # (the runtime's: every agent in it counts there)

        def ended() -> int:
            bad = sum(metrics.get(f"agent/tasks_{state}") for state in _BAD_ENDS)
            if bad:
                raise RuntimeError(f"{int(bad)} tasks did not finish: see the agents' log lines")
            return int(metrics.get("agent/tasks_finished"))

        await _until(ended, args.warmup, args.timeout)
        stretches = []
        for _ in range(args.runs):
            n0, cpu0, wire0 = ended(), cpu_seconds(), _wire(runtime)
            await _until(ended, n0 + args.tasks, args.timeout)
            n1, cpu1, wire1 = ended(), cpu_seconds(), _wire(runtime)
            n = n1 - n0
            stretches.append(
                {
                    "tasks": n,
                    "cpu_us_per_task": 1e6 * (cpu1 - cpu0) / n,
                    **{f"{k}_per_task": (wire1[k] - wire0[k]) / n for k in wire0},
                }
            )
        per_task = [s["cpu_us_per_task"] for s in stretches]
        return {
            "agents": args.agents,
            "tasks_per_launch": args.tasks_per_launch,
            "stretches": stretches,
            "cpu_us_per_task_median": statistics.median(per_task),
            "cpu_us_per_task_min": min(per_task),
            "cpu_us_per_task_max": max(per_task),
        }
    finally:
        # The agents first: with the master gone first they would log its loss and retry.
        if runtime is not None:
            for agent in agents:
                runtime.terminate(agent.pid)
            await runtime.stop(timeout=2.0)
        if child is not None:
            if child.stdin is not None:
                child.stdin.close()  # (the stub master stops when its stdin closes)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
        if work:
            shutil.rmtree(work, ignore_errors=True)


def _wire(runtime: Runtime) -> dict[str, int]:
    """What crossed the wire: fewer, fuller messages per task is most of what batching saves."""
    local = runtime.messages_local  # (the agents and the simulated containerizer talk in-process)
    return {
        "messages_out": runtime.messages_sent - local,
        "messages_in": runtime.messages_received - local,
        "messages_local": local,
        "frames_out": runtime.frames_sent,
        "frames_in": runtime.frames_received,
    }


class _Starter(Process):
    """Only a sender: tells the stub master to begin once every agent is registered."""

    def __init__(self) -> None:
        super().__init__("starter")


_BAD_ENDS = ("failed", "killed", "lost", "error", "dropped", "gone")


async def _until(count: Any, target: int, timeout: float, poll: float = 0.02) -> None:
    """Poll ``count()`` until it reaches ``target`` (a benchmark's progress check, not a test's
    wait: nothing here signals the counts it watches). Fails once ``timeout`` seconds pass
    without it moving, however long the whole wait takes."""
    loop = asyncio.get_running_loop()
    last, since = count(), loop.time()
    while last < target:
        await asyncio.sleep(poll)
        now, seen = loop.time(), count()
        if seen != last:
            last, since = seen, now
        elif now - since > timeout:
            raise TimeoutError(f"no progress in {timeout} s ({last} of {target})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.agent_bench", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--agents", type=int, default=100)
    p.add_argument("--tasks", type=int, default=40_000, help="finished tasks per stretch")
    p.add_argument("--warmup", type=int, default=20_000, help="finished tasks before the first")
    p.add_argument("--runs", type=int, default=5, help="measured stretches (median)")
    p.add_argument("--tasks-per-launch", type=int, default=4)
    p.add_argument("--task-seconds", type=float, default=0.0)
    p.add_argument("--task-resources", default="cpus:1;mem:1024")
    p.add_argument("--agent-resources", default="cpus:4;mem:4096;disk:4096;ports:[31000-32000]")
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds without progress before giving up"
    )
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--serve-master", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    libproc.configure_logging(level=os.environ.get("LIBPROC_LOG_LEVEL", "warning"))
    if args.serve_master:
        libproc.run(serve_master(args.tasks_per_launch, args.task_resources))
        return 0
    report = libproc.run(measure(args))
    print(
        f"agent CPU per direct task ({args.agents} agents, {args.tasks_per_launch} tasks per "
        f"launch, medians of {args.runs} x {args.tasks}): "
        f"{report['cpu_us_per_task_median']:.1f} µs "
        f"(range {report['cpu_us_per_task_min']:.1f}-{report['cpu_us_per_task_max']:.1f})"
    )
    for s in report["stretches"]:
        print(
            f"  {s['cpu_us_per_task']:6.1f} µs/task; per task: messages out"
            f" {s['messages_out_per_task']:.2f} in {s['messages_in_per_task']:.2f}"
            f" local {s['messages_local_per_task']:.2f}, frames out"
            f" {s['frames_out_per_task']:.2f} in {s['frames_in_per_task']:.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
