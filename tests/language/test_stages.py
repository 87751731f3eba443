"""Search stages in the language (attdarts.language.stages, issue 20 item 4): `stages = [stage(...),
...]` parses into `ir.Stage`, prints in one canonical form, round-trips, is checked against the
rest of the space with located errors, and `attdarts diff` lists stage changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language import ir
from attdarts.language.errors import DslError
from attdarts.language.printer import format_checked, format_space
from attdarts.language.stages import planned_epochs
from attdarts.language.transform import parse_text, read_space
from attdarts.tools.diff import diff_spaces

ROOT = Path(__file__).resolve().parents[2]
SPACES = ROOT / "genotypes" / "spaces"


def space(stages: str, *, location: str = "after_every", methods: str = "",
          operations: str = "none, max_pool_3x3, skip_connect, sep_conv_3x3") -> str:
    attentions = "" if location == "no_attention" else "    attentions = [identity, se, cbam]\n"
    methods = f"    methods = [{methods}]\n" if methods else ""
    return (f"space tiny {{\n    operations = [{operations}]\n{attentions}    nodes = 2\n"
            f"    keep = 2\n    location = {location}\n    mixing = sum\n{methods}"
            f"    stages = [{stages}]\n}}\n")


def problems(text: str) -> list[str]:
    with pytest.raises(DslError) as error:
        parse_text(text)
    return [problem.message for problem in error.value.problems]


def test_stages_parse_into_the_ir_with_run_settings_left_open():
    parsed = parse_text(space("stage(layers=3, epochs=4, warmup=1), "
                              "stage(layers=5, operations=3, attentions=2, skip_dropout=0.4), "
                              "stage(operations=2, skip_dropout=1, start=keep)"
                              .replace("dropout=1", "dropout=0.7"))).space()
    first, second, third = parsed.stages
    assert (first.layers, first.epochs, first.warmup, first.operations) == (3, 4, 1, None)
    assert (second.layers, second.epochs, second.operations, second.attentions) == (5, None, 3, 2)
    assert second.skip_dropout == 0.4 and second.start == "fresh"
    assert third.skip_dropout == 0.7 and isinstance(second.skip_dropout, float)
    assert third.start == "keep" and third.layers is None


def test_stages_print_one_per_line_defaults_dropped_and_round_trip():
    text = space("stage(layers=3, epochs=4, warmup=0, skip_dropout=0, start=fresh), "
                 "stage(layers=5,operations=3,skip_dropout=0.5)")
    parsed = parse_text(text).space()
    printed = format_space(parsed)
    assert ("    stages = [\n"
            "        stage(layers=3, epochs=4, warmup=0),\n"
            "        stage(layers=5, operations=3, skip_dropout=0.5),\n"
            "    ]\n") in printed
    assert parse_text(printed).space() == parsed
    assert format_checked(parsed) == printed  # the printer's checked round trip
    assert parsed.stages[0].call().kwargs == (("layers", 3), ("epochs", 4), ("warmup", 0))


def test_a_space_without_stages_prints_as_before_and_has_none():
    text = (SPACES / "darts.geno").read_text()
    parsed = parse_text(text).space()
    assert parsed.stages == () and format_space(parsed) == text


def test_comments_around_the_stages_survive_formatting():
    text = space("stage(layers=3),  # shallow\n        stage(layers=5)").replace(
        "    stages", "    # the progressive search\n    stages")
    printed = format_space(parse_text(text).space())
    assert "    # the progressive search\n" in printed and "# shallow" in printed
    assert format_space(parse_text(printed).space()) == printed


@pytest.mark.parametrize("stages, expected", [
    ("stage(lyers=3)", "unknown stage setting 'lyers'"),
    ("stage(layers=3, layers=4)", "stage setting 'layers' is given twice"),
    ("stage(layers=2)", "'layers' of a stage is 2; it must be from 3 to 200"),
    ("stage(epochs=0)", "'epochs' of a stage is 0; it must be at least 1"),
    ("stage(operations=1)", "'operations' of a stage is 1; it must be at least 2"),
    ("stage(skip_dropout=1)", "'skip_dropout' of a stage is 1; it must be from 0 to 0.99"),
    ("stage(start=kept)", "'start' of a stage must be one of fresh, keep, got 'kept'"),
    ("stage(layers=3.5)", "'layers' of a stage must be a whole number, from 3 to 200, got 3.5"),
    ("stgae(layers=3)", "'stages' lists stage(...) calls, not 'stgae'"),
])
def test_bad_stage_settings_are_located_errors(stages, expected):
    with pytest.raises(DslError) as error:
        parse_text(space(stages), "tiny.geno")
    problem = error.value.problems[0]
    assert problem.message == expected
    assert problem.span is not None and problem.span.line == 8  # the stages line
    if "lyers" in stages:
        assert problem.hint == "did you mean 'layers'?"


@pytest.mark.parametrize("stages, location, expected", [
    ("stage(operations=3)", "after_every",
     "the first stage searches every candidate (4 operations); it cannot keep 3"),
    ("stage(), stage(operations=5)", "after_every",
     "stage 2 keeps 5 operations per edge; the space has 4"),
    ("stage(), stage(operations=2), stage(operations=3)", "after_every",
     "stage 3 keeps 3 operations per edge, more than the 2 before it"),
    ("stage(), stage(attentions=2), stage(attentions=3)", "after_every",
     "stage 3 keeps 3 attentions per edge, more than the 2 before it"),
    ("stage(), stage(attentions=2)", "no_attention",
     "stage 2: 'attentions' counts the candidates of attention mixtures; location "
     "'no_attention' has none"),
    ("stage(epochs=3, warmup=3)", "after_every",
     "stage 1: 'warmup' is 3 but the stage has 3 epochs"),
    ("stage(start=keep)", "after_every", "the first stage has no supernet to keep"),
    ("stage(layers=3), stage(layers=5, start=keep)", "after_every",
     "stage 2 keeps the supernet of stage 1, so it has its depth; 'layers' differs"),
])
def test_stages_are_checked_against_the_space(stages, location, expected):
    assert problems(space(stages, location=location)) == [expected]


def test_skip_dropout_needs_skip_connect_and_stages_refuse_an_early_stop():
    assert problems(space("stage(skip_dropout=0.3)",
                          operations="none, max_pool_3x3, sep_conv_3x3")) == [
        "stage 1: 'skip_dropout' acts on skip_connect, which the space does not list"]
    assert problems(space("stage()", methods="stop_at_skips(n=2)")) == [
        "search method 'stop_at_skips' cannot be combined with stages"]


def test_the_auxiliary_skip_on_skip_connects_weight_is_refused_with_stages():
    assert problems(space("stage()", methods="auxiliary_skip(decay=linear)")) == [
        "search method 'auxiliary_skip' cannot be combined with stages when the space lists "
        "skip_connect"]
    without_skip = space("stage()", methods="auxiliary_skip(decay=linear)",
                         operations="none, max_pool_3x3, sep_conv_3x3")
    assert parse_text(without_skip).space().stages == (ir.Stage(),)  # its own candidate: kept


def test_the_skip_cap_needs_an_operation_to_replace_a_skip_in_the_last_stage():
    """P-DARTS's cap gives a capped skip edge its strongest other searched operation, never
    none: with none and skip_connect listed, the last stage keeps at least 3 (P-DARTS does)."""
    capped = space("stage(), stage(operations=3), stage(operations=2)",
                   methods="max_skip_connect(n=1)")
    with pytest.raises(DslError) as error:
        parse_text(capped, "tiny.geno")
    [problem] = error.value.problems
    assert problem.message == (
        "the last stage keeps 2 operations per edge; with 'max_skip_connect' an edge that keeps "
        "only none and skip_connect has no operation to take skip_connect's place")
    assert problem.hint == "keep at least 3" and problem.span.line == 9  # the stages line
    assert parse_text(capped.replace("stage(operations=2)", "stage(operations=3)")).space()
    without_none = capped.replace("[none, ", "[")
    assert parse_text(without_none).space().stages[-1].operations == 2


def test_double_mixed_is_refused_with_stages():
    """double_mixed derives an edge's operation from alpha's operation columns and its
    attention from beta's attention columns; pruning a mixture by weight could leave one of
    them no candidate, so stages refuse it (mixed_with_operation chooses over all of alpha)."""
    text = space("stage(), stage(operations=3)", location="double_mixed").replace(
        "identity, ", "")
    assert problems(text) == [
        "location 'double_mixed' cannot be searched in stages: its edges take the operation and "
        "the attention from separate columns of mixtures that hold both, and a stage's pruning "
        "by weight may drop every candidate of one"]


def test_a_mixed_location_counts_operations_and_attentions_together():
    text = space("stage(), stage(operations=5)", location="mixed_with_operation").replace(
        "identity, ", "")
    assert [stage.operations for stage in parse_text(text).space().stages] == [None, 5]


def test_planned_epochs_add_the_stages_and_take_the_runs_where_they_say_nothing():
    staged = parse_text(space("stage(epochs=3), stage(), stage(epochs=2)")).space()
    assert planned_epochs(staged, 10) == 15
    assert planned_epochs(read_space(SPACES / "darts.geno"), 10) == 10
    assert planned_epochs(read_space(SPACES / "pdarts.geno"), 50) == 75


def test_zoo_pdarts_spaces_state_the_papers_stages():
    pdarts = read_space(SPACES / "pdarts.geno")
    assert [(s.layers, s.epochs, s.warmup, s.operations, s.skip_dropout)
            for s in pdarts.stages] == [(5, 25, 10, None, 0.0), (11, 25, 10, 5, 0.4),
                                        (17, 25, 10, 3, 0.7)]
    assert pdarts.setting("max_skip_connect", "n") == 2
    attention = read_space(SPACES / "att_pdarts.geno")
    assert [(s.operations, s.attentions) for s in attention.stages] == [
        (None, None), (5, 4), (3, 2)]
    assert attention.attentions == read_space(SPACES / "att_darts.geno").attentions


def test_diff_lists_stages_added_removed_and_changed():
    a = parse_text(space("stage(layers=3), stage(layers=5, operations=3)")).space()
    b = parse_text(space("stage(layers=3), stage(layers=6, operations=3), stage(operations=2)")
                   ).space()
    assert [change.text() for change in diff_spaces(a, b)] == [
        "space stage 2: stage(layers=5, operations=3) -> stage(layers=6, operations=3)",
        "space stage 3: added stage(operations=2)",
    ]
    assert [change.text() for change in diff_spaces(b, a)][-1] == (
        "space stage 3: removed stage(operations=2)")


def test_diff_command_on_the_zoo_darts_and_pdarts_spaces():
    result = CliRunner().invoke(cli, ["diff", str(SPACES / "darts.geno"),
                                      str(SPACES / "pdarts.geno")])
    lines = result.output.splitlines()
    assert "space method max_skip_connect: added max_skip_connect(n=2)" in result.output
    assert "space stage 2: added stage(layers=11, epochs=25, warmup=10, operations=5, " \
           "skip_dropout=0.4)" in lines


def test_a_stage_built_in_python_is_checked_as_text_is():
    base = read_space(SPACES / "darts.geno")
    with pytest.raises(DslError, match="more than the 3 before it"):
        ir.Space(**{**{key: getattr(base, key) for key in ("name", "operations", "nodes", "keep",
                                                           "location", "mixing")},
                    "stages": (ir.Stage(), ir.Stage(operations=3), ir.Stage(operations=4))})


# ---------------------------------------------------------------------------------------------
# A stage that widens partial channels (DrNAS's second stage)


def test_a_stage_sets_partial_channels_prints_it_and_builds_with_it():
    text = space("stage(), stage(operations=3, start=keep, partial_channels=2)",
                 methods="partial_channels(k=4)")
    parsed = parse_text(text).space()
    assert [stage.partial_channels for stage in parsed.stages] == [None, 2]
    printed = format_space(parsed)
    assert "stage(operations=3, start=keep, partial_channels=2)," in printed
    assert parse_text(printed).space() == parsed
    assert parsed.at_stage(0) is parsed  # the space's own k
    second = parsed.at_stage(1)
    assert second.setting("partial_channels", "k") == 2 and second.stages == parsed.stages
    assert second.methods[0].kwargs == (("k", 2),)


@pytest.mark.parametrize("stages, methods, expected", [
    ("stage(), stage(partial_channels=2)", "edge_normalisation",
     "stage 2: 'partial_channels' sets the k of search method 'partial_channels', which the "
     "space does not list"),
    ("stage(), stage(partial_channels=8)", "partial_channels(k=4)",
     "stage 2: partial_channels=8 is more than the k=4 before it"),
    ("stage(), stage(partial_channels=2), stage(partial_channels=4)", "partial_channels(k=4)",
     "stage 3: partial_channels=4 is more than the k=2 before it"),
    ("stage(partial_channels=2)", "partial_channels(k=4)",
     "the first stage has the space's partial_channels(k=4); it cannot say partial_channels=2"),
    ("stage(), stage(partial_channels=0)", "partial_channels(k=4)",
     "'partial_channels' of a stage is 0; it must be from 1 to 64"),
])
def test_bad_partial_channels_of_a_stage_are_located_errors(stages, methods, expected):
    with pytest.raises(DslError) as error:
        parse_text(space(stages, methods=methods), "tiny.geno")
    assert [problem.message for problem in error.value.problems] == [expected]
    span = error.value.problems[0].span
    assert span is not None and span.line == 9  # the stages line


def test_zoo_drnas_space_states_its_two_stages():
    """DrNAS's train_search.py (DARTS space): 25 epochs at K=6 with every candidate, then 25
    with 4 per edge widened to K=4, 10 warm-up epochs in each, one schedule (the kept supernet)."""
    drnas = read_space(SPACES / "drnas.geno")
    assert [(s.epochs, s.warmup, s.operations, s.start, s.partial_channels)
            for s in drnas.stages] == [(25, 10, None, "fresh", None), (25, 10, 4, "keep", 4)]
    assert drnas.setting("partial_channels", "k") == 6
    assert drnas.at_stage(1).setting("partial_channels", "k") == 4
