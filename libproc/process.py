"""The actor: one mailbox, one handler at a time.

A :class:`Process` is a plain object with a mailbox. Everything that touches it — messages, timers,
``dispatch`` calls, HTTP requests, ``exited`` notices — is an event in that mailbox, and the
mailbox is drained by one callback on the event loop, so an actor's state needs no locks: two of
its handlers never run at the same time. A handler may be ``async``; the mailbox then waits for it
before the next event, which keeps that guarantee across ``await``.

Draining runs straight off ``loop.call_soon`` (no task per message): a sync handler costs a
function call, which is why in-process ping-pong beats an ``asyncio.Queue`` pair. A message that
arrives alone in a frame from another runtime skips even that when its actor is idle: the handler
runs in the transport's read callback (:meth:`Process._deliver_now`).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import types
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from libproc.clock import Clock, Timer
from libproc.log import get_logger
from libproc.upid import UPID

if TYPE_CHECKING:
    from libproc.metrics import Metrics
    from libproc.runtime import Runtime

__all__ = ["Handler", "Process", "handler", "route"]

Handler = Callable[[UPID, Any], Any]
F = TypeVar("F", bound=Callable[..., Any])

# Mailbox event kinds.
_MESSAGE, _DISPATCH, _TIMER, _EXITED, _TERMINATE, _INIT = range(6)

# States.
_NEW, _RUNNING, _TERMINATING, _TERMINATED = range(4)

# How many events one drain handles before yielding the loop to I/O and other actors.
_DRAIN_BUDGET = 512

_PLAIN_TYPES = frozenset({type(None), bool, int, float, str, bytes, list, dict, tuple})


def handler(name: str) -> Callable[[F], F]:
    """Decorate a method ``(self, sender, body)`` as the handler of messages named ``name``."""

    def mark(fn: F) -> F:
        fn._libproc_handler = name  # type: ignore[attr-defined]
        return fn

    return mark


def route(path: str) -> Callable[[F], F]:
    """Decorate a method ``(self, request)`` as the HTTP handler of ``/<actor id>/<path>``."""

    def mark(fn: F) -> F:
        fn._libproc_route = path.strip("/")  # type: ignore[attr-defined]
        return fn

    return mark


def _is_awaitable(obj: object) -> bool:
    """``inspect.isawaitable``, quick for what is not awaitable: a handler's or a dispatched
    method's result is mostly a plain value, and the ABC check ``isawaitable`` ends with costs
    about a microsecond for one. (What defines ``__await__`` is what that check accepts.)"""
    kind = type(obj)
    if kind is types.CoroutineType or getattr(kind, "__await__", None) is not None:
        return True
    return kind is types.GeneratorType and inspect.isawaitable(obj)


class Process:
    """Base class of an actor. Subclass it, install handlers, ``spawn`` it into a runtime.

    ``terminate_on_error``: by default a handler that raises is logged and counted and the actor
    goes on with its next message; set it True for actors that would rather stop (their linkers
    then see ``exited``) than run on in a state they no longer trust.
    """

    terminate_on_error: bool = False
    _class_handlers: dict[str, str] = {}
    _class_routes: dict[str, str] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[str, str] = {}
        routes: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                name = getattr(value, "_libproc_handler", None)
                if name is not None:
                    handlers[name] = attr
                path = getattr(value, "_libproc_route", None)
                if path is not None:
                    routes[path] = attr
        cls._class_handlers = handlers
        cls._class_routes = routes

    def __init__(self, id: str | None = None) -> None:
        self._requested_id = id
        self._pid: UPID | None = None
        self._runtime: Runtime | None = None
        self._handlers: dict[str, Handler] = {}
        self._routes: dict[str, Callable[..., Any]] = {}
        self._mailbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._busy = False
        self._state = _NEW
        self._links: set[UPID] = set()
        self._linkers: set[UPID] = set()
        self._done: asyncio.Future[None] | None = None
        self._overfull = False
        # Local senders waiting (after Backpressure) for the mailbox to drain to a mark.
        self._writable_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None  # the async handler running now, if any
        for name, attr in self._class_handlers.items():
            self._handlers[name] = getattr(self, attr)
        for path, attr in self._class_routes.items():
            self._routes[path] = getattr(self, attr)
        self.log: Any = get_logger("libproc.process")

    # ----------------------------------------------------------------- identity and context

    @property
    def pid(self) -> UPID:
        if self._pid is None:
            raise RuntimeError(f"{type(self).__name__} has not been spawned")
        return self._pid

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError(f"{type(self).__name__} has not been spawned")
        return self._runtime

    @property
    def metrics(self) -> Metrics:
        # One property, not two (``self.runtime.metrics``): actors count on their hot paths.
        runtime = self._runtime
        if runtime is None:
            raise RuntimeError(f"{type(self).__name__} has not been spawned")
        return runtime.metrics

    # ----------------------------------------------------------------- hooks to override

    def initialize(self) -> Awaitable[None] | None:
        """Runs in the actor's context before any message. May be async."""
        return None

    def finalize(self) -> Awaitable[None] | None:
        """Runs in the actor's context when it terminates. May be async."""
        return None

    def exited(self, pid: UPID) -> Awaitable[None] | None:
        """A linked actor ended, or its host became unreachable. Fires once per link."""
        return None

    def unhandled(self, sender: UPID, name: str, body: Any) -> None:
        """A message with no installed handler; counted and dropped unless overridden."""
        self.runtime._note_bad("unknown_message", sender.address, f"{name!r} for {self.pid.id}")

    # ----------------------------------------------------------------- wiring

    def install(self, name: str, fn: Handler) -> None:
        """Route messages named ``name`` to ``fn(sender, body)`` (sync or async)."""
        if name.startswith("libproc/"):
            raise ValueError("message names starting with 'libproc/' are reserved")
        self._handlers[name] = fn

    def route(self, path: str, fn: Callable[..., Any]) -> None:
        """Serve ``fn(request)`` at ``/<actor id>/<path>`` on the runtime's HTTP port.

        ``fn`` runs in the actor's context and returns an ``aiohttp.web.Response`` or any
        JSON-serialisable value.
        """
        self._routes[path.strip("/")] = fn

    # ----------------------------------------------------------------- messaging

    def send(self, to: UPID | str, name: str, body: Any = None) -> None:
        """Fire-and-forget. Local actors get the body object itself (treat bodies as immutable);
        remote ones get it over the transport. Raises ``EncodeError`` for a body that cannot
        travel and ``Backpressure`` when the peer's queue is past its high-water mark.
        """
        if type(to) is not UPID:
            to = UPID.parse(to)  # type: ignore[arg-type]
        runtime = self._runtime
        if runtime is None:
            raise RuntimeError(f"{type(self).__name__} must be spawned before it can send")
        runtime._send(self._pid, to, name, body)  # type: ignore[arg-type]

    async def wait_writable(self, to: UPID | str) -> None:
        """Wait until ``to``'s host can take more messages (after a ``Backpressure``)."""
        if type(to) is not UPID:
            to = UPID.parse(to)  # type: ignore[arg-type]
        await self.runtime.wait_writable(to)  # type: ignore[arg-type]

    def link(self, pid: UPID | str) -> UPID:
        """Be told, once, through :meth:`exited` when ``pid`` ends or becomes unreachable."""
        if type(pid) is not UPID:
            pid = UPID.parse(pid)  # type: ignore[arg-type]
        if pid in self._links:
            return pid  # type: ignore[return-value]
        self._links.add(pid)  # type: ignore[arg-type]
        self.runtime._link(self, pid)  # type: ignore[arg-type]
        return pid  # type: ignore[return-value]

    def unlink(self, pid: UPID | str) -> None:
        if type(pid) is not UPID:
            pid = UPID.parse(pid)  # type: ignore[arg-type]
        if pid in self._links:
            self._links.discard(pid)  # type: ignore[arg-type]
            self.runtime._unlink(self, pid)  # type: ignore[arg-type]

    def delay(self, seconds: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` in this actor's context after ``seconds`` of :class:`Clock` time."""
        return Clock.schedule(seconds, self._post, _TIMER, fn, args)

    def defer(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in this actor's context once the events already in its mailbox
        have been handled, before any that arrive later.

        For work done once per burst rather than once per event: a handler that collects what
        a burst of messages produces (say, replies to the same peer) defers one call that sends
        it all as one message. Not a timer: it does not wait for :class:`Clock` time, so a
        paused clock does not hold it. Dropped if the actor ends first.
        """
        self._post(_TIMER, fn, args)

    def spawn(self, process: Process) -> UPID:
        """Start another actor in this actor's runtime."""
        return self.runtime.spawn(process)

    def terminate(self) -> None:
        """Ask this actor to stop once the current handler returns."""
        self._post_front(_TERMINATE)

    # ----------------------------------------------------------------- mailbox internals

    def _post(self, *event: Any) -> None:
        if self._state >= _TERMINATED:
            return
        self._mailbox.append(event)
        if not self._busy:
            self._busy = True
            self._runtime._loop.call_soon(self._drain)  # type: ignore[union-attr]

    def _post_front(self, *event: Any) -> None:
        if self._state >= _TERMINATED:
            return
        mailbox = self._mailbox
        if mailbox and mailbox[0][0] == _INIT:
            # Jump the queue, but never ahead of initialize(): finalize() may rely on it.
            mailbox.insert(1, event)
        else:
            mailbox.appendleft(event)
        if not self._busy:
            self._busy = True
            self._runtime._loop.call_soon(self._drain)  # type: ignore[union-attr]

    def _deliver(self, sender: UPID, name: str, body: Any) -> None:
        """Called by the runtime for every message addressed to this actor."""
        if self._state >= _TERMINATED:
            return
        mailbox = self._mailbox
        mailbox.append((_MESSAGE, sender, name, body))
        if not self._busy:
            self._busy = True
            self._runtime._loop.call_soon(self._drain)  # type: ignore[union-attr]
        elif len(mailbox) > self._runtime._mailbox_hwm and not self._overfull:  # type: ignore[union-attr]
            self._overfull = True
            self._runtime._mailbox_overfull(self)  # type: ignore[union-attr]

    def _deliver_now(self, sender: UPID, name: str, body: Any) -> None:
        """Called by the runtime for a message read off the network: an idle actor runs its
        handler right here, in the transport's read callback, rather than a loop turn later.

        Idle means no handler running and nothing queued (``_busy`` is false only when the
        mailbox is empty), so running it now cannot overtake an earlier message from anyone, and
        ``_busy`` is held while it runs, so a second handler cannot start. That saves a
        ``call_soon`` and a loop iteration per message on the latency path of every
        cross-process request and reply. Local sends keep going through :meth:`_deliver`:
        running those inline would nest a ping-pong pair's handlers until the stack ran out.
        """
        fn = self._handlers.get(name)
        if self._busy or self._state != _RUNNING or fn is None:
            self._deliver(sender, name, body)
            return
        # What _drain would do with this one event, without the round trip through the mailbox.
        self._busy = True
        try:
            result = fn(sender, body)
        except Exception as exc:
            self._failed((_MESSAGE, sender, name, body), exc)
            result = None
        if result is not None and _is_awaitable(result):
            if self._overfull or self._writable_waiters:
                self._check_marks()
            self._task = self._runtime._loop.create_task(  # type: ignore[union-attr]
                self._finish_async(result, (_MESSAGE, sender, name, body))
            )
            return
        if self._state >= _TERMINATED:
            return
        if self._mailbox:  # the handler posted to its own actor (terminate, a timer, ...)
            self._drain()
            return
        if self._overfull or self._writable_waiters:
            self._check_marks()
        self._busy = False

    def _dispatch_now(self, fn: Callable[..., Any], args: tuple[Any, ...], future: Any) -> None:
        """A dispatch to this idle actor, run by the caller (see :meth:`Runtime.submit`): what
        :meth:`_drain` would do with the one event, as :meth:`_deliver_now` does for a message."""
        self._busy = True
        try:
            result = fn(*args)
        except Exception as exc:
            future.set_exception(exc)
            result = None
        else:
            if result is not None and _is_awaitable(result):
                # An async method: the actor stays busy until it is over, as in the mailbox.
                self._task = self._runtime._loop.create_task(  # type: ignore[union-attr]
                    self._finish_async(
                        self._dispatch_async(result, future), (_DISPATCH, fn, args, future)
                    )
                )
                return
            future.set_result(result)
        if self._state >= _TERMINATED:
            return
        if self._mailbox:  # it posted to itself (a timer, a terminate, a defer)
            self._runtime._loop.call_soon(self._drain)  # type: ignore[union-attr]
            return
        if self._overfull or self._writable_waiters:
            self._check_marks()
        self._busy = False

    def _drain(self) -> None:
        mailbox = self._mailbox
        handlers = self._handlers
        budget = _DRAIN_BUDGET
        while mailbox and budget:
            budget -= 1
            event = mailbox.popleft()
            try:
                # A message, the common event, is handled here rather than through _handle:
                # one Python call less per message.
                if event[0] == _MESSAGE:
                    fn = handlers.get(event[2])
                    if fn is None:
                        result = self._handle(event)
                    else:
                        result = fn(event[1], event[3])
                        if result is not None and not _is_awaitable(result):
                            result = None
                else:
                    result = self._handle(event)
            except Exception as exc:
                self._failed(event, exc)
                result = None
            if result is not None:
                # An async handler: hold the mailbox until it completes. Keep a reference to
                # the task: the loop holds tasks only weakly, and one awaiting a future nobody
                # else references could be garbage-collected mid-handler.
                if self._overfull or self._writable_waiters:
                    self._check_marks()
                self._task = self._runtime._loop.create_task(  # type: ignore[union-attr]
                    self._finish_async(result, event)
                )
                return
            if self._state >= _TERMINATED:
                return
        if self._overfull or self._writable_waiters:
            self._check_marks()
        if mailbox:
            self._runtime._loop.call_soon(self._drain)  # type: ignore[union-attr]
        else:
            self._busy = False

    def _check_marks(self) -> None:
        """The mailbox shrank: resume network reads below the low-water mark, and wake local
        senders waiting for room."""
        size = len(self._mailbox)
        runtime = self._runtime
        if self._overfull and size < runtime._mailbox_lwm:  # type: ignore[union-attr]
            self._overfull = False
            runtime._mailbox_drained(self)  # type: ignore[union-attr]
        if self._writable_waiters:
            waiting = []
            for mark, fut in self._writable_waiters:
                if size <= mark or self._state >= _TERMINATED:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    waiting.append((mark, fut))
            self._writable_waiters = waiting

    async def _finish_async(self, awaitable: Awaitable[Any], event: tuple[Any, ...]) -> None:
        try:
            value = await awaitable
        except asyncio.CancelledError as exc:
            # The handler awaited something that was cancelled: a failure of that handler, not
            # a reason to wedge the mailbox. Only a cancellation of this task itself (loop
            # shutdown) propagates.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            self._failed(event, exc)
        except Exception as exc:
            self._failed(event, exc)
        else:
            if event[0] == _DISPATCH and not event[3].done():
                event[3].set_result(value)
        if self._state == _TERMINATING and event[0] == _TERMINATE:
            self._runtime._reap(self)  # type: ignore[union-attr]
            return
        if self._state >= _TERMINATED:
            return
        self._drain()

    def _handle(self, event: tuple[Any, ...]) -> Awaitable[Any] | None:
        """Run one event; returns an awaitable when the handler turned out to be async."""
        kind = event[0]
        if kind == _MESSAGE:
            _, sender, name, body = event
            fn = self._handlers.get(name)
            if fn is None:
                self.unhandled(sender, name, body)
                return None
            result = fn(sender, body)
        elif kind == _DISPATCH:
            _, fn, args, future = event
            if future.done():  # the caller gave up (cancelled)
                return None
            try:
                result = fn(*args)
            except Exception as exc:
                future.set_exception(exc)
                return None
            if _is_awaitable(result):
                return self._dispatch_async(result, future)
            future.set_result(result)
            return None
        elif kind == _TIMER:
            _, fn, args = event
            result = fn(*args)
        elif kind == _EXITED:
            pid = event[1]
            if pid not in self._links:
                return None  # already reported once, or unlinked
            self._links.discard(pid)
            result = self.exited(pid)
        elif kind == _TERMINATE:
            return self._begin_terminate()
        elif kind == _INIT:
            result = self.initialize()
        else:  # pragma: no cover - internal invariant
            raise AssertionError(f"unknown event {event!r}")
        if result is not None and _is_awaitable(result):
            return result
        return None

    async def _dispatch_async(self, awaitable: Awaitable[Any], future: asyncio.Future) -> None:
        try:
            value = await awaitable
        except asyncio.CancelledError:
            if not future.done():
                future.cancel()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(value)

    def _begin_terminate(self) -> Awaitable[Any] | None:
        if self._state >= _TERMINATING:
            return None
        self._state = _TERMINATING
        try:
            result = self.finalize()
        except Exception as exc:
            self._failed((_TERMINATE,), exc, during_finalize=True)
            result = None
        if result is not None and _is_awaitable(result):
            return self._finalize_async(result)
        self._runtime._reap(self)  # type: ignore[union-attr]
        return None

    async def _finalize_async(self, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            self._failed((_TERMINATE,), exc, during_finalize=True)
        except Exception as exc:
            self._failed((_TERMINATE,), exc, during_finalize=True)

    def _failed(
        self, event: tuple[Any, ...], exc: BaseException, during_finalize: bool = False
    ) -> None:
        runtime = self._runtime
        runtime.metrics.inc("libproc/handler_errors")  # type: ignore[union-attr]
        what = _describe(event, during_finalize)
        self.log.error(
            "handler_error",
            actor=str(self._pid),
            handling=str(what),
            error=repr(exc),
            exc_info=exc,
        )
        if self.terminate_on_error and not during_finalize and self._state < _TERMINATING:
            self._post_front(_TERMINATE)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._pid or 'unspawned'}>"


def _describe(event: tuple[Any, ...], during_finalize: bool) -> str:
    """What an event was, for a log line: the message name, the hook, or the function."""
    kind = event[0]
    if during_finalize or kind == _TERMINATE:
        return "finalize"
    if kind == _MESSAGE:
        return str(event[2])
    if kind == _INIT:
        return "initialize"
    if kind == _EXITED:
        return "exited"
    fn = event[1]
    return getattr(fn, "__qualname__", None) or repr(fn)


def _is_plain_body(body: Any) -> bool:
    return type(body) in _PLAIN_TYPES or hasattr(type(body), "_libproc_fields")
