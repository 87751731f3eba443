"""Compile an `ir.Space` into the Att-DARTS search supernet (softmax mixtures on every edge).

The supernet is DARTS's search network (Liu et al. 2019) with Att-DARTS's attention mixtures
(Nakai et al. 2020, Eq. 7-11): C = 16 initial channels, 8 cells, reduction cells at L//3 and
2L//3 doubling the channels, a 3C stem, operations without affine BN and each pooling followed by
a non-affine BN; attention modules keep their own (affine) BN and are built for the spatial size
they really see (32, 16, 8 on CIFAR), because GE-theta+ sizes its global kernel from it.

Architecture parameters live in `model.arch` and are kept apart from the weights: `weights()` /
`named_weights()` and `architecture()` / `named_architecture()` give the two disjoint sets the two
optimisers take (SGD for w, Adam for alpha/beta/gamma, Eq. 12-13). Per cell type (normal, reduce):

- alpha (edges x candidates of the first mixture): operations; for the mixed locations the
  columns are the operations followed by the attentions (one softmax over both);
- beta (edges x attentions): the attention mixture after each edge's operation mixture (Eq. 8,
  10); for `double_mixed` the second mixture, over the same columns as alpha;
- gamma (1 x attentions): the attention mixture on the cell's concatenated output (`end`).

Attention locations (which mixtures an edge and a cell output have) are `Location` objects in
`attdarts.language.locations`, with their table; a cell asks `space.location_spec`. At stride 2
a mixed location's attention is preceded by a factorized reduce.

Mixing of an attention mixture: `sum` (Att-DARTS-S, Eq. 10) is the weighted sum of the modules'
outputs; `product` (Att-DARTS-P, Eq. 17) is ``exp(sum_a t_a log mask_a(h)) * h`` with each module's
``mask(h)`` clamped to at least `MASK_FLOOR` before the log.

`forward` computes each softmax once per cell type and indexes precomputed integers only: no
string lookups, no data-dependent Python branches, no host synchronisation. The `none` operation
is not evaluated: its output is zero, so its term ``s_none * 0`` adds nothing to Eq. 9 (its alpha
still receives its gradient through the softmax of the other terms).

Grouped cells (`grouped=True`, what `attdarts search` uses unless `--plain`): a cell runs its edges
in waves, every edge reading c_k2 or c_k1 first, then every edge reading n0, n1, ...; within a
wave each candidate runs once over the stacked edges (`attdarts.networks.grouping`). The sums are the same
(tests compare both paths in float64), with about a third of the kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attdarts import recipes
from attdarts.language import ir
from attdarts.networks import grouping as grouped
from attdarts.networks.mixtures import (  # noqa: F401 - MASK_FLOOR re-exported
    MASK_FLOOR, MixedAttention, MixedOperation, mix_attentions_grouped, mix_operations_grouped,
)
from attdarts.networks.operations import (
    FactorizedReduce, preprocess_inputs,
)
from attdarts.networks.registry import build_attention, build_operation
from attdarts.networks.stacking import STEM_MULTIPLIER, halve, stack_cells

__all__ = [
    "ARCHITECTURE_PREFIX",
    "MASK_FLOOR",
    "Architecture",
    "MixedAttention",
    "MixedOperation",
    "SearchCell",
    "SearchEdge",
    "Supernet",
    "column_names",
    "compile_supernet",
    "edge_names",
]

ARCHITECTURE_PREFIX = "arch."
Init = Literal["zeros", "randn"]


def edge_names(nodes: int) -> list[str]:
    """DARTS edge order: node j reads c_k2, c_k1, n0 .. n{j-1}; e.g. 'n1<-c_k2'."""
    names = []
    for node in range(nodes):
        for source in (*ir.INPUTS, *(f"n{i}" for i in range(node))):
            names.append(f"n{node}<-{source}")
    return names


def column_names(space: ir.Space) -> dict[str, list[str]]:
    """Candidate names labelling the columns of alpha, beta and gamma (those the space has)."""
    return space.location_spec.columns(space)


class SearchEdge(nn.Module):
    """One edge i -> j: first mixture (weights alpha), then an attention mixture or a second
    mixture (weights beta), whichever the location asks for."""

    def __init__(
        self, first: MixedOperation, then: nn.Module | None, input_index: int
    ) -> None:
        super().__init__()
        self.first = first
        self.then = then
        self.input_index = input_index

    def forward(
        self, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.first(x, alpha)
        if self.then is not None:
            h = self.then(h, beta)
        return h


# ---------------------------------------------------------------------------------------------
# Cells


def _operation(call: ir.Call, channels: int, stride: int) -> nn.Module:
    return build_operation(call, channels, stride, affine=False, pool_bn=True)


def _attention(call: ir.Call, channels: int, spatial: int) -> nn.Module:
    return build_attention(call, channels, spatial)


def _mixed_candidates(space: ir.Space, channels: int, stride: int, spatial: int) -> list[nn.Module]:
    """Operations then attentions in one list; at stride 2 each attention is preceded by a
    non-affine factorized reduce so that every candidate halves the map."""
    candidates = [_operation(call, channels, stride) for call in space.operations]
    for call in space.attentions:
        module = _attention(call, channels, spatial)
        if stride == 2:
            module = nn.Sequential(FactorizedReduce(channels, channels, affine=False), module)
        candidates.append(module)
    return candidates


class SearchCell(nn.Module):
    """A search cell: preprocess both inputs to C channels (non-affine), compute every node as the
    sum of its mixed edges (Eq. 11), concatenate all intermediate nodes, optionally mix
    attentions on the concatenation (gamma)."""

    def __init__(
        self,
        space: ir.Space,
        *,
        channels_prev_prev: int,
        channels_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        spatial_in: int,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.kind_index = ir.CELL_KINDS.index("reduce" if reduction else "normal")
        self.spatial_out = halve(spatial_in) if reduction else spatial_in
        self.preprocess0, self.preprocess1 = preprocess_inputs(
            channels_prev_prev, channels_prev, channels, reduction_prev=reduction_prev,
            affine=False)

        location = space.location_spec
        edges = []
        for node in range(space.nodes):
            for input_index in range(2 + node):
                stride = 2 if reduction and input_index < 2 else 1
                edges.append(self._edge(space, channels, stride, input_index))
        self.edges = nn.ModuleList(edges)
        # edges of node j are edges[starts[j]:starts[j] + j + 2]
        starts = [sum(2 + k for k in range(node)) for node in range(space.nodes)]
        self.node_slices = tuple((start, 2 + node) for node, start in enumerate(starts))
        # Waves of edges that run as one group (`forward_grouped`): first every edge reading
        # c_k2, then every edge reading c_k1 (one wave), then those reading n0, n1, ...
        self.nodes = space.nodes
        nodes = range(space.nodes)
        self.waves = (
            tuple(starts[j] + 0 for j in nodes) + tuple(starts[j] + 1 for j in nodes),
            *(tuple(starts[j] + source + 1 for j in nodes[source:])
              for source in range(1, space.nodes)),
        )
        for k, wave in enumerate(self.waves):  # indices into alpha / beta rows, on the device
            self.register_buffer(f"wave_{k}", torch.tensor(wave), persistent=False)
        self.groupable = location.groupable
        self.grouped = False  # set through `Supernet.set_grouped`
        self.channels_out = channels * space.nodes
        self.output_attention: MixedAttention | None = None
        if location.output_attention:
            self.output_attention = MixedAttention(
                [_attention(call, self.channels_out, self.spatial_out) for call in space.attentions],
                space.mixing)

    def _edge(self, space: ir.Space, channels: int, stride: int, input_index: int) -> SearchEdge:
        location = space.location_spec
        if location.mixes_operations_and_attentions:
            first = MixedOperation(_mixed_candidates(space, channels, stride, self.spatial_out))
            then: nn.Module | None = None
            if location.then is not None:  # double_mixed: the same candidates again, at stride 1
                then = MixedOperation(_mixed_candidates(space, channels, 1, self.spatial_out))
            return SearchEdge(first, then, input_index)
        first = MixedOperation([_operation(call, channels, stride) for call in space.operations])
        then = None
        if location.then is not None:
            then = MixedAttention(
                [_attention(call, channels, self.spatial_out) for call in space.attentions],
                space.mixing)
        return SearchEdge(first, then, input_index)

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        alpha: torch.Tensor,
        beta: torch.Tensor | None,
        gamma: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.grouped:
            return self.forward_grouped(s0, s1, alpha, beta, gamma)
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for start, count in self.node_slices:
            total = None
            for offset in range(count):
                index = start + offset
                edge = self.edges[index]
                out = edge(states[edge.input_index], alpha[index],
                           None if beta is None else beta[index])
                total = out if total is None else total + out
            states.append(total)
        return self._output(states[2:], gamma)

    def _output(self, nodes: list[torch.Tensor], gamma: torch.Tensor | None) -> torch.Tensor:
        """Concatenate every intermediate node; mix attentions on it when the space says so."""
        out = torch.cat(nodes, dim=1)
        if self.output_attention is not None:
            out = self.output_attention(out, gamma[0])
        return out

    def forward_grouped(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        alpha: torch.Tensor,
        beta: torch.Tensor | None,
        gamma: torch.Tensor | None,
    ) -> torch.Tensor:
        """`forward` computed wave by wave (`grouped`): the same sums, a few large kernels per
        candidate and wave instead of one small kernel per candidate and edge."""
        nodes = self.nodes
        x0, x1 = self.preprocess0(s0), self.preprocess1(s1)
        out = self._wave(0, torch.cat([x0] * nodes + [x1] * nodes, dim=1), alpha, beta)
        partial = out[:, :nodes] + out[:, nodes:]  # (N, nodes, C, H, W): node sums so far
        states = []
        for k in range(nodes):
            state = partial[:, 0]  # node k has all its edges
            states.append(state)
            if k + 1 < nodes:
                readers = nodes - k - 1  # nodes k+1 .. reading node k
                out = self._wave(k + 1, state.repeat(1, readers, 1, 1), alpha, beta)
                partial = partial[:, 1:] + out
        return self._output(states, gamma)

    def _wave(
        self, k: int, x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor | None
    ) -> torch.Tensor:
        """Wave k on its inputs stacked edge-major: (N, E*C, H, W) -> (N, E, C, H', W')."""
        wave = self.waves[k]
        index = getattr(self, f"wave_{k}")
        edges = [self.edges[i] for i in wave]
        group = grouped.Group(x, len(wave))
        out = mix_operations_grouped([edge.first for edge in edges], group,
                                     alpha.index_select(0, index))
        if edges[0].then is not None:
            group = grouped.Group(out.flatten(1, 2), len(wave))
            out = mix_attentions_grouped([edge.then for edge in edges], group,
                                         beta.index_select(0, index))
        return out

    def extra_repr(self) -> str:
        kind = ir.CELL_KINDS[self.kind_index]
        return f"{kind}, channels_out={self.channels_out}, spatial_out={self.spatial_out}"


# ---------------------------------------------------------------------------------------------
# Architecture parameters and the network


class Architecture(nn.Module):
    """alpha / beta / gamma per cell type, registered as `alpha_normal`, `beta_reduce`, ...

    Zero initialisation (uniform softmax) as the paper says; `init="randn"` gives the authors'
    ``1e-3 * randn`` (drawn from the global generator, so it follows the seed).
    """

    def __init__(self, shapes: dict[str, tuple[int, int]], init: Init) -> None:
        super().__init__()
        if init not in ("zeros", "randn"):
            raise ValueError(f"unknown architecture init {init!r}; expected 'zeros' or 'randn'")
        self.kinds = tuple(shapes)  # ("alpha", "beta", "gamma") subset, in that order
        for kind, shape in shapes.items():
            for cell in ir.CELL_KINDS:
                value = torch.zeros(shape) if init == "zeros" else 1e-3 * torch.randn(shape)
                self.register_parameter(f"{kind}_{cell}", nn.Parameter(value))

    def tensor(self, kind: str, cell: str) -> nn.Parameter:
        return getattr(self, f"{kind}_{cell}")

    def mixture_weights(self) -> list[tuple[torch.Tensor | None, ...]]:
        """Softmaxed (alpha, beta, gamma) per cell type, indexed by `SearchCell.kind_index`."""
        weights = []
        for cell in ir.CELL_KINDS:
            weights.append(tuple(
                F.softmax(self.tensor(kind, cell), dim=-1) if kind in self.kinds else None
                for kind in ("alpha", "beta", "gamma")))
        return weights


class Supernet(nn.Module):
    """The search network. `forward(x)` returns logits."""

    def __init__(
        self,
        space: ir.Space,
        *,
        channels: int,
        layers: int,
        num_classes: int,
        input_size: int,
        init: Init,
        stem_multiplier: int = STEM_MULTIPLIER,
        grouped: bool = False,
    ) -> None:
        super().__init__()
        self.space = space
        self.channels = channels
        self.layers = layers
        self.num_classes = num_classes
        self.input_size = input_size
        stem_channels = stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
        )
        cells, channels_last = stack_cells(
            lambda layer: SearchCell(space, **layer.cell_arguments()),
            layers=layers,
            channels=channels,
            channels_stem=stem_channels,
            spatial=input_size,
        )
        self.cells = nn.ModuleList(cells)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels_last, num_classes)

        edges = sum(2 + node for node in range(space.nodes))
        self.edge_names = tuple(edge_names(space.nodes))
        self.columns = column_names(space)
        shapes = {kind: (1 if kind == "gamma" else edges, len(names))
                  for kind, names in self.columns.items()}
        self.arch = Architecture(shapes, init)
        self.set_grouped(grouped)

    @property
    def grouped(self) -> bool:
        """Whether the cells run their edges in groups (`SearchCell.forward_grouped`)."""
        return any(cell.grouped for cell in self.cells)

    def set_grouped(self, flag: bool) -> Supernet:
        """Run the edges of every cell in groups (same result, far fewer kernels) or one by
        one (the plain path). Spaces that mix attentions with operations stay plain."""
        for cell in self.cells:
            cell.grouped = bool(flag) and cell.groupable
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.arch.mixture_weights()  # one softmax per cell type and kind
        with grouped.deferred_statistics():  # grouped cells' BN write-backs: 2 operations in all
            s0 = s1 = self.stem(x)
            for cell in self.cells:
                alpha, beta, gamma = weights[cell.kind_index]
                s0, s1 = s1, cell(s0, s1, alpha, beta, gamma)
        return self.classifier(self.global_pooling(s1).flatten(1))

    # -- the two disjoint parameter sets ------------------------------------------------------

    def named_weights(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Network weights w (SGD), in `named_parameters` order."""
        for name, parameter in self.named_parameters():
            if not name.startswith(ARCHITECTURE_PREFIX):
                yield name, parameter

    def weights(self) -> list[nn.Parameter]:
        return [parameter for _, parameter in self.named_weights()]

    def named_architecture(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Architecture parameters alpha / beta / gamma (Adam), e.g. `arch.alpha_normal`."""
        for name, parameter in self.named_parameters():
            if name.startswith(ARCHITECTURE_PREFIX):
                yield name, parameter

    def architecture(self) -> list[nn.Parameter]:
        return [parameter for _, parameter in self.named_architecture()]

    def architecture_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Raw (pre-softmax) parameters: ``{"normal": {"alpha": T, ...}, "reduce": {...}}``."""
        return {cell: {kind: self.arch.tensor(kind, cell).detach() for kind in self.arch.kinds}
                for cell in ir.CELL_KINDS}


def compile_supernet(
    space: ir.Space,
    *,
    channels: int = recipes.SEARCH["paper"]["channels"],
    layers: int = recipes.SEARCH["paper"]["layers"],
    num_classes: int = 10,
    input_size: int = 32,
    init: Init = "zeros",
    stem_multiplier: int = STEM_MULTIPLIER,
    grouped: bool = False,
) -> Supernet:
    """Build the search supernet of `space` (DARTS's search network with Att-DARTS's mixtures).

    `input_size` is the height (= width) of the input images: attention modules are built for the
    size they see. Architecture parameters start at zero (the paper) or at ``1e-3 * randn``
    (`init="randn"`, the authors' code). `grouped` runs each cell's edges in groups (see
    `Supernet.set_grouped`). Built on CPU; the caller moves it to a device.
    """
    if layers < 1 or channels < 1:
        raise ValueError("a supernet needs at least one layer and one channel")
    return Supernet(space, channels=channels, layers=layers, num_classes=num_classes,
                    input_size=input_size, init=init, stem_multiplier=stem_multiplier,
                    grouped=grouped)
