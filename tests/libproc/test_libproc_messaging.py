"""Sending: what a body becomes on the way, and the order messages arrive in.

Inside one runtime a body is handed over as the very same object (no serialisation: that is
what makes in-process actors cheap). Between runtimes it crosses ZeroMQ as msgpack, so it must be
msgpack-able or a declared ``@record``; anything else is refused at ``send``, where the bug is,
not at some receiver. Either way, messages from one sender to one receiver arrive in the order
they were sent."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from lp_support import Recorder, within

import libproc
from libproc import (
    UPID,
    EncodeError,
    MessageTooLarge,
    Process,
    Runtime,
    handler,
    record,
    settle,
)
from libproc.filters import expect_message


@record("tests.libproc.Point")
@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@record("tests.libproc.Shape")
@dataclasses.dataclass
class Shape:
    name: str
    corners: list[Point]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class NotARecord:
    x: int


class Sender(Process):
    """Sends whatever it is asked to, from inside an actor."""

    def blast(self, to: UPID, name: str, bodies: list[Any]) -> None:
        for body in bodies:
            self.send(to, name, body)

    def numbered(self, to: UPID, start: int, stop: int) -> None:
        for i in range(start, stop):
            self.send(to, "n", i)

    def one(self, to: UPID, name: str, body: Any) -> None:
        self.send(to, name, body)


async def test_local_send_hands_over_the_same_object(rt: Runtime) -> None:
    rec = Recorder()
    rec_pid = rt.spawn(rec)
    sender = rt.spawn(Sender())
    body = {"payload": [1, 2, 3], "nested": {"k": b"bytes"}}
    shape = Shape("tri", [Point(0, 0), Point(1, 0), Point(0, 1)])
    await libproc.dispatch(sender, "blast", rec_pid, "x", [body, shape])
    await rec.wait_count(2)
    assert rec.got[0][2] is body
    assert rec.got[1][2] is shape


async def test_remote_send_round_trips_msgpack_and_records(rt: Runtime, rt2: Runtime) -> None:
    rec = Recorder()
    rec_pid = rt2.spawn(rec)
    sender_pid = rt.spawn(Sender())
    shape = Shape("tri", [Point(0, 0), Point(1, 0), Point(0, 1)], {"color": "red"})
    bodies = [
        None,
        True,
        -(2**63),
        2**64 - 1,
        1.5,
        "ünïcode",
        b"\x00\xff",
        [1, [2, [3]]],
        {"a": {"b": None}},
        {1: "int keys"},
        Point(3, 4),
        shape,
    ]
    await libproc.dispatch(sender_pid, "blast", rec_pid, "body", bodies)
    await rec.wait_count(len(bodies))
    got = rec.bodies()
    assert got == bodies
    assert type(got[-1]) is Shape and type(got[-1].corners[0]) is Point
    assert got[-1] is not shape  # it was serialised: a copy, not the object
    assert rec.got[0][0] == sender_pid  # the sender is the actor, across the wire


async def test_tuples_travel_as_lists(rt: Runtime, rt2: Runtime) -> None:
    rec = Recorder()
    rec_pid = rt2.spawn(rec)
    rt.send(rec_pid, "t", (1, (2, 3)))
    await rec.wait_count(1)
    assert rec.bodies() == [[1, [2, 3]]]


@pytest.mark.parametrize(
    "body",
    [object(), {1, 2}, NotARecord(1), [1, object()], {"k": NotARecord(2)}, 2**64],
    ids=["object", "set", "plain-dataclass", "nested-object", "nested-dataclass", "too-big-int"],
)
async def test_remote_send_refuses_what_cannot_travel(rt: Runtime, rt2: Runtime, body: Any) -> None:
    rec = Recorder()
    rec_pid = rt2.spawn(rec)
    sender_pid = rt.spawn(Sender())
    with pytest.raises(EncodeError):
        await libproc.dispatch(sender_pid, "one", rec_pid, "bad", body)
    # Nothing half-encoded is left behind: the next message arrives intact, and alone.
    await libproc.dispatch(sender_pid, "one", rec_pid, "good", {"ok": [1, 2]})
    await rec.wait_count(1)
    await settle()
    assert rec.got == [(sender_pid, "good", {"ok": [1, 2]})]


@pytest.mark.parametrize("body", [object(), {1, 2}, NotARecord(1)], ids=["object", "set", "dc"])
async def test_local_send_refuses_what_could_not_travel(rt: Runtime, body: Any) -> None:
    """The same top-level check applies locally, so code that works in one process does not
    break when its actors are split across hosts."""
    rec_pid = rt.spawn(Recorder())
    with pytest.raises(EncodeError):
        rt.send(rec_pid, "bad", body)


async def test_oversize_message_is_refused_at_send(rt: Runtime) -> None:
    small = await Runtime(max_frame_size=4096).start()
    rec_pid = rt.spawn(Recorder())
    with pytest.raises(MessageTooLarge):
        small.send(rec_pid, "big", b"x" * 5000)
    assert issubclass(MessageTooLarge, EncodeError)
    small.send(rec_pid, "fits", b"x" * 1000)


async def test_reserved_names_cannot_be_sent_remotely(rt: Runtime, rt2: Runtime) -> None:
    rec_pid = rt2.spawn(Recorder())
    with pytest.raises(ValueError, match="reserved"):
        rt.send(rec_pid, "libproc/exited")


async def test_record_names_are_unique() -> None:
    with pytest.raises(ValueError, match="already used"):

        @record("tests.libproc.Point")
        @dataclasses.dataclass
        class Impostor:
            x: int

    with pytest.raises(TypeError, match="dataclass"):
        record("tests.libproc.NotADataclass")(int)


class InOrder(Process):
    """Checks that each sender's numbers arrive as 0, 1, 2, ... with no gap or repeat."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.next: dict[UPID, int] = {}
        self.errors: list[str] = []
        self.total = 0
        self.expected = expected
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @handler("n")
    def n(self, sender: UPID, body: int) -> None:
        want = self.next.get(sender, 0)
        if body != want:
            self.errors.append(f"{sender}: got {body}, expected {want}")
        self.next[sender] = body + 1
        self.total += 1
        if self.total == self.expected and not self.done.done():
            self.done.set_result(None)


async def interleave(receiver: UPID, a: UPID, b: UPID, n: int) -> None:
    """Two senders send 0..n-1 each, in alternating bursts, so their messages share loop turns
    (and, between runtimes, frames)."""
    step = n // 4
    for start in range(0, n, step):
        await libproc.dispatch(a, "numbered", receiver, start, start + step)
        await libproc.dispatch(b, "numbered", receiver, start, start + step)


async def test_ten_thousand_local_messages_arrive_in_order(rt: Runtime) -> None:
    receiver = InOrder(20_000)
    to = rt.spawn(receiver)
    a, b = rt.spawn(Sender()), rt.spawn(Sender())
    await interleave(to, a, b, 10_000)
    await within(receiver.done, "20,000 local messages")
    assert receiver.errors == []
    assert receiver.next == {a: 10_000, b: 10_000}


async def test_ten_thousand_messages_over_zeromq_arrive_in_order(rt: Runtime, rt2: Runtime) -> None:
    receiver = InOrder(20_000)
    to = rt2.spawn(receiver)
    a, b = rt.spawn(Sender()), rt.spawn(Sender())
    await interleave(to, a, b, 10_000)
    await within(receiver.done, "20,000 messages over ZeroMQ")
    assert receiver.errors == []
    assert receiver.next == {a: 10_000, b: 10_000}
    assert rt2.metrics.get("libproc/messages_received") == 20_000
    assert rt.metrics.get("libproc/bytes_sent") > 20_000
    assert rt2.metrics.get("libproc/bytes_received") == rt.metrics.get("libproc/bytes_sent")


async def test_small_frame_limit_between_runtimes() -> None:
    """Batches are cut to the frame limit: two runtimes with a 4 KiB ``max_frame_size`` exchange
    a burst of a thousand small messages without a frame being refused as oversize."""
    a = await Runtime(max_frame_size=4096).start()
    b = await Runtime(max_frame_size=4096).start()
    rec = Recorder()
    to = b.spawn(rec)
    for i in range(1000):
        a.send(to, "n", [i, "x" * 20])
    await rec.wait_count(1000)
    assert [body[0] for body in rec.bodies()] == list(range(1000))
    assert b.metrics.get("libproc/messages_dropped") == 0
    assert a.metrics.get("libproc/frames_sent") > 1


class SlowThenFast(Process):
    """An async ``slow`` handler that holds the mailbox until released; ``fast`` records."""

    def __init__(self) -> None:
        super().__init__("slow-then-fast")
        self.events: list[Any] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.done = asyncio.Event()

    @handler("slow")
    async def slow(self, sender: UPID, body: Any) -> None:
        self.events.append("slow:start")
        self.started.set()
        await self.release.wait()
        self.events.append("slow:end")

    @handler("fast")
    def fast(self, sender: UPID, body: Any) -> None:
        self.events.append(body)
        if body == 3:
            self.done.set()


async def test_remote_messages_alone_in_a_frame_wait_behind_an_async_handler(
    rt: Runtime, rt2: Runtime
) -> None:
    """A message alone in its frame goes straight from the read to an idle actor's handler;
    one arriving while a handler is still running waits its turn in the mailbox, in order."""
    actor = SlowThenFast()
    to = rt2.spawn(actor)
    sender = rt.spawn(Sender())
    before = rt.frames_sent
    await libproc.dispatch(sender, "one", to, "slow", None)
    await within(actor.started.wait(), "the slow handler to start")
    last = expect_message(name="fast", to=to, where=lambda m: m.body == 3)
    for i in (1, 2, 3):
        # One dispatch per loop turn: each message leaves in a frame of its own.
        await libproc.dispatch(sender, "one", to, "fast", i)
    assert rt.frames_sent - before == 4
    await within(last, "the last fast message to reach the runtime")
    assert actor.events == ["slow:start"]
    actor.release.set()
    await within(actor.done.wait(), "the three fast messages")
    assert actor.events == ["slow:start", "slow:end", 1, 2, 3]


class Echo(Process):
    """Answers ``ping`` with ``pong`` and counts how many it answered."""

    def __init__(self) -> None:
        super().__init__("echo")
        self.answered = 0

    @handler("ping")
    def ping(self, sender: UPID, body: Any) -> None:
        self.answered += 1
        self.send(sender, "pong", body)


async def test_request_reply_round_trips_in_order(rt: Runtime, rt2: Runtime) -> None:
    """Replies sent by handlers that run straight from a read (held until the read is over and
    then flushed) all arrive, in order, and each request was handled once."""
    echo = Echo()
    to = rt2.spawn(echo)
    rec = Recorder()
    me = rt.spawn(rec)
    for i in range(200):
        rt.send(to, "ping", i, sender=me)
        if i % 3 == 0:
            await asyncio.sleep(0)  # some pings share a frame, some go alone
    await rec.wait_count(200)
    assert rec.bodies("pong") == list(range(200))
    assert echo.answered == 200
