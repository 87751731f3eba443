"""Budgeted derivation (`attdarts.networks.budget_derive`): exact against brute force on 2-node
spaces (best score within caps, and the whole score/cost front), the run's own derivation
without caps, the space's own caps, a cap no genotype meets."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from attdarts.language import ir
from attdarts.language.transform import parse_file, parse_text
from attdarts.networks.budget_derive import (
    BudgetError, Cap, RunWeights, budget_derive, edge_choices, genotype_score,
)
from attdarts.networks.cost_meter import build_cost_table
from attdarts.networks.derive import derive_genotype
from attdarts.networks.supernet import column_names, normalise_edges

ROOT = Path(__file__).resolve().parents[2]
SPACES = ROOT / "genotypes" / "spaces"

TWO_NODES_KEEP_ONE = """space two {
    operations = [none, skip_connect, sep_conv_3x3, max_pool_3x3]
    attentions = [identity, se]
    nodes = 2
    keep = 1
    location = after_every
}"""
TWO_NODES_OUTPUT = """space two_out {
    operations = [none, skip_connect, sep_conv_3x3]
    attentions = [identity, se]
    nodes = 2
    keep = 2
    location = after_every_and_end
}"""
TWO_NODES_MIXED = """space two_mixed {
    operations = [none, sep_conv_3x3, avg_pool_3x3]
    attentions = [identity, cbam]
    nodes = 2
    keep = 2
    location = mixed_with_operation
    edge_normalisation = true
}"""


def random_weights(space: ir.Space, seed: int) -> tuple[RunWeights, dict]:
    """Softmaxed weights as weights.jsonl holds them, and the raw tensors behind them."""
    generator = torch.Generator().manual_seed(seed)
    edges = sum(2 + node for node in range(space.nodes))
    cells, raw = {}, {}
    for kind in ir.CELL_KINDS:
        cells[kind], raw[kind] = {}, {}
        for name, labels in column_names(space).items():
            if name == "edges":
                tensor = torch.randn(edges, generator=generator, dtype=torch.float64)
                rows = [normalise_edges(tensor, space.nodes).tolist()]
            else:
                tensor = torch.randn(1 if name == "gamma" else edges, len(labels),
                                     generator=generator, dtype=torch.float64)
                rows = torch.softmax(tensor, -1).tolist()
            raw[kind][name], cells[kind][name] = tensor, rows
    return RunWeights(1, cells), raw


def all_cells(space: ir.Space, weights: RunWeights, kind: str) -> list[ir.Cell]:
    """Every cell derivation could write from `weights`: per node every `keep` inputs, every
    candidate pair on each, every output attention."""
    choices = edge_choices(space, [1.0] * len(column_names(space)["alpha"]),
                           [1.0] * len(column_names(space).get("beta", [0])))
    pairs = sorted({(c.operation, c.attention) for c in choices},
                   key=lambda pair: (pair[0].name, "" if pair[1] is None else pair[1].name))
    outputs = [None]
    if space.location_spec.output_attention:
        outputs = [None if call.name == "identity" else call for call in space.attentions]
    per_node = []
    for node in range(space.nodes):
        inputs = (*ir.INPUTS, *(f"n{i}" for i in range(node)))
        options = []
        for subset in itertools.combinations(range(2 + node), space.keep):
            for picked in itertools.product(pairs, repeat=space.keep):
                options.append(ir.Node(name=f"n{node}", edges=tuple(
                    ir.Edge(operation=op, input=inputs[i], attention=att)
                    for i, (op, att) in zip(subset, picked))))
        per_node.append(options)
    names = tuple(f"n{node}" for node in range(space.nodes))
    return [ir.Cell(kind=kind, nodes=nodes, output=ir.Output(nodes=names, attention=output))
            for nodes in itertools.product(*per_node) for output in outputs]


def brute_force(space, weights, table, measures):
    """(scores, costs per measure) of every genotype of the space: every normal cell with every
    reduce cell, each priced and scored by the table and `genotype_score` on its own."""
    normal_cells = all_cells(space, weights, "normal")
    reduce_cells = all_cells(space, weights, "reduce")

    def genotype(normal, reduce):
        return ir.Genotype(name="g", normal=normal, reduce=reduce)

    reference = genotype(normal_cells[0], reduce_cells[0])
    base = table.price(reference)
    base_score = genotype_score(reference, space, weights)
    # price and score are sums over the cells, so each cell's part is measured against the
    # reference and every pair is a sum (numpy), still every genotype of the space
    normal = [(genotype_score(genotype(c, reduce_cells[0]), space, weights) - base_score,
               [table.price(genotype(c, reduce_cells[0]))[m] - base[m] for m in measures])
              for c in normal_cells]
    reduce = [(genotype_score(genotype(normal_cells[0], c), space, weights) - base_score,
               [table.price(genotype(normal_cells[0], c))[m] - base[m] for m in measures])
              for c in reduce_cells]
    scores = base_score + np.add.outer([s for s, _ in normal], [s for s, _ in reduce])
    costs = [base[m] + np.add.outer([c[i] for _, c in normal], [c[i] for _, c in reduce])
             for i, m in enumerate(measures)]
    return scores.ravel(), [c.ravel() for c in costs], len(normal_cells) * len(reduce_cells)


@pytest.mark.parametrize("text", [TWO_NODES_KEEP_ONE, TWO_NODES_OUTPUT, TWO_NODES_MIXED])
def test_exact_against_brute_force_on_two_node_spaces(text, one_thread):
    space = parse_text(text).space()
    table = build_cost_table(space, channels=4, layers=3)
    weights, _ = random_weights(space, seed=len(text))
    measures = ["multiply_adds", "parameters"]
    scores, (macs, params), count = brute_force(space, weights, table, measures)
    assert count >= 2000
    free = budget_derive(space, weights, table)
    assert free.score == pytest.approx(scores.max(), abs=1e-9)
    for fraction in (0.25, 0.5, 0.8):
        cap = macs.min() + fraction * (macs[scores.argmax()] - macs.min())
        derived = budget_derive(space, weights, table, [Cap("multiply_adds", cap)])
        assert derived.costs["multiply_adds"] <= cap
        assert derived.score == pytest.approx(scores[macs <= cap].max(), abs=1e-9)
        assert derived.score == pytest.approx(genotype_score(derived.genotype, space, weights))
    # two caps at once
    cap_macs = np.median(macs)
    cap_params = np.median(params)
    both = budget_derive(space, weights, table, [Cap("multiply_adds", cap_macs),
                                                 Cap("parameters", cap_params)])
    inside = (macs <= cap_macs) & (params <= cap_params)
    assert both.score == pytest.approx(scores[inside].max(), abs=1e-9)
    assert both.costs["parameters"] <= cap_params and both.costs["multiply_adds"] <= cap_macs
    # the front: every genotype that no other beats in score and multiply-adds
    order = np.lexsort((macs, -scores))
    front, lowest = set(), np.inf
    for index in order:
        if macs[index] < lowest:
            front.add((round(float(scores[index]), 9), int(macs[index])))
            lowest = macs[index]
    listed = budget_derive(space, weights, table, pareto=True).front
    assert {(round(score, 9), int(costs["multiply_adds"])) for score, costs, _ in listed} == front


@pytest.mark.parametrize("name", ["att_darts", "darts", "att_darts_end", "att_darts_mixed",
                                  "att_darts_double_mixed", "att_pc_darts"])
def test_without_caps_it_is_the_runs_own_derivation(name, one_thread):
    """The score is what derivation maximises: the same genotype on the full 4-node spaces."""
    space = parse_file(SPACES / f"{name}.geno").space()
    table = build_cost_table(space, channels=4, layers=3)
    for seed in range(3):
        weights, raw = random_weights(space, seed)
        derived = budget_derive(space, weights, table)
        expected = derive_genotype(raw, space)
        assert (derived.genotype.normal, derived.genotype.reduce) == \
            (expected.normal, expected.reduce)
        assert derived.score == derived.unconstrained_score
        assert derived.costs == derived.unconstrained_costs == table.price(expected)


def test_the_spaces_own_skip_cap_is_honoured(one_thread):
    space = parse_text("""space capped {
        operations = [none, skip_connect, sep_conv_3x3, dil_conv_3x3]
        attentions = [identity, se]
        max_skip_connect = 1
    }""").space()
    table = build_cost_table(space, channels=4, layers=3)
    weights, raw = random_weights(space, 7)
    for row in weights.cells["normal"]["alpha"]:  # skip_connect strongest everywhere
        row[1] += 1.0
    for row in raw["normal"]["alpha"]:
        row[1] += 10.0
    derived = budget_derive(space, weights, table)
    skips = [e for n in derived.genotype.normal.nodes for e in n.edges
             if e.operation.name == "skip_connect"]
    assert len(skips) == 1
    heuristic = derive_genotype({kind: {k: torch.log(torch.tensor(v, dtype=torch.float64))
                                        for k, v in cells.items()}
                                 for kind, cells in weights.cells.items()}, space)
    assert derived.score >= genotype_score(heuristic, space, weights) - 1e-12


def test_a_cap_no_genotype_meets_is_one_line(one_thread):
    space = parse_text(TWO_NODES_KEEP_ONE).space()
    table = build_cost_table(space, channels=4, layers=3)
    weights, _ = random_weights(space, 0)
    with pytest.raises(BudgetError, match=r"no genotype of space 'two' fits multiply_adds <= "
                                          r"0.001M \(the cheapest genotype has [0-9.]+M\)"):
        budget_derive(space, weights, table, [Cap("multiply_adds", 1000)])
    with pytest.raises(BudgetError, match="has no latency_ms"):
        budget_derive(space, weights, table, [Cap("latency_ms", 5.0)])


@pytest.mark.parametrize("method", ["fair_darts", "gdas"])
def test_a_method_that_derives_by_its_own_rule_is_refused(one_thread, method):
    """FairDARTS keeps edges above a threshold, GDAS a node's strongest (operation, input) pairs,
    not the strongest edges: ranking their genotypes by DARTS's score would answer another
    question, so derive says so in one line."""
    space = parse_text(f"""space own {{
        operations = [skip_connect, sep_conv_3x3]
        attentions = [identity, se]
        nodes = 2
        methods = [{method}]
    }}""").space()
    table = build_cost_table(space, channels=4, layers=3)
    weights, _ = random_weights(space, 0)
    with pytest.raises(BudgetError, match=f"'{method}' derives by its own rule") as caught:
        budget_derive(space, weights, table, [Cap("multiply_adds", 1e12)])
    assert "\n" not in str(caught.value)


TWO_NODES_THREE_ATTENTIONS = """space two_three {
    operations = [none, skip_connect, sep_conv_3x3, max_pool_3x3]
    attentions = [identity, se, cbam]
    nodes = 2
    keep = 1
    location = after_every_and_end
}"""


def staged_weights(space: ir.Space, seed: int, counts: dict[str, int],
                   dropped: set[tuple[str, int]]) -> RunWeights:
    """Weights as a stage that searches `counts[kind]` candidates of each row writes them
    (P-DARTS): the masked softmax, with the masks as `kept`. The `dropped` (kind, column)s are
    dropped from every row (the cheapest choices), the others at random."""
    weights, raw = random_weights(space, seed)
    generator = torch.Generator().manual_seed(seed)
    kept: dict[str, dict[str, list]] = {}
    for kind in ir.CELL_KINDS:
        kept[kind] = {}
        for name, count in counts.items():
            tensor = raw[kind][name]
            mask = torch.zeros_like(tensor, dtype=torch.bool)
            for row in range(tensor.shape[0]):
                order = torch.randperm(tensor.shape[1], generator=generator).tolist()
                order = [i for i in order if (name, i) not in dropped]
                mask[row, order[:count]] = True
            weights.cells[kind][name] = torch.softmax(
                tensor.masked_fill(~mask, float("-inf")), -1).tolist()
            kept[kind][name] = mask.tolist()
    return RunWeights(1, weights.cells, kept)


def searched(space: ir.Space, cell: ir.Cell, kept: dict[str, list[list[bool]]]) -> bool:
    """Whether every choice of `cell` is a candidate its stage still searches: the operation and
    attention columns of each kept edge, and the output attention's."""
    attentions = [call.name for call in space.attentions]
    mixed = space.location_spec.then is None and "beta" not in kept
    starts = [sum(2 + k for k in range(node)) for node in range(space.nodes)]
    for position, node in enumerate(cell.nodes):
        for edge in node.edges:
            row = starts[position] + cell.index_of(edge.input)
            attention = attentions.index(edge.attention.name if edge.attention else "identity")
            if mixed and edge.operation.name == "skip_connect":  # an attention's column
                columns = [("alpha", len(space.operations) + attention)]
            else:
                columns = [("alpha", space.operations.index(edge.operation))]
                columns += [("beta", attention)] if "beta" in kept else []
            if not all(kept[name][row][column] for name, column in columns):
                return False
    output = cell.output.attention
    return "gamma" not in kept or kept["gamma"][0][
        attentions.index(output.name if output else "identity")]


@pytest.mark.parametrize("text, counts, dropped", [
    (TWO_NODES_THREE_ATTENTIONS, {"alpha": 2, "beta": 2, "gamma": 2}, {("beta", 0)}),
    (TWO_NODES_MIXED, {"alpha": 2}, {("alpha", 2), ("alpha", 3)}),
])
def test_a_stages_dropped_candidates_are_never_chosen(text, counts, dropped, one_thread):
    """A staged search's last stage keeps a few candidates per row (P-DARTS): derive chooses
    among those only, whatever the cap, exactly as brute force over the genotypes that use
    searched candidates only; a cap only dropped candidates could meet is refused. The same
    weights without the masks (dropped candidates weighing 0) would pick a dropped one."""
    space = parse_text(text).space()
    table = build_cost_table(space, channels=4, layers=3)
    staged = staged_weights(space, seed=len(text), counts=counts, dropped=dropped)
    unmasked = RunWeights(1, staged.cells)
    scores, (macs,), count = brute_force(space, unmasked, table, ["multiply_adds"])
    flags = {kind: np.array([searched(space, cell, staged.kept[kind])
                             for cell in all_cells(space, unmasked, kind)])
             for kind in ir.CELL_KINDS}
    valid = np.logical_and.outer(flags["normal"], flags["reduce"]).ravel()
    assert count >= 2000 and 0 < valid.sum() < count

    def uses_searched_only(genotype: ir.Genotype) -> bool:
        return all(searched(space, genotype.cell(kind), staged.kept[kind])
                   for kind in ir.CELL_KINDS)

    free = budget_derive(space, staged, table)
    assert uses_searched_only(free.genotype)
    assert free.score == pytest.approx(scores[valid].max(), abs=1e-9)
    cheapest = macs[valid].min()
    for fraction in (0.0, 0.3, 0.7):
        cap = cheapest + fraction * (free.costs["multiply_adds"] - cheapest)
        derived = budget_derive(space, staged, table, [Cap("multiply_adds", cap)])
        assert uses_searched_only(derived.genotype)
        assert derived.score == pytest.approx(scores[valid & (macs <= cap)].max(), abs=1e-9)
    assert macs.min() < cheapest  # the cheapest choices (no attention, a pool) were dropped
    with pytest.raises(BudgetError, match="no genotype of space"):
        budget_derive(space, staged, table, [Cap("multiply_adds", macs.min())])
    assert not uses_searched_only(
        budget_derive(space, unmasked, table, [Cap("multiply_adds", macs.min())]).genotype)
