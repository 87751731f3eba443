"""`eca`: efficient channel attention (Wang et al., ECA-Net, CVPR 2020).

Checked against the authors' code (github.com/BangguWu/ECANet, models/eca_module.py): the same
layers, weights and numbers. Where it differs: their module takes the kernel size it is given
(default 3) and their networks pass hand-picked sizes; here `kernel_size = 0` (the default) picks
it by the paper's rule, Eq. 12, and any odd size can be given instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attdarts.networks.attentions.base import MaskingAttention, attach_grouped_rules
from attdarts.networks.grouping import Group, Modules, masked

__all__ = ["EfficientChannelAttention", "adaptive_kernel_size", "eca"]


def adaptive_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's Eq. 12: k = |log2(C) / gamma + b / gamma|_odd, the odd number nearest t.

    The odd number nearest t in [2j, 2j + 2) is 2j + 1; at a tie (t even, e.g. C = 128) the
    larger one, as timm's `EcaModule` rounds. gamma = 2, b = 1 give k = 1 below 8 channels,
    k = 3 for 8 <= C < 128 and k = 5 for 128 <= C < 2048 (C = 144 and 256: 5)."""
    t = (math.log2(channels) + b) / gamma
    return 2 * math.floor(t / 2) + 1


class EfficientChannelAttention(MaskingAttention):
    """ECA: mask sigmoid(conv1d_k(avgpool(x))) per channel, one k-tap convolution shared by all
    channels (zero padding (k - 1) / 2, no bias): k parameters."""

    def __init__(self, channels: int, kernel_size: int = 0) -> None:
        super().__init__()
        size = kernel_size or adaptive_kernel_size(channels)
        if size < 1 or size % 2 == 0:
            raise ValueError(f"eca: kernel_size must be odd (or 0 for the paper's rule), "
                             f"got {kernel_size}")
        self.conv = nn.Conv1d(1, 1, size, padding=(size - 1) // 2, bias=False)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))[:, None, :]  # (batch, 1, channels): channels as the length
        return torch.sigmoid(self.conv(pooled))[:, 0, :, None, None]  # (batch, channels, 1, 1)


def eca(channels: int, *, spatial: int, kernel_size: int = 0) -> nn.Module:
    """Efficient channel attention, Wang et al. 2020 (k by Eq. 12 unless `kernel_size` is set)."""
    return EfficientChannelAttention(channels, kernel_size=kernel_size)


def _eca_mask(modules: Modules, group: Group) -> Tensor:
    """Grouped: the E edges as E channels of one grouped 1-D convolution over their C values."""
    first = modules[0].conv
    pooled = group.split(group.x.mean(dim=(2, 3)))  # (N, E, C)
    weight = torch.cat([m.conv.weight for m in modules])  # (E, 1, k)
    out = F.conv1d(pooled, weight, padding=first.padding, groups=group.edges)
    return torch.sigmoid(out)[..., None, None]  # (N, E, C, 1, 1)


attach_grouped_rules(EfficientChannelAttention, forward=masked(_eca_mask), mask=_eca_mask)
