"""The in-memory transport: many runtimes (simulated hosts) in one process, with the semantics of
the ZeroMQ wire — bodies serialised, senders checked, order kept, ``exited`` when a host dies —
plus partitions that a paused Clock turns into exact, replayable failures."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from lp_support import Linker, Recorder, link

import libproc
from libproc import (
    UPID,
    Clock,
    EncodeError,
    MemoryNetwork,
    Process,
    Runtime,
    handler,
    record,
    settle,
)


@record("tests.libproc.memory.Ping")
@dataclasses.dataclass
class Ping:
    n: int
    note: str = ""


class Echo(Process):
    @handler("ping")
    def ping(self, sender: UPID, body: Any) -> None:
        self.send(sender, "pong", body)


async def hosts(network: MemoryNetwork, n: int, **kw: Any) -> list[Runtime]:
    return [
        await Runtime(f"10.0.0.{i + 1}", 5050, transport=network, **kw).start() for i in range(n)
    ]


async def linker_on(network: MemoryNetwork) -> tuple[Runtime, Linker]:
    """A runtime on ``network`` with a :class:`Linker` spawned, the Clock paused (so a link
    timeout could never be what ends a link)."""
    (a,) = await hosts(network, 1)
    Clock.pause()
    linker = Linker()
    a.spawn(linker)
    return a, linker


async def test_many_runtimes_talk_like_over_zeromq() -> None:
    network = MemoryNetwork()
    rts = await hosts(network, 5)
    assert [rt.address for rt in rts] == [f"10.0.0.{i}:5050" for i in range(1, 6)]
    echoes = [rt.spawn(Echo("echo")) for rt in rts]
    client = Recorder("client")
    rts[0].spawn(client)
    body = Ping(7, "hi")
    for echo in echoes:
        await libproc.dispatch(client.pid, "send", echo, "ping", body)
    await settle()
    assert [s for s, _, _ in client.got] == echoes  # in the order sent
    pongs = client.bodies("pong")
    assert pongs[0] is body  # same host: the object itself
    assert all(p == body and p is not body for p in pongs[1:])  # other hosts: serialised


async def test_order_and_encode_errors_as_on_the_wire() -> None:
    network = MemoryNetwork()
    a, b = await hosts(network, 2)
    rec = Recorder()
    to = b.spawn(rec)
    for i in range(10_000):
        a.send(to, "n", i)
    await settle()
    assert rec.bodies() == list(range(10_000))
    with pytest.raises(EncodeError):
        a.send(to, "bad", {1, 2})
    assert a.metrics.get("libproc/messages_sent") == 10_000


async def test_auto_addresses_and_duplicates() -> None:
    network = MemoryNetwork()
    x = await Runtime(transport=network).start()
    y = await Runtime(transport=network).start()
    assert x.address != y.address
    with pytest.raises(OSError, match="in use"):
        await Runtime(x.host, x.port, transport=network).start()


async def test_two_networks_in_one_process_do_not_shadow_each_other() -> None:
    """Module-level ``dispatch`` finds runtimes by address; two networks must not both hand out
    the same one and make one runtime invisible (and skipped at shutdown)."""
    first = await Runtime(transport=MemoryNetwork()).start()
    second = await Runtime(transport=MemoryNetwork()).start()
    assert first.address != second.address
    assert first in libproc.runtimes() and second in libproc.runtimes()
    a = first.spawn(Recorder("r"))
    b = second.spawn(Recorder("r"))
    assert await libproc.dispatch(a, "bodies") == []
    assert await libproc.dispatch(b, "bodies") == []
    with pytest.raises(OSError, match="already serves"):
        await Runtime(first.host, first.port, transport=MemoryNetwork()).start()
    await second.stop()
    assert first in libproc.runtimes()


async def test_stopping_a_host_tells_linkers() -> None:
    network = MemoryNetwork()
    a, b = await hosts(network, 2)
    linker = Linker()
    a.spawn(linker)
    target = b.spawn(Echo("echo"))
    await link(linker, target)
    await settle()
    await b.stop()
    await linker.wait_exited(1)
    await settle()
    assert linker.exits == [target]


async def test_crashed_host_tells_linkers_through_the_network() -> None:
    """``stop_host`` is a crash (kill -9): the host's actors say nothing, and the peers that had
    talked to it learn from the network, at once, as from a TCP reset."""
    network = MemoryNetwork()
    a, b = await hosts(network, 2)
    linker = Linker()
    a.spawn(linker)
    target = b.spawn(Echo("echo"))
    await link(linker, target)
    await settle()
    Clock.pause()  # not a timeout: nothing needs to advance
    await network.stop_host(b)
    await settle()
    assert linker.exits == [target]
    assert a.metrics.get("libproc/peers_lost") == 1
    assert b not in libproc.runtimes()


async def test_partition_under_paused_clock() -> None:
    network = MemoryNetwork(heartbeat_timeout=3.0)
    a, b, c = await hosts(network, 3)
    Clock.pause()
    linker = Linker()
    a.spawn(linker)
    on_b = Recorder("on-b")
    on_c = Recorder("on-c")
    b_pid, c_pid = b.spawn(on_b), c.spawn(on_c)
    await link(linker, b_pid)
    await link(linker, c_pid)
    await settle()

    network.partition(a, b)
    for to in (b_pid, c_pid):
        await libproc.dispatch(linker.pid, "send", to, "during", 1)
    await settle()
    assert on_b.got == []  # dropped by the cut
    assert len(on_c.got) == 1  # a and c are not partitioned

    Clock.advance(2.999)
    await settle()
    assert linker.exits == []
    Clock.advance(0.001)  # heartbeat_timeout after the cut: both sides give up
    await settle()
    assert linker.exits == [b_pid]

    network.heal(a, b)
    await libproc.dispatch(linker.pid, "send", b_pid, "after", 2)
    await settle()
    assert on_b.bodies() == [2]


async def test_healed_before_timeout_nothing_is_lost_but_the_cut_messages() -> None:
    network = MemoryNetwork(heartbeat_timeout=3.0)
    a, b = await hosts(network, 2)
    Clock.pause()
    linker = Linker()
    a.spawn(linker)
    rec = Recorder()
    to = b.spawn(rec)
    await link(linker, to)
    await settle()
    network.partition(a, [b])
    a.send(to, "lost", 1)
    await settle()  # sends leave at the end of the loop turn: let this one hit the cut
    Clock.advance(1)
    network.heal(a, [b])
    a.send(to, "kept", 2)
    Clock.advance(10)
    await settle()
    assert linker.exits == []
    assert rec.bodies() == [2]


async def test_link_across_a_partition_times_out() -> None:
    network = MemoryNetwork(heartbeat_timeout=100)
    a, b = await hosts(network, 2, link_timeout=5)
    Clock.pause()
    network.partition(a.address, b.address)
    linker = Linker()
    a.spawn(linker)
    to = b.spawn(Echo("echo"))
    await link(linker, to)
    Clock.advance(4.999)
    await settle()
    assert linker.exits == []
    Clock.advance(0.001)
    await settle()
    assert linker.exits == [to]


async def test_a_link_to_nowhere_on_the_network_reports_exited_at_once() -> None:
    """No runtime at the address: as a refused ZeroMQ connection, that is the end of every
    actor there, reported at once (no Clock time passes), and what was sent there is dropped
    and counted. A runtime that comes up there later is a new peer, reached afresh."""
    network = MemoryNetwork()
    a, linker = await linker_on(network)
    ghost = UPID("ghost", "10.9.9.9", 1)  # (nothing runs at that address)
    for i in range(3):
        a.send(ghost, "early", i)
    await link(linker, ghost)
    await settle()
    assert linker.exits == [ghost]
    assert a.metrics.get("libproc/link_timeouts") == 0
    assert a.metrics.get("libproc/peers_lost") == 1
    assert a.metrics.get("libproc/messages_dropped/peer_down") == 4  # the 3 and the link
    assert a.metrics.get("libproc/send_blocked") == 0  # (refused, not back-pressure)

    later = await Runtime("10.9.9.9", 1, transport=network).start()
    rec = Recorder("ghost")
    later.spawn(rec)
    await link(linker, ghost)
    a.send(ghost, "late", 1)
    await settle()
    assert rec.got == [(a.anonymous, "late", 1)]
    await later.stop()
    await settle()
    assert linker.exits == [ghost, ghost]
    assert a.metrics.get("libproc/peers_left") == 1


async def test_a_refusal_not_taken_in_yet_is_not_pinned_on_a_link_made_since() -> None:
    """The news of a refused frame waits for the next loop turn; a runtime that comes up at
    that address before it, and is linked to, must not have that news pinned on the link."""
    network = MemoryNetwork()
    a, linker = await linker_on(network)
    ghost = UPID("ghost", "10.9.9.9", 1)  # (nothing runs at that address)
    a.send(ghost, "early", 1)
    for _ in range(100):
        await asyncio.sleep(0)
        if ghost.address in a.transport._news:
            break
    assert ghost.address in a.transport._news  # refused, not taken in yet
    later = await Runtime("10.9.9.9", 1, transport=network).start()  # (without yielding)
    rec = Recorder("ghost")
    later.spawn(rec)
    await link(linker, ghost)
    a.send(ghost, "late", 2)
    await settle()
    assert linker.exits == []
    assert rec.got == [(a.anonymous, "late", 2)]
    assert a.metrics.get("libproc/messages_dropped/peer_down") == 1  # early
    await later.stop()
    await settle()
    assert linker.exits == [ghost]


async def test_forged_sender_is_dropped_on_memory_too() -> None:
    network = MemoryNetwork()
    a, b = await hosts(network, 2)
    rec = Recorder()
    to = b.spawn(rec)
    a.send(to, "x", 1, sender=UPID("liar", "10.0.0.99", 1))
    a.send(to, "x", 2)
    await settle()
    assert rec.bodies() == [2]
    assert b.metrics.get("libproc/messages_dropped/forged_sender") == 1


async def test_back_pressure_holds_frames_until_drained() -> None:
    """A receiver over ``mailbox_hwm`` stops reading; frames wait in the network, none lost."""
    network = MemoryNetwork()
    a = await Runtime("10.0.0.1", 1, transport=network).start()
    b = await Runtime("10.0.0.2", 1, transport=network, mailbox_hwm=10).start()
    rec = Recorder()
    to = b.spawn(rec)
    for i in range(1000):
        a.send(to, "n", i)
        if i % 50 == 49:
            await settle()
    await settle()
    assert rec.bodies() == list(range(1000))
    assert b.metrics.get("libproc/reading_paused") >= 1
