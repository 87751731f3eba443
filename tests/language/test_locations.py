"""Attention locations: one `Location` object per name, asked by every stage."""

from __future__ import annotations

import pytest

from attdarts.language.errors import DslError
from attdarts.language.locations import LOCATIONS
from attdarts.language.transform import parse_text


def _space(location: str, mixing: str = "sum", attentions: str = "[identity, se]") -> str:
    return (f"space s {{ operations = [none, skip_connect] attentions = {attentions} "
            f"location = {location} mixing = {mixing} }}")


def test_the_six_locations_of_the_authors_code():
    assert tuple(LOCATIONS) == ("after_every", "end", "after_every_and_end",
                                "mixed_with_operation", "double_mixed", "no_attention")


@pytest.mark.parametrize("name, expected", [
    ("after_every", {"alpha": "ops", "beta": "atts"}),
    ("end", {"alpha": "ops", "gamma": "atts"}),
    ("after_every_and_end", {"alpha": "ops", "beta": "atts", "gamma": "atts"}),
    ("mixed_with_operation", {"alpha": "both"}),
    ("double_mixed", {"alpha": "both", "beta": "both"}),
    ("no_attention", {"alpha": "ops"}),
])
def test_columns(name, expected):
    space = parse_text(_space(name) if name != "no_attention" else
                       "space s { operations = [none, skip_connect] location = no_attention }").space()
    names = {"ops": ["none", "skip_connect"], "atts": ["identity", "se"]}
    names["both"] = names["ops"] + names["atts"]
    assert space.location_spec is LOCATIONS[name]
    assert LOCATIONS[name].columns(space) == {key: names[value] for key, value in expected.items()}


def test_choose_edge_never_picks_none_and_maps_mixed_attentions_to_skip_connect():
    space = parse_text(_space("mixed_with_operation")).space()
    choose = LOCATIONS["mixed_with_operation"].choose_edge
    assert choose(space, [0.9, 0.05, 0.02, 0.03], None) == (1, None, 0.05)
    assert choose(space, [0.5, 0.1, 0.1, 0.3], None) == (None, 1, 0.3)
    double = parse_text(_space("double_mixed")).space()
    assert LOCATIONS["double_mixed"].choose_edge(
        double, [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.1, 0.2]) == (1, 1, 0.2)


@pytest.mark.parametrize("text, message", [
    (_space("end", attentions="[]"), "location 'end' needs at least one attention"),
    (_space("double_mixed", "product"), "location 'double_mixed' mixes attentions with operations"),
    (_space("after_every", "product", "[se, double_attention]"),
     "'double_attention' adds to its input"),
    (_space("after_evry"), "unknown location 'after_evry'"),
])
def test_location_problems_are_dsl_errors(text, message):
    with pytest.raises(DslError) as caught:
        parse_text(text)
    assert any(message in problem.message for problem in caught.value.problems)
