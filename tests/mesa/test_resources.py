"""Tests for mesa.resources: the text form, arithmetic, roles, wire form, and model-based
properties checked against a naive model (ints for scalars, Python sets of ints for ranges)."""

from __future__ import annotations

import copy
import itertools
import json
import pickle

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesa.resources import (
    RANGES,
    SCALAR,
    SET,
    Resource,
    ResourceError,
    Resources,
)

P = Resources.parse

# --------------------------------------------------------------------------------------------
# Parsing and printing
# --------------------------------------------------------------------------------------------


def test_parse_mesos_example():
    r = P("cpus:2;mem:1024;disk:4096;ports:[31000-32000]")
    assert r.scalar("cpus") == 2.0
    assert r.scalar("mem") == 1024.0
    assert r.scalar("disk") == 4096.0
    assert r.ranges("ports") == ((31000, 32000),)
    assert str(r) == "cpus:2;mem:1024;disk:4096;ports:[31000-32000]"
    assert r.names() == {"cpus", "mem", "disk", "ports"}
    assert r.roles() == {"*"}


def test_print_order_is_canonical():
    r = P("zeta:1;ports:[1-2];alpha:3;gpus:1;disk:4;mem:5;cpus(b):1;cpus(a):1;cpus:1")
    assert str(r) == ("cpus:1;cpus(a):1;cpus(b):1;mem:5;disk:4;gpus:1;ports:[1-2];alpha:3;zeta:1")
    assert [(x.name, x.role) for x in r] == [
        ("cpus", "*"),
        ("cpus", "a"),
        ("cpus", "b"),
        ("mem", "*"),
        ("disk", "*"),
        ("gpus", "*"),
        ("ports", "*"),
        ("alpha", "*"),
        ("zeta", "*"),
    ]


def test_parse_is_lenient_about_whitespace_and_empty_tokens():
    r = P("  cpus : 2 ; mem(web) :1024;; ports:[ 1 - 5 , 10-20 ] ;")
    assert r == P("cpus:2;mem(web):1024;ports:[1-5,10-20]")
    assert P("") == Resources.empty()
    assert P(" ; ;") == Resources.empty()


def test_parse_roles_and_default_role():
    r = P("cpus(analytics):2;mem:1024", default_role="web")
    assert r == Resources.of(cpus=2, role="analytics") + Resources.of(mem=1024, role="web")
    assert P("cpus(*):1") == P("cpus:1")
    assert str(P("cpus(eng/web):1")) == "cpus(eng/web):1"


def test_repeated_entries_add_up_and_zero_entries_vanish():
    assert P("cpus:1;cpus:2.5") == P("cpus:3.5")
    assert P("cpus:0;mem:1;ports:[];s:{}") == P("mem:1")
    assert not P("cpus:0")


def test_scalar_formats():
    assert str(P("cpus:0.5")) == "cpus:0.5"
    assert str(P("cpus:1.250")) == "cpus:1.25"
    assert str(P("cpus:.125")) == "cpus:0.125"
    assert str(P("mem:1e3")) == "mem:1000"
    assert str(P("cpus:+2")) == "cpus:2"


def test_parse_ranges():
    assert P("ports:[1-5,10-20]").ranges("ports") == ((1, 5), (10, 20))
    # Unsorted, overlapping and adjacent pieces are normalised.
    assert P("ports:[10-20,1-5,6-8,15-30]").ranges("ports") == ((1, 8), (10, 30))
    # A single number is a one-element range.
    assert P("ports:[80,443]").ranges("ports") == ((80, 80), (443, 443))
    assert str(P("ports:[80]")) == "ports:[80-80]"


def test_parse_sets():
    r = P("zones:{b, a ,c};zones:{a,d}")
    assert r.set_items("zones") == {"a", "b", "c", "d"}
    assert str(r) == "zones:{a,b,c,d}"


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("cpus:abc", "cpus:abc"),
        ("cpus:2;mem", "mem"),
        ("cpus:2;mem:1x", "mem:1x"),
        ("cpus:-1", "cpus:-1"),
        ("cpus:nan", "cpus:nan"),
        ("cpus:inf", "cpus:inf"),
        ("cpus:1e999", "cpus:1e999"),
        ("cpus:1_000", "cpus:1_000"),
        ("mem:1;ports:[5-1]", "ports:[5-1]"),
        ("ports:[1-2", "ports:[1-2"),
        ("ports:[1-2-3]", "ports:[1-2-3]"),
        ("ports:[a-b]", "ports:[a-b]"),
        ("ports:[-1-5]", "ports:[-1-5]"),
        ("ports:[1-18446744073709551616]", "ports:[1-18446744073709551616]"),
        ("ports:[1,,2]", "ports:[1,,2]"),
        ("s:{a,b", "s:{a,b"),
        ("s:{a,,b}", "s:{a,,b}"),
        ("cpus():1", "cpus():1"),
        ("cpus(a b):1", "cpus(a b):1"),
        ("cpus(-a):1", "cpus(-a):1"),
        ("cpus(a//b):1", "cpus(a//b):1"),
        ("cpus(..):1", "cpus(..):1"),
        ("cpus(a*):1", "cpus(a*):1"),
        ("cpus(a)(b):1", "cpus(a)(b):1"),
        ("cpus(a:1", "cpus(a:1"),
        (":1", ":1"),
        ("cpus:[1-2]", "cpus:[1-2]"),
        ("ports:8080", "ports:8080"),
        ("mem:1;foo:1;foo:{x}", "foo:{x}"),
        ("foo(a):[1-2];foo(b):3", "foo(b):3"),
        ("cpus:1:2", "cpus:1:2"),
    ],
)
def test_parse_errors_name_the_bad_token(text, token):
    with pytest.raises(ResourceError) as info:
        P(text)
    assert info.value.token == token
    assert repr(token) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_bad_default_role():
    with pytest.raises(ResourceError, match="role"):
        P("cpus:1", default_role="")


def test_parse_accepts_json_wire_form():
    text = json.dumps(P("cpus(a):1;ports:[1-3]").to_dict())
    assert P(text) == P("cpus(a):1;ports:[1-3]")
    with pytest.raises(ResourceError, match="JSON"):
        P("[{")


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------


def test_fixed_precision_makes_decimal_arithmetic_exact():
    a = P("cpus:0.1") + P("cpus:0.2")
    assert a == P("cpus:0.3")
    assert P("cpus:0.3").contains(a)
    assert a <= P("cpus:0.3")
    assert a.scalar("cpus") == 0.3
    assert not (P("cpus:0.3") - P("cpus:0.1") - P("cpus:0.2"))
    total = Resources.sum([P("cpus:0.1")] * 10)
    assert total == P("cpus:1")


def test_scalars_round_to_three_decimals_half_up():
    assert P("cpus:0.0004") == Resources.empty()
    assert P("cpus:0.0005") == P("cpus:0.001")
    assert P("cpus:2.6745") == P("cpus:2.675")
    assert Resources.of(cpus=1 / 3) == P("cpus:0.333")


# --------------------------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------------------------


def test_add_and_subtract_scalars():
    a = P("cpus:4;mem:1024")
    b = P("cpus:1.5;mem:24;disk:10")
    assert a + b == P("cpus:5.5;mem:1048;disk:10")
    assert a - b == P("cpus:2.5;mem:1000")


def test_subtract_more_than_present_removes_the_entry():
    # As in Mesos: nothing goes negative, the entry simply disappears.
    assert P("cpus:1;mem:10") - P("cpus:2") == P("mem:10")
    assert P("cpus:1") - P("cpus:1") == Resources.empty()
    assert not P("cpus:1").contains(P("cpus:2"))


def test_roles_are_kept_apart():
    a = P("cpus:2;cpus(web):1")
    assert a + P("cpus(web):1") == P("cpus:2;cpus(web):2")
    assert a - P("cpus:2") == P("cpus(web):1")
    assert not P("cpus:4").contains(P("cpus(web):1"))
    assert not P("cpus(web):4").contains(P("cpus:1"))
    assert a.scalar("cpus") == 3.0


def test_ranges_add_merges_adjacent_and_overlapping():
    assert P("ports:[1-5]") + P("ports:[6-9]") == P("ports:[1-9]")
    assert P("ports:[1-5]") + P("ports:[3-9]") == P("ports:[1-9]")
    assert P("ports:[1-5]") + P("ports:[7-9]") == P("ports:[1-5,7-9]")
    assert P("ports:[1-5,10-12]") + P("ports:[6-9]") == P("ports:[1-12]")


def test_ranges_subtract_splits():
    base = P("ports:[31000-32000]")
    assert base - P("ports:[31500-31500]") == P("ports:[31000-31499,31501-32000]")
    assert base - P("ports:[31000-31000]") == P("ports:[31001-32000]")
    assert base - P("ports:[30000-31999]") == P("ports:[32000-32000]")
    assert base - P("ports:[1-5,31010-31020,31990-40000]") == P("ports:[31000-31009,31021-31989]")
    assert base - P("ports:[0-65535]") == Resources.empty()
    assert P("ports:[1-10,20-30]") - P("ports:[5-25]") == P("ports:[1-4,26-30]")


def test_ranges_contains():
    base = P("ports:[1-10,20-30]")
    assert base.contains(P("ports:[1-1,5-10,25-30]"))
    assert not base.contains(P("ports:[9-21]"))
    assert not base.contains(P("ports:[11-11]"))
    assert not base.contains(P("ports:[30-31]"))
    assert P("ports:[1-5]") + P("ports:[6-9]") >= P("ports:[5-6]")


def test_sets():
    a = P("zones:{a,b}")
    assert a + P("zones:{b,c}") == P("zones:{a,b,c}")
    assert P("zones:{a,b,c}") - P("zones:{b,x}") == P("zones:{a,c}")
    assert a - P("zones:{a,b}") == Resources.empty()
    assert a.contains(P("zones:{a}"))
    assert not a.contains(P("zones:{a,c}"))


def test_comparisons_form_a_partial_order():
    small, big = P("cpus:1"), P("cpus:2;mem:1")
    assert small <= big and small < big and big >= small and big > small
    assert not (big <= small)
    assert small <= small and not (small < small)
    other = P("mem:5")
    assert not (small <= other) and not (other <= small)
    assert Resources.empty() <= small
    assert small.contains(Resources.empty())


def test_in_operator_uses_containment():
    r = P("cpus:2;ports:[1-10]")
    assert P("cpus:1") in r
    assert Resource("ports", "*", RANGES, ((2, 3),)) in r
    assert P("cpus:3") not in r
    assert "cpus" not in r


def test_type_mismatch_in_arithmetic_is_an_error():
    # Only reachable by combining values built separately; parse already refuses it.
    scalar, ranges = Resources.of(foo=1), Resources.of(foo=[(1, 2)])
    with pytest.raises(ResourceError):
        scalar + ranges
    with pytest.raises(ResourceError):
        scalar - ranges
    assert not scalar.contains(ranges)


def test_operators_refuse_other_types():
    r = P("cpus:1")
    with pytest.raises(TypeError):
        r + 1
    with pytest.raises(TypeError):
        r <= "cpus:1"  # noqa: B015
    assert r != "cpus:1"


def test_sum():
    parts = [P("cpus:1;ports:[1-2]"), P("cpus(a):1"), P("ports:[3-4];mem:5")]
    assert Resources.sum(parts) == parts[0] + parts[1] + parts[2]
    assert Resources.sum([]) == Resources.empty()


# --------------------------------------------------------------------------------------------
# Roles and filters
# --------------------------------------------------------------------------------------------

AGENT = P("cpus:8;mem:4096;cpus(web):2;mem(web):512;cpus(eng):1;cpus(batch):3;ports:[1-100]")


def test_reserved_and_unreserved():
    assert AGENT.unreserved() == P("cpus:8;mem:4096;ports:[1-100]")
    assert AGENT.reserved("web") == P("cpus(web):2;mem(web):512")
    assert AGENT.reserved() == P("cpus(web):2;mem(web):512;cpus(eng):1;cpus(batch):3")
    assert AGENT.reserved("nobody") == Resources.empty()
    assert AGENT.reserved() + AGENT.unreserved() == AGENT


def test_filter():
    assert AGENT.filter(name="cpus") == P("cpus:8;cpus(web):2;cpus(eng):1;cpus(batch):3")
    assert AGENT.filter(name="mem", role="web") == P("mem(web):512")
    assert AGENT.filter(role="*", name="ports") == P("ports:[1-100]")
    assert AGENT.filter() == AGENT
    assert AGENT.filter(name="gpus") == Resources.empty()


def test_allocatable_to():
    assert AGENT.allocatable_to("web") == P(
        "cpus:8;mem:4096;cpus(web):2;mem(web):512;ports:[1-100]"
    )
    assert AGENT.allocatable_to("other") == AGENT.unreserved()
    # Hierarchical roles: a reservation to `eng` may be used by `eng/frontend`, not vice versa,
    # and not by a role that merely shares a prefix.
    assert AGENT.allocatable_to("eng/frontend") == AGENT.unreserved() + P("cpus(eng):1")
    assert AGENT.allocatable_to("engineering") == AGENT.unreserved()
    assert P("cpus(eng/frontend):1").allocatable_to("eng") == Resources.empty()


def test_flatten():
    assert AGENT.flatten() == P("cpus:14;mem:4608;ports:[1-100]")
    assert AGENT.flatten("web") == P("cpus(web):14;mem(web):4608;ports(web):[1-100]")
    assert P("ports(a):[1-5];ports:[6-9]").flatten() == P("ports:[1-9]")


def test_queries():
    assert AGENT.scalar("cpus") == 14.0
    assert AGENT.scalar("gpus") == 0.0
    assert AGENT.scalars() == {"cpus": 14.0, "mem": 4608.0}
    assert P("ports:[1-5];ports(a):[6-9,20-20]").ranges("ports") == ((1, 9), (20, 20))
    assert AGENT.ranges("nothing") == ()
    assert P("s:{a};s(r):{b}").set_items("s") == {"a", "b"}
    assert AGENT.roles() == {"*", "web", "eng", "batch"}
    assert len(AGENT) == 7


# --------------------------------------------------------------------------------------------
# Construction, immutability, wire form
# --------------------------------------------------------------------------------------------


def test_of_and_resource_items():
    r = Resources.of(cpus=2, mem=1024, ports=[(31000, 32000)], role="web")
    assert r == P("cpus(web):2;mem(web):1024;ports(web):[31000-32000]")
    assert Resources.of({"nvidia.com/gpu": 1, "zones": {"a"}}) == P("nvidia.com/gpu:1;zones:{a}")
    assert Resources(list(r)) == r
    assert Resources(
        [Resource("cpus", "*", SCALAR, 1.5), Resource("s", "x", SET, frozenset({"a"}))]
    ) == P("cpus:1.5;s(x):{a}")
    assert str(Resource("ports", "r", RANGES, ((1, 2),))) == "ports(r):[1-2]"
    assert Resources() == Resources.empty()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cpus": -1},
        {"cpus": True},
        {"cpus": [(1, 2)]},
        {"ports": 5},
        {"ports": (31000, 32000)},  # a pair, not a list of pairs: refused, not two ports
        {"ports": [(5, 1)]},
        {"x": "text"},
        {"x": {""}},
        {"x": {"a,b"}},
    ],
)
def test_of_rejects_bad_values(kwargs):
    with pytest.raises(ResourceError):
        Resources.of(**kwargs)


def test_constructor_validates_items():
    with pytest.raises(ResourceError):
        Resources([Resource("cpus", "*", RANGES, ((1, 2),))])
    with pytest.raises(ResourceError):
        Resources([Resource("cpus", "bad role", SCALAR, 1.0)])
    with pytest.raises(TypeError):
        Resources([("cpus", "*", SCALAR)])  # type: ignore[list-item]


def test_immutable_and_hashable():
    r = P("cpus:1;ports:[1-5];s:{a}")
    with pytest.raises(AttributeError):
        r._d = {}  # type: ignore[misc]
    with pytest.raises(AttributeError):
        r.extra = 1  # type: ignore[attr-defined]
    assert hash(r) == hash(P("s:{a};ports:[1-5];cpus:1"))
    assert {r: "x"}[P("cpus:1;ports:[1-3,4-5];s:{a}")] == "x"
    before = str(r)
    _ = r + P("cpus:1")
    _ = r - P("cpus:1")
    assert str(r) == before
    assert copy.copy(r) is r and copy.deepcopy(r) is r
    assert pickle.loads(pickle.dumps(r)) == r


def test_to_dict_has_mesos_v1_shape():
    r = P("cpus(web):1.5;ports:[1-5,10-20];zones:{b,a}")
    assert r.to_dict() == [
        {"name": "cpus", "type": "SCALAR", "scalar": {"value": 1.5}, "role": "web"},
        {
            "name": "ports",
            "type": "RANGES",
            "ranges": {"range": [{"begin": 1, "end": 5}, {"begin": 10, "end": 20}]},
            "role": "*",
        },
        {"name": "zones", "type": "SET", "set": {"item": ["a", "b"]}, "role": "*"},
    ]


def test_wire_round_trip_through_msgpack_and_json():
    r = P("cpus:0.1;cpus(web):2;mem:1024;ports:[31000-32000,1-2];zones:{x,y}")
    assert Resources.from_dict(msgpack.unpackb(msgpack.packb(r.to_dict()))) == r
    assert Resources.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_from_dict_reads_mesos_json():
    # What a Mesos v1 client library sends: integer scalars, no role, post-refinement
    # reservations.
    data = [
        {"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}},
        {
            "name": "mem",
            "type": "SCALAR",
            "scalar": {"value": 128.5},
            "reservations": [{"type": "STATIC", "role": "eng"}, {"role": "eng/web"}],
        },
        {"name": "ports", "type": "RANGES", "ranges": {"range": []}},
    ]
    assert Resources.from_dict(data) == P("cpus:1;mem(eng/web):128.5")


@pytest.mark.parametrize(
    "data",
    [
        {"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}},  # not a list
        [{"name": "cpus", "type": "SCALAR"}],
        [{"name": "cpus", "type": "SCALAR", "scalar": {"value": "1"}}],
        [{"name": "cpus", "type": "SCALAR", "scalar": {"value": True}}],
        [{"name": "cpus", "type": "SCALAR", "scalar": {"value": -1}}],
        [{"name": "cpus", "type": "TEXT", "text": {"value": "x"}}],
        [{"type": "SCALAR", "scalar": {"value": 1}}],
        [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}, "role": ""}],
        [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}, "reservations": [1]}],
        [{"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 5}]}}],
        [{"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 5, "end": 1}]}}],
        [{"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 1.5, "end": 2}]}}],
        [{"name": "s", "type": "SET", "set": {"item": [1]}}],
        [{"name": "s", "type": "SET", "set": None}],
        [{"name": "ports", "type": "SCALAR", "scalar": {"value": 1}}],
        ["cpus:1"],
    ],
)
def test_from_dict_rejects_malformed_entries(data):
    with pytest.raises(ResourceError):
        Resources.from_dict(data)


# --------------------------------------------------------------------------------------------
# Properties, checked against a naive model.
# --------------------------------------------------------------------------------------------

SCALAR_NAMES = ["cpus", "mem", "gpus", "custom"]
RANGE_NAMES = ["ports", "ephemeral"]
SET_NAMES = ["zones"]
ROLES = ["*", "web", "eng/web"]
PORT_MAX = 60  # small, so that random ranges overlap and touch often

milli = st.integers(min_value=1, max_value=10_000_000)
range_lists = st.lists(
    st.tuples(st.integers(0, PORT_MAX), st.integers(0, 8)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=5,
)
set_items = st.frozensets(st.sampled_from("abcdef"), max_size=4)


@st.composite
def resources(draw: st.DrawFn) -> Resources:
    parts: list[Resource] = []
    for role in draw(st.lists(st.sampled_from(ROLES), unique=True, max_size=3)):
        for name in draw(st.lists(st.sampled_from(SCALAR_NAMES), unique=True, max_size=3)):
            parts.append(Resource(name, role, SCALAR, draw(milli) / 1000))
        for name in draw(st.lists(st.sampled_from(RANGE_NAMES), unique=True, max_size=2)):
            parts.append(Resource(name, role, RANGES, tuple(draw(range_lists))))
        for name in draw(st.lists(st.sampled_from(SET_NAMES), unique=True, max_size=1)):
            parts.append(Resource(name, role, SET, draw(set_items)))
    return Resources(parts)


def model(r: Resources) -> dict[tuple[str, str], object]:
    """Scalars as integer thousandths, ranges and sets as Python sets of their members."""
    out: dict[tuple[str, str], object] = {}
    for item in r:
        if item.type == SCALAR:
            out[(item.name, item.role)] = round(item.value * 1000)
        elif item.type == RANGES:
            out[(item.name, item.role)] = {p for b, e in item.value for p in range(b, e + 1)}
        else:
            out[(item.name, item.role)] = set(item.value)
    return out


def model_add(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, int):
            out[k] = out[k] + v
        else:
            out[k] = out[k] | v
    return out


def model_sub(a: dict, b: dict) -> dict:
    out = {}
    for k, v in a.items():
        left = v - b[k] if k in b else v
        if (isinstance(left, int) and left > 0) or (not isinstance(left, int) and left):
            out[k] = left
    return out


def model_contains(a: dict, b: dict) -> bool:
    return all(k in a and (a[k] >= v if isinstance(v, int) else v <= a[k]) for k, v in b.items())


def assert_normalised(r: Resources) -> None:
    for item in r:
        assert item.value, "no empty entries"
        if item.type == RANGES:
            pieces = list(item.value)
            for begin, end in pieces:
                assert begin <= end
            for (_, e1), (b2, _) in itertools.pairwise(pieces):
                assert e1 + 1 < b2, "sorted, disjoint and not adjacent"


@given(resources(), resources())
def test_add_matches_model(a, b):
    s = a + b
    assert model(s) == model_add(model(a), model(b))
    assert_normalised(s)


@given(resources(), resources())
def test_sub_matches_model(a, b):
    d = a - b
    assert model(d) == model_sub(model(a), model(b))
    assert_normalised(d)


@given(resources(), resources())
def test_contains_matches_model(a, b):
    assert a.contains(b) == model_contains(model(a), model(b))
    assert (b <= a) == a.contains(b)


@given(resources(), resources())
def test_add_is_commutative(a, b):
    assert a + b == b + a
    assert hash(a + b) == hash(b + a)


@given(resources(), resources(), resources())
def test_add_is_associative(a, b, c):
    assert (a + b) + c == a + (b + c) == Resources.sum([a, b, c])


@given(resources(), resources())
def test_contains_after_add(a, b):
    s = a + b
    assert s.contains(a) and s.contains(b)
    assert a <= s and b <= s


@given(resources(), resources())
def test_add_then_sub_is_identity_when_disjoint(a, b0):
    # Ranges and sets are sets: a + b - b loses whatever a and b shared. Making b disjoint from
    # a (b0 - a) is exactly the condition under which the identity holds for every kind.
    b = b0 - a
    assert (a + b) - b == a


@st.composite
def scalar_resources(draw: st.DrawFn) -> Resources:
    return Resources(
        [
            Resource(name, role, SCALAR, draw(milli) / 1000)
            for role in draw(st.lists(st.sampled_from(ROLES), unique=True, max_size=3))
            for name in draw(st.lists(st.sampled_from(SCALAR_NAMES), unique=True, max_size=4))
        ]
    )


@given(scalar_resources(), scalar_resources())
def test_add_then_sub_is_identity_for_scalars(a, b):
    assert (a + b) - b == a


@given(resources(), resources())
def test_sub_of_contained_then_add_restores(a, b):
    part = a - (a - b)  # what a and b share, hence contained in a
    assert a.contains(part)
    assert (a - part) + part == a


@given(resources(), resources())
def test_sub_result_is_contained(a, b):
    assert a.contains(a - b)


@given(range_lists, range_lists)
def test_range_merging(x, y):
    a = Resources.of(ports=x)
    b = Resources.of(ports=y)
    covered = {p for lo, hi in x + y for p in range(lo, hi + 1)}
    merged = (a + b).ranges("ports")
    assert {p for lo, hi in merged for p in range(lo, hi + 1)} == covered
    assert_normalised(a + b)
    # Merged form is canonical: however the pieces were split, the value is the same.
    assert a + b == Resources.of(ports=[(p, p) for p in sorted(covered)])


@given(resources())
def test_parse_str_round_trip(r):
    assert P(str(r)) == r
    assert str(P(str(r))) == str(r)


@given(resources())
def test_wire_round_trip(r):
    assert Resources.from_dict(r.to_dict()) == r
    assert Resources.from_dict(msgpack.unpackb(msgpack.packb(r.to_dict()))) == r


@given(resources())
def test_filters_partition(r):
    assert r.reserved() + r.unreserved() == r
    assert Resources.sum(r.filter(name=n) for n in r.names()) == r
    assert Resources.sum(r.filter(role=role) for role in r.roles()) == r
    for role in ROLES:
        assert r.contains(r.allocatable_to(role))
        assert r.allocatable_to(role).contains(r.unreserved())
    assert r.flatten().scalars() == r.scalars()
    assert r.flatten().roles() <= {"*"}


@settings(max_examples=50)
@given(st.lists(st.decimals(min_value=0, max_value=1000, places=3), max_size=10))
def test_decimal_scalars_sum_exactly(values):
    total = Resources.sum(P(f"cpus:{v}") for v in values)
    assert total == P(f"cpus:{sum(values)}")
    assert P(f"cpus:{sum(values)}").contains(total)
