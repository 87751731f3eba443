"""The DSL front end: grammar, transform, IR checks, printer, fmt/check, error goldens, fuzzing."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from attdarts import api
from attdarts.cli import cli
from attdarts.language import catalog
from attdarts.language.errors import DslError
from attdarts.language.grammar import build_parser
from attdarts.language.ir import (Call, Cell, Comments, Document, Edge, Genotype, Meta, Node, Output, Space,
                         derivation_problems)
from attdarts.language.locations import LOCATIONS
from attdarts.language.printer import format_document
from attdarts.language.transform import decode_source, parse_file, parse_text

ROOT = Path(__file__).resolve().parents[2]
ZOO = sorted((ROOT / "genotypes").rglob("*.geno"))
ERRORS = sorted((ROOT / "tests" / "errors").glob("*.geno"))


def test_grammar_has_no_conflicts_in_strict_mode():
    build_parser(strict=True)


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_zoo_prints_back_byte_for_byte(path):
    text = path.read_text()
    assert format_document(parse_text(text)) == text


def test_zoo_has_the_published_genotypes():
    names = {p.stem for p in (ROOT / "genotypes").glob("*.geno")}
    assert {"darts_v1", "darts_v2", "pc_darts", "p_darts", "att_darts", "nasnet_a", "amoebanet_a"} <= names
    for name in names:
        genotype = parse_file(ROOT / "genotypes" / f"{name}.geno").genotype()
        assert genotype.name == name
        assert genotype.meta_value("source")


def test_paper_cell_reads_like_figure_4():
    genotype = parse_file(ROOT / "genotypes" / "att_darts.geno").genotype()
    first = genotype.normal.nodes[0]
    assert [(e.operation.name, e.input, e.attention.name) for e in first.edges] == [
        ("sep_conv_3x3", "c_k2", "double_attention"), ("sep_conv_3x3", "c_k1", "cbam")]
    assert genotype.normal.output.nodes == ("n0", "n1", "n2", "n3")


def test_nasnet_and_amoebanet_shapes():
    nasnet = parse_file(ROOT / "genotypes" / "nasnet_a.geno").genotype()
    assert len(nasnet.normal.nodes) == 5 and nasnet.reduce.output.nodes == ("n2", "n3", "n4")
    same_input_twice = nasnet.normal.nodes[3]
    assert [e.input for e in same_input_twice.edges] == ["c_k2", "c_k2"]
    amoeba = parse_file(ROOT / "genotypes" / "amoebanet_a.geno").genotype()
    assert amoeba.reduce.output.nodes == ("n1", "n2", "n4")


@pytest.mark.parametrize("path", ERRORS, ids=lambda p: p.stem)
def test_error_messages_are_pinned(path):
    relative = path.relative_to(ROOT).as_posix()
    with pytest.raises(DslError) as caught:
        parse_text(path.read_text(), relative)
    expected = path.with_suffix(".expected").read_text()
    assert caught.value.render() + "\n" == expected


def test_every_problem_of_a_file_is_reported():
    text = (ROOT / "tests" / "errors" / "bad_keyword.geno").read_text()
    with pytest.raises(DslError) as caught:
        parse_text(text)
    assert len(caught.value.problems) == 3


# -- IR -----------------------------------------------------------------------------------------

def _cell(kind="normal"):
    node = Node(name="n0", edges=(Edge(operation=Call(name="skip_connect"), input="c_k1"),))
    return Cell(kind=kind, nodes=(node,), output=Output(nodes=("n0",)))


def test_ir_is_frozen_hashable_and_compares_content_only():
    genotype = Genotype(name="g", normal=_cell(), reduce=_cell("reduce"))
    with pytest.raises(ValidationError, match="frozen"):
        genotype.name = "other"
    parsed = parse_text("# note\n" + format_document(Document(items=(genotype,)))).genotype()
    assert parsed == genotype and hash(parsed) == hash(genotype)
    assert parsed.comments.leading == ("# note",) and genotype.comments.leading == ()
    assert "span" not in parsed.model_dump()
    assert len({parsed, genotype}) == 1


def test_ir_validators_report_structure_errors():
    with pytest.raises(DslError, match="used before it is defined"):
        Cell(kind="normal", nodes=(
            Node(name="n0", edges=(Edge(operation=Call(name="skip_connect"), input="n1"),)),
            Node(name="n1", edges=(Edge(operation=Call(name="skip_connect"), input="c_k1"),)),
        ), output=Output(nodes=("n0", "n1")))
    with pytest.raises(DslError, match="a cycle"):
        Cell(kind="normal", nodes=(Node(name="n0", edges=(Edge(operation=Call(name="none"), input="n0"),)),),
             output=Output(nodes=("n0",)))
    with pytest.raises(DslError, match="has no edges"):
        Cell(kind="normal", nodes=(Node(name="n0", edges=()),), output=Output(nodes=("n0",)))
    with pytest.raises(DslError, match="defined twice"):
        node = Node(name="n0", edges=(Edge(operation=Call(name="none"), input="c_k1"),))
        Cell(kind="normal", nodes=(node, node), output=Output(nodes=("n0",)))


def test_spaces_that_cannot_derive_a_genotype_are_refused():
    """Issue 11, item 14: `operations = [none]` used to pass `check` and fail at derivation."""
    for text, message in (
        ("space s { operations = [none]\n attentions = [se] }", "no operation other than 'none'"),
        ("space s { operations = [none]\n location = no_attention }", "no operation other than 'none'"),
        ("space s { operations = [none]\n attentions = [se]\n location = double_mixed }",
         "no operation other than 'none'"),
        ("space s { operations = [none]\n attentions = [se]\n location = end }",
         "no operation other than 'none'"),
        ("space s { operations = [sep_conv_3x3]\n attentions = [se]\n keep = 3 }",
         "'keep' is 3, but the first node has only 2 inputs"),
    ):
        with pytest.raises(DslError, match=message) as caught:
            parse_text(text, "s.geno")
        assert caught.value.problems[0].span is not None and caught.value.problems[0].hint
    # where attentions share the operations' mixture, an attention derives to
    # skip_connect(x) >> attention, so `none` alone is enough
    mixed = parse_text("space s { operations = [none]\n attentions = [se]\n"
                       " location = mixed_with_operation\n keep = 2 }").space()
    assert mixed.keep == 2
    # a space built without validation (model_construct) is still diagnosed
    unchecked = Space.model_construct(name="s", operations=(Call(name="none"),), attentions=(),
                                      keep=2, nodes=4, location="mixed_with_operation",
                                      setting_spans=(), span=None)
    [problem] = derivation_problems(unchecked)
    assert "no operation other than 'none' and no attention" in problem.message


def test_derive_refuses_an_underivable_space_in_one_line():
    import torch

    from attdarts.networks.derive import derive_genotype

    bad = Space.model_construct(name="s", operations=(Call(name="none"),), attentions=(),
                                nodes=1, keep=2, location="no_attention", mixing="sum",
                                setting_spans=(), span=None, meta=())
    tensors = {cell: {"alpha": torch.zeros(2, 1)} for cell in ("normal", "reduce")}
    with pytest.raises(ValueError, match="space 's' cannot derive a genotype: every edge would "
                                         "derive to 'none'.*add an operation") as caught:
        derive_genotype(tensors, bad)
    assert "\n" not in str(caught.value)
    # none plus attentions in one mixture derives skip_connect(x) >> attention
    mixed = parse_text("space m { operations = [none]\n attentions = [se, cbam]\n"
                       " location = mixed_with_operation\n nodes = 2 }").space()
    alpha = torch.zeros(5, 3)
    alpha[:, 2] = 1.0  # cbam strongest everywhere, none ignored
    alpha[:, 0] = 9.0
    genotype = derive_genotype({"normal": {"alpha": alpha}, "reduce": {"alpha": alpha}}, mixed)
    assert {(e.operation.name, e.attention.name) for n in genotype.normal.nodes for e in n.edges} \
        == {("skip_connect", "cbam")}


def test_identity_attention_is_the_same_as_none_and_defaults_are_dropped():
    a = parse_text(format_document(Document(items=(Genotype(
        name="g", normal=_cell(), reduce=_cell("reduce")),))))
    text = format_document(a).replace("skip_connect(c_k1)\n", "skip_connect(c_k1) >> identity\n", 1)
    text = text.replace("concat(n0)\n", "concat(n0) >> bam(reduction=16, combine=sum)\n", 1)
    b = parse_text(text).genotype()
    assert b.normal.nodes[0].edges[0].attention is None
    assert b.normal.output.attention == Call(name="bam")


# -- generated documents round-trip -----------------------------------------------------------

_IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: s not in {"c_k", "c_k1", "c_k2", "concat", "normal", "reduce", "genotype", "space"})
_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20)
_COMMENT = _TEXT.map(lambda t: ("# " + t).rstrip())
_COMMENTS = st.builds(Comments, leading=st.lists(_COMMENT, max_size=2).map(tuple),
                      trailing=st.none() | _COMMENT)


@st.composite
def _call(draw, table):
    name = draw(st.sampled_from(sorted(table)))
    entry = table[name]
    kwargs = []
    for key, parameter in entry.parameters.items():
        if not draw(st.booleans()):
            continue
        if parameter.choices:
            value = draw(st.sampled_from([c for c in parameter.choices if c != parameter.default]))
        elif parameter.kind is float:
            value = draw(st.floats(1e-6, 10.0).filter(lambda v: v != parameter.default))
        else:
            value = draw(st.integers(1, 64).filter(lambda v: v != parameter.default))
        kwargs.append((key, value))
    values = {**{key: p.default for key, p in entry.parameters.items()}, **dict(kwargs)}
    assume(entry.check is None or entry.check(values) is None)  # e.g. eca's odd kernel_size
    return Call(name=name, kwargs=tuple(kwargs))


@st.composite
def _attention(draw):
    call = draw(st.none() | _call(catalog.ATTENTIONS))
    return None if call is None or call.name == "identity" else call


@st.composite
def cells(draw, kind):
    count = draw(st.integers(1, 6))
    names = [f"n{i}" for i in range(count)]
    nodes = []
    for index, name in enumerate(names):
        inputs = ["c_k2", "c_k1", *names[:index]]
        edges = tuple(
            Edge(operation=draw(_call(catalog.OPERATIONS)), input=draw(st.sampled_from(inputs)),
                 attention=draw(_attention()))
            for _ in range(draw(st.integers(1, 4))))
        nodes.append(Node(name=name, edges=edges, comments=draw(_COMMENTS)))
    concat = draw(st.permutations(names).flatmap(lambda p: st.integers(1, len(p)).map(lambda k: p[:k])))
    output = Output(nodes=tuple(concat), attention=draw(_attention()), comments=draw(_COMMENTS))
    return Cell(kind=kind, nodes=tuple(nodes), output=output, comments=draw(_COMMENTS),
                closing=draw(_COMMENTS))


@st.composite
def _meta(draw):
    keys = draw(st.lists(_IDENT, max_size=3, unique=True))
    return tuple(Meta(key=k, value=draw(_TEXT), comments=draw(_COMMENTS)) for k in keys)


@st.composite
def genotypes(draw):
    return Genotype(name=draw(_IDENT), meta=draw(_meta()), normal=draw(cells("normal")),
                    reduce=draw(cells("reduce")), comments=draw(_COMMENTS), closing=draw(_COMMENTS))


@st.composite
def spaces(draw):
    mixing = draw(st.sampled_from(catalog.MIXINGS))
    # product mixing needs a location whose mixtures hold attentions only (locations.py)
    location = draw(st.sampled_from(
        [name for name, spec in LOCATIONS.items() if mixing == "sum" or spec.product_allowed]))
    operations = draw(st.lists(_call(catalog.OPERATIONS), min_size=1, max_size=5, unique=True))
    # derivation needs a candidate other than `none` (refused otherwise, see the test above)
    operations = [c for c in operations if c.name != "none"] or [Call(name="skip_connect")]
    if draw(st.booleans()):
        operations.insert(draw(st.integers(0, len(operations))), Call(name="none"))
    attention_table = catalog.ATTENTIONS if mixing == "sum" else {
        k: v for k, v in catalog.ATTENTIONS.items() if not v.additive}
    attentions = draw(st.lists(_call(attention_table), min_size=location != "no_attention",
                               max_size=4, unique=True))
    keys = ["operations", "attentions", "nodes", "keep", "location", "mixing"]  # printed order
    keys = [k for k in keys if k != "attentions" or attentions]
    setting_comments = tuple((k, c) for k in keys if (c := draw(_COMMENTS)))
    return Space(name=draw(_IDENT), meta=draw(_meta()), operations=tuple(operations),
                 attentions=tuple(attentions), nodes=draw(st.integers(1, 6)), keep=draw(st.integers(1, 2)),
                 location=location, mixing=mixing, setting_comments=setting_comments,
                 comments=draw(_COMMENTS), closing=draw(_COMMENTS))


@st.composite
def documents(draw):
    items = draw(st.lists(genotypes() | spaces(), max_size=3))
    names = set()
    unique = []
    for item in items:
        if item.name not in names:
            names.add(item.name)
            unique.append(item)
    closing = Comments(leading=tuple(draw(st.lists(_COMMENT, max_size=2))))
    return Document(items=tuple(unique), closing=closing)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_generated_documents_round_trip(document):
    text = format_document(document)
    parsed = parse_text(text)
    assert parsed == document
    assert parsed.model_dump() == document.model_dump()  # comments survive too
    assert format_document(parsed) == text


# -- fuzzing: only clean parses or located DslErrors --------------------------------------------

def _mutations(rng: random.Random, data: bytes) -> bytes:
    tokens = data.split(b" ")
    choice = rng.randrange(6)
    if choice == 0 and len(tokens) > 1:
        del tokens[rng.randrange(len(tokens))]
    elif choice == 1:
        i = rng.randrange(len(tokens))
        tokens.insert(i, tokens[i])
    elif choice == 2 and len(tokens) > 1:
        i, j = rng.randrange(len(tokens)), rng.randrange(len(tokens))
        tokens[i], tokens[j] = tokens[j], tokens[i]
    else:
        raw = bytearray(data)
        i = rng.randrange(len(raw))
        if choice == 3:
            del raw[i]
        elif choice == 4:
            raw.insert(i, rng.randrange(256))
        else:
            raw[i] = rng.randrange(256)
        return bytes(raw)
    return b" ".join(tokens)


def test_fuzzed_files_give_clean_results_or_located_errors():
    rng = random.Random(1234)
    seeds = [p.read_bytes() for p in ZOO]
    outcomes = {"parsed": 0, "error": 0}
    for _ in range(3000):
        data = rng.choice(seeds)
        for _ in range(rng.randrange(1, 4)):
            data = _mutations(rng, data)
        try:
            parse_text(decode_source(data, "fuzz.geno"), "fuzz.geno")
            outcomes["parsed"] += 1
        except DslError as error:
            outcomes["error"] += 1
            assert error.problems and all(p.span is not None for p in error.problems), error.render()
            error.render()
    assert outcomes["parsed"] > 0 and outcomes["error"] > 1000


# -- CLI: check and fmt -----------------------------------------------------------------------

def _run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_check_is_silent_on_the_zoo():
    result = _run("check", *ZOO)
    assert result.exit_code == 0 and result.output == ""


def test_check_prints_one_summary_line_on_a_terminal(tmp_path, monkeypatch):
    from attdarts.commands import frontend

    monkeypatch.setattr(frontend, "_stdout_is_terminal", lambda: True)
    genotypes = sum(1 for path in ZOO if path.parent.name != "spaces")
    result = _run("check", ROOT / "genotypes")
    assert result.exit_code == 0
    assert result.output == (f"checked {len(ZOO)} files: {genotypes} genotypes, "
                             f"{len(ZOO) - genotypes} spaces, no problems\n")
    one = _run("check", ROOT / "genotypes" / "darts_v2.geno")
    assert one.output == "checked 1 file: 1 genotype, 0 spaces, no problems\n"
    bad = tmp_path / "bad.geno"
    bad.write_text("genotype g {\n    normal { n0 = sep_conv_3x4(c_k1)\n c_k = concat(n0) }\n}\n")
    failed = _run("check", bad, ROOT / "genotypes" / "darts_v2.geno")
    assert failed.exit_code == 1 and "checked" not in failed.output
    assert "unknown operation 'sep_conv_3x4'" in failed.output


@pytest.mark.parametrize("content", [
    b"", b"\x00\x01\x02\xff\xfe binary", b"genotype g {\n normal { n0 = \xe9t\xe9(c_k1) }",
    b"genotype \"unterminated", b"(((((((((((((" * 1000, b"genotype g { normal { n0 = skip_connect(c_k1",
])
def test_check_never_shows_a_traceback(tmp_path, content):
    path = tmp_path / "bad.geno"
    path.write_bytes(content)
    result = _run("check", path)
    assert result.exit_code == 1
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert f"{path}" in result.output


def test_check_survives_ten_megabytes_of_nonsense(tmp_path):
    path = tmp_path / "big.geno"
    rng = random.Random(0)
    path.write_bytes(bytes(rng.randrange(32, 127) for _ in range(1 << 16)) * 160)
    result = _run("check", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output) < 2000  # the caret excerpt is clipped, not 10 MB of text


def test_non_utf8_file_points_at_the_byte(tmp_path):
    path = tmp_path / "latin1.geno"
    path.write_bytes(b"# ok\n# caf\xe9\n")
    result = _run("check", path)
    assert result.exit_code == 1
    assert f"{path}:2:6: file is not UTF-8 text (byte 0xe9)" in result.output


def test_fmt_check_and_rewrite(tmp_path):
    source = (ROOT / "genotypes" / "darts_v2.geno").read_text()
    messy = tmp_path / "messy.geno"
    messy.write_text(source.replace("    ", "  ").replace(" + ", "+"))
    clean = tmp_path / "clean.geno"
    clean.write_text(source)
    result = _run("fmt", "--check", tmp_path)
    assert result.exit_code == 1 and f"would reformat {messy}" in result.output
    assert str(clean) not in result.output
    result = _run("fmt", tmp_path)
    assert result.exit_code == 0
    assert messy.read_text() == source
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.geno", "messy.geno"]  # no temp files
    assert _run("fmt", "--check", tmp_path).exit_code == 0


def test_fmt_refuses_to_write_when_the_round_trip_changes_the_ir(tmp_path, monkeypatch):
    import attdarts.api as api_module

    path = tmp_path / "g.geno"
    original = (ROOT / "genotypes" / "darts_v1.geno").read_text().replace("    ", "  ")
    path.write_text(original)
    monkeypatch.setattr(api_module, "format_document",
                        lambda doc: format_document(doc).replace("sep_conv_3x3", "sep_conv_5x5", 1))
    result = _run("fmt", path)
    assert result.exit_code == 1 and "changed the meaning" in result.output
    assert path.read_text() == original


def test_fmt_reports_errors_and_leaves_the_file(tmp_path):
    path = tmp_path / "bad.geno"
    path.write_text((ROOT / "tests" / "errors" / "missing_plus.geno").read_text())
    before = path.read_bytes()
    result = _run("fmt", path)
    assert result.exit_code == 1 and "join edges with '+'" in result.output
    assert path.read_bytes() == before


def test_front_end_does_not_import_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from attdarts.cli import cli\n"
        "r = CliRunner().invoke(cli, ['check', 'genotypes'])\n"
        "r2 = CliRunner().invoke(cli, ['fmt', '--check', 'genotypes'])\n"
        "assert r.exit_code == 0 and r2.exit_code == 0, (r.output, r2.output)\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)


def test_grammar_is_found_from_an_installed_layout(tmp_path):
    """A wheel ships the grammar inside the package (pyproject force-include)."""
    import shutil

    package = tmp_path / "attdarts"
    shutil.copytree(ROOT / "attdarts", package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "grammar", package / "grammar")
    code = "import attdarts.language.grammar as g; print(g.grammar_path())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}, check=True).stdout
    assert Path(out.strip()) == package / "grammar" / "attdarts.lark"


def test_a_comment_trails_the_statement_its_line_ends_with_not_the_block_opened_there():
    """`normal { n0 = ...  # x` on one line: the comment is n0's, not the genotype's or the cell's
    (it used to move to `genotype y {  # x` when formatted)."""
    text = ("genotype y { normal { n0 = skip_connect(c_k1)  # on n0\n"
            "    c_k = concat(n0) }\n"
            "    reduce {  # on reduce\n"
            "        n0 = skip_connect(c_k1)\n"
            "        c_k = concat(n0) } }\n")
    genotype = parse_text(text).genotype()
    assert genotype.comments.trailing is None and genotype.normal.comments.trailing is None
    assert genotype.normal.nodes[0].comments.trailing == "# on n0"
    assert genotype.reduce.comments.trailing == "# on reduce"
    assert "n0 = skip_connect(c_k1)  # on n0\n" in format_document(parse_text(text))
