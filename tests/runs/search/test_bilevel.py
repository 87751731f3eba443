"""The authors' code as options of the search: second order, clipping, the `--recipe` presets.

References are written out here by hand in float64, following the authors' code step by step
(their alpha / beta are parameters of the model, so the whole parameter vector moves together).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch.func import functional_call

from attdarts.cli import cli
from attdarts.networks.attentions import BottleneckAttention
from attdarts.runs.search import (
    RECIPE_SETTINGS, Bilevel, SearchConfig, hessian_vector_product, recipe_config, run_search,
    with_bam_combine,
)
from attdarts.language.transform import parse_file, parse_text
from attdarts.networks.supernet import compile_supernet
from attdarts.runs import data

SPACE = """\
space small {
    operations = [none, max_pool_3x3, skip_connect, sep_conv_3x3]
    attentions = [identity, se, bam]
    nodes = 2
    keep = 2
    location = after_every
    mixing = sum
}
"""

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "small.geno"
    path.write_text(SPACE)
    return path


def config_for(space_file: Path, **changes) -> SearchConfig:
    settings = dict(space_file=str(space_file), dataset="synthetic", epochs=1, batch_size=4,
                    channels=4, layers=3, max_steps_per_epoch=1, deterministic=True)
    settings.update(changes)
    return SearchConfig(**settings)


def float64_bilevel(space_file: Path, **changes) -> tuple[Bilevel, tuple, tuple]:
    """A float64 supernet after one weight step (momentum buffers exist), and two batches."""
    torch.manual_seed(0)
    model = compile_supernet(parse_file(space_file).space(), channels=4, layers=3, input_size=8,
                             init="randn").double()
    bilevel = Bilevel(model, config_for(space_file, **changes))
    weight_batch = (torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3]))
    arch_batch = (torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([3, 2, 1, 0]))
    bilevel.weight_step(weight_batch)
    return bilevel, weight_batch, arch_batch


# ---------------------------------------------------------------------------------------------
# Item 2: the authors' second order


def authors_unrolled_reference(model, weight_batch, arch_batch, *, eta: float, weight_decay: float,
                               move_arch: bool = True, r: float = 0.01) -> list[torch.Tensor]:
    """The authors' `Arch.backward_step_unrolled`, written over one dict of every parameter.

    theta' = theta - eta (grad L_train(theta) + wd theta) for all of theta (no momentum);
    v = grad L_val(theta'); dalpha = v's architecture part; R = r / ||v||;
    result = dalpha - eta (grad_a L_train(theta + R v) - grad_a L_train(theta - R v)) / (2 R).
    `move_arch=False` moves the weights only in the difference (attdarts's old variant).
    """
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    names = [name for name, _ in model.named_parameters()]
    arch_names = [name for name, _ in model.named_architecture()]
    theta = {name: param.detach().clone() for name, param in model.named_parameters()}

    def loss(parameters, batch):
        return F.cross_entropy(functional_call(model, (parameters, buffers), (batch[0],)), batch[1])

    leaves = {name: value.clone().requires_grad_() for name, value in theta.items()}
    grads = torch.autograd.grad(loss(leaves, weight_batch), [leaves[n] for n in names])
    unrolled = {name: (theta[name] - eta * (g + weight_decay * theta[name])).requires_grad_()
                for name, g in zip(names, grads)}
    vector = dict(zip(names, torch.autograd.grad(loss(unrolled, arch_batch),
                                                 [unrolled[n] for n in names])))
    counted = names if move_arch else [n for n in names if n not in arch_names]
    radius = r / torch.cat([vector[n].reshape(-1) for n in counted]).norm()

    def arch_gradient(sign: float):
        moved = {name: (theta[name] + sign * radius * vector[name]
                        if name in counted else theta[name]).requires_grad_() for name in names}
        return torch.autograd.grad(loss(moved, weight_batch), [moved[n] for n in arch_names])

    plus, minus = arch_gradient(1.0), arch_gradient(-1.0)
    return [vector[name] - eta * (p - m) / (2 * radius)
            for name, p, m in zip(arch_names, plus, minus)]


def test_authors_second_order_matches_their_formula(space_file):
    bilevel, weight_batch, arch_batch = float64_bilevel(space_file, order=2, second_order="authors")
    config = bilevel.config
    expected = authors_unrolled_reference(bilevel.model, weight_batch, arch_batch,
                                          eta=bilevel.lr, weight_decay=config.weight_decay)
    got, _, _ = bilevel.unrolled_gradient(weight_batch, arch_batch)
    for value, reference in zip(got, expected):
        torch.testing.assert_close(value, reference, rtol=1e-7, atol=1e-11)

    # the reference tells the variants apart: moving the weights only is measurably different
    weights_only = authors_unrolled_reference(bilevel.model, weight_batch, arch_batch,
                                              eta=bilevel.lr, weight_decay=config.weight_decay,
                                              move_arch=False)
    assert max((a - b).abs().max() for a, b in zip(expected, weights_only)) > 1e-6


def test_authors_and_darts_second_order_differ(space_file):
    darts, weight_batch, arch_batch = float64_bilevel(space_file, order=2)
    authors, _, _ = float64_bilevel(space_file, order=2, second_order="authors")
    exact, _, _ = darts.unrolled_gradient(weight_batch, arch_batch)
    variant, _, _ = authors.unrolled_gradient(weight_batch, arch_batch)
    assert max((a - b).abs().max() for a, b in zip(exact, variant)) > 1e-6


def test_hvp_arch_vector_moves_the_architecture_and_counts_in_eps():
    weights = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    arch = {"a": torch.tensor([0.5], dtype=torch.float64, requires_grad=True)}

    def loss(w, a):  # d/da = 2 sum(w) a + a^2
        return (w["w"].sum() * a["a"] ** 2 + a["a"] ** 3 / 3).sum()

    v_w, v_a = {"w": torch.tensor([3.0, 4.0], dtype=torch.float64)}, {"a": torch.tensor([12.0],
                                                                                       dtype=torch.float64)}
    product, eps = hessian_vector_product(loss, weights, arch, v_w, r=0.01, arch_vector=v_a)
    assert float(eps) == pytest.approx(0.01 / 13.0)
    e = float(eps)

    def grad_a(w_sum, a):
        return 2 * w_sum * a + a ** 2

    plus = grad_a(3.0 + e * 7.0, 0.5 + e * 12.0)
    minus = grad_a(3.0 - e * 7.0, 0.5 - e * 12.0)
    assert float(product["a"]) == pytest.approx((plus - minus) / (2 * e), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Item 3: the authors' clipping


def reference_step(bilevel: Bilevel, weight_batch, arch_batch) -> tuple[float, dict]:
    """One iteration done by hand: (clip norm, weights after the SGD step).

    As the authors' train_search.py: the architecture step leaves its gradient (plus Adam's L2
    term, added in place by torch 1.0.1) in alpha.grad; the weight step's backward adds
    grad_a L_train; `clip_grad_norm_(model.parameters())` counts all of it.
    """
    copy_ = copy.deepcopy(bilevel)
    model, config = copy_.model, copy_.config
    arch = model.architecture()
    weights = dict(model.named_weights())
    if config.order == 2:
        arch_grads, _, _ = copy_.unrolled_gradient(weight_batch, arch_batch)
    else:
        val = F.cross_entropy(model(arch_batch[0]), arch_batch[1])
        arch_grads = torch.autograd.grad(val, arch)
    leftover = [g + config.arch_weight_decay * a.detach() for g, a in zip(arch_grads, arch)]
    for param, grad in zip(arch, arch_grads):
        param.grad = grad.detach().clone()
    copy_.arch_optimizer.step()
    copy_.arch_optimizer.zero_grad(set_to_none=True)

    train = F.cross_entropy(model(weight_batch[0]), weight_batch[1])
    grads = torch.autograd.grad(train, [*weights.values(), *arch], allow_unused=True)
    weight_grads = {name: (torch.zeros_like(p) if g is None else g)
                    for (name, p), g in zip(weights.items(), grads[:len(weights)])}
    squares = sum(float((g ** 2).sum()) for g in weight_grads.values())
    if config.clip == "authors":
        squares += sum(float(((left + g) ** 2).sum()) for left, g in zip(leftover, grads[len(weights):]))
    norm = squares ** 0.5
    scale = min(1.0, config.grad_clip / (norm + 1e-6))
    state = copy_.weight_optimizer.state
    expected = {}
    for name, param in weights.items():
        step = scale * weight_grads[name] + config.weight_decay * param.detach()
        buffer = state[param].get("momentum_buffer")
        if buffer is not None:
            step = config.momentum * buffer + step
        expected[name] = param.detach() - copy_.lr * step
    return norm, expected


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("clip", ["weights", "authors"])
def test_clip_norm_matches_a_float64_reference(space_file, order, clip):
    bilevel, weight_batch, arch_batch = float64_bilevel(
        space_file, order=order, clip=clip, grad_clip=0.05,
        second_order="authors" if order == 2 else "darts")
    norm, expected = reference_step(bilevel, weight_batch, arch_batch)
    assert norm > 0.05  # the clip binds, so the norm decides the step
    bilevel.step(weight_batch, arch_batch)
    assert float(bilevel.grad_norm) == pytest.approx(norm, rel=1e-10)
    for name, param in bilevel.model.named_weights():
        torch.testing.assert_close(param.detach(), expected[name], rtol=1e-9, atol=1e-12)
    assert all(param.grad is None for param in bilevel.model.architecture())


def test_authors_clip_counts_more_than_the_weights(space_file):
    weights_only, weight_batch, arch_batch = float64_bilevel(space_file, grad_clip=0.05)
    authors, _, _ = float64_bilevel(space_file, grad_clip=0.05, clip="authors")
    weights_only.step(weight_batch, arch_batch)
    authors.step(weight_batch, arch_batch)
    assert float(authors.grad_norm) > float(weights_only.grad_norm)
    moved = [not torch.equal(a, b) for a, b in zip(weights_only.model.weights(), authors.model.weights())]
    assert any(moved)


# ---------------------------------------------------------------------------------------------
# Item 4: recipes


def test_the_paper_recipe_is_the_default_config():
    assert SearchConfig(space_file="s.geno").model_dump() == recipe_config(
        "paper", space_file="s.geno").model_dump()
    paper = SearchConfig(space_file="s.geno")
    assert (paper.lr_min, paper.arch_init, paper.second_order, paper.clip, paper.bam_combine) == (
        0.0, "zeros", "darts", "weights", None)


def test_authors_recipe_and_explicit_settings_win():
    authors = recipe_config("authors", space_file="s.geno")
    assert authors.recipe == "authors"
    assert {key: getattr(authors, key) for key in RECIPE_SETTINGS} == {
        "lr_min": 0.001, "arch_init": "randn", "second_order": "authors", "clip": "authors",
        "bam_combine": "product"}
    mixed = recipe_config("authors", space_file="s.geno", lr_min=0.0, clip="weights")
    assert (mixed.lr_min, mixed.clip, mixed.arch_init) == (0.0, "weights", "randn")


def test_bam_combine_rewrites_the_space_ir(space_file):
    space = parse_file(space_file).space()
    product = with_bam_combine(space, "product")
    assert [c.name for c in product.attentions] == ["identity", "se", "bam"]
    assert product.attentions[2].kwargs_dict() == {"combine": "product"}
    assert with_bam_combine(product, "product") == product  # idempotent
    assert with_bam_combine(product, "sum").attentions[2].kwargs == ()  # sum is bam's default
    assert with_bam_combine(space, None) is space
    model = compile_supernet(product, channels=4, layers=3, input_size=8)
    bams = [m for m in model.modules() if isinstance(m, BottleneckAttention)]
    assert bams and all(m.product for m in bams)


def test_cli_recipe_authors_is_recorded_and_options_win(space_file, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "search", str(space_file), "--recipe", "authors", "--lr-min", "0", "--dataset",
        "synthetic", "--channels", "4", "--layers", "3", "--batch-size", "4", "--epochs", "1",
        "--max-steps-per-epoch", "1", "--device", "cpu", "--quiet", "--out", str(run)])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["recipe"], config["lr_min"], config["arch_init"], config["second_order"],
            config["clip"], config["bam_combine"]) == ("authors", 0.0, "randn", "authors",
                                                       "authors", "product")
    searched = parse_text((run / "space.geno").read_text()).space()
    assert searched.attentions[2].kwargs_dict() == {"combine": "product"}
    genotype = parse_file(run / "genotype.geno").genotype()
    for cell in (genotype.normal, genotype.reduce):
        for node in cell.nodes:
            for edge in node.edges:
                if edge.attention is not None and edge.attention.name == "bam":
                    assert edge.attention.kwargs_dict() == {"combine": "product"}


def test_run_with_the_authors_recipe(space_file, tmp_path):
    config = recipe_config("authors", **config_for(space_file, order=2).model_dump(
        exclude={"recipe", *RECIPE_SETTINGS}))
    images = data.synthetic_dataset(train=True, size=16, resolution=8)
    result = run_search(config, tmp_path / "run", device="cpu", dataset=images)
    assert result.epochs == 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["recipe"] == "authors"
