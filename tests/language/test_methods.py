"""Search methods as options of a space (attdarts.language.methods): parsing, canonical printing,
located errors, the checks across settings, diff, and README's table (issue 13).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attdarts.language.errors import DslError
from attdarts.language.methods import OPTIONS
from attdarts.language.printer import format_document
from attdarts.language.transform import parse_text
from attdarts.tools.diff import diff_documents, format_text

ROOT = Path(__file__).resolve().parents[2]

# one value that switches each option on, as written and as the IR holds it
ON = {
    "partial_channels": ("4", 4),
    "edge_normalisation": ("true", True),
    "max_skip_connect": ("2", 2),
    "max_identity": ("1", 1),
    "stop_at_skips": ("2", 2),
    "auxiliary_skip": ("cosine", "cosine"),
    "auxiliary_identity": ("linear", "linear"),
    "beta_decay": ("0.5", 0.5),
    "beta_decay_schedule": ("constant", "constant"),
    "smoothing": ("0.03", 0.03),
}


def space(*lines: str, location: str = "after_every", attentions: str = "identity, se") -> str:
    body = "".join(f"    {line}\n" for line in lines)
    return ("space tiny {\n    operations = [none, skip_connect, sep_conv_3x3]\n"
            f"    attentions = [{attentions}]\n    nodes = 2\n    keep = 2\n"
            f"    location = {location}\n    mixing = sum\n{body}}}\n")


def test_every_option_has_a_value_here():
    assert set(ON) == set(OPTIONS)


@pytest.mark.parametrize("key", list(OPTIONS))
def test_every_option_parses_and_prints_canonically(key):
    written, value = ON[key]
    text = space(f"{key} = {written}")
    parsed = parse_text(text).space()
    assert getattr(parsed, key) == value
    assert parsed.methods == {key: value}
    printed = format_document(parse_text(text))
    assert printed == text  # each value above is already in canonical form
    assert parse_text(printed).space().model_dump() == parsed.model_dump()
    assert format_document(parse_text(printed)) == printed


def test_all_options_together_print_in_table_order():
    lines = [f"{key} = {ON[key][0]}" for key in reversed(OPTIONS)]
    printed = format_document(parse_text(space(*lines)))
    keys = [line.split("=")[0].strip() for line in printed.splitlines()[7:-1]]
    assert keys == list(OPTIONS)
    assert parse_text(printed).space().methods == {key: value for key, (_, value) in ON.items()}


def test_numbers_print_in_one_form():
    printed = format_document(parse_text(space("beta_decay = 1", "smoothing = 3e-2")))
    assert "    beta_decay = 1.0\n    smoothing = 0.03\n" in printed


def test_a_space_without_options_prints_as_before():
    text = space()
    assert format_document(parse_text(text)) == text
    assert parse_text(text).space().methods == {}


def test_a_default_option_with_a_comment_is_kept():
    text = space("# off for now; 0.03 is SDARTS's value", "smoothing = 0.0",
                 "max_skip_connect = none  # P-DARTS keeps 2")
    printed = format_document(parse_text(text))
    assert "    max_skip_connect = none  # P-DARTS keeps 2\n" in printed
    assert "    # off for now; 0.03 is SDARTS's value\n    smoothing = 0.0\n" in printed
    assert parse_text(printed).space().methods == {}
    assert format_document(parse_text(printed)) == printed
    # without the comment a default option is not written
    assert "smoothing" not in format_document(parse_text(space("smoothing = 0.0")))


def test_an_option_set_twice_is_an_error():
    with pytest.raises(DslError, match="'smoothing' is set twice"):
        parse_text(space("smoothing = 0.1", "smoothing = 0.2"))


@pytest.mark.parametrize("line, expected", [
    ("partial_channels = 0", "'partial_channels' is 0; it must be from 1 to 64"),
    ("partial_channels = 65", "'partial_channels' is 65; it must be from 1 to 64"),
    ("partial_channels = 2.5", "'partial_channels' must be a whole number, from 1 to 64"),
    ("max_skip_connect = -1", "'max_skip_connect' is -1; it must be at least 0"),
    ("stop_at_skips = 0", "'stop_at_skips' is 0; it must be at least 1"),
    ("beta_decay = -0.5", "'beta_decay' is -0.5; it must be at least 0"),
    ("smoothing = 1.5", "'smoothing' is 1.5; it must be from 0 to 1"),
    ("edge_normalisation = 1", "'edge_normalisation' must be true or false"),
    ("auxiliary_skip = exponential", "'auxiliary_skip' must be one of off, linear, cosine"),
    ("beta_decay_schedule = cosine", "'beta_decay_schedule' must be one of linear, constant"),
])
def test_bad_values_are_located_errors(line, expected):
    with pytest.raises(DslError) as caught:
        parse_text(space(line), "s.geno")
    rendered = caught.value.render()
    assert rendered.splitlines()[0].endswith(expected)
    assert rendered.startswith("s.geno:8:")  # the line of the option, with a caret under it
    assert "^" in rendered


@pytest.mark.parametrize("lines, location, attentions, expected", [
    (["max_identity = 1"], "after_every", "se, cbam",
     "'max_identity' caps edges whose attention derives to identity"),
    (["max_identity = 1"], "end", "identity, se",
     "'max_identity' caps edges whose attention derives to identity"),
    (["max_identity = 1"], "after_every", "identity",
     "'max_identity' needs an attention other than identity"),
    (["max_skip_connect = 2"], "mixed_with_operation", "identity, se",
     "'max_skip_connect' needs operations chosen apart from attentions"),
    (["max_skip_connect = 2"], "double_mixed", "identity, se",
     "'max_skip_connect' needs operations chosen apart from attentions"),
    (["auxiliary_identity = cosine"], "mixed_with_operation", "identity, se",
     "'auxiliary_identity' adds to attention mixtures; location 'mixed_with_operation' has none"),
])
def test_method_problems(lines, location, attentions, expected):
    with pytest.raises(DslError, match=re.escape(expected)):
        parse_text(space(*lines, location=location, attentions=attentions))


def test_stop_at_skips_needs_skip_connect():
    text = space("stop_at_skips = 2").replace("skip_connect, ", "max_pool_3x3, ")
    with pytest.raises(DslError, match="'stop_at_skips' counts skip_connect"):
        parse_text(text)


def test_options_that_fit_their_location_are_accepted():
    parse_text(space("max_identity = 1", "auxiliary_identity = cosine"))
    parse_text(space("max_skip_connect = 2", "auxiliary_skip = linear", location="end"))
    no_attention = space("max_skip_connect = 1").replace("    attentions = [identity, se]\n", "")
    parse_text(no_attention.replace("after_every", "no_attention"))


def test_diff_of_two_spaces_that_differ_only_in_options():
    before = parse_text(space("smoothing = 0.03"))
    after = parse_text(space("partial_channels = 4", "edge_normalisation = true",
                             "auxiliary_skip = linear", "smoothing = 0.05"))
    assert format_text(diff_documents(before, after)) == (
        "space partial_channels: 1 -> 4\n"
        "space edge_normalisation: false -> true\n"
        "space auxiliary_skip: off -> linear\n"
        "space smoothing: 0.03 -> 0.05\n")
    assert format_text(diff_documents(before, before)) == ""


def test_zoo_spaces_hold_pc_darts_options():
    pc_darts = parse_text((ROOT / "genotypes/spaces/pc_darts.geno").read_text()).space()
    assert pc_darts.methods == {"partial_channels": 4, "edge_normalisation": True}
    assert not pc_darts.attentions
    attention = parse_text((ROOT / "genotypes/spaces/att_pc_darts.geno").read_text()).space()
    assert attention.methods == pc_darts.methods
    paper = parse_text((ROOT / "genotypes/spaces/att_darts.geno").read_text()).space()
    assert (attention.operations, attention.attentions, attention.location) == (
        paper.operations, paper.attentions, paper.location)


# -- README's table ------------------------------------------------------------------------------


def _readme_rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Search methods (options of a space)")
    section = text[start:text.index("\n## ", start + 1)]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def _default_text(key: str) -> str:
    option = OPTIONS[key]
    return "none (off)" if option.default is None else option.text(option.default)


def test_readme_table_lists_every_option_as_the_table_declares_it():
    rows = _readme_rows()
    assert [row[0] for row in rows] == [f"`{key}`" for key in OPTIONS]
    for key, row in zip(OPTIONS, rows):
        option = OPTIONS[key]
        assert len(row) == 5, row
        assert row[1:4] == [option.method, option.summary, f"`{_default_text(key)}`"], key
        assert row[4], f"{key}: no cost given"
