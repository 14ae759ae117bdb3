"""Agent attributes: the free-form labels (``rack:r1;zone:a;generation:3``) an agent advertises.

Frameworks place tasks by them (same rack, not the same zone, …), so they travel in every offer.
As in Mesos, a value that reads as a number is a scalar (a ``float``, so ``3`` and ``3.0`` compare
equal in a framework's constraint); anything else is text. Ranges and sets are kept as their text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["AttributesError", "format_attributes", "parse_attributes"]


class AttributesError(ValueError):
    """An attribute string that cannot be read; the message names the bad entry."""


def parse_attributes(text: str | Mapping[str, Any] | None) -> dict[str, float | str]:
    """``"rack:r1;zone:a;gen:3"`` → ``{"rack": "r1", "zone": "a", "gen": 3.0}``.

    A mapping is accepted too (from code), and its values are normalised the same way. Empty
    entries (``a:1;;b:2``) are skipped; a repeated name or an entry without ``:`` is an error,
    because silently keeping one of two racks would misplace tasks.
    """
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return {str(k): _value(str(k), v) for k, v in text.items()}
    if not isinstance(text, str):
        raise TypeError(f"attributes are a string or a mapping, not {type(text).__name__}")
    out: dict[str, float | str] = {}
    for entry in text.split(";"):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, value = entry.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise AttributesError(f"bad attribute {entry!r}: expected 'name:value'")
        if name in out:
            raise AttributesError(f"attribute {name!r} is given twice")
        out[name] = _value(name, value)
    return out


def _value(name: str, value: Any) -> float | str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if not text:
        raise AttributesError(f"attribute {name!r} has no value")
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def format_attributes(attributes: Mapping[str, Any]) -> str:
    """The text form back (``3.0`` prints as ``3``), for logs and flags."""
    parts = []
    for name, value in attributes.items():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        parts.append(f"{name}:{value}")
    return ";".join(parts)
