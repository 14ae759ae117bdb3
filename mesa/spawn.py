"""Starting a container's first process cheaply, and learning when it ends.

The agent starts a process for every task, so the way it starts one is on the path of every
launch. ``asyncio.create_subprocess_exec`` under uvloop *forks* the agent (libuv has no vfork),
which copies the page tables of a large process: about a millisecond of the agent's single
thread per task. ``subprocess.Popen`` uses ``vfork`` + ``exec`` (CPython does whenever no
``preexec_fn``, user or group change is asked for), whose cost does not grow with the parent.
The exit is then watched through a *pidfd* (Linux >= 5.3): it becomes readable when the child
ends, the loop wakes, and ``waitpid`` reaps exactly that child — no SIGCHLD handler and no
watcher thread per child, and nothing else's children are touched.

Where pidfds are missing, :func:`spawn` falls back to asyncio's own subprocess support.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
from typing import Any

__all__ = ["GATE_SCRIPT", "Child", "gated_argv", "spawn"]

# The gate a gated process starts behind: a shell that waits for one line on its stdin (a pipe
# the starter writes once every isolator has placed the process), then ``exec``s the real
# program (``"$@"``) with stdin from /dev/null. EOF (the starter gave up) means exit without
# running anything. A shell, not Python: dash starts in well under a millisecond, an
# interpreter in ten or more, and a gated start is on the path of every task of a cgroups agent.
GATE_SCRIPT = 'read -r _ || exit 125; exec "$@" </dev/null'


def gated_argv(executable: str, argv: list[str]) -> list[str]:
    """The argv that runs ``executable`` (with ``argv[1:]``) behind :data:`GATE_SCRIPT`; give
    it the gate's read end as stdin and write one line to open it."""
    return ["/bin/sh", "-c", GATE_SCRIPT, "mesa-gate", executable, *argv[1:]]


class Child:
    """A started process: its ``pid``, its ``returncode`` once reaped, and ``await wait()``."""

    def __init__(self, popen: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._loop = loop
        self._exited: asyncio.Future[int | None] = loop.create_future()
        self.returncode: int | None = None
        try:
            self._pidfd: int | None = os.pidfd_open(self.pid)
        except OSError:
            # Nobody could watch it (out of descriptors, or refused): it must not run unwatched.
            popen.kill()
            popen.wait()
            raise
        loop.add_reader(self._pidfd, self._reap)

    async def wait(self) -> int | None:
        """Its exit code, or minus the signal that ended it (as ``Popen.returncode``); None when
        something else reaped it and the status is lost."""
        return await asyncio.shield(self._exited)

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            code: int | None = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped elsewhere: the status is lost, not "success"
            pid, code = self.pid, None
        if pid == 0:
            return  # woken early; the pidfd stays readable until it really exits
        self._close()
        self.returncode = code
        # Tell the Popen object, or its finaliser would try to reap a pid that is not ours now.
        self._popen.returncode = code if code is not None else -1
        if not self._exited.done():
            self._exited.set_result(code)

    def _close(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None


@functools.cache
def pidfds_work() -> bool:
    """Whether this kernel gives pidfds (asked once, of this very process)."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):  # not Linux, Linux < 5.3, or refused by seccomp
        return False
    return True


async def spawn(argv: list[str], executable: str | None = None, **popen: Any) -> Any:
    """Start ``argv`` (keyword arguments as for ``subprocess.Popen``); returns a :class:`Child`,
    or an ``asyncio.subprocess.Process`` where pidfds are missing (the same ``pid``,
    ``returncode`` and ``wait()``)."""
    if not pidfds_work():  # pragma: no cover - not on the machines this runs on
        return await asyncio.create_subprocess_exec(*argv, executable=executable, **popen)
    loop = asyncio.get_running_loop()
    return Child(subprocess.Popen(argv, executable=executable, **popen), loop)
