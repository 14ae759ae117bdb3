"""Event loops: uvloop is the default; asyncio's own loop works too.

The test suite itself runs on uvloop unless ``LIBPROC_LOOP=asyncio`` (see ``tests/conftest.py``).
The core scenarios here are run explicitly on both loops through ``libproc.run``, the entry point
programs use, so a regression specific to one loop shows up whichever loop the suite is on."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import uvloop
from lp_support import Linker, link, within

import libproc
from libproc import UPID, Clock, Process, Runtime, handler, settle
from libproc.loop import loop_name

REPO = Path(__file__).resolve().parents[2]
LOOPS = ["uvloop", "asyncio"]


def is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return isinstance(loop, uvloop.Loop)


async def test_suite_runs_on_the_configured_loop() -> None:
    expected = os.environ.get("LIBPROC_LOOP", "uvloop")
    assert is_uvloop(asyncio.get_running_loop()) == (expected == "uvloop")


def test_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIBPROC_LOOP", raising=False)
    assert loop_name() == "uvloop"
    monkeypatch.setenv("LIBPROC_LOOP", "asyncio")
    assert loop_name() == "asyncio"
    assert loop_name("uvloop") == "uvloop"  # an explicit choice wins
    loop = libproc.new_event_loop()
    try:
        assert not is_uvloop(loop)
    finally:
        loop.close()
    monkeypatch.setenv("LIBPROC_LOOP", "tokio")
    with pytest.raises(ValueError, match="LIBPROC_LOOP"):
        libproc.new_event_loop()


class Echo(Process):
    @handler("ping")
    def ping(self, sender: UPID, body: Any) -> None:
        self.send(sender, "pong", body)


class Client(Linker):
    def burst(self, to: UPID, n: int) -> None:
        for i in range(n):
            self.send(to, "ping", i)


async def ping_pong_and_links() -> str:
    """Two runtimes over ZeroMQ: ordered ping-pong, a Clock timer, and a remote exit."""
    async with Runtime() as a, Runtime() as b:
        echo = b.spawn(Echo("echo"))
        client = Client("client")
        a.spawn(client)
        await link(client, echo)
        await libproc.dispatch(client.pid, "burst", echo, 1000)
        await client.wait_count(1000)
        assert client.bodies("pong") == list(range(1000))

        Clock.pause()
        fired: list[str] = []
        client.delay(30, fired.append, "timeout")
        Clock.advance(29.999)
        await settle()
        assert fired == []
        Clock.advance(0.001)
        await settle()
        assert fired == ["timeout"]
        Clock.resume()

        libproc.terminate(echo)
        await within(client.wait_exited(1), "exited")
        assert client.exits == [echo]
        Clock.reset()
        return type(asyncio.get_running_loop()).__module__


@pytest.mark.parametrize("loop", LOOPS)
def test_core_scenario_on_each_loop(loop: str) -> None:
    module = libproc.run(ping_pong_and_links(), loop=loop)
    assert module.startswith("uvloop") == (loop == "uvloop")


async def handlers_one_at_a_time() -> list[str]:
    class Slow(Process):
        def __init__(self) -> None:
            super().__init__()
            self.trace: list[str] = []

        @handler("slow")
        async def slow(self, sender: UPID, body: Any) -> None:
            self.trace.append(f"start {body}")
            for _ in range(5):
                await asyncio.sleep(0)
            self.trace.append(f"end {body}")

    async with Runtime() as rt:
        actor = Slow()
        pid = rt.spawn(actor)
        for i in range(3):
            rt.send(pid, "slow", i)
        await settle()
        return actor.trace


@pytest.mark.parametrize("loop", LOOPS)
def test_one_handler_at_a_time_on_each_loop(loop: str) -> None:
    trace = libproc.run(handlers_one_at_a_time(), loop=loop)
    assert trace == ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_program_picks_its_loop_from_the_environment(loop: str) -> None:
    """What ``python -m mesa.node`` would do: ``libproc.run`` honours ``LIBPROC_LOOP``."""
    script = (
        "import asyncio, libproc\n"
        "async def main():\n"
        "    async with libproc.Runtime() as rt:\n"
        "        return type(asyncio.get_running_loop()).__module__\n"
        "print(libproc.run(main()))\n"
    )
    env = dict(os.environ, LIBPROC_LOOP=loop, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("uvloop") == (loop == "uvloop")
