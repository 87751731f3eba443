"""The values search methods and their callers exchange (`attdarts.networks.methods`).

`CellWeights` (one cell type's mixture weights as the cells use them), `Ban` and `Derivation`
(derivation's caps), `SearchContext` (what a search tells its methods when it starts),
`MethodError` (a method that cannot serve a search) and `Random` (one step's per-seed random
numbers). The package re-exports every name, so callers import them from
`attdarts.networks.methods`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from attdarts.language import ir
from attdarts.networks.single_path import Paths

__all__ = [
    "Ban", "CellWeights", "Derivation", "MethodError", "MixtureWeights", "Paths", "Random",
    "SearchContext",
]


class CellWeights(NamedTuple):
    """The mixture weights of one cell type, as its cells use them.

    `alpha`, `beta`, `gamma` are the weights of the kinds `kinds.OPERATION`, `ATTENTION`,
    `OUTPUT` (rows x candidates; None where the location has no such mixture; the fields are
    named after the kinds); `edges` the normalised edge weights (edge normalisation) or None;
    `identity` a coefficient b adding ``b * h`` to every attention mixture, or None. A method's
    `extra_candidates` take the last columns of `alpha`, past the space's candidates. `paths`:
    the single path of each mixture (`Paths`, GDAS), or None: every candidate is computed.
    `noise` is a pass's (key, rate) of skip dropout (`attdarts.networks.noise`, P-DARTS), or None.
    """

    alpha: Tensor
    beta: Tensor | None = None
    gamma: Tensor | None = None
    edges: Tensor | None = None
    identity: Tensor | None = None
    paths: Paths | None = None
    noise: Tensor | None = None


MixtureWeights = tuple[CellWeights, ...]  # one per cell type, indexed like ir.CELL_KINDS


@dataclass(frozen=True)
class Ban:
    """A candidate a derivation cap takes away from one edge: edge `edge` (DARTS order) may not
    choose `candidate` from its `kind` mixture (`kinds.OPERATION` or `kinds.ATTENTION`)."""

    edge: int
    kind: str
    candidate: str


@dataclass
class Derivation:
    """One cell's derivation as the caps see it (`attdarts.networks.derive`).

    `kept[node]` are the edges node keeps, each with `.index` (edge), `.operation` and
    `.attention` (indices into the space's operations / attentions, None: skip_connect from a
    mixed softmax / no attention) and `.weight` (its ranking weight); `weights` the normalised
    rows per kind (lists of floats); `scales` each edge's ranking factor.
    """

    space: ir.Space
    cell: str
    kept: list[list[Any]]
    weights: dict[str, list[list[float]]]
    scales: list[float]

    def operation_name(self, choice: Any) -> str | None:
        return None if choice.operation is None else self.space.operations[choice.operation].name

    def attention_name(self, choice: Any) -> str | None:
        return None if choice.attention is None else self.space.attentions[choice.attention].name


class MethodError(Exception):
    """A method cannot serve this search (a table it names cannot be read, does not fit the
    space): one line, which the search reports before writing anything."""


@dataclass(frozen=True)
class SearchContext:
    """What a search tells its methods when it starts (`SearchMethod.search_start`).

    `dataset`, `channels` and `layers` are the final network the search is for (the training
    recipe of the search's dataset: CIFAR-10 or CIFAR-100 at C=36, 20 cells); `directory` is
    where relative paths in the space resolve, the folder of the space file (None: the current
    directory).
    """

    dataset: str = "cifar10"
    channels: int = 36
    layers: int = 20
    directory: Path | None = None

    def path(self, name: str) -> Path:
        """`name` as the space means it: relative to `directory`."""
        path = Path(name).expanduser()
        return path if path.is_absolute() or self.directory is None else self.directory / path


class Random:
    """The random numbers of one step: each seed draws from its own generator.

    `generators` holds one `torch.Generator` per seed. With `stacked` the tensors drawn for carry
    a leading seed dimension and seed s's slice comes from generator s, so a seed draws in a run
    of several seeds exactly what it draws alone.
    """

    def __init__(self, generators: Sequence[torch.Generator], *, stacked: bool = False) -> None:
        if not generators:
            raise ValueError("a step needs at least one generator")
        if not stacked and len(generators) != 1:
            raise ValueError("several generators need tensors stacked along the seeds")
        self.generators = tuple(generators)
        self.stacked = stacked

    def rand_like(self, tensor: Tensor) -> Tensor:
        """Uniform numbers in [0, 1) shaped like `tensor`."""
        return self.draw_like(tensor, lambda out, generator: out.uniform_(0.0, 1.0,
                                                                          generator=generator))

    def draw_like(self, tensor: Tensor, fill: Callable[[Tensor, torch.Generator], Tensor]) -> Tensor:
        """A tensor like `tensor` (no gradient), filled in place by ``fill(out, generator)``."""
        return self.sample(tensor, lambda part, generator: fill(torch.empty_like(part), generator))

    def sample(self, tensor: Tensor, sampler: Callable[[Tensor, torch.Generator], Tensor]
               ) -> Tensor:
        """``sampler(tensor, generator)`` without gradient: numbers whose distribution depends
        on `tensor` (DrNAS: a Dirichlet sample of concentrations `tensor`). Stacked, seed s's
        slice is ``sampler(tensor[s], generator s)``."""
        tensor = tensor.detach()
        if not self.stacked:
            return sampler(tensor, self.generators[0])
        if tensor.shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} seeds, but the tensor's leading dimension "
                             f"is {tensor.shape[0]}")
        return torch.stack([sampler(part, generator)
                            for part, generator in zip(tensor, self.generators)])
