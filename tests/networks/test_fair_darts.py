"""FairDARTS (Chu et al., ECCV 2020): sigmoid weights, the zero-one loss and derivation by a
threshold, in float64 against FairDARTS's own computation written out (their `ConvSeparateLoss`
and `parse(..., 'threshold_sparse')`), on operations and, new here, on attentions; genotypes with
fewer edges and nodes check, compile and build.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attdarts.language import decisiveness, ir
from attdarts.language.errors import DslError
from attdarts.language.printer import format_genotype
from attdarts.language.transform import parse_text
from attdarts.networks.derive import derive_genotype
from attdarts.networks.methods import CellWeights
from attdarts.networks.network import compile_network
from attdarts.networks.supernet import compile_supernet
from attdarts.runs import data
from attdarts.runs.search import Bilevel, SearchConfig, run_search

pytestmark = pytest.mark.usefixtures("one_thread")

OPERATIONS = ["max_pool_3x3", "skip_connect", "sep_conv_3x3"]
ATTENTIONS = ["identity", "se", "cbam"]


def space(location: str = "no_attention", methods: str = "fair_darts", nodes: int = 4,
          operations: list[str] = OPERATIONS) -> ir.Space:
    attentions = "" if location == "no_attention" else ", ".join(
        a for a in ATTENTIONS if a != "identity" or location in ("after_every", "end"))
    return parse_text(f"space s {{ operations = [{', '.join(operations)}] attentions = "
                      f"[{attentions}] nodes = {nodes} keep = 2 location = {location} "
                      f"mixing = sum methods = [{methods}] }}").space()


def supernet(location: str = "no_attention", methods: str = "fair_darts"):
    torch.manual_seed(0)
    return compile_supernet(space(location, methods, nodes=2), channels=4, layers=3,
                            input_size=8, init="randn").double()


def edges_of(cell: ir.Cell) -> set[tuple[str, int, int]]:
    """(operation, to, from) in FairDARTS's numbering: 0 = c_k2, 1 = c_k1, node j = j + 2."""
    return {(edge.operation.name, _index(node.name), _index(edge.input))
            for node in cell.nodes for edge in node.edges}


def _index(name: str) -> int:
    return ir.INPUTS.index(name) if name in ir.INPUTS else 2 + int(name[1:])


# ---------------------------------------------------------------------------------------------
# Weights and the zero-one loss


def test_weights_are_independent_sigmoids_and_masks_weigh_zero():
    model = supernet("after_every")
    for cell, weights in zip(ir.CELL_KINDS, model.mixture_weights()):
        torch.testing.assert_close(weights.alpha, torch.sigmoid(model.arch.tensor("alpha", cell)))
        torch.testing.assert_close(weights.beta, torch.sigmoid(model.arch.tensor("beta", cell)))
    raw = torch.tensor([[0.3, float("-inf"), -1.0]], dtype=torch.float64)
    assert model.methods.normalise("alpha", raw, "normal", None).tolist()[0][1] == 0.0


def test_zero_one_loss_is_fair_darts_with_its_gradient():
    """Operations only: 10 * -F.mse_loss(sigmoid(cat(alpha_normal, alpha_reduce)), 0.5), as
    their ConvSeparateLoss; its gradient per entry is -10 * 2 (s - 1/2) s (1 - s) / N."""
    model = supernet()
    arch = {name: value.detach().clone().mul(400).requires_grad_()  # spread the sigmoids
            for name, value in model.named_architecture()}
    term = model.methods.architecture_loss(arch, model.mixture_weights(arch))
    sigmoids = torch.sigmoid(torch.cat([arch["arch.alpha_normal"], arch["arch.alpha_reduce"]]))
    torch.testing.assert_close(term, 10 * -F.mse_loss(sigmoids, torch.full_like(sigmoids, 0.5)))
    gradients = torch.autograd.grad(term, list(arch.values()))
    count = sigmoids.numel()
    for (name, value), gradient in zip(arch.items(), gradients):
        s = torch.sigmoid(value)
        torch.testing.assert_close(gradient, -10 * 2 * (s - 0.5) * s * (1 - s) / count,
                                   rtol=1e-13, atol=1e-16, msg=name)


def test_zero_one_loss_has_one_mean_per_kind():
    model = supernet("after_every_and_end", "fair_darts(zero_one=2.5)")
    arch = dict(model.named_architecture())
    expected = 0
    for kind in ("alpha", "beta", "gamma"):
        entries = torch.cat([torch.sigmoid(arch[f"arch.{kind}_{cell}"]).flatten()
                             for cell in ir.CELL_KINDS])
        expected = expected - 2.5 * ((entries - 0.5) ** 2).mean()
    torch.testing.assert_close(model.methods.architecture_loss(arch, model.mixture_weights()),
                               expected, rtol=1e-13, atol=1e-18)
    stacked = {name: torch.stack([value, -value]) for name, value in arch.items()}  # seeds
    torch.testing.assert_close(model.methods.architecture_loss(stacked, ()),
                               torch.stack([expected, expected]), rtol=1e-13, atol=1e-18)


def test_the_architecture_step_is_fair_darts_first_order_step():
    """One first-order architecture step of `Bilevel` against FairDARTS's architect: weights
    sigmoid(alpha), loss CE + 10 * -mse(sigmoid(cat(alpha_normal, alpha_reduce)), 0.5)."""
    model = supernet()
    config = SearchConfig(space_file="unused.geno", dataset="synthetic", batch_size=4, channels=4,
                          layers=3, deterministic=True)
    bilevel = Bilevel(model, config)
    images = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator()
                         .manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3])
    normal, reduce = (model.arch.tensor("alpha", cell).detach().clone().requires_grad_()
                      for cell in ir.CELL_KINDS)
    logits = model(images, (CellWeights(alpha=torch.sigmoid(normal)),
                            CellWeights(alpha=torch.sigmoid(reduce))))
    sigmoids = torch.sigmoid(torch.cat([normal, reduce]))
    separate = -F.mse_loss(sigmoids, torch.full_like(sigmoids, 0.5))
    expected = torch.autograd.grad(F.cross_entropy(logits, labels) + 10 * separate,
                                   [normal, reduce])
    captured = []
    step = bilevel.arch_optimizer.step

    def record():
        captured.extend(p.grad.clone() for p in bilevel.arch_params)
        step()
    bilevel.arch_optimizer.step = record
    bilevel.architecture_step_first_order((images, labels))
    for gradient, reference in zip(captured, expected):
        torch.testing.assert_close(gradient, reference, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Derivation


def fair_darts_parse(weights: list[list[float]], threshold: float, nodes: int = 4
                     ) -> set[tuple[str, int, int]]:
    """FairDARTS's `parse` with method 'threshold_sparse', written out: per node the 2 incoming
    edges with the largest best sigmoid (stable order), each with its best candidate (the first
    on ties) if that reaches the threshold; then, as their evaluation cell computes it, edges
    from a node without inputs are skipped (a node whose inputs are all skipped has none)."""
    kept, start = [], 0
    for node in range(nodes):
        incoming = weights[start:start + node + 2]
        ranked = sorted(range(node + 2), key=lambda j: -max(incoming[j]))[:2]
        for j in ranked:
            best = max(range(len(incoming[j])), key=lambda k: incoming[j][k])
            if incoming[j][best] >= threshold:
                kept.append((OPERATIONS[best], node + 2, j))
        start += node + 2
    live = {0, 1}
    result = set()
    for to in range(2, nodes + 2):
        inputs = [edge for edge in kept if edge[1] == to and edge[2] in live]
        if inputs:
            live.add(to)
            result.update(inputs)
    return result


@pytest.mark.parametrize("seed", range(8))
def test_derivation_is_fair_darts_threshold_rule(seed):
    generator = torch.Generator().manual_seed(seed)
    tensors = {cell: {"alpha": 1.2 + 1.2 * torch.randn(14, 3, generator=generator,
                                                         dtype=torch.float64)}
               for cell in ir.CELL_KINDS}
    genotype = derive_genotype(tensors, space())
    for cell in ir.CELL_KINDS:
        expected = fair_darts_parse(torch.sigmoid(tensors[cell]["alpha"]).tolist(), 0.85)
        derived = genotype.cell(cell)
        if expected:
            assert edges_of(derived) == expected, cell
            assert derived.output.nodes == tuple(node.name for node in derived.nodes)
        else:  # nothing reaches the threshold: the strongest edge reading an input
            assert sum(len(node.edges) for node in derived.nodes) == 1


def test_a_node_without_edges_leaves_the_cell_with_the_edges_reading_it():
    alpha = torch.full((14, 3), -3.0, dtype=torch.float64)
    alpha[4, 2], alpha[2, 2] = 3.0, 2.5  # n1 <- n0 (n0 kept nothing), n1 <- c_k2
    alpha[7, 2], alpha[8, 0] = 3.0, 2.0  # n2 <- n0, n2 <- n1
    alpha[11, 1] = 3.0  # n3 <- n0 only
    tensors = {cell: {"alpha": alpha} for cell in ir.CELL_KINDS}
    genotype = derive_genotype(tensors, space())
    text = format_genotype(genotype)
    assert ("        n1 = sep_conv_3x3(c_k2)\n        n2 = max_pool_3x3(n1)\n"
            "        c_k = concat(n1, n2)\n") in text
    assert parse_text(text).genotype() == genotype
    network = compile_network(genotype, channels=4, layers=3, auxiliary=False, input_size=8)
    assert network.classifier.in_features == 2 * 16  # two nodes of the last cell (C = 16)
    assert network(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    # decisiveness (and render --weights) read the nodes that remain by name
    rows = torch.sigmoid(alpha).tolist()
    decided = decisiveness.decide(space(), genotype, {cell: {"alpha": rows}
                                                      for cell in ir.CELL_KINDS})
    assert [(edge.node, edge.input) for edge in decided.edges][:2] == [("n1", "c_k2"),
                                                                       ("n2", "n1")]
    assert decided.edges[1].input_margin == pytest.approx(rows[8][0] - rows[7][2])


def test_a_cell_where_nothing_reaches_the_threshold_keeps_its_strongest_input_edge():
    alpha = torch.zeros(14, 3, dtype=torch.float64)
    reduce = alpha.clone()
    reduce[6, 1] = 0.4  # n2 <- c_k1: the strongest edge reading an input
    reduce[13, 2] = 1.0  # n3 <- n2 is stronger, but reads a node
    genotype = derive_genotype({"normal": {"alpha": alpha}, "reduce": {"alpha": reduce}},
                               space())
    assert edges_of(genotype.normal) == {("max_pool_3x3", 2, 0)}  # ties: lowest edge, candidate
    assert edges_of(genotype.reduce) == {("skip_connect", 4, 1)}
    assert genotype.reduce.output.nodes == ("n2",)
    network = compile_network(genotype, channels=4, layers=3, auxiliary=False, input_size=8)
    assert network(torch.randn(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("location", ["after_every", "double_mixed", "end"])
def test_an_attention_below_the_threshold_becomes_no_attention(location):
    spec = space(location)
    names = [call.name for call in spec.attentions]
    offset = len(OPERATIONS) if location == "double_mixed" else 0
    tensors = {}
    for cell in ir.CELL_KINDS:
        width = len(spec.location_spec.columns(spec)["alpha"])
        alpha = torch.full((14, width), -3.0, dtype=torch.float64)
        alpha[:, 2] = 3.0  # sep_conv_3x3 everywhere, above the threshold
        tensors[cell] = {"alpha": alpha}
        if location == "end":
            gamma = torch.full((1, len(names)), -3.0, dtype=torch.float64)
            gamma[0, names.index("se")] = 2.5 if cell == "normal" else 1.0
            tensors[cell]["gamma"] = gamma
        else:
            beta = torch.full((14, offset + len(names)), -3.0, dtype=torch.float64)
            beta[0, offset + names.index("se")] = 2.5  # sigmoid 0.92: kept
            beta[1, offset + names.index("se")] = 1.0  # sigmoid 0.73: no attention
            if "identity" in names:
                beta[2, offset + names.index("identity")] = 3.0  # identity: no attention
                beta[2, offset + names.index("se")] = 2.5
            tensors[cell]["beta"] = beta
    genotype = derive_genotype(tensors, spec)
    if location == "end":
        assert genotype.normal.output.attention.name == "se"
        assert genotype.reduce.output.attention is None
        return
    first = genotype.normal.nodes[0].edges
    assert [edge.attention.name if edge.attention else None for edge in first] == ["se", None]
    assert all(edge.attention is None for node in genotype.normal.nodes[1:]
               for edge in node.edges)


# ---------------------------------------------------------------------------------------------
# What the space must be


def test_a_space_with_none_is_refused_where_none_is_written():
    text = ("space s {\n    operations = [max_pool_3x3, none, sep_conv_3x3]\n    nodes = 2\n"
            "    keep = 2\n    location = no_attention\n    mixing = sum\n"
            "    methods = [fair_darts]\n}\n")
    with pytest.raises(DslError) as error:
        parse_text(text)
    rendered = error.value.located("s.geno", text).render()
    assert "s.geno:2:33: 'fair_darts' weighs every candidate by its own sigmoid" in rendered
    assert "hint: remove 'none' from the operations" in rendered
    for other in ("edge_normalisation", "smoothing", "drnas"):
        with pytest.raises(DslError, match="cannot be combined"):
            parse_text(text.replace("none, ", "").replace("[fair_darts]",
                                                          f"[fair_darts, {other}]"))


# ---------------------------------------------------------------------------------------------
# A search


def test_a_short_fair_darts_search_derives_a_genotype_that_builds(tmp_path):
    path = tmp_path / "fair.geno"
    path.write_text("space fair { operations = [max_pool_3x3, skip_connect, sep_conv_3x3] "
                    "attentions = [identity, se] nodes = 2 keep = 2 location = after_every "
                    "mixing = sum methods = [fair_darts(threshold=0.5)] }\n")
    config = SearchConfig(space_file=str(path), dataset="synthetic", epochs=2, batch_size=4,
                          channels=4, layers=3, max_steps_per_epoch=2, deterministic=True)
    result = run_search(config, tmp_path / "run", device="cpu",
                        dataset=data.synthetic_dataset(train=True, size=16, resolution=8))
    network = compile_network(result.genotype, channels=4, layers=3, auxiliary=False,
                              input_size=8)
    assert network(torch.randn(2, 3, 8, 8)).shape == (2, 10)
