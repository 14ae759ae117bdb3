"""Allocator cycle time as agents and frameworks grow, in Mesos's DeclineOffers shape.

Run ``python -m bench.allocator_bench`` (the sweep: agents in {1k, 10k, 50k} x frameworks in
{10, 100, 1000}), ``--quick`` for a short run, ``--agents N --frameworks M`` for one point, and
``--json PATH`` to keep the figures.

**The shape** follows Mesos's ``HierarchicalAllocator_BENCHMARK_Test.DeclineOffers``: frameworks
in one role; agents of ``cpus:24;mem:4096;disk:4096;ports:[31000-32000]``, each already running
``cpus:16;mem:2014;disk:1024`` and 16 single ports for framework ``i % frameworks``; then rounds
in which every outstanding offer is declined with an (effectively) infinite filter and one
allocation cycle runs. Every round every agent's free resources change, so every cycle is a
*full* cycle: each agent walks the DRF order past the frameworks that refused it. The declines
are handled before the clock starts, as in Mesos (they are the master's messages, processed
before the allocation timer fires); their cost is reported on its own. The sweep times the first
rounds (Mesos runs ``2 x frameworks`` of them, 2000 at 1000 frameworks, which would not fit in a
few minutes); the whole loop is run once, at 10k agents x 10 frameworks, to show the late rounds:
every framework refusing more of every agent, then nothing left to offer.

**Incremental**: after the full rounds, 1% of the agents change between cycles (their offers
are declined) and the cycle is timed again, quoted as a ratio to the full cycle of the same
configuration in the same run. **Idle**: a cycle in which nothing changed. **Memory**: bytes
traced (tracemalloc) per agent added, with its resources and its used allocation, then again
once every agent also holds one offer and one filter.

The benchmark calls the actor's own methods in-process (``add_agent``, ``recover_resources``,
``allocate``: the very cycle its timers run), with the clock paused so no timer interferes, and
no network. Every figure is the median of all samples over several runs; the wall-clock median
is the headline, and CPU time (``time.process_time``) is given beside it because on a shared
two-core machine other processes steal wall time. The garbage collector stays on, as in the
master: its full collections show up as the ``max`` column, not in the medians.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libproc
from libproc import Clock, MemoryNetwork, Process, Runtime
from mesa.actors.allocator import Allocator
from mesa.resources import Resources

AGENT_TOTAL = "cpus:24;mem:4096;disk:4096;ports:[31000-32000]"
# Mesos fragments 31000-32000 into 16 pieces for the used allocation; 16 single ports spread
# over the range leave the free ports in 17 pieces, which is what makes range arithmetic work.
USED = "cpus:16;mem:2014;disk:1024;ports:[{}]".format(
    ",".join(f"{31000 + 62 * i}-{31000 + 62 * i}" for i in range(16))
)
REFUSE = 2**31 - 1  # Mesos's INT_MAX refuse_seconds (the allocator cuts it to a year)

TARGET_FULL_MS = 100.0  # 10k agents x 1000 frameworks
TARGET_INCREMENTAL = 0.05  # of the full cycle


@dataclass(frozen=True)
class Sizes:
    agents: tuple[int, ...]
    frameworks: tuple[int, ...]
    runs: int  # fresh allocators per configuration
    rounds: int  # DeclineOffers rounds per run (each one full cycle)
    incremental: int  # incremental cycles per run
    memory_agents: tuple[int, ...]


SWEEP = Sizes(
    agents=(1_000, 10_000, 50_000),
    frameworks=(10, 100, 1_000),
    runs=3,
    rounds=5,
    incremental=10,
    memory_agents=(1_000, 10_000, 50_000),
)
QUICK = Sizes(
    agents=(1_000, 10_000),
    frameworks=(10, 1_000),
    runs=1,
    rounds=4,
    incremental=6,
    memory_agents=(10_000,),
)


class Sink(Process):
    """Stands in for the master; the benchmark reads ``allocate()``'s result directly."""


@dataclass
class Point:
    agents: int
    frameworks: int
    full_wall: list[float] = field(default_factory=list)  # seconds
    full_cpu: list[float] = field(default_factory=list)
    full_gc: list[float] = field(default_factory=list)  # garbage collection inside the cycle
    incr_wall: list[float] = field(default_factory=list)
    incr_cpu: list[float] = field(default_factory=list)
    idle_wall: list[float] = field(default_factory=list)
    decline_wall: list[float] = field(default_factory=list)  # handling one round of declines
    offers: list[int] = field(default_factory=list)  # per full round
    filtered: list[int] = field(default_factory=list)  # filter hits per full round
    setup_s: list[float] = field(default_factory=list)


class GCClock:
    """Time spent in the garbage collector, through ``gc.callbacks``."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started

    def __enter__(self) -> GCClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


async def _allocator() -> tuple[Runtime, Allocator]:
    rt = Runtime(transport=MemoryNetwork())
    await rt.start()
    sink = Sink("master")
    rt.spawn(sink)
    allocator = Allocator(sink.pid, interval=1.0, id="allocator")
    rt.spawn(allocator)
    await libproc.settle()
    return rt, allocator


def _populate(allocator: Allocator, agents: int, frameworks: int) -> list[str]:
    fids = [f"framework-{i:05d}" for i in range(frameworks)]
    for fid in fids:
        allocator.add_framework(fid, ["*"])
    _add_agents(allocator, agents, fids)
    return fids


def _add_agents(allocator: Allocator, agents: int, fids: list[str]) -> None:
    parse = Resources.parse
    for i in range(agents):
        # One parse per agent, as the master parses each agent's registration.
        used = {fids[i % len(fids)]: parse(USED)}
        allocator.add_agent(f"agent-{i:06d}", f"host-{i}", parse(AGENT_TOTAL), used)


async def measure_point(point: Point, sizes: Sizes, seed: int) -> None:
    """One run: a fresh allocator through the DeclineOffers rounds, then incremental cycles."""
    Clock.pause()
    rt, allocator = await _allocator()
    allocator._rng.seed(seed)
    try:
        started = time.perf_counter()
        _populate(allocator, point.agents, point.frameworks)
        point.setup_s.append(time.perf_counter() - started)
        recover = allocator.recover_resources
        offers: list[Any] = []
        for _ in range(sizes.rounds):
            t0 = time.perf_counter()
            for fid, aid, res in offers:
                recover(aid, fid, res, REFUSE)
            if offers:
                point.decline_wall.append(time.perf_counter() - t0)
            with GCClock() as gc_clock:
                w0, c0 = time.perf_counter(), time.process_time()
                msg = allocator.allocate()
                point.full_wall.append(time.perf_counter() - w0)
                point.full_cpu.append(time.process_time() - c0)
            point.full_gc.append(gc_clock.total)
            offers = list(msg.items) if msg is not None else []
            point.offers.append(len(offers))
            point.filtered.append(allocator.last_cycle.get("filtered", 0))
        # 1% of the agents change between cycles: their outstanding offers are declined.
        k = max(1, point.agents // 100)
        for _ in range(sizes.incremental):
            batch, offers = offers[:k], offers[k:]
            for fid, aid, res in batch:
                recover(aid, fid, res, REFUSE)
            w0, c0 = time.perf_counter(), time.process_time()
            msg = allocator.allocate()
            point.incr_wall.append(time.perf_counter() - w0)
            point.incr_cpu.append(time.process_time() - c0)
            if msg is not None:
                offers.extend(msg.items)
        for _ in range(5):
            w0 = time.perf_counter()
            allocator.allocate()
            point.idle_wall.append(time.perf_counter() - w0)
    finally:
        await rt.stop()
        Clock.reset()


async def measure_whole_shape(agents: int, frameworks: int) -> dict[str, Any]:
    """Mesos's loop to the end: ``2 x frameworks`` rounds, so every framework ends up refusing
    every agent. Once they all have, nothing changes any more and a cycle costs nothing (where
    Mesos's allocator still walks every agent against every framework, every cycle)."""
    Clock.pause()
    rt, allocator = await _allocator()
    try:
        _populate(allocator, agents, frameworks)
        offers: list[Any] = []
        rounds = []
        for _ in range(2 * frameworks):
            for fid, aid, res in offers:
                allocator.recover_resources(aid, fid, res, REFUSE)
            w0 = time.perf_counter()
            msg = allocator.allocate()
            elapsed = time.perf_counter() - w0
            offers = list(msg.items) if msg is not None else []
            rounds.append({"ms": elapsed * 1000.0, "offers": len(offers)})
        return {"agents": agents, "frameworks": frameworks, "rounds": rounds}
    finally:
        await rt.stop()
        Clock.reset()


async def measure_memory(agents: int, frameworks: int) -> dict[str, float]:
    """Traced bytes per agent: added (with its used allocation), then holding an offer and a
    filter each. Measured apart from the timings, since tracing slows allocation down."""
    Clock.pause()
    rt, allocator = await _allocator()
    try:
        fids = [f"framework-{i:05d}" for i in range(frameworks)]
        for fid in fids:
            allocator.add_framework(fid, ["*"])
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        _add_agents(allocator, agents, fids)
        gc.collect()
        added = tracemalloc.get_traced_memory()[0] - base
        msg = allocator.allocate()
        offers = list(msg.items) if msg is not None else []
        for fid, aid, res in offers:
            allocator.recover_resources(aid, fid, res, REFUSE)
        msg = allocator.allocate()  # everything offered again, to the next framework
        del offers
        gc.collect()
        busy = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        return {
            "agents": agents,
            "frameworks": frameworks,
            "bytes_per_agent": added / agents,
            "bytes_per_agent_with_offer_and_filter": busy / agents,
        }
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        await rt.stop()
        Clock.reset()


def _median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000.0 if xs else float("nan")


def summarise(p: Point) -> dict[str, Any]:
    full = _median_ms(p.full_wall)
    incr = _median_ms(p.incr_wall)
    ex_gc = [cpu - g for cpu, g in zip(p.full_cpu, p.full_gc, strict=True)]
    return {
        "agents": p.agents,
        "frameworks": p.frameworks,
        "full_cycle_ms": full,
        "full_cycle_cpu_ms": _median_ms(p.full_cpu),
        "full_cycle_gc_ms": _median_ms(p.full_gc),
        "full_cycle_min_ms": min(p.full_wall) * 1000.0,
        "full_cycle_max_ms": max(p.full_wall) * 1000.0,
        "full_cycle_us_per_agent": full * 1000.0 / p.agents,
        "full_cycle_us_per_agent_ex_gc": _median_ms(ex_gc) * 1000.0 / p.agents,
        "incremental_ms": incr,
        "incremental_cpu_ms": _median_ms(p.incr_cpu),
        "incremental_ratio": incr / full,
        "incremental_cpu_ratio": _median_ms(p.incr_cpu) / _median_ms(p.full_cpu),
        "idle_cycle_us": _median_ms(p.idle_wall) * 1000.0,
        "decline_round_ms": _median_ms(p.decline_wall),
        "offers_per_round": statistics.median(p.offers),
        "filter_hits_per_round": statistics.median(p.filtered),
        "setup_s": statistics.median(p.setup_s),
        "samples": {"full": len(p.full_wall), "incremental": len(p.incr_wall)},
    }


def check_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    by = {(r["agents"], r["frameworks"]): r for r in results}
    point = by.get((10_000, 1_000))
    if point is not None:
        for label, key in (("wall", "full_cycle_ms"), ("CPU", "full_cycle_cpu_ms")):
            checks.append(
                {
                    "target": f"full cycle, 10k agents x 1000 frameworks <= 100 ms, {label} median",
                    "value": round(point[key], 1),
                    "met": point[key] <= TARGET_FULL_MS,
                }
            )
    worst = max(results, key=lambda r: r["incremental_ratio"])
    checks.append(
        {
            "target": "incremental (1% of agents changed) <= 5% of the full cycle, every point",
            "value": f"worst {worst['incremental_ratio']:.1%} at {worst['agents']} agents x"
            f" {worst['frameworks']} frameworks",
            "met": all(r["incremental_ratio"] <= TARGET_INCREMENTAL for r in results),
        }
    )
    for frameworks in sorted({r["frameworks"] for r in results}):
        row = [r for r in results if r["frameworks"] == frameworks]
        row.sort(key=lambda r: r["agents"])
        if len(row) < 2:
            continue
        small, large = row[0], row[-1]
        for label, key in (
            ("allocator CPU, GC excluded", "full_cycle_us_per_agent_ex_gc"),
            ("wall, GC included", "full_cycle_us_per_agent"),
        ):
            growth = large[key] / small[key]
            checks.append(
                {
                    "target": f"linear in agents ({label}), {frameworks} frameworks: per-agent"
                    f" cost at {large['agents']} / at {small['agents']} agents <= 1.5",
                    "value": round(growth, 2),
                    "met": growth <= 1.5,
                }
            )
    return checks


def format_table(report: dict[str, Any]) -> str:
    head = (
        f"{'agents':>7} {'fws':>5} | {'full ms':>8} {'cpu ms':>7} {'gc ms':>6} {'max ms':>7}"
        f" {'us/agent':>8} {'ex-gc':>6} | {'incr ms':>7} {'incr/full':>9} | {'idle us':>7}"
        f" | {'declines ms':>11} {'offers':>7} {'filtered':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        lines.append(
            f"{r['agents']:>7} {r['frameworks']:>5} | {r['full_cycle_ms']:>8.1f}"
            f" {r['full_cycle_cpu_ms']:>7.1f} {r['full_cycle_gc_ms']:>6.1f}"
            f" {r['full_cycle_max_ms']:>7.1f} {r['full_cycle_us_per_agent']:>8.2f}"
            f" {r['full_cycle_us_per_agent_ex_gc']:>6.2f} | {r['incremental_ms']:>7.2f}"
            f" {r['incremental_ratio']:>9.1%} | {r['idle_cycle_us']:>7.1f} |"
            f" {r['decline_round_ms']:>11.1f} {r['offers_per_round']:>7.0f}"
            f" {r['filter_hits_per_round']:>8.0f}"
        )
    whole = report.get("whole_shape")
    if whole:
        lines.append("")
        lines.append(
            f"Mesos's whole loop ({len(whole['rounds'])} rounds) at {whole['agents']} agents x"
            f" {whole['frameworks']} frameworks, ms per round (offers):"
        )
        lines.append("  " + ", ".join(f"{r['ms']:.1f} ({r['offers']})" for r in whole["rounds"]))
    if report["memory"]:
        lines.append("")
        lines.append(f"{'agents':>7} | {'bytes/agent':>11} | {'with an offer and a filter':>26}")
        for m in report["memory"]:
            lines.append(
                f"{m['agents']:>7} | {m['bytes_per_agent']:>11.0f} |"
                f" {m['bytes_per_agent_with_offer_and_filter']:>26.0f}"
            )
    lines.append("")
    for c in report["targets"]:
        lines.append(f"[{'met' if c['met'] else 'MISSED'}] {c['target']}: {c['value']}")
    return "\n".join(lines)


async def run(sizes: Sizes, log: Any) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = os.getloadavg()
    results = []
    for agents in sizes.agents:
        for frameworks in sizes.frameworks:
            point = Point(agents, frameworks)
            for run_no in range(sizes.runs):
                log(f"  {agents} agents x {frameworks} frameworks, run {run_no + 1}/{sizes.runs}")
                await measure_point(point, sizes, seed=run_no)
                gc.collect()
            results.append(summarise(point))
    log("  Mesos's whole shape: 2 x frameworks rounds at 10000 agents x 10 frameworks")
    whole = await measure_whole_shape(10_000, 10)
    memory = []
    for agents in sizes.memory_agents:
        log(f"  memory with {agents} agents")
        memory.append(await measure_memory(agents, 100))
    report = {
        "benchmark": "allocator",
        "shape": "Mesos HierarchicalAllocator_BENCHMARK_Test.DeclineOffers",
        "machine": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "config": {
            "agent_total": AGENT_TOTAL,
            "agent_used": USED,
            "refuse_seconds": REFUSE,
            "runs": sizes.runs,
            "rounds": sizes.rounds,
            "incremental_cycles": sizes.incremental,
            "incremental_changed_fraction": 0.01,
            "elapsed_s": 0.0,
        },
        "results": results,
        "whole_shape": whole,
        "memory": memory,
    }
    report["targets"] = check_targets(results)
    report["config"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.allocator_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--agents", type=int, help="one configuration: this many agents")
    parser.add_argument("--frameworks", type=int, help="one configuration: this many frameworks")
    parser.add_argument("--quick", action="store_true", help="a short run (< 30 s)")
    parser.add_argument("--runs", type=int, help="fresh allocators per configuration")
    parser.add_argument("--rounds", type=int, help="DeclineOffers rounds (full cycles) per run")
    parser.add_argument("--json", metavar="PATH", help="write every figure here")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="Python's default collector thresholds instead of the master's (mesa.node)",
    )
    parser.add_argument(
        "--no-gc",
        action="store_true",
        help="diagnostic: garbage collector off while measuring, to see what it costs",
    )
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else SWEEP
    if args.agents or args.frameworks:
        agents = (args.agents,) if args.agents else sizes.agents
        frameworks = (args.frameworks,) if args.frameworks else sizes.frameworks
        sizes = Sizes(agents, frameworks, sizes.runs, sizes.rounds, sizes.incremental, ())
    if args.runs:
        sizes = Sizes(**{**sizes.__dict__, "runs": args.runs})
    if args.rounds:
        sizes = Sizes(**{**sizes.__dict__, "rounds": args.rounds})
    libproc.configure_logging(level="error")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"allocator bench: {sizes.runs} runs x {sizes.rounds} full rounds per configuration")
    if args.no_gc:
        gc.disable()
    elif not args.default_gc:
        from mesa.node import MASTER_GC_THRESHOLD

        gc.set_threshold(*MASTER_GC_THRESHOLD)  # as the master process runs the allocator
    report = libproc.run(run(sizes, log))  # uvloop, as in production
    report["config"]["gc"] = (
        "off" if args.no_gc else "python-default" if args.default_gc else "master-thresholds"
    )
    m = report["machine"]
    print(
        f"allocator bench (DeclineOffers shape): {m['cpu_count']} cpus, Python {m['python']},"
        f" load {m['load_average_before'][0]:.1f}->{m['load_average_after'][0]:.1f},"
        f" {report['config']['elapsed_s']:.0f}s"
    )
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
