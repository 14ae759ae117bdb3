"""Real mesa daemons for end-to-end tests: each node a separate OS process on loopback.

``Node`` starts ``python -m mesa.node`` and reads the line it prints at start to learn its
endpoints; ``Cluster`` keeps track of every process it started — and every descendant of them,
executors and tasks included — and kills exactly those at teardown, even when the test failed.
Nothing is ever killed by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
_STARTED = re.compile(r"mesa (master|agent) started: pid=(\S+) http=(\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("LIBPROC_LOG_LEVEL", "warning")
    return e


class Node:
    """One ``mesa.node`` process."""

    def __init__(self, role: str, args: list[str], log_path: Path) -> None:
        self.role = role
        self.args = args
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.pid_text = ""
        self.http = ""
        self.known_pids: set[int] = set()

    async def start(self, timeout: float = 30.0) -> Node:
        log = open(self.log_path, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mesa.node",
            f"--role={self.role}",
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=env(),
        )
        log.close()
        self.known_pids.add(self.proc.pid)
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(
                        f"{self.role} exited early:\n{self.log_path.read_text()[-3000:]}"
                    )
                m = _STARTED.search(line)
                if m:
                    self.pid_text, self.http = m.group(2), m.group(3)
                    return self

    @property
    def endpoint(self) -> str:
        return self.pid_text.split("@", 1)[1]

    def remember_descendants(self) -> None:
        """Note every process below this node now, so teardown can kill them by pid."""
        if self.proc is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.known_pids.add(child.pid)

    def kill9(self) -> None:
        self.remember_descendants()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        self.remember_descendants()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    def state(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.http}{path}", timeout=10) as r:
            return json.load(r)


class Cluster:
    """A master and agents as real processes; ``await close()`` leaves nothing behind."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.nodes: list[Node] = []
        self.master: Node | None = None
        self.agent_dirs: set[Path] = set()

    async def start_master(self, *extra: str) -> Node:
        port = free_port()
        node = Node(
            "master",
            [
                "--ip=127.0.0.1",
                f"--port={port}",
                "--http-port=0",
                f"--work-dir={self.work_dir / 'master'}",
                "--allocation-interval=0.1",
                *extra,
            ],
            self.work_dir / "master.log",
        )
        self.nodes.append(node)
        self.master = await node.start()
        return node

    async def start_agent(
        self,
        name: str = "agent",
        resources: str = "cpus:2;mem:1024;disk:1024;ports:[31000-31100]",
        *extra: str,
        command_tasks: str | None = None,
    ) -> Node:
        """An agent; ``command_tasks`` (``--command-tasks``): how it runs command tasks, when
        not its default."""
        assert self.master is not None
        if command_tasks is not None:
            extra = (*extra, f"--command-tasks={command_tasks}")
        node = Node(
            "agent",
            [
                f"--master={self.master.endpoint}",
                "--ip=127.0.0.1",
                "--port=0",
                "--http-port=0",
                f"--work-dir={self.work_dir / name}",
                f"--resources={resources}",
                *extra,
            ],
            self.work_dir / f"{name}.log",
        )
        self.nodes.append(node)
        self.agent_dirs.add(self.work_dir / name)
        return await node.start()

    async def close(self) -> None:
        from mesa.actors.agent import agent_cgroups_root
        from mesa.isolators.cgroupfs import purge

        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                await node.stop()
        for node in self.nodes:
            for pid in node.known_pids:
                with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                    psutil.Process(pid).kill()
        # An agent killed with SIGKILL leaves its containers' cgroups (and anything in them).
        for work_dir in self.agent_dirs:
            purge(agent_cgroups_root(work_dir))

    async def wait_for(self, predicate: Any, what: str, timeout: float = 30.0) -> Any:
        """Until ``predicate(state)`` holds for the master's /master/state (HTTP has no push)."""
        assert self.master is not None
        master = self.master
        seen: list[Any] = [None]

        async def check() -> Any:
            seen[0] = await asyncio.to_thread(master.state, "/master/state")
            return predicate(seen[0])

        try:
            return await eventually(check, what, timeout)
        except TimeoutError:
            raise TimeoutError(f"{what}; last state: {json.dumps(seen[0])[:2000]}") from None
