"""`cbam`: the convolutional block attention module (Woo et al., ECCV 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attdarts.networks.attentions.base import MaskingAttention, attach_grouped_rules
from attdarts.networks.grouping import (
    Group, Modules, batch_norm, conv2d, layers_of, run_layers,
)
from attdarts.networks.operations import hidden_width

__all__ = ["ConvBlockAttention", "cbam"]


class ConvBlockAttention(MaskingAttention):
    """CBAM (Woo et al. 2018): channel gate (avg + max pooled, shared MLP), then a 7x7 spatial gate.

    The spatial gate sees the channel-gated map; the total mask is channel * spatial. The MLP has
    biases, the 7x7 conv none, its BN momentum 0.01 (as CBAM's code).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = hidden_width(channels, reduction)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=False),
            nn.Linear(hidden, channels),
        )
        self.spatial_conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1, momentum=0.01)

    def channel_mask(self, x: torch.Tensor) -> torch.Tensor:
        """sigmoid(MLP(avgpool x) + MLP(maxpool x)), shaped (batch, C, 1, 1)."""
        pooled = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return torch.sigmoid(pooled)[:, :, None, None]

    def spatial_mask(self, x: torch.Tensor) -> torch.Tensor:
        """sigmoid(BN(conv7x7([max over channels, mean over channels]))), (batch, 1, H, W)."""
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial_bn(self.spatial_conv(pooled)))

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        channel = self.channel_mask(x)
        return channel * self.spatial_mask(x * channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same as x * mask(x), reusing the channel-gated map instead of forming the full mask.
        gated = x * self.channel_mask(x)
        return gated * self.spatial_mask(gated)


def cbam(channels: int, *, spatial: int, reduction: int = 16) -> nn.Module:
    """Convolutional block attention module, Woo et al. 2018 (r = 16)."""
    return ConvBlockAttention(channels, reduction=reduction)


def _cbam_channel(modules: Modules, group: Group) -> Tensor:
    layers = layers_of([m.mlp for m in modules])
    x = group.x
    pooled = (run_layers(layers, x.mean(dim=(2, 3)), group.edges)
              + run_layers(layers, x.amax(dim=(2, 3)), group.edges))
    return group.split(torch.sigmoid(pooled))[..., None, None]


def _cbam_spatial(modules: Modules, gated: Tensor, edges: int) -> Tensor:
    """`gated` is ``(N, E, C, H, W)``; returns ``(N, E, 1, H, W)``."""
    pooled = torch.stack([gated.amax(dim=2), gated.mean(dim=2)], dim=2).flatten(1, 2)
    conv = conv2d(pooled, [m.spatial_conv for m in modules], edges)  # (N, E, H, W)
    return torch.sigmoid(batch_norm(conv, [m.spatial_bn for m in modules], edges)).unsqueeze(2)


def _cbam_mask(modules: Modules, group: Group) -> Tensor:
    channel = _cbam_channel(modules, group)
    return channel * _cbam_spatial(modules, group.split(group.x) * channel, group.edges)


def _cbam(modules: Modules, group: Group) -> Tensor:
    gated = group.split(group.x) * _cbam_channel(modules, group)
    return (gated * _cbam_spatial(modules, gated, group.edges)).flatten(1, 2)


attach_grouped_rules(ConvBlockAttention, forward=_cbam, mask=_cbam_mask)
