"""A handler that raises: by default the error is logged and counted and the actor carries on
with its next message (one bad message must not take a long-lived actor down); with
``terminate_on_error=True`` the actor stops instead, and its linkers — local and remote — are
told through ``exited``."""

from __future__ import annotations

from typing import Any

import pytest
from lp_support import Linker, link, within
from structlog.testing import capture_logs

import libproc
from libproc import UPID, Process, Runtime, expect_message, handler, settle


class Fragile(Process):
    """Fails on ``boom`` (sync) and ``aboom`` (async); counts ``ok``."""

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.ok = 0
        self.finalized = False

    @handler("boom")
    def boom(self, sender: UPID, body: Any) -> None:
        raise RuntimeError(f"boom {body}")

    @handler("aboom")
    async def aboom(self, sender: UPID, body: Any) -> None:
        raise ValueError(f"async boom {body}")

    @handler("ok")
    def on_ok(self, sender: UPID, body: Any) -> None:
        self.ok += 1

    def count(self) -> int:
        return self.ok

    def finalize(self) -> None:
        self.finalized = True


class Strict(Fragile):
    terminate_on_error = True


async def test_raising_handler_is_logged_counted_and_survived(rt: Runtime) -> None:
    actor = Fragile("fragile")
    pid = rt.spawn(actor)
    with capture_logs() as logs:
        rt.send(pid, "boom", 1)
        rt.send(pid, "ok")
        rt.send(pid, "aboom", 2)
        rt.send(pid, "ok")
        assert await libproc.dispatch(pid, "count") == 2
    errors = [e for e in logs if e["event"] == "handler_error"]
    assert [(e["log_level"], e["handling"]) for e in errors] == [
        ("error", "boom"),
        ("error", "aboom"),
    ]
    assert "boom 1" in errors[0]["error"] and errors[0]["actor"] == str(pid)
    assert "async boom 2" in errors[1]["error"]
    assert rt.metrics.get("libproc/handler_errors") == 2
    assert rt.lookup(pid) is actor  # still alive


async def test_raising_hooks_are_counted_too(rt: Runtime) -> None:
    class BadHooks(Process):
        def initialize(self) -> None:
            raise RuntimeError("cannot start")

        def finalize(self) -> None:
            raise RuntimeError("cannot stop")

    with capture_logs() as logs:
        pid = rt.spawn(BadHooks())
        await settle()
        libproc.terminate(pid)
        await within(libproc.wait(pid), "the actor to end despite its finalize")
    assert [e["handling"] for e in logs if e["event"] == "handler_error"] == [
        "initialize",
        "finalize",
    ]
    assert rt.metrics.get("libproc/handler_errors") == 2


@pytest.mark.parametrize("message", ["boom", "aboom"])
async def test_terminate_on_error_ends_the_actor_and_tells_linkers(
    rt: Runtime, rt2: Runtime, message: str
) -> None:
    actor = Strict("strict")
    pid = rt.spawn(actor)
    local, remote = Linker(), Linker()
    rt.spawn(local)
    rt2.spawn(remote)
    await link(local, pid)
    await link(remote, pid)
    seen = expect_message(name="ok", to=pid)
    await libproc.dispatch(remote.pid, "send", pid, "ok", None)
    await within(seen, "the remote linker's message (sent after its link)")
    with capture_logs() as logs:
        rt.send(pid, message, 1)
        rt.send(pid, "ok")  # never handled: the actor stops first
        await within(libproc.wait(pid), "the strict actor to end")
    assert actor.finalized
    await settle()
    assert actor.ok == 1
    assert any(e["event"] == "handler_error" for e in logs)
    await local.wait_exited(1)
    await remote.wait_exited(1)
    assert local.exits == [pid] and remote.exits == [pid]
    assert rt.metrics.get("libproc/handler_errors") == 1


async def test_handler_awaiting_a_cancelled_future_does_not_wedge_the_actor(rt: Runtime) -> None:
    """CancelledError is not an Exception: an async handler whose awaited future is cancelled
    (a timed-out request, a closed connection) must count as a failed handler, not leave the
    mailbox held forever."""
    import asyncio

    class Waiter(Fragile):
        def __init__(self) -> None:
            super().__init__()
            self.pending: asyncio.Future[None] | None = None
            self.started = asyncio.Event()

        @handler("wait")
        async def wait(self, sender: UPID, body: Any) -> None:
            self.pending = asyncio.get_running_loop().create_future()
            self.started.set()
            await self.pending

    actor = Waiter()
    pid = rt.spawn(actor)
    rt.send(pid, "wait")
    rt.send(pid, "ok")
    await within(actor.started.wait(), "the handler to start waiting")
    with capture_logs():
        actor.pending.cancel()  # type: ignore[union-attr]
        assert await within(libproc.dispatch(pid, "count"), "the actor to go on") == 1
    assert rt.metrics.get("libproc/handler_errors") == 1
