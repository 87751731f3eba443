"""The budget as a search method (`attdarts.networks.methods.budget`): its architecture-loss term
against a hand-written float64 statement of the expected cost and of each penalty form, the
table it reads (relative to the space file's folder) or builds, what it records each epoch, and
stacked seeds."""

from __future__ import annotations

import pytest
import torch

from attdarts.language import ir
from attdarts.language.transform import parse_text
from attdarts.networks.cost_meter import build_cost_table
from attdarts.networks.costs import write_cost_table
from attdarts.networks.derive import derive_genotype
from attdarts.networks.methods import MethodError, SearchContext
from attdarts.networks.methods.budget import BudgetMethod
from attdarts.networks.supernet import compile_supernet
from attdarts.records import budget_keys

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = SearchContext(channels=8, layers=5)  # a small "final network" keeps the tables quick


def make_space(methods: str, location: str = "after_every") -> ir.Space:
    return parse_text(
        "space tiny { operations = [none, max_pool_3x3, skip_connect, sep_conv_3x3] "
        f"attentions = [identity, se, cbam] nodes = 3 keep = 2 location = {location} "
        f"mixing = sum methods = [{methods}] }}").space()


def supernet(space: ir.Space, seed: int = 0, context: SearchContext | None = SMALL):
    torch.manual_seed(seed)
    model = compile_supernet(space, channels=4, layers=3, input_size=8, init="randn")
    if context is not None:
        model.methods.search_start(context)
    return model.double()


def budget_of(model) -> BudgetMethod:
    return next(method for method in model.methods if isinstance(method, BudgetMethod))


def expected_by_hand(space: ir.Space, table, weights, measure: str = "multiply_adds") -> torch.Tensor:
    """E for location after_every, written out: the fixed part, plus per cell type and edge its
    share of the node's kept edges (keep / incoming edges) times the expected operation cost
    over the candidates other than none (renormalised) plus the expected attention cost."""
    costs = table.kind_costs(measure)
    names = [call.name for call in space.operations]
    total = torch.tensor(float(table.fixed[measure]), dtype=torch.float64)
    for kind, cell in zip(ir.CELL_KINDS, weights):
        edge = 0
        for node in range(space.nodes):
            incoming = 2 + node
            for _ in range(incoming):
                alpha, beta = cell.alpha[edge], cell.beta[edge]
                operation = sum(alpha[c] * costs[kind].operations[edge][c]
                                for c, name in enumerate(names) if name != "none")
                operation = operation / sum(alpha[c] for c, name in enumerate(names)
                                            if name != "none")
                attention = sum(beta[a] * costs[kind].attentions[edge][a]
                                for a in range(len(space.attentions)))
                total = total + space.keep / incoming * (operation + attention)
                edge += 1
    return total


@pytest.mark.parametrize("form", ["exceed", "target", "linear"])
def test_the_term_is_the_forms_penalty_of_the_expected_cost(form):
    space = make_space(f"budget(macs=3M, weight=0.7, form={form})")
    model = supernet(space)
    table = build_cost_table(space, channels=8, layers=5)
    arch = dict(model.named_architecture())
    term = model.methods.architecture_loss(arch, model.mixture_weights())
    weights = model.mixture_weights()
    ratio = expected_by_hand(space, table, weights) / 3e6
    assert ratio.item() > 1.0  # above the budget: every form pulls
    by_hand = 0.7 * {"exceed": torch.relu(ratio - 1), "target": (ratio - 1).abs(),
                     "linear": ratio}[form]
    torch.testing.assert_close(term, by_hand, rtol=1e-12, atol=0)
    gradients = torch.autograd.grad(term, list(arch.values()))
    expected = torch.autograd.grad(by_hand, list(arch.values()))
    for name, mine, theirs in zip(arch, gradients, expected):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-14, msg=name)
        assert mine.abs().sum() > 0, name  # alpha and beta of both cell types


def test_within_the_budget_exceed_adds_nothing():
    model = supernet(make_space("budget(params=1G)"))
    term = model.methods.architecture_loss(dict(model.named_architecture()),
                                           model.mixture_weights())
    assert term.item() == 0.0


def test_a_table_path_is_relative_to_the_space_files_folder(tmp_path):
    space = make_space('budget(params=1M, table="../tables/tiny.json")')
    table = build_cost_table(space, channels=6, layers=4)
    (tmp_path / "tables").mkdir()
    (tmp_path / "spaces").mkdir()
    write_cost_table(table, tmp_path / "tables" / "tiny.json")
    model = supernet(space, context=SearchContext(directory=tmp_path / "spaces"))
    budget = budget_of(model).budget
    assert (budget.table.channels, budget.table.layers) == (6, 4)  # the table's size, not 36/20
    assert budget.measure == "parameters" and budget.target == 1e6
    absolute = make_space(f'budget(params=1M, table="{tmp_path / "tables" / "tiny.json"}")')
    assert budget_of(supernet(absolute, context=SearchContext(directory=None))).budget.table \
        .channels == 6
    with pytest.raises(MethodError, match=r"^budget: .*tiny.json: cannot read the cost table"):
        supernet(space, context=SearchContext(directory=tmp_path))  # ../tables from tmp_path
    other = make_space('budget(params=1M, table="tiny.json")', location="end")
    with pytest.raises(MethodError, match="cannot price space 'tiny'.*differ"):
        supernet(other, context=SearchContext(directory=tmp_path / "tables"))
    latency = make_space('budget(latency=12ms, table="tiny.json")')
    with pytest.raises(MethodError, match="has no latency_ms"):
        supernet(latency, context=SearchContext(directory=tmp_path / "tables"))


def test_without_a_table_one_is_built_for_the_final_network_leaving_the_random_state():
    space = make_space("budget(macs=3M)")
    torch.manual_seed(5)
    model = compile_supernet(space, channels=4, layers=3, input_size=8)
    state = torch.get_rng_state()
    model.methods.search_start(SearchContext(dataset="cifar100", channels=8, layers=5))
    assert torch.equal(torch.get_rng_state(), state)  # building its modules drew nothing
    table = budget_of(model).budget.table
    assert (table.dataset, table.channels, table.layers) == ("cifar100", 8, 5)
    assert table.fixed == build_cost_table(space, dataset="cifar100", channels=8,
                                           layers=5).fixed


def test_the_budget_moves_with_the_supernet_and_stays_out_of_the_checkpoint():
    plain = compile_supernet(make_space("edge_normalisation"), channels=4, layers=3, input_size=8)
    model = supernet(make_space("edge_normalisation, budget(macs=3M)"))
    assert list(model.state_dict()) == list(plain.state_dict())
    buffers = dict(model.named_buffers())
    assert any(".budget." in name for name in buffers)
    assert all(value.dtype == torch.float64 for name, value in buffers.items()
               if ".budget." in name and value.is_floating_point())


def test_without_a_search_the_default_final_network_is_priced():
    space = parse_text(  # two nodes keep the C=36, 20-cell table quick
        "space two { operations = [none, skip_connect, sep_conv_3x3] attentions = [identity, se] "
        "nodes = 2 keep = 2 methods = [budget(macs=300M)] }").space()
    model = supernet(space, context=None)
    model.methods.architecture_loss(dict(model.named_architecture()), model.mixture_weights())
    table = budget_of(model).budget.table
    assert (table.dataset, table.channels, table.layers) == ("cifar10", 36, 20)


def test_epoch_end_records_the_expected_and_the_derived_cost():
    space = make_space("edge_normalisation, budget(macs=3M, form=target)")
    model = supernet(space)
    genotype = derive_genotype(model)
    with torch.no_grad():
        record = model.methods.epoch_end(model.mixture_weights(), genotype)
    keys = budget_keys("multiply_adds")
    assert list(record) == [keys["expected"], keys["derived"], keys["target"], keys["penalty"]]
    budget = budget_of(model).budget
    table = build_cost_table(space, channels=8, layers=5)
    assert record[keys["derived"]] == table.price(genotype)["multiply_adds"]
    assert isinstance(record[keys["derived"]], int) and record[keys["target"]] == 3_000_000
    expected = budget.expected(model.mixture_weights()).item()
    assert record[keys["expected"]] == pytest.approx(expected, rel=1e-12)
    assert record[keys["penalty"]] == pytest.approx(abs(expected / 3e6 - 1), rel=1e-12)


def test_stacked_seeds_get_their_own_penalty():
    space = make_space("edge_normalisation, budget(macs=3M, form=target)")
    models = [supernet(space, seed) for seed in (1, 2)]
    weights = [model.mixture_weights() for model in models]
    stacked = tuple(type(cells[0])(*(None if values[0] is None else torch.stack(values)
                                     for values in zip(*cells)))
                    for cells in zip(*weights))
    term = models[0].methods.architecture_loss({}, stacked)
    assert term.shape == (2,)
    for seed, (model, own) in enumerate(zip(models, weights)):
        alone = model.methods.architecture_loss({}, own)
        torch.testing.assert_close(term[seed], alone, rtol=1e-12, atol=0)
