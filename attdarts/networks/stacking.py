"""The stack of cells that the discrete network and the search supernet share (DARTS's skeleton).

Both stack `layers` cells on a stem. The cells at L//3 and 2L//3 are reduction cells: they double
the channels C and halve the map. Cell k reads the outputs of the two cells before it, c_{k-2}
and c_{k-1} (the stem's output for the first cells); after a reduction cell c_{k-2} is twice the
size of c_{k-1}, so the next cell reduces it (`reduction_prev`).

This module only keeps that account. The callers build the cells (`network.CellModule`,
`search_cell.SearchCell`), and each cell says what it outputs (`channels_out`, `spatial_out`): a
discrete cell concatenates as many nodes as its genotype names, and the normal and reduce cells
of one genotype can differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = ["STEM_MULTIPLIER", "Layer", "halve", "reduction_indices", "stack_cells"]

STEM_MULTIPLIER = 3  # CIFAR stem width = 3C (DARTS)


def halve(size: int) -> int:
    """Output size of every stride-2 layer of the skeleton (3x3 pad 1, 1x1 stride 2,
    factorized reduce): ceil(size / 2)."""
    return (size + 1) // 2


@dataclass(frozen=True)
class Layer:
    """What cell `index` of the stack is built for."""

    index: int
    reduction: bool
    reduction_prev: bool
    channels_prev_prev: int  # channels of c_{k-2}
    channels_prev: int  # channels of c_{k-1}
    channels: int  # C of this cell: each intermediate node has C channels
    spatial_in: int  # height (= width) of c_{k-1}

    def cell_arguments(self) -> dict[str, Any]:
        """The keyword arguments `CellModule` and `SearchCell` both take (all but `index`)."""
        return {
            "channels_prev_prev": self.channels_prev_prev,
            "channels_prev": self.channels_prev,
            "channels": self.channels,
            "reduction": self.reduction,
            "reduction_prev": self.reduction_prev,
            "spatial_in": self.spatial_in,
        }


class _Cell(Protocol):
    channels_out: int
    spatial_out: int


CellT = TypeVar("CellT", bound=_Cell)


def reduction_indices(layers: int) -> frozenset[int]:
    """Positions of the reduction cells in a stack of `layers` cells (DARTS: L//3 and 2L//3)."""
    return frozenset({layers // 3, 2 * layers // 3})


def stack_cells(
    build: Callable[[Layer], CellT],
    *,
    layers: int,
    channels: int,
    channels_stem: int,
    spatial: int,
    reduction_prev: bool = False,
) -> tuple[list[CellT], int]:
    """Build `layers` cells in order with `build` and return them with the channel count of the
    last output (the stem's when there are no cells).

    `channels` is the first cell's C; `channels_stem` is the channel count of the stem's outputs
    (c_{k-2} and c_{k-1} of the first cell) and `spatial` the size of c_{k-1}. `reduction_prev`
    says whether the first c_{k-2} is twice that size: the ImageNet stems give stem0's output as
    c_{k-2} and stem1 halves it into c_{k-1}; the CIFAR stem gives one output for both.
    """
    reductions = reduction_indices(layers)
    channels_prev_prev = channels_prev = channels_stem
    cells = []
    for index in range(layers):
        reduction = index in reductions
        if reduction:
            channels *= 2
        cell = build(Layer(
            index=index,
            reduction=reduction,
            reduction_prev=reduction_prev,
            channels_prev_prev=channels_prev_prev,
            channels_prev=channels_prev,
            channels=channels,
            spatial_in=spatial,
        ))
        cells.append(cell)
        reduction_prev = reduction
        channels_prev_prev, channels_prev = channels_prev, cell.channels_out
        spatial = cell.spatial_out
    return cells, channels_prev
