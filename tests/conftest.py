"""Test set-up shared by every suite: the event loop, and a clean slate after every test.

* Async tests run on uvloop, the loop libproc uses in production, unless ``LIBPROC_LOOP=asyncio``
  says otherwise (then on asyncio's own loop), so one environment variable reruns the whole suite
  on the other loop. With pytest-asyncio >= 1.3 this goes through the
  ``pytest_asyncio_loop_factories`` hook; older versions get the (since deprecated)
  ``event_loop_policy`` fixture instead.
* libproc keeps process-wide state — the registry of runtimes, the :class:`~libproc.Clock`, the
  message filters — and tests start real OS processes. One failing test must not leave any of it
  to the next, so an autouse fixture tears it all down after every test, pass or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

import psutil
import pytest

import libproc
from libproc import Clock, filters
from libproc.loop import loop_name
from libproc.runtime import _runtimes

LOOP = loop_name()  # raises at collection time on a bad LIBPROC_LOOP

try:
    from pytest_asyncio.plugin import PytestAsyncioSpecs

    _HAS_LOOP_FACTORY_HOOK = hasattr(PytestAsyncioSpecs, "pytest_asyncio_loop_factories")
except ImportError:  # pragma: no cover - very old pytest-asyncio
    _HAS_LOOP_FACTORY_HOOK = False


if _HAS_LOOP_FACTORY_HOOK:

    def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
        """One loop factory, so tests are not multiplied: the loop LIBPROC_LOOP names."""
        return {LOOP: functools.partial(libproc.new_event_loop, LOOP)}

else:  # pragma: no cover - pytest-asyncio < 1.3

    @pytest.fixture(scope="session")
    def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
        """uvloop's policy unless LIBPROC_LOOP=asyncio."""
        if LOOP == "uvloop":
            import uvloop

            return uvloop.EventLoopPolicy()
        return asyncio.DefaultEventLoopPolicy()


def _child_pids() -> set[int]:
    with contextlib.suppress(psutil.Error):
        return {p.pid for p in psutil.Process().children(recursive=True)}
    return set()


def _kill_children(pids: set[int]) -> None:
    """SIGKILL the given child processes by pid (never by name) and reap them."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.kill()
            procs.append(proc)
    with contextlib.suppress(psutil.Error, ChildProcessError):
        psutil.wait_procs(procs, timeout=5)


def _abandon(runtime: libproc.Runtime) -> None:
    """Drop a runtime whose event loop is gone (a test that ran its own loop and failed).

    It cannot be stopped politely without its loop, so close its sockets and unregister it.
    """
    transport = runtime.transport
    router = getattr(transport, "_router", None)
    if router is not None:
        router.close(linger=0)
        transport._router = None
    for peer in list(getattr(transport, "_peers", {}).values()):
        peer.monitor.close(linger=0)
        peer.dealer.close(linger=0)
    getattr(transport, "_peers", {}).clear()
    if _runtimes.get(runtime.address) is runtime:
        del _runtimes[runtime.address]
    runtime._started = False


@pytest.fixture(autouse=True)
async def libproc_clean_slate() -> AsyncIterator[None]:
    """After each test: kill its child processes, stop its runtimes, reset Clock and filters."""
    before = _child_pids()
    try:
        yield
    finally:
        _kill_children(_child_pids() - before)
        filters.clear()
        loop = asyncio.get_running_loop()
        for runtime in libproc.runtimes():
            if runtime._loop is loop:
                try:
                    await asyncio.wait_for(runtime.stop(timeout=2.0), 10)
                except Exception:
                    _abandon(runtime)
            else:
                _abandon(runtime)
        Clock.reset()
        filters.clear()
