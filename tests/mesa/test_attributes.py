"""Agent attributes: the text form, numbers as floats, and clear errors."""

from __future__ import annotations

import pytest

from mesa.attributes import AttributesError, format_attributes, parse_attributes


def test_parse_text_numbers_and_blanks():
    assert parse_attributes("rack:r1; zone:a ;gen:3;;weight:2.5") == {
        "rack": "r1",
        "zone": "a",
        "gen": 3.0,
        "weight": 2.5,
    }
    assert parse_attributes("") == {} and parse_attributes(None) == {}
    assert parse_attributes("ports:[1-5];set:{a,b}") == {"ports": "[1-5]", "set": "{a,b}"}
    assert parse_attributes("inf:inf")["inf"] == "inf"  # only finite numbers are scalars


def test_mappings_are_normalised():
    assert parse_attributes({"gen": 3, "rack": "r1", "ok": True}) == {
        "gen": 3.0,
        "rack": "r1",
        "ok": "true",
    }


@pytest.mark.parametrize("text", ["rack", ":x", "rack:", "rack:a;rack:b"])
def test_bad_attributes_name_the_entry(text):
    with pytest.raises(AttributesError):
        parse_attributes(text)


def test_round_trip():
    attrs = parse_attributes("rack:r1;gen:3;w:2.5")
    assert format_attributes(attrs) == "rack:r1;gen:3;w:2.5"
    assert parse_attributes(format_attributes(attrs)) == attrs
