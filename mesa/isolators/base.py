"""The isolator seam: what the containerizer asks of every isolator, at each step of a container.

A container goes through prepare (before the executor process exists: make a cgroup, set limits,
add environment) → isolate (the process exists: put its pid in the cgroup) → … → cleanup (every
process is gone: remove the cgroup). When the containerizer destroys a container it also asks each
isolator which pids it knows belong to it, because a cgroup sees processes that escaped the
session and the process tree, which posix alone cannot.

Hooks are async so an isolator can be an actor (call it with ``libproc.dispatch``) or do blocking
work in a thread; the containerizer awaits them in order. The base class does nothing, which is
exactly the posix isolator's job today.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesa.messages import LaunchContainer

__all__ = ["Isolator"]


class Isolator:
    """Override the hooks you need; all default to doing nothing."""

    name = "base"

    async def prepare(self, container_id: str, launch: LaunchContainer) -> dict[str, str] | None:
        """Before launch. May return environment variables to add to the executor's."""
        return None

    async def isolate(self, container_id: str, pid: int) -> None:
        """The executor process ``pid`` has started."""
        return None

    async def pids(self, container_id: str) -> set[int]:
        """Every pid this isolator knows to be in the container (for destroy)."""
        return set()

    async def cleanup(self, container_id: str) -> None:
        """Every process of the container is gone."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
