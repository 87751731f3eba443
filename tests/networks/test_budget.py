"""The budget method's torch part (`attdarts.networks.budget`): the expected cost is the table's
price when the weights pick one genotype, `none` cannot make a mixture look cheap, gradients
reach every architecture kind through the supernet's own weights, seeds stack, and the
penalty forms."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from attdarts.language import ir
from attdarts.language.transform import parse_file
from attdarts.networks.budget import Budget, expected_cost, fbnet_loss, penalty
from attdarts.networks.budget_derive import random_genotype
from attdarts.networks.cost_meter import build_cost_table
from attdarts.networks.costs import CostError
from attdarts.networks.supernet import column_names, compile_supernet

ROOT = Path(__file__).resolve().parents[2]
SPACES = ROOT / "genotypes" / "spaces"


def space_of(name: str) -> ir.Space:
    return parse_file(SPACES / f"{name}.geno").space()


def one_hot_weights(space: ir.Space, genotype: ir.Genotype) -> list[tuple]:
    """Weights that put all their mass on `genotype`'s choices: alpha / beta / gamma one-hot,
    edge weights 1/keep on the kept edges, so that every kept edge counts once."""
    columns = column_names(space)
    location = space.location_spec
    count = len(space.operations)
    attentions = [call.name for call in space.attentions]
    starts = [sum(2 + k for k in range(node)) for node in range(space.nodes)]
    edges = starts[-1] + space.nodes + 1
    weights = []
    for kind in ir.CELL_KINDS:
        cell = genotype.cell(kind)
        alpha = torch.full((edges, len(columns["alpha"])), 1.0 / len(columns["alpha"]),
                           dtype=torch.float64)
        beta = None
        if "beta" in columns:
            beta = torch.full((edges, len(columns["beta"])), 1.0 / len(columns["beta"]),
                              dtype=torch.float64)
        shares = torch.zeros(edges, dtype=torch.float64)
        for position, node in enumerate(cell.nodes):
            for edge in node.edges:
                index = starts[position] + cell.index_of(edge.input)
                shares[index] = 1.0 / space.keep
                attention = "identity" if edge.attention is None else edge.attention.name
                alpha[index] = 0.0
                if location.mixes_operations_and_attentions and location.then is None and \
                        edge.operation.name == "skip_connect" and attention in attentions:
                    alpha[index, count + attentions.index(attention)] = 1.0
                else:
                    alpha[index, [c.name for c in space.operations].index(edge.operation.name)] = 1.0
                if beta is not None:
                    beta[index] = 0.0
                    offset = count if location.then == "operations+attentions" else 0
                    beta[index, offset + attentions.index(attention)] = 1.0
        gamma = None
        if "gamma" in columns:
            gamma = torch.zeros((1, len(attentions)), dtype=torch.float64)
            output = cell.output.attention
            gamma[0, attentions.index("identity" if output is None else output.name)] = 1.0
        weights.append((alpha, beta, gamma, shares))
    return weights


@pytest.mark.parametrize("name", ["att_darts", "att_darts_every_and_end", "att_darts_mixed",
                                  "att_darts_double_mixed", "darts"])
def test_weights_on_one_genotype_expect_its_price(name, one_thread):
    space = space_of(name)
    table = build_cost_table(space, channels=4, layers=5)
    generator = random.Random(name)
    for _ in range(3):
        genotype = random_genotype(space, generator)
        weights = one_hot_weights(space, genotype)
        prices = table.price(genotype)
        for measure in ("multiply_adds", "parameters"):
            expected = expected_cost(weights, space, table, measure)
            assert expected.dtype == torch.float64
            assert expected.item() == prices[measure]


def test_the_weight_of_none_does_not_make_a_mixture_cheaper(one_thread):
    space = space_of("att_darts")
    table = build_cost_table(space, channels=4, layers=3)
    generator = torch.Generator().manual_seed(0)
    weights = []
    for _ in ir.CELL_KINDS:
        alpha = torch.softmax(torch.randn(14, 8, generator=generator, dtype=torch.float64), -1)
        beta = torch.softmax(torch.randn(14, 6, generator=generator, dtype=torch.float64), -1)
        weights.append((alpha, beta, None, None))
    before = expected_cost(weights, space, table)
    more_none = []
    for alpha, beta, gamma, edges in weights:
        alpha = alpha.clone()
        alpha[:, 1:] *= 0.1  # none takes 90 % of what the others had
        alpha[:, 0] = 1.0 - alpha[:, 1:].sum(-1)
        more_none.append((alpha, beta, gamma, edges))
    assert expected_cost(more_none, space, table).item() == pytest.approx(before.item(), rel=1e-12)
    all_edges = expected_cost(weights, space, table, shares="all")
    assert all_edges > before  # 14 edges counted instead of 8


def test_an_edge_whose_draw_is_none_costs_nothing_with_a_finite_gradient(one_thread):
    """GDAS's one-hot draw may pick `none`: that edge's choosable weights are all 0. It adds
    nothing to the expected cost, and its gradient is 0, not NaN (a division by ~0)."""
    space = space_of("att_darts")
    table = build_cost_table(space, channels=4, layers=3)
    weights, leaves = [], []
    for _ in ir.CELL_KINDS:
        alpha = torch.zeros(14, 8, dtype=torch.float64)
        alpha[:, 4] = 1.0  # sep_conv_3x3 everywhere
        alpha[0] = 0.0
        alpha[0, 0] = 1.0  # none on the first edge
        beta = torch.zeros(14, 6, dtype=torch.float64)
        beta[:, 0] = 1.0
        alpha.requires_grad_(True)
        leaves.append(alpha)
        weights.append((alpha, beta, None, None))
    expected = expected_cost(weights, space, table)
    expected.backward()
    for alpha in leaves:
        assert torch.isfinite(alpha.grad).all()
        assert (alpha.grad[0] == 0).all() and alpha.grad[1].abs().sum() > 0
    dropped = [(alpha.detach().clone(), beta, gamma, edges) for alpha, beta, gamma, edges in weights]
    for alpha, *_ in dropped:
        alpha[0] = alpha[1]  # the same edge choosing sep_conv_3x3 costs more
    assert expected_cost(dropped, space, table) > expected


def test_the_supernets_weights_carry_the_gradient_to_every_kind(one_thread):
    """The interface the budget method uses: the supernet's `mixture_weights()` as they are."""
    for name in ("att_darts_every_and_end", "att_pc_darts"):
        space = space_of(name)
        table = build_cost_table(space, channels=4, layers=3)
        model = compile_supernet(space, channels=4, layers=3, init="randn")
        free = table.price(random_genotype(space, random.Random(0)))["multiply_adds"]
        budget = Budget(space, table, measure="multiply_adds", target=free / 10, weight=0.5)
        loss = budget.loss(model.mixture_weights())
        assert loss.ndim == 0 and loss.item() > 0
        loss.backward()
        for parameter_name, parameter in model.named_architecture():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name
        record = budget.record(model.mixture_weights())
        assert list(record) == ["budget_expected_multiply_adds"]
        assert record["budget_expected_multiply_adds"] > table.fixed["multiply_adds"]


def test_stacked_seeds_and_extra_columns(one_thread):
    space = space_of("att_darts")
    table = build_cost_table(space, channels=4, layers=3)
    generator = torch.Generator().manual_seed(1)

    def draw():
        return [(torch.softmax(torch.randn(14, 8, generator=generator), -1),
                 torch.softmax(torch.randn(14, 6, generator=generator), -1), None, None)
                for _ in ir.CELL_KINDS]

    first, second = draw(), draw()
    stacked = [tuple(None if a is None else torch.stack([a, b]) for a, b in zip(x, y))
               for x, y in zip(first, second)]
    together = expected_cost(stacked, space, table)
    assert together.shape == (2,)
    assert together[0].item() == pytest.approx(expected_cost(first, space, table).item(), rel=1e-6)
    assert together[1].item() == pytest.approx(expected_cost(second, space, table).item(), rel=1e-6)
    # DARTS-'s auxiliary skip adds a last alpha column outside the softmax: not derived, ignored
    extra = [(torch.cat([alpha, torch.ones(14, 1)], -1), beta, gamma, edges)
             for alpha, beta, gamma, edges in first]
    assert expected_cost(extra, space, table).item() == expected_cost(first, space, table).item()


def test_penalty_forms():
    expected = torch.tensor([50.0, 100.0, 150.0])
    assert penalty(expected, 100.0).tolist() == [0.0, 0.0, 0.5]
    assert penalty(expected, 100.0, form="target", weight=2.0).tolist() == [1.0, 0.0, 1.0]
    assert penalty(expected, 100.0, form="linear").tolist() == [0.5, 1.0, 1.5]
    with pytest.raises(ValueError, match="unknown budget form 'cubic'"):
        penalty(expected, 100.0, form="cubic")
    with pytest.raises(ValueError, match="positive"):
        penalty(expected, 0.0)
    loss = torch.tensor(2.0)
    assert fbnet_loss(loss, torch.tensor(torch.e ** 4), alpha=0.5, beta=0.5).item() == \
        pytest.approx(2.0 * 0.5 * 2.0)


def test_settings_name_one_target_and_a_latency_needs_its_table(one_thread):
    space = space_of("darts")
    budget = Budget.from_settings(space, macs=5e6, channels=4, layers=3, weight=0.2,
                                  form="target")
    assert (budget.measure, budget.target, budget.weight, budget.form) == \
        ("multiply_adds", 5e6, 0.2, "target")
    assert budget.table.channels == 4
    with pytest.raises(ValueError, match="exactly one of"):
        Budget.from_settings(space, macs=5e6, params=1e6)
    with pytest.raises(ValueError, match="latency budget needs a cost table"):
        Budget.from_settings(space, latency=12.0)
    with pytest.raises(CostError, match="has no latency_ms"):
        Budget.from_settings(space, latency=12.0, table=budget.table)
    with pytest.raises(CostError, match="differ"):
        Budget(space_of("att_darts"), budget.table, measure="parameters", target=1.0)
    genotype = parse_file(ROOT / "genotypes" / "darts_v2.geno").genotype()
    assert budget.real_cost(genotype) == budget.table.price(genotype)["multiply_adds"]


def test_the_penalty_alone_moves_the_derived_genotype_under_the_budget(one_thread):
    """Adam on the budget term only (no data): the expected cost falls to the target and the
    genotype derivation writes from the weights gets cheaper, as a budgeted search needs."""
    from attdarts.networks.derive import derive_genotype
    from attdarts.networks.supernet import Architecture

    space = space_of("att_darts")
    table = build_cost_table(space, channels=4, layers=5)
    columns = column_names(space)
    torch.manual_seed(0)
    arch = Architecture({"alpha": (14, len(columns["alpha"])), "beta": (14, len(columns["beta"]))},
                        "randn")

    def softmaxed() -> list[tuple]:
        return [(torch.softmax(arch.tensor("alpha", kind), -1),
                 torch.softmax(arch.tensor("beta", kind), -1), None, None)
                for kind in ir.CELL_KINDS]

    def derived_cost() -> float:
        tensors = {kind: {name: arch.tensor(name, kind).detach() for name in ("alpha", "beta")}
                   for kind in ir.CELL_KINDS}
        return table.price(derive_genotype(tensors, space))["multiply_adds"]

    budget = Budget(space, table, measure="multiply_adds", target=1.0)
    start = budget.expected(softmaxed()).item()
    target = table.fixed["multiply_adds"] + 0.5 * (start - table.fixed["multiply_adds"])
    budget = Budget(space, table, measure="multiply_adds", target=target, weight=10.0)
    before = derived_cost()
    optimiser = torch.optim.Adam(arch.parameters(), lr=0.05)
    for _ in range(100):
        optimiser.zero_grad()
        budget.loss(softmaxed()).backward()
        optimiser.step()
    assert budget.expected(softmaxed()).item() <= target * 1.01
    assert derived_cost() < before
