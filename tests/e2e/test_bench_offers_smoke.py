"""The offer-throughput suite runs end to end in a tiny configuration and reports every field.

Nothing here asserts on speed: the figures only have to exist and be numbers.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]

POINT_FIELDS = {
    "agents",
    "frameworks",
    "loop",
    "baseline",
    "registration",
    "runs",
    "median",
    "half_rate",
    "half_rate_runs",
    "master_peak_rss_bytes",
    "master_kib_per_agent",
    "wire_fraction_of_limit",
    "launch_msgs_fraction_of_limit",
    "capacity_tasks_per_s",
}
WINDOW_FIELDS = {
    "offers_per_s",
    "launches_per_s",
    "accepted_tasks_per_s",
    "tasks_per_accept",
    "latency_p50_ms",
    "latency_p99_ms",
    "cycle_ms",
    "master_cpu_s",
    "master_cpu_util",
    "master_cpu_us_per_launch",
    "wire_msgs_per_s",
    "msgs_per_launch",
}


def test_offer_bench_tiny_configuration(tmp_path: Path) -> None:
    out = tmp_path / "offers.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.offers",
            "--agents=20",
            "--frameworks=2",
            "--runs=2",
            "--window=1",
            "--warmup=0.5",
            f"--json={out}",
            f"--log-dir={tmp_path / 'logs'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "launch/s" in proc.stdout  # the table

    report = json.loads(out.read_text())
    assert {"machine", "config", "points", "baseline", "loop_comparison", "targets"} <= set(report)
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["python"]
    (point,) = report["points"]
    assert POINT_FIELDS <= set(point)
    assert (point["agents"], point["frameworks"]) == (20, 2)
    for window in [*point["runs"], point["median"], *point["half_rate_runs"], point["half_rate"]]:
        missing = WINDOW_FIELDS - set(window)
        assert not missing, missing
    # The half-rate figures are the median of as many windows as the max rate's (two here).
    assert len(point["half_rate_runs"]) == len(point["runs"]) == 2
    p99s = sorted(
        w["latency_p99_ms"] for w in point["half_rate_runs"] if not math.isnan(w["latency_p99_ms"])
    )
    if p99s:  # (a window that saw no launch has no percentile)
        assert p99s[0] <= point["half_rate"]["latency_p99_ms"] <= p99s[-1]
    assert point["median"]["launches_per_s"] > 0  # tasks really ran
    assert point["baseline"]["one_way_msgs_per_s"] > 0
    assert point["master_peak_rss_bytes"] > 0
    assert math.isfinite(point["master_kib_per_agent"])
    loops = report["loop_comparison"]
    assert loops["uvloop_over_asyncio_launches"] > 0
    assert loops["uvloop_over_asyncio_baseline"] > 0
    if importlib.util.find_spec("matplotlib") is not None:  # the bench extra; `make test` lacks it
        for name in ("offers-agents.png", "offers-frameworks.png"):
            assert (tmp_path / name).stat().st_size > 0
    else:
        assert "no plots: matplotlib is not installed" in proc.stdout

    # Every worker process is gone.
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before
