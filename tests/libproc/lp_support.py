"""Actors and helpers shared by the libproc tests.

Tests wait for things by awaiting futures that actors resolve (never by sleeping), so the helpers
here are actors that record what happens to them and let a test await "n messages arrived" or
"exited fired".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import libproc
from libproc import UPID, Process

# Generous bound on awaits that should finish at once: a hang fails with a clear message instead
# of running into pytest's own timeout. Never an assertion about speed.
PATIENCE = 30.0
# What a raw ZeroMQ peer (raw_dealer) claims to be: its ROUTING_ID. Nothing listens there.
PEER = "127.0.0.1:1"


class Recorder(Process):
    """Records every message it gets (through ``unhandled``, so any name is accepted)."""

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.got: list[tuple[UPID, str, Any]] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def unhandled(self, sender: UPID, name: str, body: Any) -> None:
        self.got.append((sender, name, body))
        for done, fut in self._waiters:
            if not fut.done() and done():
                fut.set_result(None)

    def bodies(self, name: str | None = None) -> list[Any]:
        return [b for _, n, b in self.got if name is None or n == name]

    async def wait_for(
        self, done: Callable[[], bool], what: str, timeout: float = PATIENCE
    ) -> None:
        """Wait until ``done()`` holds, checked as each message arrives."""
        if done():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((done, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise AssertionError(f"{self.pid} never got {what}; got {self.got[-5:]}") from None

    async def wait_count(self, n: int, timeout: float = PATIENCE) -> None:
        """Wait until at least ``n`` messages have arrived."""
        await self.wait_for(lambda: len(self.got) >= n, f"{n} messages", timeout)

    async def wait_message(self, name: str, body: Any, timeout: float = PATIENCE) -> None:
        """Wait until a message ``name`` with ``body`` has arrived."""
        await self.wait_for(lambda: (name, body) in ((n, b) for _, n, b in self.got), name, timeout)


class Linker(Recorder):
    """Links on request and records every ``exited`` it is told of (and, as a Recorder, every
    message, so it can also play ping-pong)."""

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.exits: list[UPID] = []
        self._changed = asyncio.Event()

    def exited(self, pid: UPID) -> None:
        self.exits.append(pid)
        self._changed.set()

    async def wait_exited(self, n: int = 1, timeout: float = PATIENCE) -> None:
        """Wait until ``exited`` has fired at least ``n`` times."""

        async def until() -> None:
            while len(self.exits) < n:
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.pid} saw exited {self.exits}, wanted {n}") from None


async def link(linker: Process, target: UPID | str) -> None:
    """Link from inside the linker's own context, the way an actor would."""
    await libproc.dispatch(linker.pid, "link", target)


async def within(awaitable: Any, what: str, timeout: float = PATIENCE) -> Any:
    """Await with a generous bound so a hang fails with a message naming what never happened."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def raw_dealer(address: str, claim: str = PEER) -> Any:
    """A raw ZeroMQ DEALER connected to the runtime at ``address``, claiming to be ``claim``
    (``PEER`` unless told): for tests that hand a runtime frames no libproc peer would send.
    Close it with ``close(linger=0)``."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, claim.encode())
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{address}")
    return sock


def silent_listener() -> Any:
    """A plain TCP socket listening on loopback that accepts connections (the kernel does, from
    its backlog) and never says a word: a ZeroMQ peer's connection to it is made, its ZMTP
    handshake never completes. A host that is there but does not answer. Close it after use."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s
