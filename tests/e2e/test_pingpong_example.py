"""End-to-end: examples/pingpong.py as real OS processes.

The two sides ping-pong over ZeroMQ on loopback, and each notices the other's end: a graceful one
(the runtime tells linkers) and a ``kill -9`` (the TCP connection drops, the socket monitor sees
it). Each process logs JSON lines on stderr; a thread per process reads them into a queue, and
the tests wait for particular lines or for process exit, always with a timeout — never a sleep.
Every process a test starts is killed (by its own pid) in a ``finally`` if it is still running.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pingpong.py"
TIMEOUT = 30.0  # generous: a loaded two-core CI machine can be slow to start Python processes

pytestmark = pytest.mark.timeout(120)


class Side:
    """One ``pingpong.py`` process and the log lines it has written so far."""

    def __init__(self, role: str, *args: str, loop: str = "uvloop") -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self.role = role
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLE),
                role,
                *args,
                "--log-format=json",
                "--log-level=info",
                f"--loop={loop}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        self.pid = self.proc.pid
        self.upid = ""  # the actor's UPID, from its "started" line
        self.seen: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._eof = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                record = json.loads(raw)
            except ValueError:  # a traceback, say: keep it for the failure message
                record = {"event": "<text>", "text": raw.decode(errors="replace").rstrip()}
            self._lines.put(record)
        self._lines.put(None)

    def expect(self, event: str, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        """The next log line with this event (and these fields), waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.role}: no {event!r} {fields} within {timeout}s\n{self.transcript()}"
                )
            if self._eof:
                raise AssertionError(
                    f"{self.role} exited ({self.proc.poll()}) before {event!r} {fields}\n"
                    f"{self.transcript()}"
                )
            try:
                record = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if record is None:
                self._eof = True
                continue
            self.seen.append(record)
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                return record

    def started(self) -> Side:
        self.upid = self.expect("started")["pid"]
        return self

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.role} did not exit within {timeout}s\n{self.transcript()}"
            ) from None

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)  # this process, by the pid we started it with
        self.proc.wait(TIMEOUT)

    def transcript(self) -> str:
        return "\n".join(json.dumps(r) for r in self.seen[-30:])


@pytest.fixture
def start() -> Iterator[Callable[..., Side]]:
    """Start pingpong.py processes; whatever is still running at the end is killed and reaped."""
    sides: list[Side] = []

    def _start(role: str, *args: str, loop: str = "uvloop") -> Side:
        side = Side(role, *args, loop=loop)
        sides.append(side)
        return side.started()

    try:
        yield _start
    finally:
        for side in sides:
            if side.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(side.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                side.proc.wait(10)
            if side.proc.stderr is not None:
                side.proc.stderr.close()


def test_ping_pongs_count_times_and_pong_sees_it_leave(start: Callable[..., Side]) -> None:
    pong = start("pong", "--port=0")
    ping = start("ping", f"--pong={pong.upid}", "--count=5", "--interval=0")

    for seq in range(1, 6):
        line = ping.expect("pong", seq=seq)
        assert line["rtt_ms"] >= 0
    ping.expect("done", pongs=5)
    assert ping.wait() == 0  # every ping answered

    pong.expect("new_pinger", pinger=ping.upid)
    # ping ended gracefully, so its runtime told the linked pong before closing.
    pong.expect("exited", peer=ping.upid, answered=5)
    assert pong.proc.poll() is None  # a pong outlives its pingers


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_kill_9_pong_makes_ping_report_exited_and_stop(
    start: Callable[..., Side], loop: str
) -> None:
    pong = start("pong", "--port=0", loop=loop)
    ping = start("ping", f"--pong={pong.upid}", "--interval=0.05", loop=loop)  # forever
    ping.expect("pong", seq=3)

    pong.kill9()

    # No goodbye was sent: the ping side learns from the dropped connection.
    exited = ping.expect("exited", peer=pong.upid)
    assert exited["pongs"] >= 3
    assert ping.wait() == 1  # it lost the actor it exists to talk to


def test_kill_9_ping_makes_pong_report_exited_and_serve_on(start: Callable[..., Side]) -> None:
    pong = start("pong", "--port=0")
    first = start("ping", f"--pong={pong.upid}", "--interval=0.05")
    first.expect("pong", seq=2)
    pong.expect("new_pinger", pinger=first.upid)

    first.kill9()

    pong.expect("exited", peer=first.upid)
    second = start("ping", f"--pong={pong.upid}", "--count=2", "--interval=0")
    second.expect("done", pongs=2)
    assert second.wait() == 0
    assert pong.proc.poll() is None


def test_pong_leaving_gracefully_stops_ping(start: Callable[..., Side]) -> None:
    pong = start("pong", "--port=0", "--exit-after=3")
    ping = start("ping", f"--pong={pong.upid}", "--interval=0")  # forever

    pong.expect("done", answered=3)
    assert pong.wait() == 0
    ping.expect("exited", peer=pong.upid, pongs=3)  # every answer arrived before the goodbye
    assert ping.wait() == 1


def test_ping_without_a_pong_gives_up_after_the_connect_timeout(
    start: Callable[..., Side],
) -> None:
    # Nothing listens on this port (we bound it, then closed it), so the link is never confirmed.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ping = start("ping", f"--pong=pong@127.0.0.1:{port}", "--connect-timeout=0.5")
    ping.expect("exited", peer=f"pong@127.0.0.1:{port}", pongs=0)
    assert ping.wait() == 1
