"""The DARTS candidate operations and cell preprocessing, as torch layers.

The catalog (`attdarts.language.catalog`) names each factory below by its dotted path, and
`attdarts.networks.registry` imports it on demand. Two signatures:

- operations: ``factory(channels, stride, *, affine=True, pool_bn=False) -> nn.Module``.
  Operations are built as DARTS builds them (Liu et al., ICLR 2019, its operations.py):
  convolutions have no bias, BN is affine in the discrete network and not in the supernet.
  `pool_bn=True` follows each pooling with a BatchNorm, as DARTS's MixedOp does in the supernet;
  the other operations accept and ignore it so the supernet can pass one set of keywords to all.
- attentions (in `attdarts.networks.attentions`): ``factory(channels, *, spatial,
  **hyperparameters) -> nn.Module``. `spatial` is the height (= width) of the map the module will
  see; only GE-theta+ needs it (its depthwise kernel spans the whole map). Hidden widths are
  ``max(1, channels // reduction)`` (`hidden_width`) so tiny test networks work (the authors'
  code builds zero-width layers below 16 channels).

Forward passes avoid host synchronisation and data-dependent Python branches, use `reshape` /
`flatten` rather than `view`, and work in channels_last and under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DilatedConv",
    "FactorizedReduce",
    "ReLUConvBN",
    "SeparableConv",
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


def _convolution(module: type[nn.Module], prefix: str, kernel: int, doc: str):
    """The factory of one kernel size of a DARTS convolution (`sep_conv_KxK`, `dil_conv_KxK`)."""
    def factory(
        channels: int, stride: int, *, affine: bool = True, pool_bn: bool = False
    ) -> nn.Module:
        return module(channels, channels, kernel, stride, affine=affine)

    factory.__name__ = factory.__qualname__ = f"{prefix}_{kernel}x{kernel}"
    factory.__doc__ = doc
    return factory


def _separable(kernel: int):
    return _convolution(SeparableConv, "sep_conv", kernel,
                        f"Two stacked ReLU-depthwise {kernel}x{kernel}-pointwise-BN blocks (DARTS).")


def _dilated(kernel: int):
    return _convolution(DilatedConv, "dil_conv", kernel,
                        f"ReLU, depthwise {kernel}x{kernel} dilation 2, pointwise, BN (DARTS).")


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
