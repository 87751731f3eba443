"""`budget(...)` in a space (issue 21): quantities written unquoted (600M, 3.5M, 12ms), read as
numbers, printed back as written, compared by `attdarts diff`; located one-line errors."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language.catalog import Parameter
from attdarts.language.errors import DslError
from attdarts.language.grammar import build_parser
from attdarts.language.printer import format_document
from attdarts.language.quantities import (
    COUNT, LATENCY, format_count, format_latency, parse_count, parse_latency,
)
from attdarts.language.transform import parse_text
from attdarts.tools.diff import diff_documents, format_text


def space(methods: str) -> str:
    return ("space tiny {\n    operations = [none, skip_connect, sep_conv_3x3]\n"
            "    attentions = [identity, se]\n    nodes = 2\n    keep = 2\n"
            "    location = after_every\n    mixing = sum\n"
            f"    methods = [{methods}]\n}}\n")


@pytest.mark.parametrize("count, text", [
    (600_000_000, "600M"), (3_500_000, "3.5M"), (250_000, "250k"), (1_200_000_000, "1.2G"),
    (1000, "1k"), (999, "999"), (1_234_567, "1234567"), (123_456_789, "123456789"),
])
def test_counts_print_in_their_shortest_exact_form(count, text):
    assert format_count(count) == text
    assert parse_count(text) == count


@pytest.mark.parametrize("milliseconds, text", [(12.0, "12ms"), (0.8, "0.8ms"), (12.5, "12.5ms")])
def test_latencies_print_in_milliseconds(milliseconds, text):
    assert format_latency(milliseconds) == text
    assert parse_latency(text) == milliseconds


@pytest.mark.parametrize("written, value, printed", [
    ("macs=600M", ("macs", 600_000_000), "macs=600M"),
    ('macs="600M"', ("macs", 600_000_000), "macs=600M"),  # a string reads the same
    ("macs=6e8", ("macs", 600_000_000), "macs=600M"),
    ("macs=600000000", ("macs", 600_000_000), "macs=600M"),
    ("params=3.5M", ("params", 3_500_000), "params=3.5M"),
    ("params=1234567", ("params", 1_234_567), "params=1234567"),
    ('latency=12ms, table="costs.json"', ("latency", 12.0), 'latency=12ms, table="costs.json"'),
    ('latency=800us, table="costs.json"', ("latency", 0.8), 'latency=0.8ms, table="costs.json"'),
])
def test_quantities_read_as_numbers_and_print_as_written(written, value, printed):
    document = parse_text(space(f"budget({written})"))
    call = document.space().methods[0]
    assert call.kwargs[0] == value
    text = format_document(document)
    assert f"methods = [budget({printed}, weight=1.0, form=exceed)]" in text
    again = parse_text(text)
    assert again.space() == document.space()  # the round trip keeps the IR
    assert format_document(again) == text  # and the text


def test_settings_in_full_optional_ones_left_out():
    document = parse_text(space("budget(form=linear, weight=3, params=2M)"))
    assert document.space().methods[0].kwargs == (
        ("params", 2_000_000), ("weight", 3.0), ("form", "linear"))
    assert document.space().setting("budget", "macs") is None
    assert document.space().setting("budget", "table") is None


def test_the_grammar_reads_a_quantity_as_one_token_without_conflicts():
    parser = build_parser(strict=True)  # a new terminal that collided would fail here
    tree = parser.parse(space("budget(macs=600M)"))
    quantities = list(tree.scan_values(lambda t: getattr(t, "type", None) == "QUANTITY"))
    assert quantities == ["600M"]
    numbers = list(tree.scan_values(lambda t: getattr(t, "type", None) == "SIGNED_NUMBER"))
    assert numbers == ["2", "2"]  # nodes and keep stay numbers


def test_a_quantity_parameter_checks_and_converts():
    count = Parameter(int, None, quantity=COUNT)
    assert count.convert("3.5M") == 3_500_000 and count.convert(7) == 7
    assert count.problem("'x'", 2.5) is not None and count.problem("'x'", -1) is not None
    latency = Parameter(float, None, quantity=LATENCY)
    assert latency.convert("12ms") == 12.0 and latency.convert(12) == 12.0  # Python: ms
    assert latency.problem("'x'", "12") is not None


@pytest.mark.parametrize("methods, message", [
    ("budget", "'budget' needs exactly one of macs, params and latency; it has none"),
    ("budget(macs=600M, params=3M)",
     "'budget' needs exactly one of macs, params and latency; it has macs and params"),
    ("budget(latency=12ms)", "a latency budget needs a cost table measured on the device"),
    ("budget(latency=12)", "'latency' of budget must be a latency with its unit, e.g. 12ms or "
                           "800us, got 12"),
    ("budget(macs=-3)", "'macs' of budget must be a count, e.g. 600M, 3.5M or 250k, got -3"),
    ("budget(macs=2.5)", "'macs' of budget must be a count, e.g. 600M, 3.5M or 250k, got 2.5"),
    ("budget(macs=600M, form=hard)",
     "'form' of budget must be one of exceed, target, linear, got 'hard'"),
    ("budget(macs=600M, weight=-1)", "'weight' of budget is -1; it must be at least 0"),
    ("budget(mac=600M)", "unknown setting 'mac' for search method 'budget'"),
    ("budget(macs=600X)", "unexpected 'X'; expected one of ')' or ','"),
])
def test_mistakes_are_one_located_error(methods, message):
    with pytest.raises(DslError) as error:
        parse_text(space(methods)).space()
    problems = error.value.problems
    assert [problem.message for problem in problems] == [message]
    assert problems[0].span is not None and problems[0].span.line == 8


def test_check_and_fmt_on_a_file(tmp_path):
    path = tmp_path / "budget.geno"
    path.write_text(space("budget(params=3.5M, weight=0.5)").replace(
        "    location = after_every\n    mixing = sum\n", ""))
    runner = CliRunner()
    assert runner.invoke(cli, ["check", str(path)]).exit_code == 0
    assert runner.invoke(cli, ["fmt", str(path)]).exit_code == 0
    assert "methods = [budget(params=3.5M, weight=0.5, form=exceed)]" in path.read_text()
    assert runner.invoke(cli, ["fmt", "--check", str(path)]).exit_code == 0
    bad = tmp_path / "bad.geno"
    bad.write_text(space("budget(latency=12ms)"))
    result = runner.invoke(cli, ["check", str(bad)])
    assert result.exit_code != 0
    assert f"{bad}:8:16: a latency budget needs a cost table" in result.output
    assert "Traceback" not in result.output


def test_diff_shows_a_changed_budget_as_written():
    before = parse_text(space("budget(macs=600M)"))
    after = parse_text(space("budget(macs=0.5G, form=target)"))
    assert format_text(diff_documents(before, after)) == (
        "space method budget: budget(macs=600M, weight=1.0, form=exceed) -> "
        "budget(macs=500M, weight=1.0, form=target)\n")
    added = parse_text(space("edge_normalisation, budget(latency=12ms, table=\"t.json\")"))
    assert "method budget: added budget(latency=12ms, table=t.json, weight=1.0, " \
           "form=exceed)" in format_text(diff_documents(parse_text(space("edge_normalisation")),
                                                        added))
    assert format_text(diff_documents(before, parse_text(space("budget(macs=600000000)")))) == ""


def test_the_front_end_stays_torch_free():
    import subprocess

    code = ("import sys; from attdarts.language.transform import parse_text; "
            "from attdarts.language.printer import format_document; "
            f"format_document(parse_text({space('budget(macs=600M)')!r})); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
