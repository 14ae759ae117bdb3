"""The containerizer alone: what one short container costs the agent's process and its zygotes.

Run ``python -m bench.containers`` (posix and, where the machine has them, cgroups), or
``--isolation cgroups --containers 1000 --in-flight 20 --rounds 3 --json PATH``.

``bench.tasks`` times the whole cluster: a master, an agent, a framework and the tasks share two
cores, and single runs of it vary by a third on these machines, more than most changes to one
component are worth. This suite takes the agent's side of a task alone, in one process: the real
:class:`~mesa.actors.containerizer.Containerizer` with the isolators the agent would use for
``--isolation=MODE`` (and its zygotes), driven by a small actor that plays the agent: it keeps
``in_flight`` containers running ``true`` (each ``sh -c true``, as a direct task's command),
starting the next as each one's end is reported, until ``containers`` have run. Per round it
reports the CPU this process spent per container (the containerizer, the isolators, the libproc
runtime; the owner's own share is a few microseconds) and the zygotes' (their starts and reaps;
not the tasks', which are their children's), and the rate. One round warms up (the first
containers make their cgroups, later ones reuse spares), then ``rounds`` are timed and the
median reported. The sandboxes go on a tmpfs when there is one, as in ``bench.tasks``.

It runs on uvloop (``libproc.run``), as ``mesa.node`` runs an agent (``LIBPROC_LOOP=asyncio``
for asyncio's own loop; the report names the loop).

A container's cgroups are made under a root of the suite's own (``mesa-bench-containers-<pid>``),
removed at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psutil

import libproc
from bench.machine import describe
from bench.tasks.run import default_work_dir, filesystem_of
from libproc import UPID, Process, Runtime
from libproc import log as libproc_log
from libproc.loop import loop_name
from mesa.actors.containerizer import Containerizer
from mesa.info import CommandInfo, ExecutorInfo
from mesa.isolators import IsolationOptions, cgroupfs, resolve_isolation
from mesa.messages import ContainerLaunched, ContainerTerminated, LaunchContainer

__all__ = ["Config", "main", "measure"]


@dataclass
class Config:
    isolation: tuple[str, ...] = ("posix", "cgroups")
    containers: int = 1000  # per round
    in_flight: int = 20  # as bench.tasks' 20 slots of cpus:0.1
    rounds: int = 3  # timed, after one warm-up round
    resources: str = "cpus:0.1;mem:32"
    work_dir: str = ""
    round_timeout: float = 120.0


class Owner(Process):
    """Plays the agent: keeps ``in_flight`` containers going until ``count`` have ended."""

    def __init__(self, containerizer: UPID, count: int, in_flight: int, cfg: Config, tmp: str):
        super().__init__(f"owner-{uuid.uuid4().hex[:8]}")
        self.containerizer, self.count, self.in_flight = containerizer, count, in_flight
        self.cfg, self.tmp = cfg, tmp
        self.started = self.ended = 0
        self.failed: list[str] = []
        self.done = asyncio.Event()

    def go(self) -> None:
        for _ in range(min(self.in_flight, self.count)):
            self._launch()

    def _launch(self) -> None:
        self.started += 1
        cid = str(uuid.uuid4())
        info = ExecutorInfo(cid, CommandInfo(value="true"))
        msg = LaunchContainer(cid, info, os.path.join(self.tmp, cid), {}, self.cfg.resources)
        self.send(self.containerizer, LaunchContainer.NAME, msg)

    def unhandled(self, sender: UPID, name: str, body: Any) -> None:
        if isinstance(body, ContainerLaunched):
            if body.error is None:
                return  # (started: its end comes as ContainerTerminated)
            # A launch that failed ends there: no ContainerTerminated follows.
            self.failed.append(f"{body.container_id}: launch failed: {body.error}")
        elif isinstance(body, ContainerTerminated):
            if body.status != 0 or body.reason is not None:
                self.failed.append(f"{body.container_id}: status {body.status} {body.reason}")
        else:
            return
        self.ended += 1
        if self.ended >= self.count:
            self.done.set()
        elif self.started < self.count:
            self._launch()


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


async def measure(cfg: Config, mode: str) -> dict[str, Any]:
    """One isolation mode: a containerizer, a warm-up round, then ``cfg.rounds`` timed."""
    root = f"mesa-bench-containers-{os.getpid()}"
    options = IsolationOptions(cgroups_root=root)
    isolation = resolve_isolation(mode, options)
    tmp = tempfile.mkdtemp(prefix="mesa-bench-containers-", dir=cfg.work_dir or None)
    rt: Runtime | None = None
    try:
        rt = await Runtime("127.0.0.1", 0).start()
        containerizer = Containerizer(isolation.isolators)
        cpid = rt.spawn(containerizer)
        rounds: list[dict[str, float]] = []
        failed: list[str] = []
        for n in range(cfg.rounds + 1):
            owner = Owner(cpid, cfg.containers, cfg.in_flight, cfg, tmp)
            rt.spawn(owner)
            zygotes = [z.pid for z in containerizer.zygotes if z.pid is not None]
            cpu0, zyg0, wall0 = time.process_time(), _cpu(zygotes), time.perf_counter()
            owner.go()
            try:
                # (A whole round takes seconds; a stuck one is a bug to report, not to wait on.)
                await asyncio.wait_for(owner.done.wait(), cfg.round_timeout)
            except TimeoutError:
                raise RuntimeError(
                    f"{mode}: {owner.ended} of {cfg.containers} containers ended within "
                    f"{cfg.round_timeout:.0f}s"
                ) from None
            wall = time.perf_counter() - wall0
            cpu, zyg = time.process_time() - cpu0, _cpu(zygotes) - zyg0
            failed.extend(owner.failed)
            if n:  # the first round warms up
                rounds.append(
                    {
                        "agent_us": cpu / cfg.containers * 1e6,
                        "zygotes_us": zyg / cfg.containers * 1e6,
                        "per_s": cfg.containers / wall,
                        "wall_s": wall,
                    }
                )
        return {
            "isolation": mode,
            "isolators": isolation.names,
            "agent_us": statistics.median(r["agent_us"] for r in rounds),
            "zygotes_us": statistics.median(r["zygotes_us"] for r in rounds),
            "per_s": statistics.median(r["per_s"] for r in rounds),
            "rounds": rounds,
            "failed": len(failed),
            "failures": failed[:5],
        }
    finally:
        if rt is not None:
            await rt.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        cgroupfs.purge(root)


def run(cfg: Config) -> dict[str, Any]:
    cfg.work_dir = cfg.work_dir or default_work_dir()
    report: dict[str, Any] = {
        "suite": "containers",
        "machine": describe(),
        "config": {
            **cfg.__dict__,
            "work_dir_filesystem": filesystem_of(cfg.work_dir),
            "loop": loop_name(),
        },
        "results": [],
        "skipped": [],
    }
    for mode in cfg.isolation:
        try:
            resolve_isolation(mode, IsolationOptions())  # (only to ask whether it can work here)
        except ValueError as e:
            report["skipped"].append(f"{mode}: {e}")
            print(f"skipped: {mode}: {e}", flush=True)
            continue
        r = libproc.run(measure(cfg, mode))  # (uvloop, as mesa.node runs an agent)
        report["results"].append(r)
        print(
            f"{mode:8s} agent {r['agent_us']:6.0f} µs  zygotes {r['zygotes_us']:5.0f} µs"
            f" per container  {r['per_s']:6.0f} containers/s"
            f"  (median of {cfg.rounds}; {r['failed']} failed)",
            flush=True,
        )
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.containers", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--isolation", default="posix,cgroups", help="isolation modes to measure")
    p.add_argument("--containers", type=int, default=Config.containers, help="per round")
    p.add_argument("--in-flight", type=int, default=Config.in_flight)
    p.add_argument("--rounds", type=int, default=Config.rounds, help="timed rounds (median)")
    p.add_argument("--work-dir", default="", help="where sandboxes go (default: a tmpfs)")
    p.add_argument("--json", default=None, help="write the report here")
    args = p.parse_args(argv)
    if args.containers < 1 or args.in_flight < 1 or args.rounds < 1:
        p.error("--containers, --in-flight and --rounds must be at least 1")
    libproc_log.configure(level="warning")  # a log line per container would be measured too
    cfg = Config(
        isolation=tuple(m.strip() for m in args.isolation.split(",") if m.strip()),
        containers=args.containers,
        in_flight=args.in_flight,
        rounds=args.rounds,
        work_dir=args.work_dir,
    )
    report = run(cfg)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    failed = sum(r["failed"] for r in report["results"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
