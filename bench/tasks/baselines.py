"""The yardsticks of ``bench.tasks``: the same shell commands run by xargs, Ray and Dask.

Each baseline runs in a child process of its own (``python -m bench.tasks.baselines KIND ...``)
so that a framework's daemons (Ray's raylet and GCS, Dask's scheduler and workers) are
descendants of a pid the bench started, and can be killed by pid if the framework's own shutdown
fails; the child prints one JSON line with its figures.

Every baseline runs the command exactly as mesa's command executor does, ``sh -c COMMAND``, so
the comparison is the cost of the machinery around the same fork/exec. Ray and Dask run it through
``subprocess.run`` inside a worker, with as many workers as the bench asks for (cores, by
default). Their start-up (``ray.init``, the ``LocalCluster``) and one warm-up round are not timed:
only the tasks are, as for mesa's warm cluster.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

__all__ = ["run_dask", "run_ray", "run_xargs"]


def run_xargs(command: str, count: int, parallel: int) -> dict[str, Any]:
    """``xargs -P parallel`` running ``sh -c command`` ``count`` times: the fork/exec limit."""
    args = ["xargs", "-0", "-P", str(parallel), "-n", "1", "sh", "-c", f"{command}", "sh"]
    data = b"\0".join(b"x" for _ in range(count)) + b"\0"
    start = time.perf_counter()
    proc = subprocess.run(args, input=data, stdout=subprocess.DEVNULL, check=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "ok": proc.returncode == 0, "workers": parallel}


def _shell(command: str) -> int:
    return subprocess.run(["sh", "-c", command], check=False).returncode


def run_ray(command: str, count: int, workers: int) -> dict[str, Any]:
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        init_s = time.perf_counter() - started
        remote = ray.remote(num_cpus=1)(_shell)
        ray.get([remote.remote(command) for _ in range(workers * 4)])  # warm every worker
        start = time.perf_counter()
        codes = ray.get([remote.remote(command) for _ in range(count)])
        seconds = time.perf_counter() - start
        one = []
        for _ in range(5):
            t = time.perf_counter()
            ray.get(remote.remote(command))
            one.append(time.perf_counter() - t)
    finally:
        ray.shutdown()
    return {
        "seconds": seconds,
        "ok": all(c == 0 for c in codes),
        "workers": workers,
        "start_s": init_s,
        "latency_s": sorted(one)[len(one) // 2],
        "version": ray.__version__,
    }


def run_dask(command: str, count: int, workers: int) -> dict[str, Any]:
    import dask
    from distributed import Client, LocalCluster

    started = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        init_s = time.perf_counter() - started
        client.gather(client.map(_shell, [command] * (workers * 4), pure=False))
        start = time.perf_counter()
        codes = client.gather(client.map(_shell, [command] * count, pure=False))
        seconds = time.perf_counter() - start
        one = []
        for _ in range(5):
            t = time.perf_counter()
            client.submit(_shell, command, pure=False).result()
            one.append(time.perf_counter() - t)
    return {
        "seconds": seconds,
        "ok": all(c == 0 for c in codes),
        "workers": workers,
        "start_s": init_s,
        "latency_s": sorted(one)[len(one) // 2],
        "version": dask.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tasks.baselines")
    p.add_argument("kind", choices=["xargs", "ray", "dask"])
    p.add_argument("--command", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    args = p.parse_args(argv)
    runner = {"xargs": run_xargs, "ray": run_ray, "dask": run_dask}[args.kind]
    try:
        result = runner(args.command, args.count, args.workers)
    except ImportError as e:
        result = {"skipped": f"{args.kind} is not installed ({e.name})"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
