"""Checks shared by the master and agents: what makes a task, a name or an id acceptable.

Kept apart from the actors so the rules read in one place and tests can drive them directly.
Every check returns ``None`` when the thing is fine, or a sentence saying what is wrong — the
sentence goes back to the framework in a TASK_ERROR, so it is written for a person.
"""

from __future__ import annotations

import functools
from typing import Any

from mesa.info import TaskInfo
from mesa.resources import ResourceError, Resources

__all__ = ["check_id", "check_task", "parse_resources"]

_MAX_ID = 255


@functools.lru_cache(maxsize=4096)
def parse_resources(text: str) -> Resources:
    """``Resources.parse`` through a cache: the same few strings recur across many tasks."""
    return Resources.parse(text)


def check_id(kind: str, value: Any) -> str | None:
    """Mesos's rule for ids: non-empty, printable, no '/', no whitespace, not '.' or '..'."""
    if not isinstance(value, str) or not value:
        return f"{kind} must be a non-empty string"
    if len(value) > _MAX_ID:
        return f"{kind} {value[:40]!r}... is longer than {_MAX_ID} characters"
    if value in (".", ".."):
        return f"{kind} {value!r} is not allowed"
    # (isprintable() is False for every whitespace but the space itself: one pass, in C.)
    if "/" in value or " " in value or not value.isprintable():
        return f"{kind} {value!r} must not contain '/', whitespace or control characters"
    return None


def check_task(task: Any, agent_id: str) -> tuple[str | None, Resources | None]:
    """Validate one TaskInfo against the agent its offers are on.

    Returns ``(error, resources)``: the error sentence, or the parsed resources when it is fine.
    """
    if not isinstance(task, TaskInfo):
        return f"expected a TaskInfo, got {type(task).__name__}", None
    error = check_id("task_id", task.task_id)
    if error:
        return error, None
    if not isinstance(task.name, str) or not task.name.strip():
        return "task name must be a non-empty string", None
    if len(task.name) > _MAX_ID:
        return f"task name is longer than {_MAX_ID} characters", None
    if task.agent_id and task.agent_id != agent_id:
        return f"task is for agent {task.agent_id!r} but its offers are on {agent_id!r}", None
    has_command = task.command is not None and (task.command.value or task.command.arguments)
    if bool(has_command) == (task.executor is not None):
        return "a task needs exactly one of a command or an executor", None
    if task.executor is not None:
        error = check_id("executor_id", task.executor.executor_id)
        if error:
            return error, None
        if task.executor.command is None or not (
            task.executor.command.value or task.executor.command.arguments
        ):
            return "the task's executor has no command", None
    if not isinstance(task.resources, str):
        return "task resources must be a string like 'cpus:1;mem:128'", None
    try:
        resources = parse_resources(task.resources)
    except ResourceError as e:
        return f"invalid task resources: {e}", None
    if not resources:
        return "a task must use some resources (e.g. 'cpus:0.1;mem:32')", None
    for name, value in resources.scalars().items():
        if value < 0:
            return f"negative resource {name}", None
    return None, resources
