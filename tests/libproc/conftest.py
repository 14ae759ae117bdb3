"""Fixtures for the libproc tests: started runtimes, and runtimes in other OS processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lp_support import raw_dealer

from libproc import UPID, Runtime

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


@pytest.fixture
async def rt() -> AsyncIterator[Runtime]:
    """A started runtime on ZeroMQ over loopback."""
    async with Runtime("127.0.0.1", 0) as runtime:
        yield runtime


@pytest.fixture
async def rt2() -> AsyncIterator[Runtime]:
    """A second runtime in the same OS process: messages to it go over ZeroMQ."""
    async with Runtime("127.0.0.1", 0) as runtime:
        yield runtime


@pytest.fixture
def dealer(rt: Runtime) -> Iterator[Any]:
    """A raw ZeroMQ DEALER connected to ``rt``, claiming to be ``lp_support.PEER``."""
    sock = raw_dealer(rt.address)
    try:
        yield sock
    finally:
        sock.close(linger=0)


@dataclass
class Child:
    """A runtime running in another OS process, and the UPID of its echo actor."""

    process: asyncio.subprocess.Process
    pid: UPID

    def kill(self) -> None:
        """SIGKILL by process id: the host dies without a word to anyone."""
        self.process.kill()


@pytest.fixture
async def child_runtime() -> AsyncIterator[Callable[..., Awaitable[Child]]]:
    """Start ``lp_child.py`` in a new OS process (``start(actor_id, *args)``, the arguments as
    ``lp_child.py`` takes them); every child is killed and reaped afterwards."""
    started: list[asyncio.subprocess.Process] = []
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )

    async def start(actor_id: str = "echo", *args: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "lp_child.py"),
            actor_id,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        started.append(proc)
        line = await asyncio.wait_for(proc.stdout.readline(), 60)  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"child {proc.pid} exited before printing its UPID")
        return Child(proc, UPID.parse(line.decode().strip()))

    try:
        yield start
    finally:
        for proc in started:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 10)
