"""``disk/du``: how much a sandbox holds, measured with ``du``; optionally a quota on it.

Like Mesos's ``disk/du``: every ``container_disk_watch_interval`` seconds the isolator runs
``du -k -s`` on each sandbox (in a child process, so a big tree never stalls the actor), reports
``disk_used_bytes`` and ``disk_limit_bytes``, and — only with ``enforce_container_disk_quota``
(the agent's ``--enforce-container-disk-quota``) — ends a container whose sandbox outgrew its
``disk`` resource with ``REASON_CONTAINER_LIMITATION_DISK``. Without the flag it only measures:
a quota enforced after the fact, up to one interval late, is a policy an operator opts into.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from libproc import ProcessNotFound, ProcessTerminated, Timer
from mesa.isolators.base import ContainerConfig, Isolator, LaunchInfo, Limitation
from mesa.resources import Resources
from mesa.task_state import Reason

__all__ = ["DiskDuIsolator", "disk_usage"]

_MB = 1024 * 1024


async def disk_usage(path: Path) -> int:
    """Bytes allocated under ``path``: ``du -k -s`` when there is one, else a walk of it."""
    du = shutil.which("du")
    if du is not None:
        proc = await asyncio.create_subprocess_exec(
            du,
            "-k",
            "-s",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        # du exits non-zero when a file vanished mid-walk; its total is still the best there is.
        with contextlib.suppress(ValueError, IndexError):
            return int(out.split()[0]) * 1024
    return await asyncio.to_thread(_walk, path)


def _walk(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


class DiskDuIsolator(Isolator):
    name = "disk/du"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._sandboxes: dict[str, Path] = {}
        self._quota: dict[str, int] = {}
        self._used: dict[str, int] = {}
        self._measuring: set[str] = set()
        self._timer: Timer | None = None

    def prepare(self, container_id: str, config: ContainerConfig) -> LaunchInfo | None:
        self._sandboxes[container_id] = config.sandbox
        self._set_limit(container_id, config.resources)
        self._arm()
        return None

    def update(self, container_id: str, resources: Resources) -> None:
        self._set_limit(container_id, resources)

    def _set_limit(self, container_id: str, resources: Resources) -> None:
        if "disk" in resources.names():
            self._quota[container_id] = int(resources.scalar("disk") * _MB)

    def _arm(self) -> None:
        if self._timer is None or not self._timer.pending:
            self._timer = self.delay(self.options.container_disk_watch_interval, self._tick)

    def _tick(self) -> None:
        """Start a measurement of every sandbox not already being measured; each reports back
        into the actor when ``du`` is done."""
        self._timer = None
        for container_id, sandbox in self._sandboxes.items():
            if container_id not in self._measuring:
                self._measuring.add(container_id)
                self.in_background(self._measure(container_id, sandbox))
        if self._sandboxes:
            self._arm()

    async def _measure(self, container_id: str, sandbox: Path) -> None:
        try:
            used = await disk_usage(sandbox)
        except Exception as e:
            self.log.warning("du_failed", container_id=container_id, error=repr(e))
            used = None
        with contextlib.suppress(ProcessNotFound, ProcessTerminated):
            await self.runtime.dispatch(self.pid, self._measured, container_id, used)

    def _measured(self, container_id: str, used: int | None) -> None:
        self._measuring.discard(container_id)
        if container_id not in self._sandboxes or used is None:
            return
        self._used[container_id] = used
        limit = self._quota.get(container_id)
        if limit is not None and used > limit and self.options.enforce_container_disk_quota:
            self.limit(
                container_id,
                Limitation(
                    Reason.REASON_CONTAINER_LIMITATION_DISK,
                    f"Disk usage ({used / _MB:.1f}MB) exceeds quota ({limit // _MB}MB)",
                    f"disk:{limit // _MB}",
                ),
            )

    async def usage(self, container_id: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if container_id in self._used:
            out["disk_used_bytes"] = self._used[container_id]
        if container_id in self._quota:
            out["disk_limit_bytes"] = self._quota[container_id]
        return out

    def cleanup(self, container_id: str) -> None:
        self._sandboxes.pop(container_id, None)
        self._quota.pop(container_id, None)
        self._used.pop(container_id, None)
        if not self._sandboxes and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def teardown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
