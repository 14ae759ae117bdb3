"""The allocator: hierarchical DRF, quota, reservations, filters, revive/suppress, batching,
incremental cycles and freedom from starvation.

Every test runs the allocator actor in a runtime on the in-memory network under a paused Clock,
drives it with the master's messages, and collects its ``Allocations`` in a fake master. Nothing
sleeps and nothing is timed: ``step()`` advances the clock past the batching delay and settles.
After every step the allocator's books are checked (conservation of resources, sorted sorters,
and that every agent left with free resources had nobody eligible to take them).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import libproc
from libproc import Clock, MemoryNetwork, Process, Runtime, handler
from mesa.actors.allocator import Allocator, _is_filtered, _meets
from mesa.drf import DRFClient, DRFSorter, Totals
from mesa.messages import (
    Allocations,
    AllocatorActivateAgent,
    AllocatorActivateFramework,
    AllocatorAddAgent,
    AllocatorAddFramework,
    AllocatorDeactivateAgent,
    AllocatorDeactivateFramework,
    AllocatorRecoverResources,
    AllocatorRemoveAgent,
    AllocatorRemoveFramework,
    AllocatorRevive,
    AllocatorSetQuota,
    AllocatorSetWeight,
    AllocatorSuppress,
)
from mesa.resources import Resources

P = Resources.parse
AGENT = "cpus:4;mem:1024"
BATCH = 0.01  # the allocator's default batch_delay


class FakeMaster(Process):
    """Collects what the allocator hands out, as the master would."""

    def __init__(self) -> None:
        super().__init__("master")
        self.received: list[Allocations] = []

    @handler(Allocations.NAME)
    def allocations(self, sender: Any, body: Allocations) -> None:
        assert len(body.items) == len(body.roles)
        self.received.append(body)


class Offer(tuple):
    """(framework_id, agent_id, Resources, role), readable in assertion messages."""

    @property
    def framework(self) -> str:
        return self[0]

    @property
    def agent(self) -> str:
        return self[1]

    @property
    def resources(self) -> Resources:
        return self[2]

    @property
    def role(self) -> str:
        return self[3]


class Cluster:
    """The allocator and a fake master in one runtime, driven like the master drives it."""

    def __init__(self, rt: Runtime, master: FakeMaster, allocator: Allocator) -> None:
        self.rt = rt
        self.master = master
        self.allocator = allocator
        self.seen = 0
        self.outstanding: dict[tuple[str, str], Offer] = {}

    # -- the master's side of the protocol ---------------------------------------------------

    def send(self, msg: Any) -> None:
        self.rt.send(self.allocator.pid, msg.NAME, msg)

    def add_agent(self, agent_id: str, resources: str = AGENT, used: Any = None) -> None:
        self.send(AllocatorAddAgent(agent_id, f"{agent_id}.example", P(resources), used or {}))

    def add_framework(self, fid: str, roles: tuple[str, ...] = ("*",), **kw: Any) -> None:
        self.send(AllocatorAddFramework(fid, list(roles), **kw))

    def decline(self, offer: Offer, refuse: float | None = 5.0, role: bool = False) -> None:
        """Give an offer back (a decline when ``refuse`` is set, a rescind otherwise)."""
        self.outstanding.pop((offer.framework, offer.agent), None)
        self.send(
            AllocatorRecoverResources(
                offer.agent,
                offer.framework,
                offer.resources,
                refuse,
                offer.role if role else None,
            )
        )

    # -- observing ---------------------------------------------------------------------------

    async def step(self, seconds: float = BATCH) -> list[Offer]:
        """Let time pass, let everything settle, and return the offers made meanwhile."""
        await libproc.settle()
        Clock.advance(seconds)
        await libproc.settle()
        new = self.master.received[self.seen :]
        self.seen = len(self.master.received)
        offers = [
            Offer((f, a, r, role))
            for msg in new
            for (f, a, r), role in zip(msg.items, msg.roles, strict=True)
        ]
        for o in offers:
            self.outstanding[(o.framework, o.agent)] = o
        check_books(self.allocator)
        return offers

    async def state(self) -> dict[str, Any]:
        return await libproc.dispatch(self.allocator.pid, "state")

    @property
    def messages(self) -> int:
        return len(self.master.received)


@pytest.fixture
async def make_cluster() -> AsyncIterator[Any]:
    Clock.pause()
    runtimes: list[Runtime] = []

    async def make(**kw: Any) -> Cluster:
        rt = Runtime(transport=MemoryNetwork())
        await rt.start()
        runtimes.append(rt)
        master = FakeMaster()
        rt.spawn(master)
        kw.setdefault("id", "allocator")
        allocator = Allocator(master.pid, **kw)
        rt.spawn(allocator)
        await libproc.settle()
        return Cluster(rt, master, allocator)

    yield make
    for rt in runtimes:
        await rt.stop()


@pytest.fixture
async def cluster(make_cluster: Any) -> Cluster:
    return await make_cluster()


def by_framework(offers: list[Offer]) -> dict[str, list[Offer]]:
    out: dict[str, list[Offer]] = {}
    for o in offers:
        out.setdefault(o.framework, []).append(o)
    return out


def total_of(offers: list[Offer], name: str = "cpus") -> float:
    return sum(o.resources.scalar(name) for o in offers)


def check_books(a: Allocator) -> None:
    """The allocator's invariants, checked after every step of every test.

    * Conservation: on every agent, free + everything held by any framework + what is in use by
      frameworks not yet added == total, and the cached quantities agree with the resources.
    * The sorters are sorted and their shares fresh; a role's allocation is its frameworks'.
    * Settledness: an active agent with free resources that is not waiting for the next cycle
      had no eligible taker: every wanting (framework, role) had filtered what it would get.
      (Checked only without quota, where eligibility is that simple.)
    """
    for agent in a._agents.values():
        held = [c.held_total(agent) for c in agent.holders]
        assert Resources.sum([agent.free, *held, *agent.untracked.values()]) == agent.total, agent
        assert agent.free_q == agent.free.scalar_quantities()
        for client in agent.holders:
            assert client.held_q[agent] == client.held_total(agent).scalar_quantities()
            if agent.reserved:
                uq = client.held_total(agent).unreserved().scalar_quantities()
                assert client.held_uq[agent] == uq
        assert (agent in a._free_agents) == bool(agent.active and agent.free)
    for fw in a._frameworks.values():
        for client in fw.clients.values():
            assert all(client in agent.holders for agent in client.held)
            assert client.held.keys() == client.held_q.keys()
    a._role_sorter.check()
    for role in a._roles.values():
        role.sorter.check()
        alloc: dict[str, int] = {}
        for client in role.sorter:
            for k, v in client.alloc.items():
                alloc[k] = alloc.get(k, 0) + v
        assert alloc == {k: v for k, v in role.alloc.items() if v}, role
    if a._quota_roles or a._dirty or a._fresh or a._full_pending:
        return
    for agent in a._agents.values():
        if not (agent.active and agent.free):
            continue
        for role in a._roles.values():
            avail = agent.free.allocatable_to(role.name)
            if not avail or not _meets(avail.scalar_quantities(), a._min_alloc):
                continue
            for client in role.sorter:
                if client.wanting:  # type: ignore[attr-defined]
                    head = agent.filters.get(client) if agent.filters else None
                    assert _is_filtered(head, avail), (agent, client, "was never offered")


# ============================================================================ basics


async def test_an_agent_is_offered_whole_to_the_only_framework(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    cluster.add_agent("a1", "cpus:4;mem:1024;disk:100;ports:[31000-32000]")
    offers = await cluster.step()
    assert offers == [("f1", "a1", P("cpus:4;mem:1024;disk:100;ports:[31000-32000]"), "*")]
    assert await cluster.step(5.0) == []  # outstanding: nothing more to offer


async def test_no_frameworks_no_offers_then_a_newcomer_gets_everything(cluster: Cluster) -> None:
    for i in range(3):
        cluster.add_agent(f"a{i}")
    assert await cluster.step() == []
    cluster.add_framework("f1")
    offers = await cluster.step()
    assert sorted(o.agent for o in offers) == ["a0", "a1", "a2"]
    assert cluster.allocator.last_cycle["agents_targeted"] == 3  # offered to the newcomer only


async def test_drf_lowest_dominant_share_first(cluster: Cluster) -> None:
    # f1 runs more cpus than f2, but f2 runs most of the memory: f2's dominant share (memory,
    # 0.8) is above f1's (cpus, 3/16), so what is free goes to f1, even past f2's share.
    cluster.add_framework("f1")
    cluster.add_framework("f2")
    await cluster.step()
    cluster.add_agent("big", "cpus:8;mem:1024", used={"f1": P("cpus:3;mem:100")})
    cluster.add_agent("hog", "cpus:8;mem:4096", used={"f2": P("cpus:1;mem:4096")})
    offers = await cluster.step()
    assert {(o.framework, o.agent) for o in offers} == {("f1", "big"), ("f1", "hog")}
    state = await cluster.state()
    shares = {f: s["shares"]["*"] for f, s in state["frameworks"].items()}
    assert shares["f1"] == pytest.approx(15 / 16)  # 3 used + 5 + 7 offered of 16 cpus
    assert shares["f2"] == pytest.approx(4096 / 5120)


async def test_drf_spreads_agents_evenly(cluster: Cluster) -> None:
    for f in ("f1", "f2", "f3"):
        cluster.add_framework(f)
    for i in range(9):
        cluster.add_agent(f"a{i}")
    offers = await cluster.step()
    assert Counter(o.framework for o in offers) == {"f1": 3, "f2": 3, "f3": 3}


async def test_a_burst_of_events_is_one_cycle_and_one_message(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    for i in range(50):
        cluster.add_agent(f"a{i}")
    await libproc.settle()
    assert cluster.messages == 0  # nothing before the batching delay
    offers = await cluster.step()
    assert cluster.messages == 1 and len(offers) == 50
    # Declines trickling in within the delay are coalesced the same way.
    for o in offers[:10]:
        cluster.decline(o, refuse=None)
    await cluster.step()
    assert cluster.messages == 2


async def test_the_interval_runs_cycles_that_cost_nothing_when_nothing_changed(
    cluster: Cluster,
) -> None:
    cluster.add_framework("f1")
    cluster.add_agent("a1")
    await cluster.step()
    before = cluster.allocator.metrics.get("allocator/cycles")
    for _ in range(10):
        assert await cluster.step(1.0) == []
    m = cluster.allocator.metrics
    assert m.get("allocator/cycles") - before >= 10  # one a second
    assert cluster.allocator.last_cycle["agents_visited"] == 1  # the last cycle that did work
    assert m.get("allocator/agents_visited") == 1


# ============================================================================ roles and weights


async def test_weighted_drf_across_roles(make_cluster: Any) -> None:
    cluster = await make_cluster()
    cluster.send(AllocatorSetWeight("r1", 3.0))
    cluster.add_framework("f1", ("r1",))
    cluster.add_framework("f2", ("r2",))
    await cluster.step()
    for i in range(8):
        cluster.add_agent(f"a{i}")
    offers = await cluster.step()
    assert Counter(o.role for o in offers) == {"r1": 6, "r2": 2}
    state = await cluster.state()
    assert state["roles"]["r1"]["weight"] == 3.0
    assert state["roles"]["r1"]["share"] == pytest.approx(6 / 8)
    assert state["roles"]["r1"]["weighted_share"] == pytest.approx(2 / 8)


async def test_drf_across_frameworks_within_a_role_then_across_roles(cluster: Cluster) -> None:
    # Role "a" has two frameworks, role "b" one: roles split the cluster evenly, and role a's
    # half is split between its frameworks.
    cluster.add_framework("a1", ("a",))
    cluster.add_framework("a2", ("a",))
    cluster.add_framework("b1", ("b",))
    await cluster.step()
    for i in range(8):
        cluster.add_agent(f"x{i}")
    offers = await cluster.step()
    assert Counter(o.framework for o in offers) == {"a1": 2, "a2": 2, "b1": 4}


async def test_a_framework_in_several_roles_is_offered_per_role(cluster: Cluster) -> None:
    cluster.add_framework("multi", ("web", "batch"))
    cluster.add_framework("other", ("web",))
    cluster.add_agent("a1", "cpus:2;mem:512;cpus(batch):2;mem(batch):512")
    offers = await cluster.step()
    # Roles tie at share 0 and "web" came first: multi (first in web) gets the unreserved part
    # under web; the reservation can only go to multi, under batch.
    assert sorted(offers, key=lambda o: o.role) == [
        ("multi", "a1", P("cpus(batch):2;mem(batch):512"), "batch"),
        ("multi", "a1", P("cpus:2;mem:512"), "web"),
    ]
    # Declined under batch, the reservation is filtered for that role: nobody else may have it.
    batch = next(o for o in offers if o.role == "batch")
    cluster.decline(batch, refuse=60, role=True)
    assert await cluster.step() == []
    state = await cluster.state()
    assert state["frameworks"]["multi"]["filters"] == 1
    assert await cluster.step(60) == [batch]


async def test_recover_without_a_role_is_charged_to_the_role_that_holds_it(
    cluster: Cluster,
) -> None:
    cluster.add_framework("multi", ("alpha", "batch"))
    cluster.add_agent("a1", "cpus:2;mem:512;cpus(batch):2;mem(batch):512")
    offers = await cluster.step()
    # alpha came first and takes the unreserved part; batch then gets its reservation.
    assert {(o.role, str(o.resources)) for o in offers} == {
        ("alpha", "cpus:2;mem:512"),
        ("batch", "cpus(batch):2;mem(batch):512"),
    }
    for o in offers:
        cluster.decline(o, refuse=None, role=False)
    again = await cluster.step()
    assert sorted((o.role, str(o.resources)) for o in again) == sorted(
        (o.role, str(o.resources)) for o in offers
    )


# ============================================================================ reservations


async def test_reserved_resources_go_only_to_their_role(cluster: Cluster) -> None:
    cluster.add_framework("web", ("web",))
    cluster.add_agent("a1", "cpus:4;mem:1024;cpus(analytics):2;mem(analytics):512")
    offers = await cluster.step()
    assert offers == [("web", "a1", P("cpus:4;mem:1024"), "web")]
    # The reservation waits for its role; a framework of that role takes it at once.
    cluster.add_framework("an", ("analytics",))
    offers = await cluster.step()
    assert offers == [("an", "a1", P("cpus(analytics):2;mem(analytics):512"), "analytics")]


async def test_reservations_of_a_parent_role_serve_its_children(cluster: Cluster) -> None:
    cluster.add_framework("child", ("eng/web",))
    cluster.add_agent("a1", "cpus(eng):2;mem(eng):512")
    offers = await cluster.step()
    assert [(o.framework, o.role) for o in offers] == [("child", "eng/web")]


# ============================================================================ quota


async def test_quota_guarantee_is_met_before_drf(cluster: Cluster) -> None:
    # fq already runs most of the memory, so DRF alone would serve fa first (3 agents of 4).
    cluster.send(AllocatorSetQuota("q", P("cpus:8")))
    cluster.add_framework("fa", ("a",))
    cluster.add_framework("fq", ("q",))
    await cluster.step()
    cluster.add_agent("busy", "cpus:1;mem:8192", used={"fq": P("cpus:1;mem:8000")})
    await cluster.step()
    for i in range(4):
        cluster.add_agent(f"a{i}")
    offers = await cluster.step()
    cpus = {f: total_of(o) for f, o in by_framework(offers).items()}
    # fq's guarantee of 8 cpus counts what it already runs (1): it is offered at least 7.
    assert cpus["fq"] >= 7
    assert cpus["fq"] + cpus["fa"] == 16


async def test_unsatisfied_guarantee_holds_headroom_back_from_other_roles(
    cluster: Cluster,
) -> None:
    cluster.send(AllocatorSetQuota("q", P("cpus:8")))
    cluster.add_framework("fa", ("a",))
    for i in range(4):
        cluster.add_agent(f"a{i}")  # 16 cpus
    offers = await cluster.step()
    # Nobody of role q is there yet, but its 8 cpus stay free: "a" gets only 8.
    assert total_of(offers) == 8
    # When q's framework arrives, it is offered the headroom.
    cluster.add_framework("fq", ("q",))
    offers = await cluster.step()
    assert total_of([o for o in offers if o.framework == "fq"]) == 8
    state = await cluster.state()
    assert state["roles"]["q"]["guarantee"] == {"cpus": 8.0}
    assert state["roles"]["q"]["consumed_quota"]["cpus"] == 8.0


async def test_headroom_is_released_when_the_guarantee_is_lowered(cluster: Cluster) -> None:
    cluster.send(AllocatorSetQuota("q", P("cpus:8")))
    cluster.add_framework("fa", ("a",))
    for i in range(4):
        cluster.add_agent(f"a{i}")
    assert total_of(await cluster.step()) == 8
    cluster.send(AllocatorSetQuota("q", P("cpus:0")))
    assert total_of(await cluster.step()) == 8  # the other 8 cpus, now free for anyone


async def test_held_back_headroom_is_released_once_the_guarantee_is_met(
    cluster: Cluster,
) -> None:
    cluster.send(AllocatorSetQuota("q", P("cpus:4")))
    cluster.add_framework("fq", ("q",))
    cluster.add_framework("fa", ("a",))
    cluster.add_agent("x")
    cluster.add_agent("y")
    offers = await cluster.step()
    assert sorted((o.framework, o.resources.scalar("cpus")) for o in offers) == [
        ("fa", 4.0),
        ("fq", 4.0),
    ]
    # fq turns its agent down for an hour: q is below its guarantee again, so that agent's
    # cpus are held back from fa (fa gets its memory only).
    mine = next(o for o in offers if o.framework == "fq")
    cluster.decline(mine, refuse=3600)
    [held] = await cluster.step()
    assert held.framework == "fa" and held.resources == P("mem:1024")
    # A new agent meets q's guarantee, and in the same cycle the cpus held back go to fa.
    cluster.add_agent("z")
    offers = await cluster.step()
    assert sorted((o.framework, o.agent, str(o.resources)) for o in offers) == [
        ("fa", mine.agent, "cpus:4"),
        ("fq", "z", "cpus:4;mem:1024"),
    ]


async def test_a_role_never_passes_its_limit(cluster: Cluster) -> None:
    cluster.send(AllocatorSetQuota("lim", Resources.empty(), P("cpus:6;mem:1536")))
    cluster.add_framework("fl", ("lim",))
    for i in range(4):
        cluster.add_agent(f"a{i}")  # cpus:4;mem:1024 each
    offers = await cluster.step()
    assert total_of(offers) == 6
    assert total_of(offers, "mem") == 1536
    # Giving some back (a task ended) makes room again, up to the limit.
    small = min(offers, key=lambda o: o.resources.scalar("cpus"))
    cluster.decline(small, refuse=None)
    offers = await cluster.step()
    assert total_of(offers) == small.resources.scalar("cpus")
    state = await cluster.state()
    assert state["roles"]["lim"]["consumed_quota"] == {"cpus": 6.0, "mem": 1536.0}
    assert state["roles"]["lim"]["limit"] == {"cpus": 6.0, "mem": 1536.0}


async def test_a_limit_below_the_guarantee_is_refused(cluster: Cluster) -> None:
    cluster.send(AllocatorSetQuota("r", P("cpus:8"), P("cpus:4")))
    await cluster.step()
    assert (await cluster.state())["roles"] == {}
    assert cluster.allocator.metrics.get("allocator/quota_refused") == 1


# ============================================================================ filters


async def test_a_decline_filters_the_agent_until_refuse_seconds_pass(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    cluster.add_agent("a1")
    [offer] = await cluster.step()
    cluster.decline(offer, refuse=5.0)
    assert await cluster.step() == []
    assert cluster.allocator.metrics.get("allocator/filters_active") == 1
    assert await cluster.step(4.98) == []  # 4.99 s after the decline
    offers = await cluster.step(0.01)  # exactly 5 s: the filter's own timer runs a cycle
    assert offers == [offer]
    assert cluster.allocator.metrics.get("allocator/filters_expired") == 1
    assert cluster.allocator.metrics.get("allocator/filters_active") == 0


async def test_a_declined_agent_goes_to_the_next_framework(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    cluster.add_framework("f2")
    cluster.add_agent("a1")
    [offer] = await cluster.step()
    cluster.decline(offer, refuse=60)
    [again] = await cluster.step()
    assert again.framework != offer.framework and again.agent == "a1"
    assert cluster.allocator.metrics.get("allocator/filtered") >= 1


async def test_a_bigger_offer_passes_a_filter(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    await cluster.step()
    cluster.add_agent("a1", "cpus:4;mem:1024", used={"f1": P("cpus:2;mem:512")})
    [offer] = await cluster.step()
    assert offer.resources == P("cpus:2;mem:512")
    cluster.decline(offer, refuse=3600)
    assert await cluster.step() == []
    # A task ends: the agent now has more free than was refused, so the filter does not apply.
    cluster.send(AllocatorRecoverResources("a1", "f1", P("cpus:2;mem:512")))
    [bigger] = await cluster.step()
    assert bigger.resources == P("cpus:4;mem:1024")


async def test_no_refuse_seconds_means_no_filter(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    cluster.add_agent("a1")
    [offer] = await cluster.step()
    cluster.decline(offer, refuse=None)  # a rescind
    assert await cluster.step() == [offer]
    cluster.decline(offer, refuse=0)  # refuse_seconds=0: no filter either, as in Mesos
    assert await cluster.step() == [offer]


async def test_negative_refuse_seconds_use_the_default(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    cluster.add_agent("a1")
    [offer] = await cluster.step()
    cluster.decline(offer, refuse=-1)
    assert await cluster.step(4.0) == []
    assert await cluster.step(1.0) == [offer]


async def test_revive_clears_filters_at_once(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    cluster.add_agent("a1")
    cluster.add_agent("a2")
    offers = await cluster.step()
    for o in offers:
        cluster.decline(o, refuse=3600)
    assert await cluster.step(10) == []
    cluster.send(AllocatorRevive("f1"))
    offers = await cluster.step()
    assert sorted(o.agent for o in offers) == ["a1", "a2"]
    assert cluster.allocator.metrics.get("allocator/filters_active") == 0


# ============================================================================ suppress / revive


async def test_suppress_stops_offers_until_revive(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    cluster.send(AllocatorSuppress("f1"))
    cluster.add_agent("a1")
    assert await cluster.step(10) == []
    cluster.send(AllocatorRevive("f1"))
    assert [o.agent for o in await cluster.step()] == ["a1"]


async def test_suppressing_one_role_keeps_the_others(cluster: Cluster) -> None:
    cluster.add_framework("f1", ("web", "batch"), suppressed_roles=["batch"])
    cluster.add_agent("a1", "cpus:2;mem:512;cpus(batch):2;mem(batch):512;cpus(web):1;mem(web):64")
    offers = await cluster.step()
    assert {o.role for o in offers} == {"web"}
    cluster.send(AllocatorRevive("f1", ["batch"]))
    offers = await cluster.step()
    assert [(o.role, o.resources) for o in offers] == [("batch", P("cpus(batch):2;mem(batch):512"))]
    cluster.send(AllocatorSuppress("f1", ["web"]))
    for o in cluster.outstanding.copy().values():
        cluster.decline(o, refuse=None)
    offers = await cluster.step()
    assert {o.role for o in offers} == {"batch"}


async def test_suppressed_frameworks_leave_offers_to_others(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    cluster.add_framework("f2")
    cluster.send(AllocatorSuppress("f1"))
    for i in range(4):
        cluster.add_agent(f"a{i}")
    offers = await cluster.step()
    assert {o.framework for o in offers} == {"f2"} and len(offers) == 4


# ============================================================================ coming and going


async def test_removed_agent_is_never_offered_and_its_returns_are_ignored(
    cluster: Cluster,
) -> None:
    cluster.add_framework("f1")
    cluster.add_agent("a1")
    cluster.add_agent("a2")
    offers = await cluster.step()
    cluster.send(AllocatorRemoveAgent("a1"))
    for o in offers:
        cluster.decline(o, refuse=None)
    again = await cluster.step()
    assert [o.agent for o in again] == ["a2"]
    state = await cluster.state()
    assert state["agents"]["total"] == 1
    assert state["total"] == {"cpus": 4.0, "mem": 1024.0}


async def test_removed_framework_gives_everything_back(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    for i in range(3):
        cluster.add_agent(f"a{i}")
    offers = await cluster.step()
    assert {o.framework for o in offers} == {"f1"}
    cluster.send(AllocatorRemoveFramework("f1"))
    cluster.add_framework("f2")
    offers = await cluster.step()
    assert {o.framework for o in offers} == {"f2"} and len(offers) == 3
    assert "f1" not in (await cluster.state())["frameworks"]


async def test_deactivated_framework_keeps_its_allocation_but_gets_no_offers(
    cluster: Cluster,
) -> None:
    cluster.add_framework("f1")
    cluster.add_framework("f2")
    await cluster.step()
    cluster.add_agent("a0", used={"f1": P("cpus:4;mem:1024")})
    cluster.send(AllocatorDeactivateFramework("f2"))
    cluster.add_agent("a1")
    assert await cluster.step() == [("f1", "a1", P(AGENT), "*")]
    state = await cluster.state()
    assert state["frameworks"]["f2"]["active"] is False
    cluster.send(AllocatorActivateFramework("f2"))
    cluster.decline(cluster.outstanding[("f1", "a1")], refuse=None)
    assert [o.framework for o in await cluster.step()] == ["f2"]  # lower share than f1


async def test_deactivated_agent_is_not_offered_until_reactivated(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    cluster.add_agent("a1")
    cluster.send(AllocatorDeactivateAgent("a1"))
    assert await cluster.step() == []
    assert (await cluster.state())["total"] == {}
    cluster.send(AllocatorActivateAgent("a1"))
    assert [o.agent for o in await cluster.step()] == ["a1"]


async def test_agent_used_by_a_framework_added_later_is_charged_to_it(cluster: Cluster) -> None:
    # A master that restarted: agents reregister first, reporting what runs on them.
    cluster.add_agent("a1", "cpus:8;mem:2048", used={"old": P("cpus:6;mem:1024")})
    cluster.add_framework("new")
    assert [o.resources for o in await cluster.step()] == [P("cpus:2;mem:1024")]
    cluster.add_framework("old")
    await cluster.step()
    state = await cluster.state()
    assert state["frameworks"]["old"]["shares"]["*"] == pytest.approx(6 / 8)
    # And giving it back frees it.
    cluster.send(AllocatorRecoverResources("a1", "old", P("cpus:6;mem:1024")))
    offers = await cluster.step()
    assert total_of(offers) == 6


async def test_framework_reports_used_resources_on_known_agents(cluster: Cluster) -> None:
    cluster.add_agent("a1", "cpus:8;mem:2048")
    await cluster.step()
    cluster.add_framework("f1", used={"a1": P("cpus:2;mem:512")})
    offers = await cluster.step()
    assert [o.resources for o in offers] == [P("cpus:6;mem:1536")]


async def test_readding_an_agent_starts_from_what_it_reports(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    cluster.add_agent("a1")
    await cluster.step()
    cluster.add_agent("a1", "cpus:2;mem:512")  # reregistered, smaller
    offers = await cluster.step()
    assert [o.resources for o in offers] == [P("cpus:2;mem:512")]


# ============================================================================ incremental work


async def test_only_changed_agents_are_revisited(cluster: Cluster) -> None:
    for f in ("f1", "f2"):
        cluster.add_framework(f)
    for i in range(100):
        cluster.add_agent(f"a{i}")
    offers = await cluster.step()
    assert len(offers) == 100
    # Decline everything with a long filter: every agent is visited once more.
    for o in offers:
        cluster.decline(o, refuse=3600)
    offers = await cluster.step()
    assert len(offers) == 100  # each to the other framework
    assert cluster.allocator.last_cycle["agents_visited"] == 100
    # Now two agents come back: the next cycle walks those two only.
    for o in offers[:2]:
        cluster.decline(o, refuse=3600)
    assert await cluster.step() == []  # both frameworks refused them
    last = cluster.allocator.last_cycle
    assert last["agents_visited"] == 2 and last["full"] is False
    # Nothing changes: cycles on the interval visit nothing.
    visited = cluster.allocator.metrics.get("allocator/agents_visited")
    await cluster.step(30)
    assert cluster.allocator.metrics.get("allocator/agents_visited") == visited


async def test_an_expired_filter_revisits_only_its_agent(cluster: Cluster) -> None:
    cluster.add_framework("f1")
    for i in range(20):
        cluster.add_agent(f"a{i}")
    offers = await cluster.step()
    for o in offers:
        cluster.decline(o, refuse=3600 if o.agent != "a7" else 5)
    await cluster.step()
    offers = await cluster.step(5)
    assert [o.agent for o in offers] == ["a7"]
    assert cluster.allocator.last_cycle["agents_visited"] == 1


async def test_a_new_framework_is_offered_settled_agents_without_a_full_walk(
    cluster: Cluster,
) -> None:
    for f in ("f1", "f2", "f3"):
        cluster.add_framework(f)
    for i in range(30):
        cluster.add_agent(f"a{i}")
    for _ in range(3):  # everybody declines everything for an hour
        for o in await cluster.step():
            cluster.decline(o, refuse=3600)
    assert await cluster.step() == []
    cluster.add_framework("late")
    offers = await cluster.step()
    assert len(offers) == 30 and {o.framework for o in offers} == {"late"}
    last = cluster.allocator.last_cycle
    assert last["full"] is False and last["agents_targeted"] == 30 and last["filtered"] == 0


async def test_weight_changes_trigger_no_cycle(cluster: Cluster) -> None:
    cluster.add_framework("f1", ("r",))
    cluster.add_agent("a1")
    await cluster.step()
    cycles = cluster.allocator.metrics.get("allocator/full_cycles")
    cluster.send(AllocatorSetWeight("r", 2.0))
    await cluster.step()
    assert cluster.allocator.metrics.get("allocator/full_cycles") == cycles
    assert (await cluster.state())["roles"]["r"]["weight"] == 2.0


# ============================================================================ starvation


async def _starvation_run(cluster: Cluster, cycles: int) -> int | None:
    """50 frameworks decline everything for an hour; "hungry" already holds a big share and
    wants more. Returns the cycle in which hungry was first offered something."""
    cluster.add_framework("hungry")
    for i in range(50):
        cluster.add_framework(f"decliner-{i:02d}")
    await cluster.step()
    cluster.add_agent("busy", "cpus:64;mem:65536", used={"hungry": P("cpus:60;mem:60000")})
    for i in range(10):
        cluster.add_agent(f"a{i}")
    for cycle in range(1, cycles + 1):
        offers = await cluster.step(1.0)
        if any(o.framework == "hungry" for o in offers):
            return cycle
        for o in offers:
            cluster.decline(o, refuse=3600)
    return None


async def test_no_starvation_behind_many_decliners(make_cluster: Any) -> None:
    cluster = await make_cluster(starvation_cycles=3)
    first = await _starvation_run(cluster, 20)
    # Bound: starvation_cycles, then the starving frameworks are served oldest first, 10
    # agents a cycle: 51 starving frameworks -> at most 6 more cycles.
    assert first is not None and first <= 3 + 6 + 1, first
    assert cluster.allocator.metrics.get("allocator/starvation_boosts") >= 1


async def test_plain_drf_starves_behind_many_decliners(make_cluster: Any) -> None:
    """The same run without the anti-starvation rule: hungry waits for 50 decliners."""
    cluster = await make_cluster(starvation_cycles=0)
    first = await _starvation_run(cluster, 20)
    assert first is None


async def test_no_starvation_with_short_filters(make_cluster: Any) -> None:
    """Short filters are the real trap: decliners come back before hungry's turn, forever."""
    cluster = await make_cluster(starvation_cycles=5)
    cluster.add_framework("hungry")
    for i in range(8):
        cluster.add_framework(f"d{i}")
    await cluster.step()
    cluster.add_agent("busy", "cpus:64;mem:65536", used={"hungry": P("cpus:60;mem:60000")})
    for i in range(4):
        cluster.add_agent(f"a{i}")
    served_hungry = 0
    for _ in range(60):
        for o in await cluster.step(1.0):
            if o.framework == "hungry":
                served_hungry += 1
                cluster.decline(o, refuse=None)
            else:
                cluster.decline(o, refuse=2.0)
    assert served_hungry >= 60 // (5 + 3 + 1)


# ============================================================================ introspection


async def test_metrics_and_state(cluster: Cluster) -> None:
    cluster.send(AllocatorSetQuota("q", P("cpus:2"), P("cpus:10")))
    cluster.add_framework("f1", ("q",))
    cluster.add_framework("f2")
    for i in range(4):
        cluster.add_agent(f"a{i}")
    offers = await cluster.step()
    cluster.decline(offers[0], refuse=30)
    await cluster.step()
    snap = cluster.rt.metrics.snapshot()
    for name in (
        "allocator/cycles",
        "allocator/cycle_ms",
        "allocator/offers",
        "allocator/filtered",
        "allocator/filters_active",
        "allocator/agents",
        "allocator/frameworks",
    ):
        assert name in snap, name
    assert snap["allocator/offers"] >= 4
    assert snap["allocator/filters_active"] == 1
    assert snap["allocator/agents"] == 4
    state = await cluster.state()
    assert set(state["roles"]) == {"q", "*"}
    assert state["roles"]["q"]["guarantee"] == {"cpus": 2.0}
    assert state["roles"]["q"]["limit"] == {"cpus": 10.0}
    assert state["filters"] == 1
    assert sum(f["filters"] for f in state["frameworks"].values()) == 1
    assert state["total"] == {"cpus": 16.0, "mem": 4096.0}
    import json

    json.dumps(state)  # plain types only


async def test_state_is_served_over_http() -> None:
    import aiohttp

    Clock.pause()
    async with Runtime(transport=MemoryNetwork(), http_port=0) as rt:
        master = FakeMaster()
        rt.spawn(master)
        allocator = Allocator(master.pid, id="allocator")
        rt.spawn(allocator)
        cluster = Cluster(rt, master, allocator)
        cluster.add_framework("f1")
        cluster.add_agent("a1")
        await cluster.step()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{rt.http_port}/allocator/state") as resp,
        ):
            assert resp.status == 200
            body = await resp.json()
        assert body["frameworks"]["f1"]["roles"] == ["*"]
        assert body["agents"]["total"] == 1
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{rt.http_port}/metrics/snapshot") as resp,
        ):
            snap = await resp.json()
        assert snap["allocator/offers"] == 1


# ============================================================================ randomised


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_operations_keep_the_books(seed: int) -> None:
    """Random adds, removals, declines, revives, suppressions and time: after every step the
    books balance, the sorters are sorted, and no settled agent had an eligible taker."""
    import asyncio

    async def run() -> None:
        rng = random.Random(seed)
        Clock.pause()
        async with Runtime(transport=MemoryNetwork()) as rt:
            master = FakeMaster()
            rt.spawn(master)
            allocator = Allocator(master.pid, id="allocator", starvation_cycles=rng.choice([0, 2]))
            rt.spawn(allocator)
            cluster = Cluster(rt, master, allocator)
            roles = ["*", "r1", "r2"]
            frameworks: list[str] = []
            agents: list[str] = []
            for step in range(40):
                op = rng.random()
                if op < 0.15 or not agents:
                    aid = f"a{step}"
                    res = "cpus:4;mem:1024"
                    if rng.random() < 0.3:
                        res += f";cpus({rng.choice(roles[1:])}):1;mem(r1):64"
                    used = {}
                    if frameworks and rng.random() < 0.3:
                        used = {rng.choice([*frameworks, "unknown"]): P("cpus:1;mem:100")}
                    cluster.add_agent(aid, res, used=used)
                    agents.append(aid)
                elif op < 0.25 or not frameworks:
                    fid = f"f{step}"
                    cluster.add_framework(fid, tuple(rng.sample(roles, rng.randint(1, 2))))
                    frameworks.append(fid)
                elif op < 0.3:
                    cluster.send(AllocatorRemoveAgent(agents.pop(rng.randrange(len(agents)))))
                elif op < 0.35:
                    fid = frameworks.pop(rng.randrange(len(frameworks)))
                    cluster.send(AllocatorRemoveFramework(fid))
                elif op < 0.4:
                    cluster.send(AllocatorRevive(rng.choice(frameworks)))
                elif op < 0.45:
                    cluster.send(AllocatorSuppress(rng.choice(frameworks)))
                elif op < 0.5:
                    aid = rng.choice(agents)
                    cluster.send(
                        AllocatorDeactivateAgent(aid)
                        if rng.random() < 0.5
                        else AllocatorActivateAgent(aid)
                    )
                elif op < 0.55:
                    cluster.send(AllocatorSetWeight(rng.choice(roles), rng.choice([0.5, 1, 2])))
                elif op < 0.6:
                    guarantee = P(f"cpus:{rng.randint(0, 8)}")
                    limit = rng.choice([None, P("cpus:12;mem:4096"), P("cpus:4")])
                    cluster.send(AllocatorSetQuota(rng.choice(roles[1:]), guarantee, limit))
                for o in list(cluster.outstanding.values()):
                    if rng.random() < 0.5:
                        cluster.decline(
                            o, refuse=rng.choice([None, 0, 1.0, 5.0, 3600]), role=rng.random() < 0.5
                        )
                await cluster.step(rng.choice([BATCH, 0.5, 1.0, 3.0]))
        Clock.reset()

    asyncio.run(run())


# ============================================================================ the DRF sorter


def test_scalar_quantities_are_exact_thousandths() -> None:
    r = P("cpus:0.1;cpus(a):0.2;mem:1024;ports:[1-10];disks:{x}")
    assert r.scalar_quantities() == {"cpus": 300, "mem": 1_024_000}
    assert {k: v / 1000 for k, v in r.scalar_quantities().items()} == pytest.approx(r.scalars())


def _client(name: str, weight: float = 1.0) -> DRFClient:
    return DRFClient(name, weight)


def test_sorter_orders_by_dominant_share_then_arrival() -> None:
    totals = Totals()
    totals.add({"cpus": 10_000, "mem": 100_000})
    s = DRFSorter(totals)
    a, b, c = (s.add(_client(n)) for n in "abc")
    s.allocated(a, {"cpus": 2_000})  # 0.2
    s.allocated(b, {"mem": 10_000})  # 0.1
    assert [c.name for c in s.sort()] == ["c", "b", "a"]
    s.allocated(c, {"cpus": 1_000, "mem": 50_000})  # dominant: mem, 0.5
    assert [c.name for c in s.sort()] == ["b", "a", "c"]
    s.unallocated(c, {"mem": 50_000})  # 0.1: ties with b, who came first
    assert [c.name for c in s.sort()] == ["b", "c", "a"]
    s.check()


def test_sorter_weights_and_boost() -> None:
    totals = Totals()
    totals.add({"cpus": 100})
    s = DRFSorter(totals)
    a = s.add(_client("a", weight=4.0))
    b = s.add(_client("b"))
    s.allocated(a, {"cpus": 40})  # 0.4 / 4 = 0.1
    s.allocated(b, {"cpus": 20})  # 0.2
    assert [c.name for c in s.sort()] == ["a", "b"]
    s.set_weight(a, 1.0)
    assert [c.name for c in s.sort()] == ["b", "a"]
    s.set_boost(a, -5)
    assert [c.name for c in s.sort()] == ["a", "b"]
    s.deactivate(a)
    assert [c.name for c in s.sort()] == ["b"]
    assert s.share(a) == pytest.approx(0.4)
    s.check()


def test_sorter_total_change_resorts_lazily() -> None:
    totals = Totals()
    totals.add({"cpus": 100, "mem": 100})
    s = DRFSorter(totals)
    a, b = s.add(_client("a")), s.add(_client("b"))
    s.allocated(a, {"cpus": 30})
    s.allocated(b, {"mem": 20})
    assert [c.name for c in s.sort()] == ["b", "a"]
    totals.add({"cpus": 900})  # cpus become plentiful: a's share drops to 0.03
    assert [c.name for c in s.sort()] == ["a", "b"]
    s.check()


@settings(max_examples=50, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7), st.integers(1, 50))))
def test_sorter_matches_a_full_sort(ops: list[tuple[int, int, int]]) -> None:
    """Random allocation changes, weights, boosts, activations and total changes: the
    incremental order always equals sorting from scratch."""
    totals = Totals()
    totals.add({"cpus": 1000, "mem": 1000})
    s = DRFSorter(totals)
    clients = [s.add(_client(f"c{i}")) for i in range(8)]
    for kind, i, amount in ops:
        c = clients[i]
        if kind == 0:
            s.allocated(c, {"cpus": amount})
        elif kind == 1:
            s.unallocated(c, {"cpus": min(amount, c.alloc.get("cpus", 0))})
        elif kind == 2:
            s.allocated(c, {"mem": amount})
        elif kind == 3:
            (s.deactivate if c.active else s.activate)(c)
        elif kind == 4:
            s.set_weight(c, amount / 10)
        else:
            totals.add({"cpus": amount})
        expected = sorted(
            (x.boost, _share(x, totals) / x.weight, x.arrival) for x in clients if x.active
        )
        keys = [s.key(c) for c in s.sort()]
        assert [(k[0], pytest.approx(k[1]), k[2]) for k in keys] == expected
    s.check()


def _share(c: DRFClient, totals: Totals) -> float:
    return max((v / totals.q[k] for k, v in c.alloc.items() if totals.q.get(k)), default=0.0)
