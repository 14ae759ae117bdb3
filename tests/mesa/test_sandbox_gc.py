"""The sandbox collector: each sandbox goes ``delay`` after it was handed in, in order, with one
timer at a time however many wait; the removal runs off the loop's thread."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from libproc import Clock
from mesa.sandbox_gc import SandboxCollector, disk_usage, find_sandboxes, max_age
from tests.waiting import eventually


class FakeTimer:
    def __init__(self, due: float, fn: Callable[[], Any]) -> None:
        self.due, self.fn, self.cancelled = due, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class Schedule:
    """Stands in for an actor's ``delay``: records timers; ``fire`` runs the due ones."""

    def __init__(self) -> None:
        self.timers: list[FakeTimer] = []

    def __call__(self, seconds: float, fn: Callable[[], Any]) -> FakeTimer:
        timer = FakeTimer(Clock.now() + seconds, fn)
        self.timers.append(timer)
        return timer

    def live(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled and t.fn is not None]

    def fire(self) -> None:
        for timer in self.live():
            if timer.due <= Clock.now():
                fn, timer.fn = timer.fn, None  # type: ignore[assignment]
                fn()


def sandbox(root: Path, name: str) -> Path:
    path = root / "executors" / name / "runs" / "c"
    path.mkdir(parents=True)
    (path / "stdout").write_text("out\n")
    return path


@pytest.fixture
async def clock() -> AsyncIterator[type[Clock]]:
    Clock.pause()
    try:
        yield Clock
    finally:
        Clock.resume()


async def test_each_sandbox_goes_after_the_delay_in_order(clock: Any, tmp_path: Path):
    schedule = Schedule()
    gc = SandboxCollector(10.0, schedule)
    first = sandbox(tmp_path, "e1")
    gc.add(str(first), [str(first.parent), str(first.parent.parent)])
    clock.advance(4.0)
    second = sandbox(tmp_path, "e2")
    gc.add(str(second))
    assert len(gc) == 2 and len(schedule.live()) == 1  # one timer, for the oldest

    clock.advance(6.0)  # the first is due, the second not yet
    schedule.fire()
    # Counted once the worker thread is done with the sandbox and the parents it emptied.
    await eventually(lambda: gc.removed == 1, "the removal counted")
    assert not first.exists()
    assert not (tmp_path / "executors" / "e1").exists()  # its emptied parents too
    assert (tmp_path / "executors").exists()
    assert second.exists() and len(gc) == 1

    clock.advance(4.0)
    schedule.fire()
    await eventually(lambda: gc.removed == 2, "both counted")
    assert not second.exists()
    assert (second.parent).exists()  # no parents asked for: the runs directory stays
    assert len(gc) == 0 and schedule.live() == []


async def test_close_leaves_what_is_due_on_disk(clock: Any, tmp_path: Path):
    schedule = Schedule()
    gc = SandboxCollector(1.0, schedule)
    path = sandbox(tmp_path, "e1")
    gc.add(str(path))
    gc.close()
    clock.advance(5.0)
    schedule.fire()
    assert path.exists() and schedule.live() == []


@pytest.mark.parametrize("delay", [-1.0, float("inf"), float("nan")])
def test_a_negative_or_endless_delay_is_refused(delay: float):
    with pytest.raises(ValueError, match="finite number of seconds, not negative"):
        SandboxCollector(delay, Schedule())


async def test_prune_removes_now_what_is_older_than_the_age_and_rearms(clock: Any, tmp_path: Path):
    schedule = Schedule()
    gc = SandboxCollector(100.0, schedule)
    old, mid, new = (sandbox(tmp_path, name) for name in ("e1", "e2", "e3"))
    gc.add(str(old))
    clock.advance(30.0)
    gc.add(str(mid))
    clock.advance(30.0)
    gc.add(str(new))
    (first,) = schedule.live()
    assert gc.prune(100.0) == 0 and gc.prune(500.0) == 0  # no sooner than the delay anyway
    assert gc.prune(30.0) == 2  # handed in 60 and 30 seconds ago
    await eventually(lambda: gc.removed == 2, "the two removed")
    assert not old.exists() and not mid.exists() and new.exists()
    assert gc.pruned == 2 and len(gc) == 1
    # The timer was for the oldest: now one for the one left, due at its own time.
    assert first.cancelled and [t.due for t in schedule.live()] == [
        pytest.approx(Clock.now() + 100.0)
    ]
    assert gc.prune(0.0) == 1 and schedule.live() == []
    await eventually(lambda: gc.removed == 3, "all removed")


def test_max_age_is_mesos_s_formula():
    week = 7 * 24 * 3600.0
    assert max_age(week, 0.1, 0.0) == pytest.approx(0.9 * week)
    assert max_age(week, 0.1, 0.5) == pytest.approx(0.4 * week)
    assert max_age(week, 0.1, 0.9) == 0.0
    assert max_age(week, 0.1, 1.0) == 0.0
    assert max_age(week, 0.0, 0.0) == week


def test_disk_usage_is_the_larger_of_blocks_and_inodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    assert 0.0 <= disk_usage(str(tmp_path)) <= 1.0  # the real filesystem

    class Stat:
        def __init__(self, blocks: int, bavail: int, files: int, favail: int) -> None:
            self.f_blocks, self.f_bavail, self.f_files, self.f_favail = (
                blocks,
                bavail,
                files,
                favail,
            )

    for stat, used in [
        (Stat(1000, 800, 1000, 100), 0.9),  # tiny files: the inodes run out first
        (Stat(1000, 300, 1000, 900), 0.7),
        (Stat(1000, 250, 0, 0), 0.75),  # a filesystem that does not count inodes
        (Stat(0, 0, 0, 0), 0.0),
        (Stat(1000, 1200, 1000, 1000), 0.0),  # more available than there is: a faulty report
    ]:
        monkeypatch.setattr("os.statvfs", lambda path, s=stat: s)
        assert disk_usage("/anywhere") == pytest.approx(used)


def _left(root: Path, rel: str, age: float, now: float) -> Path:
    """A sandbox an earlier run left at ``root/rel``, last changed ``age`` seconds ago."""
    path = root / rel
    path.mkdir(parents=True)
    (path / "stdout").write_text("old\n")
    os.utime(path, (now - age, now - age))
    return path


def test_find_sandboxes_lists_what_an_earlier_run_left_oldest_first(tmp_path: Path):
    now = time.time()
    fw = "agents/A1/frameworks/F1"
    direct = _left(tmp_path, f"{fw}/runs/c1", 50.0, now)
    executor = _left(tmp_path, f"{fw}/executors/e1/runs/c2", 100.0, now)
    _left(tmp_path, f"{fw}/runs/c3", -5.0, now)  # made since: this run's
    (tmp_path / f"{fw}/runs/not-a-dir").write_text("")
    found = find_sandboxes(str(tmp_path / "agents"), now)
    runs = str(executor.parent)
    assert [(path, parents) for _, path, parents in found] == [
        (str(executor), (runs, str(executor.parent.parent))),
        (str(direct), ()),
    ]
    assert found[0][0] == pytest.approx(now - 100.0)
    assert find_sandboxes(str(tmp_path / "nowhere"), now) == []


async def test_adopted_sandboxes_are_due_a_delay_after_they_last_changed(
    clock: Any, tmp_path: Path
):
    schedule = Schedule()
    gc = SandboxCollector(100.0, schedule)
    mine = sandbox(tmp_path, "mine")
    gc.add(str(mine))
    (first,) = schedule.live()
    now = time.time()
    overdue = _left(tmp_path, "old/a", 300.0, now)
    later = _left(tmp_path, "old/b", 40.0, now)
    found: list[tuple[float, str, tuple[str, ...]]] = [
        (now - 300.0, str(overdue), ()),
        (now - 40.0, str(later), ()),
    ]
    assert gc.adopt(found, now) == 2 and len(gc) == 3
    assert first.cancelled  # re-armed for the oldest, which is overdue
    schedule.fire()
    await eventually(lambda: gc.removed == 1, "the overdue one removed")
    assert not overdue.exists() and later.exists() and mine.exists()
    clock.advance(60.001)  # 100 s after "later" last changed (epoch seconds round to 0.2 µs)
    schedule.fire()
    await eventually(lambda: gc.removed == 2, "the later one removed")
    assert mine.exists()
    clock.advance(40.0)
    schedule.fire()
    await eventually(lambda: gc.removed == 3, "this run's removed at its own time")
    assert gc.adopt([], now) == 0


async def test_a_waiting_sandbox_is_no_object_of_the_garbage_collector(
    clock: type[Clock],
) -> None:
    """A busy agent hands in a sandbox per task and keeps each for days. An object of the
    collector's per sandbox (a tuple: tracked when made) would raise the allocation count that
    starts young collections by one per task, for good, and each of those collections walks
    everything the agent made since the last one."""
    import gc

    collector = SandboxCollector(3600.0, Schedule())
    collector.add("/work/warm-up")  # (the deques' first blocks, the timer)
    was_enabled = gc.isenabled()
    gc.disable()  # (the count moves only with allocations and frees while we look)
    try:
        before = gc.get_count()[0]
        for i in range(10_000):
            collector.add(f"/work/agents/a/frameworks/f/runs/{i}")
        grew = gc.get_count()[0] - before
    finally:
        if was_enabled:
            gc.enable()
    assert len(collector) == 10_001
    assert grew < 100, f"{grew} objects of the garbage collector's for 10,000 sandboxes"


async def test_a_bad_parents_argument_leaves_the_queue_in_step(
    tmp_path: Path, clock: type[Clock]
) -> None:
    """The three deques hold one sandbox per index: a refused add must add to none of them."""
    schedule = Schedule()
    collector = SandboxCollector(10.0, schedule)
    with pytest.raises(TypeError):
        collector.add(str(tmp_path / "a"), 5)  # type: ignore[arg-type]
    first, second = sandbox(tmp_path, "b"), sandbox(tmp_path, "c")
    collector.add(str(first), (str(first.parent),))
    collector.add(str(second))
    assert len(collector) == 2
    clock.advance(11.0)
    schedule.fire()
    await eventually(lambda: not first.exists() and not second.exists())
    assert not first.parent.exists()  # its own parent went with it, none other's
    assert second.parent.exists()
