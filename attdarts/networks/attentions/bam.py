"""`bam`: the bottleneck attention module (Park et al., BMVC 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attdarts.networks.attentions.base import MaskingAttention, attach_grouped_rules
from attdarts.networks.grouping import Group, Modules, layers_of, masked, run_layers
from attdarts.networks.operations import hidden_width

__all__ = ["BottleneckAttention", "bam"]


class BottleneckAttention(MaskingAttention):
    """BAM (Park et al. 2018): mask 1 + sigmoid(combine(channel gate, spatial gate)).

    The paper (and the BAM paper) combine the gates by sum; the authors' code (and BAM's own code)
    by product. `combine` picks one; the parameters are identical. All linears and convolutions
    have biases.
    """

    def __init__(
        self, channels: int, reduction: int = 16, dilation: int = 4, combine: str = "sum"
    ) -> None:
        super().__init__()
        if combine not in ("sum", "product"):
            raise ValueError(f"bam: combine must be 'sum' or 'product', not {combine!r}")
        self.product = combine == "product"
        hidden = hidden_width(channels, reduction)
        self.channel_gate = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=False),
            nn.Linear(hidden, channels),
        )
        layers: list[nn.Module] = [
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=False),
        ]
        for _ in range(2):
            layers += [
                nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=False),
            ]
        layers.append(nn.Conv2d(hidden, 1, 1))
        self.spatial_gate = nn.Sequential(*layers)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Channel gate (batch, C, 1, 1) and spatial gate (batch, 1, H, W), before the sigmoid."""
        channel = self.channel_gate(x.mean(dim=(2, 3)))[:, :, None, None]
        return channel, self.spatial_gate(x)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        channel, spatial = self.gates(x)
        combined = channel * spatial if self.product else channel + spatial
        return 1.0 + torch.sigmoid(combined)

    def extra_repr(self) -> str:
        return f"combine={'product' if self.product else 'sum'}"


def bam(
    channels: int, *, spatial: int, reduction: int = 16, dilation: int = 4, combine: str = "sum"
) -> nn.Module:
    """Bottleneck attention module, Park et al. 2018 (r = 16, d = 4; combine sum as the paper)."""
    return BottleneckAttention(channels, reduction=reduction, dilation=dilation, combine=combine)


def _bottleneck_mask(modules: Modules, group: Group) -> Tensor:
    """Grouped: both gates' layers run position by position over the E edges."""
    edges, x = group.edges, group.x
    channel = run_layers(layers_of([m.channel_gate for m in modules]), x.mean(dim=(2, 3)), edges)
    spatial = run_layers(layers_of([m.spatial_gate for m in modules]), x, edges)
    channel = group.split(channel)[..., None, None]  # (N, E, C, 1, 1)
    spatial = spatial.unsqueeze(2)  # (N, E, 1, H, W)
    combined = channel * spatial if modules[0].product else channel + spatial
    return 1.0 + torch.sigmoid(combined)


attach_grouped_rules(BottleneckAttention, forward=masked(_bottleneck_mask), mask=_bottleneck_mask)
