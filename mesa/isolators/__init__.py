"""Pluggable isolators, and how ``--isolation=a,b,c`` becomes a list of them.

A name is looked up, in order, among the built-in isolators (:data:`BUILTIN`), the entry points
of group ``mesa.isolators`` (so ``pip install``-ing a package is all it takes to add one), and
finally read as ``package.module:Class``. Every isolator is constructed as ``cls(options)`` with
the agent's :class:`~mesa.isolators.base.IsolationOptions`. See ``docs/isolators.md``.

With no ``--isolation``, :func:`default_isolation` picks from what the machine offers: cgroups
where a hierarchy is writable (v1 where the controller is mounted as v1, v2 where the unified
tree offers it), posix otherwise, plus ``disk/du``; it returns its reasons so the agent can log
them. Whenever a cgroups isolator is in use, destroy must be airtight (a fork bomb must not
outrun the kill): ``cgroups/pids`` does that itself, and without it ``cgroups/freezer`` is added
in front.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass, field

from mesa.isolators.base import (
    ContainerConfig,
    IsolationOptions,
    Isolator,
    LaunchInfo,
    Limitation,
)

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "ContainerConfig",
    "Isolation",
    "IsolationOptions",
    "Isolator",
    "LaunchInfo",
    "Limitation",
    "default_isolation",
    "isolator_class",
    "resolve_isolation",
]

ENTRY_POINT_GROUP = "mesa.isolators"

BUILTIN: dict[str, str] = {
    "cgroups/cpu": "mesa.isolators.cgroups:CgroupsCpuIsolator",
    "cgroups/mem": "mesa.isolators.cgroups:CgroupsMemIsolator",
    "cgroups/pids": "mesa.isolators.cgroups:CgroupsPidsIsolator",
    "cgroups/freezer": "mesa.isolators.cgroups:CgroupsFreezerIsolator",
    "posix/cpu": "mesa.isolators.posix:PosixCpuIsolator",
    "posix/mem": "mesa.isolators.posix:PosixMemIsolator",
    "disk/du": "mesa.isolators.disk:DiskDuIsolator",
    "namespaces/pid": "mesa.isolators.namespaces:PidNamespaceIsolator",
}

# Shorthands an operator may write.
ALIASES: dict[str, list[str]] = {
    "posix": ["posix/cpu", "posix/mem"],
    "cgroups": ["cgroups/cpu", "cgroups/mem", "cgroups/pids"],
}


def _import(target: str) -> object:
    module_name, _, attr = target.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def isolator_class(name: str) -> type[Isolator]:
    """The class ``name`` stands for: built in, an entry point, or ``module:Class``."""
    target: object | None = None
    if name in BUILTIN:
        target = _import(BUILTIN[name])
    else:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                target = ep.load()
                break
        else:
            if ":" in name:
                try:
                    target = _import(name)
                except (ImportError, AttributeError) as e:
                    raise ValueError(f"cannot load isolator {name!r}: {e}") from None
    if target is None:
        raise ValueError(
            f"unknown isolator {name!r}: not one of {', '.join(sorted(BUILTIN))}, "
            f"nor an entry point in group {ENTRY_POINT_GROUP!r}, nor 'module:Class'"
        )
    if not (isinstance(target, type) and issubclass(target, Isolator)):
        raise ValueError(f"isolator {name!r} is {target!r}, not a subclass of Isolator")
    return target


@dataclass
class Isolation:
    """The isolators an agent will use, their names, and why they were chosen."""

    isolators: list[Isolator]
    names: list[str]
    reasons: list[str] = field(default_factory=list)


def _split(spec: str | Sequence[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        for expanded in ALIASES.get(name, [name]):
            if expanded not in names:
                names.append(expanded)
    return names


def default_isolation(options: IsolationOptions) -> tuple[list[str], list[str]]:
    """``(names, reasons)`` for this machine: cgroups where they work, posix where not."""
    from mesa.isolators import cgroupfs
    from mesa.isolators.cgroups import (
        CgroupsCpuIsolator,
        CgroupsMemIsolator,
        CgroupsPidsIsolator,
    )

    mounts = cgroupfs.mounts()
    names: list[str] = []
    reasons: list[str] = []
    for cls, fallback in (
        (CgroupsCpuIsolator, "posix/cpu"),
        (CgroupsMemIsolator, "posix/mem"),
        (CgroupsPidsIsolator, None),
    ):
        version, why = cls.choose(mounts)
        if version is not None:
            names.append(cls.name)
            reasons.append(f"{cls.name}: {why}")
        elif fallback is not None:
            names.append(fallback)
            reasons.append(f"{fallback}: {cls.name} unavailable ({why})")
        else:
            reasons.append(f"no {cls.name}: {why}")
    names.append("disk/du")
    reasons.append(
        "disk/du: sandbox usage"
        + ("" if options.enforce_container_disk_quota else " (quota not enforced)")
    )
    return names, reasons


def resolve_isolation(
    spec: str | Sequence[str] | None, options: IsolationOptions | None = None
) -> Isolation:
    """Build the isolators ``spec`` names (None: :func:`default_isolation`). Raises ValueError
    naming the isolator that is unknown or cannot work here, and why."""
    from mesa.isolators.cgroups import (
        CgroupsFreezerIsolator,
        CgroupsIsolator,
        CgroupsPidsIsolator,
    )

    options = options if options is not None else IsolationOptions()
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        names, reasons = default_isolation(options)
    else:
        names, reasons = _split(spec), ["as configured (--isolation)"]
    classes = [isolator_class(name) for name in names]
    for name, cls in zip(names, classes, strict=True):
        why = cls.unavailable(options)
        if why is not None:
            raise ValueError(f"isolator {name} is not available here: {why}")
    if CgroupsPidsIsolator in classes and CgroupsFreezerIsolator not in classes:
        # Destroy sets pids.max to 0 before it kills: no fork escapes it, as under a freezer,
        # and each container is spared a cgroup (mkdir, rmdir, two isolator visits).
        reasons.append("no cgroups/freezer needed: cgroups/pids stops every fork during destroy")
    elif (
        any(issubclass(c, CgroupsIsolator) for c in classes)
        and CgroupsFreezerIsolator not in classes
    ):
        why = CgroupsFreezerIsolator.unavailable(options)
        if why is None:
            names.insert(0, CgroupsFreezerIsolator.name)
            classes.insert(0, CgroupsFreezerIsolator)
            reasons.append("cgroups/freezer: added so destroy freezes a container, then kills it")
        else:
            reasons.append(f"no cgroups/freezer ({why}): destroy kills cgroup members in sweeps")
    return Isolation([cls(options) for cls in classes], names, reasons)
