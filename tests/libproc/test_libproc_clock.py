"""Clock: a paused clock makes timeouts testable instantly and exactly.

A 30-second timeout must fire on the advance that reaches 30 seconds — not at 29.9, and not one
advance late because small steps did not add up to exactly 30 in floating point — and a cancelled
timer must never fire. These run in microseconds of real time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from lp_support import within

import libproc
from libproc import Clock, Process, Runtime, Timer, settle


class Timed(Process):
    """Sets timers on request and records, in order, which fired."""

    def __init__(self) -> None:
        super().__init__()
        self.fired: list[Any] = []

    def after(self, seconds: float, tag: Any) -> Timer:
        return self.delay(seconds, self.fired.append, tag)


async def test_delay_fires_exactly_at_its_time(rt: Runtime) -> None:
    actor = Timed()
    pid = rt.spawn(actor)
    Clock.pause()
    timer = await libproc.dispatch(pid, "after", 30, "timeout")
    assert isinstance(timer, Timer) and timer.pending

    Clock.advance(29.9)
    await settle()
    assert actor.fired == []
    assert timer.pending

    Clock.advance(0.1)
    await settle()
    assert actor.fired == ["timeout"]
    assert not timer.pending and timer.fired


async def test_many_small_steps_add_up_exactly(rt: Runtime) -> None:
    """300 x 0.1 s is 30 s: the timer fires on the 300th step, not the 301st.

    Clock time starts from the loop's monotonic clock (seconds since boot), so first move it to
    where a machine up for twelve days would be: that is where float steps stop adding up.
    """
    actor = Timed()
    pid = rt.spawn(actor)
    Clock.pause()
    Clock.advance(1_000_000 - Clock.now() % 1_000_000)
    await libproc.dispatch(pid, "after", 30, "timeout")
    for step in range(1, 301):
        Clock.advance(0.1)
        await settle()
        assert actor.fired == ([] if step < 300 else ["timeout"]), f"step {step}"


async def test_cancelled_timer_never_fires(rt: Runtime) -> None:
    actor = Timed()
    pid = rt.spawn(actor)
    Clock.pause()
    doomed = await libproc.dispatch(pid, "after", 5, "doomed")
    kept = await libproc.dispatch(pid, "after", 10, "kept")
    assert doomed.cancel() is True
    assert doomed.cancel() is False  # only once
    assert not doomed.pending
    Clock.advance(60)
    await settle()
    assert actor.fired == ["kept"]
    assert kept.cancel() is False  # already fired
    assert Clock.pending_timers() == 0


async def test_timers_fire_in_time_order_then_schedule_order(rt: Runtime) -> None:
    actor = Timed()
    pid = rt.spawn(actor)
    Clock.pause()
    for seconds, tag in [(5, "5s"), (1, "1s-a"), (3, "3s"), (1, "1s-b")]:
        await libproc.dispatch(pid, "after", seconds, tag)
    Clock.advance(10)
    await settle()
    assert actor.fired == ["1s-a", "1s-b", "3s", "5s"]


async def test_zero_delay_fires_on_a_paused_clock_without_advance(rt: Runtime) -> None:
    actor = Timed()
    pid = rt.spawn(actor)
    Clock.pause()
    await libproc.dispatch(pid, "after", 0, "now")
    await settle()
    assert actor.fired == ["now"]


async def test_periodic_timer_follows_advances(rt: Runtime) -> None:
    """A handler re-arming itself sees the advanced time, as in libprocess."""

    class Ticker(Process):
        def __init__(self) -> None:
            super().__init__()
            self.ticks: list[float] = []

        def initialize(self) -> None:
            self.delay(1, self.tick)

        def tick(self) -> None:
            self.ticks.append(Clock.now())
            self.delay(1, self.tick)

    Clock.pause()
    start = Clock.now()
    ticker = Ticker()
    rt.spawn(ticker)
    await settle()
    for _ in range(5):
        Clock.advance(1)
        await settle()
    assert [round(t - start, 9) for t in ticker.ticks] == [1, 2, 3, 4, 5]


async def test_now_pause_advance_resume() -> None:
    before = Clock.now()
    Clock.pause()
    assert Clock.paused()
    frozen = Clock.now()
    assert frozen >= before
    await asyncio.sleep(0)
    assert Clock.now() == frozen
    Clock.advance(2.5)
    assert Clock.now() == pytest.approx(frozen + 2.5, abs=1e-9)
    Clock.resume()
    assert not Clock.paused()
    assert Clock.now() >= frozen + 2.5  # never jumps backwards


async def test_advance_needs_pause_and_goes_forward() -> None:
    with pytest.raises(RuntimeError, match="pause"):
        Clock.advance(1)
    Clock.pause()
    with pytest.raises(ValueError):
        Clock.advance(-1)


async def test_timer_pending_at_resume_fires_in_real_time(rt: Runtime) -> None:
    actor = Timed()
    pid = rt.spawn(actor)
    Clock.pause()
    fired = asyncio.get_running_loop().create_future()
    await libproc.dispatch(pid, "after", 0.01, "x")
    actor.delay(0.01, fired.set_result, None)
    Clock.resume()
    await within(fired, "a timer to fire after resume")
    await settle()
    assert actor.fired == ["x"]


async def test_unpaused_delay_fires(rt: Runtime) -> None:
    actor = Timed()
    rt.spawn(actor)
    fired = asyncio.get_running_loop().create_future()
    actor.delay(0.001, fired.set_result, "done")
    assert await within(fired, "a real-time timer") == "done"


async def test_timer_of_a_terminated_actor_does_not_run(rt: Runtime) -> None:
    actor = Timed()
    pid = rt.spawn(actor)
    Clock.pause()
    await libproc.dispatch(pid, "after", 1, "late")
    libproc.terminate(pid)
    await libproc.wait(pid)
    Clock.advance(2)
    await settle()
    assert actor.fired == []
