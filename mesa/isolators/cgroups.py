"""Linux cgroups isolators: ``cgroups/cpu``, ``cgroups/mem``, ``cgroups/pids``, ``cgroups/freezer``.

Each container gets one cgroup per hierarchy an isolator uses, at
``<hierarchy>/<cgroups_root>/<container_id>`` (v1: ``/sys/fs/cgroup/memory/mesa/agent-…/<id>``;
v2: ``<unified>/mesa/agent-…/<id>``, one directory shared by every controller). The executor is
in its freezer, memory and pids cgroups before it runs (born in them on v1, placed behind a gate
otherwise: those isolators are ``gated``), so everything it and its tasks ever fork is inside,
including processes that double-fork out of the session and the process tree. It is born in
its cpu cgroups too, except under a CFS quota, where it joins them as it starts (see
:class:`CgroupsCpuIsolator` for why).

The version is chosen per isolator from what the machine mounts: v1 where the controller has its
own hierarchy (that is where the kernel put it), else v2 where the unified root offers the
controller. :meth:`CgroupsIsolator.choose` says which and why; the agent logs it.

* ``cgroups/cpu``: ``cpu.shares`` = 1024 per cpu (v2: the matching ``cpu.weight``), and with
  ``cgroups_enable_cfs`` a hard CFS quota of ``cpus`` * period (v2: ``cpu.max``). Usage from
  ``cpuacct`` (v2: ``cpu.stat``).
* ``cgroups/mem``: hard limit ``mem`` (``memory.limit_in_bytes`` / ``memory.max``), raised when
  tasks arrive but never lowered under a running container (that could OOM it, as Mesos notes).
  Out of memory ends the container with ``REASON_CONTAINER_LIMITATION_MEMORY``. On v1 the
  kernel's OOM killer is disabled for the cgroup (``memory.oom_control``): the container stalls at
  its limit, the isolator sees it (an eventfd on ``oom_control``, registered for each container
  that lives through one poll, else the poll itself), and the containerizer destroys it, so no
  process dies first and sends a misleading "killed by signal 9". Swap is limited too
  (``memsw``, v2 ``memory.swap.max``) when the machine has any. On v2 there is no such
  switch; ``memory.oom.group`` makes the kernel kill the whole container at once, and
  ``memory.events`` tells why it died.
* ``cgroups/pids``: ``pids.max`` (a ``pids`` resource, else ``cgroups_max_pids``): a fork bomb
  hits the ceiling and stays there.
* ``cgroups/freezer``: no limit; makes destroy airtight. v1: freeze the cgroup, SIGKILL every
  process, thaw (a frozen fork bomb cannot fork faster than it is killed). v2: ``cgroup.kill``.
  The resolver adds it when another cgroups isolator is in use but ``cgroups/pids`` is not:
  ``cgroups/pids`` makes destroy airtight itself (``pids.max`` 0, then SIGKILL).

**Spare cgroups (v1).** ``mkdir`` and ``rmdir`` of a cgroup are the dearest part of a short
container: the kernel allocates and later frees (after an RCU grace period, on its workqueues)
per-CPU state in every hierarchy, and a memory cgroup lingers as a "dying" one while page cache
is charged to it. So a container's cgroups, once empty, are renamed ``spare-<n>`` (a ``rename``
within the parent, which v1 allows) and the next container's are renamed from a spare, up to
``cgroups_spares`` kept per isolator. A spare is handed over as good as new: the limits are
written as for a new cgroup and the counters reported as usage are zeroed (``cpuacct.usage``,
``memory.max_usage_in_bytes``, ``memory.failcnt``). A cgroup whose counters cannot be zeroed
is removed instead of kept: one that refused a fork (``pids.events``), was under a CFS quota
(``cpu.stat``), saw an OOM kill (``oom_control``: a machine-wide one counts there too), had its
soft limit changed, or is charged more than ``SPARE_MAX_CHARGE``; so is one that still has a
member or a child cgroup (which rmdir would refuse and rename would hand over), and one this
isolator did not make (an earlier agent's, met in ``recover``: its settings are not known). A
container without ``cpus`` or ``mem`` gets the kernel's defaults written, as a new cgroup has
them. A limit is written only where the spare does not have it already
(its objects remember what they wrote: ``set``), so a container of the same size as the last
costs no write. v2 renames no cgroup, so there every container's cgroups are made and removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from libproc import Timer
from mesa.isolators import cgroupfs
from mesa.isolators.base import (
    MIN_CPUS,
    MIN_MEMORY_BYTES,
    ContainerConfig,
    IsolationOptions,
    Isolator,
    LaunchInfo,
    Limitation,
    MaybeAwaitable,
    settled,
)
from mesa.isolators.cgroupfs import Mounts, V1Cgroup, V2Cgroup
from mesa.resources import Resources
from mesa.task_state import Reason

__all__ = [
    "CgroupsCpuIsolator",
    "CgroupsFreezerIsolator",
    "CgroupsIsolator",
    "CgroupsMemIsolator",
    "CgroupsPidsIsolator",
]

_MB = 1024 * 1024
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_FREEZE_WAIT = 0.1  # how long to wait for FROZEN before killing anyway (a task stalled
# in an OOM wait may never freeze; SIGKILL reaches it regardless)
SPARE_PREFIX = "spare-"  # a kept cgroup's name until the next container takes it (container ids
# are UUIDs, so no container is ever called this)
SPARE_MAX_CHARGE = 1 << 20  # memory a kept memory cgroup may still be charged with: the slab
# and page cache an exited command leaves (a few hundred KiB for ``true``), which the next
# container's limit reclaims like its own; more (a tmpfs file it wrote, say) and it is removed


class _Groups(NamedTuple):
    """One container's cgroup objects in one isolator."""

    v1: dict[str, V1Cgroup]  # per subsystem (v1); empty on v2
    distinct: list[V1Cgroup | V2Cgroup]  # one per directory: what mkdir, procs and rmdir use
    v2: V2Cgroup | None  # the unified cgroup (v2)


class CgroupsIsolator(Isolator):
    """Shared machinery: a cgroup per container in each hierarchy this isolator uses.

    ``mounts`` and ``version`` are for tests (a fake tree, or forcing v2); by default they are
    read from ``/proc/self/mountinfo`` and chosen by :meth:`choose`.
    """

    gated = True
    tracks_processes = True  # the kernel lists every member, wherever it went
    v1_subsystems: ClassVar[tuple[str, ...]] = ()
    v2_controllers: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        options: IsolationOptions | None = None,
        *,
        mounts: Mounts | None = None,
        version: int | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(options, id=id)
        self.mounts = mounts if mounts is not None else cgroupfs.mounts()
        # Each held container's cgroup objects, from prepare (or recover, for an orphan) to
        # cleanup: hooks run several times per container and would otherwise rebuild them.
        self._groups: dict[str, _Groups] = {}
        self._bases: dict[str, str] | None = None
        # Each base held open (see cgroupfs.Parent), once it exists; closed at teardown.
        self._parents: dict[str, cgroupfs.Parent] = {}
        # The kept cgroups (see "Spare cgroups" above): each one's name and its objects, which
        # follow it to the next container and remember the limits written there.
        self._spares: list[tuple[str, _Groups]] = []
        self._spare_names = itertools.count(1)
        # The containers whose cgroups this isolator made or handed over, and so knows every
        # setting of: only those may become spares (not an earlier agent's, met in recover).
        self._made: set[str] = set()
        if version is None:
            version, why = self.choose(self.mounts)
            if version is None:
                raise ValueError(f"{self.name} is not available here: {why}")
            self.why = why
        else:
            self.why = f"cgroups v{version} (forced)"
        self.version = version

    def initialize(self) -> None:
        # What an operator asks of spares: how many are kept now (and, counted as they happen,
        # cgroups_reused).
        self.metrics.gauge(f"isolator/{self.name}/cgroups_spare", lambda: len(self._spares))

    # ------------------------------------------------------------------ choosing v1 or v2

    @classmethod
    def choose(cls, mounts: Mounts) -> tuple[int | None, str]:
        """``(1 or 2, why)``, or ``(None, why not)``, for this machine's mounts."""
        subsystems = cls.v1_subsystems
        on_v1 = [s for s in subsystems if s in mounts.v1]
        if subsystems and len(on_v1) == len(subsystems):
            read_only = [s for s in subsystems if s not in mounts.v1_writable]
            where = ", ".join(f"{s} at {mounts.v1[s]}" for s in subsystems)
            if read_only:
                return None, f"the v1 hierarchy of {', '.join(read_only)} is not writable"
            try:
                import cgroupspy  # noqa: F401
            except ImportError:
                return None, "cgroups v1 needs the cgroupspy package (pip install cgroupspy)"
            return 1, f"cgroups v1 ({where})"
        if on_v1:
            return None, (
                f"{', '.join(on_v1)} mounted as v1 but "
                f"{', '.join(s for s in subsystems if s not in on_v1)} not"
            )
        if mounts.v2 is None:
            return None, "no cgroup hierarchy is mounted for " + (
                ", ".join(subsystems) or "the freezer"
            )
        offered = mounts.v2_controllers()
        missing = [c for c in cls.v2_controllers if c not in offered]
        if missing:
            return None, (
                f"the cgroup2 tree at {mounts.v2} does not offer {', '.join(missing)} "
                f"(its cgroup.controllers lists: {' '.join(sorted(offered)) or 'nothing'})"
            )
        if not mounts.v2_writable:
            return None, f"the cgroup2 tree at {mounts.v2} is not writable"
        return 2, f"cgroups v2 at {mounts.v2}"

    @classmethod
    def unavailable(cls, options: IsolationOptions) -> str | None:
        version, why = cls.choose(cgroupfs.mounts())
        return None if version is not None else why

    # ------------------------------------------------------------------ paths

    def _roots(self) -> list[tuple[Path, Path]]:
        """``(mount, root)`` for each distinct hierarchy."""
        rel = self.options.root
        if self.version == 2:
            assert self.mounts.v2 is not None
            return [(self.mounts.v2, self.mounts.v2 / rel)]
        seen: dict[Path, Path] = {}
        for s in self.v1_subsystems:
            mount = self.mounts.v1[s]
            seen.setdefault(mount, mount / rel)
        return list(seen.items())

    def _groups_of(self, container_id: str) -> _Groups:
        """The container's cgroup objects: cached while the isolator holds the container
        (``_known``, from ``_run_prepare`` or ``recover`` until ``cleanup``), built afresh for
        any other id so that a late or stray call cannot leave an entry behind."""
        groups = self._groups.get(container_id)
        if groups is None:
            groups = self._build(container_id)
            if container_id in self._known:
                self._groups[container_id] = groups
        return groups

    def _build(self, container_id: str) -> _Groups:
        bases = self._base_paths()
        if self.version == 2:
            base = bases[""]
            cg = V2Cgroup(base + container_id, self._parent(base))
            return _Groups({}, [cg], cg)
        v1: dict[str, V1Cgroup] = {}
        distinct: dict[str, V1Cgroup] = {}  # by hierarchy: co-mounted subsystems share one
        for s, base in bases.items():
            v1[s] = group = V1Cgroup(s, base + container_id, self._parent(base))
            distinct.setdefault(base, group)
        return _Groups(v1, list(distinct.values()), None)

    def _parent(self, base: str) -> cgroupfs.Parent | None:
        """The base directory held open, once it exists (``recover`` makes it); before, None:
        cgroups are then reached by their whole paths."""
        parent = self._parents.get(base)
        if parent is None or parent.fd is None:  # (closed: its root went away; see Parent)
            try:
                parent = self._parents[base] = cgroupfs.Parent(base)
            except OSError:
                return None
        return parent

    def _base_at(self, base: str) -> tuple[str, int | None]:
        """``(prefix, dir_fd)`` to reach a cgroup under ``base`` by ``prefix + name``."""
        parent = self._parent(base)  # (open, when not None)
        return ("", parent.fd) if parent is not None else (base, None)

    def _base_paths(self) -> dict[str, str]:
        if self._bases is None:
            # ``<mount>/<root>/`` per subsystem (v2: under "") as strings, made once: the
            # container paths are then one concatenation each.
            rel = self.options.root
            if self.version == 2:
                assert self.mounts.v2 is not None
                self._bases = {"": os.path.join(self.mounts.v2, rel, "")}
            else:
                self._bases = {
                    s: os.path.join(self.mounts.v1[s], rel, "") for s in self.v1_subsystems
                }
        return self._bases

    def _v1(self, container_id: str) -> dict[str, V1Cgroup]:
        """Per v1 subsystem (co-mounted ones get one object each, on the same directory, so
        each keeps its typed cgroupspy controller)."""
        return self._groups_of(container_id).v1

    def _v2(self, container_id: str) -> V2Cgroup:
        cg = self._groups_of(container_id).v2
        assert cg is not None
        return cg

    def _distinct(self, container_id: str) -> list[V1Cgroup | V2Cgroup]:
        """One object per directory (co-mounted v1 controllers share one)."""
        return self._groups_of(container_id).distinct

    def cgroup_paths(self, container_id: str) -> list[Path]:
        """Where this container's cgroups are (for operators and tests)."""
        return [cg.path for cg in self._distinct(container_id)]

    # ------------------------------------------------------------------ lifecycle

    async def recover(self, live: set[str]) -> None:
        """Make the agent's root; kill and remove every container cgroup under it that is not
        ``live`` (left by an agent that died without cleaning up)."""
        for mount, root in self._roots():
            cgroupfs.make_dirs(root)
            if self.version == 2 and self.v2_controllers:
                # Enabling in the root's own subtree_control gives container cgroups the files.
                V2Cgroup(root / "_").enable(list(self.v2_controllers), mount)
        orphans: set[str] = set()
        for _mount, root in self._roots():
            with contextlib.suppress(OSError):
                orphans.update(p.name for p in root.iterdir() if p.is_dir())
        orphans -= live
        orphans -= self._known
        for name in sorted(n for n in orphans if n.startswith(SPARE_PREFIX)):
            # A spare the last agent kept: removed, unless something moved into it since (then
            # it is swept as any orphan is).
            if self._remove_spare(name):
                orphans.discard(name)
        for container_id in sorted(orphans):
            self._known.add(container_id)
            await settled(self.kill(container_id))
            if not await self._wait_empty(container_id, self.options.kill_wait):
                self.log.warning("orphan_not_empty", container_id=container_id)
            await settled(self._run_cleanup(container_id))
            self.metrics.inc(f"isolator/{self.name}/orphans_removed")
        if orphans:
            self.log.info("orphan_cgroups_removed", count=len(orphans), root=self.options.root)

    def prepare(self, container_id: str, config: ContainerConfig) -> LaunchInfo | None:
        self._make(container_id)
        self._apply(container_id, config.resources, initial=True)
        return self._birthplace(container_id)

    def _make(self, container_id: str) -> None:
        """The container's cgroups: a spare renamed to it when one is kept, else new ones."""
        self._made.add(container_id)
        while self._spares:
            spare, groups = self._spares.pop()
            if self._rename(spare, container_id, groups):
                if container_id in self._known:
                    self._groups[container_id] = groups
                self._renew(container_id)
                self.metrics.inc(f"isolator/{self.name}/cgroups_reused")
                return
            if any(os.path.lexists(b + container_id) for b in self._base_paths().values()):
                # The name is taken (a cgroup an earlier removal left): not the spare's fault.
                self._spares.append((spare, groups))
                break
            self._remove_spare(spare)
        for cg in self._distinct(container_id):
            cg.create()

    def _birthplace(self, container_id: str) -> LaunchInfo | None:
        """v1: the cgroups the executor can be started in (see :class:`LaunchInfo`); v2 has no
        such thing for one thread of the starter, so the executor is gated and placed."""
        if self.version != 1:
            return None
        return LaunchInfo(cgroups=[cg.dir for cg in self._distinct(container_id)])

    def isolate(self, container_id: str, pid: int) -> None:
        for cg in self._distinct(container_id):
            cg.add(pid)

    def update(self, container_id: str, resources: Resources) -> None:
        self._apply(container_id, resources, initial=False)

    def pids(self, container_id: str) -> set[int]:
        out: set[int] = set()
        for cg in self._distinct(container_id):
            out.update(cg.procs())
        return out

    def kill(self, container_id: str) -> MaybeAwaitable[None]:
        # No existence check: a cgroup that is gone has no files, and both kills then do nothing.
        for cg in self._distinct(container_id):
            if isinstance(cg, V2Cgroup):
                cg.kill()
            else:
                cg.sweep()
        return None

    def cleanup(self, container_id: str) -> MaybeAwaitable[None]:
        """Remove the container's cgroups, once they are empty (killing stragglers meanwhile):
        at once when they are, as they nearly always are; else a coroutine that waits."""
        kept = self._keep_as_spare(container_id)
        self._made.discard(container_id)
        if kept:
            self._groups.pop(container_id, None)
            return None
        # Usually the containerizer has already seen the container empty: try rmdir first,
        # which the kernel refuses (EBUSY) while a process is inside, so reading cgroup.procs
        # beforehand would only confirm what it checks anyway.
        busy: list[V1Cgroup | V2Cgroup] = []
        try:
            for cg in self._distinct(container_id):
                try:
                    cg.remove()
                except OSError:
                    busy.append(cg)
        except BaseException:
            self._groups.pop(container_id, None)
            raise
        if not busy:
            self._groups.pop(container_id, None)
            return None
        return self._remove_busy(container_id, busy)

    async def _remove_busy(self, container_id: str, busy: list[V1Cgroup | V2Cgroup]) -> None:
        """The slow path of cleanup: kill what is left, wait until the kernel lets go, rmdir."""
        try:
            if not await self._wait_empty(container_id, self.options.kill_wait):
                left = sorted(self.pids(container_id))
                self.log.warning("cgroup_not_empty", container_id=container_id, pids=left)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.options.kill_wait
            for cg in busy:
                while True:
                    try:
                        cg.remove()
                        break
                    except OSError as e:
                        # EBUSY: the kernel has not let go of the last exited member yet.
                        if e.errno != errno.EBUSY or loop.time() > deadline:
                            self.log.warning(
                                "cgroup_remove_failed", path=str(cg.path), error=repr(e)
                            )
                            break
                        await asyncio.sleep(0.01)
        finally:
            self._groups.pop(container_id, None)

    async def teardown(self) -> None:
        self._groups.clear()
        while self._spares:
            self._remove_spare(self._spares.pop()[0])
        for parent in self._parents.values():
            parent.close()
        self._parents.clear()
        for mount, root in self._roots():
            cgroupfs.remove_tree_upwards(root, mount)

    def _apply(self, container_id: str, resources: Resources, initial: bool) -> None:
        """Write the limits ``resources`` imply. Subclasses override."""
        return None

    # ------------------------------------------------------------------ spares

    def _keep_as_spare(self, container_id: str) -> bool:
        """Rename the ended container's cgroups to a spare name, if they can be handed to the
        next container as good as new; False leaves them, under the container's name, to be
        removed."""
        if (
            self.version != 1
            or len(self._spares) >= self.options.cgroups_spares
            or container_id not in self._made
        ):
            return False
        try:
            # rmdir would refuse a cgroup with a member or a child cgroup (a member may make
            # one); rename would not, and would hand them to the next container. So look, in
            # every hierarchy: a member may have moved itself out of the one the containerizer
            # asked. (A cgroup directory's link count is 2 plus its subdirectories.)
            for cg in self._distinct(container_id):
                if cg.subdirs() or cg.procs():
                    return False
            if not self._reusable(container_id):
                return False
        except (OSError, ValueError):
            return False
        spare = f"{SPARE_PREFIX}{next(self._spare_names)}"
        groups = self._groups_of(container_id)
        if not self._rename(container_id, spare, groups):
            return False
        self._spares.append((spare, groups))
        return True

    def _rename(self, old: str, new: str, groups: _Groups) -> bool:
        """Rename cgroup ``old`` to ``new`` in each of this isolator's hierarchies, and its
        objects with it; all or none (one that failed undoes the others, as far as the kernel
        lets it)."""
        bases = self._base_paths()
        done: list[tuple[str, int | None]] = []
        for base in dict.fromkeys(bases.values()):
            prefix, fd = self._base_at(base)
            try:
                os.rename(prefix + old, prefix + new, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError as e:
                self.log.warning("cgroup_rename_failed", path=base + old, to=new, error=repr(e))
                for undo, undo_fd in reversed(done):
                    with contextlib.suppress(OSError):
                        os.rename(undo + new, undo + old, src_dir_fd=undo_fd, dst_dir_fd=undo_fd)
                return False
            done.append((prefix, fd))
        for subsystem, cg in groups.v1.items():
            cg.moved_to(bases[subsystem] + new, new)
        return True

    def _remove_spare(self, name: str) -> bool:
        """rmdir a spare in every hierarchy; whether none is left."""
        gone = True
        for base in dict.fromkeys(self._base_paths().values()):
            prefix, fd = self._base_at(base)
            try:
                os.rmdir(prefix + name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as e:
                self.log.warning("spare_cgroup_remove_failed", path=base + name, error=repr(e))
                gone = False
        return gone

    def _reusable(self, container_id: str) -> bool:
        """Whether the ended container's cgroups can be zeroed for another (they are empty).
        Subclasses say no where a counter the kernel never resets is not zero."""
        return True

    def _renew(self, container_id: str) -> None:
        """Zero the counters a spare's last container left, now that it is ``container_id``'s
        (before its limits are written)."""
        return None


# ====================================================================== cgroups/cpu


def cpu_shares(cpus: float) -> int:
    """1024 per cpu, as Mesos; the kernel's floor is 2."""
    return max(2, int(1024 * cpus))


def cpu_weight(shares: int) -> int:
    """cgroup v1 shares [2, 262144] → v2 weight [1, 10000] (the kernel's and runc's mapping)."""
    return max(1, min(10000, 1 + ((shares - 2) * 9999) // 262142))


class CgroupsCpuIsolator(CgroupsIsolator):
    """Not gated. Without a CFS quota (the default) the executor is born in its cpu cgroups, as
    in the others: the starter's few microseconds inside them run on the container's shares,
    which only weigh under contention. With a quota it is not: a small quota would throttle the
    starter for the rest of the period, every launch behind it waiting. The executor then joins
    its cpu cgroups as soon as it has started (``isolate``): something it forked in its first
    microseconds could run on the agent's cpu cgroup, never outside the container (its memory
    and pids cgroups hold it from birth)."""

    reports_limits = False  # shares and quotas throttle; they never end a container
    gated = False
    name = "cgroups/cpu"
    v1_subsystems = ("cpu", "cpuacct")
    v2_controllers = ("cpu",)

    def _birthplace(self, container_id: str) -> LaunchInfo | None:
        if self.options.cgroups_enable_cfs:
            return None
        return super()._birthplace(container_id)

    def isolate(self, container_id: str, pid: int) -> None:
        try:
            super().isolate(container_id, pid)
        except ProcessLookupError:
            return  # (ungated: a short command may be over already; nothing to place)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._cpus: dict[str, float] = {}
        self._split_usage: bool | None = None  # whether cpuacct has usage_user and usage_sys

    def _apply(self, container_id: str, resources: Resources, initial: bool) -> None:
        if "cpus" not in resources.names():
            if initial and self.version == 1:
                # The kernel's default, as a new cgroup has it (a spare may hold another).
                self._v1(container_id)["cpu"].set("cpu.shares", 1024)
            return
        cpus = max(MIN_CPUS, resources.scalar("cpus"))
        self._cpus[container_id] = cpus
        shares = cpu_shares(cpus)
        period = self.options.cgroups_cfs_period_us
        quota = max(1000, int(period * cpus))
        if self.version == 1:
            cpu = self._v1(container_id)["cpu"]
            cpu.set("cpu.shares", shares)
            if self.options.cgroups_enable_cfs:
                cpu.set("cpu.cfs_period_us", period)
                cpu.set("cpu.cfs_quota_us", quota)
        else:
            cg = self._v2(container_id)
            cg.write("cpu.weight", cpu_weight(shares))
            if self.options.cgroups_enable_cfs:
                cg.write("cpu.max", f"{quota} {period}")
            else:
                cg.write("cpu.max", f"max {period}")
        self.log.debug("cpu_limits", container_id=container_id, cpus=cpus, shares=shares)

    def _reusable(self, container_id: str) -> bool:
        # v1's cpu.stat (CFS periods, throttling) cannot be zeroed; without a quota it stays 0.
        # Before Linux 4.7 there is no cpuacct.usage_user to read usage from (see usage).
        if self.options.cgroups_enable_cfs:
            return False
        if self._split_usage is None:
            self._split_usage = os.path.exists(
                self._v1(container_id)["cpuacct"].file("cpuacct.usage_user")
            )
        return self._split_usage

    def _renew(self, container_id: str) -> None:
        # Zeroes cpuacct.usage and its per-CPU, user and system parts. (Not cpuacct.stat, which
        # never goes below what it last showed: usage splits the total by the _user and _sys
        # files instead.)
        self._v1(container_id)["cpuacct"].write("cpuacct.usage", 0)

    async def usage(self, container_id: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if container_id in self._cpus:
            out["cpus_limit"] = self._cpus[container_id]
        with contextlib.suppress(OSError, ValueError):
            if self.version == 1:
                groups = self._v1(container_id)
                acct = groups["cpuacct"]
                total = int(acct.read("cpuacct.usage"))
                out["cpus_time_secs"] = total / 1e9
                try:
                    # The user/system split is sampled at ticks, the total is exact: split the
                    # total in the sampled proportion, as the kernel's cpuacct.stat does (which
                    # cannot be read here: it never goes below what it last showed, and a
                    # spare's was its last container's).
                    user = int(acct.read("cpuacct.usage_user"))
                    system = int(acct.read("cpuacct.usage_sys"))
                    user_ns = total * user // (user + system) if system else total
                    out["cpus_user_time_secs"] = user_ns / 1e9
                    out["cpus_system_time_secs"] = (total - user_ns) / 1e9
                except FileNotFoundError:  # (kernels before 4.7: never a spare, see _reusable)
                    ticks = acct.controller.acct_stat
                    out["cpus_user_time_secs"] = ticks.get("user", 0) / _CLK_TCK
                    out["cpus_system_time_secs"] = ticks.get("system", 0) / _CLK_TCK
                stat = groups["cpu"].controller.stat
                out["cpus_nr_periods"] = stat.get("nr_periods", 0)
                out["cpus_nr_throttled"] = stat.get("nr_throttled", 0)
                out["cpus_throttled_time_secs"] = stat.get("throttled_time", 0) / 1e9
            else:
                stat = self._v2(container_id).read_keyed("cpu.stat")
                out["cpus_user_time_secs"] = stat.get("user_usec", 0) / 1e6
                out["cpus_system_time_secs"] = stat.get("system_usec", 0) / 1e6
                out["cpus_time_secs"] = stat.get("usage_usec", 0) / 1e6
                out["cpus_nr_periods"] = stat.get("nr_periods", 0)
                out["cpus_nr_throttled"] = stat.get("nr_throttled", 0)
                out["cpus_throttled_time_secs"] = stat.get("throttled_usec", 0) / 1e6
        return out

    def cleanup(self, container_id: str) -> MaybeAwaitable[None]:
        self._cpus.pop(container_id, None)
        return super().cleanup(container_id)


# ====================================================================== cgroups/mem


class CgroupsMemIsolator(CgroupsIsolator):
    name = "cgroups/mem"
    v1_subsystems = ("memory",)
    v2_controllers = ("memory",)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._limit: dict[str, int] = {}
        # container -> (eventfd, oom_control fd); None: tried once, the kernel would not (the
        # poller keeps looking at it, and does not try again every round).
        self._eventfds: dict[str, tuple[int, int] | None] = {}
        self._timer: Timer | None = None
        # Whether the kernel accounts swap (v1 memory.memsw.*, v2 memory.swap.max): the same
        # for every cgroup of the hierarchy, so looked up once, in the first container.
        self._swap: bool | None = None
        # Whether the machine has swap at all (/proc/swaps), refreshed by the poller.
        self._swap_on: bool | None = None
        self._memsw_set = False  # whether any cgroup of ours got a memory+swap limit (v1)
        self._softened: set[str] = set()  # containers whose soft limit an update set (v1)

    def _memory(self, container_id: str) -> Any:
        """cgroupspy's typed memory controller (statistics)."""
        return self._v1(container_id)["memory"].controller

    def _has_swap(self, cg: V1Cgroup | V2Cgroup) -> bool:
        if self._swap is None:
            name = "memory.memsw.limit_in_bytes" if self.version == 1 else "memory.swap.max"
            self._swap = os.path.exists(cg.file(name))
        return self._swap

    def _limits_swap(self, cg: V1Cgroup | V2Cgroup) -> bool:
        """Whether a container's swap must be limited too: the kernel accounts it and the
        machine has swap. Without swap, memory+swap is memory and the write would repeat the
        limit (a syscall per container); if swap is turned on later, the poller limits every
        held container then (:meth:`_refresh_swap`)."""
        if self._swap_on is None:
            self._swap_on = _swap_present()
        return self._swap_on and self._has_swap(cg)

    def _refresh_swap(self) -> None:
        was, self._swap_on = self._swap_on, _swap_present()
        if was is False and self._swap_on:
            self.log.info("swap_appeared", containers=len(self._limit))
            for container_id, limit in list(self._limit.items()):
                with contextlib.suppress(OSError):
                    if self.version == 1:
                        memory = self._v1(container_id)["memory"]
                        if self._has_swap(memory):
                            memory.write("memory.memsw.limit_in_bytes", limit)
                            self._memsw_set = True
                    else:
                        cg = self._v2(container_id)
                        if self._has_swap(cg):
                            cg.write("memory.swap.max", 0)

    def prepare(self, container_id: str, config: ContainerConfig) -> LaunchInfo | None:
        self._make(container_id)
        if self.version == 1:
            # Stall at the limit instead of killing: we end the container, and say why. (The
            # OOM eventfd is registered by the poller, for containers that live that long.)
            self._v1(container_id)["memory"].set("memory.oom_control", 1)
        else:
            cg = self._v2(container_id)
            cg.write("memory.oom.group", 1)
            if self._limits_swap(cg):
                cg.write("memory.swap.max", 0)  # the limit is hard: no escape into swap
        self._apply(container_id, config.resources, initial=True)
        self._arm_poll()
        return self._birthplace(container_id)

    def _apply(self, container_id: str, resources: Resources, initial: bool) -> None:
        if "mem" not in resources.names():
            if initial and self.version == 1:
                # No limit, as a new cgroup has none (a spare may hold another's). memsw first
                # where it was ever set: it must stay at or above the limit.
                memory = self._v1(container_id)["memory"]
                if self._memsw_set:
                    memory.set("memory.memsw.limit_in_bytes", -1)
                memory.set("memory.limit_in_bytes", -1)
            return
        limit = max(MIN_MEMORY_BYTES, int(resources.scalar("mem") * _MB))
        current = self._limit.get(container_id)
        if not initial and current is not None and limit <= current:
            # Never shrink the hard limit under a running container: it could OOM on the spot.
            if self.version == 1:
                self._v1(container_id)["memory"].write("memory.soft_limit_in_bytes", limit)
                self._softened.add(container_id)
            return
        self._limit[container_id] = limit
        if self.version == 1:
            memory = self._v1(container_id)["memory"]
            memsw = self._limits_swap(memory)
            # memsw must stay >= limit: raise it first when raising, set it last when new.
            if not initial and memsw:
                memory.set("memory.memsw.limit_in_bytes", limit)
            memory.set("memory.limit_in_bytes", limit)
            if not initial:
                # (A new cgroup's soft limit is "none", which under a hard limit of the same
                # size means the same thing: the write would only cost a syscall.)
                memory.write("memory.soft_limit_in_bytes", limit)
                self._softened.add(container_id)
            if initial and memsw:
                memory.set("memory.memsw.limit_in_bytes", limit)
            self._memsw_set |= memsw
        else:
            self._v2(container_id).write("memory.max", limit)
        self.log.debug("memory_limit", container_id=container_id, bytes=limit)

    # ------------------------------------------------------------------ watching

    def _listen_for_oom(self, container_id: str) -> None:
        """v1: the kernel signals an eventfd registered through ``cgroup.event_control`` when
        the cgroup is out of memory (and when it is removed)."""
        cg = self._v1(container_id)["memory"]
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except (AttributeError, OSError) as e:  # pragma: no cover - very old kernels
            self._eventfds[container_id] = None
            self.log.info("oom_eventfd_unavailable", error=repr(e))
            return
        try:
            ofd = os.open(cg.file("memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                cg.write("cgroup.event_control", f"{efd} {ofd}")
            except OSError:
                os.close(ofd)
                raise
        except OSError as e:
            os.close(efd)
            self._eventfds[container_id] = None
            self.log.info("oom_eventfd_unavailable", error=repr(e))
            return
        self._eventfds[container_id] = (efd, ofd)
        asyncio.get_running_loop().add_reader(efd, self._on_eventfd, container_id, efd)

    def _on_eventfd(self, container_id: str, efd: int) -> None:
        with contextlib.suppress(OSError):
            os.eventfd_read(efd)
        self.post(self._look, container_id)

    def _stop_listening(self, container_id: str) -> None:
        fds = self._eventfds.pop(container_id, None)
        if fds is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(fds[0])
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _arm_poll(self) -> None:
        """The safety net behind the eventfd (and the only watcher on v2): look every
        ``poll_interval`` while any container is held."""
        if self._timer is None or not self._timer.pending:
            self._timer = self.delay(self.options.poll_interval, self._poll)

    def _poll(self) -> None:
        self._timer = None
        self._refresh_swap()
        for container_id in list(self._limit.keys() | self._eventfds.keys()):
            if self.version == 1 and container_id not in self._eventfds:
                # A container that lives past one poll gets the eventfd: from then on an OOM
                # wakes the isolator at once. Registering it at prepare cost every container
                # four syscalls and a reader, and most short ones never lived to need it; one
                # that runs out of memory before its first poll is found by this poll.
                self._listen_for_oom(container_id)
            self._look(container_id)
        if self._known:
            self._arm_poll()

    def _look(self, container_id: str) -> None:
        if container_id not in self._known:
            return
        limitation = self._oom(container_id)
        if limitation is not None:
            self.limit(container_id, limitation)

    def check(self, container_id: str) -> MaybeAwaitable[Limitation | None]:
        if container_id in self._known:
            self._look(container_id)
        return super().check(container_id)

    def _oom(self, container_id: str) -> Limitation | None:
        """Out of memory? v1: ``oom_control`` (under_oom, oom_kill), else ``failcnt`` at the
        limit; v2: ``memory.events`` (oom, oom_kill, oom_group_kill)."""
        limit = self._limit.get(container_id)
        try:
            if self.version == 1:
                cg = self._v1(container_id)["memory"]
                hit = False
                try:
                    # Read directly: the poller asks for every held container twice a second.
                    oom = cg.read_keyed("memory.oom_control")
                    hit = bool(oom.get("under_oom") or oom.get("oom_kill"))
                except (OSError, ValueError):
                    memory = cg.controller
                    peak = memory.max_usage_in_bytes or 0
                    hit = bool(memory.failcnt) and limit is not None and peak >= limit - 65536
                if not hit:
                    return None
                peak = cg.controller.max_usage_in_bytes or 0
            else:
                v2 = self._v2(container_id)
                events = v2.read_keyed("memory.events")
                if not (events.get("oom_kill") or events.get("oom_group_kill")):
                    if not events.get("oom"):
                        return None
                try:
                    peak = v2.read_int("memory.peak") or 0
                except OSError:
                    peak = v2.read_int("memory.current") or 0
        except OSError:
            return None
        requested = f"{limit // _MB}MB" if limit else "unknown"
        return Limitation(
            Reason.REASON_CONTAINER_LIMITATION_MEMORY,
            f"Memory limit exceeded: Requested: {requested} Maximum Used: {peak // _MB}MB",
            f"mem:{limit // _MB}" if limit else "",
        )

    async def usage(self, container_id: str) -> dict[str, float]:
        out: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError):
            if self.version == 1:
                memory = self._memory(container_id)
                stat = memory.stat
                out["mem_rss_bytes"] = stat.get("total_rss", stat.get("rss", 0))
                out["mem_cache_bytes"] = stat.get("total_cache", stat.get("cache", 0))
                out["mem_total_bytes"] = memory.usage_in_bytes or 0
                out["mem_max_bytes"] = memory.max_usage_in_bytes or 0
                limit = memory.limit_in_bytes
                if limit is not None and limit < 2**62:
                    out["mem_limit_bytes"] = limit
                soft = memory.soft_limit_in_bytes or 0
                if limit is not None and (not soft or soft > limit):
                    soft = limit  # "none" under a hard limit: the hard limit is what binds
                out["mem_soft_limit_bytes"] = soft
            else:
                cg = self._v2(container_id)
                stat = cg.read_keyed("memory.stat")
                out["mem_rss_bytes"] = stat.get("anon", 0)
                out["mem_cache_bytes"] = stat.get("file", 0)
                out["mem_total_bytes"] = cg.read_int("memory.current") or 0
                limit = cg.read_int("memory.max")
                if limit is not None:
                    out["mem_limit_bytes"] = limit
        return out

    def _reusable(self, container_id: str) -> bool:
        if self.version != 1 or container_id in self._softened:
            return False  # (a soft limit would outlive it, unseen by the next container's limit)
        memory = self._v1(container_id)["memory"]
        # oom_kill counts for good, and check() would see it in every later container. With
        # the cgroup's own OOM killer off it stays 0, but a machine-wide OOM kill of a member
        # counts there too.
        oom = memory.read_keyed("memory.oom_control")
        if oom.get("under_oom") or oom.get("oom_kill"):
            return False
        return int(memory.read("memory.usage_in_bytes")) <= SPARE_MAX_CHARGE

    def _renew(self, container_id: str) -> None:
        memory = self._v1(container_id)["memory"]
        memory.write("memory.max_usage_in_bytes", 0)
        memory.write("memory.failcnt", 0)
        if self._memsw_set:
            # memsw must stay >= the limit, which may now go down or up: out of the way first
            # (_apply sets it again when it limits swap).
            memory.write("memory.memsw.limit_in_bytes", -1)
            memory.write("memory.memsw.max_usage_in_bytes", 0)
            memory.write("memory.memsw.failcnt", 0)

    def cleanup(self, container_id: str) -> MaybeAwaitable[None]:
        self._stop_listening(container_id)
        self._limit.pop(container_id, None)
        try:
            return super().cleanup(container_id)
        finally:
            self._softened.discard(container_id)

    async def teardown(self) -> None:
        for container_id in list(self._eventfds):
            self._stop_listening(container_id)
        if self._timer is not None:
            self._timer.cancel()
        await super().teardown()


def _swap_present(path: str = "/proc/swaps") -> bool:
    """Whether any swap area is on (``/proc/swaps`` lists one after its header)."""
    try:
        return len(cgroupfs.read_file(path).splitlines()) > 1
    except OSError:
        return True  # unknown: limit swap, as if it were there


# ====================================================================== cgroups/pids


class CgroupsPidsIsolator(CgroupsIsolator):
    """A ceiling on processes (and threads): a ``pids`` resource, else ``cgroups_max_pids``."""

    reports_limits = False  # it confines; it never ends a container

    name = "cgroups/pids"
    v1_subsystems = ("pids",)
    v2_controllers = ("pids",)

    def _cgroup(self, container_id: str) -> V1Cgroup | V2Cgroup:
        return self._distinct(container_id)[0]

    async def recover(self, live: set[str]) -> None:
        await super().recover(live)
        if self.version == 1:
            await self._remove_old_freezer_cgroups(live)

    async def _remove_old_freezer_cgroups(self, live: set[str]) -> None:
        """An agent that ran with ``cgroups/freezer`` (the default before this isolator made
        destroy airtight itself) may have left container cgroups in the freezer hierarchy,
        which no isolator visits any more: kill what is in them and remove them, except the
        ``live`` containers' (and those of a freezer isolator that is in use, which cleans its
        own: it knows them)."""
        mount = self.mounts.v1.get("freezer")
        if mount is None or "freezer" not in self.mounts.v1_writable:
            return
        root = mount / self.options.root
        try:
            names = [p.name for p in root.iterdir() if p.is_dir()]
        except OSError:
            return  # (no such root: nothing was left there)
        stale = [n for n in names if n not in live]
        loop = asyncio.get_running_loop()
        for name in sorted(stale):
            deadline = loop.time() + self.options.kill_wait
            while not cgroupfs.kill_and_remove(root / name):
                if loop.time() > deadline:
                    self.log.warning("old_freezer_cgroup_not_removed", path=str(root / name))
                    break
                await asyncio.sleep(0.01)
        if stale:
            self.log.info("old_freezer_cgroups_removed", count=len(stale), root=str(root))
            self.metrics.inc("isolator/cgroups/pids/old_freezer_cgroups_removed", len(stale))

    def kill(self, container_id: str) -> MaybeAwaitable[None]:
        """Destroy is under way: ``pids.max`` 0 first, so no member can fork again, then
        SIGKILL every member. Each sweep then leaves fewer processes than it found (only a
        fork already past its ``pids`` charge can still land), so the containerizer's sweeps
        end with an empty cgroup however hard the container forks: what the freezer is for,
        without a cgroup of its own per container. (v2: ``cgroup.kill``, atomic already.)"""
        if self.version == 1:
            with contextlib.suppress(OSError):  # (gone already: nothing left to stop)
                self._cgroup(container_id).write("pids.max", 0)
        return super().kill(container_id)

    def _apply(self, container_id: str, resources: Resources, initial: bool) -> None:
        if "pids" in resources.names():
            limit: int | None = max(1, int(resources.scalar("pids")))
        else:
            limit = self.options.cgroups_max_pids
        if not initial and limit is None:
            return
        self._cgroup(container_id).set("pids.max", "max" if limit is None else limit)

    def _reusable(self, container_id: str) -> bool:
        # pids.events counts refused forks for good; a spare must show the next container 0.
        events = self._cgroup(container_id).read("pids.events")
        return all(
            key != "max" or value.strip() == "0"
            for key, _, value in (line.partition(" ") for line in events.splitlines())
        )

    async def usage(self, container_id: str) -> dict[str, float]:
        out: dict[str, float] = {}
        cg = self._cgroup(container_id)
        with contextlib.suppress(OSError, ValueError):
            out["processes"] = int(cg.read("pids.current").strip())
            limit = cg.read("pids.max").strip()
            if limit != "max":
                out["pids_limit"] = int(limit)
            for line in cg.read("pids.events").splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    out["pids_fork_failures"] = int(value)
        return out


# ====================================================================== cgroups/freezer


class CgroupsFreezerIsolator(CgroupsIsolator):
    """No limit: destroy through the freezer (v1) or ``cgroup.kill`` (v2), so a container that
    forks as fast as it can is still killed to the last process."""

    reports_limits = False  # it only helps destroy

    name = "cgroups/freezer"
    v1_subsystems = ("freezer",)
    v2_controllers = ()

    def _reusable(self, container_id: str) -> bool:
        return self._v1(container_id)["freezer"].freezer_state() == "THAWED"

    async def kill(self, container_id: str) -> None:
        if self.version == 2:
            await settled(super().kill(container_id))
            return
        cg = self._v1(container_id)["freezer"]
        if not cg.procs():  # empty, or gone (no cgroup.procs to read)
            return
        try:
            cg.freeze()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _FREEZE_WAIT
            while cg.freezer_state() != "FROZEN" and loop.time() < deadline:
                await asyncio.sleep(0.001)
            cg.sweep()
        finally:
            with contextlib.suppress(OSError):
                cg.thaw()
