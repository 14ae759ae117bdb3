"""libproc message benchmarks: round trips and throughput, in-process and over ZeroMQ.

Run ``python -m bench.libproc_bench`` (``--quick`` for a short run, ``--json PATH`` to keep the
figures). Every figure is the median of several runs, and each libproc figure is quoted as a ratio
to a baseline measured in the same run on the same event loop, because absolute numbers on a
shared two-core machine mean little from one minute to the next:

========================  ==============================================  ==========
libproc figure            baseline                                        target
========================  ==============================================  ==========
in-process ping-pong      two tasks ping-ponging through asyncio.Queue    >= 0.6x
cross-process round trip  raw pyzmq DEALER/ROUTER driven off the socket   >= 0.9x
                          fd, one msgpack message per frame
one-way pipelined         the same raw pyzmq pair, one message per frame  >= 2x
========================  ==============================================  ==========

For reference, not as targets: a ``zmq.asyncio`` round trip, and pykka and thespian
(``simpleSystemBase``) ping-pong, when those packages are installed.

The far side of every cross-process figure is one child OS process per event loop, started here
with ``subprocess`` (``--serve``; ``LIBPROC_LOOP`` picks its loop) and serving all three wire
variants at once. The child exits when its stdin closes, so it goes away even if this process is
killed; the ``finally`` below also kills it if it does not.

Runs are interleaved (baseline, libproc, baseline, libproc, ...) so that a noisy minute on the
machine hits both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio

import libproc
from bench.machine import describe
from libproc import UPID, Backpressure, Process, Runtime, handler

LOOPS = ("uvloop", "asyncio")
HOST = "127.0.0.1"

# Each raw message carries what a libproc message carries: recipient, sender, name, body.
_packb = msgpack.packb
_unpackb = msgpack.unpackb


# ====================================================================== sizes


@dataclass(frozen=True)
class Sizes:
    runs: int
    inproc: int  # round trips per run
    cross_rt: int  # round trips per run
    oneway: int  # messages per run
    peers: int  # round trips per run for pykka / thespian
    chunk: int = 256  # a libproc blaster yields to the loop after this many sends


FULL = Sizes(runs=5, inproc=100_000, cross_rt=10_000, oneway=200_000, peers=20_000)
QUICK = Sizes(runs=3, inproc=30_000, cross_rt=3_000, oneway=60_000, peers=5_000)


# ====================================================================== libproc actors


class Pong(Process):
    """Answers every ping with a pong carrying the same body."""

    @handler("ping")
    def ping(self, sender: UPID, body: Any) -> None:
        self.send(sender, "pong", body)


class Ping(Process):
    """Sends ``n`` pings one after another, each after the previous pong, then sets ``done``."""

    def __init__(self, pong: UPID, id: str | None = None) -> None:
        super().__init__(id)
        self.peer = pong
        self.left = 0
        self.done: asyncio.Future[None] | None = None

    def start(self, n: int, done: asyncio.Future[None]) -> None:
        self.left = n
        self.done = done
        self.send(self.peer, "ping", n)

    @handler("pong")
    def pong(self, sender: UPID, body: Any) -> None:
        self.left -= 1
        if self.left:
            self.send(self.peer, "ping", self.left)
        else:
            self.done.set_result(None)  # type: ignore[union-attr]


class Sink(Process):
    """Counts ``msg`` messages; answers ``done`` with the count and starts again from zero."""

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id)
        self.count = 0

    @handler("msg")
    def msg(self, sender: UPID, body: Any) -> None:
        self.count += 1

    @handler("done")
    def done(self, sender: UPID, body: Any) -> None:
        self.send(sender, "count", self.count)
        self.count = 0


class Blaster(Process):
    """Sends ``n`` messages as fast as the runtime takes them, then ``done``; awaits the count.

    The blast yields to the loop every ``chunk`` sends, as any producer that shares its loop
    must; each yield lets the runtime flush what was queued as one frame per peer.
    """

    def __init__(self, sink: UPID, id: str | None = None) -> None:
        super().__init__(id)
        self.sink = sink
        self.acked: asyncio.Future[int] | None = None

    async def blast(self, n: int, chunk: int, acked: asyncio.Future[int]) -> None:
        self.acked = acked
        sink = self.sink
        send = self.send
        for i in range(n):
            try:
                send(sink, "msg", i)
            except Backpressure:
                await self.wait_writable(sink)
                send(sink, "msg", i)
            if i % chunk == 0:
                await asyncio.sleep(0)
        send(sink, "done")

    @handler("count")
    def count(self, sender: UPID, body: Any) -> None:
        self.acked.set_result(body)  # type: ignore[union-attr]


# ====================================================================== raw pyzmq


class RawServer:
    """A ROUTER read off its fd: answers pings, counts one-way messages, acks the count."""

    def __init__(self, ctx: zmq.Context, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"tcp://{HOST}:*")
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.count = 0
        self.loop = loop
        loop.add_reader(self.sock.FD, self._on_readable)
        loop.call_soon(self._on_readable)

    def _on_readable(self) -> None:
        sock = self.sock
        # The fd is edge-triggered: drain until ZeroMQ says nothing more is waiting.
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            ident, data = sock.recv_multipart(zmq.NOBLOCK)
            to, sender, name, body = _unpackb(data)
            if name == "ping":
                sock.send_multipart([ident, _packb([sender, to, "pong", body])], zmq.NOBLOCK)
            elif name == "msg":
                self.count += 1
            elif name == "done":
                sock.send_multipart([ident, _packb([sender, to, "count", self.count])])
                self.count = 0

    def close(self) -> None:
        self.loop.remove_reader(self.sock.FD)
        self.sock.close(linger=0)


class RawClient:
    """A DEALER read off its fd, driving ping-pong or a one-way blast against a RawServer."""

    ME = f"client@{HOST}:0"
    TO = "server"

    def __init__(self, ctx: zmq.Context, loop: asyncio.AbstractEventLoop, endpoint: str) -> None:
        self.loop = loop
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.left = 0
        self.done: asyncio.Future[Any] | None = None
        self.writable: asyncio.Future[None] | None = None
        loop.add_reader(self.sock.FD, self._on_event)
        loop.call_soon(self._on_event)

    def _on_event(self) -> None:
        sock = self.sock
        while True:
            events = sock.getsockopt(zmq.EVENTS)
            if events & zmq.POLLOUT and self.writable is not None:
                if not self.writable.done():
                    self.writable.set_result(None)
                self.writable = None
            if not events & zmq.POLLIN:
                return
            _, _, name, body = _unpackb(sock.recv(zmq.NOBLOCK))
            if name == "pong":
                self.left -= 1
                if self.left:
                    sock.send(_packb([self.TO, self.ME, "ping", self.left]), zmq.NOBLOCK)
                else:
                    self.done.set_result(None)  # type: ignore[union-attr]
            elif name == "count":
                self.done.set_result(body)  # type: ignore[union-attr]

    async def round_trips(self, n: int) -> None:
        self.left = n
        self.done = self.loop.create_future()
        self.sock.send(_packb([self.TO, self.ME, "ping", n]), zmq.NOBLOCK)
        # ZeroMQ signals the fd only for a pipe whose reader has looked and found it empty; look
        # now, or a pong arriving before anything else wakes the fd is never noticed.
        self._on_event()
        await self.done

    async def blast(self, n: int) -> int:
        self.done = self.loop.create_future()
        sock = self.sock
        me, to = self.ME, self.TO
        for i in range(n):
            data = _packb([to, me, "msg", i])
            while True:
                try:
                    sock.send(data, zmq.NOBLOCK)
                    break
                except zmq.Again:
                    # The pipe is at its high-water mark: wait until ZeroMQ can take more.
                    self.writable = self.loop.create_future()
                    self.loop.call_soon(self._on_event)
                    await self.writable
        sock.send(_packb([to, me, "done", None]))
        self._on_event()  # as in round_trips: arm the fd for the count
        return await self.done  # type: ignore[no-any-return]

    def close(self) -> None:
        self.loop.remove_reader(self.sock.FD)
        self.sock.close(linger=0)


# ====================================================================== zmq.asyncio (reference)


async def zmq_asyncio_server(sock: zmq.asyncio.Socket) -> None:
    while True:
        ident, data = await sock.recv_multipart()
        to, sender, _, body = _unpackb(data)
        await sock.send_multipart([ident, _packb([sender, to, "pong", body])])


async def zmq_asyncio_round_trips(sock: zmq.asyncio.Socket, n: int) -> None:
    me, to = RawClient.ME, RawClient.TO
    for i in range(n, 0, -1):
        await sock.send(_packb([to, me, "ping", i]))
        _unpackb(await sock.recv())


# ====================================================================== the child process


async def serve() -> None:
    """The far side of the cross-process figures; prints its endpoints as one JSON line."""
    libproc.configure_logging(level="error")
    loop = asyncio.get_running_loop()
    rt = await Runtime(HOST, 0).start()
    rt.spawn(Pong("pong"))
    rt.spawn(Sink("sink"))
    raw = RawServer(zmq.Context(), loop)
    actx = zmq.asyncio.Context()
    asock = actx.socket(zmq.ROUTER)
    asock.setsockopt(zmq.LINGER, 0)
    asock.bind(f"tcp://{HOST}:*")
    atask = asyncio.create_task(zmq_asyncio_server(asock))
    closed = asyncio.Event()

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            closed.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    ready = {
        "libproc": rt.address,
        "raw": raw.endpoint,
        "zmq_asyncio": asock.getsockopt(zmq.LAST_ENDPOINT).decode(),
        "loop": type(loop).__module__,
    }
    print(json.dumps(ready), flush=True)
    await closed.wait()
    loop.remove_reader(sys.stdin.fileno())
    atask.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await atask
    asock.close(linger=0)
    raw.close()
    await rt.stop(timeout=1.0)


class Child:
    """The serving child process; always reaped, by closing its stdin or, failing that, kill."""

    def __init__(self, loop_name: str) -> None:
        self.loop_name = loop_name
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = tempfile.TemporaryFile()
        self.endpoints: dict[str, str] = {}

    def start(self, timeout: float = 30.0) -> dict[str, str]:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["LIBPROC_LOOP"] = self.loop_name
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.libproc_bench", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            cwd=root,
        )
        line = _readline_with_timeout(self.proc, timeout)
        if not line:
            self.stderr.seek(0)
            err = self.stderr.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"bench child ({self.loop_name}) did not start:\n{err}")
        self.endpoints = json.loads(line)
        return self.endpoints

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            proc.stdout.close()  # type: ignore[union-attr]
        self.stderr.close()
        self.proc = None


def _readline_with_timeout(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return result[0] if result else b""


# ====================================================================== measurements


@dataclass
class Figure:
    key: str  # e.g. "cross_rt/libproc"
    loop: str  # "uvloop", "asyncio" or "-" for the thread-based peers
    unit: str
    n: int
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else float("nan")

    def as_json(self) -> dict[str, Any]:
        return {
            "figure": self.key,
            "loop": self.loop,
            "unit": self.unit,
            "n_per_run": self.n,
            "median": self.median,
            "runs": self.rates,
        }


RUN_TIMEOUT = 60.0  # seconds; a run that takes longer has lost a message and never will finish


async def timed(what: str, n: int, body: Callable[[int], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(body(n), RUN_TIMEOUT)
    except TimeoutError:
        raise RuntimeError(f"{what}: {n} messages did not complete in {RUN_TIMEOUT}s") from None
    return n / (time.perf_counter() - t0)


async def queue_pingpong(n: int) -> None:
    """The in-process baseline: two tasks ping-ponging through two asyncio.Queues."""
    q_in: asyncio.Queue[int | None] = asyncio.Queue()
    q_out: asyncio.Queue[int] = asyncio.Queue()

    async def pong() -> None:
        while (x := await q_in.get()) is not None:
            q_out.put_nowait(x)

    task = asyncio.create_task(pong())
    for i in range(n):
        q_in.put_nowait(i)
        await q_out.get()
    q_in.put_nowait(None)
    await task


async def measure_loop(
    loop_name: str, sizes: Sizes, log: Callable[[str], None], only: set[str] | None = None
) -> list[Figure]:
    """Every figure that runs on an event loop, for the loop this coroutine runs on."""
    loop = asyncio.get_running_loop()
    child = Child(loop_name)
    raw: RawClient | None = None
    actx: zmq.asyncio.Context | None = None
    asock: zmq.asyncio.Socket | None = None
    try:
        ends = await loop.run_in_executor(None, child.start)
        async with Runtime(HOST, 0) as rt:
            remote = ends["libproc"]
            local_pong = rt.spawn(Pong("pong"))
            local_ping = rt.spawn(Ping(local_pong, "ping-local"))
            remote_ping = rt.spawn(Ping(UPID.parse(f"pong@{remote}"), "ping-remote"))
            blaster = Blaster(UPID.parse(f"sink@{remote}"), "blaster")
            blaster_pid = rt.spawn(blaster)
            raw = RawClient(zmq.Context.instance(), loop, ends["raw"])
            actx = zmq.asyncio.Context()
            asock = actx.socket(zmq.DEALER)
            asock.setsockopt(zmq.LINGER, 0)
            asock.connect(ends["zmq_asyncio"])

            async def lp_rt(pid: UPID, n: int) -> None:
                done = loop.create_future()
                await libproc.dispatch(pid, "start", n, done)
                await done

            async def lp_oneway(n: int) -> None:
                acked = loop.create_future()
                await libproc.dispatch(blaster_pid, "blast", n, sizes.chunk, acked)
                got = await acked
                if got != n:
                    raise RuntimeError(f"libproc one-way: sink counted {got} of {n}")

            async def raw_oneway(n: int) -> None:
                got = await raw.blast(n)  # type: ignore[union-attr]
                if got != n:
                    raise RuntimeError(f"raw one-way: server counted {got} of {n}")

            s = sizes
            plan: list[tuple[Figure, Callable[[int], Awaitable[Any]]]] = [
                (Figure("inproc/asyncio_queue", loop_name, "rt/s", s.inproc), queue_pingpong),
                (
                    Figure("inproc/libproc", loop_name, "rt/s", s.inproc),
                    lambda n: lp_rt(local_ping, n),
                ),
                (Figure("cross_rt/raw_pyzmq", loop_name, "rt/s", s.cross_rt), raw.round_trips),
                (
                    Figure("cross_rt/libproc", loop_name, "rt/s", s.cross_rt),
                    lambda n: lp_rt(remote_ping, n),
                ),
                (
                    Figure("cross_rt/zmq_asyncio", loop_name, "rt/s", s.cross_rt),
                    lambda n: zmq_asyncio_round_trips(asock, n),  # type: ignore[arg-type]
                ),
                (Figure("oneway/raw_pyzmq", loop_name, "msg/s", s.oneway), raw_oneway),
                (Figure("oneway/libproc", loop_name, "msg/s", s.oneway), lp_oneway),
            ]
            if only:
                plan = [(fig, run) for fig, run in plan if fig.key.split("/")[0] in only]
            # Warm up: connections made, code paths hot, caches filled.
            for fig, run in plan:
                await timed(f"{fig.key} warm-up", max(100, fig.n // 10), run)
            for i in range(s.runs):
                for fig, run in plan:
                    fig.rates.append(await timed(fig.key, fig.n, run))
                log(f"  {loop_name}: run {i + 1}/{s.runs} done")
            return [fig for fig, _ in plan]
    finally:
        if raw is not None:
            raw.close()
        if asock is not None:
            asock.close(linger=0)
        if actx is not None:
            actx.term()
        await loop.run_in_executor(None, child.stop)


# ---------------------------------------------------------------------- peers (thread-based)


def pykka_pingpong(n: int) -> float | None:
    try:
        import pykka
    except ImportError:
        return None

    class PPong(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> None:
            message[1].tell(("pong", message[2]))

    class PPing(pykka.ThreadingActor):
        def __init__(self) -> None:
            super().__init__()
            self.left = 0
            self.peer: Any = None
            self.finished: threading.Event | None = None

        def on_receive(self, message: Any) -> None:
            if message[0] == "start":
                _, self.left, self.peer, self.finished = message
                self.peer.tell(("ping", self.actor_ref, self.left))
                return
            self.left -= 1
            if self.left:
                self.peer.tell(("ping", self.actor_ref, self.left))
            else:
                self.finished.set()  # type: ignore[union-attr]

    pong = PPong.start()
    ping = PPing.start()
    try:
        finished = threading.Event()
        t0 = time.perf_counter()
        ping.tell(("start", n, pong, finished))
        if not finished.wait(120):
            raise RuntimeError("pykka ping-pong did not finish")
        return n / (time.perf_counter() - t0)
    finally:
        ping.stop()
        pong.stop()


try:  # thespian wants its actor classes at module level
    from thespian.actors import Actor as _ThespianActor
    from thespian.actors import ActorSystem as _ThespianSystem

    class TPong(_ThespianActor):
        def receiveMessage(self, message: Any, sender: Any) -> None:
            if isinstance(message, int):
                self.send(sender, message)

    class TPing(_ThespianActor):
        def receiveMessage(self, message: Any, sender: Any) -> None:
            if isinstance(message, tuple):  # ("start", n, pong) from the asking thread
                _, self.left, self.peer = message
                self.client = sender
                self.send(self.peer, self.left)
            elif isinstance(message, int):  # a pong
                self.left -= 1
                if self.left:
                    self.send(self.peer, self.left)
                else:
                    self.send(self.client, "done")

except ImportError:  # reported as skipped
    _ThespianSystem = None


def thespian_pingpong(n: int) -> float | None:
    if _ThespianSystem is None:
        return None
    # simpleSystemBase runs every actor in the calling thread, inside ask().
    system = _ThespianSystem("simpleSystemBase", logDefs=False)
    try:
        ping = system.createActor(TPing)
        pong = system.createActor(TPong)
        t0 = time.perf_counter()
        answer = system.ask(ping, ("start", n, pong), 120)
        if answer != "done":
            raise RuntimeError(f"thespian ping-pong answered {answer!r}")
        return n / (time.perf_counter() - t0)
    finally:
        system.shutdown()


def measure_peers(sizes: Sizes, log: Callable[[str], None]) -> list[Figure]:
    out = []
    for name, fn in (("pykka", pykka_pingpong), ("thespian", thespian_pingpong)):
        fig = Figure(f"inproc/{name}", "-", "rt/s", sizes.peers)
        if fn(max(100, sizes.peers // 10)) is None:
            log(f"  {name} is not installed: skipped (pip install '.[bench]')")
            continue
        for _ in range(sizes.runs):
            fig.rates.append(fn(sizes.peers))  # type: ignore[arg-type]
        out.append(fig)
    return out


# ====================================================================== report

# (figure, baseline, target ratio); a target is met when libproc/baseline >= target.
TARGETS = [
    ("inproc/libproc", "inproc/asyncio_queue", 0.6),
    ("cross_rt/libproc", "cross_rt/raw_pyzmq", 0.9),
    ("oneway/libproc", "oneway/raw_pyzmq", 2.0),
]
REFERENCES = [("cross_rt/libproc", "cross_rt/zmq_asyncio")]

TITLES = {
    "inproc": "in-process ping-pong",
    "cross_rt": "cross-process round trip (TCP loopback)",
    "oneway": "cross-process one-way pipelined",
}


def build_report(
    figures: list[Figure], sizes: Sizes, elapsed: float, load: dict[str, list[float]]
) -> dict[str, Any]:
    by = {(f.key, f.loop): f for f in figures}
    ratios = []
    for fig, base, target in [*TARGETS, *((f, b, None) for f, b in REFERENCES)]:
        for loop_name in LOOPS:
            a, b = by.get((fig, loop_name)), by.get((base, loop_name))
            if a is None or b is None:
                continue
            ratio = a.median / b.median
            # Runs were interleaved, so run i of each pair saw the same minute of the machine.
            paired = [x / y for x, y in zip(a.rates, b.rates, strict=False) if y]
            ratios.append(
                {
                    "figure": fig,
                    "baseline": base,
                    "loop": loop_name,
                    "ratio": ratio,
                    "paired_ratio_median": statistics.median(paired) if paired else None,
                    "target": target,
                    "met": None if target is None else ratio >= target,
                }
            )
    targets = [r for r in ratios if r["target"] is not None]
    return {
        "machine": {k: v for k, v in describe().items() if k != "load_average_before"},
        "config": {**sizes.__dict__, "elapsed_s": elapsed, **load},
        "figures": [f.as_json() for f in figures],
        "ratios": ratios,
        "targets_met": all(r["met"] for r in targets),
        "targets": {f"{r['figure']} [{r['loop']}]": r["met"] for r in targets},
    }


def format_table(report: dict[str, Any]) -> str:
    figs = report["figures"]
    ratio_of = {(r["figure"], r["loop"]): r for r in report["ratios"] if r["target"] is not None}
    ref_of = {(r["figure"], r["loop"]): r for r in report["ratios"] if r["target"] is None}
    lines = [f"{'figure':<34}{'loop':<9}{'median':>12}  {'unit':<6}{'spread':>8}  vs baseline"]
    lines.append("-" * 100)
    current = None
    for f in sorted(figs, key=lambda f: (list(TITLES).index(f["figure"].split("/")[0]),)):
        group = f["figure"].split("/")[0]
        if group != current:
            current = group
            lines.append(f"{TITLES[group]}:")
        rates = f["runs"]
        spread = (max(rates) - min(rates)) / f["median"] * 100 if rates else 0.0
        note = ""
        r = ratio_of.get((f["figure"], f["loop"]))
        if r is not None:
            verdict = "ok" if r["met"] else "MISSED"
            base = r["baseline"].split("/")[1]
            note = f"{r['ratio']:.2f}x {base} (target >= {r['target']}x: {verdict})"
        ref = ref_of.get((f["figure"], f["loop"]))
        if ref is not None:
            note += f"; {ref['ratio']:.2f}x {ref['baseline'].split('/')[1]}"
        name = "  " + f["figure"].split("/")[1]
        lines.append(
            f"{name:<34}{f['loop']:<9}{f['median']:>12,.0f}  {f['unit']:<6}{spread:>7.0f}%  {note}"
        )
    met = sum(1 for v in report["targets"].values() if v)
    lines.append("-" * 100)
    lines.append(
        f"targets met: {met}/{len(report['targets'])}; medians of {report['config']['runs']} runs;"
        " spread = (max-min)/median"
    )
    return "\n".join(lines)


# ====================================================================== main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.libproc_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure and ratio here")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (< 1 min)")
    parser.add_argument("--runs", type=int, help="runs per figure (median is reported)")
    parser.add_argument("--loops", default=",".join(LOOPS), help="comma-separated: uvloop,asyncio")
    parser.add_argument("--no-peers", action="store_true", help="skip pykka and thespian")
    parser.add_argument(
        "--only", help="comma-separated groups to measure: inproc,cross_rt,oneway (default all)"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve:
        libproc.run(serve())
        return 0

    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = Sizes(**{**sizes.__dict__, "runs": args.runs})
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    for name in loops:
        if name not in LOOPS:
            parser.error(f"unknown loop {name!r}")
    only = {g.strip() for g in args.only.split(",")} if args.only else None
    if only and not only <= set(TITLES):
        parser.error(f"--only takes groups from {sorted(TITLES)}")
    libproc.configure_logging(level="error")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    load = {"loadavg_start": list(os.getloadavg())}
    figures: list[Figure] = []
    for name in loops:
        log(f"measuring on {name} ({sizes.runs} runs)...")
        figures += libproc.run(measure_loop(name, sizes, log, only), loop=name)
    if not args.no_peers and (not only or "inproc" in only):
        log("measuring peers...")
        figures += measure_peers(sizes, log)
    load["loadavg_end"] = list(os.getloadavg())
    report = build_report(figures, sizes, time.perf_counter() - started, load)
    m, c = report["machine"], report["config"]
    print(
        f"libproc bench: {m['cpu_count']} cpus, Python {m['python']}, {m['platform']},"
        f" libzmq {m['libzmq']}, {c['elapsed_s']:.0f}s, load average"
        f" {c['loadavg_start'][0]:.1f} -> {c['loadavg_end'][0]:.1f}"
    )
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
