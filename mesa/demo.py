"""``python -m mesa.demo``: what ``make demo`` runs.

Starts a local cluster (``mesa.local``: a master and two agents) as a child process, runs the
example framework ``examples/run_n.py`` against it with a handful of real shell tasks, prints what
the tasks wrote and a summary of ``/master/state``, and stops everything — also when something
fails on the way, so a demo never leaves processes behind. Its work dir is removed at the end unless
``MESA_DEMO_KEEP=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port_pair() -> int:
    """A port p with p and p+1 free (libproc and HTTP)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def _wait_for_line(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"the cluster exited with status {proc.returncode}")
            continue
        print(f"  | {line.rstrip()}")
        if marker in line:
            return line
    raise TimeoutError(f"no {marker!r} from the cluster within {timeout}s")


def main() -> int:
    port = _free_port_pair()
    work_dir = Path(os.environ.get("MESA_DEMO_DIR", "/tmp")) / f"mesa-demo-{os.getpid()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"== starting a local cluster: master on 127.0.0.1:{port}, 2 agents, in {work_dir}")
    cluster = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mesa.local",
            "--agents=2",
            f"--port={port}",
            f"--work-dir={work_dir}",
            "--allocation-interval=0.2",
            "--resources=cpus:2;mem:1024;disk:2048;ports:[31000-32000]",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    status = 1
    try:
        _wait_for_line(cluster, "local cluster ready", timeout=60)
        print("== running examples/run_n.py: 6 tasks, each a real shell command")
        command = 'echo "hello from $MESA_TASK_ID on $(hostname), pid $$"; sleep 0.2'
        framework = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "run_n.py"),
                f"--master=127.0.0.1:{port}",
                "--count=6",
                f"--command={command}",
                "--cpus=0.5",
                "--mem=64",
                "--name=demo",
            ],
            env=env,
            timeout=120,
        )
        print(f"== the framework exited with status {framework.returncode}")
        print("== what the tasks wrote (stdout files in their sandboxes):")
        for path in sorted(work_dir.rglob("stdout")):
            text = path.read_text().strip()
            if text:
                print(f"  {path.relative_to(work_dir)}:\n    {text}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port + 1}/master/state", timeout=10) as r:
            state = json.load(r)
        print("== /master/state")
        print(f"  agents: {len(state['agents'])}, total resources: {state['resources']['total']}")
        for fw in state["frameworks"] + state["completed_frameworks"]:
            states: dict[str, int] = {}
            for t in fw["tasks"] + fw["completed_tasks"]:
                states[t["state"]] = states.get(t["state"], 0) + 1
            print(f"  framework {fw['name']} ({fw['id'][:8]}…): {states}")
        status = framework.returncode
    finally:
        print("== stopping the cluster")
        cluster.send_signal(signal.SIGTERM)
        try:
            cluster.wait(timeout=30)
        except subprocess.TimeoutExpired:
            cluster.kill()
            cluster.wait()
        if cluster.stdout is not None:
            for line in cluster.stdout:
                print(f"  | {line.rstrip()}")
        if not os.environ.get("MESA_DEMO_KEEP"):
            shutil.rmtree(work_dir, ignore_errors=True)
    print("== demo", "succeeded" if status == 0 else f"failed (status {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
