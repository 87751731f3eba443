"""Every torch layer of attdarts: candidate operations, attention modules, cell preprocessing.

The catalog (`attdarts.language.catalog`) names each factory below by its dotted path, and
`attdarts.networks.registry` imports it on demand (STYLE.md section 5). Two signatures:

- operations: ``factory(channels, stride, *, affine=True, pool_bn=False) -> nn.Module``.
  Operations are built as DARTS builds them (REFERENCE.md, "Operations and network skeleton"):
  convolutions have no bias, BN is affine in the discrete network and not in the supernet.
  `pool_bn=True` follows each pooling with a BatchNorm, as DARTS's MixedOp does in the supernet;
  the other operations accept and ignore it so the supernet can pass one set of keywords to all.
- attentions: ``factory(channels, *, spatial, **hyperparameters) -> nn.Module``. `spatial` is the
  height (= width) of the map the module will see; only GE-theta+ needs it (its depthwise kernel
  spans the whole map). Hidden widths are ``max(1, channels // reduction)`` so tiny test networks
  work (the authors' code builds zero-width layers below 16 channels).

Attention modules come in two kinds (paper Eq. 15-17). Masking modules (identity, se,
ge_theta_plus, bam, cbam) have ``mask(x)``, a tensor broadcastable to `x`, and return
``x * mask(x)``; the supernet's Att-DARTS-P mixes them as ``exp(sum_a t_a log mask_a(h)) * h``
(Eq. 17). The double-attention block adds instead of masking (``adds_residual = True``, no `mask`),
which is why Eq. 17 excludes it.

Forward passes avoid host synchronisation and data-dependent Python branches, use `reshape` /
`flatten` rather than `view`, and work in channels_last and under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BottleneckAttention",
    "ConvBlockAttention",
    "DilatedConv",
    "DoubleAttention",
    "FactorizedReduce",
    "GatherExcite",
    "IdentityAttention",
    "MaskingAttention",
    "ReLUConvBN",
    "SeparableConv",
    "SqueezeExcitation",
    "Zero",
    "hidden_width",
    "preprocess_inputs",
]



def hidden_width(channels: int, reduction: int) -> int:
    """Bottleneck width C // r, at least 1 so that every module works at 4 channels."""
    return max(1, channels // reduction)


# ---------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv (no bias) -> BN: DARTS's cell preprocessing for inputs at the cell's size."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        kernel: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                channels_in, channels_out, kernel, stride=stride, padding=padding, bias=False
            ),
            nn.BatchNorm2d(channels_out, affine=affine),
        )


def preprocess_inputs(
    channels_prev_prev: int, channels_prev: int, channels: int, *, reduction_prev: bool,
    affine: bool,
) -> tuple[nn.Module, nn.Module]:
    """A cell's two input preprocessors, bringing c_{k-2} and c_{k-1} to C channels (DARTS):
    c_{k-2} is twice c_{k-1}'s size after a reduction cell, so it is factorized-reduced then;
    otherwise both are ReLU-1x1 conv-BN. BN is affine in the discrete network, not in the supernet."""
    if reduction_prev:
        first: nn.Module = FactorizedReduce(channels_prev_prev, channels, affine=affine)
    else:
        first = ReLUConvBN(channels_prev_prev, channels, 1, 1, 0, affine=affine)
    return first, ReLUConvBN(channels_prev, channels, 1, 1, 0, affine=affine)


class SeparableConv(nn.Sequential):
    """DARTS's sep_conv_kxk: [ReLU, depthwise kxk (stride s), 1x1, BN], then again at stride 1."""

    def __init__(
        self, channels_in: int, channels_out: int, kernel: int, stride: int, affine: bool = True
    ) -> None:
        padding = kernel // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                channels_in, channels_in, kernel, stride=stride, padding=padding,
                groups=channels_in, bias=False,
            ),
            nn.Conv2d(channels_in, channels_in, 1, bias=False),
            nn.BatchNorm2d(channels_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(
                channels_in, channels_in, kernel, stride=1, padding=padding,
                groups=channels_in, bias=False,
            ),
            nn.Conv2d(channels_in, channels_out, 1, bias=False),
            nn.BatchNorm2d(channels_out, affine=affine),
        )


class DilatedConv(nn.Sequential):
    """DARTS's dil_conv_kxk: ReLU, depthwise kxk with dilation 2 (pad k - 1), 1x1, BN."""

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        kernel: int,
        stride: int,
        dilation: int = 2,
        affine: bool = True,
    ) -> None:
        padding = dilation * (kernel // 2)
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                channels_in, channels_in, kernel, stride=stride, padding=padding,
                dilation=dilation, groups=channels_in, bias=False,
            ),
            nn.Conv2d(channels_in, channels_out, 1, bias=False),
            nn.BatchNorm2d(channels_out, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two 1x1 stride-2 convolutions, the second one pixel shifted.

    The two halves are concatenated, so no position of the input is ignored. The shifted input is
    padded on the bottom/right when the size is odd so that both halves have ceil(H/2) rows.
    """

    def __init__(self, channels_in: int, channels_out: int, affine: bool = True) -> None:
        super().__init__()
        half = channels_out // 2
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(channels_in, half, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(channels_in, channels_out - half, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(channels_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        pad_height, pad_width = x.shape[2] % 2, x.shape[3] % 2
        if pad_height or pad_width:  # static shape, not data: odd sizes need one more row/column
            shifted = F.pad(shifted, (0, pad_width, 0, pad_height))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class Zero(nn.Module):
    """The `none` operation: zeros of the (strided) output shape, computed without a host sync."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


def _pool(pool: nn.Module, channels: int, affine: bool, pool_bn: bool) -> nn.Module:
    if pool_bn:
        return nn.Sequential(pool, nn.BatchNorm2d(channels, affine=affine))
    return pool


def none(channels: int, stride: int, *, affine: bool = True, pool_bn: bool = False) -> nn.Module:
    """Zeros; lets the supernet learn that an edge is absent. Never chosen at derivation."""
    return Zero(stride)


def max_pool_3x3(
    channels: int, stride: int, *, affine: bool = True, pool_bn: bool = False
) -> nn.Module:
    """3x3 max pooling, pad 1; followed by BN when `pool_bn` (DARTS supernet)."""
    return _pool(nn.MaxPool2d(3, stride=stride, padding=1), channels, affine, pool_bn)


def avg_pool_3x3(
    channels: int, stride: int, *, affine: bool = True, pool_bn: bool = False
) -> nn.Module:
    """3x3 average pooling, pad 1, padding excluded from the average; BN after when `pool_bn`."""
    pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    return _pool(pool, channels, affine, pool_bn)


def skip_connect(
    channels: int, stride: int, *, affine: bool = True, pool_bn: bool = False
) -> nn.Module:
    """Identity; at stride 2 a factorized reduce (the identity cannot change the size)."""
    if stride == 1:
        return nn.Identity()
    return FactorizedReduce(channels, channels, affine=affine)


def _separable(kernel: int):
    def factory(
        channels: int, stride: int, *, affine: bool = True, pool_bn: bool = False
    ) -> nn.Module:
        return SeparableConv(channels, channels, kernel, stride, affine=affine)

    factory.__name__ = factory.__qualname__ = f"sep_conv_{kernel}x{kernel}"
    factory.__doc__ = f"Two stacked ReLU-depthwise {kernel}x{kernel}-pointwise-BN blocks (DARTS)."
    return factory


def _dilated(kernel: int):
    def factory(
        channels: int, stride: int, *, affine: bool = True, pool_bn: bool = False
    ) -> nn.Module:
        return DilatedConv(channels, channels, kernel, stride, affine=affine)

    factory.__name__ = factory.__qualname__ = f"dil_conv_{kernel}x{kernel}"
    factory.__doc__ = f"ReLU, depthwise {kernel}x{kernel} dilation 2, pointwise, BN (DARTS)."
    return factory


# module attributes, so that the catalog's factory paths name them
sep_conv_3x3 = _separable(3)
sep_conv_5x5 = _separable(5)
sep_conv_7x7 = _separable(7)
dil_conv_3x3 = _dilated(3)
dil_conv_5x5 = _dilated(5)


def conv_7x1_1x7(
    channels: int, stride: int, *, affine: bool = True, pool_bn: bool = False
) -> nn.Module:
    """ReLU, 1x7 conv (stride (1, s)), 7x1 conv (stride (s, 1)), BN; used by AmoebaNet."""
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(channels, channels, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(channels, channels, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(channels, affine=affine),
    )


# ---------------------------------------------------------------------------------------------
# Attention modules
# ---------------------------------------------------------------------------------------------


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
