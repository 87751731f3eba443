"""smoothing(start, end): SDARTS-RS, random smoothing (Chen and Hsieh, ICML 2020).

As SDARTS's code (xiangning-chen/SmoothDARTS, sota/cnn/train_search.py with
attacker/perturb.py `Random_alpha`): the weight step's mixture weights are the softmaxed
architecture weights plus uniform noise in [-eps, eps], clipped to [0, 1] and renormalised per
row (a row that clips to all zeros becomes one-hot on its largest noisy entry, their
`model.clip`); the forward uses them as they are, and the architecture itself is not changed.
eps grows linearly over the search, ``start + (end - start) * t / E`` in 0-based epoch t of E
(their 0.03 to `--epsilon_alpha`, default 0.3). Every mixture kind (alpha, beta, gamma) is
perturbed, edge weights are not; the noise comes from the run's method generator (one per seed),
so a resume and a seed run with others draw the same. Hooks: `before_weight_step`,
`epoch_start`, `capture_key`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attdarts.language import kinds
from attdarts.networks.methods import CellWeights, Random, SearchMethod


def perturb(weights: Tensor, epsilon: float, random: Random) -> Tensor:
    """``weights + U[-eps, eps]``, clipped to [0, 1], each row divided by its sum (a row of
    zeros: one-hot on its largest entry before clipping)."""
    noise = random.draw_like(weights, lambda out, g: out.uniform_(-epsilon, epsilon, generator=g))
    noisy = weights + noise
    largest = torch.zeros_like(noisy).scatter_(-1, noisy.argmax(dim=-1, keepdim=True), 1.0)
    clipped = noisy.clamp(0.0, 1.0)
    clipped = torch.where(clipped.sum(dim=-1, keepdim=True) == 0, largest, clipped)
    return clipped / clipped.sum(dim=-1, keepdim=True)


class RandomSmoothing(SearchMethod):
    """SDARTS-RS: the weight step sees noisy mixture weights."""

    def __init__(self, space, settings) -> None:
        super().__init__(space, settings)
        self.epsilon = float(self.settings["start"])  # set by `epoch_start`

    def epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        start, end = self.settings["start"], self.settings["end"]
        self.epsilon = start + (end - start) * epoch / epochs
        return {"smoothing": self.epsilon}

    def before_weight_step(self, weights: CellWeights, cell: int, random: Random) -> CellWeights:
        changed = {kind: perturb(getattr(weights, kind), self.epsilon, random)
                   for kind in kinds.MIXTURES if getattr(weights, kind) is not None}
        return weights._replace(**changed)

    def capture_key(self) -> tuple:
        return (self.epsilon,)
