"""Search methods as components: the hooks a method fills, and the set of a space's methods.

A space lists its search methods (`methods = [partial_channels(k=4), beta_decay, ...]`); each is
one entry of the torch-free catalog (`attdarts.language.methods`) and one class here, a
`SearchMethod` that fills some of the hooks below and leaves the others alone (their defaults do
nothing). `MethodSet` holds a space's methods, in the order the space lists them, and is what the
supernet, derivation and the search step call; nothing else asks which methods a space has.
This follows confopt (automl/ConfigurableOptimizer), whose samplers, partial connector,
perturbator, regularisers and early stopper are separate objects of one search.

| hook | when | today's methods |
|---|---|---|
| `size_problem(channels)` | before a supernet is built | partial_channels |
| `architecture()` | building: extra architecture kinds, with their labels | edge_normalisation |
| `connector(channels, stride)` | building each edge: what enters its mixtures | partial_channels |
| `extra_candidates(channels, stride)` | building each edge's operation mixture: candidates outside the weights' softmax | auxiliary_skip |
| `candidate_mask(kind, cell)` | making weights: candidates switched off (P-DARTS, DrNAS pruning) | progressive (a space's stages) |
| `normalise(kind, raw, cell, draw)` | making weights from raw tensors (default: softmax) | drnas, fair_darts, gdas |
| `paths(weights, draw)` | after `normalise`: the one candidate each row computes (single path) | gdas |
| `draw(arch, random)` | once per step, before any forward | drnas, gdas, progressive |
| `before_weight_step(weights, cell, random)` | the weight step's weights, before `adjust` | smoothing, progressive |
| `adjust(weights, cell)` | after `normalise`, every forward | auxiliary_skip, auxiliary_identity, progressive |
| `architecture_loss(arch, weights)` | the architecture step's objective | beta_decay, drnas, fair_darts, budget |
| `weight_loss(weights)` | the weight step's objective | - |
| `after_weight_step()` | after the weight update | - |
| `search_start(context)` | once, when a search has built its supernet (also on resume): what the run is (`SearchContext`) | budget |
| `epoch_start(epoch, epochs)` | each epoch (also after a resume); returns what to record | auxiliary_*, beta_decay, smoothing |
| `epoch_end(weights, genotype)` | after each epoch's derivation, with the epoch's final mixture weights (no draw); returns what to record | budget |
| `stage_start(stage)` | each stage of a progressive search (0-based; also after a resume) | - |
| `early_stop(epoch, epochs, genotype, trained)` | after each epoch's derivation | stop_at_skips |
| `capture_key()` | Python values a captured CUDA graph bakes in | beta_decay, smoothing, gdas, progressive |
| `capture_problem()` | why the step cannot be captured as a CUDA graph at all (it reads the device on the host) | gdas |
| `derivation_weights(kind, raw)` | the weights derivation ranks (default: `normalise` without a draw) | - |
| `edge_scales(tensors)` | derivation: a factor per edge on its ranking weight | edge_normalisation |
| `edge_choices()` | derivation: how many different candidates one edge may give its node | gdas |
| `keep(scores, keep)` | derivation: which incoming choices a node keeps | - |
| `threshold(kind)` | derivation: the least weight a kept edge (alpha) or attention (beta, gamma) needs | fair_darts |
| `cap(derivation)` | derivation: one candidate to take from one edge, until satisfied | max_skip_connect, max_identity |

Weights flow as `CellWeights` (one per cell type, in `ir.CELL_KINDS` order): the supernet makes
them from the raw architecture tensors (mask, normalise, adjust), the search step makes them once
per step (so a sampler draws once per step and the second-order step's passes see one draw) and
hands them to every forward; `Supernet.forward(x)` without weights makes them itself. A method
whose weights are one-hot samples (GDAS) names through `paths` the one candidate each row
computes: `MethodSet.mixture_weights` moves them to the host (one synchronisation per step, so
it fills `capture_problem` too) and the cells compute that candidate alone (`CellWeights.paths`,
`attdarts.networks.single_path`).

Every tensor a hook receives may carry leading dimensions (seeds stacked together); hooks work
over the trailing ones (rows, candidates), and `Random` draws each seed's noise from that seed's
own generator.

A space with `stages` (a progressive search, P-DARTS) also gets `progressive.Progressive` at the
end of its set (`MethodSet.progressive`): the stage's candidate masks and skip dropout. What
happens between stages (pruning, a fresh or kept supernet) is the search loop's
(`attdarts.runs.search.stages`). A sampler composes with the masks: a dropped candidate's raw
weight is -inf before `normalise`, so a sample never chooses it (GDAS's `paths` neither) and
its weight is 0 with a zero gradient.

The values hooks exchange (`CellWeights`, `Ban`, `Derivation`, `SearchContext`, `MethodError`,
`Random`) live in `attdarts.networks.methods.base` and are re-exported here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attdarts.language import ir, kinds
from attdarts.language.methods import METHODS, resolved
from attdarts.networks.methods.base import (
    Ban, CellWeights, Derivation, MethodError, MixtureWeights, Paths, Random, SearchContext,
)
from attdarts.networks.mixtures import normalise_edges
from attdarts.networks.single_path import on_host

__all__ = [
    "Ban", "CellWeights", "Derivation", "MethodError", "MethodSet", "MixtureWeights", "Paths",
    "Random", "SearchContext", "SearchMethod", "build_methods", "method_class",
]


class SearchMethod(nn.Module):
    """One search method of a space. Subclasses fill the hooks they need (module docstring);
    every default leaves the search as it is.

    `space` is the space searched and `settings` the method's settings, defaults filled in
    (`attdarts.language.methods.resolved`). A method is an `nn.Module` so that what it holds for
    the forward (coefficients, masks) moves with the supernet; such buffers are non-persistent:
    checkpoints hold weights and architecture only, and `epoch_start` sets them again.
    """

    def __init__(self, space: ir.Space, settings: Mapping[str, Any]) -> None:
        super().__init__()
        self.space = space
        self.settings = dict(settings)

    # -- the supernet ---------------------------------------------------------------------------

    def size_problem(self, channels: int) -> str | None:
        """Why a supernet with `channels` initial channels cannot be built (one line), or None."""
        return None

    def architecture(self) -> dict[str, list[str]]:
        """Extra architecture kinds and the names labelling their last axis, e.g.
        ``{kinds.EDGE: ["n0<-c_k2", ...]}``: one tensor of each per cell type."""
        return {}

    def connector(self, channels: int, stride: int) -> nn.Module | None:
        """What enters an edge's mixtures: a module with `active` (channels that enter), `split`,
        `join` and their grouped forms (`partial_channels.PartialConnection`), or None."""
        return None

    def extra_candidates(self, channels: int, stride: int) -> list[nn.Module]:
        """Modules appended to every edge's operation mixture, outside the softmax; `adjust` puts
        their weights in the last columns of alpha."""
        return []

    # -- mixture weights ------------------------------------------------------------------------

    def candidate_mask(self, kind: str, cell: str) -> Tensor | None:
        """A bool tensor (rows, candidates) of the candidates still searched, or None (all)."""
        return None

    def normalise(self, kind: str, raw: Tensor, cell: str, draw: Any) -> Tensor | None:
        """The weights of `raw` (the raw tensor of mixture kind `kind` of cell type `cell`), or
        None to leave it to the softmax. `draw` is this method's `draw` of the step, or None
        outside a step (evaluation, `normalised_architecture`): then give the deterministic
        weights. At most one method of a space makes the weights."""
        return None

    def draw(self, arch: Mapping[str, Tensor], random: Random) -> Any:
        """This step's random numbers (anything `normalise` understands), drawn once per step."""
        return None

    def paths(self, weights: CellWeights, draw: Any) -> Paths | None:
        """Single path: the candidate each row of `weights` (one cell type's, made by this
        method's `normalise` from `draw`) computes alone, as index tensors (rows,) in a `Paths`,
        or None: every candidate is computed. Asked of the method that makes the weights only."""
        return None

    def adjust(self, weights: CellWeights, cell: int) -> CellWeights:
        """The weights of cell type `cell` (index into `ir.CELL_KINDS`) after `normalise`."""
        return weights

    # -- the step -------------------------------------------------------------------------------

    def architecture_loss(self, arch: Mapping[str, Tensor], weights: MixtureWeights
                          ) -> Tensor | None:
        """A term added to the architecture step's loss (raw tensors by parameter name), or None."""
        return None

    def weight_loss(self, weights: MixtureWeights) -> Tensor | None:
        """A term added to the weight step's loss, or None."""
        return None

    def before_weight_step(self, weights: CellWeights, cell: int, random: Random) -> CellWeights:
        """The weights of cell type `cell` the weight step uses, made by `normalise` (before
        `adjust`); `random` draws this step's numbers."""
        return weights

    def after_weight_step(self) -> None:
        """Called after the weight update."""

    # -- the loop -------------------------------------------------------------------------------

    def search_start(self, context: SearchContext) -> None:
        """A search is about to run with this method (`context` says what it is for); raise
        `MethodError` (one line) when the method cannot serve it."""

    def epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        """Set this epoch's values (0-based `epoch` of `epochs`); returns those to record."""
        return {}

    def epoch_end(self, weights: MixtureWeights, genotype: ir.Genotype) -> dict[str, Any]:
        """After an epoch's derivation: `weights` are the mixture weights at its end, as a
        forward without a draw makes them, `genotype` the one derived; returns what to record."""
        return {}

    def stage_start(self, stage: int) -> dict[str, Any]:
        """Set a progressive search's stage; returns what to record."""
        return {}

    def early_stop(self, epoch: int, epochs: int, genotype: ir.Genotype, trained: bool
                   ) -> str | None:
        """Why the search stops after 0-based `epoch` (`trained`: it had architecture steps)."""
        return None

    def capture_key(self) -> tuple:
        """The Python values the step reads from this method that change during a search."""
        return ()

    def capture_problem(self) -> str | None:
        """Why a step with this method cannot be captured as a CUDA graph (one line: it reads
        device values on the host, say), or None."""
        return None

    # -- derivation -----------------------------------------------------------------------------

    def derivation_weights(self, kind: str, raw: Tensor) -> Tensor | None:
        """The weights derivation ranks, or None for `normalise` without a draw."""
        return None

    def edge_scales(self, tensors: Mapping[str, Tensor]) -> Tensor | None:
        """A factor per edge on its ranking weight (one cell's raw tensors), or None."""
        return None

    def edge_choices(self) -> int | None:
        """How many different candidates one edge may give its node at derivation, or None: one
        (DARTS). GDAS ranks every (operation, input) pair of a node, so an input may be chosen
        twice, with two operations."""
        return None

    def keep(self, scores: Sequence[float], keep: int) -> list[int] | None:
        """Positions of a node's incoming choices to keep, given their ranking scores, or None."""
        return None

    def threshold(self, kind: str) -> float | None:
        """The least weight a derived choice of mixture `kind` needs, or None (no threshold): a
        kept edge whose operation weight (alpha) is below it is dropped, and an attention (beta,
        gamma) below it becomes no attention."""
        return None

    def cap(self, derivation: Derivation) -> Ban | None:
        """One candidate to take away so the cell moves towards this method's cap, or None when
        it already holds. Derivation chooses again after each ban."""
        return None


def method_class(name: str) -> type[SearchMethod]:
    """The class a catalog entry's `factory` names, imported on first use."""
    module, _, attribute = METHODS[name].factory.partition(":")
    found = getattr(importlib.import_module(module), attribute)
    if not (isinstance(found, type) and issubclass(found, SearchMethod)):
        raise TypeError(f"search method {name!r}: {METHODS[name].factory} is not a SearchMethod")
    return found


class MethodSet(nn.Module):
    """A space's search methods, in its order, and the hooks composed.

    Derivation-only use (no supernet) builds one too: `build_methods(space)`.
    """

    def __init__(self, space: ir.Space) -> None:
        super().__init__()
        self.space = space
        self.methods = nn.ModuleList(
            method_class(call.name)(space, resolved(call)) for call in space.methods)
        if space.stages:  # a progressive search: the stages' masks and skip dropout
            progressive = importlib.import_module(f"{__name__}.progressive")
            self.methods.append(progressive.Progressive(space, {}))
        makers = [m for m in self.methods if type(m).normalise is not SearchMethod.normalise]
        if len(makers) > 1:
            raise ValueError("search methods " + ", ".join(f"'{_name(m)}'" for m in makers) +
                             " each make the mixture weights; a space may list one of them")
        self._maker = makers[0] if makers else None
        self._index = list(self.methods).index(self._maker) if makers else None

    def __iter__(self):
        return iter(self.methods)

    @property
    def progressive(self) -> SearchMethod | None:
        """The stages' component (`progressive.Progressive`) of a space with stages, or None."""
        return self.methods[-1] if self.space.stages else None

    def _first(self, hook: str, *args: Any) -> Any:
        for method in self.methods:
            value = getattr(method, hook)(*args)
            if value is not None:
                return value
        return None

    # -- the supernet ---------------------------------------------------------------------------

    def size_problem(self, channels: int) -> str | None:
        return self._first("size_problem", channels)

    def architecture(self) -> dict[str, list[str]]:
        extra: dict[str, list[str]] = {}
        for method in self.methods:
            extra.update(method.architecture())
        return extra

    def connector(self, channels: int, stride: int) -> nn.Module | None:
        return self._first("connector", channels, stride)

    def extra_candidates(self, channels: int, stride: int) -> list[nn.Module]:
        return [module for method in self.methods
                for module in method.extra_candidates(channels, stride)]

    # -- mixture weights ------------------------------------------------------------------------

    def normalise(self, kind: str, raw: Tensor, cell: str, draw: Mapping[int, Any] | None
                  ) -> Tensor:
        """One raw tensor's weights: masked candidates set to -inf, then the method that makes
        weights (or the softmax per row; edge weights: per node)."""
        if kind == kinds.EDGE:
            return normalise_edges(raw, self.space.nodes)
        mask = self.searched(kind, cell)
        if mask is not None:
            raw = raw.masked_fill(~mask.to(raw.device), float("-inf"))
        if self._maker is not None:
            made = self._maker.normalise(kind, raw, cell,
                                         None if draw is None else draw.get(self._index))
            if made is not None:
                return made
        return F.softmax(raw, dim=-1)

    def searched(self, kind: str, cell: str) -> Tensor | None:
        """The candidates of mixture `kind` of cell type `cell` still searched (bool, the raw
        tensor's shape: every method's `candidate_mask` at once), or None: all of them."""
        mask = None
        for method in self.methods:
            own = method.candidate_mask(kind, cell)
            if own is not None:
                mask = own if mask is None else mask & own.to(mask.device)
        return mask

    def mixture_weights(self, raw: Sequence[Mapping[str, Tensor]], draw: Mapping[int, Any] | None
                        = None, *, weight_step: Random | None = None) -> MixtureWeights:
        """`CellWeights` per cell type from its raw tensors by kind: masked, normalised, (for
        the weight step, given its `Random`) `before_weight_step`, then adjusted."""
        weights = []
        for index, (cell, tensors) in enumerate(zip(ir.CELL_KINDS, raw)):
            made = {kind: self.normalise(kind, tensor, cell, draw)
                    for kind, tensor in tensors.items()}
            cell_weights = CellWeights(
                alpha=made[kinds.OPERATION], beta=made.get(kinds.ATTENTION),
                gamma=made.get(kinds.OUTPUT), edges=made.get(kinds.EDGE))
            if self._maker is not None:
                paths = self._maker.paths(cell_weights,
                                          None if draw is None else draw.get(self._index))
                cell_weights = cell_weights._replace(paths=paths)
            if weight_step is not None:
                for method in self.methods:
                    cell_weights = method.before_weight_step(cell_weights, index, weight_step)
            for method in self.methods:
                cell_weights = method.adjust(cell_weights, index)
            weights.append(cell_weights)
        return on_host(tuple(weights))

    def draw(self, arch: Mapping[str, Tensor], random: Random) -> dict[int, Any]:
        """Every method's draw for this step, by position in the space's list."""
        draws = {}
        for index, method in enumerate(self.methods):
            value = method.draw(arch, random)
            if value is not None:
                draws[index] = value
        return draws

    # -- the step -------------------------------------------------------------------------------

    def architecture_loss(self, arch: Mapping[str, Tensor], weights: MixtureWeights
                          ) -> Tensor | None:
        return _total(method.architecture_loss(arch, weights) for method in self.methods)

    def weight_loss(self, weights: MixtureWeights) -> Tensor | None:
        return _total(method.weight_loss(weights) for method in self.methods)

    def after_weight_step(self) -> None:
        for method in self.methods:
            method.after_weight_step()

    # -- the loop -------------------------------------------------------------------------------

    def epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        record: dict[str, float] = {}
        for method in self.methods:
            record.update(method.epoch_start(epoch, epochs))
        return record

    def stage_start(self, stage: int) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for method in self.methods:
            record.update(method.stage_start(stage))
        return record

    def early_stop(self, epoch: int, epochs: int, genotype: ir.Genotype, trained: bool
                   ) -> str | None:
        return self._first("early_stop", epoch, epochs, genotype, trained)

    def capture_key(self) -> tuple:
        return tuple(method.capture_key() for method in self.methods)

    def capture_problem(self) -> str | None:
        """Why a step with these methods cannot be captured as a CUDA graph, or None."""
        return self._first("capture_problem")

    def search_start(self, context: SearchContext) -> None:
        for method in self.methods:
            method.search_start(context)

    def epoch_end(self, weights: MixtureWeights, genotype: ir.Genotype) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for method in self.methods:
            record.update(method.epoch_end(weights, genotype))
        return record

    # -- derivation -----------------------------------------------------------------------------

    def derivation_weights(self, kind: str, raw: Tensor, cell: str) -> Tensor:
        """A raw tensor's weights as derivation ranks them (float64 on the CPU)."""
        raw = raw.detach().to("cpu", torch.float64)
        for method in self.methods:
            made = method.derivation_weights(kind, raw)
            if made is not None:
                return made
        return self.normalise(kind, raw, cell, None)

    def edge_scales(self, tensors: Mapping[str, Tensor]) -> list[float] | None:
        scales = None
        for method in self.methods:
            factor = method.edge_scales(tensors)
            if factor is not None:
                scales = factor if scales is None else scales * factor
        return None if scales is None else scales.tolist()

    def edge_choices(self) -> int:
        return self._first("edge_choices") or 1

    def keep(self, scores: Sequence[float], keep: int) -> list[int] | None:
        return self._first("keep", scores, keep)

    def threshold(self, kind: str) -> float | None:
        return self._first("threshold", kind)

    def caps(self) -> list[SearchMethod]:
        """The methods with a derivation cap, in the space's order."""
        return [method for method in self.methods if type(method).cap is not SearchMethod.cap]


def _total(terms) -> Tensor | None:
    total = None
    for term in terms:
        if term is not None:
            total = term if total is None else total + term
    return total


def _name(method: SearchMethod) -> str:
    return next((name for name, entry in METHODS.items()
                 if entry.factory.endswith(f":{type(method).__name__}")), type(method).__name__)


def build_methods(space: ir.Space) -> MethodSet:
    """The methods of `space`, built from the catalog (a plug-in's too)."""
    return MethodSet(space)
