"""HTTP: ``Runtime(http_port=0)`` serves actors' routes at ``/<actor id>/<path>`` (run in the
actor's context, like a message) and counters at ``/metrics/snapshot``. Unknown actors and routes
answer 404 with a JSON body; a route that raises answers 500, and the server keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from lp_support import Recorder

import libproc
from libproc import UPID, Process, Runtime, handler, route, settle


class Counter(Process):
    """Counts ``inc`` messages and publishes the count over HTTP."""

    def __init__(self) -> None:
        super().__init__("counter")
        self.count = 0
        self.in_handler = False

    def initialize(self) -> None:
        self.route("/plain", lambda request: web.Response(text=f"count={self.count}"))

    @handler("inc")
    async def inc(self, sender: UPID, body: Any) -> None:
        self.in_handler = True
        await asyncio.sleep(0)
        self.count += 1
        self.in_handler = False

    @route("state")
    def state(self, request: web.Request) -> dict[str, Any]:
        # Routes run in the actor's context: never in the middle of a handler.
        return {"count": self.count, "in_handler": self.in_handler, "q": request.query.get("q")}

    @route("/async/state/")
    async def async_state(self, request: web.Request) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"count": self.count, "method": request.method}

    @route("boom")
    def boom(self, request: web.Request) -> None:
        raise RuntimeError("route failed")


@pytest.fixture
async def web_rt() -> AsyncIterator[Runtime]:
    async with Runtime(http_port=0) as runtime:
        yield runtime


@pytest.fixture
async def http(web_rt: Runtime) -> AsyncIterator[Any]:
    base = f"http://127.0.0.1:{web_rt.http_port}"
    async with aiohttp.ClientSession() as session:

        async def request(path: str, method: str = "GET") -> tuple[int, Any]:
            async with session.request(method, base + path) as resp:
                if resp.content_type == "application/json":
                    return resp.status, await resp.json()
                return resp.status, await resp.text()

        yield request


async def test_actor_routes(web_rt: Runtime, http: Any) -> None:
    assert web_rt.http_port and web_rt.http_port > 0
    pid = web_rt.spawn(Counter())
    for _ in range(3):
        web_rt.send(pid, "inc")
    assert await http("/counter/state?q=x") == (200, {"count": 3, "in_handler": False, "q": "x"})
    assert await http("/counter/async/state") == (200, {"count": 3, "method": "GET"})
    assert await http("/counter/async/state", method="POST") == (
        200,
        {"count": 3, "method": "POST"},
    )
    assert await http("/counter/plain") == (200, "count=3")


async def test_unknown_actor_or_route_is_404_json(web_rt: Runtime, http: Any) -> None:
    web_rt.spawn(Counter())
    status, body = await http("/nobody/state")
    assert status == 404 and "nobody" in body["error"]
    status, body = await http("/counter/nothing-here")
    assert status == 404 and "nothing-here" in body["error"]
    status, body = await http("/nobody")
    assert status == 404 and "nobody" in body["error"]


async def test_raising_route_is_500_and_server_goes_on(web_rt: Runtime, http: Any) -> None:
    pid = web_rt.spawn(Counter())
    status, body = await http("/counter/boom")
    assert status == 500
    assert "route failed" in body["error"]
    assert web_rt.metrics.get("libproc/http_errors") == 1
    web_rt.send(pid, "inc")
    assert await http("/counter/state") == (200, {"count": 1, "in_handler": False, "q": None})


async def test_route_of_an_ending_actor(web_rt: Runtime, http: Any) -> None:
    pid = web_rt.spawn(Counter())
    libproc.terminate(pid)
    await libproc.wait(pid)
    assert (await http("/counter/state"))[0] == 404


async def test_metrics_snapshot(web_rt: Runtime, rt2: Runtime, http: Any) -> None:
    class Echo(Process):
        @handler("ping")
        def ping(self, sender: UPID, body: Any) -> None:
            self.send(sender, "pong", body)

        @handler("fail")
        def fail(self, sender: UPID, body: Any) -> None:
            raise RuntimeError("counted")

    echo = web_rt.spawn(Echo("echo"))
    rec = Recorder()
    rt2.spawn(rec)
    for i in range(5):
        await libproc.dispatch(rec.pid, "send", echo, "ping", i)
    await rec.wait_count(5)
    web_rt.send(echo, "fail")
    web_rt.send(UPID("nobody", web_rt.host, web_rt.port), "x")
    await settle()

    status, snap = await http("/metrics/snapshot")
    assert status == 200
    assert snap["libproc/actors_alive"] == 1
    assert snap["libproc/messages_received"] >= 5 + 2  # 5 pings over the wire, 2 local
    assert snap["libproc/messages_sent"] >= 5 + 2  # 5 pongs over the wire, 2 local
    assert snap["libproc/bytes_received"] > 0 and snap["libproc/bytes_sent"] > 0
    assert snap["libproc/handler_errors"] == 1
    assert snap["libproc/messages_dropped/unknown_recipient"] == 1
    assert snap["libproc/messages_dropped"] == 1
    assert all(isinstance(v, int | float) for v in snap.values())


async def test_fresh_runtime_reports_zero_counters(web_rt: Runtime, http: Any) -> None:
    """An operator's dashboard should find every headline counter, even before it moves."""
    status, snap = await http("/metrics/snapshot")
    assert status == 200
    for name in (
        "libproc/messages_sent",
        "libproc/messages_received",
        "libproc/messages_dropped",
        "libproc/bytes_sent",
        "libproc/bytes_received",
        "libproc/actors_alive",
        "libproc/handler_errors",
    ):
        assert snap[name] == 0, name


async def test_processes_listing(web_rt: Runtime, http: Any) -> None:
    pid = web_rt.spawn(Counter())
    status, listing = await http("/__processes__")
    assert status == 200
    assert listing == [{"id": "counter", "upid": str(pid), "mailbox": 0}]
