"""``namespaces/pid``: the executor and its tasks see only their own processes.

The executor starts under util-linux's ``unshare --pid --fork --mount-proc --kill-child``: a new
pid namespace whose init (pid 1) is the executor, and a private ``/proc`` that lists only that
namespace. The network namespace is left alone, so the executor still reaches its agent over
loopback TCP. ``--kill-child`` ties the executor to the ``unshare`` process the containerizer
watches, and the kernel ends every process of a namespace when its init dies, so a destroy that
reaches either one reaches all.

Python 3.11 has no ``os.unshare`` (3.12 does), and a ``preexec_fn`` calling ``unshare(2)`` through
ctypes is unsafe in a process with threads (the agent has ZeroMQ's), so the launcher is the
util-linux binary. The isolator is unavailable where ``unshare`` is missing or cannot make a pid
namespace (not root, or a seccomp profile forbids it); the reason says which.

Being pid 1 has one consequence for executors: signals they do not handle are ignored, and
orphans re-parent to them. mesa's executors handle the signals they rely on; zombies they do not
reap die with the namespace.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from typing import ClassVar

from mesa.isolators.base import ContainerConfig, IsolationOptions, Isolator, LaunchInfo

__all__ = ["PidNamespaceIsolator"]


@cache
def _probe() -> tuple[str | None, str]:
    """``(path of unshare, why not)``: run it once to see that a pid namespace can be made."""
    path = shutil.which("unshare")
    if path is None:
        return None, "util-linux's unshare is not installed"
    try:
        done = subprocess.run(
            [path, "--pid", "--fork", "--mount-proc", "--kill-child", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"unshare failed: {e}"
    if done.returncode != 0:
        return None, f"unshare cannot make a pid namespace: {done.stderr.decode().strip()}"
    return path, ""


class PidNamespaceIsolator(Isolator):
    reports_limits = False  # a namespace confines; it never ends a container
    name = "namespaces/pid"
    launcher: ClassVar[list[str]] = ["--pid", "--fork", "--mount-proc", "--kill-child"]

    @classmethod
    def unavailable(cls, options: IsolationOptions) -> str | None:
        path, why = _probe()
        return None if path else why

    def prepare(self, container_id: str, config: ContainerConfig) -> LaunchInfo | None:
        path, why = _probe()
        if path is None:
            raise RuntimeError(f"namespaces/pid: {why}")
        return LaunchInfo(command_prefix=[path, *self.launcher])
