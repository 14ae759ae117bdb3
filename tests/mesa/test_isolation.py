"""Isolation for real: an agent with cgroups (and posix) isolators running real tasks.

Each test runs an agent (and a fake master) on this machine with real executors. The cgroups
tests skip, saying why, where the hierarchies they need are not mounted writable; each uses a
cgroup root of its own (``mesa/test-<random>``) that is purged when it ends, pass or fail, so
parallel runs never meet. Nothing sleeps for a fixed time: tests await status updates, and poll
with a deadline only for process and cgroup state. The one measured window (the CFS check) is a
correctness check of the quota, not of our speed.

Command tasks run the agent's default way (directly: the container runs the task's command and
has the task's resources only, and the task's terminal update comes after its container is gone,
cgroups included). What the command executor mode must hold as well runs in both modes.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from agent_harness import (
    Cluster,
    FakeMaster,
    command_task,
    executor_task,
    framework,
    new_task_id,
    python_executor,
    read_pid,
    running,
    running_cluster,
    wait_until,
)
from isolation_support import leftover_cgroups, need_cgroups, unique_root

from mesa.actors.containerizer import source_root
from mesa.info import TaskInfo
from mesa.isolators import IsolationOptions, cgroupfs
from mesa.isolators.cgroups import (
    CgroupsCpuIsolator,
    CgroupsFreezerIsolator,
    CgroupsMemIsolator,
    CgroupsPidsIsolator,
)
from mesa.isolators.namespaces import PidNamespaceIsolator
from mesa.messages import ExitedExecutor
from mesa.task_state import Reason, Source, TaskState
from tests.waiting import eventually

MB = 1024 * 1024
PY = shlex.quote(sys.executable)
# Allocates (and touches) 256 MB, then waits to be killed.
HOG = f"{PY} -c \"b = bytearray(b'x') * (256 << 20); import time; time.sleep(60)\""
BUSY = "exec sh -c 'while :; do :; done'"


@pytest.fixture
def root() -> Iterator[str]:
    """This test's own cgroup root (``mesa/test-<random>``), purged with anything in it only
    after the agent has stopped (``cluster`` depends on it, so it is torn down first)."""
    with unique_root(required=False) as name:
        yield name


BOTH_MODES = pytest.mark.parametrize("command_tasks", ["direct", "executor"])


@pytest.fixture
def command_tasks() -> str:
    """How the agent runs command tasks (its default); tests parametrize it to cover both."""
    return "direct"


@pytest.fixture
async def cluster(tmp_path: Path, root: str, command_tasks: str) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, command_tasks=command_tasks) as c:
        yield c


def limit_mb(command_tasks: str, task_mb: int = 32) -> int:
    """A command task's container memory: the task's, plus the command executor's 32 MB when
    there is one."""
    return task_mb + (32 if command_tasks == "executor" else 0)


async def ended(master: FakeMaster, task_id: str, command_tasks: str) -> None:
    """After the task's terminal update: wait until its container is gone. A direct task's
    terminal update already means that; the command executor's container ends after it, with
    ExitedExecutor."""
    if command_tasks == "executor":
        await master.wait_for(ExitedExecutor.NAME, lambda m: m.executor_id == task_id)


async def start(cluster: Cluster, isolation: str | None, **options: Any) -> FakeMaster:
    """A fake master and an agent with ``isolation`` and these IsolationOptions."""
    await cluster.start_master()
    await cluster.start_agent(isolation=isolation, isolation_options=IsolationOptions(**options))
    return await cluster.registered()


def task(task_id: str, command: str, resources: str = "cpus:0.1;mem:32") -> TaskInfo:
    """A command task; its container gets its resources (and, in the command executor mode, the
    executor's own cpus:0.1;mem:32 on top)."""
    t = command_task(task_id, command)
    t.resources = resources
    return t


async def container_of(cluster: Cluster, task_id: str) -> dict[str, Any]:
    """The task's entry in /agent/containers, once it is listed."""

    async def look() -> list[dict[str, Any]]:
        listing = await cluster.http_get("/agent/containers")
        return [c for c in listing if c["executor_id"] == task_id]

    return (await eventually(look, f"container of {task_id} listed"))[0]


async def statistics_until(cluster: Cluster, task_id: str, predicate: Any) -> dict[str, float]:
    """The task's statistics in /agent/containers, once they satisfy ``predicate``."""

    async def look() -> dict[str, float] | None:
        stats = (await container_of(cluster, task_id))["statistics"]
        return stats if predicate(stats) else None

    return await eventually(look, "statistics never satisfied the check")


async def sandbox_file(cluster: Cluster, name: str) -> Path:
    """A file in the sandbox of the (only) running executor."""
    state = await cluster.http_get("/agent/state")
    return Path(state["frameworks"][0]["executors"][0]["directory"]) / name


def cgroup_dir(mounts: cgroupfs.Mounts, subsystem: str, root: str, cid: str) -> Path:
    return mounts.v1[subsystem] / root / cid


# --------------------------------------------------------------------------- cgroups/mem


@BOTH_MODES
async def test_memory_hog_fails_with_the_memory_reason(
    cluster: Cluster, root: str, command_tasks: str
):
    mounts = need_cgroups(CgroupsMemIsolator)
    master = await start(cluster, "cgroups/mem", cgroups_root=root)
    tid = new_task_id("hog")
    master.run_task(framework(), task(tid, HOG))
    failed = await master.wait_state(tid, TaskState.TASK_FAILED)
    assert failed.status.reason == Reason.REASON_CONTAINER_LIMITATION_MEMORY
    assert failed.status.source == Source.SOURCE_AGENT
    assert "Memory limit exceeded" in failed.status.message
    # The limit, named.
    assert f"Requested: {limit_mb(command_tasks)}MB" in failed.status.message
    assert TaskState.TASK_FINISHED not in master.states(tid)
    await ended(master, tid, command_tasks)
    # The container is gone: its cgroups too (the freezer's and memory's).
    await wait_until(lambda: leftover_cgroups(root, mounts) == [])
    assert cluster.agent_rt.metrics.get("containerizer/limitations_memory") == 1


# --------------------------------------------------------------------------- cgroups/cpu


async def test_cfs_quota_holds_a_busy_loop_to_its_cpus(
    cluster: Cluster, root: str, record_property: Any
):
    mounts = need_cgroups(CgroupsCpuIsolator)
    master = await start(cluster, "cgroups/cpu", cgroups_root=root, cgroups_enable_cfs=True)
    tid = new_task_id("busy")
    master.run_task(framework(), task(tid, BUSY, "cpus:0.5;mem:32"))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    cid = (await container_of(cluster, tid))["container_id"]
    cpu = cgroup_dir(mounts, "cpu", root, cid)
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    assert (cpu / "cpu.shares").read_text().strip() == "512"
    usage = cgroup_dir(mounts, "cpuacct", root, cid) / "cpuacct.usage"

    stat = cpu / "cpu.stat"

    def periods() -> int:
        fields = stat.read_text().split()
        return int(fields[fields.index("nr_periods") + 1])

    def sample() -> tuple[float, int]:
        return time.monotonic(), int(usage.read_text())

    # The loop is running once usage grows; then measure over 20 CFS periods, as the kernel
    # counts them. This checks the quota, not our speed: no lower bound.
    first = sample()
    await wait_until(lambda: sample()[1] > first[1])
    t0, u0 = sample()
    p0 = periods()
    await wait_until(lambda: periods() >= p0 + 20, timeout=30)
    t1, u1 = sample()
    rate = (u1 - u0) / 1e9 / (t1 - t0)
    record_property("cfs_cpu_seconds_per_second", round(rate, 4))
    print(f"\nCFS: {rate:.3f} cpu-seconds per second under a 0.5 cpu quota")
    assert 0 < rate <= 0.55
    master.kill("fw-1", tid, grace=0.1)
    await master.wait_state(tid, TaskState.TASK_KILLED)


# --------------------------------------------------------------------------- cgroups/pids

FORK_BOMB = textwrap.dedent(
    """
    import os, time
    made = failed = 0
    for _ in range(300):  # bounded by design: even unconfined it stops at 300 processes
        try:
            pid = os.fork()
        except OSError:
            failed += 1
            continue
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        made += 1
    with open("bomb.txt", "w") as f:
        f.write(f"{made} {failed}")
    time.sleep(60)
    """
)


async def test_a_fork_bomb_stays_inside_its_pids_limit(cluster: Cluster, root: str, tmp_path: Path):
    mounts = need_cgroups(CgroupsPidsIsolator)
    script = tmp_path / "bomb.py"
    script.write_text(FORK_BOMB)
    master = await start(cluster, "cgroups/pids", cgroups_root=root, cgroups_max_pids=64)
    tid = new_task_id("bomb")
    master.run_task(framework(), task(tid, f"exec {PY} {script}"))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    cid = (await container_of(cluster, tid))["container_id"]
    pids = cgroup_dir(mounts, "pids", root, cid)
    report = await sandbox_file(cluster, "bomb.txt")
    await wait_until(lambda: report.exists() and report.read_text() != "")
    made, failed = map(int, report.read_text().split())
    current = int((pids / "pids.current").read_text())
    print(f"\nfork bomb: {made} forks made, {failed} refused; pids.current {current} <= 64")
    assert failed > 0 and made < 64
    assert current <= 64
    stats = (await container_of(cluster, tid))["statistics"]
    assert stats["pids_limit"] == 64 and stats["processes"] <= 64
    assert stats["pids_fork_failures"] >= failed
    members = [int(p) for p in (pids / "cgroup.procs").read_text().split()]
    master.kill("fw-1", tid, grace=0.1)
    await master.wait_state(tid, TaskState.TASK_KILLED)
    # A direct task's end is reported once its container is gone: processes, cgroups.
    assert not any(running(p) for p in members)
    await wait_until(lambda: leftover_cgroups(root, mounts) == [])


# --------------------------------------------------------------------------- destroy


@BOTH_MODES
async def test_a_double_forked_sleeper_dies_with_its_container(
    cluster: Cluster, root: str, tmp_path: Path, command_tasks: str
):
    mounts = need_cgroups(CgroupsFreezerIsolator)
    escaped_file = tmp_path / "escaped.pid"
    # The subshell starts a sleeper in a session of its own and exits: the sleeper is neither in
    # the container's session nor a descendant of its process. Only the cgroup still knows it.
    command = f"(setsid sleep 60 & echo $! > {escaped_file}); exec sleep 60"
    master = await start(cluster, "cgroups/freezer,posix/cpu", cgroups_root=root)
    tid = new_task_id("escape")
    master.run_task(framework(), task(tid, command))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    escaped = await read_pid(escaped_file)
    executor_pid = (await container_of(cluster, tid))["status"]["executor_pid"]
    await wait_until(lambda: running(escaped) and os.getsid(escaped) == escaped)
    assert escaped not in {p.pid for p in psutil.Process(executor_pid).children(recursive=True)}
    master.kill("fw-1", tid, grace=0.1)
    await master.wait_state(tid, TaskState.TASK_KILLED)
    await ended(master, tid, command_tasks)
    # The containerizer reports the end only when its cgroups are empty.
    assert not running(escaped)
    await wait_until(lambda: leftover_cgroups(root, mounts) == [])


# --------------------------------------------------------------------------- posix


@BOTH_MODES
async def test_posix_mem_enforces_the_limit_by_polling(cluster: Cluster, command_tasks: str):
    master = await start(cluster, "posix/cpu,posix/mem", poll_interval=0.1)
    tid = new_task_id("hog")
    pidfile = cluster.tmp_path / "hog.pid"
    master.run_task(framework(), task(tid, f"echo $$ > {pidfile}; exec {HOG}"))
    failed = await master.wait_state(tid, TaskState.TASK_FAILED)
    assert failed.status.reason == Reason.REASON_CONTAINER_LIMITATION_MEMORY
    limit = limit_mb(command_tasks)
    assert f"Memory limit exceeded: Requested: {limit}MB" in failed.status.message
    await ended(master, tid, command_tasks)
    assert not running(await read_pid(pidfile))


# --------------------------------------------------------------------------- disk/du


async def test_disk_quota_is_enforced_when_asked(cluster: Cluster):
    master = await start(
        cluster,
        "posix/cpu,disk/du",
        enforce_container_disk_quota=True,
        container_disk_watch_interval=0.1,
    )
    tid = new_task_id("writer")
    command = "dd if=/dev/zero of=big bs=1M count=20 2>/dev/null; exec sleep 60"
    master.run_task(framework(), task(tid, command, "cpus:0.1;mem:32;disk:8"))
    failed = await master.wait_state(tid, TaskState.TASK_FAILED)
    assert failed.status.reason == Reason.REASON_CONTAINER_LIMITATION_DISK
    assert "exceeds quota (8MB)" in failed.status.message
    assert cluster.agent_rt.metrics.get("containerizer/limitations_disk") == 1


# --------------------------------------------------------------------------- usage


async def test_the_next_task_gets_an_ended_tasks_cgroups_with_its_usage_zeroed(
    cluster: Cluster, root: str
):
    """Through a real agent: a task that ended leaves its cgroups as spares, and the next task
    runs in them (the same directories), with its own limits and none of the last one's usage."""
    mounts = need_cgroups(CgroupsCpuIsolator, CgroupsMemIsolator, CgroupsPidsIsolator)
    if CgroupsMemIsolator.choose(mounts)[0] != 1:
        pytest.skip("spares are kept on v1 hierarchies only")
    master = await start(cluster, "cgroups/cpu,cgroups/mem,cgroups/pids", cgroups_root=root)
    burner = f"{PY} -c \"b = b'x' * (16 << 20); n = sum(range(10_000_000))\""
    first = new_task_id("first")
    master.run_task(framework(), task(first, burner, "cpus:0.5;mem:64"))
    await master.wait_state(first, TaskState.TASK_FINISHED)
    metrics = cluster.agent_rt.metrics
    # The spare is kept once the container's cleanup has run (right after the report).
    await wait_until(lambda: len(list((mounts.v1["memory"] / root).glob("spare-*"))) == 1)
    (spare,) = (mounts.v1["memory"] / root).glob("spare-*")
    inode = spare.stat().st_ino

    second = new_task_id("second")
    master.run_task(framework(), task(second, "exec sleep 60", "cpus:0.25;mem:48"))
    await master.wait_state(second, TaskState.TASK_RUNNING)
    cid = (await container_of(cluster, second))["container_id"]
    assert cgroup_dir(mounts, "memory", root, cid).stat().st_ino == inode
    assert metrics.get("isolator/cgroups/mem/cgroups_reused") == 1
    assert metrics.get("isolator/cgroups/cpu/cgroups_reused") == 1
    assert (cgroup_dir(mounts, "cpu", root, cid) / "cpu.shares").read_text().strip() == "256"
    stats = (await container_of(cluster, second))["statistics"]
    assert stats["mem_limit_bytes"] == 48 * MB
    # The first task touched 16 MB and ran for a while; none of it shows in the second's.
    assert stats["mem_max_bytes"] < 8 * MB
    assert stats["cpus_user_time_secs"] + stats["cpus_system_time_secs"] < 0.2
    master.kill("fw-1", second, grace=0.1)
    await master.wait_state(second, TaskState.TASK_KILLED)
    await wait_until(lambda: leftover_cgroups(root, mounts) == [])


@pytest.mark.parametrize("isolation", ["default", "posix/cpu,posix/mem,disk/du"])
async def test_usage_moves_when_the_task_works(cluster: Cluster, root: str, isolation: str):
    # The default is whatever this machine offers (cgroups here, posix elsewhere).
    master = await start(
        cluster,
        None if isolation == "default" else isolation,
        cgroups_root=root,
        container_disk_watch_interval=0.1,
    )
    tid = new_task_id("work")
    master.run_task(framework(), task(tid, BUSY, "cpus:0.1;mem:32;disk:16"))
    await master.wait_state(tid, TaskState.TASK_RUNNING)

    def cpu(s: dict[str, float]) -> float:
        return s.get("cpus_user_time_secs", 0) + s.get("cpus_system_time_secs", 0)

    first = await statistics_until(cluster, tid, lambda s: cpu(s) > 0)
    later = await statistics_until(
        cluster, tid, lambda s: cpu(s) > cpu(first) and "disk_used_bytes" in s
    )
    assert later["cpus_limit"] == pytest.approx(0.1)
    assert later["mem_rss_bytes"] > 0
    assert later["mem_limit_bytes"] == 32 * MB
    assert later["disk_limit_bytes"] == 16 * MB
    assert later["timestamp"] >= first["timestamp"]
    entry = await container_of(cluster, tid)
    assert entry["framework_id"] == "fw-1" and entry["resources"] == "cpus:0.1;mem:32;disk:16"
    # /agent/containers refreshed the numbers behind the aggregates in /metrics/snapshot.
    metrics = await cluster.http_get("/metrics/snapshot")
    assert metrics["containerizer/cpus_limit"] == pytest.approx(0.1)
    assert metrics["containerizer/mem_limit_bytes"] == 32 * MB
    assert metrics["containerizer/cpus_user_time_secs"] > 0
    assert metrics["containerizer/containers_running"] == 1
    master.kill("fw-1", tid, grace=0.1)
    await master.wait_state(tid, TaskState.TASK_KILLED)

    # Its end was reported before its isolators let go of what they made; then they do.
    async def released() -> bool:
        m = await cluster.http_get("/metrics/snapshot")
        return m["containerizer/containers_running"] == 0 and (
            m["containerizer/releases_pending"] == 0
        )

    await eventually(released)


# --------------------------------------------------------------------------- updates


async def test_limits_follow_a_custom_executors_tasks(cluster: Cluster, root: str):
    mounts = need_cgroups(CgroupsCpuIsolator, CgroupsMemIsolator)
    echo = Path(source_root()) / "examples" / "echo_executor.py"
    info = python_executor("echo", echo)
    info.resources = "cpus:0.1;mem:32"

    def echo_task(task_id: str) -> TaskInfo:
        t = executor_task(task_id, info)  # cpus:0.1;mem:32 each
        t.labels = {"seconds": "60"}
        return t

    master = await start(cluster, "cgroups/cpu,cgroups/mem", cgroups_root=root)
    t1, t2 = new_task_id("a"), new_task_id("b")
    master.run_task(framework(), echo_task(t1))
    await master.wait_state(t1, TaskState.TASK_RUNNING)
    cid = (await container_of(cluster, "echo"))["container_id"]
    memory = cgroup_dir(mounts, "memory", root, cid) / "memory.limit_in_bytes"
    shares = cgroup_dir(mounts, "cpu", root, cid) / "cpu.shares"
    assert (int(memory.read_text()), int(shares.read_text())) == (64 * MB, 204)

    master.run_task(framework(), echo_task(t2))
    await master.wait_state(t2, TaskState.TASK_RUNNING)
    await wait_until(lambda: int(memory.read_text()) == 96 * MB)
    assert int(shares.read_text()) == 307

    # A task ends: cpu follows down; memory is never lowered under a running container.
    master.kill("fw-1", t2)
    await master.wait_state(t2, TaskState.TASK_KILLED)
    await wait_until(lambda: int(shares.read_text()) == 204)
    assert int(memory.read_text()) == 96 * MB
    assert (await container_of(cluster, "echo"))["resources"] == "cpus:0.2;mem:64"
    master.shutdown_framework("fw-1")
    await master.wait_for(ExitedExecutor.NAME, lambda m: m.executor_id == "echo")


# --------------------------------------------------------------------------- namespaces/pid


async def test_pid_namespace_shows_the_task_only_its_own_processes(cluster: Cluster):
    if (why := PidNamespaceIsolator.unavailable(IsolationOptions())) is not None:
        pytest.skip(f"namespaces/pid unavailable: {why}")
    master = await start(cluster, "namespaces/pid,posix/cpu")
    tid = new_task_id("ns")
    # Every pid this task can see, from its own /proc.
    command = "ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' ' > pids.txt; exec sleep 60"
    master.run_task(framework(), task(tid, command))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    listing = await sandbox_file(cluster, "pids.txt")
    await wait_until(lambda: listing.exists() and listing.read_text().strip() != "")
    seen = {int(p) for p in listing.read_text().split()}
    assert 1 in seen  # the container's first process is the namespace's init
    assert len(seen) < 10 and max(seen) < 100, seen  # not the host's processes
    master.kill("fw-1", tid, grace=0.1)
    await master.wait_state(tid, TaskState.TASK_KILLED)


# --------------------------------------------------------------------------- third party

THIRD_PARTY = textwrap.dedent(
    """
    from mesa.isolators import Isolator, LaunchInfo

    class Stamp(Isolator):
        name = "test/stamp"

        async def prepare(self, container_id, config):
            mem = config.resources.scalar("mem")
            return LaunchInfo(environment={"STAMPED": f"{container_id}:{mem:g}"})

        async def usage(self, container_id):
            return {"stamp": 42.0}
    """
)


async def test_a_third_party_isolator_loads_by_name(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "third_party_iso.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    master = await start(cluster, "posix/cpu,third_party_iso:Stamp")
    tid = new_task_id("stamped")
    master.run_task(framework(), task(tid, 'echo "$STAMPED"; exec sleep 60'))
    await master.wait_state(tid, TaskState.TASK_RUNNING)
    entry = await container_of(cluster, tid)
    assert entry["statistics"]["stamp"] == 42.0
    state = await cluster.http_get("/agent/state")
    sandbox = Path(state["frameworks"][0]["executors"][0]["directory"])
    await wait_until(
        lambda: (sandbox / "stdout").exists() and (sandbox / "stdout").read_text().endswith("\n")
    )
    assert (sandbox / "stdout").read_text().strip() == f"{entry['container_id']}:32"
    master.kill("fw-1", tid, grace=0.1)
    await master.wait_state(tid, TaskState.TASK_KILLED)


# --------------------------------------------------------------------------- recovery


async def test_an_agent_start_cleans_cgroups_a_dead_agent_left(
    cluster: Cluster, root: str, tmp_path: Path
):
    mounts = need_cgroups(CgroupsMemIsolator, CgroupsPidsIsolator, CgroupsFreezerIsolator)
    # What an agent killed with SIGKILL leaves: a container's cgroups, a process inside (in the
    # freezer too: agents used to add cgroups/freezer to every cgroups isolation).
    stale = [mounts.v1[s] / root / "stale-container" for s in ("freezer", "memory", "pids")]
    proc = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        for path in stale:
            path.mkdir(parents=True)
            (path / "cgroup.procs").write_text(str(proc.pid))
        await start(cluster, "cgroups/mem,cgroups/pids", cgroups_root=root)
        assert await asyncio.wait_for(proc.wait(), 30) == -9
        await wait_until(lambda: not any(p.exists() for p in stale))
        metrics = await cluster.http_get("/metrics/snapshot")
        assert metrics["isolator/cgroups/mem/orphans_removed"] == 1
        assert metrics["isolator/cgroups/pids/old_freezer_cgroups_removed"] == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
