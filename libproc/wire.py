"""The wire format: how messages cross between runtimes.

One ZeroMQ message carries a *batch*: every message a runtime sends to the same peer in one loop
turn is coalesced into a single frame, so a burst of small messages costs one syscall and one
ZeroMQ message, not one each. (Replies that handlers send while a transport hands over what one
read found leave together when that read is over, still in the same loop turn.) The frame is::

    b"LP2" + msgpack array of [recipient_id: str, sender: str, name: str, body: any]

Bodies are plain msgpack types (None, bool, int, float, str, bytes, list, dict) or *records*:
dataclasses declared with :func:`record`, which come back as the same class. Anything else is
refused at ``send`` with :class:`EncodeError` rather than discovered by the receiver.

A record travels as an array headed by its *tag*, a msgpack ext value (code 1) holding its
registered name: ``[tag, field, field, ...]``. The packer writes it in place, in the buffer of the
message around it, and the unpacker's array hook turns an array headed by a tag back into the
record; a tag anywhere else (alone, second in an array, a map's value) is a bad record. (LP1 put
each record's fields in an ext of their own, which took a second packer, an intermediate bytes
and an ``ExtType`` per record to send, and a second unpacker per record to receive.)
"""

from __future__ import annotations

import dataclasses
import operator
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

__all__ = [
    "MAGIC",
    "DecodeError",
    "EncodeError",
    "decode_batch",
    "encode_batch",
    "encode_message",
    "record",
]

MAGIC = b"LP2"
_RECORD_TAG = 1

T = TypeVar("T")

_records_by_name: dict[str, type] = {}
_names_by_type: dict[type, str] = {}
# type -> (its tag, as sent: the ext value that heads its array; a getter of its fields as a tuple)
_encoders: dict[type, tuple[msgpack.ExtType, Callable[[Any], tuple[Any, ...]]]] = {}


class EncodeError(TypeError):
    """A body that cannot travel: not msgpack-able and not a declared record."""


class DecodeError(ValueError):
    """A frame that does not decode; ``kind`` names the reason for metrics."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class _Tag:
    """What a record's ext value decodes to: the class to build from the rest of its array."""

    __slots__ = ("arity", "cls", "name")

    def __init__(self, name: str, cls: type, arity: int) -> None:
        self.name = name
        self.cls = cls
        self.arity = arity  # how many fields this code's class has


# The ext payload (the record's name, UTF-8) -> its tag.
_tags: dict[bytes, _Tag] = {}


def record(name: str) -> Callable[[type[T]], type[T]]:
    """Declare a dataclass as a message record that can travel as a body.

    ``name`` is its wire name, stable across versions of the code (e.g. ``"mesa.TaskStatus"``).
    Fields are sent positionally, so add new fields at the end with defaults: a peer whose
    code predates them ignores them (a record with more fields than its class knows keeps the
    ones it knows, as protobuf skips unknown fields), and one that expects them gets their
    defaults from an older peer. So either side of a connection can be upgraded first.
    """

    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"@record({name!r}) needs a dataclass, got {cls!r}")
        existing = _records_by_name.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"record name {name!r} is already used by {existing!r}")
        _records_by_name[name] = cls
        _names_by_type[cls] = name
        fields = tuple(f.name for f in dataclasses.fields(cls))
        cls._libproc_fields = fields  # type: ignore[attr-defined]
        # A record travels as an array: its tag (an ext value holding its name), then its
        # fields. The tag never changes, so it is made once here and packed natively.
        raw = name.encode()
        tag = msgpack.ExtType(_RECORD_TAG, raw)
        _tags[raw] = _Tag(name, cls, len(fields))
        if len(fields) == 1:
            one = operator.attrgetter(fields[0])
            getter: Callable[[Any], tuple[Any, ...]] = lambda obj: (one(obj),)  # noqa: E731
        elif fields:
            getter = operator.attrgetter(*fields)
        else:
            getter = lambda obj: ()  # noqa: E731
        _encoders[cls] = (tag, getter)
        return cls

    return register


# Packers are reused: ``msgpack.packb`` makes a new Packer per call, and a Packer starts with a
# buffer of hundreds of kilobytes, which the C allocator maps and unmaps each time (that was a
# third of a busy master's time, most of it in the kernel). A pool rather than one packer: a
# packer is busy while it calls ``_default`` (Python), and another thread may pack meanwhile.
_pool: list[msgpack.Packer] = []


def _new_packer() -> msgpack.Packer:
    return msgpack.Packer(default=_default, use_bin_type=True, autoreset=True)


def _default(obj: Any) -> Any:
    # A record becomes ``(tag, *fields)``, which the packer goes on packing in the same buffer
    # (nested records come back here): no second packer, no intermediate bytes per record.
    enc = _encoders.get(type(obj))
    if enc is None:
        raise EncodeError(
            f"cannot send a {type(obj).__name__}: bodies are msgpack types or @record dataclasses"
        )
    tag, getter = enc
    return (tag, *getter(obj))


class _Hooks:
    """The unpacker's callbacks for one decode: tags become records, and a tag left over (one
    that did not head an array) makes the decode fail. One decode at a time each (taken from
    a pool), not one global: the count of tags seen must not mix two threads' frames."""

    __slots__ = ("array_hook", "ext_hook", "open")

    def __init__(self) -> None:
        self.open = 0  # tags decoded and not yet consumed by their array
        # Bound once: binding a method per decode costs more than the decode of a small frame.
        self.ext_hook = self.ext
        self.array_hook = self.array

    def ext(self, code: int, data: bytes) -> _Tag:
        # Every way a record can be wrong is reported as "bad_record": an unknown ext code or
        # record name, fields the class refuses, a tag that does not head an array.
        if code != _RECORD_TAG:
            raise DecodeError("bad_record", f"unknown ext type {code}")
        tag = _tags.get(data)
        if tag is None:
            raise DecodeError("bad_record", f"unknown record {bytes(data)!r}")
        self.open += 1
        return tag

    def array(self, items: list[Any]) -> Any:
        if not items or type(items[0]) is not _Tag:
            return items
        self.open -= 1
        tag: _Tag = items[0]
        try:
            if len(items) > tag.arity + 1:  # a newer peer's: fields this code does not know
                return tag.cls(*items[1 : tag.arity + 1])
            return tag.cls(*items[1:])
        except Exception as e:  # wrong arity, or the class's own __post_init__ checks
            raise DecodeError(
                "bad_record", f"record {tag.name!r}: {type(e).__name__}: {e}"
            ) from None


_hooks_pool: list[_Hooks] = []


def encode_message(recipient: str, sender: str, name: str, body: Any) -> bytes:
    """Pack one message; raises :class:`EncodeError` for a body that cannot travel."""
    packer = _pool.pop() if _pool else _new_packer()
    try:
        return packer.pack((recipient, sender, name, body))
    except EncodeError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        # (msgpack empties a packer's buffer when a pack fails, so it can be reused.)
        raise EncodeError(f"cannot encode body of {name!r}: {e}") from None
    finally:
        _pool.append(packer)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


_MAGIC_ONE = MAGIC + _array_header(1)


def encode_batch(packed: list[bytes]) -> bytes:
    """Join already-packed messages into one frame."""
    if len(packed) == 1:
        return _MAGIC_ONE + packed[0]  # a request or a reply: the common case, made cheap
    return b"".join((MAGIC, _array_header(len(packed)), *packed))


_COPY_BELOW = 4096


class BadMessage:
    """Stands in a decoded batch for one message that would not decode; the rest still count."""

    __slots__ = ("detail", "kind")

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail


def decode_batch(frame: bytes) -> list[Any]:
    """Decode a frame into ``[recipient, sender, name, body]`` lists.

    Raises :class:`DecodeError` for a frame that is not ours or is not an array at all. When the
    array is well-formed but one message in it cannot be built (a bad record, a map keyed by an
    array, which msgpack can carry and Python cannot hash), that message alone becomes a
    :class:`BadMessage` and the others are delivered: a batch coalesces unrelated senders'
    messages, and one bad body must not take its neighbours down with it.
    """
    if frame[:3] != MAGIC:
        raise DecodeError("bad_magic", f"frame does not start with {MAGIC!r}")
    # A small frame is cheaper to copy than to wrap in a memoryview; a big one is not copied.
    body = frame[3:] if len(frame) < _COPY_BELOW else memoryview(frame)[3:]
    hooks = _hooks_pool.pop() if _hooks_pool else _Hooks()
    hooks.open = 0
    try:
        batch = msgpack.unpackb(
            body,
            ext_hook=hooks.ext_hook,
            list_hook=hooks.array_hook,
            raw=False,
            strict_map_key=False,
        )
    except (DecodeError, TypeError, ValueError) as e:
        return _decode_each(frame, e)
    except Exception as e:  # msgpack raises several types for truncated or garbage input
        raise DecodeError("bad_msgpack", f"{type(e).__name__}: {e}") from None
    else:
        stray = hooks.open
    finally:
        _hooks_pool.append(hooks)
    if stray:
        return _decode_each(frame, DecodeError("bad_record", "a record tag outside a record"))
    if type(batch) is not list:
        raise DecodeError("bad_batch", f"expected an array of messages, got {type(batch).__name__}")
    return batch


def _decode_each(frame: bytes, first: Exception) -> list[Any]:
    """The slow path: decode message by message, skipping (not building) the ones that fail."""
    data = memoryview(frame)[3:]
    hooks = _Hooks()

    def unpacker_of(data: memoryview) -> msgpack.Unpacker:
        u = msgpack.Unpacker(
            ext_hook=hooks.ext, list_hook=hooks.array, raw=False, strict_map_key=False
        )
        u.feed(data)
        return u

    unpacker = unpacker_of(data)
    try:
        count = unpacker.read_array_header()
    except Exception:
        kind = first.kind if isinstance(first, DecodeError) else "bad_msgpack"
        raise DecodeError(kind, f"{type(first).__name__}: {first}") from None
    out: list[Any] = []
    for _ in range(count):
        start = unpacker.tell()
        hooks.open = 0
        try:
            item = unpacker.unpack()
            if not hooks.open:
                out.append(item)
                continue
            out.append(BadMessage("bad_record", "a record tag outside a record"))
        except DecodeError as e:
            out.append(BadMessage(e.kind, str(e)))
        except (TypeError, ValueError) as e:
            out.append(BadMessage("bad_message", f"{type(e).__name__}: {e}"))
        except Exception as e:  # truncated: nothing after this can be trusted
            raise DecodeError("bad_msgpack", f"{type(e).__name__}: {e}") from None
        # Re-read from where the bad message began, skipping it without building it.
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(data[start:])
        try:
            unpacker.skip()
        except Exception as e:
            raise DecodeError("bad_msgpack", f"{type(e).__name__}: {e}") from None
        rest = data[start + unpacker.tell() :]
        unpacker = unpacker_of(rest)
        data = rest
    return out
