"""Single paths: each edge computes only its chosen candidate (GDAS), plain and grouped.

A sampler such as GDAS (Dong and Yang, CVPR 2019; `attdarts.networks.methods.gdas`) chooses one
candidate per row of each mixture and step (`Paths`, the field `paths` of `methods.CellWeights`;
`on_host` moves the choices to the host, where the cells read them); the plain path then runs
that candidate alone on each edge (`mixtures.MixedOperation` / `MixedAttention` with `chosen`).
A grouped cell runs a wave of edges together (`attdarts.networks.grouping`): here the wave's
edges are grouped again by the candidate they chose, each candidate runs once over the edges
that chose it (a group of its own), and the outputs are put back in the wave's edge order. An
attention mixture after the operations groups its edges by their chosen attention in the same
way, so an edge's operation and attention may belong to different groups. A kind whose paths
are None (a method that samples operations only, say) runs its whole mixture.

The sums are those of the plain path (tests compare both in float64).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from attdarts.language import kinds
from attdarts.networks import grouping as grouped
from attdarts.networks.mixtures import (
    MASK_FLOOR, MixedAttention, MixedOperation, SearchEdge, mix_attentions_grouped,
    mix_operations_grouped,
)
from attdarts.networks.noise import dropout

__all__ = [
    "Paths", "attentions", "on_host", "operations", "positions_by_candidate", "wave", "wave_paths",
]


class Paths(NamedTuple):
    """Single-path sampling (GDAS): the one candidate each row of a mixture computes.

    `alpha`, `beta`, `gamma` give, per row of that kind's weights, the index of the candidate
    computed (a tuple of ints on the host, as the cells take them; a `paths` hook returns index
    tensors, which `MethodSet.mixture_weights` moves to the host), or None where the kind has
    no mixture; stacked seeds (`--together`) get one such tuple per seed, `of_seed` picks one
    seed's. The other candidates are not computed; with `unchosen` their weights (0 in
    value) are still added to the mixture's output, so that each gets the output's summed
    gradient (GDAS's NAS-Bench-201 cell); without, they contribute nothing (its DARTS-space
    cell).
    """

    alpha: Any = None
    beta: Any = None
    gamma: Any = None
    unchosen: bool = False

    def of_seed(self, seed: int) -> Paths:
        """Seed `seed`'s paths, when the weights carried a seed axis (one tuple per seed)."""
        return self._replace(**{kind: None if getattr(self, kind) is None
                                else getattr(self, kind)[seed] for kind in kinds.MIXTURES})


def on_host(weights: Sequence[Any]) -> tuple:
    """`weights` (`methods.CellWeights`, one per cell type) with the index tensors of their
    `paths` replaced by tuples of ints (stacked seeds: one tuple per seed, `Paths.of_seed`),
    every cell type's moved to the host in one transfer (the step's one synchronisation)."""
    slots = [(cell, kind) for cell, cell_weights in enumerate(weights)
             if cell_weights.paths is not None
             for kind in kinds.MIXTURES if isinstance(getattr(cell_weights.paths, kind), Tensor)]
    if not slots:
        return weights
    tensors = [getattr(weights[cell].paths, kind) for cell, kind in slots]
    flat = torch.cat([tensor.reshape(-1) for tensor in tensors]).tolist()
    found: dict[tuple[int, str], tuple] = {}
    start = 0
    for slot, tensor in zip(slots, tensors):
        found[slot] = _nested(flat[start:start + tensor.numel()], tensor.shape)
        start += tensor.numel()
    return tuple(
        cell_weights if cell_weights.paths is None else cell_weights._replace(
            paths=cell_weights.paths._replace(
                **{kind: found[(cell, kind)] for kind in kinds.MIXTURES if (cell, kind) in found}))
        for cell, cell_weights in enumerate(weights))


def _nested(flat: list[int], shape: Sequence[int]) -> tuple:
    """`flat` as nested tuples of `shape`: (rows,) -> a tuple of ints, (seeds, rows) -> one tuple
    per seed."""
    if len(shape) <= 1:
        return tuple(flat)
    size = len(flat) // shape[0]
    return tuple(_nested(flat[i * size:(i + 1) * size], shape[1:]) for i in range(shape[0]))


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
               weights: Tensor, chosen: Sequence[int], unchosen: bool,
               noise: Tensor | None = None, sites: Tensor | None = None) -> Tensor:
    """The operation mixtures of E edges on their single paths: (N, E, C', H', W').

    `take(positions)` stacks the inputs of the edges at `positions` edge-major, (N, E'*C, H, W);
    `weights` is (E, K) and `chosen[e]` edge e's candidate. With `noise` (a pass's key and rate,
    P-DARTS's skip dropout) a chosen stride-1 skip_connect is dropped out at its edges' `sites`
    (E,), as in the full mixture (`mixtures.mix_operations_grouped`)."""
    groups = positions_by_candidate(chosen)
    parts = []
    for candidate, positions in groups:
        group = grouped.Group(take(positions), len(positions))
        modules = [mixtures[position].candidates[candidate] for position in positions]
        out = group.split(grouped.forward(modules, group))
        if noise is not None and candidate == mixtures[positions[0]].noisy:
            out = dropout(out, noise, sites.index_select(
                0, torch.tensor(positions, device=sites.device)))
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
        elif candidate in first.masking:  # a masking attention (not the identity), in use or not
            log_mask = torch.log(grouped.mask(modules, group).clamp_min(MASK_FLOOR))
            out = part * torch.exp(weight * log_mask)
        else:  # the identity: mask 1, log 0
            out = part * torch.exp(weight * 0.0)
        parts.append(out)
    total = _in_order(parts, groups)
    if unchosen:
        total = _unchosen(total, weights, chosen)
    return total if identity is None else total + identity * h


def wave_paths(paths: Paths, wave: Sequence[int]
               ) -> tuple[list[int] | None, list[int] | None, bool]:
    """The chosen operations and attentions of the edges of `wave` (None: a kind without
    paths, whose whole mixture runs), and `unchosen`."""
    return (None if paths.alpha is None else [paths.alpha[i] for i in wave],
            None if paths.beta is None else [paths.beta[i] for i in wave], paths.unchosen)


def wave(edges: Sequence[SearchEdge], inputs: list[Tensor], alpha: Tensor, beta: Tensor | None,
         identity: Tensor | None, operations_chosen: list[int] | None,
         attentions_chosen: list[int] | None, unchosen: bool, noise: Tensor | None = None,
         sites: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """A grouped cell's wave on single paths: the mixtures of `edges` (which read `inputs`, one
    (N, C, H, W) map each; `alpha` / `beta` their rows) -> (N, E, C', H', W'), and the bypass of
    partial channels (`SearchCell._wave` joins it) or None. A kind without paths (None) runs its
    whole mixture; `noise` and `sites` are skip dropout's (`operations`)."""
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
    if operations_chosen is None:  # a kind without paths: its whole mixture
        group = grouped.Group(take(list(range(len(inputs)))), len(edges))
        out = mix_operations_grouped([edge.first for edge in edges], group, alpha, noise, sites)
    else:
        out = operations([edge.first for edge in edges], take, alpha, operations_chosen,
                         unchosen, noise, sites)
    if edges[0].then is None:
        return out, rest
    # an attention mixture (mixed locations are never grouped)
    if attentions_chosen is None:
        group = grouped.Group(out.flatten(1, 2), len(edges))
        return mix_attentions_grouped([edge.then for edge in edges], group, beta, identity), rest
    return attentions([edge.then for edge in edges], out, beta, attentions_chosen, identity,
                      unchosen), rest
