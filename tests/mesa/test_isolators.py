"""The isolators on their own: discovery, choosing v1 or v2, the v2 files, loading by name.

cgroups v2 cannot be exercised for cpu, memory and pids on a machine whose controllers are all
bound to v1 hierarchies (the unified tree then offers none of them), so the v2 file logic of
those isolators runs against a fake cgroup2 tree in a temporary directory. What the real unified
tree does offer without controllers — creating cgroups, moving processes, ``cgroup.kill``,
``cgroup.events`` — is tested on the real kernel through ``cgroups/freezer`` in v2 mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_harness import kill_leftovers, read_pid, running, wait_until
from isolation_support import Bed, isolator_bed, need_cgroups, unified_tree, unique_root

from libproc import UPID, Process, Runtime
from mesa.actors.containerizer import Containerizer
from mesa.info import CommandInfo, ExecutorInfo
from mesa.isolators import (
    BUILTIN,
    ContainerConfig,
    IsolationOptions,
    cgroupfs,
    default_isolation,
    isolator_class,
    resolve_isolation,
)
from mesa.isolators.cgroupfs import Mounts
from mesa.isolators.cgroups import (
    CgroupsCpuIsolator,
    CgroupsFreezerIsolator,
    CgroupsMemIsolator,
    CgroupsPidsIsolator,
    cpu_weight,
)
from mesa.messages import (
    ContainerLaunched,
    ContainerTerminated,
    DestroyContainer,
    LaunchContainer,
)
from mesa.resources import Resources
from mesa.task_state import Reason

MB = 1024 * 1024

# ------------------------------------------------------------------------------- discovery

MOUNTINFO = textwrap.dedent(
    """\
    25 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
    26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec shared:10 - cgroup2 cgroup2 rw
    28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct
    29 25 0:26 / /sys/fs/cgroup/memory rw,nosuid shared:13 - cgroup cgroup rw,memory
    30 25 0:27 / /sys/fs/cgroup/pids ro,nosuid shared:14 - cgroup cgroup ro,pids
    31 25 0:28 / /sys/fs/cgroup/systemd rw shared:15 - cgroup cgroup rw,xattr,name=systemd
    32 25 0:29 / /mnt/with\\040space rw shared:16 - cgroup cgroup rw,freezer
    """
)


def test_mounts_are_read_from_mountinfo(tmp_path: Path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    m = cgroupfs.mounts(str(info))
    assert m.v1["cpu"] == m.v1["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert m.v1["memory"] == Path("/sys/fs/cgroup/memory")
    assert m.v1["freezer"] == Path("/mnt/with space")  # octal escapes decoded
    assert "systemd" not in m.v1 and "name=systemd" not in m.v1
    assert "pids" in m.v1 and "pids" not in m.v1_writable  # mounted read-only
    assert m.v2 == Path("/sys/fs/cgroup/unified")
    assert cgroupfs.mounts(str(tmp_path / "missing")) == Mounts()


def fake_v2(tmp_path: Path, controllers: str = "cpu memory pids io") -> Mounts:
    """A directory standing in for a cgroup2 mount whose root offers ``controllers``."""
    root = tmp_path / "cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return Mounts(v2=root, v2_writable=True)


def test_v1_is_chosen_where_the_controller_is_mounted_as_v1(tmp_path: Path):
    v1 = Mounts(
        v1={"memory": tmp_path, "cpu": tmp_path, "cpuacct": tmp_path},
        v1_writable=frozenset({"memory", "cpu", "cpuacct"}),
        v2=tmp_path / "unified",
    )
    assert CgroupsMemIsolator.choose(v1)[0] == 1
    assert CgroupsCpuIsolator.choose(v1)[0] == 1
    version, why = CgroupsPidsIsolator.choose(v1)
    assert version is None and "does not offer pids" in why
    read_only = Mounts(v1={"memory": tmp_path}, v1_writable=frozenset())
    assert "not writable" in CgroupsMemIsolator.choose(read_only)[1]
    split = Mounts(v1={"cpu": tmp_path}, v1_writable=frozenset({"cpu"}))
    assert "cpuacct not" in CgroupsCpuIsolator.choose(split)[1]
    assert CgroupsMemIsolator.choose(Mounts())[0] is None


def test_v2_is_chosen_where_the_unified_tree_offers_the_controller(tmp_path: Path):
    m = fake_v2(tmp_path, "cpu pids")
    assert CgroupsCpuIsolator.choose(m) == (2, f"cgroups v2 at {m.v2}")
    version, why = CgroupsMemIsolator.choose(m)
    assert version is None
    assert "does not offer memory" in why and "cgroup.controllers lists: cpu pids" in why
    # The freezer needs no controller on v2 (cgroup.kill and cgroup.freeze are core files).
    assert CgroupsFreezerIsolator.choose(m)[0] == 2


# ------------------------------------------------------------------------------- v2 files


@pytest.fixture
async def bed() -> AsyncIterator[Bed]:
    async with isolator_bed() as b:
        yield b


def config(tmp_path: Path, cid: str, resources: str) -> ContainerConfig:
    return ContainerConfig(cid, tmp_path / "sandbox", Resources.parse(resources))


async def test_v2_cpu_mem_and_pids_write_the_unified_files(bed: Bed, tmp_path: Path):
    mounts = fake_v2(tmp_path)
    options = IsolationOptions(
        cgroups_root="mesa/agent", cgroups_enable_cfs=True, poll_interval=0.05
    )
    cpu = bed.add(CgroupsCpuIsolator(options, mounts=mounts))
    mem = bed.add(CgroupsMemIsolator(options, mounts=mounts))
    pids = bed.add(CgroupsPidsIsolator(options, mounts=mounts))
    assert (cpu.version, mem.version, pids.version) == (2, 2, 2)
    for isolator in (cpu, mem, pids):
        await bed.call(isolator, "recover", set())
    root = mounts.v2 / "mesa" / "agent"  # type: ignore[operator]
    # Controllers are enabled from the mount root down to the agent's root. (A plain file
    # keeps only the last write, where the kernel would add up "+cpu", "+memory" and "+pids".)
    for node in (mounts.v2, mounts.v2 / "mesa", root):  # type: ignore[operator]
        assert (node / "cgroup.subtree_control").read_text().startswith("+")

    cfg = config(tmp_path, "c1", "cpus:0.5;mem:64")
    for isolator in (cpu, mem, pids):
        await bed.call(isolator, "_run_prepare", "c1", cfg)
    cg = root / "c1"
    assert (cg / "cpu.weight").read_text() == str(cpu_weight(512)) == "20"
    assert (cg / "cpu.max").read_text() == "50000 100000"
    assert (cg / "memory.max").read_text() == str(64 * MB)
    assert (cg / "memory.oom.group").read_text() == "1"
    assert (cg / "pids.max").read_text() == "4096"
    await bed.call(cpu, "isolate", "c1", 12345)
    assert (cg / "cgroup.procs").read_text() == "12345"

    # Updates: cpu follows both ways; memory only ever rises.
    await bed.call(cpu, "update", "c1", Resources.parse("cpus:1;mem:128"))
    await bed.call(mem, "update", "c1", Resources.parse("cpus:1;mem:128"))
    assert (cg / "cpu.max").read_text() == "100000 100000"
    assert (cg / "memory.max").read_text() == str(128 * MB)
    await bed.call(mem, "update", "c1", Resources.parse("mem:32"))
    assert (cg / "memory.max").read_text() == str(128 * MB)

    # Usage comes from cpu.stat and memory.stat.
    (cg / "cpu.stat").write_text(
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
        "nr_periods 10\nnr_throttled 4\nthrottled_usec 300000\n"
    )
    (cg / "memory.stat").write_text("anon 1048576\nfile 2097152\n")
    (cg / "memory.current").write_text("3145728\n")
    (cg / "pids.current").write_text("7\n")
    (cg / "pids.events").write_text("max 3\n")
    usage = await bed.call(cpu, "usage", "c1")
    assert usage["cpus_user_time_secs"] == 2.0 and usage["cpus_system_time_secs"] == 0.5
    assert usage["cpus_nr_throttled"] == 4 and usage["cpus_throttled_time_secs"] == 0.3
    assert usage["cpus_limit"] == 1.0
    usage = await bed.call(mem, "usage", "c1")
    assert usage["mem_rss_bytes"] == MB and usage["mem_cache_bytes"] == 2 * MB
    assert usage["mem_limit_bytes"] == 128 * MB and usage["mem_total_bytes"] == 3 * MB
    usage = await bed.call(pids, "usage", "c1")
    assert usage == {"processes": 7, "pids_limit": 4096, "pids_fork_failures": 3}

    # memory.events reporting an OOM kill resolves watch with the memory reason.
    watch = asyncio.ensure_future(mem.watch("c1"))
    assert await bed.call(mem, "check", "c1") is None
    (cg / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    (cg / "memory.peak").write_text(str(128 * MB))
    limitation = await asyncio.wait_for(watch, 10)  # found by the poller
    assert limitation.reason == Reason.REASON_CONTAINER_LIMITATION_MEMORY
    assert limitation.message == "Memory limit exceeded: Requested: 128MB Maximum Used: 128MB"
    assert await bed.call(mem, "check", "c1") == limitation


async def test_v2_kill_and_cleanup_on_the_real_unified_tree(bed: Bed, tmp_path: Path):
    """cgroups/freezer in v2 mode: cgroup.procs, cgroup.kill and cgroup.events for real."""
    unified = unified_tree()
    mounts = Mounts(v2=unified, v2_writable=True)
    with unique_root(mounts) as root:
        freezer = bed.add(
            CgroupsFreezerIsolator(IsolationOptions(cgroups_root=root), mounts=mounts)
        )
        assert freezer.version == 2
        await bed.call(freezer, "recover", set())
        await bed.call(freezer, "_run_prepare", "c1", config(tmp_path, "c1", "cpus:1"))
        cg = unified / root / "c1"
        assert (cg / "cgroup.procs").exists()
        pidfile = tmp_path / "escaped.pid"
        # A process that double-forks a sleeper into a session of its own, then exits.
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            f"read x; (setsid sleep 60 & echo $! > {pidfile}); exec sleep 60",
            stdin=asyncio.subprocess.PIPE,
        )
        try:
            await bed.call(freezer, "isolate", "c1", proc.pid)
            proc.stdin.write(b"go\n")  # type: ignore[union-attr]
            escaped = await read_pid(pidfile)
            assert await bed.call(freezer, "pids", "c1") >= {proc.pid, escaped}
            assert "populated 1" in (cg / "cgroup.events").read_text()
            await bed.call(freezer, "kill", "c1")
            assert await asyncio.wait_for(proc.wait(), 10) == -9
            await wait_until(lambda: not running(escaped))
            await wait_until(lambda: "populated 0" in (cg / "cgroup.events").read_text())
            await bed.call(freezer, "_run_cleanup", "c1")
            assert not cg.exists()
        finally:
            kill_leftovers([pidfile])


# ------------------------------------------------------------------------------- containerizer


class Owner(Process):
    def __init__(self) -> None:
        super().__init__("owner")
        self.launched: dict[str, ContainerLaunched] = {}
        self.terminated: dict[str, ContainerTerminated] = {}

    def unhandled(self, sender: UPID, name: str, body: Any) -> None:
        if isinstance(body, ContainerLaunched):
            self.launched[body.container_id] = body
        elif isinstance(body, ContainerTerminated):
            self.terminated[body.container_id] = body


@pytest.mark.parametrize("version", [1, 2])
async def test_destroy_leaves_nothing_of_a_gated_container(tmp_path: Path, version: int):
    """The containerizer with only cgroups/freezer (v1 freezer hierarchy, or v2 unified tree):
    the executor is placed before it runs, and destroy reaches a sleeper that left both the
    session and the process tree."""
    if version == 1:
        mounts = need_cgroups(CgroupsFreezerIsolator)
    else:
        mounts = Mounts(v2=unified_tree(), v2_writable=True)
    with unique_root(mounts) as root:
        isolator = CgroupsFreezerIsolator(IsolationOptions(cgroups_root=root), mounts=mounts)
        assert isolator.version == version
        rt = await Runtime("127.0.0.1", 0).start()
        pidfile = tmp_path / "escaped.pid"
        try:
            owner = Owner()
            rt.spawn(owner)
            containerizer = rt.spawn(Containerizer([isolator]))
            command = f"(setsid sleep 60 & echo $! > {pidfile}); exec sleep 60"
            info = ExecutorInfo("e", CommandInfo(value=command))
            owner.send(
                containerizer,
                LaunchContainer.NAME,
                LaunchContainer("c1", info, str(tmp_path / "sandbox"), resources="cpus:1"),
            )
            await wait_until(lambda: "c1" in owner.launched)
            assert owner.launched["c1"].error is None
            escaped = await read_pid(pidfile)
            cgroup = isolator.cgroup_paths("c1")[0]
            assert escaped in [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
            owner.send(containerizer, DestroyContainer.NAME, DestroyContainer("c1"))
            await wait_until(lambda: "c1" in owner.terminated)
            assert owner.terminated["c1"].destroyed and owner.terminated["c1"].reason is None
            assert not running(escaped)
            await wait_until(lambda: not cgroup.exists())  # (removed right after the report)
        finally:
            await rt.stop()
            kill_leftovers([pidfile])
        # Stopping took the agent's root with it.
        assert not (isolator.cgroup_paths("x")[0].parent).exists()


# ------------------------------------------------------------------------------- by name


def test_names_resolve_to_isolators_and_bad_names_say_why():
    assert isolator_class("cgroups/mem") is CgroupsMemIsolator
    assert set(BUILTIN) >= {"cgroups/cpu", "posix/mem", "disk/du", "namespaces/pid"}
    with pytest.raises(ValueError, match="unknown isolator 'nope'"):
        isolator_class("nope")
    with pytest.raises(ValueError, match="cannot load isolator 'no_such_module:X'"):
        isolator_class("no_such_module:X")
    with pytest.raises(ValueError, match="not a subclass of Isolator"):
        isolator_class("mesa.resources:Resources")
    chosen = resolve_isolation("posix, disk/du", IsolationOptions())
    assert chosen.names == ["posix/cpu", "posix/mem", "disk/du"]
    assert [i.name for i in chosen.isolators] == chosen.names


def test_default_isolation_follows_the_machine():
    names, reasons = default_isolation(IsolationOptions())
    mounts = cgroupfs.mounts()
    assert names[-1] == "disk/du"
    cpu = "cgroups/cpu" if CgroupsCpuIsolator.choose(mounts)[0] else "posix/cpu"
    mem = "cgroups/mem" if CgroupsMemIsolator.choose(mounts)[0] else "posix/mem"
    assert cpu in names and mem in names
    assert len(reasons) >= 4 and all(isinstance(r, str) and r for r in reasons)
    chosen = resolve_isolation(None, IsolationOptions())
    if "cgroups/pids" in names:
        assert "cgroups/freezer" not in chosen.names  # pids.max 0 stops forks during destroy
    elif any(n.startswith("cgroups/") for n in names) and CgroupsFreezerIsolator.choose(mounts)[0]:
        assert chosen.names[0] == "cgroups/freezer"  # added so destroy can freeze


def test_the_freezer_is_added_only_where_pids_cannot_stop_forks():
    mounts = cgroupfs.mounts()
    if not all(
        c.choose(mounts)[0]
        for c in (CgroupsMemIsolator, CgroupsPidsIsolator, CgroupsFreezerIsolator)
    ):
        pytest.skip("needs cgroups/mem, cgroups/pids and cgroups/freezer")
    alone = resolve_isolation("cgroups/mem", IsolationOptions())
    assert alone.names == ["cgroups/freezer", "cgroups/mem"]
    with_pids = resolve_isolation("cgroups/mem,cgroups/pids", IsolationOptions())
    assert with_pids.names == ["cgroups/mem", "cgroups/pids"]
    assert any("cgroups/pids stops every fork" in r for r in with_pids.reasons)
    asked = resolve_isolation("cgroups/freezer,cgroups/pids", IsolationOptions())
    assert asked.names == ["cgroups/freezer", "cgroups/pids"]  # asked for: kept


def test_an_isolator_installed_as_an_entry_point_loads_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "acme_isolator.py").write_text(
        "from mesa.isolators import Isolator\n\nclass Acme(Isolator):\n    name = 'acme/gpu'\n"
    )
    dist = tmp_path / "acme_isolator-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-isolator\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mesa.isolators]\nacme/gpu = acme_isolator:Acme\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = isolator_class("acme/gpu")
    assert cls.__name__ == "Acme" and cls.__module__ == "acme_isolator"
    chosen = resolve_isolation("posix/cpu,acme/gpu", IsolationOptions())
    assert [i.name for i in chosen.isolators] == ["posix/cpu", "acme/gpu"]


def test_node_takes_the_isolation_flags(tmp_path: Path):
    from mesa.node import _agent_kwargs, build_parser

    args = build_parser().parse_args(
        [
            "--role=agent",
            "--master=127.0.0.1:5050",
            "--isolation=cgroups/cpu,cgroups/mem",
            "--cgroups-root=mesa/here",
            "--cgroups-enable-cfs",
            "--cgroups-max-pids=100",
            "--cgroups-spares=0",
            "--enforce-container-disk-quota",
            "--container-disk-watch-interval=2.5",
            "--gc-disk-headroom=0.25",
            "--disk-watch-interval=30",
        ]
    )

    class FakeRuntime:
        http_port = 1

    kw = _agent_kwargs(args, str(tmp_path), FakeRuntime())
    assert kw["isolation"] == "cgroups/cpu,cgroups/mem"
    assert kw["gc_disk_headroom"] == 0.25 and kw["disk_watch_interval"] == 30.0
    assert kw["isolation_options"] == IsolationOptions(
        cgroups_root="mesa/here",
        cgroups_enable_cfs=True,
        cgroups_max_pids=100,
        cgroups_spares=0,
        enforce_container_disk_quota=True,
        container_disk_watch_interval=2.5,
    )
    assert os.path.isdir(tmp_path)
    with pytest.raises(SystemExit):  # (argparse: "must not be negative", on stderr)
        build_parser().parse_args(["--role=agent", "--master=h:1", "--cgroups-spares=-1"])


async def test_a_container_s_processes_are_its_session_and_its_descendants(tmp_path: Path) -> None:
    # A session with a background child, and a grandchild that left the session with setsid:
    # one table (one pass over /proc, for every container) finds all three, and a leader
    # already reaped is looked up by its session alone.
    import signal
    import subprocess

    from mesa.isolators.posix import ProcessTable, session_pids

    script = "sleep 60 & echo $! > a; setsid sleep 60 & echo $! > b; echo started > ready; wait"
    proc = subprocess.Popen(["sh", "-c", script], cwd=tmp_path, start_new_session=True)
    found: set[int] = set()
    try:
        await wait_until(lambda: (tmp_path / "ready").exists())
        a, b = (int((tmp_path / n).read_text()) for n in ("a", "b"))
        expected = {proc.pid, a, b}
        await wait_until(lambda: os.getsid(b) != proc.pid)  # setsid has run
        found = ProcessTable().container(proc.pid)
        assert found == expected
        assert session_pids(proc.pid) == expected
        assert ProcessTable().container(proc.pid, leader_alive=False) == {proc.pid, a}
        assert session_pids(proc.pid, leader_alive=False) == {proc.pid, a}
    finally:
        for pid in found | {proc.pid}:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    # (Killed, they linger as zombies until init reaps them.)
    await wait_until(lambda: ProcessTable().container(proc.pid) == set())
