"""The containerizer suite runs in a tiny configuration, reports its figures, and leaves no
cgroup or sandbox behind. Nothing here asserts on speed: the figures only have to exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesa.isolators import cgroupfs
from tests.e2e.bench_support import run_suite

pytestmark = pytest.mark.timeout(60)


def test_containers_bench_tiny_configuration(tmp_path: Path) -> None:
    out = tmp_path / "containers.json"
    proc = run_suite(
        "bench.containers",
        "--containers=6",
        "--in-flight=3",
        "--rounds=2",
        f"--work-dir={tmp_path}",
        f"--json={out}",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    modes = {r["isolation"]: r for r in report["results"]}
    assert "posix" in modes  # cgroups runs where the machine has them, else is skipped by name
    assert set(modes) | {s.split(":")[0] for s in report["skipped"]} == {"posix", "cgroups"}
    for r in modes.values():
        assert r["failed"] == 0 and len(r["rounds"]) == 2
        assert r["agent_us"] > 0 and r["per_s"] > 0
        each = [x["agent_us"] for x in r["rounds"]]
        assert min(each) <= r["agent_us"] <= max(each)  # the median of the rounds
    # Nothing left: the sandboxes under the work dir, the suite's cgroup root in any hierarchy.
    assert not list(tmp_path.glob("mesa-bench-containers-*")), "sandboxes left behind"
    where = cgroupfs.mounts()
    tops = [*where.v1.values(), *([where.v2] if where.v2 else [])]
    assert not [p for top in tops for p in top.glob("mesa-bench-containers-*")]
