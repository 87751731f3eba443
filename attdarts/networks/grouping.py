"""Grouped forward passes: one candidate on many edges of a search cell as a single kernel.

A search cell runs every candidate operation and attention on each of its 14 edges: thousands of
tiny kernels per iteration, which leaves a GPU waiting on launches (benchmarks/results/). Edges
that can run at the same time (all those reading the cell's inputs, then all those reading n0,
...) are stacked along the channels instead: a `Group` holds E edges' C-channel maps as one
``(N, E*C, H, W)`` tensor, edge-major. Each candidate then runs once for the whole group:

- a convolution concatenates its E per-edge weights and multiplies `groups` by E (a 1x1 becomes
  an E-group convolution, a depthwise one stays depthwise), a linear layer likewise;
- a batch norm runs over the E*C channels, which is exactly E batch norms since channels are
  normalised independently; the running statistics are written back to each edge's buffers;
- ReLU, pooling and the other per-channel layers run on the stacked map as they are.

The parameters stay in the per-edge modules, so state dicts, checkpoints and derivation do not
change; they are concatenated at each forward (autograd splits the gradient back), so the
gradients are those of the per-edge computation. A module this file does not know runs edge by
edge (`_each`), so any registered candidate works, only without the saving.

Inside `deferred_statistics()` (the supernet's forward) the running-statistics write-backs of all
batch norms are queued and done at the end with two multi-tensor operations, instead of three
small operations per batch norm and wave.

`forward(modules, group)` returns ``(N, E*C', H', W')``; `mask(modules, group)` returns a masking
attention's mask as ``(N, E, c, h, w)``, broadcastable against ``group.split(group.x)``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attdarts.networks.operations import (
    BottleneckAttention,
    ConvBlockAttention,
    DoubleAttention,
    FactorizedReduce,
    GatherExcite,
    IdentityAttention,
    SqueezeExcitation,
    Zero,
)

__all__ = ["Group", "batch_norm", "conv2d", "deferred_statistics", "forward", "linear", "mask"]

Modules = Sequence[nn.Module]


class Group:
    """E edges' maps stacked edge-major along the channels: ``x`` is ``(N, E*C, H, W)``."""

    def __init__(self, x: Tensor, edges: int) -> None:
        self.x = x
        self.edges = edges
        self._relu: Tensor | None = None

    @property
    def relu(self) -> Tensor:
        """relu(x), computed once for every candidate that starts with a ReLU."""
        if self._relu is None:
            self._relu = F.relu(self.x)
        return self._relu

    def split(self, t: Tensor) -> Tensor:
        """``(N, E*C, ...)`` -> ``(N, E, C, ...)`` (a view)."""
        return t.unflatten(1, (self.edges, -1))


# ---------------------------------------------------------------------------------------------
# Layers over E edges


def _cat(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def conv2d(x: Tensor, convs: Modules, edges: int) -> Tensor:
    """E convolutions of the same shape as one: weights concatenated, groups times E."""
    first = convs[0]
    weight = _cat([conv.weight for conv in convs])
    bias = None if first.bias is None else _cat([conv.bias for conv in convs])
    return F.conv2d(x, weight, bias, first.stride, first.padding, first.dilation,
                    first.groups * edges)


def linear(x: Tensor, linears: Modules, edges: int) -> Tensor:
    """E linear layers on ``(N, E*in)``: one grouped 1-wide convolution, ``(N, E*out)``."""
    first = linears[0]
    weight = _cat([layer.weight for layer in linears]).unsqueeze(-1)
    bias = None if first.bias is None else _cat([layer.bias for layer in linears])
    return F.conv1d(x.unsqueeze(-1), weight, bias, groups=edges).squeeze(-1)


class _Pending(threading.local):
    """Running-statistics write-backs queued by `deferred_statistics` (per thread)."""

    queue: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None


_PENDING = _Pending()


@contextlib.contextmanager
def deferred_statistics() -> Iterator[None]:
    """Queue the running-statistics write-backs of grouped batch norms run inside; leaving writes
    them all with one multi-tensor copy and one multi-tensor increment. Each batch norm must run
    at most once inside (true of a supernet forward)."""
    outer = _PENDING.queue
    queue: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
    _PENDING.queue = queue
    try:
        yield
    finally:
        _PENDING.queue = outer
    destinations, sources, counters = queue
    if destinations:
        torch._foreach_copy_(destinations, sources)
    if counters:
        torch._foreach_add_(counters, 1)


def batch_norm(x: Tensor, norms: Modules, edges: int) -> Tensor:
    """E batch norms as one over E*C channels, updating each module's running statistics as its
    own forward would (momentum, unbiased variance, `num_batches_tracked`), at once or, inside
    `deferred_statistics`, when it ends."""
    first = norms[0]
    weight = _cat([norm.weight for norm in norms]) if first.affine else None
    bias = _cat([norm.bias for norm in norms]) if first.affine else None
    if first.running_mean is None:
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, first.eps)
    means = [norm.running_mean for norm in norms]
    variances = [norm.running_var for norm in norms]
    mean, var = _cat(means), _cat(variances)
    out = F.batch_norm(x, mean, var, weight, bias, first.training, first.momentum, first.eps)
    if first.training:
        counters = [norm.num_batches_tracked for norm in norms]
        destinations, sources = [], []
        if edges > 1:  # a single edge updated its own buffers in place
            channels = first.num_features
            destinations = means + variances
            sources = [*mean.split(channels), *var.split(channels)]
        queue = _PENDING.queue
        if queue is None:
            torch._foreach_add_(counters, 1)
            if destinations:
                torch._foreach_copy_(destinations, sources)
        else:
            queue[0].extend(destinations)
            queue[1].extend(sources)
            queue[2].extend(counters)
    return out


def _norm_groupable(norm: nn.Module) -> bool:
    # momentum=None (cumulative average) would need the counter on the host
    return norm.momentum is not None and (norm.running_mean is None or norm.track_running_stats)


# ---------------------------------------------------------------------------------------------
# Sequences of plain layers (separable / dilated convolutions, pool + BN, gates)


_PER_CHANNEL = (nn.MaxPool2d, nn.AvgPool2d, nn.Identity)


def _layer_groupable(layer: nn.Module, *, linear: bool) -> bool:
    """Whether `_run_layers` reproduces `layer` exactly (exact types: a subclass may change its
    forward, as SyncBatchNorm does). `linear`: a Linear is known to see (N, features) inputs."""
    kind = type(layer)
    if kind is nn.Conv2d:
        return layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        return _norm_groupable(layer)
    if kind is nn.Linear:
        return linear
    return kind is nn.ReLU or kind in _PER_CHANNEL


def _run_layers(layers: Sequence[Modules], x: Tensor, edges: int) -> Tensor:
    """Run, position by position, the layers of E sequences of the same shape."""
    for group in layers:
        layer = group[0]
        if isinstance(layer, nn.ReLU):
            x = F.relu(x)
        elif isinstance(layer, nn.Conv2d):
            x = conv2d(x, group, edges)
        elif isinstance(layer, nn.Linear):
            x = linear(x, group, edges)
        elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            x = batch_norm(x, group, edges)
        else:  # per-channel and parameter-free: pooling, identity
            x = layer(x)
    return x


def _layers_of(sequences: Modules) -> list[list[nn.Module]]:
    return [list(position) for position in zip(*sequences)]


def _sequential_groupable(sequence: nn.Sequential) -> bool:
    # a candidate operation sees (N, C, H, W): a Linear there would act on W, not on channels
    return all(_layer_groupable(layer, linear=False) for layer in sequence)


def _sequential(modules: Modules, group: Group) -> Tensor:
    layers = _layers_of(modules)
    if isinstance(layers[0][0], nn.ReLU):  # share relu(x) between the candidates
        return _run_layers(layers[1:], group.relu, group.edges)
    return _run_layers(layers, group.x, group.edges)


# ---------------------------------------------------------------------------------------------
# Operations


def _factorized_reduce(modules: Modules, group: Group) -> Tensor:
    x = group.relu
    shifted = x[:, :, 1:, 1:]
    pad_height, pad_width = x.shape[2] % 2, x.shape[3] % 2
    if pad_height or pad_width:
        shifted = F.pad(shifted, (0, pad_width, 0, pad_height))
    first = group.split(conv2d(x, [m.conv_1 for m in modules], group.edges))
    second = group.split(conv2d(shifted, [m.conv_2 for m in modules], group.edges))
    joined = torch.cat([first, second], dim=2).flatten(1, 2)  # per edge: conv_1 then conv_2
    return batch_norm(joined, [m.bn for m in modules], group.edges)


def _identity(modules: Modules, group: Group) -> Tensor:
    return group.x


def _per_channel(modules: Modules, group: Group) -> Tensor:
    """Zero and bare pooling: per channel, no parameters, the same settings on every edge."""
    return modules[0](group.x)


# ---------------------------------------------------------------------------------------------
# Attention masks, ``(N, E, c, h, w)``


def _squeeze_excitation_mask(modules: Modules, group: Group) -> Tensor:
    edges = group.edges
    squeezed = group.x.mean(dim=(2, 3))  # (N, E*C)
    hidden = F.relu(linear(squeezed, [m.fc_1 for m in modules], edges))
    excited = linear(hidden, [m.fc_2 for m in modules], edges)
    return group.split(torch.sigmoid(excited))[..., None, None]


def _gather_excite_mask(modules: Modules, group: Group) -> Tensor:
    edges, x = group.edges, group.x
    gathered = conv2d(x, [m.gather for m in modules], edges)
    gathered = batch_norm(gathered, [m.bn for m in modules], edges)
    gathered = F.relu(conv2d(gathered, [m.conv_1 for m in modules], edges))
    gathered = conv2d(gathered, [m.conv_2 for m in modules], edges)
    if gathered.shape[-2:] != (1, 1):
        gathered = F.interpolate(gathered, size=x.shape[-2:], mode="nearest")
    return group.split(torch.sigmoid(gathered))


def _bottleneck_mask(modules: Modules, group: Group) -> Tensor:
    edges, x = group.edges, group.x
    channel = _run_layers(_layers_of([m.channel_gate for m in modules]), x.mean(dim=(2, 3)), edges)
    spatial = _run_layers(_layers_of([m.spatial_gate for m in modules]), x, edges)
    channel = group.split(channel)[..., None, None]  # (N, E, C, 1, 1)
    spatial = spatial.unsqueeze(2)  # (N, E, 1, H, W)
    combined = channel * spatial if modules[0].product else channel + spatial
    return 1.0 + torch.sigmoid(combined)


def _cbam_channel(modules: Modules, group: Group) -> Tensor:
    layers = _layers_of([m.mlp for m in modules])
    x = group.x
    pooled = (_run_layers(layers, x.mean(dim=(2, 3)), group.edges)
              + _run_layers(layers, x.amax(dim=(2, 3)), group.edges))
    return group.split(torch.sigmoid(pooled))[..., None, None]


def _cbam_spatial(modules: Modules, gated: Tensor, edges: int) -> Tensor:
    """`gated` is ``(N, E, C, H, W)``; returns ``(N, E, 1, H, W)``."""
    pooled = torch.stack([gated.amax(dim=2), gated.mean(dim=2)], dim=2).flatten(1, 2)
    conv = conv2d(pooled, [m.spatial_conv for m in modules], edges)  # (N, E, H, W)
    return torch.sigmoid(batch_norm(conv, [m.spatial_bn for m in modules], edges)).unsqueeze(2)


def _cbam_mask(modules: Modules, group: Group) -> Tensor:
    channel = _cbam_channel(modules, group)
    return channel * _cbam_spatial(modules, group.split(group.x) * channel, group.edges)


def _cbam(modules: Modules, group: Group) -> Tensor:
    gated = group.split(group.x) * _cbam_channel(modules, group)
    return (gated * _cbam_spatial(modules, gated, group.edges)).flatten(1, 2)


def _double_attention(modules: Modules, group: Group) -> Tensor:
    edges, x = group.edges, group.x
    batch, _, height, width = x.shape

    def project(name: str) -> Tensor:  # (N*E, M, H*W)
        out = conv2d(x, [getattr(m, name) for m in modules], edges)
        return out.reshape(batch * edges, -1, height * width)

    features = project("conv_a")
    maps = torch.softmax(project("conv_b"), dim=-1)
    vectors = torch.softmax(project("conv_v"), dim=1)
    descriptors = torch.bmm(features, maps.transpose(1, 2))
    distributed = torch.bmm(descriptors, vectors).reshape(batch, -1, height, width)
    return x + conv2d(distributed, [m.conv_out for m in modules], edges)


def _masked(mask_of: Callable[[Modules, Group], Tensor]) -> Callable[[Modules, Group], Tensor]:
    def run(modules: Modules, group: Group) -> Tensor:
        return (group.split(group.x) * mask_of(modules, group)).flatten(1, 2)
    return run


# ---------------------------------------------------------------------------------------------
# Dispatch: exact module type -> grouped implementation


_MASKS: dict[type, Callable[[Modules, Group], Tensor]] = {
    SqueezeExcitation: _squeeze_excitation_mask,
    GatherExcite: _gather_excite_mask,
    BottleneckAttention: _bottleneck_mask,
    ConvBlockAttention: _cbam_mask,
}

_FORWARDS: dict[type, Callable[[Modules, Group], Tensor]] = {
    nn.Identity: _identity,
    IdentityAttention: _identity,
    Zero: _per_channel,
    nn.MaxPool2d: _per_channel,
    nn.AvgPool2d: _per_channel,
    FactorizedReduce: _factorized_reduce,
    SqueezeExcitation: _masked(_squeeze_excitation_mask),
    GatherExcite: _masked(_gather_excite_mask),
    BottleneckAttention: _masked(_bottleneck_mask),
    ConvBlockAttention: _cbam,
    DoubleAttention: _double_attention,
}

def _groupable(module: nn.Module) -> bool:
    kind = type(module)
    if isinstance(module, nn.Sequential) and kind.forward is nn.Sequential.forward:
        return len(module) > 0 and _sequential_groupable(module)
    if kind not in _FORWARDS:
        return False
    # the layers inside (their Linears see pooled (N, C) vectors) must be the plain ones, e.g. no
    # SyncBatchNorm after convert_sync_batchnorm
    return all(_layer_groupable(layer, linear=True) for layer in module.modules()
               if layer is not module and type(layer) is not nn.Sequential)


def _each(modules: Modules, group: Group) -> Tensor:
    """Fallback: edge by edge."""
    chunks = group.split(group.x).unbind(1)
    return torch.cat([module(chunk) for module, chunk in zip(modules, chunks)], dim=1)


def forward(modules: Modules, group: Group) -> Tensor:
    """The candidate `modules` (one per edge, same type and shape) on `group`: (N, E*C', H', W')."""
    first = modules[0]
    if not _groupable(first):
        return _each(modules, group)
    if isinstance(first, nn.Sequential):
        return _sequential(modules, group)
    return _FORWARDS[type(first)](modules, group)


def mask(modules: Modules, group: Group) -> Tensor:
    """The masks of masking attentions `modules` on `group`: ``(N, E, c, h, w)``."""
    first = modules[0]
    if type(first) in _MASKS and _groupable(first):
        return _MASKS[type(first)](modules, group)
    chunks = group.split(group.x).unbind(1)
    return torch.stack([module.mask(chunk) for module, chunk in zip(modules, chunks)], dim=1)
