"""Operations, attention modules and their registries (attdarts.networks.registry, attdarts.networks.operations).

Every registry entry goes through the same parametrised checks: shapes,
tiny widths, gradients to every parameter, channels_last and bf16 autocast. Then each attention
module is checked against its paper's definition, computed by hand
from the module's own weights.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attdarts.language import catalog
from attdarts.networks.attentions import (
    BottleneckAttention,
    ConvBlockAttention,
    DoubleAttention,
    GatherExcite,
    IdentityAttention,
    MaskingAttention,
    SqueezeExcitation,
)
from attdarts.networks.operations import FactorizedReduce, ReLUConvBN
from attdarts.networks.registry import (
    ATTENTIONS, OPERATIONS, DuplicateNameError, UnknownNameError, resolve,
)

SIZE = 8
BATCH = 2
MASKING = [name for name in ATTENTIONS.names() if name != "double_attention"]


def _input(channels: int, size: int = SIZE) -> torch.Tensor:
    return torch.randn(BATCH, channels, size, size, generator=torch.Generator().manual_seed(0))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _assert_gradients_reach_every_parameter(module: nn.Module, out: torch.Tensor) -> None:
    (out.float() * torch.randn_like(out.float())).sum().backward()
    missing = [name for name, p in module.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"


# --- registry ---------------------------------------------------------------------------------


def test_registry_is_the_catalog_in_its_order():
    assert OPERATIONS.names() == tuple(catalog.OPERATIONS)
    assert ATTENTIONS.names() == tuple(catalog.ATTENTIONS)
    assert "cbam" in ATTENTIONS and "gamma" not in ATTENTIONS
    assert list(OPERATIONS) == list(catalog.OPERATIONS) and len(OPERATIONS) == len(catalog.OPERATIONS)


@pytest.mark.parametrize("entry", [*catalog.OPERATIONS.values(), *catalog.ATTENTIONS.values()],
                         ids=lambda entry: entry.name)
def test_every_catalog_factory_path_resolves_to_a_function_of_that_name(entry):
    factory = resolve(entry.factory)
    assert callable(factory) and factory.__name__ == entry.name
    assert (OPERATIONS if entry.kind == "operation" else ATTENTIONS).get(entry.name) is factory


def test_catalog_rejects_duplicates():
    with pytest.raises(DuplicateNameError, match="'se' is already in the catalog"):
        catalog.register(catalog.Entry("se", "operation", factory="x:y"))


def test_registry_miss_suggests_close_names():
    with pytest.raises(UnknownNameError) as caught:
        OPERATIONS.get("sep_conv_3x4")
    error = caught.value
    assert isinstance(error, KeyError)
    assert error.name == "sep_conv_3x4"
    assert error.suggestions[0] == "sep_conv_3x3"
    assert str(error).startswith("unknown operation 'sep_conv_3x4'; did you mean 'sep_conv_3x3'")
    assert str(UnknownNameError("attention", "zzz", ())) == "unknown attention 'zzz'"


def test_registry_module_does_not_import_torch():
    code = "import sys, attdarts.networks.registry; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ATTENTIONS.names())
def test_attention_keywords_match_catalog(name):
    signature = inspect.signature(ATTENTIONS.get(name))
    keywords = {
        key: parameter.default
        for key, parameter in signature.parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and key != "spatial"
    }
    assert keywords == {key: p.default for key, p in catalog.ATTENTIONS[name].parameters.items()}
    module = ATTENTIONS.get(name)(16, spatial=SIZE)
    assert getattr(module, "adds_residual") is catalog.ATTENTIONS[name].additive


@pytest.mark.parametrize("name", OPERATIONS.names())
def test_operation_signature(name):
    parameters = inspect.signature(OPERATIONS.get(name)).parameters
    assert list(parameters)[:2] == ["channels", "stride"]
    assert parameters["affine"].default is True and parameters["pool_bn"].default is False


# --- every entry: shapes, widths, gradients -------------------------------------------------


@pytest.mark.parametrize("channels", [4, 36])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", OPERATIONS.names())
def test_operation_shape_and_gradients(name, stride, channels):
    module = OPERATIONS.get(name)(channels, stride)
    x = _input(channels).requires_grad_()
    out = module(x)
    assert out.shape == (BATCH, channels, SIZE // stride, SIZE // stride)
    _assert_gradients_reach_every_parameter(module, out)


@pytest.mark.parametrize("name", OPERATIONS.names())
def test_operation_odd_size_stride_2(name):
    out = OPERATIONS.get(name)(4, 2)(_input(4, size=7))
    assert out.shape == (BATCH, 4, 4, 4)


@pytest.mark.parametrize("channels", [4, 36])
@pytest.mark.parametrize("name", ATTENTIONS.names())
def test_attention_shape_and_gradients(name, channels):
    module = ATTENTIONS.get(name)(channels, spatial=SIZE)
    x = _input(channels).requires_grad_()
    out = module(x)
    assert out.shape == x.shape
    _assert_gradients_reach_every_parameter(module, out)


def _entries():
    for name in OPERATIONS.names():
        for stride in (1, 2):
            build = lambda n=name, s=stride: OPERATIONS.get(n)(8, s)  # noqa: E731
            yield pytest.param(build, id=f"{name}-s{stride}")
    for name in ATTENTIONS.names():
        yield pytest.param(lambda n=name: ATTENTIONS.get(n)(8, spatial=SIZE), id=name)


@pytest.mark.parametrize("build", list(_entries()))
def test_channels_last_matches_contiguous(build):
    torch.manual_seed(0)
    module = build().eval()
    x = _input(8)
    expected = module(x)
    module = module.to(memory_format=torch.channels_last)
    out = module(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build", list(_entries()))
def test_bf16_autocast_forward_and_backward(build):
    torch.manual_seed(0)
    module = build().train()
    x = _input(8).to(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --- operations by definition ---------------------------------------------------------------


def test_none_returns_strided_zeros():
    x = _input(4, size=7)
    assert torch.equal(OPERATIONS.get("none")(4, 1)(x), torch.zeros_like(x))
    assert torch.equal(OPERATIONS.get("none")(4, 2)(x), torch.zeros(BATCH, 4, 4, 4))


def test_skip_connect_is_identity_or_factorized_reduce():
    assert isinstance(OPERATIONS.get("skip_connect")(4, 1), nn.Identity)
    assert isinstance(OPERATIONS.get("skip_connect")(4, 2), FactorizedReduce)


def test_factorized_reduce_halves_and_shifts():
    torch.manual_seed(0)
    module = FactorizedReduce(4, 6).eval()
    x = _input(4)
    relu = x.relu()
    expected = module.bn(torch.cat([module.conv_1(relu), module.conv_2(relu[:, :, 1:, 1:])], 1))
    torch.testing.assert_close(module(x), expected)
    # odd sizes: the shifted half is padded so both halves are ceil(7 / 2) = 4 wide
    assert module(_input(4, size=7)).shape == (BATCH, 6, 4, 4)


def test_pool_bn_and_affine():
    plain = OPERATIONS.get("avg_pool_3x3")(4, 1)
    with_bn = OPERATIONS.get("max_pool_3x3")(4, 1, affine=False, pool_bn=True)
    assert isinstance(plain, nn.AvgPool2d) and plain.count_include_pad is False
    batch_norms = [m for m in with_bn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batch_norms) == 1 and not batch_norms[0].affine and _count(with_bn) == 0
    # keywords the supernet passes to every operation are accepted (pool_bn ignored by convs)
    separable = OPERATIONS.get("sep_conv_3x3")(4, 1, affine=False, pool_bn=True)
    assert _count(separable) == 2 * (4 * 9 + 4 * 4)  # two depthwise + pointwise pairs, no BN


def test_operation_parameter_counts():
    channels = 16
    depthwise_pointwise = {k: channels * k * k + channels * channels for k in (3, 5, 7)}
    bn = 2 * channels
    expected = {
        "none": 0,
        "max_pool_3x3": 0,
        "avg_pool_3x3": 0,
        "sep_conv_3x3": 2 * (depthwise_pointwise[3] + bn),
        "sep_conv_5x5": 2 * (depthwise_pointwise[5] + bn),
        "sep_conv_7x7": 2 * (depthwise_pointwise[7] + bn),
        "dil_conv_3x3": depthwise_pointwise[3] + bn,
        "dil_conv_5x5": depthwise_pointwise[5] + bn,
        "conv_7x1_1x7": 2 * 7 * channels * channels + bn,
    }
    for name, count in expected.items():
        assert _count(OPERATIONS.get(name)(channels, 1)) == count, name
    assert _count(OPERATIONS.get("skip_connect")(channels, 2)) == channels * channels + bn
    assert _count(ReLUConvBN(24, channels, 1, 1, 0)) == 24 * channels + bn


def test_convolutions_have_no_bias():
    for name in OPERATIONS.names():
        for module in OPERATIONS.get(name)(8, 2).modules():
            if isinstance(module, nn.Conv2d):
                assert module.bias is None, name


# --- attention modules by definition --------------------------------------------------------


def test_attention_parameter_counts_at_16_channels():
    channels, hidden, spatial = 16, 1, SIZE  # hidden = 16 // 16
    width = channels // 4  # A^2: M = N = C / 4
    expected = {
        "identity": 0,
        "se": 2 * channels * hidden,
        "ge_theta_plus": channels * spatial * spatial + 2 * channels + 2 * channels * hidden,
        "bam": (channels * hidden + hidden) + 2 * hidden + (hidden * channels + channels)  # channel
        + (channels * hidden + hidden) + 2 * hidden  # 1x1 reduce + BN
        + 2 * (9 * hidden * hidden + hidden + 2 * hidden)  # two dilated 3x3 + BN
        + (hidden + 1),  # 1x1 to one map
        "cbam": (channels * hidden + hidden) + (hidden * channels + channels) + 2 * 7 * 7 + 2,
        "double_attention": 3 * (channels * width + width) + (width * channels + channels),
    }
    assert expected == {"identity": 0, "se": 32, "ge_theta_plus": 1088, "bam": 96, "cbam": 149,
                        "double_attention": 284}
    for name, count in expected.items():
        assert _count(ATTENTIONS.get(name)(channels, spatial=spatial)) == count, name


def test_hidden_width_is_at_least_one():
    module = ATTENTIONS.get("se")(4, spatial=SIZE)
    assert module.fc_1.out_features == 1
    assert ATTENTIONS.get("double_attention")(2, spatial=SIZE).conv_a.out_channels == 1
    assert ATTENTIONS.get("se")(36, spatial=SIZE).fc_1.out_features == 2


@pytest.mark.parametrize("name", MASKING)
def test_masking_attention_is_x_times_mask(name):
    torch.manual_seed(0)
    module = ATTENTIONS.get(name)(16, spatial=SIZE).eval()
    assert isinstance(module, MaskingAttention) and module.adds_residual is False
    x = _input(16)
    mask = module.mask(x)
    assert torch.broadcast_shapes(mask.shape, x.shape) == x.shape
    torch.testing.assert_close(module(x), x * mask)


def test_identity_mask_is_ones():
    module = IdentityAttention()
    x = _input(4)
    assert module(x) is x
    assert torch.equal(module.mask(x).expand_as(x), torch.ones_like(x))


def test_se_by_hand():
    torch.manual_seed(0)
    module = ATTENTIONS.get("se")(16, spatial=SIZE)
    assert isinstance(module, SqueezeExcitation)
    assert module.fc_1.bias is None and module.fc_2.bias is None
    x = _input(16)
    pooled = x.mean(dim=(2, 3))
    hidden = torch.relu(pooled @ module.fc_1.weight.T)
    expected = x * torch.sigmoid(hidden @ module.fc_2.weight.T)[:, :, None, None]
    torch.testing.assert_close(module(x), expected)


def test_ge_theta_plus_by_hand_and_real_size():
    torch.manual_seed(0)
    module = ATTENTIONS.get("ge_theta_plus")(16, spatial=SIZE).eval()
    assert isinstance(module, GatherExcite)
    assert module.gather.kernel_size == (SIZE, SIZE) and module.gather.groups == 16
    convs = [module.gather, module.conv_1, module.conv_2]
    assert all(conv.bias is None for conv in convs) and module.bn.affine
    x = _input(16)
    gathered = (x * module.gather.weight[:, 0]).sum(dim=(2, 3))[:, :, None, None]
    excited = module.conv_2(torch.relu(module.conv_1(module.bn(gathered))))
    torch.testing.assert_close(module(x), x * torch.sigmoid(excited), rtol=1e-4, atol=1e-5)
    # a map larger than the kernel gathers a larger map, resized back to the input
    small = ATTENTIONS.get("ge_theta_plus")(16, spatial=4)
    assert small(x).shape == x.shape


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_bam_combines_gates_as_defined(combine):
    torch.manual_seed(0)
    module = ATTENTIONS.get("bam")(16, spatial=SIZE, combine=combine).eval()
    assert isinstance(module, BottleneckAttention)
    x = _input(16)
    channel, spatial = module.gates(x)
    assert channel.shape == (BATCH, 16, 1, 1) and spatial.shape == (BATCH, 1, SIZE, SIZE)
    combined = channel + spatial if combine == "sum" else channel * spatial
    torch.testing.assert_close(module.mask(x), 1 + torch.sigmoid(combined))
    torch.testing.assert_close(module(x), x * (1 + torch.sigmoid(combined)))
    flipped = "product" if combine == "sum" else "sum"
    other = ATTENTIONS.get("bam")(16, spatial=SIZE, combine=flipped)
    other.load_state_dict(module.state_dict())  # identical parameters, different mask
    assert not torch.allclose(other.eval().mask(x), module.mask(x))
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(layers) == 6 and all(layer.bias is not None for layer in layers)
    convs = [m for m in module.spatial_gate if isinstance(m, nn.Conv2d)]
    dilated = [m for m in convs if m.kernel_size == (3, 3)]
    assert [m.dilation for m in dilated] == [(4, 4), (4, 4)]


def test_bam_default_is_the_papers_sum():
    assert ATTENTIONS.get("bam")(16, spatial=SIZE).product is False
    with pytest.raises(ValueError, match="combine"):
        ATTENTIONS.get("bam")(16, spatial=SIZE, combine="max")


def test_cbam_mask_is_channel_times_spatial():
    torch.manual_seed(0)
    module = ATTENTIONS.get("cbam")(16, spatial=SIZE).eval()
    assert isinstance(module, ConvBlockAttention)
    assert module.spatial_conv.bias is None and module.spatial_bn.momentum == 0.01
    assert all(layer.bias is not None for layer in module.mlp if isinstance(layer, nn.Linear))
    x = _input(16)
    mlp = module.mlp
    channel = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))[:, :, None, None]
    gated = x * channel
    pooled = torch.cat([gated.amax(1, keepdim=True), gated.mean(1, keepdim=True)], dim=1)
    spatial_logits = F.conv2d(pooled, module.spatial_conv.weight, padding=3)
    spatial = torch.sigmoid(module.spatial_bn(spatial_logits))
    torch.testing.assert_close(module.mask(x), channel * spatial)
    torch.testing.assert_close(module(x), x * channel * spatial)


def test_double_attention_adds_its_branch():
    torch.manual_seed(0)
    module = ATTENTIONS.get("double_attention")(16, spatial=SIZE)
    assert isinstance(module, DoubleAttention) and module.adds_residual is True
    assert not hasattr(module, "mask")
    x = _input(16)
    # the branch by hand: A softmax(B)^T, then times softmax(V) over channels
    features = module.conv_a(x).flatten(2)
    maps = module.conv_b(x).flatten(2).softmax(dim=-1)
    vectors = module.conv_v(x).flatten(2).softmax(dim=1)
    z = (features @ maps.transpose(1, 2) @ vectors).reshape(BATCH, 4, SIZE, SIZE)
    torch.testing.assert_close(module(x) - x, module.conv_out(z), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        module.conv_out.weight.zero_()
        module.conv_out.bias.zero_()
    assert torch.equal(module(x), x)
