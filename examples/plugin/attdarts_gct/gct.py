"""The gated channel transformation (GCT; Yang, Zhu, Wu and Yang, CVPR 2020), written from the
paper's Eq. 1-3 (l2 embedding)."""

import torch
from torch import nn

from attdarts.networks.attentions.base import MaskingAttention


class GatedChannelTransformation(MaskingAttention):
    """mask = 1 + tanh(gamma * s_hat + beta), with s = alpha * ||x_c||_2 (the channel's embedding)
    and s_hat = sqrt(C) * s / ||s||_2 (normalised across channels); alpha starts at 1, gamma and
    beta at 0, so the module starts as the identity. 3C parameters.

    A masking module (`mask`), so it also takes part in mixing = product. It declares no
    grouped rule: the grouped search runs it edge by edge (same numbers)."""

    def __init__(self, channels: int, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.epsilon = epsilon

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        embedding = self.alpha * (x.square().sum(dim=(2, 3), keepdim=True) + self.epsilon).sqrt()
        norm = (embedding.square().sum(dim=1, keepdim=True) + self.epsilon).sqrt()
        normalised = embedding * x.shape[1] ** 0.5 / norm
        return 1 + torch.tanh(self.gamma * normalised + self.beta)  # (batch, C, 1, 1)


def gct(channels: int, *, spatial: int, epsilon: float = 1e-5) -> nn.Module:
    """attdarts's attention signature: channels, the map's size, then the DSL's keywords."""
    return GatedChannelTransformation(channels, epsilon=epsilon)
