"""The agent's update outbox: a burst leaves as one message; while a message is unanswered the
next burst waits for the answer (or the hold's end), so messages follow the master's pace; and
after a burst the next message waits for the gap, so under load bursts grow with the load."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from mesa.info import TaskStatus
from mesa.messages import StatusUpdate
from mesa.update_outbox import UpdateOutbox


class Hold:
    """Stands in for the agent's ``delay``: one record per timer, fired by hand."""

    def __init__(self) -> None:
        self.seconds: float | None = None
        self.fn: Callable[[], Any] | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Agent:
    """What the outbox is given: a wire, the actor's ``defer`` queue and its ``delay``."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []
        self.deferred: list[Callable[[], None]] = []
        self.holds: list[Hold] = []
        self.clock = 100.0  # the agent's Clock, moved by hand

    def now(self) -> float:
        return self.clock

    def send(self, updates: list[StatusUpdate]) -> None:
        self.sent.append([u.status.task_id for u in updates])

    def defer(self, fn: Callable[[], None]) -> None:
        self.deferred.append(fn)

    def schedule(self, seconds: float, fn: Callable[..., None], *args: Any) -> Hold:
        hold = Hold()
        hold.seconds, hold.fn = seconds, functools.partial(fn, *args)
        self.holds.append(hold)
        return hold

    def run_deferred(self) -> None:
        """The events queued before have been handled: the deferred calls run."""
        while self.deferred:
            self.deferred.pop(0)()

    def live_holds(self) -> list[Hold]:
        return [h for h in self.holds if not h.cancelled and h.fn is not None]

    def fire_holds(self) -> None:
        for hold in self.live_holds():
            fn, hold.fn = hold.fn, None
            assert fn is not None
            fn()


def update(task_id: str) -> StatusUpdate:
    return StatusUpdate(
        "fw", TaskStatus(task_id=task_id, state="TASK_RUNNING", uuid=b"u" + task_id.encode())
    )


def outbox(agent: Agent, **kw: Any) -> UpdateOutbox:
    return UpdateOutbox(agent.send, agent.defer, agent.schedule, now=agent.now, **kw)


def test_a_burst_leaves_as_one_message_once_the_queued_events_are_handled() -> None:
    agent = Agent()
    box = outbox(agent)
    box.put(update("a"))
    box.put(update("b"))
    assert agent.sent == [] and len(box) == 2  # not while the burst is being handled
    agent.run_deferred()
    assert agent.sent == [["a", "b"]] and len(box) == 0
    assert box.messages == 1 and box.held == 0


def test_while_a_message_is_unanswered_the_next_burst_waits_for_the_answer() -> None:
    agent = Agent()
    box = outbox(agent, hold=0.25)
    box.put(update("a"))
    agent.run_deferred()
    # The master has not answered "a": "b" and "c" wait, with the hold as the bound.
    box.put(update("b"))
    box.put(update("c"))
    agent.run_deferred()
    assert agent.sent == [["a"]] and box.waiting and box.held == 1
    assert [h.seconds for h in agent.live_holds()] == [0.25]
    # The answer comes: they leave together, once the rest of the answer is handled.
    box.answered()
    assert agent.live_holds() == [] and agent.sent == [["a"]]
    agent.run_deferred()
    assert agent.sent == [["a"], ["b", "c"]] and not box.waiting


def test_without_an_answer_the_burst_leaves_when_the_hold_ends() -> None:
    agent = Agent()
    box = outbox(agent)
    box.put(update("a"))
    agent.run_deferred()
    box.put(update("b"))
    agent.fire_holds()
    assert agent.sent == [["a"], ["b"]]
    # Still unanswered (two messages now): the next waits again.
    box.put(update("c"))
    agent.run_deferred()
    assert agent.sent == [["a"], ["b"]] and box.held == 2


def test_after_an_answer_a_lone_update_goes_at_once() -> None:
    # How a single task's TASK_FINISHED never waits: it is made when its TASK_RUNNING is
    # acknowledged, and that acknowledgement is the answer.
    agent = Agent()
    box = outbox(agent)
    box.put(update("a"))
    agent.run_deferred()
    box.answered()
    box.put(update("a2"))
    agent.run_deferred()
    assert agent.sent == [["a"], ["a2"]] and box.held == 0 and agent.holds == []


def test_a_wider_window_lets_that_many_messages_be_unanswered() -> None:
    agent = Agent()
    box = outbox(agent, window=2)
    for name in ("a", "b"):
        box.put(update(name))
        agent.run_deferred()
    box.put(update("c"))
    agent.run_deferred()
    assert agent.sent == [["a"], ["b"]] and box.held == 1


def test_a_new_master_connection_forgets_the_old_one_s_unanswered_messages() -> None:
    agent = Agent()
    box = outbox(agent)
    box.put(update("a"))
    agent.run_deferred()
    box.reset()
    box.put(update("b"))
    agent.run_deferred()
    assert agent.sent == [["a"], ["b"]] and box.held == 0


def test_a_new_connection_releases_what_was_held_for_the_old_one() -> None:
    agent = Agent()
    box = outbox(agent)
    box.put(update("a"))
    agent.run_deferred()
    box.put(update("b"))
    assert box.waiting
    box.reset()
    assert agent.live_holds() == []
    agent.run_deferred()
    assert agent.sent == [["a"], ["b"]]


def test_flush_sends_what_waits_at_once_and_a_big_burst_is_split() -> None:
    agent = Agent()
    box = outbox(agent, per_message=2)
    box.put(update("a"))
    agent.run_deferred()
    for name in ("b", "c", "d"):
        box.put(update(name))
    assert box.waiting
    box.flush()  # e.g. before a message that must reach the master after these updates
    assert agent.sent == [["a"], ["b", "c"], ["d"]] and not box.waiting
    assert agent.live_holds() == [] and box.messages == 3
    box.flush()  # nothing left: nothing sent
    assert box.messages == 3


def test_close_drops_the_hold() -> None:
    agent = Agent()
    box = outbox(agent)
    box.put(update("a"))
    agent.run_deferred()
    box.put(update("b"))
    box.close()
    assert agent.live_holds() == [] and agent.sent == [["a"]]


def test_bad_settings_are_refused() -> None:
    agent = Agent()
    with pytest.raises(ValueError, match="window"):
        outbox(agent, window=0)
    with pytest.raises(ValueError, match="hold"):
        outbox(agent, hold=-1.0)
    with pytest.raises(ValueError, match="gap"):
        outbox(agent, gap=-0.001)


def burst_then_c(agent: Agent, box: UpdateOutbox) -> None:
    """A burst [a, b] goes; 1 ms later "c" comes, and the answer with it (with a gap, "c" now
    waits for the gap's end)."""
    box.put(update("a"))
    box.put(update("b"))
    agent.run_deferred()
    assert agent.sent == [["a", "b"]]
    agent.clock += 0.001
    box.put(update("c"))  # held for the answer, as before
    box.answered()


def burst_then_gap(agent: Agent, box: UpdateOutbox) -> Hold:
    """:func:`burst_then_c`, with the gap's timer it leaves."""
    burst_then_c(agent, box)
    (gap,) = agent.live_holds()
    return gap


def test_after_a_burst_the_next_message_waits_for_the_gap_even_when_answered() -> None:
    """Under load the master answers within the gap: what came meanwhile waits for the gap's
    end (the rest of the answer does not cut it short) and leaves as one burst."""
    agent = Agent()
    box = outbox(agent, gap=0.003)
    gap = burst_then_gap(agent, box)  # the answer, 1 ms after the burst: 2 ms of the gap left
    assert gap.seconds == pytest.approx(0.002) and box.spaced == 1
    box.answered()  # (the answer's other acknowledgements)
    box.put(update("d"))
    agent.run_deferred()
    assert agent.live_holds() == [gap] and agent.sent == [["a", "b"]]
    agent.clock += 0.002
    agent.fire_holds()
    assert agent.sent == [["a", "b"], ["c", "d"]] and not box.waiting


def test_once_the_gap_is_over_or_after_a_lone_update_nothing_waits_for_it() -> None:
    agent = Agent()
    box = outbox(agent, gap=0.003)
    box.put(update("a"))
    box.put(update("b"))
    agent.run_deferred()
    box.answered()
    agent.clock += 0.010  # a quiet spell longer than the gap
    box.put(update("c"))
    agent.run_deferred()
    assert agent.sent == [["a", "b"], ["c"]] and box.spaced == 0
    # "c" went alone: the next, answered at once, does not wait either (a lone task's
    # TASK_FINISHED after its TASK_RUNNING).
    box.answered()
    box.put(update("c2"))
    agent.run_deferred()
    assert agent.sent == [["a", "b"], ["c"], ["c2"]] and box.spaced == 0
    assert agent.live_holds() == []


def test_no_gap_with_gap_zero() -> None:
    agent = Agent()
    box = outbox(agent, gap=0.0)
    burst_then_c(agent, box)
    agent.run_deferred()
    assert agent.sent == [["a", "b"], ["c"]] and box.spaced == 0


def test_close_drops_the_gap_s_timer() -> None:
    agent = Agent()
    box = outbox(agent, gap=0.003)
    burst_then_c(agent, box)
    assert box.waiting
    box.close()
    assert agent.live_holds() == [] and not box.waiting


def test_after_the_gap_s_timer_fires_an_answer_releases_the_next_hold_again() -> None:
    """Once the gap's timer has sent its burst, the next wait is an ordinary hold: the answer
    ends it, it does not last the whole hold as a gap would."""
    agent = Agent()
    box = outbox(agent, gap=0.003, hold=0.25)
    burst_then_gap(agent, box)
    agent.clock += 0.002
    agent.fire_holds()
    assert agent.sent == [["a", "b"], ["c"]]
    box.put(update("d"))  # "c" is unanswered: "d" waits for the answer, the hold at most
    (hold,) = agent.live_holds()
    assert hold.seconds == 0.25
    box.answered()
    assert hold.cancelled and agent.live_holds() == []
    agent.run_deferred()  # ("c" went alone: no gap after it)
    assert agent.sent == [["a", "b"], ["c"], ["d"]]


def test_a_direct_flush_sends_at_once_and_voids_what_was_on_its_way() -> None:
    """The agent flushes before a message that must follow these updates: what waited for the
    gap goes now; and a deferred send queued before the flush does not cut the next gap short."""
    agent = Agent()
    box = outbox(agent, gap=0.003)
    gap = burst_then_gap(agent, box)
    box.flush()
    assert gap.cancelled and not box.waiting and agent.sent == [["a", "b"], ["c"]]
    # A send deferred, then overtaken by a direct flush of a burst:
    box.answered()
    agent.clock += 0.010
    box.put(update("d"))  # (deferred)
    box.put(update("e"))
    box.flush()  # [d, e] go now, a burst: the next waits for the gap
    box.answered()
    box.put(update("f"))
    assert len(agent.live_holds()) == 1
    agent.run_deferred()  # the stale deferred send runs: it must not send "f" early
    assert agent.sent[-1] == ["d", "e"] and box.waiting
    agent.clock += 0.003
    agent.fire_holds()
    assert agent.sent[-1] == ["f"]


def test_a_new_connection_keeps_the_gap() -> None:
    agent = Agent()
    box = outbox(agent, gap=0.003)
    gap = burst_then_gap(agent, box)
    box.reset()
    assert agent.live_holds() == [gap] and agent.sent == [["a", "b"]]


def test_a_lone_update_flushed_within_a_gap_ends_it() -> None:
    """ "c" left alone (flushed before another message) within the gap after [a, b]: an update
    after it does not wait, as after any message of one update."""
    agent = Agent()
    box = outbox(agent, gap=0.003)
    burst_then_gap(agent, box)
    box.flush()
    box.answered()
    box.put(update("d"))
    agent.run_deferred()
    assert agent.sent == [["a", "b"], ["c"], ["d"]] and box.spaced == 1


def test_one_update_a_message_means_no_gap() -> None:
    agent = Agent()
    box = outbox(agent, gap=0.003, per_message=1)
    box.put(update("a"))
    box.put(update("b"))
    agent.run_deferred()
    assert agent.sent == [["a"], ["b"]]
    box.answered()
    box.put(update("c"))
    agent.run_deferred()
    assert agent.sent == [["a"], ["b"], ["c"]] and box.spaced == 0


def test_a_burst_that_reaches_the_batch_leaves_without_waiting_for_the_answer() -> None:
    """As Nagle sends a full segment: "b", "c", "d" wait for the answer to "a" (a minute at
    most) until there are three of them, then leave with the rest of the event's updates; the
    hold's timer, had it fired meanwhile, sends nothing more."""
    agent = Agent()
    box = outbox(agent, hold=60.0, gap=0.0, batch=3)
    box.put(update("a"))
    agent.run_deferred()
    box.put(update("b"))
    box.put(update("c"))
    (hold,) = agent.live_holds()
    stale = hold.fn
    box.put(update("d"))
    assert hold.cancelled and box.full == 1 and agent.sent == [["a"]]
    box.put(update("e"))  # (the same event's: it goes with them)
    agent.run_deferred()
    assert agent.sent == [["a"], ["b", "c", "d", "e"]] and not box.waiting
    assert stale is not None
    stale()
    assert agent.sent == [["a"], ["b", "c", "d", "e"]]


def test_a_burst_that_reaches_the_batch_leaves_without_waiting_for_the_gap() -> None:
    """And the gap after it holds the next small burst as after any other."""
    agent = Agent()
    box = outbox(agent, gap=0.003, batch=3)
    burst_then_c(agent, box)  # "c" waits for the gap after [a, b]
    box.put(update("d"))
    assert box.waiting and box.full == 0
    box.put(update("e"))
    agent.run_deferred()
    assert agent.sent == [["a", "b"], ["c", "d", "e"]] and box.full == 1
    box.answered()
    box.put(update("f"))
    agent.run_deferred()
    assert agent.sent[-1] == ["c", "d", "e"] and box.spaced == 2
    agent.clock += 0.003
    agent.fire_holds()
    assert agent.sent[-1] == ["f"]


def test_with_batch_zero_every_burst_waits() -> None:
    agent = Agent()
    box = outbox(agent, hold=60.0, gap=0.0, batch=0)
    box.put(update("a"))
    agent.run_deferred()
    for i in range(50):
        box.put(update(f"b{i}"))
    agent.run_deferred()
    assert agent.sent == [["a"]] and box.waiting and box.full == 0
    box.answered()
    agent.run_deferred()
    assert len(agent.sent[-1]) == 50


def test_a_batch_of_one_or_less_than_none_is_refused() -> None:
    agent = Agent()
    for batch in (1, -1):
        with pytest.raises(ValueError, match="batch"):
            outbox(agent, batch=batch)


def test_without_an_answer_a_burst_still_waits_for_a_gap_longer_than_the_hold() -> None:
    """The hold bounds the wait for an answer, never to less than the gap: [a, b] at 0, "c" at
    0.5 ms, no answer; with a 5 ms hold and a 6 ms gap "c" leaves at 6 ms, not 5.5."""
    agent = Agent()
    box = outbox(agent, hold=0.005, gap=0.006, batch=0)
    box.put(update("a"))
    box.put(update("b"))
    agent.run_deferred()
    agent.clock += 0.0005
    box.put(update("c"))
    (hold,) = agent.live_holds()
    assert hold.seconds == pytest.approx(0.0055)  # (to the gap's end)
    agent.clock += 0.0055
    agent.fire_holds()
    assert agent.sent == [["a", "b"], ["c"]]


def test_settings_are_checked_when_changed_too() -> None:
    agent = Agent()
    box = outbox(agent)
    with pytest.raises(ValueError, match="hold"):
        box.configure(window=1, hold=float("inf"), gap=0.0, per_message=10, batch=0)
    with pytest.raises(ValueError, match="gap"):
        box.configure(window=1, hold=0.0, gap=float("nan"), per_message=10, batch=0)
    box.configure(window=2, hold=0.1, gap=0.2, per_message=0, batch=3)
    assert (box.window, box.hold, box.gap, box.per_message, box.batch) == (2, 0.1, 0.2, 1, 3)
