"""Message filters: a test can await a message (``expect_message``) or swallow messages
(``drop_messages``) — locally and across runtimes — which is how retries and lost-message paths
get tested without patching actors."""

from __future__ import annotations

from typing import Any

from lp_support import Recorder, within

import libproc
from libproc import UPID, Message, Process, Runtime, drop_messages, expect_message, settle


class Sender(Process):
    def one(self, to: UPID, name: str, body: Any) -> None:
        self.send(to, name, body)


async def test_expect_message_sees_and_still_delivers(rt: Runtime) -> None:
    rec = Recorder("rec")
    rec_pid = rt.spawn(rec)
    sender = rt.spawn(Sender())
    future = expect_message(name="hello", to=rec_pid)
    await libproc.dispatch(sender, "one", rec_pid, "other", 0)
    assert not future.done()
    await libproc.dispatch(sender, "one", rec_pid, "hello", {"n": 1})
    msg = await within(future, "the expected message")
    assert msg == Message(sender=sender, to=rec_pid, name="hello", body={"n": 1})
    await rec.wait_count(2)
    assert rec.bodies("hello") == [{"n": 1}]


async def test_expect_message_across_runtimes(rt: Runtime, rt2: Runtime) -> None:
    rec = Recorder("rec")
    rec_pid = rt2.spawn(rec)
    sender = rt.spawn(Sender())
    future = expect_message(name="hello", sender=sender, to="rec")  # an id matches any runtime
    await libproc.dispatch(sender, "one", rec_pid, "hello", [1])
    msg = await within(future, "the expected remote message")
    assert (msg.sender, msg.to, msg.body) == (sender, rec_pid, [1])
    await rec.wait_count(1)


async def test_expect_message_where_predicate(rt: Runtime) -> None:
    rec_pid = rt.spawn(Recorder())
    future = expect_message(where=lambda m: m.body == 3)
    for i in range(5):
        rt.send(rec_pid, "n", i)
    assert (await within(future, "the matching message")).body == 3


async def test_drop_messages_until_cancelled(rt: Runtime, rt2: Runtime) -> None:
    local, remote = Recorder(), Recorder()
    local_pid, remote_pid = rt.spawn(local), rt2.spawn(remote)
    sender = rt.spawn(Sender())
    dropper = drop_messages(name="ack")
    for to in (local_pid, remote_pid):
        await libproc.dispatch(sender, "one", to, "ack", 1)
        await libproc.dispatch(sender, "one", to, "update", 1)
    await local.wait_count(1)
    await remote.wait_count(1)
    await settle()
    assert local.got == [(sender, "update", 1)]
    assert remote.got == [(sender, "update", 1)]
    assert dropper.count == 2
    dropper.cancel()
    await libproc.dispatch(sender, "one", local_pid, "ack", 2)
    await local.wait_count(2)
    assert local.bodies("ack") == [2]


async def test_drop_messages_as_a_context_manager(rt: Runtime) -> None:
    rec = Recorder()
    pid = rt.spawn(rec)
    with drop_messages(to=pid, where=lambda m: m.body % 2 == 0) as dropper:
        for i in range(6):
            rt.send(pid, "n", i)
        await rec.wait_count(3)
    rt.send(pid, "n", 6)
    await rec.wait_count(4)
    assert rec.bodies() == [1, 3, 5, 6]
    assert dropper.count == 3


async def test_dropped_message_is_still_seen_by_expect(rt: Runtime) -> None:
    """A test can both drop a message and learn that it was sent."""
    rec = Recorder()
    pid = rt.spawn(rec)
    seen = expect_message(name="ack")
    with drop_messages(name="ack"):
        rt.send(pid, "ack", 1)
        assert (await within(seen, "the dropped message")).body == 1
    await settle()
    assert rec.got == []
