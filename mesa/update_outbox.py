"""When an agent's status updates leave for the master: in bursts, clocked by the master's answers.

The streams (:mod:`mesa.status_update_stream`) decide *what* goes: each task's head update, resent
until acknowledged. The outbox decides *when*, and in how many messages. Every message an agent
sends the master costs the master a frame in, a frame out to the framework, the framework's
acknowledgement back in and out again to the agent: four frames, each a few tens of
microseconds of Python on either side, whether it holds one update or fifty. So updates go as
few messages as latency allows:

* An update first waits for the events already queued to be handled (the actor's ``defer``):
  the tasks of one ``RunTasks`` start together and often end together, and their updates leave
  as one message.
* While an earlier message has had no answer (no acknowledgement has come from the master since
  it left), new updates wait for that answer, and then leave together. This is the self-clocking
  of TCP's Nagle algorithm: a lone update, or one after a quiet spell, goes at once; under load,
  a message leaves per round trip, holding whatever the round trip's time brought, so the
  bursts grow with the load instead of the message count. ``hold`` bounds the wait (a framework
  slow to acknowledge must not stall the others' updates), though never to less than the gap
  below: without an answer a burst leaves at the later of the two.

* Under load, consecutive messages are also spaced by ``gap``: after a message that carried a
  burst (two updates or more), the next leaves no sooner than ``gap`` after it (less the
  millisecond by which the Clock fires timers early), even when the answer came sooner, unless
  the agent flushes first. The round trip alone paces messages by the master's speed, not by the
  load: where tasks start more slowly (each in cgroups of its own), the round trips stayed as
  short while fewer updates came in each, and each update cost the master and the framework
  more. A message of one update is never followed by a wait: a lone task's updates, or the first
  after a quiet spell, go at once.

* A burst that reaches ``batch`` updates leaves at once: it waits neither for the answer nor for
  the gap, as Nagle's algorithm sends a full segment. The wait is for small bursts, where a
  message more costs the master the most per update; a big one is worth its message already,
  and holding it only delays what the framework learns (and the offers its tasks' ends free).
  So the gap can be long enough for small bursts to grow (6 ms) without holding back the big
  ones, which a fixed gap that long did (it cost posix runs 4-6 %). 2,000 ``true`` tasks,
  alternating runs against a 3 ms gap and no batch: under cgroups 0.21-0.29 agent messages per
  task instead of 0.43-0.48 and faster in 4 pairs of 4 (by 0-24 %, median 12 %); under posix
  0.17-0.19 instead of 0.24-0.25 and faster in 5 of 6 (median 8 %). Details in
  ``docs/executors.md``.

A lone task's updates never wait on this: its stream sends ``TASK_FINISHED`` only once
``TASK_RUNNING`` is acknowledged, and that acknowledgement is the answer the outbox waits for.
Under load the wait is a round trip, or the gap, and ``max(hold, gap)`` at the latest (unless
the burst is full). What it saves is the
master's time, the one component every agent shares (figures in ``docs/executors.md``).

Like the streams, this is a plain object the agent owns: it is given the agent's ``defer`` and
``delay`` (so the hold runs in the agent's context, on the libproc Clock), the Clock's ``now``,
and a ``send``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from libproc import Clock, Timer
from mesa.messages import StatusUpdate

__all__ = ["UpdateOutbox"]

SendFn = Callable[[list[StatusUpdate]], None]
"""``send(updates)``: put these updates on the wire as one message."""


class UpdateOutbox:
    """Status updates on their way to the master (see the module docstring).

    ``window``: messages that may be unanswered before the next waits for an answer (1: one
    in flight, as Nagle; a full burst leaves whatever the count). ``hold``: the longest an
    update waits for that answer, in seconds, unless the gap is longer. ``gap``: the least time
    between a message that carried a burst and the next, in seconds (0: none).
    ``per_message``: updates in one message at most (a burst after a long outage, every stream
    resumed at once, must not make a message too big to send).
    ``batch``: a burst this big leaves without waiting for the answer or the gap (0: no such
    size; every burst waits).

    Counters: ``messages`` sent, ``held`` (bursts that waited for an answer or the hold),
    ``spaced`` (bursts that waited for the gap; one may count in both), ``full`` (bursts that
    stopped waiting because they reached ``batch``).
    """

    def __init__(
        self,
        send: SendFn,
        defer: Callable[[Callable[[], None]], None],
        schedule: Callable[..., Timer],
        *,
        now: Callable[[], float] = Clock.now,
        window: int = 1,
        hold: float = 0.005,
        gap: float = 0.006,
        per_message: int = 1000,
        batch: int = 12,
    ) -> None:
        self._send = send
        self._defer = defer
        self._schedule = schedule
        self._now = now
        self.configure(window=window, hold=hold, gap=gap, per_message=per_message, batch=batch)
        self._updates: list[StatusUpdate] = []
        self._unanswered = 0  # messages sent since the master last answered
        self._timer: Timer | None = None
        self._spacing = False  # the timer is the gap's (an answer does not end it), not the hold's
        self._next_burst_at: float | None = None  # when a message may follow the last burst
        self._armed = 0  # the token of the callback that is to send what waits (see _arm)
        self.messages = 0
        self.held = 0
        self.spaced = 0
        self.full = 0

    def configure(
        self, *, window: int, hold: float, gap: float, per_message: int, batch: int
    ) -> None:
        """Set the knobs (see the class docstring); ValueError names one that makes no sense."""
        if window < 1:
            raise ValueError("window must be at least 1")
        if not 0 <= hold < math.inf:
            raise ValueError("hold must be a finite number of seconds, not negative")
        if not 0 <= gap < math.inf:
            raise ValueError("gap must be a finite number of seconds, not negative")
        if batch < 0 or batch == 1:
            raise ValueError("batch must be 0 (none) or at least 2 (a burst)")
        self.window = window
        self.hold = hold
        self.gap = gap
        self.per_message = max(1, per_message)
        self.batch = batch

    def __len__(self) -> int:
        return len(self._updates)

    @property
    def waiting(self) -> bool:
        """Updates are held: for an answer (or the hold's end), or for the gap's end."""
        return self._timer is not None

    def put(self, update: StatusUpdate) -> None:
        """Send ``update`` with the others of this burst, when the clock above allows."""
        self._updates.append(update)
        if len(self._updates) > 1:
            # A send is already on its way (deferred, or waiting for an answer or the gap); a
            # burst that is big enough stops waiting (and leaves with the rest of this event's).
            if len(self._updates) >= self.batch > 0 and self._timer is not None:
                self.full += 1
                self._void()
                self._send_soon()
            return
        if self._unanswered < self.window:
            self._go()
        else:
            self.held += 1
            wait = self.hold
            at = self._next_burst_at
            if at is not None:  # (and, answer or not, no sooner than the gap allows)
                wait = max(wait, at - self._now())
            self._timer = self._schedule(wait, self._due, self._arm())

    def answered(self) -> None:
        """An acknowledgement came from the master: what waited for one can go (at the gap's
        end, if the last message was a burst that left less than ``gap`` ago)."""
        self._unanswered = 0
        if self._timer is not None and not self._spacing:
            self._timer.cancel()
            self._timer = None
            self._go()

    def _go(self) -> None:
        """Send what waits once the queued events are handled (an answer's other acks free more
        updates), or at the gap's end if the last message was a burst that left too recently."""
        at = self._next_burst_at
        if at is not None:
            wait = at - self._now()
            if wait > 0:
                self.spaced += 1
                self._spacing = True
                self._timer = self._schedule(wait, self._due, self._arm())
                return
            self._next_burst_at = None  # (long past: no need to ask the clock again)
        self._send_soon()

    def _send_soon(self) -> None:
        """Send what waits once the events already queued are handled."""
        self._defer(functools.partial(self._due, self._arm()))

    def _arm(self) -> int:
        """A token for the one callback (deferred, hold or gap) that is to send what waits now:
        one armed earlier and already on its way (a timer that fired, a deferred call queued)
        when the agent flushed directly must not send the next burst early."""
        self._armed += 1
        return self._armed

    def _due(self, token: int) -> None:
        if token == self._armed:
            self.flush()

    def reset(self) -> None:
        """A new connection to a master: nothing sent before waits for its answer, nor does
        what was held for one (it still waits for the gap's end, a few milliseconds at most)."""
        self.answered()

    def flush(self) -> None:
        """Send everything held now (also what the agent calls before a message that must
        arrive after these updates)."""
        self._void()
        updates = self._updates
        if not updates:
            return
        self._updates = []
        step = self.per_message
        if len(updates) > 1 and step > 1 and self.gap:
            self._next_burst_at = self._now() + self.gap
        else:  # (one update a message: nothing after it waits, even within an earlier gap)
            self._next_burst_at = None
        for start in range(0, len(updates), step):
            self._unanswered += 1
            self.messages += 1
            self._send(updates[start : start + step])

    def close(self) -> None:
        """Drop the hold's or the gap's timer (the agent is stopping; it flushes first)."""
        self._void()

    def _void(self) -> None:
        """Whatever was on its way to send what waits (the hold's or the gap's timer, a
        deferred send) is not to any more."""
        self._armed += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._spacing = False
