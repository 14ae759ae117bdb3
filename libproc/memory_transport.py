"""An in-memory network: many runtimes (simulated hosts) in one OS process.

Frames are the same bytes the ZeroMQ transport carries and go through the same decoding and
validation, so an actor cannot tell the difference; only the wire is a ``call_soon``. That lets
mesa run a whole cluster — a master, thousands of agents, frameworks — in one process under a
paused :class:`~libproc.Clock`, with failures that replay exactly:

* ``await network.stop_host(host)`` is a crash (kill -9): the host's actors end without a word
  leaving it, and every peer that had talked to it learns at once (as a TCP reset tells a ZeroMQ
  peer), so their linkers get ``exited``. A runtime's own ``stop()`` is the graceful version:
  its actors' linkers are told first.
* ``network.partition(a, b)`` silently drops frames both ways; after ``heartbeat_timeout`` of
  clock time each side declares the other down, as ZMTP heartbeats would. ``heal`` lifts it.
* A frame for an address where no runtime is (it never came up, or it has stopped) is refused,
  as a ZeroMQ connection there is: the sender's runtime hears of that peer's end at once, and
  keeps what it sent in its queue, to be dropped and counted with it. As over ZeroMQ, the first
  refusal at an address since its runtime's goodbye was read is reported as coming after that
  goodbye (no peer lost: the runtime we knew there said it was going).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable

from libproc.clock import Clock, Timer
from libproc.transport import TransportEvents

__all__ = ["MemoryNetwork", "MemoryTransport"]

# Addresses a transport remembers as having said goodbye (see MemoryTransport.forget), bounded as
# ZmqTransport's are: forgetting one only makes a later refusal there count as a peer lost.
_AFTER_GOODBYE_MAX = 10_000


class MemoryNetwork:
    """The simulated wire between :class:`MemoryTransport`\\ s."""

    def __init__(self, heartbeat_timeout: float = 3.0) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self._hosts: dict[str, MemoryTransport] = {}
        self._cuts: set[frozenset[str]] = set()
        self._cut_timers: dict[frozenset[str], Timer] = {}
        self._talked: dict[str, set[str]] = {}  # address -> peers that have sent to it
        self._next_port = 1
        self.in_flight = 0

    # ------------------------------------------------------------------ topology

    def _register(self, transport: MemoryTransport, host: str, port: int) -> str:
        if port == 0:
            # Skip addresses another runtime in this process has (say, on another network):
            # runtimes are found by address, so a duplicate would shadow one of them.
            from libproc.runtime import _runtimes

            while (
                f"{host}:{self._next_port}" in self._hosts
                or f"{host}:{self._next_port}" in _runtimes
            ):
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        address = f"{host}:{port}"
        if address in self._hosts:
            raise OSError(f"address {address} is already in use on this memory network")
        self._hosts[address] = transport
        return address

    def _unregister(self, address: str) -> None:
        self._hosts.pop(address, None)
        # Everyone who talked with the dead host hears of it at once, like a TCP reset.
        peers = self._talked.pop(address, set())
        for other, talked in self._talked.items():
            if address in talked:
                peers.add(other)
                talked.discard(address)
        for other in peers:
            transport = self._hosts.get(other)
            if transport is not None:
                transport._peer_down_soon(address)

    @staticmethod
    def _addr(x: object) -> str:
        return x if isinstance(x, str) else x.address  # type: ignore[attr-defined]

    def partition(self, a: object, b: object | Iterable[object]) -> None:
        """Cut every link between ``a`` and ``b`` (a runtime, an address, or a list of them)."""
        others = b if isinstance(b, list | tuple | set) else [b]
        for other in others:
            cut = frozenset((self._addr(a), self._addr(other)))
            if cut in self._cuts:
                continue
            self._cuts.add(cut)
            self._cut_timers[cut] = Clock.schedule(self.heartbeat_timeout, self._expire, cut)

    def heal(self, a: object, b: object | Iterable[object]) -> None:
        others = b if isinstance(b, list | tuple | set) else [b]
        for other in others:
            cut = frozenset((self._addr(a), self._addr(other)))
            self._cuts.discard(cut)
            timer = self._cut_timers.pop(cut, None)
            if timer is not None:
                timer.cancel()

    async def stop_host(self, host: object) -> None:
        """Crash a simulated host (a runtime or its address), as ``kill -9`` would.

        Its transport goes dead first, so nothing its actors say while they are torn down leaves
        it; the peers that had talked to it learn it is gone at once. Returns once the host's
        runtime has stopped.
        """
        transport = self._hosts.get(self._addr(host))
        if transport is None:
            return
        await transport.stop()
        runtime = transport._events
        stop = getattr(runtime, "stop", None)
        if stop is not None:
            await stop()

    def heal_all(self) -> None:
        for cut in list(self._cuts):
            x, y = tuple(cut)
            self.heal(x, y)

    def _expire(self, cut: frozenset[str]) -> None:
        """Heartbeats have failed across a cut that is still there: both sides give up."""
        self._cut_timers.pop(cut, None)
        if cut not in self._cuts:
            return
        x, y = tuple(cut)
        for me, other in ((x, y), (y, x)):
            transport = self._hosts.get(me)
            if transport is not None:
                transport._peer_down_soon(other)

    # ------------------------------------------------------------------ the wire

    def _carry(self, source: str, address: str, frame: bytes) -> bool:
        """Carry ``frame``; False when nobody is at ``address`` (a refused connection)."""
        dest = self._hosts.get(address)
        if dest is None:
            return False
        self._talked.setdefault(address, set()).add(source)
        if frozenset((source, address)) in self._cuts:
            return True  # (lost in the cut, as in a network that has gone silent)
        self.in_flight += 1
        dest._loop.call_soon(self._arrive, dest, source, frame)
        return True

    def _arrive(self, dest: MemoryTransport, source: str, frame: bytes) -> None:
        self.in_flight -= 1
        if dest._stopped:
            return
        if dest._forgotten:
            dest._forgotten.discard(source)  # a peer heard from again: its end is news again
        if not dest._reading:
            dest._held.append((source, frame))
            return
        events = dest._events
        events._read_begin()  # type: ignore[union-attr]
        try:
            events._on_frame(source, frame)  # type: ignore[union-attr]
        finally:
            events._read_end()  # type: ignore[union-attr]


class MemoryTransport:
    """A runtime's end of a :class:`MemoryNetwork`."""

    # Frames, and the news of a host's end, are carried in the order they were made
    # (call_soon): a clean stop has nothing to wait for.
    linger = 0.0

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network
        self._events: TransportEvents | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._address = ""
        self._reading = True
        self._stopped = False
        # Frames that came while reading was paused, in order: (peer, frame) for a frame, and
        # (peer, after_goodbye) for the news of a peer's end, which waits behind what it sent
        # (as ZmqTransport's does).
        self._held: collections.deque[tuple[str, bytes | bool]] = collections.deque()
        # Peers forgotten (ended, or said goodbye) since we last sent to or heard from them:
        # the network's later news of their end is not news (as ZeroMQ's forget drops the
        # connection's events).
        self._forgotten: set[str] = set()
        # Peers whose end the network has told us of, not yet taken in (the next loop turn
        # does, or refresh): one piece of news per peer, as one ZeroMQ connection's end is;
        # the value says whether it is a refusal after the peer's goodbye (see send).
        self._news: dict[str, bool] = {}
        # Addresses that said goodbye (forgotten with flush) and were not sent to since: a
        # frame refused there is, as ZmqTransport's DEALER opened after a goodbye and refused
        # before any connection, no peer lost (Runtime._on_peer_down's after_goodbye).
        self._after_goodbye: set[str] = set()

    def pending(self) -> int:
        return self.network.in_flight + len(self._held)

    async def start(self, events: TransportEvents, host: str, port: int) -> str:
        self._events = events
        self._loop = asyncio.get_running_loop()
        self._address = self.network._register(self, host, port)
        return self._address

    def send(self, address: str, frame: bytes) -> bool:
        if self._stopped:
            return True
        if self._forgotten:
            self._forgotten.discard(address)
        # Only the first send since the goodbye is "after" it, as only the first DEALER opened
        # since is over ZeroMQ: once that one's end is reported, a later refusal is news again.
        after_goodbye = address in self._after_goodbye
        if after_goodbye:
            self._after_goodbye.discard(address)
        if self.network._carry(self._address, address, frame):
            return True
        # Nobody there: refused, as a ZeroMQ connection would be. The frame stays with the
        # runtime (dropped and counted with the peer's end, reported next, in order).
        self._peer_down_soon(address, after_goodbye)
        return False

    def connecting(self, address: str) -> bool:
        """Whether nobody is at ``address``: the one reason this transport refuses a frame
        (it has no back-pressure of its own)."""
        return address not in self.network._hosts

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if self._reading:
            return
        self._reading = True
        held = self._held
        events = self._events
        events._read_begin()  # type: ignore[union-attr]
        try:
            while held and self._reading:
                source, frame = held.popleft()
                if isinstance(frame, bool):  # (the news of an end, see _held)
                    self._peer_down(source, frame)
                else:
                    events._on_frame(source, frame)  # type: ignore[union-attr]
        finally:
            events._read_end()  # type: ignore[union-attr]

    def ever_connected(self, address: str) -> bool:
        return address in self.network._hosts

    def refresh(self, address: str) -> None:
        """Take in news of ``address``'s end that waits for the next loop turn, now."""
        self._take_news(address)

    def forget(self, address: str, flush: bool = False) -> None:
        """Report nothing more of ``address`` until we send to it or hear from it again.
        ``flush`` (the answer to its goodbye was just sent): remember that it said goodbye, so
        that a refusal there before anything else is sent is not taken for a peer lost."""
        self._forgotten.add(address)
        if flush:
            if len(self._after_goodbye) >= _AFTER_GOODBYE_MAX:
                self._after_goodbye.clear()
            self._after_goodbye.add(address)

    def _peer_down_soon(self, address: str, after_goodbye: bool = False) -> None:
        """Take in the news of ``address``'s end on the next loop turn. News already waiting
        there stands for this end too (one per peer); a refusal after the goodbye makes it one
        (what waited can only be the network's news of the runtime that said goodbye, not news
        until this send made the address news again)."""
        if self._stopped:
            return
        if address in self._news:
            self._news[address] = self._news[address] or after_goodbye
            return
        self._news[address] = after_goodbye
        self._loop.call_soon(self._take_news, address)

    def _take_news(self, address: str) -> None:
        after_goodbye = self._news.pop(address, None)
        if after_goodbye is not None:
            self._peer_down(address, after_goodbye)

    def _peer_down(self, address: str, after_goodbye: bool = False) -> None:
        if not self._reading and not self._stopped:
            self._held.append((address, after_goodbye))
        elif address in self._forgotten:
            self._forgotten.discard(address)
        elif not self._stopped:
            self._events._on_peer_down(address, after_goodbye)  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.network._unregister(self._address)
