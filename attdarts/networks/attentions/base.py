"""What every attention module shares: the masking form and the hook for grouped rules.

Attention modules come in two kinds (Att-DARTS, Nakai et al. 2020, Eq. 15-17). Masking modules
have ``mask(x)``, a tensor broadcastable to `x`, and return ``x * mask(x)``; the supernet's
Att-DARTS-P mixes them as ``exp(sum_a t_a log mask_a(h)) * h`` (Eq. 17), so a module usable with
``mixing = product`` must be one. Additive modules (``adds_residual = True``, no `mask`) add a
branch to their input and are excluded from Eq. 17.

A module may also declare its grouped rule (`attach_grouped_rules`): how E edges' copies run at
once on a `grouping.Group` (``(N, E*C, H, W)``, edge-major). Without one, the grouped search runs
it edge by edge, with the same numbers and less speed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from attdarts.networks.grouping import Group, Modules

__all__ = ["GroupedRule", "MaskingAttention", "attach_grouped_rules"]

GroupedRule = Callable[[Modules, Group], Tensor]


class MaskingAttention(nn.Module):
    """An attention module of the form x * mask(x) (paper Eq. 15).

    Subclasses implement `mask`; Att-DARTS-P (Eq. 17) calls it directly to mix masks in log space.
    """

    adds_residual = False

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)


def attach_grouped_rules(kind: type, *, forward: GroupedRule,
                         mask: GroupedRule | None = None) -> None:
    """Declare `kind`'s grouped forward (``(N, E*C, H, W)`` out) and, for a masking module, its
    grouped mask (``(N, E, c, h, w)``); `attdarts.networks.grouping` looks them up on the class
    itself, so a subclass that computes something else does not inherit them."""
    kind.grouped_forward = staticmethod(forward)
    if mask is not None:
        kind.grouped_mask = staticmethod(mask)
