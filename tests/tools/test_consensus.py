"""`attdarts consensus`: the genotype most seeds agree on, against a hand count of votes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import HAND_CELLS, write_search_run

from attdarts.cli import cli
from attdarts.language.transform import parse_file, parse_text
from attdarts.tools import consensus as cons
from attdarts.tools.report import aggregate, format_markdown, read_runs

REDUCE = HAND_CELLS[HAND_CELLS.index("    reduce"):]
# three seeds' normal cells (reduce: HAND_CELLS's, the same for all)
NORMALS = [
    """\
    normal {
        n0 = sep_conv_3x3(c_k2) + sep_conv_3x3(c_k1) >> se
        n1 = max_pool_3x3(c_k2) + skip_connect(n0) >> se
        c_k = concat(n0, n1)
    }
""", """\
    normal {
        n0 = sep_conv_3x3(c_k2) >> se + skip_connect(c_k1) >> se
        n1 = max_pool_3x3(c_k2) >> se + sep_conv_3x3(c_k1)
        c_k = concat(n0, n1)
    }
""", """\
    normal {
        n0 = max_pool_3x3(c_k2) + sep_conv_3x3(c_k1)
        n1 = skip_connect(c_k1) + skip_connect(n0)
        c_k = concat(n0, n1)
    }
"""]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """OUT/seed-0 .. seed-2, each with the hand weights of tests/helpers.py (HAND_ALPHA ranks
    n1's edges c_k2 0.6, c_k1 0.1, n0 0.45; HAND_BETA: n1<-c_k2 [0.5, 0.5], n1<-n0 [0.48,
    0.52])."""
    for seed, normal in enumerate(NORMALS):
        write_search_run(tmp_path / "out" / f"seed-{seed}", [normal + REDUCE], seed=seed)
    return tmp_path / "out"


def test_votes_and_ties_match_a_hand_count(runs: Path):
    """n0: c_k2 and c_k1 3/3; on c_k2 sep_conv_3x3 2/3 (seeds 0, 1), no attention 2/3 (0, 2),
    whole edge 1/3 (seed 0); on c_k1 sep_conv_3x3 2/3 (0, 2), se 2/3 (0, 1), whole 1/3.
    n1: c_k2, c_k1 and n0 2/3 each, a tie: summed ranking weights 3 x 0.6, 3 x 0.1, 3 x 0.45
    keep c_k2 and n0. On c_k2 max_pool_3x3 2/3; attention identity 1/3 vs se 1/3 and beta
    [0.5, 0.5] ties again: the space's order keeps identity. On n0 skip_connect 2/3; attention
    se 1/3 vs none 1/3: summed beta 3 x 0.52 > 3 x 0.48 keeps se."""
    members = cons.read_members([runs / f"seed-{seed}" for seed in range(3)])
    assert [member.seed for member in members] == [0, 1, 2]
    result = cons.combine(members)
    normal = result.genotype.normal
    expected = parse_text("genotype e {\n" + NORMALS[0] + REDUCE + "}\n").genotype()
    assert normal == expected.normal
    assert result.genotype.reduce == expected.reduce
    votes = [(e.node, e.edge.input, e.input_votes, e.operation_votes, e.attention_votes,
              e.edge_votes) for e in result.edges if e.cell == "normal"]
    assert votes == [("n0", "c_k2", 3, 2, 2, 1), ("n0", "c_k1", 3, 2, 2, 1),
                     ("n1", "c_k2", 2, 2, 1, 1), ("n1", "n0", 2, 2, 1, 1)]
    assert all(e.edge_votes == 3 for e in result.edges if e.cell == "reduce")
    assert result.agreement == pytest.approx((4 * 1 / 3 + 4 * 1) / 8)
    assert result.outputs == {"normal": (3, 3), "reduce": (3, 3)}
    meta = {entry.key: entry.value for entry in result.genotype.meta}
    assert meta["space"] == "tiny" and meta["seeds"] == "0, 1, 2"
    assert meta["agreement"].startswith("0.67 ")
    assert result.genotype.name == "tiny_consensus"


def test_without_weights_ties_go_to_the_input_order(runs: Path, tmp_path: Path):
    """The same genotypes as .geno files (no weights, no space): n1's three-way tie keeps c_k2
    and c_k1 (input order), and c_k1's operation tie (sep_conv_3x3, skip_connect) goes to the
    first seed's."""
    files = [runs / f"seed-{seed}" / "genotype.geno" for seed in range(3)]
    result = cons.combine(cons.read_members(files))
    n1 = result.genotype.normal.nodes[1]
    assert [(edge.input, edge.operation.name, edge.attention) for edge in n1.edges] == [
        ("c_k2", "max_pool_3x3", None), ("c_k1", "sep_conv_3x3", None)]
    assert "seeds" not in {entry.key for entry in result.genotype.meta}


def test_the_written_file_is_a_valid_genotype_with_agreement_comments(runs: Path, tmp_path: Path):
    target = tmp_path / "consensus.geno"
    result = CliRunner().invoke(cli, ["consensus", *[str(runs / f"seed-{s}") for s in range(3)],
                                      "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert "3 genotypes, mean whole-edge agreement 0.67" in result.output
    text = target.read_text()
    assert "        # n1 <- n0: input 2/3, skip_connect 2/3, se 1/3, whole edge 1/3\n" in text
    assert "        # n0 <- c_k2: input 3/3, sep_conv_3x3 2/3, identity 2/3, whole edge 1/3\n" in text
    genotype = parse_file(target).genotype()
    assert genotype.normal.nodes[1].edges[1].attention.name == "se"
    check = CliRunner().invoke(cli, ["check", str(target)])
    assert check.exit_code == 0, check.output
    # a folder of runs stands for the runs under it; --json gives the votes
    result = CliRunner().invoke(cli, ["consensus", str(runs), "--json"])
    data = json.loads(result.output)
    assert data["seeds"] == 3 and data["agreement"] == pytest.approx(2 / 3)
    assert data["edges"][3] == {"cell": "normal", "node": "n1", "input": "n0",
                                "operation": "skip_connect", "attention": "se", "seeds": 3,
                                "input_votes": 2, "operation_votes": 2, "attention_votes": 1,
                                "edge_votes": 1}


def test_report_shows_the_consensus_of_a_group_of_seeds(runs: Path):
    summary = aggregate(read_runs([runs]))
    entry = summary["searches"][0]["consensus"]
    assert entry["seeds"] == 3 and entry["agreement"] == pytest.approx(2 / 3)
    assert entry["cells"]["normal"].startswith("n0 = sep_conv_3x3(c_k2) + sep_conv_3x3(c_k1) >> se")
    text = format_markdown(summary)
    assert "Consensus of the 3 seeds (`attdarts consensus`), mean whole-edge agreement 0.67:" in text
    assert "| normal | n1 | n0 2/3 | `skip_connect` 2/3 | `se` 1/3 | 1/3 |" in text
    single = aggregate(read_runs([runs / "seed-0"]))
    assert single["searches"][0]["consensus"] is None


def test_genotypes_that_cannot_be_combined_are_refused_in_one_line(runs: Path, tmp_path: Path):
    zoo = Path(__file__).resolve().parents[2] / "genotypes" / "darts_v1.geno"
    result = CliRunner().invoke(cli, ["consensus", str(runs / "seed-0"), str(zoo)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("attdarts consensus: the normal cells have "
                                            "different numbers of nodes")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["consensus", str(empty)])
    assert result.exit_code == 2 and "not a search run directory" in result.output


def test_mixed_location_votes_operation_and_attention_together(tmp_path: Path):
    """At mixed_with_operation one softmax chose `skip_connect(x) >> se` as a whole: the pair
    wins or loses together, so no seed's operation is joined to another seed's attention."""
    space = parse_text("""\
space mixed {
    operations = [none, max_pool_3x3, skip_connect, sep_conv_3x3]
    attentions = [identity, se]
    nodes = 1
    keep = 1
    location = mixed_with_operation
    mixing = sum
}
""").space()
    cells = ["skip_connect(c_k2) >> se", "sep_conv_3x3(c_k2)", "skip_connect(c_k2) >> se",
             "sep_conv_3x3(c_k2)", "max_pool_3x3(c_k2)"]

    def genotype(edge: str):
        cell = f"n0 = {edge}\n        c_k = concat(n0)"
        return parse_text(f"genotype g {{\n normal {{\n {cell}\n }}\n reduce {{\n {cell}\n }}\n}}\n"
                          ).genotype()

    members = [cons.Member(str(i), genotype(edge), space, None) for i, edge in enumerate(cells)]
    result = cons.combine(members)
    edge = result.genotype.normal.nodes[0].edges[0]
    # pairs: (skip_connect, se) 2, (sep_conv_3x3, none) 2, (max_pool, none) 1: a tie between the
    # first two, no weights: the space's order of their attention (identity before se)
    assert (edge.operation.name, edge.attention) == ("sep_conv_3x3", None)
    assert result.edges[0].edge_votes == 2


def test_the_module_is_torch_free():
    import subprocess

    code = ("import sys; import attdarts.tools.consensus; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
