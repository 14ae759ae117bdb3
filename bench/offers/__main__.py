"""``python -m bench.offers [--quick] [--json PATH]``: the offer-throughput suite.

The full sweep (agents 100 → 50,000 at 100 frameworks, frameworks 1 → 1,000 at 10,000 agents)
takes about six minutes on a two-core machine; ``--quick`` is a laptop check of under a
minute. ``--agents`` and ``--frameworks`` (comma-separated) measure points of your own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.offers.run import (
    FULL,
    QUICK,
    Child,
    format_report,
    install_signal_handlers,
    plot,
    run,
    with_overrides,
)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers like 100,1000") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.offers", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a short sweep (under a minute)")
    p.add_argument("--json", type=Path, help="write every figure and the machine here")
    p.add_argument(
        "--plot",
        type=Path,
        help="PNG path prefix (default: next to --json, else bench-offers.png)",
    )
    p.add_argument("--agents", type=_ints, help="agent counts, e.g. 100,1000 (custom points)")
    p.add_argument("--frameworks", type=_ints, help="framework counts, e.g. 1,10 (custom points)")
    p.add_argument("--runs", type=int, help="measured windows per point (median reported)")
    p.add_argument("--window", type=float, help="seconds per measured window")
    p.add_argument("--warmup", type=float, help="seconds before the first window")
    p.add_argument("--task-seconds", type=float, help="how long each task runs")
    p.add_argument("--task-resources", help="each task's resources, e.g. cpus:1;mem:1024")
    p.add_argument("--agent-resources", help="each agent's resources")
    p.add_argument(
        "--executor",
        choices=["command", "custom"],
        help="command: command tasks, which the agent runs directly (default); custom: an "
        "executor per framework per agent",
    )
    p.add_argument("--ping-interval", type=float, help="the master's agent ping interval")
    p.add_argument("--agents-per-process", type=int, help="simulated agents per agent process")
    p.add_argument("--max-inflight", type=int, help="launches in flight, all frameworks")
    p.add_argument("--no-loop-compare", action="store_true", help="skip uvloop vs asyncio")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--log-dir", type=Path, help="keep the workers' logs here")
    p.add_argument(
        "--profile",
        type=Path,
        help="cProfile workers (on CPU time) through the measured windows; .prof files here",
    )
    p.add_argument(
        "--profile-roles",
        type=lambda s: tuple(s.split(",")),
        help="which workers --profile profiles: master (default), agents, frameworks",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.agents or args.frameworks:
        agents = args.agents or (cfg.framework_sweep_agents,)
        frameworks = args.frameworks or (cfg.agent_sweep_frameworks,)
        cfg = with_overrides(
            cfg,
            agent_points=agents,
            agent_sweep_frameworks=frameworks[0],
            framework_points=frameworks,
            framework_sweep_agents=agents[0],
            loop_compare=(agents[0], frameworks[0]),
        )
    cfg = with_overrides(
        cfg,
        runs=args.runs,
        window_s=args.window,
        latency_window_s=args.window,
        warmup_s=args.warmup,
        task_seconds=args.task_seconds,
        task_resources=args.task_resources,
        agent_resources=args.agent_resources,
        executor=args.executor,
        ping_interval=args.ping_interval,
        agents_per_process=args.agents_per_process,
        max_inflight=args.max_inflight,
        profile_dir=str(args.profile) if args.profile else None,
        profile_roles=args.profile_roles,
    )
    if args.no_loop_compare:
        cfg = with_overrides(cfg, loop_compare=None)
        cfg.loop_compare = None
    install_signal_handlers()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="mesa-bench-offers-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        report = run(cfg, progress, log_dir, lambda row: None)
    except KeyboardInterrupt:
        print("interrupted; workers stopped", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"offer bench failed: {e}\n(worker logs in {log_dir})", file=sys.stderr)
        return 1
    finally:
        Child.close_all()
    report["config"]["log_dir"] = str(log_dir)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    plot_path = args.plot or (
        args.json.with_suffix(".png") if args.json else Path("bench-offers.png")
    )
    try:
        written = plot(report, plot_path)
    except ImportError:
        print("no plots: matplotlib is not installed (pip install -e '.[bench]')")
        written = []
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
