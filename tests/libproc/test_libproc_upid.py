"""UPID: the text form ``id@host:port`` parses, prints, compares and hashes as one value, and a
malformed address fails loudly with an error that says what is wrong (addresses come from config
files and the wire, so a vague error costs an operator real time)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libproc import UPID, UPIDError


def test_parse_and_format() -> None:
    pid = UPID.parse("master@127.0.0.1:5050")
    assert (pid.id, pid.host, pid.port, pid.address) == (
        "master",
        "127.0.0.1",
        5050,
        "127.0.0.1:5050",
    )
    assert str(pid) == "master@127.0.0.1:5050"
    assert repr(pid) == "UPID('master@127.0.0.1:5050')"
    assert UPID.parse(pid) is pid  # already a UPID: passes through


def test_ids_may_contain_punctuation_used_by_spawn() -> None:
    pid = UPID.parse("scheduler(12)-x.y@host.example:1")
    assert pid.id == "scheduler(12)-x.y"
    assert pid.host == "host.example"


def test_ipv6_host() -> None:
    pid = UPID.parse("agent@[::1]:5051")
    assert (pid.host, pid.port) == ("[::1]", 5051)
    assert str(pid) == "agent@[::1]:5051"


def test_equality_and_hash() -> None:
    a = UPID.parse("a@h:1")
    b = UPID("a", "h", 1)
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert {a: 1}[b] == 1
    assert a != UPID.parse("a@h:2")
    assert a != UPID.parse("b@h:1")
    assert a != "a@h:1"  # a UPID is not its string
    assert sorted([UPID.parse("b@h:1"), a]) == [a, UPID.parse("b@h:1")]


def test_immutable_and_picklable() -> None:
    pid = UPID.parse("a@h:1")
    with pytest.raises(AttributeError):
        pid.port = 2  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(pid)) == pid
    assert pid.with_id("b") == UPID.parse("b@h:1")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "id@host:port"),
        ("master", "id@host:port"),
        ("@127.0.0.1:5050", "id@host:port"),
        ("master@", "host:port"),
        ("master@127.0.0.1", "host:port"),
        ("master@:5050", "host:port"),
        ("master@127.0.0.1:", "port"),
        ("master@127.0.0.1:http", "port"),
        ("master@127.0.0.1:-1", "port"),
        ("master@127.0.0.1:1.5", "port"),
        ("master@127.0.0.1:70000", "port"),
        ("master@127.0.0.1:²", "port"),  # str.isdigit() says yes, int() says no
        ("master@127.0.0.1:٣", "port"),  # int() would read this Arabic-Indic digit as 3
        ("a@b@127.0.0.1:1", "actor id"),
        ("a/b@127.0.0.1:1", "actor id"),
        ("a@::1:5050", "host"),  # an IPv6 host needs brackets
    ],
)
def test_malformed_text_is_a_clear_error(text: str, complaint: str) -> None:
    with pytest.raises(UPIDError, match=complaint) as info:
        UPID.parse(text)
    assert repr(text) in str(info.value)  # the error quotes what it was given


@pytest.mark.parametrize("value", [None, 5050, b"a@h:1", ["a@h:1"]])
def test_non_strings_are_a_clear_error(value: object) -> None:
    with pytest.raises(UPIDError, match="not"):
        UPID.parse(value)  # type: ignore[arg-type]


def test_constructor_validates_too() -> None:
    with pytest.raises(UPIDError):
        UPID("", "h", 1)
    with pytest.raises(UPIDError):
        UPID("a", "", 1)
    with pytest.raises(UPIDError):
        UPID("a", "h", 65536)
    with pytest.raises(UPIDError):
        UPID("a", "h", "1")  # type: ignore[arg-type]


ids = st.text(
    alphabet=st.characters(blacklist_characters="@/", blacklist_categories=("Cs",)), min_size=1
)
hosts = st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,30}\Z")
ports = st.integers(0, 65535)


@given(ids, hosts, ports)
def test_text_form_round_trips(ident: str, host: str, port: int) -> None:
    pid = UPID(ident, host, port)
    again = UPID.parse(str(pid))
    assert again == pid and hash(again) == hash(pid)
    assert (again.id, again.host, again.port) == (ident, host, port)
