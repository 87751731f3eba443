"""Softmax mixtures of candidates on one edge (Eq. 9, 10, 17), plain and over grouped edges.

`MixedOperation` is Eq. 9 over operations (or operations + attentions in the mixed locations);
`MixedAttention` mixes attention modules by `sum` (Att-DARTS-S, Eq. 10) or `product`
(Att-DARTS-P, Eq. 17: masks mixed in log space, each clamped to at least `MASK_FLOOR`). The
`mix_*_grouped` functions compute the same sums for E edges at once (`grouping.Group`).
"""

from __future__ import annotations

import torch
from torch import nn

from attdarts.networks import grouping as grouped
from attdarts.networks.attentions import IdentityAttention
from attdarts.networks.operations import Zero

__all__ = [
    "MASK_FLOOR", "MixedAttention", "MixedOperation", "mix_attentions_grouped",
    "mix_operations_grouped",
]

MASK_FLOOR = 1e-6  # masks are clamped to at least this before log (Eq. 17)


class MixedOperation(nn.Module):
    """Eq. 9: ``sum_o s_o o(x)`` over the candidates (operations, or operations + attentions)."""

    def __init__(self, candidates: list[nn.Module]) -> None:
        super().__init__()
        self.candidates = nn.ModuleList(candidates)
        active = tuple(i for i, module in enumerate(candidates) if not isinstance(module, Zero))
        # an all-`none` mixture still needs an output of the right shape
        self.active = active or (0,)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for index in self.active:
            term = weights[index] * self.candidates[index](x)
            out = term if out is None else out + term
        return out


class MixedAttention(nn.Module):
    """An attention mixture: Eq. 10 (`sum`) or Eq. 17 (`product`, masks mixed in log space)."""

    def __init__(self, modules: list[nn.Module], mixing: str) -> None:
        super().__init__()
        if mixing not in ("sum", "product"):
            raise ValueError(f"unknown mixing {mixing!r}; expected 'sum' or 'product'")
        self.candidates = nn.ModuleList(modules)
        self.product = mixing == "product"
        if self.product:
            for module in modules:
                if getattr(module, "adds_residual", False) or not hasattr(module, "mask"):
                    raise ValueError(
                        f"mixing 'product' (Eq. 17) needs masking attentions; "
                        f"{type(module).__name__} adds to its input instead")
            # the identity's mask is 1 and its log 0: it adds nothing to the exponent
            self.masked = tuple(
                i for i, module in enumerate(modules) if not isinstance(module, IdentityAttention))

    def forward(self, h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.product:
            exponent = None
            for index in self.masked:
                mask = self.candidates[index].mask(h).clamp_min(MASK_FLOOR)
                term = weights[index] * torch.log(mask)
                exponent = term if exponent is None else exponent + term
            return h if exponent is None else h * torch.exp(exponent)
        out = None
        for index, module in enumerate(self.candidates):
            term = weights[index] * module(h)
            out = term if out is None else out + term
        return out


def _column(weights: torch.Tensor, index: int, like: torch.Tensor) -> torch.Tensor:
    """Column `index` of an (E, K) weight matrix, shaped to scale the (N, E, C, H, W) map `like`
    and in its dtype: the plain path's 0-dim weight does not promote a bf16 map either."""
    return weights[:, index].reshape(1, -1, 1, 1, 1).to(like.dtype)


def mix_operations_grouped(
    mixtures: list[MixedOperation], group: grouped.Group, weights: torch.Tensor
) -> torch.Tensor:
    """Eq. 9 on E edges at once: `weights` is (E, K); returns (N, E, C, H', W')."""
    total = None
    for index in mixtures[0].active:
        candidates = [mixture.candidates[index] for mixture in mixtures]
        out = group.split(grouped.forward(candidates, group))
        term = out * _column(weights, index, out)
        total = term if total is None else total + term
    return total


def mix_attentions_grouped(
    mixtures: list[MixedAttention], group: grouped.Group, weights: torch.Tensor
) -> torch.Tensor:
    """Eq. 10 (`sum`) or Eq. 17 (`product`) on E edges at once; returns (N, E, C, H, W)."""
    first = mixtures[0]
    if first.product:
        exponent = None
        for index in first.masked:
            candidates = [mixture.candidates[index] for mixture in mixtures]
            log_mask = torch.log(grouped.mask(candidates, group).clamp_min(MASK_FLOOR))
            term = _column(weights, index, log_mask) * log_mask
            exponent = term if exponent is None else exponent + term
        h = group.split(group.x)
        return h if exponent is None else h * torch.exp(exponent)
    total = None
    for index in range(len(first.candidates)):
        candidates = [mixture.candidates[index] for mixture in mixtures]
        out = group.split(grouped.forward(candidates, group))
        term = out * _column(weights, index, out)
        total = term if total is None else total + term
    return total
