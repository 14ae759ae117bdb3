"""HTTP for a runtime: `/health`, `/metrics/snapshot`, `/__processes__` and actors' routes.

An actor's route runs in the actor's context (it is queued like a message), so it reads the
actor's state without locks and sees a consistent snapshot between two handlers.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from libproc.process import _DISPATCH

if TYPE_CHECKING:
    from libproc.runtime import Runtime

__all__ = ["start_http"]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, default=str, indent=None),
        status=status,
        content_type="application/json",
    )


async def start_http(runtime: Runtime, host: str, port: int) -> tuple[web.AppRunner, int]:
    async def health(_: web.Request) -> web.Response:
        # The runtime answers, so its loop turns: what a load balancer or operator asks first.
        return _json({"healthy": True, "address": runtime.address, "actors": len(runtime._actors)})

    async def metrics(_: web.Request) -> web.Response:
        return _json(runtime.metrics.snapshot())

    async def processes(_: web.Request) -> web.Response:
        return _json(
            [
                {"id": p.pid.id, "upid": str(p.pid), "mailbox": len(p._mailbox)}
                for p in runtime._actors.values()
            ]
        )

    async def actor_route(request: web.Request) -> web.StreamResponse:
        actor_id = request.match_info["actor"]
        path = request.match_info.get("path", "").strip("/")
        proc = runtime._actors.get(actor_id)
        if proc is None:
            return _json({"error": f"no actor {actor_id!r}"}, status=404)
        fn = proc._routes.get(path)
        if fn is None:
            return _json({"error": f"actor {actor_id!r} has no route {path!r}"}, status=404)
        future = runtime._loop.create_future()
        proc._post(_DISPATCH, fn, (request,), future)
        try:
            result = await future
        except web.HTTPException:
            raise
        except Exception as e:
            runtime.metrics.inc("libproc/http_errors")
            proc.log.error("http_route_error", path=path, error=repr(e), exc_info=e)
            return _json({"error": f"{type(e).__name__}: {e}"}, status=500)
        if isinstance(result, web.StreamResponse):
            return result
        return _json(result)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics/snapshot", metrics)
    app.router.add_get("/__processes__", processes)
    app.router.add_route("*", "/{actor}/{path:.*}", actor_route)
    app.router.add_route("*", "/{actor}", actor_route)  # so /<unknown> is a JSON 404 too
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    actual = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, actual
