"""A bad peer never crashes a runtime.

A raw ZeroMQ DEALER (not libproc) connects to a runtime and sends what a broken or hostile peer
might: garbage, truncated msgpack, the wrong number of frames, messages for actors or handlers that
do not exist, a sender that lies about its address, oversize frames, records that do not decode.
Each is dropped and counted under ``libproc/messages_dropped/<reason>``, logged without flooding
(1st, 10th, 100th occurrence of a kind), and the runtime goes on serving good peers.

The wire format (see ``libproc/wire.py``): one ZeroMQ frame per batch,
``b"LP2" + msgpack [[recipient_id, sender_upid, name, body], ...]``, from a DEALER whose routing
id is the sender's own ``host:port``; a record is an array headed by its tag, an ext value (code
1) holding its name: ``[tag, field, field, ...]``."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import msgpack
import pytest
import zmq
from lp_support import PEER, Recorder, raw_dealer, within
from structlog.testing import capture_logs

from libproc import Process, Runtime, ZmqOptions, drop_messages, expect_message, record
from libproc.wire import MAGIC

SENDER = f"mallory@{PEER}"


@record("tests.libproc.Pair")
@dataclasses.dataclass
class Pair:
    a: int
    b: int

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError("a must not be negative")


def frame(*messages: list[Any], raw_batch: Any = None) -> bytes:
    """One wire frame holding ``messages`` (each ``[recipient, sender, name, body]``)."""
    batch = list(messages) if raw_batch is None else raw_batch
    return MAGIC + msgpack.packb(batch, use_bin_type=True)


def tag(name: str) -> msgpack.ExtType:
    """The ext value that heads a record's array."""
    return msgpack.ExtType(1, name.encode())


def record_array(name: str, *fields: Any) -> list[Any]:
    return [tag(name), *fields]


async def sync_point(dealer: zmq.Socket, rec: Recorder, tag: int) -> None:
    """Send a good message after the bad ones and wait for it: frames on one connection are read
    in order, so once it is handled, everything sent before it has been dealt with."""
    dealer.send(frame([rec.pid.id, SENDER, "good", tag]))
    await rec.wait_message("good", tag)


def dropped(rt: Runtime) -> dict[str, float]:
    prefix = "libproc/messages_dropped/"
    return {
        k.removeprefix(prefix): v for k, v in rt.metrics.snapshot().items() if k.startswith(prefix)
    }


CASES: list[tuple[str, Any]] = [
    ("bad_magic", b"garbage, not a libproc frame"),
    ("bad_magic", b""),
    ("bad_msgpack", frame(["rec", SENDER, "x", b"y" * 100])[:-20]),  # truncated
    ("bad_msgpack", MAGIC + b"\xc1\xc1\xc1"),  # 0xc1 is never valid msgpack
    ("bad_batch", MAGIC + msgpack.packb({"not": "a list"})),
    ("bad_message", frame(raw_batch=["not a message"])),
    ("bad_message", frame(["rec", SENDER, "x"])),  # three fields, not four
    ("bad_message", frame([1, SENDER, "x", None])),  # recipient must be a string
    ("bad_message", frame(["", SENDER, "x", None])),  # empty recipient id
    ("bad_message", frame(["a@b", SENDER, "libproc/link", None])),  # not an actor id
    ("bad_sender", frame(["rec", "no-at-sign", "x", None])),
    ("forged_sender", frame(["rec", "mallory@127.0.0.1:2", "x", None])),
    ("unknown_recipient", frame(["nobody", SENDER, "x", None])),
    ("unknown_message", frame(["rec", SENDER, "no-such-handler", None])),
    ("unknown_message", frame(["rec", SENDER, "libproc/bogus", None])),
    ("bad_record", frame(["rec", SENDER, "x", record_array("no.such.Record", 1)])),
    ("bad_record", frame(["rec", SENDER, "x", record_array("tests.libproc.Pair", 1)])),
    ("bad_record", frame(["rec", SENDER, "x", msgpack.ExtType(1, b"\xc1")])),
    ("bad_record", frame(["rec", SENDER, "x", msgpack.ExtType(7, b"")])),
    ("bad_record", frame(["rec", SENDER, "x", record_array("tests.libproc.Pair", -1, 2)])),
    # A tag anywhere but at the head of an array: alone, second in an array, a map's value.
    ("bad_record", frame(["rec", SENDER, "x", tag("tests.libproc.Pair")])),
    ("bad_record", frame(["rec", SENDER, "x", [1, tag("tests.libproc.Pair"), 2]])),
    ("bad_record", frame(["rec", SENDER, "x", {"a": tag("tests.libproc.Pair")}])),
    (
        "bad_record",
        frame(["rec", SENDER, "x", [tag("tests.libproc.Pair"), tag("tests.libproc.Pair")]]),
    ),
    # The old format's record (an ext holding [name, fields]) is refused, not misread.
    (
        "bad_record",
        frame(
            ["rec", SENDER, "x", msgpack.ExtType(1, msgpack.packb(["tests.libproc.Pair", [1, 2]]))]
        ),
    ),
]


class Strict(Recorder):
    """Records only ``good``; everything else is an unknown message."""

    def unhandled(self, sender: Any, name: str, body: Any) -> None:
        if name == "good":
            super().unhandled(sender, name, body)
        else:
            Process.unhandled(self, sender, name, body)  # counted as unknown_message


@pytest.mark.parametrize(
    ("reason", "data"), CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(CASES)]
)
async def test_bad_frame_is_counted_and_dropped(
    rt: Runtime, dealer: zmq.Socket, reason: str, data: bytes
) -> None:
    rec = Strict("rec")
    rt.spawn(rec)
    with capture_logs() as logs:
        dealer.send(data)
        await sync_point(dealer, rec, 1)
    assert dropped(rt) == {reason: 1}
    lines = [e for e in logs if e["event"] == "message_dropped"]
    assert [(e["reason"], e["peer"]) for e in lines] == [(reason, PEER)]
    assert lines[0]["log_level"] == "warning"


async def test_wrong_number_of_frames(rt: Runtime, dealer: zmq.Socket) -> None:
    rec = Strict("rec")
    rt.spawn(rec)
    dealer.send_multipart([frame(["rec", SENDER, "good", 0]), b"extra"])
    dealer.send_multipart([b"a", b"b", b"c"])
    await sync_point(dealer, rec, 1)
    assert dropped(rt) == {"bad_frames": 2}
    assert rec.bodies() == [1]  # the two-part message was not half-delivered


async def test_oversize_frame() -> None:
    runtime = await Runtime(max_frame_size=4096).start()
    sock = raw_dealer(runtime.address)
    try:
        rec = Strict("rec")
        runtime.spawn(rec)
        sock.send(frame(["rec", SENDER, "good", b"x" * 8000]))
        sock.send(frame(["rec", SENDER, "good", b"x" * 4000]))  # fits
        await sync_point(sock, rec, 1)
        assert dropped(runtime) == {"oversize": 1}
        assert [len(b) if isinstance(b, bytes) else b for b in rec.bodies()] == [4000, 1]
    finally:
        sock.close(linger=0)


def test_default_frame_limit_is_16_mib() -> None:
    assert Runtime().max_frame_size == 16 * 1024 * 1024
    assert ZmqOptions().max_frame_size == 16 * 1024 * 1024


async def bodies_of_one_frame(rt: Runtime, dealer: zmq.Socket, *messages: Any) -> list[Any]:
    """Send ``messages`` as one frame to a fresh ``rec``; what it was handed, the sync point's
    1 last."""
    rec = Strict("rec")
    rt.spawn(rec)
    dealer.send(frame(*messages))
    await sync_point(dealer, rec, 1)
    return rec.bodies()


async def test_one_bad_message_does_not_hide_its_batch_mates(
    rt: Runtime, dealer: zmq.Socket
) -> None:
    bodies = await bodies_of_one_frame(
        rt,
        dealer,
        ["rec", SENDER, "good", "a"],
        ["nobody", SENDER, "good", "lost"],
        ["rec", "mallory@127.0.0.1:2", "good", "forged"],
        "junk",
        ["rec", SENDER, "good", "b"],
    )
    assert bodies == ["a", "b", 1]
    assert dropped(rt) == {"unknown_recipient": 1, "forged_sender": 1, "bad_message": 1}


async def test_a_stray_record_tag_drops_its_message_alone(rt: Runtime, dealer: zmq.Socket) -> None:
    pair = tag("tests.libproc.Pair")
    bodies = await bodies_of_one_frame(
        rt,
        dealer,
        ["rec", SENDER, "good", [record_array("tests.libproc.Pair", 1, 2)]],
        ["rec", SENDER, "good", [pair, pair]],
        ["rec", SENDER, "good", {"p": record_array("tests.libproc.Pair", 3, 4)}],
    )
    assert bodies == [[Pair(1, 2)], {"p": Pair(3, 4)}, 1]
    assert dropped(rt) == {"bad_record": 1}


async def test_a_newer_peers_extra_trailing_fields_are_ignored(
    rt: Runtime, dealer: zmq.Socket
) -> None:
    # A peer whose code added fields to a record (at the end, with defaults, as @record says)
    # talks to this older code: the record decodes with the fields this code knows. Too few
    # fields, or a field the class refuses, is still a bad record.
    bodies = await bodies_of_one_frame(
        rt,
        dealer,
        ["rec", SENDER, "good", record_array("tests.libproc.Pair", 1, 2, "new", [3])],
        ["rec", SENDER, "good", record_array("tests.libproc.Pair", -1, 2, "new")],
    )
    assert bodies == [Pair(1, 2), 1]
    assert dropped(rt) == {"bad_record": 1}


async def test_a_flood_of_garbage_is_logged_a_few_times_only(
    rt: Runtime, dealer: zmq.Socket
) -> None:
    rec = Strict("rec")
    rt.spawn(rec)
    with capture_logs() as logs:
        for i in range(100):
            dealer.send(b"garbage %d" % i)
        for i in range(100):
            dealer.send(frame(["nobody", SENDER, "x", i]))
        await sync_point(dealer, rec, 1)
    assert dropped(rt) == {"bad_magic": 100, "unknown_recipient": 100}
    by_kind: dict[str, list[int]] = {}
    for e in logs:
        if e["event"] == "message_dropped":
            by_kind.setdefault(e["reason"], []).append(e["count"])
    assert by_kind == {"bad_magic": [1, 10, 100], "unknown_recipient": [1, 10, 100]}


async def test_runtime_keeps_serving_good_peers(
    rt: Runtime, rt2: Runtime, dealer: zmq.Socket
) -> None:
    """After every kind of bad input, an honest libproc peer still gets through, both ways."""
    rec = Strict("rec")
    rec_pid = rt.spawn(rec)
    for _, data in CASES:
        dealer.send(data)
    dealer.send_multipart([b"two", b"parts"])
    await sync_point(dealer, rec, 1)
    assert sum(dropped(rt).values()) == len(CASES) + 1

    honest = Recorder("honest")
    honest_pid = rt2.spawn(honest)
    seen = expect_message(name="good", sender=honest_pid)
    rt2.send(rec_pid, "good", "from rt2", sender=honest_pid)
    await within(seen, "the honest peer's message")
    rt.send(honest_pid, "reply", "from rt", sender=rec_pid)
    await honest.wait_count(1)
    assert honest.got == [(rec_pid, "reply", "from rt")]


async def test_exception_while_handling_a_frame_does_not_stop_reading(
    rt: Runtime, dealer: zmq.Socket
) -> None:
    """Even a failure inside the runtime (here: a test's own filter predicate raising) costs only
    that frame; the frames queued behind it are still read."""
    rec = Strict("rec")
    rt.spawn(rec)

    def explode(msg: Any) -> bool:
        if msg.body == "explode":
            raise RuntimeError("predicate failed")
        return False

    with drop_messages(where=explode), capture_logs():
        for _ in range(3):
            dealer.send(frame(["rec", SENDER, "good", "explode"]))
        await sync_point(dealer, rec, 1)
    assert dropped(rt) == {"internal_error": 3}


async def test_one_undecodable_body_does_not_take_its_batch_down() -> None:
    """msgpack carries a map keyed by an array, but Python cannot hash the key it decodes to.

    Messages sent in one loop turn share a frame; the bad one is dropped and counted, and the
    messages before and after it in the same frame are delivered.
    """
    from libproc import Process, Runtime, handler

    got: list[object] = []
    done = asyncio.get_running_loop().create_future()

    class Sink(Process):
        @handler("m")
        def m(self, sender: object, body: object) -> None:
            got.append(body)
            if body == "last":
                done.set_result(None)

    async with Runtime() as a, Runtime() as b:
        sink = b.spawn(Sink("sink"))
        a.send(sink, "m", "first")
        a.send(sink, "m", {(1, 2): "tuple key"})
        a.send(sink, "m", "last")
        await asyncio.wait_for(done, 10)
        assert got == ["first", "last"]
        assert a.frames_sent == 1  # the three really shared one frame
        assert b.metrics.get("libproc/messages_dropped/bad_message") == 1
