"""Search methods in the language (attdarts.language.methods): `methods = [...]` calls and the
older `key = value` lines, canonical printing and the `fmt` migration, located errors with
did-you-mean, the checks across methods, the catalog's registration, diff, and README's table
(issues 13 and 20).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language import methods as catalog
from attdarts.language.catalog import DuplicateNameError, Parameter
from attdarts.language.errors import DslError
from attdarts.language.methods import LEGACY_OPTIONS, METHODS, Method, register
from attdarts.language.printer import format_document
from attdarts.language.transform import parse_text
from attdarts.tools.diff import diff_documents, format_text

ROOT = Path(__file__).resolve().parents[2]

# one line that switches each older option on, as written, and the call it becomes
ON = {
    "partial_channels": ("4", "partial_channels(k=4)"),
    "edge_normalisation": ("true", "edge_normalisation"),
    "max_skip_connect": ("2", "max_skip_connect(n=2)"),
    "max_identity": ("1", "max_identity(n=1)"),
    "stop_at_skips": ("2", "stop_at_skips(n=2)"),
    "auxiliary_skip": ("cosine", "auxiliary_skip(decay=cosine)"),
    "auxiliary_identity": ("linear", "auxiliary_identity(decay=linear)"),
    "beta_decay": ("0.5", "beta_decay(lambda=0.5, schedule=linear)"),
    "smoothing": ("0.03", "smoothing(start=0.03, end=0.03)"),
}


def space(*lines: str, location: str = "after_every", attentions: str = "identity, se") -> str:
    body = "".join(f"    {line}\n" for line in lines)
    return ("space tiny {\n    operations = [none, skip_connect, sep_conv_3x3]\n"
            f"    attentions = [{attentions}]\n    nodes = 2\n    keep = 2\n"
            f"    location = {location}\n    mixing = sum\n{body}}}\n")


def calls(text: str) -> list[str]:
    from attdarts.tools.diff import call_text

    return [call_text(call) for call in parse_text(text).space().methods]


def test_every_older_option_has_a_line_here():
    assert set(ON) | {"beta_decay_schedule"} == set(LEGACY_OPTIONS)


@pytest.mark.parametrize("key", list(ON))
def test_every_older_option_becomes_its_method_call_and_prints_in_the_new_form(key):
    written, call = ON[key]
    old = space(f"{key} = {written}")
    new = space(f"methods = [{call}]")
    assert calls(old) == [call]
    assert parse_text(old).space() == parse_text(new).space()
    assert format_document(parse_text(old)) == new  # fmt migrates the line
    assert format_document(parse_text(new)) == new  # and the new form is canonical
    assert parse_text(new).space().model_dump() == parse_text(old).space().model_dump()


def test_all_older_options_together_become_methods_in_table_order():
    lines = [f"{key} = {ON[key][0]}" for key in reversed(ON)]
    printed = format_document(parse_text(space(*lines, "beta_decay_schedule = constant")))
    expected = [call for key, (_, call) in ON.items()]
    expected[expected.index("beta_decay(lambda=0.5, schedule=linear)")] = (
        "beta_decay(lambda=0.5, schedule=constant)")
    assert calls(printed) == expected
    assert "    methods = [\n        partial_channels(k=4),\n" in printed  # one call per line
    assert format_document(parse_text(printed)) == printed


def test_methods_keep_the_order_the_space_lists_them():
    text = space("methods = [smoothing(start=0.03, end=0.3), partial_channels(k=2)]")
    assert calls(text) == ["smoothing(start=0.03, end=0.3)", "partial_channels(k=2)"]
    assert format_document(parse_text(text)) == text


def test_settings_are_stated_in_full_defaults_included():
    short = space("methods = [beta_decay, partial_channels]")
    full = space("methods = [beta_decay(lambda=50.0, schedule=linear), partial_channels(k=4)]")
    assert parse_text(short).space() == parse_text(full).space()
    assert format_document(parse_text(short)) == full
    # a whole number for a float setting is a float
    assert calls(space("methods = [beta_decay(lambda=1)]")) == [
        "beta_decay(lambda=1.0, schedule=linear)"]
    assert parse_text(full).space().setting("beta_decay", "lambda") == 50.0


def test_numbers_of_older_lines_print_in_one_form():
    printed = format_document(parse_text(space("beta_decay = 1", "smoothing = 3e-2")))
    assert "beta_decay(lambda=1.0, schedule=linear), smoothing(start=0.03, end=0.03)" in printed


def test_a_space_without_methods_prints_as_before():
    text = space()
    assert format_document(parse_text(text)) == text
    assert parse_text(text).space().methods == ()


def test_comments_of_older_lines_move_to_the_methods_line():
    text = space("# off for now; 0.03 is SDARTS's value", "smoothing = 0.0",
                 "max_skip_connect = none  # P-DARTS keeps 2")
    printed = format_document(parse_text(text))
    assert printed.endswith("    # off for now; 0.03 is SDARTS's value\n"
                            "    methods = []  # P-DARTS keeps 2\n}\n")
    assert parse_text(printed).space().methods == ()
    assert format_document(parse_text(printed)) == printed
    # without a comment an empty list is not written
    assert "methods" not in format_document(parse_text(space("smoothing = 0.0")))
    assert "methods" not in format_document(parse_text(space("methods = []")))


def test_fmt_migrates_a_file_and_check_reports_it(tmp_path):
    path = tmp_path / "old.geno"
    path.write_text(space("partial_channels = 2", "edge_normalisation = true"))
    runner = CliRunner()
    result = runner.invoke(cli, ["fmt", "--check", str(path)])
    assert result.exit_code == 1 and "old.geno" in result.output
    result = runner.invoke(cli, ["fmt", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_text() == space("methods = [partial_channels(k=2), edge_normalisation]")
    assert runner.invoke(cli, ["fmt", "--check", str(path)]).exit_code == 0


def test_an_option_set_twice_is_an_error():
    with pytest.raises(DslError, match="'smoothing' is set twice"):
        parse_text(space("smoothing = 0.1", "smoothing = 0.2"))
    with pytest.raises(DslError, match="search method 'smoothing' is listed twice"):
        parse_text(space("methods = [smoothing, smoothing(start=0.1)]"))
    with pytest.raises(DslError, match="search method 'smoothing' is given twice: in 'methods' "
                                       "and as 'smoothing = ...'"):
        parse_text(space("smoothing = 0.1", "methods = [smoothing]"))


@pytest.mark.parametrize("line, expected", [
    ("partial_channels = 0", "'partial_channels' is 0; it must be from 1 to 64"),
    ("partial_channels = 65", "'partial_channels' is 65; it must be from 1 to 64"),
    ("partial_channels = 2.5", "'partial_channels' must be a whole number, from 1 to 64, got 2.5"),
    ("max_skip_connect = -1", "'max_skip_connect' is -1; it must be at least 0"),
    ("stop_at_skips = 0", "'stop_at_skips' is 0; it must be at least 1"),
    ("beta_decay = -0.5", "'beta_decay' is -0.5; it must be at least 0"),
    ("smoothing = 1.5", "'smoothing' is 1.5; it must be from 0 to 1"),
    ("edge_normalisation = 1", "'edge_normalisation' must be true or false"),
    ("auxiliary_skip = exponential", "'auxiliary_skip' must be one of off, linear, cosine"),
    ("beta_decay_schedule = cosine", "'beta_decay_schedule' must be one of linear, constant"),
    ("methods = [partial_channels(k=0)]", "'k' of partial_channels is 0; it must be from 1 to 64"),
    ("methods = [partial_channels(k=65)]",
     "'k' of partial_channels is 65; it must be from 1 to 64"),
    ("methods = [partial_channels(k=2.5)]",
     "'k' of partial_channels must be a whole number, from 1 to 64, got 2.5"),
    ("methods = [max_skip_connect(n=-1)]", "'n' of max_skip_connect is -1; it must be at least 0"),
    ("methods = [stop_at_skips(n=0)]", "'n' of stop_at_skips is 0; it must be at least 1"),
    ("methods = [beta_decay(lambda=-0.5)]", "'lambda' of beta_decay is -0.5; it must be at least 0"),
    ("methods = [smoothing(end=1.5)]", "'end' of smoothing is 1.5; it must be from 0 to 1"),
    ("methods = [smoothing(start=high)]",
     "'start' of smoothing must be a number, from 0 to 1, got 'high'"),
    ("methods = [auxiliary_skip(decay=exponential)]",
     "'decay' of auxiliary_skip must be one of linear, cosine, got 'exponential'"),
    ("methods = [beta_decay(schedule=cosine)]",
     "'schedule' of beta_decay must be one of linear, constant, got 'cosine'"),
])
def test_bad_values_are_located_errors(line, expected):
    with pytest.raises(DslError) as caught:
        parse_text(space(line), "s.geno")
    rendered = caught.value.render()
    assert rendered.splitlines()[0].endswith(expected)
    assert rendered.startswith("s.geno:8:")  # the line of the option, with a caret under it
    assert "^" in rendered


@pytest.mark.parametrize("line, expected, hint", [
    ("methods = [partial_chanels]", "unknown search method 'partial_chanels'",
     "did you mean 'partial_channels'?"),
    ("methods = [sep_conv_3x3]", "unknown search method 'sep_conv_3x3'",
     "'sep_conv_3x3' is an operation; list it in 'operations'"),
    ("methods = [gdas_sampler]", "unknown search method 'gdas_sampler'", "known methods: "),
    ("methods = [beta_decay(lamda=1)]", "unknown setting 'lamda' for search method 'beta_decay'",
     "did you mean 'lambda'?"),
    ("methods = [edge_normalisation(k=2)]",
     "unknown setting 'k' for search method 'edge_normalisation'",
     "'edge_normalisation' takes no settings"),
    ("methods = [smoothing(x=1)]", "unknown setting 'x' for search method 'smoothing'",
     "'smoothing' takes start, end"),
    ("methods = [smoothing(start=0.1, start=0.2)]", "setting 'start' is given twice", None),
])
def test_unknown_methods_and_settings_say_what_was_meant(line, expected, hint):
    with pytest.raises(DslError) as caught:
        parse_text(space(line), "s.geno")
    problem = caught.value.problems[0]
    assert problem.message == expected and problem.span.line == 8
    if hint is not None:
        assert problem.hint.startswith(hint)


@pytest.mark.parametrize("lines, location, attentions, expected", [
    (["max_identity = 1"], "after_every", "se, cbam",
     "'max_identity' caps edges whose attention derives to identity"),
    (["methods = [max_identity]"], "end", "identity, se",
     "'max_identity' caps edges whose attention derives to identity"),
    (["max_identity = 1"], "after_every", "identity",
     "'max_identity' needs an attention other than identity"),
    (["max_skip_connect = 2"], "mixed_with_operation", "identity, se",
     "'max_skip_connect' needs operations chosen apart from attentions"),
    (["methods = [max_skip_connect(n=2)]"], "double_mixed", "identity, se",
     "'max_skip_connect' needs operations chosen apart from attentions"),
    (["methods = [auxiliary_identity(decay=cosine)]"], "mixed_with_operation", "identity, se",
     "'auxiliary_identity' adds to attention mixtures; location 'mixed_with_operation' has none"),
])
def test_what_a_method_needs_of_its_space(lines, location, attentions, expected):
    with pytest.raises(DslError, match=re.escape(expected)):
        parse_text(space(*lines, location=location, attentions=attentions))


def test_stop_at_skips_needs_skip_connect():
    text = space("methods = [stop_at_skips]").replace("skip_connect, ", "max_pool_3x3, ")
    with pytest.raises(DslError, match="'stop_at_skips' counts skip_connect"):
        parse_text(text)


def test_methods_that_fit_their_location_are_accepted():
    parse_text(space("methods = [max_identity(n=1), auxiliary_identity(decay=cosine)]"))
    parse_text(space("max_skip_connect = 2", "auxiliary_skip = linear", location="end"))
    no_attention = space("methods = [max_skip_connect(n=1)]").replace(
        "    attentions = [identity, se]\n", "")
    parse_text(no_attention.replace("after_every", "no_attention"))


def test_a_space_built_in_python_is_checked_as_text_is():
    from attdarts.language.ir import Call, Space

    operations = (Call(name="none"), Call(name="skip_connect"), Call(name="sep_conv_3x3"))
    built = Space(name="s", operations=operations, location="no_attention",
                  methods=(Call(name="partial_channels", kwargs=(("k", 2),)),))
    assert built == parse_text("space s { operations = [none, skip_connect, sep_conv_3x3] "
                               "location = no_attention methods = [partial_channels(k=2)] }"
                               ).space()
    for methods, expected in [
        ((Call(name="partial_chanels"),), "unknown search method 'partial_chanels'"),
        ((Call(name="partial_channels", kwargs=(("k", 0),)),), "'k' of partial_channels is 0"),
        ((Call(name="partial_channels", kwargs=(("q", 2),)),), "unknown setting 'q'"),
    ]:
        with pytest.raises(DslError, match=re.escape(expected)):
            Space(name="s", operations=operations, location="no_attention", methods=methods)


# -- the catalog ---------------------------------------------------------------------------------


@pytest.fixture
def made_up_methods():
    """Two methods registered for a test, gone afterwards."""
    added = [
        register(Method("left_sampler", "a test", "makes the weights one way",
                        "tests.networks.test_method_hooks:MadeUp", origin="tests",
                        settings={"tau": Parameter(float, 1.0, minimum=0.0)})),
        register(Method("right_sampler", "a test", "makes the weights another way",
                        "tests.networks.test_method_hooks:MadeUp", origin="tests",
                        excludes=("left_sampler",))),
    ]
    yield added
    for method in added:
        del METHODS[method.name]


def test_registering_a_taken_name_names_who_took_it(made_up_methods):
    with pytest.raises(DuplicateNameError, match="search method 'beta_decay' is already in the "
                                                 "catalog \\(registered by attdarts\\); my_plugin"):
        register(Method("beta_decay", "p", "s", "x.y:Z", origin="my_plugin"))
    with pytest.raises(DuplicateNameError, match=r"registered by tests\); other"):
        register(Method("left_sampler", "p", "s", "x.y:Z", origin="other"))
    with pytest.raises(ValueError, match="factory must be 'package.module:Class'"):
        register(Method("no_factory", "p", "s", "no_colon"))
    assert "no_factory" not in METHODS


def test_methods_a_method_excludes_are_refused_either_way(made_up_methods):
    text = space("methods = [left_sampler(tau=2), right_sampler]")
    with pytest.raises(DslError, match="search method 'right_sampler' cannot be combined with "
                                       "'left_sampler'"):
        parse_text(text)
    with pytest.raises(DslError, match="search method 'left_sampler' cannot be combined with "
                                       "'right_sampler'"):
        parse_text(space("methods = [right_sampler, left_sampler]"))
    assert calls(space("methods = [left_sampler]")) == ["left_sampler(tau=1.0)"]


def test_every_entry_is_complete_and_its_factory_resolves():
    from attdarts.networks.methods import SearchMethod, method_class

    for name, method in METHODS.items():
        assert method.origin == "attdarts" and method.paper and method.summary and method.cost
        assert issubclass(method_class(name), SearchMethod), name
        for key, parameter in method.settings.items():  # a default of None: optional
            assert parameter.default is None or catalog.setting_problem(
                name, key, parameter, parameter.default) is None
        for other in method.excludes:
            assert other in METHODS


def test_the_catalog_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom attdarts.language import methods, transform, printer\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- diff ----------------------------------------------------------------------------------------


def test_diff_shows_methods_added_removed_and_changed():
    before = parse_text(space("methods = [smoothing(start=0.03, end=0.03), max_identity(n=1)]"))
    after = parse_text(space("methods = [partial_channels(k=4), edge_normalisation, "
                             "auxiliary_skip, smoothing(start=0.03, end=0.05)]"))
    assert format_text(diff_documents(before, after)) == (
        "space method smoothing: smoothing(start=0.03, end=0.03) -> smoothing(start=0.03, "
        "end=0.05)\n"
        "space method max_identity: removed max_identity(n=1)\n"
        "space method partial_channels: added partial_channels(k=4)\n"
        "space method edge_normalisation: added edge_normalisation\n"
        "space method auxiliary_skip: added auxiliary_skip(decay=linear)\n")
    assert format_text(diff_documents(before, before)) == ""
    reordered = parse_text(space("methods = [max_identity(n=1), smoothing(start=0.03, end=0.03)]"))
    # the older lines are the same methods (in the catalog's order): no difference
    older = parse_text(space("smoothing = 0.03", "max_identity = 1"))
    assert format_text(diff_documents(reordered, older)) == ""
    assert format_text(diff_documents(before, reordered)) == (
        "space methods: [smoothing(start=0.03, end=0.03), max_identity(n=1)] -> "
        "[max_identity(n=1), smoothing(start=0.03, end=0.03)]\n")


def test_zoo_spaces_hold_pc_darts_methods():
    pc_darts = parse_text((ROOT / "genotypes/spaces/pc_darts.geno").read_text()).space()
    assert calls(format_document(parse_text((ROOT / "genotypes/spaces/pc_darts.geno")
                                            .read_text()))) == [
        "partial_channels(k=4)", "edge_normalisation"]
    assert not pc_darts.attentions
    attention = parse_text((ROOT / "genotypes/spaces/att_pc_darts.geno").read_text()).space()
    assert attention.methods == pc_darts.methods
    paper = parse_text((ROOT / "genotypes/spaces/att_darts.geno").read_text()).space()
    assert (attention.operations, attention.attentions, attention.location) == (
        paper.operations, paper.attentions, paper.location)
    for path in (ROOT / "genotypes/spaces").glob("*.geno"):  # migrated: no older lines left
        assert not set(LEGACY_OPTIONS) & {line.split("=")[0].strip()
                                          for line in path.read_text().splitlines()}, path


# -- README's table ------------------------------------------------------------------------------


def test_readme_table_is_the_catalogs():
    text = (ROOT / "README.md").read_text()
    start = text.index("## Search methods\n")
    section = text[start:text.index("\n## ", start + 1)]
    assert catalog.table() in section
