"""libproc: an asyncio actor runtime in the style of Mesos's libprocess.

Actors (:class:`Process`) have addresses (:class:`UPID`, ``id@host:port``), named message
handlers, timers on a pausable :class:`Clock`, and links that report a dead peer. They live in a
:class:`Runtime` that speaks ZeroMQ with msgpack bodies (or an in-memory network for simulation)
and serves HTTP. See ``docs/actors.md``.
"""

from libproc.clock import Clock, Timer
from libproc.filters import Message, drop_messages, expect_message
from libproc.log import configure as configure_logging
from libproc.log import get_logger
from libproc.loop import new_event_loop, run
from libproc.memory_transport import MemoryNetwork
from libproc.metrics import Metrics
from libproc.process import Process, handler, route
from libproc.runtime import (
    Backpressure,
    MessageTooLarge,
    ProcessNotFound,
    ProcessTerminated,
    Runtime,
    dispatch,
    runtimes,
    settle,
    spawn,
    submit,
    terminate,
    wait,
)
from libproc.upid import UPID, UPIDError
from libproc.wire import DecodeError, EncodeError, record
from libproc.zmq_transport import ZmqOptions

__all__ = [
    "UPID",
    "Backpressure",
    "Clock",
    "DecodeError",
    "EncodeError",
    "MemoryNetwork",
    "Message",
    "MessageTooLarge",
    "Metrics",
    "Process",
    "ProcessNotFound",
    "ProcessTerminated",
    "Runtime",
    "Timer",
    "UPIDError",
    "ZmqOptions",
    "configure_logging",
    "dispatch",
    "drop_messages",
    "expect_message",
    "get_logger",
    "handler",
    "new_event_loop",
    "record",
    "route",
    "run",
    "runtimes",
    "settle",
    "spawn",
    "submit",
    "terminate",
    "wait",
]
