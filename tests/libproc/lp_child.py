"""A libproc runtime alone in its own OS process, for tests that kill a whole host (kill -9).

Usage: ``python lp_child.py [actor_id]``. Prints the UPID of an echo actor on stdout, then serves
until killed, or until its stdin closes, so that a child never outlives a test process that died
without cleaning up.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import libproc
from libproc import UPID, Process, handler


class Echo(Process):
    """Answers ``ping`` with ``pong`` carrying the same body."""

    @handler("ping")
    def ping(self, sender: UPID, body: Any) -> None:
        self.send(sender, "pong", body)


async def main(actor_id: str) -> None:
    async with libproc.Runtime("127.0.0.1", 0) as runtime:
        pid = runtime.spawn(Echo(actor_id))
        print(pid, flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.read()  # until EOF: the parent is gone


if __name__ == "__main__":
    libproc.run(main(sys.argv[1] if len(sys.argv) > 1 else "echo"))
