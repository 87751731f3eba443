"""The attention modules of Att-DARTS, their factories and their grouped rules.

Attention modules come in two kinds (paper Eq. 15-17). Masking modules (identity, se,
ge_theta_plus, bam, cbam) have ``mask(x)``, a tensor broadcastable to `x`, and return
``x * mask(x)``; the supernet's Att-DARTS-P mixes them as ``exp(sum_a t_a log mask_a(h)) * h``
(Eq. 17). The double-attention block adds instead of masking (``adds_residual = True``, no `mask`),
which is why Eq. 17 excludes it.

Each class carries its grouping rule (`grouped_mask` / `grouped_forward`, run by
`attdarts.networks.grouping` on E edges at once): an attention module is one class, one factory
and one catalog entry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attdarts.networks.grouping import (
    Group, Modules, batch_norm, conv2d, layers_of, linear, masked, run_layers,
)
from attdarts.networks.operations import hidden_width

__all__ = [
    "BottleneckAttention",
    "ConvBlockAttention",
    "DoubleAttention",
    "GatherExcite",
    "IdentityAttention",
    "MaskingAttention",
    "SqueezeExcitation",
]


class MaskingAttention(nn.Module):
    """An attention module of the form x * mask(x) (paper Eq. 15).

    Subclasses implement `mask`; Att-DARTS-P (Eq. 17) calls it directly to mix masks in log space.
    """

    adds_residual = False

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask(x)


class IdentityAttention(MaskingAttention):
    """No attention: the mask is all ones (log mask = 0 in Eq. 17), the output is `x` itself."""

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_ones((1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class SqueezeExcitation(MaskingAttention):
    """SE (Hu et al. 2018): channel mask sigmoid(W2 relu(W1 avgpool(x))), linears without bias."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = hidden_width(channels, reduction)
        self.fc_1 = nn.Linear(channels, hidden, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.fc_2 = nn.Linear(hidden, channels, bias=False)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean(dim=(2, 3))  # (batch, channels)
        excited = self.fc_2(self.relu(self.fc_1(squeezed)))
        return torch.sigmoid(excited)[:, :, None, None]  # (batch, channels, 1, 1)


class GatherExcite(MaskingAttention):
    """GE-theta+ (Hu et al. 2018): a global depthwise conv gathers, an SE-like 1x1 MLP excites.

    The depthwise kernel spans the whole feature map, so the module is built for one spatial size
    (`spatial`); a larger map gives a larger gathered map, which is resized back to the input.
    """

    def __init__(self, channels: int, spatial: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = hidden_width(channels, reduction)
        self.gather = nn.Conv2d(channels, channels, spatial, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.conv_1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.conv_2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        gathered = self.conv_2(self.relu(self.conv_1(self.bn(self.gather(x)))))
        if gathered.shape[-2:] != (1, 1):  # static shape: a 1x1 map broadcasts as it is
            gathered = F.interpolate(gathered, size=x.shape[-2:], mode="nearest")
        return torch.sigmoid(gathered)


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


def identity(channels: int, *, spatial: int) -> nn.Module:
    """No attention (the candidate that lets the search keep an edge unchanged)."""
    return IdentityAttention()


def se(channels: int, *, spatial: int, reduction: int = 16) -> nn.Module:
    """Squeeze-and-excitation, Hu et al. 2018 (r = 16)."""
    return SqueezeExcitation(channels, reduction=reduction)


def ge_theta_plus(channels: int, *, spatial: int, reduction: int = 16) -> nn.Module:
    """Gather-excite GE-theta+, Hu et al. 2018: global depthwise gather of size `spatial`."""
    return GatherExcite(channels, spatial, reduction=reduction)


def bam(
    channels: int, *, spatial: int, reduction: int = 16, dilation: int = 4, combine: str = "sum"
) -> nn.Module:
    """Bottleneck attention module, Park et al. 2018 (r = 16, d = 4; combine sum as the paper)."""
    return BottleneckAttention(channels, reduction=reduction, dilation=dilation, combine=combine)


def cbam(channels: int, *, spatial: int, reduction: int = 16) -> nn.Module:
    """Convolutional block attention module, Woo et al. 2018 (r = 16)."""
    return ConvBlockAttention(channels, reduction=reduction)


def double_attention(channels: int, *, spatial: int, reduction: int = 4) -> nn.Module:
    """Double-attention (A^2) block, Chen et al. 2018 (M = N = C / 4)."""
    return DoubleAttention(channels, reduction=reduction)


# ---------------------------------------------------------------------------------------------
# Grouped rules: masks are ``(N, E, c, h, w)``, forwards ``(N, E*C, H, W)``


def _squeeze_excitation_mask(modules: Modules, group: Group) -> Tensor:
    edges = group.edges
    squeezed = group.x.mean(dim=(2, 3))  # (N, E*C)
    hidden = F.relu(linear(squeezed, [m.fc_1 for m in modules], edges))
    excited = linear(hidden, [m.fc_2 for m in modules], edges)
    return group.split(torch.sigmoid(excited))[..., None, None]


def _gather_excite_mask(modules: Modules, group: Group) -> Tensor:
    edges, x = group.edges, group.x
    gathered = conv2d(x, [m.gather for m in modules], edges)
    gathered = batch_norm(gathered, [m.bn for m in modules], edges)
    gathered = F.relu(conv2d(gathered, [m.conv_1 for m in modules], edges))
    gathered = conv2d(gathered, [m.conv_2 for m in modules], edges)
    if gathered.shape[-2:] != (1, 1):
        gathered = F.interpolate(gathered, size=x.shape[-2:], mode="nearest")
    return group.split(torch.sigmoid(gathered))


def _bottleneck_mask(modules: Modules, group: Group) -> Tensor:
    edges, x = group.edges, group.x
    channel = run_layers(layers_of([m.channel_gate for m in modules]), x.mean(dim=(2, 3)), edges)
    spatial = run_layers(layers_of([m.spatial_gate for m in modules]), x, edges)
    channel = group.split(channel)[..., None, None]  # (N, E, C, 1, 1)
    spatial = spatial.unsqueeze(2)  # (N, E, 1, H, W)
    combined = channel * spatial if modules[0].product else channel + spatial
    return 1.0 + torch.sigmoid(combined)


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


def _double_attention(modules: Modules, group: Group) -> Tensor:
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

def _identity(modules: Modules, group: Group) -> Tensor:
    return group.x


def _attach(kind: type, *, forward, mask=None) -> None:
    kind.grouped_forward = staticmethod(forward)
    if mask is not None:
        kind.grouped_mask = staticmethod(mask)


_attach(IdentityAttention, forward=_identity)
_attach(SqueezeExcitation, forward=masked(_squeeze_excitation_mask), mask=_squeeze_excitation_mask)
_attach(GatherExcite, forward=masked(_gather_excite_mask), mask=_gather_excite_mask)
_attach(BottleneckAttention, forward=masked(_bottleneck_mask), mask=_bottleneck_mask)
_attach(ConvBlockAttention, forward=_cbam, mask=_cbam_mask)
_attach(DoubleAttention, forward=_double_attention)
