"""fair_darts(zero_one, threshold): FairDARTS (Chu et al., ECCV 2020).

Every candidate weighs sigmoid(raw) on its own: no softmax, so candidates do not compete for one
unit of weight (the paper's "collaborative" mixture; xiaomi-automl/FairDARTS, fairdarts/
model_search.py). The same holds for the attention mixtures (beta, gamma: new here) and, in the
mixed locations, for the operations and attentions sharing alpha. `none` is refused (the
catalog's `requires`): FairDARTS searches without it. Raw weights start at zero (sigmoid 1/2):
the `zeros` architecture init, the fair-darts recipe's.

Zero-one loss: the architecture loss gets ``zero_one * L01`` with, per mixture kind,
``L01 = -mean over all its entries (both cell types) of (sigmoid(raw) - 1/2)^2`` (their
`ConvSeparateLoss`: ``-F.mse_loss(sigmoid(cat(alpha_normal, alpha_reduce)), 0.5)``, weight 10);
each kind present (alpha, and beta and gamma where the location has them) adds its own mean, so
alpha's term is FairDARTS's whatever attentions a space has. Their weight step adds the same term
to its loss; it does not depend on the network weights, so it changes no weight update and is
left out here.

Derivation (their `parse`, method `threshold_sparse`, threshold 0.85): per node the `keep` (2)
edges whose strongest candidate has the largest sigmoid, each kept only if that sigmoid reaches
`threshold`; so a node may keep one edge or none (derivation then drops the node and the edges
reading it). An edge's attention, and the cell output's, is its strongest attention if that
sigmoid reaches `threshold`, otherwise no attention: the operation rule carried over (a dropped
attention is what a dropped edge is for operations). Hooks: `normalise`, `architecture_loss`,
`threshold`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from attdarts.language import kinds
from attdarts.networks.methods import MixtureWeights, SearchMethod


def zero_one_term(tensors: Sequence[Tensor]) -> Tensor:
    """``-mean (sigmoid(t) - 1/2)^2`` over every entry of `tensors` (..., rows, candidates),
    pooled; leading dimensions (seeds) are kept."""
    total = sum(((torch.sigmoid(tensor) - 0.5) ** 2).sum((-2, -1)) for tensor in tensors)
    return -total / sum(tensor.shape[-2] * tensor.shape[-1] for tensor in tensors)


class FairDarts(SearchMethod):
    """FairDARTS: independent sigmoid weights, the zero-one loss and a threshold."""

    def normalise(self, kind: str, raw: Tensor, cell: str, draw: Any) -> Tensor | None:
        return torch.sigmoid(raw)

    def architecture_loss(self, arch: Mapping[str, Tensor], weights: MixtureWeights
                          ) -> Tensor | None:
        scale = float(self.settings["zero_one"])
        by_kind: dict[str, list[Tensor]] = {}
        for name, tensor in arch.items():
            if kinds.of(name) in kinds.MIXTURES:
                by_kind.setdefault(kinds.of(name), []).append(tensor)
        if not scale or not by_kind:
            return None
        return scale * sum(zero_one_term(tensors) for tensors in by_kind.values())

    def threshold(self, kind: str) -> float | None:
        return float(self.settings["threshold"]) if kind in kinds.MIXTURES else None
