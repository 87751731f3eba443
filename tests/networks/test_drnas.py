"""DrNAS (Chen et al., ICLR 2021): Dirichlet mixture weights, their pathwise gradient, the KL
regulariser and the pieces of its progressive schedule, in float64 against torch's
`Dirichlet.rsample` (what DrNAS's code calls), a hand-written statement of its gradient, and
torch's Dirichlet KL.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, kl_divergence

from attdarts.language.transform import parse_text
from attdarts.networks.derive import derive_genotype
from attdarts.networks.methods import CellWeights, Random
from attdarts.networks.methods.drnas import (
    channel_map, concentration, dirichlet_kl, dirichlet_weights, prune, widen_module, widen_tensor,
)
from attdarts.networks.mixtures import search_operation
from attdarts.networks.network import compile_network
from attdarts.networks.supernet import compile_supernet
from attdarts.runs import data
from attdarts.runs.search import Bilevel, SearchConfig, run_search

pytestmark = pytest.mark.usefixtures("one_thread")

OPERATIONS = "max_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5"


def space(methods: str = "drnas", location: str = "after_every", operations: str = OPERATIONS):
    attentions = "identity, se" if location != "no_attention" else ""
    return parse_text(f"space s {{ operations = [{operations}] attentions = [{attentions}] "
                      f"nodes = 3 keep = 2 location = {location} mixing = sum "
                      f"methods = [{methods}] }}").space()


def supernet(methods: str = "drnas", **options):
    torch.manual_seed(0)
    return compile_supernet(space(methods, **options), channels=4, layers=3, input_size=8,
                            init="randn").double()


def rows(seed: int = 0, shape=(5, 4)) -> torch.Tensor:
    """Raw weights on both sides of 0 (ELU's two branches)."""
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# The sample and its gradient


def test_weights_are_torchs_dirichlet_rsample_values_and_gradients():
    """With the same generator state, `draw` + `normalise` give what DrNAS's code computes,
    ``Dirichlet(F.elu(alpha) + 1).rsample()``, and the same gradient."""
    raw = rows().requires_grad_()
    upstream = rows(1)
    torch.manual_seed(5)
    reference = Dirichlet(F.elu(raw) + 1).rsample()
    (expected,) = torch.autograd.grad((reference * upstream).sum(), raw)

    model = supernet()
    random = Random([torch.Generator().manual_seed(5)])
    draw = model.methods.draw({"arch.alpha_normal": raw}, random)
    weights = model.methods.normalise("alpha", raw, "normal", draw)
    (gradient,) = torch.autograd.grad((weights * upstream).sum(), raw)
    torch.testing.assert_close(weights, reference, rtol=0, atol=0)
    torch.testing.assert_close(gradient, expected, rtol=1e-15, atol=1e-15)


def test_gradient_is_the_dirichlets_pathwise_gradient_written_out():
    """A fixed sample x of Dirichlet(a), a = ELU(raw) + 1, total T: dL/draw_i = ELU'(raw_i) D_i
    (g_i - sum_j x_j g_j), with D_i = -(dF/da_i) / f / (1 - x_i), F and f the CDF and density of
    x_i's marginal Beta(a_i, T - a_i), the derivative taken holding its second argument. D_i is
    computed here from SciPy's Beta quantile: x_i moves with a_i at a fixed quantile."""
    special = pytest.importorskip("scipy.special")
    raw = torch.tensor([[-1.2, 0.3, 0.0, 1.5], [0.4, -0.2, 2.0, -3.0]], dtype=torch.float64)
    sample = torch.tensor([[0.05, 0.25, 0.3, 0.4], [0.3, 0.2, 0.45, 0.05]], dtype=torch.float64)
    upstream = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.2, 0.0, -1.0, 1.5]], dtype=torch.float64)
    leaf = raw.clone().requires_grad_()
    weights = dirichlet_weights(leaf, sample)
    (gradient,) = torch.autograd.grad((weights * upstream).sum(), leaf)
    torch.testing.assert_close(weights, sample, rtol=0, atol=0)

    expected = torch.zeros_like(raw)
    for r in range(raw.shape[0]):
        a = [(value + 1.0 if value > 0 else float(torch.tensor(value).exp())) for value in
             raw[r].tolist()]
        total = sum(a)
        projected = [upstream[r, i] - sum(sample[r, j] * upstream[r, j] for j in range(4))
                     for i in range(4)]
        for i in range(4):
            x, other, step = sample[r, i].item(), total - a[i], 1e-6
            quantile = special.betainc(a[i], other, x)
            moved = (special.betaincinv(a[i] + step, other, quantile)
                     - special.betaincinv(a[i] - step, other, quantile)) / (2 * step)
            elu_slope = 1.0 if raw[r, i] > 0 else a[i]  # d(ELU + 1)/draw
            expected[r, i] = elu_slope * moved / (1 - x) * projected[i]
    # torch evaluates D_i by series approximations, good to about 1e-3 relative
    torch.testing.assert_close(gradient, expected, rtol=2e-3, atol=1e-8)


def test_masked_candidates_weigh_zero_and_the_rest_are_a_dirichlet_over_the_kept():
    raw = rows(2)
    raw[0, 1] = raw[3, 0] = raw[3, 3] = float("-inf")
    raw[4, :3] = float("-inf")  # one candidate left: weight 1, no gradient
    sample = torch._sample_dirichlet(concentration(rows(2)), generator=torch.Generator()
                                     .manual_seed(3))
    leaf = raw.clone().requires_grad_()
    weights = dirichlet_weights(leaf, sample)
    upstream = rows(4)
    (gradient,) = torch.autograd.grad((weights * upstream).sum(), leaf)
    assert torch.isfinite(gradient).all()
    kept = torch.isfinite(raw)
    assert (weights[~kept] == 0).all() and (gradient[~kept] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(5, dtype=torch.float64))
    assert weights[4, 3] == 1 and gradient[4, 3] == 0
    for r in range(4):  # each row: Dirichlet over its kept candidates, sample renormalised
        columns = kept[r].nonzero().flatten()
        sub = raw[r, columns].clone().requires_grad_()
        renormalised = sample[r, columns] / sample[r, columns].sum()
        alone = dirichlet_weights(sub, renormalised)
        (expected,) = torch.autograd.grad((alone * upstream[r, columns]).sum(), sub)
        torch.testing.assert_close(weights[r, columns], renormalised, rtol=0, atol=1e-15)
        torch.testing.assert_close(gradient[r, columns], expected, rtol=1e-14, atol=1e-15)


def test_each_seed_draws_from_its_own_generator():
    model = supernet()
    arch = {name: value.detach() for name, value in model.named_architecture()}
    alone = [model.methods.draw(arch, Random([torch.Generator().manual_seed(seed)]))[0]
             for seed in (1, 2)]
    stacked = {name: torch.stack([value, value + 0.5]) for name, value in arch.items()}
    generators = [torch.Generator().manual_seed(seed) for seed in (1, 2)]
    together = model.methods.draw(stacked, Random(generators, stacked=True))[0]
    shifted = model.methods.draw({name: value + 0.5 for name, value in arch.items()},
                                 Random([torch.Generator().manual_seed(2)]))[0]
    assert set(together) == {("alpha", "normal"), ("alpha", "reduce"), ("beta", "normal"),
                             ("beta", "reduce")}
    for key, value in together.items():
        torch.testing.assert_close(value[0], alone[0][key], rtol=0, atol=0)
        torch.testing.assert_close(value[1], shifted[key], rtol=0, atol=0)
        assert not torch.equal(value[0], alone[1][key])


def test_without_a_draw_the_weights_are_the_softmax_and_derivation_is_dartss():
    model = supernet()
    plain = supernet("partial_channels(k=1)")  # the same space, softmax weights
    plain.load_state_dict(model.state_dict())
    for cell, made in model.normalised_architecture().items():
        for kind, value in made.items():
            torch.testing.assert_close(value, F.softmax(model.arch.tensor(kind, cell), -1))
    assert derive_genotype(model).normal == derive_genotype(plain).normal
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(model(images), plain(images))


def test_the_architecture_step_is_drnas_first_order_step():
    """One first-order architecture step of `Bilevel` with DrNAS's draw, against DrNAS's own
    computation: alpha of each cell type -> Dirichlet(ELU + 1).rsample() (normal, then reduce,
    from the same generator state), cross-entropy, its gradient."""
    model = supernet("drnas", location="no_attention")
    config = SearchConfig(space_file="unused.geno", dataset="synthetic", batch_size=4, channels=4,
                          layers=3, arch_lr=6e-4, deterministic=True)
    bilevel = Bilevel(model, config)
    bilevel.generator.manual_seed(11)
    images = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator()
                         .manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3])

    reference = {name: value.detach().clone().requires_grad_()
                 for name, value in model.named_architecture()}
    torch.manual_seed(11)
    sampled = [Dirichlet(F.elu(reference[f"arch.alpha_{cell}"]) + 1).rsample()
               for cell in ("normal", "reduce")]
    logits = model(images, tuple(CellWeights(alpha=value) for value in sampled))
    expected = torch.autograd.grad(F.cross_entropy(logits, labels), list(reference.values()))

    captured = {}
    step = bilevel.arch_optimizer.step

    def record():
        captured.update({name: p.grad.clone() for name, p in model.named_architecture()})
        step()
    bilevel.arch_optimizer.step = record
    draw = bilevel.methods.draw(dict(zip(bilevel.arch_names, bilevel.arch_params)),
                                bilevel.random)
    bilevel.architecture_step_first_order((images, labels), draw)
    for (name, value), gradient in zip(reference.items(), expected):
        torch.testing.assert_close(captured[name], gradient, rtol=1e-12, atol=1e-15, msg=name)


# ---------------------------------------------------------------------------------------------
# The KL regulariser


def test_kl_is_the_dirichlet_kl_to_the_uniform_prior():
    raw = torch.stack([rows(6), rows(7)])  # (seeds, rows, candidates)
    expected = torch.stack([kl_divergence(Dirichlet(F.elu(part) + 1),
                                          Dirichlet(torch.ones_like(part))).sum()
                            for part in raw])
    torch.testing.assert_close(dirichlet_kl(raw), expected, rtol=1e-13, atol=1e-14)


def test_the_architecture_loss_has_the_kl_only_when_asked():
    model = supernet("drnas")
    arch = dict(model.named_architecture())
    assert model.methods.architecture_loss(arch, model.mixture_weights()) is None
    model = supernet("drnas(kl=0.001)")
    arch = dict(model.named_architecture())
    expected = 0.001 * sum(kl_divergence(Dirichlet(F.elu(value) + 1),
                                         Dirichlet(torch.ones_like(value))).sum()
                           for value in arch.values())
    torch.testing.assert_close(model.methods.architecture_loss(arch, model.mixture_weights()),
                               expected, rtol=1e-13, atol=1e-16)


# ---------------------------------------------------------------------------------------------
# The progressive schedule's pieces


def test_prune_keeps_the_largest_per_row_among_the_kept():
    raw = torch.tensor([[0.3, -0.1, 0.3, 0.9, 0.2], [1.0, 2.0, 3.0, 4.0, 5.0]],
                       dtype=torch.float64)
    pruned, mask = prune(raw, None, 3)
    assert mask.tolist() == [[True, False, True, True, False], [False, False, True, True, True]]
    assert pruned.tolist() == [[0.3, 0.0, 0.3, 0.9, 0.0], [0.0, 0.0, 3.0, 4.0, 5.0]]
    pruned, mask = prune(raw, mask, 2)  # ties go to the lower index
    assert mask.tolist() == [[True, False, False, True, False], [False, False, False, True, True]]
    with pytest.raises(ValueError, match="cannot keep 3 candidates of a row that keeps 2"):
        prune(raw, mask, 3)


@pytest.mark.parametrize("name, stride", [("sep_conv_3x3", 1), ("dil_conv_5x5", 2),
                                          ("skip_connect", 2), ("avg_pool_3x3", 1)])
def test_widen_copies_the_channels_and_random_copies(name, stride):
    """A candidate built for C/6 = 4 channels (C = 24) grown to C/4 = 6 channels: every entry of
    every parameter and buffer is the old entry its channels map to, one map per pair of sizes
    whose first channels are the old ones; the maps widen a momentum buffer alike."""
    from attdarts.language import ir

    torch.manual_seed(0)
    old = search_operation(ir.Call(name=name), 4, stride)
    new = search_operation(ir.Call(name=name), 6, stride)
    for module in old.modules():  # give the batch norms statistics worth copying
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
    maps = widen_module(old, new, torch.Generator().manual_seed(3))
    assert maps and all(mapped[:before].tolist() == list(range(before))
                        for (before, _), mapped in maps.items())
    old_state = dict(old.named_parameters()) | dict(old.named_buffers())
    for key, value in (dict(new.named_parameters()) | dict(new.named_buffers())).items():
        source = old_state[key]
        for index in itertools.product(*map(range, value.shape)):
            origin = tuple(int(maps[before, after][i]) if before != after else i
                           for i, before, after in zip(index, source.shape, value.shape))
            assert value[index] == source[origin], (key, index)
    momentum = {key: torch.randn_like(value) for key, value in old.named_parameters()}
    for key, value in new.named_parameters():
        assert widen_tensor(momentum[key], value.shape, maps).shape == value.shape
    assert new(torch.randn(2, 6, 8, 8)).shape == (2, 6, 8 // stride, 8 // stride)


def test_channel_map_keeps_the_old_channels_first():
    mapped = channel_map(4, 6, torch.Generator().manual_seed(0))
    assert mapped[:4].tolist() == [0, 1, 2, 3] and all(0 <= i < 4 for i in mapped[4:].tolist())
    with pytest.raises(ValueError, match="cannot widen 6 channels to 4"):
        channel_map(6, 4)


def test_a_first_stage_supernet_widens_into_the_second_stages():
    """Every candidate of DrNAS's first stage (partial channels K=6) widened into the second
    stage's supernet (K=4, the same space): the second stage runs with the copied weights."""
    text = ("space s {{ operations = [{}] nodes = 2 keep = 2 location = no_attention mixing = sum "
            "methods = [partial_channels(k={}), drnas] }}")
    first, second = (compile_supernet(parse_text(text.format(OPERATIONS, k)).space(), channels=12,
                                      layers=3, input_size=8) for k in (6, 4))
    generator = torch.Generator().manual_seed(0)
    for (name, old), (other, new) in zip(first.named_modules(), second.named_modules()):
        assert name == other
        if name.endswith(".first"):  # an edge's operation mixture
            for old_candidate, new_candidate in zip(old.candidates, new.candidates):
                widen_module(old_candidate, new_candidate, generator)
    second(torch.randn(2, 3, 8, 8))


# ---------------------------------------------------------------------------------------------
# A search


def test_a_short_drnas_search_derives_a_genotype_that_builds(tmp_path):
    path = tmp_path / "drnas.geno"
    path.write_text("space drnas { operations = [max_pool_3x3, skip_connect, sep_conv_3x3] "
                    "attentions = [identity, se] nodes = 2 keep = 2 location = after_every "
                    "mixing = sum methods = [partial_channels(k=2), drnas(kl=0.001)] }\n")
    config = SearchConfig(space_file=str(path), dataset="synthetic", epochs=2, batch_size=4,
                          channels=4, layers=3, max_steps_per_epoch=2, deterministic=True)
    result = run_search(config, tmp_path / "run", device="cpu",
                        dataset=data.synthetic_dataset(train=True, size=16, resolution=8))
    network = compile_network(result.genotype, channels=4, layers=3, auxiliary=False,
                              input_size=8)
    assert network(torch.randn(2, 3, 8, 8)).shape == (2, 10)
