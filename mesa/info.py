"""The value types frameworks, masters and agents exchange, shaped like Mesos's v1 protobufs.

Field names follow Mesos (``framework_id``, ``agent_id``, ``task_id``, ``failover_timeout`` …) so
the Mesos v1 HTTP API can map onto them field for field. Each is a libproc ``@record``: it travels
as a msgpack record and comes back as the same class.

Resources travel in Mesos's text form (``"cpus:1;mem:128"``): compact, readable in a log, and
parsed through a cache (the same few strings recur across thousands of tasks).
"""

from __future__ import annotations

import uuid
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
]


def new_id(prefix: str = "") -> str:
    """A fresh unique id (Mesos uses UUIDs too); ``prefix`` helps people reading logs."""
    return f"{prefix}{uuid.uuid4()}"


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
