"""Single-path mixtures over grouped edges: each edge computes only its chosen candidate (GDAS).

A sampler such as GDAS (Dong and Yang, CVPR 2019; `attdarts.networks.methods.gdas`) chooses one
candidate per edge and step (`methods.Paths`); the plain path then runs that candidate alone on
each edge (`mixtures.MixedOperation` / `MixedAttention` with `chosen`). A grouped cell runs a
wave of edges together (`attdarts.networks.grouping`): here the wave's edges are grouped again
by the candidate they chose, each candidate runs once over the edges that chose it (a group of
its own), and the outputs are put back in the wave's edge order. An attention mixture after the
operations groups its edges by their chosen attention in the same way, so an edge's operation
and attention may belong to different groups.

The sums are those of the plain path (tests compare both in float64).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from attdarts.networks import grouping as grouped
from attdarts.networks.methods import Paths
from attdarts.networks.mixtures import MASK_FLOOR, MixedAttention, MixedOperation, SearchEdge

__all__ = ["attentions", "operations", "positions_by_candidate", "wave", "wave_paths"]


def positions_by_candidate(chosen: Sequence[int]) -> list[tuple[int, list[int]]]:
    """(candidate, positions of the edges that chose it), by candidate index."""
    groups: dict[int, list[int]] = {}
    for position, candidate in enumerate(chosen):
        groups.setdefault(candidate, []).append(position)
    return sorted(groups.items())


def _weights(weights: Tensor, positions: list[int], candidate: int, like: Tensor) -> Tensor:
    """The chosen weight of each edge in `positions`, shaped to scale (N, E', C, H, W) maps."""
    index = torch.tensor(positions, device=weights.device)
    column = weights.index_select(0, index)[:, candidate]
    return column.reshape(1, -1, 1, 1, 1).to(like.dtype)


def _in_order(parts: list[Tensor], groups: list[tuple[int, list[int]]]) -> Tensor:
    """The groups' outputs (N, E', ...) as one (N, E, ...) tensor in the wave's edge order: one
    stack of the per-edge maps (its backward splits the gradient without a zero fill)."""
    if len(parts) == 1:
        return parts[0]
    edges: list[Tensor | None] = [None] * sum(part.shape[1] for part in parts)
    for part, (_, positions) in zip(parts, groups):
        for position, edge in zip(positions, part.unbind(1)):
            edges[position] = edge
    return torch.stack(edges, dim=1)


def _unchosen(total: Tensor, weights: Tensor, chosen: Sequence[int]) -> Tensor:
    """`total` plus each edge's unchosen weights (0 in value), as `mixtures._with_unchosen`."""
    index = torch.tensor(chosen, device=weights.device).unsqueeze(-1)
    others = weights.sum(-1) - weights.gather(-1, index).squeeze(-1)
    return total + others.reshape(1, -1, 1, 1, 1).to(total.dtype)


def operations(mixtures: list[MixedOperation], take: Callable[[list[int]], Tensor],
               weights: Tensor, chosen: Sequence[int], unchosen: bool) -> Tensor:
    """The operation mixtures of E edges on their single paths: (N, E, C', H', W').

    `take(positions)` stacks the inputs of the edges at `positions` edge-major, (N, E'*C, H, W);
    `weights` is (E, K) and `chosen[e]` edge e's candidate."""
    groups = positions_by_candidate(chosen)
    parts = []
    for candidate, positions in groups:
        group = grouped.Group(take(positions), len(positions))
        modules = [mixtures[position].candidates[candidate] for position in positions]
        out = group.split(grouped.forward(modules, group))
        parts.append(out * _weights(weights, positions, candidate, out))
    total = _in_order(parts, groups)
    return _unchosen(total, weights, chosen) if unchosen else total


def attentions(mixtures: list[MixedAttention], h: Tensor, weights: Tensor, chosen: Sequence[int],
               identity: Tensor | None, unchosen: bool) -> Tensor:
    """The attention mixtures of E edges on their single paths, `h` (N, E, C, H, W) -> the same
    shape; plus ``identity * h`` when given (auxiliary identity)."""
    groups = positions_by_candidate(chosen)
    everything = len(groups) == 1
    edges = None if everything else h.unbind(1)
    parts = []
    first = mixtures[0]
    for candidate, positions in groups:
        part = h if everything else torch.stack([edges[p] for p in positions], dim=1)
        group = grouped.Group(part.flatten(1, 2), len(positions))
        modules = [mixtures[position].candidates[candidate] for position in positions]
        weight = _weights(weights, positions, candidate, part)
        if not first.product:
            out = group.split(grouped.forward(modules, group)) * weight
        elif candidate in first.masked:
            log_mask = torch.log(grouped.mask(modules, group).clamp_min(MASK_FLOOR))
            out = part * torch.exp(weight * log_mask)
        else:  # the identity: mask 1, log 0
            out = part * torch.exp(weight * 0.0)
        parts.append(out)
    total = _in_order(parts, groups)
    if unchosen:
        total = _unchosen(total, weights, chosen)
    return total if identity is None else total + identity * h


def wave_paths(paths: Paths, wave: Sequence[int]) -> tuple[list[int], list[int] | None, bool]:
    """The chosen operations and attentions of the edges of `wave`, and `unchosen`."""
    return ([paths.alpha[i] for i in wave],
            None if paths.beta is None else [paths.beta[i] for i in wave], paths.unchosen)


def wave(edges: Sequence[SearchEdge], inputs: list[Tensor], alpha: Tensor, beta: Tensor | None,
         identity: Tensor | None, operations_chosen: list[int], attentions_chosen: list[int] | None,
         unchosen: bool) -> tuple[Tensor, Tensor | None]:
    """A grouped cell's wave on single paths: the mixtures of `edges` (which read `inputs`, one
    (N, C, H, W) map each; `alpha` / `beta` their rows) -> (N, E, C', H', W'), and the bypass of
    partial channels (`SearchCell._wave` joins it) or None."""
    partial = edges[0].partial
    if partial is None:
        def take(positions: list[int]) -> Tensor:
            chosen = [inputs[p] for p in positions]
            if all(x is chosen[0] for x in chosen):  # as the full mixture: one input repeated
                return chosen[0].repeat(1, len(chosen), 1, 1)
            return torch.cat(chosen, dim=1)
        rest = None
    else:
        stacked, rest = partial.split_grouped(inputs)

        def take(positions: list[int]) -> Tensor:
            if len(positions) == len(inputs):
                return stacked
            parts = stacked.unflatten(1, (len(inputs), -1))
            index = torch.tensor(positions, device=parts.device)
            return parts.index_select(1, index).flatten(1, 2)
    out = operations([edge.first for edge in edges], take, alpha, operations_chosen, unchosen)
    if edges[0].then is not None:  # an attention mixture (mixed locations are never grouped)
        out = attentions([edge.then for edge in edges], out, beta, attentions_chosen, identity,
                         unchosen)
    return out, rest
