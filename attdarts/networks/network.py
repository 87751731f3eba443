"""Compile an `ir.Genotype` into the discrete network trained from scratch (DARTS's NetworkCIFAR /
NetworkImageNet, with one attention module per edge as Att-DARTS).

Every name, index and stride is resolved here, at construction: `forward` only indexes Python
lists with precomputed integers. Nodes and edges are `nn.ModuleList`s in the genotype's text
order, so parameter names follow the genotype (``cells.3.nodes.1.edges.0.attention...``).

The skeleton follows DARTS (Liu et al., ICLR 2019, its NetworkCIFAR / NetworkImageNet): CIFAR stem 3C, reduction
cells at L//3 and 2L//3 doubling the channels, auxiliary head after cell 2L//3; ImageNet two-conv
stem plus one more stride-2 conv, 224 input, 7x7 final pool. Each edge is its operation (stride 2
on the edges leaving the two inputs of a reduction cell) followed by its attention module, built
for the spatial size that edge's output really has.

Grouped cells (`grouped=True`, what `attdarts train` uses unless `--plain`) run the edges whose
inputs are ready together: one kernel sequence per distinct operation and attention of a wave
(`attdarts.networks.cell`), with drop-path masks drawn in the plain order, so a seed gives the same
numbers (tests compare both paths in float64) from fewer kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attdarts import recipes
from attdarts.language import ir
from attdarts.networks import grouping as grouped
from attdarts.networks.cell import DROP_PATH_RULES, CellModule, DropPathRule
from attdarts.networks.stacking import STEM_MULTIPLIER, Layer, halve, stack_cells

__all__ = [
    "DATASETS",
    "Network",
    "compile_network",
]


@dataclass(frozen=True)
class DatasetShape:
    """What the skeleton needs to know about a dataset: class count, input size, stem kind."""

    num_classes: int
    input_size: int
    imagenet_stem: bool


DATASETS: dict[str, DatasetShape] = {
    "cifar10": DatasetShape(10, 32, imagenet_stem=False),
    "cifar100": DatasetShape(100, 32, imagenet_stem=False),
    "imagenet": DatasetShape(1000, 224, imagenet_stem=True),
}


def _stem_size(imagenet_stem: bool, input_size: int) -> int:
    """Height of the stem's output: the ImageNet stems halve 3 times, the CIFAR stem keeps it."""
    return halve(halve(halve(input_size))) if imagenet_stem else input_size



class AuxiliaryHeadCIFAR(nn.Sequential):
    """DARTS's auxiliary classifier for an 8x8 input (after cell 2L//3)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),  # 8x8 -> 2x2
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),  # 2x2 -> 1x1
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=False),
            nn.Flatten(1),
            nn.Linear(768, num_classes),
        )


class AuxiliaryHeadImageNet(nn.Sequential):
    """DARTS's ImageNet auxiliary classifier (7x7 input): pool stride 2, no BN after 2x2 conv."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),  # 7x7 -> 2x2
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),  # 2x2 -> 1x1
            nn.ReLU(inplace=False),
            nn.Flatten(1),
            nn.Linear(768, num_classes),
        )


class Network(nn.Module):
    """The discrete network. `net(images)` returns the logits, as any classifier does (timm,
    torchvision), so `cross_entropy(net(images), labels)` works; `net(images, aux=True)` returns
    ``(logits, aux_logits)``, aux_logits None in eval mode or without an auxiliary head (the
    training step asks for them when the head's loss weight is above 0). The head runs only when
    asked for. `in_chans` is the channel count of the input images (3: RGB).

    Set `drop_path_prob` (a float) before each epoch; after `hold_drop_path_in_tensor` the value
    lives in a 0-dim tensor on the model's device."""

    def __init__(
        self,
        genotype: ir.Genotype,
        *,
        dataset: str,
        channels: int,
        layers: int,
        auxiliary: bool,
        num_classes: int,
        input_size: int,
        drop_path_rule: DropPathRule,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        shape = DATASETS[dataset]
        self.genotype = genotype
        self.dataset = dataset
        self.input_size = input_size
        self.num_classes = num_classes
        self.in_chans = in_chans
        self._drop_path_prob = 0.0
        # a 0-dim tensor after `hold_drop_path_in_tensor`
        self.register_buffer("drop_path_tensor", None, persistent=False)
        self.imagenet_stem = shape.imagenet_stem

        if shape.imagenet_stem:
            self.stem0 = nn.Sequential(
                nn.Conv2d(in_chans, channels // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(inplace=False),
                nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels),
            )
            self.stem1 = nn.Sequential(
                nn.ReLU(inplace=False),
                nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels),
            )
            channels_stem = channels
            reduction_prev = True  # stem1 halved the size after stem0: c_{k-2} needs a reduce
        else:
            channels_stem = STEM_MULTIPLIER * channels
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, channels_stem, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels_stem),
            )
            reduction_prev = False

        def build(layer: Layer) -> CellModule:
            cell = genotype.reduce if layer.reduction else genotype.normal
            return CellModule(cell, **layer.cell_arguments(), drop_path_rule=drop_path_rule)

        cells, channels_last = stack_cells(
            build,
            layers=layers,
            channels=channels,
            channels_stem=channels_stem,
            spatial=_stem_size(shape.imagenet_stem, input_size),
            reduction_prev=reduction_prev,
        )
        self.cells = nn.ModuleList(cells)

        self.auxiliary_index = 2 * layers // 3 if auxiliary else -1  # after the second reduction
        self.auxiliary_head: nn.Module | None = None
        if auxiliary:
            head = AuxiliaryHeadImageNet if shape.imagenet_stem else AuxiliaryHeadCIFAR
            # without cells (layers < 1) the head is built on 0 channels and never runs
            channels_auxiliary = cells[self.auxiliary_index].channels_out if cells else 0
            self.auxiliary_head = head(channels_auxiliary, num_classes)
        if shape.imagenet_stem:
            self.global_pooling: nn.Module = nn.AvgPool2d(7)
        else:
            self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels_last, num_classes)

    def forward(self, x: torch.Tensor, aux: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of `x` (batch, in_chans, S, S); with `aux`, ``(logits, aux_logits)``."""
        if self.imagenet_stem:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        held = self.drop_path_tensor
        drop_prob = self._drop_path_prob if held is None else held
        aux_logits = None
        with grouped.deferred_statistics():  # grouped cells' BN write-backs: 2 operations in all
            for index, cell in enumerate(self.cells):
                s0, s1 = s1, cell(s0, s1, drop_prob)
                if aux and index == self.auxiliary_index and self.training:
                    aux_logits = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return (logits, aux_logits) if aux else logits

    @property
    def drop_path_prob(self) -> float:
        """Drop-path probability of the next forward passes in training mode (the loop ramps it)."""
        return self._drop_path_prob

    @drop_path_prob.setter
    def drop_path_prob(self, value: float) -> None:
        self._drop_path_prob = float(value)
        if self.drop_path_tensor is not None:
            with torch.no_grad():
                self.drop_path_tensor.fill_(self._drop_path_prob)

    def hold_drop_path_in_tensor(self) -> Network:
        """Keep the drop-path probability in a 0-dim tensor (a non-persistent buffer, on the
        model's device) and pass that to the cells: their code then does not depend on its value,
        so compiled cells (`attdarts.networks.compiled`) are not recompiled as the probability
        ramps up, and a captured step reads it from device memory. Masks are drawn by the
        tensor-probability kernel: the same distribution, other masks for a seed than the float
        path's (and drawn even at probability 0, where they are all ones)."""
        if self.drop_path_tensor is None:
            parameter = next(self.parameters())
            self.drop_path_tensor = torch.tensor(self._drop_path_prob, dtype=parameter.dtype,
                                                 device=parameter.device)
        return self

    @property
    def grouped(self) -> bool:
        """Whether the cells run their edges in groups (`CellModule.forward_grouped`)."""
        return any(cell.grouped for cell in self.cells)

    def set_grouped(self, flag: bool) -> Network:
        """Run each cell's ready edges in groups (same result, fewer kernels) or one by one."""
        for cell in self.cells:
            cell.grouped = bool(flag)
        return self


def compile_network(
    genotype: ir.Genotype,
    *,
    dataset: str = "cifar10",
    channels: int = recipes.TRAIN["cifar"]["channels"],
    layers: int = recipes.TRAIN["cifar"]["layers"],
    auxiliary: bool = True,
    num_classes: int | None = None,
    input_size: int | None = None,
    drop_path_rule: DropPathRule = recipes.TRAIN["cifar"]["drop_path_rule"],
    grouped: bool = False,
    in_chans: int = 3,
) -> Network:
    """Build the discrete network of `genotype` for `dataset` ("cifar10", "cifar100", "imagenet").

    `num_classes` and `input_size` default to the dataset's (10/100/1000; 32/32/224). The spatial
    size matters at construction because GE-theta+ sizes its global kernel from it. Drop path
    (probability `model.drop_path_prob`, applied in training mode only) follows `drop_path_rule`:
    "darts" (the default) drops every edge whose operation is not the identity; "authors" (the
    Att-DARTS code) also spares edges whose attention is the identity module (`_droppable`).
    `grouped` runs each cell's
    edges in groups (`Network.set_grouped`). `in_chans` is the input's channel count (timm's
    name): the stem's first convolution takes that many channels (3, RGB, by default).
    """
    if dataset not in DATASETS:
        known = ", ".join(repr(name) for name in DATASETS)
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {known}")
    if drop_path_rule not in DROP_PATH_RULES:
        raise ValueError(f"unknown drop path rule {drop_path_rule!r}; "
                         f"expected one of {', '.join(DROP_PATH_RULES)}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a whole number of at least 1, got {in_chans!r}")
    shape = DATASETS[dataset]
    return Network(
        genotype,
        dataset=dataset,
        channels=channels,
        layers=layers,
        auxiliary=auxiliary,
        num_classes=shape.num_classes if num_classes is None else num_classes,
        input_size=shape.input_size if input_size is None else input_size,
        drop_path_rule=drop_path_rule,
        in_chans=in_chans,
    ).set_grouped(grouped)

