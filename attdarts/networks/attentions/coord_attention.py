"""`coord_attention`: coordinate attention (Hou et al., CVPR 2021).

Checked against the authors' code (github.com/Andrew-Qibin/CoordAttention, coordatt.py): the same
layers, parameters and numbers (their hard-swish x * relu6(x + 3) / 6 is torch's `hardswish`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attdarts.networks.attentions.base import MaskingAttention, attach_grouped_rules
from attdarts.networks.grouping import Group, Modules, batch_norm, conv2d, masked

__all__ = ["CoordinateAttention", "coord_attention"]


class CoordinateAttention(MaskingAttention):
    """Coordinate attention: pool along the width and along the height separately, encode both
    strips together (1x1 convolution to m = max(minimum_width, C // reduction) channels, BN,
    hard-swish), split them again and turn each into a gate (1x1 convolution back to C,
    sigmoid); the mask is the product of the height gate (batch, C, H, 1) and the width gate
    (batch, C, 1, W). Convolutions have biases: 3mC + 3m + 2C parameters with the BN's."""

    def __init__(self, channels: int, reduction: int = 32, minimum_width: int = 8) -> None:
        super().__init__()
        width = max(minimum_width, channels // reduction)
        self.conv_1 = nn.Conv2d(channels, width, 1)
        self.bn = nn.BatchNorm2d(width)
        self.conv_h = nn.Conv2d(width, channels, 1)
        self.conv_w = nn.Conv2d(width, channels, 1)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The height gate (batch, C, H, 1) and the width gate (batch, C, 1, W)."""
        height = x.shape[2]
        strips = torch.cat([x.mean(dim=3, keepdim=True),  # (batch, C, H, 1)
                            x.mean(dim=2, keepdim=True).transpose(2, 3)], dim=2)  # + (.., W, 1)
        encoded = F.hardswish(self.bn(self.conv_1(strips)))  # (batch, m, H + W, 1)
        along_height = torch.sigmoid(self.conv_h(encoded[:, :, :height]))
        along_width = torch.sigmoid(self.conv_w(encoded[:, :, height:])).transpose(2, 3)
        return along_height, along_width

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        along_height, along_width = self.gates(x)
        return along_height * along_width  # (batch, C, H, W)


def coord_attention(channels: int, *, spatial: int, reduction: int = 32,
                    minimum_width: int = 8) -> nn.Module:
    """Coordinate attention, Hou et al. 2021 (reduction 32, at least 8 hidden channels)."""
    return CoordinateAttention(channels, reduction=reduction, minimum_width=minimum_width)


def _coordinate_mask(modules: Modules, group: Group) -> Tensor:
    """Grouped: the strips of E edges stacked along the channels, the 1x1 convolutions as E-group
    convolutions, the BN over the E*m channels (each edge's statistics its own)."""
    edges, x = group.edges, group.x
    height = x.shape[2]
    strips = torch.cat([x.mean(dim=3, keepdim=True),
                        x.mean(dim=2, keepdim=True).transpose(2, 3)], dim=2)  # (N, E*C, H+W, 1)
    encoded = conv2d(strips, [m.conv_1 for m in modules], edges)
    encoded = F.hardswish(batch_norm(encoded, [m.bn for m in modules], edges))
    along_height = torch.sigmoid(conv2d(encoded[:, :, :height], [m.conv_h for m in modules], edges))
    along_width = torch.sigmoid(conv2d(encoded[:, :, height:], [m.conv_w for m in modules], edges))
    return group.split(along_height) * group.split(along_width.transpose(2, 3))  # (N, E, C, H, W)


attach_grouped_rules(CoordinateAttention, forward=masked(_coordinate_mask), mask=_coordinate_mask)
