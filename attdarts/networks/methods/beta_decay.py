"""beta_decay(lambda, schedule): beta-DARTS's regulariser (Ye et al., CVPR 2022).

The architecture loss gets ``lambda_t * R`` with R the mean over the rows of alpha, beta and gamma
of both cell types, pooled, of logsumexp(row) (an edge of alpha and an edge of beta count once
each; gamma's single row counts once): beta-DARTS's `mlc_loss` (Sunshine-Ye/Beta-DARTS,
optimizers/darts/architect.py) read for several tensors. Edge weights are not regularised.
lambda_t in 0-based epoch t of E: "linear" lambda * t / E (their code: ``50 * epoch / 100``),
"constant" lambda. R does not depend on the weights, so the term adds its gradient to the first-
and the second-order architecture gradient alike. Hooks: `architecture_loss`, `epoch_start`,
`capture_key` (lambda_t is a Python float: a captured step re-captures once per epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from attdarts.language import kinds
from attdarts.networks.methods import MixtureWeights, SearchMethod


def beta_decay_term(tensors: Sequence[Tensor]) -> Tensor:
    """The mean over the rows of all `tensors` of logsumexp(row).

    Each tensor is (..., rows, candidates); leading dimensions (seeds) are kept. Rows of tensors
    of different widths are pooled, so every edge of alpha and of the attention weights counts
    once (gamma's one row counts once).
    """
    total = sum(torch.logsumexp(tensor, dim=-1).sum(dim=-1) for tensor in tensors)
    return total / sum(tensor.shape[-2] for tensor in tensors)


def weight(value: float, schedule: str, epoch: int, epochs: int) -> float:
    """lambda_t in 0-based `epoch`: `value` throughout ("constant") or ``value * epoch / epochs``
    ("linear", growing from 0 towards lambda)."""
    return value if schedule == "constant" else value * epoch / epochs


class BetaDecay(SearchMethod):
    """beta-DARTS: + lambda_t * mean logsumexp of the architecture rows."""

    lambda_t = 0.0  # set by `epoch_start`

    def epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        self.lambda_t = weight(self.settings["lambda"], self.settings["schedule"], epoch, epochs)
        return {"beta_decay": self.lambda_t}

    def architecture_loss(self, arch: Mapping[str, Tensor], weights: MixtureWeights
                          ) -> Tensor | None:
        tensors = [tensor for name, tensor in arch.items() if kinds.of(name) in kinds.MIXTURES]
        if not self.lambda_t or not tensors:
            return None
        return self.lambda_t * beta_decay_term(tensors)

    def capture_key(self) -> tuple:
        return (self.lambda_t,)
