"""Counters an operator asks about, served as JSON at ``/metrics/snapshot``.

Counters are plain dict increments on the hot path: a metric costs a hash and an add, never a lock
(each runtime lives on one event loop). Names follow Mesos's ``component/what`` style, e.g.
``libproc/messages_received`` or ``master/offers_sent``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Metrics"]


class Metrics:
    """A bag of named counters and gauges."""

    __slots__ = ("counters", "gauges")

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, amount: float = 1) -> None:
        counters = self.counters
        counters[name] = counters.get(name, 0) + amount

    def set(self, name: str, value: float) -> None:
        self.counters[name] = value

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """Register a value computed when a snapshot is taken (e.g. a queue length)."""
        self.gauges[name] = read

    def get(self, name: str) -> float:
        if name in self.gauges:
            return self.gauges[name]()
        return self.counters.get(name, 0)

    def snapshot(self) -> dict[str, float]:
        out = dict(self.counters)
        for name, read in self.gauges.items():
            try:
                out[name] = read()
            except Exception:  # a broken gauge must not break the endpoint
                out[name] = float("nan")
        return dict(sorted(out.items()))
