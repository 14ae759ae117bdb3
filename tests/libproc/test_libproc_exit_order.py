"""A linked peer's messages come before the news of its end.

libprocess users rely on it: an executor sends its last ``TASK_FINISHED`` and exits, and its agent
must see that update before ``exited`` (or it reports the task failed). Over ZeroMQ the peer's
messages come on our ROUTER while its end is seen on another socket (the monitor of our DEALER to
it), so the transport alone cannot order the two; these tests make peers send many frames and stop
at once, and check that the linker is told of every message, then of the end, last.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lp_support import within

import libproc
from libproc import UPID, Process, Runtime, ZmqOptions, handler
from libproc.zmq_transport import ZmqTransport


class Tally(Process):
    """Logs the bodies of ``n`` messages and each ``exited``, in one list, in the order it is
    given them; ``ended`` is set on the first ``exited``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.ended = asyncio.Event()
        self.ponged = asyncio.Event()

    @handler("n")
    def on_n(self, sender: UPID, body: int) -> None:
        self.seen.append(body)

    @handler("pong")
    def on_pong(self, sender: UPID, body: Any) -> None:
        self.ponged.set()

    def exited(self, pid: UPID) -> None:
        self.seen.append(("exited", pid))
        self.ended.set()


class Echo(Process):
    @handler("ping")
    def ping(self, sender: UPID, body: Any) -> None:
        self.send(sender, "pong", body)


# A sender whose batches cannot hold two of the test's messages (about 40 bytes each; a batch
# holds max_frame_size - 16): every message travels in a frame of its own, however many are sent
# in one loop turn.
ONE_PER_FRAME = 72


async def linked(tally: Tally, target: UPID) -> None:
    """Link ``tally`` to ``target`` and wait for a round trip, so the link has reached it."""
    await libproc.dispatch(tally.pid, "link", target)
    tally.ponged.clear()
    await libproc.dispatch(tally.pid, "send", target, "ping", None)
    await within(tally.ponged.wait(), "the pong after the link")


async def flood_then_stop(tally: Tally, n: int, sender_rt: Runtime) -> UPID:
    """``sender_rt`` sends ``n`` messages to ``tally``, one a frame, in one burst, and stops at
    once. Returns the UPID of the sending actor (which ``tally`` is linked to)."""
    try:
        sender = sender_rt.spawn(Echo())
        await linked(tally, sender)
        for i in range(n):
            sender_rt.send(tally.pid, "n", i, sender=sender)
        await sender_rt.stop()
    finally:
        await sender_rt.stop()
    return sender


def zmq_runtime(max_frame_size: int = 16 * 1024 * 1024, **options: Any) -> Runtime:
    return Runtime(
        transport=ZmqTransport(ZmqOptions(max_frame_size=max_frame_size, **options)),
        max_frame_size=max_frame_size,
    )


async def test_every_message_of_a_burst_beyond_the_read_budget_comes_before_exited() -> None:
    """Far more frames than the 1,024 one read pass takes, then a clean stop: the end is not
    reported until every one of them has been handed over. ZeroMQ's queues are made big enough
    for the whole burst, so that all of it can be waiting in our ROUTER when the end is seen
    and none of it waits at the sender (a stop with a blocked queue is tested on its own)."""
    n = 10_000
    async with zmq_runtime(recv_hwm=100_000) as receiver_rt:
        tally = Tally()
        receiver_rt.spawn(tally)
        sender_rt = await zmq_runtime(max_frame_size=ONE_PER_FRAME, send_hwm=100_000).start()
        sender = await flood_then_stop(tally, n, sender_rt)
        await within(tally.ended.wait(), "exited")
        await libproc.settle()
        assert receiver_rt.frames_received > n  # one a frame (and the pong)
        assert tally.seen[-1] == ("exited", sender), (
            f"exited came {tally.seen.index(('exited', sender))}th"
        )
        assert tally.seen == [*range(n), ("exited", sender)]
