"""Dominant Resource Fairness, kept in order as allocations change.

The allocator asks "who comes first?" once per agent per cycle and changes one client's allocation
after each answer, so the order must be cheap to read and cheap to repair. A :class:`DRFSorter`
therefore keeps its active clients in a list sorted by key, and an allocation change moves only the
client it concerns (two binary searches and one ``list`` move: microseconds for thousands of
clients) instead of re-sorting everyone, as Mesos's sorter does on every ``sort()``.

A client's *dominant share* is the largest fraction of the cluster total it holds of any scalar
resource (``max(alloc[r] / total[r])``); the sort key is that share divided by the client's weight,
preceded by a *boost* that lets the allocator put a client ahead of everyone regardless of share
(it is how starving frameworks jump the queue; 0 for everyone else) and followed by the order in
which clients joined the sorter: equal shares are served first come, first served, as Mesos's
sequential framework ids make it, and deterministically.

Keys are tuples of numbers only, kept in a list parallel to the list of clients: a tuple that
holds no object is dropped by the garbage collector's bookkeeping at its first pass, so the key
made for every offer does not end up in the old generations whose collections are what make a
Python process with a large heap pause.

Quantities are ``dict[str, int]`` of scalar totals in thousandths, as
:meth:`mesa.resources.Resources.scalar_quantities` returns them: exact, so adding and removing the
same offer a million times leaves no drift.

When the cluster total changes every share changes at once; all sorters of an allocator share one
:class:`Totals`, whose generation number tells each sorter to recompute lazily on its next read.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Iterator, Mapping

__all__ = [
    "DRFClient",
    "DRFSorter",
    "Key",
    "Quantities",
    "Totals",
    "add_quantities",
    "dominant_share",
    "subtract_quantities",
]

Quantities = dict[str, int]

Key = tuple[int, float, int]
"""A client's place: (boost, share / weight, arrival). Arrivals are unique within a sorter."""


def add_quantities(into: Quantities, q: Mapping[str, int]) -> None:
    """``into += q``, in place."""
    for name, value in q.items():
        into[name] = into.get(name, 0) + value


def subtract_quantities(into: Quantities, q: Mapping[str, int]) -> None:
    """``into -= q``, in place; names that reach zero (or below) disappear."""
    for name, value in q.items():
        left = into.get(name, 0) - value
        if left > 0:
            into[name] = left
        else:
            into.pop(name, None)


def dominant_share(alloc: Mapping[str, int], total: Mapping[str, int]) -> float:
    """``max(alloc[r] / total[r])`` over resources the cluster has; 0.0 for nothing."""
    share = 0.0
    for name, value in alloc.items():
        t = total.get(name)
        if t:
            s = value / t
            if s > share:
                share = s
    return share


class Totals:
    """The cluster total every share is computed against, with a change counter.

    One instance is shared by an allocator's role sorter and all its framework sorters, so a
    change of the total (an agent added, removed, activated or deactivated) costs one increment
    here instead of a visit to every sorter.
    """

    __slots__ = ("gen", "q")

    def __init__(self) -> None:
        self.q: Quantities = {}
        self.gen = 0

    def add(self, q: Mapping[str, int]) -> None:
        if q:
            add_quantities(self.q, q)
            self.gen += 1

    def subtract(self, q: Mapping[str, int]) -> None:
        if q:
            subtract_quantities(self.q, q)
            self.gen += 1


class DRFClient:
    """One thing being sorted (a role, or a framework within a role).

    Subclass it to hang the caller's own state on it (the allocator does); the sorter only reads
    and writes the slots below. ``alloc`` is what the client holds; ``share`` its dominant share
    (unweighted; valid while the sorter is fresh).
    """

    __slots__ = (
        "_key",
        "_sorter",
        "active",
        "alloc",
        "arrival",
        "boost",
        "name",
        "share",
        "weight",
    )

    def __init__(self, name: str, weight: float = 1.0) -> None:
        if not weight > 0:
            raise ValueError(f"weight of {name!r} must be positive, got {weight!r}")
        self.name = name
        self.weight = float(weight)
        self.alloc: Quantities = {}
        self.share = 0.0
        self.boost = 0
        self.arrival = 0  # set by the sorter it joins
        self.active = False
        self._key: Key | None = None  # its key in the sorter's order while active and fresh
        self._sorter: DRFSorter | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} share={self.share:.4f}>"


class DRFSorter:
    """Clients in weighted-DRF order; only *active* clients appear in :meth:`sort`.

    Inactive clients keep their allocation (a framework that is failing over still holds its
    tasks) but are not offered anything, as in Mesos. The list returned by :meth:`sort` is the
    sorter's own: read it, and stop iterating before calling anything that changes an
    allocation.
    """

    __slots__ = ("_arrivals", "_clients", "_gen", "_keys", "_lazy", "_order", "totals")

    def __init__(self, totals: Totals | None = None) -> None:
        self.totals = totals if totals is not None else Totals()
        self._keys: list[Key] = []  # sorted
        self._order: list[DRFClient] = []  # the clients of _keys, index for index
        self._clients: dict[str, DRFClient] = {}
        self._arrivals = itertools.count()
        self._gen = self.totals.gen
        # With at most one active client there is no order to keep: allocation changes then
        # only update ``alloc`` and set this, and shares are recomputed when they matter again
        # (the role sorter of a cluster with one role never computes a share in the hot path).
        self._lazy = False

    # -- membership ----------------------------------------------------------------------

    def add(self, client: DRFClient, active: bool = True) -> DRFClient:
        if client.name in self._clients:
            raise ValueError(f"{client.name!r} is already in this sorter")
        if client._sorter is not None:
            raise ValueError(f"{client.name!r} already belongs to another sorter")
        client._sorter = self
        client.arrival = next(self._arrivals)
        self._clients[client.name] = client
        client.share = dominant_share(client.alloc, self.totals.q)
        if active:
            self.activate(client)
        return client

    def remove(self, client: DRFClient) -> None:
        self.deactivate(client)
        if self._clients.get(client.name) is client:
            del self._clients[client.name]
        client._sorter = None

    def activate(self, client: DRFClient) -> None:
        if client.active:
            return
        if self._lazy:
            self._rebuild()
        client.active = True
        if self._gen == self.totals.gen:
            client.share = dominant_share(client.alloc, self.totals.q)
            key = (client.boost, client.share / client.weight, client.arrival)
            client._key = key
            i = bisect_left(self._keys, key)
            self._keys.insert(i, key)
            self._order.insert(i, client)
        # A stale sorter rebuilds its order from every active client on the next sort().

    def deactivate(self, client: DRFClient) -> None:
        if not client.active:
            return
        client.active = False
        key = client._key
        client._key = None
        if self._gen == self.totals.gen and key is not None:
            i = bisect_left(self._keys, key)
            del self._keys[i]
            del self._order[i]

    def __contains__(self, name: object) -> bool:
        return name in self._clients

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[DRFClient]:
        return iter(self._clients.values())

    def get(self, name: str) -> DRFClient | None:
        return self._clients.get(name)

    @property
    def active_count(self) -> int:
        if self._gen != self.totals.gen:
            self.sort()
        return len(self._order)

    # -- allocation changes ----------------------------------------------------------------

    def allocated(self, client: DRFClient, q: Mapping[str, int]) -> None:
        """The client was given ``q`` more: grow its share and move it back in the order.

        Growth only raises the share, so the new share is the old one or one of the ratios of
        the resources that grew: O(len(q)), not O(len(alloc)).
        """
        alloc = client.alloc
        if len(self._order) < 2:
            for name, value in q.items():
                alloc[name] = alloc.get(name, 0) + value
            self._lazy = True
            return
        total = self.totals.q
        share = client.share
        for name, value in q.items():
            a = alloc.get(name, 0) + value
            alloc[name] = a
            t = total.get(name)
            if t:
                s = a / t
                if s > share:
                    share = s
        if self._gen != self.totals.gen:
            return  # stale: every share is recomputed on the next sort()
        if share != client.share:
            client.share = share
            if client.active:
                self._move(client)

    def unallocated(self, client: DRFClient, q: Mapping[str, int]) -> None:
        """The client gave ``q`` back: recompute its share and move it forward."""
        subtract_quantities(client.alloc, q)
        if len(self._order) < 2:
            self._lazy = True
            return
        if self._gen != self.totals.gen:
            return
        share = dominant_share(client.alloc, self.totals.q)
        if share != client.share:
            client.share = share
            if client.active:
                self._move(client)

    def set_weight(self, client: DRFClient, weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"weight of {client.name!r} must be positive, got {weight!r}")
        client.weight = float(weight)
        if self._lazy:
            self._rebuild()
        elif client.active and self._gen == self.totals.gen:
            self._move(client)

    def set_boost(self, client: DRFClient, boost: int) -> None:
        """Put a client ahead of (negative) or level with (0) the share order."""
        if client.boost == boost:
            return
        client.boost = boost
        if self._lazy:
            self._rebuild()
        elif client.active and self._gen == self.totals.gen:
            self._move(client)

    # -- reading ---------------------------------------------------------------------------

    def sort(self) -> list[DRFClient]:
        """Active clients, first to be served first.

        (A lazy sorter has at most one active client, whose place needs no share.)
        """
        if self._gen != self.totals.gen:
            self._rebuild()
        return self._order

    def key(self, client: DRFClient) -> Key:
        """The client's place in the order (active clients of a fresh sorter)."""
        if self._gen != self.totals.gen:
            self._rebuild()
        return client._key  # type: ignore[return-value]

    def share(self, client: DRFClient) -> float:
        """The client's dominant share (unweighted), fresh."""
        if self._gen != self.totals.gen or self._lazy:
            self._rebuild()
        if not client.active:
            return dominant_share(client.alloc, self.totals.q)
        return client.share

    # -- internals -------------------------------------------------------------------------

    def _move(self, client: DRFClient) -> None:
        keys = self._keys
        old = client._key
        new = (client.boost, client.share / client.weight, client.arrival)
        client._key = new
        if len(keys) == 1:  # e.g. the role sorter of a cluster with one role
            keys[0] = new
            return
        i = bisect_left(keys, old)  # type: ignore[arg-type]
        j = bisect_left(keys, new)
        if j == i or j == i + 1:
            keys[i] = new  # still between the same neighbours
            return
        order = self._order
        del keys[i]
        del order[i]
        if j > i:
            j -= 1
        keys.insert(j, new)
        order.insert(j, client)

    def _rebuild(self) -> None:
        total = self.totals.q
        ranked: list[tuple[Key, DRFClient]] = []
        for client in self._clients.values():
            client.share = dominant_share(client.alloc, total)
            if client.active:
                key = (client.boost, client.share / client.weight, client.arrival)
                client._key = key
                ranked.append((key, client))
            else:
                client._key = None
        ranked.sort(key=lambda kc: kc[0])
        self._keys = [k for k, _ in ranked]
        self._order = [c for _, c in ranked]
        self._gen = self.totals.gen
        self._lazy = False

    def check(self) -> None:
        """Assert the invariants (for tests): sorted, complete, shares fresh."""
        if self._lazy:
            self._rebuild()
        self.sort()
        assert self._keys == sorted(self._keys)
        active = [c for c in self._clients.values() if c.active]
        assert len(active) == len(self._order) == len(self._keys)
        for key, client in zip(self._keys, self._order, strict=True):
            assert client._key == key, (client, key)
            share = dominant_share(client.alloc, self.totals.q)
            assert abs(client.share - share) < 1e-12, (client, share)
            assert key == (client.boost, client.share / client.weight, client.arrival)
