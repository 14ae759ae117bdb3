"""``python -m bench.tasks [--json PATH]``: real tasks on a real local cluster, against xargs,
Ray and Dask. See :mod:`bench.tasks.run` for what is measured and how."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench.tasks.run import Config, format_report, run
from libproc import configure_logging


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(prog="python -m bench.tasks", description=__doc__)
    p.add_argument("--tasks", type=int, default=d.true_tasks, help="how many `true` tasks")
    p.add_argument(
        "--runs",
        type=int,
        default=d.true_runs,
        help="batches of `true` tasks timed, for mesa and each baseline (the median is reported)",
    )
    p.add_argument("--sleep-tasks", type=int, default=d.sleep_tasks, help="how many sleep tasks")
    p.add_argument("--sleep", type=float, default=d.sleep_seconds, help="seconds each one sleeps")
    p.add_argument("--latency-runs", type=int, default=d.latency_runs)
    p.add_argument("--cores", type=int, default=d.cores, help="workers for xargs, Ray and Dask")
    p.add_argument("--task-cpus", type=float, default=d.task_cpus, help="cpus each task asks for")
    p.add_argument(
        "--isolation", default=",".join(d.isolation), help="isolation modes: posix,cgroups"
    )
    p.add_argument(
        "--baselines", default=",".join(d.baselines), help="which of xargs,ray,dask to run"
    )
    p.add_argument(
        "--work-dir",
        default=None,
        help="where the clusters keep their files (default: /dev/shm if it is a tmpfs, else the"
        " temporary directory; see bench/tasks/run.py for why)",
    )
    p.add_argument(
        "--no-paired-limits",
        action="store_true",
        help="do not time xargs (and the per-task-cgroups limit) before each of mesa's batches",
    )
    p.add_argument(
        "--no-limits-after",
        action="store_true",
        help="time xargs, the per-task-cgroups limit and Ray only before mesa, not also after",
    )
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.tasks, args.runs, args.latency_runs, args.cores) < 1 or args.sleep_tasks < 0:
        print("counts must be positive", file=sys.stderr)
        return 2
    cfg = Config(
        true_tasks=args.tasks,
        true_runs=args.runs,
        sleep_tasks=args.sleep_tasks,
        sleep_seconds=args.sleep,
        latency_runs=args.latency_runs,
        cores=args.cores,
        task_cpus=args.task_cpus,
        isolation=tuple(x for x in args.isolation.split(",") if x),
        baselines=tuple(x for x in args.baselines.split(",") if x),
        work_dir=args.work_dir,
        limits_after=not args.no_limits_after,
        paired_limits=not args.no_paired_limits,
    )
    os.environ.setdefault("LIBPROC_LOG_LEVEL", "warning")
    configure_logging(level=os.environ["LIBPROC_LOG_LEVEL"])
    report = run(cfg, lambda line: print(line, flush=True))
    print()
    print(format_report(cfg, report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
