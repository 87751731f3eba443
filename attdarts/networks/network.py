"""Compile an `ir.Genotype` into the discrete network trained from scratch (DARTS's NetworkCIFAR /
NetworkImageNet, with one attention module per edge as Att-DARTS).

Every name, index and stride is resolved here, at construction: `forward` only indexes Python
lists with precomputed integers. Nodes and edges are `nn.ModuleList`s in the genotype's text
order, so parameter names follow the genotype (``cells.3.nodes.1.edges.0.attention...``).

The skeleton follows REFERENCE.md ("Operations and network skeleton"): CIFAR stem 3C, reduction
cells at L//3 and 2L//3 doubling the channels, auxiliary head after cell 2L//3; ImageNet two-conv
stem plus one more stride-2 conv, 224 input, 7x7 final pool. Each edge is its operation (stride 2
on the edges leaving the two inputs of a reduction cell) followed by its attention module, built
for the spatial size that edge's output really has.

Grouped cells (`grouped=True`, what `attdarts train` uses unless `--plain`) run the edges whose
inputs are ready together: one kernel sequence per distinct operation and attention of a wave
(`attdarts.grouped`), with drop-path masks drawn in the plain order, so a seed gives the same
numbers (tests compare both paths in float64) from fewer kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attdarts.networks import grouping as grouped
from attdarts.language import ir
from attdarts.networks.operations import ATTENTIONS, OPERATIONS, IdentityAttention, preprocess_inputs
from attdarts.networks.stacking import STEM_MULTIPLIER, Layer, halve, stack_cells

__all__ = [
    "DATASETS",
    "DROP_PATH_RULES",
    "CellModule",
    "CellSummary",
    "EdgeModule",
    "Network",
    "NodeModule",
    "compile_network",
    "count_droppable_edges",
    "count_multiply_adds",
    "count_parameters",
    "describe_network",
    "drop_path",
]

DropPathRule = Literal["darts", "authors"]
DROP_PATH_RULES: tuple[str, ...] = ("darts", "authors")  # the first is the default


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


def drop_path(x: torch.Tensor, prob: float) -> torch.Tensor:
    """Zero each sample's tensor with probability `prob`, scale survivors by 1 / (1 - prob).

    The Bernoulli mask is drawn on `x`'s device in `x`'s dtype, so there is no host sync and no
    dtype promotion under autocast.
    """
    keep = 1.0 - prob
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask.div_(keep)


def _stem_size(imagenet_stem: bool, input_size: int) -> int:
    """Height of the stem's output: the ImageNet stems halve 3 times, the CIFAR stem keeps it."""
    return halve(halve(halve(input_size))) if imagenet_stem else input_size


class EdgeModule(nn.Module):
    """One edge i -> j: operation, then its attention module (or none), then drop path.

    `droppable` is decided at construction by the drop-path rule (see `compile_network`).
    """

    def __init__(
        self, operation: nn.Module, attention: nn.Module | None, input_index: int, droppable: bool
    ) -> None:
        super().__init__()
        self.operation = operation
        self.attention = attention
        self.input_index = input_index
        self.droppable = droppable

    def forward(self, x: torch.Tensor, drop_prob: float) -> torch.Tensor:
        h = self.operation(x)
        if self.attention is not None:
            h = self.attention(h)
        if self.droppable and self.training and drop_prob > 0.0:
            h = drop_path(h, drop_prob)
        return h

    def extra_repr(self) -> str:
        return f"input_index={self.input_index}, droppable={self.droppable}"


class NodeModule(nn.Module):
    """An intermediate node: the sum of its incoming edges (paper Eq. 11)."""

    def __init__(self, edges: list[EdgeModule]) -> None:
        super().__init__()
        self.edges = nn.ModuleList(edges)

    def forward(self, states: list[torch.Tensor], drop_prob: float) -> torch.Tensor:
        total = None
        for edge in self.edges:
            h = edge(states[edge.input_index], drop_prob)
            total = h if total is None else total + h
        return total


class CellModule(nn.Module):
    """A discrete cell: preprocess both inputs to C channels, compute the nodes, concatenate.

    The output has ``C * len(concat)`` channels and is optionally followed by an attention module
    (the authors' "end" location).
    """

    def __init__(
        self,
        cell: ir.Cell,
        *,
        channels_prev_prev: int,
        channels_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        spatial_in: int,
        drop_path_rule: DropPathRule,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.channels = channels
        self.spatial_in = spatial_in
        self.spatial_out = halve(spatial_in) if reduction else spatial_in
        self.preprocess0, self.preprocess1 = preprocess_inputs(
            channels_prev_prev, channels_prev, channels, reduction_prev=reduction_prev,
            affine=True)

        nodes = []
        for node in cell.nodes:
            edges = []
            for edge in node.edges:
                from_input = edge.input in ir.INPUTS
                stride = 2 if reduction and from_input else 1
                operation = OPERATIONS.get(edge.operation.name)(
                    channels, stride, affine=True, **edge.operation.kwargs_dict()
                )
                attention = _build_attention(edge.attention, channels, self.spatial_out)
                edges.append(EdgeModule(
                    operation,
                    attention,
                    cell.index_of(edge.input),
                    _droppable(operation, attention, drop_path_rule),
                ))
            nodes.append(NodeModule(edges))
        self.nodes = nn.ModuleList(nodes)
        self.waves = _waves(cell, self.nodes)
        self.grouped = False  # set through `Network.set_grouped`
        self.concat = tuple(cell.index_of(name) for name in cell.output.nodes)
        self.channels_out = channels * len(self.concat)
        self.attention = _build_attention(
            cell.output.attention, self.channels_out, self.spatial_out
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        if self.grouped:
            return self.forward_grouped(s0, s1, drop_prob)
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in self.nodes:
            states.append(node(states, drop_prob))
        return self._output(states)

    def _output(self, states: list[torch.Tensor]) -> torch.Tensor:
        out = torch.cat([states[index] for index in self.concat], dim=1)
        if self.attention is not None:
            out = self.attention(out)
        return out

    def forward_grouped(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float
                        ) -> torch.Tensor:
        """`forward` computed wave by wave: the edges whose inputs are ready run together, one
        kernel sequence per distinct operation and per distinct attention (`attdarts.grouped`).
        Drop-path masks are drawn first, in `forward`'s order, so a seed gives the same masks;
        nodes add their edges in text order, so the sums are the same too."""
        states: list[torch.Tensor | None] = [self.preprocess0(s0), self.preprocess1(s1)]
        states += [None] * len(self.nodes)
        masks = self._drop_masks(states[1], drop_prob)
        outputs: dict[tuple[int, int], torch.Tensor] = {}
        for wave in self.waves:
            for group in wave.operations:
                self._run_operations(group, states, outputs)
            for group in wave.attentions:
                self._run_attentions(group, outputs)
            for node in wave.completes:
                total = None
                for index, edge in enumerate(self.nodes[node].edges):
                    h = outputs.pop((node, index))
                    mask = masks.get((node, index))
                    if mask is not None:
                        h = h * mask
                    total = h if total is None else total + h
                states[2 + node] = total
        return self._output(states)

    def _drop_masks(self, like: torch.Tensor, drop_prob: float
                    ) -> dict[tuple[int, int], torch.Tensor]:
        if not (self.training and drop_prob > 0.0):
            return {}
        keep = 1.0 - drop_prob
        masks = {}
        for node, module in enumerate(self.nodes):
            for index, edge in enumerate(module.edges):
                if edge.droppable:  # as drop_path draws it, in forward's order
                    mask = torch.empty((like.shape[0], 1, 1, 1), dtype=like.dtype,
                                       device=like.device).bernoulli_(keep)
                    masks[(node, index)] = mask.div_(keep)
        return masks

    def _run_operations(self, group: tuple[tuple[int, int], ...],
                        states: list[torch.Tensor | None],
                        outputs: dict[tuple[int, int], torch.Tensor]) -> None:
        edges = [self.nodes[node].edges[index] for node, index in group]
        inputs = [states[edge.input_index] for edge in edges]
        if isinstance(edges[0].operation, nn.Identity):  # skip_connect: nothing to run
            outputs.update(zip(group, inputs))
            return
        _run_group([edge.operation for edge in edges], inputs, group, outputs)

    def _run_attentions(self, group: tuple[tuple[int, int], ...],
                        outputs: dict[tuple[int, int], torch.Tensor]) -> None:
        edges = [self.nodes[node].edges[index] for node, index in group]
        _run_group([edge.attention for edge in edges], [outputs[key] for key in group], group,
                   outputs)

    def extra_repr(self) -> str:
        kind = "reduce" if self.reduction else "normal"
        return f"{kind}, channels_out={self.channels_out}, spatial_out={self.spatial_out}"


def _run_group(modules: list[nn.Module], inputs: list[torch.Tensor],
               keys: tuple[tuple[int, int], ...],
               outputs: dict[tuple[int, int], torch.Tensor]) -> None:
    """Run one module per edge on that edge's input, all as one group; store the outputs."""
    x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)
    out = grouped.forward(modules, grouped.Group(x, len(modules)))
    outputs.update(zip(keys, out.chunk(len(modules), dim=1)))


@dataclass(frozen=True)
class _Wave:
    """Edges (node, edge index) whose inputs are ready together, grouped by operation (call and
    stride) and by attention; `completes` lists the nodes whose last edges are in this wave."""

    operations: tuple[tuple[tuple[int, int], ...], ...]
    attentions: tuple[tuple[tuple[int, int], ...], ...]
    completes: tuple[int, ...]


def _waves(cell: ir.Cell, nodes: nn.ModuleList) -> tuple[_Wave, ...]:
    """Schedule a cell's edges for `CellModule.forward_grouped` (inputs precede their readers in
    a valid genotype, so every round makes progress)."""
    ready = {0, 1}
    pending = {(node, index) for node, module in enumerate(nodes)
               for index in range(len(module.edges))}
    waves = []
    while pending:
        wave = sorted(key for key in pending
                      if nodes[key[0]].edges[key[1]].input_index in ready)
        if not wave:
            raise ValueError("a node reads a node that is never computed")
        pending -= set(wave)
        by_operation: dict[ir.Call, list[tuple[int, int]]] = {}
        by_attention: dict[ir.Call, list[tuple[int, int]]] = {}
        for node, index in wave:
            edge = cell.nodes[node].edges[index]
            # one wave reads either the cell inputs (all strided in a reduction cell) or nodes
            by_operation.setdefault(edge.operation, []).append((node, index))
            if edge.attention is not None:
                by_attention.setdefault(edge.attention, []).append((node, index))
        completes = tuple(node for node in range(len(nodes))
                          if 2 + node not in ready
                          and not any(key[0] == node for key in pending))
        ready |= {2 + node for node in completes}
        waves.append(_Wave(tuple(tuple(g) for g in by_operation.values()),
                           tuple(tuple(g) for g in by_attention.values()), completes))
    return tuple(waves)


def _build_attention(call: ir.Call | None, channels: int, spatial: int) -> nn.Module | None:
    if call is None:
        return None
    return ATTENTIONS.get(call.name)(channels, spatial=spatial, **call.kwargs_dict())


def _droppable(operation: nn.Module, attention: nn.Module | None, rule: DropPathRule) -> bool:
    """Whether drop path applies to an edge (REFERENCE.md, "Evaluation").

    "darts" (DARTS's NetworkCIFAR, the default): every edge whose operation is not the identity.
    "authors" (the Att-DARTS code, model.py `Cell.forward`): in a cell whose edges name
    attentions, an edge is also spared when its attention is the identity module; a cell with no
    named attention falls back to DARTS's rule. A missing attention is therefore not an identity
    attention, so a plain DARTS genotype is dropped exactly as DARTS drops it. (The authors'
    format cannot mix edges with and without attention in one cell; per edge, the two readings
    agree on every cell it can express.)
    """
    identity_operation = isinstance(operation, nn.Identity)
    if rule == "darts":
        return not identity_operation
    if rule == "authors":
        return not (identity_operation or isinstance(attention, IdentityAttention))
    raise ValueError(f"unknown drop path rule {rule!r}; expected one of {', '.join(DROP_PATH_RULES)}")


def count_droppable_edges(model: "Network") -> tuple[int, int]:
    """(edges drop path applies to, all edges) over every cell of `model`."""
    edges = [edge for cell in model.cells for node in cell.nodes for edge in node.edges]
    return sum(edge.droppable for edge in edges), len(edges)


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
    """The discrete network. `forward` returns ``(logits, aux_logits)``; aux_logits is None in
    eval mode or without an auxiliary head. Set `drop_path_prob` (a float) before each epoch."""

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
    ) -> None:
        super().__init__()
        shape = DATASETS[dataset]
        self.genotype = genotype
        self.dataset = dataset
        self.input_size = input_size
        self.num_classes = num_classes
        self.drop_path_prob = 0.0
        self.imagenet_stem = shape.imagenet_stem

        if shape.imagenet_stem:
            self.stem0 = nn.Sequential(
                nn.Conv2d(3, channels // 2, 3, stride=2, padding=1, bias=False),
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
                nn.Conv2d(3, channels_stem, 3, padding=1, bias=False),
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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.imagenet_stem:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        drop_prob = float(self.drop_path_prob)
        aux_logits = None
        with grouped.deferred_statistics():  # grouped cells' BN write-backs: 2 operations in all
            for index, cell in enumerate(self.cells):
                s0, s1 = s1, cell(s0, s1, drop_prob)
                if index == self.auxiliary_index and self.training:
                    aux_logits = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, aux_logits

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
    channels: int = 36,
    layers: int = 20,
    auxiliary: bool = True,
    num_classes: int | None = None,
    input_size: int | None = None,
    drop_path_rule: DropPathRule = "darts",
    grouped: bool = False,
) -> Network:
    """Build the discrete network of `genotype` for `dataset` ("cifar10", "cifar100", "imagenet").

    `num_classes` and `input_size` default to the dataset's (10/100/1000; 32/32/224). The spatial
    size matters at construction because GE-theta+ sizes its global kernel from it. Drop path
    (probability `model.drop_path_prob`, applied in training mode only) follows `drop_path_rule`:
    "darts" (the default) drops every edge whose operation is not the identity; "authors" (the
    Att-DARTS code) also spares edges whose attention is the identity module (`_droppable`).
    `grouped` runs each cell's
    edges in groups (`Network.set_grouped`).
    """
    if dataset not in DATASETS:
        known = ", ".join(repr(name) for name in DATASETS)
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {known}")
    if drop_path_rule not in DROP_PATH_RULES:
        raise ValueError(f"unknown drop path rule {drop_path_rule!r}; "
                         f"expected one of {', '.join(DROP_PATH_RULES)}")
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
    ).set_grouped(grouped)


def count_parameters(model: nn.Module, *, auxiliary: bool) -> int:
    """Number of weights; without the auxiliary head when `auxiliary` is False (the number every
    DARTS paper reports)."""
    total = sum(p.numel() for p in model.parameters())
    head = getattr(model, "auxiliary_head", None)
    if not auxiliary and head is not None:
        total -= sum(p.numel() for p in head.parameters())
    return total


@dataclass(frozen=True)
class CellSummary:
    """One row of `describe_network`."""

    index: int
    kind: Literal["normal", "reduce"]
    channels_out: int
    spatial: int
    parameters: int


def _probe(model: Network, input_size: int | None) -> torch.Tensor:
    size = model.input_size if input_size is None else input_size
    parameter = next(model.parameters())
    return torch.zeros((1, 3, size, size), dtype=parameter.dtype, device=parameter.device)


def describe_network(model: Network, input_size: int | None = None) -> list[CellSummary]:
    """Per-cell rows (index, normal/reduce, output channels, output height, parameters) for an
    `input_size` x `input_size` image (default: the size the network was built for).

    Sizes follow the same arithmetic as construction (every stride-2 layer gives ceil(H / 2)), so
    no forward pass is needed.
    """
    size = model.input_size if input_size is None else input_size
    spatial = _stem_size(model.imagenet_stem, size)
    rows = []
    for index, cell in enumerate(model.cells):
        if cell.reduction:
            spatial = halve(spatial)
        rows.append(CellSummary(
            index=index,
            kind="reduce" if cell.reduction else "normal",
            channels_out=cell.channels_out,
            spatial=spatial,
            parameters=sum(p.numel() for p in cell.parameters()),
        ))
    return rows


def count_multiply_adds(model: Network, input_size: int | None = None) -> int:
    """Multiply-adds of one image (batch 1, eval mode, so no auxiliary head).

    Counted by `torch.utils.flop_counter.FlopCounterMode`, which reports FLOPs = 2 x MACs for
    convolutions and matrix products; pooling and element-wise work are not counted (as usual).
    """
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(_probe(model, input_size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
