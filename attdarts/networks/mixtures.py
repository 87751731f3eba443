"""Softmax mixtures of candidates on one edge (Eq. 9, 10, 17), plain and over grouped edges.

`MixedOperation` is Eq. 9 over operations (or operations + attentions in the mixed locations);
`MixedAttention` mixes attention modules by `sum` (Att-DARTS-S, Eq. 10) or `product`
(Att-DARTS-P, Eq. 17: masks mixed in log space, each clamped to at least `MASK_FLOOR`). The
`mix_*_grouped` functions compute the same sums for E edges at once (`grouping.Group`).
`SearchEdge` chains an edge's mixtures, behind a search method's connector when the space has
one (partial channels); `first_candidates` / `mixed_candidates` build them. An attention
mixture's output gets ``+ b * h`` when an `identity` coefficient b is passed (DARTS- carried over
to attentions, `attdarts.networks.methods.auxiliary_identity`).

Candidates dropped by a progressive search's stage (`use`: a stage's mask, P-DARTS) weigh zero
and are not computed; on grouped edges a candidate that some edges of the wave dropped runs on
the others only. An operation mixture's stride-1 `skip_connect` (`noisy`) is dropped out when a
forward passes `noise` (P-DARTS's skip dropout, `attdarts.networks.noise`).

Single path (GDAS, `attdarts.networks.methods.gdas`): given `chosen`, a mixture computes that
candidate alone, ``w_k * o_k(x)`` (an attention mixture with `product`: ``h * exp(w_k log
mask_k(h))``, the identity ``h * exp(w_k * 0)``), which equals the full mixture when the weights
are one-hot in value, as GDAS's straight-through weights are; with `unchosen` the other
candidates' weights are added to the output too (`single_path.Paths`). A chosen `none` is
computed (zeros times its weight), so the weight stays in the graph with a zero gradient, as in
GDAS's code. A sample never chooses a candidate a stage dropped (its weight is 0), and a chosen
stride-1 skip_connect is dropped out as in the full mixture.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attdarts.language import ir
from attdarts.networks import grouping as grouped
from attdarts.networks.attentions import IdentityAttention
from attdarts.networks.noise import dropout
from attdarts.networks.operations import FactorizedReduce, Zero
from attdarts.networks.registry import build_attention, build_operation

__all__ = [
    "MASK_FLOOR", "Architecture", "MixedAttention", "MixedOperation", "SearchEdge",
    "edge_names", "first_candidates", "mix_attentions_grouped", "mix_operations_grouped",
    "mixed_candidates", "node_slices", "normalise_edges", "search_attention", "search_operation",
]

MASK_FLOOR = 1e-6  # masks are clamped to at least this before log (Eq. 17)
Init = Literal["zeros", "randn"]
Noise = tuple[torch.Tensor, int]  # a pass's (key, rate) and the edge's site (`noise.dropout`)


def _in_use(count: int, kept: Sequence[bool]) -> tuple[int, ...]:
    """Indices of `count` candidates that a stage's mask `kept` keeps (candidates past its end,
    a method's extra ones, are always kept)."""
    return tuple(i for i in range(count) if i >= len(kept) or kept[i])


class MixedOperation(nn.Module):
    """Eq. 9: ``sum_o s_o o(x)`` over the candidates (operations, or operations + attentions)."""

    def __init__(self, candidates: list[nn.Module]) -> None:
        super().__init__()
        self.candidates = nn.ModuleList(candidates)
        # the candidates computed (`none` is zero), of those a stage keeps (`use`)
        self.computed = tuple(i for i, module in enumerate(candidates)
                              if not isinstance(module, Zero))
        # an all-`none` mixture still needs an output of the right shape
        self.active = self.computed or (0,)
        self.noisy: int | None = None  # the stride-1 skip_connect that skip dropout drops out

    def use(self, kept: Sequence[bool]) -> None:
        """Compute only the candidates `kept` (a stage's mask over the space's columns)."""
        computed = tuple(i for i in _in_use(len(self.candidates), kept) if i in self.computed)
        self.active = computed or _in_use(len(self.candidates), kept)[:1]  # kept: only `none`

    def forward(self, x: torch.Tensor, weights: torch.Tensor, chosen: int | None = None,
                unchosen: bool = False, noise: Noise | None = None) -> torch.Tensor:
        """The mixture, or with `chosen` its single path (module docstring); with `noise` the
        stride-1 skip_connect's output is dropped out (`noise.dropout`)."""
        if chosen is not None:  # single path
            out = weights[chosen] * self._candidate(chosen, x, noise)
            return _with_unchosen(out, weights, chosen) if unchosen else out
        out = None
        for index in self.active:
            term = weights[index] * self._candidate(index, x, noise)
            out = term if out is None else out + term
        return out

    def _candidate(self, index: int, x: torch.Tensor, noise: Noise | None) -> torch.Tensor:
        out = self.candidates[index](x)
        return out if noise is None or index != self.noisy else dropout(out, *noise)


class MixedAttention(nn.Module):
    """An attention mixture: Eq. 10 (`sum`) or Eq. 17 (`product`, masks mixed in log space)."""

    def __init__(self, modules: list[nn.Module], mixing: str) -> None:
        super().__init__()
        if mixing not in ("sum", "product"):
            raise ValueError(f"unknown mixing {mixing!r}; expected 'sum' or 'product'")
        self.candidates = nn.ModuleList(modules)
        self.product = mixing == "product"
        self.active = tuple(range(len(modules)))  # those a stage keeps (`use`)
        self.masked: tuple[int, ...] = ()
        if self.product:
            for module in modules:
                if getattr(module, "adds_residual", False) or not hasattr(module, "mask"):
                    raise ValueError(
                        f"mixing 'product' (Eq. 17) needs masking attentions; "
                        f"{type(module).__name__} adds to its input instead")
            # the identity's mask is 1 and its log 0: it adds nothing to the exponent
            self.masked = tuple(
                i for i, module in enumerate(modules) if not isinstance(module, IdentityAttention))
        self.masking = self.masked  # every masking attention; `masked`: those a stage keeps

    def use(self, kept: Sequence[bool]) -> None:
        """Compute only the attentions `kept` (a stage's mask)."""
        self.active = _in_use(len(self.candidates), kept)
        self.masked = tuple(i for i in self.masking if i in self.active)

    def forward(
        self, h: torch.Tensor, weights: torch.Tensor, identity: torch.Tensor | None = None,
        chosen: int | None = None, unchosen: bool = False,
    ) -> torch.Tensor:
        """The mixture of `h`; plus ``identity * h`` (auxiliary identity) when given; only
        candidate `chosen` when given (single path)."""
        if chosen is not None:
            out = self.single(h, weights, chosen)
            if unchosen:
                out = _with_unchosen(out, weights, chosen)
        elif self.product:
            exponent = None
            for index in self.masked:
                mask = self.candidates[index].mask(h).clamp_min(MASK_FLOOR)
                term = weights[index] * torch.log(mask)
                exponent = term if exponent is None else exponent + term
            out = h if exponent is None else h * torch.exp(exponent)
        else:
            out = None
            for index in self.active:
                term = weights[index] * self.candidates[index](h)
                out = term if out is None else out + term
        return out if identity is None else out + identity * h

    def single(self, h: torch.Tensor, weights: torch.Tensor, chosen: int) -> torch.Tensor:
        """Candidate `chosen` alone, with its weight (`product`: its mask raised to it)."""
        weight = weights[chosen]
        if not self.product:
            return weight * self.candidates[chosen](h)
        if chosen in self.masking:  # a masking attention (a sample is never a dropped one)
            mask = self.candidates[chosen].mask(h).clamp_min(MASK_FLOOR)
            return h * torch.exp(weight * torch.log(mask))
        return h * torch.exp(weight * 0.0)  # the identity: mask 1, log 0


def _with_unchosen(out: torch.Tensor, weights: torch.Tensor, chosen: int) -> torch.Tensor:
    """`out` plus the weights of the candidates not computed: 0 in value (one-hot weights), but
    each gets the summed gradient of `out` (GDAS's NAS-Bench-201 cell)."""
    return out + (weights.sum(-1) - weights[..., chosen]).to(out.dtype)


def _column(weights: torch.Tensor, index: int, like: torch.Tensor,
            where: torch.Tensor | None = None) -> torch.Tensor:
    """Column `index` of an (E, K) weight matrix (its rows `where` only, if given), shaped to
    scale the (N, E, C, H, W) map `like` and in its dtype: the plain path's 0-dim weight does not
    promote a bf16 map either."""
    column = weights[:, index] if where is None else weights[:, index].index_select(0, where)
    return column.reshape(1, -1, 1, 1, 1).to(like.dtype)


def mix_operations_grouped(
    mixtures: list[MixedOperation], group: grouped.Group, weights: torch.Tensor,
    noise: torch.Tensor | None = None, sites: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 9 on E edges at once: `weights` is (E, K); returns (N, E, C, H', W'). With `noise`
    (a pass's key and rate), the stride-1 skip_connect is dropped out at the edges' `sites`."""
    total = None
    for index, members in _computed_by(mixtures, "active"):
        out, where = _run(mixtures, index, members, group, grouped.forward)
        if noise is not None and index == mixtures[0].noisy:
            out = dropout(out, noise, sites if where is None else sites.index_select(0, where))
        total = _accumulate(total, out * _column(weights, index, out, where), where, group.edges)
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
        for index, members in _computed_by(mixtures, "masked"):
            mask, where = _run(mixtures, index, members, group, grouped.mask, split=False)
            log_mask = torch.log(mask.clamp_min(MASK_FLOOR))
            exponent = _accumulate(exponent, _column(weights, index, log_mask, where) * log_mask,
                                   where, group.edges)
        h = group.split(group.x)
        total = h if exponent is None else h * torch.exp(exponent)
    else:
        total = None
        for index, members in _computed_by(mixtures, "active"):
            out, where = _run(mixtures, index, members, group, grouped.forward)
            total = _accumulate(total, out * _column(weights, index, out, where), where,
                                group.edges)
    return total if identity is None else total + identity * group.split(group.x)


def _computed_by(mixtures: list, attribute: str) -> list[tuple[int, tuple[int, ...]]]:
    """(candidate, the edges of the wave that compute it) in candidate order, from each
    mixture's `attribute` (`active`, or `masked`: the masking attentions in use)."""
    used = [getattr(mixture, attribute) for mixture in mixtures]
    return [(index, tuple(edge for edge, own in enumerate(used) if index in own))
            for index in sorted(set().union(*used))]


_EDGES: dict[tuple, torch.Tensor] = {}  # edge index tensors of wave subsets, made once


def _run(mixtures: list, index: int, members: tuple[int, ...], group: grouped.Group, rule,
         split: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Candidate `index` on the edges `members` of `group` by `rule` (`grouping.forward` or
    `grouping.mask`): (N, E', ...) and the members' index tensor (None: every edge)."""
    if len(members) == group.edges:
        out = rule([mixture.candidates[index] for mixture in mixtures], group)
        return (group.split(out) if split else out), None
    key = (members, group.x.device)
    where = _EDGES.get(key)
    if where is None:
        where = _EDGES[key] = torch.tensor(members, device=group.x.device)
    part = group.subset(where)
    out = rule([mixtures[edge].candidates[index] for edge in members], part)
    return (part.split(out) if split else out), where


def _accumulate(total: torch.Tensor | None, term: torch.Tensor, where: torch.Tensor | None,
                edges: int) -> torch.Tensor:
    """`total + term`, where `term` holds the edges `where` only (the others add nothing)."""
    if where is not None:
        if total is not None and total.shape[2:] == term.shape[2:]:
            return total.index_add(1, where, term)
        term = term.new_zeros((term.shape[0], edges, *term.shape[2:])).index_copy(1, where, term)
    return term if total is None else total + term


# ---------------------------------------------------------------------------------------------
# One search edge and its candidates


class SearchEdge(nn.Module):
    """One edge i -> j: first mixture (weights alpha), then an attention mixture or a second
    mixture (weights beta), whichever the location asks for; behind a connector (`partial`, from
    a search method's `connector` hook: partial channels) only what it lets in goes through
    them."""

    def __init__(
        self, first: MixedOperation, then: nn.Module | None, input_index: int,
        partial: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.first = first
        self.then = then
        self.input_index = input_index
        self.partial = partial

    def forward(
        self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor | None,
        identity: torch.Tensor | None = None, path: EdgePath | None = None,
        noise: Noise | None = None,
    ) -> torch.Tensor:
        if self.partial is None:
            return self.mix(x, alpha, beta, identity, path, noise)
        active, rest = self.partial.split(x)
        return self.partial.join(self.mix(active, alpha, beta, identity, path, noise), rest)

    def mix(
        self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor | None,
        identity: torch.Tensor | None = None, path: EdgePath | None = None,
        noise: Noise | None = None,
    ) -> torch.Tensor:
        """The mixtures alone; `identity` is the auxiliary identity coefficient (or None);
        `path` the single path (first, then, unchosen) or None; `noise` the skip dropout's (or
        None)."""
        first, then, unchosen = path if path is not None else (None, None, False)
        h = self.first(x, alpha, first, unchosen, noise)
        if isinstance(self.then, MixedOperation):  # double_mixed's second mixture
            h = self.then(h, beta, then, unchosen)
        elif self.then is not None:
            h = self.then(h, beta, identity, then, unchosen)
        return h


# the single path of an edge: (alpha index, beta index or None, unchosen)
EdgePath = tuple[int, int | None, bool]


def search_operation(call: ir.Call, channels: int, stride: int) -> nn.Module:
    """An operation as the supernet builds it: no affine BN, a non-affine BN after pooling."""
    return build_operation(call, channels, stride, affine=False, pool_bn=True)


def search_attention(call: ir.Call, channels: int, spatial: int) -> nn.Module:
    return build_attention(call, channels, spatial)


def first_candidates(space: ir.Space, channels: int, stride: int, spatial: int) -> list[nn.Module]:
    """An edge's first mixture: the space's operations (and attentions, in a mixed location)."""
    if space.location_spec.mixes_operations_and_attentions:
        return mixed_candidates(space, channels, stride, spatial)
    return [search_operation(call, channels, stride) for call in space.operations]


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


def edge_names(nodes: int) -> list[str]:
    """DARTS edge order: node j reads c_k2, c_k1, n0 .. n{j-1}; e.g. 'n1<-c_k2'."""
    names = []
    for node in range(nodes):
        for source in (*ir.INPUTS, *(f"n{i}" for i in range(node))):
            names.append(f"n{node}<-{source}")
    return names


def node_slices(nodes: int) -> tuple[tuple[int, int], ...]:
    """(first edge, number of edges) of each node: node j's edges are j + 2 consecutive ones."""
    return tuple((sum(2 + k for k in range(node)), 2 + node) for node in range(nodes))


def normalise_edges(tensor: torch.Tensor, nodes: int) -> torch.Tensor:
    """PC-DARTS's edge normalisation: a softmax over the edges entering each node, along the
    last axis (edges,); leading axes (seeds) are kept."""
    return torch.cat([F.softmax(tensor[..., start:start + count], dim=-1)
                      for start, count in node_slices(nodes)], dim=-1)


class Architecture(nn.Module):
    """The raw architecture tensors per cell type, registered as `alpha_normal`, `beta_reduce`,
    `edges_normal`, ... (kinds of `attdarts.language.kinds`, in the order `shapes` gives them).

    Zero initialisation (uniform softmax) as the paper says; `init="randn"` gives the authors'
    ``1e-3 * randn`` (drawn from the global generator, so it follows the seed; `edges` is drawn
    last, so a space without edge normalisation draws what it drew before). The supernet's
    search methods make the mixture weights from them (`Supernet.mixture_weights`).
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], init: Init) -> None:
        super().__init__()
        if init not in ("zeros", "randn"):
            raise ValueError(f"unknown architecture init {init!r}; expected 'zeros' or 'randn'")
        self.kinds = tuple(shapes)  # a subset of kinds.KINDS, in that order
        for kind, shape in shapes.items():
            for cell in ir.CELL_KINDS:
                value = torch.zeros(shape) if init == "zeros" else 1e-3 * torch.randn(shape)
                self.register_parameter(f"{kind}_{cell}", nn.Parameter(value))

    def tensor(self, kind: str, cell: str) -> nn.Parameter:
        return getattr(self, f"{kind}_{cell}")
