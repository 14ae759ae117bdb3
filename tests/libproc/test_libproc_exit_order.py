"""A linked peer's messages come before the news of its end.

libprocess users rely on it: an executor sends its last ``TASK_FINISHED`` and exits, and its agent
must see that update before ``exited`` (or it reports the task failed). Over ZeroMQ the peer's
messages come on our ROUTER while its end is seen on another socket (the monitor of our DEALER to
it), so the transport alone cannot order the two: a runtime that stops cleanly says goodbye as its
last frame to each peer, and its linkers report its end when they read it. These tests make peers
send many frames and stop at once (in this process and in a child process), and check that the
linker is told of every message, then of the end, once; and that a crash is still reported once,
a peer restarted at the same address can be linked again, bad goodbyes are dropped, and a stop
whose queue never drains is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack
import pytest
import zmq
from lp_support import PEER, raw_dealer, silent_listener, within

import libproc
from libproc import UPID, Clock, MemoryNetwork, Process, Runtime, ZmqOptions, handler
from libproc.wire import MAGIC
from libproc.zmq_transport import ZmqTransport
from tests.ports import port_free, quiet_ports
from tests.waiting import eventually, runtime_at


class Tally(Process):
    """Logs the bodies of ``n`` messages and each ``exited``, in one list, in the order it is
    given them; ``ended`` is set on the first ``exited``. With a ``gate``, the first ``n`` is
    held until the gate opens (so the mailbox fills and the runtime stops reading)."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.ended = asyncio.Event()
        self.ponged = asyncio.Event()
        self.gate = gate

    @handler("n")
    async def on_n(self, sender: UPID, body: int | list[Any]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.seen.append(body[0] if isinstance(body, list) else body)  # ([n, padding])

    def exits(self) -> list[Any]:
        return [x for x in self.seen if isinstance(x, tuple)]

    @handler("pong")
    def on_pong(self, sender: UPID, body: Any) -> None:
        self.ponged.set()

    def exited(self, pid: UPID) -> None:
        self.seen.append(("exited", pid))
        self.ended.set()


class Echo(Process):
    @handler("ping")
    def ping(self, sender: UPID, body: Any) -> None:
        self.send(sender, "pong", body)


# A max_frame_size for senders whose batches cannot hold two of the tests' messages (34-40 bytes
# each; a batch holds max_frame_size - 16), so that every message travels in a frame of its own
# however many are sent in one loop turn, and that still takes libproc's own messages (a goodbye
# is 62 bytes, its answer 67, in a frame 4 bytes longer).
ONE_PER_FRAME = 80


async def ping(tally: Tally, target: UPID) -> None:
    tally.ponged.clear()
    await libproc.dispatch(tally.pid, "send", target, "ping", None)
    await within(tally.ponged.wait(), "a pong")


async def reached(tally: Tally, target: UPID, tries: int = 5) -> None:
    """Ping ``target`` until it answers (each try waits a second for the pong).

    For a runtime that has just taken over the address of one that stopped: a frame we write
    in that moment can go into our connection to the old runtime, which its closing drops with
    no news of it (the end of that runtime was its goodbye). Delivery is at most once across
    such a restart, as in libprocess; what these tests check is that the new runtime is then
    reached, linked and not reported ended, not that this first frame survives."""
    for _ in range(tries - 1):
        tally.ponged.clear()
        await libproc.dispatch(tally.pid, "send", target, "ping", None)
        try:
            await asyncio.wait_for(tally.ponged.wait(), 1.0)
            return
        except TimeoutError:
            continue
    await ping(tally, target)


async def linked(tally: Tally, target: UPID) -> None:
    """Link ``tally`` to ``target`` and wait for a round trip, so the link has reached it. A
    round trip comes first, so that the link and the ping after it leave in frames of their
    own: what waits for a first connection leaves together, and some peers here take frames
    of 80 bytes at most."""
    await ping(tally, target)
    await libproc.dispatch(tally.pid, "link", target)
    await ping(tally, target)


async def flood_then_stop(tally: Tally, n: int, sender_rt: Runtime) -> UPID:
    """``sender_rt`` sends ``n`` messages to ``tally``, one a frame, in one burst, and stops at
    once. Returns the UPID of the sending actor (which ``tally`` is linked to)."""
    try:
        sender = sender_rt.spawn(Echo())
        await linked(tally, sender)
        for i in range(n):
            sender_rt.send(tally.pid, "n", i, sender=sender)
        await sender_rt.stop()
    finally:
        await sender_rt.stop()
    return sender


def zmq_runtime(max_frame_size: int = 16 * 1024 * 1024, **options: Any) -> Runtime:
    return Runtime(
        transport=ZmqTransport(ZmqOptions(max_frame_size=max_frame_size, **options)),
        max_frame_size=max_frame_size,
    )


async def test_every_message_of_a_burst_beyond_the_read_budget_comes_before_exited() -> None:
    """Far more frames than the 1,024 one read pass takes, then a clean stop: the end is not
    reported until every one of them has been handed over. ZeroMQ's queues are made big enough
    for the whole burst, so that all of it can be waiting in our ROUTER when the end is seen
    and none of it waits at the sender (a stop with a blocked queue is tested on its own)."""
    n = 10_000
    async with zmq_runtime(recv_hwm=100_000) as receiver_rt:
        tally = Tally()
        receiver_rt.spawn(tally)
        sender_rt = await zmq_runtime(max_frame_size=ONE_PER_FRAME, send_hwm=100_000).start()
        sender = await flood_then_stop(tally, n, sender_rt)
        await within(tally.ended.wait(), "exited")
        await libproc.settle()
        assert receiver_rt.frames_received > n  # one a frame (and the pong)
        assert tally.seen[-1] == ("exited", sender), (
            f"exited came {tally.seen.index(('exited', sender))}th"
        )
        assert tally.seen == [*range(n), ("exited", sender)]


async def test_a_stop_with_a_blocked_queue_sends_it_all_before_its_goodbye() -> None:
    """The sender stops while its queue is blocked by back-pressure: 19 MiB, far more than
    ZeroMQ's queues (kept to 10 frames each way) and the kernel's socket buffers hold. The stop
    lets the queue drain (within the linger time), then says goodbye; the old stop dropped
    what was still queued."""
    n = 300
    padding = b"x" * 65536
    small = ZmqOptions(send_hwm=10, recv_hwm=10)
    async with Runtime(transport=ZmqTransport(small)) as receiver_rt:
        for _ in range(3):
            tally = Tally()
            receiver_rt.spawn(tally)
            # A long linger: the drain takes milliseconds, and the stop waits no longer than
            # it takes, but a loaded machine must not turn the bound into the test's subject.
            patient = ZmqOptions(send_hwm=10, recv_hwm=10, linger=10.0)
            sender_rt = await Runtime(transport=ZmqTransport(patient)).start()
            try:
                sender = sender_rt.spawn(Echo())
                await linked(tally, sender)
                for i in range(n):
                    sender_rt.send(tally.pid, "n", [i, padding], sender=sender)
                await sender_rt.stop()
            finally:
                await sender_rt.stop()
            assert sender_rt.metrics.get("libproc/send_blocked") >= 1  # what this tests
            await within(tally.ended.wait(), "exited")
            await libproc.settle()
            got = [x for x in tally.seen if not isinstance(x, tuple)]
            assert got == list(range(n)), f"{n - len(got)} messages lost"
            assert tally.seen == [*range(n), ("exited", sender)]
        # Each end was the sender's goodbye, reported once (not again when it disconnected).
        await libproc.settle()
        assert receiver_rt.metrics.get("libproc/peers_left") == 3
        assert receiver_rt.metrics.get("libproc/peers_lost") == 0


async def test_a_child_process_s_last_messages_come_before_exited(
    rt: Runtime, child_runtime: Any
) -> None:
    """The classic case, between OS processes: a child sends its last messages, one a frame,
    then stops its runtime and exits at once (an executor's last status update). Its stop
    waits until we have read its goodbye, so nothing it sent is lost with the process, and we
    hear of its end when we read it."""
    n = 3000
    for round in range(5):
        child = await child_runtime("echo", str(ONE_PER_FRAME))
        tally = Tally()
        rt.spawn(tally)
        await linked(tally, child.pid)
        await libproc.dispatch(tally.pid, "send", child.pid, "flood", n)
        await within(tally.ended.wait(), "exited")
        await within(child.process.wait(), "the child to exit")
        await libproc.settle()
        got = [x for x in tally.seen if not isinstance(x, tuple)]
        assert got == list(range(n)), f"round {round}: {n - len(got)} messages lost"
        assert tally.seen[-1] == ("exited", child.pid), (
            f"round {round}: exited came {tally.seen.index(('exited', child.pid))}th of {n + 1}"
        )
    assert rt.metrics.get("libproc/peers_left") == 5
    assert rt.metrics.get("libproc/peers_lost") == 0


async def test_a_killed_child_is_reported_once_by_its_transport(
    rt: Runtime, child_runtime: Any
) -> None:
    """No goodbye from a host killed with SIGKILL (by its pid): the transport reports its end,
    once."""
    child = await child_runtime("echo")
    tally = Tally()
    rt.spawn(tally)
    await linked(tally, child.pid)
    child.kill()
    await within(tally.ended.wait(), "exited after kill -9")
    await within(child.process.wait(), "the child to be reaped")
    await libproc.settle()
    assert tally.seen == [("exited", child.pid)]
    assert rt.metrics.get("libproc/peers_lost") == 1
    assert rt.metrics.get("libproc/peers_left") == 0


async def start_outside_ephemeral_ports() -> Runtime:
    """A runtime on a free port below the kernel's ephemeral range, for a test that restarts a
    runtime at the same address. A DEALER reconnecting to a port where nothing listens any more
    can, on loopback, be given that very port as its own source port and connect to itself
    (TCP self-connect); the port is then taken and the restart waits in vain. Source ports come
    from the ephemeral range, so a port below it cannot be taken that way."""
    for port in quiet_ports():
        try:
            return await Runtime("127.0.0.1", port).start()
        except zmq.ZMQError as e:
            if e.errno != errno.EADDRINUSE:
                raise
    raise RuntimeError("no free port below the ephemeral range")


async def heard_from_then_gone(rt: Runtime, tally: Tally) -> int:
    """A runtime below the ephemeral range sends ``tally`` one message and stops; returns its
    port once ``rt`` has read its goodbye (so that a new runtime can take the address)."""
    first = await start_outside_ephemeral_ports()
    try:
        talker = first.spawn(Echo("svc"))
        first.send(tally.pid, "n", 1, sender=talker)
        await eventually(lambda: tally.seen == [1], "the talker's message")
    finally:
        await first.stop()
    await eventually(lambda: rt.metrics.get("libproc/peers_left") == 1, "the goodbye read")
    return first.port


@contextlib.asynccontextmanager
async def successor_linked(rt: Runtime, tally: Tally) -> AsyncIterator[tuple[Runtime, UPID]]:
    """After :func:`heard_from_then_gone`: a new runtime at that address, its service ``svc``
    linked by ``tally``; the runtime is stopped on the way out."""
    second = await runtime_at(await heard_from_then_gone(rt, tally))
    try:
        svc = second.spawn(Echo("svc"))
        await linked(tally, svc)
        yield second, svc
    finally:
        await second.stop()


async def test_a_peer_restarted_at_the_same_address_is_linked_afresh(rt: Runtime) -> None:
    """After a peer's goodbye, a new runtime at the same address is a new peer: it can be
    linked to, and its own end is reported too."""
    tally = Tally()
    rt.spawn(tally)
    first = await start_outside_ephemeral_ports()
    try:
        before = first.spawn(Echo("svc"))
        await linked(tally, before)
        await first.stop()
        await within(tally.ended.wait(), "the first incarnation's end")
        tally.ended.clear()
        second = await runtime_at(first.port)
        try:
            after = second.spawn(Echo("svc"))
            assert after == before
            await linked(tally, after)
            second.send(tally.pid, "n", 1, sender=after)
            await second.stop()
            await within(tally.ended.wait(), "the second incarnation's end")
        finally:
            await second.stop()
    finally:
        await first.stop()
    await libproc.settle()
    assert tally.seen == [("exited", before), 1, ("exited", after)]
    assert rt.metrics.get("libproc/peers_left") == 2
    assert rt.metrics.get("libproc/peers_lost") == 0


async def test_a_peer_that_did_not_wait_for_our_answer_and_restarted_at_once_hears_us() -> None:
    """A peer that says goodbye without waiting for our answer (none of our actors linked to
    it) can be gone before the answer leaves, and our connection to it, kept open for the
    linger time to deliver that answer, keeps trying its address. A new runtime there at once
    must still get everything we send it: that old connection, which carries our routing id,
    must not take the id over from our new one (a ROUTER hands a routing id to its latest
    connection, and what the other one brings is never read: the new runtime heard nothing
    from us until heartbeats gave up on the connection and its actors were reported exited)."""
    linger = 0.5
    async with zmq_runtime(linger=linger) as rt:
        tally = Tally()
        rt.spawn(tally)
        async with successor_linked(rt, tally) as (_, svc):
            # Round trips for as long as the old connection could come back (its linger time
            # and a reconnection interval, twice over): each is answered, and the link stands.
            loop = asyncio.get_running_loop()
            until = loop.time() + 2 * linger
            rounds = 0
            while loop.time() < until:
                tally.ponged.clear()
                await libproc.dispatch(tally.pid, "send", svc, "ping", rounds)
                either = [asyncio.ensure_future(e.wait()) for e in (tally.ponged, tally.ended)]
                try:
                    await within(
                        asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED), "pong or exited"
                    )
                finally:
                    for fut in either:
                        fut.cancel()
                assert not tally.ended.is_set(), f"{tally.seen} after {rounds} round trips"
                rounds += 1
        await libproc.settle()
        assert tally.seen == [1, ("exited", svc)]
        assert rt.metrics.get("libproc/peers_lost") == 0


async def test_a_send_in_the_read_of_a_goodbye_leaves_the_next_runtime_there_reachable() -> None:
    """We send to a peer's address in the same read as its goodbye (a handler that answers at
    once): for a moment two DEALERs of ours go to that address, the one that carries our
    answer and a new one. A new runtime at the address is then reached, and its end reported,
    like any other. The new DEALER can reach the runtime that said goodbye (it waits for our
    answer, so it is still there): that connection's end is not news, and seen late, after a
    new runtime took the address and was linked to, it was reported as the new runtime's end
    (a false exited, the link dropped with our queue, and peers_lost 1)."""
    async with zmq_runtime() as rt:
        tally = Tally()
        rt.spawn(tally)
        first = await start_outside_ephemeral_ports()
        try:
            before = first.spawn(Echo("svc"))
            await linked(tally, before)  # (so first waits for our answer)
            on_goodbye = rt._on_goodbye

            def and_send(sender: UPID) -> None:
                on_goodbye(sender)
                rt.send(before, "ping", "late")

            rt._on_goodbye = and_send  # type: ignore[method-assign]
            await first.stop()
            await within(tally.ended.wait(), "the first incarnation's end")
        finally:
            rt.__dict__.pop("_on_goodbye", None)  # (its next goodbye is not this test's)
            await first.stop()
        tally.ended.clear()
        second = await runtime_at(first.port)
        try:
            after = second.spawn(Echo("svc"))  # (the same UPID as before's)
            await reached(tally, after)
            await linked(tally, after)
            assert rt.address in second._linked_from, "the link did not reach the new runtime"
            for i in range(20):
                tally.ponged.clear()
                await libproc.dispatch(tally.pid, "send", after, "ping", i)
                await within(tally.ponged.wait(), f"pong {i}")
            assert not tally.ended.is_set(), f"{tally.seen} while the new runtime runs"
            await second.stop()  # (it waits for our answer to its goodbye: we linked to it)
            await within(tally.ended.wait(), "the second incarnation's end")
        finally:
            await second.stop()
        await libproc.settle()
        assert tally.seen == [("exited", before), ("exited", after)]
        assert rt.metrics.get("libproc/peers_left") == 2
        assert rt.metrics.get("libproc/peers_lost") == 0


async def test_a_goodbye_read_after_a_new_runtime_took_the_address() -> None:
    """We read a peer's goodbye late (reading was paused by back-pressure), when a new runtime
    already listens at its address: our answer must not leave a connection there that takes
    our routing id from the one we then open to the new runtime; we reach it, and its crash
    (no goodbye) is reported."""
    gate = asyncio.Event()
    async with Runtime(mailbox_hwm=4) as rt:
        tally = Tally(gate)
        rt.spawn(tally)
        first = await start_outside_ephemeral_ports()
        try:
            talker = first.spawn(Echo("svc"))
            for i in range(10):  # (we never send to it: no link, no DEALER of ours)
                first.send(tally.pid, "n", i, sender=talker)
            await eventually(lambda: rt.metrics.get("libproc/reading_paused") >= 1, "paused")
        finally:
            await first.stop()
        second = await runtime_at(first.port)
        try:
            gate.set()
            await eventually(lambda: rt.metrics.get("libproc/peers_left") == 1, "the goodbye")
            after = second.spawn(Echo("svc"))
            await linked(tally, after)
            for i in range(20):
                tally.ponged.clear()
                await libproc.dispatch(tally.pid, "send", after, "ping", i)
                await within(tally.ponged.wait(), f"pong {i}")
            await second.transport.stop()  # a crash: the socket goes, without a goodbye
            await within(tally.ended.wait(), "exited after the new runtime crashed")
        finally:
            gate.set()
            await second.stop()
        await libproc.settle()
        assert tally.seen == [*range(10), ("exited", after)]
        assert rt.metrics.get("libproc/peers_lost") == 1


# Far beyond how long the tests below wait for exited: only the transport can end those waits in
# time (a refused connection), never a link timeout.
NEVER = 60.0
PROMPTLY = 10.0


async def test_a_new_runtime_first_reached_after_a_goodbye_is_reported_when_it_crashes() -> None:
    """A cost of excusing the first disconnection of a DEALER opened after a goodbye: when its
    first connection is to a new runtime that took the address, not to the one that said
    goodbye, the new runtime's crash is that excused disconnection. It must still be reported:
    ZeroMQ reconnects, is refused, and that is the end, a reconnection interval later."""
    async with Runtime(link_timeout=NEVER) as rt:
        tally = Tally()
        rt.spawn(tally)
        async with successor_linked(rt, tally) as (second, svc):
            assert rt.transport._peers[svc.address].excuse == 1  # (what this tests)
            await second.transport.stop()  # a crash: the socket goes, without a goodbye
            await within(tally.ended.wait(), "exited after the new runtime crashed", PROMPTLY)
        await libproc.settle()
        assert tally.seen == [1, ("exited", svc)]
        assert rt.metrics.get("libproc/peers_lost") == 1
        assert rt.metrics.get("libproc/link_timeouts") == 0


async def test_a_link_made_in_the_read_of_a_goodbye_ends_when_that_runtime_has_gone() -> None:
    """The other cost: a DEALER opened in the read of a goodbye reaches the runtime that said
    it (which waits for our answer), so that runtime's going is the excused disconnection. A
    link made through it is reported once ZeroMQ's reconnection is refused, not left to
    ``link_timeout``. (Our answer is held back here, so that the runtime waits its whole linger
    and the new DEALER surely reaches it.)"""
    async with Runtime(link_timeout=NEVER) as rt:
        tally, other = Tally(), Tally()
        rt.spawn(tally)
        rt.spawn(other)
        first = await start_outside_ephemeral_ports()
        try:
            before = first.spawn(Echo("svc"))
            await linked(tally, before)  # (so first waits for our answer)

            def link_instead_of_answering(sender: UPID) -> None:
                rt.metrics.inc("libproc/peers_left")
                rt._peer_ended(sender.address, "peer_left", flush=True)
                other.link(before)

            rt._on_goodbye = link_instead_of_answering  # type: ignore[method-assign]
            await first.stop()
        finally:
            await first.stop()
        await within(tally.ended.wait(), "the goodbye's exited")
        await within(other.ended.wait(), "exited once first has gone", PROMPTLY)
        await libproc.settle()
        # Our link reached first after its goodbye: it answered exited, and dropped that.
        assert first.metrics.get("libproc/messages_dropped/stopped") == 1
        assert other.seen == [("exited", before)]
        assert rt.metrics.get("libproc/peers_lost") == 1
        assert rt.metrics.get("libproc/link_timeouts") == 0


async def test_a_link_after_a_goodbye_to_an_address_nobody_took_is_refused_at_once() -> None:
    """After a goodbye, with nothing at that address any more, a new link there is refused
    and reported at once: the DEALER opened after a goodbye excuses a first disconnection, not
    a connection that is never made."""
    async with Runtime(link_timeout=NEVER) as rt:
        tally = Tally()
        rt.spawn(tally)
        first = await start_outside_ephemeral_ports()
        try:
            before = first.spawn(Echo("svc"))
            await linked(tally, before)
        finally:
            await first.stop()
        await within(tally.ended.wait(), "the goodbye's exited")
        tally.ended.clear()
        assert first.address in rt.transport._after_goodbye
        await eventually(lambda: port_free(first.port), "the port let go")
        await libproc.dispatch(tally.pid, "link", before)
        await within(tally.ended.wait(), "exited for a refused link", PROMPTLY)
        await libproc.settle()
        assert tally.seen == [("exited", before), ("exited", before)]
        assert rt.metrics.get("libproc/peers_left") == 1
        assert rt.metrics.get("libproc/peers_lost") == 1
        assert rt.metrics.get("libproc/link_timeouts") == 0


async def test_a_goodbye_from_a_peer_never_linked_ends_only_that_peer(rt: Runtime) -> None:
    """A peer that only talked to us says goodbye: nothing of ours was linked to it, so no
    ``exited``; a link to another peer is untouched."""
    tally = Tally()
    rt.spawn(tally)
    async with Runtime() as other:
        elsewhere = other.spawn(Echo())
        await linked(tally, elsewhere)
        talker_rt = await Runtime().start()
        try:
            talker = talker_rt.spawn(Echo())
            talker_rt.send(tally.pid, "n", 7, sender=talker)
            tally.ponged.clear()
            await libproc.dispatch(tally.pid, "send", talker, "ping", None)  # a connection back
            await within(tally.ponged.wait(), "the talker's pong")
        finally:
            await talker_rt.stop()
        await eventually(lambda: rt.metrics.get("libproc/peers_left") == 1, "the goodbye read")
        assert talker.address not in rt._peers
        assert tally.seen == [7]
    await within(tally.ended.wait(), "exited for the linked peer")
    await libproc.settle()
    assert tally.seen == [7, ("exited", elsewhere)]


def frame(*messages: list[Any]) -> bytes:
    return MAGIC + msgpack.packb(list(messages), use_bin_type=True)


@pytest.fixture
def silent_peer(rt: Runtime) -> Iterator[tuple[zmq.Socket, str]]:
    """A raw DEALER connected to ``rt``, and the address it claims: one where connections are
    made and never answered, so that a link there is neither confirmed nor (as a refused
    connection would be) ended at once."""
    with silent_listener() as listener:
        peer = "{}:{}".format(*listener.getsockname())
        dealer = raw_dealer(rt.address, claim=peer)
        try:
            yield dealer, peer
        finally:
            dealer.close(linger=0)


async def test_garbled_goodbyes_are_counted_and_dropped(
    rt: Runtime, silent_peer: tuple[zmq.Socket, str]
) -> None:
    """A goodbye with a body, one on a connection from another address, a misspelt one and an
    answer with a body are each counted, logged and dropped, like any bad message: the links
    to the peer stand until a well-formed goodbye comes."""
    Clock.pause()  # the peer never answers the link: it must not time out meanwhile
    dealer, peer = silent_peer
    tally = Tally()
    rt.spawn(tally)
    ghost = UPID.parse(f"ghost@{peer}")
    await libproc.dispatch(tally.pid, "link", ghost)
    me = f"__anonymous__@{peer}"
    dealer.send(frame(["__anonymous__", me, "libproc/goodbye", "now"]))
    dealer.send(frame(["__anonymous__", f"__anonymous__@{PEER}", "libproc/goodbye", None]))
    dealer.send(frame(["__anonymous__", me, "libproc/goodbye!", None]))
    dealer.send(frame(["__anonymous__", me, "libproc/goodbye_read", 1]))
    dealer.send(frame([tally.pid.id, f"ghost@{peer}", "n", 1]))
    await eventually(lambda: tally.seen == [1], "the message after the bad ones")
    m = rt.metrics
    assert m.get("libproc/messages_dropped/bad_message") == 2
    assert m.get("libproc/messages_dropped/forged_sender") == 1
    assert m.get("libproc/messages_dropped/unknown_message") == 1
    assert m.get("libproc/peers_left") == 0
    dealer.send(frame(["__anonymous__", me, "libproc/goodbye", None]))
    await within(tally.ended.wait(), "exited after a well-formed goodbye")
    await libproc.settle()
    assert tally.seen == [1, ("exited", ghost)]
    assert m.get("libproc/peers_left") == 1


async def test_a_stop_whose_queue_never_drains_is_bounded() -> None:
    """The receiver reads nothing (its actor holds the first message) and ZeroMQ's queues are
    small: the sender's queue stays blocked. Its stop gives it the linger time and goes; the
    receiver still hears of the end, once, after messages in order."""
    gate = asyncio.Event()
    small = {"send_hwm": 10, "recv_hwm": 10}
    receiver_rt = await Runtime(
        transport=ZmqTransport(ZmqOptions(linger=0.2, **small)), mailbox_hwm=4
    ).start()
    sender_rt = await Runtime(transport=ZmqTransport(ZmqOptions(linger=0.2, **small))).start()
    try:
        tally = Tally(gate)
        receiver_rt.spawn(tally)
        sender = sender_rt.spawn(Echo())
        await linked(tally, sender)
        # 32 MiB: more than ZeroMQ's queues (10 frames of at most 256 KiB each way) and the
        # kernel's socket buffers hold, and less than the sender's pending_limit.
        n = 512
        padding = b"x" * 65536
        for i in range(n):
            sender_rt.send(tally.pid, "n", [i, padding], sender=sender)
        await eventually(lambda: sender_rt.metrics.get("libproc/send_blocked") >= 1, "blocked")
        await within(sender_rt.stop(), "the stop, although its queue never drains")
        gate.set()
        await within(tally.ended.wait(), "exited")
        await libproc.settle()
        got = [x for x in tally.seen if not isinstance(x, tuple)]
        assert got == list(range(len(got))) and len(got) < n
        assert tally.exits() == [("exited", sender)]
    finally:
        gate.set()
        await sender_rt.stop()
        await receiver_rt.stop()


async def test_on_a_memory_network_a_goodbye_is_the_end_reported_once() -> None:
    """The in-memory transport carries the goodbye too: a clean stop is reported once (the
    network's own news of the host's end comes after it and is not news), a crash once."""
    net = MemoryNetwork()
    async with Runtime(transport=net) as rt:
        tally = Tally()
        rt.spawn(tally)
        for crash in (False, True):
            peer_rt = await Runtime(transport=net).start()
            try:
                peer = peer_rt.spawn(Echo())
                await linked(tally, peer)
                for i in range(100):
                    peer_rt.send(tally.pid, "n", i, sender=peer)
                tally.ended.clear()
                if crash:
                    await net.stop_host(peer_rt)
                else:
                    await peer_rt.stop()
                await within(tally.ended.wait(), "exited")
            finally:
                await peer_rt.stop()
            await libproc.settle()
            assert tally.seen[-1] == ("exited", peer)
        assert len(tally.exits()) == 2
        assert rt.metrics.get("libproc/peers_left") == 1
        assert rt.metrics.get("libproc/peers_lost") == 1


async def said_goodbye(net: MemoryNetwork, tally: Tally) -> UPID:
    """A runtime on ``net`` that ``tally`` is linked to stops cleanly; returns its actor once
    ``tally`` has read its goodbye (and been told ``exited``). Nothing listens there then."""
    peer_rt = await Runtime(transport=net).start()
    try:
        peer = peer_rt.spawn(Echo("svc"))
        await linked(tally, peer)
    finally:
        await peer_rt.stop()  # (it waits for our answer to its goodbye: we linked to it)
    await within(tally.ended.wait(), "the goodbye's exited")
    tally.ended.clear()
    await libproc.settle()  # (the network's own news of its end: not news)
    return peer


async def test_on_a_memory_network_a_send_refused_after_a_goodbye_is_no_peer_lost() -> None:
    """As over ZeroMQ (a DEALER opened after a goodbye and refused before any connection): a
    send to an address whose runtime said goodbye and is gone is refused, and that is no peer
    lost, the runtime we knew there having said it was going. What was sent is still dropped
    and counted; and a link made there still hears ``exited`` (a link's refusal is a peer lost,
    as over ZeroMQ: it was made to a runtime expected to be there)."""
    net = MemoryNetwork()
    async with Runtime(transport=net) as rt:
        tally = Tally()
        rt.spawn(tally)
        gone = await said_goodbye(net, tally)
        await libproc.dispatch(tally.pid, "send", gone, "ping", "late")
        await libproc.settle()
        assert rt.metrics.get("libproc/messages_dropped/peer_down") == 1
        assert rt.metrics.get("libproc/peers_lost") == 0
        assert tally.seen == [("exited", gone)]

        linked_gone = await said_goodbye(net, tally)
        await libproc.dispatch(tally.pid, "link", linked_gone)
        await within(tally.ended.wait(), "exited for a link refused after the goodbye")
        await libproc.settle()
        assert rt.metrics.get("libproc/messages_dropped/peer_down") == 2  # (and the link)
        assert rt.metrics.get("libproc/peers_lost") == 1
        assert rt.metrics.get("libproc/peers_left") == 2
        assert tally.exits() == [("exited", gone), ("exited", linked_gone), ("exited", linked_gone)]


async def test_on_a_memory_network_a_peer_s_end_waits_while_reading_is_paused() -> None:
    """The in-memory transport holds frames while its runtime is not reading (back-pressure);
    the news of a peer's end must wait behind them too."""
    net = MemoryNetwork()
    gate = asyncio.Event()
    async with Runtime(transport=net, mailbox_hwm=4) as rt:
        tally = Tally(gate)
        rt.spawn(tally)
        told = asyncio.Event()  # the network has told rt of the peer's end
        peer_down = rt.transport._peer_down

        def spy(address: str, after_goodbye: bool = False) -> None:
            told.set()
            peer_down(address, after_goodbye)

        rt.transport._peer_down = spy  # type: ignore[method-assign]
        for crash in (False, True):
            gate.clear()
            told.clear()
            tally.seen.clear()
            tally.ended.clear()
            peer_rt = await Runtime(transport=net).start()
            try:
                peer = peer_rt.spawn(Echo())
                await linked(tally, peer)
                for i in range(50):
                    peer_rt.send(tally.pid, "n", i, sender=peer)
                    await asyncio.sleep(0)  # one a frame
                await eventually(lambda: rt.transport._held, "reading paused, frames held")
                if crash:
                    await net.stop_host(peer_rt)
                else:
                    await peer_rt.stop()
                await within(told.wait(), "the network's news of the end")
                gate.set()
                await within(tally.ended.wait(), "exited")
            finally:
                await peer_rt.stop()
            await libproc.settle()
            assert tally.seen == [*range(50), ("exited", peer)], f"crash={crash}"
