"""Two libproc actors in two OS processes that ping-pong and notice each other's death.

In one shell:

    python examples/pingpong.py pong --port 5055

In another:

    python examples/pingpong.py ping --pong pong@127.0.0.1:5055

Each side links to the other. Stop either one — Ctrl-C, or ``kill -9`` — and the other logs
``exited``: a ping process stops (exit status 1, it lost the actor it exists to talk to), a pong
process forgets that pinger and goes on serving others. ``--count`` and ``--interval`` make ping
finish by itself (exit status 0 once every ping was answered), and pong's ``--exit-after`` makes
pong leave after so many answers, which is what the tests use. docs/actors.md walks through it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import libproc
from libproc import UPID, Process, Runtime, handler, record, route


@record("examples.pingpong.Ball")
@dataclass(frozen=True)
class Ball:
    """The body of both messages. A record travels as itself, not as a dict."""

    seq: int
    sent_at: float  # the pinger's clock, echoed back so that the pinger can time the round trip


class Pong(Process):
    """Answers every ping; links to each new pinger so that it hears when one goes away."""

    def __init__(self, exit_after: int = 0) -> None:
        super().__init__("pong")  # a fixed id, so pingers can be told pong@host:port
        self.exit_after = exit_after
        self.answered = 0
        self.pingers: dict[UPID, int] = {}  # pinger -> pings answered

    @handler("ping")
    def ping(self, sender: UPID, ball: Ball) -> None:
        if sender not in self.pingers:
            self.pingers[sender] = 0
            self.link(sender)
            self.log.info("new_pinger", pinger=str(sender))
        self.pingers[sender] += 1
        self.send(sender, "pong", ball)
        self.answered += 1
        self.metrics.inc("pong/answered")
        if self.exit_after and self.answered >= self.exit_after:
            self.log.info("done", answered=self.answered)
            self.terminate()  # linked pingers are told, as part of terminating

    def exited(self, pid: UPID) -> None:
        self.log.info("exited", peer=str(pid), answered=self.pingers.pop(pid, 0))

    @route("stats")
    def stats(self, request: Any) -> dict[str, Any]:
        # Served at http://host:HTTP_PORT/pong/stats; runs in the actor like a message does.
        return {"answered": self.answered, "pingers": {str(p): n for p, n in self.pingers.items()}}


class Ping(Process):
    """Sends a ping, waits for its pong, waits ``interval``, sends the next; stops when done or
    when pong goes away."""

    def __init__(self, pong: UPID, count: int, interval: float) -> None:
        super().__init__("ping")
        self.pong_pid = pong
        self.count = count  # 0: forever
        self.interval = interval
        self.received = 0
        self.status = 1  # the process's exit status; 0 once every ping was answered

    def initialize(self) -> None:
        # Link first: if pong is not there at all, the link times out and exited() says so.
        self.link(self.pong_pid)
        self.log.info("pinging", pong=str(self.pong_pid), count=self.count or "forever")
        self.serve()

    def serve(self) -> None:
        self.send(self.pong_pid, "ping", Ball(self.received + 1, time.perf_counter()))

    @handler("pong")
    def pong(self, sender: UPID, ball: Ball) -> None:
        self.received += 1
        rtt_ms = (time.perf_counter() - ball.sent_at) * 1000
        self.log.info("pong", seq=ball.seq, rtt_ms=round(rtt_ms, 3))
        if self.count and self.received >= self.count:
            self.status = 0
            self.log.info("done", pongs=self.received)
            self.terminate()
        elif self.interval > 0:
            self.delay(self.interval, self.serve)  # a timer that runs serve() in this actor
        else:
            self.serve()

    def exited(self, pid: UPID) -> None:
        self.log.warning("exited", peer=str(pid), pongs=self.received)
        self.terminate()


async def run_actor(args: argparse.Namespace, actor: Process, port: int) -> None:
    """Start a runtime, spawn ``actor`` in it, and return when the actor has ended."""
    runtime = Runtime(args.host, port, http_port=args.http_port, link_timeout=args.connect_timeout)
    async with runtime:
        pid = runtime.spawn(actor)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # A graceful stop: the actor's finalize runs and its linkers are told.
            loop.add_signal_handler(sig, runtime.terminate, pid)
        actor.log.info("started", pid=str(pid), http_port=runtime.http_port)
        await runtime.wait(pid)
    # Leaving the `async with` stops the runtime, which first delivers what is still queued.


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)  # options both roles take, after the role
    common.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    common.add_argument("--http-port", type=int, help="serve /metrics/snapshot and routes here")
    common.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        help="seconds a link waits for the other side to answer before it counts as exited",
    )
    common.add_argument("--log-format", choices=["console", "json"], default="console")
    common.add_argument("--log-level", default="info")
    common.add_argument("--loop", choices=["uvloop", "asyncio"], help="default: LIBPROC_LOOP")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    p_pong = sub.add_parser("pong", parents=[common], help="answer pings")
    p_pong.add_argument("--port", type=int, default=5055, help="0 picks a free port")
    p_pong.add_argument("--exit-after", type=int, default=0, help="stop after N answers")
    p_ping = sub.add_parser("ping", parents=[common], help="send pings to a pong")
    p_ping.add_argument("--pong", type=UPID.parse, required=True, help="e.g. pong@127.0.0.1:5055")
    p_ping.add_argument("--port", type=int, default=0, help="default: any free port")
    p_ping.add_argument("--count", type=int, default=0, help="pings to send; 0 means forever")
    p_ping.add_argument("--interval", type=float, default=1.0, help="seconds between pings")
    args = parser.parse_args(argv)

    libproc.configure_logging(args.log_format, args.log_level)
    if args.role == "pong":
        actor: Pong | Ping = Pong(args.exit_after)
    else:
        actor = Ping(args.pong, args.count, args.interval)
    libproc.run(run_actor(args, actor, args.port), loop=args.loop)
    return actor.status if isinstance(actor, Ping) else 0


if __name__ == "__main__":
    sys.exit(main())
