"""The allocator: who is offered what, by hierarchical DRF, revisiting only what changed.

The master tells the allocator what exists (agents, frameworks, their roles) and what comes back
(declined, rescinded or finished resources); the allocator answers, one message a cycle, with
:class:`~mesa.messages.Allocations`: which framework is offered which resources on which agent.
It never talks to anyone else, holds no reference to the master's objects and has no I/O, so a
test drives it with messages under a paused :class:`~libproc.Clock`.

**Order.** Hierarchical DRF as in Mesos: roles sorted by weighted dominant share, frameworks within
a role by dominant share, shares computed against the total of the active agents. A framework may
subscribe to several roles; it is then one sorter client per role, and offers are made to a
(framework, role) pair (``Allocations.roles`` says which). Each agent's free resources go whole to
the first eligible (framework, role) in that order, except what quota holds back and what is
reserved for other roles.

**Quota and reservations** follow Mesos 1.9+: a first stage gives roles below their guarantee
(reservations count as consumed) what brings them towards it; a second stage gives the rest by
DRF, never letting a role pass its limit nor the other roles eat the *headroom*, i.e. the
unreserved resources that the unsatisfied guarantees still need. Resources reserved for role ``r``
(``cpus(r):2``) are offered only to frameworks of ``r`` (or of ``r/...``).

**Filters.** A decline with ``refuse_seconds`` keeps the declined resources on that agent away
from that (framework, role) until it expires; an offer is filtered when it is contained in what
was refused (so more resources on the agent lift the filter early, as in Mesos). Revive clears a
framework's filters and unsuppresses it; suppress stops its offers until revive.

**Work is proportional to change.** An agent that was visited and left with free resources is
*settled*: nobody eligible wanted them. It stays settled until one of three things happens, and
only those things cost work:

* its free resources change (recovered, added, activated): it goes in the *dirty* set, and the
  next cycle walks the DRF order for it alone;
* a filter on it expires, or a framework that filtered it revives: it is dirty too;
* a (framework, role) starts wanting offers (added, activated, unsuppressed): the next cycle
  offers the settled agents to the newcomers *only*, because nobody else was eligible for them.

Everything else (a weight change, an agent's share of the total, a starving framework moving up)
changes the *order* and not who is eligible, so it cannot change a settled agent's fate and costs
nothing until that agent is dirty again. The sorters are incremental: an allocation moves one
client with a binary search (:mod:`mesa.drf`), and a cycle where nothing changed costs a few
microseconds. Events are batched: the first one schedules a cycle ``batch_delay`` later and the
ones after it ride along; the periodic ``interval`` cycle is a safety net.

**No starvation.** DRF alone starves a framework behind many decliners: each decline leaves the
decliner's share low, so every freed agent goes to the next decliner first, and with short filters
forever. So a (framework, role) that wants offers and was passed over in ``starvation_cycles``
consecutive cycles that offered something to others moves to the front (oldest first, by share
among equals) until it is offered something. With ``W`` wanting frameworks and ``A`` agents freed
per cycle, anyone is offered something within about ``starvation_cycles + W / A`` such cycles
(if anything on offer is allowed to it), whatever the others' filters; ``starvation_cycles=0``
gives plain DRF.

Counters (runtime metrics): ``allocator/cycles``, ``allocator/full_cycles``,
``allocator/cycle_ms`` (last cycle), ``allocator/offers`` (allocation items),
``allocator/filtered`` (offers suppressed by a filter), ``allocator/agents_visited``,
``allocator/filters_expired``; gauges ``allocator/filters_active``, ``allocator/agents``,
``allocator/frameworks``, ``allocator/dirty_agents``, ``allocator/starving``. :meth:`state` (use
``dispatch``) or the HTTP route ``/<allocator id>/state`` give a snapshot.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

from libproc import UPID, Clock, Process, Timer, handler, route
from mesa.drf import DRFClient, DRFSorter, Quantities, Totals, add_quantities, subtract_quantities
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
from mesa.resources import UNRESERVED, ResourceError, Resources

__all__ = [
    "DEFAULT_MIN_ALLOCATABLE",
    "DEFAULT_REFUSE_SECONDS",
    "MAX_REFUSE_SECONDS",
    "Allocator",
]

DEFAULT_REFUSE_SECONDS = 5.0
"""Mesos's default filter, used for a negative ``refuse_seconds``."""

MAX_REFUSE_SECONDS = 365 * 24 * 3600.0
"""Longer filters are cut to a year, as Mesos does."""

DEFAULT_MIN_ALLOCATABLE = ("cpus:0.01", "mem:32")
"""Mesos's ``min_allocatable_resources``: an offer must hold at least one of these."""

_MILLI = 1000  # mesa.resources keeps scalars in exact thousandths; quantities are in those units
_EMPTY = Resources.empty()
_STARVING = -(2**62)  # sorter boost of a starving client: ahead of every share
_SLACK = 1e-6  # seconds: a filter due within this is due (float vs the Clock's nanoseconds)
_TARGETED_MAX = 64  # more newcomers than this in one cycle: walk everyone instead


# ---------------------------------------------------------------------------------- the state


class _Filter:
    """A declined offer: ``resources`` on ``agent`` are not offered to ``client`` until
    ``expires``. ``next`` chains the other filters of the same client on the same agent."""

    __slots__ = ("agent", "client", "expires", "live", "next", "resources")

    def __init__(self, agent: _Agent, client: _Client, resources: Resources, expires: float):
        self.agent = agent
        self.client = client
        self.resources = resources
        self.expires = expires
        self.live = True
        self.next: _Filter | None = None


class _Agent:
    """An agent as the allocator sees it.

    ``free`` is what is neither offered nor in use; ``free_q`` / ``free_uq`` are its scalar
    quantities (all, and unreserved only) kept alongside, so that offering an agent whole and
    taking a whole offer back never recomputes them. Quantity dicts stored here and in a
    client's ``held_q`` are never mutated, only replaced (the same dict is often in both).
    """

    __slots__ = (
        "active",
        "attributes",
        "filters",
        "free",
        "free_q",
        "free_uq",
        "holders",
        "hostname",
        "id",
        "reserved",
        "total",
        "total_q",
        "untracked",
    )

    def __init__(self, agent_id: str, hostname: str, total: Resources) -> None:
        self.id = agent_id
        self.hostname = hostname
        self.total = total
        self.total_q = total.scalar_quantities()
        # role -> scalar quantities reserved for it here; empty (falsy) for the common agent
        # with no reservations, which lets the hot path skip every per-role computation.
        self.reserved: dict[str, Quantities] = {
            role: total.reserved(role).scalar_quantities()
            for role in sorted(total.roles())
            if role != UNRESERVED
        }
        self.free = total
        self.free_q: Quantities = self.total_q
        self.free_uq: Quantities = self.unreserved_q(total, self.total_q)
        self.active = True
        self.attributes: dict[str, Any] = {}
        self.filters: dict[_Client, _Filter] | None = None  # None rather than empty: hot path
        self.holders: dict[_Client, None] = {}
        self.untracked: dict[str, Resources] = {}  # framework_id -> used, framework not added

    def unreserved_q(self, res: Resources, q: Quantities | None = None) -> Quantities:
        """Unreserved scalars of ``res`` (``q``, its quantities, when this agent has no
        reservations: then everything on it is unreserved)."""
        if self.reserved:
            return res.unreserved().scalar_quantities()
        return q if q is not None else res.scalar_quantities()

    def __repr__(self) -> str:
        return f"<agent {self.id} free={self.free}>"


def _plus(a: Quantities, b: Mapping[str, int]) -> Quantities:
    out = dict(a)
    add_quantities(out, b)
    return out


def _minus(a: Quantities, b: Mapping[str, int]) -> Quantities:
    out = dict(a)
    subtract_quantities(out, b)
    return out


class _Framework:
    __slots__ = ("active", "clients", "id", "roles", "suppressed")

    def __init__(self, framework_id: str, roles: list[str], suppressed: Iterable[str]) -> None:
        self.id = framework_id
        self.roles = list(dict.fromkeys(roles))
        self.suppressed = set(suppressed)
        self.active = True
        self.clients: dict[str, _Client] = {}


class _Client(DRFClient):
    """A framework within one of its roles: the unit that is sorted, offered and filtered."""

    __slots__ = (
        "filtered",
        "framework",
        "held",
        "held_q",
        "held_uq",
        "last_served",
        "role",
        "served_mark",
        "starving",
        "wanting",
    )

    def __init__(self, framework: _Framework, role: _Role) -> None:
        super().__init__(framework.id)
        self.framework = framework
        self.role = role
        # What it holds (offered or in use) per agent, with the quantities, and the unreserved
        # quantities where the agent has reservations (elsewhere they are ``held_q``'s).
        # Parallel dicts rather than a tuple per agent: no object to allocate per offer, which
        # matters to the garbage collector at fifty thousand offers a cycle. What was given in
        # separate pieces (an offer next to running tasks) stays a list of the pieces: adding
        # and later subtracting port ranges costs tens of microseconds, while taking back a
        # declined offer is then finding the very object that was offered.
        self.held: dict[_Agent, Resources | list[Resources]] = {}
        self.held_q: dict[_Agent, Quantities] = {}
        self.held_uq: dict[_Agent, Quantities] = {}
        self.filtered: dict[_Agent, None] = {}  # agents where it has filters
        self.last_served = 0
        self.served_mark = -1
        self.starving = False
        self.wanting = False

    def __repr__(self) -> str:
        return f"<client {self.name} in {self.role.name}>"

    def hold(self, agent: _Agent, res: Resources, q: Quantities, uq: Quantities) -> None:
        prev = self.held.get(agent)
        if prev is None:
            self.held[agent] = res
            self.held_q[agent] = q
            if agent.reserved:
                self.held_uq[agent] = uq
            agent.holders[self] = None
            return
        if type(prev) is list:
            prev.append(res)
        else:
            self.held[agent] = [prev, res]  # type: ignore[list-item]
        self.held_q[agent] = _plus(self.held_q[agent], q)
        if agent.reserved:
            self.held_uq[agent] = _plus(self.held_uq[agent], uq)

    def held_total(self, agent: _Agent) -> Resources:
        held = self.held[agent]
        return Resources.sum(held) if type(held) is list else held  # type: ignore[return-value]

    def unhold(self, agent: _Agent) -> tuple[Resources, Quantities, Quantities]:
        """Everything held on ``agent``, forgotten: ``(resources, quantities, unreserved)``."""
        res = self.held_total(agent)
        del self.held[agent]
        q = self.held_q.pop(agent)
        uq = self.held_uq.pop(agent) if agent.reserved else q
        agent.holders.pop(self, None)
        return res, q, uq

    def take(self, agent: _Agent, wanted: Resources) -> tuple[Resources, Quantities, Quantities]:
        """Take ``wanted`` (or what of it is here) back from what is held on ``agent``.

        Returns ``(part, its quantities, its unreserved quantities)``; ``part`` is empty when
        nothing of it was held. A whole piece that comes back (a declined or rescinded offer)
        costs no resource arithmetic.
        """
        held = self.held[agent]
        if type(held) is list:
            for i, piece in enumerate(held):
                if piece is wanted or piece == wanted:
                    del held[i]
                    if len(held) == 1:
                        self.held[agent] = held[0]
                    q = piece.scalar_quantities()
                    uq = agent.unreserved_q(piece, q)
                    self._reduce(agent, q, uq)
                    return piece, q, uq
            total = Resources.sum(held)
        else:
            total = held  # type: ignore[assignment]
            if wanted is total or wanted == total:
                return self.unhold(agent)
        part = _overlap(total, wanted)
        if not part:
            return part, {}, {}
        left = total - part
        if not left:
            _res, q, uq = self.unhold(agent)
            return part, q, uq
        self.held[agent] = left
        q = part.scalar_quantities()
        uq = agent.unreserved_q(part, q)
        self._reduce(agent, q, uq)
        return part, q, uq

    def _reduce(self, agent: _Agent, q: Quantities, uq: Quantities) -> None:
        self.held_q[agent] = _minus(self.held_q[agent], q)
        if agent.reserved:
            self.held_uq[agent] = _minus(self.held_uq[agent], uq)

    def unreserved_held(self) -> Quantities:
        out: Quantities = {}
        for agent, q in self.held_q.items():
            add_quantities(out, self.held_uq[agent] if agent.reserved else q)
        return out


class _Role(DRFClient):
    """A role: a client of the role sorter, and the sorter of its frameworks."""

    __slots__ = (
        "guarantee",
        "limit",
        "n_wanting",
        "quota",
        "reserved_q",
        "sorter",
        "unres_alloc",
    )

    def __init__(self, name: str, totals: Totals) -> None:
        super().__init__(name)
        self.sorter = DRFSorter(totals)
        self.guarantee: Quantities = {}
        self.limit: Quantities | None = None
        self.reserved_q: Quantities = {}  # reservations for it on active agents
        # Unreserved scalars its frameworks hold: kept only while it has quota (``quota``), as
        # nothing else reads it and the hot path should not pay for it.
        self.unres_alloc: Quantities = {}
        self.quota = False
        self.n_wanting = 0

    def consumed(self) -> Quantities:
        """Quota consumption: its reservations (allocated or not) plus unreserved allocation."""
        out = dict(self.reserved_q)
        add_quantities(out, self.unres_alloc)
        return out

    def unsatisfied(self) -> Quantities:
        if not self.guarantee:
            return {}
        used = self.consumed()
        return {n: g - used.get(n, 0) for n, g in self.guarantee.items() if g > used.get(n, 0)}


def _is_filtered(f: _Filter | None, offer: Resources) -> bool:
    """Mesos's rule: an offer is filtered when the refused resources contain it."""
    while f is not None:
        refused = f.resources
        # The same resources coming back is the common case, and `==` is a C-speed dict
        # comparison where `contains` walks port ranges in Python.
        if refused is offer or refused == offer or refused.contains(offer):
            return True
        f = f.next
    return False


def _chain_length(f: _Filter | None) -> int:
    n = 0
    while f is not None:
        n += 1
        f = f.next
    return n


def _meets(q: Mapping[str, int], minimums: list[Quantities]) -> bool:
    for req in minimums:
        for name, value in req.items():
            if q.get(name, 0) < value:
                break
        else:
            return True
    return False


def _overlap(held: Resources, wanted: Resources) -> Resources:
    """What of ``wanted`` is in ``held`` (entry-wise minimum / intersection)."""
    if held == wanted or held.contains(wanted):
        return wanted
    return held - (held - wanted)


def _merge(
    items: list[tuple[str, str, Resources]], roles: list[str]
) -> tuple[list[tuple[str, str, Resources]], list[str]]:
    """One item per (framework, agent, role): an agent given in parts (quota stages,
    reservations) to the same client is one offer."""
    merged: dict[tuple[str, str, str], Resources] = {}
    for (fid, aid, res), role in zip(items, roles, strict=True):
        key = (fid, aid, role)
        prev = merged.get(key)
        merged[key] = res if prev is None else prev + res
    return [(f, a, r) for (f, a, _), r in merged.items()], [k[2] for k in merged]


def _as_resources(value: Any) -> Resources:
    if isinstance(value, Resources):
        return value
    if value is None:
        return _EMPTY
    if isinstance(value, str):
        return Resources.parse(value)
    if isinstance(value, list):
        return Resources.from_dict(value)
    raise ResourceError(f"expected Resources, got {type(value).__name__}")


def _floats(q: Mapping[str, int]) -> dict[str, float]:
    return {name: value / _MILLI for name, value in sorted(q.items())}


# ---------------------------------------------------------------------------------- the actor


class Allocator(Process):
    """The hierarchical DRF allocator actor (see the module docstring for the design).

    Parameters:

    * ``master``: where :class:`~mesa.messages.Allocations` go, one message per cycle that offers
      anything.
    * ``interval``: seconds between periodic cycles (Mesos's ``allocation_interval``). Events
      (resources recovered, agents and frameworks added, revives) also trigger a cycle.
    * ``batch_delay``: how long after the first event that cycle runs, so a burst of events
      costs one cycle and one message.
    * ``starvation_cycles``: after this many offering cycles without an offer, a framework that
      wants offers goes to the front; 0 turns that off (plain DRF).
    * ``min_allocatable``: an offer must contain at least one of these (Mesos's
      ``min_allocatable_resources``), so agents are not offered in useless crumbs; ``()`` offers
      anything non-empty.
    * ``seed``: of the generator that picks where each cycle starts in the agent list (Mesos
      shuffles agents); fixed by default so a simulation replays exactly.
    * ``id``: the actor id (default: generated).
    """

    def __init__(
        self,
        master: UPID | str,
        interval: float = 1.0,
        *,
        batch_delay: float = 0.01,
        starvation_cycles: int = 5,
        min_allocatable: Iterable[Resources | str] = DEFAULT_MIN_ALLOCATABLE,
        seed: int | None = 0,
        id: str | None = None,
    ) -> None:
        super().__init__(id)
        if interval <= 0:
            raise ValueError("interval must be positive")
        if batch_delay < 0:
            raise ValueError("batch_delay must not be negative")
        if starvation_cycles < 0:
            raise ValueError("starvation_cycles must not be negative")
        self.master = master if isinstance(master, UPID) else UPID.parse(master)
        self.interval = float(interval)
        self.batch_delay = float(batch_delay)
        self.starvation_cycles = int(starvation_cycles)
        self._min_alloc: list[Quantities] = [
            _as_resources(r).scalar_quantities() for r in min_allocatable
        ]
        self._min_alloc = [q for q in self._min_alloc if q]

        self._agents: dict[str, _Agent] = {}
        self._frameworks: dict[str, _Framework] = {}
        # framework_id -> agents that reported resources used by it before it was added
        self._untracked: dict[str, dict[_Agent, None]] = {}
        self._roles: dict[str, _Role] = {}
        self._totals = Totals()  # scalars of the active agents: every share's denominator
        self._role_sorter = DRFSorter(self._totals)
        # Unreserved free scalars on active agents (the quota headroom), kept only while some
        # role has a guarantee (``_headroom``).
        self._free_unres: Quantities = {}
        self._headroom = False
        self._free_agents: dict[_Agent, None] = {}  # active agents with anything free
        self._dirty: dict[_Agent, None] = {}  # agents to walk next cycle (insertion-ordered)
        self._fresh: dict[_Client, None] = {}  # clients that started wanting since last cycle
        self._full_pending = False
        self._quota_roles: dict[str, _Role] = {}  # roles with a guarantee or a limit
        self._required: Quantities = {}  # headroom the unsatisfied guarantees need, this cycle
        self._limit_blocked: dict[_Agent, None] = {}
        self._recheck_limits = False
        self._held_back: dict[_Agent, None] = {}
        self._recheck_headroom = False

        self._expiry_heap: list[float] = []  # expiry times with a bucket
        self._expiry_buckets: dict[float, list[_Filter]] = {}
        self._filter_timer: Timer | None = None
        self._filter_timer_at = float("inf")
        self._filters_live = 0
        self._filters_dead = 0  # still in the heap, lifted by revive and the like

        self._batch_timer: Timer | None = None
        self._interval_timer: Timer | None = None

        self._rng = random.Random(seed)
        self._cycle_no = 0
        self._served_cycles = 0
        self._served_buckets: dict[int, list[_Client]] = {}
        self._starving = 0

        # Per-cycle scratch, reset by allocate().
        self._items: list[tuple[str, str, Resources]] = []
        self._item_roles: list[str] = []
        self._partial = False
        self._served: list[_Client] = []
        self._filtered_hits = 0

        self.last_cycle: dict[str, Any] = {}

    # ================================================================== lifecycle

    _GAUGES = (
        "allocator/filters_active",
        "allocator/agents",
        "allocator/frameworks",
        "allocator/dirty_agents",
        "allocator/starving",
    )

    def initialize(self) -> None:
        self.log = self.log.bind(component="allocator")
        m = self.metrics
        m.gauge("allocator/filters_active", lambda: self._filters_live)
        m.gauge("allocator/agents", lambda: len(self._agents))
        m.gauge("allocator/frameworks", lambda: len(self._frameworks))
        m.gauge("allocator/dirty_agents", lambda: len(self._dirty))
        m.gauge("allocator/starving", lambda: self._starving)
        self._interval_timer = self.delay(self.interval, self._on_interval)

    def finalize(self) -> None:
        for timer in (self._batch_timer, self._interval_timer, self._filter_timer):
            if timer is not None:
                timer.cancel()
        for name in self._GAUGES:  # they would keep this actor's state alive
            self.metrics.gauges.pop(name, None)

    # ================================================================== messages

    @handler(AllocatorAddFramework.NAME)
    def _h_add_framework(self, sender: UPID, body: AllocatorAddFramework) -> None:
        self.add_framework(body.framework_id, body.roles, body.suppressed_roles, body.used)

    @handler(AllocatorRemoveFramework.NAME)
    def _h_remove_framework(self, sender: UPID, body: AllocatorRemoveFramework) -> None:
        self.remove_framework(body.framework_id)

    @handler(AllocatorActivateFramework.NAME)
    def _h_activate_framework(self, sender: UPID, body: AllocatorActivateFramework) -> None:
        self.activate_framework(body.framework_id)

    @handler(AllocatorDeactivateFramework.NAME)
    def _h_deactivate_framework(self, sender: UPID, body: AllocatorDeactivateFramework) -> None:
        self.deactivate_framework(body.framework_id)

    @handler(AllocatorAddAgent.NAME)
    def _h_add_agent(self, sender: UPID, body: AllocatorAddAgent) -> None:
        self.add_agent(body.agent_id, body.hostname, body.total, body.used, body.attributes)

    @handler(AllocatorRemoveAgent.NAME)
    def _h_remove_agent(self, sender: UPID, body: AllocatorRemoveAgent) -> None:
        self.remove_agent(body.agent_id)

    @handler(AllocatorActivateAgent.NAME)
    def _h_activate_agent(self, sender: UPID, body: AllocatorActivateAgent) -> None:
        self.activate_agent(body.agent_id)

    @handler(AllocatorDeactivateAgent.NAME)
    def _h_deactivate_agent(self, sender: UPID, body: AllocatorDeactivateAgent) -> None:
        self.deactivate_agent(body.agent_id)

    @handler(AllocatorRecoverResources.NAME)
    def _h_recover(self, sender: UPID, body: AllocatorRecoverResources) -> None:
        self.recover_resources(
            body.agent_id,
            body.framework_id,
            body.resources,
            body.refuse_seconds,
            body.role,
        )

    @handler(AllocatorRevive.NAME)
    def _h_revive(self, sender: UPID, body: AllocatorRevive) -> None:
        self.revive(body.framework_id, body.roles)

    @handler(AllocatorSuppress.NAME)
    def _h_suppress(self, sender: UPID, body: AllocatorSuppress) -> None:
        self.suppress(body.framework_id, body.roles)

    @handler(AllocatorSetQuota.NAME)
    def _h_set_quota(self, sender: UPID, body: AllocatorSetQuota) -> None:
        self.set_quota(body.role, body.guarantee, body.limit)

    @handler(AllocatorSetWeight.NAME)
    def _h_set_weight(self, sender: UPID, body: AllocatorSetWeight) -> None:
        self.set_weight(body.role, body.weight)

    @route("state")
    def _http_state(self, request: Any) -> dict[str, Any]:
        return self.state()

    # ================================================================== frameworks

    def add_framework(
        self,
        framework_id: str,
        roles: Iterable[str],
        suppressed_roles: Iterable[str] = (),
        used: Mapping[str, Any] | None = None,
    ) -> None:
        """A framework subscribed to ``roles``.

        What it already runs is charged to it from what its agents reported when they were added
        (``AllocatorAddAgent.used``): agents are the record of truth for what runs on them, so
        ``used`` here only matters for agents that did not report it (it is then taken off
        their free resources). Adding a known framework updates its roles and suppressed roles
        (Mesos's ``updateFramework``).
        """
        roles = [r for r in roles] or [UNRESERVED]
        fw = self._frameworks.get(framework_id)
        if fw is not None:
            self._update_framework(fw, roles, suppressed_roles)
            return
        fw = _Framework(framework_id, roles, suppressed_roles)
        self._frameworks[framework_id] = fw
        for role_name in fw.roles:
            self._add_client(fw, role_name)
        for agent in self._untracked.pop(framework_id, ()):
            self._track_used(fw, agent, agent.untracked.pop(framework_id))
        for agent_id, res in (used or {}).items():
            agent = self._agents.get(agent_id)
            res = _as_resources(res)
            if agent is None or not res or any(agent in c.held for c in fw.clients.values()):
                continue  # unknown agent (it reports when added), or it already reported this
            part = _overlap(agent.free, res)
            if part:
                self._take(agent, part)
                self._track_used(fw, agent, part)
        for client in fw.clients.values():
            self._update_wanting(client)
        self.log.debug("framework_added", framework_id=framework_id, roles=fw.roles)

    def _update_framework(
        self, fw: _Framework, roles: list[str], suppressed_roles: Iterable[str]
    ) -> None:
        fw.roles = list(dict.fromkeys(roles))
        fw.suppressed = set(suppressed_roles)
        for role_name in fw.roles:
            if role_name not in fw.clients:
                self._add_client(fw, role_name)
        for role_name, client in list(fw.clients.items()):
            if role_name not in fw.roles and not client.held:
                self._remove_client(client)
            else:
                self._update_wanting(client)

    def remove_framework(self, framework_id: str) -> None:
        """Forget a framework; everything it held goes back to its agents."""
        fw = self._frameworks.pop(framework_id, None)
        if fw is None:
            return
        for client in list(fw.clients.values()):
            for agent in list(client.held):
                self._release(client, agent)
            self._remove_client(client)
        self.log.debug("framework_removed", framework_id=framework_id)

    def activate_framework(self, framework_id: str) -> None:
        fw = self._frameworks.get(framework_id)
        if fw is None or fw.active:
            return
        fw.active = True
        for client in fw.clients.values():
            self._update_wanting(client)

    def deactivate_framework(self, framework_id: str) -> None:
        """No more offers (it disconnected or fails over); what it holds stays allocated.

        Its filters go, as in Mesos: a framework that comes back starts with a clean slate.
        """
        fw = self._frameworks.get(framework_id)
        if fw is None or not fw.active:
            return
        fw.active = False
        for client in fw.clients.values():
            self._clear_filters(client, mark_dirty=False)
            self._update_wanting(client)

    def revive(self, framework_id: str, roles: Iterable[str] = ()) -> None:
        """Clear the framework's filters and unsuppress it, in ``roles`` or all its roles."""
        fw = self._frameworks.get(framework_id)
        if fw is None:
            return
        for role_name in list(roles) or fw.roles:
            fw.suppressed.discard(role_name)
            client = fw.clients.get(role_name)
            if client is not None:
                self._clear_filters(client, mark_dirty=True)
                self._update_wanting(client)
        self._request_cycle()

    def suppress(self, framework_id: str, roles: Iterable[str] = ()) -> None:
        """No offers to the framework (in ``roles``, or all its roles) until it revives."""
        fw = self._frameworks.get(framework_id)
        if fw is None:
            return
        for role_name in list(roles) or fw.roles:
            fw.suppressed.add(role_name)
            client = fw.clients.get(role_name)
            if client is not None:
                self._update_wanting(client)

    def _add_client(self, fw: _Framework, role_name: str) -> _Client:
        role = self._role(role_name)
        client = _Client(fw, role)
        fw.clients[role_name] = client
        role.sorter.add(client, active=False)
        return client

    def _remove_client(self, client: _Client) -> None:
        self._clear_filters(client, mark_dirty=False)
        self._set_wanting(client, False)
        role = client.role
        role.sorter.remove(client)
        client.framework.clients.pop(role.name, None)
        self._maybe_drop_role(role)

    def _update_wanting(self, client: _Client) -> None:
        fw = client.framework
        role_name = client.role.name
        wanting = fw.active and role_name in fw.roles and role_name not in fw.suppressed
        self._set_wanting(client, wanting)

    def _set_wanting(self, client: _Client, wanting: bool) -> None:
        """Put a client in (or take it out of) the DRF order it is offered by."""
        if client.wanting == wanting:
            return
        client.wanting = wanting
        role = client.role
        if wanting:
            role.sorter.activate(client)
            role.n_wanting += 1
            if role.n_wanting == 1:
                self._role_sorter.activate(role)
            client.last_served = self._served_cycles
            if self.starvation_cycles:
                self._served_buckets.setdefault(self._served_cycles, []).append(client)
            # It may want what settled agents hold and nobody else wanted.
            self._fresh[client] = None
            self._request_cycle()
        else:
            if client.starving:
                self._set_starving(client, False)
            role.sorter.deactivate(client)
            role.n_wanting -= 1
            if role.n_wanting == 0:
                self._role_sorter.deactivate(role)
            self._fresh.pop(client, None)
        self._refresh_role_boost(role)

    # ================================================================== roles, quota, weights

    def _role(self, name: str) -> _Role:
        role = self._roles.get(name)
        if role is None:
            role = self._roles[name] = _Role(name, self._totals)
            self._role_sorter.add(role, active=False)
            for agent in self._agents.values():
                q = agent.reserved.get(name)
                if q and agent.active:
                    add_quantities(role.reserved_q, q)
        return role

    def _maybe_drop_role(self, role: _Role) -> None:
        if (
            len(role.sorter) == 0
            and role.weight == 1.0
            and not role.guarantee
            and role.limit is None
            and not role.reserved_q
        ):
            self._role_sorter.remove(role)
            self._roles.pop(role.name, None)

    def set_quota(self, role_name: str, guarantee: Any, limit: Any = None) -> None:
        """Guarantee ``role_name`` these quantities and never let it pass ``limit``.

        Only scalars count (as in Mesos). An empty guarantee and no limit removes the quota.
        A limit below the guarantee is refused (logged), as Mesos refuses it.
        """
        g = _as_resources(guarantee).scalar_quantities() if guarantee is not None else {}
        lim = _as_resources(limit).scalar_quantities() if limit is not None else None
        if lim is not None and any(g.get(n, 0) > v for n, v in lim.items()):
            self.log.warning("quota_refused", role=role_name, reason="limit below guarantee")
            self.metrics.inc("allocator/quota_refused")
            return
        role = self._role(role_name)
        role.guarantee = {n: v for n, v in g.items() if v > 0}
        role.limit = lim
        if role.guarantee or role.limit is not None:
            if not role.quota:
                role.quota = True
                role.unres_alloc = {}
                for client in role.sorter:
                    add_quantities(role.unres_alloc, client.unreserved_held())  # type: ignore[attr-defined]
            self._quota_roles[role_name] = role
        else:
            role.quota = False
            role.unres_alloc = {}
            self._quota_roles.pop(role_name, None)
            self._maybe_drop_role(role)
        headroom = any(r.guarantee for r in self._quota_roles.values())
        if headroom and not self._headroom:
            self._free_unres = {}
            for agent in self._agents.values():
                if agent.active:
                    add_quantities(self._free_unres, agent.free_uq)
        elif not headroom:
            self._free_unres = {}
        self._headroom = headroom
        # A raised limit or a lowered guarantee can make settled agents' resources eligible.
        self._full_pending = True
        self._request_cycle()

    def set_weight(self, role_name: str, weight: float) -> None:
        """A role's DRF weight (shares are divided by it).

        No cycle is triggered, as in Mesos: a weight reorders who is served first, and settled
        agents have nobody eligible to reorder, so only future offers change.
        """
        role = self._role(role_name)
        self._role_sorter.set_weight(role, weight)
        if weight == 1.0:
            self._maybe_drop_role(role)

    def _refresh_role_boost(self, role: _Role) -> None:
        """A role is as urgent as its most starving framework."""
        order = role.sorter.sort()
        boost = order[0].boost if order and order[0].boost < 0 else 0
        self._role_sorter.set_boost(role, boost)

    # ================================================================== agents

    def add_agent(
        self,
        agent_id: str,
        hostname: str,
        total: Any,
        used: Mapping[str, Any] | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """An agent with ``total`` resources, of which ``used`` (per framework) already run."""
        if agent_id in self._agents:
            self.remove_agent(agent_id)  # re-added: start from what it reports now
        agent = _Agent(agent_id, hostname, _as_resources(total))
        agent.attributes = dict(attributes or {})
        agent.active = False
        self._agents[agent_id] = agent
        in_use = []
        for framework_id, res in (used or {}).items():
            res = _as_resources(res)
            if not res:
                continue
            in_use.append(res)
            fw = self._frameworks.get(framework_id)
            if fw is None:
                # Not added yet (the master is recovering): charged to it when it is.
                agent.untracked[framework_id] = res
                self._untracked.setdefault(framework_id, {})[agent] = None
            else:
                self._track_used(fw, agent, res)
        if in_use:
            agent.free = agent.total - Resources.sum(in_use)
            agent.free_q = agent.free.scalar_quantities()
            agent.free_uq = agent.unreserved_q(agent.free, agent.free_q)
        self._activate(agent)

    def remove_agent(self, agent_id: str) -> None:
        agent = self._agents.pop(agent_id, None)
        if agent is None:
            return
        if agent.active:
            self._deactivate(agent)
        for client in list(agent.holders):
            _res, q, uq = client.unhold(agent)
            self._untrack(client, q, uq)
        agent.holders.clear()
        for framework_id in agent.untracked:
            index = self._untracked.get(framework_id)
            if index is not None:
                index.pop(agent, None)
                if not index:
                    del self._untracked[framework_id]
        if agent.filters:
            for client, f in agent.filters.items():
                client.filtered.pop(agent, None)
                while f is not None:
                    self._kill_filter(f)
                    f = f.next
            agent.filters = None
            self._compact_filters()

    def activate_agent(self, agent_id: str) -> None:
        agent = self._agents.get(agent_id)
        if agent is not None and not agent.active:
            self._activate(agent)

    def deactivate_agent(self, agent_id: str) -> None:
        """Offer nothing there until it is back; what runs there stays allocated."""
        agent = self._agents.get(agent_id)
        if agent is not None and agent.active:
            self._deactivate(agent)

    def _activate(self, agent: _Agent) -> None:
        agent.active = True
        self._totals.add(agent.total_q)
        if self._headroom:
            add_quantities(self._free_unres, agent.free_uq)
        for role_name, q in agent.reserved.items():
            role = self._roles.get(role_name)
            if role is not None:
                add_quantities(role.reserved_q, q)
        if agent.free:
            self._free_agents[agent] = None
            self._dirty[agent] = None
            self._recheck_headroom = True
            self._request_cycle()

    def _deactivate(self, agent: _Agent) -> None:
        agent.active = False
        self._totals.subtract(agent.total_q)
        if self._headroom:
            subtract_quantities(self._free_unres, agent.free_uq)
        for role_name, q in agent.reserved.items():
            role = self._roles.get(role_name)
            if role is not None:
                subtract_quantities(role.reserved_q, q)
        self._free_agents.pop(agent, None)
        self._dirty.pop(agent, None)
        self._held_back.pop(agent, None)
        self._limit_blocked.pop(agent, None)

    # ================================================================== resources

    def recover_resources(
        self,
        agent_id: str,
        framework_id: str,
        resources: Any,
        refuse_seconds: float | None = None,
        role: str | None = None,
    ) -> None:
        """Resources come back from a framework (declined, rescinded, unused, task ended).

        With ``refuse_seconds`` (a decline), those resources on that agent are filtered for that
        framework and role for that long. ``role`` says which of the framework's roles they were
        offered to; without it the allocator works it out from what the framework holds there.
        Resources the framework does not hold there are ignored (counted as
        ``allocator/recovered_unknown``): the master and the allocator crossed messages.
        """
        resources = _as_resources(resources)
        if not resources:
            return
        agent = self._agents.get(agent_id)
        if agent is None:
            return  # removed meanwhile: it took everything with it
        fw = self._frameworks.get(framework_id)
        if fw is None:
            untracked = agent.untracked.get(framework_id)
            if untracked is not None:
                part = _overlap(untracked, resources)
                left = untracked - part
                if left:
                    agent.untracked[framework_id] = left
                else:
                    del agent.untracked[framework_id]
                    self._untracked.get(framework_id, {}).pop(agent, None)
                q = part.scalar_quantities()
                self._give_back(agent, part, q, agent.unreserved_q(part, q))
            return
        clients = fw.clients
        if role is not None and role in clients:
            candidates: Iterable[_Client] = (clients[role],)
        elif len(clients) == 1:
            candidates = clients.values()
        else:
            candidates = [c for c in clients.values() if agent in c.held]
        remaining = resources
        for client in candidates:
            if agent not in client.held:
                continue
            part, q, uq = client.take(agent, remaining)
            if not part:
                continue
            self._untrack(client, q, uq)
            self._give_back(agent, part, q, uq)
            if refuse_seconds is not None:
                self._add_filter(client, agent, part, refuse_seconds)
            if part is remaining:
                remaining = _EMPTY
                break
            remaining = remaining - part
            if not remaining:
                break
        if remaining:
            self.metrics.inc("allocator/recovered_unknown")

    def _track_used(self, fw: _Framework, agent: _Agent, res: Resources) -> None:
        """Charge resources already in use to the framework's roles: reservations to the role
        they are reserved for (or the one they serve), the rest to its first role."""
        by_role: dict[str, Resources] = {}
        rest = res
        for reservation in res.roles():
            if reservation == UNRESERVED:
                continue
            target = next(
                (r for r in fw.roles if r == reservation or r.startswith(reservation + "/")),
                fw.roles[0],
            )
            part = res.reserved(reservation)
            by_role[target] = by_role.get(target, _EMPTY) + part
            rest = rest - part
        if rest:
            first = fw.roles[0]
            by_role[first] = by_role.get(first, _EMPTY) + rest
        for role_name, part in by_role.items():
            client = fw.clients.get(role_name) or self._add_client(fw, role_name)
            q = part.scalar_quantities()
            uq = agent.unreserved_q(part, q)
            client.hold(agent, part, q, uq)
            role = client.role
            role.sorter.allocated(client, q)
            self._role_sorter.allocated(role, q)
            if role.quota:
                add_quantities(role.unres_alloc, uq)

    def _release(self, client: _Client, agent: _Agent) -> None:
        """Everything ``client`` holds on ``agent`` is free again."""
        part, q, uq = client.unhold(agent)
        self._untrack(client, q, uq)
        self._give_back(agent, part, q, uq)

    def _untrack(self, client: _Client, q: Quantities, uq: Quantities) -> None:
        """Take resources off the client's and its role's shares and quota consumption."""
        role = client.role
        role.sorter.unallocated(client, q)
        self._role_sorter.unallocated(role, q)
        if role.quota:
            subtract_quantities(role.unres_alloc, uq)
            if role.limit is not None:
                self._recheck_limits = True
            if role.guarantee:
                self._recheck_headroom = True

    def _give_back(self, agent: _Agent, part: Resources, q: Quantities, uq: Quantities) -> None:
        if agent.free:
            agent.free = agent.free + part
            agent.free_q = _plus(agent.free_q, q)
            agent.free_uq = agent.free_q if not agent.reserved else _plus(agent.free_uq, uq)
        else:
            agent.free, agent.free_q, agent.free_uq = part, q, uq
        if agent.active:
            if self._headroom:
                add_quantities(self._free_unres, uq)
            self._free_agents[agent] = None
            self._dirty[agent] = None
            if self._held_back:
                self._recheck_headroom = True
            self._request_cycle()

    def _take(self, agent: _Agent, part: Resources) -> None:
        """``part`` of the agent's free resources is in use (reported late)."""
        q = part.scalar_quantities()
        uq = agent.unreserved_q(part, q)
        agent.free = agent.free - part
        agent.free_q = _minus(agent.free_q, q)
        agent.free_uq = _minus(agent.free_uq, uq) if agent.reserved else agent.free_q
        if agent.active:
            if self._headroom:
                subtract_quantities(self._free_unres, uq)
            if not agent.free:
                self._free_agents.pop(agent, None)

    # ================================================================== filters
    #
    # A filter is one small object: chained from its agent (``agent.filters[client]`` is the
    # head, ``f.next`` the rest; usually there is one) and listed in the bucket of its expiry
    # time, whose key sits in a heap of floats. Filters set in one burst share a bucket, and
    # nothing else is allocated per filter: with tens of thousands of filters alive, what the
    # garbage collector has to walk matters as much as the arithmetic.

    def _add_filter(
        self, client: _Client, agent: _Agent, res: Resources, refuse_seconds: float
    ) -> None:
        if refuse_seconds < 0:
            refuse_seconds = DEFAULT_REFUSE_SECONDS
        if refuse_seconds == 0:
            return
        refuse_seconds = min(refuse_seconds, MAX_REFUSE_SECONDS)
        expires = Clock.now() + refuse_seconds
        f = _Filter(agent, client, res, expires)
        filters = agent.filters
        if filters is None:
            filters = agent.filters = {}
        head = filters.get(client)
        if head is None:
            client.filtered[agent] = None
        else:
            # A filter that refuses more for at least as long makes older ones redundant.
            tail = f
            g: _Filter | None = head
            while g is not None:
                nxt = g.next
                if g.expires <= expires and res.contains(g.resources):
                    self._kill_filter(g)
                else:
                    tail.next = g
                    tail = g
                g = nxt
            tail.next = None
        filters[client] = f
        self._filters_live += 1
        bucket = self._expiry_buckets.get(expires)
        if bucket is None:
            self._expiry_buckets[expires] = [f]
            heapq.heappush(self._expiry_heap, expires)
            if expires < self._filter_timer_at:
                self._arm_filter_timer()
        else:
            bucket.append(f)

    def _kill_filter(self, f: _Filter) -> None:
        if f.live:
            f.live = False
            self._filters_live -= 1
            self._filters_dead += 1

    def _clear_filters(self, client: _Client, mark_dirty: bool) -> None:
        for agent in client.filtered:
            filters = agent.filters
            if filters is None:
                continue
            f = filters.pop(client, None)
            while f is not None:
                self._kill_filter(f)
                f = f.next
            if not filters:
                agent.filters = None
            if mark_dirty and agent.active and agent.free:
                self._dirty[agent] = None
        client.filtered.clear()
        self._compact_filters()

    def _unlink_filter(self, f: _Filter) -> None:
        agent, client = f.agent, f.client
        filters = agent.filters
        if filters is None:
            return
        head = filters.get(client)
        if head is f:
            if f.next is not None:
                filters[client] = f.next
                return
            del filters[client]
            client.filtered.pop(agent, None)
            if not filters:
                agent.filters = None
            return
        g = head
        while g is not None and g.next is not f:
            g = g.next
        if g is not None:
            g.next = f.next

    def _expire_filters(self, now: float) -> None:
        heap = self._expiry_heap
        buckets = self._expiry_buckets
        dirty = self._dirty
        expired = 0
        while heap and heap[0] <= now + _SLACK:
            for f in buckets.pop(heapq.heappop(heap), ()):
                if not f.live:
                    self._filters_dead -= 1
                    continue
                f.live = False
                self._filters_live -= 1
                expired += 1
                self._unlink_filter(f)
                agent = f.agent
                if agent.active and agent.free:
                    dirty[agent] = None
        if expired:
            self.metrics.inc("allocator/filters_expired", expired)

    def _compact_filters(self) -> None:
        """Forget lifted filters once they are most of what waits to expire (revive loops)."""
        if self._filters_dead > 1024 and self._filters_dead > self._filters_live:
            buckets = {}
            for when, bucket in self._expiry_buckets.items():
                live = [f for f in bucket if f.live]
                if live:
                    buckets[when] = live
            self._expiry_buckets = buckets
            self._expiry_heap = list(buckets)
            heapq.heapify(self._expiry_heap)
            self._filters_dead = 0

    def _arm_filter_timer(self) -> None:
        if self._filter_timer is not None:
            self._filter_timer.cancel()
            self._filter_timer = None
        heap = self._expiry_heap
        if not heap or self._pid is None:
            self._filter_timer_at = float("inf")
            return
        self._filter_timer_at = heap[0]
        self._filter_timer = self.delay(
            max(0.0, self._filter_timer_at - Clock.now()), self._on_filter_timer
        )

    # ================================================================== cycles

    def _request_cycle(self) -> None:
        if self._batch_timer is None and self._pid is not None:
            self._batch_timer = self.delay(self.batch_delay, self._on_batch)

    def _on_batch(self) -> None:
        self._batch_timer = None
        self._run_cycle()

    def _on_interval(self) -> None:
        self._interval_timer = self.delay(self.interval, self._on_interval)
        self._run_cycle()

    def _on_filter_timer(self) -> None:
        self._filter_timer = None
        self._filter_timer_at = float("inf")
        self._run_cycle()  # it expires what is due and re-arms for the next

    def _run_cycle(self) -> None:
        msg = self.allocate()
        if msg is not None:
            self.send(self.master, Allocations.NAME, msg)

    def allocate(self, full: bool = False) -> Allocations | None:
        """Run one allocation cycle now and return what it offers (None for nothing).

        This is the whole cycle the actor runs on its timers (which then send the result to the
        master); tests and the benchmark call it directly. ``full`` walks every agent with free
        resources against every framework, as after a change nothing else would catch.
        """
        started = time.perf_counter()
        self._cycle_no += 1
        if self._batch_timer is not None:
            self._batch_timer.cancel()  # this cycle does its work
            self._batch_timer = None
        heap = self._expiry_heap
        if heap:
            now = Clock.now()
            if heap[0] <= now + _SLACK:
                self._expire_filters(now)
            if heap and (self._filter_timer is None or heap[0] < self._filter_timer_at):
                self._arm_filter_timer()

        full = full or self._full_pending or len(self._fresh) > _TARGETED_MAX
        dirty = self._dirty
        if self._recheck_limits:
            self._recheck_limits = False
            dirty.update(self._limit_blocked)
            self._limit_blocked = {}
        if self._recheck_headroom:
            self._recheck_headroom = False
            dirty.update(self._held_back)
            self._held_back = {}
        fresh = self._fresh
        if full:
            candidates = list(self._free_agents)
            targeted: list[_Agent] = []
            self._limit_blocked = {}
            self._held_back = {}
        elif dirty or fresh:
            candidates = [a for a in dirty if a.active and a.free]
            targeted = [a for a in self._free_agents if a not in dirty] if fresh else []
        else:
            self.metrics.inc("allocator/cycles")
            return None  # nothing changed: nothing to do
        if len(candidates) > 1:
            # Start somewhere else each cycle, as Mesos shuffles: otherwise the same agents
            # always meet the same frameworks first (equal shares break ties by arrival), and an
            # agent declined by its usual first taker is walked further every cycle.
            k = self._rng.randrange(len(candidates))
            candidates = candidates[k:] + candidates[:k]
        self._dirty = {}
        self._fresh = {}
        self._full_pending = False

        self._items = items = []
        self._item_roles = roles = []
        self._partial = False
        self._served = []
        self._filtered_hits = 0
        if self._quota_roles:
            self._required = self._required_headroom()
            self._quota_stage(candidates, None)
            if targeted:
                self._quota_stage(targeted, fresh)
        else:
            self._required = {}
        self._fair_stage(candidates)
        if targeted:
            self._targeted_stage(targeted, fresh)
        self._age()

        if self._partial:
            items, roles = _merge(items, roles)
        self._items = []
        self._item_roles = []
        self._served = []

        elapsed = time.perf_counter() - started
        m = self.metrics
        m.inc("allocator/cycles")
        if full:
            m.inc("allocator/full_cycles")
        m.set("allocator/cycle_ms", elapsed * 1000.0)
        m.inc("allocator/offers", len(items))
        m.inc("allocator/filtered", self._filtered_hits)
        m.inc("allocator/agents_visited", len(candidates) + len(targeted))
        self.last_cycle = {
            "cycle": self._cycle_no,
            "full": full,
            "agents_visited": len(candidates),
            "agents_targeted": len(targeted),
            "newcomers": len(fresh),
            "offers": len(items),
            "filtered": self._filtered_hits,
            "ms": elapsed * 1000.0,
        }
        if not items:
            return None
        return Allocations(items=items, roles=roles)

    # ---------------------------------------------------------------- the DRF walk (stage 2)

    def _fair_stage(self, agents: list[_Agent]) -> None:
        """Each agent's free resources to the first eligible (role, framework) in DRF order.

        The hot path of the allocator: for an agent without reservations in a cluster without
        quota it is a filter lookup per framework passed over and the bookkeeping of one offer,
        with no resource arithmetic (the agent's quantities are kept up to date as resources
        move). That common case of :meth:`_give` is inlined below, for speed only.
        """
        role_sorter = self._role_sorter
        minimums = self._min_alloc
        simple = not self._headroom
        free_agents = self._free_agents
        items = self._items
        item_roles = self._item_roles
        served = self._served
        cycle = self._cycle_no
        role_allocated = role_sorter.allocated
        filtered = 0
        for agent in agents:
            reserved = agent.reserved
            while True:
                free = agent.free
                if not free:
                    break
                given = False
                for role in role_sorter.sort():
                    if reserved or role.limit is not None or self._required:
                        candidate = self._offer_for(agent, role, free, minimums)
                        if candidate is None:
                            continue
                        offer, q, uq = candidate
                    else:
                        offer, q, uq = free, agent.free_q, agent.free_uq
                        if minimums and not _meets(q, minimums):
                            continue
                    flts = agent.filters
                    for client in role.sorter.sort():
                        if flts is not None:
                            fl = flts.get(client)
                            if fl is not None and _is_filtered(fl, offer):
                                filtered += 1
                                continue
                        given = True
                        held = client.held
                        if offer is not free or not simple or role.quota or agent in held:
                            self._give(agent, client, role, offer, q, uq)
                            break
                        # _give, for an agent (without reservations) given whole to a client
                        # holding nothing there.
                        agent.free = _EMPTY
                        agent.free_q = agent.free_uq = {}
                        del free_agents[agent]
                        held[agent] = offer
                        client.held_q[agent] = q
                        agent.holders[client] = None
                        role.sorter.allocated(client, q)
                        role_allocated(role, q)
                        items.append((client.name, agent.id, offer))
                        item_roles.append(role.name)
                        if client.served_mark != cycle:
                            client.served_mark = cycle
                            served.append(client)
                        break
                    if given:
                        break
                if not given:
                    break
        self._filtered_hits += filtered

    def _targeted_stage(self, agents: list[_Agent], fresh: dict[_Client, None]) -> None:
        """Settled agents offered to the newcomers only: nobody else was eligible for them."""
        minimums = self._min_alloc
        order = self._fresh_order(fresh)  # re-sorted after each offer, which moves shares
        for agent in agents:
            while agent.free:
                free = agent.free
                given = False
                for role, clients in order:
                    candidate = self._offer_for(agent, role, free, minimums)
                    if candidate is None:
                        continue
                    offer, q, uq = candidate
                    flts = agent.filters
                    for client in clients:
                        if flts is not None:
                            fl = flts.get(client)
                            if fl is not None and _is_filtered(fl, offer):
                                self._filtered_hits += 1
                                continue
                        self._give(agent, client, role, offer, q, uq)
                        given = True
                        break
                    if given:
                        order = self._fresh_order(fresh)
                        break
                if not given:
                    break

    def _offer_for(
        self, agent: _Agent, role: _Role, free: Resources, minimums: list[Quantities]
    ) -> tuple[Resources, Quantities, Quantities] | None:
        """What of an agent's free resources ``role`` may be offered, with its quantities.

        Reservations narrow it to what the role may use; a limit or the quota headroom other
        roles' guarantees still need shapes it down; below the minimum allocatable it is None.
        """
        if agent.reserved:
            avail = free.allocatable_to(role.name)
            if not avail:
                return None
            q = avail.scalar_quantities()
            uq = avail.unreserved().scalar_quantities()
        else:
            avail, q, uq = free, agent.free_q, agent.free_uq
        offer = avail
        if role.limit is not None or self._required:
            shaped = self._shape(agent, role, avail, None)
            if shaped is None:
                return None
            offer, q, uq, _ = shaped
        if minimums and not _meets(q, minimums):
            return None
        return offer, q, uq

    def _fresh_order(self, fresh: Mapping[_Client, None]) -> list[tuple[_Role, list[_Client]]]:
        """The newcomers grouped by role, roles and clients in DRF order."""
        by_role: dict[_Role, list[_Client]] = {}
        for client in fresh:
            if client.wanting:
                by_role.setdefault(client.role, []).append(client)
        out = []
        for role in sorted(by_role, key=self._role_sorter.key):
            clients = sorted(by_role[role], key=role.sorter.key)
            out.append((role, clients))
        return out

    def _give(
        self,
        agent: _Agent,
        client: _Client,
        role: _Role,
        offer: Resources,
        q: Quantities,
        uq: Quantities,
    ) -> None:
        """Allocate ``offer`` (quantities ``q``, unreserved ``uq``) on ``agent`` to ``client``:
        all the bookkeeping of one offer."""
        free = agent.free
        if offer is free:
            agent.free = _EMPTY
            agent.free_q = agent.free_uq = {}
            self._free_agents.pop(agent, None)
        else:
            self._partial = True  # this agent may be given to the same client again this cycle
            left = free - offer
            agent.free = left
            agent.free_q = _minus(agent.free_q, q)
            agent.free_uq = _minus(agent.free_uq, uq) if agent.reserved else agent.free_q
            if not left:
                self._free_agents.pop(agent, None)
        client.hold(agent, offer, q, uq)
        role.sorter.allocated(client, q)
        self._role_sorter.allocated(role, q)
        if self._headroom:
            free_unres = self._free_unres
            for name, value in uq.items():
                free_unres[name] = free_unres.get(name, 0) - value
        if role.quota:
            add_quantities(role.unres_alloc, uq)
            if role.guarantee and self._held_back:
                # Less headroom is needed now: what was held back may go to others.
                self._recheck_headroom = True
                self._request_cycle()
        self._items.append((client.name, agent.id, offer))
        self._item_roles.append(role.name)
        if client.served_mark != self._cycle_no:
            client.served_mark = self._cycle_no
            self._served.append(client)

    # ---------------------------------------------------------------- quota (stage 1 and shaping)

    def _required_headroom(self) -> Quantities:
        """Unreserved resources that must stay free for the guarantees not yet met."""
        required: Quantities = {}
        for role in self._quota_roles.values():
            add_quantities(required, role.unsatisfied())
        return required

    def _quota_stage(self, agents: list[_Agent], only: Mapping[_Client, None] | None) -> None:
        """Stage 1: roles below their guarantee get what brings them towards it (Mesos 1.9)."""
        unsatisfied = {r for r in self._quota_roles.values() if r.guarantee and r.unsatisfied()}
        if not unsatisfied:
            return
        minimums = self._min_alloc
        for agent in agents:
            if not unsatisfied:
                return
            reserved = agent.reserved
            while agent.free and unsatisfied:
                free = agent.free
                given = False
                order = sorted((r for r in unsatisfied if r.active), key=self._role_sorter.key)
                for role in order:
                    avail = free.allocatable_to(role.name) if reserved else free
                    if not avail:
                        continue
                    shaped = self._shape(agent, role, avail, role.unsatisfied())
                    if shaped is None:
                        continue
                    offer, q, unres_q, _guaranteed = shaped
                    if minimums and not _meets(q, minimums):
                        continue
                    flts = agent.filters
                    for client in role.sorter.sort():
                        if only is not None and client not in only:
                            continue
                        if flts is not None:
                            fl = flts.get(client)
                            if fl is not None and _is_filtered(fl, offer):
                                self._filtered_hits += 1
                                continue
                        self._give(agent, client, role, offer, q, unres_q)  # type: ignore[arg-type]
                        given = True
                        break
                    if given:
                        if not role.unsatisfied():
                            unsatisfied.discard(role)
                        self._required = self._required_headroom()
                        break
                if not given:
                    break

    def _shape(
        self,
        agent: _Agent,
        role: _Role,
        avail: Resources,
        unsatisfied: Quantities | None,
    ) -> tuple[Resources, Quantities, Quantities, Quantities] | None:
        """Cut the unreserved scalars of an offer to the role's limit and the free headroom.

        Stage 1 (``unsatisfied`` given): the part towards the guarantee is offered whatever the
        headroom (it *is* the headroom), the rest is limited like stage 2; nothing is offered
        unless something goes towards the guarantee. Reservations and non-scalars always go
        whole. Returns ``(offer, its quantities, its unreserved quantities, the guaranteed
        part)``, or None when nothing is left to offer.
        """
        unres = avail.unreserved().scalar_quantities()
        consumed = role.consumed()
        guaranteed: Quantities = {}
        if unsatisfied is not None:
            for name, need in unsatisfied.items():
                have = unres.get(name, 0)
                if have > 0:
                    guaranteed[name] = min(have, need)
            if not guaranteed:
                return None
        extra = {n: v - guaranteed.get(n, 0) for n, v in unres.items()}
        limited = False
        if role.limit is not None:
            for name, cap in role.limit.items():
                if extra.get(name, 0) > 0:
                    room = max(0, cap - consumed.get(name, 0) - guaranteed.get(name, 0))
                    if extra[name] > room:
                        extra[name] = room
                        limited = True
        held_back = False
        required = self._required
        if required:
            free_unres = self._free_unres
            for name, v in extra.items():
                if v > 0:
                    surplus = max(0, free_unres.get(name, 0) - required.get(name, 0))
                    if v > surplus:
                        extra[name] = surplus
                        held_back = True
        if limited:
            self._limit_blocked[agent] = None
        if held_back:
            self._held_back[agent] = None
        offered = {n: guaranteed.get(n, 0) + extra.get(n, 0) for n in unres}
        offered = {n: v for n, v in offered.items() if v > 0}
        cut = {n: (v - offered.get(n, 0)) / _MILLI for n, v in unres.items()}
        cut = {n: v for n, v in cut.items() if v > 0}
        offer = avail - Resources.of(cut) if cut else avail
        if not offer:
            return None
        return offer, offer.scalar_quantities(), offered, guaranteed

    # ---------------------------------------------------------------- starvation

    def _age(self) -> None:
        """Count this cycle against everyone who wanted offers and got none."""
        served = self._served
        if not served:
            return
        self._served_cycles += 1
        c = self._served_cycles
        for client in served:
            client.last_served = c
            if client.starving:
                self._set_starving(client, False)
        k = self.starvation_cycles
        if not k:
            return
        self._served_buckets.setdefault(c, []).extend(served)
        for client in self._served_buckets.pop(c - k, ()):
            if client.last_served == c - k and client.wanting and not client.starving:
                self._set_starving(client, True)

    def _set_starving(self, client: _Client, starving: bool) -> None:
        client.starving = starving
        self._starving += 1 if starving else -1
        client.role.sorter.set_boost(client, _STARVING + client.last_served if starving else 0)
        self._refresh_role_boost(client.role)
        if starving:
            self.metrics.inc("allocator/starvation_boosts")

    # ================================================================== introspection

    def state(self) -> dict[str, Any]:
        """A snapshot for operators (plain types, JSON-ready): roles with their weights, shares,
        quota and consumption; frameworks with their shares and filters; the last cycle."""
        self._role_sorter.sort()
        roles: dict[str, Any] = {}
        for name, role in sorted(self._roles.items()):
            share = self._role_sorter.share(role)
            if role.quota:
                consumed = role.consumed()
            else:  # not tracked outside quota: add it up
                consumed = dict(role.reserved_q)
                for client in role.sorter:
                    add_quantities(consumed, client.unreserved_held())  # type: ignore[attr-defined]
            roles[name] = {
                "weight": role.weight,
                "share": share,
                "weighted_share": share / role.weight,
                "allocated": _floats(role.alloc),
                "reserved": _floats(role.reserved_q),
                "consumed_quota": _floats(consumed),
                "guarantee": _floats(role.guarantee),
                "limit": _floats(role.limit) if role.limit is not None else None,
                "frameworks": sorted(c.name for c in role.sorter),
                "wanting": role.n_wanting,
            }
        frameworks: dict[str, Any] = {}
        for fid, fw in sorted(self._frameworks.items()):
            frameworks[fid] = {
                "active": fw.active,
                "roles": list(fw.roles),
                "suppressed": sorted(fw.suppressed),
                "shares": {r: c.role.sorter.share(c) for r, c in fw.clients.items()},
                "filters": sum(
                    _chain_length(a.filters.get(c))
                    for c in fw.clients.values()
                    for a in c.filtered
                    if a.filters
                ),
                "starving": sorted(r for r, c in fw.clients.items() if c.starving),
                "agents": len({a for c in fw.clients.values() for a in c.held}),
            }
        return {
            "total": _floats(self._totals.q),
            "agents": {
                "total": len(self._agents),
                "active": sum(1 for a in self._agents.values() if a.active),
                "with_free_resources": len(self._free_agents),
                "dirty": len(self._dirty),
            },
            "roles": roles,
            "frameworks": frameworks,
            "filters": self._filters_live,
            "starving": self._starving,
            "cycles": self._cycle_no,
            "offering_cycles": self._served_cycles,
            "last_cycle": dict(self.last_cycle),
        }
