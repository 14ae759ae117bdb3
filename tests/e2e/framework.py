"""A framework for tests: every callback lands in a queue the test can await."""

from __future__ import annotations

import asyncio
from typing import Any

from mesa.info import CommandInfo, FrameworkInfo, Offer, TaskInfo, TaskStatus
from mesa.scheduler import Scheduler, SchedulerDriver


class Recorder(Scheduler):
    def __init__(self) -> None:
        self.offers: asyncio.Queue[Offer] = asyncio.Queue()
        self.updates: list[TaskStatus] = []
        self.errors: list[str] = []
        self.rescinded: list[str] = []
        self.lost_agents: list[str] = []
        self.registered_ids: list[str] = []
        self.messages: list[tuple[str, str, bytes]] = []
        self.reregistrations = 0
        self.disconnections = 0
        self._changed = asyncio.Event()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def registered(self, driver: Any, framework_id: str, master_info: Any) -> None:
        self.registered_ids.append(framework_id)
        self._poke()

    def reregistered(self, driver: Any, master_info: Any) -> None:
        self.reregistrations += 1
        self._poke()

    def disconnected(self, driver: Any) -> None:
        self.disconnections += 1
        self._poke()

    def resource_offers(self, driver: Any, offers: list[Offer]) -> None:
        for offer in offers:
            self.offers.put_nowait(offer)

    def offer_rescinded(self, driver: Any, offer_id: str) -> None:
        self.rescinded.append(offer_id)
        self._poke()

    def status_update(self, driver: Any, status: TaskStatus) -> None:
        self.updates.append(status)
        self._poke()

    def framework_message(self, driver: Any, executor_id: str, agent_id: str, data: bytes) -> None:
        self.messages.append((executor_id, agent_id, data))
        self._poke()

    def agent_lost(self, driver: Any, agent_id: str) -> None:
        self.lost_agents.append(agent_id)
        self._poke()

    def error(self, driver: Any, message: str) -> None:
        self.errors.append(message)
        self._poke()

    async def until(self, predicate: Any, what: str, timeout: float = 30.0) -> Any:
        """Wait for a callback after which ``predicate()`` holds."""
        async with asyncio.timeout(timeout):
            while True:
                event = self._changed
                result = predicate()
                if result:
                    return result
                try:
                    await event.wait()
                except TimeoutError:  # pragma: no cover
                    raise TimeoutError(what) from None

    async def state_of(self, task_id: str, state: str, timeout: float = 30.0) -> TaskStatus:
        def find() -> TaskStatus | None:
            for s in self.updates:
                if s.task_id == task_id and s.state == state:
                    return s
            return None

        try:
            return await self.until(find, f"{task_id} {state}", timeout)
        except TimeoutError:
            seen = [(s.task_id, str(s.state), s.message) for s in self.updates]
            raise TimeoutError(f"no {state} for {task_id}; updates so far: {seen}") from None

    async def offer(self, timeout: float = 30.0) -> Offer:
        async with asyncio.timeout(timeout):
            return await self.offers.get()


def framework_info(name: str = "test", **kw: Any) -> FrameworkInfo:
    return FrameworkInfo(user="", name=name, **kw)


def command_task(
    offer: Offer, task_id: str, command: str, resources: str = "cpus:0.1;mem:32", **kw: Any
) -> TaskInfo:
    return TaskInfo(
        name=task_id,
        task_id=task_id,
        agent_id=offer.agent_id,
        resources=resources,
        command=CommandInfo(command),
        **kw,
    )


async def start_framework(
    master: str, name: str = "test", **kw: Any
) -> tuple[Recorder, SchedulerDriver]:
    driver_kw = {k: kw.pop(k) for k in list(kw) if k in ("implicit_acknowledgements",)}
    recorder = Recorder()
    driver = SchedulerDriver(recorder, framework_info(name, **kw), master, **driver_kw)
    await driver.start()
    await recorder.until(lambda: recorder.registered_ids, "registration")
    return recorder, driver
