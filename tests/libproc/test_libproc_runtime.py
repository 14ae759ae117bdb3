"""spawn / terminate / wait / dispatch, and several runtimes in one OS process.

``dispatch`` is how tests and tools call into an actor's context: it must hand back the method's
result, or raise the method's own exception (not a wrapper), for sync and async methods alike, and
find the right runtime from the UPID alone when several runtimes share the process."""

from __future__ import annotations

import asyncio

import pytest
from lp_support import Recorder, within

import libproc
from libproc import (
    UPID,
    Process,
    ProcessNotFound,
    ProcessTerminated,
    Runtime,
    handler,
    settle,
)


class Calculator(Process):
    """Methods to dispatch to: sync, async, and both kinds failing."""

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.total = 0
        self.gate = asyncio.Event()
        self.holding = asyncio.Event()

    def add(self, n: int) -> int:
        self.total += n
        return self.total

    async def add_later(self, n: int) -> int:
        await asyncio.sleep(0)
        self.total += n
        return self.total

    def fail(self) -> None:
        raise KeyError("no such thing")

    async def fail_later(self) -> None:
        await asyncio.sleep(0)
        raise ValueError("bad value")

    async def hold(self) -> str:
        self.holding.set()
        await self.gate.wait()
        return "held"

    def whoami(self) -> UPID:
        return self.pid


async def test_dispatch_returns_results(rt: Runtime) -> None:
    calc = Calculator()
    pid = libproc.spawn(calc)
    assert await libproc.dispatch(pid, "add", 2) == 2
    assert await libproc.dispatch(pid, calc.add, 3) == 5  # a bound method
    assert await libproc.dispatch(pid, Calculator.add, 4) == 9  # an unbound function
    assert await libproc.dispatch(pid, "add_later", 10) == 19  # async
    assert await rt.dispatch(pid, "whoami") == pid


async def test_dispatch_raises_the_methods_exception(rt: Runtime) -> None:
    pid = libproc.spawn(Calculator())
    with pytest.raises(KeyError, match="no such thing"):
        await libproc.dispatch(pid, "fail")
    with pytest.raises(ValueError, match="bad value"):
        await libproc.dispatch(pid, "fail_later")
    # The actor is unharmed, and a raising dispatch is the caller's error, not a handler error.
    assert await libproc.dispatch(pid, "add", 1) == 1


async def test_dispatch_to_missing_or_dead_actor(rt: Runtime) -> None:
    with pytest.raises(ProcessNotFound):
        await libproc.dispatch(UPID("nobody", rt.host, rt.port), "add", 1)
    with pytest.raises(ProcessNotFound):
        await libproc.dispatch("nobody@127.0.0.1:1", "add", 1)  # no runtime there at all
    pid = libproc.spawn(Calculator())
    libproc.terminate(pid)
    await libproc.wait(pid)
    with pytest.raises(ProcessNotFound):
        await libproc.dispatch(pid, "add", 1)


async def test_pending_dispatch_fails_when_the_actor_ends_first(rt: Runtime) -> None:
    calc = Calculator()
    pid = libproc.spawn(calc)
    held = asyncio.ensure_future(libproc.dispatch(pid, "hold"))
    queued = asyncio.ensure_future(libproc.dispatch(pid, "add", 1))
    await within(calc.holding.wait(), "the first dispatch to start")
    libproc.terminate(pid)  # injected: ahead of the queued dispatch
    calc.gate.set()
    assert await within(held, "the running dispatch") == "held"
    with pytest.raises(ProcessTerminated):
        await within(queued, "the queued dispatch to fail")


async def test_cancelled_dispatch_is_skipped(rt: Runtime) -> None:
    calc = Calculator()
    pid = libproc.spawn(calc)
    held = asyncio.ensure_future(libproc.dispatch(pid, "hold"))
    await within(calc.holding.wait(), "the first dispatch to start")
    queued = asyncio.ensure_future(libproc.dispatch(pid, "add", 100))
    await asyncio.sleep(0)  # let it queue its call
    queued.cancel()
    calc.gate.set()
    await within(held, "the running dispatch")
    assert await libproc.dispatch(pid, "add", 1) == 1  # the cancelled add never ran


async def test_terminate_inject_versus_queue(rt: Runtime) -> None:
    class Counter(Process):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[int] = []

        @handler("n")
        def n(self, sender: UPID, body: int) -> None:
            self.seen.append(body)

    queued, injected = Counter(), Counter()
    q_pid, i_pid = rt.spawn(queued), rt.spawn(injected)
    await settle()
    for i in range(5):
        rt.send(q_pid, "n", i)
        rt.send(i_pid, "n", i)
    assert libproc.terminate(q_pid, inject=False)
    assert libproc.terminate(i_pid)  # inject=True: ahead of the waiting messages
    await libproc.wait(q_pid)
    await libproc.wait(i_pid)
    assert queued.seen == [0, 1, 2, 3, 4]
    assert injected.seen == []
    assert not libproc.terminate(q_pid)  # already gone
    await libproc.wait(q_pid)  # returns at once for an actor that is not running


async def test_spawn_rules(rt: Runtime) -> None:
    pid = rt.spawn(Recorder("same"))
    assert pid == UPID("same", rt.host, rt.port)
    with pytest.raises(ValueError, match="same"):
        rt.spawn(Recorder("same"))
    actor = Recorder()
    rt.spawn(actor)
    with pytest.raises(RuntimeError, match="already spawned"):
        rt.spawn(actor)
    with pytest.raises(RuntimeError, match="start"):
        Runtime().spawn(Recorder())


async def test_spawn_needs_a_running_runtime() -> None:
    with pytest.raises(RuntimeError, match="no libproc runtime"):
        libproc.spawn(Recorder())


async def test_several_runtimes_in_one_process(rt: Runtime, rt2: Runtime) -> None:
    """Module-level functions find each actor's own runtime from its UPID."""
    a, b = Calculator("calc"), Calculator("calc")  # the same id in two runtimes
    a_pid = libproc.spawn(a, rt)
    b_pid = libproc.spawn(b, runtime=rt2)
    assert a_pid != b_pid and a_pid.id == b_pid.id
    assert {r.address for r in libproc.runtimes()} >= {rt.address, rt2.address}
    assert await libproc.dispatch(a_pid, "add", 1) == 1
    assert await libproc.dispatch(b_pid, "add", 10) == 10
    assert await libproc.dispatch(b_pid, "whoami") == b_pid
    libproc.terminate(b_pid)
    await libproc.wait(b_pid)
    assert rt2.lookup(b_pid) is None
    assert rt.lookup(a_pid) is a


async def test_stop_finalizes_every_actor_and_unregisters() -> None:
    finalized: list[str] = []

    class Tidy(Process):
        async def finalize(self) -> None:
            await asyncio.sleep(0)
            finalized.append(self.pid.id)

    runtime = await Runtime().start()
    for name in ("a", "b", "c"):
        runtime.spawn(Tidy(name))
    await settle()
    assert runtime in libproc.runtimes()
    await runtime.stop()
    assert sorted(finalized) == ["a", "b", "c"]
    assert runtime not in libproc.runtimes()
    await runtime.stop()  # idempotent


async def test_runtime_level_send_comes_from_anonymous(rt: Runtime) -> None:
    rec = Recorder()
    pid = rt.spawn(rec)
    rt.send(pid, "hello", [1, 2])
    rt.send(str(pid), "hello", [3])
    await rec.wait_count(2)
    assert rec.got[0] == (rt.anonymous, "hello", [1, 2])
    assert rt.anonymous is not None and rt.anonymous.id == "__anonymous__"


async def test_a_start_on_a_port_in_use_fails_and_leaves_no_socket_open() -> None:
    """A bind that fails (the port is taken) raises, and closes the socket it made: a caller that
    retries until the port is free must not leak one ZeroMQ socket per try."""
    import socket

    import zmq

    from libproc.zmq_transport import ZmqTransport

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    ctx = zmq.Context()
    errors: list[BaseException] = []  # kept, as a caller that logs them later keeps them
    try:
        for _ in range(3):
            transport = ZmqTransport(context=ctx)
            with pytest.raises(zmq.ZMQError) as failed:
                await Runtime("127.0.0.1", port, transport=transport).start()
            errors.append(failed.value)
        # (The errors' tracebacks hold the frames that made the sockets: only an explicit
        # close, not the garbage collector, can have closed them.)
        assert not [s for s in ctx._sockets if not s.closed]
    finally:
        taken.close()
        ctx.destroy(linger=0)  # (closes what was left open, rather than wait for it)
