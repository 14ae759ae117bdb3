"""The executor zygote on its own: a real ``python -m mesa.zygote`` forking real children.

A child forked here has no agent to talk to, so the command executor it becomes exits at once
with status 2 ("not started by a mesa agent"): that is enough to see the gate, the sandbox files,
the environment, the exit status and the reaping. The whole launch path, agent included, is in
tests/e2e/test_zygote_executors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import mesa.zygote as zygote_module
from mesa.actors.containerizer import processes_of_container, source_root
from mesa.info import CommandInfo
from mesa.zygote import Zygote, ZygoteError, command_executor_command, is_command_executor
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = source_root() + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
async def zygote() -> AsyncIterator[Zygote]:
    z = Zygote(_env())
    await z.start()
    try:
        yield z
    finally:
        pid = z.pid
        await z.stop()
        assert pid is not None
        assert not psutil.pid_exists(pid) or _zombie(pid)


def _zombie(pid: int | None) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _spawn_args(tmp: Path, **env: str) -> dict:
    return {
        "cwd": str(tmp),
        "env": {"PATH": os.environ.get("PATH", ""), **env},
        "stdout": str(tmp / "stdout"),
        "stderr": str(tmp / "stderr"),
    }


def test_only_mesas_own_command_executor_is_forked() -> None:
    assert is_command_executor(CommandInfo(command_executor_command()))
    assert not is_command_executor(CommandInfo("python -m mesa.command_executor"))
    assert not is_command_executor(
        CommandInfo(sys.executable, shell=False, arguments=[sys.executable, "-m", "x"])
    )
    assert not is_command_executor(CommandInfo(f"{shlex.quote(sys.executable)} my_executor.py"))
    assert not is_command_executor(None)


async def test_a_child_waits_at_the_gate_then_runs_in_its_sandbox(
    zygote: Zygote, tmp_path: Path
) -> None:
    child = await zygote.spawn("c1", **_spawn_args(tmp_path, MESA_MARK="x"))
    proc = psutil.Process(child.pid)
    assert proc.ppid() == zygote.pid
    # Parked: it has entered its sandbox, made itself a session leader (its container), and done
    # nothing else yet.
    await eventually(lambda: os.getsid(child.pid) == child.pid, "child leads its session", 10)
    assert not (tmp_path / "stderr").exists()
    assert child.returncode is None
    child.release()
    status = await asyncio.wait_for(child.wait(), 30)
    # No agent in its environment: the command executor refuses to run, with status 2.
    assert status == 2
    assert "executors are started by a mesa agent" in (tmp_path / "stderr").read_text()
    assert zygote.forked == 1 and zygote.exited == 1
    assert zygote.executor_cpu_seconds > 0


async def test_abort_kills_a_parked_child(zygote: Zygote, tmp_path: Path) -> None:
    child = await zygote.spawn("c2", **_spawn_args(tmp_path))
    child.abort()
    status = await asyncio.wait_for(child.wait(), 30)
    assert status in (-9, 125)  # killed at the gate (or it saw the gate close first)
    assert not (tmp_path / "stderr").exists()


async def test_a_parked_child_waits_in_its_sandbox_where_a_scan_finds_it(
    zygote: Zygote, tmp_path: Path
) -> None:
    """A zygote that dies while its child waits at the gate leaves a child whose pid the agent
    may never hear: the scan for what a lost spawn started finds it by its working directory
    (a fork's environment in /proc is the zygote's). So it makes and enters its sandbox before
    it parks; before, it parked outside it, and the sandbox was not even made."""
    sandbox = tmp_path / "sandbox"
    child = await zygote.spawn("c-parked", **_spawn_args(sandbox), make_cwd=True)
    await eventually(
        lambda: processes_of_container("c-parked", str(sandbox)) == [child.pid],
        "the parked child found in its sandbox",
        10,
    )
    assert not (sandbox / "stderr").exists()  # (still parked: its log files come after)
    child.abort()
    assert await asyncio.wait_for(child.wait(), 30) in (-9, 125)


# A forked command executor (mesa.zygote._child, ungated as under posix isolation) held at the
# first thing it does other than making and entering its sandbox: each of the steps that could
# come next says "held" on stdout and waits for stdin to close. Run as `python -c` with this
# checkout on PYTHONPATH, the request as its argument.
_HELD_CHILD = """
import json, os, signal, sys
import mesa.zygote

read, write, leave = os.read, os.write, os._exit

def held(*args, **kwargs):
    write(1, b"held\\n")
    read(0, 1)
    leave(125)

for module, name in (
    (os, "setsid"), (os, "open"), (os, "read"), (os, "dup2"), (os, "closerange"),
    (signal, "set_wakeup_fd"), (signal, "signal"),
):
    setattr(module, name, held)
mesa.zygote._child(json.loads(sys.argv[1]), None)
"""


def test_a_forked_child_is_in_its_sandbox_before_it_does_anything_else(tmp_path: Path) -> None:
    """An ungated child goes straight on to be the executor; lost with its zygote before the
    agent heard its pid, only its working directory tells the scan whose it is. It must be
    found from its first step: before, it entered its sandbox only after its session, signals,
    log files and closing of fds, and a child lost in between ran on unseen."""
    sandbox = tmp_path / "sandbox"
    req = {
        "cwd": str(sandbox),
        "mkdir": True,
        "stdout": str(sandbox / "stdout"),
        "stderr": str(sandbox / "stderr"),
        "env_set": {"MESA_CONTAINER_ID": "c-held"},
        "env_unset": [],
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _HELD_CHILD, json.dumps(req)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == b"held\n"
        assert processes_of_container("c-held", str(sandbox)) == [child.pid]
    finally:
        if child.stdin is not None:
            child.stdin.close()
        assert child.wait(30) == 125
    assert not (sandbox / "stderr").exists()


async def test_a_sandbox_the_child_cannot_enter_is_reported_in_its_own_stderr(
    zygote: Zygote, tmp_path: Path
) -> None:
    """The child enters its sandbox first, but a failure to is still reported where it was when
    that came last: in the container's stderr (open by then), the child exiting 127."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    args = {**_spawn_args(tmp_path), "cwd": str(not_a_dir)}
    child = await zygote.spawn("c-nowhere", **args, gated=False)
    assert await asyncio.wait_for(child.wait(), 30) == 127
    assert "NotADirectoryError" in (tmp_path / "stderr").read_text()


async def test_the_same_container_cannot_be_spawned_twice(zygote: Zygote, tmp_path: Path) -> None:
    child = await zygote.spawn("c3", **_spawn_args(tmp_path))
    with pytest.raises(ZygoteError):
        await zygote.spawn("c3", **_spawn_args(tmp_path))
    child.abort()
    await asyncio.wait_for(child.wait(), 30)


async def test_a_dead_zygote_fails_spawns_and_reports_its_children(
    zygote: Zygote, tmp_path: Path
) -> None:
    child = await zygote.spawn("c4", **_spawn_args(tmp_path))
    assert zygote.pid is not None
    os.kill(zygote.pid, 9)  # the zygote is this test's own grandchild
    # Its parked child sees the gate close and exits; the status is lost with the zygote.
    status = await asyncio.wait_for(child.wait(), 30)
    assert status is None
    assert not psutil.pid_exists(child.pid) or _zombie(child.pid)
    # The next spawn brings up a fresh zygote.
    old_pid = zygote.pid
    child = await zygote.spawn("c5", **_spawn_args(tmp_path))
    assert zygote.pid != old_pid and zygote.failures == 1
    child.release()
    assert await asyncio.wait_for(child.wait(), 30) == 2


async def test_what_a_dead_zygote_said_before_it_died_is_not_lost(
    zygote: Zygote, tmp_path: Path
) -> None:
    # The zygote reaps a child and writes its exit into the pipe, then dies before the agent's
    # loop has read it (here: the reader is taken off, so nothing is read until the zygote is
    # known dead). Its end settles what it left: the exit is read, with its status, not
    # guessed as lost; and the death is counted before the next zygote starts.
    child = await zygote.spawn("said", **_spawn_args(tmp_path))
    pipe = zygote._pipe
    assert pipe is not None
    asyncio.get_running_loop().remove_reader(pipe.fd)
    child.release()
    await eventually(lambda: select.select([pipe.fd], [], [], 0)[0], "the exit is written", 30)
    await eventually(lambda: not psutil.pid_exists(child.pid), "the child is reaped", 30)
    assert zygote.pid is not None
    os.kill(zygote.pid, 9)  # the zygote is this test's own grandchild
    assert await asyncio.wait_for(child.wait(), 30) == 2  # exited with status 2, as told
    assert zygote.failures == 1 and zygote.exited == 1
    again = await zygote.spawn("after", **_spawn_args(tmp_path))
    again.release()
    assert await asyncio.wait_for(again.wait(), 30) == 2


async def test_a_zygote_whose_answers_do_not_unpack_is_replaced(
    zygote: Zygote, tmp_path: Path
) -> None:
    # Stand in for a broken zygote: a byte msgpack never uses, ahead of its next answer. A
    # stream cannot be re-synchronised, so the zygote is ended and counted as a failure.
    assert zygote._pipe is not None
    zygote._pipe.unpacker.feed(b"\xc1")
    old_pid = zygote.pid
    with pytest.raises(ZygoteError):
        await zygote.spawn("g1", **_spawn_args(tmp_path))
    assert zygote.failures == 1
    await eventually(lambda: not zygote.alive, "zygote ended", 10)
    child = await zygote.spawn("g2", **_spawn_args(tmp_path))
    assert zygote.pid != old_pid
    child.release()
    assert await asyncio.wait_for(child.wait(), 30) == 2


async def test_a_zygote_that_keeps_dying_is_given_up_on(tmp_path: Path) -> None:
    z = Zygote(_env(), max_failures=2)
    try:
        for _ in range(2):
            await z.start()
            assert z.pid is not None
            pid = z.pid
            os.kill(pid, 9)
            await eventually(lambda: not z.alive, "zygote noticed dead", 10)
        with pytest.raises(ZygoteError):
            await z.spawn("c7", **_spawn_args(tmp_path))
    finally:
        await z.stop()


async def test_a_zygote_that_dies_before_it_is_ready_counts_once(tmp_path: Path) -> None:
    # An interpreter that cannot start (no standard library where PYTHONHOME says): each try
    # is one failure, so max_failures tries are made before it is given up on, not half.
    z = Zygote({**_env(), "PYTHONHOME": str(tmp_path / "nowhere")}, max_failures=3)
    try:
        for tries in (1, 2, 3):
            with pytest.raises(ZygoteError):
                await z.start()
            assert z.failures == tries
        with pytest.raises(ZygoteError, match="not restarting"):
            await z.start()
    finally:
        await z.stop()


async def test_a_death_not_yet_seen_is_counted_before_another_zygote_starts(
    tmp_path: Path,
) -> None:
    # The zygote died, and neither its EOF nor its exit has been handled yet (here: both
    # watchers are taken off). The next start reads what it left and counts the death first:
    # with max_failures=1 that means no second zygote, where it used to start one more.
    z = Zygote(_env(), max_failures=1)
    try:
        await z.start()
        assert z._pipe is not None and z._exit_watch is not None and z._proc is not None
        asyncio.get_running_loop().remove_reader(z._pipe.fd)
        z._exit_watch.cancel()
        proc, pid = z._proc, z.pid
        assert pid is not None
        os.kill(pid, 9)
        await asyncio.wait_for(proc.wait(), 30)
        with pytest.raises(ZygoteError, match="not restarting"):
            await z.start()
        assert z.failures == 1 and z.pid == pid
    finally:
        await z.stop()


async def test_a_spawn_given_up_on_leaves_no_process(zygote: Zygote, tmp_path: Path) -> None:
    # A spawn that times out (a zygote stuck on a slow filesystem, say) fails with ZygoteError,
    # and the child the zygote starts anyway is killed the moment it is heard of.
    marker = f"MESA_TEST_LATE={os.getpid()}-{tmp_path.name}"
    key, value = marker.split("=")
    argv = ["/bin/sh", "-c", "exec sleep 300"]
    args = _spawn_args(tmp_path, **{key: value})
    with pytest.raises(ZygoteError, match="no answer"):
        await zygote.spawn("late", argv=argv, gated=False, timeout=0, **args)
    await eventually(lambda: zygote.abandoned_killed == 1, "the late child heard of and killed")
    await eventually(lambda: not _live_with(marker.encode()), "no process of it left")


async def test_a_zygote_gone_while_a_timed_out_spawn_waits_to_resume_is_settled(
    zygote: Zygote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The spawn's timeout fires, and in the same loop turn (before the spawning coroutine
    # resumes) the zygote is ended: that settles everything in flight, the spawn given up on
    # included (it has failed already: nothing to fail, and no child known to watch), without
    # an error out of the middle of it.
    live = await zygote.spawn("live", **_spawn_args(tmp_path / "live"))
    errors: list[BaseException] = []
    real = zygote_module._time_out

    def time_out_then_lose_the_zygote(future: asyncio.Future[Any]) -> None:
        real(future)
        try:
            zygote._kill_now()
        except BaseException as e:
            errors.append(e)

    monkeypatch.setattr(zygote_module, "_time_out", time_out_then_lose_the_zygote)
    with pytest.raises(ZygoteError, match="no answer"):
        await zygote.spawn("late", timeout=0, **_spawn_args(tmp_path / "late"))
    assert errors == []
    assert zygote._pending == {} and not zygote._abandoned
    # The live child, watched by pid now, is settled when it goes (its gate closed with the
    # zygote).
    assert await asyncio.wait_for(live.wait(), 30) is None


def _live_with(marker: bytes) -> list[int]:
    """Live processes whose environment holds ``marker``."""
    found = []
    for p in psutil.process_iter():
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0") and not _zombie(p.pid):
                    found.append(p.pid)
        except OSError:
            continue
    return found


async def test_exec_children_do_not_outlive_the_zygote_s_end(tmp_path: Path) -> None:
    # The agent gone without destroying its containers (a crash): the zygote sees its stdin
    # close and takes the tasks it started with it, orphans they left included.
    z = Zygote(_env())
    await z.start()
    pidfile = tmp_path / "orphan.pid"
    argv = ["/bin/sh", "-c", f"(sleep 300 & echo $! > {pidfile}); exec sleep 300"]
    child = await z.spawn("task", argv=argv, gated=False, **_spawn_args(tmp_path))
    # (Its pid once written: the shell makes the file, then writes to it.)
    await eventually(
        lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), "the orphan started"
    )
    orphan = int(pidfile.read_text())
    await z.stop()
    await eventually(lambda: _zombie(child.pid) and _zombie(orphan), "the task and its orphan gone")


def _thread_cgroups(pid: int) -> set[str]:
    """Every distinct ``/proc/<pid>/task/<tid>/cgroup`` of ``pid``'s threads."""
    seen = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/cgroup") as f:
            seen.add(f.read())
    return seen


async def test_an_exec_child_is_born_in_its_cgroups_and_the_zygote_stays_home(
    zygote: Zygote, tmp_path: Path
) -> None:
    from mesa.isolators.cgroupfs import mounts as cgroup_mounts
    from tests.mesa.isolation_support import unique_root

    v1 = cgroup_mounts().v1
    wanted = [s for s in ("memory", "pids", "freezer") if s in v1]
    if not wanted or not zygote.can_place:
        pytest.skip("no cgroup v1 hierarchy to start a child in")
    home = _thread_cgroups(zygote.pid)  # type: ignore[arg-type]
    assert len(home) == 1
    with unique_root() as root:
        dirs = [v1[s] / root / "c" for s in wanted]
        for d in dirs:
            d.mkdir()
        args = _spawn_args(tmp_path)
        # `exec`: what reads /proc/self/cgroup is the child itself, not a descendant of it.
        child = await zygote.spawn(
            "born",
            **args,
            argv=["sh", "-c", "exec cat /proc/self/cgroup"],
            gated=False,
            cgroups=[str(d) for d in dirs],
        )
        assert await asyncio.wait_for(child.wait(), 30) == 0
        lines = (tmp_path / "stdout").read_text().splitlines()
        for subsystem in wanted:
            assert any(
                line.split(":")[1] == subsystem and line.endswith(f"/{root}/c") for line in lines
            ), (subsystem, lines)
        # Every spawning thread went back where it came from; nothing stays in the cgroups.
        assert _thread_cgroups(zygote.pid) == home  # type: ignore[arg-type]
        for d in dirs:
            assert (d / "tasks").read_text().split() == []


async def test_a_cgroup_the_zygote_cannot_place_in_fails_the_spawn_and_moves_nothing(
    zygote: Zygote, tmp_path: Path
) -> None:
    if not zygote.can_place:
        pytest.skip("this zygote cannot start children in cgroups here")
    home = _thread_cgroups(zygote.pid)  # type: ignore[arg-type]
    with pytest.raises(ZygoteError, match="not in a cgroup v1 hierarchy"):
        await zygote.spawn(
            "nowhere",
            **_spawn_args(tmp_path),
            argv=["true"],
            gated=False,
            cgroups=[str(tmp_path)],
        )
    assert _thread_cgroups(zygote.pid) == home  # type: ignore[arg-type]
    assert not (tmp_path / "stdout").exists() or (tmp_path / "stdout").read_text() == ""


async def test_an_exec_child_gets_its_sandbox_default_signals_and_only_fds_0_to_2(
    zygote: Zygote, tmp_path: Path
) -> None:
    # Python ignores SIGPIPE; an ignored signal survives exec, and `yes | head` would then end
    # with EPIPE instead of SIGPIPE. Nothing of the zygote's own descriptors may leak either.
    sandbox = tmp_path / "sandbox"
    child = await zygote.spawn(
        "plain",
        **{**_spawn_args(sandbox), "make_cwd": True},
        argv=["sh", "-c", "pwd; grep SigIgn /proc/self/status; exec ls /proc/self/fd"],
        gated=False,
    )
    assert await asyncio.wait_for(child.wait(), 30) == 0
    lines = (sandbox / "stdout").read_text().split()
    assert lines[0] == str(sandbox)
    assert lines[1] == "SigIgn:"
    ignored = int(lines[2], 16)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT):
        assert not ignored & (1 << (sig - 1)), sig
    # (glibc's posix_spawn leaves its two internal signals, 32 and 33, ignored; every program
    # on glibc installs its own handlers for them at start.)
    assert ignored & ~(0b11 << 31) == 0
    assert sorted(lines[3:]) == ["0", "1", "2", "3"]  # (3: the directory ls is reading)
    assert psutil.Process(zygote.pid).cwd() == "/"


async def test_a_sandbox_path_that_is_not_utf_8_travels_as_its_bytes(
    zygote: Zygote, tmp_path: Path
) -> None:
    # os gives undecodable bytes as surrogate escapes; the protocol carries them as they are.
    sandbox = tmp_path / os.fsdecode(b"sandbox-\xff")
    child = await zygote.spawn(
        "bytes",
        **{**_spawn_args(sandbox), "make_cwd": True},
        argv=["sh", "-c", "pwd"],
        gated=False,
    )
    assert await asyncio.wait_for(child.wait(), 30) == 0
    assert os.fsencode(tmp_path) + b"/sandbox-\xff" in (sandbox / "stdout").read_bytes()


async def test_the_exit_says_what_the_child_left_running(zygote: Zygote, tmp_path: Path) -> None:
    assert zygote.subreaper
    args = _spawn_args(tmp_path)
    child = await zygote.spawn(
        "leaver", **args, argv=["sh", "-c", "sleep 60 & echo $!"], gated=False
    )
    try:
        assert await asyncio.wait_for(child.wait(), 30) == 0
        sleeper = int((tmp_path / "stdout").read_text())
        assert child.left == {sleeper}
        assert psutil.Process(sleeper).ppid() == zygote.pid  # adopted
    finally:
        for pid in child.left or ():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    # A child that leaves nothing says so.
    clean = await zygote.spawn(
        "clean", **_spawn_args(tmp_path / "c"), make_cwd=True, argv=["true"], gated=False
    )
    assert await asyncio.wait_for(clean.wait(), 30) == 0
    assert clean.left == set()


async def test_left_counts_a_session_member_whose_parent_left_the_session(
    zygote: Zygote, tmp_path: Path
) -> None:
    # A forks B, then makes a session of its own; B stays in the container's session. When the
    # leader ends, A is adopted (not the container's any more) and B, A's child, still is. The
    # leader ends once A says, through a fifo, that it has its own session.
    script = (
        "mkfifo ready; "
        "(sleep 60 & echo $! > b; exec setsid sh -c 'echo > ready; exec sleep 60') & "
        "echo $! > a; read x < ready"
    )
    child = await zygote.spawn("split", **_spawn_args(tmp_path), argv=["sh", "-c", script])
    child.release()
    a = b = 0
    try:
        assert await asyncio.wait_for(child.wait(), 30) == 0
        a, b = (int((tmp_path / n).read_text()) for n in ("a", "b"))
        assert b in (child.left or set())
        assert a not in (child.left or set())
    finally:
        for pid in (a, b):
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


# Forks for as long as it lives: each child says it runs (a byte on a pipe) and waits for a
# signal, and the next fork follows that byte, so it forks as fast as children start, and
# through the sweep. Each child inherits its environment and working directory, which is all a
# lost spawn's scan can go by.
FORKER = """
import os, signal, sys
sys.stdin.readline()
ready, said = os.pipe()
while True:
    if os.fork() == 0:
        os.write(said, b"x")
        while True:
            signal.pause()
    os.read(ready, 1)
"""


async def test_what_a_lost_spawn_left_is_killed_even_as_it_forks(tmp_path: Path) -> None:
    """A process found by the scan may fork between the scan and the kill: the sweep looks
    again until a look finds nothing new, so no child it forked meanwhile survives."""
    from mesa.actors.containerizer import kill_processes_of_container

    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    env = {**os.environ, "MESA_CONTAINER_ID": "c-forks"}
    forker = subprocess.Popen(
        [sys.executable, "-c", FORKER], cwd=sandbox, env=env, stdin=subprocess.PIPE
    )
    try:
        forker.stdin.write(b"go\n")  # type: ignore[union-attr]
        forker.stdin.flush()  # type: ignore[union-attr]
        await eventually(
            lambda: len(processes_of_container("c-forks", str(sandbox))) >= 20, "forks made"
        )
        killed = await asyncio.to_thread(kill_processes_of_container, "c-forks", str(sandbox))
        assert forker.pid in killed
        forker.wait(timeout=10)

        def alive() -> list[int]:
            return [p for p in processes_of_container("c-forks", str(sandbox)) if not _zombie(p)]

        await eventually(lambda: alive() == [], "every fork gone")
    finally:
        with contextlib.suppress(OSError):
            forker.kill()
        forker.wait()
        for pid in processes_of_container("c-forks", str(sandbox)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
