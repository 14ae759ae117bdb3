"""The agent suite runs in a tiny configuration and reports its figures. Nothing here asserts
on speed: the figures only have to exist and add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.bench_support import run_suite

pytestmark = pytest.mark.timeout(60)


def test_agent_bench_tiny_configuration(tmp_path: Path) -> None:
    out = tmp_path / "agent.json"
    proc = run_suite(
        "bench.agent_bench",
        "--agents=4",
        "--tasks=100",
        "--warmup=40",
        "--runs=3",
        "--tasks-per-launch=2",
        "--timeout=20",
        f"--json={out}",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "warning" not in proc.stderr, proc.stderr[-3000:]  # a clean stop: no lost master
    report = json.loads(out.read_text())
    assert report["agents"] == 4 and len(report["stretches"]) == 3
    for s in report["stretches"]:
        assert s["tasks"] >= 100 and s["cpu_us_per_task"] > 0
        # Each task's two updates reach the stub master and both are acknowledged: in a batch
        # of two tasks, at most one message out per update and one in per launch and per ack.
        assert 0 < s["messages_out_per_task"] <= 2.0
        assert 0 < s["messages_in_per_task"] <= 2.5
        assert s["messages_local_per_task"] > 0  # the agent and its simulated containerizer
