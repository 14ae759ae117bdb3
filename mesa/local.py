"""``python -m mesa.local --agents=N``: a master and N agents in one process (like mesos-local).

Each node gets its own libproc runtime (its own port), so they talk over real ZeroMQ exactly as
separate machines would; only the OS process is shared. Executors are still separate processes.
Handy for trying frameworks and for ``make demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Sequence

import libproc
from mesa import flags

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mesa.local",
        description="Run a mesa master and N agents in one process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--agents", type=flags.positive_int, default=1, help="how many agents")
    p.add_argument("--ip", default="127.0.0.1", help="address every node binds")
    p.add_argument("--port", type=flags.port, default=5050, help="the master's libproc port")
    p.add_argument(
        "--http-port", type=flags.port, default=None, help="the master's HTTP port (--port + 1)"
    )
    p.add_argument(
        "--resources",
        type=flags.resources,
        default="cpus:2;mem:2048;disk:4096;ports:[31000-32000]",
        help="each agent's resources",
    )
    p.add_argument("--work-dir", default=None, help="work dirs go here (default: a temp dir)")
    p.add_argument("--allocation-interval", type=flags.seconds, default=1.0)
    p.add_argument("--log-format", choices=["console", "json"], default="console")
    p.add_argument("--log-level", default="warning")
    return p


async def _serve(args: argparse.Namespace) -> int:
    from mesa.actors.agent import Agent
    from mesa.actors.master import Master, MasterFlags

    work_dir = args.work_dir or tempfile.mkdtemp(prefix="mesa-local-")
    http_port = args.port + 1 if args.http_port is None else args.http_port
    master_rt = await libproc.Runtime(args.ip, args.port, http_port=http_port).start()
    runtimes = [master_rt]
    master = master_rt.spawn(
        Master(
            MasterFlags(
                hostname=args.ip,
                allocation_interval=args.allocation_interval,
                http_port=master_rt.http_port,
            )
        )
    )
    print(f"mesa master started: pid={master} http=http://{args.ip}:{master_rt.http_port}")
    for i in range(args.agents):
        rt = await libproc.Runtime(args.ip, 0, http_port=0).start()
        runtimes.append(rt)
        pid = rt.spawn(
            Agent(
                master=master_rt.address,
                work_dir=os.path.join(work_dir, f"agent{i}"),
                resources=args.resources,
                hostname=args.ip,
                http_port=rt.http_port,
            )
        )
        print(f"mesa agent started: pid={pid} http=http://{args.ip}:{rt.http_port}")
    print(f"mesa local cluster ready: master={master_rt.address} work_dir={work_dir}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for rt in reversed(runtimes):
        await rt.stop()
    print("mesa local cluster stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    libproc.configure_logging(args.log_format, args.log_level)
    return libproc.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
