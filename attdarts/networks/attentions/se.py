"""`se`: squeeze-and-excitation (Hu et al., CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attdarts.networks.attentions.base import MaskingAttention, attach_grouped_rules
from attdarts.networks.grouping import Group, Modules, linear, masked
from attdarts.networks.operations import hidden_width

__all__ = ["SqueezeExcitation", "se"]


class SqueezeExcitation(MaskingAttention):
    """SE (Hu et al. 2018): channel mask sigmoid(W2 relu(W1 avgpool(x))), linears without bias."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = hidden_width(channels, reduction)
        self.fc_1 = nn.Linear(channels, hidden, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.fc_2 = nn.Linear(hidden, channels, bias=False)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean(dim=(2, 3))  # (batch, channels)
        excited = self.fc_2(self.relu(self.fc_1(squeezed)))
        return torch.sigmoid(excited)[:, :, None, None]  # (batch, channels, 1, 1)


def se(channels: int, *, spatial: int, reduction: int = 16) -> nn.Module:
    """Squeeze-and-excitation, Hu et al. 2018 (r = 16)."""
    return SqueezeExcitation(channels, reduction=reduction)


def _squeeze_excitation_mask(modules: Modules, group: Group) -> Tensor:
    """Grouped: the E edges' linears as grouped 1-wide convolutions on the pooled (N, E*C)."""
    edges = group.edges
    squeezed = group.x.mean(dim=(2, 3))  # (N, E*C)
    hidden = F.relu(linear(squeezed, [m.fc_1 for m in modules], edges))
    excited = linear(hidden, [m.fc_2 for m in modules], edges)
    return group.split(torch.sigmoid(excited))[..., None, None]


attach_grouped_rules(SqueezeExcitation, forward=masked(_squeeze_excitation_mask),
                     mask=_squeeze_excitation_mask)
