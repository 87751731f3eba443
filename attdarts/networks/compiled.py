"""Compiled cells: regional `torch.compile` of the repeated cells of a supernet or discrete network.

A network of this package is a short stem, a stack of L cells and a classifier; nearly all of its
kernels are in the cells, and the cells of one kind at one size are the same code on tensors of
the same shapes. `compile_cells` therefore compiles each cell (`nn.Module.compile`, PyTorch's
"regional compilation") instead of the whole model: Dynamo caches a compiled graph by code object
and guards, and since parameters are graph inputs rather than constants, a cell reuses the graph
of any earlier cell with the same structure and input shapes. A stack of L cells costs one
compilation per distinct (kind, shape), not L (`tests/networks/test_compiled.py` counts them).

`fullgraph=True` (the default) makes a graph break an error instead of a silent fallback to
Python, so "compiled" means the whole cell is one graph: every search location and mixing, the
plain and the grouped paths, drop path and the per-edge attentions trace without a break.

Nothing else changes: parameter and buffer names stay as they are (the cells are not wrapped,
unlike ``torch.compile(model)``, which prefixes ``_orig_mod.``), so checkpoints, derivation and
`load_state_dict` work as before, and the eager forward is still there (`eager_cells`).

The discrete network passes its drop-path probability to the cells; a float would be a constant
of the compiled graph (one recompilation per value, and the training loop ramps it every epoch),
so `compile_cells` makes the network hold it in a 0-dim tensor (`Network.hold_drop_path_in_tensor`:
the same distribution of masks, drawn by the tensor-probability kernel).

Shapes are compiled static (``dynamic=False``): a cell at a new input size, batch size or mode
(train / eval) compiles once more, as does a cell whose parameters `torch.func.functional_call`
replaces (the second-order search); `compile_cells` raises Dynamo's recompile limit to allow for
every distinct cell in each of those (`recompile_budget`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attdarts.networks import grouping

__all__ = ["compile_cells", "compiled", "distinct_cells", "eager_cells", "recompile_budget"]

# each distinct cell may be compiled in train and eval mode, for a last, smaller batch, and with
# parameters swapped in by torch.func.functional_call (the second-order search's virtual step)
VARIANTS_PER_CELL = 8


def distinct_cells(model: nn.Module) -> int:
    """How many structurally different cells `model.cells` has: cells with the same modules,
    settings and parameter shapes (the same `repr`, plus the input size a cell is built for)
    share one compiled graph per input shape."""
    return len({_structure(cell) for cell in model.cells})


def _structure(cell: nn.Module) -> tuple[Any, ...]:
    shapes = tuple((name, tuple(t.shape)) for name, t in cell.state_dict().items())
    return type(cell), getattr(cell, "spatial_in", None), repr(cell), shapes


def recompile_budget(model: nn.Module) -> int:
    """Compiled graphs the cells of `model` may need: `VARIANTS_PER_CELL` per distinct cell."""
    return VARIANTS_PER_CELL * distinct_cells(model)


def compile_cells(
    model: nn.Module,
    *,
    backend: Any = "inductor",
    fullgraph: bool = True,
    mode: str | None = None,
) -> nn.Module:
    """Compile every cell of `model` (a `Supernet` or `Network`, anything with `.cells`) in place
    and return `model`.

    `backend` and `mode` go to `torch.compile` ("inductor" is PyTorch's compiler; "eager" only
    traces, which is how the tests check for graph breaks cheaply). With `fullgraph=True` a graph
    break raises when the cell first runs. Call it after the model is built and moved to its
    device; the model computes the same numbers as before (to float rounding with inductor).
    """
    cells = getattr(model, "cells", None)
    if not isinstance(cells, nn.ModuleList) or len(cells) == 0:
        raise ValueError(f"compile_cells needs a model with cells, not {type(model).__name__}")
    # the cells share one code object (Module._call_impl), so Dynamo's per-code limit must allow
    # a graph per distinct cell and variant, on top of whatever else this process compiles
    budget = recompile_budget(model)
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, budget)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * budget)
    hold = getattr(model, "hold_drop_path_in_tensor", None)
    if hold is not None:  # a float argument would be compiled in: one recompile per epoch's value
        hold()
    for cell in cells:
        _compile_cell(cell, backend=backend, fullgraph=fullgraph, mode=mode, dynamic=False)
    return model


def _compile_cell(cell: nn.Module, **options: Any) -> None:
    """`cell.compile(**options)`, with the cell's batch-norm write-backs kept to itself.

    Grouped cells queue their running-statistics write-backs while the model's forward runs
    (`grouping.deferred_statistics`); a compiled cell that appended to the model's queue would be
    guarded on the queue's length, which grows from cell to cell, and so compiled once per cell
    instead of once per distinct cell. Each compiled cell gets a queue of its own, written when
    it returns (two multi-tensor operations per cell).
    """
    compiled_call = torch.compile(cell._call_impl, **options)

    def call(*args: Any, **kwargs: Any) -> Any:
        with grouping.deferred_statistics():
            return compiled_call(*args, **kwargs)

    cell._compiled_call_impl = call  # what nn.Module.compile sets; __call__ runs it


def compiled(model: nn.Module) -> bool:
    """Whether the cells of `model` run compiled (`compile_cells`)."""
    return any(getattr(cell, "_compiled_call_impl", None) is not None for cell in model.cells)


def eager_cells(model: nn.Module) -> nn.Module:
    """Undo `compile_cells`: the cells run their Python forward again. Returns `model`."""
    for cell in model.cells:
        cell._compiled_call_impl = None
    return model
