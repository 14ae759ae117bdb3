"""Helpers for the isolation tests: skip where cgroups cannot be used, and a cgroup root that is
unique to one test and is always removed (with anything left in it), pass or fail."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from libproc import Runtime
from mesa.isolators import cgroupfs
from mesa.isolators.base import Isolator
from mesa.isolators.cgroupfs import Mounts
from mesa.isolators.cgroups import SPARE_PREFIX


def need_cgroups(*classes: type) -> Mounts:
    """The machine's mounts, or skip (with the reason) when any of ``classes`` (cgroups
    isolator classes) cannot work here."""
    mounts = cgroupfs.mounts()
    for cls in classes:
        version, why = cls.choose(mounts)  # type: ignore[attr-defined]
        if version is None:
            pytest.skip(f"{cls.name} unavailable: {why}")  # type: ignore[attr-defined]
    return mounts


def unified_tree() -> Path:
    """The cgroup2 mount, or skip: for the tests that drive v2 files on the real kernel."""
    mounts = cgroupfs.mounts()
    if mounts.v2 is None or not mounts.v2_writable:
        pytest.skip("no writable cgroup2 tree is mounted")
    if not (mounts.v2 / "cgroup.procs").exists():
        pytest.skip(f"{mounts.v2} does not look like a cgroup2 tree")
    return mounts.v2


@contextlib.contextmanager
def unique_root(mounts: Mounts | None = None, required: bool = True) -> Iterator[str]:
    """``mesa/test-<random>``: made in every hierarchy that can take it (skip if none can and
    ``required``), purged — processes killed, cgroups removed — at the end."""
    mounts = mounts if mounts is not None else cgroupfs.mounts()
    root = f"mesa/test-{uuid.uuid4().hex[:12]}"
    try:
        made = 0
        for point in [*mounts.v1.values(), *([mounts.v2] if mounts.v2 else [])]:
            try:
                cgroupfs.make_dirs(point / root)
                made += 1
            except OSError:
                continue
        if made == 0 and required:
            pytest.skip("cannot create cgroups here (no writable hierarchy)")
        yield root
    finally:
        left = cgroupfs.purge(root, mounts)
        assert not left, f"cgroups left behind: {left}"


def leftover_cgroups(root: str, mounts: Mounts | None = None) -> list[Path]:
    """What containers left under ``<hierarchy>/<root>``: every directory there (the root
    itself excluded) but the empty spares an agent keeps for its next containers."""
    mounts = mounts if mounts is not None else cgroupfs.mounts()
    out: list[Path] = []
    for point in {*mounts.v1.values(), *([mounts.v2] if mounts.v2 else [])}:
        top = point / root
        if top.is_dir():
            out.extend(
                Path(d) for d, _, _ in os.walk(top) if Path(d) != top and not _empty_spare(Path(d))
            )
    return out


def _empty_spare(path: Path) -> bool:
    if not path.name.startswith(SPARE_PREFIX):
        return False
    try:
        return (path / "cgroup.procs").read_text() == ""
    except FileNotFoundError:
        return True  # (taken or removed since the walk)


class Bed:
    """A runtime hosting isolators, called as the containerizer calls them (by dispatch)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def add(self, isolator: Isolator) -> Any:
        self.rt.spawn(isolator)
        return isolator

    async def call(self, isolator: Isolator, method: str, *args: Any) -> Any:
        return await self.rt.dispatch(isolator.pid, getattr(isolator, method), *args)


@contextlib.asynccontextmanager
async def isolator_bed() -> AsyncIterator[Bed]:
    """A :class:`Bed` on a runtime of its own, stopped (with its isolators) on the way out."""
    rt = await Runtime("127.0.0.1", 0).start()
    try:
        yield Bed(rt)
    finally:
        await rt.stop()
