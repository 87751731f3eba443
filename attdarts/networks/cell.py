"""The cells of a discrete network: edges (operation, attention, drop path), nodes, waves.

Every name, index and stride is resolved at construction: `forward` only indexes Python lists
with precomputed integers. Grouped cells run the edges whose inputs are ready together (one
kernel sequence per distinct operation and attention of a wave, `attdarts.networks.grouping`),
with drop-path masks drawn in the plain order (`drop_path_mask`), so a seed gives the same
numbers on both paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attdarts.language import ir
from attdarts.networks import grouping as grouped
from attdarts.networks.attentions import IdentityAttention
from attdarts.networks.operations import preprocess_inputs
from attdarts.networks.registry import build_attention, build_operation
from attdarts.networks.stacking import halve

__all__ = [
    "DROP_PATH_RULES",
    "CellModule",
    "EdgeModule",
    "NodeModule",
    "count_droppable_edges",
    "drop_path",
    "drop_path_mask",
    "dropping",
]

DropPathRule = Literal["darts", "authors"]
DROP_PATH_RULES: tuple[str, ...] = ("darts", "authors")  # the first is the default


DropProbability = float | torch.Tensor


def dropping(prob: DropProbability) -> bool:
    """Whether drop path runs at probability `prob` (in training mode). A probability held in a
    0-dim tensor (`Network.hold_drop_path_in_tensor`) always runs, so that nothing depends on its
    value on the host: at 0 the mask is all ones, the same result with a few more kernels."""
    return isinstance(prob, torch.Tensor) or prob > 0.0


def drop_path_mask(like: torch.Tensor, prob: DropProbability) -> torch.Tensor:
    """The one drop-path mask: per sample 0 with probability `prob`, else 1 / (1 - prob).

    Shaped (batch, 1, 1, 1) and drawn on `like`'s device in `like`'s dtype, so there is no host
    sync and no dtype promotion under autocast. Plain and grouped cells draw it edge by edge in
    the same order, so a seed gives the same numbers on both paths. `prob` may be a 0-dim tensor
    (compiled cells, captured steps): the same distribution, drawn by the tensor-probability
    kernel, so a seed gives other masks than with a float.
    """
    keep = 1.0 - prob
    mask = torch.empty((like.shape[0], 1, 1, 1), dtype=like.dtype, device=like.device)
    return mask.bernoulli_(keep).div_(keep)


def drop_path(x: torch.Tensor, prob: DropProbability) -> torch.Tensor:
    """Zero each sample's tensor with probability `prob`, scale survivors by 1 / (1 - prob)."""
    return x * drop_path_mask(x, prob)


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

    def forward(self, x: torch.Tensor, drop_prob: DropProbability) -> torch.Tensor:
        h = self.operation(x)
        if self.attention is not None:
            h = self.attention(h)
        if self.droppable and self.training and dropping(drop_prob):
            h = drop_path(h, drop_prob)
        return h

    def extra_repr(self) -> str:
        return f"input_index={self.input_index}, droppable={self.droppable}"


class NodeModule(nn.Module):
    """An intermediate node: the sum of its incoming edges (paper Eq. 11)."""

    def __init__(self, edges: list[EdgeModule]) -> None:
        super().__init__()
        self.edges = nn.ModuleList(edges)

    def forward(self, states: list[torch.Tensor], drop_prob: DropProbability) -> torch.Tensor:
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

        # the authors' model gives every edge of a cell with attentions a second layer, where a
        # DSL edge without attention is their 'Identity' (see `_droppable`)
        cell_has_attention = any(edge.attention is not None for node in cell.nodes
                                 for edge in node.edges)
        nodes = []
        for node in cell.nodes:
            edges = []
            for edge in node.edges:
                from_input = edge.input in ir.INPUTS
                stride = 2 if reduction and from_input else 1
                operation = build_operation(edge.operation, channels, stride, affine=True)
                attention = _build_attention(edge.attention, channels, self.spatial_out)
                edges.append(EdgeModule(
                    operation,
                    attention,
                    cell.index_of(edge.input),
                    _droppable(operation, attention, drop_path_rule, cell_has_attention),
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

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: DropProbability
                ) -> torch.Tensor:
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

    def forward_grouped(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: DropProbability
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

    def _drop_masks(self, like: torch.Tensor, drop_prob: DropProbability
                    ) -> dict[tuple[int, int], torch.Tensor]:
        if not (self.training and dropping(drop_prob)):
            return {}
        masks = {}
        for node, module in enumerate(self.nodes):
            for index, edge in enumerate(module.edges):
                if edge.droppable:  # as drop_path draws it, in forward's order
                    masks[(node, index)] = drop_path_mask(like, drop_prob)
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
    return build_attention(call, channels, spatial)


def _droppable(operation: nn.Module, attention: nn.Module | None, rule: DropPathRule,
               cell_has_attention: bool = True) -> bool:
    """Whether drop path applies to an edge (DARTS, Liu et al., ICLR 2019:
    path dropout when the found cells are trained; README, "Compile a genotype").

    "darts" (DARTS's NetworkCIFAR, the default): every edge whose operation is not the identity.
    "authors" (the Att-DARTS code, model.py `Cell.forward`): a cell whose genotype names
    attentions gives every edge a second layer, 'Identity' where the edge has none, and spares an
    edge whose operation or second layer is the identity. In the DSL `>> identity` is written as
    no attention (and the exporter writes such an edge as 'Identity'), so in a cell where any edge
    has an attention, an edge without one is spared. A cell with no attention at all follows
    DARTS's rule, so a plain DARTS genotype is dropped exactly as DARTS drops it.
    """
    identity_operation = isinstance(operation, nn.Identity)
    if rule == "darts":
        return not identity_operation
    if rule == "authors":
        if not cell_has_attention:
            return not identity_operation
        identity_attention = attention is None or isinstance(attention, IdentityAttention)
        return not (identity_operation or identity_attention)
    raise ValueError(f"unknown drop path rule {rule!r}; expected one of {', '.join(DROP_PATH_RULES)}")


def count_droppable_edges(model: nn.Module) -> tuple[int, int]:
    """(edges drop path applies to, all edges) over every cell of `model`."""
    edges = [edge for cell in model.cells for node in cell.nodes for edge in node.edges]
    return sum(edge.droppable for edge in edges), len(edges)

