"""What an agent offers: the machine's resources, detected, or as the operator says.

Mesos's rules, kept so an operator moving from Mesos sees the same totals: all CPUs; memory minus
a reserve for the OS and the agent itself (1 GB, or half of a machine smaller than 2 GB); the
disk of the work directory's filesystem minus a reserve (5 GB, or half of a disk smaller than
10 GB); ports 31000-32000. A resource string given by the operator wins for the names it mentions
and detection fills in the rest, so ``--resources=cpus:2`` still offers the machine's memory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psutil

from mesa.resources import Resources

__all__ = [
    "DEFAULT_PORTS",
    "detect_resources",
    "disk_mb",
    "memory_mb",
    "resolve_resources",
]

DEFAULT_PORTS = "[31000-32000]"
_MB = 1024 * 1024
_MEM_RESERVE_MB = 1024
_DISK_RESERVE_MB = 5 * 1024
_DETECTED = ("cpus", "mem", "disk", "ports")


def memory_mb(total_bytes: int | None = None) -> int:
    """Total RAM in MB minus the reserve: ``total - min(1 GB, total / 2)``."""
    total = (psutil.virtual_memory().total if total_bytes is None else total_bytes) // _MB
    return int(total - min(_MEM_RESERVE_MB, total / 2))


def disk_mb(path: str | Path, total_bytes: int | None = None) -> int:
    """Size in MB of the filesystem holding ``path`` minus ``min(5 GB, size / 2)``."""
    if total_bytes is None:
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent  # the work dir may not exist yet
        total_bytes = shutil.disk_usage(probe).total
    total = total_bytes // _MB
    return int(total - min(_DISK_RESERVE_MB, total / 2))


def detect_resources(work_dir: str | Path) -> Resources:
    """This machine's cpus, mem, disk (of ``work_dir``) and the default port range."""
    cpus = os.cpu_count() or 1
    return Resources.parse(
        f"cpus:{cpus};mem:{memory_mb()};disk:{disk_mb(work_dir)};ports:{DEFAULT_PORTS}"
    )


def resolve_resources(text: str | None, work_dir: str | Path) -> Resources:
    """The operator's ``text`` (may be None or partial) completed with detected values.

    Raises :class:`~mesa.resources.ResourceError` for a string that does not parse.
    """
    given = Resources.parse(text) if text and text.strip() else Resources.empty()
    names = given.names()
    missing = [name for name in _DETECTED if name not in names]
    if not missing:
        return given
    detected = detect_resources(work_dir)
    fill = Resources.sum(detected.filter(name=name) for name in missing)
    return given + fill
