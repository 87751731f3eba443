"""`simam`: the parameter-free attention module SimAM (Yang et al., ICML 2021).

Checked against the authors' code (github.com/ZjjConan/SimAM, networks/attentions/
simam_module.py): the same numbers, except on a 1x1 map, where their n = H*W - 1 = 0 makes the
variance 0/0 and the output NaN. Here the count is max(H*W - 1, 1): a 1x1 map has no spread
(d = 0), so its mask is sigmoid(1/2) everywhere, the value the formula takes for any map whose
pixels of a channel are equal.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attdarts.networks.attentions.base import MaskingAttention, attach_grouped_rules
from attdarts.networks.grouping import Group, Modules, masked

__all__ = ["SimAM", "energy_mask", "simam"]


def energy_mask(x: torch.Tensor, e_lambda: float) -> torch.Tensor:
    """SimAM's Eq. 5 and 6: per channel, d = (x - mean)^2, v = sum(d) / (H*W - 1), mask
    sigmoid(d / (4 (v + lambda)) + 1/2), the inverse of each neuron's minimal energy (guarded at
    1x1: see the module's docstring). Per channel, so it runs on stacked edges as it is."""
    count = max(x.shape[2] * x.shape[3] - 1, 1)
    deviation = (x - x.mean(dim=(2, 3), keepdim=True)).square()
    variance = deviation.sum(dim=(2, 3), keepdim=True) / count
    return torch.sigmoid(deviation / (4 * (variance + e_lambda)) + 0.5)


class SimAM(MaskingAttention):
    """SimAM: no parameters; `e_lambda` is the energy's regulariser (their default 1e-4)."""

    def __init__(self, e_lambda: float = 1e-4) -> None:
        super().__init__()
        if not e_lambda > 0:
            raise ValueError(f"simam: e_lambda must be positive, got {e_lambda}")
        self.e_lambda = float(e_lambda)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        return energy_mask(x, self.e_lambda)

    def extra_repr(self) -> str:
        return f"e_lambda={self.e_lambda:g}"


def simam(channels: int, *, spatial: int, e_lambda: float = 1e-4) -> nn.Module:
    """SimAM, Yang et al. 2021 (lambda = 1e-4)."""
    return SimAM(e_lambda)


def _simam_mask(modules: Modules, group: Group) -> Tensor:
    """Grouped: per channel, so the stacked map is one map of E*C channels."""
    return group.split(energy_mask(group.x, modules[0].e_lambda))


attach_grouped_rules(SimAM, forward=masked(_simam_mask), mask=_simam_mask)
