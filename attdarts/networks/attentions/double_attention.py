"""`double_attention`: the A^2 block (Chen et al., NeurIPS 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attdarts.networks.attentions.base import attach_grouped_rules
from attdarts.networks.grouping import Group, Modules, conv2d
from attdarts.networks.operations import hidden_width

__all__ = ["DoubleAttention", "double_attention"]


class DoubleAttention(nn.Module):
    """A^2 block (Chen et al. 2018): gather with attention maps, distribute with attention vectors.

    A = conv_a(x) (M channels); B = softmax over positions of conv_b(x), V = softmax over channels
    of conv_v(x) (N channels each); G = A B^T, Z = G V; output x + conv_out(Z). It adds, so it has
    no mask (excluded from Att-DARTS-P, Eq. 17). All four 1x1 convolutions have biases.
    """

    adds_residual = True

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        width = hidden_width(channels, reduction)  # M = N = C / 4 in the paper
        self.conv_a = nn.Conv2d(channels, width, 1)
        self.conv_b = nn.Conv2d(channels, width, 1)
        self.conv_v = nn.Conv2d(channels, width, 1)
        self.conv_out = nn.Conv2d(width, channels, 1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The branch added to `x`: conv_out(Z), shaped like `x`."""
        batch, _, height, width = x.shape
        features = self.conv_a(x).flatten(2)  # (batch, M, H*W)
        maps = torch.softmax(self.conv_b(x).flatten(2), dim=-1)  # (batch, N, H*W)
        vectors = torch.softmax(self.conv_v(x).flatten(2), dim=1)  # (batch, N, H*W)
        descriptors = torch.bmm(features, maps.transpose(1, 2))  # (batch, M, N)
        distributed = torch.bmm(descriptors, vectors)  # (batch, M, H*W)
        return self.conv_out(distributed.reshape(batch, -1, height, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attend(x)


def double_attention(channels: int, *, spatial: int, reduction: int = 4) -> nn.Module:
    """Double-attention (A^2) block, Chen et al. 2018 (M = N = C / 4)."""
    return DoubleAttention(channels, reduction=reduction)


def _double_attention(modules: Modules, group: Group) -> Tensor:
    """Grouped: the 1x1 convolutions as E-group convolutions, the products batched per edge."""
    edges, x = group.edges, group.x
    batch, _, height, width = x.shape

    def project(name: str) -> Tensor:  # (N*E, M, H*W)
        out = conv2d(x, [getattr(m, name) for m in modules], edges)
        return out.reshape(batch * edges, -1, height * width)

    features = project("conv_a")
    maps = torch.softmax(project("conv_b"), dim=-1)
    vectors = torch.softmax(project("conv_v"), dim=1)
    descriptors = torch.bmm(features, maps.transpose(1, 2))
    distributed = torch.bmm(descriptors, vectors).reshape(batch, -1, height, width)
    return x + conv2d(distributed, [m.conv_out for m in modules], edges)


attach_grouped_rules(DoubleAttention, forward=_double_attention)
