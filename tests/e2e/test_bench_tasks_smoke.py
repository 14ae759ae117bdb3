"""The real-task suite runs end to end in a tiny configuration, reports every figure, and leaves
no process behind. Nothing here asserts on speed: the figures only have to exist."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.e2e.bench_support import ROOT, run_suite

pytestmark = pytest.mark.timeout(60)


def test_task_bench_tiny_configuration(tmp_path: Path) -> None:
    out = tmp_path / "tasks.json"
    env = dict(os.environ)
    # Every process the bench starts inherits this: the mark to find leftovers by.
    env["TMPDIR"] = str(tmp_path)
    proc = run_suite(
        "bench.tasks",
        "--tasks=12",
        "--runs=3",
        "--sleep-tasks=4",
        "--sleep=0.1",
        "--latency-runs=2",
        "--baselines=xargs",
        "--isolation=posix",
        f"--json={out}",
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    base = report["baselines"]
    assert base["xargs_true"]["ok"] and base["xargs_true"]["seconds"] > 0
    # Three timed batches before mesa and three after; the faster side's median is kept.
    xargs = base["xargs_true"]
    assert len(xargs["runs_s"]) == 6 and xargs["before_s"] > 0 and xargs["after_s"] > 0
    assert xargs["seconds"] == min(xargs["before_s"], xargs["after_s"])
    assert statistics.median(xargs["runs_s"][:3]) == xargs["before_s"]
    assert "timed before / after mesa" in proc.stdout
    assert base["xargs_sleep"]["seconds"] > 0
    assert base["fork_exec_latency_s"] > 0
    (mesa,) = report["mesa"]
    assert mesa["isolation"] == "posix"
    assert mesa["true"]["tasks"] == 12 and mesa["true"]["failed"] == 0
    assert len(mesa["true"]["runs_s"]) == 3
    # Each batch also against xargs timed just before it: the median of those ratios.
    assert len(mesa["true"]["xargs_paired_s"]) == 3 and mesa["true"]["x_xargs_paired"] > 0
    assert "timed just before each batch" in proc.stdout
    # Where a task's time went: accept -> RUNNING seen, RUNNING -> its end (medians, ms).
    stages = mesa["true"]["stages_ms"]
    assert set(stages) == {"accept_to_running", "running_to_end"}
    assert all(v > 0 for v in stages.values())
    assert mesa["true"]["seconds"] == sorted(mesa["true"]["runs_s"])[1]
    assert "median of 3" in proc.stdout
    assert mesa["sleep"]["failed"] == 0 and mesa["sleep"]["over_ideal"] > 0
    assert len(mesa["latency_s"]["runs"]) == 2
    assert all(math.isfinite(x) and x > 0 for x in mesa["latency_s"]["runs"])
    assert {"master", "agent", "executors", "executors_forked"} <= set(mesa["true"]["cpu_s"])
    # 12 tasks: at least an accept, a RUNNING and a FINISHED came in to the master for them.
    master = mesa["true"]["master_per_task"]
    assert master["messages_received"] > 0 and master["offers"] > 0
    assert "the master took" in proc.stdout
    assert {t["what"].split(":")[0] for t in report["targets"]} == {"posix"}
    # The table names every row against the xargs limit.
    assert "x xargs limit" in proc.stdout and "mesa posix" in proc.stdout
    # Nothing the bench started is left: no node, zygote, executor or task carrying its TMPDIR.
    leftovers = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.environ().get("TMPDIR") == str(tmp_path) and p.status() != psutil.STATUS_ZOMBIE:
                leftovers.append((p.pid, " ".join(p.info["cmdline"] or [])))
        except psutil.Error:
            continue
    assert not leftovers
    assert not list(tmp_path.glob("mesa-bench-tasks-*")), "work dirs left behind"


def _floor_available() -> str | None:
    """Why the per-task-cgroups limit cannot run here, or None."""
    from bench.tasks.baselines import CGROUP_SUBSYSTEMS
    from mesa.isolators.cgroupfs import mounts

    if os.geteuid() != 0:
        return "needs root"
    missing = [s for s in CGROUP_SUBSYSTEMS if s not in mounts().v1_writable]
    return f"no writable v1 hierarchy for {missing}" if missing else None


def _floor_leftovers() -> list[Path]:
    from bench.tasks.baselines import CGROUP_SUBSYSTEMS
    from mesa.isolators.cgroupfs import mounts

    v1 = mounts().v1
    return [p for s in CGROUP_SUBSYSTEMS for p in Path(v1[s]).glob("mesa-bench-floor-*")]


@pytest.mark.parametrize(("command", "ok"), [("true", True), ("exit 3", False)])
def test_per_task_cgroups_limit_runs_each_task_in_fresh_cgroups(command: str, ok: bool) -> None:
    """The cgroups yardstick runs every task (a failing one is counted, not hidden) and removes
    every cgroup it made."""
    why = _floor_available()
    if why:
        pytest.skip(why)
    before = _floor_leftovers()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.tasks.baselines",
            "cgroups",
            # Each task reports the cgroups it runs in: they must be fresh, one per task.
            f"--command=cat /proc/self/cgroup >&2; {command}",
            "--count=8",
            "--workers=2",
        ],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] is ok and result["seconds"] > 0 and result["workers"] == 2
    memory = {
        line.split(":", 2)[2]
        for line in proc.stderr.splitlines()
        if line.split(":")[1:2] == ["memory"]
    }
    assert len(memory) == 8 and all("/mesa-bench-floor-" in m for m in memory), memory
    assert _floor_leftovers() == before
