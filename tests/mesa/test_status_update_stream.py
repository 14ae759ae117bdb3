"""Status update streams under a paused Clock: ordering, back-off, acknowledgements, pausing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from libproc import Clock
from mesa.info import TaskStatus
from mesa.messages import StatusUpdate
from mesa.status_update_stream import Accept, Ack, StatusUpdateManager, StatusUpdateStream
from mesa.task_state import TaskState


@pytest.fixture(autouse=True)
async def paused_clock() -> AsyncIterator[None]:
    """The Clock reads the running loop's time, so pause it from inside the test's loop."""
    Clock.pause()
    try:
        yield
    finally:
        Clock.reset()


def update(state: str, task_id: str = "t1", framework_id: str = "fw") -> StatusUpdate:
    return StatusUpdate(framework_id, TaskStatus(task_id, state, uuid=uuid.uuid4().bytes))


class Wire:
    """Records what a stream sends, with the clock time it was sent at."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str, bool, bytes]] = []

    def __call__(self, u: StatusUpdate, retry: bool) -> None:
        self.sent.append((Clock.now(), str(u.status.state), retry, u.status.uuid))  # type: ignore[arg-type]

    def states(self) -> list[str]:
        return [s for _, s, _, _ in self.sent]


def stream(wire: Wire, **kw) -> StatusUpdateStream:
    kw.setdefault("backoff", 1.0)
    kw.setdefault("backoff_max", 8.0)
    return StatusUpdateStream("fw", "t1", send=wire, schedule=Clock.schedule, **kw)


async def test_only_the_head_is_in_flight_and_acks_release_the_next():
    wire = Wire()
    s = stream(wire)
    starting, running, finished = (
        update(TaskState.TASK_STARTING),
        update(TaskState.TASK_RUNNING),
        update(TaskState.TASK_FINISHED),
    )
    for u in (starting, running, finished):
        assert s.update(u) is Accept.ACCEPTED
    assert wire.states() == ["TASK_STARTING"]
    assert s.in_flight and len(s.pending) == 3

    assert s.acknowledge(running.status.uuid) is Ack.MISMATCH  # not the head
    assert wire.states() == ["TASK_STARTING"]
    assert s.acknowledge(starting.status.uuid) is Ack.OK
    assert wire.states() == ["TASK_STARTING", "TASK_RUNNING"]
    assert s.acknowledge(starting.status.uuid) is Ack.MISMATCH  # a stale duplicate
    assert s.acknowledge(running.status.uuid) is Ack.OK
    assert not s.done
    assert s.acknowledge(finished.status.uuid) is Ack.OK
    assert s.done and not s.in_flight
    assert wire.states() == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    assert (s.sent, s.retried, s.acked) == (3, 0, 3)


async def test_the_head_carries_the_state_of_the_last_update_queued_behind_it():
    """Mesos's latest_state: the master learns of a task's end while its RUNNING is still the
    head, on the first send if RUNNING had not left yet, else on its resend."""
    seen: list[tuple[str, str | None]] = []

    def wire(u: StatusUpdate, retry: bool) -> None:
        seen.append((str(u.status.state), u.latest_state))

    s = StatusUpdateStream("fw", "t1", send=wire, schedule=Clock.schedule, backoff=1.0)
    running, finished = update(TaskState.TASK_RUNNING), update(TaskState.TASK_FINISHED)
    s.update(running)
    assert seen == [("TASK_RUNNING", None)]
    s.update(finished)
    # Not sent again now, but the head (which may still wait in the agent's outbox) knows.
    assert running.latest_state == TaskState.TASK_FINISHED
    Clock.advance(1.0)
    assert seen[-1] == ("TASK_RUNNING", "TASK_FINISHED")
    assert s.acknowledge(running.status.uuid) is Ack.OK
    assert seen[-1] == ("TASK_FINISHED", None)


async def test_the_head_is_resent_with_doubling_backoff_up_to_the_cap():
    wire = Wire()
    s = stream(wire, backoff=1.0, backoff_max=4.0)
    start = Clock.now()
    head = update(TaskState.TASK_RUNNING)
    s.update(head)
    for _ in range(60):
        Clock.advance(0.5)
    times = [t - start for t, _, _, _ in wire.sent]
    # Retries after 1, 2, 4, then every 4 seconds (the cap).
    assert times == pytest.approx([0, 1, 3, 7, 11, 15, 19, 23, 27])
    assert [retry for _, _, retry, _ in wire.sent] == [False] + [True] * 8
    assert {u for _, _, _, u in wire.sent} == {head.status.uuid}
    assert (s.sent, s.retried) == (1, 8)


async def test_backoff_restarts_for_the_next_update():
    wire = Wire()
    s = stream(wire, backoff=1.0, backoff_max=8.0)
    first, second = update(TaskState.TASK_STARTING), update(TaskState.TASK_RUNNING)
    s.update(first)
    s.update(second)
    Clock.advance(1)
    Clock.advance(2)  # first retried twice; next interval would be 4
    s.acknowledge(first.status.uuid)
    sent_at = Clock.now()
    Clock.advance(1)
    running = [t for t, st, _, _ in wire.sent if st == "TASK_RUNNING"]
    assert running == [sent_at, sent_at + 1]


async def test_duplicates_are_recognised_and_nothing_follows_a_terminal_update():
    wire = Wire()
    s = stream(wire)
    running = update(TaskState.TASK_RUNNING)
    assert s.update(running) is Accept.ACCEPTED
    assert s.update(running) is Accept.DUPLICATE
    finished = update(TaskState.TASK_FINISHED)
    assert s.update(finished) is Accept.ACCEPTED
    assert s.terminated
    assert s.update(update(TaskState.TASK_RUNNING)) is Accept.REJECTED
    assert s.update(StatusUpdate("fw", TaskStatus("t1", TaskState.TASK_RUNNING))) is (
        Accept.REJECTED
    )  # no uuid
    s.acknowledge(running.status.uuid)
    assert s.update(running) is Accept.DUPLICATE  # even after it was delivered
    assert [st for st in wire.states()] == ["TASK_RUNNING", "TASK_FINISHED"]


async def test_paused_streams_hold_updates_and_resume_sends_the_head_at_once():
    wire = Wire()
    s = stream(wire, paused=True)
    a, b = update(TaskState.TASK_STARTING), update(TaskState.TASK_RUNNING)
    s.update(a)
    s.update(b)
    Clock.advance(100)
    assert wire.sent == []
    s.resume()
    assert wire.states() == ["TASK_STARTING"]
    assert wire.sent[0][2] is False  # the first time on the wire is not a retry
    s.pause()
    Clock.advance(100)
    assert len(wire.sent) == 1  # no retries while paused
    s.resume()
    assert len(wire.sent) == 2 and wire.sent[1][2] is True
    s.acknowledge(a.status.uuid)
    assert wire.states()[-1] == "TASK_RUNNING"


async def test_close_stops_everything():
    wire = Wire()
    s = stream(wire)
    s.update(update(TaskState.TASK_RUNNING))
    s.close()
    Clock.advance(100)
    assert len(wire.sent) == 1
    assert s.pending == []
    assert Clock.pending_timers() == 0


async def test_bad_backoff_is_refused():
    with pytest.raises(ValueError):
        StatusUpdateStream("f", "t", send=Wire(), schedule=Clock.schedule, backoff=0)
    with pytest.raises(ValueError):
        StatusUpdateStream("f", "t", send=Wire(), schedule=Clock.schedule, backoff=2, backoff_max=1)


# ------------------------------------------------------------------------------- the manager


def manager(wire: Wire, paused: bool = False) -> StatusUpdateManager:
    return StatusUpdateManager(
        send=wire, schedule=Clock.schedule, backoff=1.0, backoff_max=4.0, paused=paused
    )


async def test_manager_keeps_tasks_independent():
    wire = Wire()
    m = manager(wire)
    a1, b1 = update(TaskState.TASK_RUNNING, "a"), update(TaskState.TASK_RUNNING, "b")
    a2 = update(TaskState.TASK_FINISHED, "a")
    m.update("fw", a1)
    m.update("fw", b1)
    m.update("fw", a2)
    # Each task has its own head in flight: b is not held up behind a.
    assert sorted(wire.states()) == ["TASK_RUNNING", "TASK_RUNNING"]
    assert m.acknowledge("fw", "a", a1.status.uuid) is Ack.OK
    assert wire.states()[-1] == "TASK_FINISHED"
    assert m.acknowledge("fw", "a", a2.status.uuid) is Ack.OK
    assert m.stream("fw", "a") is None  # done streams are dropped
    assert m.acknowledge("fw", "a", a2.status.uuid) is Ack.UNKNOWN
    assert m.acknowledge("other", "b", b1.status.uuid) is Ack.UNKNOWN
    assert len(m) == 1
    assert (m.sent, m.acked) == (3, 2)
    Clock.advance(1)
    assert m.retried == 1  # only b's head is still waiting


async def test_manager_pause_resume_and_cleanup():
    wire = Wire()
    m = manager(wire, paused=True)
    m.update("fw", update(TaskState.TASK_RUNNING, "a"))
    m.update("fw2", update(TaskState.TASK_RUNNING, "b"))
    assert m.paused and wire.sent == []
    m.resume()
    assert len(wire.sent) == 2
    m.pause()
    Clock.advance(50)
    assert len(wire.sent) == 2
    assert m.has_pending("fw") and m.has_pending("fw2")
    assert m.cleanup("fw") == 1
    assert not m.has_pending("fw")
    m.resume()
    assert len(wire.sent) == 3
    assert m.describe() == [{"framework_id": "fw2", "task_id": "b", "pending": ["TASK_RUNNING"]}]
    m.close()
    assert len(m) == 0 and Clock.pending_timers() == 0


async def test_manager_retries_every_stream_on_time_with_one_timer():
    # Streams at different points of their back-off share one real timer: each head is still
    # resent exactly when its own interval says, and nothing is resent once all are acked.
    wire = Wire()
    m = manager(wire)
    a, b = update(TaskState.TASK_RUNNING, "a"), update(TaskState.TASK_RUNNING, "b")
    m.update("fw", a)
    Clock.advance(0.5)
    m.update("fw", b)
    assert Clock.pending_timers() == 1
    Clock.advance(0.5)  # a: 1 s after its send
    Clock.advance(0.5)  # b: 1 s after its send
    resent = [(t, task) for t, _, retry, task in wire.sent if retry]
    assert [round(t - resent[0][0], 3) for t, _ in resent] == [0.0, 0.5]
    assert [u for _, u in resent] == [a.status.uuid, b.status.uuid]
    # a's next try is 2 s after its first retry (back-off doubled); b is acknowledged.
    assert m.acknowledge("fw", "b", b.status.uuid) is Ack.OK
    Clock.advance(1.4)
    assert m.retried == 2
    Clock.advance(0.1)
    assert m.retried == 3 and wire.sent[-1][3] == a.status.uuid
    # A fresh stream's 1 s retry comes before a's 4 s one, though armed after it.
    c = update(TaskState.TASK_RUNNING, "c")
    m.update("fw", c)
    Clock.advance(1)
    assert wire.sent[-1][3] == c.status.uuid and m.retried == 4
    for task, u in (("a", a), ("c", c)):
        assert m.acknowledge("fw", task, u.status.uuid) is Ack.OK
    Clock.advance(100)
    assert m.retried == 4
    m.close()
    assert Clock.pending_timers() == 0


async def test_manager_knows_when_a_framework_has_nothing_pending():
    m = manager(Wire())
    a, b = update(TaskState.TASK_FINISHED, "a"), update(TaskState.TASK_FINISHED, "b")
    other = update(TaskState.TASK_FINISHED, "c", framework_id="fw2")
    for u in (a, b):
        m.update("fw", u)
    m.update("fw2", other)
    assert m.acknowledge("fw", "a", a.status.uuid) is Ack.OK
    assert m.has_pending("fw")  # b still
    assert m.acknowledge("fw", "b", b.status.uuid) is Ack.OK
    assert not m.has_pending("fw") and m.has_pending("fw2")
    assert m.cleanup("fw2") == 1 and not m.has_pending("fw2")
