"""A libproc runtime alone in its own OS process, for tests that kill a whole host (kill -9).

Usage: ``python lp_child.py [actor_id [max_frame_size]]``. Prints the UPID of an echo actor on
stdout, then serves until killed, or until its stdin closes, so that a child never outlives a test
process that died without cleaning up, or until the echo actor is asked to ``flood``: then it sends
what it was asked for, stops its runtime (a clean stop) and exits, the way an executor sends its
last status update and exits.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import libproc
from libproc import UPID, Process, handler
from libproc.zmq_transport import ZmqOptions, ZmqTransport


class Echo(Process):
    """Answers ``ping`` with ``pong`` carrying the same body; ``flood`` ``n`` sends ``n``
    messages ``n`` numbered 0, 1, ..., in one burst, then ends the child. (A small
    ``max_frame_size`` makes the burst one frame a message.)"""

    def __init__(self, actor_id: str) -> None:
        super().__init__(actor_id)
        self.flooded = asyncio.Event()

    @handler("ping")
    def ping(self, sender: UPID, body: Any) -> None:
        self.send(sender, "pong", body)

    @handler("flood")
    def flood(self, sender: UPID, n: int) -> None:
        for i in range(n):
            self.send(sender, "n", i)
        self.flooded.set()


async def main(actor_id: str, max_frame_size: int) -> None:
    # A stop waits for the parent to read its goodbye at most ``linger``; it takes milliseconds,
    # and a long bound only costs time when the parent is gone, so a loaded machine cannot
    # make the bound, rather than the order, what a test sees.
    options = ZmqOptions(linger=5.0, max_frame_size=max_frame_size)
    transport = ZmqTransport(options)
    async with libproc.Runtime(
        "127.0.0.1", 0, max_frame_size=max_frame_size, transport=transport
    ) as runtime:
        echo = Echo(actor_id)
        pid = runtime.spawn(echo)
        print(pid, flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        # Until EOF (the parent is gone) or a flood is sent.
        eof = asyncio.ensure_future(reader.read())
        flooded = asyncio.ensure_future(echo.flooded.wait())
        await asyncio.wait([eof, flooded], return_when=asyncio.FIRST_COMPLETED)
        eof.cancel()
        flooded.cancel()


if __name__ == "__main__":
    actor_id = sys.argv[1] if len(sys.argv) > 1 else "echo"
    max_frame_size = int(sys.argv[2]) if len(sys.argv) > 2 else 16 * 1024 * 1024
    libproc.run(main(actor_id, max_frame_size))
