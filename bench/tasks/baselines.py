"""The yardsticks of ``bench.tasks``: the same shell commands run by xargs, Ray and Dask.

Each baseline runs in a child process of its own (``python -m bench.tasks.baselines KIND ...``)
so that a framework's daemons (Ray's raylet and GCS, Dask's scheduler and workers) are
descendants of a pid the bench started, and can be killed by pid if the framework's own shutdown
fails; the child prints one JSON line with its figures.

Every baseline runs the command exactly as mesa's command executor does, ``sh -c COMMAND``, so
the comparison is the cost of the machinery around the same fork/exec.

``cgroups`` is the floor of per-task cgroups rather than another scheduler: xargs, but each task
gets a fresh cgroup in each v1 hierarchy mesa's ``cgroups`` isolation uses, with the limits it
writes, and is born in them the way mesa's zygote starts a command (see :func:`run_cgroups`). What
the kernel charges for that is paid by anything that gives every task cgroups of its own, so
mesa under cgroups is best judged against it as well as against plain xargs.

Ray and Dask run the command through ``subprocess.run`` inside a worker, with as many workers as
the bench asks for (cores, by default). Their start-up (``ray.init``, the ``LocalCluster``) and one
warm-up round are not timed: only the tasks are, as for mesa's warm cluster.

``--repeat N`` times the N-task batch N times (Ray and Dask on the one cluster they started) and
reports the median as ``seconds``, every run in ``runs_s``: one batch of a thousand short tasks
takes about a second, and on a shared VM single seconds vary by a third.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["CGROUP_SUBSYSTEMS", "run_cgroups", "run_dask", "run_ray", "run_xargs"]

# The v1 hierarchies ``--isolation=cgroups`` gives each container a cgroup in: cgroups/cpu
# (cpu, cpuacct), cgroups/mem (memory), cgroups/pids (pids).
CGROUP_SUBSYSTEMS = ("cpu", "cpuacct", "memory", "pids")


def run_xargs(command: str, count: int, parallel: int) -> dict[str, Any]:
    """``xargs -P parallel`` running ``sh -c command`` ``count`` times: the fork/exec limit."""
    args = ["xargs", "-0", "-P", str(parallel), "-n", "1", "sh", "-c", f"{command}", "sh"]
    data = b"\0".join(b"x" for _ in range(count)) + b"\0"
    start = time.perf_counter()
    proc = subprocess.run(args, input=data, stdout=subprocess.DEVNULL, check=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "ok": proc.returncode == 0, "workers": parallel}


def run_cgroups(
    command: str,
    count: int,
    parallel: int,
    *,
    task_cpus: float = 0.1,
    task_mem_mb: float = 16.0,
    subsystems: tuple[str, ...] = CGROUP_SUBSYSTEMS,
) -> dict[str, Any]:
    """``count`` runs of ``sh -c command`` by ``parallel`` workers, each in fresh cgroups.

    Per task a worker does what the kernel must be asked for a container of its own and nothing
    else: ``mkdir`` of a cgroup in each hierarchy of ``subsystems``; the limits mesa writes for
    such a task (``cpu.shares``, ``memory.limit_in_bytes``, ``memory.oom_control``,
    ``pids.max``); moves its thread into them, ``posix_spawn``s the command (born inside) and
    moves back, as mesa's zygote does; waits for it; ``rmdir`` of each cgroup. No actor, no
    message, no Python between the syscalls beyond the loop: the per-task-cgroups limit, as
    xargs is the fork/exec limit. Skipped (``{"skipped": why}``) where those hierarchies are not
    mounted as v1 and writable, or this process cannot see its own cgroup in them.
    """
    from mesa.isolators.cgroupfs import mounts, own_v1_cgroups, purge

    where = mounts()
    missing = [s for s in subsystems if s not in where.v1_writable]
    if missing:
        return {"skipped": f"cgroups: no writable v1 hierarchy for {', '.join(missing)}"}
    homes = own_v1_cgroups()
    mounts_of = [str(where.v1[s]) for s in subsystems]
    if not homes or any(m not in homes for m in mounts_of):
        return {"skipped": "cgroups: this process's own cgroups are not visible to move back to"}
    roots = [os.path.join(m, f"mesa-bench-floor-{os.getpid()}") for m in mounts_of]
    values = {
        "cpu": [("cpu.shares", max(2, int(1024 * task_cpus)))],
        "memory": [
            ("memory.limit_in_bytes", int(task_mem_mb * 1024 * 1024)),
            ("memory.oom_control", 1),
        ],
        "pids": [("pids.max", 1024)],
    }
    limits = [values.get(s, []) for s in subsystems]
    for root in roots:
        os.mkdir(root)
    workers: list[int] = []
    try:
        start = time.perf_counter()
        for w in range(parallel):
            share = count // parallel + (1 if w < count % parallel else 0)
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                code = 1
                try:
                    code = _cgroups_worker(command, w, share, roots, limits, homes, mounts_of)
                finally:
                    os._exit(code)
            workers.append(pid)
        failed = 0
        for pid in workers:
            _, status = os.waitpid(pid, 0)
            failed += os.waitstatus_to_exitcode(status) != 0
        workers.clear()
        seconds = time.perf_counter() - start
    finally:
        for pid in workers:  # (only when something above failed)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        # What a failed run left (members killed), then the roots, in every hierarchy.
        purge(os.path.basename(roots[0]), where)
    return {"seconds": seconds, "ok": failed == 0, "workers": parallel, "subsystems": subsystems}


def _cgroups_worker(
    command: str,
    worker: int,
    count: int,
    roots: list[str],
    limits: list[list[tuple[str, int]]],
    homes: dict[str, str],
    mounts_of: list[str],
) -> int:
    """One worker of :func:`run_cgroups`; its exit status is the number of failed tasks
    (at most 100)."""
    home_fds = [os.open(os.path.join(homes[m], "tasks"), os.O_WRONLY) for m in mounts_of]
    argv = ["sh", "-c", command]
    env = dict(os.environ)
    failed = 0
    for i in range(count):
        dirs = [f"{root}/w{worker}-{i}" for root in roots]
        for d, files in zip(dirs, limits, strict=True):
            os.mkdir(d)
            for name, value in files:
                _write(f"{d}/{name}", value)
        for d in dirs:
            _write(f"{d}/tasks", 0)  # "0": the writing thread, as the zygote moves itself
        try:
            pid = os.posix_spawn("/bin/sh", argv, env, setsid=True)
        finally:
            for fd in home_fds:
                os.write(fd, b"0")
        _, status = os.waitpid(pid, 0)
        failed += status != 0
        for d in dirs:
            _rmdir_when_empty(d)
    return min(failed, 100)


def _write(path: str, value: object) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _rmdir_when_empty(path: str) -> None:
    """``rmdir``, retried while the kernel still counts the reaped child as a member."""
    for _ in range(1000):
        try:
            os.rmdir(path)
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.001)
    os.rmdir(path)


def _shell(command: str) -> int:
    return subprocess.run(["sh", "-c", command], check=False).returncode


def _timed_runs(batch: Callable[[], bool], repeat: int) -> dict[str, Any]:
    """``batch()`` (True if every task succeeded) ``repeat`` times: the median and each run."""
    runs, ok = [], True
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        ok = batch() and ok
        runs.append(time.perf_counter() - start)
    return {"seconds": statistics.median(runs), "runs_s": runs, "ok": ok}


def repeated(result: Callable[[], dict[str, Any]], repeat: int) -> dict[str, Any]:
    """A whole baseline (xargs, cgroups) ``repeat`` times: the median run's figures, with every
    run's ``seconds`` in ``runs_s``."""
    results = [result() for _ in range(max(1, repeat))]
    if "skipped" in results[0]:
        return results[0]
    ordered = sorted(results, key=lambda r: r["seconds"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["seconds"] = statistics.median(r["seconds"] for r in results)
    out["runs_s"] = [r["seconds"] for r in results]
    out["ok"] = all(r["ok"] for r in results)
    return out


def run_ray(command: str, count: int, workers: int, repeat: int = 1) -> dict[str, Any]:
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        init_s = time.perf_counter() - started
        remote = ray.remote(num_cpus=1)(_shell)
        ray.get([remote.remote(command) for _ in range(workers * 4)])  # warm every worker
        timed = _timed_runs(
            lambda: all(c == 0 for c in ray.get([remote.remote(command) for _ in range(count)])),
            repeat,
        )
        one = []
        for _ in range(5):
            t = time.perf_counter()
            ray.get(remote.remote(command))
            one.append(time.perf_counter() - t)
    finally:
        ray.shutdown()
    return {
        **timed,
        "workers": workers,
        "start_s": init_s,
        "latency_s": sorted(one)[len(one) // 2],
        "version": ray.__version__,
    }


def run_dask(command: str, count: int, workers: int, repeat: int = 1) -> dict[str, Any]:
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
        timed = _timed_runs(
            lambda: all(
                c == 0 for c in client.gather(client.map(_shell, [command] * count, pure=False))
            ),
            repeat,
        )
        one = []
        for _ in range(5):
            t = time.perf_counter()
            client.submit(_shell, command, pure=False).result()
            one.append(time.perf_counter() - t)
    return {
        **timed,
        "workers": workers,
        "start_s": init_s,
        "latency_s": sorted(one)[len(one) // 2],
        "version": dask.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tasks.baselines")
    p.add_argument("kind", choices=["xargs", "cgroups", "ray", "dask"])
    p.add_argument("--command", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--task-cpus", type=float, default=0.1, help="cgroups: the cpu.shares basis")
    p.add_argument("--task-mem", type=float, default=16.0, help="cgroups: the memory limit (MB)")
    p.add_argument("--repeat", type=int, default=1, help="timed batches (the median is reported)")
    args = p.parse_args(argv)
    try:
        if args.kind == "cgroups":
            result = repeated(
                lambda: run_cgroups(
                    args.command,
                    args.count,
                    args.workers,
                    task_cpus=args.task_cpus,
                    task_mem_mb=args.task_mem,
                ),
                args.repeat,
            )
        elif args.kind == "xargs":
            result = repeated(
                lambda: run_xargs(args.command, args.count, args.workers), args.repeat
            )
        else:
            runner = {"ray": run_ray, "dask": run_dask}[args.kind]
            result = runner(args.command, args.count, args.workers, args.repeat)
    except ImportError as e:
        result = {"skipped": f"{args.kind} is not installed ({e.name})"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
