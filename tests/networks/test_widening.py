"""Widening a kept supernet to more partial channels (DrNAS's second stage), in float64.

DrNAS's rule (xiangning-chen/DrNAS, net2wider.py) keeps every old channel in place and makes each
new one a copy of a random old one, without dividing the copies (Net2Net would). What that keeps:
a candidate that acts channel by channel (pools, their batch norm, skip) computes on the copied
channels what it did on their originals; a convolution block whose new input channels are zero
computes on its old output channels what it did, and copies on the new ones. A block that sums
over copied input channels (a separable convolution's second pointwise convolution) does not: its
copies add their share, which is DrNAS's rule, not a slip (the new channels see other inputs
anyway: the edge's next C/K channels).
"""

from __future__ import annotations

import pytest
import torch

from attdarts.language import ir
from attdarts.language.transform import parse_text
from attdarts.networks.methods.drnas import channel_map, widen_module
from attdarts.networks.mixtures import search_operation
from attdarts.networks.supernet import compile_supernet
from attdarts.networks.widening import candidate_modules, widen_optimizer_state, widen_supernet

pytestmark = pytest.mark.usefixtures("one_thread")

OPERATIONS = "max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3, dil_conv_3x3"


def pair(name: str, stride: int, old: int = 4, new: int = 6):
    """The candidate `name` built for `old` and for `new` channels, the second widened from the
    first; and the channel map (a fixed one where nothing had channels to grow)."""
    torch.manual_seed(0)
    narrow = search_operation(ir.Call(name=name), old, stride).double()
    for module in narrow.modules():  # statistics worth copying
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    wide = search_operation(ir.Call(name=name), new, stride).double()
    maps = widen_module(narrow, wide, torch.Generator().manual_seed(1))
    return narrow, wide, maps.get((old, new), channel_map(old, new, torch.Generator()))


@pytest.mark.parametrize("name, stride", [("max_pool_3x3", 1), ("avg_pool_3x3", 2),
                                          ("max_pool_3x3", 2), ("skip_connect", 1)])
def test_a_channelwise_candidate_computes_on_copied_channels_what_it_did(name, stride):
    """Pools (with their batch norm) and skip: widened(x[:, map]) is narrow(x)[:, map], in
    training and in evaluation (the running statistics were copied)."""
    narrow, wide, mapped = pair(name, stride)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    for train in (True, False):
        narrow.train(train)
        wide.train(train)
        torch.testing.assert_close(wide(x[:, mapped]), narrow(x)[:, mapped], rtol=0, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_convolution_block_keeps_its_old_outputs_on_zero_new_inputs(stride):
    """dil_conv (ReLU, depthwise, pointwise, batch norm): with the new input channels zero, the
    old output channels are the narrow block's and each new one is a copy of its origin."""
    narrow, wide, mapped = pair("dil_conv_3x3", stride)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    padded = torch.cat([x, torch.zeros(3, 2, 8, 8, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(wide(padded), narrow(x)[:, mapped], rtol=0, atol=1e-12)


def test_a_separable_convolution_is_not_preserved_by_drnas_rule():
    """The second pointwise convolution sums over copied channels without dividing them: the
    old output channels change (what DrNAS's net2wider does; the test pins the invariant's
    limit, not a number)."""
    narrow, wide, mapped = pair("sep_conv_3x3", 1)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    padded = torch.cat([x, torch.zeros(3, 2, 8, 8, dtype=torch.float64)], dim=1)
    assert not torch.allclose(wide(padded)[:, :4], narrow(x))


def supernets(layers: int = 3):
    text = ("space s {{ operations = [{}] attentions = [identity, se] nodes = 2 keep = 2 "
            "location = after_every mixing = sum methods = [partial_channels(k={}), drnas] }}")
    built = []
    for k in (6, 4):
        torch.manual_seed(k)
        built.append(compile_supernet(parse_text(text.format(OPERATIONS, k)).space(),
                                      channels=12, layers=layers, input_size=8,
                                      init="randn").double())
    return built


def test_the_widened_supernet_carries_every_tensor_and_grows_the_candidates():
    """Outside the candidates (stem, preprocessing, classifier, architecture) every tensor is
    copied; a grown candidate's leading channels are the old ones, in both mixtures (operations
    and attentions, which partial channels narrow too); the widened supernet runs."""
    narrow, wide = supernets()
    old_state = narrow.state_dict()
    grown = widen_supernet(narrow, wide)
    candidates = candidate_modules(wide)
    assert {name.rsplit(".candidates.", 1)[0].rsplit(".", 1)[1] for name in grown} == {
        "first", "then"}
    for name, value in wide.state_dict().items():
        source = old_state[name]
        if name in grown:
            assert any(name.startswith(prefix + ".") for prefix in candidates)
            assert torch.equal(value[tuple(slice(0, size) for size in source.shape)], source)
        else:
            assert torch.equal(value, source), name
    assert wide(torch.randn(2, 3, 8, 8, dtype=torch.float64)).shape == (2, 10)


def test_the_momentum_grows_as_its_weight():
    """SGD's momentum buffers of the grown weights are widened by the weights' own maps (DrNAS's
    `configure_optimizer`): the buffers are what widening a supernet whose weights were those
    buffers gives, with the same draws."""
    narrow, wide = supernets()
    weights = dict(narrow.named_weights())
    optimizer = torch.optim.SGD(list(weights.values()), lr=0.1, momentum=0.9)
    for parameter in weights.values():
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    torch.manual_seed(5)
    grown = widen_supernet(narrow, wide)
    new_weights = dict(wide.named_weights())
    fresh = torch.optim.SGD(list(new_weights.values()), lr=0.1, momentum=0.9)
    fresh.load_state_dict(widen_optimizer_state(
        optimizer.state_dict(), list(weights), grown,
        {name: value.shape for name, value in new_weights.items()}))
    buffers, other = supernets()  # the narrow supernet again, its weights the momentum buffers
    with torch.no_grad():
        for name, parameter in buffers.named_weights():
            parameter.copy_(optimizer.state[weights[name]]["momentum_buffer"])
    torch.manual_seed(5)
    widen_supernet(buffers, other)
    assert any(name in grown for name in new_weights)
    for name, parameter in other.named_weights():
        assert torch.equal(fresh.state[new_weights[name]]["momentum_buffer"], parameter), name
