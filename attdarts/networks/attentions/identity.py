"""`identity`: no attention, the candidate that lets the search keep an edge unchanged."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attdarts.networks.attentions.base import MaskingAttention, attach_grouped_rules
from attdarts.networks.grouping import Group, Modules

__all__ = ["IdentityAttention", "identity"]


class IdentityAttention(MaskingAttention):
    """No attention: the mask is all ones (log mask = 0 in Eq. 17), the output is `x` itself."""

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_ones((1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def identity(channels: int, *, spatial: int) -> nn.Module:
    """No attention (the candidate that lets the search keep an edge unchanged)."""
    return IdentityAttention()


def _identity(modules: Modules, group: Group) -> Tensor:
    return group.x


attach_grouped_rules(IdentityAttention, forward=_identity)
