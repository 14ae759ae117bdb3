"""``python -m mesa.node --role=master|agent``: run one mesa daemon.

The master listens for libproc messages on ``--port`` and serves HTTP (``/master/state``,
``/metrics/snapshot``, ``/health``) on ``--http-port``; an agent does the same with
``/agent/state``. At start each prints one line naming both endpoints, e.g.::

    mesa master started: pid=master@127.0.0.1:5050 http=http://127.0.0.1:5051

and on SIGTERM or SIGINT it stops cleanly: actors finalize, an agent destroys its containers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import libproc
from mesa import flags

__all__ = ["AGENT_GC_THRESHOLD", "MASTER_GC_THRESHOLD", "build_parser", "main"]

# A master holds many long-lived objects (agents, offers, filters); with the default collector
# thresholds full collections rescan them constantly — at 50k agents they doubled the
# allocation cycle (bench/allocator_bench.py). The master collects less often.
MASTER_GC_THRESHOLD = (50_000, 20, 10)
# An agent allocates a few hundred short-lived objects per task (messages, futures, tasks); most
# die by reference count before a young collection would look at them if collections are rarer.
AGENT_GC_THRESHOLD = (20_000, 20, 10)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mesa.node",
        description="Run a mesa master or agent.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--role", required=True, choices=["master", "agent"], help="what to run")
    p.add_argument("--ip", default="127.0.0.1", help="address to bind (libproc and HTTP)")
    p.add_argument(
        "--port",
        type=flags.port,
        default=None,
        help="libproc (ZeroMQ) port; default 5050 for a master, 0 (any free port) for an agent",
    )
    p.add_argument(
        "--http-port",
        type=flags.port,
        default=None,
        help="HTTP port for state and metrics; default: --port + 1 for a master, 0 for an agent",
    )
    p.add_argument("--work-dir", default=None, help="where state and sandboxes live")
    p.add_argument("--hostname", default=None, help="hostname to advertise (default: the ip)")
    p.add_argument(
        "--log-format", choices=["console", "json"], default="console", help="log line format"
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning or error")
    p.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default=None, help="event loop (default uvloop)"
    )

    m = p.add_argument_group("master")
    m.add_argument(
        "--allocation-interval",
        type=flags.seconds,
        default=1.0,
        help="seconds between allocation cycles (events also trigger a cycle)",
    )
    m.add_argument(
        "--allocation-batch-delay",
        type=flags.seconds,
        default=0.01,
        help="seconds from an event (resources recovered, an agent or framework added) to the "
        "cycle it triggers; a burst of events within it costs one cycle",
    )
    m.add_argument(
        "--agent-ping-interval",
        type=flags.seconds,
        default=1.0,
        help="seconds between pings to each agent",
    )
    m.add_argument(
        "--max-agent-ping-timeouts",
        type=flags.positive_int,
        default=5,
        help="missed pings after which an agent is unreachable",
    )
    m.add_argument(
        "--offer-timeout",
        type=flags.seconds,
        default=None,
        help="rescind offers a framework holds longer than this many seconds (default: never)",
    )

    a = p.add_argument_group("agent")
    a.add_argument("--master", type=flags.endpoint, help="the master's libproc HOST:PORT")
    a.add_argument(
        "--resources",
        type=flags.resources,
        default=None,
        help="e.g. 'cpus:2;mem:1024;disk:4096;ports:[31000-32000]' (default: detected)",
    )
    a.add_argument(
        "--attributes", type=flags.attributes, default=None, help="e.g. 'rack:r1;zone:a'"
    )
    a.add_argument(
        "--executor-registration-timeout",
        type=flags.seconds,
        default=60.0,
        help="seconds an executor has to register before its container is destroyed",
    )
    a.add_argument(
        "--command-tasks",
        choices=["direct", "executor"],
        default="direct",
        help="how a command task runs: 'direct' (its container runs the command, the agent "
        "reports its states) or 'executor' (a mesa.command_executor process per task)",
    )
    a.add_argument(
        "--gc-delay",
        type=flags.seconds,
        default=7 * 24 * 3600.0,
        help="seconds a finished container's sandbox is kept before it is removed (a week)",
    )
    a.add_argument(
        "--gc-disk-headroom",
        type=flags.fraction,
        default=0.1,
        help="share of the work directory's disk (blocks or inodes) that finished sandboxes "
        "must leave free: they are kept gc_delay * max(0, 1 - headroom - disk usage)",
    )
    a.add_argument(
        "--disk-watch-interval",
        type=flags.seconds,
        default=60.0,
        help="seconds between looks at the disk for --gc-disk-headroom",
    )
    a.add_argument(
        "--isolation",
        default=None,
        help="comma-separated isolators, e.g. 'cgroups/cpu,cgroups/mem,cgroups/pids,disk/du' "
        "(also posix/cpu, posix/mem, namespaces/pid, an entry point of group mesa.isolators, "
        "or module:Class); default: the best this machine offers, logged at start",
    )
    a.add_argument(
        "--cgroups-root",
        default=None,
        help="path below each cgroup hierarchy for this agent's containers "
        "(default: mesa/agent-<hash of the work dir>)",
    )
    a.add_argument(
        "--cgroups-enable-cfs",
        action="store_true",
        help="hard-cap each container's cpu at its cpus with a CFS quota (not just shares)",
    )
    a.add_argument(
        "--cgroups-max-pids",
        type=flags.positive_int,
        default=4096,
        help="cgroups/pids: most processes a container may have (unless it asks for 'pids')",
    )
    a.add_argument(
        "--cgroups-spares",
        type=flags.non_negative_int,
        default=64,
        help="emptied cgroups each cgroups isolator keeps (renamed) for the next containers, "
        "instead of rmdir and mkdir for each (v1 only; 0: none kept)",
    )
    a.add_argument(
        "--enforce-container-disk-quota",
        action="store_true",
        help="disk/du: destroy a container whose sandbox outgrows its disk resource",
    )
    a.add_argument(
        "--container-disk-watch-interval",
        type=flags.seconds,
        default=15.0,
        help="disk/du: seconds between measurements of each sandbox",
    )
    return p


async def _serve(args: argparse.Namespace) -> int:
    if args.role == "master":
        from mesa.actors.master import Master, MasterFlags

        gc.set_threshold(*MASTER_GC_THRESHOLD)

        port = 5050 if args.port is None else args.port
        http_port = (port + 1 if port else 0) if args.http_port is None else args.http_port
        runtime = libproc.Runtime(args.ip, port, http_port=http_port)
        await runtime.start()
        master = Master(
            MasterFlags(
                hostname=args.hostname or args.ip,
                allocation_interval=args.allocation_interval,
                allocation_batch_delay=args.allocation_batch_delay,
                agent_ping_interval=args.agent_ping_interval,
                max_agent_ping_timeouts=args.max_agent_ping_timeouts,
                offer_timeout=args.offer_timeout,
                http_port=runtime.http_port,
            )
        )
        pid = runtime.spawn(master)
    else:
        from mesa.actors.agent import Agent

        port = 0 if args.port is None else args.port
        http_port = 0 if args.http_port is None else args.http_port
        work_dir = args.work_dir or os.path.join(os.getcwd(), "mesa-agent")
        runtime = libproc.Runtime(args.ip, port, http_port=http_port)
        await runtime.start()
        try:
            agent = Agent(**_agent_kwargs(args, work_dir, runtime))
        except ValueError as e:  # e.g. an --isolation this machine cannot do: one clear line
            print(f"mesa.node: error: {e}", file=sys.stderr, flush=True)
            await runtime.stop()
            return 2
        gc.set_threshold(*AGENT_GC_THRESHOLD)
        pid = runtime.spawn(agent)
    # What exists now (modules, classes, the runtime) lives as long as the node: out of the
    # collector's sight, full collections only walk what came later.
    gc.collect()
    gc.freeze()
    print(
        f"mesa {args.role} started: pid={pid} http=http://{args.ip}:{runtime.http_port}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(libproc.wait(pid))
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await runtime.stop()
    for task in (waiter, stopper):
        task.cancel()
    print(f"mesa {args.role} stopped", flush=True)
    return 0


def _agent_kwargs(args: argparse.Namespace, work_dir: str, runtime: Any) -> dict[str, Any]:
    from mesa.isolators import IsolationOptions

    return {
        "master": args.master,
        "work_dir": work_dir,
        "resources": args.resources,
        "attributes": args.attributes or {},
        "hostname": args.hostname or args.ip,
        "http_port": runtime.http_port,
        "executor_registration_timeout": args.executor_registration_timeout,
        "command_tasks": args.command_tasks,
        "gc_delay": args.gc_delay,
        "gc_disk_headroom": args.gc_disk_headroom,
        "disk_watch_interval": args.disk_watch_interval,
        "isolation": args.isolation,
        "isolation_options": IsolationOptions(
            cgroups_root=args.cgroups_root,
            cgroups_enable_cfs=args.cgroups_enable_cfs,
            cgroups_max_pids=args.cgroups_max_pids,
            cgroups_spares=args.cgroups_spares,
            enforce_container_disk_quota=args.enforce_container_disk_quota,
            container_disk_watch_interval=args.container_disk_watch_interval,
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.role == "agent" and not args.master:
        parser.error("--role=agent needs --master=HOST:PORT (the master's libproc endpoint)")
    try:
        libproc.configure_logging(args.log_format, args.log_level)
    except ValueError as e:
        parser.error(str(e))
    return libproc.run(_serve(args), loop=args.loop)


if __name__ == "__main__":
    sys.exit(main())
