"""How decided a search is (attdarts.tools.decisiveness): margins, entropies and counts against
hand computations, and the per-epoch record of a tiny search run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from attdarts.language.transform import parse_text
from attdarts.language import decisiveness as dec
from attdarts.tools import search_runs

SPACE = """\
space tiny {
    operations = [none, max_pool_3x3, skip_connect, sep_conv_3x3]
    attentions = [identity, se]
    nodes = 2
    keep = 2
    location = after_every
    mixing = sum
}
"""

# edges in DARTS order: n0<-c_k2, n0<-c_k1, n1<-c_k2, n1<-c_k1, n1<-n0
# columns: none, max_pool_3x3, skip_connect, sep_conv_3x3
ALPHA = [
    [0.1, 0.2, 0.3, 0.4],     # keeps sep_conv_3x3 (0.4); runner-up skip_connect (0.3)
    [0.5, 0.1, 0.15, 0.25],   # `none` is never kept: sep_conv_3x3 (0.25) over skip (0.15)
    [0.1, 0.6, 0.2, 0.1],     # max_pool_3x3 (0.6) over skip (0.2); ranks 0.6
    [0.7, 0.1, 0.1, 0.1],     # ranks 0.1: node n1 drops this edge
    [0.1, 0.2, 0.45, 0.25],   # skip_connect (0.45) over sep_conv (0.25); ranks 0.45
]
BETA = [[0.55, 0.45], [0.3, 0.7], [0.5, 0.5], [0.9, 0.1], [0.48, 0.52]]
GENOTYPE = """\
genotype hand {
    normal {
        n0 = sep_conv_3x3(c_k2) + sep_conv_3x3(c_k1) >> se
        n1 = max_pool_3x3(c_k2) + skip_connect(n0) >> se
        c_k = concat(n0, n1)
    }
    reduce {
        n0 = sep_conv_3x3(c_k2) + sep_conv_3x3(c_k1) >> se
        n1 = max_pool_3x3(c_k2) + skip_connect(n0) >> se
        c_k = concat(n0, n1)
    }
}
"""


def space_of(text: str = SPACE):
    return parse_text(text).space()


def genotype_of(text: str = GENOTYPE):
    return parse_text(text).genotype()


def hand_entropy(row: list[float]) -> float:
    return -sum(p * math.log(p) for p in row) / math.log(len(row))


def test_margins_entropies_and_counts_match_a_hand_computation():
    weights = {kind: {"alpha": ALPHA, "beta": BETA} for kind in ("normal", "reduce")}
    result = dec.decide(space_of(), genotype_of(), weights)
    normal = [edge for edge in result.edges if edge.cell == "normal"]
    assert [edge.edge for edge in normal] == ["n0<-c_k2", "n0<-c_k1", "n1<-c_k2", "n1<-n0"]
    by_edge = {edge.edge: edge for edge in normal}

    first = by_edge["n0<-c_k2"]
    assert (first.operation.kept, first.operation.runner_up) == ("sep_conv_3x3", "skip_connect")
    assert first.operation.margin == pytest.approx(0.4 - 0.3)
    assert (first.attention.kept, first.attention.runner_up) == ("identity", "se")
    assert first.attention.margin == pytest.approx(0.55 - 0.45)
    assert first.input_margin is None  # node n0 keeps both of its edges
    assert first.margin == pytest.approx(0.1)
    assert first.operation.entropy == pytest.approx(hand_entropy([0.1, 0.2, 0.3, 0.4]))
    assert first.attention.entropy == pytest.approx(hand_entropy([0.55, 0.45]))

    second = by_edge["n0<-c_k1"]  # `none` has the largest weight but is not eligible
    assert second.operation.margin == pytest.approx(0.25 - 0.15)
    assert second.attention.margin == pytest.approx(0.7 - 0.3)
    assert second.operation.entropy == pytest.approx(hand_entropy([0.5, 0.1, 0.15, 0.25]))

    pool = by_edge["n1<-c_k2"]
    assert pool.operation.margin == pytest.approx(0.6 - 0.2)
    assert pool.attention.margin == pytest.approx(0.0)  # a tie goes to identity, undecided
    assert pool.input_margin == pytest.approx(0.6 - 0.1)  # over the dropped n1<-c_k1
    assert pool.margin == pytest.approx(0.0)

    skip = by_edge["n1<-n0"]
    assert skip.operation.margin == pytest.approx(0.45 - 0.25)
    assert skip.attention.margin == pytest.approx(0.52 - 0.48)
    assert skip.input_margin == pytest.approx(0.45 - 0.1)
    assert skip.margin == pytest.approx(0.04)

    # decided (margin >= 0.05): the two edges of n0, in both cells
    assert result.decided == 4 and len(result.edges) == 8
    assert result.summary().startswith("4 of 8 edges decided by at least 0.05 (smallest margin")
    assert result.skip_connect == 1  # n1<-n0 of the normal cell
    assert result.identity == 2  # n0<-c_k2 and n1<-c_k2 have no attention
    assert result.weakest.edge == "n1<-c_k2" and result.weakest.cell == "normal"
    operations = [hand_entropy(ALPHA[i]) for i in (0, 1, 2, 4)]
    attentions = [hand_entropy(BETA[i]) for i in (0, 1, 2, 4)]
    assert result.operation_entropy == pytest.approx(sum(operations) / 4)
    assert result.attention_entropy == pytest.approx(sum(attentions) / 4)


def test_a_genotype_that_does_not_keep_the_strongest_gets_a_negative_margin():
    """A cap (max_skip_connect) or another derivation can keep a weaker candidate: the margin
    says by how much the weights disagree."""
    capped = GENOTYPE.replace("skip_connect(n0) >> se\n        c_k = concat(n0, n1)\n    }\n"
                              "    reduce", "sep_conv_3x3(n0) >> se\n        c_k = concat(n0, n1)"
                              "\n    }\n    reduce", 1)
    weights = {kind: {"alpha": ALPHA, "beta": BETA} for kind in ("normal", "reduce")}
    result = dec.decide(space_of(), genotype_of(capped), weights)
    edge = next(e for e in result.edges if e.cell == "normal" and e.edge == "n1<-n0")
    assert edge.operation.kept == "sep_conv_3x3" and edge.operation.runner_up == "skip_connect"
    assert edge.operation.margin == pytest.approx(0.25 - 0.45)
    assert result.skip_connect == 0


def test_entropy_is_one_for_uniform_and_zero_for_one_hot():
    assert dec.entropy([0.25] * 4) == pytest.approx(1.0)
    assert dec.entropy([1.0, 0.0, 0.0]) == 0.0
    assert dec.entropy([0.7]) == 0.0


def test_mixed_location_lets_operations_and_attentions_compete():
    """mixed_with_operation: one softmax over operations and attentions; an attention winner is
    derived as skip_connect(x) >> attention, and `none` stays out."""
    space = space_of(SPACE.replace("after_every", "mixed_with_operation"))
    # columns: none, max_pool, skip, sep_conv, identity, se
    rows = [[0.3, 0.05, 0.1, 0.2, 0.1, 0.25],   # se (0.25) over sep_conv (0.2)
            [0.1, 0.1, 0.1, 0.4, 0.2, 0.1],     # sep_conv (0.4) over identity (0.2)
            [0.1, 0.5, 0.1, 0.1, 0.1, 0.1],     # max_pool (0.5): ranks 0.5
            [0.1, 0.1, 0.1, 0.1, 0.35, 0.25],   # identity (0.35): ranks 0.35
            [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]]     # ranks 0.1: dropped
    genotype = genotype_of("""\
genotype mixed {
    normal {
        n0 = skip_connect(c_k2) >> se + sep_conv_3x3(c_k1)
        n1 = max_pool_3x3(c_k2) + skip_connect(c_k1)
        c_k = concat(n0, n1)
    }
    reduce {
        n0 = skip_connect(c_k2) >> se + sep_conv_3x3(c_k1)
        n1 = max_pool_3x3(c_k2) + skip_connect(c_k1)
        c_k = concat(n0, n1)
    }
}
""")
    result = dec.decide(space, genotype, {kind: {"alpha": rows} for kind in ("normal", "reduce")})
    edges = {edge.edge: edge for edge in result.edges if edge.cell == "normal"}
    assert edges["n0<-c_k2"].operation.kept == "se"
    assert edges["n0<-c_k2"].operation.margin == pytest.approx(0.25 - 0.2)
    assert edges["n0<-c_k2"].attention is None  # no second mixture
    assert edges["n0<-c_k1"].operation.runner_up == "identity"
    assert edges["n0<-c_k1"].operation.margin == pytest.approx(0.4 - 0.2)
    # skip_connect(c_k1) without attention: the identity column won (an identity attention)
    assert edges["n1<-c_k1"].operation.kept == "identity"
    assert edges["n1<-c_k1"].operation.margin == pytest.approx(0.35 - 0.25)
    assert edges["n1<-c_k1"].input_margin == pytest.approx(0.35 - 0.1)
    assert edges["n1<-c_k2"].input_margin == pytest.approx(0.5 - 0.1)


def test_output_attention_and_edge_normalisation():
    """Location `end`: gamma's margin is reported beside the edges; edge normalisation scales
    the ranking weights (PC-DARTS), so the input margins use operation weight x edge weight."""
    space = space_of(SPACE.replace("location = after_every",
                                   "location = end\n    edge_normalisation = true"))
    edges = [[0.6, 0.4, 0.5, 0.2, 0.3]]  # per node: n0 (2 edges), n1 (3 edges)
    gamma = [[0.3, 0.7]]
    weights = {kind: {"alpha": ALPHA, "gamma": gamma, "edges": edges}
               for kind in ("normal", "reduce")}
    genotype = genotype_of(GENOTYPE.replace(" >> se", "").replace(
        "c_k = concat(n0, n1)", "c_k = concat(n0, n1) >> se"))
    result = dec.decide(space, genotype, weights)
    assert result.outputs["normal"].kept == "se"
    assert result.outputs["normal"].margin == pytest.approx(0.7 - 0.3)
    assert result.identity is None  # no attention per edge at this location
    pool = next(e for e in result.edges if e.cell == "normal" and e.edge == "n1<-c_k2")
    # rankings: n1<-c_k2 0.6 * 0.5, n1<-c_k1 0.1 * 0.2 (dropped), n1<-n0 0.45 * 0.3
    assert pool.input_margin == pytest.approx(0.6 * 0.5 - 0.1 * 0.2)
    assert pool.attention is None
    record = dec.metrics_record(result, 3)
    assert record["margins"]["normal"]["c_k"]["attention"] == pytest.approx(0.4)
    assert "normal_identity" not in record and "attention_entropy" not in record


def test_weights_that_do_not_fit_the_space_are_refused_in_one_line():
    weights = {kind: {"alpha": ALPHA[:4], "beta": BETA} for kind in ("normal", "reduce")}
    with pytest.raises(dec.DecisivenessError, match="4 rows of alpha, the space has 5 edges"):
        dec.decide(space_of(), genotype_of(), weights)
    other = GENOTYPE.replace("max_pool_3x3(c_k2)", "avg_pool_3x3(c_k2)", 1)
    weights = {kind: {"alpha": ALPHA, "beta": BETA} for kind in ("normal", "reduce")}
    with pytest.raises(dec.DecisivenessError, match="'avg_pool_3x3', which the space does not"):
        dec.decide(space_of(), genotype_of(other), weights)


def test_last_change_and_the_metrics_record():
    a = genotype_of()
    b = genotype_of(GENOTYPE.replace("max_pool_3x3(c_k2)", "sep_conv_3x3(c_k2)", 1))
    renamed = a.model_copy(update={"name": "other"})  # name and meta do not count
    assert dec.last_change([a]) == 1
    assert dec.last_change([a, renamed, b, b]) == 3
    assert dec.last_change([a, b, a, a]) == 3
    assert dec.last_change([]) is None

    weights = {kind: {"alpha": ALPHA, "beta": BETA} for kind in ("normal", "reduce")}
    result = dec.decide(space_of(), a, weights)
    record = dec.metrics_record(result, 3)
    assert record["decided_edges"] == 4 and record["derived_edges"] == 8
    assert record["decided_by"] == 0.05 and record["min_margin"] == pytest.approx(0.0, abs=1e-12)
    assert record["normal_skip_connect"] == 1 and record["normal_identity"] == 2
    assert record["genotype_changed_epoch"] == 3
    edge = record["margins"]["normal"]["n1<-n0"]
    assert edge["operation"] == pytest.approx(0.2) and edge["attention"] == pytest.approx(0.04)
    assert edge["input"] == pytest.approx(0.35)
    assert record["margins"]["normal"]["n0<-c_k2"]["input"] is None
    json.dumps(record)  # a metrics.jsonl line
    scalars = dict(dec.margin_scalars(record))
    assert scalars["margin/normal/n1<-n0"] == pytest.approx(0.04)
    assert len(scalars) == 8
    line = dec.log_line(result, 3)
    assert line.startswith("4 of 8 edges decided by at least 0.05")
    assert "normal cell: 1 skip_connect, 2 without attention" in line
    assert line.endswith("genotype last changed at epoch 3")


def test_the_module_is_torch_free():
    code = ("import sys; import attdarts.language.decisiveness; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def test_derivation_keeps_what_the_margins_call_kept():
    """derive_genotype on log(weights) keeps the candidates whose margins are positive here:
    decisiveness reads the weights as derivation does (float64)."""
    import torch

    from attdarts.networks.derive import derive_genotype

    tensors = {kind: {"alpha": torch.tensor(ALPHA, dtype=torch.float64).log(),
                      "beta": torch.tensor(BETA, dtype=torch.float64).log()}
               for kind in ("normal", "reduce")}
    derived = derive_genotype(tensors, space_of())
    assert derived.normal == genotype_of().normal and derived.reduce == genotype_of().reduce


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_search_records_the_decisiveness_of_every_epoch(tmp_path, caplog):
    """Each epoch's metrics.jsonl record equals the recomputation from the run's files, and one
    edge's margin equals the subtraction of its two weights in weights.jsonl."""
    import logging

    from attdarts.runs import data
    from attdarts.runs.search import SearchConfig, run_search

    space_file = tmp_path / "tiny.geno"
    space_file.write_text(SPACE)
    config = SearchConfig(space_file=str(space_file), dataset="synthetic", epochs=2,
                          batch_size=4, channels=4, layers=3, max_steps_per_epoch=1,
                          arch_lr=0.3, deterministic=True)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="attdarts.runs.search.loop"):
        run_search(config, run, device="cpu",
                   dataset=data.synthetic_dataset(train=True, size=16, resolution=8))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    recomputed = search_runs.run_decisiveness(run)
    assert [epoch.epoch for epoch in recomputed] == [1, 2]
    for record, epoch in zip(metrics, recomputed):
        expected = dec.metrics_record(epoch.decisiveness, epoch.changed_epoch)
        assert {key: record[key] for key in expected} == expected
    weights = [json.loads(line) for line in (run / "weights.jsonl").read_text().splitlines()]
    genotype = parse_text((run / "genotype-epoch002.geno").read_text()).genotype()
    edge = genotype.normal.nodes[0].edges[0]  # n0 <- c_k2
    row = weights[1]["normal"]["alpha"][0]
    kept = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"].index(edge.operation.name)
    runner_up = max(row[i] for i in (1, 2, 3) if i != kept)
    margin = metrics[1]["margins"]["normal"]["n0<-c_k2"]["operation"]
    assert margin == pytest.approx(row[kept] - runner_up, rel=1e-5)
    assert metrics[1]["normal_skip_connect"] == sum(
        e.operation.name == "skip_connect" for node in genotype.normal.nodes for e in node.edges)
    lines = [r.getMessage() for r in caplog.records if "edges decided by at least" in r.getMessage()]
    assert len(lines) == 2 and lines[1].startswith("seed 2 epoch 2/2: ")
    assert f"{metrics[1]['decided_edges']} of 8 edges decided by at least 0.05" in lines[1]


@pytest.mark.parametrize("location", ["after_every", "end", "after_every_and_end",
                                      "mixed_with_operation", "double_mixed", "no_attention"])
@pytest.mark.parametrize("edge_normalisation", [False, True])
def test_derived_genotypes_keep_positive_margins_at_every_location(location, edge_normalisation):
    """Derivation keeps the strongest eligible candidate and the strongest edges, so every
    margin of a genotype derived from the same weights is >= 0, at every location."""
    import torch

    from attdarts.networks.derive import derivation_weights, derive_genotype
    from attdarts.networks.supernet import column_names

    text = SPACE.replace("after_every", location)
    if edge_normalisation:
        text = text.replace("mixing = sum", "mixing = sum\n    edge_normalisation = true")
    space = space_of(text)
    generator = torch.Generator().manual_seed(1)
    columns = column_names(space)
    tensors = {kind: {name: torch.randn(len(names) if name == "edges" else
                                        (1 if name == "gamma" else 5, len(names)),
                                        generator=generator, dtype=torch.float64)
                      for name, names in columns.items()} for kind in ("normal", "reduce")}
    genotype = derive_genotype(tensors, space)
    weights = {kind: {name: tensor.reshape(-1, tensor.shape[-1]).tolist()
                      for name, tensor in kinds.items()}
               for kind, kinds in derivation_weights(tensors, space).items()}
    result = dec.decide(space, genotype, weights)
    assert len(result.edges) == 8
    for edge in result.edges:
        assert edge.operation.margin >= 0, edge
        assert edge.attention is None or edge.attention.margin >= 0, edge
        assert edge.input_margin is None or edge.input_margin >= 0, edge
    for output in result.outputs.values():
        assert output.margin >= 0
    assert bool(result.outputs) == (location in ("end", "after_every_and_end"))
