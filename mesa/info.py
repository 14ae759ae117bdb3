"""The value types frameworks, masters and agents exchange, shaped like Mesos's v1 protobufs.

Field names follow Mesos (``framework_id``, ``agent_id``, ``task_id``, ``failover_timeout`` …) so
the Mesos v1 HTTP API can map onto them field for field. Each is a libproc ``@record``: it travels
as a msgpack record and comes back as the same class.

Resources travel in Mesos's text form (``"cpus:1;mem:128"``): compact, readable in a log, and
parsed through a cache (the same few strings recur across thousands of tasks).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

from libproc import record

__all__ = [
    "AgentInfo",
    "CommandInfo",
    "ExecutorInfo",
    "FrameworkInfo",
    "MasterInfo",
    "Offer",
    "TaskInfo",
    "TaskStatus",
    "new_id",
    "new_uuid",
    "new_uuid_bytes",
]


def new_id(prefix: str = "") -> str:
    """A fresh unique id (Mesos uses UUIDs too); ``prefix`` helps people reading logs."""
    return f"{prefix}{new_uuid()}"


# Ids must be unique, not secret: Mesos's UUID::random() is a Mersenne Twister seeded once, and so
# is this (from os.urandom, and again in a forked child). uuid.uuid4() and os.urandom make a
# getrandom syscall per id, and an agent makes three ids per task (a container, two updates):
# a few percent of its CPU on these VMs.
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)
_VERSION_4 = (0x4 << 76) | (0x2 << 62)  # the version nibble and the RFC 4122 variant bits
_V4_MASK = ~((0xF << 76) | (0x3 << 62))


def _uuid_int() -> int:
    return (_random.getrandbits(128) & _V4_MASK) | _VERSION_4


def new_uuid() -> str:
    """A fresh version-4 UUID in its text form (what ``str(uuid.uuid4())`` looks like)."""
    h = f"{_uuid_int():032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_uuid_bytes() -> bytes:
    """A fresh version-4 UUID's 16 bytes (a status update's ``uuid``)."""
    return _uuid_int().to_bytes(16, "big")


@record("mesa.FrameworkInfo")
@dataclass
class FrameworkInfo:
    user: str
    name: str
    id: str | None = None
    failover_timeout: float = 0.0
    checkpoint: bool = False
    roles: list[str] = field(default_factory=lambda: ["*"])
    principal: str | None = None
    hostname: str | None = None
    capabilities: list[str] = field(default_factory=list)  # e.g. "PARTITION_AWARE"

    @property
    def partition_aware(self) -> bool:
        return "PARTITION_AWARE" in self.capabilities


@record("mesa.MasterInfo")
@dataclass
class MasterInfo:
    id: str
    pid: str
    hostname: str
    port: int
    http_port: int | None = None


@record("mesa.AgentInfo")
@dataclass
class AgentInfo:
    hostname: str
    resources: str
    attributes: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    port: int = 0
    http_port: int | None = None


@record("mesa.CommandInfo")
@dataclass
class CommandInfo:
    value: str | None = None
    shell: bool = True
    arguments: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    user: str | None = None


@record("mesa.ExecutorInfo")
@dataclass
class ExecutorInfo:
    executor_id: str
    command: CommandInfo
    resources: str = ""
    framework_id: str | None = None
    name: str | None = None


@record("mesa.TaskInfo")
@dataclass
class TaskInfo:
    name: str
    task_id: str
    agent_id: str
    resources: str
    command: CommandInfo | None = None
    executor: ExecutorInfo | None = None
    data: bytes | None = None
    labels: dict[str, str] = field(default_factory=dict)
    kill_grace_period: float | None = None  # seconds between SIGTERM and SIGKILL


@record("mesa.Offer")
@dataclass
class Offer:
    id: str
    framework_id: str
    agent_id: str
    hostname: str
    resources: str
    attributes: dict[str, Any] = field(default_factory=dict)
    url: str = ""  # the agent's UPID
    allocation_role: str | None = None  # the role it is offered to (Mesos's allocation_info)


@record("mesa.TaskStatus")
@dataclass
class TaskStatus:
    task_id: str
    state: str
    message: str | None = None
    source: str | None = None
    reason: str | None = None
    agent_id: str | None = None
    executor_id: str | None = None
    timestamp: float = 0.0
    uuid: bytes | None = None  # set on updates that need an acknowledgement
    data: bytes | None = None
    healthy: bool | None = None
