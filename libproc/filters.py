"""Message filters for tests, in the spirit of libprocess's FUTURE_MESSAGE and DROP_MESSAGES.

``expect_message(name=..., sender=..., to=...)`` returns a future of the next matching message
(which is still delivered); ``drop_messages(...)`` swallows matching messages until cancelled — the
way to test retries (drop the acknowledgements, watch the updates come again). Filters see every
message at the moment it would enter a mailbox, local or remote, in every runtime of the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from libproc.upid import UPID

__all__ = ["Message", "drop_messages", "expect_message"]

active = False
_filters: list[_Filter] = []


@dataclass(frozen=True)
class Message:
    sender: UPID
    to: UPID
    name: str
    body: Any


class _Filter:
    def __init__(
        self,
        name: str | None,
        sender: UPID | str | None,
        to: UPID | str | None,
        where: Callable[[Message], bool] | None,
        drop: bool,
        future: asyncio.Future[Message] | None,
    ) -> None:
        self.name = name
        self.sender = str(sender) if sender is not None else None
        self.to = str(to) if to is not None else None
        self.where = where
        self.drop = drop
        self.future = future
        self.count = 0

    def matches(self, msg: Message) -> bool:
        if self.name is not None and msg.name != self.name:
            return False
        if self.sender is not None and not _pid_matches(self.sender, msg.sender):
            return False
        if self.to is not None and not _pid_matches(self.to, msg.to):
            return False
        return self.where is None or bool(self.where(msg))

    def cancel(self) -> None:
        """Stop dropping (or expecting)."""
        _remove(self)

    def __enter__(self) -> _Filter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def _pid_matches(pattern: str, pid: UPID) -> bool:
    # A pattern without '@' names an actor id in any runtime.
    return pattern == str(pid) if "@" in pattern else pattern == pid.id


def _remove(f: _Filter) -> None:
    global active
    if f in _filters:
        _filters.remove(f)
    active = bool(_filters)


def intercept(sender: UPID, to: UPID, name: str, body: Any) -> bool:
    """Called by runtimes for each message; True means drop it."""
    msg = Message(sender, to, name, body)
    dropped = False
    for f in list(_filters):
        if not f.matches(msg):
            continue
        f.count += 1
        if f.future is not None:
            if not f.future.done():
                f.future.set_result(msg)
            _remove(f)
        elif f.drop:
            dropped = True
    return dropped


def expect_message(
    name: str | None = None,
    sender: UPID | str | None = None,
    to: UPID | str | None = None,
    where: Callable[[Message], bool] | None = None,
) -> asyncio.Future[Message]:
    """A future of the next message matching all given criteria; the message is still delivered."""
    global active
    future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    f = _Filter(name, sender, to, where, drop=False, future=future)
    _filters.append(f)
    active = True
    future.add_done_callback(lambda _: _remove(f))
    return future


def drop_messages(
    name: str | None = None,
    sender: UPID | str | None = None,
    to: UPID | str | None = None,
    where: Callable[[Message], bool] | None = None,
) -> _Filter:
    """Drop every matching message until ``.cancel()`` (or the ``with`` block ends).

    ``.count`` tells how many were dropped.
    """
    global active
    f = _Filter(name, sender, to, where, drop=True, future=None)
    _filters.append(f)
    active = True
    return f


def clear() -> None:
    """Remove every filter; for test teardown."""
    global active
    _filters.clear()
    active = False
