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
(tests compare both paths in float64), with about a third of the kernels. When the weights carry
single paths (`CellWeights.paths`: a sampler such as GDAS), each edge computes its sampled
candidates alone, on both paths (`attdarts.networks.single_path` groups a wave's edges by their
sampled candidate). The cells are `attdarts.networks.search_cell.SearchCell`.

A space with stages (P-DARTS) searches a subset of its candidates at a time: `use_candidates`
sets a stage's masks, whose dropped candidates weigh 0 and are not computed, and names the idle
weights and statistics (`idle_weights`, `idle_statistics`) that seeds run together leave alone.

Search methods of the space (`space.methods`; README, "Search methods") are components
(`attdarts.networks.methods`): the supernet asks its `MethodSet` what enters an edge's mixtures
(partial channels), which candidates an operation mixture has beyond the space's (DARTS-'s
auxiliary skip), which architecture kinds exist beyond the location's (edge normalisation) and
how the mixture weights are made from the raw tensors (`mixture_weights`: softmax unless a
method makes them, then each method's `adjust`). A space without methods computes exactly what
it did before they existed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from attdarts import recipes
from attdarts.language import ir, kinds
from attdarts.networks import grouping as grouped
from attdarts.networks.methods import CellWeights, MethodSet, MixtureWeights, Random, build_methods
from attdarts.networks.mixtures import (  # noqa: F401 - re-exported: MASK_FLOOR, SearchEdge, ...
    MASK_FLOOR, Architecture, Init, MixedAttention, MixedOperation, SearchEdge, edge_names,
    node_slices, normalise_edges,
)
from attdarts.networks.search_cell import SearchCell
from attdarts.networks.stacking import STEM_MULTIPLIER, stack_cells

__all__ = [
    "ARCHITECTURE_PREFIX",
    "MASK_FLOOR",
    "Architecture",
    "CellWeights",
    "MixedAttention",
    "MixedOperation",
    "SearchCell",
    "SearchEdge",
    "Supernet",
    "column_names",
    "check_channels",
    "check_partial_channels",
    "compile_supernet",
    "edge_names",
    "node_slices",
    "normalise_edges",
]

ARCHITECTURE_PREFIX = "arch."


def column_names(space: ir.Space, methods: MethodSet | None = None) -> dict[str, list[str]]:
    """Names labelling the architecture tensors of the space, by kind: the candidates along the
    columns of alpha, beta and gamma (those the location has), then the kinds its search methods
    add (edge normalisation: the edges along the vector `edges`)."""
    columns = space.location_spec.columns(space)
    columns.update((methods or build_methods(space)).architecture())
    return columns


# ---------------------------------------------------------------------------------------------
# Architecture parameters and the network


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
        self.methods = build_methods(space)
        cells, channels_last = stack_cells(
            lambda layer: SearchCell(space, self.methods, layer=layer.index,
                                     **layer.cell_arguments()),
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
        self.columns = column_names(space, self.methods)
        shapes = {kind: (edges,) if kind == kinds.EDGE else
                  (1 if kind == kinds.OUTPUT else edges, len(names))
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

    def use_candidates(self, masks: Mapping[str, Mapping[str, torch.Tensor]]) -> Supernet:
        """Search only the candidates `masks[cell][kind]` keep (bool, the raw tensor's shape, or
        with a leading seed axis for seeds together): their weights are masked (the stages'
        `candidate_mask`) and the cells compute a candidate only where a seed keeps it. A space
        with stages only (`MethodSet.progressive`)."""
        progressive = self.methods.progressive
        if progressive is None:
            raise ValueError(f"space '{self.space.name}' has no stages; its candidates are fixed")
        progressive.set_masks(masks, next(self.parameters()).device)
        for cell in self.cells:
            cell.use(masks[ir.CELL_KINDS[cell.kind_index]])
        self._idle: tuple[frozenset[str], frozenset[str]] | None = None
        return self

    def idle_weights(self) -> frozenset[str]:
        """Names of the weights of candidates no cell computes (a stage dropped them): the
        search gives them a zero gradient, so that they move as weights with a zero gradient do
        whatever other seeds compute (`Bilevel.weight_step`)."""
        return self._idle_names()[0]

    def idle_statistics(self) -> frozenset[str]:
        """Names of the running statistics of candidates no cell computes: they stay as they
        are (seeds run together do not copy theirs back, `Seeds.unload`)."""
        return self._idle_names()[1]

    def _idle_names(self) -> tuple[frozenset[str], frozenset[str]]:
        if getattr(self, "_idle", None) is None:
            modules = [module for cell in self.cells for module in cell.idle()]
            weights = {id(tensor) for module in modules for tensor in module.parameters()}
            buffers = {id(tensor) for module in modules for tensor in module.buffers()}
            self._idle = (frozenset(name for name, tensor in self.named_weights()
                                    if id(tensor) in weights),
                          frozenset(name for name, tensor in self.named_buffers()
                                    if id(tensor) in buffers))
        return self._idle

    def raw_architecture(self, arch: Mapping[str, torch.Tensor] | None = None
                         ) -> list[dict[str, torch.Tensor]]:
        """The raw tensors per cell type by kind: from `arch` (parameter name -> tensor, e.g. a
        step's values of `arch.alpha_normal`) or the supernet's own parameters."""
        def value(kind: str, cell: str) -> torch.Tensor:
            if arch is None:
                return self.arch.tensor(kind, cell)
            return arch[f"{ARCHITECTURE_PREFIX}{kind}_{cell}"]
        return [{kind: value(kind, cell) for kind in self.arch.kinds} for cell in ir.CELL_KINDS]

    def mixture_weights(self, arch: Mapping[str, torch.Tensor] | None = None, draw: Any = None,
                        *, weight_step: Random | None = None) -> MixtureWeights:
        """What the cells take, one `CellWeights` per cell type (`ir.CELL_KINDS` order), made by
        the space's methods from the raw tensors (`raw_architecture(arch)`): softmax per row (or
        a method's weights, from this step's `draw`), edge weights per node, then each method's
        `adjust` (DARTS-'s auxiliary terms). `weight_step`: the weight step's `Random`, for the
        methods that change its weights (random smoothing)."""
        return self.methods.mixture_weights(self.raw_architecture(arch), draw,
                                            weight_step=weight_step)

    def forward(self, x: torch.Tensor, weights: MixtureWeights | None = None) -> torch.Tensor:
        """Logits of `x`; with `weights` (from `mixture_weights`, made once per search step) the
        cells use them, otherwise the supernet makes them from its own architecture."""
        if weights is None:
            weights = self.mixture_weights()
        with grouped.deferred_statistics():  # grouped cells' BN write-backs: 2 operations in all
            s0 = s1 = self.stem(x)
            for cell in self.cells:
                s0, s1 = s1, cell(s0, s1, weights[cell.kind_index])
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
        """Raw (pre-softmax) parameters: ``{"normal": {"alpha": T, ...}, "reduce": {...}}``, the
        kinds of `columns` (alpha, beta, gamma, edges: those the space has)."""
        return {cell: {kind: self.arch.tensor(kind, cell).detach() for kind in self.arch.kinds}
                for cell in ir.CELL_KINDS}

    def normalised_architecture(self) -> dict[str, dict[str, torch.Tensor]]:
        """`architecture_tensors` as the forward makes its weights, without a draw and without
        the methods' `adjust` (no auxiliary terms): each row of alpha / beta / gamma softmaxed
        (or normalised by the method that makes the weights), `edges` softmaxed over each node's
        incoming edges."""
        return {cell: {kind: self.methods.normalise(kind, tensor, cell, None)
                       for kind, tensor in tensors.items()}
                for cell, tensors in self.architecture_tensors().items()}


def check_channels(space: ir.Space, channels: int) -> None:
    """ValueError, in one line, unless the space's search methods, and those of each of its
    stages, can be built with `channels` initial channels (partial channels: C divisible by k)."""
    problem = build_methods(space).size_problem(channels)
    if problem is not None:
        raise ValueError(problem)
    for number, stage in enumerate(space.stages):  # a stage's own partial channels
        problem = build_methods(space.at_stage(number)).size_problem(channels)
        if problem is not None:
            where = f" (line {stage.span.line})" if stage.span is not None else ""
            raise ValueError(f"stage {number + 1}{where}: {problem}")


check_partial_channels = check_channels  # the name the search entry and `compile` know


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
    check_channels(space, channels)
    return Supernet(space, channels=channels, layers=layers, num_classes=num_classes,
                    input_size=input_size, init=init, stem_multiplier=stem_multiplier,
                    grouped=grouped)
