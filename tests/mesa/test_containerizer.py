"""The containerizer on its own: launch, environment, isolator hooks, destroy, leftovers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from agent_harness import kill_leftovers, read_pid, running, wait_gone, wait_until

from libproc import UPID, Process, Runtime
from mesa.actors.containerizer import Containerizer, source_root
from mesa.info import CommandInfo, ExecutorInfo
from mesa.isolators.base import (
    ContainerConfig,
    ContainerLimited,
    Isolator,
    LaunchInfo,
    Limitation,
)
from mesa.messages import (
    ContainerLaunched,
    ContainerTerminated,
    DestroyContainer,
    LaunchContainer,
)
from mesa.zygote import Zygote


class Owner(Process):
    """Plays the agent: records the containerizer's answers."""

    def __init__(self) -> None:
        super().__init__("owner")
        self.launched: dict[str, ContainerLaunched] = {}
        self.terminated: dict[str, ContainerTerminated] = {}

    def unhandled(self, sender: UPID, name: str, body: Any) -> None:
        if isinstance(body, ContainerLaunched):
            self.launched[body.container_id] = body
        elif isinstance(body, ContainerTerminated):
            self.terminated[body.container_id] = body


class RecordingIsolator(Isolator):
    name = "recording"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, ...]] = []

    async def recover(self, live: set[str]) -> None:
        self.calls.append(("recover",))

    async def prepare(self, container_id: str, config: ContainerConfig) -> LaunchInfo:
        self.calls.append(("prepare", container_id))
        return LaunchInfo(environment={"ISOLATED_BY": "recording"})

    async def isolate(self, container_id: str, pid: int) -> None:
        self.calls.append(("isolate", container_id))

    async def kill(self, container_id: str) -> None:
        self.calls.append(("kill", container_id))

    async def check(self, container_id: str):
        self.calls.append(("check", container_id))
        return None

    async def cleanup(self, container_id: str) -> None:
        self.calls.append(("cleanup", container_id))

    def steps(self, container_id: str) -> list[str]:
        """The hooks called for one container, repeats collapsed."""
        out: list[str] = []
        for call in self.calls:
            if call[1:] == (container_id,) and (not out or out[-1] != call[0]):
                out.append(call[0])
        return out


class Bed:
    def __init__(
        self,
        rt: Runtime,
        owner: Owner,
        containerizer: UPID,
        tmp: Path,
        iso,
        actor: Containerizer | None = None,
    ) -> None:
        self.rt, self.owner, self.containerizer, self.tmp, self.isolator = (
            rt,
            owner,
            containerizer,
            tmp,
            iso,
        )
        self.actor = actor  # the containerizer itself, where a test looks inside it

    def launch(self, cid: str, command: str, resources: str = "", **kw: Any) -> Path:
        sandbox = self.tmp / cid
        info = ExecutorInfo(cid, CommandInfo(value=command, **kw))
        self.owner.send(
            self.containerizer,
            LaunchContainer.NAME,
            LaunchContainer(cid, info, str(sandbox), {"FROM_AGENT": "yes"}, resources),
        )
        return sandbox

    async def launched(self, cid: str) -> ContainerLaunched:
        await wait_until(lambda: cid in self.owner.launched)
        return self.owner.launched[cid]

    async def terminated(self, cid: str) -> ContainerTerminated:
        await wait_until(lambda: cid in self.owner.terminated)
        return self.owner.terminated[cid]

    def destroy(self, cid: str) -> None:
        self.owner.send(self.containerizer, DestroyContainer.NAME, DestroyContainer(cid))

    async def destroy_all(self, ids: list[str]) -> None:
        """Destroy them and wait until each is reported gone."""
        for cid in ids:
            self.destroy(cid)
        for cid in ids:
            await self.terminated(cid)


@contextlib.asynccontextmanager
async def bed_with(tmp_path: Path, isolator: Isolator) -> AsyncIterator[Bed]:
    """A runtime, an owner and a containerizer driving ``isolator``; all stopped after."""
    rt = await Runtime("127.0.0.1", 0).start()
    try:
        owner = Owner()
        rt.spawn(owner)
        containerizer = Containerizer([isolator], kill_wait=5.0)
        yield Bed(rt, owner, rt.spawn(containerizer), tmp_path, isolator, containerizer)
    finally:
        await rt.stop()


@pytest.fixture
async def bed(tmp_path: Path) -> AsyncIterator[Bed]:
    try:
        async with bed_with(tmp_path, RecordingIsolator()) as b:
            yield b
    finally:
        kill_leftovers(list(tmp_path.rglob("*.pid")))


async def test_launch_sets_up_the_sandbox_environment_and_session(bed: Bed):
    sandbox = bed.launch(
        "c1", "env > env.txt; pwd > pwd.txt; echo out; echo err >&2; exec sleep 60"
    )
    launched = await bed.launched("c1")
    assert launched.error is None and launched.pid
    pid = launched.pid
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid  # its own session and group
    await wait_until(lambda: (sandbox / "pwd.txt").exists() and (sandbox / "stderr").stat().st_size)
    env = dict(
        line.split("=", 1) for line in (sandbox / "env.txt").read_text().splitlines() if "=" in line
    )
    assert env["MESA_CONTAINER_ID"] == "c1"
    assert env["MESA_SANDBOX"] == env["MESA_DIRECTORY"] == str(sandbox)
    assert env["FROM_AGENT"] == "yes"
    assert env["ISOLATED_BY"] == "recording"
    assert source_root() in env["PYTHONPATH"].split(os.pathsep)
    assert (sandbox / "pwd.txt").read_text().strip() == str(sandbox)
    assert (sandbox / "stdout").read_text() == "out\n"
    assert (sandbox / "stderr").read_text() == "err\n"

    bed.destroy("c1")
    end = await bed.terminated("c1")
    assert end.destroyed and end.status == -9
    assert "SIGKILL" in end.message
    assert not running(pid)
    assert bed.isolator.calls[0] == ("recover",)
    # The end is reported once every process is gone; the isolators clean up right after.
    await wait_until(lambda: bed.isolator.steps("c1")[-1] == "cleanup")
    assert bed.isolator.steps("c1") == ["prepare", "isolate", "kill", "check", "cleanup"]
    assert bed.rt.metrics.get("containerizer/containers_destroyed") == 1


async def test_destroy_kills_the_session_the_group_and_the_tree(bed: Bed):
    tmp = bed.tmp
    # `setsid` leaves the session (but stays a child); the subshell's sleeper is re-parented
    # away (but stays in the session).
    command = (
        f"setsid sleep 60 & echo $! > {tmp}/escaped.pid; "
        f"(sleep 60 & echo $! > {tmp}/orphan.pid); "
        f"echo $$ > {tmp}/leader.pid; exec sleep 60"
    )
    bed.launch("c2", command)
    await bed.launched("c2")
    escaped = await read_pid(tmp / "escaped.pid")
    orphan = await read_pid(tmp / "orphan.pid")
    leader = await read_pid(tmp / "leader.pid")
    await wait_until(lambda: running(escaped) and os.getsid(escaped) == escaped)
    bed.destroy("c2")
    await bed.terminated("c2")
    # Reported only once everything is gone.
    assert not any(running(p) for p in (escaped, orphan, leader))


async def test_an_executor_exiting_takes_its_leftovers_with_it(bed: Bed):
    tmp = bed.tmp
    bed.launch("c3", f"(sleep 60 & echo $! > {tmp}/left.pid); exit 4")
    end = await bed.terminated("c3")
    assert (end.status, end.destroyed) == (4, False)
    assert end.message == "Executor exited with status 4"
    left = int((tmp / "left.pid").read_text())
    assert not running(left)


async def test_a_simple_command_runs_without_the_shell(bed: Bed):
    # `sleep` is the container's process itself: no sh in between (which would fork first).
    bed.launch("s1", "sleep 60")
    launched = await bed.launched("s1")
    proc = psutil.Process(launched.pid)
    assert proc.cmdline() == ["sleep", "60"]
    assert os.path.basename(proc.exe()) == "sleep"
    assert os.getsid(launched.pid) == launched.pid  # still a session of its own
    assert bed.rt.metrics.get("containerizer/shell_skipped") == 1
    bed.destroy("s1")
    assert (await bed.terminated("s1")).status == -9
    # What the shell would have exported, it gets: its working directory as PWD.
    sandbox = bed.launch("s2", "env")
    assert (await bed.terminated("s2")).status == 0
    lines = (sandbox / "stdout").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    assert env["PWD"] == str(sandbox)
    assert env["MESA_CONTAINER_ID"] == "s2"


async def test_the_shell_keeps_what_only_it_can_run(bed: Bed):
    # A builtin; a program nobody can find (the shell's message, status 127); a script
    # without a #! line, which exec refuses and the shell reads itself; scripts whose #! line
    # exec cannot follow (a missing interpreter, a carriage return after it), which the shell
    # reports as not found; and a PATH with a relative entry (the sandbox's, to the shell).
    bin_dir = bed.tmp / "bin"
    bin_dir.mkdir()
    scripts = {
        "no-hashbang": "echo ran by $0 > ran.txt\n",
        "no-interpreter": "#!/no/such/interpreter\necho never\n",
        "crlf": "#!/bin/sh\r\necho never\r\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    path = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    bed.launch("b1", "exit 3")
    bed.launch("b2", "no-such-program-anywhere --flag")
    sandbox = bed.launch("b3", "no-hashbang", environment=path)
    bed.launch("b4", "no-interpreter", environment=path)
    bed.launch("b5", "crlf", environment=path)
    bed.launch("b6", "sleep 0", environment={"PATH": f".:{os.environ['PATH']}"})
    assert (await bed.terminated("b1")).status == 3
    assert (await bed.terminated("b2")).status == 127
    assert "not found" in (bed.tmp / "b2" / "stderr").read_text()
    assert (await bed.terminated("b3")).status == 0
    assert (sandbox / "ran.txt").read_text().startswith("ran by")
    for cid in ("b4", "b5"):
        ended = await bed.terminated(cid)
        assert ended.status == 127, (cid, ended)
        assert "not found" in (bed.tmp / cid / "stderr").read_text()
    assert (await bed.terminated("b6")).status == 0
    assert bed.rt.metrics.get("containerizer/shell_skipped") == 0


class GatedIsolator(Isolator):
    """Gated, with no cgroups to be born in: the executor waits at a gate until isolate."""

    name = "gated"
    gated = True


class LauncherIsolator(Isolator):
    """Runs every executor under a launcher (as namespaces/pid runs it under unshare)."""

    name = "launcher"

    def prepare(self, container_id: str, config: ContainerConfig) -> LaunchInfo:
        return LaunchInfo(command_prefix=["/usr/bin/env"])


@pytest.mark.parametrize("isolator", [GatedIsolator, LauncherIsolator])
async def test_a_gated_or_launched_command_keeps_the_shell(tmp_path: Path, isolator: type):
    # Behind the gate the program's argv[0] would be its path; under a launcher such as
    # `unshare --pid --fork` it would be its namespace's pid 1, deaf to an unhandled SIGTERM.
    async with bed_with(tmp_path, isolator()) as bed:
        sandbox = bed.launch("g1", "sleep 0")
        assert (await bed.terminated("g1")).status == 0
        assert sandbox.is_dir()
        assert bed.rt.metrics.get("containerizer/shell_skipped") == 0


async def test_launch_errors_and_bad_requests(bed: Bed):
    bed.launch("c4", str(bed.tmp / "missing"), shell=False)
    failed = await bed.launched("c4")
    assert failed.pid is None and "missing" in failed.error
    assert bed.rt.metrics.get("containerizer/launch_errors") == 1
    assert ("cleanup", "c4") in bed.isolator.calls

    bed.launch("c5", "exec sleep 60")
    pid = (await bed.launched("c5")).pid
    bed.owner.launched.pop("c5")
    bed.launch("c5", "true")  # the same id again
    duplicate = await bed.launched("c5")
    assert "already exists" in duplicate.error
    assert running(pid)

    bed.destroy("nope")  # unknown: ignored
    bed.owner.send(bed.containerizer, LaunchContainer.NAME, {"not": "a record"})
    bed.owner.send(bed.containerizer, DestroyContainer.NAME, 42)
    await wait_until(lambda: bed.rt.metrics.get("containerizer/invalid_messages") == 2)
    bed.destroy("c5")
    await bed.terminated("c5")
    await wait_gone(pid)


async def test_stopping_the_containerizer_destroys_everything(tmp_path: Path):
    rt = await Runtime("127.0.0.1", 0).start()
    try:
        owner = Owner()
        rt.spawn(owner)
        containerizer = rt.spawn(Containerizer())
        bed = Bed(rt, owner, containerizer, tmp_path, None)
        bed.launch("a", f"echo $$ > {tmp_path}/a.pid; exec sleep 60")
        bed.launch("b", f"(sleep 60 & echo $! > {tmp_path}/b.pid); exec sleep 60")
        a = (await bed.launched("a")).pid
        b = (await bed.launched("b")).pid
        child = await read_pid(tmp_path / "b.pid")
        await asyncio.wait_for(rt.stop(), 30)
        assert not any(running(p) for p in (a, b, child))
    finally:
        await rt.stop()
        kill_leftovers(list(tmp_path.rglob("*.pid")))


async def test_a_destroy_that_arrives_while_the_start_is_under_way_stops_it(bed: Bed):
    # Both requests go in the same loop turn: the destroy is handled while the start (the
    # isolators' prepare, the zygote) is still under way, and the command never runs.
    marker = bed.tmp / "ran"
    bed.launch("c1", f"touch {marker}; exec sleep 60")
    bed.destroy("c1")
    launched = await bed.launched("c1")
    assert launched.error is not None and "destroyed before its command started" in launched.error
    assert bed.isolator.steps("c1")[-1] == "cleanup"  # nothing held for it any more
    assert "c1" not in bed.owner.terminated  # a failed launch is its own end
    bed.launch("c2", "exit 0")  # the containerizer goes on: a later container still runs
    assert (await bed.terminated("c2")).status == 0
    assert not marker.exists()


async def test_starts_run_side_by_side(bed: Bed):
    # A burst of launches (an offer's worth of tasks) is not started one after another: every
    # start has asked its isolators to prepare before any of them has a process to isolate.
    for i in range(5):
        bed.launch(f"b{i}", "exit 0")
    ends = [await bed.terminated(f"b{i}") for i in range(5)]
    assert [e.status for e in ends] == [0] * 5
    assert all(bed.owner.launched[f"b{i}"].error is None for i in range(5))
    hooks = [call[0] for call in bed.isolator.calls if call[0] in ("prepare", "isolate")]
    assert hooks[:5] == ["prepare"] * 5, hooks


async def test_a_burst_is_shared_by_the_zygotes(tmp_path: Path):
    """Each zygote waits in vfork until its child has exec'd: a burst goes to the one with the
    fewest spawns in flight, so both start tasks."""
    rt = await Runtime("127.0.0.1", 0).start()
    try:
        owner = Owner()
        rt.spawn(owner)
        containerizer = Containerizer(kill_wait=5.0, zygotes=2)
        bed = Bed(rt, owner, rt.spawn(containerizer), tmp_path, None)
        ids = [f"s{i}" for i in range(8)]
        for cid in ids:
            bed.launch(cid, f"echo $$ > {tmp_path}/{cid}.pid; exec sleep 60")
        pids = [(await bed.launched(cid)).pid for cid in ids]
        parents = {psutil.Process(pid).ppid() for pid in pids}
        assert parents == {z.pid for z in containerizer.zygotes}
        assert sorted(z.forked for z in containerizer.zygotes) >= [2, 2]  # (ties take turns)
        metrics = rt.metrics
        assert metrics.get("containerizer/zygotes") == 2
        assert metrics.get("containerizer/zygote_executors_forked") == 8
        await bed.destroy_all(ids)
    finally:
        await rt.stop()
        kill_leftovers(list(tmp_path.rglob("*.pid")))


class HeldCleanup(RecordingIsolator):
    """Its cleanup waits for the test to let it go."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def cleanup(self, container_id: str) -> None:
        self.calls.append(("cleanup>", container_id))
        await self.release.wait()
        self.calls.append(("cleanup", container_id))


async def test_an_id_used_again_waits_for_the_cleanup_of_its_last_container(tmp_path: Path):
    # The end is reported before the isolators clean up (one after another, the last first).
    # A launch of the same id meanwhile must not prepare (make cgroups) in an isolator whose
    # cleanup has not come yet, and would then remove them under the new container.
    rt = await Runtime("127.0.0.1", 0).start()
    try:
        owner = Owner()
        rt.spawn(owner)
        first, held = RecordingIsolator(), HeldCleanup()
        containerizer = Containerizer([first, held], kill_wait=5.0)
        bed = Bed(rt, owner, rt.spawn(containerizer), tmp_path, first)
        bed.launch("again", "exit 0")
        assert (await bed.terminated("again")).status == 0
        await wait_until(lambda: ("cleanup>", "again") in held.calls)
        del owner.launched["again"], owner.terminated["again"]
        bed.launch("again", "exit 3")
        await wait_until(lambda: "again" in containerizer._containers)  # its start is under way
        for _ in range(20):  # (rounds of the loop, for a start that would not wait)
            await asyncio.sleep(0)
        assert [c for c in first.calls if c[0] == "prepare"] == [("prepare", "again")]
        held.release.set()
        assert (await bed.terminated("again")).status == 3
        await wait_until(lambda: held.calls[-1] == ("cleanup", "again"))  # (after the report)
        for isolator in (first, held):
            steps = [c[0] for c in isolator.calls if c[0] in ("prepare", "cleanup")]
            assert steps == ["prepare", "cleanup", "prepare", "cleanup"], isolator
    finally:
        await rt.stop()


async def test_a_zygote_that_dies_mid_burst_runs_no_command_twice(bed: Bed):
    log = bed.tmp / "started"
    n = 30
    for i in range(n):
        bed.launch(f"z{i}", f"echo z{i} >> {log}; exec sleep 60")
    await wait_until(lambda: log.exists() and log.read_text().strip() != "")  # under way
    # This containerizer's zygotes, as it knows them: not every child of this process with
    # "mesa.zygote" in its command line (reading one that ends meanwhile raises, and another
    # containerizer's would be killed too).
    assert bed.actor is not None
    zygotes = [z.pid for z in bed.actor.zygotes if z.alive and z.pid is not None]
    assert zygotes
    for pid in zygotes:
        os.kill(pid, signal.SIGKILL)
    await wait_until(lambda: len(bed.owner.launched) == n)
    # Launches it was in the middle of failed, and whatever it had started for them was gone
    # by then; none was started a second time, cold.
    started = log.read_text().split()
    assert len(started) == len(set(started)), sorted(started)
    failed = [cid for cid, m in bed.owner.launched.items() if m.error is not None]
    for cid in failed:
        # (The start of the message: the rest quotes the command, whose path names this test,
        # "zygote" and all.)
        error = bed.owner.launched[cid].error or ""
        assert error.startswith("ZygoteLostSpawn: "), (cid, error)
        assert not _sleepers_in(bed.tmp / cid), (cid, error)
    for cid, m in bed.owner.launched.items():
        if m.error is None:
            bed.destroy(cid)
    for cid, m in bed.owner.launched.items():
        if m.error is None:
            await bed.terminated(cid)
    await wait_until(lambda: not _sleepers_in(bed.tmp))


def _sleepers_in(root: Path) -> list[int]:
    """Live processes whose working directory is ``root`` or below it (a sandbox, or all)."""
    found = []
    for p in psutil.process_iter(["cwd", "status"]):
        cwd = p.info["cwd"] or ""
        below = cwd == str(root) or cwd.startswith(str(root) + os.sep)
        if below and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p.pid)
    return found


async def test_a_child_the_dead_zygote_had_not_exec_d_yet_is_killed_before_the_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The zygote is killed while it waits in vfork for its child's exec. Until that exec the
    child has the zygote's environment (no MESA_CONTAINER_ID), but it was born in its sandbox.
    The launch fails, and the child is found and killed before the failure is reported. Missed,
    it would exec the command a moment later: a task reported failed (and run again elsewhere
    by its framework) that runs anyway, in a container nobody tracks. A real child is in that
    state for microseconds (the burst test's scenario, looped, left such a task running in 6 of
    120 rounds); the stand-in zygote (held_zygote.py) holds it there until it is let go, which
    here it never is."""
    monkeypatch.setattr(Zygote, "program", (str(Path(__file__).with_name("held_zygote.py")),))
    rt = await Runtime("127.0.0.1", 0).start()
    held: int | None = None
    try:
        owner = Owner()
        rt.spawn(owner)
        containerizer = Containerizer([RecordingIsolator()], kill_wait=5.0, zygotes=1)
        bed = Bed(rt, owner, rt.spawn(containerizer), tmp_path, None)
        sandbox = bed.launch("held", f"touch {tmp_path}/ran; exec sleep 60")
        held = await read_pid(sandbox / "held.pid")
        (zygote,) = containerizer.zygotes
        assert zygote.pid is not None and psutil.Process(held).ppid() == zygote.pid
        with open(f"/proc/{held}/environ", "rb") as f:
            assert b"MESA_CONTAINER_ID=held" not in f.read().split(b"\0")  # not exec'd yet
        os.kill(zygote.pid, signal.SIGKILL)
        launched = await bed.launched("held")
        assert launched.error is not None and launched.error.startswith("ZygoteLostSpawn: ")
        assert not running(held)  # killed, and gone before the failure was reported
        assert not (tmp_path / "ran").exists()
    finally:
        await rt.stop()
        if held is not None:
            with contextlib.suppress(OSError):
                os.kill(held, signal.SIGKILL)


class LimitingIsolator(Isolator):
    """Ends a container at once, the way a real isolator does: ``limit`` from inside, which the
    containerizer hears as a message."""

    name = "limiting"
    hit = Limitation("REASON_CONTAINER_LIMITATION_MEMORY", "over the line", "mem:32")

    async def isolate(self, container_id: str, pid: int) -> None:
        self.delay(0.0, self.limit, container_id, self.hit)


class WatchingIsolator(Isolator):
    """The other way: a ``watch`` of its own, which the containerizer awaits."""

    name = "watching"

    async def watch(self, container_id: str) -> Limitation:
        return LimitingIsolator.hit


@pytest.mark.parametrize("own_watch", [False, True], ids=["limit", "own_watch"])
async def test_an_isolator_s_limit_ends_the_container(tmp_path: Path, own_watch: bool):
    iso = WatchingIsolator() if own_watch else LimitingIsolator()
    async with bed_with(tmp_path, iso) as bed:
        bed.launch("limited", "exec sleep 60")
        ended = await bed.terminated("limited")
        assert ended.reason == "REASON_CONTAINER_LIMITATION_MEMORY"
        assert ended.message == "over the line"
        assert ended.destroyed
        assert bed.rt.metrics.get("containerizer/limitations_memory") == 1


class LateIsolator(Isolator):
    """Sees a limit only when asked at the end (as a v2 OOM kill of the whole group is seen)."""

    name = "late"
    reports_limits = True

    def check(self, container_id: str) -> Limitation:
        return LimitingIsolator.hit


async def test_a_limit_seen_only_at_the_end_counts_unless_the_command_succeeded(tmp_path: Path):
    async with bed_with(tmp_path, LateIsolator()) as bed:
        bed.launch("failed", "exit 3")
        bed.launch("succeeded", "exit 0")
        failed = await bed.terminated("failed")
        assert (failed.status, failed.reason) == (3, "REASON_CONTAINER_LIMITATION_MEMORY")
        assert failed.message == "over the line"
        # A command that says it succeeded did: nothing is read at its end.
        succeeded = await bed.terminated("succeeded")
        assert (succeeded.status, succeeded.reason) == (0, None)
        assert succeeded.message == "Executor exited with status 0"


async def test_a_limit_from_anyone_but_an_isolator_is_refused(bed: Bed):
    bed.launch("kept", "exec sleep 60")
    await bed.launched("kept")
    bed.owner.send(
        bed.containerizer,
        ContainerLimited.NAME,
        ContainerLimited("kept", "forged", "REASON_CONTAINER_LIMITATION_MEMORY", "no"),
    )
    await wait_until(lambda: bed.rt.metrics.get("containerizer/invalid_messages") == 1)
    assert "kept" not in bed.owner.terminated
    bed.destroy("kept")
    assert (await bed.terminated("kept")).reason is None


@contextlib.asynccontextmanager
async def cgroups_bed(
    tmp_path: Path, cfs: bool
) -> AsyncIterator[tuple[Bed, Containerizer, Any, str]]:
    """A containerizer driving every cgroups isolator on the real v1 hierarchies under a root of
    its own (skipped where they are not there); ``(bed, containerizer, mounts, root)``."""
    from isolation_support import need_cgroups, unique_root

    from mesa.isolators import IsolationOptions
    from mesa.isolators.cgroups import (
        CgroupsCpuIsolator,
        CgroupsFreezerIsolator,
        CgroupsMemIsolator,
        CgroupsPidsIsolator,
    )

    classes = (CgroupsCpuIsolator, CgroupsMemIsolator, CgroupsPidsIsolator, CgroupsFreezerIsolator)
    mounts = need_cgroups(*classes)
    if "cpu" not in mounts.v1:
        pytest.skip("the cpu controller is not on a v1 hierarchy here")
    with unique_root(mounts) as root:
        options = IsolationOptions(cgroups_root=root, cgroups_enable_cfs=cfs)
        rt = await Runtime("127.0.0.1", 0).start()
        try:
            owner = Owner()
            rt.spawn(owner)
            isolators = [cls(options) for cls in classes]
            containerizer = Containerizer(isolators, kill_wait=5.0)
            bed = Bed(rt, owner, rt.spawn(containerizer), tmp_path, isolators[0])
            yield bed, containerizer, mounts, root
        finally:
            await rt.stop()


def members(mounts: Any, subsystem: str, root: str, cid: str) -> set[int]:
    text = (mounts.v1[subsystem] / root / cid / "cgroup.procs").read_text()
    return {int(pid) for pid in text.split()}


async def test_a_tiny_cfs_quota_never_holds_up_the_starter(tmp_path: Path):
    # The zygote starts a cgroups container inside its cgroups, but with a CFS quota not inside
    # its cpu cgroup: there a quota of 1% of a cpu would throttle the zygote's vforked child
    # before its exec, and the zygote, and every launch behind it, with it. The task joins its
    # cpu cgroup once it runs (where its own start-up may be throttled, as it should be).
    async with cgroups_bed(tmp_path, cfs=True) as (bed, containerizer, mounts, root):
        cpu = bed.isolator
        assert not cpu.gated and cpu._birthplace("any") is None  # no cgroup to start in
        ids = [f"tiny{i}" for i in range(10)]
        for cid in ids:
            bed.launch(cid, "exec sleep 60", resources="cpus:0.01;mem:32")
        for cid in ids:
            launched = await bed.launched(cid)
            assert launched.error is None, launched.error
            zygotes = {z.pid for z in containerizer.zygotes}
            quota = (mounts.v1["cpu"] / root / cid / "cpu.cfs_quota_us").read_text()
            assert int(quota) == 1000  # 1% of the 100 ms period
            # The task joined its cpu cgroup, and the starters are in none of them.
            assert members(mounts, "cpu", root, cid) == {launched.pid}
            assert not zygotes & members(mounts, "cpu", root, cid)
        assert sum(z.forked for z in containerizer.zygotes) == len(ids)
        await bed.destroy_all(ids)


async def test_without_a_quota_a_task_is_born_in_its_cpu_cgroups(tmp_path: Path):
    # No CFS quota, nothing to throttle the starter: the task starts inside its cpu and cpuacct
    # cgroups as it does in the others, so what it forks before anyone could move it is there
    # too (and its first microseconds are on its own account), not in the starter's cgroups.
    async with cgroups_bed(tmp_path, cfs=False) as (bed, containerizer, mounts, root):
        bed.launch("born", "sleep 60 & exec sleep 61", resources="cpus:0.1;mem:32")
        launched = await bed.launched("born")
        assert launched.error is None, launched.error
        await wait_until(lambda: len(members(mounts, "pids", root, "born")) == 2)
        both = members(mounts, "pids", root, "born")
        assert launched.pid in both
        assert members(mounts, "cpu", root, "born") == both
        assert members(mounts, "cpuacct", root, "born") == both
        zygotes = {z.pid for z in containerizer.zygotes}
        assert zygotes and not zygotes & members(mounts, "cpu", root, "born")
        await bed.destroy_all(["born"])
