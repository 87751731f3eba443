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
small operations per batch norm and wave (one per tensor under `torch.vmap`, which has no rule for
the multi-tensor ones: seeds run together use grouped cells too).

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

from attdarts.networks.operations import FactorizedReduce, Zero

__all__ = [
    "Group", "batch_norm", "conv2d", "deferred_statistics", "forward", "layers_of", "linear", "mask",
    "masked", "run_layers",
]

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

    def subset(self, edges: Tensor) -> Group:
        """The group of the edges at positions `edges` (an index tensor), relu(x) with them
        when it was computed already (a candidate that a stage dropped on the other edges)."""
        part = Group(self.split(self.x).index_select(1, edges).flatten(1, 2), len(edges))
        if self._relu is not None:
            part._relu = self.split(self._relu).index_select(1, edges).flatten(1, 2)
        return part


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
    _write_back(*queue)


def _write_back(destinations: list[Tensor], sources: list[Tensor], counters: list[Tensor]) -> None:
    """Copy `sources` into `destinations` and count one more batch in `counters`: two
    multi-tensor operations, or one operation per tensor under `torch.vmap` (several seeds run
    together), which has no rule for the multi-tensor ones."""
    if any(_batched(tensors[0]) for tensors in (destinations, counters) if tensors):
        for destination, source in zip(destinations, sources):
            destination.copy_(source)
        for counter in counters:
            counter.add_(1)
        return
    if destinations:
        torch._foreach_copy_(destinations, sources)
    if counters:
        torch._foreach_add_(counters, 1)


def _batched(tensor: Tensor) -> bool:
    """Whether `tensor` is a slice of a tensor `torch.vmap` maps over."""
    return torch._C._functorch.is_batchedtensor(tensor)


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
            _write_back(destinations, sources, counters)
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
    """Whether `run_layers` reproduces `layer` exactly (exact types: a subclass may change its
    forward, as SyncBatchNorm does). `linear`: the layer sits in a module with its own grouped
    rule, so a Linear is known to see (N, features) inputs and a Conv1d (ECA's) is run by it."""
    kind = type(layer)
    if kind is nn.Conv2d or (kind is nn.Conv1d and linear):
        return layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        return _norm_groupable(layer)
    if kind is nn.Linear:
        return linear
    return kind is nn.ReLU or kind in _PER_CHANNEL


def run_layers(layers: Sequence[Modules], x: Tensor, edges: int) -> Tensor:
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


def layers_of(sequences: Modules) -> list[list[nn.Module]]:
    return [list(position) for position in zip(*sequences)]


def _sequential_groupable(sequence: nn.Sequential) -> bool:
    # a candidate operation sees (N, C, H, W): a Linear there would act on W, not on channels
    return all(_layer_groupable(layer, linear=False) for layer in sequence)


def _sequential(modules: Modules, group: Group) -> Tensor:
    layers = layers_of(modules)
    if isinstance(layers[0][0], nn.ReLU):  # share relu(x) between the candidates
        return run_layers(layers[1:], group.relu, group.edges)
    return run_layers(layers, group.x, group.edges)


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
# Dispatch: exact module type -> grouped implementation


_FORWARDS: dict[type, Callable[[Modules, Group], Tensor]] = {
    nn.Identity: _identity,
    Zero: _per_channel,
    nn.MaxPool2d: _per_channel,
    nn.AvgPool2d: _per_channel,
    FactorizedReduce: _factorized_reduce,
}


def _rule(kind: type, name: str) -> Callable[[Modules, Group], Tensor] | None:
    """The grouped implementation `name` ("grouped_forward", "grouped_mask") that the class
    itself declares (not one inherited: a subclass may compute something else)."""
    return getattr(kind, name) if name in vars(kind) else None


def _groupable(module: nn.Module) -> bool:
    kind = type(module)
    if isinstance(module, nn.Sequential) and kind.forward is nn.Sequential.forward:
        return len(module) > 0 and _sequential_groupable(module)
    if kind not in _FORWARDS and _rule(kind, "grouped_forward") is None:
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
    return (_FORWARDS.get(type(first)) or _rule(type(first), "grouped_forward"))(modules, group)


def mask(modules: Modules, group: Group) -> Tensor:
    """The masks of masking attentions `modules` on `group`: ``(N, E, c, h, w)``."""
    first = modules[0]
    rule = _rule(type(first), "grouped_mask")
    if rule is not None and _groupable(first):
        return rule(modules, group)
    chunks = group.split(group.x).unbind(1)
    return torch.stack([module.mask(chunk) for module, chunk in zip(modules, chunks)], dim=1)


def masked(mask_of: Callable[[Modules, Group], Tensor]) -> Callable[[Modules, Group], Tensor]:
    """A masking attention's grouped forward from its grouped mask: x * mask(x)."""

    def run(modules: Modules, group: Group) -> Tensor:
        return (group.split(group.x) * mask_of(modules, group)).flatten(1, 2)
    return run
