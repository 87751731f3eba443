"""auxiliary_identity(decay): DARTS-'s auxiliary skip carried over to attentions (new here).

Every attention mixture (after each edge, and on the cell output) gets ``+ b * h``, b falling
from 1 to 0 as for `auxiliary_skip`. Hooks: `adjust` (the coefficient rides in
`CellWeights.identity`), `epoch_start`.
"""

from __future__ import annotations

import torch

from attdarts.language import ir
from attdarts.networks.methods import CellWeights, SearchMethod
from attdarts.networks.methods.auxiliary_skip import decay_weight


class AuxiliaryIdentity(SearchMethod):
    """+ b * h on every attention mixture."""

    def __init__(self, space: ir.Space, settings) -> None:
        super().__init__(space, settings)
        self.register_buffer("b", torch.ones(()), persistent=False)

    def adjust(self, weights: CellWeights, cell: int) -> CellWeights:
        return weights._replace(identity=self.b)

    def epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        value = decay_weight(self.settings["decay"], epoch, epochs)
        with torch.no_grad():
            self.b.fill_(value)
        return {"auxiliary_identity": value}
