"""The zygote: the agent's process starter. Containers are started by it, not by the agent.

Why. Starting a task's process is on the path of every launch, and the agent is one Python
thread. Two costs dominate when the agent does it itself: starting an interpreter for a Python
executor (``python -m mesa.command_executor`` spends ~100-130 ms of CPU importing asyncio, uvloop,
ZeroMQ, structlog, msgpack, libproc and mesa before it runs one instruction of the task), and
making the sandbox (a directory and two log files: on the VMs this runs on, creating an inode
costs 0.15-0.6 ms of CPU). The zygote takes both off the agent's thread: it has imported
everything a command executor needs, and it makes sandboxes and starts processes itself.

How many. A zygote starts a program with ``posix_spawn``: vfork, so it waits until the child has
exec'd, and on a busy machine the child first waits for a CPU. One zygote spent most of its time
waiting (78% of it on 1,000 `true` tasks, for 0.2 ms of CPU per spawn) and launches queued
behind it. The containerizer keeps several (two on two cores, up to four) and sends each spawn
to the one with the fewest in flight; each is independent: its own children, failures, restarts.

How. The containerizer starts ``python -m mesa.zygote`` (its child, in a session of its own so a
Ctrl-C aimed at the agent does not reach it) and speaks to it over its stdin/stdout in a stream
of msgpack maps (msgpack frames itself; JSON lines were a sixth of the zygote's CPU per start):

* ``{"op": "spawn", "id": CID, "cwd", "env_set", "env_unset", "stdout", "stderr", "mkdir",
  "gate", "exec"}``. The environment goes as its difference from the zygote's own; ``mkdir``
  asks for the sandbox (``cwd``) to be made.

  - With ``exec`` (``[executable, argv0, args...]``: a task's command, or any executor that is
    not mesa's own): the zygote makes the sandbox, opens its ``stdout`` and ``stderr``, and
    starts the program with ``posix_spawn`` (vfork + exec) in a session of its own. With ``gate``
    it starts behind the shell gate of :mod:`mesa.spawn` and does not run a line of its own until
    the gate opens.
  - Without: the zygote forks a command executor. The child makes and enters the sandbox first
    (where a scan finds it if the zygote dies before its pid is told, as it finds an exec child
    born there), makes itself a session leader and, with ``gate``, **waits on a gate** before
    doing anything more; then it opens its log files, takes the container's environment, builds
    its own event loop, ZeroMQ context and libproc runtime, and runs
    :func:`mesa.command_executor.main` — the very code a cold start runs.

  Either way the zygote answers ``{"op": "spawned", "id", "pid"}``.
* The containerizer runs every isolator's ``isolate(cid, pid)`` (a cgroup takes the pid while the
  child is parked, so everything it allocates or forks is inside its container), then sends
  ``{"op": "go", "id"}`` to open the gate; ``{"op": "abort", "id"}`` kills a parked child instead.
* Or, for an exec start, no gate at all: ``"cgroups"`` lists cgroup v1 directories the child is
  to be **born in**. The zygote writes itself into each one's ``tasks`` file, vforks (a child
  starts in its parent's cgroups), and writes itself back into its own cgroups before it
  announces the child. The command is inside its container from its first instruction, with no
  gate shell to exec and no ``go`` to wait for. (The few pages the spawn touches meanwhile are
  charged to the container, and the microseconds to its cpuacct: the price of starting it.
  cgroup v2 keeps a process in one cgroup, so a v2 container is gated.) The ``ready`` map says
  whether this zygote can do it (``"place"``): it must see its own cgroup in every v1 hierarchy.
* The zygote is every child's parent, so it reaps them and reports
  ``{"op": "exited", "id", "pid", "status", "cpu", "left"}`` (``status`` as asyncio reports it:
  the exit code, or minus the signal number; ``cpu``: what the child and its reaped children
  used; ``left``: what it left running — the orphans the zygote, a subreaper, adopted from its
  session, and their descendants — so the agent need not scan every process for them).

Fork safety: the zygote has one thread and creates no event loop, no ZeroMQ context and no
socket (importing the modules creates none). Each forked child builds its own loop and runtime
after the gate and closes every descriptor it inherited, and leaves with ``os._exit`` so that
nothing of the zygote's (atexit hooks, buffered output) runs twice.

If the zygote dies, the containerizer starts containers itself (and starts a new zygote for
later launches): the zygote is an accelerator, never a point of failure. Children it already
started are unaffected; only their exit status is lost (reported as unknown). A spawn that was
with the zygote when it died fails (:class:`ZygoteLostSpawn`), after whatever it may have started
is killed: a command never runs twice. A spawn the client gave up on (a timeout) is killed when
its child shows up. When its stdin closes (the agent stopped, or died without destroying its
containers), the zygote kills the processes it exec'd and the orphans it adopted: no task
outlives its agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import os
import selectors
import shlex
import shutil
import signal
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import psutil

from libproc import get_logger
from mesa.isolators.cgroupfs import Parent, own_v1_cgroups, write_file
from mesa.isolators.posix import ProcessTable
from mesa.spawn import gated_argv

__all__ = [
    "COMMAND_EXECUTOR_MODULE",
    "Zygote",
    "ZygoteChild",
    "ZygoteError",
    "ZygoteLostSpawn",
    "command_executor_command",
    "is_command_executor",
    "main",
]

COMMAND_EXECUTOR_MODULE = "mesa.command_executor"

log = get_logger("mesa.zygote")


def command_executor_command() -> str:
    """The shell command the agent gives a command executor (see ``command_executor_info``)."""
    return f"{shlex.quote(sys.executable)} -m {COMMAND_EXECUTOR_MODULE}"


def is_command_executor(command: Any) -> bool:
    """Is this ``CommandInfo`` mesa's own command executor, run by this very interpreter?

    Only then may it be forked from the zygote: the zygote runs the same code with the same
    interpreter, so the result is the same program minus its start-up.
    """
    return (
        command is not None
        and getattr(command, "shell", True)
        and not getattr(command, "arguments", None)
        and getattr(command, "value", None) == command_executor_command()
    )


class ZygoteError(RuntimeError):
    """The zygote could not fork an executor (or is gone)."""


class ZygoteLostSpawn(ZygoteError):
    """The spawn went to the zygote, which died (or never answered) before saying what became of
    it: a child may have started, and must not be started again elsewhere."""


# ====================================================================== client (in the agent)


@dataclass
class _Pending:
    spawned: asyncio.Future[int]
    exited: asyncio.Future[int | None]
    # What the child left running when it ended (see ZygoteChild.left), from its "exited".
    left: set[int] | None = None


class ZygoteChild:
    """A forked executor, shaped like the part of ``asyncio.subprocess.Process`` the
    containerizer uses: ``pid``, ``returncode`` and ``await wait()``."""

    def __init__(
        self,
        zygote: Zygote,
        cid: str,
        pid: int,
        pending: _Pending,
        gated: bool = True,
        zygote_pid: int | None = None,
    ):
        self._zygote = zygote
        self.container_id = cid
        self.pid = pid
        self.zygote_pid = zygote_pid  # which zygote is its parent (one may replace another)
        self._pending = pending
        self._exited = pending.exited
        self.released = not gated  # an ungated child never waited

    @property
    def left(self) -> set[int] | None:
        """Once it has exited: what it left running — the orphans the zygote adopted from its
        session, and their descendants — as the zygote saw them when it reaped it. None when the
        zygote could not tell (it is no subreaper, or it died first): scan instead."""
        return self._pending.left

    @property
    def returncode(self) -> int | None:
        if self._exited.done() and not self._exited.cancelled():
            return self._exited.result()
        return None

    async def wait(self) -> int | None:
        """The exit status (``None`` if the zygote died before it could tell)."""
        return await asyncio.shield(self._exited)

    def release(self) -> None:
        """Open the gate: the child now becomes the executor. Call after ``isolate``."""
        if not self.released:
            self.released = True
            self._zygote._send({"op": "go", "id": self.container_id})

    def abort(self) -> None:
        """The launch failed before the gate opened: the parked child is killed."""
        if not self.released:
            self.released = True
            self._zygote._send({"op": "abort", "id": self.container_id})


class Zygote:
    """The agent's handle on its zygote process: start, spawn, stop.

    ``env``: the zygote's own environment (it needs a ``PYTHONPATH`` that finds this ``mesa``);
    each child's environment is sent with its spawn. ``start_timeout``: how long the zygote may
    take to import everything.
    """

    # What the interpreter runs: ``python -m mesa.zygote``. A test may run a stand-in instead (a
    # zygote with a start it can hold up), for a moment a real one passes through too fast to
    # hit on purpose.
    program: tuple[str, ...] = ("-m", "mesa.zygote")

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
        max_failures: int = 3,
    ) -> None:
        self._env = dict(env if env is not None else os.environ)
        self._env_items = self._env.items()  # a set-like view: a launch's difference in C
        self._start_timeout = start_timeout
        # A zygote that keeps dying is given up on: every launch then starts cold.
        self.max_failures = max_failures
        self._proc: asyncio.subprocess.Process | None = None
        # The read end of the current zygote's stdout, watched by the loop (no stream, no task:
        # a burst's answers are one read and one callback).
        self._pipe: _Pipe | None = None
        self._ready: asyncio.Future[None] | None = None
        self._pending: dict[str, _Pending] = {}
        self._outbox: list[bytes] = []
        self._abandoned: set[str] = set()  # spawns given up on (timed out, cancelled)
        self._starting: asyncio.Task[None] | None = None
        self._exit_watch: asyncio.Future[int] | None = None
        self._orphan_watches: set[asyncio.Future[None]] = set()
        self.pid: int | None = None
        # The zygote adopts every orphan of the processes it started (PR_SET_CHILD_SUBREAPER),
        # so what a container leaves behind is found among its children: see ZygoteChild.left.
        self.subreaper = False
        # Whether it can start an exec child inside its cgroups (see the module's docstring).
        self.can_place = False
        self.failures = 0
        # For /metrics/snapshot: how many executors were forked and what they cost in CPU.
        self.forked = 0
        self.exited = 0
        self.abandoned_killed = 0  # children of spawns given up on, killed when they showed up
        self.executor_cpu_seconds = 0.0
        self.spawning = 0  # spawns sent and not answered yet: how busy it is right now

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self._pipe is not None

    @property
    def given_up(self) -> bool:
        """It died ``max_failures`` times: launches that would use it start cold instead."""
        return self.failures >= self.max_failures and not self.alive

    async def start(self) -> None:
        """Start the zygote (once; concurrent callers share the start) and wait until ready;
        a zygote that died is replaced, up to ``max_failures`` times."""
        if self.alive and self._ready is not None and self._ready.done():
            self._ready.result()
            return
        if self._pipe is not None and not self.alive:
            # A zygote that died whose end was never seen (a child it forked holds the pipe
            # open): what it said before it went is read, its death counted, before the count
            # decides whether there is another.
            self._read(self._pipe, drain=True, settle=True)
        if self.failures >= self.max_failures:
            raise ZygoteError(f"the zygote failed {self.failures} times; not restarting it")
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        out, theirs = os.pipe2(os.O_CLOEXEC)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *self.program,
                stdin=asyncio.subprocess.PIPE,
                stdout=theirs,
                env=self._env,
                start_new_session=True,
            )
        except BaseException:
            os.close(out)
            raise
        finally:
            os.close(theirs)
        self.pid = self._proc.pid
        os.set_blocking(out, False)
        self._pipe = pipe = _Pipe(out, loop.create_future())
        loop.add_reader(out, self._on_readable, pipe)
        # Its exit settles it at once: the EOF may never come while a child it forked (parked
        # at its gate, its stdout not yet replaced) holds the pipe open.
        self._exit_watch = watch = asyncio.ensure_future(self._proc.wait())
        watch.add_done_callback(functools.partial(self._on_exit, pipe))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self._start_timeout)
        except asyncio.CancelledError:
            self._kill_now()  # the containerizer is stopping: no waiting, no failure counted
            raise
        except ZygoteError:
            self._kill_now()  # (it ended before it was ready: that end was counted)
            raise
        except Exception as e:
            self.failures += 1
            self._kill_now()
            raise ZygoteError(f"the zygote did not start: {e!r}") from e
        log.info("zygote_started", pid=self.pid)

    async def spawn(
        self,
        container_id: str,
        *,
        cwd: str,
        env: Mapping[str, str] | None = None,
        overlay: Mapping[str, str] | None = None,
        stdout: str,
        stderr: str,
        argv: list[str] | None = None,
        executable: str | None = None,
        make_cwd: bool = False,
        gated: bool = True,
        cgroups: list[str] | None = None,
        timeout: float = 10.0,
    ) -> ZygoteChild:
        """Fork a child for ``container_id``: a command executor, or with ``argv``, a process
        that ``exec``s ``executable`` (found on the ``PATH`` of ``env``; default ``argv[0]``).

        ``gated``: the child parks at its gate until :meth:`ZygoteChild.release` (isolators
        that must place it first); otherwise it goes on at once. ``make_cwd``: the child makes
        its working directory (and parents) itself, so the agent's thread never waits on the
        filesystem for a sandbox. ``cgroups`` (with ``argv``, when :attr:`can_place`): cgroup v1
        directories the child is born in; it needs no gate for them.

        The child's environment is ``env`` (all of it), or the zygote's own with ``overlay`` on
        top: only a few variables travel then, and nothing has to be compared.
        """
        if (env is None) == (overlay is None):
            raise TypeError("give the child's env, or an overlay of the zygote's")
        await self.start()
        if cgroups and not (argv and self.can_place):
            raise ZygoteError("this zygote cannot start a child in its cgroups")
        if container_id in self._pending:
            raise ZygoteError(f"container {container_id} already spawned")
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), loop.create_future())
        self._pending[container_id] = pending
        request = {
            "op": "spawn",
            "id": container_id,
            "cwd": cwd,
            # Only what differs from the zygote's own environment: the whole of it is a few
            # kilobytes per launch, packed by the agent and unpacked by the zygote.
            "env_set": dict(overlay) if env is None else dict(env.items() - self._env_items),
            "env_unset": [] if env is None else list(self._env.keys() - env.keys()),
            "stdout": stdout,
            "stderr": stderr,
            "exec": [executable or argv[0], *argv] if argv else None,
            "mkdir": make_cwd,
            "gate": gated,
        }
        if cgroups:
            request["cgroups"] = list(cgroups)
        try:
            self._send(request)
        except BaseException:
            self._pending.pop(container_id, None)  # nothing was sent
            raise
        spawned = pending.spawned
        # (A timer on the future itself: wait_for and shield would add a task and two futures
        # to every launch.)
        timer = loop.call_later(timeout, _time_out, spawned)
        self.spawning += 1
        try:
            pid = await spawned
        except BaseException as e:
            if self._pending.get(container_id) is pending:
                del self._pending[container_id]
                # The request may be with the zygote already: if its child shows up later,
                # nobody will be watching it, so it is killed the moment it does. (If its answer
                # came while this waited to resume, the child was killed then.)
                self._abandoned.add(container_id)
            if isinstance(e, TimeoutError):
                raise ZygoteLostSpawn(
                    f"no answer to the spawn of {container_id} in {timeout}s"
                ) from e
            raise
        finally:
            timer.cancel()
            self.spawning -= 1
        self.forked += 1
        return ZygoteChild(self, container_id, pid, pending, gated, self.pid)

    def _send(self, msg: dict[str, Any]) -> None:
        """Queue a request; those of one loop turn go in one write. Every write wakes the
        zygote, and a burst of launches (an offer's worth) should wake it once, not per task."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise ZygoteError("the zygote is not running")
        self._outbox.append(_pack(msg))
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        proc = self._proc
        if not frames or proc is None or proc.stdin is None or proc.returncode is not None:
            return  # gone: its reader sees EOF and fails what was in flight
        with contextlib.suppress(ConnectionError, RuntimeError):
            proc.stdin.write(b"".join(frames))

    def _on_exit(self, pipe: _Pipe, watch: asyncio.Future[int]) -> None:
        """The zygote behind ``pipe`` ended: what it wrote before is all in the pipe, read now.
        Its EOF normally follows at once; a child it was starting holds the pipe until its
        ``exec`` (which replaces its stdout), and a launch failed before then could not find
        that child to kill it. So the EOF settles the zygote, as always, or after
        ``_EXIT_GRACE`` this does anyway (a child parked at its gate may hold the pipe until
        it sees the gate close)."""
        if watch.cancelled() or pipe.closed:
            return
        self._read(pipe, drain=True, settle=False)
        if not pipe.closed:
            asyncio.get_running_loop().call_later(_EXIT_GRACE, self._read, pipe, True, True)

    def _on_readable(self, pipe: _Pipe) -> None:
        """What the zygote behind ``pipe`` said: everything there is, in one read (a burst's
        answers come together); at EOF, it is gone."""
        self._read(pipe, drain=False, settle=False)

    def _read(self, pipe: _Pipe, drain: bool, settle: bool) -> None:
        """Read and handle one chunk, or (``drain``) everything there is; ``settle``: then end
        the pipe, its zygote known to be gone and nothing it said lost."""
        while not pipe.closed:
            try:
                chunk = os.read(pipe.fd, 1 << 16)
            except BlockingIOError:
                if settle:
                    self._end(pipe)
                return
            except OSError as e:  # pragma: no cover - the pipe broke in an unexpected way
                log.warning("zygote_read_failed", error=repr(e))
                chunk = b""
            if not chunk:
                self._end(pipe)
                return
            pipe.unpacker.feed(chunk)
            try:
                for msg in pipe.unpacker:
                    if isinstance(msg, dict):
                        self._on_message(msg)
                    else:
                        log.warning("zygote_bad_message", message=repr(msg)[:200])
            except Exception as e:
                # Its stream is ours end to end; garbage in it means the zygote is broken, and a
                # stream cannot be re-synchronised: end it now (launches in flight fail, the
                # next one starts a new zygote).
                log.warning("zygote_bad_stream", pid=self.pid, error=repr(e))
                self.failures += 1
                self._kill_now()
                return
            if not drain:
                return

    def _end(self, pipe: _Pipe) -> None:
        """Stop reading ``pipe`` (EOF, or its zygote given up on); if it is the current
        zygote's, that zygote is gone: fail what was in flight."""
        if pipe.closed:
            return
        pipe.closed = True
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(pipe.fd)
        os.close(pipe.fd)
        if not pipe.ended.done():
            pipe.ended.set_result(None)
        if pipe is self._pipe:
            self._pipe = None
            self._gone()

    def _on_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "ready":
            self.subreaper = bool(msg.get("subreaper"))
            self.can_place = bool(msg.get("place"))
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        pending = self._pending.get(msg.get("id", ""))
        if pending is None:
            cid = msg.get("id", "")
            if cid in self._abandoned and op in ("spawned", "exited", "error"):
                self._abandoned.discard(cid)
                if op == "spawned":
                    self._kill_abandoned(cid, int(msg["pid"]))
            return
        if op == "spawned":
            spawned = pending.spawned
            if not spawned.done():
                spawned.set_result(int(msg["pid"]))
            elif _given_up(spawned):
                # Given up on (timed out, cancelled) a moment ago, and its waiter has not
                # resumed yet: nobody will watch this child, so it goes now.
                del self._pending[msg["id"]]
                self._kill_abandoned(msg["id"], int(msg["pid"]))
        elif op == "error":
            self._pending.pop(msg["id"], None)
            if not pending.spawned.done():
                pending.spawned.set_exception(ZygoteError(str(msg.get("error"))))
        elif op == "exited":
            self._pending.pop(msg["id"], None)
            self.exited += 1
            self.executor_cpu_seconds += float(msg.get("cpu") or 0.0)
            if not pending.spawned.done():  # died before the answer was read
                pending.spawned.set_exception(ZygoteError("the child exited at once"))
            left = msg.get("left")
            if isinstance(left, list):
                pending.left = {int(p) for p in left}
            if not pending.exited.done():
                pending.exited.set_result(msg.get("status"))

    def _kill_abandoned(self, cid: str, pid: int) -> None:
        """A child whose spawn was given up on: it never runs (parked at a gate) or not for long
        (its session killed); the zygote, its parent, reaps it."""
        log.warning("zygote_abandoned_child_killed", container_id=cid, pid=pid)
        self.abandoned_killed += 1
        with contextlib.suppress(ZygoteError):
            self._send({"op": "abort", "id": cid})
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(OSError):
                kill(pid, signal.SIGKILL)

    def _gone(self) -> None:
        """The zygote ended: fail launches in flight; children it forked are watched by pid."""
        self._outbox.clear()  # requests for a process that is gone; never for its successor
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ZygoteError("the zygote exited before it was ready"))
            self._ready.exception()  # mark retrieved
        pending, self._pending = self._pending, {}
        live = 0
        for cid, p in pending.items():
            if not p.spawned.done():
                p.spawned.set_exception(ZygoteLostSpawn("the zygote exited during the spawn"))
                p.spawned.exception()
            elif _given_up(p.spawned):
                continue  # given up on (its waiter has yet to resume): no child known to watch
            elif not p.exited.done():
                live += 1
                watch = asyncio.ensure_future(_watch_orphan(p.spawned.result(), p.exited))
                self._orphan_watches.add(watch)
                watch.add_done_callback(self._orphan_watches.discard)
            del cid
        if self._proc is not None:
            self.failures += 1
            log.warning("zygote_exited", pid=self.pid, orphaned_executors=live)

    def _kill_now(self) -> None:
        """SIGKILL the zygote without waiting, and settle what was in flight with it now (its
        EOF may come late: a forked child holds the pipe until it has replaced its stdout)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if self._pipe is not None:
            self._end(self._pipe)

    async def stop(self, timeout: float = 2.0) -> None:
        """Close its stdin (it exits), then kill it if it lingers; a start in progress is
        cancelled. Every wait is bounded: this runs while the agent stops, when a loop may be
        closing. Forked executors are left to the containerizer, which destroys containers."""
        starting = self._starting
        if starting is not None and not starting.done():
            starting.cancel()
            await asyncio.wait([starting], timeout=timeout)
        self._flush()  # what the containerizer asked for last (a gate to close) still goes
        proc, self._proc = self._proc, None
        pipe = self._pipe
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), timeout)
        if pipe is not None:
            if not pipe.ended.done():
                await asyncio.wait([pipe.ended], timeout=timeout)
            self._end(pipe)  # (no EOF in time: stop watching, fail what is in flight)
        if self._exit_watch is not None:
            self._exit_watch.cancel()  # (a zygote that would not die: nothing left to settle)


class _Pipe:
    """The agent's end of one zygote's stdout: its fd, its stream, and whether it ended."""

    __slots__ = ("closed", "ended", "fd", "unpacker")

    def __init__(self, fd: int, ended: asyncio.Future[None]) -> None:
        self.fd = fd
        self.ended = ended
        self.closed = False
        self.unpacker = _unpacker()


# How long a zygote's exit waits for its pipe's EOF before it settles what was in flight.
_EXIT_GRACE = 0.5


def _given_up(spawned: asyncio.Future[int]) -> bool:
    """A done spawn that has no child to watch: its waiter timed out or was cancelled (and may
    not have resumed yet to say so)."""
    return spawned.cancelled() or spawned.exception() is not None


def _pack(msg: dict[str, Any]) -> bytes:
    # Paths and environments are str as os gives them: undecodable bytes come as surrogate
    # escapes, and go back as the same bytes.
    return msgpack.packb(msg, use_bin_type=True, unicode_errors="surrogateescape")


def _unpacker() -> msgpack.Unpacker:
    # Bounded: a request or an answer is a few kilobytes (an environment's difference).
    return msgpack.Unpacker(raw=False, max_buffer_size=16 << 20, unicode_errors="surrogateescape")


def _time_out(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def _watch_orphan(pid: int, exited: asyncio.Future[int | None]) -> None:
    """A forked executor whose zygote died: no one can reap it for us, so poll until it is gone
    (a zombie counts as gone) and report an unknown status."""
    delay = 0.01
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.Error:
            break
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
    if not exited.done():
        exited.set_result(None)


# ====================================================================== server (the zygote)


def _preload() -> None:
    """Import everything a command executor imports — including what it imports lazily once it
    runs (uvloop, the thread pool behind ``run_in_executor``) — and create nothing: no loop, no
    ZeroMQ context, no socket, no thread. Then freeze the heap for the garbage collector: the
    children's collections skip these objects, so they do not write to (and copy) every page
    they share with the zygote."""
    import concurrent.futures.thread  # noqa: F401
    import gc
    import queue  # noqa: F401

    import uvloop  # noqa: F401

    import mesa.command_executor
    import mesa.executor  # noqa: F401

    gc.collect()
    gc.freeze()


def _child(req: dict[str, Any], gate: int | None) -> None:
    """In the forked child: enter the sandbox, wait at the gate (if any), become the command
    executor, never return.

    The sandbox comes first. A fork's ``/proc/<pid>/environ`` is the zygote's for good (a change
    to ``os.environ`` does not show there), so its working directory is the one thing by which
    the agent's scan finds a child whose pid it never heard of, the zygote having died mid-spawn
    (``processes_of_container``): a child still outside its sandbox would run on unseen. An
    exec child is born there (``posix_spawn``'s cwd); this one goes there before it does
    anything else."""
    code = 127
    try:
        paths = _enter_sandbox(req)
        os.setsid()  # the container: a session of its own, as start_new_session gives
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if gate is not None:
            # Parked: nothing more runs until the isolators hold this pid.
            word = b""
            with contextlib.suppress(OSError):
                word = os.read(gate, 1)
            if word != b"g":
                os._exit(125)
        entered = paths is not None
        if paths is None:  # (see _enter_sandbox: done again here, to fail where it always did)
            if req.get("mkdir"):
                _make_dir(req["cwd"])
            paths = req["stdout"], req["stderr"]
        devnull = os.open(os.devnull, os.O_RDONLY)
        out = os.open(paths[0], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        err = os.open(paths[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        # Nothing of the zygote's: its pipes, its selector, other children's gates.
        os.closerange(3, 1 << 16)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        if not entered:
            os.chdir(req["cwd"])  # (a failure goes to the container's stderr, now open)
        env = _environment(req)  # from the zygote's environment: read it before clearing
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [COMMAND_EXECUTOR_MODULE]
        import libproc
        from mesa import command_executor

        libproc.configure_logging()  # the container's LIBPROC_LOG_* now
        code = command_executor.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _enter_sandbox(req: dict[str, Any]) -> tuple[str, str] | None:
    """Make (if asked) and enter the child's sandbox, ``req["cwd"]``. Returns the paths of its
    ``stdout`` and ``stderr`` as they are to be opened from there (a relative one is the
    zygote's: from the directory the child has just left).

    None if anything failed, with nothing changed but perhaps the sandbox made: ``_child`` then
    does it all again where it did before the sandbox came first (after the gate, the mkdir
    before the log files are opened, the chdir once they are fds 1 and 2), so that a failure is
    reported as it always was, a chdir's in the container's own stderr, not the zygote's."""
    try:
        stdout, stderr = _from_here(req["stdout"]), _from_here(req["stderr"])
        if req.get("mkdir"):
            _make_dir(req["cwd"])
        os.chdir(req["cwd"])
    except Exception:
        return None
    return stdout, stderr


def _from_here(path: str) -> str:
    """``path`` from the working directory we are in, whichever we go to next."""
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


@functools.cache
def _own_environment() -> dict[str, str]:
    """The zygote's environment, read once: copying ``os.environ`` decodes every variable, and
    nothing here changes it (a forked child changes its own, after its copy is made)."""
    return dict(os.environ)


def _environment(req: dict[str, Any]) -> dict[str, str]:
    """A child's environment: the zygote's own, less ``env_unset``, plus ``env_set``."""
    env = dict(_own_environment())
    for key in req.get("env_unset") or ():
        env.pop(str(key), None)
    env.update({str(k): str(v) for k, v in (req.get("env_set") or {}).items()})
    return env


def _become_subreaper() -> bool:
    """Adopt the orphans of our descendants instead of leaving them to init (Linux >= 3.4)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


_PR_SET_CHILD_SUBREAPER = 36
# What Popen's restore_signals gives a child back: Python ignores these, and an ignored signal
# stays ignored across exec (a task's `yes | head` would then end with EPIPE, not SIGPIPE).
# (SIGXFZ is not Linux's; Popen lists it for the systems that have it.)
_RESTORED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


class _Server:
    """The zygote's loop: one thread, one selector over its stdin and a SIGCHLD wake-up pipe.

    One thread on purpose. Starts once ran on a pool of threads (so that slow sandbox creations
    could overlap), but handing each start and each "spawned" line between threads and the GIL
    cost more CPU than the start itself: about 0.1 ms per task of context switches and lock
    hand-offs on these VMs. On two busy cores nothing overlaps anyway.
    """

    def __init__(self) -> None:
        self.children: dict[int, str] = {}  # pid -> container id
        self.execs: set[int] = set()  # the children started with exec (not forked executors)
        self.gates: dict[str, tuple[int, int]] = {}  # container id -> (write end, pid)
        self.out = sys.stdout.buffer
        self.frames: list[bytes] = []  # what the agent is told next, in order
        self.unpacker = _unpacker()
        # v1 hierarchy mount point -> the zygote's own cgroup in it: where the zygote goes back
        # to after starting a child inside a container's cgroups.
        self.homes = own_v1_cgroups()
        self._home_fds: dict[str, int] = {}
        # The directories containers' cgroups are in (the agent's roots), held open: a
        # ``tasks`` file is then two path steps from one, not seven from / (each dear on
        # kernfs; see cgroupfs.Parent).
        self._parents: dict[str, Parent] = {}
        # What the zygote writes to a ``tasks`` file to move itself: "0", the writing thread,
        # not its pid. The kernel (6.0+) moves the calling thread without taking the global
        # lock that every fork and exit on the machine takes for reading; a pid, even its own,
        # takes it for writing, twice per cgroup per start, and stalls those forks and exits.
        self._me = b"0"
        self.subreaper = False  # (until serve() becomes one)

    def send(self, msg: dict[str, Any]) -> None:
        """Queue an answer for the agent; what one round of the loop says goes in one write
        (:meth:`flush`): each write wakes the agent, and a burst's answers should wake it once."""
        self.frames.append(_pack(msg))

    def flush(self) -> None:
        if self.frames:
            data = b"".join(self.frames)
            self.frames.clear()
            self.out.write(data)
            self.out.flush()

    def serve(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        # The agent ends us by closing stdin, so a Ctrl-C is swallowed — by a handler, not
        # SIG_IGN, which every program we exec would inherit.
        signal.signal(signal.SIGINT, lambda *_: None)
        sel = selectors.DefaultSelector()
        stdin = sys.stdin.buffer.fileno()
        sel.register(stdin, selectors.EVENT_READ, "in")
        sel.register(wake_r, selectors.EVENT_READ, "chld")
        self.subreaper = _become_subreaper()
        self.send(
            {
                "op": "ready",
                "pid": os.getpid(),
                "subreaper": self.subreaper,
                "place": bool(self.homes),
            }
        )
        self.flush()
        open_ = True
        while open_ or self.children:
            for key, _ in sel.select(1.0 if not open_ else None):
                if key.data == "chld":
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_r, 4096):
                            pass
                else:
                    chunk = os.read(stdin, 1 << 16)
                    if not chunk:
                        open_ = False
                        sel.unregister(stdin)
                        break
                    # (A stream that does not unpack ends the zygote: the agent starts another.)
                    self.unpacker.feed(chunk)
                    requests = list(self.unpacker)
                    for n, msg in enumerate(requests, 1):
                        self.handle(msg, (stdin, wake_r, wake_w))
                        if self.frames and n < len(requests):
                            # More to start: say what is started so far first. Each start
                            # waits for its child's exec, and the agent should not wait for
                            # the whole burst to hear of the first.
                            self.flush()
            self.reap()
            self.flush()
            if not open_:
                # The agent is gone or stopping: nobody will open the gates, nobody is listening.
                for cid in list(self.gates):
                    self.abort(cid)
                self.kill_exec_children()
                if self.children:
                    break  # forked executors live on (they notice the agent's end themselves)
        return 0

    def handle(self, msg: dict[str, Any], fds: tuple[int, ...]) -> None:
        op, cid = msg.get("op"), str(msg.get("id", ""))
        if op == "spawn":
            try:
                if msg.get("exec"):
                    pid = self.start_exec(cid, msg)
                else:
                    pid = self.fork(cid, msg, fds)
            except Exception as e:
                self.send({"op": "error", "id": cid, "error": repr(e)})
            else:
                self.send({"op": "spawned", "id": cid, "pid": pid})
        elif op == "go":
            gate = self.gates.pop(cid, None)
            if gate is not None:
                with contextlib.suppress(OSError):
                    os.write(gate[0], b"go\n")  # the fork's gate reads a byte, the shell a line
                os.close(gate[0])
        elif op == "abort":
            self.abort(cid)

    def kill_exec_children(self) -> None:
        """The agent is gone (a stop has destroyed its containers already; a crash has not):
        no task it started may outlive it. Exec children and the orphans adopted from them are
        killed; forked command executors notice the agent's end themselves and end their tasks."""
        doomed = set(self.execs)
        with contextlib.suppress(OSError):
            with open(f"/proc/self/task/{os.getpid()}/children", "rb") as f:
                doomed.update(int(p) for p in f.read().split() if int(p) not in self.children)
        for pid in doomed:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(OSError):
                    kill(pid, signal.SIGKILL)

    def abort(self, cid: str) -> None:
        gate = self.gates.pop(cid, None)
        if gate is not None:
            os.close(gate[0])
            with contextlib.suppress(OSError):
                os.kill(gate[1], signal.SIGKILL)

    def fork(self, cid: str, req: dict[str, Any], fds: tuple[int, ...]) -> int:
        gated = req.get("gate", True)
        gate_r, gate_w = os.pipe() if gated else (None, None)
        self.flush()  # (nothing queued may be written twice, by the child too)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            if gate_w is not None:
                os.close(gate_w)
            _child(req, gate_r)
        self.children[pid] = cid
        if gate_r is not None and gate_w is not None:
            os.close(gate_r)
            self.gates[cid] = (gate_w, pid)
        return pid

    def start_exec(self, cid: str, req: dict[str, Any]) -> int:
        """Start ``req["exec"]`` (``[executable, argv0, args...]``) with vfork + exec, in a
        session of its own, behind the shell gate when ``req["gate"]``, born in
        ``req["cgroups"]`` when given. The sandbox and its log files are made here, in the
        zygote, not in the agent."""
        executable, *argv = req["exec"]
        cwd = req["cwd"]
        if req.get("mkdir"):
            _make_dir(cwd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        out = os.open(req["stdout"], flags, 0o644)
        err = os.open(req["stderr"], flags, 0o644)
        gate_r = gate_w = None
        try:
            if req.get("gate", True):
                gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
                argv = gated_argv(executable, argv)
                executable = argv[0]
            env = _environment(req)
            with self.inside(req.get("cgroups") or ()):
                pid = _posix_spawn(executable, argv, cwd, env, gate_r, out, err)
            self.execs.add(pid)
            self.children[pid] = cid
            if gate_w is not None:
                self.gates[cid] = (gate_w, pid)
                gate_w = None
            return pid
        finally:
            for fd in (out, err, gate_r, gate_w):
                if fd is not None:
                    os.close(fd)

    @contextlib.contextmanager
    def inside(self, cgroups: Sequence[str]) -> Iterator[None]:
        """The zygote in the cgroup v1 directories ``cgroups`` for the duration: a child it
        starts meanwhile is born in them. It goes back into its own cgroups after (before the
        child is announced: from then on the agent may read, and kill, the cgroups' members),
        or it ends: left in a container's cgroups, it would start the next child in the wrong
        container and keep the cgroup from being removed."""
        if not cgroups:
            yield
            return
        me = self._me
        joined: list[str] = []
        try:
            for path in cgroups:
                mount = self._mount_of(path)
                # Plain syscalls: a text-mode open() per write was most of the zygote's cost
                # under cgroups (each builds a TextIOWrapper and looks up its codec).
                self._join(path)
                joined.append(mount)
            yield
        finally:
            for mount in joined:
                try:
                    os.write(self._home_fd(mount), me)
                except OSError as e:  # pragma: no cover - the zygote's own cgroup went away
                    sys.stderr.write(f"mesa.zygote: cannot leave a container's cgroup: {e!r}\n")
                    sys.stderr.flush()
                    os._exit(70)

    def _join(self, path: str) -> None:
        """Move this thread into the cgroup directory ``path``."""
        base, _, name = path.rpartition("/")
        parent = self._parents.get(base)
        if parent is None:
            try:
                parent = self._parents[base] = Parent(base)
            except OSError:
                write_file(path + "/tasks", "0")  # (the error, if any, as the agent sees it)
                return
        try:
            write_file(name + "/tasks", "0", dir_fd=parent.fd)
        except FileNotFoundError:
            # The directory held open may have been removed and made again (a new agent root
            # under the same name): forget it and go by the path.
            del self._parents[base]
            parent.close()
            write_file(path + "/tasks", "0")

    def _home_fd(self, mount: str) -> int:
        """The zygote's own ``tasks`` file under ``mount``, opened once: it goes home after
        every start inside a container."""
        fd = self._home_fds.get(mount)
        if fd is None:
            path = os.path.join(self.homes[mount], "tasks")
            fd = self._home_fds[mount] = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        return fd

    def _mount_of(self, path: str) -> str:
        for mount in self.homes:
            if path.startswith(mount + "/"):
                return mount
        raise ValueError(f"{path} is not in a cgroup v1 hierarchy this zygote can see")

    def reap(self) -> None:
        # Every child, not only those we started: the orphans we adopt must not stay zombies.
        ended: list[dict[str, Any]] = []
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                self.execs.clear()
                break
            if pid == 0:
                break
            self.execs.discard(pid)
            cid = self.children.pop(pid, None)
            if cid is None:
                continue
            gate = self.gates.pop(cid, None)
            if gate is not None:
                os.close(gate[0])
            ended.append(
                {
                    "op": "exited",
                    "id": cid,
                    "pid": pid,
                    "status": os.waitstatus_to_exitcode(status),
                    # CPU seconds of the executor and of the tasks it reaped: what a task costs.
                    "cpu": usage.ru_utime + usage.ru_stime,
                }
            )
        if ended and self.subreaper:
            # Read once, after every reap of this round: a child's orphans are ours before it
            # can be reaped, so this list holds what each of them left (one read of /proc, not
            # one per child, in a burst of ends).
            adopted = self.adopted()
            if adopted is not None:
                for msg in ended:
                    msg["left"] = _left_by(msg["pid"], adopted)
        for msg in ended:
            self.send(msg)

    def adopted(self) -> list[int] | None:
        """Children that are not ours: the orphans adopted from what we started (every child is
        listed under the zygote's one thread, its own and adopted ones alike). None where the
        kernel has no such list: the agent then scans for what a container left."""
        try:
            with open(f"/proc/self/task/{os.getpid()}/children", "rb") as f:
                return [p for p in map(int, f.read().split()) if p not in self.children]
        except OSError:
            return None


def _make_dir(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``, for the usual case first: only the last component
    is new (makedirs would look at the parent before it tries)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)


def _left_by(leader: int, adopted: list[int]) -> list[int]:
    """What the child ``leader`` (just reaped) left running, as a scan of its session would find
    it: the adopted orphans (its children are reparented to us before it can be reaped) and their
    descendants that are in its session, and what descends from those, even if it left the
    session since. (An orphan that made a session of its own is not the container's any more,
    but a child it left in the container's session still is.) One pass over the machine's
    processes, and only when there are orphans at all."""
    if not adopted:
        return []
    table = ProcessTable()
    out: set[int] = set()
    for orphan in adopted:
        for pid in (orphan, *table.descendants(orphan)):
            if pid not in out and table.session.get(pid) == leader:
                out.add(pid)
                out |= table.descendants(pid)
    return sorted(out)


def _posix_spawn(
    executable: str,
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    stdin: int | None,
    out: int,
    err: int,
) -> int:
    """vfork + exec ``executable`` (searched on the ``PATH`` of ``env`` if it has no slash) in
    ``cwd``, in a session of its own, with ``stdin`` (default ``/dev/null``), ``out`` and ``err``
    as its descriptors 0-2 and nothing else (every other descriptor of the zygote is
    close-on-exec), and the default handling of the signals Python ignores. ``posix_spawn``
    does in C what ``subprocess.Popen`` does in Python, for half the CPU. It has no working
    directory of its own to give (not in Python 3.11), so the zygote goes there for the spawn:
    it has one thread, and no relative path of its own."""
    if os.sep not in executable:
        found = shutil.which(executable, path=env.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), executable)
        executable = found
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_DUP2, stdin, 0)
        if stdin is not None
        else (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, out, 1),
        (os.POSIX_SPAWN_DUP2, err, 2),
    ]
    os.chdir(cwd)
    try:
        return os.posix_spawn(
            executable,
            argv,
            env,
            file_actions=actions,
            setsid=True,
            setsigdef=_RESTORED_SIGNALS,
            setsigmask=(),
        )
    finally:
        os.chdir("/")


def _not_inherited() -> None:
    """Mark every descriptor above 2 close-on-exec: ``posix_spawn`` passes on whatever is not,
    and a descriptor the agent's process leaked to us must not reach every task."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def main() -> int:
    """``python -m mesa.zygote``: started by the containerizer, not by hand."""
    _preload()
    _not_inherited()  # (after the imports: whatever they opened too)
    try:
        return _Server().serve()
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
