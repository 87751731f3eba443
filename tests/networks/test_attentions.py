"""The newer attention modules (attdarts/networks/attentions/: eca, coord_attention, simam)
against references written here from their papers' equations, in float64; their parameter
counts; their settings in the DSL.

The registry-wide checks (shapes, widths, gradients, channels_last, bf16, x * mask, keywords
against the catalog) run them in tests/networks/test_operations.py; the grouped path in
tests/networks/test_grouping.py; export in tests/commands/test_export_model.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from attdarts.language import catalog
from attdarts.language.errors import DslError
from attdarts.language.transform import parse_text
from attdarts.networks import grouping
from attdarts.networks.attentions import (
    CoordinateAttention, EfficientChannelAttention, SimAM, adaptive_kernel_size,
)
from attdarts.networks.registry import ATTENTIONS

pytestmark = pytest.mark.usefixtures("one_thread")


def _input(channels: int, height: int = 6, width: int = 5, batch: int = 3) -> torch.Tensor:
    """A float64 map, not square, so that height and width cannot be swapped unnoticed."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomise(module: nn.Module) -> nn.Module:
    """Weights, biases and BN statistics away from their initial values, in float64."""
    generator = torch.Generator().manual_seed(3)
    module = module.double()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator, dtype=torch.float64))
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator, dtype=torch.float64) + 0.5)
    return module


# ---------------------------------------------------------------------------------------------
# ECA (Wang et al., CVPR 2020)


def _nearest_odd(t: float) -> int:
    """|t|_odd of ECA-Net's Eq. 12, by searching: the odd number closest to t (ties: the larger)."""
    odds = range(1, 2 * math.ceil(t) + 3, 2)
    return min(odds, key=lambda k: (abs(t - k), -k))


@pytest.mark.parametrize("channels", [1, 4, 8, 16, 32, 36, 64, 72, 127, 128, 144, 256, 512, 2048])
def test_eca_kernel_size_follows_the_papers_rule(channels):
    expected = _nearest_odd((math.log2(channels) + 1) / 2)  # gamma = 2, b = 1
    assert adaptive_kernel_size(channels) == expected
    assert _count(ATTENTIONS.get("eca")(channels, spatial=8)) == expected  # k weights, no bias


def test_eca_sizes_at_the_search_and_evaluation_widths():
    # the rule and the authors' default k = 3 agree up to 72 channels; at 144 and 256 it gives 5
    assert [adaptive_kernel_size(c) for c in (16, 32, 36, 64, 72, 144, 256)] == [3, 3, 3, 3, 3, 5, 5]
    assert ATTENTIONS.get("eca")(144, spatial=8, kernel_size=3).conv.kernel_size == (3,)
    assert ATTENTIONS.get("eca")(16, spatial=8, kernel_size=7).conv.kernel_size == (7,)
    with pytest.raises(ValueError, match="odd"):
        EfficientChannelAttention(16, kernel_size=4)


@pytest.mark.parametrize("kernel_size", [0, 1, 5, 9])
def test_eca_by_its_equation(kernel_size):
    """omega_i = sigmoid(sum_j w_j y_(i+j)) over the k neighbours of channel i (zero beyond the
    ends), y the channel means (ECA-Net, Eq. 9-10)."""
    channels = 12
    module = _randomise(ATTENTIONS.get("eca")(channels, spatial=6, kernel_size=kernel_size))
    x = _input(channels)
    weights = module.conv.weight.reshape(-1).tolist()
    k = len(weights)
    pooled = x.mean(dim=(2, 3))
    omega = torch.zeros_like(pooled)
    for i in range(channels):
        for j in range(k):
            neighbour = i + j - (k - 1) // 2
            if 0 <= neighbour < channels:
                omega[:, i] += weights[j] * pooled[:, neighbour]
    expected = x * torch.sigmoid(omega)[:, :, None, None]
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Coordinate attention (Hou et al., CVPR 2021)


@pytest.mark.parametrize("channels, width", [(4, 8), (16, 8), (36, 8), (300, 9), (512, 16)])
def test_coordinate_attention_counts(channels, width):
    """m = max(8, C // 32); 1x1 convolutions with biases C -> m, m -> C twice, BN of m:
    3mC + 3m + 2C (26C + 24 at m = 8; C = 36: 960)."""
    module = ATTENTIONS.get("coord_attention")(channels, spatial=8)
    assert module.conv_1.out_channels == width
    assert _count(module) == 3 * width * channels + 3 * width + 2 * channels
    assert _count(ATTENTIONS.get("coord_attention")(36, spatial=8)) == 960
    narrow = ATTENTIONS.get("coord_attention")(64, spatial=8, reduction=4, minimum_width=2)
    assert narrow.conv_1.out_channels == 16


def _hard_swish(t: torch.Tensor) -> torch.Tensor:
    return t * torch.clamp(t + 3, 0, 6) / 6  # MobileNetV3's h-swish, as the paper uses


def _coordinate_reference(module: CoordinateAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. 4-9 of the paper: z^h (mean over the width), z^w (mean over the height), one shared
    1x1 transform F1 with BN and h-swish on their concatenation, split, F_h and F_w with
    sigmoids, y = x * g^h * g^w. BN normalises over the batch and all H + W positions in
    training, with its running statistics in evaluation."""
    batch, channels, height, width = x.shape
    z_h = torch.stack([x[:, :, h, :].sum(dim=-1) / width for h in range(height)], dim=-1)
    z_w = torch.stack([x[:, :, :, w].sum(dim=-1) / height for w in range(width)], dim=-1)
    joined = torch.cat([z_h, z_w], dim=-1)  # (batch, C, H + W)
    conv_1 = module.conv_1.weight[:, :, 0, 0]
    f = torch.einsum("mc,bcp->bmp", conv_1, joined) + module.conv_1.bias[None, :, None]
    bn = module.bn
    if bn.training:
        mean = f.mean(dim=(0, 2), keepdim=True)
        variance = f.var(dim=(0, 2), unbiased=False, keepdim=True)
    else:
        mean, variance = bn.running_mean[None, :, None], bn.running_var[None, :, None]
    f = (f - mean) / torch.sqrt(variance + bn.eps) * bn.weight[None, :, None] + bn.bias[None, :, None]
    f = _hard_swish(f)
    f_h, f_w = f[:, :, :height], f[:, :, height:]

    def gate(conv: nn.Conv2d, strip: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(torch.einsum("cm,bmp->bcp", conv.weight[:, :, 0, 0], strip)
                             + conv.bias[None, :, None])

    g_h, g_w = gate(module.conv_h, f_h), gate(module.conv_w, f_w)
    return x * g_h[:, :, :, None] * g_w[:, :, None, :]


@pytest.mark.parametrize("training", [True, False])
def test_coordinate_attention_by_its_equations(training):
    module = _randomise(ATTENTIONS.get("coord_attention")(10, spatial=6)).train(training)
    x = _input(10)
    expected = _coordinate_reference(module, x)
    torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)
    along_height, along_width = module.gates(x)
    assert along_height.shape == (3, 10, 6, 1) and along_width.shape == (3, 10, 1, 5)


# ---------------------------------------------------------------------------------------------
# SimAM (Yang et al., ICML 2021)


def _simam_reference(x: torch.Tensor, e_lambda: float) -> torch.Tensor:
    """Eq. 5-6 of the paper: each neuron's minimal energy e* = 4 (var + lambda) /
    ((t - mean)^2 + 2 var + 2 lambda), mean and variance of its channel (variance over the
    M - 1 other neurons, M = H * W); out = x * sigmoid(1 / e*)."""
    batch, channels, height, width = x.shape
    out = torch.empty_like(x)
    for b in range(batch):
        for c in range(channels):
            plane = x[b, c]
            mean = plane.sum() / (height * width)
            variance = ((plane - mean) ** 2).sum() / (height * width - 1)
            energy = 4 * (variance + e_lambda) / ((plane - mean) ** 2 + 2 * variance + 2 * e_lambda)
            out[b, c] = plane * torch.sigmoid(1 / energy)
    return out


@pytest.mark.parametrize("e_lambda", [1e-4, 0.1, 4.0])
def test_simam_by_its_equations(e_lambda):
    module = ATTENTIONS.get("simam")(7, spatial=6, e_lambda=e_lambda)
    assert isinstance(module, SimAM) and _count(module) == 0
    x = _input(7)
    torch.testing.assert_close(module(x), _simam_reference(x, e_lambda), rtol=1e-12, atol=1e-12)


def test_simam_on_a_one_by_one_map_is_guarded_not_nan():
    """Their n = H*W - 1 is 0 on a 1x1 map (0/0: NaN); here the count is at least 1, and a
    channel without spread has d = 0 everywhere, so the mask is sigmoid(1/2)."""
    module = ATTENTIONS.get("simam")(4, spatial=1)
    x = _input(4, height=1, width=1)
    torch.testing.assert_close(module(x), x * torch.sigmoid(torch.tensor(0.5, dtype=x.dtype)))
    constant = torch.full((2, 4, 3, 3), 2.5, dtype=torch.float64)
    torch.testing.assert_close(module(constant), constant * torch.sigmoid(torch.tensor(0.5)).double())
    with pytest.raises(ValueError, match="positive"):
        SimAM(0.0)


# ---------------------------------------------------------------------------------------------
# The catalog and the DSL


def _genotype(attention: str) -> str:
    return ("genotype g {\n    normal {\n        n0 = sep_conv_3x3(c_k2) >> " + attention
            + "\n        c_k = concat(n0)\n    }\n    reduce {\n        n0 = max_pool_3x3(c_k1)\n"
            "        c_k = concat(n0)\n    }\n}\n")


@pytest.mark.parametrize("attention, message", [
    ("eca(kernel_size=4)", "g.geno:3:36: 'kernel_size' must be odd (or 0 for ECA-Net's rule"),
    ("simam(e_lambda=0)", "g.geno:3:36: 'e_lambda' must be positive"),
    ("simam(e_lambda=-0.5)", "g.geno:3:36: 'e_lambda' must be positive"),
    ("coord_attention(reduction=0)", "'reduction' is 0; it must be at least 1"),
    ("coord_attention(minimum_width=2.5)", "'minimum_width' must be a whole number"),
])
def test_settings_the_modules_cannot_take_are_located_errors(attention, message):
    with pytest.raises(DslError) as caught:
        parse_text(_genotype(attention), "g.geno")
    assert message in caught.value.render()


def test_settings_print_back_and_defaults_drop():
    text = _genotype("eca(kernel_size=5) + skip_connect(c_k1) >> simam(e_lambda=0.1)")
    genotype = parse_text(text).genotype()
    calls = [edge.attention for edge in genotype.normal.nodes[0].edges]
    assert [(c.name, c.kwargs) for c in calls] == [("eca", (("kernel_size", 5),)),
                                                    ("simam", (("e_lambda", 0.1),))]
    defaults = parse_text(_genotype("eca(kernel_size=0) + skip_connect(c_k1) >> "
                                    "simam(e_lambda=0.0001)")).genotype()
    assert [edge.attention.kwargs for edge in defaults.normal.nodes[0].edges] == [(), ()]


def test_the_newer_modules_are_masking_and_outside_the_authors_code():
    for name in ("eca", "coord_attention", "simam"):
        entry = catalog.ATTENTIONS[name]
        assert not entry.additive and entry.authors_name is None and entry.origin == "attdarts"
        assert entry.factory == f"attdarts.networks.attentions.{name}:{name}"
    assert {catalog.ATTENTIONS[n].label for n in ("eca", "coord_attention", "simam")} == {
        "ECA", "CA", "SimAM"}


# ---------------------------------------------------------------------------------------------
# Grouping rules: E edges at once give each edge's own numbers (and BN statistics)


@pytest.mark.parametrize("name, settings", [
    ("eca", {}), ("eca", {"kernel_size": 5}), ("coord_attention", {}), ("simam", {"e_lambda": 0.1}),
])
def test_grouped_rule_is_the_modules_own_and_matches_each_edge(name, settings):
    edges, channels = 3, 8
    plain = [_randomise(ATTENTIONS.get(name)(channels, spatial=6, **settings)) for _ in range(edges)]
    for index, module in enumerate(plain):  # different weights per edge
        for parameter in module.parameters():
            parameter.data.mul_(1 + index)
    stacked = copy.deepcopy(plain)
    assert grouping._groupable(plain[0]) and "grouped_mask" in vars(type(plain[0]))
    x = _input(edges * channels)
    group = grouping.Group(x, edges)
    chunks = x.unflatten(1, (edges, channels)).unbind(1)
    expected_masks = torch.stack([m.mask(c) for m, c in zip(plain, chunks)], dim=1)
    masks = grouping.mask(stacked, group)
    torch.testing.assert_close(masks.expand_as(expected_masks), expected_masks.expand_as(masks),
                               rtol=1e-12, atol=1e-12)
    expected = torch.cat([m(c) for m, c in zip(plain, chunks)], dim=1)
    torch.testing.assert_close(grouping.forward(stacked, group), expected, rtol=1e-12, atol=1e-12)
    for one, other in zip(plain, stacked):  # two forwards each: the statistics moved alike
        for (key, b), (_, c) in zip(one.named_buffers(), other.named_buffers()):
            torch.testing.assert_close(c, b, rtol=1e-12, atol=1e-12, msg=key)


# ---------------------------------------------------------------------------------------------
# Render and interop


def test_render_labels_the_newer_modules_by_their_papers_names():
    from attdarts.tools.render import genotype_dot

    text = genotype_dot(parse_text(_genotype("eca(kernel_size=5) + skip_connect(c_k1) >> "
                                             "coord_attention")).genotype())
    assert "<i>ECA<font point-size=\"9\">(kernel_size=5)</font></i>" in text
    assert "<i>CA</i>" in text
    assert "<i>SimAM</i>" in genotype_dot(parse_text(_genotype("simam")).genotype())


def test_the_authors_formats_refuse_the_newer_modules_at_their_place():
    from attdarts.tools import interop

    text = _genotype("simam + skip_connect(c_k1) >> se").replace(
        "max_pool_3x3(c_k1)", "max_pool_3x3(c_k1) + skip_connect(c_k2)")
    genotype = parse_text(text, "g.geno").genotype()
    for format in ("att-darts-py", "att-darts-json"):
        with pytest.raises(DslError) as caught:
            interop.export_genotypes([genotype], format)
        problem = caught.value.problems[0]
        assert problem.message == ("attention 'simam' is not in the Att-DARTS authors' code, so "
                                   "their format cannot hold it")
        assert (problem.span.line, problem.span.column) == (3, 36)
    # their operations alone still go out in DARTS's format
    assert "sep_conv_3x3" in interop.export_genotypes([genotype], "darts-py", drop_attention=True)


# ---------------------------------------------------------------------------------------------
# Every location and mixing, in the supernet


def _locations():
    from attdarts.language.locations import LOCATIONS

    for name, location in LOCATIONS.items():
        if not location.needs_attentions:
            continue
        yield pytest.param(name, "sum", id=f"{name}-sum")
        if location.product_allowed:
            yield pytest.param(name, "product", id=f"{name}-product")


@pytest.mark.parametrize("location, mixing", list(_locations()))
def test_the_newer_modules_search_in_every_location_and_mixing(location, mixing):
    from attdarts.networks.derive import derive_genotype
    from attdarts.networks.supernet import compile_supernet

    attentions = "eca, coord_attention, simam" if location.startswith(("mixed", "double")) \
        else "identity, eca, coord_attention, simam"
    space = parse_text(f"space s {{ operations = [none, skip_connect, sep_conv_3x3] "
                       f"attentions = [{attentions}] nodes = 2 keep = 2 location = {location} "
                       f"mixing = {mixing} }}").space()
    torch.manual_seed(0)
    model = compile_supernet(space, channels=4, layers=3, input_size=8, init="randn").double()
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([1, 7]))
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in model.named_architecture():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    genotype = derive_genotype(model)
    assert genotype.normal.nodes and genotype.reduce.nodes
