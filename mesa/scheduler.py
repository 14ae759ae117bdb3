"""The framework SDK: write a :class:`Scheduler`, hand it to a :class:`SchedulerDriver`.

A framework is two halves, as in Mesos. The :class:`Scheduler` is yours: the master's events
arrive as calls to its methods (``registered``, ``resource_offers``, ``status_update`` …). The
:class:`SchedulerDriver` is ours: it registers the framework with the master, keeps it registered
across master restarts, and carries your decisions back (``launch_tasks``, ``decline_offer``,
``kill_task`` …)::

    class Hello(Scheduler):
        def resource_offers(self, driver, offers):
            for offer in offers:
                task = TaskInfo("hello", new_id("hello-"), offer.agent_id, "cpus:0.1;mem:32",
                                command=CommandInfo("echo hello"))
                driver.launch_tasks([offer.id], [task])

        async def status_update(self, driver, status):
            if is_terminal(status.state):
                await driver.stop()

    SchedulerDriver(Hello(), FrameworkInfo(user="", name="hello"), "127.0.0.1:5050").run()

Callbacks may be plain or ``async`` methods. They run one at a time, in the order the master's
messages arrived, inside the driver's actor, so a scheduler's state needs no locks; an ``async``
callback holds back the next one until it returns, so hand long work to a task of your own. A
callback that raises is logged and counted (:attr:`SchedulerDriver.callback_errors`) and the
driver goes on.

**Calls made while the driver is not registered are refused, not queued.** Every call that
talks to the master (launch, decline, kill, reconcile, revive, suppress, acknowledge, message)
raises :class:`NotConnectedError` before the first ``registered()`` and between
``disconnected()`` and ``reregistered()``, and :class:`DriverNotRunningError` before ``start()``
and after ``stop()``/``abort()``. Queueing would replay offers, kills and acknowledgements that
were addressed to a master that has gone and mean nothing (or something else) to the next one;
the framework is told at once instead, and the contract is simple: act from ``registered()`` on,
and after ``reregistered()`` reconcile (:meth:`SchedulerDriver.reconcile_tasks`) before trusting
what you knew. :meth:`SchedulerDriver.wait_connected` awaits a registration from outside the
callbacks.

All driver methods must be called from the event loop the driver was started on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import ipaddress
import os
import socket
from collections.abc import Awaitable, Iterable
from enum import StrEnum
from typing import Any

import libproc
from libproc import UPID, ProcessNotFound, ProcessTerminated, Runtime, UPIDError, get_logger
from mesa.actors.scheduler_driver import SchedulerDriverProcess, in_callback
from mesa.info import FrameworkInfo, MasterInfo, Offer, TaskInfo, TaskStatus
from mesa.messages import (
    AcceptOffers,
    DeclineOffers,
    FrameworkToExecutor,
    KillTask,
    ReconcileTasks,
    ReviveOffers,
    SuppressOffers,
)

__all__ = [
    "DriverNotRunningError",
    "DriverStatus",
    "NotConnectedError",
    "Scheduler",
    "SchedulerDriver",
    "SchedulerDriverError",
    "parse_master",
]

log = get_logger("mesa.scheduler")

# A callback may be a plain method or a coroutine function.
CallbackResult = Awaitable[None] | None


class DriverStatus(StrEnum):
    """Mesos's driver states, returned by ``start``/``stop``/``abort``/``join``/``run``."""

    DRIVER_NOT_STARTED = "DRIVER_NOT_STARTED"
    DRIVER_RUNNING = "DRIVER_RUNNING"
    DRIVER_ABORTED = "DRIVER_ABORTED"
    DRIVER_STOPPED = "DRIVER_STOPPED"


class SchedulerDriverError(RuntimeError):
    """A driver call that cannot be carried out; nothing was sent."""


class DriverNotRunningError(SchedulerDriverError):
    """The driver has not been started, or has been stopped or aborted."""


class NotConnectedError(SchedulerDriverError):
    """The driver is not registered with a master right now (not yet, or disconnected)."""


class Scheduler:
    """The framework's half: override the callbacks you need; the rest do nothing.

    Every callback gets the :class:`SchedulerDriver` first, and may be ``async``.
    """

    def registered(
        self, driver: SchedulerDriver, framework_id: str, master_info: MasterInfo
    ) -> CallbackResult:
        """The framework is registered; called once per driver, on its first registration
        (also when a failed-over scheduler started with ``framework.id`` set is accepted)."""

    def reregistered(self, driver: SchedulerDriver, master_info: MasterInfo) -> CallbackResult:
        """Registered again after ``disconnected()`` (a master restart or failover). Offers made
        before are gone; reconcile to learn what happened to your tasks meanwhile."""

    def disconnected(self, driver: SchedulerDriver) -> CallbackResult:
        """The master went away. The driver keeps trying to re-register; calls that talk to the
        master raise :class:`NotConnectedError` until ``reregistered()``."""

    def resource_offers(self, driver: SchedulerDriver, offers: list[Offer]) -> CallbackResult:
        """Resources to launch tasks on. Answer every offer, with ``launch_tasks`` or
        ``decline_offer``: an offer you keep is withheld from every other framework."""

    def offer_rescinded(self, driver: SchedulerDriver, offer_id: str) -> CallbackResult:
        """An offer is no longer valid (its agent left, or it was held too long)."""

    def status_update(self, driver: SchedulerDriver, status: TaskStatus) -> CallbackResult:
        """A task changed state. With implicit acknowledgements (the default) the driver
        acknowledges it when this returns; if this raises it is not acknowledged and will be
        delivered again."""

    def framework_message(
        self, driver: SchedulerDriver, executor_id: str, agent_id: str, data: bytes
    ) -> CallbackResult:
        """An executor of this framework sent ``data`` (best effort, no delivery guarantee)."""

    def agent_lost(self, driver: SchedulerDriver, agent_id: str) -> CallbackResult:
        """An agent was removed; status updates for its tasks follow."""

    def error(self, driver: SchedulerDriver, message: str) -> CallbackResult:
        """The master refused this framework (a bad FrameworkInfo, a removed framework id …).
        The driver aborts right after this returns."""


def parse_master(text: str) -> UPID:
    """The master's actor address from ``HOST:PORT`` (or a full ``master@HOST:PORT``).

    Raises ``ValueError`` saying what is wrong, so command lines can show it as is.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the master address is empty; expected HOST:PORT")
    text = text.strip()
    if "://" in text:
        raise ValueError(f"{text!r}: expected HOST:PORT (ZooKeeper URLs are not supported yet)")
    if "@" in text:
        try:
            pid = UPID.parse(text)
        except UPIDError as e:
            raise ValueError(f"{text!r} is not a master address: {e}") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not a master address: expected HOST:PORT")
        if not port.isdigit():
            raise ValueError(f"{text!r} is not a master address: port {port!r} is not a number")
        try:
            pid = UPID("master", host, int(port))
        except UPIDError as e:
            raise ValueError(f"{text!r} is not a master address: {e}") from None
    if pid.port == 0:
        raise ValueError(f"{text!r}: the master's port must be 1-65535")
    return pid


def _local_host_for(master: UPID) -> str:
    """The address the master can reach us at: loopback for a local master, else the address
    of the interface that routes to it (a UDP ``connect`` sends nothing)."""
    host = master.host.strip("[]")
    try:
        if host == "localhost" or ipaddress.ip_address(host).is_loopback:
            return "127.0.0.1"
    except ValueError:
        pass  # a host name: resolve through the socket below
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, master.port))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


class SchedulerDriver:
    """Connects a :class:`Scheduler` to a master.

    ``master`` is the master's libproc endpoint ``HOST:PORT`` (its actor is
    ``master@HOST:PORT``). ``framework`` is copied; its ``id`` set means a failed-over scheduler
    reclaiming a running framework (``ReregisterFramework``), unset a new framework; an empty
    ``user`` is filled with the current user and ``hostname`` with this host's name.

    ``runtime``: a started libproc :class:`~libproc.Runtime` to live in; by default the driver
    starts and owns one on ``host`` (default: 127.0.0.1 for a master on loopback, otherwise the
    local address that routes to the master) and an ephemeral port, and stops it when done.

    ``registration_backoff`` / ``registration_backoff_max``: registration is retried after 1 s,
    doubling up to 10 s, until the master answers (on :class:`libproc.Clock` time).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        framework: FrameworkInfo,
        master: str,
        *,
        implicit_acknowledgements: bool = True,
        runtime: Runtime | None = None,
        host: str | None = None,
        registration_backoff: float = 1.0,
        registration_backoff_max: float = 10.0,
    ) -> None:
        if not isinstance(framework, FrameworkInfo):
            raise TypeError(f"framework must be a FrameworkInfo, not {type(framework).__name__}")
        if registration_backoff <= 0 or registration_backoff_max <= 0:
            raise ValueError("registration back-off must be positive")
        self.scheduler = scheduler
        self.master = parse_master(master)
        self.implicit_acknowledgements = implicit_acknowledgements
        self._framework = dataclasses.replace(
            framework,
            user=framework.user or _current_user(),
            hostname=framework.hostname or socket.gethostname(),
            roles=list(framework.roles),
            capabilities=list(framework.capabilities),
        )
        self._runtime = runtime
        self._owns_runtime = runtime is None
        self._host = host
        self._backoff = (registration_backoff, registration_backoff_max)
        self._status = DriverStatus.DRIVER_NOT_STARTED
        self._process: SchedulerDriverProcess | None = None
        self._finished: asyncio.Future[DriverStatus] | None = None
        self._shutdown_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ state

    @property
    def status(self) -> DriverStatus:
        return self._status

    @property
    def framework_id(self) -> str | None:
        """Assigned by the master at registration (or the id the driver was given)."""
        if self._process is not None:
            return self._process.framework.id
        return self._framework.id

    @property
    def connected(self) -> bool:
        """Registered with a master right now: calls that talk to the master will be sent."""
        proc = self._process
        return proc is not None and proc.connected and not proc.stopping

    @property
    def master_info(self) -> MasterInfo | None:
        return self._process.master_info if self._process is not None else None

    @property
    def pid(self) -> UPID | None:
        """The driver actor's address (what the master sees as the framework's pid)."""
        return self._process.pid if self._process is not None else None

    @property
    def runtime(self) -> Runtime | None:
        return self._runtime

    @property
    def callback_errors(self) -> int:
        """How many user callbacks have raised so far."""
        return self._process.callback_errors if self._process is not None else 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> DriverStatus:
        """Spawn the driver actor and begin registering; returns at once (see
        :meth:`wait_connected`). A driver is started once: make a new one to start again."""
        if self._status is not DriverStatus.DRIVER_NOT_STARTED:
            raise SchedulerDriverError(f"the driver cannot be started again ({self._status})")
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        if self._runtime is None:
            host = self._host or _local_host_for(self.master)
            self._runtime = await Runtime(host, 0).start()
        backoff, backoff_max = self._backoff
        self._process = SchedulerDriverProcess(
            self,
            self.scheduler,
            self._framework,
            self.master,
            implicit_acknowledgements=self.implicit_acknowledgements,
            backoff=backoff,
            backoff_max=backoff_max,
        )
        try:
            self._runtime.spawn(self._process)
        except BaseException:
            if self._owns_runtime:
                await self._runtime.stop()
            raise
        self._status = DriverStatus.DRIVER_RUNNING
        return self._status

    async def stop(self, failover: bool = False) -> DriverStatus:
        """Stop the driver. ``failover=False`` unregisters the framework: the master kills its
        tasks and forgets it. ``failover=True`` only deactivates it: its tasks keep running for
        ``failover_timeout`` seconds, waiting for a scheduler that re-registers with the same
        ``framework.id``.

        No callback runs after this is called. Awaited from inside a callback (or a task the
        running callback awaits) it starts the shutdown and returns at once, since the actor
        cannot wait for its own end; :meth:`join` waits for the end from anywhere else.
        """
        proc = self._require_started("stop")
        task = self._begin_shutdown(failover, DriverStatus.DRIVER_STOPPED)
        marker = in_callback.get()
        if marker is None or marker is not proc.running_callback:
            await asyncio.shield(task)
        return self._status

    def abort(self) -> DriverStatus:
        """Stop at once without telling the master, which treats the framework as failed: it
        is deactivated when the master notices, and its tasks kept for ``failover_timeout``."""
        self._require_started("abort")
        self._begin_shutdown(None, DriverStatus.DRIVER_ABORTED)
        return self._status

    async def join(self) -> DriverStatus:
        """Wait until the driver has stopped or aborted (and its own runtime has stopped)."""
        self._require_started("join")
        assert self._finished is not None
        return await asyncio.shield(self._finished)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the driver is registered; raises :class:`DriverNotRunningError` if it ends
        first and ``TimeoutError`` after ``timeout`` seconds."""
        proc = self._require_started("wait_connected")
        if self.connected:
            return
        if proc.stopping or self._status is not DriverStatus.DRIVER_RUNNING:
            raise DriverNotRunningError(f"the driver is {self._status}")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        proc.add_waiter(future)
        if not await asyncio.wait_for(future, timeout):
            raise DriverNotRunningError(f"the driver ended before registering ({self._status})")

    def run(self) -> DriverStatus:
        """Start, wait until stopped, clean up; blocking, on a fresh uvloop event loop.

        Interrupted (Ctrl-C), the driver stops with ``failover=True``, as if the scheduler had
        died: a framework with a ``failover_timeout`` keeps its tasks for a successor.
        """
        return libproc.run(self._run())

    async def _run(self) -> DriverStatus:
        await self.start()
        try:
            return await self.join()
        except asyncio.CancelledError:
            if self._status is DriverStatus.DRIVER_RUNNING:
                await self.stop(failover=True)
            raise

    def _begin_shutdown(self, failover: bool | None, status: DriverStatus) -> asyncio.Task[None]:
        if self._shutdown_task is None:
            if self._status is DriverStatus.DRIVER_RUNNING:  # an end already seen stays
                self._status = status
            assert self._process is not None
            self._process.stopping = True  # no callback from here on
            self._shutdown_task = asyncio.get_running_loop().create_task(self._shutdown(failover))
        return self._shutdown_task

    async def _shutdown(self, failover: bool | None) -> None:
        proc = self._process
        runtime = self._runtime
        assert proc is not None and runtime is not None
        try:
            # In the actor's context, after the callback now running (and its acknowledgement).
            await runtime.dispatch(proc.pid, proc.shutdown, failover)
        except (ProcessNotFound, ProcessTerminated):
            pass  # already gone, e.g. its runtime was stopped
        try:
            await runtime.wait(proc.pid)
            if self._owns_runtime:
                await runtime.stop()
        finally:
            self._finish()

    def _finish(self) -> None:
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(self._status)

    def _actor_ended(self) -> None:
        """From the actor's ``finalize``: an end nobody asked for (its runtime was stopped)
        counts as an abort, so ``join`` returns rather than hanging."""
        if self._shutdown_task is None:
            self._status = DriverStatus.DRIVER_ABORTED
            self._finish()

    def _abort_after_error(self) -> None:
        if self._shutdown_task is None:
            self._begin_shutdown(None, DriverStatus.DRIVER_ABORTED)

    # ------------------------------------------------------------------ calls to the master

    def _require_started(self, what: str) -> SchedulerDriverProcess:
        if self._process is None:
            raise DriverNotRunningError(f"{what}: the driver has not been started")
        return self._process

    def _require_connected(self, what: str) -> SchedulerDriverProcess:
        proc = self._require_started(what)
        if proc.stopping or self._status is not DriverStatus.DRIVER_RUNNING:
            raise DriverNotRunningError(f"{what}: the driver is {self._status}")
        if not proc.connected:
            raise NotConnectedError(
                f"{what}: the driver is not registered with a master (not yet, or disconnected);"
                " call it from registered()/resource_offers() on, or after reregistered()"
            )
        return proc

    def launch_tasks(
        self,
        offer_ids: str | Iterable[str],
        tasks: Iterable[TaskInfo],
        refuse_seconds: float = 5.0,
    ) -> None:
        """Launch ``tasks`` on the resources of ``offer_ids`` (all offers from one agent).

        A task with an empty ``agent_id`` gets the offer's. Resources of the offers that the
        tasks leave unused are declined for ``refuse_seconds``; no tasks declines the offers.
        The master answers problems with ``TASK_ERROR``/``TASK_DROPPED`` status updates.
        """
        proc = self._require_connected("launch_tasks")
        ids = _ids(offer_ids, "offer_ids")
        agent_id = next((proc.offers[i].agent_id for i in ids if i in proc.offers), "")
        filled: list[TaskInfo] = []
        for task in tasks:
            if not isinstance(task, TaskInfo):
                raise TypeError(f"tasks must be TaskInfo, not {type(task).__name__}")
            changes: dict[str, Any] = {}
            if not task.agent_id and agent_id:
                changes["agent_id"] = agent_id
            if not isinstance(task.resources, str):  # e.g. a mesa.resources.Resources
                changes["resources"] = str(task.resources)
            filled.append(dataclasses.replace(task, **changes) if changes else task)
        framework_id = proc.framework.id
        assert framework_id is not None
        msg = AcceptOffers(framework_id, ids, filled, float(refuse_seconds))
        proc.send_to_master(AcceptOffers.NAME, msg)
        for i in ids:
            proc.offers.pop(i, None)

    def accept_offers(
        self,
        offer_ids: str | Iterable[str],
        tasks: Iterable[TaskInfo],
        refuse_seconds: float = 5.0,
    ) -> None:
        """Alias of :meth:`launch_tasks` (Mesos's v1 name)."""
        self.launch_tasks(offer_ids, tasks, refuse_seconds)

    def decline_offer(self, offer_id: str, refuse_seconds: float = 5.0) -> None:
        """Give the offer back; its agent's resources are not offered to this framework again
        for ``refuse_seconds`` (unless it calls :meth:`revive_offers`)."""
        proc = self._require_connected("decline_offer")
        framework_id = proc.framework.id
        assert framework_id is not None
        ids = _ids(offer_id, "offer_id")
        proc.send_to_master(
            DeclineOffers.NAME, DeclineOffers(framework_id, ids, float(refuse_seconds))
        )
        for i in ids:
            proc.offers.pop(i, None)

    def kill_task(
        self, task_id: str, agent_id: str | None = None, grace_period: float | None = None
    ) -> None:
        """Ask for a task to be killed; a ``TASK_KILLED`` (or other terminal) update follows.
        ``grace_period`` overrides the task's time between SIGTERM and SIGKILL."""
        proc = self._require_connected("kill_task")
        framework_id = proc.framework.id
        assert framework_id is not None
        msg = KillTask(framework_id, task_id, agent_id, grace_period)
        proc.send_to_master(KillTask.NAME, msg)

    def reconcile_tasks(self, statuses: Iterable[TaskStatus] = ()) -> None:
        """Ask for the latest state of tasks, delivered as ``status_update`` calls (with reason
        ``REASON_RECONCILIATION``, no acknowledgement needed). Explicit with ``statuses`` (their
        ``task_id`` and ``agent_id``), implicit — every task the master knows — when empty."""
        proc = self._require_connected("reconcile_tasks")
        framework_id = proc.framework.id
        assert framework_id is not None
        tasks: list[list[str | None]] = []
        for status in statuses:
            if not isinstance(status, TaskStatus):
                raise TypeError(f"statuses must be TaskStatus, not {type(status).__name__}")
            tasks.append([status.task_id, status.agent_id])
        proc.send_to_master(ReconcileTasks.NAME, ReconcileTasks(framework_id, tasks))

    def revive_offers(self, roles: str | Iterable[str] | None = None) -> None:
        """Lift every decline filter and suppression (for ``roles``, or all the framework's)."""
        proc = self._require_connected("revive_offers")
        framework_id = proc.framework.id
        assert framework_id is not None
        proc.send_to_master(ReviveOffers.NAME, ReviveOffers(framework_id, _roles(roles)))

    def suppress_offers(self, roles: str | Iterable[str] | None = None) -> None:
        """Stop receiving offers (for ``roles``, or all) until :meth:`revive_offers`."""
        proc = self._require_connected("suppress_offers")
        framework_id = proc.framework.id
        assert framework_id is not None
        proc.send_to_master(SuppressOffers.NAME, SuppressOffers(framework_id, _roles(roles)))

    def acknowledge_status_update(self, status: TaskStatus) -> None:
        """Acknowledge an update, for drivers made with ``implicit_acknowledgements=False``.

        Until acknowledged, the agent resends the update and holds back the task's later ones.
        An update without ``uuid`` (generated by the master) needs none: this returns quietly.
        """
        if self.implicit_acknowledgements:
            raise SchedulerDriverError(
                "acknowledge_status_update: this driver acknowledges implicitly; create it with"
                " implicit_acknowledgements=False to acknowledge by hand"
            )
        proc = self._require_connected("acknowledge_status_update")
        if status.uuid is None:
            return
        if not status.agent_id:
            raise ValueError(f"status of task {status.task_id!r} has a uuid but no agent_id")
        proc.acknowledge(status.agent_id, status.task_id, status.uuid)

    def send_framework_message(self, executor_id: str, agent_id: str, data: bytes) -> None:
        """Send ``data`` to an executor of this framework (best effort: no delivery guarantee)."""
        proc = self._require_connected("send_framework_message")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        framework_id = proc.framework.id
        assert framework_id is not None
        msg = FrameworkToExecutor(framework_id, agent_id, executor_id, bytes(data))
        proc.send_to_master(FrameworkToExecutor.NAME, msg)

    def __repr__(self) -> str:
        return (
            f"<SchedulerDriver {self._framework.name!r} id={self.framework_id}"
            f" master={self.master} {self._status}>"
        )


def _ids(value: str | Iterable[str], what: str) -> list[str]:
    # A lone string is one id, not an iterable of one-character ids.
    ids = [value] if isinstance(value, str) else list(value)
    if not ids or not all(isinstance(i, str) and i for i in ids):
        raise ValueError(f"{what} must be one or more non-empty offer id strings")
    return ids


def _roles(roles: str | Iterable[str] | None) -> list[str]:
    if roles is None:
        return []
    return [roles] if isinstance(roles, str) else list(roles)


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "nobody")
