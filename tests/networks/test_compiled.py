"""Compiled cells (attdarts.networks.compiled): regional torch.compile of the repeated cells.

The default tests trace with a recording backend (`Recorder`: Dynamo's graph, run as traced, which
is what ``backend="eager"`` does) and ``fullgraph=True``, so a graph break anywhere in a cell fails
the test; they compare with the eager model in float64. The real compiler (inductor) runs in one
slow test.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch

from attdarts.language import ir
from attdarts.language.locations import LOCATIONS
from attdarts.language.transform import parse_file, parse_text
from attdarts.networks.cell import CellModule, drop_path
from attdarts.networks.compiled import (
    compile_cells, compiled, distinct_cells, eager_cells, recompile_budget,
)
from attdarts.networks.network import compile_network
from attdarts.networks.stacking import Layer, stack_cells
from attdarts.networks.supernet import compile_supernet

GENOTYPES = Path(__file__).resolve().parents[2] / "genotypes"
ZOO = sorted(path.stem for path in GENOTYPES.glob("*.geno"))

pytestmark = pytest.mark.usefixtures("one_thread")
SLOW = pytest.mark.slow  # the default run keeps one case of each kind; these add the rest


class Recorder:
    """A torch.compile backend that keeps every graph Dynamo gives it and runs it as traced."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs.append(graph)
        return graph.forward


@pytest.fixture
def recorder():
    torch._dynamo.reset()
    yield Recorder()
    torch._dynamo.reset()


def calls(*names: str) -> tuple[ir.Call, ...]:
    return tuple(ir.Call(name=name) for name in names)


def assert_same_state(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Same parameter and buffer names, and the same values (running statistics included)."""
    state, expected = model.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value, rtol=1e-12, atol=1e-12, msg=name)


def distinct_layers(model: torch.nn.Module, *, layers: int, channels: int, stem: int,
                    spatial: int) -> int:
    """Distinct cells counted from the skeleton alone: what each cell is built for."""
    seen: list[Layer] = []

    def build(layer: Layer) -> torch.nn.Module:
        seen.append(layer)
        return model.cells[layer.index]

    stack_cells(build, layers=layers, channels=channels, channels_stem=stem, spatial=spatial)
    return len({tuple(layer.cell_arguments().values()) for layer in seen})


# ---------------------------------------------------------------------------------------------
# One compilation per distinct cell, not per cell


STACK = parse_text("""
genotype stack {
    normal {
        n0 = sep_conv_3x3(c_k1) + skip_connect(c_k2)
        c_k = concat(n0)
    }
    reduce {
        n0 = max_pool_3x3(c_k2) + sep_conv_3x3(c_k1)
        c_k = concat(n0)
    }
}
""").genotype()


class Chain(torch.nn.Module):
    """Four identical normal cells of STACK on a stem: one distinct cell, four times."""

    def __init__(self, grouped: bool) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1)
        layer = Layer(index=0, reduction=False, reduction_prev=False, channels_prev_prev=4,
                      channels_prev=4, channels=4, spatial_in=8)
        self.cells = torch.nn.ModuleList(
            CellModule(STACK.normal, **layer.cell_arguments(), drop_path_rule="darts")
            for _ in range(4))
        for cell in self.cells:
            cell.grouped = grouped
        self.drop = torch.tensor(0.0, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # two tensors: a cell given one tensor twice (as a network's first cell is) is guarded
        # on that aliasing and compiled apart from the others
        s0 = self.stem(x)
        s1 = s0.clone()
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, self.drop)
        return s1


@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "grouped"])
def test_identical_cells_compile_once(recorder, grouped):
    torch.manual_seed(0)
    reference = Chain(grouped).double()
    model = compile_cells(copy.deepcopy(reference), backend=recorder)
    assert distinct_cells(model) == 1
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for probability in (0.1, 0.3):  # a changing drop-path probability compiles nothing new
        model.drop.fill_(probability), reference.drop.fill_(probability)
        torch.manual_seed(1)
        out = model(x)
        torch.manual_seed(1)
        torch.testing.assert_close(out, reference(x), rtol=1e-12, atol=1e-12)
        assert len(recorder.graphs) == 1
    assert_same_state(model, reference)  # grouped batch norms wrote their statistics back
    model.eval(), reference.eval()
    torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)
    assert len(recorder.graphs) == 2  # once more for eval mode


def test_distinct_cells_follow_the_skeleton():
    model = compile_network(STACK, channels=4, layers=14, auxiliary=False, input_size=8)
    distinct = distinct_layers(model, layers=14, channels=4, stem=12, spatial=8)
    assert distinct_cells(model) == distinct == 9  # cells 2-3, 6-8 and 11-13 repeat
    assert recompile_budget(model) == 8 * 9


@pytest.mark.slow
@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "grouped"])
def test_a_network_compiles_once_per_distinct_cell(recorder, grouped):
    torch.manual_seed(0)
    reference = compile_network(STACK, channels=4, layers=14, auxiliary=False, input_size=8,
                                grouped=grouped).double()
    reference.hold_drop_path_in_tensor()
    model = compile_cells(copy.deepcopy(reference), backend=recorder)
    assert recompile_budget(model) <= torch._dynamo.config.recompile_limit
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for probability in (0.1, 0.3):  # the training loop's ramp compiles nothing new
        model.drop_path_prob = reference.drop_path_prob = probability
        torch.manual_seed(1)
        logits = model(x)
        torch.manual_seed(1)
        expected = reference(x)
        torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
        assert len(recorder.graphs) == 9
    assert_same_state(model, reference)
    model.eval(), reference.eval()
    torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)
    assert len(recorder.graphs) == 2 * 9


# ---------------------------------------------------------------------------------------------
# Every search location and mixing, plain and grouped: one graph per cell, eager's numbers


def _cases() -> list[tuple[str, str, bool]]:
    cases = []
    for name, location in LOCATIONS.items():
        mixings = ("sum", "product") if location.product_allowed and location.needs_attentions \
            else ("sum",)
        paths = (False, True) if location.groupable else (False,)
        cases += [(name, mixing, grouped) for mixing in mixings for grouped in paths]
    return cases


def _space(location: str, mixing: str, operations: tuple[str, ...],
           attentions: tuple[str, ...]) -> ir.Space:
    if not LOCATIONS[location].needs_attentions:
        attentions = ()
    return ir.Space(name="tiny", operations=calls(*operations), attentions=calls(*attentions),
                    nodes=2, location=location, mixing=mixing)


def _search_matches_eager(space: ir.Space, grouped: bool, recorder: Recorder) -> None:
    """One reduction cell (its edges from c_k2 and c_k1 have stride 2, those from n0 stride 1),
    one training-mode forward in float64."""
    torch.manual_seed(0)
    reference = compile_supernet(space, channels=4, layers=1, input_size=8, init="randn",
                                 grouped=grouped).double()
    model = compile_cells(copy.deepcopy(reference), backend=recorder)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)
    assert len(recorder.graphs) == 1  # one graph for the cell: no break
    assert_same_state(model, reference)


@pytest.mark.parametrize(("location", "mixing", "grouped"), _cases(),
                         ids=lambda value: {False: "plain", True: "grouped"}.get(value, value))
def test_every_location_and_mixing_traces_whole(recorder, location, mixing, grouped):
    space = _space(location, mixing, ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"),
                   ("identity", "ge_theta_plus"))
    _search_matches_eager(space, grouped, recorder)


@pytest.mark.parametrize(("mixing", "grouped"), [
    ("sum", True), pytest.param("sum", False, marks=SLOW),
    pytest.param("product", True, marks=SLOW), pytest.param("product", False, marks=SLOW),
], ids=["sum-grouped", "sum-plain", "product-grouped", "product-plain"])
def test_every_candidate_traces_whole(recorder, mixing, grouped):
    """All of the paper's operations and attentions (A^2 only where it may be mixed)."""
    space = parse_file(GENOTYPES / "spaces" / "att_darts.geno").space()
    attentions = tuple(call.name for call in space.attentions
                       if mixing == "sum" or call.name != "double_attention")
    operations = tuple(call.name for call in space.operations)
    _search_matches_eager(_space("after_every", mixing, operations, attentions), grouped,
                          recorder)


# ---------------------------------------------------------------------------------------------
# Every zoo genotype in the discrete network: drop path, auxiliary head, train and eval


@pytest.mark.parametrize("grouped", [True, pytest.param(False, marks=SLOW)],
                         ids=["grouped", "plain"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_genotype_traces_whole(recorder, name, grouped):
    genotype = parse_file(GENOTYPES / f"{name}.geno").genotype()
    torch.manual_seed(0)
    # 3 layers: a normal cell, a reduction cell and one after it; 32x32 so that the auxiliary
    # head after cell 2 sees its 8x8 map
    reference = compile_network(genotype, channels=4, layers=3, input_size=32,
                                grouped=grouped).double()
    reference.hold_drop_path_in_tensor()
    reference.drop_path_prob = 0.2
    model = compile_cells(copy.deepcopy(reference), backend=recorder)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(1)
    logits, auxiliary = model(x, aux=True)
    torch.manual_seed(1)
    expected, expected_auxiliary = reference(x, aux=True)
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(auxiliary, expected_auxiliary, rtol=1e-12, atol=1e-12)
    assert_same_state(model, reference)
    assert len(recorder.graphs) == 3  # one graph per cell
    if grouped and name != "att_darts":
        return  # eval mode: the paper's cell in the default run, every genotype in the slow one
    model.eval(), reference.eval()
    torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)
    assert len(recorder.graphs) == 2 * 3  # each cell once per mode


# ---------------------------------------------------------------------------------------------
# Gradients, state, the drop-path tensor, bad input


def test_gradients_match_through_aot_autograd():
    """AOTAutograd traces the backward too (as inductor does); every gradient is eager's."""
    torch._dynamo.reset()
    space = _space("after_every", "sum", ("none", "avg_pool_3x3", "skip_connect",
                                          "dil_conv_3x3"), ("identity", "cbam"))
    torch.manual_seed(0)
    reference = compile_supernet(space, channels=4, layers=1, input_size=8, init="randn",
                                 grouped=True).double()
    model = compile_cells(copy.deepcopy(reference), backend="aot_eager")
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model(x).square().sum().backward()
    reference(x).square().sum().backward()
    for (name, parameter), expected in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(parameter.grad, expected.grad, rtol=1e-10, atol=1e-12,
                                   msg=name)
    torch._dynamo.reset()


def test_functional_call_swaps_the_parameters_of_compiled_cells(recorder):
    """The second-order search runs the supernet on other weights with functional_call."""
    space = _space("after_every", "sum", ("none", "max_pool_3x3", "skip_connect",
                                          "sep_conv_3x3"), ("identity", "se"))
    torch.manual_seed(0)
    reference = compile_supernet(space, channels=4, layers=1, input_size=8, init="randn",
                                 grouped=True).double()
    model = compile_cells(copy.deepcopy(reference), backend=recorder)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    weights = {name: (p + 0.01 * torch.randn_like(p)).detach().requires_grad_()
               for name, p in reference.named_parameters()}
    outputs = [torch.func.functional_call(network, (weights, dict(network.named_buffers())),
                                          (x,)) for network in (model, reference)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-12, atol=1e-12)
    assert len(recorder.graphs) <= 2 <= recompile_budget(model)


def test_compiling_keeps_names_and_can_be_undone(recorder):
    model = compile_network(STACK, channels=4, layers=3, auxiliary=False, input_size=8)
    names = list(model.state_dict())
    assert not compiled(model)
    compile_cells(model, backend=recorder)
    assert compiled(model) and list(model.state_dict()) == names
    model.load_state_dict(compile_network(STACK, channels=4, layers=3, auxiliary=False,
                                          input_size=8).state_dict())
    assert not compiled(eager_cells(model))
    model.eval()
    model(torch.randn(2, 3, 8, 8))
    assert recorder.graphs == []


def test_drop_path_held_in_a_tensor_drops_as_the_formula_says():
    """Per sample: 0 with probability p, else 1 / (1 - p); p = 0 leaves the network unchanged."""
    torch.manual_seed(0)
    model = compile_network(STACK, channels=4, layers=3, auxiliary=False, input_size=8).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = model(x)  # drop_path_prob = 0: no masks on the float path
    model.hold_drop_path_in_tensor()
    assert model.drop_path_tensor.dtype == torch.float64 and "drop_path_tensor" not in (
        model.state_dict())
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # masks of ones
    model.drop_path_prob = 0.25
    assert model.drop_path_tensor.item() == 0.25 and model.drop_path_prob == 0.25

    edge = model.cells[0].nodes[0].edges[0]  # sep_conv_3x3: droppable
    assert edge.droppable
    h = torch.ones(4000, 1, 1, 1, dtype=torch.float64)
    dropped = drop_path(h, model.drop_path_tensor)
    values = set(dropped.flatten().tolist())
    assert values == {0.0, 1 / 0.75}
    assert abs((dropped == 0).double().mean().item() - 0.25) < 0.03


def test_compile_cells_needs_cells():
    with pytest.raises(ValueError, match="needs a model with cells"):
        compile_cells(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------
# The real compiler


@pytest.mark.slow
def test_inductor_compiles_a_tiny_network_to_eager_numbers():
    """Inductor (C++ on the CPU) on a tiny Att-DARTS network in training mode: outputs and
    gradients agree with eager to float32 rounding. Prints the compile time and the eager and
    compiled forward + backward times."""
    torch._dynamo.reset()
    genotype = parse_file(GENOTYPES / "att_darts.geno").genotype()
    torch.manual_seed(0)
    reference = compile_network(genotype, channels=8, layers=3, auxiliary=False, input_size=16,
                                grouped=True)
    reference.hold_drop_path_in_tensor()  # at 0: masks of ones, whichever generator draws them
    model = compile_cells(copy.deepcopy(reference))
    x = torch.randn(4, 3, 16, 16)

    def step(network: torch.nn.Module) -> list[torch.Tensor]:
        network.zero_grad()
        logits = network(x)
        logits.square().mean().backward()
        return [logits.detach(), *(p.grad for p in network.parameters())]

    started = time.perf_counter()
    compiled_results = step(model)
    compile_seconds = time.perf_counter() - started
    for result, expected in zip(compiled_results, step(reference)):
        torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-5)

    def seconds(network: torch.nn.Module) -> float:
        started = time.perf_counter()
        for _ in range(5):
            step(network)
        return (time.perf_counter() - started) / 5

    print(f"compile {compile_seconds:.1f} s; step eager {1e3 * seconds(reference):.1f} ms, "
          f"compiled {1e3 * seconds(model):.1f} ms")
    torch._dynamo.reset()
