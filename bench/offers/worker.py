"""The processes of the offer-throughput suite: ``python -m bench.offers.worker ROLE ...``.

* ``master``: the real :class:`~mesa.actors.master.Master` (and its allocator) in a runtime of its
  own, set up as ``python -m mesa.node --role=master`` sets it up (same flags, same garbage
  collector thresholds), plus a ``sink`` actor that only counts messages, for the raw one-way
  baseline.
* ``agents``: many real :class:`~mesa.actors.agent.Agent` actors (ids ``agent<N>``) in one runtime,
  each with its own work directory, all using one :class:`~bench.offers.sim.SimContainerizer`.
* ``frameworks``: many frameworks on the real scheduler SDK (:class:`mesa.scheduler.Scheduler`
  and :class:`~mesa.scheduler.SchedulerDriver`, sharing one runtime), accepting every offer and
  filling it with tasks of a configured size, at full speed or at a set rate.

Each worker is driven by the orchestrator (``bench/offers/run.py``) through JSON lines: commands
on stdin, answers on stdout (one line each). A worker exits when its stdin closes, so it never
outlives the orchestrator, whatever happened to it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import gc
import json
import os
import resource
import sys
import time
from array import array
from collections import deque
from pathlib import Path
from typing import Any

import libproc
from libproc import UPID, Backpressure, Process, Runtime, handler
from mesa.info import CommandInfo, ExecutorInfo, FrameworkInfo, Offer, TaskInfo, TaskStatus
from mesa.resources import Resources
from mesa.scheduler import Scheduler, SchedulerDriver
from mesa.task_state import TaskState, is_terminal

BLAST = "bench.Blast"

# How often the agent and framework processes move what survived out of the cyclic collector's
# sight (see Freezer). 5,000 agents share one heap here, where each real agent has a small one of
# its own: with thousands of tasks in flight the young generation filled with them between
# freezes, and each young collection paused every agent of the process for ~50 ms, which is the
# simulation's doing, not mesa's (it was the whole tail of the half-rate p99).
FREEZE_EVERY = float(os.environ.get("BENCH_FREEZE_EVERY", "0.5"))
# How long the simulated agents wait before they resend an unacknowledged update (Mesos's
# 10 s; mesa's default of 1 s turns a saturated run into a storm of duplicates).
STATUS_UPDATE_BACKOFF = 10.0
# How often the simulated agents look at their disk (for finished sandboxes it has no room for):
# a real agent does once a minute, but 25,000 of them in one process would look 400 times a
# second, each a statvfs handed to a worker thread, which is the simulation's doing; and they
# make no sandboxes.
DISK_WATCH_INTERVAL = 3600.0


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _commands() -> Any:
    """Yield the JSON commands arriving on stdin; ends at EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        line = line.strip()
        if line:
            yield json.loads(line)


class GCWatch:
    """Time this process spends in the garbage collector: total, per generation (with the
    number of collections), and the longest pause since it was last read (a full collection
    of a large heap stalls every actor in the process)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.longest = 0.0
        self.by_gen = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            d = time.perf_counter() - self._t0
            self.total += d
            gen = info.get("generation", 2)
            self.by_gen[gen] += d
            self.count[gen] += 1
            if d > self.longest:
                self.longest = d

    def read(self) -> dict[str, Any]:
        out = {
            "gc_s": self.total,
            "gc_longest_ms": self.longest * 1000,
            "gc_s_by_generation": list(self.by_gen),
            "gc_collections": list(self.count),
        }
        self.longest = 0.0
        return out


class Freezer:
    """The "freeze" command of the agent and framework processes.

    A real agent or framework has a heap of its own, and a small one; thousands of agents, or a
    hundred frameworks with their tasks in flight, in one heap make every full collection walk
    all of them: pauses of up to a second (agents) and of 30-80 ms every few seconds (frameworks,
    where each one held up the RUNNING updates the latency is measured by) were measured, which
    says nothing about mesa. So once the cluster is up, and every ``FREEZE_EVERY`` seconds after,
    the process moves what survived out of the cyclic collector's sight (reference counting still
    frees it).
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def command(self) -> dict[str, Any]:
        gc.collect()
        gc.freeze()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep_freezing())
        return {"frozen": gc.get_freeze_count()}

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @staticmethod
    async def _keep_freezing() -> None:
        while True:
            await asyncio.sleep(FREEZE_EVERY)
            gc.freeze()


class Profiler:
    """cProfile on demand (``profile_start`` / ``profile_stop`` with a ``path``), timed by this
    process's CPU clock: a wall-clock profile charges a handler for the time the kernel gave the
    other processes of the run, which on two shared cores is most of it."""

    def __init__(self) -> None:
        self._prof: cProfile.Profile | None = None

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] == "profile_start":
            self._prof = cProfile.Profile(time.process_time)
            self._prof.enable()
            return {"ok": True}
        prof, self._prof = self._prof, None
        if prof is None:
            return {"error": "no profile running"}
        prof.disable()
        prof.dump_stats(cmd["path"])
        return {"ok": True, "path": cmd["path"]}


PROFILE_COMMANDS = ("profile_start", "profile_stop")
PROFILER = Profiler()


def cpu_seconds() -> float:
    """This process's CPU time so far, user and system (what the reports divide per launch)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ====================================================================== master


class Sink(Process):
    """Counts ``bench.Blast`` messages: the receiving end of the raw one-way baseline."""

    def __init__(self) -> None:
        super().__init__("sink")
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    @handler(BLAST)
    def _blast(self, sender: UPID, body: Any) -> None:
        now = time.perf_counter()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now


async def run_master(args: argparse.Namespace) -> None:
    from mesa.actors.master import Master, MasterFlags

    gc.set_threshold(50_000, 20, 10)  # as mesa.node does for a master
    runtime = await Runtime(args.ip, 0, http_port=0).start()
    master = Master(
        MasterFlags(
            hostname=args.ip,
            allocation_interval=args.allocation_interval,
            agent_ping_interval=args.ping_interval,
            max_agent_ping_timeouts=args.max_ping_timeouts,
            http_port=runtime.http_port,
        )
    )
    pid = runtime.spawn(master)
    # As mesa.node does once a node is up: what exists now lives as long as the master, out of
    # the collector's sight.
    gc.collect()
    gc.freeze()
    gcw = GCWatch()
    sink = Sink()
    sink_pid = runtime.spawn(sink)
    _emit(
        {
            "ready": True,
            "pid": os.getpid(),
            "master": str(pid),
            "endpoint": pid.address,
            "sink": str(sink_pid),
            "http_port": runtime.http_port,
        }
    )
    try:
        async for cmd in _commands():
            what = cmd.get("cmd")
            if what in PROFILE_COMMANDS:
                _emit(PROFILER.command(cmd))
            elif what == "stats":
                keys = cmd.get("keys")
                metrics = runtime.metrics
                # Only what is asked for: some of the master's gauges walk every agent, and the
                # orchestrator asks several times a second.
                values = {k: metrics.get(k) for k in keys} if keys else metrics.snapshot()
                out = {"metrics": values, "cpu_s": cpu_seconds(), "time": time.perf_counter()}
                if cmd.get("gc"):
                    out.update(gcw.read())
                _emit(out)
            elif what == "sink_reset":
                sink.count = 0
                _emit({"ok": True})
            elif what == "sink":
                _emit({"count": sink.count, "seconds": sink.last - sink.first})
            elif what == "gc":
                gc.collect()
                _emit({"ok": True})
            else:
                _emit({"error": f"unknown command {what!r}"})
    finally:
        await runtime.stop(timeout=2.0)


# ====================================================================== agents


class Blaster(Process):
    """The sending end of the raw one-way baseline: ``n`` small messages, as fast as libproc
    takes them (waiting when it pushes back)."""

    def __init__(self) -> None:
        super().__init__("blaster")

    async def blast(self, to: str, n: int, chunk: int = 256) -> float:
        target = UPID.parse(to)
        body = [0, "x" * 16]
        started = time.perf_counter()
        i = 0
        while i < n:
            end = min(n, i + chunk)
            while i < end:
                try:
                    self.send(target, BLAST, body)
                    i += 1
                except Backpressure:
                    await self.wait_writable(target)
            await asyncio.sleep(0)  # let the batch go out
        return time.perf_counter() - started


async def run_agents(args: argparse.Namespace) -> None:
    from bench.offers.sim import SimContainerizer
    from mesa.actors.agent import Agent

    gc.set_threshold(50_000, 20, 10)  # many long-lived actors here too
    runtime = await Runtime(args.ip, 0).start()
    containerizer = SimContainerizer(args.task_seconds)
    cz = runtime.spawn(containerizer)
    blaster = Blaster()
    runtime.spawn(blaster)
    gcw = GCWatch()
    base = Path(args.work_dir)
    agents: list[Agent] = []
    _emit({"ready": True, "pid": os.getpid(), "address": runtime.address})

    async def spawn_all() -> None:
        batch = max(1, int(args.spawn_rate * 0.05))
        for k in range(args.count):
            i = args.offset + k
            agent = Agent(
                args.master,
                base / f"a{i}",
                resources=args.resources,
                hostname=f"sim{i}",
                containerizer=cz,
                id=f"agent{i}",
                # Mesos's first status update retry is after 10 s; mesa's default of 1 s turns a
                # saturated run into a storm of duplicate updates and acknowledgements.
                status_update_backoff=args.status_update_backoff,
                disk_watch_interval=DISK_WATCH_INTERVAL,
            )
            runtime.spawn(agent)
            agents.append(agent)
            if (k + 1) % batch == 0:
                await asyncio.sleep(0.05)

    spawner: asyncio.Task[None] | None = None
    freezer = Freezer()

    try:
        async for cmd in _commands():
            what = cmd.get("cmd")
            if what in PROFILE_COMMANDS:
                _emit(PROFILER.command(cmd))
            elif what == "freeze":
                _emit(freezer.command())
            elif what == "spawn":
                if spawner is None:
                    spawner = asyncio.get_running_loop().create_task(spawn_all())
                _emit({"ok": True})
            elif what == "stats":
                _emit(
                    {
                        "spawned": len(agents),
                        "registered": sum(1 for a in agents if a.registered),
                        "containers": containerizer.launched,
                        "cpu_s": cpu_seconds(),
                        **(gcw.read() if cmd.get("gc") else {}),
                    }
                )
            elif what == "blast":
                seconds = await libproc.dispatch(
                    blaster.pid, blaster.blast, cmd["to"], int(cmd["n"])
                )
                _emit({"sent": int(cmd["n"]), "seconds": seconds})
            else:
                _emit({"error": f"unknown command {what!r}"})
    finally:
        if spawner is not None:
            spawner.cancel()
        freezer.stop()
        await runtime.stop(timeout=2.0)


# ====================================================================== frameworks


class Stats:
    """What the frameworks of one process saw, reset at every measurement window."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.offers = 0
        self.accepts = 0
        self.declines = 0
        self.launched = 0
        self.running = 0
        self.finished = 0
        self.failed = 0
        self.latencies = array("d")  # seconds, accept -> RUNNING
        self.since = time.perf_counter()


class Launcher:
    """Turns offers into launches: at once, or paced by a token bucket (``rate`` tasks/s)."""

    def __init__(self, args: argparse.Namespace, stats: Stats) -> None:
        self.stats = stats
        self.task = Resources.parse(args.task_resources)
        self.task_text = str(self.task)
        self.task_q = self.task.scalar_quantities()
        self.max_tasks = args.max_tasks_per_offer
        self.executor = args.executor
        self.rate: float | None = None
        self.tokens = 0.0
        # Launched, not yet seen RUNNING: a window, as a load generator keeps one. Without it
        # the first offers of a large cluster launch its whole capacity at once, and what is
        # then measured is how long the simulation takes to drain that queue.
        self.max_inflight = args.max_inflight
        self.inflight = 0
        self.held: deque[tuple[Any, Offer]] = deque()
        self._fit: dict[str, int] = {}

    def fit(self, resources: str) -> int:
        n = self._fit.get(resources)
        if n is None:
            q = Resources.parse(resources).scalar_quantities()
            n = min(q.get(name, 0) // need for name, need in self.task_q.items() if need > 0)
            if self.max_tasks:
                n = min(n, self.max_tasks)
            self._fit[resources] = n
        return n

    def offers(self, sched: BenchScheduler, driver: Any, offers: list[Offer]) -> None:
        self.stats.offers += len(offers)
        if self.rate is None and not self.held:
            for i, offer in enumerate(offers):
                if self.inflight >= self.max_inflight:
                    self.held.extend((driver, o) for o in offers[i:])
                    return
                self.launch(sched, driver, offer, self.fit(offer.resources))
        else:
            self.held.extend((driver, offer) for offer in offers)

    def launch(self, sched: BenchScheduler, driver: Any, offer: Offer, n: int) -> None:
        if not driver.connected:
            return
        if n <= 0:
            self.stats.declines += 1
            driver.decline_offer(offer.id, 5.0)
            return
        tasks = []
        now = time.perf_counter()
        for _ in range(n):
            sched.seq += 1
            task_id = f"t{sched.seq}"
            if self.executor == "command":
                task = TaskInfo(
                    task_id, task_id, offer.agent_id, self.task_text, command=CommandInfo("sim")
                )
            else:
                task = TaskInfo(
                    task_id, task_id, offer.agent_id, self.task_text, executor=sched.executor_info
                )
            tasks.append(task)
            sched.launched_at[task_id] = now
        self.stats.accepts += 1
        self.stats.launched += n
        self.inflight += n
        # What the tasks leave of the offer comes back at once (no filter): the next cycle
        # may offer it again, with whatever finished meanwhile.
        driver.launch_tasks([offer.id], tasks, refuse_seconds=0.0)

    async def pace(self, sched_of: dict[int, BenchScheduler]) -> None:
        """Spend the token bucket on held offers, every few milliseconds."""
        tick = 0.005
        last = time.perf_counter()
        while True:
            await asyncio.sleep(tick)
            now = time.perf_counter()
            if self.rate is None:
                while self.held and self.inflight < self.max_inflight:
                    driver, offer = self.held.popleft()
                    self.launch(sched_of[id(driver)], driver, offer, self.fit(offer.resources))
                last = now
                continue
            self.tokens = min(self.tokens + (now - last) * self.rate, max(1.0, self.rate * 0.05))
            last = now
            while self.held and self.tokens >= 1 and self.inflight < self.max_inflight:
                driver, offer = self.held.popleft()
                n = min(self.fit(offer.resources), int(self.tokens))
                self.tokens -= n
                self.launch(sched_of[id(driver)], driver, offer, n)


class BenchScheduler(Scheduler):
    """A framework: every offer filled with tasks; RUNNING and terminal updates counted."""

    def __init__(self, launcher: Launcher, stats: Stats, name: str) -> None:
        self.launcher = launcher
        self.stats = stats
        self.seq = 0
        self.launched_at: dict[str, float] = {}
        self.executor_info = ExecutorInfo(
            executor_id=f"{name}-executor", command=CommandInfo("sim-executor")
        )

    def registered(self, driver: Any, framework_id: str, master_info: Any) -> None:
        pass

    def resource_offers(self, driver: Any, offers: list[Offer]) -> None:
        self.launcher.offers(self, driver, offers)

    def status_update(self, driver: Any, status: TaskStatus) -> None:
        state = status.state
        if state == TaskState.TASK_RUNNING:
            t0 = self.launched_at.pop(status.task_id, None)
            if t0 is not None:
                self.launcher.inflight -= 1
                self.stats.running += 1
                self.stats.latencies.append(time.perf_counter() - t0)
        elif is_terminal(state):
            if self.launched_at.pop(status.task_id, None) is not None:
                self.launcher.inflight -= 1
            if state == TaskState.TASK_FINISHED:
                self.stats.finished += 1
            else:
                self.stats.failed += 1


async def run_frameworks(args: argparse.Namespace) -> None:
    runtime = await Runtime(args.ip, 0).start()
    stats = Stats()
    launcher = Launcher(args, stats)
    drivers = []
    scheds: list[BenchScheduler] = []
    sched_of: dict[int, BenchScheduler] = {}
    for k in range(args.count):
        name = f"bench-{args.offset + k}"
        sched = BenchScheduler(launcher, stats, name)
        driver = SchedulerDriver(
            sched, FrameworkInfo(user="bench", name=name), args.master, runtime=runtime
        )
        await driver.start()
        drivers.append(driver)
        scheds.append(sched)
        sched_of[id(driver)] = sched
    pacer = asyncio.get_running_loop().create_task(launcher.pace(sched_of))
    gcw = GCWatch()
    freezer = Freezer()
    _emit({"ready": True, "pid": os.getpid(), "address": runtime.address})
    try:
        async for cmd in _commands():
            what = cmd.get("cmd")
            if what in PROFILE_COMMANDS:
                _emit(PROFILER.command(cmd))
            elif what == "stats":
                now = time.perf_counter()
                out = {
                    "registered": sum(1 for d in drivers if d.connected),
                    "seconds": now - stats.since,
                    "offers": stats.offers,
                    "accepts": stats.accepts,
                    "declines": stats.declines,
                    "launched": stats.launched,
                    "running": stats.running,
                    "finished": stats.finished,
                    "failed": stats.failed,
                    "outstanding": sum(len(s.launched_at) for s in scheds),
                    "cpu_s": cpu_seconds(),
                    **(gcw.read() if cmd.get("gc") else {}),
                }
                if cmd.get("latencies"):
                    # Raw doubles, not a JSON list: turning 20,000 floats into JSON held this
                    # process for ~15 ms, and the RUNNING updates held up behind that, counted
                    # in the next window, made a good part of its p99.
                    out["latencies"] = base64.b64encode(stats.latencies.tobytes()).decode()
                if cmd.get("reset"):
                    stats.reset()
                _emit(out)
            elif what == "freeze":
                _emit(freezer.command())
            elif what == "rate":
                rate = cmd.get("per_second")
                launcher.rate = float(rate) if rate is not None else None
                launcher.tokens = 0.0
                _emit({"ok": True})
            else:
                _emit({"error": f"unknown command {what!r}"})
    finally:
        pacer.cancel()
        freezer.stop()
        await runtime.stop(timeout=2.0)


# ====================================================================== entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.offers.worker")
    p.add_argument("role", choices=["master", "agents", "frameworks"])
    p.add_argument("--ip", default="127.0.0.1")
    p.add_argument("--master", default="")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--allocation-interval", type=float, default=1.0)
    p.add_argument("--ping-interval", type=float, default=1.0)
    p.add_argument("--max-ping-timeouts", type=int, default=5)
    p.add_argument("--resources", default="cpus:4;mem:4096;disk:4096;ports:[31000-32000]")
    p.add_argument("--task-resources", default="cpus:1;mem:1024")
    p.add_argument("--task-seconds", type=float, default=1.0)
    p.add_argument("--max-tasks-per-offer", type=int, default=0)
    p.add_argument("--executor", choices=["command", "custom"], default="command")
    p.add_argument("--max-inflight", type=int, default=2000)
    p.add_argument("--status-update-backoff", type=float, default=STATUS_UPDATE_BACKOFF)
    p.add_argument("--spawn-rate", type=float, default=5000.0)
    p.add_argument("--work-dir", default="")
    args = p.parse_args(argv)
    libproc.configure_logging(level=os.environ.get("LIBPROC_LOG_LEVEL", "warning"))
    role = {"master": run_master, "agents": run_agents, "frameworks": run_frameworks}[args.role]
    try:
        libproc.run(role(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
