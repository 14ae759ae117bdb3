"""Reliable, ordered delivery of a task's status updates from an agent to the master.

A status update must reach the framework even if the master restarts or the network drops
messages, and a framework must never see a task go ``TASK_FINISHED`` and then ``TASK_RUNNING``.
Mesos's answer, kept here, is one *stream* per task: the agent appends every update for the task,
sends only the head, resends the head with exponential back-off until the master acknowledges its
uuid, and only then sends the next. The head carries the state of the last update queued behind
it (``latest_state``), so the master learns of a task's end a round trip early and frees its
resources then. An update the executor sends twice (it retries too) is
recognised by its uuid and not queued again; once a terminal update is in the stream nothing may
follow it.

The classes are plain objects, not actors: the agent owns them and gives them two functions, one
to send an update and one to schedule a timer (its own ``delay``, so retries run in the agent's
context and follow the libproc :class:`~libproc.Clock`, which lets tests drive them with a paused
clock).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any

from libproc import Clock, Timer
from mesa.messages import StatusUpdate
from mesa.task_state import is_terminal

__all__ = [
    "Accept",
    "Ack",
    "SendFn",
    "StatusUpdateManager",
    "StatusUpdateStream",
]

SendFn = Callable[[StatusUpdate, bool], None]
"""``send(update, retry)``: put one update on the wire (``retry`` is True for a resend)."""

ScheduleFn = Callable[..., Timer]
"""``schedule(seconds, fn, *args) -> Timer``: normally the owning actor's ``delay``."""


class Accept(StrEnum):
    """What became of an update handed to a stream."""

    ACCEPTED = "accepted"  # queued (and sent if it is the head)
    DUPLICATE = "duplicate"  # same uuid seen before: already queued or delivered
    REJECTED = "rejected"  # the stream already holds a terminal update, or no uuid


class Ack(StrEnum):
    """What became of an acknowledgement."""

    OK = "ok"  # acknowledged the head; the next update (if any) went out
    UNKNOWN = "unknown"  # no stream for that task
    MISMATCH = "mismatch"  # not the uuid of the update in flight (stale or forged)


class StatusUpdateStream:
    """The status updates of one task, in order, with only the head in flight.

    ``backoff`` is the first retry interval; it doubles on every resend of the same head up to
    ``backoff_max``, and starts again at ``backoff`` for the next update. While paused (the agent
    is not connected to a master) nothing is sent; :meth:`resume` sends the head at once.
    """

    # One per live task, made and dropped for every task an agent runs: slots make that, and
    # every attribute read on the update path, cheaper.
    __slots__ = (
        "_backoff",
        "_backoff_max",
        "_closed",
        "_head_sent",
        "_interval",
        "_paused",
        "_pending",
        "_schedule",
        "_seen",
        "_send",
        "_timer",
        "acked",
        "framework_id",
        "retried",
        "sent",
        "task_id",
        "terminated",
    )

    def __init__(
        self,
        framework_id: str,
        task_id: str,
        *,
        send: SendFn,
        schedule: ScheduleFn,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        paused: bool = False,
    ) -> None:
        if backoff <= 0 or backoff_max < backoff:
            raise ValueError("need 0 < backoff <= backoff_max")
        self.framework_id = framework_id
        self.task_id = task_id
        self._send = send
        self._schedule = schedule
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._interval = backoff
        self._pending: deque[StatusUpdate] = deque()
        self._seen: set[bytes] = set()
        self._timer: Timer | None = None
        self._paused = paused
        self._closed = False
        self._head_sent = False  # the current head has been put on the wire at least once
        self.terminated = False  # a terminal update has been accepted
        self.sent = 0
        self.retried = 0
        self.acked = 0

    # ------------------------------------------------------------------ queries

    @property
    def pending(self) -> list[StatusUpdate]:
        """Updates not yet acknowledged, head first."""
        return list(self._pending)

    @property
    def head(self) -> StatusUpdate | None:
        return self._pending[0] if self._pending else None

    @property
    def done(self) -> bool:
        """The terminal update has been acknowledged: the stream can be forgotten."""
        return self.terminated and not self._pending

    @property
    def in_flight(self) -> bool:
        """The head has been sent and a retry is scheduled."""
        return self._timer is not None and self._timer.pending

    # ------------------------------------------------------------------ operations

    def update(self, update: StatusUpdate) -> Accept:
        """Append ``update``; send it at once if it is the head and the stream is not paused."""
        uuid = update.status.uuid
        if not isinstance(uuid, bytes) or not uuid:
            return Accept.REJECTED
        if uuid in self._seen:
            return Accept.DUPLICATE
        if self.terminated or self._closed:
            return Accept.REJECTED
        self._seen.add(uuid)
        pending = self._pending
        pending.append(update)
        if is_terminal(update.status.state):
            self.terminated = True
        if len(pending) == 1:
            self._send_head()
        else:
            # The head may still be waiting to leave (the agent's outbox holds updates for the
            # master's answer): it goes out knowing this, and so does every resend of it.
            pending[0].latest_state = update.status.state
        return Accept.ACCEPTED

    def acknowledge(self, uuid: bytes) -> Ack:
        """The master has the head: drop it and send the next one."""
        head = self.head
        if head is None or head.status.uuid != uuid:
            return Ack.MISMATCH
        self._pending.popleft()
        self._head_sent = False
        self.acked += 1
        self._cancel_timer()
        self._interval = self._backoff
        if self._pending:
            self._send_head()
        return Ack.OK

    def pause(self) -> None:
        """Stop sending (the master is gone); what is pending stays pending."""
        self._paused = True
        self._cancel_timer()

    def resume(self) -> None:
        """Send the head now (to the new or returning master) and retry from the first interval."""
        self._paused = False
        self._interval = self._backoff
        if self._pending:
            self._send_head()

    def close(self) -> None:
        """Forget everything (the framework is gone); no more sends or timers."""
        self._closed = True
        self._cancel_timer()
        self._pending.clear()

    # ------------------------------------------------------------------ internals

    def _send_head(self) -> None:
        self._cancel_timer()
        if self._paused or self._closed or not self._pending:
            return
        pending = self._pending
        head = pending[0]
        head.latest_state = pending[-1].status.state if len(pending) > 1 else None
        retry = self._head_sent
        self._head_sent = True
        if retry:
            self.retried += 1
        else:
            self.sent += 1
        self._timer = self._schedule(self._interval, self._retry, head.status.uuid)
        self._send(head, retry)

    def _retry(self, uuid: bytes) -> None:
        self._timer = None
        head = self.head
        if head is None or head.status.uuid != uuid or self._paused or self._closed:
            return
        self._interval = min(self._interval * 2, self._backoff_max)
        self._send_head()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __repr__(self) -> str:
        return (
            f"<StatusUpdateStream {self.framework_id}/{self.task_id} pending={len(self._pending)}"
            f" terminated={self.terminated}>"
        )


class _Retry:
    """One stream's retry in a :class:`_Retries`: shaped like the part of a Timer a stream uses."""

    __slots__ = ("args", "due", "fn", "owner", "pending")

    def __init__(self, owner: _Retries, due: float, fn: Callable[..., Any], args: tuple) -> None:
        self.owner = owner
        self.due = due
        self.fn = fn
        self.args = args
        self.pending = True

    def cancel(self) -> bool:
        if not self.pending:
            return False
        self.pending = False
        self.owner._dropped()
        return True


class _Retries:
    """Every stream's retry timer on one real timer.

    A stream arms a retry each time it sends its head and cancels it when the head is
    acknowledged: two timers per status update, thousands a second on a busy agent, nearly all
    cancelled. Retries with the same interval fall due in the order they were armed, so each
    interval keeps a FIFO; one timer of the owner's (``schedule``) stands for the earliest of them.
    Arming is an append, cancelling a flag.
    """

    def __init__(self, schedule: ScheduleFn) -> None:
        self._schedule = schedule
        self._queues: dict[float, deque[_Retry]] = {}
        self._live = 0
        self._timer: Timer | None = None
        self._timer_due = float("inf")

    def __call__(self, seconds: float, fn: Callable[..., Any], *args: Any) -> _Retry:
        due = Clock.now() + seconds
        retry = _Retry(self, due, fn, args)
        queue = self._queues.get(seconds)
        if queue is None:
            queue = self._queues[seconds] = deque()
        queue.append(retry)
        self._live += 1
        if due < self._timer_due:
            self._arm(due)
        return retry

    def _dropped(self) -> None:
        self._live -= 1
        if not self._live:
            # Nothing left to retry. The timer stays (it finds nothing when it fires): an agent
            # with a few tasks goes to zero after every acknowledgement, and re-arming a timer
            # each time would cost more than the one wasted wake-up.
            self._queues.clear()

    def close(self) -> None:
        """Forget every retry, and the timer."""
        self._queues.clear()
        self._live = 0
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_due = None, float("inf")

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = self._schedule(max(0.0, due - Clock.now()), self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_due = None, float("inf")
        now = Clock.now() + 0.001  # (a timer may run up to the loop's resolution early)
        due: list[_Retry] = []
        for queue in self._queues.values():
            while queue and (not queue[0].pending or queue[0].due <= now):
                retry = queue.popleft()
                if retry.pending:
                    due.append(retry)
        for retry in due:
            if retry.pending:  # (an earlier one's callback may have cancelled it)
                retry.pending = False
                self._live -= 1
                retry.fn(*retry.args)
        if self._live:
            # The callbacks re-armed for their own next tries; another interval's may be sooner.
            later = min((q[0].due for q in self._queues.values() if q), default=float("inf"))
            if later < self._timer_due:
                self._arm(later)


class StatusUpdateManager:
    """Every task's stream, keyed by ``(framework_id, task_id)``, paused and resumed together.

    Streams are created on a task's first update and dropped when their terminal update is
    acknowledged (or their framework is cleaned up), so memory follows the live tasks.
    """

    def __init__(
        self,
        *,
        send: SendFn,
        schedule: ScheduleFn,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        paused: bool = True,
    ) -> None:
        self._send = send
        self._retries = _Retries(schedule)  # the streams' retry timers, on one of the agent's
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._paused = paused
        self._streams: dict[tuple[str, str], StatusUpdateStream] = {}
        self._per_framework: dict[str, int] = {}  # streams per framework (asked after every ack)
        self.sent = 0
        self.retried = 0
        self.acked = 0

    @property
    def paused(self) -> bool:
        return self._paused

    def update(self, framework_id: str, update: StatusUpdate) -> Accept:
        task_id = update.status.task_id
        key = (framework_id, task_id)
        stream = self._streams.get(key)
        if stream is None:
            stream = StatusUpdateStream(
                framework_id,
                task_id,
                send=self._counting_send,
                schedule=self._retries,
                backoff=self._backoff,
                backoff_max=self._backoff_max,
                paused=self._paused,
            )
            self._streams[key] = stream
            self._per_framework[framework_id] = self._per_framework.get(framework_id, 0) + 1
        return stream.update(update)

    def acknowledge(self, framework_id: str, task_id: str, uuid: bytes) -> Ack:
        stream = self._streams.get((framework_id, task_id))
        if stream is None:
            return Ack.UNKNOWN
        result = stream.acknowledge(uuid)
        if result is Ack.OK:
            self.acked += 1
            if stream.done:
                del self._streams[(framework_id, task_id)]
                self._forget(framework_id)
        return result

    def stream(self, framework_id: str, task_id: str) -> StatusUpdateStream | None:
        return self._streams.get((framework_id, task_id))

    def streams(self) -> Iterator[StatusUpdateStream]:
        return iter(list(self._streams.values()))

    def has_pending(self, framework_id: str) -> bool:
        return framework_id in self._per_framework

    def _forget(self, framework_id: str, count: int = 1) -> None:
        left = self._per_framework.get(framework_id, 0) - count
        if left > 0:
            self._per_framework[framework_id] = left
        else:
            self._per_framework.pop(framework_id, None)

    def pause(self) -> None:
        self._paused = True
        for stream in self._streams.values():
            stream.pause()

    def resume(self) -> None:
        self._paused = False
        for stream in self._streams.values():
            stream.resume()

    def cleanup(self, framework_id: str) -> int:
        """Drop every stream of a framework that is gone; returns how many updates were dropped."""
        dropped = 0
        for key in [k for k in self._streams if k[0] == framework_id]:
            stream = self._streams.pop(key)
            self._forget(framework_id)
            dropped += len(stream.pending)
            stream.close()
        return dropped

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()
        self._per_framework.clear()
        self._retries.close()

    def _counting_send(self, update: StatusUpdate, retry: bool) -> None:
        if retry:
            self.retried += 1
        else:
            self.sent += 1
        self._send(update, retry)

    def __len__(self) -> int:
        return len(self._streams)

    def __repr__(self) -> str:
        return f"<StatusUpdateManager streams={len(self._streams)} paused={self._paused}>"

    def describe(self) -> list[dict[str, Any]]:
        """Pending updates per task, for the agent's state endpoint."""
        return [
            {
                "framework_id": s.framework_id,
                "task_id": s.task_id,
                "pending": [u.status.state for u in s.pending],
            }
            for s in self._streams.values()
        ]
