"""Tests for the framework SDK (mesa.scheduler), its driver actor, mesa.execute and run_n.

The real SchedulerDriver runs in its own libproc Runtime and talks over ZeroMQ to a fake master: a
libproc actor in another Runtime of this process that records what it receives and sends what the
test tells it to. Nothing here sleeps for a fixed time: tests await the fake master's queues, the
recording scheduler's queues, or libproc message filters, each with a generous failure bound.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import libproc
from libproc import UPID, Clock, Process, Runtime, drop_messages, expect_message
from mesa import execute
from mesa.info import CommandInfo, FrameworkInfo, MasterInfo, Offer, TaskInfo, TaskStatus
from mesa.messages import (
    AcceptOffers,
    DeactivateFramework,
    DeclineOffers,
    ExecutorToFramework,
    FrameworkError,
    FrameworkRegistered,
    FrameworkReregistered,
    FrameworkToExecutor,
    KillTask,
    LostAgent,
    ReconcileTasks,
    RegisterFramework,
    ReregisterFramework,
    RescindOffer,
    ResourceOffers,
    ReviveOffers,
    StatusUpdate,
    StatusUpdateAcknowledgement,
    StatusUpdateAcknowledgements,
    StatusUpdates,
    SuppressOffers,
    UnregisterFramework,
)
from mesa.resources import Resources
from mesa.scheduler import (
    DriverNotRunningError,
    DriverStatus,
    NotConnectedError,
    Scheduler,
    SchedulerDriver,
    SchedulerDriverError,
    parse_master,
)
from mesa.task_state import is_terminal
from tests.ports import quiet_port
from tests.waiting import runtime_at

REPO = Path(__file__).resolve().parents[2]
WAIT = 20.0  # a bound on waiting for something that should happen, never an expected duration

SCHEDULER_TO_MASTER = [
    RegisterFramework,
    ReregisterFramework,
    UnregisterFramework,
    DeactivateFramework,
    AcceptOffers,
    DeclineOffers,
    KillTask,
    ReconcileTasks,
    ReviveOffers,
    SuppressOffers,
    StatusUpdateAcknowledgement,
    FrameworkToExecutor,
]


# --------------------------------------------------------------------------------------------
# The fake master and a recording scheduler
# --------------------------------------------------------------------------------------------


class FakeMaster(Process):
    """Records every scheduler → master message; answers registrations unless told not to."""

    def __init__(self, framework_id: str = "fw-1", auto_register: bool = True) -> None:
        super().__init__("master")
        self.framework_id = framework_id
        self.auto_register = auto_register
        self.received: list[tuple[str, UPID, Any]] = []
        self.queues: dict[str, asyncio.Queue[Any]] = defaultdict(asyncio.Queue)
        self.framework_pid: UPID | None = None
        for cls in SCHEDULER_TO_MASTER:
            self.install(cls.NAME, functools.partial(self._record, cls.NAME))
        self.ack_batches: list[StatusUpdateAcknowledgements] = []
        self.install(StatusUpdateAcknowledgements.NAME, self._record_acks)

    @property
    def info(self) -> MasterInfo:
        return MasterInfo("master-1", str(self.pid), self.pid.host, self.pid.port)

    def _record(self, name: str, sender: UPID, body: Any) -> None:
        self.received.append((name, sender, body))
        self.queues[name].put_nowait(body)
        if name in (RegisterFramework.NAME, ReregisterFramework.NAME):
            self.framework_pid = sender
            if self.auto_register:
                if name == RegisterFramework.NAME:
                    self.tell(FrameworkRegistered(self.framework_id, self.info))
                else:
                    self.tell(FrameworkReregistered(body.framework.id, self.info))
        self.react(name, sender, body)

    def _record_acks(self, sender: UPID, body: StatusUpdateAcknowledgements) -> None:
        """Acknowledgements that came together are recorded as if each had come alone."""
        self.ack_batches.append(body)
        for agent_id, task_id, uuid_ in zip(body.agent_ids, body.task_ids, body.uuids, strict=True):
            ack = StatusUpdateAcknowledgement(body.framework_id, agent_id, task_id, uuid_)
            self._record(StatusUpdateAcknowledgement.NAME, sender, ack)

    def react(self, name: str, sender: UPID, body: Any) -> None:
        """Scripted masters override this."""

    def tell(self, msg: Any) -> None:
        assert self.framework_pid is not None, "no framework has registered yet"
        self.send(self.framework_pid, msg.NAME, msg)

    async def next(self, cls: Any) -> Any:
        return await asyncio.wait_for(self.queues[cls.NAME].get(), WAIT)

    def names(self) -> list[str]:
        return [name for name, _, _ in self.received]


class Recorder(Scheduler):
    """Puts every callback's arguments on a per-callback queue."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[tuple[Any, ...]]] = defaultdict(asyncio.Queue)
        self.calls: list[str] = []
        self.drivers: set[int] = set()

    def _put(self, driver: SchedulerDriver, name: str, *args: Any) -> None:
        self.drivers.add(id(driver))
        self.calls.append(name)
        self.queues[name].put_nowait(args)

    async def next(self, name: str) -> tuple[Any, ...]:
        return await asyncio.wait_for(self.queues[name].get(), WAIT)

    def registered(self, driver, framework_id, master_info):
        self._put(driver, "registered", framework_id, master_info)

    def reregistered(self, driver, master_info):
        self._put(driver, "reregistered", master_info)

    def disconnected(self, driver):
        self._put(driver, "disconnected")

    def resource_offers(self, driver, offers):
        self._put(driver, "resource_offers", offers)

    def offer_rescinded(self, driver, offer_id):
        self._put(driver, "offer_rescinded", offer_id)

    def status_update(self, driver, status):
        self._put(driver, "status_update", status)

    def framework_message(self, driver, executor_id, agent_id, data):
        self._put(driver, "framework_message", executor_id, agent_id, data)

    def agent_lost(self, driver, agent_id):
        self._put(driver, "agent_lost", agent_id)

    def error(self, driver, message):
        self._put(driver, "error", message)


class Cluster:
    """Owns every runtime and driver a test makes, and cleans them all up."""

    def __init__(self) -> None:
        self.runtimes: list[Runtime] = []
        self.drivers: list[SchedulerDriver] = []
        self.procs: list[asyncio.subprocess.Process] = []

    async def start_master(self, master: FakeMaster | None = None, port: int = 0) -> FakeMaster:
        runtime = await runtime_at(port, WAIT)
        self.runtimes.append(runtime)
        master = master or FakeMaster()
        runtime.spawn(master)
        return master

    def driver(
        self, scheduler: Scheduler, master: FakeMaster, framework_id: str | None = None, **kw: Any
    ) -> SchedulerDriver:
        framework = FrameworkInfo(user="tester", name="test-framework", id=framework_id)
        kw.setdefault("registration_backoff", 0.05)
        kw.setdefault("registration_backoff_max", 0.5)
        driver = SchedulerDriver(scheduler, framework, master.pid.address, **kw)
        self.drivers.append(driver)
        return driver

    async def registered(
        self, scheduler: Recorder, master: FakeMaster, **kw: Any
    ) -> SchedulerDriver:
        driver = self.driver(scheduler, master, **kw)
        await driver.start()
        await scheduler.next("registered")
        return driver

    async def close(self) -> None:
        Clock.resume()
        libproc.filters.clear()
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for driver in self.drivers:
            if driver.status is DriverStatus.DRIVER_RUNNING:
                driver.abort()
            if driver.status is not DriverStatus.DRIVER_NOT_STARTED:
                await asyncio.wait_for(driver.join(), WAIT)
        for runtime in self.runtimes:
            await runtime.stop()
        Clock.reset()


@pytest.fixture
async def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        await c.close()


def offer(offer_id: str = "o1", agent_id: str = "a1", resources: str = "cpus:1;mem:256") -> Offer:
    return Offer(offer_id, "fw-1", agent_id, "host-" + agent_id, resources, url="")


def status(task_id: str, state: str, *, ack: bool = True, agent_id: str = "a1") -> TaskStatus:
    return TaskStatus(
        task_id,
        state,
        message=f"{task_id} is {state}",
        source="SOURCE_EXECUTOR",
        agent_id=agent_id,
        uuid=uuid.uuid4().bytes if ack else None,
    )


def task(task_id: str = "t1", agent_id: str = "") -> TaskInfo:
    return TaskInfo("task " + task_id, task_id, agent_id, "cpus:0.1;mem:32", CommandInfo("true"))


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


async def test_registers_and_reports_the_framework_id(cluster):
    master = await cluster.start_master()
    sched = Recorder()
    driver = cluster.driver(sched, master)
    assert await driver.start() is DriverStatus.DRIVER_RUNNING

    framework_id, master_info = await sched.next("registered")
    assert framework_id == "fw-1"
    assert master_info.pid == str(master.pid)
    assert driver.framework_id == "fw-1" and driver.connected
    await driver.wait_connected(timeout=WAIT)
    assert sched.drivers == {id(driver)}

    request = await master.next(RegisterFramework)
    assert request.framework.id is None
    assert request.framework.name == "test-framework"
    assert request.framework.hostname  # filled in by the driver
    assert master.framework_pid == driver.pid
    assert driver.pid.id.startswith("scheduler(")


async def test_registration_is_retried_when_the_first_request_is_lost(cluster):
    master = await cluster.start_master()
    sched = Recorder()
    driver = cluster.driver(sched, master, registration_backoff=1.0, registration_backoff_max=10)
    Clock.pause()
    seen = 0

    def first_only(_msg: libproc.Message) -> bool:
        nonlocal seen
        seen += 1
        return seen == 1

    dropper = drop_messages(name=RegisterFramework.NAME, where=first_only)
    first = expect_message(name=RegisterFramework.NAME)
    await driver.start()
    await asyncio.wait_for(first, WAIT)
    assert dropper.count == 1 and not driver.connected

    Clock.advance(1.0)  # the first back-off: the driver tries again
    framework_id, _ = await sched.next("registered")
    assert framework_id == "fw-1"
    assert (seen, dropper.count) == (2, 1)  # the retry was seen and let through
    assert len(master.queues[RegisterFramework.NAME]._queue) == 1  # only the retry arrived
    assert driver._process.registration_attempts == 2


async def test_registration_backoff_doubles_up_to_the_cap(cluster):
    master = await cluster.start_master(FakeMaster(auto_register=False))
    driver = cluster.driver(
        Recorder(), master, registration_backoff=1.0, registration_backoff_max=4
    )
    Clock.pause()
    first = expect_message(name=RegisterFramework.NAME)
    await driver.start()
    await asyncio.wait_for(first, WAIT)
    proc = driver._process

    async def attempts_after(seconds: float) -> int:
        Clock.advance(seconds)
        await libproc.settle()
        return proc.registration_attempts

    assert proc.registration_attempts == 1
    for gap, attempts in [(1, 2), (2, 3), (4, 4), (4, 5), (4, 6)]:
        assert await attempts_after(gap - 0.01) == attempts - 1
        assert await attempts_after(0.011) == attempts  # (a hair over: float sums)
    for _ in range(6):
        await master.next(RegisterFramework)  # every attempt reached the master

    master.tell(FrameworkRegistered("fw-1", master.info))
    await driver.wait_connected(timeout=WAIT)
    assert await attempts_after(60) == 6  # registered: no more attempts


async def test_a_framework_with_an_id_fails_over_with_reregister(cluster):
    master = await cluster.start_master()
    sched = Recorder()
    driver = cluster.driver(sched, master, framework_id="fw-old")
    await driver.start()

    request = await master.next(ReregisterFramework)
    assert request.framework.id == "fw-old" and request.failover is True
    framework_id, _ = await sched.next("registered")  # the first registration of this driver
    assert framework_id == "fw-old" == driver.framework_id


async def test_calls_before_registration_are_refused(cluster):
    master = await cluster.start_master(FakeMaster(auto_register=False))
    sched = Recorder()
    driver = cluster.driver(sched, master)
    with pytest.raises(DriverNotRunningError):
        driver.kill_task("t1")
    await driver.start()
    await master.next(RegisterFramework)

    with pytest.raises(NotConnectedError, match="not registered"):
        driver.launch_tasks(["o1"], [task()])
    with pytest.raises(NotConnectedError):
        driver.reconcile_tasks()
    with pytest.raises(TimeoutError):
        await driver.wait_connected(timeout=0.01)

    waiting = asyncio.ensure_future(driver.wait_connected())
    master.tell(FrameworkRegistered("fw-1", master.info))
    await asyncio.wait_for(waiting, WAIT)
    driver.reconcile_tasks()
    assert (await master.next(ReconcileTasks)).framework_id == "fw-1"


async def test_a_refused_registration_reports_the_error_and_aborts(cluster):
    master = await cluster.start_master(FakeMaster(auto_register=False))
    sched = Recorder()
    driver = cluster.driver(sched, master)
    await driver.start()
    await master.next(RegisterFramework)
    waiting = asyncio.ensure_future(driver.wait_connected())

    master.tell(FrameworkError("role 'x' is not allowed"))
    assert await sched.next("error") == ("role 'x' is not allowed",)
    assert await asyncio.wait_for(driver.join(), WAIT) is DriverStatus.DRIVER_ABORTED
    with pytest.raises(DriverNotRunningError):
        await waiting
    with pytest.raises(DriverNotRunningError):
        driver.decline_offer("o1")


# --------------------------------------------------------------------------------------------
# Offers, launches and the other calls
# --------------------------------------------------------------------------------------------


async def test_offers_launch_fills_agent_id(cluster):
    master = await cluster.start_master()

    class Launcher(Recorder):
        def resource_offers(self, driver, offers):
            super().resource_offers(driver, offers)
            driver.launch_tasks(offers[0].id, [task("t1"), task("t2", agent_id="explicit")])

    sched = Launcher()
    driver = await cluster.registered(sched, master)
    master.tell(ResourceOffers([offer("o1", "a1"), offer("o2", "a2")]))

    (offers,) = await sched.next("resource_offers")
    assert [o.id for o in offers] == ["o1", "o2"]
    accept = await master.next(AcceptOffers)
    assert accept.framework_id == "fw-1"
    assert accept.offer_ids == ["o1"]
    assert [t.agent_id for t in accept.tasks] == ["a1", "explicit"]
    assert accept.refuse_seconds == 5.0

    # From outside a callback too, with the alias, and a Resources value for resources.
    t3 = TaskInfo("t3", "t3", "", Resources.parse("cpus:0.5"), CommandInfo("true"))
    driver.accept_offers(["o2"], [t3], refuse_seconds=30)
    accept = await master.next(AcceptOffers)
    assert accept.tasks[0].agent_id == "a2" and accept.tasks[0].resources == "cpus:0.5"
    assert accept.refuse_seconds == 30.0
    assert t3.agent_id == ""  # the caller's TaskInfo is not modified


async def test_decline_with_refuse_seconds(cluster):
    master = await cluster.start_master()
    sched = Recorder()
    driver = await cluster.registered(sched, master)
    master.tell(ResourceOffers([offer("o1")]))
    await sched.next("resource_offers")

    driver.decline_offer("o1", refuse_seconds=120)
    decline = await master.next(DeclineOffers)
    assert (decline.framework_id, decline.offer_ids, decline.refuse_seconds) == (
        "fw-1",
        ["o1"],
        120.0,
    )
    driver.decline_offer("o9")
    assert (await master.next(DeclineOffers)).refuse_seconds == 5.0


async def test_kill_reconcile_revive_suppress(cluster):
    master = await cluster.start_master()
    sched = Recorder()
    driver = await cluster.registered(sched, master)

    driver.kill_task("t1")
    driver.kill_task("t2", agent_id="a1", grace_period=2.5)
    kills = [await master.next(KillTask) for _ in range(2)]
    assert [(k.task_id, k.agent_id, k.grace_period) for k in kills] == [
        ("t1", None, None),
        ("t2", "a1", 2.5),
    ]
    assert {k.framework_id for k in kills} == {"fw-1"}

    driver.reconcile_tasks([status("t1", "TASK_RUNNING"), status("t2", "TASK_STAGING")])
    assert (await master.next(ReconcileTasks)).tasks == [["t1", "a1"], ["t2", "a1"]]
    driver.reconcile_tasks([])
    assert (await master.next(ReconcileTasks)).tasks == []  # implicit

    driver.revive_offers()
    driver.revive_offers(roles=["web"])
    driver.suppress_offers("batch")
    assert (await master.next(ReviveOffers)).roles == []
    assert (await master.next(ReviveOffers)).roles == ["web"]
    suppress = await master.next(SuppressOffers)
    assert (suppress.framework_id, suppress.roles) == ("fw-1", ["batch"])


async def test_rescind_and_lost_agent(cluster):
    master = await cluster.start_master()
    sched = Recorder()
    driver = await cluster.registered(sched, master)
    master.tell(ResourceOffers([offer("o1", "a1"), offer("o2", "a2")]))
    await sched.next("resource_offers")

    master.tell(RescindOffer("o1"))
    assert await sched.next("offer_rescinded") == ("o1",)
    master.tell(LostAgent("a2"))
    assert await sched.next("agent_lost") == ("a2",)
    assert driver._process.offers == {}


# --------------------------------------------------------------------------------------------
# Status updates and acknowledgements
# --------------------------------------------------------------------------------------------


async def test_implicit_acks_are_sent_after_the_callback(cluster):
    master = await cluster.start_master()
    handled: list[str] = []

    class Slow(Recorder):
        async def status_update(self, driver, status):
            await asyncio.sleep(0)  # yield: the ack must still wait for us
            await asyncio.sleep(0)
            handled.append(status.task_id)

    sched = Slow()
    await cluster.registered(sched, master)
    master.tell(StatusUpdate("fw-1", status("t0", "TASK_LOST", ack=False)))  # master-made
    update = status("t1", "TASK_RUNNING")
    master.tell(StatusUpdate("fw-1", update))

    ack = await master.next(StatusUpdateAcknowledgement)
    assert handled == ["t0", "t1"]  # the callback had finished when the ack arrived
    assert (ack.framework_id, ack.agent_id, ack.task_id, ack.uuid) == (
        "fw-1",
        "a1",
        "t1",
        update.uuid,
    )  # and the update without a uuid was not acknowledged


async def test_updates_that_come_together_are_acknowledged_together(cluster):
    master = await cluster.start_master()
    sched = Recorder()
    await cluster.registered(sched, master)
    # One StatusUpdates of three (a master passing on an agent's burst), a master-made update
    # that needs no ack, and a lone StatusUpdate sent right after them.
    batch = [status("t1", "TASK_RUNNING"), status("t2", "TASK_RUNNING", agent_id="a2")]
    batch.append(status("t3", "TASK_FINISHED"))
    master.tell(StatusUpdates([StatusUpdate("fw-1", s) for s in batch]))
    master.tell(StatusUpdate("fw-1", status("t0", "TASK_LOST", ack=False)))
    alone = status("t4", "TASK_RUNNING")
    master.tell(StatusUpdate("fw-1", alone))

    seen = [(await sched.next("status_update"))[0] for _ in range(5)]
    assert [s.task_id for s in seen] == ["t1", "t2", "t3", "t0", "t4"]  # in order, one each
    acks = [await master.next(StatusUpdateAcknowledgement) for _ in range(4)]
    assert [(a.agent_id, a.task_id, a.uuid) for a in acks] == [
        (s.agent_id, s.task_id, s.uuid) for s in [*batch, alone]
    ]
    # All four acknowledgements went in one message: they were made in one burst.
    assert len(master.ack_batches) == 1
    assert master.names().count(StatusUpdateAcknowledgement.NAME) == 4


async def test_an_async_callback_holds_the_rest_of_a_batch(cluster):
    master = await cluster.start_master()
    handled: list[str] = []

    class Slow(Recorder):
        async def status_update(self, driver, status):
            await asyncio.sleep(0)
            handled.append(status.task_id)
            if status.task_id == "t2":
                raise RuntimeError("not this one")

    await cluster.registered(Slow(), master)
    batch = [status("t1", "TASK_RUNNING"), status("t2", "TASK_RUNNING")]
    batch.append(status("t3", "TASK_RUNNING"))
    master.tell(StatusUpdates([StatusUpdate("fw-1", s) for s in batch]))
    first = await master.next(StatusUpdateAcknowledgement)
    second = await master.next(StatusUpdateAcknowledgement)
    assert handled == ["t1", "t2", "t3"]  # one at a time, in order
    # The update whose callback raised is not acknowledged (it will come again).
    assert [first.task_id, second.task_id] == ["t1", "t3"]


async def test_explicit_acks_when_implicit_are_disabled(cluster):
    master = await cluster.start_master()
    sched = Recorder()
    driver = await cluster.registered(sched, master, implicit_acknowledgements=False)
    first, second = status("t1", "TASK_RUNNING"), status("t2", "TASK_RUNNING")
    master.tell(StatusUpdate("fw-1", first))
    master.tell(StatusUpdate("fw-1", second))
    assert (await sched.next("status_update"))[0].task_id == "t1"
    assert (await sched.next("status_update"))[0].task_id == "t2"

    driver.acknowledge_status_update(second)  # only the second: the driver sent nothing itself
    ack = await master.next(StatusUpdateAcknowledgement)
    assert (ack.task_id, ack.uuid) == ("t2", second.uuid)
    driver.acknowledge_status_update(status("t3", "TASK_LOST", ack=False))  # nothing to ack
    driver.acknowledge_status_update(first)
    ack = await master.next(StatusUpdateAcknowledgement)
    assert (ack.task_id, ack.uuid) == ("t1", first.uuid)


async def test_acknowledging_by_hand_is_refused_with_implicit_acks(cluster):
    master = await cluster.start_master()
    driver = await cluster.registered(Recorder(), master)
    with pytest.raises(SchedulerDriverError, match="implicit"):
        driver.acknowledge_status_update(status("t1", "TASK_RUNNING"))


async def test_framework_messages_both_ways(cluster):
    master = await cluster.start_master()
    sched = Recorder()
    driver = await cluster.registered(sched, master)

    driver.send_framework_message("e1", "a1", b"\x00hello")
    msg = await master.next(FrameworkToExecutor)
    assert (msg.framework_id, msg.agent_id, msg.executor_id, msg.data) == (
        "fw-1",
        "a1",
        "e1",
        b"\x00hello",
    )
    with pytest.raises(TypeError):
        driver.send_framework_message("e1", "a1", "text")

    master.tell(ExecutorToFramework("fw-1", "a1", "e1", b"pong"))
    assert await sched.next("framework_message") == ("e1", "a1", b"pong")


# --------------------------------------------------------------------------------------------
# Failures: the master, the framework's own callbacks
# --------------------------------------------------------------------------------------------


async def test_master_restart_disconnects_then_reregisters_with_the_same_id(cluster):
    port = quiet_port()
    master = await cluster.start_master(port=port)
    sched = Recorder()
    driver = await cluster.registered(sched, master)
    master.tell(ResourceOffers([offer("o1")]))
    await sched.next("resource_offers")

    await master.runtime.stop()
    assert await sched.next("disconnected") == ()
    assert not driver.connected and driver._process.offers == {}
    with pytest.raises(NotConnectedError):
        driver.launch_tasks("o1", [task()])

    master2 = await cluster.start_master(FakeMaster(framework_id="fw-other"), port=port)
    (master_info,) = await sched.next("reregistered")
    assert master_info.pid == str(master2.pid)
    request = await master2.next(ReregisterFramework)
    assert request.framework.id == "fw-1" and request.failover is False
    assert driver.framework_id == "fw-1" and driver.connected
    assert RegisterFramework.NAME not in master2.names()

    driver.kill_task("t1")  # talks to the new master
    assert (await master2.next(KillTask)).framework_id == "fw-1"
    assert sched.calls.count("registered") == 1

    # The driver linked the new master too: its end is noticed as well.
    await master2.runtime.stop()
    assert await sched.next("disconnected") == ()


async def test_a_raising_callback_does_not_kill_the_driver(cluster):
    master = await cluster.start_master()
    failures = {"offers": 1, "t1": 1}

    class Buggy(Recorder):
        def resource_offers(self, driver, offers):
            if failures["offers"]:
                failures["offers"] -= 1
                raise RuntimeError("bug in resource_offers")
            super().resource_offers(driver, offers)

        async def status_update(self, driver, status):
            await asyncio.sleep(0)
            if failures.get(status.task_id):
                failures[status.task_id] -= 1
                raise ValueError("bug in status_update")
            super().status_update(driver, status)

    sched = Buggy()
    driver = await cluster.registered(sched, master)
    master.tell(ResourceOffers([offer("o1")]))
    master.tell(ResourceOffers([offer("o2")]))
    (offers,) = await sched.next("resource_offers")
    assert offers[0].id == "o2"
    assert driver.callback_errors == 1

    failed, ok = status("t1", "TASK_RUNNING"), status("t2", "TASK_RUNNING")
    master.tell(StatusUpdate("fw-1", failed))
    master.tell(StatusUpdate("fw-1", ok))
    ack = await master.next(StatusUpdateAcknowledgement)
    assert ack.task_id == "t2"  # the update whose callback raised was not acknowledged
    assert driver.callback_errors == 2 and driver.connected
    assert driver.runtime.metrics.get("scheduler/callback_errors") == 2

    master.tell(StatusUpdate("fw-1", failed))  # the agent's retry is handled this time
    ack = await master.next(StatusUpdateAcknowledgement)
    assert (ack.task_id, ack.uuid) == ("t1", failed.uuid)


async def test_callbacks_run_one_at_a_time(cluster):
    master = await cluster.start_master()
    running = 0
    most = 0
    done = asyncio.Event()

    class Overlap(Recorder):
        async def status_update(self, driver, status):
            nonlocal running, most
            running += 1
            most = max(most, running)
            for _ in range(5):
                await asyncio.sleep(0)
            running -= 1
            if status.task_id == "t9":
                done.set()

    await cluster.registered(Overlap(), master)
    for i in range(10):
        master.tell(StatusUpdate("fw-1", status(f"t{i}", "TASK_RUNNING", ack=False)))
    await asyncio.wait_for(done.wait(), WAIT)
    assert most == 1


# --------------------------------------------------------------------------------------------
# Stopping
# --------------------------------------------------------------------------------------------


async def test_stop_without_failover_unregisters(cluster):
    master = await cluster.start_master()
    sched = Recorder()
    driver = await cluster.registered(sched, master)

    assert await driver.stop() is DriverStatus.DRIVER_STOPPED
    assert (await master.next(UnregisterFramework)).framework_id == "fw-1"
    assert await driver.join() is DriverStatus.DRIVER_STOPPED
    assert DeactivateFramework.NAME not in master.names()
    assert not driver.connected
    with pytest.raises(DriverNotRunningError):
        driver.kill_task("t1")
    with pytest.raises(SchedulerDriverError):
        await driver.start()


async def test_stop_with_failover_deactivates(cluster):
    master = await cluster.start_master()
    sched = Recorder()
    driver = await cluster.registered(sched, master)

    assert await driver.stop(failover=True) is DriverStatus.DRIVER_STOPPED
    assert (await master.next(DeactivateFramework)).framework_id == "fw-1"
    assert UnregisterFramework.NAME not in master.names()


@pytest.mark.parametrize("through_a_task", [False, True])
async def test_stop_from_inside_a_callback(cluster, through_a_task):
    master = await cluster.start_master()

    class StopOnFinish(Recorder):
        async def status_update(self, driver, status):
            super().status_update(driver, status)
            if is_terminal(status.state):
                if through_a_task:  # wait_for runs it in a task of its own: still no deadlock
                    stopped = await asyncio.wait_for(driver.stop(), WAIT)
                else:
                    stopped = await driver.stop()
                assert stopped is DriverStatus.DRIVER_STOPPED

    sched = StopOnFinish()
    driver = await cluster.registered(sched, master)
    master.tell(StatusUpdate("fw-1", status("t1", "TASK_FINISHED")))
    master.tell(StatusUpdate("fw-1", status("t2", "TASK_RUNNING")))  # after stop: not delivered

    assert await asyncio.wait_for(driver.join(), WAIT) is DriverStatus.DRIVER_STOPPED
    await master.next(UnregisterFramework)
    names = master.names()
    # The finished update was acknowledged before the teardown went out.
    assert names.index(StatusUpdateAcknowledgement.NAME) < names.index(UnregisterFramework.NAME)
    assert [s.task_id for (s,) in sched.queues["status_update"]._queue] == ["t1"]


async def test_stop_from_a_task_started_by_a_callback_waits_for_the_end(cluster):
    master = await cluster.start_master()
    go = asyncio.Event()

    class Background(Recorder):
        def registered(self, driver, framework_id, master_info):
            super().registered(driver, framework_id, master_info)
            self.worker = asyncio.ensure_future(self.work(driver))

        async def work(self, driver):
            await go.wait()
            status = await driver.stop()
            return status, driver.runtime in libproc.runtimes()

    sched = Background()
    await cluster.registered(sched, master)
    go.set()
    status, runtime_alive = await asyncio.wait_for(sched.worker, WAIT)
    assert status is DriverStatus.DRIVER_STOPPED
    assert not runtime_alive  # stop() returned only once the driver's own runtime was down


async def test_a_shared_runtime_is_left_running(cluster):
    master = await cluster.start_master()
    runtime = await Runtime("127.0.0.1", 0).start()
    cluster.runtimes.append(runtime)
    sched = Recorder()
    driver = await cluster.registered(sched, master, runtime=runtime)
    assert driver.pid.address == runtime.address
    await driver.stop()
    assert runtime in libproc.runtimes()

    # A driver whose runtime is stopped under it ends as aborted instead of hanging.
    sched2 = Recorder()
    driver2 = await cluster.registered(sched2, master, runtime=runtime)
    await runtime.stop()
    assert await asyncio.wait_for(driver2.join(), WAIT) is DriverStatus.DRIVER_ABORTED
    assert await driver2.stop() is DriverStatus.DRIVER_ABORTED  # the end already seen stays


def test_parse_master():
    assert str(parse_master("127.0.0.1:5050")) == "master@127.0.0.1:5050"
    assert str(parse_master("leader@10.0.0.1:5050")) == "leader@10.0.0.1:5050"
    for bad in ["", "127.0.0.1", "host:port", "h:0", "zk://h:2181/mesa", "h:70000"]:
        with pytest.raises(ValueError):
            parse_master(bad)


# --------------------------------------------------------------------------------------------
# mesa.execute and examples/run_n.py, as real subprocesses against a scripted fake master
# --------------------------------------------------------------------------------------------


class ScriptedMaster(FakeMaster):
    """Offers resources and plays each launched task: RUNNING, then FINISHED (or FAILED when
    its command mentions 'fail'; nothing more when it mentions 'sleep', until killed)."""

    def __init__(self, offers: list[str]) -> None:
        super().__init__()
        self.to_offer = list(offers)  # resource strings, one offer each, in order
        self.seq = 0

    def next_offer(self) -> None:
        if self.to_offer:
            self.seq += 1
            res = self.to_offer.pop(0)
            self.tell(ResourceOffers([Offer(f"o{self.seq}", "fw-1", "a1", "host-a1", res)]))

    def update(self, task_id: str, state: str, **kw: Any) -> None:
        ts = TaskStatus(task_id, state, agent_id="a1", uuid=uuid.uuid4().bytes, **kw)
        self.tell(StatusUpdate("fw-1", ts))

    def react(self, name: str, sender: UPID, body: Any) -> None:
        if name == RegisterFramework.NAME or name == DeclineOffers.NAME:
            self.next_offer()
        elif name == AcceptOffers.NAME:
            for t in body.tasks:
                self.update(t.task_id, "TASK_RUNNING", source="SOURCE_EXECUTOR")
                if "fail" in t.command.value:
                    self.update(
                        t.task_id,
                        "TASK_FAILED",
                        message="Command exited with status 1",
                        reason="REASON_COMMAND_EXECUTOR_FAILED",
                        source="SOURCE_EXECUTOR",
                    )
                elif "sleep" not in t.command.value:
                    self.update(t.task_id, "TASK_FINISHED", message="Command exited with status 0")
            self.next_offer()  # what the allocator would do with what is left
        elif name == KillTask.NAME:
            self.update(body.task_id, "TASK_KILLED", message="Command terminated with signal")


async def run_cli(cluster: Cluster, *args: str) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), LIBPROC_LOG_LEVEL="warning")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=env,
        cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    cluster.procs.append(proc)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_execute_runs_one_task_and_tears_down(cluster):
    master = await cluster.start_master(ScriptedMaster(["cpus:0.05;mem:512", "cpus:2;mem:512"]))
    code, out, err = await run_cli(
        cluster,
        "-m",
        "mesa.execute",
        f"--master={master.pid.address}",
        "--name=hello",
        "--command=echo hi",
        "--resources=cpus:0.1;mem:32",
    )
    assert code == 0, (out, err)
    assert "Received status update TASK_RUNNING for task 'hello'" in out
    assert "Received status update TASK_FINISHED for task 'hello'" in out
    assert "  message: Command exited with status 0" in out
    decline = await master.next(DeclineOffers)  # the first offer was too small
    assert decline.offer_ids == ["o1"]
    accept = await master.next(AcceptOffers)
    assert accept.offer_ids == ["o2"]
    (launched,) = accept.tasks
    assert (launched.name, launched.task_id, launched.agent_id) == ("hello", "hello", "a1")
    assert launched.command.value == "echo hi" and launched.resources == "cpus:0.1;mem:32"
    await master.next(UnregisterFramework)
    assert master.names().count(StatusUpdateAcknowledgement.NAME) == 2


async def test_execute_exits_non_zero_for_a_failed_task(cluster):
    master = await cluster.start_master(ScriptedMaster(["cpus:1;mem:128"]))
    code, out, err = await run_cli(
        cluster,
        "-m",
        "mesa.execute",
        f"--master={master.pid.address}",
        "--name=bad",
        "--command=exit 1  # fail",
        "--log-format=json",
    )
    assert code == 1, (out, err)
    assert "Received status update TASK_FAILED for task 'bad'" in out
    assert "  reason: REASON_COMMAND_EXECUTOR_FAILED" in out
    await master.next(UnregisterFramework)


async def test_execute_kill_after(cluster):
    master = await cluster.start_master(ScriptedMaster(["cpus:1;mem:128"]))
    code, out, err = await run_cli(
        cluster,
        "-m",
        "mesa.execute",
        f"--master={master.pid.address}",
        "--name=sleeper",
        "--command=sleep 1000",
        "--kill-after=0.01",
    )
    assert code == 1, (out, err)
    assert (await master.next(KillTask)).task_id == "sleeper"
    assert "Received status update TASK_KILLED for task 'sleeper'" in out


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_execute_interrupted_tears_the_framework_down(cluster, signum, code):
    master = await cluster.start_master(ScriptedMaster(["cpus:1;mem:128"]))
    env = dict(os.environ, PYTHONPATH=str(REPO), LIBPROC_LOG_LEVEL="warning")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesa.execute",
        f"--master={master.pid.address}",
        "--name=forever",
        "--command=sleep 1000",
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    cluster.procs.append(proc)
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
        assert line, "mesa.execute ended before the task was running"
        if b"TASK_RUNNING" in line:
            break
    proc.send_signal(signum)
    assert (await master.next(UnregisterFramework)).framework_id == "fw-1"
    assert await asyncio.wait_for(proc.wait(), WAIT) == code


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--name=x", "--command=true"], "--master"),
        (["--master=nohost", "--name=x", "--command=true"], "--master"),
        (["--master=h:1", "--name=x", "--command=true", "--resources=cpus:abc"], "--resources"),
        (["--master=h:1", "--name=x", "--command=true", "--resources="], "--resources"),
        (["--master=h:1", "--name=x", "--command=true", "--kill-after=-1"], "--kill-after"),
        (["--master=h:1", "--name=x", "--command=true", "--log-format=xml"], "--log-format"),
    ],
)
def test_execute_rejects_bad_flags(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exc:
        execute.main(argv)
    assert exc.value.code == 2
    assert complaint in capsys.readouterr().err


def test_execute_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        execute.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--master", "--name", "--command", "--resources", "--framework-name"]:
        assert flag in text
    for flag in ["--kill-after", "--log-format", "--role"]:
        assert flag in text


async def test_run_n_example(cluster):
    master = await cluster.start_master(ScriptedMaster(["cpus:0.25;mem:1024", "cpus:1;mem:64"]))
    code, out, err = await run_cli(
        cluster,
        "examples/run_n.py",
        f"--master={master.pid.address}",
        "--count=3",
        "--command=echo hi",
        "--cpus=0.1",
        "--mem=32",
    )
    assert code == 0, (out, err)
    assert out.count("TASK_FINISHED") == 3
    accepts = [await master.next(AcceptOffers) for _ in range(2)]
    assert [len(a.tasks) for a in accepts] == [2, 1]  # as many as fit in each offer
    assert len({t.task_id for a in accepts for t in a.tasks}) == 3
    await master.next(UnregisterFramework)


async def test_run_n_example_fails_when_a_task_fails(cluster):
    master = await cluster.start_master(ScriptedMaster(["cpus:1;mem:1024"]))
    code, out, err = await run_cli(
        cluster,
        "examples/run_n.py",
        f"--master={master.pid.address}",
        "--count=2",
        "--command=false  # fail",
    )
    assert code != 0, (out, err)
    assert out.count("TASK_FAILED") == 2
