"""Time that tests can stop.

Every libproc timer (``Process.delay``) and every timeout inside the runtime reads time from
:class:`Clock`. Normally it follows the event loop's monotonic clock; ``Clock.pause()`` freezes it
and ``Clock.advance(seconds)`` moves it forward by hand, firing exactly the timers that fall due,
in order. That makes a test of a 30-second timeout run in microseconds and replay identically.

The clock is process-wide, like libprocess's: one test pauses time for every actor in it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from asyncio import get_running_loop as _get_running_loop
from collections.abc import Callable
from typing import Any

__all__ = ["Clock", "Timer"]

_NS = 1_000_000_000


def _to_ns(seconds: float) -> int:
    return round(seconds * _NS)


class Timer:
    """A cancellable timer handle returned by ``Process.delay``."""

    __slots__ = ("_args", "_callback", "_epoch", "_seq", "_when_ns", "cancelled", "fired")

    def __init__(
        self, when_ns: int, seq: int, callback: Callable[..., Any], args: tuple, epoch: int = 0
    ) -> None:
        self._when_ns = when_ns
        self._seq = seq
        self._callback = callback
        self._args = args
        self._epoch = epoch
        self.cancelled = False
        self.fired = False

    @property
    def when(self) -> float:
        """Clock time (seconds) at which the timer falls due."""
        return self._when_ns / _NS

    def cancel(self) -> bool:
        """Stop the timer; returns False when it already fired or was cancelled."""
        if self.cancelled or self.fired:
            return False
        self.cancelled = True
        if self._epoch == _Clock._epoch:  # still in the heap (not dropped by Clock.reset)
            _Clock._cancelled += 1
        return True

    @property
    def pending(self) -> bool:
        return not (self.cancelled or self.fired)

    def __lt__(self, other: Timer) -> bool:
        return (self._when_ns, self._seq) < (other._when_ns, other._seq)

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "fired" if self.fired else "pending"
        return f"<Timer at {self.when:.3f} {state}>"


class _Clock:
    """The process-wide clock; use through the :data:`Clock` singleton's class methods.

    Time is kept in integer nanoseconds. With floats, ``advance(0.1)`` three hundred times does
    not reach a timer set 30 s ahead (``t + 0.1 + 0.1 ...`` rounds differently from ``t + 30``
    once ``t`` is large, as the loop's monotonic clock is on a machine up for days), so a test
    would see its timeout one step late, or not at all, depending on the machine's uptime.
    """

    _paused_ns: int | None = None
    _offset_ns: int = 0  # virtual time = loop time + offset, kept continuous across pauses
    # Entries are ``(when_ns, seq, timer)``: tuples of ints compare in C, where a heap of Timers
    # called Timer.__lt__ (Python) some 16 times a push with tens of thousands pending, which
    # was a fifth of a busy agent process's time.
    _heap: list[tuple[int, int, Timer]] = []
    _seq = itertools.count()
    _handle: asyncio.TimerHandle | None = None
    _handle_when: int | None = None
    _cancelled = 0
    _epoch = 0  # bumped by reset(), so stale timers do not skew the cancelled count

    @classmethod
    def _loop(cls) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    @classmethod
    def _now_ns(cls) -> int:
        if cls._paused_ns is not None:
            return cls._paused_ns
        return _to_ns(cls._loop().time()) + cls._offset_ns

    @classmethod
    def now(cls) -> float:
        """Seconds on the (possibly paused) clock; monotonic, arbitrary origin."""
        # (What _now_ns does, inline: actors ask this on hot paths, e.g. per status update.)
        paused = cls._paused_ns
        if paused is not None:
            return paused / _NS
        return (round(_get_running_loop().time() * _NS) + cls._offset_ns) / _NS

    @classmethod
    def paused(cls) -> bool:
        return cls._paused_ns is not None

    @classmethod
    def pause(cls) -> None:
        """Freeze time. Timers stay scheduled and fire only through :meth:`advance`."""
        if cls._paused_ns is None:
            cls._paused_ns = cls._now_ns()
            cls._unarm()

    @classmethod
    def resume(cls) -> None:
        """Let time flow again from where it was paused (it never jumps backwards)."""
        if cls._paused_ns is not None:
            cls._offset_ns = cls._paused_ns - _to_ns(cls._loop().time())
            cls._paused_ns = None
            cls._rearm()

    @classmethod
    def advance(cls, seconds: float) -> None:
        """Move paused time forward and fire every timer due by then, earliest first.

        A timer callback only enqueues work for its actor; await :func:`libproc.settle` afterwards
        to let the actors process it.
        """
        if cls._paused_ns is None:
            raise RuntimeError("Clock.advance() needs Clock.pause() first")
        if seconds < 0:
            raise ValueError("time only moves forward")
        target = cls._paused_ns + _to_ns(seconds)
        while cls._heap and cls._heap[0][0] <= target:
            timer = heapq.heappop(cls._heap)[2]
            if timer.cancelled:
                cls._cancelled -= 1
                continue
            cls._paused_ns = max(cls._paused_ns, timer._when_ns)
            cls._fire(timer)
        cls._paused_ns = target

    @classmethod
    def schedule(cls, seconds: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Call ``callback(*args)`` after ``seconds`` of clock time (on the loop, not an actor)."""
        if cls._paused_ns is not None:
            now = cls._paused_ns
        else:
            now = round(_get_running_loop().time() * _NS) + cls._offset_ns
        when = now + round(seconds * _NS) if seconds > 0 else now
        seq = next(cls._seq)
        timer = Timer(when, seq, callback, args, cls._epoch)
        heapq.heappush(cls._heap, (when, seq, timer))
        if cls._paused_ns is not None:
            if when <= cls._paused_ns:
                # Due now on a frozen clock: run on the next loop turn, like call_soon.
                cls._loop().call_soon(cls._fire_due)
        elif cls._handle_when is None or when < cls._handle_when:
            cls._rearm()
        if cls._cancelled > 1024 and cls._cancelled > len(cls._heap) // 2:
            cls._compact()
        return timer

    @classmethod
    def reset(cls) -> None:
        """Forget every timer and unpause; for test teardown."""
        cls._unarm()
        cls._heap = []
        cls._cancelled = 0
        cls._epoch += 1
        cls._paused_ns = None
        cls._offset_ns = 0

    @classmethod
    def pending_timers(cls) -> int:
        return sum(1 for _, _, t in cls._heap if t.pending)

    @classmethod
    def _fire(cls, timer: Timer) -> None:
        timer.fired = True
        timer._callback(*timer._args)

    @classmethod
    def _fire_due(cls) -> None:
        cls._handle = None
        cls._handle_when = None
        # asyncio may run a timer handle up to its clock resolution early; honour that slack
        # instead of re-arming for a few microseconds.
        now = cls._paused_ns if cls._paused_ns is not None else cls._now_ns() + 1_000_000
        while cls._heap and cls._heap[0][0] <= now:
            timer = heapq.heappop(cls._heap)[2]
            if timer.cancelled:
                cls._cancelled -= 1
                continue
            cls._fire(timer)
        if cls._paused_ns is None:
            cls._rearm()

    @classmethod
    def _unarm(cls) -> None:
        if cls._handle is not None:
            cls._handle.cancel()
        cls._handle = None
        cls._handle_when = None

    @classmethod
    def _rearm(cls) -> None:
        while cls._heap and cls._heap[0][2].cancelled:
            heapq.heappop(cls._heap)
            cls._cancelled -= 1
        if not cls._heap:
            cls._unarm()
            return
        when = cls._heap[0][0]
        if cls._handle_when is not None and cls._handle_when <= when:
            return
        cls._unarm()
        loop = cls._loop()
        cls._handle = loop.call_at((when - cls._offset_ns) / _NS, cls._fire_due)
        cls._handle_when = when

    @classmethod
    def _compact(cls) -> None:
        cls._heap = [e for e in cls._heap if not e[2].cancelled]
        heapq.heapify(cls._heap)
        cls._cancelled = 0


Clock = _Clock
