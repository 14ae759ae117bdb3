"""Back-pressure: a fast sender against a slow receiver loses nothing while both live.

The chain under test, end to end over ZeroMQ: the receiver's mailbox passes ``mailbox_hwm`` so its
runtime stops reading; ZeroMQ's queues fill (kept tiny here with ``send_hwm``/``recv_hwm``) so the
sender's socket refuses frames; the sender's runtime queues up to ``pending_limit`` bytes and then
``send`` raises :class:`Backpressure`; the sender awaits ``wait_writable`` and carries on. Every
message arrives, in order, and the sender never holds more than ``pending_limit`` bytes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from lp_support import within

import libproc
from libproc import UPID, Backpressure, Process, Runtime, ZmqOptions, handler, settle
from libproc.zmq_transport import ZmqTransport
from tests.waiting import eventually


class Flooder(Process):
    """Sends ``n`` numbered messages as fast as it may, the way a user should: on
    :class:`Backpressure`, await ``wait_writable`` and retry the same message."""

    def __init__(self) -> None:
        super().__init__()
        self.backpressured = 0
        self.max_pending = 0.0

    async def flood(self, to: UPID, n: int, size: int | list[int]) -> None:
        sizes = size if isinstance(size, list) else [size]
        payloads = [b"x" * s for s in sizes]
        i = 0
        spins = 0
        while i < n:
            try:
                self.send(to, "n", [i, payloads[i % len(payloads)]])
                i += 1
                spins = 0
            except Backpressure:
                self.backpressured += 1
                spins += 1
                # wait_writable must not return while sending would still fail: a loop that
                # never yields would hang the whole event loop (and this test with it).
                assert spins < 100, "wait_writable returned but send still raised Backpressure"
                await self.wait_writable(to)
            self.max_pending = max(self.max_pending, self.metrics.get("libproc/pending_bytes"))


class Slow(Process):
    """Takes several loop turns per message and checks the numbers arrive as 0, 1, 2, ..."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.next = 0
        self.errors: list[str] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @handler("n")
    async def on_n(self, sender: UPID, body: list[Any]) -> None:
        if body[0] != self.next:
            self.errors.append(f"got {body[0]}, expected {self.next}")
        self.next = body[0] + 1
        for _ in range(3):
            await asyncio.sleep(0)
        if self.next == self.n and not self.done.done():
            self.done.set_result(None)


def tight_zmq(**kw: Any) -> ZmqTransport:
    """ZeroMQ with almost no queueing of its own, so back-pressure reaches the sender fast."""
    return ZmqTransport(ZmqOptions(send_hwm=2, recv_hwm=2, **kw))


@pytest.mark.parametrize(("n", "size"), [(4000, 16 * 1024), (20_000, 100)], ids=["16KiB", "100B"])
async def test_fast_sender_slow_receiver_over_zeromq(n: int, size: int) -> None:
    limit = 64 * 1024
    sender_rt = await Runtime(pending_limit=limit, transport=tight_zmq()).start()
    receiver_rt = await Runtime(mailbox_hwm=16, transport=tight_zmq()).start()
    flooder, slow = Flooder(), Slow(n)
    sender_rt.spawn(flooder)
    to = receiver_rt.spawn(slow)

    await within(libproc.dispatch(flooder.pid, "flood", to, n, size), "the flood to be sent")
    await within(slow.done, "every message to arrive")
    await settle()

    assert slow.errors == []
    assert slow.next == n
    assert flooder.backpressured > 0
    assert flooder.max_pending <= limit
    assert sender_rt.metrics.get("libproc/backpressure") == flooder.backpressured
    assert receiver_rt.metrics.get("libproc/reading_paused") > 0
    assert receiver_rt.metrics.get("libproc/messages_received") == n
    dropped = {k: v for k, v in receiver_rt.metrics.snapshot().items() if "dropped/" in k}
    assert dropped == {}


async def test_zeromq_queue_full_blocks_the_sender_socket() -> None:
    """With 64 MiB to move against a reader that stops, ZeroMQ's own queues and the kernel's
    socket buffers fill, and the sender's socket refuses frames (``send_blocked``) until the
    receiver catches up; still nothing is lost."""
    n, size = 4000, 16 * 1024
    sender_rt = await Runtime(pending_limit=256 * 1024, transport=tight_zmq()).start()
    receiver_rt = await Runtime(mailbox_hwm=8, transport=tight_zmq()).start()
    flooder, slow = Flooder(), Slow(n)
    sender_rt.spawn(flooder)
    to = receiver_rt.spawn(slow)
    await within(libproc.dispatch(flooder.pid, "flood", to, n, size), "the flood to be sent")
    await within(slow.done, "every message to arrive")
    assert slow.errors == []
    assert sender_rt.metrics.get("libproc/send_blocked") > 0


@pytest.mark.parametrize(
    "sizes", [[10 * 1024, 60 * 1024], [100 * 1024]], ids=["small-then-big", "over-the-limit"]
)
async def test_big_messages_make_progress(sizes: list[int]) -> None:
    """A message that does not fit next to what is queued (10 KiB queued, 60 KiB to send, 64 KiB
    limit), or not even into an empty queue, must still get through once the queue drains: the
    sender must not spin on Backpressure with ``wait_writable`` returning at once."""
    n = 200
    sender_rt = await Runtime(pending_limit=64 * 1024).start()
    receiver_rt = await Runtime().start()
    flooder, slow = Flooder(), Slow(n)
    sender_rt.spawn(flooder)
    to = receiver_rt.spawn(slow)
    await within(libproc.dispatch(flooder.pid, "flood", to, n, sizes), "the flood")
    await within(slow.done, "every message to arrive")
    assert slow.errors == []


async def test_local_mailbox_limit_raises_backpressure() -> None:
    runtime = await Runtime(mailbox_limit=10).start()

    class Burst(Process):
        def burst(self, to: UPID, n: int) -> int:
            for i in range(n):
                try:
                    self.send(to, "n", [i, b""])
                except Backpressure:
                    return i
            return n

    first = Slow(10)
    to = runtime.spawn(first)
    burst = runtime.spawn(Burst())
    await settle()
    # Ten fit; the eleventh is refused, since the receiver cannot run during the burst.
    assert await libproc.dispatch(burst, "burst", to, 11) == 10
    await within(first.done, "the ten to be handled")
    assert runtime.metrics.get("libproc/backpressure") == 1

    # A sender that waits when told to gets everything through, in order.
    second, flooder = Slow(100), Flooder()
    to = runtime.spawn(second)
    runtime.spawn(flooder)
    await within(libproc.dispatch(flooder.pid, "flood", to, 100, 10), "the local flood")
    await within(second.done, "all local messages")
    assert second.errors == []
    assert flooder.backpressured > 0


class Gated(Process):
    """Holds its first message until released (so its mailbox fills and its runtime stops
    reading), and logs messages and ``exited`` in the order it is given them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.release = asyncio.Event()
        self.changed = asyncio.Event()

    @handler("n")
    async def on_n(self, sender: UPID, body: int) -> None:
        if not self.seen:
            await self.release.wait()
        self.seen.append(body)
        self.changed.set()

    def exited(self, pid: UPID) -> None:
        self.seen.append("exited")
        self.changed.set()

    async def wait_seen(self, n: int) -> None:
        while len(self.seen) < n:
            self.changed.clear()
            await self.changed.wait()


async def test_a_peer_s_end_waits_for_what_it_sent_while_reading_is_paused() -> None:
    """A peer sends, then goes away, while its receiver is not reading (back-pressure): the
    news of its end must not overtake what it sent, which is read once reading resumes."""
    n = 50
    receiver_rt = await Runtime(mailbox_hwm=4).start()
    sender_rt = await Runtime().start()
    try:
        gated = Gated()
        to = receiver_rt.spawn(gated)
        sender = sender_rt.spawn(Process())
        await libproc.dispatch(to, "link", sender)
        # One message a frame (a loop turn each: the runtime would batch a burst into one), so
        # that some are still in the receiver's socket, unread, when the sender goes.
        for i in range(n):
            sender_rt.send(to, "n", i, sender=sender)
            await asyncio.sleep(0)
            if i == 10:
                await eventually(
                    lambda: receiver_rt.metrics.get("libproc/reading_paused") >= 1,
                    "reading paused",
                )
        await sender_rt.stop()
        # The receiver has seen the sender's connection go (held, or reported at once).
        transport = receiver_rt.transport
        await eventually(
            lambda: (
                sender.address not in transport._peers or getattr(transport, "_ends_held", None)
            ),
            "the sender's end seen",
        )
        gated.release.set()
        await within(gated.wait_seen(n + 1), "every message and the end")
        assert gated.seen == [*range(n), "exited"]
    finally:
        await receiver_rt.stop()
        await sender_rt.stop()
