"""The master with a real agent and a real framework in the test process, over real ZeroMQ.

Everything runs in this process except executors and tasks, so libproc's message filters can
drop what the master sends or receives — the way to show that status updates are retried until
acknowledged — and the master's bad-input handling can be driven with raw messages.
"""

from __future__ import annotations

import contextlib
import gc
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import libproc
import mesa.actors.master as master_module
from libproc import Clock, Process, Runtime, handler
from mesa.actors.agent import Agent
from mesa.actors.master import Master, MasterFlags, ping_plan
from mesa.info import AgentInfo, FrameworkInfo, TaskStatus
from mesa.messages import (
    AcceptOffers,
    AgentRegistered,
    AllocatorRecoverResources,
    FrameworkError,
    KillTask,
    PingAgent,
    PongAgent,
    RegisterAgent,
    ReregisterAgent,
    RunTask,
    RunTasks,
    StatusUpdate,
    StatusUpdateAcknowledgement,
    StatusUpdateAcknowledgements,
    StatusUpdates,
    UnregisterAgent,
)
from mesa.scheduler import SchedulerDriver
from mesa.task_state import TaskState
from tests.e2e.framework import Recorder, command_task
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(120)


@dataclass
class Setup:
    master_rt: Runtime
    agent_rt: Runtime
    master: Master
    agent_pid: libproc.UPID


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    master_rt = await Runtime("127.0.0.1", 0, http_port=0).start()
    agent_rt = await Runtime("127.0.0.1", 0).start()
    try:
        master = Master(MasterFlags(allocation_interval=0.05, offer_timeout=None))
        master_rt.spawn(master)
        agent_pid = agent_rt.spawn(
            Agent(
                master_rt.address,
                tmp_path / "agent",
                resources="cpus:2;mem:512;disk:64",
                status_update_backoff=0.1,
                status_update_backoff_max=0.2,
            )
        )
        yield Setup(master_rt, agent_rt, master, agent_pid)
    finally:
        await agent_rt.stop()
        await master_rt.stop()


async def _framework(setup: Setup, **info: object) -> tuple[Recorder, SchedulerDriver]:
    recorder = Recorder()
    driver = SchedulerDriver(
        recorder,
        FrameworkInfo(user="", name="t", **info),
        setup.master_rt.address,  # type: ignore[arg-type]
    )
    await driver.start()
    await recorder.until(lambda: recorder.registered_ids, "registered")
    return recorder, driver


async def test_status_updates_are_retried_until_acknowledged(setup: Setup) -> None:
    fw, driver = await _framework(setup)
    try:
        offer = await fw.offer()
        # Every acknowledgement the master would pass to the agent is lost on the way.
        dropped = libproc.drop_messages(name=StatusUpdateAcknowledgement.NAME, to=setup.agent_pid)
        # A command task run directly: TASK_RUNNING once its container is up, then (it ends at
        # once) TASK_FINISHED, which must wait until TASK_RUNNING is acknowledged.
        driver.launch_tasks([offer.id], [command_task(offer, "t1", "true")])
        # The same update (same uuid) comes again and again while acks are lost...
        await fw.until(
            lambda: (
                sum(1 for s in fw.updates if s.task_id == "t1" and s.state == "TASK_RUNNING") >= 3
            ),
            "TASK_RUNNING retried",
        )
        running = [s for s in fw.updates if s.state == "TASK_RUNNING"]
        assert len({s.uuid for s in running}) == 1
        # ...and FINISHED waits behind it: updates for a task stay in order.
        assert not any(s.state == "TASK_FINISHED" for s in fw.updates)
        # (Each lost on its way to the agent, which can be after a copy sent later has come.)
        await eventually(lambda: dropped.count >= 2, "acknowledgements dropped")
        dropped.cancel()
        await fw.state_of("t1", TaskState.TASK_FINISHED)
        states = [s.state for s in fw.updates if s.task_id == "t1"]
        assert set(states) == {"TASK_RUNNING", "TASK_FINISHED"}
        assert states.index("TASK_FINISHED") > max(
            i for i, s in enumerate(states) if s == "TASK_RUNNING"
        )
        assert setup.agent_rt.metrics.get("agent/status_updates_retried") >= 2
    finally:
        await driver.stop()


class Stranger(Process):
    """A peer that sends the master nonsense and records the answers."""

    def __init__(self) -> None:
        super().__init__("stranger")
        self.errors: list[str] = []

    @handler(FrameworkError.NAME)
    def error(self, sender: libproc.UPID, body: FrameworkError) -> None:
        self.errors.append(body.message)


async def test_bad_messages_are_counted_answered_and_survived(setup: Setup) -> None:
    stranger = Stranger()
    setup.agent_rt.spawn(stranger)
    master = setup.master.pid
    answered = libproc.expect_message(name=FrameworkError.NAME, to=stranger.pid)
    # A call for a framework that does not exist: answered with an error.
    stranger.send(master, AcceptOffers.NAME, AcceptOffers("no-such-framework", ["x"], []))
    assert "not registered" in (await answered).body.message
    # Malformed bodies: a dict where a record belongs, a string, nothing at all.
    stranger.send(master, KillTask.NAME, {"framework_id": 1})
    stranger.send(master, StatusUpdate.NAME, "garbage")
    stranger.send(master, AcceptOffers.NAME, None)
    stranger.send(master, "mesa.NoSuchMessage", [1, 2, 3])
    # The master still serves a real framework afterwards.
    fw, driver = await _framework(setup)
    try:
        offer = await fw.offer()
        driver.launch_tasks([offer.id], [command_task(offer, "ok", "true")])
        await fw.state_of("ok", TaskState.TASK_FINISHED)
    finally:
        await driver.stop()
    metrics = setup.master_rt.metrics.snapshot()
    assert metrics["master/invalid_messages"] >= 3
    assert metrics["libproc/messages_dropped/unknown_message"] >= 1
    assert metrics.get("libproc/handler_errors", 0) == 0


async def test_offers_are_rescinded_after_offer_timeout(tmp_path: Path) -> None:
    async with Runtime("127.0.0.1", 0) as master_rt, Runtime("127.0.0.1", 0) as agent_rt:
        master_rt.spawn(Master(MasterFlags(allocation_interval=0.05, offer_timeout=0.2)))
        agent_rt.spawn(Agent(master_rt.address, tmp_path / "a", resources="cpus:1;mem:128"))
        recorder = Recorder()
        driver = SchedulerDriver(
            recorder, FrameworkInfo(user="", name="hoarder"), master_rt.address
        )
        await driver.start()
        try:
            offer = await recorder.offer()
            await recorder.until(lambda: offer.id in recorder.rescinded, "rescind")
            # The resources come back in a fresh offer.
            again = await recorder.offer()
            assert again.id != offer.id and again.agent_id == offer.agent_id
            assert master_rt.metrics.get("master/offers_rescinded") >= 1
        finally:
            await driver.stop()


async def test_declined_resources_stay_away_for_refuse_seconds(tmp_path: Path) -> None:
    # Time is paused and moved by hand below; pings are set far apart so that jumping the
    # clock does not also count a healthy agent's pongs (still in flight) as missed.
    async with Runtime("127.0.0.1", 0) as master_rt, Runtime("127.0.0.1", 0) as agent_rt:
        master_rt.spawn(Master(MasterFlags(allocation_interval=0.05, agent_ping_interval=3600.0)))
        agent_rt.spawn(Agent(master_rt.address, tmp_path / "a", resources="cpus:1;mem:128"))
        recorder = Recorder()
        driver = SchedulerDriver(
            recorder, FrameworkInfo(user="", name="decliner"), master_rt.address
        )
        await driver.start()
        try:
            offer = await recorder.offer()
            libproc.Clock.pause()
            driver.decline_offer(offer.id, refuse_seconds=30)
            declined = libproc.expect_message(name=AllocatorRecoverResources.NAME)
            await declined
            await libproc.settle()
            for _ in range(10):  # ten seconds of allocation cycles: filtered, no offer
                libproc.Clock.advance(1.0)
                await libproc.settle()
            assert recorder.offers.empty()
            assert master_rt.metrics.get("allocator/filtered") >= 1
            libproc.Clock.advance(20.5)  # past the filter
            again = await recorder.offer()
            assert again.agent_id == offer.agent_id
        finally:
            libproc.Clock.resume()
            await driver.stop()


async def test_state_endpoint_names_master_agents_and_tasks(setup: Setup) -> None:
    import aiohttp

    fw, driver = await _framework(setup)
    try:
        offer = await fw.offer()
        driver.launch_tasks([offer.id], [command_task(offer, "s1", "sleep 30")])
        await fw.state_of("s1", TaskState.TASK_RUNNING)
        url = f"http://127.0.0.1:{setup.master_rt.http_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/master/state") as r:
                state = await r.json()
            async with http.get(f"{url}/metrics/snapshot") as r:
                metrics = await r.json()
            async with http.get(f"{url}/health") as r:
                assert r.status == 200
        assert state["pid"] == str(setup.master.pid) == state["leader"]
        assert state["agents"][0]["resources"]["cpus"] == 2
        task = state["frameworks"][0]["tasks"][0]
        assert task["id"] == "s1" and task["state"] == "TASK_RUNNING"
        assert state["resources"]["used"]["cpus"] == pytest.approx(0.1)
        assert metrics["master/tasks_launched"] == 1
        assert metrics["master/agents_active"] == 1
    finally:
        await driver.stop()


async def test_an_ended_task_is_kept_for_state_without_the_garbage_collector(
    setup: Setup,
) -> None:
    import gc

    from tests.waiting import eventually

    fw, driver = await _framework(setup)
    try:
        offer = await fw.offer()
        driver.launch_tasks([offer.id], [command_task(offer, "done", "true")])
        await fw.state_of("done", TaskState.TASK_FINISHED)
        framework = setup.master.frameworks[fw.registered_ids[0]]
        # Kept once its terminal update is acknowledged (the driver acknowledges for us).
        await eventually(lambda: framework.completed, "the task kept as completed")
        assert not gc.is_tracked(framework.completed[0])
        task = setup.master.state(None)["frameworks"][0]["completed_tasks"][0]
        assert task["id"] == "done" and task["state"] == "TASK_FINISHED"
        assert task["resources"]["cpus"] == pytest.approx(0.1)
        assert [s["state"] for s in task["statuses"]] == ["TASK_RUNNING", "TASK_FINISHED"]
        assert all(isinstance(s["timestamp"], float) for s in task["statuses"])
    finally:
        await driver.stop()


def test_an_ended_task_keeps_its_statuses_exactly_and_a_faulty_agents_as_text() -> None:
    """The record of an ended task holds its last ten statuses' timestamps to the bit and is
    never tracked by the collector; a state that is not text or a timestamp that is not a
    number (a faulty agent's) is shown as it came, not lost and not fatal."""
    from mesa.info import CommandInfo, TaskInfo
    from mesa.resources import Resources

    def ended(statuses: list[dict[str, Any]]) -> dict[str, Any]:
        info = TaskInfo(
            name="t",
            task_id="t1",
            agent_id="agent",
            resources="cpus:1;mem:32",
            command=CommandInfo(value="true"),
        )
        task = master_module._Task(info, "fw", "agent", Resources.parse("cpus:1;mem:32"), None)
        task.state = TaskState.TASK_FINISHED
        task.statuses = statuses
        kept = master_module._completed(task)
        assert not gc.is_tracked(kept)
        return master_module._completed_json(kept)

    stamps = [1765000000.0 + i / 3 for i in range(12)]
    shown = ended([{"state": TaskState.TASK_RUNNING, "timestamp": t} for t in stamps])
    assert [s["timestamp"] for s in shown["statuses"]] == stamps[-10:]
    assert {s["state"] for s in shown["statuses"]} == {"TASK_RUNNING"}
    assert ended([])["statuses"] == []

    odd = ended(
        [
            {"state": TaskState.TASK_RUNNING, "timestamp": "yesterday"},
            {"state": 7, "timestamp": 12},
            {"state": "A;B", "timestamp": 1.0},
            {"state": "", "timestamp": None},
            {"state": TaskState.TASK_FINISHED, "timestamp": b"\x00"},
        ]
    )
    assert odd["statuses"] == [
        {"state": "TASK_RUNNING", "timestamp": "yesterday"},
        {"state": 7, "timestamp": 12},
        {"state": "A;B", "timestamp": 1.0},
        {"state": "", "timestamp": None},
        {"state": "TASK_FINISHED", "timestamp": "b'\\x00'"},
    ]
    # A ";" in a state takes the JSON path; an empty state alone does not need it.
    assert [s["state"] for s in ended([{"state": "", "timestamp": 1.0}])["statuses"]] == [""]
    assert ended([{"state": "A;B", "timestamp": 1.0}])["statuses"] == [
        {"state": "A;B", "timestamp": 1.0}
    ]


async def test_the_tasks_of_one_accept_reach_the_agent_in_one_message(setup: Setup) -> None:
    fw, driver = await _framework(setup)
    try:
        offer = await fw.offer()
        batch = libproc.expect_message(name=RunTasks.NAME, to=setup.agent_pid)
        tasks = [command_task(offer, f"b{i}", "true", "cpus:0.1;mem:16") for i in range(3)]
        driver.launch_tasks([offer.id], tasks)
        message = await batch
        assert [t.task_id for t in message.body.tasks] == ["b0", "b1", "b2"]
        for i in range(3):
            await fw.state_of(f"b{i}", TaskState.TASK_FINISHED)
        # One task alone still goes as a RunTask.
        offer = await fw.offer()
        single = libproc.expect_message(name=RunTask.NAME, to=setup.agent_pid)
        driver.launch_tasks([offer.id], [command_task(offer, "alone", "true", "cpus:0.1;mem:16")])
        assert (await single).body.task.task_id == "alone"
        await fw.state_of("alone", TaskState.TASK_FINISHED)
    finally:
        await driver.stop()


class MiniAgent(Process):
    """Registers with ``resources`` under ``hostname`` and answers pings: what the master needs
    of an agent to keep it. Subclasses add what a test looks at."""

    def __init__(self, master: libproc.UPID, name: str, hostname: str, resources: str) -> None:
        super().__init__(name)
        self.master = master
        self.hostname = hostname
        self.resources = resources
        self.agent_id: str | None = None
        self.pongs = True  # False: the agent is cut off from the master (pings go unanswered)

    def initialize(self) -> None:
        info = AgentInfo(hostname=self.hostname, resources=self.resources, port=self.pid.port)
        self.send(self.master, RegisterAgent.NAME, RegisterAgent(info))

    @handler(AgentRegistered.NAME)
    def registered(self, sender: libproc.UPID, msg: AgentRegistered) -> None:
        self.agent_id = msg.agent_id

    @handler(PingAgent.NAME)
    def ping(self, sender: libproc.UPID, msg: PingAgent) -> None:
        self.pinged()
        if self.pongs:
            self.send(sender, PongAgent.NAME, PongAgent(self.agent_id))

    def pinged(self) -> None:
        """A ping came (before the pong goes)."""


class BurstAgent(MiniAgent):
    """An agent that answers a RunTasks with one StatusUpdates for all its tasks (RUNNING, or
    what ``then`` says once those are acknowledged), as a real agent's streams do when its
    tasks start and end together; records the acknowledgements it gets."""

    def __init__(self, master: libproc.UPID) -> None:
        super().__init__(master, "agent", "burst", "cpus:4;mem:512")
        self.acks: list[tuple[str, list[str]]] = []  # (message name, task ids)
        self.tasks: list[str] = []
        self.framework_id = ""
        # What the RunTasks is answered with: a state, and the latest_state it may carry.
        self.report_on_run: tuple[str, str | None] = (TaskState.TASK_RUNNING, None)

    @handler(RunTasks.NAME)
    def run(self, sender: libproc.UPID, msg: RunTasks) -> None:
        self.framework_id = msg.framework.id
        self.tasks = [t.task_id for t in msg.tasks]
        self.report(*self.report_on_run)

    def report(self, state: str, latest_state: str | None = None) -> None:
        updates = [
            StatusUpdate(
                self.framework_id,
                TaskStatus(tid, state, uuid=f"{tid}/{state}".encode()),
                latest_state=latest_state,
            )
            for tid in self.tasks
        ]
        self.send(self.master, StatusUpdates.NAME, StatusUpdates(updates))

    @handler(StatusUpdateAcknowledgements.NAME)
    def acked_many(self, sender: libproc.UPID, msg: StatusUpdateAcknowledgements) -> None:
        assert msg.agent_ids == [self.agent_id] * len(msg.task_ids)
        assert [u.decode().split("/")[0] for u in msg.uuids] == msg.task_ids
        self.acks.append((StatusUpdateAcknowledgements.NAME, list(msg.task_ids)))

    @handler(StatusUpdateAcknowledgement.NAME)
    def acked(self, sender: libproc.UPID, msg: StatusUpdateAcknowledgement) -> None:
        self.acks.append((StatusUpdateAcknowledgement.NAME, [msg.task_id]))


@contextlib.asynccontextmanager
async def burst_cluster(
    name: str, **flags: Any
) -> AsyncIterator[tuple[Runtime, Master, BurstAgent, Recorder, SchedulerDriver]]:
    """A master (``flags`` over the defaults here), a :class:`BurstAgent` in a runtime of its
    own, and a started framework."""
    async with Runtime("127.0.0.1", 0) as master_rt, Runtime("127.0.0.1", 0) as agent_rt:
        flags = {"allocation_interval": 0.05, "offer_timeout": None, **flags}
        master = Master(MasterFlags(**flags))
        master_rt.spawn(master)
        agent = BurstAgent(master.pid)
        agent_rt.spawn(agent)
        fw = Recorder()
        driver = SchedulerDriver(fw, FrameworkInfo(user="", name=name), master_rt.address)
        await driver.start()
        try:
            yield master_rt, master, agent, fw, driver
        finally:
            await driver.stop()


async def test_a_burst_of_updates_is_passed_on_and_acknowledged_as_one(tmp_path: Path) -> None:
    async with burst_cluster("burst") as (master_rt, master, agent, fw, driver):
        offer = await fw.offer()
        assert offer.agent_id == agent.agent_id
        to_framework = libproc.expect_message(name=StatusUpdates.NAME, to=driver.pid)
        tasks = [command_task(offer, f"t{i}", "true", "cpus:1;mem:64") for i in range(3)]
        driver.launch_tasks([offer.id], tasks)
        # The framework gets the three RUNNINGs in one message, and acknowledges them in one.
        batch = (await to_framework).body
        assert [u.status.task_id for u in batch.updates] == ["t0", "t1", "t2"]
        await eventually(lambda: len(agent.acks) == 1)
        assert agent.acks == [(StatusUpdateAcknowledgements.NAME, ["t0", "t1", "t2"])]
        assert len(master.frameworks[fw.registered_ids[0]].tasks) == 3
        # They end together: what they held goes back to the allocator in one recovery.
        recovered = libproc.expect_message(
            name=AllocatorRecoverResources.NAME, where=lambda m: m.sender == master.pid
        )
        agent.report(TaskState.TASK_FINISHED)
        freed = (await recovered).body
        assert (freed.agent_id, str(freed.resources)) == (agent.agent_id, "cpus:3;mem:192")
        for i in range(3):
            await fw.state_of(f"t{i}", TaskState.TASK_FINISHED)
        await eventually(lambda: len(agent.acks) == 2)
        assert agent.acks[1] == (StatusUpdateAcknowledgements.NAME, ["t0", "t1", "t2"])
        # Acknowledged terminal updates: the master has forgotten the tasks.
        framework = master.frameworks[fw.registered_ids[0]]
        assert not framework.tasks and len(framework.completed) == 3
        assert master_rt.metrics.get("master/status_update_acks") == 6


async def test_a_terminal_latest_state_frees_the_resources_a_round_trip_early(
    tmp_path: Path,
) -> None:
    """RUNNING arrives saying the task has since finished (the agent's stream held FINISHED
    behind it): the master frees the resources then, tells the framework RUNNING, keeps the task
    through RUNNING's acknowledgement, and forgets it only when FINISHED is acknowledged; the
    resources are not freed twice."""
    async with burst_cluster("early") as (master_rt, master, agent, fw, driver):
        offer = await fw.offer()
        # (The part of the offer the tasks leave is recovered at the accept: not this.)
        recovered = libproc.expect_message(
            name=AllocatorRecoverResources.NAME,
            where=lambda m: m.sender == master.pid and str(m.body.resources).endswith(":128"),
        )
        agent.report_on_run = (TaskState.TASK_RUNNING, TaskState.TASK_FINISHED)
        tasks = [command_task(offer, f"t{i}", "true", "cpus:1;mem:64") for i in range(2)]
        driver.launch_tasks([offer.id], tasks)
        freed = (await recovered).body
        assert (freed.agent_id, str(freed.resources)) == (agent.agent_id, "cpus:2;mem:128")
        framework = master.frameworks[fw.registered_ids[0]]
        assert {t.state for t in framework.tasks.values()} == {TaskState.TASK_FINISHED}
        assert master_rt.metrics.get("master/tasks_ended_by_latest_state") == 2
        # The framework is told RUNNING, and its acknowledgement does not end the task.
        for i in range(2):
            await fw.state_of(f"t{i}", TaskState.TASK_RUNNING)
        await eventually(lambda: len(agent.acks) == 1)
        assert len(framework.tasks) == 2 and not framework.completed
        agent.report(TaskState.TASK_FINISHED)
        for i in range(2):
            await fw.state_of(f"t{i}", TaskState.TASK_FINISHED)
        await eventually(lambda: len(agent.acks) == 2)
        assert not framework.tasks and len(framework.completed) == 2
        assert master_rt.metrics.get("master/tasks_finished") == 2
        assert not master_rt.metrics.get("allocator/recovered_unknown")


async def run_two_ended_behind_running(
    agent: BurstAgent, fw: Recorder, driver: SchedulerDriver
) -> None:
    """Launch t0 and t1, which the agent reports RUNNING with a terminal latest_state (their
    FINISHED held behind, as a real agent's stream holds it), and wait until the framework has
    seen them RUNNING. (Two: a BurstAgent answers RunTasks, an accept of several tasks.)"""
    offer = await fw.offer()
    agent.report_on_run = (TaskState.TASK_RUNNING, TaskState.TASK_FINISHED)
    tasks = [command_task(offer, f"t{i}", "true", "cpus:1;mem:64") for i in range(2)]
    driver.launch_tasks([offer.id], tasks)
    for i in range(2):
        await fw.state_of(f"t{i}", TaskState.TASK_RUNNING)


async def test_an_end_known_by_latest_state_is_reconciled_and_told_as_the_framework_knows_it(
    tmp_path: Path,
) -> None:
    """Between RUNNING (with a terminal latest_state) and FINISHED, the framework has been told
    RUNNING: reconciliation answers RUNNING (as Mesos answers with the last state it sent), and
    when the agent goes away before FINISHED comes, the framework is told that end, by the
    master, and the master forgets the tasks."""
    async with burst_cluster("ended") as (_master_rt, master, agent, fw, driver):
        await run_two_ended_behind_running(agent, fw, driver)
        framework = master.frameworks[fw.registered_ids[0]]
        assert {t.state for t in framework.tasks.values()} == {TaskState.TASK_FINISHED}
        driver.reconcile_tasks([TaskStatus("t0", TaskState.TASK_RUNNING, agent_id=agent.agent_id)])
        driver.reconcile_tasks()
        await fw.until(lambda: len(fw.updates) == 5, "three reconciliation answers")
        assert [u.state for u in fw.updates[2:]] == [TaskState.TASK_RUNNING] * 3
        # The agent leaves before it could send FINISHED: the framework still hears the end.
        assert agent.agent_id is not None
        agent.send(master.pid, UnregisterAgent.NAME, UnregisterAgent(agent.agent_id))
        for i in range(2):
            ended = await fw.state_of(f"t{i}", TaskState.TASK_FINISHED)
            assert ended.source == "SOURCE_MASTER"
        assert not framework.tasks and len(framework.completed) == 2


async def test_an_unreachable_agents_task_ended_by_latest_state_is_told_its_end() -> None:
    """The agent is cut off after its RUNNING (with a terminal latest_state) arrived: FINISHED
    cannot follow until the partition heals, so the framework is told the end by the master,
    not that the task is lost."""
    flags = {"agent_ping_interval": 0.05, "max_agent_ping_timeouts": 2}
    async with burst_cluster("cut-off", **flags) as (_rt, master, agent, fw, driver):
        await run_two_ended_behind_running(agent, fw, driver)
        agent.pongs = False
        for i in range(2):
            ended = await fw.state_of(f"t{i}", TaskState.TASK_FINISHED)
            assert ended.source == "SOURCE_MASTER" and "unreachable" in (ended.message or "")
        assert not any(u.state == TaskState.TASK_LOST for u in fw.updates)
        assert not master.frameworks[fw.registered_ids[0]].tasks


async def test_a_reregistering_agent_without_a_task_ended_by_latest_state_tells_its_end() -> None:
    """The agent comes back (a restart) without the tasks whose FINISHED its stream held behind
    RUNNING: the framework is told that end by the master, not that the tasks are lost, and the
    master forgets them."""
    async with burst_cluster("restarted") as (_rt, master, agent, fw, driver):
        await run_two_ended_behind_running(agent, fw, driver)
        info = AgentInfo(
            hostname=agent.hostname,
            resources=agent.resources,
            port=agent.pid.port,
            id=agent.agent_id,
        )
        agent.send(master.pid, ReregisterAgent.NAME, ReregisterAgent(info))
        for i in range(2):
            ended = await fw.state_of(f"t{i}", TaskState.TASK_FINISHED)
            assert ended.source == "SOURCE_MASTER"
            assert ended.reason == "REASON_AGENT_RESTARTED"
        assert not any(u.state == TaskState.TASK_LOST for u in fw.updates)
        framework = master.frameworks[fw.registered_ids[0]]
        assert not framework.tasks and len(framework.completed) == 2


def test_a_ping_round_is_cut_in_slices_spread_over_the_interval() -> None:
    assert ping_plan(0, 1.0) == (1, 1.0)
    assert ping_plan(250, 1.0) == (250, 1.0)  # a small cluster: one slice
    assert ping_plan(10_000, 5.0) == (1000, 0.5)
    assert ping_plan(50_000, 5.0) == (1000, 0.1)
    # 50,000 agents pinged every second: 20 slices a second at most, so 2,500 agents a slice.
    assert ping_plan(50_000, 1.0) == (2500, 0.05)


@pytest.fixture
def slices_of_100(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of at most 100 agents, so that 250 agents make three."""
    monkeypatch.setattr(master_module, "_PING_SLICE_MAX", 100)


class PingedAgent(MiniAgent):
    """Registers, answers pings, and notes (on the paused Clock) when each ping came."""

    def __init__(self, master: libproc.UPID, n: int) -> None:
        super().__init__(master, f"agent{n}", f"pinged{n}", "cpus:1;mem:64")
        self.pings: list[float] = []

    def pinged(self) -> None:
        self.pings.append(Clock.now())


@contextlib.asynccontextmanager
async def pinged_cluster() -> AsyncIterator[list[PingedAgent]]:
    """A master pinging every second and 250 registered agents, on a paused Clock: the first
    round is due a second after the master started, whenever the test advances to it."""
    async with Runtime("127.0.0.1", 0) as master_rt, Runtime("127.0.0.1", 0) as agent_rt:
        Clock.pause()
        try:
            master = Master(MasterFlags(agent_ping_interval=1.0, offer_timeout=None))
            master_rt.spawn(master)
            agents = [PingedAgent(master.pid, n) for n in range(250)]
            for agent in agents:
                agent_rt.spawn(agent)
            await eventually(lambda: all(a.agent_id for a in agents))
            yield agents
            assert master_rt.metrics.get("master/agents_marked_unreachable") in (None, 0)
        finally:
            Clock.resume()


async def test_every_agent_is_pinged_once_an_interval_in_slices(slices_of_100: None) -> None:
    async with pinged_cluster() as agents:
        # The first round starts an interval after the master did; then a slice every
        # third of a second: three rounds of three slices.
        steps = [1.0] + [1.0 / 3 + 1e-6] * 8
        pings = 0
        for k, step in enumerate(steps):
            Clock.advance(step)
            pings += 82 if k % 3 == 2 else 84
            await eventually(lambda n=pings: sum(len(a.pings) for a in agents) == n)
        # Every agent once a round, and no more than a slice (84) pinged at one instant.
        assert [len(a.pings) for a in agents] == [3] * len(agents)
        by_time = Counter(t for a in agents for t in a.pings)
        assert sorted(by_time.values()) == [82] * 3 + [84] * 6


async def test_a_late_ping_timer_catches_up_without_pinging_anyone_twice(
    slices_of_100: None,
) -> None:
    """Slices are due at fixed times: a timer that fires late pings what is due by now, so a
    busy master does not stretch its rounds (agents would take it for gone); and a master more
    than a round behind starts afresh rather than ping everyone several times at once."""
    async with pinged_cluster() as agents:

        def pings() -> int:
            return sum(len(a.pings) for a in agents)

        Clock.advance(1.0)  # the first slice (84)
        await eventually(lambda: pings() == 84)
        # Two thirds of a round late: the two slices due meanwhile and the next round's
        # first are pinged now.
        Clock.advance(1.0)
        await eventually(lambda: pings() == 250 + 84)
        assert max(len(a.pings) for a in agents) == 2
        # Then on time again: the next slice a third of a second later.
        Clock.advance(1.0 / 3 + 1e-6)
        await eventually(lambda: pings() == 250 + 168)
        # Ten rounds late: one slice now, not ten rounds of pings at once.
        Clock.advance(10.0)
        await eventually(lambda: pings() >= 250 + 168 + 82)
        await libproc.settle()
        assert pings() == 250 + 168 + 82
        assert max(len(a.pings) for a in agents) == 2
