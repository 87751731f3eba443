"""auxiliary_skip(decay): DARTS-'s auxiliary skip connection (Chu et al., ICLR 2021).

Every edge's operation mixture gets ``+ b * aux(x)``, b falling from 1 to 0 over the search
(`decay_weight`), gone at derivation. As DARTS-'s code (`MixedOp` of Meituan-AutoML/DARTS-):
`aux` is the identity at stride 1 and its own `FactorizedReduce(C, C, affine=False)` at stride 2,
separate from the skip_connect candidate's. At stride 1 a space that lists skip_connect adds b to
skip_connect's weight instead (the same sum: no module, no extra kernel); otherwise each edge gets
an extra candidate whose weight, the last column of alpha, is b. The second mixture of
`double_mixed` gets none. Hooks: `extra_candidates`, `adjust`, `epoch_start`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attdarts.language import ir, kinds
from attdarts.networks.methods import CellWeights, SearchMethod
from attdarts.networks.operations import FactorizedReduce

SKIP_CONNECT = "skip_connect"


def decay_weight(decay: str, epoch: int, epochs: int) -> float:
    """DARTS-'s coefficient b in 0-based `epoch`: "linear" ``1 - epoch / epochs``, "cosine"
    ``(1 + cos(pi epoch / epochs)) / 2`` (DARTS-'s code, src/utils.py `DecayScheduler` with its
    defaults T_start 0, T_max = T_stop = epochs; linear is its scripts' choice)."""
    if decay == "linear":
        return 1.0 - epoch / epochs
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


class AuxiliarySkip(SearchMethod):
    """DARTS-: + b * skip(x) on every operation mixture."""

    def __init__(self, space: ir.Space, settings) -> None:
        super().__init__(space, settings)
        self.register_buffer("b", torch.ones(()), persistent=False)
        names = space.location_spec.columns(space)[kinds.OPERATION]
        self.folded = SKIP_CONNECT in names  # stride 1: b goes onto skip_connect's weight
        if self.folded:
            column = names.index(SKIP_CONNECT)
            for cell in ir.CELL_KINDS:
                fold = torch.zeros(_edges(space.nodes), len(names))
                for row, source in enumerate(_sources(space.nodes)):
                    if cell == "normal" or source >= len(ir.INPUTS):  # stride-1 edges
                        fold[row, column] = 1.0
                self.register_buffer(f"fold_{cell}", fold, persistent=False)

    def extra_candidates(self, channels: int, stride: int) -> list[nn.Module]:
        if stride == 2:
            return [FactorizedReduce(channels, channels, affine=False)]
        return [] if self.folded else [nn.Identity()]

    def adjust(self, weights: CellWeights, cell: int) -> CellWeights:
        alpha = weights.alpha
        b = self.b.to(alpha.dtype)
        if self.folded:
            alpha = alpha + b * getattr(self, f"fold_{ir.CELL_KINDS[cell]}").to(alpha.dtype)
        # the extra candidate's weight (stride-2 edges, or every edge without skip_connect)
        alpha = torch.cat([alpha, b.expand(*alpha.shape[:-1], 1)], dim=-1)
        return weights._replace(alpha=alpha)

    def epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        value = decay_weight(self.settings["decay"], epoch, epochs)
        with torch.no_grad():
            self.b.fill_(value)
        return {"auxiliary_skip": value}


def _sources(nodes: int) -> list[int]:
    """The input index of every edge in DARTS order (0: c_k2, 1: c_k1, 2 + j: node j)."""
    return [source for node in range(nodes) for source in range(2 + node)]


def _edges(nodes: int) -> int:
    return len(_sources(nodes))
