"""An agent and a framework started before their master register once it comes up.

libproc, like libprocess, treats a connection refused by an address where nothing listens as
the end of every actor there: linkers are told ``exited`` at once, and what was sent is dropped
(counted), not queued inside ZeroMQ for a master that might come up later. An agent or a
scheduler driver started first thus relies on its own registration retries (back-off from 1 s,
doubling to 10 s), as a Mesos agent does. This runs that order with real processes and sockets:
the agent as ``python -m mesa.node``, the framework's driver in the test, then the master.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mesa.scheduler import SchedulerDriver
from tests.e2e.cluster import Cluster, Node
from tests.e2e.framework import Recorder, framework_info
from tests.ports import quiet_port
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(120)


async def test_an_agent_and_a_framework_started_before_the_master_register(
    cluster: Cluster, tmp_path: Path
) -> None:
    # A port no outgoing connection can take as its own while the master is not there yet.
    port = quiet_port()
    endpoint = f"127.0.0.1:{port}"
    agent = Node(
        "agent",
        [
            f"--master={endpoint}",
            "--ip=127.0.0.1",
            "--port=0",
            "--http-port=0",
            f"--work-dir={tmp_path / 'agent'}",
            "--resources=cpus:1;mem:256;disk:256;ports:[31000-31010]",
        ],
        tmp_path / "agent.log",
    )
    cluster.nodes.append(agent)
    cluster.agent_dirs.add(tmp_path / "agent")
    await agent.start()
    framework = Recorder()
    driver = SchedulerDriver(framework, framework_info("early"), endpoint)
    try:
        await driver.start()

        # Both have tried, and been refused: what they sent is gone, not waiting in ZeroMQ.
        def refused_twice() -> bool:
            metrics = agent.state("/metrics/snapshot")
            return (
                metrics["agent/registration_attempts"] >= 2
                and metrics.get("libproc/peers_lost", 0) >= 2
                and metrics.get("libproc/messages_dropped/peer_down", 0) >= 2
                and not metrics["agent/registered"]
            )

        await eventually(lambda: asyncio.to_thread(refused_twice), "the agent refused twice")
        assert driver._process.registration_attempts >= 1 and not driver.connected

        master = Node(
            "master",
            [
                "--ip=127.0.0.1",
                f"--port={port}",
                "--http-port=0",
                f"--work-dir={tmp_path / 'master'}",
                "--allocation-interval=0.1",
            ],
            tmp_path / "master.log",
        )
        cluster.nodes.append(master)
        cluster.master = await master.start()

        state = await cluster.wait_for(lambda s: s["agents"] and s, "the agent registered")
        assert [a["hostname"] for a in state["agents"]] == ["127.0.0.1"]
        await framework.until(lambda: framework.registered_ids, "the framework registered")
        # Registered both ways round: the master offers the agent's resources to the framework.
        offer = await framework.offer()
        assert offer.agent_id == state["agents"][0]["id"]
        assert agent.state("/metrics/snapshot")["agent/registered"] == 1
    finally:
        await driver.stop()
