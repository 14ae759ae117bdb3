"""The posix isolator: no limits, only what a process session gives.

The containerizer already starts each executor in its own session and kills the session, its
process group and the executor's descendants on destroy; that is all posix can promise, so this
isolator has nothing to add. It exists so that ``--isolation=posix`` names something and so that
the containerizer always drives a non-empty isolator list, like it will with cgroups.
"""

from __future__ import annotations

from mesa.isolators.base import Isolator

__all__ = ["PosixIsolator"]


class PosixIsolator(Isolator):
    name = "posix"
