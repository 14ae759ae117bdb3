"""The cgroups isolators' per-container fast paths: cached cgroup objects, plain-syscall file
access, swap accounting looked up once, rmdir before polling.

Every task on a cgroups agent makes a container, so these hooks run thousands of times; the
tests pin down that the shortcuts keep the behaviour: objects live exactly from prepare to
cleanup, co-mounted v1 controllers share a directory, limits land in the kernel's files, a
busy cgroup is still emptied before it is removed, and orphans are still swept by ``recover``.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_harness import running, wait_until
from isolation_support import Bed, isolator_bed, need_cgroups, unique_root

from mesa.isolators import ContainerConfig, IsolationOptions, cgroupfs
from mesa.isolators import cgroups as cgroups_module
from mesa.isolators.cgroupfs import Mounts, V1Cgroup, V2Cgroup
from mesa.isolators.cgroups import (
    CgroupsCpuIsolator,
    CgroupsFreezerIsolator,
    CgroupsMemIsolator,
    CgroupsPidsIsolator,
)
from mesa.resources import Resources
from mesa.task_state import Reason

MB = 1024 * 1024


@pytest.fixture
async def bed() -> AsyncIterator[Bed]:
    async with isolator_bed() as b:
        yield b


@pytest.fixture
def blocked() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes that wait on stdin (close it to let one exit); all killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def start(procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    procs.append(proc)
    return proc


def config(tmp_path: Path, cid: str, resources: str) -> ContainerConfig:
    return ContainerConfig(cid, tmp_path / "sandbox", Resources.parse(resources))


def fake_v2(tmp_path: Path) -> Mounts:
    root = tmp_path / "cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    return Mounts(v2=root, v2_writable=True)


# ------------------------------------------------------------------------------- files


def test_read_file_reads_to_the_end_and_write_file_replaces(tmp_path: Path):
    big = tmp_path / "big"
    text = "\n".join(str(i) for i in range(40_000))  # several read chunks
    big.write_text(text)
    assert cgroupfs.read_file(str(big)) == text
    with pytest.raises(FileNotFoundError):
        cgroupfs.read_file(str(tmp_path / "missing"))

    target = tmp_path / "value"
    with pytest.raises(FileNotFoundError):
        cgroupfs.write_file(str(target), 1)  # the kernel's files exist; no creating by default
    cgroupfs.write_file(str(target), 123456, create=True)
    cgroupfs.write_file(str(target), 7)
    assert target.read_text() == "7"  # truncated, as open(..., "w") did


def test_parse_keyed_is_strict_only_when_asked():
    text = "oom_kill_disable 1\nunder_oom 0\noom_kill 2\n"
    assert cgroupfs.parse_keyed(text, strict=True) == {
        "oom_kill_disable": 1,
        "under_oom": 0,
        "oom_kill": 2,
    }
    assert cgroupfs.parse_keyed("populated 1\nodd\n") == {"populated": 1}
    with pytest.raises(ValueError):
        cgroupfs.parse_keyed("0\n", strict=True)  # an old kernel's bare flag


def test_cgroup_objects_keep_path_and_typed_controller(tmp_path: Path):
    cg = V1Cgroup("memory", str(tmp_path / "c1"))
    assert cg.path == tmp_path / "c1" and isinstance(cg.path, Path)
    assert type(cg.controller).__name__ == "MemoryController"
    assert cg.controller is cg.controller  # built once
    assert type(V1Cgroup("freezer", tmp_path).controller).__name__ == "Controller"
    assert not cg.exists() and cg.procs() == [] and cg.sweep() == 0
    cg.remove()  # gone already: nothing to do
    v2 = V2Cgroup(tmp_path / "gone")
    v2.kill()  # no cgroup.kill, no cgroup.freeze, no procs: nothing happens
    assert not v2.exists()


# ------------------------------------------------------------------------------- the cache


async def test_objects_are_cached_from_prepare_to_cleanup(bed: Bed, tmp_path: Path):
    mounts = fake_v2(tmp_path)
    options = IsolationOptions(cgroups_root="mesa/agent")
    pids = bed.add(CgroupsPidsIsolator(options, mounts=mounts))
    await bed.call(pids, "recover", set())
    # Not held: built afresh every time, never remembered.
    assert pids._distinct("nope") is not pids._distinct("nope")
    assert pids._groups == {}

    await bed.call(pids, "_run_prepare", "c1", config(tmp_path, "c1", "pids:10"))
    cg = pids._distinct("c1")[0]
    assert pids._distinct("c1")[0] is cg and pids._v2("c1") is cg
    assert (cg.path / "pids.max").read_text() == "10"
    await bed.call(pids, "update", "c1", Resources.parse("pids:20"))
    assert (cg.path / "pids.max").read_text() == "20"
    assert pids.cgroup_paths("c1") == [mounts.v2 / "mesa" / "agent" / "c1"]  # type: ignore[operator]

    (cg.path / "pids.max").unlink()  # a fake tree's files would keep rmdir from working
    await bed.call(pids, "_run_cleanup", "c1")
    assert "c1" not in pids._groups and not cg.path.exists()
    assert pids._spares == []  # (v2 renames no cgroup: none is kept)
    assert await bed.call(pids, "pids", "c1") == set()
    assert pids._groups == {}


@pytest.mark.parametrize("made_again", [False, True])
async def test_a_root_removed_behind_the_agents_back_is_made_again(
    bed: Bed, tmp_path: Path, made_again: bool
):
    # The isolator reaches containers from its root held open (cgroupfs.Parent). Removed (an
    # operator, a purge), and perhaps made again by someone else, the next container still
    # gets its cgroup, and the ones after it go through the new root.
    mounts = fake_v2(tmp_path)
    options = IsolationOptions(cgroups_root="mesa/agent")
    pids = bed.add(CgroupsPidsIsolator(options, mounts=mounts))
    await bed.call(pids, "recover", set())
    await bed.call(pids, "_run_prepare", "c1", config(tmp_path, "c1", "pids:10"))
    root = mounts.v2 / "mesa" / "agent"  # type: ignore[operator]
    shutil.rmtree(root)
    if made_again:
        root.mkdir()
    for cid in ("c2", "c3"):
        await bed.call(pids, "_run_prepare", cid, config(tmp_path, cid, "pids:10"))
        assert (root / cid / "pids.max").read_text() == "10"
    assert pids._parents[str(root) + "/"].fd is not None  # held open again


def test_co_mounted_v1_controllers_share_one_directory(tmp_path: Path):
    both = tmp_path / "cpu,cpuacct"
    mounts = Mounts(v1={"cpu": both, "cpuacct": both}, v1_writable=frozenset({"cpu", "cpuacct"}))
    cpu = CgroupsCpuIsolator(IsolationOptions(cgroups_root="mesa/a"), mounts=mounts)
    assert cpu.version == 1
    cpu._known.add("c1")
    groups = cpu._v1("c1")
    assert groups["cpu"].path == groups["cpuacct"].path == both / "mesa" / "a" / "c1"
    # One object each (typed controllers for usage), one directory for mkdir, procs and rmdir.
    assert type(groups["cpu"].controller).__name__ == "CpuController"
    assert type(groups["cpuacct"].controller).__name__ == "CpuAcctController"
    assert cpu._distinct("c1") == [groups["cpu"]]
    assert cpu.cgroup_paths("c1") == [both / "mesa" / "a" / "c1"]
    assert cpu._v1("c1") is groups


async def fake_mem_with_swap_file(bed: Bed, tmp_path: Path) -> tuple[CgroupsMemIsolator, Path]:
    """cgroups/mem on a fake v2 tree, and the tree's root, where container c1 has a
    ``memory.swap.max`` (a fake tree has a file once written)."""
    mounts = fake_v2(tmp_path)
    mem = bed.add(CgroupsMemIsolator(IsolationOptions(cgroups_root="mesa/m"), mounts=mounts))
    await bed.call(mem, "recover", set())
    root = mounts.v2 / "mesa" / "m"  # type: ignore[operator]
    (root / "c1").mkdir()
    (root / "c1" / "memory.swap.max").write_text("max")
    return mem, root


async def test_swap_is_looked_up_once_per_isolator(
    bed: Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(cgroups_module, "_swap_present", lambda: True)
    mem, root = await fake_mem_with_swap_file(bed, tmp_path)
    await bed.call(mem, "_run_prepare", "c1", config(tmp_path, "c1", "mem:64"))
    assert (root / "c1" / "memory.swap.max").read_text() == "0"
    assert mem._swap is True
    # Later containers trust the first answer (a fake tree has no file until written).
    await bed.call(mem, "_run_prepare", "c2", config(tmp_path, "c2", "mem:64"))
    assert (root / "c2" / "memory.swap.max").read_text() == "0"
    assert (root / "c2" / "memory.max").read_text() == str(64 * MB)


async def test_swap_is_limited_once_the_machine_has_some(
    bed: Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """No swap: memory+swap is memory, so no swap limit is written. Swap turned on later: the
    next poll limits every container already running."""
    swap = [False]
    monkeypatch.setattr(cgroups_module, "_swap_present", lambda: swap[0])
    mem, root = await fake_mem_with_swap_file(bed, tmp_path)
    await bed.call(mem, "_run_prepare", "c1", config(tmp_path, "c1", "mem:64"))
    assert (root / "c1" / "memory.swap.max").read_text() == "max"
    assert (root / "c1" / "memory.max").read_text() == str(64 * MB)
    await bed.call(mem, "_poll")
    assert (root / "c1" / "memory.swap.max").read_text() == "max"
    swap[0] = True
    await bed.call(mem, "_poll")
    assert (root / "c1" / "memory.swap.max").read_text() == "0"


# ------------------------------------------------------------------------------- real kernel


async def test_v1_lifecycle_on_the_kernel(bed: Bed, tmp_path: Path, blocked: list[Any]):
    mounts = need_cgroups(
        CgroupsFreezerIsolator, CgroupsCpuIsolator, CgroupsMemIsolator, CgroupsPidsIsolator
    )
    if any(
        c.choose(mounts)[0] != 1
        for c in (CgroupsFreezerIsolator, CgroupsCpuIsolator, CgroupsMemIsolator)
    ):
        pytest.skip("needs the v1 hierarchies")
    with unique_root(mounts) as root:
        options = IsolationOptions(cgroups_root=root, cgroups_enable_cfs=True)
        isolators = [
            bed.add(cls(options, mounts=mounts))
            for cls in (
                CgroupsFreezerIsolator,
                CgroupsCpuIsolator,
                CgroupsMemIsolator,
                CgroupsPidsIsolator,
            )
        ]
        freezer, cpu, mem, pids = isolators
        for isolator in isolators:
            await bed.call(isolator, "recover", set())
        for round in range(3):  # the later rounds run on what the first one looked up
            cid = f"c{round}"
            cfg = config(tmp_path, cid, "cpus:0.5;mem:64;pids:50")
            for isolator in isolators:
                await bed.call(isolator, "_run_prepare", cid, cfg)
            proc = start(blocked)
            for isolator in isolators:
                await bed.call(isolator, "isolate", cid, proc.pid)
            for isolator in isolators:
                assert await bed.call(isolator, "pids", cid) == {proc.pid}
                for path in isolator.cgroup_paths(cid):
                    assert (path / "cgroup.procs").read_text().split() == [str(proc.pid)]
            cpu_dir = mounts.v1["cpu"] / root / cid
            mem_dir = mounts.v1["memory"] / root / cid
            assert (cpu_dir / "cpu.shares").read_text().strip() == "512"
            assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "50000"
            assert (mem_dir / "memory.limit_in_bytes").read_text().strip() == str(64 * MB)
            assert "oom_kill_disable 1" in (mem_dir / "memory.oom_control").read_text()
            # The OOM eventfd comes with the first poll the container lives through.
            assert cid not in mem._eventfds
            await bed.call(mem, "_poll")
            assert cid in mem._eventfds
            pids_dir = mounts.v1["pids"] / root / cid
            assert (pids_dir / "pids.max").read_text().strip() == "50"
            usage = await bed.call(pids, "usage", cid)
            assert usage["processes"] == 1 and usage["pids_limit"] == 50
            await bed.call(mem, "update", cid, Resources.parse("mem:128"))
            assert (mem_dir / "memory.limit_in_bytes").read_text().strip() == str(128 * MB)
            assert await bed.call(mem, "check", cid) is None
            usage = await bed.call(mem, "usage", cid)
            assert usage["mem_limit_bytes"] == usage["mem_soft_limit_bytes"] == 128 * MB
            assert "cpus_time_secs" in await bed.call(cpu, "usage", cid)

            if round == 0:
                # Destroy: the freezer kills what is still running.
                await bed.call(freezer, "kill", cid)
                await wait_until(lambda p=proc: p.poll() is not None)
            else:
                proc.stdin.close()  # type: ignore[union-attr]
                proc.wait()
            for isolator in isolators:
                await bed.call(isolator, "kill", cid)
                await bed.call(isolator, "_run_cleanup", cid)
            for isolator in isolators:
                assert cid not in isolator._groups
                assert not any(p.exists() for p in isolator.cgroup_paths(cid))
            assert cid not in mem._eventfds


async def test_oom_wakes_the_isolator_through_its_eventfd(bed: Bed, tmp_path: Path):
    """A container that lived through a poll has the eventfd: an OOM then wakes the isolator at
    once. The next poll is an hour away, so only the eventfd can have found this one."""
    mounts = need_cgroups(CgroupsMemIsolator)
    with unique_root(mounts) as root:
        options = IsolationOptions(cgroups_root=root, poll_interval=3600.0)
        mem = bed.add(CgroupsMemIsolator(options, mounts=mounts))
        await bed.call(mem, "recover", set())
        await bed.call(mem, "_run_prepare", "c1", config(tmp_path, "c1", "mem:32"))
        watch = asyncio.ensure_future(mem.watch("c1"))
        await bed.call(mem, "_poll")
        assert "c1" in mem._eventfds
        (cg,) = mem.cgroup_paths("c1")
        # Allocates past 32 MB when told to (a line on stdin): stalls there, the OOM killer off.
        hog = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.readline(); b = b'x' * (64 << 20)"],
            stdin=subprocess.PIPE,
        )
        try:
            (cg / "cgroup.procs").write_text(str(hog.pid))
            hog.stdin.write(b"go\n")  # type: ignore[union-attr]
            hog.stdin.flush()  # type: ignore[union-attr]
            limitation = await asyncio.wait_for(watch, 30)
            assert limitation.reason == Reason.REASON_CONTAINER_LIMITATION_MEMORY
            assert "Requested: 32MB" in limitation.message
        finally:
            hog.kill()
            hog.wait()
        await bed.call(mem, "_run_cleanup", "c1")
        assert "c1" not in mem._eventfds and not cg.exists()


# Every process forks as fast as it can, and so does every child: without a stop to forks, a
# sweep that kills what it read leaves as many new processes as it killed.
RESPAWNER = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


async def test_pids_destroy_empties_a_container_that_never_stops_forking(bed: Bed):
    """cgroups/pids without a freezer: kill sets pids.max to 0, then sweeps; the sweeps the
    containerizer makes end with an empty cgroup."""
    mounts = need_cgroups(CgroupsPidsIsolator)
    with unique_root(mounts) as root:
        options = IsolationOptions(cgroups_root=root, cgroups_max_pids=48, kill_wait=10.0)
        pids = bed.add(CgroupsPidsIsolator(options, mounts=mounts))
        await bed.call(pids, "recover", set())
        await bed.call(pids, "_run_prepare", "c1", config(Path("/tmp"), "c1", "cpus:1"))
        (cg,) = pids.cgroup_paths("c1")
        gate = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.readline()\n" + RESPAWNER],
            stdin=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            (cg / "cgroup.procs").write_text(str(gate.pid))
            gate.stdin.write(b"go\n")  # type: ignore[union-attr]
            gate.stdin.flush()  # type: ignore[union-attr]
            await wait_until(lambda: int((cg / "pids.current").read_text()) >= 48)
            await bed.call(pids, "kill", "c1")
            assert (cg / "pids.max").read_text().strip() == "0"
            assert await bed.call(pids, "_wait_empty", "c1", 10.0)
            assert (cg / "cgroup.procs").read_text() == ""
        finally:
            cgroupfs.purge(root)  # (kills whatever is left if the test failed)
            gate.wait()
        await bed.call(pids, "_run_cleanup", "c1")
        assert not cg.exists()


async def test_cleanup_of_a_busy_cgroup_still_empties_it(bed: Bed, blocked: list[Any]):
    mounts = need_cgroups(CgroupsFreezerIsolator)
    with unique_root(mounts) as root:
        options = IsolationOptions(cgroups_root=root, kill_wait=5.0)
        freezer = bed.add(CgroupsFreezerIsolator(options, mounts=mounts))
        await bed.call(freezer, "recover", set())
        await bed.call(freezer, "_run_prepare", "c1", config(Path("/tmp"), "c1", "cpus:1"))
        proc = start(blocked)
        await bed.call(freezer, "isolate", "c1", proc.pid)
        path = freezer.cgroup_paths("c1")[0]
        # rmdir is refused while it runs: cleanup falls back to killing and waiting.
        await bed.call(freezer, "_run_cleanup", "c1")
        assert proc.wait(timeout=5) is not None
        assert not path.exists() and freezer._groups == {}
        assert freezer._spares == []  # (one with a member is never kept)


async def test_recover_sweeps_orphans_it_never_cached(bed: Bed, blocked: list[Any]):
    mounts = need_cgroups(CgroupsFreezerIsolator)
    with unique_root(mounts) as root:
        options = IsolationOptions(cgroups_root=root)
        first = bed.add(CgroupsFreezerIsolator(options, mounts=mounts))
        await bed.call(first, "recover", set())
        await bed.call(first, "_run_prepare", "old", config(Path("/tmp"), "old", "cpus:1"))
        proc = start(blocked)
        await bed.call(first, "isolate", "old", proc.pid)
        path = first.cgroup_paths("old")[0]
        # A new agent (a fresh isolator: nothing cached) finds the cgroup and sweeps it.
        second = bed.add(CgroupsFreezerIsolator(options, mounts=mounts))
        assert second._groups == {}
        await bed.call(second, "recover", set())
        assert proc.wait(timeout=5) is not None and not running(proc.pid)
        assert not path.exists() and second._groups == {}
        first._known.discard("old")  # it is gone; the first isolator must not try again
        first._groups.clear()


# ------------------------------------------------------------------------------- spares

# Burns a little CPU and touches 8 MB once told to (a line on stdin), then exits.
BURNER = """
import sys
sys.stdin.readline()
block = b"x" * (8 << 20)
n = 0
for i in range(300_000):
    n += i
"""


def v1_or_skip(*classes: type) -> Mounts:
    mounts = need_cgroups(*classes)
    if any(c.choose(mounts)[0] != 1 for c in classes):  # type: ignore[attr-defined]
        pytest.skip("spares are kept on v1 hierarchies only")
    return mounts


async def recovered(bed: Bed, cls: type, mounts: Mounts, root: str, **options: Any) -> Any:
    """An isolator of ``cls`` under ``root`` on the runtime, started as an agent starts it."""
    isolator = bed.add(cls(IsolationOptions(cgroups_root=root, **options), mounts=mounts))
    await bed.call(isolator, "recover", set())
    return isolator


def inodes(isolator: Any, cid: str) -> list[int]:
    return [p.stat().st_ino for p in isolator.cgroup_paths(cid)]


async def run_in(bed: Bed, isolators: list[Any], cid: str, script: str) -> None:
    """Run ``script`` in container ``cid``'s cgroups until it exits."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    try:
        for isolator in isolators:
            await bed.call(isolator, "isolate", cid, proc.pid)
        proc.communicate(b"go\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_the_next_container_gets_an_ended_ones_cgroups_zeroed(bed: Bed, tmp_path: Path):
    """The cgroups of a container that ended empty are renamed to a spare, and the next
    container's are that spare renamed again (the same directories: the same inodes), with its
    own limits written and the usage the last one left zeroed."""
    mounts = v1_or_skip(CgroupsCpuIsolator, CgroupsMemIsolator, CgroupsPidsIsolator)
    with unique_root(mounts) as root:
        options = IsolationOptions(cgroups_root=root)
        isolators = [
            bed.add(cls(options, mounts=mounts))
            for cls in (CgroupsCpuIsolator, CgroupsMemIsolator, CgroupsPidsIsolator)
        ]
        cpu, mem, pids = isolators
        for isolator in isolators:
            await bed.call(isolator, "recover", set())
            await bed.call(
                isolator, "_run_prepare", "c1", config(tmp_path, "c1", "cpus:0.5;mem:64;pids:50")
            )
        await run_in(bed, isolators, "c1", BURNER)
        used_cpu = await bed.call(cpu, "usage", "c1")
        used_mem = await bed.call(mem, "usage", "c1")
        assert used_cpu["cpus_time_secs"] > 0.01 and used_cpu["cpus_user_time_secs"] > 0
        assert used_mem["mem_max_bytes"] >= 8 * MB
        first = {id(i): inodes(i, "c1") for i in isolators}
        for isolator in isolators:
            await bed.call(isolator, "_run_cleanup", "c1")
            assert not any(p.exists() for p in isolator.cgroup_paths("c1"))
            assert len(isolator._spares) == 1
            assert bed.rt.metrics.get(f"isolator/{isolator.name}/cgroups_spare") == 1

        for isolator in isolators:
            await bed.call(
                isolator, "_run_prepare", "c2", config(tmp_path, "c2", "cpus:1;mem:32;pids:20")
            )
            assert inodes(isolator, "c2") == first[id(isolator)]
            assert isolator._spares == []
            assert bed.rt.metrics.get(f"isolator/{isolator.name}/cgroups_reused") == 1
            assert bed.rt.metrics.get(f"isolator/{isolator.name}/cgroups_spare") == 0
        cpu_dir = mounts.v1["cpu"] / root / "c2"
        mem_dir = mounts.v1["memory"] / root / "c2"
        assert (cpu_dir / "cpu.shares").read_text().strip() == "1024"
        assert (mem_dir / "memory.limit_in_bytes").read_text().strip() == str(32 * MB)
        assert "oom_kill_disable 1" in (mem_dir / "memory.oom_control").read_text()
        assert (mounts.v1["pids"] / root / "c2" / "pids.max").read_text().strip() == "20"
        fresh_cpu = await bed.call(cpu, "usage", "c2")
        fresh_mem = await bed.call(mem, "usage", "c2")
        assert fresh_cpu["cpus_time_secs"] == 0 and fresh_cpu["cpus_user_time_secs"] == 0
        assert fresh_cpu["cpus_system_time_secs"] == 0
        assert fresh_mem["mem_max_bytes"] <= cgroups_module.SPARE_MAX_CHARGE
        assert (mem_dir / "memory.failcnt").read_text().strip() == "0"
        assert await bed.call(mem, "check", "c2") is None
        # And it works as a new one would: counts what the next command uses.
        await run_in(bed, isolators, "c2", BURNER)
        assert (await bed.call(cpu, "usage", "c2"))["cpus_time_secs"] > 0.01
        assert (await bed.call(mem, "usage", "c2"))["mem_max_bytes"] >= 8 * MB
        # A kill writes pids.max 0: a spare of the same size still gets its limits back.
        await bed.call(pids, "kill", "c2")
        assert (mounts.v1["pids"] / root / "c2" / "pids.max").read_text().strip() == "0"
        for isolator in isolators:
            await bed.call(isolator, "_run_cleanup", "c2")
            await bed.call(
                isolator, "_run_prepare", "c3", config(tmp_path, "c3", "cpus:1;mem:32;pids:20")
            )
            assert inodes(isolator, "c3") == first[id(isolator)]
        assert (mounts.v1["pids"] / root / "c3" / "pids.max").read_text().strip() == "20"
        assert (mounts.v1["cpu"] / root / "c3" / "cpu.shares").read_text().strip() == "1024"
        limit = mounts.v1["memory"] / root / "c3" / "memory.limit_in_bytes"
        assert limit.read_text().strip() == str(32 * MB)
        for isolator in isolators:
            await bed.call(isolator, "_run_cleanup", "c3")
            await bed.call(isolator, "teardown")
            assert isolator._spares == []
        assert not leftover_dirs(mounts, root)


def leftover_dirs(mounts: Mounts, root: str) -> list[Path]:
    """Every cgroup under the root, spares included."""
    return [p for point in set(mounts.v1.values()) for p in (point / root).glob("*") if p.is_dir()]


async def test_a_cgroup_whose_counters_cannot_be_zeroed_is_removed_not_kept(
    bed: Bed, tmp_path: Path
):
    """pids.events counts refused forks for good, and a soft limit set by an update would outlive
    the container: such cgroups are removed, and the next container's are new."""
    mounts = v1_or_skip(CgroupsMemIsolator, CgroupsPidsIsolator)
    with unique_root(mounts) as root:
        options = IsolationOptions(cgroups_root=root)
        mem = bed.add(CgroupsMemIsolator(options, mounts=mounts))
        pids = bed.add(CgroupsPidsIsolator(options, mounts=mounts))
        for isolator in (mem, pids):
            await bed.call(isolator, "recover", set())
            await bed.call(isolator, "_run_prepare", "c1", config(tmp_path, "c1", "mem:64;pids:1"))
        await run_in(bed, [mem, pids], "c1", "import os, sys; sys.stdin.readline(); os.fork()")
        assert (await bed.call(pids, "usage", "c1"))["pids_fork_failures"] >= 1
        await bed.call(mem, "update", "c1", Resources.parse("mem:32"))  # lower: a soft limit
        assert (
            mounts.v1["memory"] / root / "c1" / "memory.soft_limit_in_bytes"
        ).read_text().strip() == str(32 * MB)
        gone = {id(i): inodes(i, "c1") for i in (mem, pids)}
        for isolator in (mem, pids):
            await bed.call(isolator, "_run_cleanup", "c1")
            assert isolator._spares == []
            assert not any(p.exists() for p in isolator.cgroup_paths("c1"))
        for isolator in (mem, pids):
            await bed.call(isolator, "_run_prepare", "c2", config(tmp_path, "c2", "mem:64;pids:10"))
            assert inodes(isolator, "c2") != gone[id(isolator)]
            assert bed.rt.metrics.get(f"isolator/{isolator.name}/cgroups_reused") == 0
        assert (mounts.v1["pids"] / root / "c2" / "pids.events").read_text().split() == ["max", "0"]
        for isolator in (mem, pids):
            await bed.call(isolator, "_run_cleanup", "c2")
            await bed.call(isolator, "teardown")
        assert not leftover_dirs(mounts, root)


async def test_spares_are_kept_up_to_the_limit_and_none_with_zero(bed: Bed, tmp_path: Path):
    mounts = v1_or_skip(CgroupsPidsIsolator)
    for keep in (0, 1):
        with unique_root(mounts) as root:
            options = IsolationOptions(cgroups_root=root, cgroups_spares=keep)
            pids = bed.add(CgroupsPidsIsolator(options, mounts=mounts))
            await bed.call(pids, "recover", set())
            for cid in ("c1", "c2"):
                await bed.call(pids, "_run_prepare", cid, config(tmp_path, cid, "pids:10"))
            for cid in ("c1", "c2"):
                await bed.call(pids, "_run_cleanup", cid)
            assert len(pids._spares) == keep
            assert len(leftover_dirs(mounts, root)) == keep
            await bed.call(pids, "teardown")


async def test_recover_removes_the_spares_a_previous_agent_kept(bed: Bed, tmp_path: Path):
    mounts = v1_or_skip(CgroupsCpuIsolator)
    with unique_root(mounts) as root:
        first = await recovered(bed, CgroupsCpuIsolator, mounts, root)
        await bed.call(first, "_run_prepare", "c1", config(tmp_path, "c1", "cpus:1"))
        await bed.call(first, "_run_cleanup", "c1")
        assert len(first._spares) == 1 and len(leftover_dirs(mounts, root)) == 2  # cpu, cpuacct
        await recovered(bed, CgroupsCpuIsolator, mounts, root)  # a new agent's
        assert not leftover_dirs(mounts, root)
        assert bed.rt.metrics.get("isolator/cgroups/cpu/orphans_removed") == 0
        first._spares.clear()  # (gone: the first one must not take it)


async def test_a_spare_that_cannot_be_renamed_everywhere_is_dropped(bed: Bed, tmp_path: Path):
    """A spare missing from one hierarchy (taken away behind the agent's back): renaming it for
    the next container fails half-way, is undone, the spare is removed, and the container gets
    new cgroups."""
    mounts = v1_or_skip(CgroupsCpuIsolator)
    if mounts.v1["cpu"] == mounts.v1["cpuacct"]:
        pytest.skip("needs cpu and cpuacct in separate hierarchies")
    with unique_root(mounts) as root:
        cpu = await recovered(bed, CgroupsCpuIsolator, mounts, root)
        await bed.call(cpu, "_run_prepare", "c1", config(tmp_path, "c1", "cpus:1"))
        await bed.call(cpu, "_run_cleanup", "c1")
        ((spare, _),) = cpu._spares
        (mounts.v1["cpuacct"] / root / spare).rmdir()
        await bed.call(cpu, "_run_prepare", "c2", config(tmp_path, "c2", "cpus:0.5"))
        assert all(p.is_dir() for p in cpu.cgroup_paths("c2"))
        assert (mounts.v1["cpu"] / root / "c2" / "cpu.shares").read_text().strip() == "512"
        assert not (mounts.v1["cpu"] / root / spare).exists()
        assert bed.rt.metrics.get("isolator/cgroups/cpu/cgroups_reused") == 0
        await bed.call(cpu, "_run_cleanup", "c2")
        await bed.call(cpu, "teardown")
        assert not leftover_dirs(mounts, root)


async def test_a_cgroup_that_saw_an_oom_kill_or_holds_a_child_cgroup_is_not_kept(
    bed: Bed, tmp_path: Path
):
    """oom_kill counts for good (a machine-wide OOM kill of a member counts there too), and a
    child cgroup a member made would go with a rename to the next container: neither is kept."""
    mounts = v1_or_skip(CgroupsMemIsolator, CgroupsPidsIsolator)
    with unique_root(mounts) as root:
        options = IsolationOptions(cgroups_root=root, kill_wait=0.2)
        mem = bed.add(CgroupsMemIsolator(options, mounts=mounts))
        pids = bed.add(CgroupsPidsIsolator(options, mounts=mounts))
        for isolator in (mem, pids):
            await bed.call(isolator, "recover", set())
            await bed.call(isolator, "_run_prepare", "c1", config(tmp_path, "c1", "mem:32;pids:99"))
        mem_dir = mounts.v1["memory"] / root / "c1"
        # The kernel's OOM killer on, as the machine's is: it kills the hog and counts the kill.
        (mem_dir / "memory.oom_control").write_text("0")
        await run_in(bed, [mem], "c1", "import sys; sys.stdin.readline(); b = b'x' * (64 << 20)")
        assert "oom_kill 1" in (mem_dir / "memory.oom_control").read_text()
        child = mounts.v1["pids"] / root / "c1" / "sub"
        child.mkdir()
        try:
            await bed.call(mem, "_run_cleanup", "c1")
            assert mem._spares == [] and not mem_dir.exists()  # removed (it is empty)
            await bed.call(pids, "_run_cleanup", "c1")
            # Not kept; and rmdir is refused while the child is there, as before spares.
            assert pids._spares == [] and child.parent.exists()
        finally:
            child.rmdir()


async def test_an_earlier_agents_container_cgroups_are_not_kept_as_spares(bed: Bed, tmp_path: Path):
    """Its settings are not known (a soft limit, a quota, a memory+swap limit an older agent
    set): recover removes them."""
    mounts = v1_or_skip(CgroupsCpuIsolator)
    with unique_root(mounts) as root:
        first = await recovered(bed, CgroupsCpuIsolator, mounts, root)
        await bed.call(first, "_run_prepare", "old", config(tmp_path, "old", "cpus:1"))
        first._known.discard("old")  # (the first agent died: it will not clean up)
        first._groups.clear()
        second = await recovered(bed, CgroupsCpuIsolator, mounts, root)
        assert second._spares == [] and not leftover_dirs(mounts, root)
        assert bed.rt.metrics.get("isolator/cgroups/cpu/orphans_removed") == 1


async def test_a_container_without_cpus_or_mem_gets_the_kernels_defaults_in_a_spare(
    bed: Bed, tmp_path: Path
):
    mounts = v1_or_skip(CgroupsCpuIsolator, CgroupsMemIsolator)
    with unique_root(mounts) as root:
        options = IsolationOptions(cgroups_root=root)
        isolators = [
            bed.add(cls(options, mounts=mounts)) for cls in (CgroupsCpuIsolator, CgroupsMemIsolator)
        ]
        for isolator in isolators:
            await bed.call(isolator, "recover", set())
            await bed.call(
                isolator, "_run_prepare", "c1", config(tmp_path, "c1", "cpus:0.5;mem:64")
            )
        for isolator in isolators:
            await bed.call(isolator, "_run_cleanup", "c1")
            await bed.call(isolator, "_run_prepare", "c2", config(tmp_path, "c2", "disk:10"))
            assert bed.rt.metrics.get(f"isolator/{isolator.name}/cgroups_reused") == 1
        assert (mounts.v1["cpu"] / root / "c2" / "cpu.shares").read_text().strip() == "1024"
        limit = int((mounts.v1["memory"] / root / "c2" / "memory.limit_in_bytes").read_text())
        assert limit > 1 << 62  # none
        for isolator in isolators:
            await bed.call(isolator, "_run_cleanup", "c2")
            await bed.call(isolator, "teardown")


async def test_the_freezer_keeps_a_thawed_cgroup_and_removes_a_frozen_one(bed: Bed, tmp_path: Path):
    mounts = v1_or_skip(CgroupsFreezerIsolator)
    with unique_root(mounts) as root:
        freezer = await recovered(bed, CgroupsFreezerIsolator, mounts, root)
        for cid in ("c1", "c2"):
            await bed.call(freezer, "_run_prepare", cid, config(tmp_path, cid, "cpus:1"))
        (mounts.v1["freezer"] / root / "c2" / "freezer.state").write_text("FROZEN")
        await bed.call(freezer, "_run_cleanup", "c1")  # thawed: kept
        await bed.call(freezer, "_run_cleanup", "c2")  # frozen: removed
        assert len(freezer._spares) == 1 and len(leftover_dirs(mounts, root)) == 1
        await bed.call(freezer, "_run_prepare", "c3", config(tmp_path, "c3", "cpus:1"))
        assert bed.rt.metrics.get("isolator/cgroups/freezer/cgroups_reused") == 1
        await bed.call(freezer, "_run_cleanup", "c3")
        await bed.call(freezer, "teardown")
        assert not leftover_dirs(mounts, root)
