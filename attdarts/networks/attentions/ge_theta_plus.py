"""`ge_theta_plus`: gather-excite GE-theta+ (Hu et al., NeurIPS 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attdarts.networks.attentions.base import MaskingAttention, attach_grouped_rules
from attdarts.networks.grouping import Group, Modules, batch_norm, conv2d, masked
from attdarts.networks.operations import hidden_width

__all__ = ["GatherExcite", "ge_theta_plus"]


class GatherExcite(MaskingAttention):
    """GE-theta+ (Hu et al. 2018): a global depthwise conv gathers, an SE-like 1x1 MLP excites.

    The depthwise kernel spans the whole feature map, so the module is built for one spatial size
    (`spatial`); a larger map gives a larger gathered map, which is resized back to the input.
    """

    def __init__(self, channels: int, spatial: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = hidden_width(channels, reduction)
        self.gather = nn.Conv2d(channels, channels, spatial, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.conv_1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.conv_2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        gathered = self.conv_2(self.relu(self.conv_1(self.bn(self.gather(x)))))
        if gathered.shape[-2:] != (1, 1):  # static shape: a 1x1 map broadcasts as it is
            gathered = F.interpolate(gathered, size=x.shape[-2:], mode="nearest")
        return torch.sigmoid(gathered)


def ge_theta_plus(channels: int, *, spatial: int, reduction: int = 16) -> nn.Module:
    """Gather-excite GE-theta+, Hu et al. 2018: global depthwise gather of size `spatial`."""
    return GatherExcite(channels, spatial, reduction=reduction)


def _gather_excite_mask(modules: Modules, group: Group) -> Tensor:
    """Grouped: every convolution and the BN over the E*C stacked channels."""
    edges, x = group.edges, group.x
    gathered = conv2d(x, [m.gather for m in modules], edges)
    gathered = batch_norm(gathered, [m.bn for m in modules], edges)
    gathered = F.relu(conv2d(gathered, [m.conv_1 for m in modules], edges))
    gathered = conv2d(gathered, [m.conv_2 for m in modules], edges)
    if gathered.shape[-2:] != (1, 1):
        gathered = F.interpolate(gathered, size=x.shape[-2:], mode="nearest")
    return group.split(torch.sigmoid(gathered))


attach_grouped_rules(GatherExcite, forward=masked(_gather_excite_mask), mask=_gather_excite_mask)
