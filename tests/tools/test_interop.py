"""Import from and export to the DARTS-family formats (attdarts.tools.interop, `attdarts import/export`)."""

from __future__ import annotations

import ast
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language.errors import DslError
from attdarts.language.ir import Call, Cell, Edge, Node
from attdarts.language.printer import format_document
from attdarts.language.transform import parse_file, parse_text
from attdarts.tools import interop

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[1] / "data" / "interop"
EXAMPLES = ROOT / "examples"  # the DARTS genotypes.py and authors' genotype.json README imports
ZOO = ROOT / "genotypes"

# The DARTS-family genotypes.py names of the zoo's genotypes.
ZOO_NAMES = {
    "NASNet": "nasnet_a",
    "AmoebaNet": "amoebanet_a",
    "DARTS_V1": "darts_v1",
    "DARTS_V2": "darts_v2",
    "PC_DARTS_cifar": "pc_darts",
    "PDARTS": "p_darts",
}

# The published tuples, typed in from the papers' genotypes.py files independently of the data files.
PUBLISHED = {
    "DARTS_V2": dict(
        normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
        reduce_concat=[2, 3, 4, 5]),
    "DARTS_V1": dict(
        normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
        reduce_concat=[2, 3, 4, 5]),
    "PC_DARTS_cifar": dict(
        normal=[("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
                ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
                ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
        reduce_concat=[2, 3, 4, 5]),
    "PDARTS": dict(
        normal=[("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
                ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)],
        reduce_concat=[2, 3, 4, 5]),
    "NASNet": dict(
        normal=[("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
                ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
                ("sep_conv_3x3", 1), ("skip_connect", 1)],
        normal_concat=[2, 3, 4, 5, 6],
        reduce=[("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
                ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
                ("sep_conv_3x3", 2), ("max_pool_3x3", 1)],
        reduce_concat=[4, 5, 6]),
    "AmoebaNet": dict(
        normal=[("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
                ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1),
                ("skip_connect", 0), ("avg_pool_3x3", 1)],
        normal_concat=[4, 5, 6],
        reduce=[("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
                ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
                ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)],
        reduce_concat=[3, 4, 6]),
}
ATT_DARTS = dict(
    normal=[("sep_conv_3x3", 0, "DoubleAttention"), ("sep_conv_3x3", 1, "CBAM"),
            ("sep_conv_3x3", 0, "CBAM"), ("skip_connect", 2, "CBAM"),
            ("skip_connect", 0, "CBAM"), ("sep_conv_3x3", 1, "CBAM"),
            ("skip_connect", 0, "CBAM"), ("skip_connect", 2, "CBAM")],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0, "BAM"), ("dil_conv_3x3", 1, "DoubleAttention"),
            ("avg_pool_3x3", 0, "BAM"), ("skip_connect", 2, "CBAM"),
            ("skip_connect", 2, "CBAM"), ("avg_pool_3x3", 0, "BAM"),
            ("skip_connect", 2, "CBAM"), ("avg_pool_3x3", 0, "BAM")],
    reduce_concat=[2, 3, 4, 5],
    normal_bottleneck="",
    reduce_bottleneck="",
)


def zoo(name: str):
    return parse_file(ZOO / f"{name}.geno").genotype()


def same_cells(first, second) -> bool:
    return first.normal == second.normal and first.reduce == second.reduce


def literal_fields(text: str) -> dict[str, dict[str, object]]:
    """NAME -> fields of every `NAME = Genotype(...)` in exported Python, read independently."""
    found = {}
    for statement in ast.parse(text).body:
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Call):
            call = statement.value
            if isinstance(call.func, ast.Name) and call.func.id == "Genotype":
                found[statement.targets[0].id] = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    return found


def with_product_bam(cell: Cell) -> Cell:
    """The zoo cell with every plain `bam` replaced by `bam(combine=product)`."""
    product = Call(name="bam", kwargs=(("combine", "product"),))

    def swap(call):
        return product if call is not None and call == Call(name="bam") else call

    nodes = tuple(Node(name=node.name, edges=tuple(
        Edge(operation=edge.operation, input=edge.input, attention=swap(edge.attention))
        for edge in node.edges)) for node in cell.nodes)
    return Cell(kind=cell.kind, nodes=nodes, output=cell.output.model_copy(
        update={"attention": swap(cell.output.attention)}))


# ---------------------------------------------------------------------------------------------
# DARTS genotypes.py


def test_genotypes_py_imports_every_published_genotype_as_in_the_zoo():
    document = interop.import_file(EXAMPLES / "genotypes.py")
    # file order; the alias DARTS = DARTS_V2 and the Genotype(...) inside a function are skipped
    assert [g.name for g in document.genotypes] == list(ZOO_NAMES)
    for genotype in document.genotypes:
        assert same_cells(genotype, zoo(ZOO_NAMES[genotype.name])), genotype.name
        assert genotype.meta_value("source") == f"imported from genotypes.py:{genotype.name}"


def test_published_tuples_survive_import_and_export():
    document = interop.import_file(EXAMPLES / "genotypes.py")
    for genotype in document.genotypes:
        assert interop.genotype_tuples(genotype, attention=False) == PUBLISHED[genotype.name]
    text = interop.export_genotypes(document.genotypes, "darts-py")
    exported = literal_fields(text)
    assert list(exported) == list(ZOO_NAMES)
    for name, fields in exported.items():
        assert fields == PUBLISHED[name], name
    again = interop.import_text(text, "exported.py")
    for before, after in zip(document.genotypes, again.genotypes):
        assert after.name == before.name and same_cells(after, before)


def test_zoo_files_export_to_the_published_tuples():
    for name, zoo_name in ZOO_NAMES.items():
        exported = literal_fields(interop.export_genotypes([zoo(zoo_name)], "darts-py"))
        assert exported == {zoo_name: PUBLISHED[name]}


@pytest.mark.parametrize("format", interop.EXPORT_FORMATS)
@pytest.mark.parametrize("path", sorted(ZOO.glob("*.geno")), ids=lambda p: p.stem)
def test_every_zoo_genotype_round_trips_through_every_format(path, format):
    genotype = parse_file(path).genotype()
    if any(len(node.edges) != 2 for node in genotype.normal.nodes + genotype.reduce.nodes):
        # a thresholded cell (FairDARTS-a: a node left out, nodes of one edge) is refused
        with pytest.raises(DslError, match="DARTS-style genotypes cannot hold it"):
            interop.export_genotypes([genotype], format, drop_attention=True)
        return
    text = interop.export_genotypes([genotype], format, drop_attention=True)
    suffix = ".json" if format.endswith("json") else ".py"
    again = interop.import_text(text, "exported" + suffix, name=genotype.name).genotype()
    attention = format != "darts-py"
    assert interop.genotype_tuples(again, attention=attention) == \
        interop.genotype_tuples(genotype, attention=attention, drop_attention=True)
    if attention:  # the same cells, but for BAM's combine, which the authors' format fixes
        assert again.normal == with_product_bam(genotype.normal)
        assert again.reduce == with_product_bam(genotype.reduce)


def test_a_name_picks_one_genotype_and_aliases_resolve():
    document = interop.import_file(EXAMPLES / "genotypes.py", name="DARTS")
    (genotype,) = document.genotypes
    assert genotype.name == "DARTS" and same_cells(genotype, zoo("darts_v2"))
    with pytest.raises(DslError) as error:
        interop.import_file(EXAMPLES / "genotypes.py", name="DARTS_V3")
    assert "no genotype named 'DARTS_V3'" in str(error.value)
    assert "did you mean" in str(error.value)


def test_positional_fields_follow_the_namedtuple_in_the_file():
    text = (
        "from collections import namedtuple\n"
        "G = namedtuple('G', ['reduce', 'reduce_concat', 'normal', 'normal_concat'])\n"
        "X = G([('max_pool_3x3', 0), ('max_pool_3x3', 1)], [2],\n"
        "      [('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], (2,))\n"
    )
    genotype = interop.import_text(text, "g.py").genotype("X")
    assert interop.genotype_tuples(genotype, attention=False) == {
        "normal": [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)], "normal_concat": [2],
        "reduce": [("max_pool_3x3", 0), ("max_pool_3x3", 1)], "reduce_concat": [2]}


# ---------------------------------------------------------------------------------------------
# The Att-DARTS authors' formats


@pytest.mark.parametrize("path, name", [
    (DATA / "att_darts_genotypes.py", "Att_DARTS"),
    (EXAMPLES / "genotype.json", None),
])
def test_att_darts_differs_from_the_zoo_exactly_in_bam_combine(path, name):
    """The authors' code multiplies BAM's gates; the zoo cell follows the paper (sum)."""
    genotype = interop.import_file(path, name=name).genotype(name)
    reference = zoo("att_darts")
    assert genotype.normal == reference.normal  # no BAM in the normal cell
    assert genotype.reduce != reference.reduce
    assert genotype.reduce == with_product_bam(reference.reduce)
    differences = [
        (ours.attention, theirs.attention)
        for our_node, their_node in zip(genotype.reduce.nodes, reference.reduce.nodes)
        for ours, theirs in zip(our_node.edges, their_node.edges) if ours != theirs
    ]
    assert differences and set(differences) == {
        (Call(name="bam", kwargs=(("combine", "product"),)), Call(name="bam"))}
    assert genotype.meta_value("note") == interop.BAM_NOTE
    assert interop.genotype_tuples(genotype) == ATT_DARTS
    assert interop.genotype_tuples(reference) == ATT_DARTS  # either combine exports as 'BAM'


def test_json_is_named_after_the_file_unless_named():
    assert interop.import_file(EXAMPLES / "genotype.json").genotypes[0].name == "imported_genotype"
    assert interop.import_file(EXAMPLES / "genotype.json", name="searched").genotypes[0].name == "searched"


def test_att_darts_py_without_attention_reads_as_plain_darts():
    genotype = interop.import_file(DATA / "att_darts_genotypes.py", name="DARTS_V2").genotype()
    assert same_cells(genotype, zoo("darts_v2"))
    assert genotype.meta_value("note") is None
    tuples = interop.genotype_tuples(genotype)
    assert tuples["normal"][0] == ("sep_conv_3x3", 0, "")  # '' when no edge of the cell has one


@pytest.mark.parametrize("format", ["att-darts-py", "att-darts-json"])
def test_att_darts_round_trip(format):
    original = interop.import_file(DATA / "att_darts_genotypes.py", name="Att_DARTS").genotype()
    text = interop.export_genotypes([original], format)
    again = interop.import_text(text, "exported.json" if format.endswith("json") else "exported.py",
                                name="Att_DARTS").genotype()
    assert same_cells(again, original)
    assert interop.genotype_tuples(again) == interop.genotype_tuples(original) == ATT_DARTS
    if format == "att-darts-json":
        assert json.loads(text) == json.loads(json.dumps(ATT_DARTS))
    else:
        assert literal_fields(text) == {"Att_DARTS": ATT_DARTS}


def test_attention_is_written_identity_beside_other_attentions():
    genotype = parse_text(
        "genotype g {\n normal {\n  n0 = sep_conv_3x3(c_k2) >> se + skip_connect(c_k1)\n"
        "  c_k = concat(n0) >> cbam\n }\n"
        " reduce {\n  n0 = max_pool_3x3(c_k2) + max_pool_3x3(c_k1)\n  c_k = concat(n0)\n }\n}\n"
    ).genotype()
    tuples = interop.genotype_tuples(genotype)
    assert tuples["normal"] == [("sep_conv_3x3", 0, "SE"), ("skip_connect", 1, "Identity")]
    assert tuples["normal_bottleneck"] == "CBAM"
    assert tuples["reduce"] == [("max_pool_3x3", 0, ""), ("max_pool_3x3", 1, "")]
    assert tuples["reduce_bottleneck"] == ""
    again = interop.import_text(interop.export_genotypes([genotype], "att-darts-py"), "g.py").genotype()
    assert same_cells(again, genotype)


# ---------------------------------------------------------------------------------------------
# pt.darts and NAS-Bench-201


def test_pt_darts_per_node_lists():
    genotype = interop.import_file(DATA / "pt_darts.txt").genotype()
    assert genotype.name == "pt_darts"
    assert same_cells(genotype, zoo("darts_v2"))


def test_nb201_string_maps_to_one_input_cell():
    genotype = interop.import_file(DATA / "nb201.txt").genotype()
    cell = genotype.normal
    assert [[(e.operation.name, e.input) for e in node.edges] for node in cell.nodes] == [
        [("skip_connect", "c_k1")],
        [("none", "c_k1"), ("avg_pool_3x3", "n0")],
        [("skip_connect", "c_k1"), ("none", "n0"), ("avg_pool_3x3", "n1")],
    ]
    assert cell.output.nodes == ("n2",)
    assert genotype.reduce.nodes == cell.nodes and genotype.reduce.output == cell.output
    assert genotype.meta_value("note") == interop.NB201_NOTE
    assert "c_k1" in interop.NB201_NOTE and "normal and reduce" in interop.NB201_NOTE


def test_nb201_convolutions_are_refused_by_name():
    with pytest.raises(DslError) as error:
        interop.import_file(DATA / "errors" / "nb201_unsupported.txt")
    messages = [problem.message for problem in error.value.problems]
    assert messages == [
        "NAS-Bench-201 operation 'nor_conv_3x3' has no attdarts equivalent",
        "NAS-Bench-201 operation 'nor_conv_3x3' has no attdarts equivalent",
        "NAS-Bench-201 operation 'nor_conv_1x1' has no attdarts equivalent",
    ]
    assert "ReLU-conv-BN" in error.value.problems[0].hint


# ---------------------------------------------------------------------------------------------
# Errors: every problem with file, line, column, caret and hint; never a traceback


ERROR_CASES = sorted(p for p in (DATA / "errors").iterdir() if p.suffix != ".expected")


@pytest.mark.parametrize("path", ERROR_CASES, ids=lambda p: p.name)
def test_error_messages_are_pinned(path):
    with pytest.raises(DslError) as error:
        interop.import_text(path.read_text(encoding="utf-8"), path.name)
    expected = path.with_suffix(".expected").read_text(encoding="utf-8")
    assert str(error.value) + "\n" == expected


def test_eval_bait_is_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "X = Genotype(normal=open('touched', 'w'), normal_concat=[2], reduce=[], reduce_concat=[2])\n" \
           "__import__('pathlib').Path('touched').write_text('')\n"
    with pytest.raises(DslError) as error:
        interop.import_text(text, "bait.py")
    assert "must be a literal list" in str(error.value)
    assert not (tmp_path / "touched").exists()


def test_non_utf8_file_is_located(tmp_path):
    path = tmp_path / "latin1.py"
    path.write_bytes(b"X = Genotype(normal=[('s\xe9p', 0)])\n")
    with pytest.raises(DslError) as error:
        interop.import_file(path)
    assert str(error.value).startswith(f"{path}:1:25: file is not UTF-8 text (byte 0xe9)")


def test_mutated_files_give_only_dsl_errors():
    """Fuzz: random edits of real files either import or raise DslError, nothing else.

    Half the edits are characters (they nearly always break a file), half swap one word or number
    for another plausible one (an operation, an attention, an index; these often still import),
    so that both outcomes are exercised, and counted.
    """
    generator = random.Random(0)
    sources = [path.read_text() for path in
               (EXAMPLES / "genotypes.py", DATA / "att_darts_genotypes.py", EXAMPLES / "genotype.json",
                DATA / "pt_darts.txt", DATA / "nb201.txt")]
    alphabet = "()[]{},:'\"|~+0123456789-_ \nabcSEBAMr"
    words = ["sep_conv_3x3", "max_pool_3x3", "skip_connect", "none", "dil_conv_5x5", "sep_conv_3x4",
             "CBAM", "BAM", "SE", "Identity", "cbam", "0", "1", "2", "3", "5", "9", "-1", "range"]
    imported = failed = 0
    for _ in range(150):
        text = generator.choice(sources)
        for _ in range(generator.randint(1, 2)):
            if generator.random() < 0.5:
                tokens = list(re.finditer(r"[A-Za-z_][A-Za-z0-9_]*|-?[0-9]+", text))
                token = generator.choice(tokens)
                text = text[:token.start()] + generator.choice(words) + text[token.end():]
                continue
            position = generator.randrange(len(text))
            action = generator.random()
            if action < 0.4:
                text = text[:position] + text[position + 1:]
            elif action < 0.8:
                text = text[:position] + generator.choice(alphabet) + text[position + 1:]
            else:
                text = text[:position] + generator.choice(alphabet) + text[position:]
        for format in ("auto", "python", "json", "nb201"):
            try:
                document = interop.import_text(text, "mutant", format=format)
            except DslError as error:
                message = error.render()
                assert message.startswith("mutant") and "Traceback" not in message
                failed += 1
            else:  # what imports prints as DSL that parses back to the same genotypes
                assert parse_text(format_document(document)) == document
                imported += 1
    # both outcomes must really happen, or the fuzz checks nothing (issue 11, item 23):
    # 150 mutants x 4 formats; a mutant fails in the formats it is not written in
    assert imported + failed == 600
    assert imported >= 40 and failed >= 300, (imported, failed)


# ---------------------------------------------------------------------------------------------
# Export refusals


def test_darts_py_refuses_attention_unless_dropped():
    genotype = zoo("att_darts")
    with pytest.raises(DslError) as error:
        interop.export_genotypes([genotype], "darts-py")
    assert "has 16 attentions, which DARTS's Genotype cannot hold" in str(error.value)
    assert "--drop-attention" in error.value.problems[0].hint
    fields = literal_fields(interop.export_genotypes([genotype], "darts-py", drop_attention=True))
    assert fields["att_darts"]["normal"] == [edge[:2] for edge in ATT_DARTS["normal"]]
    assert fields["att_darts"]["reduce"] == [edge[:2] for edge in ATT_DARTS["reduce"]]


def test_nodes_without_exactly_two_edges_are_refused():
    genotype = interop.import_file(DATA / "nb201.txt").genotype()
    for format in interop.EXPORT_FORMATS:
        with pytest.raises(DslError) as error:
            interop.export_genotypes([genotype], format)
        messages = [problem.message for problem in error.value.problems]
        assert "node 'n0' of the normal cell of 'nb201' has 1 edge; DARTS-style genotypes cannot hold it" \
            in messages
        assert "edges 2n and 2n+1 feed node n" in error.value.problems[0].hint


def test_attention_parameters_are_refused():
    genotype = parse_text(
        "genotype g {\n normal {\n  n0 = sep_conv_3x3(c_k2) >> se(reduction=8) + skip_connect(c_k1)\n"
        "  c_k = concat(n0)\n }\n"
        " reduce {\n  n0 = max_pool_3x3(c_k2) + max_pool_3x3(c_k1)\n  c_k = concat(n0)\n }\n}\n"
    ).genotype()
    with pytest.raises(DslError) as error:
        interop.export_genotypes([genotype], "att-darts-json")
    assert "attention 'se(reduction=8)' has parameters the authors' format cannot hold" in str(error.value)


def test_json_holds_one_genotype():
    document = interop.import_file(EXAMPLES / "genotypes.py")
    with pytest.raises(DslError, match="a genotype.json holds one genotype"):
        interop.export_genotypes(document.genotypes, "att-darts-json")


# ---------------------------------------------------------------------------------------------
# Command line


def run(*arguments: str):
    return CliRunner().invoke(cli, list(arguments))


def test_cli_import_prints_dsl_that_parses_back():
    result = run("import", str(EXAMPLES / "genotypes.py"))
    assert result.exit_code == 0, result.output
    document = parse_text(result.stdout)
    assert [g.name for g in document.genotypes] == list(ZOO_NAMES)


def test_cli_import_writes_a_file_and_splits(tmp_path):
    output = tmp_path / "att.geno"
    result = run("import", str(DATA / "att_darts_genotypes.py"), "--name", "Att_DARTS", "-o", str(output))
    assert result.exit_code == 0 and result.stdout == ""
    assert same_cells(parse_file(output).genotype(), interop.import_file(
        DATA / "att_darts_genotypes.py", name="Att_DARTS").genotype())
    result = run("import", str(EXAMPLES / "genotypes.py"), "--split", str(tmp_path / "split"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == sorted(f"{n}.geno" for n in ZOO_NAMES)
    assert same_cells(parse_file(tmp_path / "split" / "PDARTS.geno").genotype(), zoo("p_darts"))
    assert not list(tmp_path.glob("**/*.tmp"))


def test_cli_import_error_exits_1_with_message_on_stderr():
    result = run("import", str(DATA / "errors" / "unknown_operation.py"))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "unknown_operation.py:6:14: unknown operation 'sep_conv_3x4'" in result.stderr
    assert "hint: did you mean" in result.stderr
    assert "Traceback" not in result.output


def test_cli_split_directory_that_cannot_be_made_exits_1(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    split = blocker / "split"  # a file stands where a parent directory should be
    result = run("import", str(EXAMPLES / "genotypes.py"), "--split", str(split))
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"{split}: cannot create directory: ")  # then the OS's reason
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


@pytest.mark.parametrize("spelling", ["same path", "relative", "symbolic link", "hard link"])
@pytest.mark.parametrize("command", ["export", "import"])
def test_cli_output_naming_the_input_is_refused(command, spelling, tmp_path, monkeypatch):
    """`-o` naming the input file would replace what is being read (issue 19, 5.4)."""
    source = EXAMPLES / "genotypes.py" if command == "import" else ZOO / "darts_v2.geno"
    given = tmp_path / ("input.py" if command == "import" else "input.geno")
    given.write_bytes(source.read_bytes())
    monkeypatch.chdir(tmp_path)
    output = {"same path": given, "relative": Path("sub") / ".." / given.name,
              "symbolic link": tmp_path / "link", "hard link": tmp_path / "hard"}[spelling]
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(given)
    (tmp_path / "hard").hardlink_to(given)
    options = ["--format", "darts-py"] if command == "export" else []
    result = run(command, str(given), *options, "-o", str(output))
    assert result.exit_code == 1
    assert result.stderr == (f"{output}: the output is the input file '{given}'; writing it "
                             "would replace the input: choose another -o\n")
    assert given.read_bytes() == source.read_bytes()


def test_cli_split_naming_the_input_is_refused(tmp_path):
    given = tmp_path / "NB201.geno"  # what --split would write for a genotype named NB201
    given.write_text((DATA / "nb201.txt").read_text())
    result = run("import", str(given), "--from", "nb201", "--name", "NB201",
                 "--split", str(tmp_path))
    assert result.exit_code == 1 and "the output is the input file" in result.stderr
    assert given.read_text() == (DATA / "nb201.txt").read_text()


def test_cli_output_and_split_exclude_each_other(tmp_path):
    result = run("import", str(DATA / "nb201.txt"), "-o", str(tmp_path / "a.geno"), "--split", str(tmp_path))
    assert result.exit_code == 2 and "not both" in result.stderr


def test_cli_missing_file_exits_1():
    result = run("import", "no/such/genotypes.py")
    assert result.exit_code == 1
    assert "cannot read file" in result.stderr


def test_cli_export_formats(tmp_path):
    result = run("export", str(ZOO / "darts_v2.geno"), "--format", "darts-py")
    assert result.exit_code == 0, result.output
    assert literal_fields(result.stdout) == {"darts_v2": PUBLISHED["DARTS_V2"]}
    output = tmp_path / "genotype.json"
    result = run("export", str(ZOO / "att_darts.geno"), "--format", "att-darts-json", "-o", str(output))
    assert result.exit_code == 0, result.output
    assert json.loads(output.read_text()) == json.loads(json.dumps(ATT_DARTS))


@pytest.mark.parametrize("format", ["att-darts-py", "att-darts-json"])
def test_cli_export_warns_that_summed_bam_becomes_multiplied_in_every_format(format):
    """Issue 11, item 22: the JSON export turned bam (summed) into 'BAM' (multiplied) silently."""
    path = ZOO / "att_darts.geno"  # its reduce cell has bam with the default combine=sum
    result = run("export", str(path), "--format", format)
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"{path}: warning: genotype 'att_darts': {interop.SUM_BAM_WARNING}\n")
    assert "'BAM'" in result.stdout or '"BAM"' in result.stdout
    # a multiplied bam is what 'BAM' means: nothing to warn about
    product = interop.import_file(DATA / "att_darts_genotypes.py", name="Att_DARTS").genotype()
    assert interop.export_warnings([product], format) == []
    assert interop.export_warnings([zoo("att_darts")], "darts-py") == []  # no attention written


def test_cli_export_error_points_into_the_dsl_file():
    result = run("export", str(ZOO / "att_darts.geno"), "--format", "darts-py")
    assert result.exit_code == 1
    assert "att_darts.geno:9:36: genotype 'att_darts' has 16 attentions" in result.stderr
    assert "^^^^" in result.stderr and "Traceback" not in result.output
    result = run("export", str(ZOO / "att_darts.geno"), "--format", "darts-py", "--drop-attention")
    assert result.exit_code == 0
    result = run("export", str(ZOO / "att_darts.geno"), "--format", "darts-py", "--genotype", "nope")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == f"{ZOO / 'att_darts.geno'}: no genotype named 'nope' in the file (it has 'att_darts')\n"


def test_front_end_does_not_import_torch(tmp_path):
    script = f"""
import sys
from click.testing import CliRunner
from attdarts.cli import cli
runner = CliRunner()
assert runner.invoke(cli, ["import", {str(EXAMPLES / "genotypes.py")!r}, "-o", {str(tmp_path / "z.geno")!r}]).exit_code == 0
assert runner.invoke(cli, ["export", {str(tmp_path / "z.geno")!r}, "--format", "att-darts-py"]).exit_code == 0
assert runner.invoke(cli, ["import", {str(DATA / "nb201.txt")!r}]).exit_code == 0
assert "torch" not in sys.modules, "torch was imported"
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert completed.returncode == 0, completed.stderr
