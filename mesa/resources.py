"""Resources: the currency of mesa: what agents offer, frameworks accept and tasks consume.

A :class:`Resources` value is an immutable, hashable bag of named resources, each held under a
*role*: ``*`` for unreserved resources, or a role name for a static reservation. Three kinds exist,
as in Mesos:

* **scalars** (``cpus``, ``mem``, ``disk``, ``gpus``, any custom name), kept as integer
  thousandths so that arithmetic is exact: Mesos fixes scalars at three decimal places, and doing
  the same here means ``0.1 + 0.2`` fits in ``0.3`` instead of missing by one ulp;
* **ranges** (``ports``), kept as a tuple of sorted, disjoint, non-adjacent ``(begin, end)``
  inclusive pairs, so equality is structural and containment is a linear merge;
* **sets**, kept as a ``frozenset`` of strings.

The text form is Mesos's: ``cpus:2;mem:1024;disk:4096;ports:[31000-32000]``, with
``cpus(analytics):2`` for a reservation, ``[1-5,10-20]`` for several ranges and ``{a,b,c}`` for a
set. The wire form (:meth:`Resources.to_dict`) is the Mesos v1 protobuf JSON shape built from plain
msgpack types, so the future v1 HTTP API can pass it through unchanged.

The allocator does these operations millions of times a cycle, so a value is a thin wrapper around
one private dict keyed by ``(name, role)``; nothing is normalised lazily and no entry is ever
zero or empty, which lets ``==`` be plain dict equality and ``bool()`` a length check.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

__all__ = [
    "RANGES",
    "SCALAR",
    "SET",
    "UNRESERVED",
    "Range",
    "Ranges",
    "Resource",
    "ResourceError",
    "Resources",
]

UNRESERVED = "*"
SCALAR = "SCALAR"
RANGES = "RANGES"
SET = "SET"

Range = tuple[int, int]
Ranges = tuple[Range, ...]
_Value = int | Ranges | frozenset[str]

# Scalars are stored as integer multiples of 1/_SCALE (Mesos: three decimal places).
_SCALE = 1000
# Mesos ranges are uint64.
_RANGE_MAX = 2**64 - 1

# Printing order: the well-known names first, in the order people read them, then the rest
# alphabetically, so str() is deterministic and diff-friendly.
_NAME_ORDER = {"cpus": 0, "mem": 1, "disk": 2, "gpus": 3, "ports": 4}
# Well-known names whose type is fixed: `cpus:[1-2]` is never what anyone meant, and letting it
# through would make `scalar("cpus")` silently wrong in the allocator.
_KNOWN_TYPES = {"cpus": SCALAR, "mem": SCALAR, "disk": SCALAR, "gpus": SCALAR, "ports": RANGES}

_NAME_RE = re.compile(r"[^\s():;\[\]{},]+")
_ROLE_BAD_RE = re.compile(r"[\s():;\[\]{},*]")
_LHS_RE = re.compile(r"\s*([^\s():;\[\]{},]+)\s*(?:\(\s*([^()]*?)\s*\))?\s*")
_SCALAR_RE = re.compile(r"\+?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INT_RE = re.compile(r"\d+")
_SET_BAD_RE = re.compile(r"[,{};]")


class ResourceError(ValueError):
    """A resource string, wire entry or operation that cannot be made sense of.

    ``token`` carries the offending piece of input (when there is one) so that a flag parser or
    an HTTP handler can point the user at it rather than at the whole string.
    """

    def __init__(self, message: str, token: str | None = None) -> None:
        super().__init__(message)
        self.token = token


class Resource(NamedTuple):
    """One entry of a :class:`Resources`, for callers that want to look inside.

    ``value`` is a float for scalars, a tuple of inclusive ``(begin, end)`` pairs for ranges and a
    frozenset of strings for sets.
    """

    name: str
    role: str
    type: str
    value: float | Ranges | frozenset[str]

    def __str__(self) -> str:
        return _format_entry((self.name, self.role), _value_from_public(self))


# --------------------------------------------------------------------------------------------
# Value helpers. Scalars are ints (milli-units), ranges tuples, sets frozensets: `type(v)` is the
# resource type, which keeps the arithmetic below to one dispatch per entry.
# --------------------------------------------------------------------------------------------


def _type_name(value: _Value) -> str:
    t = type(value)
    if t is int:
        return SCALAR
    if t is tuple:
        return RANGES
    return SET


def _merge_ranges(a: Iterable[Range], b: Iterable[Range] = ()) -> Ranges:
    """Union of range lists, coalescing overlapping and adjacent pieces ([1-5]+[6-9] is [1-9])."""
    pieces = sorted((*a, *b))
    if not pieces:
        return ()
    out: list[Range] = []
    cur_b, cur_e = pieces[0]
    for begin, end in pieces[1:]:
        if begin <= cur_e + 1:
            if end > cur_e:
                cur_e = end
        else:
            out.append((cur_b, cur_e))
            cur_b, cur_e = begin, end
    out.append((cur_b, cur_e))
    return tuple(out)


def _subtract_ranges(a: Ranges, b: Ranges) -> Ranges:
    """``a`` minus ``b``, splitting pieces of ``a`` around holes; both inputs normalised."""
    out: list[Range] = []
    j = 0
    nb = len(b)
    for begin, end in a:
        cur = begin
        # Pieces of b wholly before this piece of a can never matter again: a is sorted.
        while j < nb and b[j][1] < cur:
            j += 1
        k = j
        while k < nb and b[k][0] <= end:
            hole_b, hole_e = b[k]
            if hole_b > cur:
                out.append((cur, hole_b - 1))
            if hole_e + 1 > cur:
                cur = hole_e + 1
            if cur > end:
                break
            k += 1
        if cur <= end:
            out.append((cur, end))
    return tuple(out)


def _ranges_contain(a: Ranges, b: Ranges) -> bool:
    """Whether every piece of ``b`` lies inside ``a``; as ``a`` is coalesced, inside one piece."""
    i = 0
    na = len(a)
    for begin, end in b:
        while i < na and a[i][1] < begin:
            i += 1
        if i == na or a[i][0] > begin or a[i][1] < end:
            return False
    return True


def _format_scalar(milli: int) -> str:
    whole, frac = divmod(milli, _SCALE)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:03d}".rstrip("0")


def _format_value(value: _Value) -> str:
    t = type(value)
    if t is int:
        return _format_scalar(value)
    if t is tuple:
        return "[" + ",".join(f"{b}-{e}" for b, e in value) + "]"
    return "{" + ",".join(sorted(value)) + "}"


def _format_entry(key: tuple[str, str], value: _Value) -> str:
    name, role = key
    lhs = name if role == UNRESERVED else f"{name}({role})"
    return f"{lhs}:{_format_value(value)}"


def _sort_key(key: tuple[str, str]) -> tuple[int, str, bool, str]:
    name, role = key
    return (_NAME_ORDER.get(name, len(_NAME_ORDER)), name, role != UNRESERVED, role)


def _to_milli(value: float, token: str) -> int:
    """Round to Mesos's fixed precision (half away from zero, as Mesos's llround does)."""
    if not math.isfinite(value):
        raise ResourceError(f"scalar in {token!r} is not finite", token)
    if value < 0:
        raise ResourceError(f"scalar in {token!r} is negative", token)
    return math.floor(value * _SCALE + 0.5)


def _check_name(name: object, token: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ResourceError(f"invalid resource name {name!r} in {token!r}", token)
    return name


def _check_role(role: object, token: str) -> str:
    """Mesos role rules, hierarchical roles included (``eng/frontend``)."""
    if role == UNRESERVED:
        return UNRESERVED
    if not isinstance(role, str) or not role or _ROLE_BAD_RE.search(role):
        raise ResourceError(f"invalid role {role!r} in {token!r}", token)
    for part in role.split("/"):
        if part in ("", ".", "..") or part.startswith("-"):
            raise ResourceError(f"invalid role {role!r} in {token!r}", token)
    return role


def _check_types(d: Mapping[tuple[str, str], _Value]) -> None:
    """One name, one type, across all roles, and the well-known names keep their Mesos type."""
    seen: dict[str, str] = {}
    for (name, _role), value in d.items():
        type_ = _type_name(value)
        expected = _KNOWN_TYPES.get(name) or seen.setdefault(name, type_)
        if expected != type_:
            raise ResourceError(f"resource {name!r} must be {expected}, not {type_}", name)


def _add_into(d: dict[tuple[str, str], _Value], key: tuple[str, str], value: _Value) -> None:
    cur = d.get(key)
    if cur is None:
        d[key] = value
    elif type(cur) is not type(value):
        raise ResourceError(
            f"cannot add {_type_name(value)} to {_type_name(cur)} resource {key[0]!r}"
        )
    elif type(value) is int:
        d[key] = cur + value
    elif type(value) is tuple:
        d[key] = _merge_ranges(cur, value)
    else:
        d[key] = cur | value


def _is_empty(value: _Value) -> bool:
    return not value  # 0, (), frozenset()


def _value_from_public(item: Resource) -> _Value:
    """A public ``Resource``'s value in internal form, validated."""
    token = f"{item.name}({item.role})"
    return _coerce_value(item.value, token, item.type)


def _coerce_value(raw: object, token: str, type_: str | None = None) -> _Value:
    """Turn a Python value (float, list of pairs, set) into the internal form."""
    if isinstance(raw, bool):
        raise ResourceError(f"resource {token!r} has a boolean value", token)
    if isinstance(raw, int | float) and type_ in (None, SCALAR):
        return _to_milli(float(raw), token)
    if isinstance(raw, set | frozenset) and type_ in (None, SET):
        items = frozenset(raw)
        for item in items:
            _check_set_item(item, token)
        return items
    if isinstance(raw, list | tuple) and type_ in (None, RANGES):
        pieces: list[Range] = []
        for piece in raw:
            # Pairs only: accepting bare ints would read ports=(31000, 32000) as two ports.
            if not (
                isinstance(piece, list | tuple)
                and len(piece) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in piece)
            ):
                raise ResourceError(f"invalid range {piece!r} in {token!r}", token)
            pieces.append(_check_range(piece[0], piece[1], token))
        return _merge_ranges(pieces)
    raise ResourceError(f"invalid value {raw!r} for resource {token!r}", token)


def _check_range(begin: int, end: int, token: str) -> Range:
    if begin < 0 or end > _RANGE_MAX or begin > end:
        raise ResourceError(f"invalid range {begin}-{end} in {token!r}", token)
    return (begin, end)


def _check_set_item(item: object, token: str) -> str:
    # Items must survive the text form, so none of its delimiters may appear inside one.
    if not isinstance(item, str) or not item or item != item.strip() or _SET_BAD_RE.search(item):
        raise ResourceError(f"invalid set item {item!r} in {token!r}", token)
    return item


# --------------------------------------------------------------------------------------------
# Text parsing.
# --------------------------------------------------------------------------------------------


def _parse_value(text: str, token: str) -> _Value:
    if text.startswith("["):
        if not text.endswith("]"):
            raise ResourceError(f"unterminated ranges in {token!r}", token)
        pieces: list[Range] = []
        body = text[1:-1].strip()
        for piece in body.split(",") if body else ():
            bounds = [p.strip() for p in piece.split("-")]
            if len(bounds) == 1:
                bounds.append(bounds[0])
            if len(bounds) != 2 or not all(_INT_RE.fullmatch(p) for p in bounds):
                raise ResourceError(f"invalid range {piece.strip()!r} in {token!r}", token)
            pieces.append(_check_range(int(bounds[0]), int(bounds[1]), token))
        return _merge_ranges(pieces)
    if text.startswith("{"):
        if not text.endswith("}"):
            raise ResourceError(f"unterminated set in {token!r}", token)
        body = text[1:-1].strip()
        items = [p.strip() for p in body.split(",")] if body else []
        for item in items:
            _check_set_item(item, token)
        return frozenset(items)
    if text.startswith("-") and _SCALAR_RE.fullmatch(text[1:]):
        raise ResourceError(f"scalar in {token!r} is negative", token)
    if not _SCALAR_RE.fullmatch(text):
        raise ResourceError(f"invalid value {text!r} in {token!r}", token)
    return _to_milli(float(text), token)


def _parse_text(text: str, default_role: str) -> dict[tuple[str, str], _Value]:
    d: dict[tuple[str, str], _Value] = {}
    types: dict[str, str] = {}
    for raw in text.split(";"):
        token = raw.strip()
        if not token:
            continue  # "cpus:1;" and "" are fine, as in Mesos.
        lhs, sep, rhs = token.partition(":")
        if not sep:
            raise ResourceError(f"expected name:value, got {token!r}", token)
        m = _LHS_RE.fullmatch(lhs)
        if m is None:
            raise ResourceError(f"invalid resource name or role in {token!r}", token)
        name, role = m.group(1), m.group(2)
        role = default_role if role is None else _check_role(role, token)
        value = _parse_value(rhs.strip(), token)
        type_ = _type_name(value)
        expected = _KNOWN_TYPES.get(name) or types.setdefault(name, type_)
        if expected != type_:
            raise ResourceError(
                f"resource {name!r} in {token!r} must be {expected}, not {type_}", token
            )
        if not _is_empty(value):
            _add_into(d, (name, role), value)
    return d


# --------------------------------------------------------------------------------------------
# The value type.
# --------------------------------------------------------------------------------------------


class Resources:
    """An immutable bag of resources keyed by ``(name, role)``.

    Build one with :meth:`parse`, :meth:`of`, :meth:`from_dict` or from :class:`Resource` items;
    combine with ``+`` and ``-``; test with ``contains`` / ``<=`` before subtracting, since
    subtraction (as in Mesos) removes what is there and drops entries that reach zero rather than
    going negative.
    """

    __slots__ = ("_d", "_hash")

    _d: dict[tuple[str, str], _Value]
    _hash: int | None

    def __init__(self, items: Iterable[Resource] = (), /) -> None:
        d: dict[tuple[str, str], _Value] = {}
        for item in items:
            if not isinstance(item, Resource):
                raise TypeError(f"expected Resource, got {type(item).__name__}")
            name = _check_name(item.name, item.name)
            role = _check_role(item.role, name)
            value = _value_from_public(item)
            if not _is_empty(value):
                _add_into(d, (name, role), value)
        _check_types(d)
        _set_d(self, d)
        _set_hash(self, None)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def _new(cls, d: dict[tuple[str, str], _Value]) -> Resources:
        """Wrap an already-normalised dict without copying or validating: the hot path."""
        self = object.__new__(cls)
        _set_d(self, d)
        _set_hash(self, None)
        return self

    @classmethod
    def empty(cls) -> Resources:
        """The empty value (a shared instance: values are immutable)."""
        return _EMPTY

    @classmethod
    def parse(cls, text: str, default_role: str = UNRESERVED) -> Resources:
        """Parse the Mesos text form, or a JSON list in the wire shape (as Mesos's flags accept).

        Entries without ``(role)`` go to ``default_role``, which is how an agent started with
        ``--default_role`` reserves everything it has. Repeated entries add up; zero and empty
        entries vanish. Errors are :class:`ResourceError` naming the offending token.
        """
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        default_role = _check_role(default_role, "default_role")
        if text.lstrip().startswith("["):
            try:
                data = json.loads(text)
            except ValueError as e:
                raise ResourceError(f"invalid JSON resources: {e}", text) from None
            return cls.from_dict(data)
        return cls._new(_parse_text(text, default_role))

    @classmethod
    def of(
        cls,
        mapping: Mapping[str, object] | None = None,
        /,
        *,
        role: str = UNRESERVED,
        **values: object,
    ) -> Resources:
        """Build from Python values, for code and tests rather than users.

        ``Resources.of(cpus=2, mem=1024, ports=[(31000, 32000)], role="web")``; names that are
        not identifiers go in the mapping: ``Resources.of({"nvidia.com/gpu": 1})``. Numbers are
        scalars, lists or tuples of inclusive ``(begin, end)`` pairs are ranges, and sets are
        sets.
        """
        role = _check_role(role, "role")
        d: dict[tuple[str, str], _Value] = {}
        items = list(mapping.items()) if mapping else []
        items.extend(values.items())
        for name, raw in items:
            _check_name(name, str(name))
            value = _coerce_value(raw, name)
            if not _is_empty(value):
                _add_into(d, (name, role), value)
        _check_types(d)
        return cls._new(d)

    @classmethod
    def sum(cls, values: Iterable[Resources]) -> Resources:
        """Total of many values in one pass, without the intermediate copies of ``+``."""
        d: dict[tuple[str, str], _Value] = {}
        for r in values:
            for key, value in r._d.items():
                _add_into(d, key, value)
        return cls._new(d)

    # -- wire form --------------------------------------------------------------------------

    def to_dict(self) -> list[dict[str, Any]]:
        """Mesos v1 ``Resource`` JSON, as a list of plain dicts ready for msgpack or JSON.

        It is a list (the shape of ``repeated Resource`` in Mesos) despite the name. The role
        goes in the pre-refinement ``role`` field, which every Mesos client library reads.
        """
        out: list[dict[str, Any]] = []
        for key in sorted(self._d, key=_sort_key):
            name, role = key
            value = self._d[key]
            t = type(value)
            if t is int:
                entry: dict[str, Any] = {
                    "name": name,
                    "type": SCALAR,
                    "scalar": {"value": value / _SCALE},
                }
            elif t is tuple:
                entry = {
                    "name": name,
                    "type": RANGES,
                    "ranges": {"range": [{"begin": b, "end": e} for b, e in value]},
                }
            else:
                entry = {"name": name, "type": SET, "set": {"item": sorted(value)}}
            entry["role"] = role
            out.append(entry)
        return out

    @classmethod
    def from_dict(cls, data: Iterable[Mapping[str, Any]]) -> Resources:
        """Inverse of :meth:`to_dict`; also reads Mesos's post-refinement ``reservations``.

        Input comes off the network, so every field is checked and a bad entry raises
        :class:`ResourceError` rather than anything less specific.
        """
        if isinstance(data, Mapping | str | bytes):
            raise ResourceError("resources must be a list of Resource objects")
        d: dict[tuple[str, str], _Value] = {}
        for entry in data:
            token = repr(entry)
            if not isinstance(entry, Mapping):
                raise ResourceError(f"resource entry {token} is not an object", token)
            name = _check_name(entry.get("name"), token)
            role = _role_from_wire(entry, token)
            value = _value_from_wire(entry, token)
            if not _is_empty(value):
                _add_into(d, (name, role), value)
        _check_types(d)
        return cls._new(d)

    # -- arithmetic -------------------------------------------------------------------------

    def __add__(self, other: object) -> Resources:
        if not isinstance(other, Resources):
            return NotImplemented
        od = other._d
        if not od:
            return self
        sd = self._d
        if not sd:
            return other
        d = sd.copy()
        for key, value in od.items():
            cur = d.get(key)
            if cur is None:
                d[key] = value
                continue
            t = type(value)
            if t is not type(cur):
                raise ResourceError(
                    f"cannot add {_type_name(value)} to {_type_name(cur)} resource {key[0]!r}"
                )
            if t is int:
                d[key] = cur + value
            elif t is tuple:
                d[key] = _merge_ranges(cur, value)
            else:
                d[key] = cur | value
        return Resources._new(d)

    def __sub__(self, other: object) -> Resources:
        """Remove what ``other`` has from what is here; entries that reach zero disappear.

        Like Mesos, this does not fail when ``other`` is larger: check ``contains`` first when
        that matters (it does for launches, not for bookkeeping of what was freed).
        """
        if not isinstance(other, Resources):
            return NotImplemented
        od = other._d
        sd = self._d
        if not od or not sd:
            return self
        d = sd.copy()
        for key, value in od.items():
            cur = d.get(key)
            if cur is None:
                continue
            t = type(value)
            if t is not type(cur):
                raise ResourceError(
                    f"cannot subtract {_type_name(value)} from {_type_name(cur)} "
                    f"resource {key[0]!r}"
                )
            if t is int:
                left: _Value = cur - value
                if left <= 0:
                    del d[key]
                    continue
            elif t is tuple:
                left = _subtract_ranges(cur, value)
            else:
                left = cur - value
            if left:
                d[key] = left
            else:
                del d[key]
        return Resources._new(d)

    def contains(self, other: Resources) -> bool:
        """Whether ``other`` fits inside this, role by role (``cpus(*)`` never covers
        ``cpus(web)``): the check that must precede a subtraction meant to be exact."""
        sd = self._d
        for key, value in other._d.items():
            cur = sd.get(key)
            if cur is None:
                return False
            t = type(value)
            if t is not type(cur):
                return False
            if t is int:
                if cur < value:
                    return False
            elif t is tuple:
                if not _ranges_contain(cur, value):
                    return False
            elif not value <= cur:
                return False
        return True

    def __contains__(self, other: object) -> bool:
        if isinstance(other, Resource):
            other = Resources((other,))
        if not isinstance(other, Resources):
            return False
        return self.contains(other)

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Resources):
            return NotImplemented
        return other.contains(self)

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Resources):
            return NotImplemented
        return self.contains(other)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Resources):
            return NotImplemented
        return self._d != other._d and other.contains(self)

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Resources):
            return NotImplemented
        return self._d != other._d and self.contains(other)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Resources):
            return NotImplemented
        if self._hash is not None and other._hash is not None and self._hash != other._hash:
            return False
        return self._d == other._d

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash(frozenset(self._d.items()))
            _set_hash(self, h)
        return h

    def __bool__(self) -> bool:
        return bool(self._d)

    def __len__(self) -> int:
        """Number of ``(name, role)`` entries."""
        return len(self._d)

    def __iter__(self) -> Iterator[Resource]:
        """Entries in printing order, as public :class:`Resource` tuples."""
        for key in sorted(self._d, key=_sort_key):
            value = self._d[key]
            t = type(value)
            public: float | Ranges | frozenset[str]
            public = value / _SCALE if t is int else value
            yield Resource(key[0], key[1], _type_name(value), public)

    # -- queries ----------------------------------------------------------------------------

    def scalar(self, name: str) -> float:
        """Total of a scalar across all roles; 0.0 when absent."""
        total = 0
        for (n, _role), value in self._d.items():
            if n == name and type(value) is int:
                total += value
        return total / _SCALE

    def scalars(self) -> dict[str, float]:
        """Every scalar's total across roles, e.g. for share computations."""
        totals: dict[str, int] = {}
        for (name, _role), value in self._d.items():
            if type(value) is int:
                totals[name] = totals.get(name, 0) + value
        return {name: milli / _SCALE for name, milli in totals.items()}

    def scalar_quantities(self) -> dict[str, int]:
        """Every scalar's total across roles in exact thousandths (``cpus:1.5`` → ``1500``).

        For bookkeeping that adds and removes the same amounts millions of times (the
        allocator's DRF shares and quota consumption): integers never drift where the floats of
        :meth:`scalars` would, and skipping the division keeps it cheap on that hot path. A new
        dict each call; the caller may mutate it.
        """
        totals: dict[str, int] = {}
        for (name, _role), value in self._d.items():
            if type(value) is int:
                totals[name] = totals.get(name, 0) + value
        return totals

    def ranges(self, name: str) -> Ranges:
        """Union of a range resource across roles (e.g. every port an agent has)."""
        pieces = [v for (n, _r), v in self._d.items() if n == name and type(v) is tuple]
        if len(pieces) == 1:
            return pieces[0]
        return _merge_ranges(p for piece in pieces for p in piece)

    def set_items(self, name: str) -> frozenset[str]:
        """Union of a set resource across roles."""
        out: frozenset[str] = frozenset()
        for (n, _role), value in self._d.items():
            if n == name and type(value) is frozenset:
                out |= value
        return out

    def names(self) -> frozenset[str]:
        return frozenset(name for name, _role in self._d)

    def roles(self) -> frozenset[str]:
        """Roles present, ``*`` included when anything is unreserved."""
        return frozenset(role for _name, role in self._d)

    # -- filters ----------------------------------------------------------------------------

    def filter(self, *, role: str | None = None, name: str | None = None) -> Resources:
        """Entries with exactly this role and/or name (``None`` matches anything)."""
        return Resources._new(
            {
                key: value
                for key, value in self._d.items()
                if (role is None or key[1] == role) and (name is None or key[0] == name)
            }
        )

    def reserved(self, role: str | None = None) -> Resources:
        """Reservations: for ``role`` alone, or every reservation when ``role`` is None."""
        if role is not None:
            return self.filter(role=role)
        return Resources._new({k: v for k, v in self._d.items() if k[1] != UNRESERVED})

    def unreserved(self) -> Resources:
        return self.filter(role=UNRESERVED)

    def allocatable_to(self, role: str) -> Resources:
        """What may be offered to ``role``: unreserved, reserved to it, or reserved to an
        ancestor (Mesos's hierarchical roles: ``eng`` reservations serve ``eng/web``)."""
        return Resources._new({k: v for k, v in self._d.items() if _allocatable(k[1], role)})

    def flatten(self, role: str = UNRESERVED) -> Resources:
        """Everything moved to one role: how totals are compared regardless of reservation."""
        role = _check_role(role, "role")
        d: dict[tuple[str, str], _Value] = {}
        for (name, _r), value in self._d.items():
            _add_into(d, (name, role), value)
        return Resources._new(d)

    # -- printing, copying, pickling ---------------------------------------------------------

    def __str__(self) -> str:
        d = self._d
        return ";".join(_format_entry(key, d[key]) for key in sorted(d, key=_sort_key))

    def __repr__(self) -> str:
        return f"Resources.parse({str(self)!r})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Resources is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Resources is immutable")

    def __copy__(self) -> Resources:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Resources:
        return self

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_unpickle, (tuple(self._d.items()),))


_set_d = Resources.__dict__["_d"].__set__
_set_hash = Resources.__dict__["_hash"].__set__
_EMPTY = Resources._new({})


def _unpickle(items: tuple[tuple[tuple[str, str], _Value], ...]) -> Resources:
    return Resources._new(dict(items))


def _allocatable(reservation: str, role: str) -> bool:
    return reservation == UNRESERVED or reservation == role or role.startswith(reservation + "/")


def _role_from_wire(entry: Mapping[str, Any], token: str) -> str:
    reservations = entry.get("reservations")
    if reservations:
        # Post-refinement format: the last (most refined) reservation is the current one.
        last = reservations[-1] if isinstance(reservations, list) else None
        if not isinstance(last, Mapping):
            raise ResourceError(f"invalid reservations in {token}", token)
        return _check_role(last.get("role"), token)
    return _check_role(entry.get("role", UNRESERVED), token)


def _value_from_wire(entry: Mapping[str, Any], token: str) -> _Value:
    type_ = entry.get("type")
    try:
        if type_ == SCALAR:
            raw = entry["scalar"]["value"]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise TypeError
            return _to_milli(float(raw), token)
        if type_ == RANGES:
            pieces = [
                _check_range(_wire_int(r["begin"]), _wire_int(r["end"]), token)
                for r in entry["ranges"].get("range", [])
            ]
            return _merge_ranges(pieces)
        if type_ == SET:
            return frozenset(_check_set_item(i, token) for i in entry["set"].get("item", []))
    except (KeyError, TypeError, AttributeError):
        raise ResourceError(f"malformed {type_} resource {token}", token) from None
    raise ResourceError(f"unknown resource type {type_!r} in {token}", token)


def _wire_int(x: object) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError
    return x
