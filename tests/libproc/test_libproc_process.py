"""Process: the life of one actor — hooks, handlers, sending, links, one handler at a time.

These drive actors the way a user writes them (subclass, ``@handler``/``install``, ``spawn``) and
observe only what a user can: what handlers saw, in what order, and what ``wait``/``dispatch``
return."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from lp_support import Linker, Recorder, link, within

import libproc
from libproc import UPID, Process, Runtime, handler, settle


class Journal(Process):
    """Writes every hook and handler call into ``log``, so tests can check their order."""

    def __init__(self, id: str | None = None, async_hooks: bool = False) -> None:
        super().__init__(id)
        self.async_hooks = async_hooks
        self.journal: list[str] = []
        self.release = asyncio.Event()

    def initialize(self) -> Any:
        if not self.async_hooks:
            self.journal.append("initialize")
            return None

        async def later() -> None:
            self.journal.append("initialize:start")
            await self.release.wait()
            self.journal.append("initialize:end")

        return later()

    def finalize(self) -> Any:
        if not self.async_hooks:
            self.journal.append("finalize")
            return None

        async def later() -> None:
            self.journal.append("finalize:start")
            await asyncio.sleep(0)
            self.journal.append("finalize:end")

        return later()

    @handler("note")
    def note(self, sender: UPID, body: Any) -> None:
        self.journal.append(f"note:{body}")


async def test_sync_hooks_bracket_every_message(rt: Runtime) -> None:
    actor = Journal()
    pid = rt.spawn(actor)
    rt.send(pid, "note", 1)
    rt.send(pid, "note", 2)
    await settle()
    libproc.terminate(pid)
    await libproc.wait(pid)
    assert actor.journal == ["initialize", "note:1", "note:2", "finalize"]


async def test_async_initialize_holds_messages_until_done(rt: Runtime) -> None:
    actor = Journal(async_hooks=True)
    pid = rt.spawn(actor)
    rt.send(pid, "note", 1)
    probe = Recorder()
    probe_pid = rt.spawn(probe)
    rt.send(probe_pid, "tick")
    await probe.wait_count(1)  # the loop has turned: the note could have been handled by now
    assert actor.journal == ["initialize:start"]
    actor.release.set()
    await within(libproc.dispatch(pid, "send", probe_pid, "tock"), "the held messages")
    libproc.terminate(pid)
    await libproc.wait(pid)  # returns only once the async finalize has finished
    assert actor.journal == [
        "initialize:start",
        "initialize:end",
        "note:1",
        "finalize:start",
        "finalize:end",
    ]


async def test_initialize_runs_before_finalize_even_on_immediate_terminate(rt: Runtime) -> None:
    """``terminate`` jumps the queue, but never ahead of ``initialize``: a finalize that closes
    what initialize opened must find it opened."""
    actor = Journal()
    pid = rt.spawn(actor)
    libproc.terminate(pid)
    await libproc.wait(pid)
    assert actor.journal == ["initialize", "finalize"]


async def test_handler_decorator_install_and_inheritance(rt: Runtime) -> None:
    class Base(Process):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[str, Any]] = []

        @handler("a")
        def on_a(self, sender: UPID, body: Any) -> None:
            self.seen.append(("base-a", body))

        @handler("b")
        def on_b(self, sender: UPID, body: Any) -> None:
            self.seen.append(("base-b", body))

    class Derived(Base):
        @handler("b")
        def on_b2(self, sender: UPID, body: Any) -> None:
            self.seen.append(("derived-b", body))

        def initialize(self) -> None:
            self.install("c", lambda sender, body: self.seen.append(("installed-c", body)))

    actor = Derived()
    pid = rt.spawn(actor)
    for name in "abc":
        rt.send(pid, name, name.upper())
    await settle()
    assert actor.seen == [("base-a", "A"), ("derived-b", "B"), ("installed-c", "C")]


async def test_reserved_names_cannot_be_installed(rt: Runtime) -> None:
    actor = Process()
    rt.spawn(actor)
    with pytest.raises(ValueError, match="reserved"):
        actor.install("libproc/exited", lambda s, b: None)


async def test_send_between_actors_and_sender_is_known(rt: Runtime) -> None:
    class Pinger(Process):
        def __init__(self, target: UPID) -> None:
            super().__init__("pinger")
            self.target = target

        def initialize(self) -> None:
            self.send(self.target, "ping", {"n": 1})
            self.send(str(self.target), "ping", {"n": 2})  # a string address works too

    rec = Recorder("rec")
    rec_pid = rt.spawn(rec)
    pinger_pid = rt.spawn(Pinger(rec_pid))
    await rec.wait_count(2)
    assert [(s, n, b) for s, n, b in rec.got] == [
        (pinger_pid, "ping", {"n": 1}),
        (pinger_pid, "ping", {"n": 2}),
    ]


async def test_unspawned_actor_cannot_act() -> None:
    actor = Process()
    with pytest.raises(RuntimeError, match="spawned"):
        actor.send("a@127.0.0.1:1", "x")
    with pytest.raises(RuntimeError, match="spawned"):
        _ = actor.pid
    assert "unspawned" in repr(actor)


async def test_local_link_reports_exit_once(rt: Runtime) -> None:
    linker = Linker()
    rt.spawn(linker)
    target = Recorder()
    target_pid = rt.spawn(target)
    await link(linker, target_pid)
    await link(linker, target_pid)  # linking twice is still one link
    libproc.terminate(target_pid)
    await linker.wait_exited(1)
    await settle()
    assert linker.exits == [target_pid]


async def test_unlink_cancels_the_notice(rt: Runtime) -> None:
    linker = Linker()
    rt.spawn(linker)
    target_pid = rt.spawn(Recorder())
    await link(linker, target_pid)
    await libproc.dispatch(linker.pid, "unlink", target_pid)
    libproc.terminate(target_pid)
    await libproc.wait(target_pid)
    await settle()
    assert linker.exits == []


async def test_async_handler_holds_the_mailbox(rt: Runtime) -> None:
    """An async handler that awaits does not let the next message (or dispatch) in."""

    class Slow(Process):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[str] = []
            self.started = asyncio.Event()
            self.release = asyncio.Event()

        @handler("slow")
        async def slow(self, sender: UPID, body: Any) -> None:
            self.events.append("slow:start")
            self.started.set()
            await self.release.wait()
            await asyncio.sleep(0)
            self.events.append("slow:end")

        @handler("fast")
        def fast(self, sender: UPID, body: Any) -> None:
            self.events.append("fast")

        def peek(self) -> list[str]:
            return list(self.events)

    actor = Slow()
    pid = rt.spawn(actor)
    rt.send(pid, "slow")
    rt.send(pid, "fast")
    peeked = asyncio.ensure_future(libproc.dispatch(pid, "peek"))
    await within(actor.started.wait(), "the slow handler to start")
    # Prove the loop has run plenty meanwhile: another actor handles 100 messages.
    other = Recorder()
    other_pid = rt.spawn(other)
    for i in range(100):
        rt.send(other_pid, "tick", i)
    await other.wait_count(100)
    assert actor.events == ["slow:start"]
    assert not peeked.done()
    actor.release.set()
    assert await within(peeked, "the dispatch behind the slow handler") == [
        "slow:start",
        "slow:end",
        "fast",
    ]


class Counter(Process):
    """Counts ``add`` messages; its methods are dispatch targets."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.seen: list[Any] = []
        self.release = asyncio.Event()

    @handler("add")
    def add(self, sender: UPID, body: Any) -> None:
        self.n += body
        self.seen.append(body)

    def value(self) -> int:
        return self.n

    def tell_myself(self, amount: int) -> int:
        # A message to itself, sent while the dispatched call runs: handled after it, never
        # inside it.
        self.send(self.pid, "add", amount)
        return self.n

    def fail(self) -> None:
        raise ValueError("no")

    async def slowly(self) -> int:
        await self.release.wait()
        return self.n


async def test_submit_runs_at_once_on_an_idle_actor(rt: Runtime) -> None:
    counter = Counter()
    pid = rt.spawn(counter)
    await settle()
    future = libproc.submit(pid, "value")
    assert future.done() and future.result() == 0  # ran in this turn of the loop
    # What it sends itself waits its turn: the call is over before the message is handled.
    future = rt.submit(pid, counter.tell_myself, 5)
    assert future.result() == 0 and counter.n == 0
    assert await libproc.dispatch(pid, "value") == 5
    # A failure goes to the caller; the actor keeps serving.
    failed = rt.submit(pid, "fail")
    with pytest.raises(ValueError, match="no"):
        failed.result()
    rt.send(pid, "add", 1)
    assert await libproc.dispatch(pid, "value") == 6
    with pytest.raises(libproc.ProcessNotFound):
        rt.submit("nobody@" + rt.address, "value")


async def test_submit_waits_behind_what_the_actor_has_queued(rt: Runtime) -> None:
    counter = Counter()
    pid = rt.spawn(counter)
    for i in range(3):
        rt.send(pid, "add", i)
    future = rt.submit(pid, "value")
    assert not future.done()  # three messages first
    assert await within(future, "the dispatch behind the messages") == 3
    assert counter.seen == [0, 1, 2]


async def test_an_async_method_submitted_holds_the_actor(rt: Runtime) -> None:
    counter = Counter()
    pid = rt.spawn(counter)
    await settle()
    slow = rt.submit(pid, "slowly")
    assert not slow.done()
    rt.send(pid, "add", 7)
    behind = rt.submit(pid, "value")
    # Prove the loop has run plenty meanwhile: another actor handles 100 messages.
    other = Recorder()
    other_pid = rt.spawn(other)
    for i in range(100):
        rt.send(other_pid, "tick", i)
    await other.wait_count(100)
    assert counter.n == 0 and not behind.done()
    counter.release.set()
    assert await within(slow, "the async method") == 0
    assert await within(behind, "the dispatch behind it") == 7


async def test_submitted_async_methods_of_several_actors_are_under_way_together(
    rt: Runtime,
) -> None:
    counters = [Counter() for _ in range(3)]
    pids = [rt.spawn(c) for c in counters]
    await settle()
    futures = [rt.submit(pid, "slowly") for pid in pids]
    # Each actor is inside its own call (busy: a message to it waits), none finished. Prove
    # the loop has run plenty meanwhile: another actor handles 100 messages.
    for pid in pids:
        rt.send(pid, "add", 1)
    other = Recorder()
    other_pid = rt.spawn(other)
    for i in range(100):
        rt.send(other_pid, "tick", i)
    await other.wait_count(100)
    assert [c.n for c in counters] == [0, 0, 0] and not any(f.done() for f in futures)
    for c in counters:
        c.release.set()
    assert await within(asyncio.gather(*futures), "every async method") == [0, 0, 0]
    assert [c.n for c in counters] == [1, 1, 1]


async def test_dispatch_still_yields_to_the_loop(rt: Runtime) -> None:
    # An idle actor runs the call at once, but an `await dispatch` stays a point where the loop
    # runs what is ready (a poll loop over dispatch must not starve timers and reads).
    counter = Counter()
    pid = rt.spawn(counter)
    await settle()
    ran: list[int] = []
    asyncio.get_running_loop().call_soon(ran.append, 1)
    assert await libproc.dispatch(pid, "value") == 0
    assert ran == [1]


def test_a_call_from_another_loop_runs_on_the_actor_s_thread() -> None:
    """libprocess's dispatch may be called from any thread: from another thread's loop the call
    is handed over to the actor's loop (never run on the caller's thread, never touching the
    mailbox from there), and its result comes back to the caller's loop; so does an error."""

    class Where(Process):
        def __init__(self) -> None:
            super().__init__("where")
            self.threads: list[str] = []

        def here(self, n: int) -> int:
            self.threads.append(threading.current_thread().name)
            return n + 1

        def fail(self) -> None:
            raise ValueError("from the actor")

        async def hold(self) -> None:
            await asyncio.to_thread(gate.wait, 30)

    actor = Where()
    ready, tried, gate = threading.Event(), threading.Event(), threading.Event()
    outcome: dict[str, Any] = {"errors_on_a": []}

    def loop_a() -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda _, context: outcome["errors_on_a"].append(context))
            rt = await Runtime("127.0.0.1", 0).start()
            try:
                rt.spawn(actor)
                await settle()
                ready.set()
                await asyncio.to_thread(tried.wait, 30)
            finally:
                await rt.stop()

        try:
            libproc.run(main())
        except BaseException as e:
            outcome["a"] = e

    def loop_b() -> None:
        async def main() -> None:
            # A call given up on while the actor is busy is cancelled, never run.
            held = libproc.submit(actor.pid, "hold")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(libproc.dispatch(actor.pid, "here", 100), 0.05)
            gate.set()
            await held
            outcome["results"] = [await libproc.dispatch(actor.pid, "here", n) for n in range(3)]
            with pytest.raises(ValueError, match="from the actor"):
                await libproc.dispatch(actor.pid, "fail")

        try:
            libproc.run(main())
        except BaseException as e:
            outcome["b"] = e
        finally:
            tried.set()

    a = threading.Thread(target=loop_a, name="loop-A")
    a.start()
    assert ready.wait(30)
    b = threading.Thread(target=loop_b, name="loop-B")
    b.start()
    b.join(30)
    a.join(30)
    assert not a.is_alive() and not b.is_alive()
    assert "a" not in outcome and "b" not in outcome, outcome
    assert outcome["results"] == [1, 2, 3]
    assert actor.threads == ["loop-A"] * 3
    assert outcome["errors_on_a"] == []


async def test_terminate_from_inside_a_handler(rt: Runtime) -> None:
    class Quitter(Process):
        @handler("quit")
        def quit(self, sender: UPID, body: Any) -> None:
            self.terminate()

    pid = rt.spawn(Quitter())
    rt.send(pid, "quit")
    await within(libproc.wait(pid), "the actor to end")
    assert rt.lookup(pid) is None


async def test_spawned_child_actor_and_generated_ids(rt: Runtime) -> None:
    class Parent(Process):
        def initialize(self) -> None:
            self.child = self.spawn(Recorder())

    parent = Parent()
    parent_pid = rt.spawn(parent)
    await settle()
    assert parent_pid.id.startswith("parent(")
    assert parent.child.id.startswith("recorder(")
    assert parent.child.address == rt.address
    assert rt.lookup(parent.child) is not None


async def test_defer_runs_after_what_is_queued_and_before_what_comes_later(rt: Runtime) -> None:
    class Burst(Journal):
        """Collects a burst of notes and reports it once, as a deferred flush would."""

        def __init__(self) -> None:
            super().__init__("burst")
            self.pending: list[str] = []

        @handler("note")
        def note(self, sender: UPID, body: Any) -> None:
            self.journal.append(f"note:{body}")
            self.pending.append(body)
            if len(self.pending) == 1:
                self.defer(self.flush, "end")

        def flush(self, why: str) -> None:
            self.journal.append(f"flush:{why}:{','.join(self.pending)}")
            self.pending = []

    libproc.Clock.pause()  # not a timer: a paused clock does not hold it
    try:
        burst = Burst()
        pid = rt.spawn(burst)
        await settle()
        for body in ("a", "b", "c"):  # queued together: one burst
            rt.send(pid, "note", body)
        await settle()
        rt.send(pid, "note", "d")  # later: a burst of its own
        await settle()
    finally:
        libproc.Clock.resume()
    assert burst.journal == [
        "initialize",
        "note:a",
        "note:b",
        "note:c",
        "flush:end:a,b,c",
        "note:d",
        "flush:end:d",
    ]
