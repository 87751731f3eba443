"""Softmax mixtures of candidates on one edge (Eq. 9, 10, 17), plain and over grouped edges.

`MixedOperation` is Eq. 9 over operations (or operations + attentions in the mixed locations);
`MixedAttention` mixes attention modules by `sum` (Att-DARTS-S, Eq. 10) or `product`
(Att-DARTS-P, Eq. 17: masks mixed in log space, each clamped to at least `MASK_FLOOR`). The
`mix_*_grouped` functions compute the same sums for E edges at once (`grouping.Group`).
`SearchEdge` chains an edge's mixtures; `first_candidates` / `mixed_candidates` build them.

Search methods that act on an edge (README, "Search methods"):

- `PartialChannels` (PC-DARTS, Xu et al. 2020): only the first C/K channels of the edge input
  enter the mixtures; the other channels bypass them (max-pooled 2x2, stride 2, on stride-2
  edges), and the edge output is ``shuffle_K(cat[mixture, bypass])``. `split` / `join` act on one
  edge ``(N, C, H, W)``, `split_grouped` / `join_grouped` on E stacked edges.
- the auxiliary identity (DARTS-, Chu et al. 2021, carried over to attentions): an attention
  mixture's output gets ``+ b * h`` when an `identity` coefficient b is passed.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attdarts.language import ir
from attdarts.networks import grouping as grouped
from attdarts.networks.attentions import IdentityAttention
from attdarts.networks.operations import FactorizedReduce, Zero
from attdarts.networks.registry import build_attention, build_operation

__all__ = [
    "EDGES", "MASK_FLOOR", "Architecture", "MixedAttention", "MixedOperation", "PartialChannels", "SearchEdge",
    "channel_shuffle", "first_candidates", "mix_attentions_grouped", "mix_operations_grouped",
    "mixed_candidates", "node_slices", "normalise", "normalise_edges", "search_attention", "search_operation", "skip_column",
]

MASK_FLOOR = 1e-6  # masks are clamped to at least this before log (Eq. 17)
SKIP = ir.Call(name="skip_connect")
Init = Literal["zeros", "randn"]
MIXTURE_KINDS = ("alpha", "beta", "gamma")  # softmax per row
EDGES = "edges"  # edge normalisation: softmax over each node's incoming edges


class MixedOperation(nn.Module):
    """Eq. 9: ``sum_o s_o o(x)`` over the candidates (operations, or operations + attentions)."""

    def __init__(self, candidates: list[nn.Module]) -> None:
        super().__init__()
        self.candidates = nn.ModuleList(candidates)
        active = tuple(i for i, module in enumerate(candidates) if not isinstance(module, Zero))
        # an all-`none` mixture still needs an output of the right shape
        self.active = active or (0,)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for index in self.active:
            term = weights[index] * self.candidates[index](x)
            out = term if out is None else out + term
        return out


class MixedAttention(nn.Module):
    """An attention mixture: Eq. 10 (`sum`) or Eq. 17 (`product`, masks mixed in log space)."""

    def __init__(self, modules: list[nn.Module], mixing: str) -> None:
        super().__init__()
        if mixing not in ("sum", "product"):
            raise ValueError(f"unknown mixing {mixing!r}; expected 'sum' or 'product'")
        self.candidates = nn.ModuleList(modules)
        self.product = mixing == "product"
        if self.product:
            for module in modules:
                if getattr(module, "adds_residual", False) or not hasattr(module, "mask"):
                    raise ValueError(
                        f"mixing 'product' (Eq. 17) needs masking attentions; "
                        f"{type(module).__name__} adds to its input instead")
            # the identity's mask is 1 and its log 0: it adds nothing to the exponent
            self.masked = tuple(
                i for i, module in enumerate(modules) if not isinstance(module, IdentityAttention))

    def forward(
        self, h: torch.Tensor, weights: torch.Tensor, identity: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The mixture of `h`; plus ``identity * h`` (auxiliary identity) when given."""
        if self.product:
            exponent = None
            for index in self.masked:
                mask = self.candidates[index].mask(h).clamp_min(MASK_FLOOR)
                term = weights[index] * torch.log(mask)
                exponent = term if exponent is None else exponent + term
            out = h if exponent is None else h * torch.exp(exponent)
        else:
            out = None
            for index, module in enumerate(self.candidates):
                term = weights[index] * module(h)
                out = term if out is None else out + term
        return out if identity is None else out + identity * h


def channel_shuffle(x: torch.Tensor, groups: int, dim: int = 1) -> torch.Tensor:
    """PC-DARTS's channel shuffle on the channel axis `dim`: view the C channels as (groups,
    C / groups), swap the two, flatten back. Channel g * (C / groups) + i goes to i * groups + g."""
    return x.unflatten(dim, (groups, -1)).transpose(dim, dim + 1).flatten(dim, dim + 1)


class PartialChannels(nn.Module):
    """PC-DARTS's partial channel connection of one edge with C channels and K groups.

    `split` gives the C/K channels that enter the mixtures and the C - C/K that bypass them;
    `join` max-pools the bypass (2x2, stride 2, on a stride-2 edge; ``ceil_mode`` so that an odd
    map gives ceil(H/2) like every other stride-2 layer here), concatenates [mixture, bypass] and
    shuffles the channels with K groups. No parameters.
    """

    def __init__(self, channels: int, groups: int, stride: int) -> None:
        super().__init__()
        if groups < 1 or channels % groups:
            raise ValueError(f"partial channels K={groups} need channels divisible by K; "
                             f"C={channels} is not")
        self.channels = channels
        self.groups = groups
        self.stride = stride
        self.active = channels // groups  # channels entering the mixtures

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :self.active], x[:, self.active:]

    def bypass(self, rest: torch.Tensor) -> torch.Tensor:
        """The channels that skip the mixtures, at the edge's output size; (N, C', H, W)."""
        if self.stride == 1:
            return rest
        return F.max_pool2d(rest, 2, 2, ceil_mode=True)

    def join(self, mixed: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([mixed, self.bypass(rest)], dim=1), self.groups)

    def split_grouped(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`split` on E edges whose inputs are `inputs` (the same tensor may come back): the
        active parts stacked edge-major ``(N, E*C/K, H, W)`` and the bypasses at the output size
        ``(N, E, C - C/K, H', W')``, each distinct input pooled once."""
        active = torch.cat([x[:, :self.active] for x in inputs], dim=1)
        bypassed: dict[int, torch.Tensor] = {}
        for x in inputs:
            if id(x) not in bypassed:
                bypassed[id(x)] = self.bypass(x[:, self.active:])
        return active, torch.stack([bypassed[id(x)] for x in inputs], dim=1)

    def join_grouped(self, mixed: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        """`join` on E edges: `mixed` ``(N, E, C/K, H', W')`` and `rest` from `split_grouped`;
        returns ``(N, E, C, H', W')``."""
        return channel_shuffle(torch.cat([mixed, rest], dim=2), self.groups, dim=2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}, stride={self.stride}"


def _column(weights: torch.Tensor, index: int, like: torch.Tensor) -> torch.Tensor:
    """Column `index` of an (E, K) weight matrix, shaped to scale the (N, E, C, H, W) map `like`
    and in its dtype: the plain path's 0-dim weight does not promote a bf16 map either."""
    return weights[:, index].reshape(1, -1, 1, 1, 1).to(like.dtype)


def mix_operations_grouped(
    mixtures: list[MixedOperation], group: grouped.Group, weights: torch.Tensor
) -> torch.Tensor:
    """Eq. 9 on E edges at once: `weights` is (E, K); returns (N, E, C, H', W')."""
    total = None
    for index in mixtures[0].active:
        candidates = [mixture.candidates[index] for mixture in mixtures]
        out = group.split(grouped.forward(candidates, group))
        term = out * _column(weights, index, out)
        total = term if total is None else total + term
    return total


def mix_attentions_grouped(
    mixtures: list[MixedAttention], group: grouped.Group, weights: torch.Tensor,
    identity: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 10 (`sum`) or Eq. 17 (`product`) on E edges at once, plus ``identity * h`` when
    given; returns (N, E, C, H, W)."""
    first = mixtures[0]
    if first.product:
        exponent = None
        for index in first.masked:
            candidates = [mixture.candidates[index] for mixture in mixtures]
            log_mask = torch.log(grouped.mask(candidates, group).clamp_min(MASK_FLOOR))
            term = _column(weights, index, log_mask) * log_mask
            exponent = term if exponent is None else exponent + term
        h = group.split(group.x)
        total = h if exponent is None else h * torch.exp(exponent)
    else:
        total = None
        for index in range(len(first.candidates)):
            candidates = [mixture.candidates[index] for mixture in mixtures]
            out = group.split(grouped.forward(candidates, group))
            term = out * _column(weights, index, out)
            total = term if total is None else total + term
    return total if identity is None else total + identity * group.split(group.x)


# ---------------------------------------------------------------------------------------------
# One search edge and its candidates


class SearchEdge(nn.Module):
    """One edge i -> j: first mixture (weights alpha), then an attention mixture or a second
    mixture (weights beta), whichever the location asks for; with partial channels only the
    first C/K channels go through them (`partial`)."""

    def __init__(
        self, first: MixedOperation, then: nn.Module | None, input_index: int,
        partial: PartialChannels | None = None,
    ) -> None:
        super().__init__()
        self.first = first
        self.then = then
        self.input_index = input_index
        self.partial = partial

    def forward(
        self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor | None,
        identity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.partial is None:
            return self.mix(x, alpha, beta, identity)
        active, rest = self.partial.split(x)
        return self.partial.join(self.mix(active, alpha, beta, identity), rest)

    def mix(
        self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor | None,
        identity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mixtures alone; `identity` is the auxiliary identity coefficient (or None)."""
        h = self.first(x, alpha)
        if self.then is not None:
            h = self.then(h, beta) if identity is None else self.then(h, beta, identity)
        return h


def search_operation(call: ir.Call, channels: int, stride: int) -> nn.Module:
    """An operation as the supernet builds it: no affine BN, a non-affine BN after pooling."""
    return build_operation(call, channels, stride, affine=False, pool_bn=True)


def search_attention(call: ir.Call, channels: int, spatial: int) -> nn.Module:
    return build_attention(call, channels, spatial)


def first_candidates(space: ir.Space, channels: int, stride: int, spatial: int) -> list[nn.Module]:
    """An edge's first mixture; plus the auxiliary skip (DARTS-) when the space asks for one and
    does not list skip_connect (otherwise it is folded into skip_connect's weight)."""
    if space.location_spec.mixes_operations_and_attentions:
        candidates = mixed_candidates(space, channels, stride, spatial)
    else:
        candidates = [search_operation(call, channels, stride) for call in space.operations]
    if space.auxiliary_skip != "off" and skip_column(space) is None:
        candidates.append(search_operation(SKIP, channels, stride))
    return candidates


def skip_column(space: ir.Space) -> int | None:
    """skip_connect's column in an edge's first mixture, or None if the space does not list it."""
    names = space.location_spec.columns(space)["alpha"]
    return names.index(SKIP.name) if SKIP.name in names else None


def mixed_candidates(space: ir.Space, channels: int, stride: int, spatial: int) -> list[nn.Module]:
    """Operations then attentions in one list; at stride 2 each attention is preceded by a
    non-affine factorized reduce so that every candidate halves the map."""
    candidates = [search_operation(call, channels, stride) for call in space.operations]
    for call in space.attentions:
        module = search_attention(call, channels, spatial)
        if stride == 2:
            module = nn.Sequential(FactorizedReduce(channels, channels, affine=False), module)
        candidates.append(module)
    return candidates


# ---------------------------------------------------------------------------------------------
# Architecture parameters


def node_slices(nodes: int) -> tuple[tuple[int, int], ...]:
    """(first edge, number of edges) of each node: node j's edges are j + 2 consecutive ones."""
    return tuple((sum(2 + k for k in range(node)), 2 + node) for node in range(nodes))


def normalise_edges(tensor: torch.Tensor, nodes: int) -> torch.Tensor:
    """PC-DARTS's edge normalisation: a softmax over the edges entering each node, (edges,)."""
    return torch.cat([F.softmax(tensor[start:start + count], dim=-1)
                      for start, count in node_slices(nodes)])


def normalise(kind: str, tensor: torch.Tensor, nodes: int) -> torch.Tensor:
    """A raw architecture tensor of `kind` as the forward uses it (softmax per row or per node)."""
    return normalise_edges(tensor, nodes) if kind == EDGES else F.softmax(tensor, dim=-1)


class Architecture(nn.Module):
    """alpha / beta / gamma (and edges) per cell type, registered as `alpha_normal`,
    `beta_reduce`, `edges_normal`, ...

    Zero initialisation (uniform softmax) as the paper says; `init="randn"` gives the authors'
    ``1e-3 * randn`` (drawn from the global generator, so it follows the seed; `edges` is drawn
    last, so a space without edge normalisation draws what it drew before). `nodes` is the
    number of intermediate nodes, which groups the `edges` vector by node.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], init: Init, nodes: int = 0) -> None:
        super().__init__()
        if init not in ("zeros", "randn"):
            raise ValueError(f"unknown architecture init {init!r}; expected 'zeros' or 'randn'")
        self.kinds = tuple(shapes)  # ("alpha", "beta", "gamma", "edges") subset, in that order
        self.nodes = nodes
        for kind, shape in shapes.items():
            for cell in ir.CELL_KINDS:
                value = torch.zeros(shape) if init == "zeros" else 1e-3 * torch.randn(shape)
                self.register_parameter(f"{kind}_{cell}", nn.Parameter(value))

    def tensor(self, kind: str, cell: str) -> nn.Parameter:
        return getattr(self, f"{kind}_{cell}")

    def mixture_weights(self) -> list[tuple[torch.Tensor | None, ...]]:
        """(alpha, beta, gamma, edges) per cell type, indexed by `SearchCell.kind_index`: each
        row of alpha / beta / gamma softmaxed, edges normalised per node; None where absent."""
        weights = []
        for cell in ir.CELL_KINDS:
            mixtures = tuple(
                F.softmax(self.tensor(kind, cell), dim=-1) if kind in self.kinds else None
                for kind in MIXTURE_KINDS)
            edges = None
            if EDGES in self.kinds:
                edges = normalise_edges(self.tensor(EDGES, cell), self.nodes)
            weights.append((*mixtures, edges))
        return weights
