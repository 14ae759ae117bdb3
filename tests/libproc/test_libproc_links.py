"""Links across runtimes: ``exited`` fires exactly once, whether the actor ends, never existed,
or its whole host dies — including a real ``kill -9`` of another OS process. A link to an
address where nothing listens (the connection is refused) is reported at once; one to a host
that accepts the connection but never answers gives up after ``link_timeout`` of Clock time."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from typing import Any

from lp_support import Linker, Recorder, link, silent_listener, within

import libproc
from libproc import UPID, Clock, Process, Runtime, handler, settle
from tests.ports import quiet_port
from tests.waiting import eventually, runtime_at


class Echo(Process):
    @handler("ping")
    def ping(self, sender: UPID, body: Any) -> None:
        self.send(sender, "pong", body)


_tags = itertools.count()


async def round_trip(rec: Recorder, to: UPID) -> None:
    """Ping ``to`` from ``rec`` and wait for the pong. Frames between two runtimes stay in
    order, so once the pong is back, the link handshake sent before it has completed too."""
    tag = next(_tags)
    await libproc.dispatch(rec.pid, "send", to, "ping", tag)
    await rec.wait_message("pong", tag)


async def test_remote_exit_fires_once(rt: Runtime, rt2: Runtime) -> None:
    linker = Linker()
    rt.spawn(linker)
    target = rt2.spawn(Echo())
    await link(linker, target)
    await round_trip(linker, target)  # linked and acknowledged
    libproc.terminate(target)
    await linker.wait_exited(1)
    # The whole host going away afterwards (it says goodbye) must not report the same actor
    # again.
    noticed = asyncio.Event()
    peer_ended = rt._peer_ended

    def spy(address: str, *args: Any, **kwargs: Any) -> None:
        peer_ended(address, *args, **kwargs)
        noticed.set()

    rt._peer_ended = spy  # type: ignore[method-assign]
    await rt2.stop()
    await within(noticed.wait(), "rt to notice that rt2 is gone")
    await settle()
    assert linker.exits == [target]


async def test_acknowledged_link_does_not_time_out(rt: Runtime, rt2: Runtime) -> None:
    Clock.pause()
    linker = Linker()
    rt.spawn(linker)
    target = rt2.spawn(Echo())
    await link(linker, target)
    await round_trip(linker, target)
    Clock.advance(rt.link_timeout * 10)
    await settle()
    assert linker.exits == []
    assert rt.metrics.get("libproc/link_timeouts") == 0


async def test_link_to_missing_actor_in_live_remote_runtime(rt: Runtime, rt2: Runtime) -> None:
    Clock.pause()  # the answer must come from rt2, not from a link timeout
    linker = Linker()
    rt.spawn(linker)
    ghost = UPID("ghost", rt2.host, rt2.port)
    await link(linker, ghost)
    await linker.wait_exited(1)
    assert linker.exits == [ghost]
    assert rt.metrics.get("libproc/link_timeouts") == 0


async def test_link_to_missing_actor_in_same_runtime(rt: Runtime) -> None:
    linker = Linker()
    rt.spawn(linker)
    ghost = UPID("ghost", rt.host, rt.port)
    await link(linker, ghost)
    await linker.wait_exited(1)
    assert linker.exits == [ghost]


async def test_link_to_a_host_that_never_answers_times_out(rt: Runtime) -> None:
    """The connection is made (the kernel accepts it) but nothing answers, as from a hung
    host: the link gives up after ``link_timeout`` of Clock time, not before."""
    Clock.pause()
    with silent_listener() as listener:
        linker = Linker()
        rt.spawn(linker)
        host, port = listener.getsockname()
        silent = UPID("master", host, port)
        await link(linker, silent)
        await eventually(lambda: rt.transport.ever_connected(silent.address), "a connection")
        await settle()
        Clock.advance(rt.link_timeout - 0.001)
        await settle()
        assert linker.exits == []
        Clock.advance(0.001)
        await linker.wait_exited(1)
        assert linker.exits == [silent]
        assert rt.metrics.get("libproc/link_timeouts") == 1
        assert rt.metrics.get("libproc/peers_lost") == 0


async def test_link_timeout_is_configurable(rt: Runtime) -> None:
    Clock.pause()
    runtime = await Runtime(link_timeout=30).start()
    with silent_listener() as listener:
        linker = Linker()
        runtime.spawn(linker)
        host, port = listener.getsockname()
        await link(linker, UPID("x", host, port))
        Clock.advance(29.999)
        await settle()
        assert linker.exits == []
        Clock.advance(0.001)
        await linker.wait_exited(1)
    await runtime.stop()


# Far beyond how long the tests below wait for exited: only a refused connection can end those
# waits in time, never a link timeout.
NEVER = 60.0
PROMPTLY = 10.0


async def test_a_link_to_a_closed_port_reports_exited_at_once() -> None:
    """Nothing listens at the address (a runtime that never came up, or went before we first
    reached it): the connection is refused, and that is the end of every actor there, reported
    at once as libprocess does, not after ``link_timeout``. Nothing keeps reconnecting."""
    async with Runtime(link_timeout=NEVER) as rt:
        linker = Linker()
        rt.spawn(linker)
        nowhere = UPID("master", "127.0.0.1", quiet_port())
        await link(linker, nowhere)
        await linker.wait_exited(1, timeout=PROMPTLY)
        await settle()
        assert linker.exits == [nowhere]
        assert rt.metrics.get("libproc/link_timeouts") == 0
        assert rt.metrics.get("libproc/peers_lost") == 1
        assert nowhere.address not in rt._peers
        assert nowhere.address not in rt.transport._peers


class EchoRecorder(Recorder):
    """Records every message and answers each ``ping`` with a ``pong``."""

    def unhandled(self, sender: UPID, name: str, body: Any) -> None:
        super().unhandled(sender, name, body)
        if name == "ping":
            self.send(sender, "pong", body)


async def test_messages_to_a_closed_port_are_dropped_and_a_runtime_there_later_is_new() -> None:
    """What was sent to an address that refused us is dropped and counted, not kept for a
    reconnection: a runtime that comes up there later never gets it. That runtime is a new peer:
    linked to afresh, it answers, and its end is reported too."""
    async with Runtime(link_timeout=NEVER) as rt:
        linker = Linker()
        rt.spawn(linker)
        port = quiet_port()
        there = UPID("echo", "127.0.0.1", port)

        def send_early(proc: Linker) -> None:
            for i in range(5):
                proc.send(there, "early", i)
            proc.link(there)

        await libproc.dispatch(linker.pid, send_early)
        first = rt.transport._peers.get(there.address)
        await linker.wait_exited(1, timeout=PROMPTLY)
        await settle()
        assert rt.metrics.get("libproc/messages_dropped/peer_down") == 6  # the 5 and the link
        assert first is None or first.dealer.closed  # (nothing left to reconnect with)

        later = await runtime_at(port)
        try:
            echo = EchoRecorder("echo")
            assert later.spawn(echo) == there
            await link(linker, there)
            await round_trip(linker, there)
            assert [name for _, name, _ in echo.got] == ["ping"]
            assert later.metrics.get("libproc/messages_dropped") == 0
            await later.stop()
            await linker.wait_exited(2, timeout=PROMPTLY)
        finally:
            await later.stop()
        await settle()
        assert linker.exits == [there, there]
        assert rt.metrics.get("libproc/peers_lost") == 1
        assert rt.metrics.get("libproc/peers_left") == 1
        assert rt.metrics.get("libproc/messages_dropped/peer_down") == 6


async def test_a_refusal_not_taken_in_yet_is_not_pinned_on_a_link_made_since() -> None:
    """A connection to an address is refused, and before our loop gets round to reading that
    (busy elsewhere), a runtime comes up there and we link to it: the refusal is the end of
    what we sent before, not of the new link, which must stand. (The monitor's reads are held
    back by hand to make the loop that slow.)"""
    async with Runtime(link_timeout=NEVER) as rt:
        linker = Linker()
        rt.spawn(linker)
        port = quiet_port()
        there = UPID("echo", "127.0.0.1", port)
        transport = rt.transport
        on_monitor = transport._on_monitor
        held_back: list[Any] = []

        def slow_loop(peer: Any, drain: bool = False) -> None:
            if drain and (held_back[0] is peer if held_back else peer.address == there.address):
                held_back[:1] = [peer]
                return  # (the loop has not got round to it yet)
            on_monitor(peer, drain)

        transport._on_monitor = slow_loop  # type: ignore[method-assign]
        later = None
        try:
            rt.send(there, "early", 1)
            await eventually(lambda: held_back and held_back[0].monitor.poll(0), "a refusal")
            later = await runtime_at(port)
            echo = EchoRecorder("echo")
            later.spawn(echo)
            await link(linker, there)
            transport.__dict__.pop("_on_monitor")
            on_monitor(held_back[0], True)  # the loop gets round to the refusal
            await round_trip(linker, there)
            await settle()
            assert linker.exits == []
            assert [name for _, name, _ in echo.got] == ["ping"]
            assert rt.metrics.get("libproc/messages_dropped/peer_down") == 1  # early
            await later.stop()
            await linker.wait_exited(1, timeout=PROMPTLY)
            assert linker.exits == [there]
        finally:
            transport.__dict__.pop("_on_monitor", None)
            if later is not None:
                await later.stop()


async def test_unlinked_remote_exit_is_not_reported(rt: Runtime, rt2: Runtime) -> None:
    linker = Linker()
    rt.spawn(linker)
    target = rt2.spawn(Echo())
    await link(linker, target)
    await round_trip(linker, target)
    await libproc.dispatch(linker.pid, "unlink", target)
    await round_trip(linker, target)  # the unlink has reached rt2
    libproc.terminate(target)
    await libproc.wait(target)
    sentinel = rt2.spawn(Echo())
    await round_trip(linker, sentinel)  # anything rt2 sent after the exit has arrived
    assert linker.exits == []


async def test_kill_9_of_another_os_process_fires_exited(rt: Runtime, child_runtime: Any) -> None:
    """The remote host is a separate OS process, killed with SIGKILL by its pid: it says
    nothing, and the linker still hears of it (from the transport), exactly once."""
    child = await child_runtime("echo")
    linker = Linker()
    rt.spawn(linker)
    await link(linker, child.pid)
    await round_trip(linker, child.pid)  # connected both ways, link acknowledged
    other = child.pid.with_id("other")
    await link(linker, other)  # links to a missing actor are answered too...
    await linker.wait_exited(1)
    assert linker.exits == [other]
    child.kill()
    await within(linker.wait_exited(2), "exited after kill -9 of the remote process")
    await within(child.process.wait(), "the child to be reaped")
    await settle()
    assert linker.exits == [other, child.pid]
    assert rt.metrics.get("libproc/peers_lost") >= 1


async def test_a_host_s_end_is_reported_even_if_the_read_before_it_fails(
    rt: Runtime, child_runtime: Any
) -> None:
    """Before it reports a peer's end, the transport reads what the peer sent last; if that read
    fails, the end must still be reported (its event is consumed: it would never come again)."""
    child = await child_runtime("echo")
    linker = Linker()
    rt.spawn(linker)
    await link(linker, child.pid)
    await round_trip(linker, child.pid)
    transport = rt.transport
    read = transport._on_readable
    failed: list[str] = []

    def failing_read() -> None:
        if not failed:
            failed.append("once")
            raise RuntimeError("injected read failure")
        read()

    transport._on_readable = failing_read
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: failed.append(str(ctx.get("exception"))))
    try:
        child.kill()
        await within(linker.wait_exited(1), "exited although the read before it failed")
    finally:
        loop.set_exception_handler(handler)
        transport._on_readable = read
    await within(child.process.wait(), "the child to be reaped")
    assert linker.exits == [child.pid]
    assert failed[0] == "once"


async def test_every_linker_hears_of_a_killed_host(rt: Runtime, child_runtime: Any) -> None:
    child = await child_runtime("echo")
    linkers = [Linker() for _ in range(3)]
    for linker in linkers:
        rt.spawn(linker)
        await link(linker, child.pid)
        await round_trip(linker, child.pid)
    child.kill()
    for linker in linkers:
        await within(linker.wait_exited(1), f"{linker.pid} to hear of the kill")
    await settle()
    assert [linker.exits for linker in linkers] == [[child.pid]] * 3


async def test_hung_host_is_detected_by_heartbeats(child_runtime: Any) -> None:
    """A host that stops answering (SIGSTOP: its sockets stay open, nothing resets them) is
    declared down by ZeroMQ heartbeats after ``heartbeat_timeout``."""
    runtime = await Runtime(heartbeat_interval=0.2, heartbeat_timeout=1.0).start()
    child = await child_runtime("echo")
    linker = Linker()
    runtime.spawn(linker)
    await link(linker, child.pid)
    await round_trip(linker, child.pid)
    os.kill(child.process.pid, signal.SIGSTOP)
    await within(linker.wait_exited(1), "exited for a hung host")
    assert linker.exits == [child.pid]
