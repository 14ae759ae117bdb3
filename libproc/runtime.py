"""The runtime: actors, their addresses, and the wire between them.

A :class:`Runtime` owns one address (``host:port``), the actors spawned into it, one transport
(ZeroMQ by default, or a :class:`~libproc.MemoryNetwork`), and optionally an HTTP port. Several
runtimes can live in one OS process — that is how tests and simulations build clusters — and the
module-level :func:`spawn`, :func:`terminate`, :func:`wait` and :func:`dispatch` find an actor's
runtime from its UPID.

What crosses the wire is checked here, once, for every transport: a frame that does not decode, a
message with a bad shape, a sender whose address is not the connection's, an unknown recipient or
message name, an oversize frame — each is counted under ``libproc/messages_dropped/<reason>``,
logged with exponential back-off per reason (1st, 10th, 100th, … occurrence), and dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import Callable
from typing import Any

from libproc import filters
from libproc.clock import Clock, Timer
from libproc.log import get_logger
from libproc.memory_transport import MemoryNetwork, MemoryTransport
from libproc.metrics import Metrics
from libproc.process import (
    _DISPATCH,
    _EXITED,
    _INIT,
    _RUNNING,
    _TERMINATE,
    _TERMINATED,
    _TERMINATING,
    Process,
    _is_plain_body,
)
from libproc.upid import UPID, UPIDError
from libproc.wire import (
    BadMessage,
    DecodeError,
    EncodeError,
    decode_batch,
    encode_batch,
    encode_message,
)
from libproc.zmq_transport import ZmqOptions, ZmqTransport

__all__ = [
    "Backpressure",
    "MessageTooLarge",
    "ProcessNotFound",
    "ProcessTerminated",
    "Runtime",
    "dispatch",
    "runtimes",
    "settle",
    "spawn",
    "terminate",
    "wait",
]

log = get_logger("libproc.runtime")

_BATCH_BYTES = 256 * 1024  # coalesced frames are cut at about this size
_SYSTEM_PREFIX = "libproc/"
# A stopping runtime's last frame to each peer, and the peer's answer (see Runtime._say_goodbye).
_GOODBYE = "libproc/goodbye"
_GOODBYE_READ = "libproc/goodbye_read"


class Backpressure(RuntimeError):
    """The receiver cannot take more now; nothing was queued. ``await wait_writable`` and retry."""


class MessageTooLarge(EncodeError):
    """A message bigger than the runtime's ``max_frame_size``."""


class ProcessNotFound(LookupError):
    """No local actor with that UPID."""


class ProcessTerminated(RuntimeError):
    """The actor ended before it ran the dispatched call."""


class _OutQueue:
    """Messages waiting to leave for one peer address, already encoded."""

    __slots__ = ("address", "blocked", "bytes", "msgs", "scheduled", "waiters")

    def __init__(self, address: str) -> None:
        self.address = address
        self.msgs: list[bytes] = []
        self.bytes = 0
        self.scheduled = False
        self.blocked = False
        self.waiters: list[asyncio.Future[None]] = []


_runtimes: dict[str, Runtime] = {}


def runtimes() -> list[Runtime]:
    """Every started runtime in this OS process."""
    return list(_runtimes.values())


class Runtime:
    """A host for actors. Use as ``async with Runtime("127.0.0.1", 0) as rt:``.

    Parameters worth knowing:

    * ``transport``: ``None`` for ZeroMQ over TCP, or a :class:`MemoryNetwork` to join.
    * ``http_port``: serve ``/metrics/snapshot`` and actors' routes there (``0`` picks a port).
    * ``max_frame_size``: the largest frame accepted or sent (default 16 MiB).
    * ``pending_limit``: bytes queued per peer before ``send`` raises :class:`Backpressure`
      (default 64 MiB). With ZeroMQ's own ``send_hwm`` frames per peer on top, this bounds
      the memory a fast sender can pin: the high-water mark. (An empty queue always takes one
      message, so a message larger than the limit is still sent, alone; libproc's own link and
      exit notices are never refused.)
    * ``mailbox_hwm``: when an actor's mailbox passes this many messages the runtime stops
      reading from the network (so remote senders feel back-pressure) until it drains below
      half; a local ``send`` to a mailbox at ``mailbox_limit`` raises :class:`Backpressure`.
    * ``link_timeout``: how long a remote ``link`` waits for the other runtime to confirm the
      actor exists before reporting ``exited``: for a host that accepts the connection but does
      not answer, or does not answer the connection at all. An address where nothing listens
      (the connection is refused) is reported at once, by the transport, as is death after the
      link (socket monitor and heartbeats, ``heartbeat_timeout``).

    A linked peer's messages come before the news of its end: a runtime that stops cleanly
    says goodbye to each peer after everything else it sends it, and the peer reports the end
    (``exited`` for its linkers) when it reads that goodbye (see :meth:`stop`). A peer that
    dies without a word (``kill -9``, a lost network) is reported by the transport.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        transport: MemoryNetwork | Any | None = None,
        http_port: int | None = None,
        max_frame_size: int = 16 * 1024 * 1024,
        pending_limit: int = 64 * 1024 * 1024,
        mailbox_hwm: int = 100_000,
        mailbox_limit: int = 1_000_000,
        link_timeout: float = 3.0,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = port
        self.address = ""
        if transport is None:
            transport = ZmqTransport(
                ZmqOptions(
                    heartbeat_interval=heartbeat_interval,
                    heartbeat_timeout=heartbeat_timeout,
                    max_frame_size=max_frame_size,
                )
            )
        elif isinstance(transport, MemoryNetwork):
            transport = MemoryTransport(transport)
        self.transport = transport
        self.http_port = http_port
        self.max_frame_size = max_frame_size
        # A batch must fit in one frame of the size this runtime (and, by default, its peers)
        # accepts; otherwise a small max_frame_size would make every busy peer's frames oversize.
        self._batch_bytes = max(1, min(_BATCH_BYTES, max_frame_size - 16))
        self.pending_limit = pending_limit
        self._mailbox_hwm = mailbox_hwm
        self._mailbox_lwm = mailbox_hwm // 2
        self.mailbox_limit = mailbox_limit
        self.link_timeout = link_timeout
        self.metrics = Metrics()
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._actors: dict[str, Process] = {}
        self._next_id = 0
        self._peers: dict[str, _OutQueue] = {}
        self._remote_links: dict[str, dict[UPID, set[str]]] = {}
        self._link_acks: dict[tuple[str, UPID], Timer] = {}
        self._overfull: set[Process] = set()
        self._reading = 0  # > 0 inside a transport's read callback (_read_begin/_read_end)
        self._held: list[_OutQueue] = []  # queues whose flush waits for _read_end
        self._upids: dict[str, UPID] = {}
        self._bad_seen: dict[str, int] = {}
        self._http_runner: Any = None
        self._started = False
        self._stopping = False
        # Addresses whose actors linked to ours: a clean stop waits for their answer to its
        # goodbye (_say_goodbye). Kept until the peer ends; a stale one costs one answer.
        self._linked_from: set[str] = set()
        self._said_goodbye = False  # stop has sent its goodbyes: nothing more leaves
        self._goodbyes_unread: set[str] = set()  # peers whose answer to our goodbye is awaited
        self._goodbyes_read: asyncio.Event | None = None  # set when that set empties
        self.anonymous: UPID | None = None
        # Hot-path counters are plain attributes, published as gauges.
        self.messages_sent = 0
        self.messages_local = 0  # of those sent (and received), delivered in this runtime
        self.messages_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.frames_sent = 0
        self.frames_received = 0
        m = self.metrics
        m.gauge("libproc/messages_sent", lambda: self.messages_sent)
        m.gauge("libproc/messages_received", lambda: self.messages_received)
        m.gauge("libproc/messages_local", lambda: self.messages_local)
        m.gauge("libproc/bytes_sent", lambda: self.bytes_sent)
        m.gauge("libproc/bytes_received", lambda: self.bytes_received)
        m.gauge("libproc/frames_sent", lambda: self.frames_sent)
        m.gauge("libproc/frames_received", lambda: self.frames_received)
        m.gauge("libproc/actors_alive", lambda: len(self._actors))
        m.gauge("libproc/peers", lambda: len(self._peers))
        m.gauge("libproc/pending_bytes", lambda: sum(q.bytes for q in self._peers.values()))
        # Headline counters exist from the start, so a dashboard finds them before they move.
        m.set("libproc/handler_errors", 0)
        m.gauge("libproc/messages_dropped", self._dropped_total)
        self.log = log

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Runtime:
        if self._started:
            return self
        if self._stopping:
            raise RuntimeError("a stopped runtime cannot be started again; make a new one")
        self._loop = asyncio.get_running_loop()
        self.address = await self.transport.start(self, self.host, self._requested_port)
        other = _runtimes.get(self.address)
        if other is not None and other is not self:
            # Two in-memory networks may hand out the same address; the module-level functions
            # find runtimes by address, so refuse rather than shadow the other runtime.
            await self.transport.stop()
            raise OSError(f"another runtime in this process already serves {self.address}")
        self.host, _, port = self.address.rpartition(":")
        self.port = int(port)
        self.anonymous = UPID("__anonymous__", self.host, self.port)
        _runtimes[self.address] = self
        self._started = True
        self.log = log.bind(runtime=self.address)
        if self.http_port is not None:
            await self._start_http(self.http_port)
        self.log.debug("runtime_started", http_port=self.http_port)
        return self

    async def stop(self, timeout: float = 5.0) -> None:
        """Terminate every actor (running ``finalize``), tell remote linkers, close the wire.

        Before the wire closes, each peer gets a goodbye as the last frame we send it, and those
        whose actors linked to ours are given the transport's ``linger`` (1 s over ZeroMQ) to
        read it (:meth:`_say_goodbye`): that puts the news of our end behind everything we sent
        them, and gives a process that exits once its runtime has stopped the time to deliver
        its last messages. ``timeout`` bounds the actors' ``finalize``.
        """
        if not self._started or self._stopping:
            return
        self._stopping = True
        procs = list(self._actors.values())
        for proc in reversed(procs):
            proc._post_front(_TERMINATE)
        waits = [p._done for p in procs if p._done is not None and not p._done.done()]
        if waits:
            await asyncio.wait(waits, timeout=timeout)
            for proc in procs:
                if proc._state < _TERMINATED:
                    self.log.warning("actor_did_not_stop", actor=str(proc._pid))
                    self._reap(proc)
        for queue in list(self._peers.values()):
            self._flush(queue)
        await self._say_goodbye()
        await self.transport.stop()
        if self._http_runner is not None:
            await self._http_runner.cleanup()
            self._http_runner = None
        for timer in self._link_acks.values():
            timer.cancel()
        self._link_acks.clear()
        for queue in self._peers.values():
            for fut in queue.waiters:
                if not fut.done():
                    fut.set_exception(ConnectionError("runtime stopped"))
        if _runtimes.get(self.address) is self:
            del _runtimes[self.address]
        self._started = False

    async def _say_goodbye(self) -> None:
        """Send every peer we have sent to a goodbye, after all else, and wait for the answers.

        Over ZeroMQ a peer reads our messages on its ROUTER but sees our end on another
        connection (its DEALER's to us, which goes when our ROUTER closes): that news can
        overtake messages still in its socket, or in ZeroMQ's I/O threads, or in our queues. A
        goodbye travels with our messages, so the peer that reads it has read them all; it
        reports our end there (:meth:`_on_goodbye`) and forgets its connection to us, so the
        later disconnection is not reported again. Peers whose actors linked to ours (the only
        ones to whom the order matters: they are told ``exited``) answer it, and we keep our
        ROUTER open until they have, so that their connection to us cannot break first.

        Every wait is bounded by the transport's ``linger``, the time it keeps trying to
        deliver what is queued anyway: a queue blocked by back-pressure is first given that
        long to drain (the goodbye goes after what it holds, or, if it never drains, not at all),
        and the answers the rest of it. A peer that never answers (dead, or not reading in
        time) learns of our end from its transport, as after a crash.
        """
        loop = self._loop
        linger = getattr(self.transport, "linger", 0.0)
        deadline = loop.time() + linger
        blocked = []
        for queue in self._peers.values():
            if queue.msgs:
                fut = loop.create_future()
                queue.waiters.append(fut)
                blocked.append(fut)
        if blocked and linger > 0:
            await asyncio.wait(blocked, timeout=linger)
        for fut in blocked:
            fut.cancel()  # (those still waiting: nothing is to be set on them later)
        unread = self._goodbyes_unread
        goodbye = encode_message("__anonymous__", str(self.anonymous), _GOODBYE, None)
        for address, queue in list(self._peers.items()):
            if queue.msgs or self._peers.get(address) is not queue:
                continue  # still blocked (or lost meanwhile): it cannot be the last frame
            try:
                self._enqueue(address, goodbye, _GOODBYE, system=True)
            except MessageTooLarge:  # (a max_frame_size under 80 bytes)
                break
            self._flush(queue)
            if not queue.msgs and address in self._linked_from:
                unread.add(address)
        self._said_goodbye = True
        remaining = deadline - loop.time()
        if unread and remaining > 0:
            self._goodbyes_read = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._goodbyes_read.wait(), remaining)
            if unread:
                self.log.info("goodbye_unanswered", peers=sorted(unread)[:10], count=len(unread))
        unread.clear()

    def _goodbye_read(self, address: str) -> None:
        """``address`` has read our goodbye, or ended: it need not be waited for."""
        unread = self._goodbyes_unread
        if address in unread:
            unread.discard(address)
            if not unread and self._goodbyes_read is not None:
                self._goodbyes_read.set()

    async def __aenter__(self) -> Runtime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ actors

    def spawn(self, process: Process) -> UPID:
        """Start ``process`` here; ``initialize()`` runs as its first event."""
        if not self._started:
            raise RuntimeError("start the runtime before spawning into it")
        if self._stopping:
            raise RuntimeError(f"runtime {self.address} is stopping")
        if process._runtime is not None:
            raise RuntimeError(f"{process!r} was already spawned")
        ident = process._requested_id
        if ident is None:
            self._next_id += 1
            ident = f"{type(process).__name__.lower()}({self._next_id})"
        if ident in self._actors:
            raise ValueError(f"an actor named {ident!r} already runs at {self.address}")
        pid = UPID(ident, self.host, self.port)
        process._pid = pid
        process._runtime = self
        process._state = _RUNNING
        process._done = self._loop.create_future()
        process.log = process.log.bind(actor=str(pid))
        self._actors[ident] = process
        process._post(_INIT)
        return pid

    def lookup(self, pid: UPID | str) -> Process | None:
        """The local actor behind ``pid``, or None. For tests and tools; actors talk by message."""
        if type(pid) is not UPID:
            pid = UPID.parse(pid)  # type: ignore[arg-type]
        if pid.address != self.address:  # type: ignore[union-attr]
            return None
        return self._actors.get(pid.id)  # type: ignore[union-attr]

    def terminate(self, pid: UPID | str, inject: bool = True) -> bool:
        proc = self.lookup(pid)
        if proc is None:
            return False
        if inject:
            proc._post_front(_TERMINATE)
        else:
            proc._post(_TERMINATE)
        return True

    async def wait(self, pid: UPID | str) -> None:
        proc = self.lookup(pid)
        if proc is not None and proc._done is not None:
            await asyncio.shield(proc._done)

    def submit(
        self, pid: UPID | str, method: Callable[..., Any] | str, *args: Any
    ) -> asyncio.Future[Any]:
        """Run ``method(*args)`` in a local actor's context; returns a future of its result, as
        libprocess's ``dispatch`` does.

        An idle actor (no handler running, nothing queued), called from its own loop, runs it
        here and now, in the caller's turn of the loop, and the future comes back done: no
        mailbox round trip, no wake-up a loop turn later. Nothing can be overtaken (idle means
        an empty mailbox), and the actor is held busy while it runs, as it is for a message
        read off the network. A busy actor takes it as the next event in its mailbox. A call
        from another loop (another thread) is handed to the actor's loop thread-safely and runs
        there, and the future is one of the caller's loop (cancelling it cancels a call that
        has not run yet). ``ProcessNotFound`` is raised at once. Submitting several and
        gathering the futures runs them side by side without a task each. Awaiting a future
        that came back done does not yield to the loop: a loop that polls with ``submit`` alone
        never lets anything else run (``dispatch`` does).
        """
        proc = self.lookup(pid)
        if proc is None or proc._state >= _TERMINATING:
            raise ProcessNotFound(f"no live actor {pid} in runtime {self.address}")
        if isinstance(method, str):
            fn = getattr(proc, method)
        elif getattr(method, "__self__", None) is proc:
            fn = method
        else:
            fn = functools.partial(method, proc)
        loop = self._loop
        running = asyncio._get_running_loop()
        if running is not loop and running is not None:
            return self._submit_from(running, proc, fn, args)
        future = loop.create_future()
        if proc._busy or proc._state != _RUNNING or running is None:
            proc._post(_DISPATCH, fn, args, future)
        else:
            proc._dispatch_now(fn, args, future)
        return future

    def _submit_from(
        self,
        caller: asyncio.AbstractEventLoop,
        proc: Process,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> asyncio.Future[Any]:
        """A call from another event loop, so (as a rule) another thread: the mailbox is only
        touched on the actor's loop, through ``call_soon_threadsafe``, and the caller gets a
        future of its own loop, which it can await."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        loop = self._loop

        def call(*args: Any) -> Any:
            # Checked as the call starts, on the actor's thread: a caller that gave up while
            # it was queued (a cancel can race the actor's next turn) is not run.
            return None if done.cancelled() else fn(*args)

        def post() -> None:
            if done.cancelled():
                return  # the caller gave up before the call was posted
            if proc._state >= _TERMINATING:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    done.set_exception(ProcessNotFound(f"{proc.pid} terminated before the call"))
                return
            inner = loop.create_future()
            inner.add_done_callback(functools.partial(_copy_outcome, done))
            proc._post(_DISPATCH, call, args, inner)

        if not loop.is_running():  # type: ignore[union-attr]
            # Stopped or closed: nothing would ever run the call (a stopped loop's queued
            # callbacks are dropped when it closes), and the caller would wait for ever.
            raise ProcessNotFound(f"{proc.pid}: its runtime's loop is not running")
        try:
            loop.call_soon_threadsafe(post)  # type: ignore[union-attr]
        except RuntimeError:  # closed since
            raise ProcessNotFound(f"{proc.pid}: its runtime's loop is closed") from None
        return asyncio.wrap_future(done, loop=caller)

    async def dispatch(self, pid: UPID | str, method: Callable[..., Any] | str, *args: Any) -> Any:
        """``await submit(...)``, and a yield to the loop even when the call ran at once: an
        ``await dispatch`` stays a point where timers, reads and other actors get their turn."""
        future = self.submit(pid, method, *args)
        if future.done():
            await asyncio.sleep(0)
        return await future

    def _reap(self, proc: Process) -> None:
        """The actor has finished ``finalize``: tell linkers, free its name, wake waiters."""
        if proc._state >= _TERMINATED:
            return
        proc._state = _TERMINATED
        pid = proc._pid
        if self._actors.get(pid.id) is proc:  # type: ignore[union-attr]
            del self._actors[pid.id]  # type: ignore[union-attr]
        self._overfull.discard(proc)
        for event in proc._mailbox:
            if event[0] == _DISPATCH and not event[3].done():
                event[3].set_exception(ProcessTerminated(f"{pid} terminated"))
        proc._mailbox.clear()
        proc._check_marks()  # wakes local senders waiting for room: there is no one to wait for
        proc._task = None
        for linker in proc._linkers:
            if linker.address == self.address:
                other = self._actors.get(linker.id)
                if other is not None:
                    other._post(_EXITED, pid)
            else:
                self._send_system(pid, linker, "libproc/exited")  # type: ignore[arg-type]
        proc._linkers.clear()
        for target in proc._links:
            self._unlink(proc, target)
        proc._links.clear()
        if not self._overfull:
            self.transport.resume_reading()
        if proc._done is not None and not proc._done.done():
            proc._done.set_result(None)

    # ------------------------------------------------------------------ links

    def _link(self, proc: Process, pid: UPID) -> None:
        if pid.address == self.address:
            target = self._actors.get(pid.id)
            if target is None or target._state >= _TERMINATED:
                proc._post(_EXITED, pid)
            else:
                target._linkers.add(proc._pid)  # type: ignore[arg-type]
            return
        if not self._remote_links.get(pid.address):
            # Nothing here is linked at that address yet: take in what the transport knows of
            # it and has not reported, so that an end it has seen (a connection refused a
            # moment ago) is not pinned on this link, made perhaps to a runtime that came up
            # there since. (Its report tells no linker, so it cannot overtake their messages.)
            self.transport.refresh(pid.address)
        linkers = self._remote_links.setdefault(pid.address, {}).setdefault(pid, set())
        linkers.add(proc._pid.id)  # type: ignore[union-attr]
        key = (proc._pid.id, pid)  # type: ignore[union-attr]
        old = self._link_acks.pop(key, None)
        if old is not None:
            old.cancel()
        self._link_acks[key] = Clock.schedule(self.link_timeout, self._link_timed_out, key)
        self._send_system(proc._pid, pid, "libproc/link")  # type: ignore[arg-type]

    def _unlink(self, proc: Process, pid: UPID) -> None:
        if pid.address == self.address:
            target = self._actors.get(pid.id)
            if target is not None:
                target._linkers.discard(proc._pid)  # type: ignore[arg-type]
            return
        by_pid = self._remote_links.get(pid.address)
        if by_pid is not None and pid in by_pid:
            by_pid[pid].discard(proc._pid.id)  # type: ignore[union-attr]
            if not by_pid[pid]:
                del by_pid[pid]
        timer = self._link_acks.pop((proc._pid.id, pid), None)  # type: ignore[union-attr]
        if timer is not None:
            timer.cancel()
        if self._started and not self._stopping:
            self._send_system(proc._pid, pid, "libproc/unlink")  # type: ignore[arg-type]

    def _link_timed_out(self, key: tuple[str, UPID]) -> None:
        if self._link_acks.pop(key, None) is None:
            return
        linker_id, pid = key
        self.metrics.inc("libproc/link_timeouts")
        self._remote_exited(pid, only=linker_id)
        if not self._remote_links.get(pid.address) and not self.transport.ever_connected(
            pid.address
        ):
            # Nothing ever listened there and nobody else waits on it: stop reconnecting. (A
            # peer that did connect is left alone: it may only be slow, and its own death is
            # reported by the transport.)
            self._remote_links.pop(pid.address, None)
            queue = self._peers.pop(pid.address, None)
            if queue is not None and queue.msgs:
                self.metrics.inc("libproc/messages_dropped/peer_down", len(queue.msgs))
            self.transport.forget(pid.address)

    def _remote_exited(self, pid: UPID, only: str | None = None) -> None:
        """Report ``exited(pid)`` to local linkers of a remote actor (all, or just ``only``)."""
        by_pid = self._remote_links.get(pid.address)
        linkers = by_pid.get(pid) if by_pid else None
        if not linkers:
            return
        targets = [only] if only is not None else list(linkers)
        for linker_id in targets:
            linkers.discard(linker_id)
            timer = self._link_acks.pop((linker_id, pid), None)
            if timer is not None:
                timer.cancel()
            proc = self._actors.get(linker_id)
            if proc is not None:
                proc._post(_EXITED, pid)
        if not linkers:
            del by_pid[pid]  # type: ignore[index]

    # ------------------------------------------------------------------ sending

    def send(self, to: UPID | str, name: str, body: Any = None, sender: UPID | None = None) -> None:
        """Send from outside any actor (tests, tools); the sender is ``__anonymous__``."""
        if type(to) is not UPID:
            to = UPID.parse(to)  # type: ignore[arg-type]
        self._send(sender or self.anonymous, to, name, body)  # type: ignore[arg-type]

    def _send(self, sender: UPID, to: UPID, name: str, body: Any) -> None:
        # Counters move only once a send has succeeded: a send that raised queued nothing.
        if to.address == self.address:
            if not _is_plain_body(body):
                raise EncodeError(
                    f"cannot send a {type(body).__name__}: bodies are msgpack types or @record"
                    " dataclasses"
                )
            proc = self._actors.get(to.id)
            if proc is not None and len(proc._mailbox) >= self.mailbox_limit:
                self.metrics.inc("libproc/backpressure")
                raise Backpressure(
                    f"mailbox of {to} holds {len(proc._mailbox)} messages (limit"
                    f" {self.mailbox_limit}); await wait_writable() and retry"
                )
            self.messages_sent += 1
            self.messages_received += 1
            self.messages_local += 1
            if filters.active and filters.intercept(sender, to, name, body):
                return
            if proc is None:
                self._note_bad("unknown_recipient", self.address, f"{name!r} for {to.id!r}")
                return
            proc._deliver(sender, name, body)
            return
        if name.startswith(_SYSTEM_PREFIX):
            raise ValueError("message names starting with 'libproc/' are reserved")
        self._enqueue(to.address, encode_message(to.id, sender._str, name, body), name)
        self.messages_sent += 1

    def _send_system(self, sender: UPID, to: UPID, name: str) -> None:
        if to.address == self.address:
            return
        self._enqueue(to.address, encode_message(to.id, sender._str, name, None), name, system=True)

    def _enqueue(self, address: str, packed: bytes, name: str, system: bool = False) -> None:
        if self._said_goodbye:
            # Stopping, and the goodbye was our last frame to each peer: nothing may follow it.
            self.metrics.inc("libproc/messages_dropped/stopped")
            return
        size = len(packed)
        if size > self.max_frame_size - 16:
            raise MessageTooLarge(
                f"message {name!r} is {size} bytes; the limit is {self.max_frame_size}"
            )
        queue = self._peers.get(address)
        if queue is None:
            queue = self._peers[address] = _OutQueue(address)
        # System messages (link, exited, ...) bypass the limit: they are sent from places that
        # must not fail (an actor's end, a frame being read), and they are tiny. An empty queue
        # takes any message, so one larger than the limit can still go, alone.
        if not system and queue.msgs and queue.bytes + size > self.pending_limit:
            self.metrics.inc("libproc/backpressure")
            raise Backpressure(
                f"{queue.bytes} bytes already wait for {address} (limit {self.pending_limit});"
                " await wait_writable() and retry"
            )
        queue.msgs.append(packed)
        queue.bytes += size
        if not queue.scheduled and not queue.blocked:
            queue.scheduled = True
            if self._reading:
                self._held.append(queue)  # flushed by _read_end, at the end of this read
            else:
                self._loop.call_soon(self._flush, queue)

    def _flush(self, queue: _OutQueue) -> None:
        """Send what waits for one peer, coalesced into as few frames as the size cap allows."""
        queue.scheduled = False
        if self._peers.get(queue.address) is not queue:
            return  # the peer went down after this flush was scheduled
        msgs = queue.msgs
        if msgs and queue.bytes <= self._batch_bytes:
            # Everything fits in one frame: the usual case, a reply or a loop turn's burst.
            frame = encode_batch(msgs)
            if not self.transport.send(queue.address, frame):
                self._send_refused(queue)
                return
            msgs.clear()
            queue.bytes = 0
            self.bytes_sent += len(frame)
            self.frames_sent += 1
        elif msgs:
            self._flush_cut(queue)
            if queue.blocked:
                return
        if queue.waiters:
            for fut in queue.waiters:
                if not fut.done():
                    fut.set_result(None)
            queue.waiters.clear()

    def _flush_cut(self, queue: _OutQueue) -> None:
        """Send a queue too big for one frame as frames of at most ``_batch_bytes`` each."""
        msgs = queue.msgs
        send = self.transport.send
        cap = self._batch_bytes
        while msgs:
            if queue.bytes <= cap:
                n, size = len(msgs), queue.bytes
            else:
                n = size = 0
                for m in msgs:
                    if n and size + len(m) > cap:
                        break
                    size += len(m)
                    n += 1
            frame = encode_batch(msgs if n == len(msgs) else msgs[:n])
            if not send(queue.address, frame):
                self._send_refused(queue)
                return
            if n == len(msgs):
                msgs.clear()
            else:
                del msgs[:n]
            queue.bytes -= size
            self.bytes_sent += len(frame)
            self.frames_sent += 1

    def _send_refused(self, queue: _OutQueue) -> None:
        """The transport cannot take the queue's frames now: they wait in the queue until it
        can (``_on_writable``), or are dropped with it if the peer's end comes first. That is
        back-pressure (counted as ``send_blocked``), unless no connection to the peer has been
        made yet: a connection refused then is the peer's end, and what waits is counted as
        dropped, not handed to a reconnection to whatever comes up there later."""
        queue.blocked = True
        if not self.transport.connecting(queue.address):
            self.metrics.inc("libproc/send_blocked")

    async def wait_writable(self, to: UPID | str) -> None:
        """Wait until messages for ``to`` can be queued again (after a :class:`Backpressure`).

        ``to`` is the actor sent to (a :class:`UPID` or its text) or a runtime's ``host:port``.
        For a remote peer this waits until what is queued for it has gone to the transport; for
        a local actor, until its mailbox has drained to half of ``mailbox_limit``. It returns at
        once when there is nothing to wait for, and never while the send that raised would
        still be refused for the same reason.
        """
        actor_id: str | None = None
        if type(to) is UPID:
            address, actor_id = to.address, to.id
        elif "@" in to:  # type: ignore[operator]
            pid = UPID.parse(to)
            address, actor_id = pid.address, pid.id
        else:
            address = to  # type: ignore[assignment]
        if address == self.address:
            await self._wait_local(actor_id)
            return
        queue = self._peers.get(address)
        if queue is None or not queue.msgs:
            return
        fut = self._loop.create_future()
        queue.waiters.append(fut)
        await fut

    async def _wait_local(self, actor_id: str | None) -> None:
        mark = self.mailbox_limit // 2
        if actor_id is not None:
            proc = self._actors.get(actor_id)
            procs = [proc] if proc is not None else []
        else:
            procs = list(self._actors.values())
        for proc in procs:
            while proc._state < _TERMINATED and len(proc._mailbox) > mark:
                fut = self._loop.create_future()
                proc._writable_waiters.append((mark, fut))
                await fut

    # ------------------------------------------------------------------ transport callbacks

    def _on_writable(self, address: str) -> None:
        queue = self._peers.get(address)
        if queue is not None:
            queue.blocked = False
            self._flush(queue)

    def _on_peer_down(self, address: str, after_goodbye: bool = False) -> None:
        """The transport saw the peer die or become unreachable (no goodbye came), or could not
        connect to it at all (nothing listens there).

        ``after_goodbye``: the refused connection was opened after we read that address's
        goodbye (a send in the goodbye's read, say), and nothing listened there yet. That is
        no peer lost: the runtime we knew there said its goodbye, whose end was reported then.
        What was sent there is dropped and counted all the same; and a link made there since
        (to a runtime expected to come up) is refused, so its linkers hear ``exited``."""
        if after_goodbye and not self._remote_links.get(address):
            self._peer_ended(address, "peer_refused_after_goodbye")
            return
        self.metrics.inc("libproc/peers_lost")
        self._peer_ended(address, "peer_down")

    def _on_goodbye(self, sender: UPID) -> None:
        """The peer at ``sender.address`` is stopping, and everything it sent us is read: its
        end is reported here, in order (see :meth:`_say_goodbye`). We answer (straight through
        the transport: what our queue holds for the peer is dropped, it has no one to read it)
        and forget our connection to it, letting the answer leave first, so that its closing
        is not reported as a second end. A peer we never linked to ends the same way: it has
        no links of ours to report, only linkers, queues and a connection to drop, if that."""
        address = sender.address
        self.metrics.inc("libproc/peers_left")
        answer = encode_message(sender.id, str(self.anonymous), _GOODBYE_READ, None)
        self.transport.send(address, encode_batch([answer]))
        self._peer_ended(address, "peer_left", flush=True)

    def _peer_ended(self, address: str, event: str, flush: bool = False) -> None:
        """Report the end of the peer at ``address``: its links end (``exited``), what waits
        for it is dropped, and the transport forgets it. Reported once: after it, the peer is
        unknown here (no queue, no links), and the transport reports nothing more of the
        connection it forgot; a later peer at the same address starts afresh."""
        self._linked_from.discard(address)
        self._goodbye_read(address)
        queue = self._peers.pop(address, None)
        dropped = len(queue.msgs) if queue is not None else 0
        if dropped:
            self.metrics.inc("libproc/messages_dropped/peer_down", dropped)
        self.log.info(event, peer=address, dropped=dropped)
        self.transport.forget(address, flush=flush)
        if queue is not None:
            queue.msgs.clear()  # a flush already scheduled must not reopen the connection
            queue.bytes = 0
            for fut in queue.waiters:
                if not fut.done():
                    fut.set_result(None)
        # Actors there that linked to ours are gone too: telling them of our ends later would
        # only open a connection to a dead address.
        for proc in self._actors.values():
            if proc._linkers:
                proc._linkers = {p for p in proc._linkers if p.address != address}
        by_pid = self._remote_links.get(address)
        if by_pid:
            for pid in list(by_pid):
                self._remote_exited(pid)

    def _read_begin(self) -> None:
        """The transport starts handing over what one read callback found.

        Messages sent until :meth:`_read_end` (replies of handlers that ran inline, see
        :meth:`Process._deliver_now`) wait for it rather than for a flush scheduled with
        ``call_soon``: they still leave coalesced, one frame per peer for the whole read, but in
        the same loop turn, which saves a loop iteration per round trip.
        """
        self._reading += 1

    def _read_end(self) -> None:
        """The read callback is over: send what its handlers queued."""
        self._reading -= 1
        if self._reading or not self._held:
            return
        held = self._held
        self._held = []
        try:
            for queue in held:
                if queue.scheduled:  # not flushed meanwhile (by _on_writable, say)
                    self._flush(queue)
        except BaseException:
            # Whatever failed is the loop's to report, as from a scheduled flush; the queues
            # not reached yet must still go.
            for queue in held:
                if queue.scheduled:
                    self._loop.call_soon(self._flush, queue)
            raise

    def _on_bad_frame(self, kind: str, source: str, detail: str) -> None:
        self._note_bad(kind, source, detail)

    def _on_frame(self, source: str, frame: bytes) -> None:
        size = len(frame)
        self.frames_received += 1
        self.bytes_received += size
        if size > self.max_frame_size:
            self._note_bad("oversize", source, f"{size} bytes > {self.max_frame_size}")
            return
        try:
            batch = decode_batch(frame)
        except DecodeError as e:
            self._note_bad(e.kind, source, str(e))
            return
        upids = self._upids
        actors = self._actors
        # A frame holding one message (a request, a reply) goes straight to an idle recipient's
        # handler; a batch goes through the mailboxes, so that a burst is handled a drain budget
        # at a time and fills mailboxes past their high-water mark (pausing reads) as before.
        alone = len(batch) == 1
        for item in batch:
            if type(item) is not list or len(item) != 4:
                if type(item) is BadMessage:
                    self._note_bad(item.kind, source, item.detail)
                else:
                    self._note_bad("bad_message", source, "not [recipient, sender, name, body]")
                continue
            to_id, sender_text, name, body = item
            if type(to_id) is not str or type(sender_text) is not str or type(name) is not str:
                self._note_bad("bad_message", source, "recipient, sender and name must be strings")
                continue
            # An id that names a live actor is well-formed (spawn made a UPID of it); any other
            # is checked, so that building the recipient's UPID (for filters and system
            # messages) cannot raise halfway through a frame.
            proc = actors.get(to_id)
            if proc is None and (not to_id or "@" in to_id or "/" in to_id):
                self._note_bad("bad_message", source, f"bad recipient id {to_id!r}")
                continue
            sender = upids.get(sender_text)
            if sender is None:
                try:
                    sender = UPID.parse(sender_text)
                except UPIDError as e:
                    self._note_bad("bad_sender", source, str(e))
                    continue
                if len(upids) > 100_000:
                    upids.clear()
                upids[sender_text] = sender
            if sender.address != source:
                self._note_bad(
                    "forged_sender", source, f"sender {sender_text!r} on a connection from {source}"
                )
                continue
            self.messages_received += 1
            if name.startswith(_SYSTEM_PREFIX):
                self._system(sender, to_id, name, body)
                continue
            if filters.active:
                if filters.intercept(sender, UPID(to_id, self.host, self.port), name, body):
                    continue
                proc = actors.get(to_id)  # a filter's callback may have spawned it
            if proc is None:
                self._note_bad("unknown_recipient", source, f"{name!r} for {to_id!r}")
                continue
            if alone:
                proc._deliver_now(sender, name, body)
            else:
                proc._deliver(sender, name, body)

    def _system(self, sender: UPID, to_id: str, name: str, body: Any = None) -> None:
        if name == "libproc/link":
            target = self._actors.get(to_id)
            me = UPID(to_id, self.host, self.port)
            if target is None or target._state >= _TERMINATED:
                self._send_system(me, sender, "libproc/exited")
            else:
                target._linkers.add(sender)
                self._linked_from.add(sender.address)
                self._send_system(me, sender, "libproc/linked")
        elif name == "libproc/linked":
            timer = self._link_acks.pop((to_id, sender), None)
            if timer is not None:
                timer.cancel()
        elif name == "libproc/exited":
            self._remote_exited(sender, only=to_id)
        elif name == "libproc/unlink":
            target = self._actors.get(to_id)
            if target is not None:
                target._linkers.discard(sender)
        elif name == _GOODBYE or name == _GOODBYE_READ:
            if body is not None:
                self._note_bad("bad_message", sender.address, f"{name!r} with a body")
            elif name == _GOODBYE:
                self._on_goodbye(sender)
            else:
                self._goodbye_read(sender.address)
        else:
            self._note_bad("unknown_message", sender.address, f"unknown system message {name!r}")

    def _dropped_total(self) -> float:
        """Every message dropped, whatever the reason (the sum of ``messages_dropped/*``)."""
        prefix = "libproc/messages_dropped/"
        return sum(v for k, v in self.metrics.counters.items() if k.startswith(prefix))

    def _note_bad(self, kind: str, source: str, detail: str) -> None:
        """Count a dropped message and log it without flooding: 1st, 10th, 100th, … per kind."""
        self.metrics.inc(f"libproc/messages_dropped/{kind}")
        seen = self._bad_seen.get(kind, 0) + 1
        self._bad_seen[kind] = seen
        if _is_power_of_ten(seen):
            self.log.warning("message_dropped", reason=kind, peer=source, detail=detail, count=seen)

    # ------------------------------------------------------------------ back-pressure

    def _mailbox_overfull(self, proc: Process) -> None:
        if not self._overfull:
            self.metrics.inc("libproc/reading_paused")
            self.transport.pause_reading()
        self._overfull.add(proc)

    def _mailbox_drained(self, proc: Process) -> None:
        self._overfull.discard(proc)
        if not self._overfull:
            self.transport.resume_reading()

    # ------------------------------------------------------------------ idleness (settle)

    def _idle(self) -> bool:
        for proc in self._actors.values():
            if proc._busy:
                return False
        for queue in self._peers.values():
            if queue.msgs:
                return False
        return self.transport.pending() == 0

    # ------------------------------------------------------------------ HTTP

    async def _start_http(self, port: int) -> None:
        from libproc.http import start_http

        self._http_runner, self.http_port = await start_http(self, self.host, port)

    def __repr__(self) -> str:
        return f"<Runtime {self.address or 'unstarted'} actors={len(self._actors)}>"


def _copy_outcome(target: concurrent.futures.Future[Any], source: asyncio.Future[Any]) -> None:
    """Hand an actor's answer to a caller on another loop (a thread-safe future)."""
    if target.done():
        return  # the caller gave up (cancelled)
    try:
        if source.cancelled():
            target.cancel()
        elif (error := source.exception()) is not None:
            target.set_exception(error)
        else:
            target.set_result(source.result())
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by the caller's thread a moment ago


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


# ---------------------------------------------------------------------- module-level API


def _runtime_of(pid: UPID | str) -> Runtime | None:
    if type(pid) is not UPID:
        pid = UPID.parse(pid)  # type: ignore[arg-type]
    return _runtimes.get(pid.address)  # type: ignore[union-attr]


def spawn(process: Process, runtime: Runtime | None = None) -> UPID:
    """Start ``process`` in ``runtime`` (default: the only, or first started, runtime)."""
    if runtime is None:
        if not _runtimes:
            raise RuntimeError("no libproc runtime is running; start one: `async with Runtime()`")
        runtime = next(iter(_runtimes.values()))
    return runtime.spawn(process)


def terminate(pid: UPID | str, inject: bool = True) -> bool:
    """Ask a local actor to stop; ``inject`` puts the request ahead of queued messages."""
    runtime = _runtime_of(pid)
    return runtime.terminate(pid, inject) if runtime else False


async def wait(pid: UPID | str) -> None:
    """Wait until a local actor has terminated (returns at once if it is not running)."""
    runtime = _runtime_of(pid)
    if runtime is not None:
        await runtime.wait(pid)


async def dispatch(pid: UPID | str, method: Callable[..., Any] | str, *args: Any) -> Any:
    """Run ``method(*args)`` in a local actor's context and return (or raise) its result."""
    runtime = _runtime_of(pid)
    if runtime is None:
        raise ProcessNotFound(f"no runtime in this process serves {pid}")
    return await runtime.dispatch(pid, method, *args)


def submit(pid: UPID | str, method: Callable[..., Any] | str, *args: Any) -> asyncio.Future[Any]:
    """Run ``method(*args)`` in a local actor's context; a future of its result (see
    :meth:`Runtime.submit`)."""
    runtime = _runtime_of(pid)
    if runtime is None:
        raise ProcessNotFound(f"no runtime in this process serves {pid}")
    return runtime.submit(pid, method, *args)


async def settle(timeout: float = 10.0) -> None:
    """Wait until every actor in every runtime is idle and nothing is in flight.

    With a paused :class:`Clock` this makes tests deterministic: ``Clock.advance(5); await
    settle()`` runs everything the timers set off, and everything that set off, before returning.
    Frames inside ZeroMQ are invisible here, so settle is exact on the in-memory transport and
    best-effort over TCP.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    quiet = 0
    while quiet < 3:
        await asyncio.sleep(0)
        if all(rt._idle() for rt in list(_runtimes.values())):
            quiet += 1
        else:
            quiet = 0
            if loop.time() > deadline:
                busy = [
                    repr(p) for rt in _runtimes.values() for p in rt._actors.values() if p._busy
                ]
                raise TimeoutError(f"actors did not settle within {timeout}s; busy: {busy[:10]}")
