"""The posix isolators: what a process session gives, on any Unix, with no privileges.

A posix container is the executor's session: the containerizer starts it with
``start_new_session=True``, so its pid is also its session and process-group id, and everything
it forks stays in the session unless it calls ``setsid`` itself. :func:`session_pids` finds the
container's processes from that (the process tree and the session); a process that leaves the
session *and* is re-parented away escapes it, which is why cgroups exist. The containerizer itself
scans and kills a container's session when it ends, so these isolators do neither (a ``pids`` of
their own would only repeat the same scan): they measure.

* ``posix/cpu``: cpu time of those processes (psutil), including reaped children's.
* ``posix/mem``: their resident memory; and, since nothing else enforces it, a poller that ends a
  container whose private (non-shared) resident memory is above its ``mem`` with
  ``REASON_CONTAINER_LIMITATION_MEMORY`` (checked every ``poll_interval``, so a burst shorter
  than that can slip through: use cgroups/mem for a hard limit).
* ``posix``: the name of both together.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, ClassVar

import psutil

from libproc import Timer
from mesa.isolators.base import (
    MIN_MEMORY_BYTES,
    ContainerConfig,
    Isolator,
    LaunchInfo,
    Limitation,
)
from mesa.resources import Resources
from mesa.task_state import Reason

__all__ = ["PosixCpuIsolator", "PosixMemIsolator", "ProcessTable", "session_pids"]

_MB = 1024 * 1024


def session_pids(leader: int, leader_alive: bool = True) -> set[int]:
    """Every live pid of the container led by ``leader``: its session, and its descendants
    while it lives (``leader_alive=False``, for a leader already reaped, skips them: its pid may
    be someone else's by now). Never this process or init.

    A live leader takes a fresh :class:`ProcessTable` (descendants need every parent). A reaped
    one needs only the session, and one ``getsid`` per process costs a fourteenth of reading
    every ``/proc/<pid>/stat``."""
    if leader_alive:
        return ProcessTable().container(leader)
    pids: set[int] = set()
    getsid = os.getsid
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if getsid(int(name)) == leader:
                    pids.add(int(name))
    pids.discard(os.getpid())
    pids.discard(1)
    return pids


class ProcessTable:
    """Every process on the machine by session and by parent, from one pass over
    ``/proc/*/stat``. It answers for as many containers as are asked about, where a scan per
    container would read the whole machine each time (20 live containers polled twice a second
    were 20 scans of about a millisecond, every half second, on the agent's thread).
    :meth:`shared` hands out one table to every poller for a tenth of a second."""

    def __init__(self) -> None:
        self.by_session: dict[int, list[int]] = {}
        self.children: dict[int, list[int]] = {}
        self.session: dict[int, int] = {}  # pid -> its session
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
                # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parens.
                fields = stat[stat.rindex(b")") + 2 :].split(b" ", 5)
                ppid, sid = int(fields[1]), int(fields[3])
            except (OSError, ValueError, IndexError):
                continue
            pid = int(name)
            self.session[pid] = sid
            self.by_session.setdefault(sid, []).append(pid)
            self.children.setdefault(ppid, []).append(pid)

    _shared: ClassVar[tuple[float, ProcessTable] | None] = None

    @classmethod
    def shared(cls) -> ProcessTable:
        """A table at most :data:`_TABLE_TTL` old, the same for every caller in the process.
        (Real time, not the Clock's: the table is about the machine, and a paused Clock must not
        freeze it.)"""
        now = time.monotonic()
        if cls._shared is None or now >= cls._shared[0]:
            cls._shared = (now + _TABLE_TTL, cls())
        return cls._shared[1]

    def descendants(self, pid: int) -> set[int]:
        """Everything below ``pid``, wherever it went."""
        out: set[int] = set()
        todo = [pid]
        while todo:
            for child in self.children.get(todo.pop(), ()):
                if child not in out:
                    out.add(child)
                    todo.append(child)
        return out

    def container(self, leader: int, leader_alive: bool = True) -> set[int]:
        """The container led by ``leader``: its session, and (while it lives) the leader and its
        descendants, wherever they went."""
        pids = set(self.by_session.get(leader, ()))
        if leader_alive and leader in self.session:
            pids.add(leader)
            pids |= self.descendants(leader)
        pids.discard(os.getpid())
        pids.discard(1)
        return pids


# How long a shared process table serves the polls and usage reads of every container.
_TABLE_TTL = 0.1


class _PosixBase(Isolator):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._leaders: dict[str, int] = {}
        self._procs: dict[str, dict[int, psutil.Process]] = {}

    def isolate(self, container_id: str, pid: int) -> None:
        self._leaders[container_id] = pid

    def _processes(self, container_id: str) -> list[psutil.Process]:
        """The container's processes, reusing psutil objects (psutil checks a reused pid is
        still the same process)."""
        known = self._procs.setdefault(container_id, {})
        alive: dict[int, psutil.Process] = {}
        for pid in self._pids_now(container_id):
            proc = known.get(pid)
            try:
                if proc is None or not proc.is_running():
                    proc = psutil.Process(pid)
            except psutil.Error:
                continue
            alive[pid] = proc
        self._procs[container_id] = alive
        return list(alive.values())

    def _pids_now(self, container_id: str) -> set[int]:
        leader = self._leaders.get(container_id)
        if leader is None:
            return set()
        return ProcessTable.shared().container(leader)

    def cleanup(self, container_id: str) -> None:
        self._leaders.pop(container_id, None)
        self._procs.pop(container_id, None)


class PosixCpuIsolator(_PosixBase):
    """Usage only: cpu time of the container's processes, including the children they reaped
    (a process reaped by init instead takes its time with it; the total never goes back)."""

    reports_limits = False  # it only measures

    name = "posix/cpu"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._cpus: dict[str, float] = {}
        self._high: dict[str, tuple[float, float]] = {}

    def prepare(self, container_id: str, config: ContainerConfig) -> LaunchInfo | None:
        if "cpus" in config.resources.names():
            self._cpus[container_id] = config.resources.scalar("cpus")
        return None

    def update(self, container_id: str, resources: Resources) -> None:
        if "cpus" in resources.names():
            self._cpus[container_id] = resources.scalar("cpus")

    async def usage(self, container_id: str) -> dict[str, float]:
        user = system = 0.0
        for proc in self._processes(container_id):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                user += t.user + t.children_user
                system += t.system + t.children_system
        high_user, high_sys = self._high.get(container_id, (0.0, 0.0))
        user, system = max(user, high_user), max(system, high_sys)
        self._high[container_id] = (user, system)
        out: dict[str, float] = {
            "cpus_user_time_secs": user,
            "cpus_system_time_secs": system,
            "cpus_time_secs": user + system,
        }
        if container_id in self._cpus:
            out["cpus_limit"] = self._cpus[container_id]
        return out

    def cleanup(self, container_id: str) -> None:
        self._cpus.pop(container_id, None)
        self._high.pop(container_id, None)
        super().cleanup(container_id)


class PosixMemIsolator(_PosixBase):
    """Resident memory of the container's processes; a container above its ``mem`` (polled)
    is ended with ``REASON_CONTAINER_LIMITATION_MEMORY``."""

    name = "posix/mem"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._limit: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._timer: Timer | None = None

    def prepare(self, container_id: str, config: ContainerConfig) -> LaunchInfo | None:
        self._set_limit(container_id, config.resources)
        return None

    def update(self, container_id: str, resources: Resources) -> None:
        self._set_limit(container_id, resources)

    def _set_limit(self, container_id: str, resources: Resources) -> None:
        if "mem" in resources.names():
            limit = max(MIN_MEMORY_BYTES, int(resources.scalar("mem") * _MB))
            self._limit[container_id] = limit

    def isolate(self, container_id: str, pid: int) -> None:
        super().isolate(container_id, pid)
        if container_id in self._limit:
            self._arm()

    def _arm(self) -> None:
        if self._timer is None or not self._timer.pending:
            self._timer = self.delay(self.options.poll_interval, self._poll)

    def _poll(self) -> None:
        self._timer = None
        for container_id in list(self._limit):
            if container_id in self._leaders:
                self._look(container_id)
        if self._limit:
            self._arm()

    def _memory(self, container_id: str) -> tuple[int, int]:
        """``(rss, private)``: resident memory, and the part of it not shared with files or
        other processes (what a memory cgroup would charge; shared libraries, counted in every
        process's rss, are not the container's doing). The limit applies to ``private``."""
        rss = private = 0
        for proc in self._processes(container_id):
            with contextlib.suppress(psutil.Error):
                info = proc.memory_info()
                rss += info.rss
                private += info.rss - getattr(info, "shared", 0)
        self._peak[container_id] = max(self._peak.get(container_id, 0), private)
        return rss, private

    def _look(self, container_id: str) -> Limitation | None:
        limit = self._limit.get(container_id)
        if limit is None:
            return None
        _rss, private = self._memory(container_id)
        if private <= limit:
            return None
        limitation = Limitation(
            Reason.REASON_CONTAINER_LIMITATION_MEMORY,
            f"Memory limit exceeded: Requested: {limit // _MB}MB "
            f"Maximum Used: {self._peak.get(container_id, private) // _MB}MB",
            f"mem:{limit // _MB}",
        )
        self.limit(container_id, limitation)
        return limitation

    async def usage(self, container_id: str) -> dict[str, float]:
        rss, private = self._memory(container_id)
        out: dict[str, float] = {"mem_rss_bytes": rss, "mem_anon_bytes": private}
        if container_id in self._limit:
            out["mem_limit_bytes"] = self._limit[container_id]
        return out

    def cleanup(self, container_id: str) -> None:
        self._limit.pop(container_id, None)
        self._peak.pop(container_id, None)
        super().cleanup(container_id)
        if not self._limit and self._timer is not None:
            self._timer.cancel()
            self._timer = None
