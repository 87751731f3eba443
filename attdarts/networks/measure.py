"""Measure a compiled network: parameters, per-cell summary, multiply-adds (`attdarts compile`).

`measure` builds a genotype's discrete network; `measure_supernet` a space's search supernet
(default: the search size, C=16, 8 cells, CIFAR-10), counting its weights, its architecture
parameters and the mult-adds of one supernet forward. In that forward the `none` operation is
not evaluated (its output is zero), so it adds nothing; every other candidate of every mixture
is counted, as the search computes it. `measure_stages` counts each stage of a progressive
search: which candidates a later stage keeps is learnt, so its weights in use are a range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attdarts.language import ir, kinds
from attdarts.language.methods import resolved
from attdarts.networks import network
from attdarts.networks.network import DATASETS, Network, _stem_size
from attdarts.networks.stacking import halve
from attdarts.networks.supernet import compile_supernet

__all__ = [
    "CellSummary", "count_multiply_adds", "count_parameters", "describe_network", "measure",
    "measure_stages", "measure_supernet",
]


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


def measure(
    genotype: ir.Genotype,
    *,
    dataset: str,
    channels: int,
    layers: int,
    auxiliary: bool,
    progress: Callable[[str], None] = lambda message: None,
) -> tuple[dict, list[CellSummary]]:
    """Build the network of `genotype` and measure it for `attdarts compile`: (summary, rows).

    The summary has the parameter counts (without and with the auxiliary head), multiply-adds
    per image, input and output shapes and the per-cell rows; `progress` hears each stage.
    """
    progress(f"building the network (C={channels}, L={layers})")
    model = network.compile_network(genotype, dataset=dataset, channels=channels, layers=layers,
                            auxiliary=auxiliary)
    progress("counting parameters")
    rows = describe_network(model)
    parameters = count_parameters(model, auxiliary=False)
    with_auxiliary = count_parameters(model, auxiliary=True) if auxiliary else None
    progress("counting multiply-adds (one forward pass)")
    outputs = []  # the output shape comes from the same forward pass, not a second one
    hook = model.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    try:
        multiply_adds = count_multiply_adds(model)
    finally:
        hook.remove()
    summary = {
        "genotype": genotype.name,
        "dataset": dataset,
        "channels": channels,
        "layers": layers,
        "input_shape": [1, model.in_chans, model.input_size, model.input_size],
        "output_shape": list(outputs[-1].shape),
        "parameters": parameters,
        "parameters_with_auxiliary": with_auxiliary,
        "multiply_adds": multiply_adds,
        "cells": [
            {"index": r.index, "type": r.kind, "channels": r.channels_out, "spatial": r.spatial,
             "parameters": r.parameters} for r in rows
        ],
    }
    return summary, rows


def measure_supernet(
    space: ir.Space,
    *,
    dataset: str,
    channels: int,
    layers: int,
    progress: Callable[[str], None] = lambda message: None,
) -> tuple[dict, list[CellSummary]]:
    """Build the search supernet of `space` and measure it for `attdarts compile SPACE_FILE`.

    The summary has the weights w, the architecture parameters (in all and per kind: alpha,
    beta, gamma, edges, both cell types together), mult-adds of one image through the supernet
    (batch 1, eval mode; `none` is not evaluated), the shapes, the space's search methods (each
    with every setting) and the per-cell rows (weights only). A supernet is CIFAR's search
    network: `dataset` is cifar10 or cifar100 (ValueError otherwise). `channels` must suit the
    space's methods (partial channels: divisible by k; ValueError otherwise).
    """
    shape = DATASETS.get(dataset)
    if shape is None or shape.imagenet_stem:
        raise ValueError(f"a search supernet is built for cifar10 or cifar100, not {dataset!r}")
    progress(f"building the supernet (C={channels}, L={layers})")
    model = compile_supernet(space, channels=channels, layers=layers,
                             num_classes=shape.num_classes, input_size=shape.input_size)
    progress("counting parameters")
    rows = [CellSummary(index=index, kind="reduce" if cell.reduction else "normal",
                        channels_out=cell.channels_out, spatial=cell.spatial_out,
                        parameters=sum(p.numel() for p in cell.parameters()))
            for index, cell in enumerate(model.cells)]
    per_kind: dict[str, int] = {}
    for name, parameter in model.named_architecture():
        kind = name.removeprefix("arch.").rsplit("_", 1)[0]
        per_kind[kind] = per_kind.get(kind, 0) + parameter.numel()
    progress("counting multiply-adds (one forward pass)")
    probe = torch.zeros((1, 3, shape.input_size, shape.input_size))
    counter = FlopCounterMode(display=False)
    model.eval()
    with torch.no_grad(), counter:
        output = model(probe)
    summary = {
        "space": space.name,
        "dataset": dataset,
        "channels": channels,
        "layers": layers,
        "methods": {call.name: resolved(call) for call in space.methods},
        "input_shape": list(probe.shape),
        "output_shape": list(output.shape),
        "weights": sum(p.numel() for p in model.weights()),
        "architecture_parameters": sum(per_kind.values()),
        "architecture": per_kind,
        "multiply_adds": counter.get_total_flops() // 2,
        "cells": [
            {"index": r.index, "type": r.kind, "channels": r.channels_out, "spatial": r.spatial,
             "weights": r.parameters} for r in rows
        ],
    }
    return summary, rows


def measure_stages(
    space: ir.Space,
    *,
    dataset: str,
    channels: int,
    layers: int,
    progress: Callable[[str], None] = lambda message: None,
) -> list[dict]:
    """Each stage of a space with stages at the search size (`layers`: a stage's cells when it
    does not say), for `attdarts compile`: its cells, the candidates it keeps per edge by kind,
    the weights of its supernet (every candidate is built, with the stage's partial channels k,
    None without the method) and those in use, fewest to most
    (each row of the architecture keeps the stage's count of candidates: the cheapest ones to
    the dearest ones), and its architecture parameters (all; those searched, the kept ones)."""
    shape = DATASETS[dataset]
    counts: dict[str, int | None] = {"operations": None, "attentions": None}
    rows = []
    for number, stage in enumerate(space.stages, 1):
        depth = layers if stage.layers is None else stage.layers
        counts.update({key: getattr(stage, key) for key in counts
                       if getattr(stage, key) is not None})
        progress(f"building the supernet of stage {number} (C={channels}, L={depth})")
        built = space.at_stage(number - 1)  # its partial channels
        model = compile_supernet(built, channels=channels, layers=depth,
                                 num_classes=shape.num_classes, input_size=shape.input_size)
        k = built.setting("partial_channels", "k") if built.method("partial_channels") else None
        rows.append({"stage": number, "layers": depth, **counts, "partial_channels": k,
                     **_stage_weights(model, counts)})
    return rows


def _stage_weights(model, counts: dict[str, int | None]) -> dict:
    """Weights built and in use (fewest, most) and architecture parameters (all, searched) of
    a supernet whose rows keep `counts` candidates (None: all)."""
    keep = {kinds.OPERATION: counts["operations"], kinds.ATTENTION: counts["attentions"],
            kinds.OUTPUT: counts["attentions"]}
    columns = model.columns
    costs: dict[tuple, list[int]] = {}  # (cell type, kind, row) -> weights of each candidate
    for cell in model.cells:
        mixtures = [(kinds.OPERATION, row, edge.first) for row, edge in enumerate(cell.edges)]
        mixtures += [(kinds.ATTENTION, row, edge.then) for row, edge in enumerate(cell.edges)
                     if edge.then is not None]
        if cell.output_attention is not None:
            mixtures.append((kinds.OUTPUT, 0, cell.output_attention))
        for kind, row, mixture in mixtures:
            own = costs.setdefault((cell.kind_index, kind, row), [0] * len(columns[kind]))
            for index in range(len(own)):  # a method's extra candidates are always kept
                own[index] += sum(p.numel() for p in mixture.candidates[index].parameters())
    built = sum(p.numel() for p in model.weights())
    fewest = most = built - sum(sum(own) for own in costs.values())
    for (_, kind, _), own in costs.items():
        count = keep[kind] or len(own)
        fewest += sum(sorted(own)[:count])
        most += sum(sorted(own)[len(own) - count:])
    architecture = sum(p.numel() for p in model.architecture())
    searched = sum(tensor.shape[0] * (keep.get(kind) or tensor.shape[1]) if kind in keep
                   else tensor.numel()
                   for tensors in model.architecture_tensors().values()
                   for kind, tensor in tensors.items())
    return {"weights": built, "weights_in_use": [fewest, most],
            "architecture_parameters": architecture, "architecture_searched": searched}
