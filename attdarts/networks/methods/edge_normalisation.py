"""edge_normalisation: PC-DARTS's edge normalisation (Xu et al., ICLR 2020).

One more architecture kind, `kinds.EDGE`: one weight per edge (`arch.edges_normal`,
`arch.edges_reduce`, shape (edges,), initialised like alpha, drawn last). Node j sums its edges
scaled by a softmax over its incoming edges' weights; derivation ranks a node's edges by (largest
non-`none` operation weight) x (normalised edge weight). Hooks: `architecture`, `edge_scales`
(the forward scales each edge by `CellWeights.edges`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from attdarts.language import kinds
from attdarts.networks.methods import SearchMethod
from attdarts.networks.mixtures import edge_names, normalise_edges


class EdgeNormalisation(SearchMethod):
    """PC-DARTS: a weight per edge, normalised over each node's incoming edges."""

    def architecture(self) -> dict[str, list[str]]:
        return {kinds.EDGE: edge_names(self.space.nodes)}

    def edge_scales(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        return normalise_edges(tensors[kinds.EDGE].detach().to("cpu", torch.float64),
                               self.space.nodes)
