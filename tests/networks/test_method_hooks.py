"""Search methods from outside attdarts (issue 20): made-up methods, each one catalog entry and one
class registered here, go through every stage: the language, the supernet, the step (a draw once
per step, second order included), derivation (masks, caps, derivation weights) and the loop
(epoch values, early stop). Nothing in attdarts names them.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from attdarts.language import kinds
from attdarts.language.catalog import Parameter
from attdarts.language.methods import METHODS, Method, register
from attdarts.language.printer import format_document
from attdarts.language.transform import parse_text
from attdarts.networks.derive import derivation_weights, derive_genotype
from attdarts.networks import grouping
from attdarts.networks.methods import Ban, Paths, SearchMethod
from attdarts.networks.supernet import compile_supernet
from attdarts.runs import data
from attdarts.runs.search import Bilevel, SearchConfig, run_search
from attdarts.runs.search.bilevel import virtual_step

pytestmark = pytest.mark.usefixtures("one_thread")

OPERATIONS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]


class SharpSoftmax(SearchMethod):
    """Weights softmax(alpha / tau): a method that makes the mixture weights."""

    def normalise(self, kind, raw, cell, draw):
        return F.softmax(raw / self.settings["tau"], dim=-1)


class NoisyLogits(SearchMethod):
    """A sampler: each step draws Gaussian noise g once, and the weights are softmax(alpha + g);
    without a draw (evaluation, derivation) they are softmax(alpha)."""

    draws = 0

    def draw(self, arch, random):
        NoisyLogits.draws += 1
        return {name: random.draw_like(value, lambda out, g: out.normal_(generator=g))
                for name, value in arch.items()}

    def normalise(self, kind, raw, cell, draw):
        if draw is None:
            return None
        return F.softmax(raw + draw[f"arch.{kind}_{cell}"], dim=-1)


class NoMaxPool(SearchMethod):
    """Switches max_pool_3x3 off in every operation mixture (P-DARTS's and DrNAS's pruning is a
    mask like this one); records the epoch and stops after epoch `stop`."""

    def candidate_mask(self, kind, cell):
        if kind != kinds.OPERATION:
            return None
        return torch.tensor([name != "max_pool_3x3" for name in OPERATIONS])

    def epoch_start(self, epoch, epochs):
        return {"made_up_epoch": epoch}

    def early_stop(self, epoch, epochs, genotype, trained):
        return "made up" if epoch + 1 == self.settings["stop"] else None


class NoSepConvInNormal(SearchMethod):
    """A derivation cap: takes sep_conv_3x3 from the normal cell, one edge at a time."""

    def cap(self, derivation):
        if derivation.cell != "normal":
            return None
        for node in derivation.kept:
            for choice in node:
                if derivation.operation_name(choice) == "sep_conv_3x3":
                    return Ban(choice.index, kinds.OPERATION, "sep_conv_3x3")
        return None


class ArgmaxPath(SearchMethod):
    """A single path: hard one-hot operation weights (straight-through softmax) and each edge
    computing its strongest operation alone, plus the other weights (GDAS's forward with
    `unchosen=weight`, without the noise)."""

    def normalise(self, kind, raw, cell, draw):
        soft = F.softmax(raw, dim=-1)
        if kind != kinds.OPERATION:
            return soft
        hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
        return hard - soft.detach() + soft

    def paths(self, weights, draw):
        return Paths(alpha=weights.alpha.argmax(dim=-1), unchosen=True)

    def capture_problem(self):
        return "argmax_path reads its paths on the host"


@pytest.fixture(autouse=True)
def made_up_methods():
    """The four methods, one `register` each; gone after the test."""
    entries = [
        Method("sharp_softmax", "a test", "softmax(alpha / tau)", f"{__name__}:SharpSoftmax",
               {"tau": Parameter(float, 0.5, minimum=1e-3)}, origin="tests",
               excludes=("noisy_logits",)),
        Method("noisy_logits", "a test", "softmax(alpha + g), g drawn once per step",
               f"{__name__}:NoisyLogits", origin="tests"),
        Method("no_max_pool", "a test", "masks max_pool_3x3", f"{__name__}:NoMaxPool",
               {"stop": Parameter(int, 100, minimum=1)}, origin="tests"),
        Method("no_sep_conv_in_normal", "a test", "caps sep_conv_3x3 at 0",
               f"{__name__}:NoSepConvInNormal", origin="tests"),
        Method("argmax_path", "a test", "one operation per edge", f"{__name__}:ArgmaxPath",
               origin="tests"),
    ]
    for entry in entries:
        register(entry)
    yield
    for entry in entries:
        del METHODS[entry.name]


def space_text(methods: str, nodes: int = 2) -> str:
    return ("space tiny {\n    operations = [" + ", ".join(OPERATIONS) + "]\n"
            "    attentions = [identity, se]\n"
            f"    nodes = {nodes}\n    keep = 2\n    location = after_every\n    mixing = sum\n"
            f"    methods = [{methods}]\n}}\n")


def supernet(methods: str, **options):
    torch.manual_seed(0)
    space = parse_text(space_text(methods)).space()
    return compile_supernet(space, channels=4, layers=3, input_size=8, init="randn",
                            **options).double()


def test_a_registered_method_is_part_of_the_language():
    text = space_text("sharp_softmax")
    assert format_document(parse_text(text)) == space_text("sharp_softmax(tau=0.5)")
    with pytest.raises(Exception, match="did you mean 'tau'"):
        parse_text(space_text("sharp_softmax(tua=2)"))
    with pytest.raises(Exception, match="cannot be combined with 'sharp_softmax'"):
        parse_text(space_text("sharp_softmax, noisy_logits"))


def test_a_method_that_makes_the_weights_is_used_by_the_forward_and_by_derivation():
    model = supernet("sharp_softmax(tau=0.25)")
    weights = model.mixture_weights()
    for cell, made in zip(("normal", "reduce"), weights):
        torch.testing.assert_close(made.alpha, F.softmax(model.arch.tensor("alpha", cell) / 0.25,
                                                         dim=-1))
    ranked = derivation_weights(model)
    torch.testing.assert_close(ranked["normal"]["beta"],
                               F.softmax(model.arch.beta_normal.detach() / 0.25, -1))
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(model(images), model(images, weights))


def tiny_config(**changes) -> SearchConfig:
    settings = dict(space_file="unused.geno", dataset="synthetic", epochs=2, batch_size=4,
                    channels=4, layers=3, max_steps_per_epoch=2, deterministic=True)
    settings.update(changes)
    return SearchConfig(**settings)


def batches():
    generator = torch.Generator().manual_seed(7)
    weight = (torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=generator),
              torch.tensor([0, 1, 2, 3]))
    arch = (torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=generator),
            torch.tensor([3, 2, 1, 0]))
    return weight, arch


def second_order_reference(model, momentum, draw, weight_batch, arch_batch, *, eta, config):
    """DARTS's second-order architecture gradient written out with the weights made from
    (alpha, the draw) in every pass: virtual step with momentum, central difference."""
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    names = [name for name, _ in model.named_weights()]
    arch_names = [name for name, _ in model.named_architecture()]
    w = {name: p.detach().clone() for name, p in model.named_weights()}
    a = {name: p.detach().clone().requires_grad_() for name, p in model.named_architecture()}

    def loss(weights, arch, batch):
        mixture = model.mixture_weights(arch, draw)
        logits = functional_call(model, (weights, buffers), (batch[0],), {"weights": mixture})
        return F.cross_entropy(logits, batch[1])

    leaves = {n: v.clone().requires_grad_() for n, v in w.items()}
    detached = {n: v.detach() for n, v in a.items()}
    grads = torch.autograd.grad(loss(leaves, detached, weight_batch), list(leaves.values()))
    moved = virtual_step(w, dict(zip(names, grads)), eta=eta, weight_decay=config.weight_decay,
                         momentum=config.momentum, buffers=momentum)
    moved = {n: v.requires_grad_() for n, v in moved.items()}
    grads = torch.autograd.grad(loss(moved, a, arch_batch), [*a.values(), *moved.values()])
    dalpha, vector = grads[:len(a)], grads[len(a):]
    eps = 0.01 / torch.linalg.vector_norm(torch.stack([v.norm() for v in vector]))

    def arch_gradient(sign):
        shifted = {n: w[n] + sign * eps * v for n, v in zip(names, vector)}
        return torch.autograd.grad(loss(shifted, a, weight_batch), list(a.values()))

    plus, minus = arch_gradient(1.0), arch_gradient(-1.0)
    return {name: d - eta * (p - m) / (2 * eps)
            for name, d, p, m in zip(arch_names, dalpha, plus, minus)}


def test_a_sampler_draws_once_per_step_and_every_pass_sees_that_draw(monkeypatch):
    """Second order: four passes (virtual step, validation, two for the Hessian-vector product)
    and one draw; the architecture gradient is DARTS's formula with that one draw."""
    model = supernet("noisy_logits")
    config = tiny_config(order=2)
    bilevel = Bilevel(model, config)
    weight_batch, arch_batch = batches()
    bilevel.weight_step(weight_batch)  # momentum buffers exist
    reference_model = copy.deepcopy(model)
    momentum = {name: bilevel.weight_optimizer.state[p]["momentum_buffer"].clone()
                for name, p in model.named_weights()}
    state = bilevel.generator.get_state()
    seen = []
    apply = bilevel._apply_arch_gradient
    monkeypatch.setattr(bilevel, "_apply_arch_gradient",
                        lambda grads: seen.append([g.clone() for g in grads]) or apply(grads))
    NoisyLogits.draws = 0
    bilevel.step(weight_batch, arch_batch)
    assert NoisyLogits.draws == 1

    bilevel.generator.set_state(state)  # the same draw, for the reference
    arch = dict(reference_model.named_architecture())
    draw = reference_model.methods.draw(arch, bilevel.random)
    expected = second_order_reference(reference_model, momentum, draw, weight_batch, arch_batch,
                                      eta=config.lr, config=config)
    for got, (name, want) in zip(seen[0], expected.items()):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=name)
    # a different draw gives a different gradient: the draw really is in every pass
    other = reference_model.methods.draw(arch, bilevel.random)
    moved = second_order_reference(reference_model, momentum, other, weight_batch, arch_batch,
                                   eta=config.lr, config=config)
    assert not torch.allclose(seen[0][0], moved["arch.alpha_normal"])


def test_a_mask_switches_a_candidate_off_in_the_forward_and_in_derivation():
    model = supernet("no_max_pool")
    with torch.no_grad():
        model.arch.alpha_normal[:, OPERATIONS.index("max_pool_3x3")] = 5.0
        model.arch.alpha_reduce[:, OPERATIONS.index("max_pool_3x3")] = 5.0
    for made in model.mixture_weights():
        assert (made.alpha[:, OPERATIONS.index("max_pool_3x3")] == 0).all()
        torch.testing.assert_close(made.alpha.sum(-1), torch.ones(5, dtype=torch.float64))
    genotype = derive_genotype(model)
    assert all(edge.operation.name != "max_pool_3x3" for cell in (genotype.normal, genotype.reduce)
               for node in cell.nodes for edge in node.edges)
    loss = F.cross_entropy(model(torch.randn(2, 3, 8, 8, dtype=torch.float64)),
                           torch.tensor([1, 2]))
    grad = torch.autograd.grad(loss, model.arch.alpha_normal)[0]
    assert (grad[:, OPERATIONS.index("max_pool_3x3")] == 0).all() and grad.abs().sum() > 0


def test_a_cap_takes_a_candidate_from_the_derived_cell():
    model = supernet("no_sep_conv_in_normal")
    with torch.no_grad():
        model.arch.alpha_normal[:, OPERATIONS.index("sep_conv_3x3")] = 5.0
        model.arch.alpha_reduce[:, OPERATIONS.index("sep_conv_3x3")] = 5.0
    genotype = derive_genotype(model)
    names = [[edge.operation.name for node in cell.nodes for edge in node.edges]
             for cell in (genotype.normal, genotype.reduce)]
    assert "sep_conv_3x3" not in names[0] and names[1] == ["sep_conv_3x3"] * 4


def test_the_loop_records_a_methods_epoch_values_and_stops_when_it_says(tmp_path):
    path = tmp_path / "tiny.geno"
    path.write_text(space_text("no_max_pool(stop=2)"))
    config = tiny_config(space_file=str(path), epochs=4, max_steps_per_epoch=1, channels=4)
    result = run_search(config, tmp_path / "run", device="cpu",
                        dataset=data.synthetic_dataset(train=True, size=16, resolution=8))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [m["made_up_epoch"] for m in metrics] == [0, 1]
    assert result.epochs == 2 and metrics[-1]["stopped_early"] == {"epoch": 2,
                                                                    "reason": "made up"}


@pytest.mark.parametrize("grouped", [False, True])
def test_a_single_path_computes_only_the_chosen_candidate(grouped, monkeypatch):
    """`CellWeights.paths` (a `paths` hook): each edge runs one operation, ``w_i o_i(x) +
    sum_{j != i} w_j``, and the straight-through gradient still reaches every operation weight.
    Grouped cells run a wave's chosen candidates through `grouping.forward`, plain cells one
    module per edge: both are counted."""
    model = supernet("argmax_path", grouped=grouped)
    assert model.methods.capture_problem() is not None  # never captured as a CUDA graph
    with torch.no_grad():
        model.arch.alpha_normal[:, OPERATIONS.index("sep_conv_3x3")] = 1.0
        model.arch.alpha_reduce[:, OPERATIONS.index("max_pool_3x3")] = 1.0
    ran, names = [], {}
    for cell in model.cells:
        for edge in cell.edges:
            for index, candidate in enumerate(edge.first.candidates):
                names[id(candidate)] = OPERATIONS[index]
                if not grouped:
                    candidate.register_forward_hook(
                        lambda module, args, out: ran.append(names[id(module)]))
    if grouped:
        original = grouping.forward

        def counted(modules, group):
            ran.extend(names[id(module)] for module in modules if id(module) in names)
            return original(modules, group)
        monkeypatch.setattr(grouping, "forward", counted)
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    loss = F.cross_entropy(model(images), torch.tensor([1, 2]))
    edges = sum(len(cell.edges) for cell in model.cells)
    assert len(ran) == edges  # one candidate per edge
    assert set(ran) == {"sep_conv_3x3", "max_pool_3x3"}
    grad = torch.autograd.grad(loss, model.arch.alpha_normal)[0]
    assert (grad != 0).all()  # straight-through: every operation weight learns

    edge = model.cells[0].edges[0]
    weights = model.mixture_weights()[0]
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    w = weights.alpha[0]
    chosen = OPERATIONS.index("sep_conv_3x3")
    assert weights.paths.alpha[0] == chosen
    expected = w[chosen] * edge.first.candidates[chosen](x) + (w.sum() - w[chosen])
    torch.testing.assert_close(edge.first(x, w, weights.paths.alpha[0], True), expected)
