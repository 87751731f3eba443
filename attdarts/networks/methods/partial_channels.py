"""partial_channels(k): PC-DARTS's partial channel connections (Xu et al., ICLR 2020).

Only the first C/k channels of an edge's input enter its mixtures (every candidate is built for
C/k channels, the attention mixture too); the other channels bypass them (max-pooled 2x2, stride
2, on a stride-2 edge), and the edge output is the channel shuffle (k groups) of [mixture,
bypass]. The `end` location's output attention still acts on the whole cell output. Hook:
`connector` (and `size_problem`: C must be divisible by k). k = 1 builds no connector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attdarts.networks.methods import SearchMethod


def channel_shuffle(x: torch.Tensor, groups: int, dim: int = 1) -> torch.Tensor:
    """PC-DARTS's channel shuffle on the channel axis `dim`: view the C channels as (groups,
    C / groups), swap the two, flatten back. Channel g * (C / groups) + i goes to i * groups + g."""
    return x.unflatten(dim, (groups, -1)).transpose(dim, dim + 1).flatten(dim, dim + 1)


class PartialConnection(nn.Module):
    """The partial channel connection of one edge with C channels and K groups.

    `split` gives the C/K channels that enter the mixtures and the C - C/K that bypass them;
    `join` max-pools the bypass (2x2, stride 2, on a stride-2 edge; ``ceil_mode`` so that an odd
    map gives ceil(H/2) like every other stride-2 layer here), concatenates [mixture, bypass] and
    shuffles the channels with K groups. No parameters.
    """

    def __init__(self, channels: int, groups: int, stride: int) -> None:
        super().__init__()
        if groups < 1 or channels % groups:
            raise ValueError(f"partial channels K={groups} need channels divisible by K; "
                             f"C={channels} is not")
        self.channels = channels
        self.groups = groups
        self.stride = stride
        self.active = channels // groups  # channels entering the mixtures

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :self.active], x[:, self.active:]

    def bypass(self, rest: torch.Tensor) -> torch.Tensor:
        """The channels that skip the mixtures, at the edge's output size; (N, C', H, W)."""
        if self.stride == 1:
            return rest
        return F.max_pool2d(rest, 2, 2, ceil_mode=True)

    def join(self, mixed: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([mixed, self.bypass(rest)], dim=1), self.groups)

    def split_grouped(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`split` on E edges whose inputs are `inputs` (the same tensor may come back): the
        active parts stacked edge-major ``(N, E*C/K, H, W)`` and the bypasses at the output size
        ``(N, E, C - C/K, H', W')``, each distinct input pooled once."""
        active = torch.cat([x[:, :self.active] for x in inputs], dim=1)
        bypassed: dict[int, torch.Tensor] = {}
        for x in inputs:
            if id(x) not in bypassed:
                bypassed[id(x)] = self.bypass(x[:, self.active:])
        return active, torch.stack([bypassed[id(x)] for x in inputs], dim=1)

    def join_grouped(self, mixed: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        """`join` on E edges: `mixed` ``(N, E, C/K, H', W')`` and `rest` from `split_grouped`;
        returns ``(N, E, C, H', W')``."""
        return channel_shuffle(torch.cat([mixed, rest], dim=2), self.groups, dim=2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}, stride={self.stride}"


class PartialChannels(SearchMethod):
    """PC-DARTS: each edge's mixtures see C/k of its channels."""

    def size_problem(self, channels: int) -> str | None:
        k = self.settings["k"]
        if channels % k:
            return (f"partial_channels(k={k}) needs the channels C divisible by {k}; C={channels} "
                    f"is not (try C={channels + k - channels % k})")
        return None

    def connector(self, channels: int, stride: int) -> nn.Module | None:
        k = self.settings["k"]
        return PartialConnection(channels, k, stride) if k > 1 else None
