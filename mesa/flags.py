"""argparse value types shared by mesa's command lines.

Each raises ``argparse.ArgumentTypeError`` with a sentence naming what is wrong, so a bad flag
value ends in one clear line (``mesa.node: error: argument --resources: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from mesa.resources import ResourceError, Resources

__all__ = [
    "attributes",
    "endpoint",
    "fraction",
    "port",
    "positive_float",
    "positive_int",
    "resources",
    "seconds",
]


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0..65535")
    return value


def endpoint(text: str) -> str:
    """``HOST:PORT`` of a libproc runtime (e.g. the master's ``--port``)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    port(port_text)
    if int(port_text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: port 0 cannot be connected to")
    return f"{host}:{int(port_text)}"


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    if math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
    return value


MAX_SECONDS = 10 * 365 * 24 * 3600.0  # what a timer may be set for (ten years)


def seconds(text: str) -> float:
    """A duration: greater than zero, and at most ten years (a timer's clock counts in
    nanoseconds; ``inf``, or 1e300, would stop the node as it set its first timer)."""
    value = positive_float(text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than ten years ({MAX_SECONDS:.0f} s)")
    return value


def fraction(text: str) -> float:
    """A number from 0 to 1 (a share of something)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _whole(text: str, least: int, wrong: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} {wrong}")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1, "must be at least 1")


def non_negative_int(text: str) -> int:
    return _whole(text, 0, "must not be negative")


def resources(text: str) -> str:
    """A Mesos resource string; returned normalised (``str(Resources.parse(text))``)."""
    try:
        return str(Resources.parse(text))
    except ResourceError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def attributes(text: str) -> dict[str, Any]:
    """``rack:r1;zone:a;weight:2.5`` → ``{"rack": "r1", "zone": "a", "weight": 2.5}``."""
    out: dict[str, Any] = {}
    for token in filter(None, (t.strip() for t in text.split(";"))):
        name, sep, value = token.partition(":")
        if not sep or not name.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"bad attribute {token!r}: expected NAME:VALUE")
        value = value.strip()
        try:
            out[name.strip()] = float(value)
        except ValueError:
            out[name.strip()] = value
    return out
