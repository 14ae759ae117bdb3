"""The scheduler driver's actor: the framework's address on the cluster.

:class:`mesa.scheduler.SchedulerDriver` is the object a framework author holds; this actor is what
the master talks to. Keeping every message handler and every user callback inside one libproc
actor gives framework authors the same guarantee the actor model gives us: callbacks run one at a
time, in the order the master's messages arrived, so a framework's own state needs no locks.

Registration is a retry loop rather than a single request because the master may be down, may
not have started yet, or may drop the first message (a new leader, a full queue): the actor sends
``RegisterFramework`` (or ``ReregisterFramework`` once it has an id) and resends on a
:class:`libproc.Clock` timer, 1 s doubling to 10 s by default, until the master answers. It links
the master so that a master that dies turns into ``disconnected()`` and the same loop, now
re-registering with the framework id, brings the framework back when a master returns.

Exceptions raised by user callbacks are logged and counted (``scheduler/callback_errors``) and the
driver goes on: one buggy callback must not cut a framework off from its tasks.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from libproc import UPID, Process, Timer, get_logger, handler
from mesa.info import FrameworkInfo, MasterInfo, Offer
from mesa.messages import (
    DeactivateFramework,
    ExecutorToFramework,
    FrameworkError,
    FrameworkRegistered,
    FrameworkReregistered,
    LostAgent,
    RegisterFramework,
    ReregisterFramework,
    RescindOffer,
    ResourceOffers,
    StatusUpdate,
    StatusUpdateAcknowledgement,
    StatusUpdateAcknowledgements,
    StatusUpdates,
    UnregisterFramework,
)

if TYPE_CHECKING:
    from mesa.scheduler import Scheduler, SchedulerDriver

__all__ = ["SchedulerDriverProcess", "in_callback"]

in_callback: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "mesa_scheduler_in_callback", default=None
)
"""A marker of the user callback this code runs in (inherited by tasks the callback starts).
``SchedulerDriver.stop()`` compares it with the callback the actor is running now: awaiting the
actor's end from inside that callback, or from a task it awaits, would wait forever."""


class SchedulerDriverProcess(Process):
    """Registers a framework with the master, relays the master's events to a :class:`Scheduler`
    and the framework's calls to the master. Created and driven by ``SchedulerDriver``.

    State the driver reads (same event loop, so plain attributes suffice): ``connected``,
    ``stopping``, ``framework`` (with ``id`` once registered), ``offers`` (outstanding, by id).
    """

    def __init__(
        self,
        driver: SchedulerDriver,
        scheduler: Scheduler,
        framework: FrameworkInfo,
        master: UPID,
        *,
        implicit_acknowledgements: bool = True,
        backoff: float = 1.0,
        backoff_max: float = 10.0,
    ) -> None:
        super().__init__(f"scheduler({uuid.uuid4().hex[:8]})")
        self.driver = driver
        self.scheduler = scheduler
        self.framework = framework
        self.master = master
        self.implicit_acknowledgements = implicit_acknowledgements
        self.backoff_initial = backoff
        self.backoff_max = max(backoff, backoff_max)
        self.connected = False
        self.stopping = False
        self.master_info: MasterInfo | None = None
        self.offers: dict[str, Offer] = {}
        self.callback_errors = 0
        self.registration_attempts = 0
        # A framework that starts with an id is a failed-over scheduler; after its first
        # (re)registration any later one is a reconnection to a new master, not a failover.
        self._failover = framework.id is not None
        self._ever_connected = False
        self._linked = False
        self._backoff = backoff
        self._retry: Timer | None = None
        self._waiters: list[Any] = []  # futures resolved True on connect, False on the end
        self.running_callback: object | None = None  # the marker of the callback running now
        # Implicit acknowledgements not sent yet, (agent_id, task_id, uuid): they go together
        # once the events queued now are handled (see _ack).
        self._acks: list[tuple[str, str, bytes]] = []
        self.log = get_logger("mesa.scheduler", master=str(master), framework=framework.name)

    # ------------------------------------------------------------------ lifecycle

    def initialize(self) -> None:
        self.log.info("registering")
        self._attempt()

    def finalize(self) -> None:
        self._cancel_retry()
        self.connected = False
        self._resolve_waiters(False)
        self.driver._actor_ended()

    def exited(self, pid: UPID) -> Awaitable[None] | None:
        if pid != self.master:
            return None
        self._linked = False
        if self.stopping or not self.connected:
            # Still registering: the retry loop links again on its next attempt.
            return None
        self.connected = False
        self.offers.clear()  # offers die with the master that made them
        self.metrics.inc("scheduler/disconnections")
        self.log.warning("master_disconnected")
        self._backoff = self.backoff_initial
        self._attempt()
        return self._callback("disconnected")

    # ------------------------------------------------------------------ registration

    def _attempt(self) -> None:
        """One registration attempt; schedules the next until the master answers."""
        self._retry = None
        if self.stopping or self.connected:
            return
        if not self._linked:
            self._linked = True
            self.link(self.master)
        self.registration_attempts += 1
        self.metrics.inc("scheduler/registration_attempts")
        framework = self.framework
        if framework.id is None:
            self.send(self.master, RegisterFramework.NAME, RegisterFramework(framework))
        else:
            msg = ReregisterFramework(framework, failover=self._failover)
            self.send(self.master, ReregisterFramework.NAME, msg)
        self.log.debug("registration_sent", attempt=self.registration_attempts, id=framework.id)
        self._retry = self.delay(self._backoff, self._attempt)
        self._backoff = min(self._backoff * 2, self.backoff_max)

    def _cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _from_master(self, sender: UPID, name: str) -> bool:
        # Any actor of the master's runtime may speak for it; anyone else (an old master, a
        # confused peer) is ignored rather than believed.
        if sender.address == self.master.address:
            return True
        self.metrics.inc("scheduler/messages_ignored")
        self.log.warning("message_not_from_master", message=name, sender=str(sender))
        return False

    def _on_connected(self, framework_id: str, master_info: MasterInfo) -> Awaitable[None] | None:
        self._cancel_retry()
        self._backoff = self.backoff_initial
        if framework_id != self.framework.id:
            if self.framework.id is not None:
                self.log.warning("framework_id_changed", old=self.framework.id, new=framework_id)
            # A new object, not a mutation: a local master may hold the one we sent.
            self.framework = dataclasses.replace(self.framework, id=framework_id)
        self.connected = True
        self._failover = False
        self.master_info = master_info
        if not self._linked:  # the link may have timed out while we were registering
            self._linked = True
            self.link(self.master)
        self._resolve_waiters(True)
        first = not self._ever_connected
        self._ever_connected = True
        self.log.info("registered" if first else "reregistered", framework_id=framework_id)
        if first:
            return self._callback("registered", framework_id, master_info)
        return self._callback("reregistered", master_info)

    @handler(FrameworkRegistered.NAME)
    def _registered(self, sender: UPID, msg: FrameworkRegistered) -> Awaitable[None] | None:
        if not self._from_master(sender, FrameworkRegistered.NAME) or self.stopping:
            return None
        if self.connected:
            self.log.debug("duplicate_registration_ignored", framework_id=msg.framework_id)
            return None
        return self._on_connected(msg.framework_id, msg.master_info)

    @handler(FrameworkReregistered.NAME)
    def _reregistered(self, sender: UPID, msg: FrameworkReregistered) -> Awaitable[None] | None:
        if not self._from_master(sender, FrameworkReregistered.NAME) or self.stopping:
            return None
        if self.connected:
            self.log.debug("duplicate_registration_ignored", framework_id=msg.framework_id)
            return None
        return self._on_connected(msg.framework_id, msg.master_info)

    # ------------------------------------------------------------------ master → framework

    def _live(self, sender: UPID, name: str) -> bool:
        """Whether a master event should reach the scheduler now."""
        if not self._from_master(sender, name) or self.stopping:
            return False
        if not self.connected:
            self.log.debug("ignored_while_disconnected", message=name)
            return False
        return True

    @handler(ResourceOffers.NAME)
    def _resource_offers(self, sender: UPID, msg: ResourceOffers) -> Awaitable[None] | None:
        if not self._live(sender, ResourceOffers.NAME) or not msg.offers:
            return None
        for offer in msg.offers:
            self.offers[offer.id] = offer
        return self._callback("resource_offers", list(msg.offers))

    @handler(RescindOffer.NAME)
    def _rescind_offer(self, sender: UPID, msg: RescindOffer) -> Awaitable[None] | None:
        if not self._live(sender, RescindOffer.NAME):
            return None
        self.offers.pop(msg.offer_id, None)
        return self._callback("offer_rescinded", msg.offer_id)

    @handler(StatusUpdate.NAME)
    def _status_update(self, sender: UPID, msg: StatusUpdate) -> Awaitable[None] | None:
        if not self._live(sender, StatusUpdate.NAME):
            return None  # not acknowledged: the agent will send it again
        return self._one_update(msg.status)

    @handler(StatusUpdates.NAME)
    def _status_updates(self, sender: UPID, msg: StatusUpdates) -> Awaitable[None] | None:
        """Several updates in one message: one callback each, in order, as if each had come
        alone (an async callback is awaited before the next update's)."""
        if not self._live(sender, StatusUpdates.NAME) or not isinstance(msg.updates, list):
            return None
        updates = iter(msg.updates)
        pending = self._until_pending(updates)
        return None if pending is None else self._rest_of_updates(pending, updates)

    def _until_pending(
        self, updates: Iterator[Any], check_live: bool = False
    ) -> Awaitable[None] | None:
        """Handle ``updates`` in order until one's callback is a coroutine; that is returned,
        the rest left in the iterator. ``check_live``: stop (leaving the rest unacknowledged:
        the agent sends them again) once the driver is stopping or disconnected."""
        for update in updates:
            if check_live and (self.stopping or not self.connected):
                return None
            if not isinstance(update, StatusUpdate):
                self.metrics.inc("scheduler/messages_ignored")
                continue
            pending = self._one_update(update.status)
            if pending is not None:
                return pending
        return None

    async def _rest_of_updates(
        self, pending: Awaitable[None] | None, updates: Iterator[Any]
    ) -> None:
        while pending is not None:
            await pending
            pending = self._until_pending(updates, check_live=True)

    def _one_update(self, status: Any) -> Awaitable[None] | None:
        if not self.implicit_acknowledgements:
            return self._callback("status_update", status)
        # Acknowledge only after the callback has returned, and not when it raised: an update
        # the framework failed to handle is then delivered again (at least once).
        return self._callback("status_update", status, then=lambda ok: self._ack(ok, status))

    def _ack(self, ok: bool, status: Any) -> None:
        """An implicit acknowledgement, once the update's callback has returned.

        It waits for the events queued now (a burst of updates from the master) to be
        handled, and leaves with their acknowledgements in one message: the master passes
        each agent its own together, so a burst of updates costs each side a message, not
        one per update."""
        if not ok:
            self.log.warning("update_not_acknowledged", task_id=status.task_id, reason="callback")
            return
        if status.uuid is None:
            return  # generated by the master (reconciliation, a lost agent): nothing to ack
        if status.agent_id is None or self.framework.id is None:
            self.log.warning("cannot_acknowledge", task_id=status.task_id, reason="no agent id")
            return
        acks = self._acks
        acks.append((status.agent_id, status.task_id, status.uuid))
        if len(acks) == 1:
            self.defer(self._flush_acks)

    def _flush_acks(self) -> None:
        acks = self._acks
        if not acks or self.framework.id is None:
            return
        self._acks = []
        if len(acks) == 1:
            self.acknowledge(*acks[0])
            return
        agent_ids, task_ids, uuids = map(list, zip(*acks, strict=True))
        batch = StatusUpdateAcknowledgements(self.framework.id, agent_ids, task_ids, uuids)
        self.send(self.master, StatusUpdateAcknowledgements.NAME, batch)

    @handler(ExecutorToFramework.NAME)
    def _executor_message(self, sender: UPID, msg: ExecutorToFramework) -> Awaitable[None] | None:
        if not self._live(sender, ExecutorToFramework.NAME):
            return None
        return self._callback("framework_message", msg.executor_id, msg.agent_id, msg.data)

    @handler(LostAgent.NAME)
    def _lost_agent(self, sender: UPID, msg: LostAgent) -> Awaitable[None] | None:
        if not self._live(sender, LostAgent.NAME):
            return None
        for offer_id in [o.id for o in self.offers.values() if o.agent_id == msg.agent_id]:
            del self.offers[offer_id]
        return self._callback("agent_lost", msg.agent_id)

    @handler(FrameworkError.NAME)
    def _framework_error(self, sender: UPID, msg: FrameworkError) -> Awaitable[None] | None:
        # Accepted while still registering: that is how a master refuses a registration.
        if not self._from_master(sender, FrameworkError.NAME) or self.stopping:
            return None
        self.log.error("framework_error", message=msg.message)
        return self._callback("error", msg.message, then=self._abort_after_error)

    def _abort_after_error(self, ok: bool) -> None:
        self.driver._abort_after_error()

    # ------------------------------------------------------------------ framework → master

    def send_to_master(self, name: str, body: Any) -> None:
        """Used by the driver's calls; the driver has checked that we are connected."""
        self.send(self.master, name, body)

    def acknowledge(self, agent_id: str, task_id: str, status_uuid: bytes) -> None:
        assert self.framework.id is not None
        ack = StatusUpdateAcknowledgement(self.framework.id, agent_id, task_id, status_uuid)
        self.send(self.master, StatusUpdateAcknowledgement.NAME, ack)

    def shutdown(self, failover: bool | None) -> None:
        """Run in the actor's context by ``stop``/``abort``: tell the master (teardown when
        ``failover`` is False, deactivation when True, nothing for an abort) and end."""
        self.stopping = True
        self._cancel_retry()
        self._flush_acks()  # (the updates were handled: say so before saying goodbye)
        framework_id = self.framework.id
        if failover is not None and framework_id is not None:
            if not self.connected:
                self.log.warning("stopping_while_disconnected", failover=failover)
            if failover:
                self.send(self.master, DeactivateFramework.NAME, DeactivateFramework(framework_id))
            else:
                self.send(self.master, UnregisterFramework.NAME, UnregisterFramework(framework_id))
        self.log.info("stopping", failover=failover, framework_id=framework_id)
        self.connected = False
        self.terminate()

    def add_waiter(self, future: Any) -> None:
        self._waiters.append(future)

    def _resolve_waiters(self, value: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(value)

    # ------------------------------------------------------------------ callbacks

    def _callback(
        self, name: str, *args: Any, then: Callable[[bool], None] | None = None
    ) -> Awaitable[None] | None:
        """Call ``scheduler.<name>(driver, *args)``; sync or async, errors contained.

        Returns an awaitable when the callback is async, so that the actor's mailbox waits for it
        (one callback at a time). ``then(ok)`` runs once the callback has returned (``ok``) or
        raised (not ``ok``), still inside this event.
        """
        fn = getattr(self.scheduler, name, None)
        if fn is None:
            if then is not None:
                then(True)
            return None
        marker = self.running_callback = object()
        token = in_callback.set(marker)
        try:
            result = fn(self.driver, *args)
        except Exception as exc:
            self._callback_failed(name, exc)
            result, ok = None, False
        else:
            ok = True
        finally:
            in_callback.reset(token)
        if result is not None and inspect.isawaitable(result):
            return self._await_callback(name, marker, result, then)
        self.running_callback = None
        if then is not None:
            then(ok)
        return None

    async def _await_callback(
        self,
        name: str,
        marker: object,
        awaitable: Awaitable[Any],
        then: Callable[[bool], None] | None,
    ) -> None:
        in_callback.set(marker)  # this task's own context: tasks it starts inherit it
        ok = True
        try:
            await awaitable
        except Exception as exc:
            self._callback_failed(name, exc)
            ok = False
        finally:
            in_callback.set(None)
            self.running_callback = None
        if then is not None:
            then(ok)

    def _callback_failed(self, name: str, exc: BaseException) -> None:
        self.callback_errors += 1
        self.metrics.inc("scheduler/callback_errors")
        self.log.error("callback_error", callback=name, error=repr(exc), exc_info=exc)
