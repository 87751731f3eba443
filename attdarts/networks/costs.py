"""Cost tables: what every choice of a genotype costs in the final network (`attdarts cost`).

A genotype of a space is a choice, at every edge position of its two cells, of an operation and
an attention (and of an output attention where the location has one). Its final network stacks
those cells `layers` times (DARTS's skeleton, `attdarts.networks.stacking`), so an edge position
of the normal cell sits in every normal cell of the stack, each with its own channels, stride and
spatial size. The table prices every candidate at every one of those places, with the counter
`attdarts compile` uses (`torch.utils.flop_counter`, batch 1, eval mode; parameters by `numel`),
plus a fixed part (the stem, every cell's two preprocessing layers, the classifier), so that

    total = fixed + sum over the cells of the stack, over the genotype's edges, of
            (operation entry + attention entry) + the output attention entry of each cell.

For multiply-adds and parameters this sum is exact (tests compare it with `compile` on random
and zoo genotypes): convolutions, matrix products and parameters belong to one module each, and
nothing between the modules (node sums, concatenation, pooling) counts. Latency is measured per
module on the device at the final network's shapes (`LatencySettings`) and its sum is an
estimate: what a cell does between its modules (additions, concatenation, Python) is in the
fixed part as measured once, and nothing models caches or overlap (`benchmarks/costs.py` says
how far the sum is from the network's measured latency).

What the table assumes, and `CostTable.problems` checks before pricing a genotype:

- every cell has the space's `nodes` intermediate nodes and its output concatenates all of them,
  as derivation writes them: the concatenation's width sets the next cells' preprocessing
  convolutions, the output attention's width and the classifier's input, all in the fixed part;
- every operation and attention is a candidate of the space (an edge without attention costs
  nothing, like `identity`); an output attention only where the location has one. Where the
  location mixes attentions into the operations' softmax, an attention derives to
  `skip_connect(x) >> attention`, so `skip_connect` has a row even if the space does not list it;
- nodes may have any number of edges for the counts; for latency, the fixed part holds `keep - 1`
  additions per node, and a cell with other edge counts is corrected by its measured addition.

Every stage asks the table rather than building networks: `compile --costs` prints its
prediction beside the measurement, `attdarts derive` finds the best genotype under caps, and
the budget method (`attdarts.networks.budget`) weights its entries by the mixture weights.
This module (the table, pricing, the file) is torch-free; `attdarts.networks.cost_meter`
measures a table.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from attdarts.files import atomic_write_text
from attdarts.language import ir
from attdarts.language.errors import DslError
from attdarts.language.printer import format_call, format_space

__all__ = [
    "COUNTS", "MEASURES", "CellCosts", "CostError", "CostTable", "EdgeCosts", "KindCosts",
    "LatencySettings", "edge_positions", "read_cost_table", "table_json", "table_rows",
    "write_cost_table",
]

FORMAT = "attdarts-cost-table"
VERSION = 1
COUNTS = ("multiply_adds", "parameters")  # exact
LATENCY = "latency_ms"
SPREAD = "latency_spread_ms"  # interquartile range of the repeats, beside each latency
MEASURES = (*COUNTS, LATENCY)
CLOCKS = ("wall", "cpu")
AUXILIARY = "parameters_auxiliary_head"
SKIP = ir.Call(name="skip_connect")
IDENTITY = ir.Call(name="identity")
ASSUMES = (
    "every cell has the space's intermediate nodes, all concatenated into its output (as "
    "derivation writes them); operations and attentions are candidates of the space; multiply-"
    "adds of one image in eval mode (torch.utils.flop_counter, as `attdarts compile`), "
    "parameters without the auxiliary head (the head's are in fixed.parameters_auxiliary_head); "
    "latency: each module alone on the device, median of the repeats, the fixed part holding the "
    "stem, preprocessing, concatenation, keep - 1 additions per node and the classifier")


class CostError(Exception):
    """A genotype the table cannot price, or a table file that cannot be used (one line)."""


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured: on `device`, a batch of `batch_size`, `warmup` untimed runs then
    the median of `repeats` timed ones; on the CPU with `threads` intra-op threads (1 by default:
    a deployment on one core, and the least noise on a shared machine). `clock` "wall" times
    what a user waits; "cpu" the thread's CPU time (CPU only), which leaves out the time other
    processes held the core: the fairer one on a loaded machine, equal on an idle one."""

    device: str = "cpu"
    batch_size: int = 1
    threads: int = 1
    warmup: int = 10
    repeats: int = 30
    clock: str = "wall"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.threads < 1 or self.warmup < 0 or self.repeats < 1:
            raise ValueError("latency needs a batch size, threads and repeats of at least 1 "
                             "and no negative warm-up")
        if self.clock not in CLOCKS:
            raise ValueError(f"unknown clock {self.clock!r}; expected one of {', '.join(CLOCKS)}")
        if self.clock == "cpu" and (self.threads != 1 or not self.device.startswith("cpu")):
            raise ValueError("the cpu clock times one thread on the CPU; use the wall clock "
                             "for several threads or a GPU")


@dataclass(frozen=True)
class EdgeCosts:
    """One edge position of one cell of the stack: node `node` reading `input`; per measure one
    value per operation row and one per attention row of the table."""

    node: int
    input: str
    stride: int
    spatial_in: int
    operations: Mapping[str, tuple[float, ...]]
    attentions: Mapping[str, tuple[float, ...]]

    @property
    def name(self) -> str:
        return f"n{self.node}<-{self.input}"


@dataclass(frozen=True)
class CellCosts:
    """Cell `index` of the stack: its edges in DARTS order (`edge_positions`), the output
    attention per attention row where the location has one, and the latency of one addition of
    two node tensors (what a node with one more edge costs beyond its edge)."""

    index: int
    kind: str
    channels: int
    spatial_in: int
    spatial_out: int
    edges: tuple[EdgeCosts, ...]
    output: Mapping[str, tuple[float, ...]] | None = None
    addition_ms: float | None = None


@dataclass(frozen=True)
class KindCosts:
    """One cell type's entries summed over the cells of the stack of that type: what choosing
    a candidate in the genotype's normal (or reduce) cell costs in the whole network."""

    operations: list[list[float]]  # edges x operation rows
    attentions: list[list[float]]  # edges x attention rows
    output: list[float] | None  # attention rows


@dataclass(frozen=True)
class CostTable:
    """The cost table of a space at one final size (module docstring)."""

    space: ir.Space
    dataset: str
    channels: int
    layers: int
    input_size: int
    num_classes: int
    operations: tuple[ir.Call, ...]
    attentions: tuple[ir.Call, ...]
    measures: tuple[str, ...]
    fixed: Mapping[str, float]
    cells: tuple[CellCosts, ...]
    fixed_parts: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    latency: LatencySettings | None = None
    environment: Mapping[str, str] = field(default_factory=dict)

    # -- what the table prices --------------------------------------------------------------

    def describe(self) -> str:
        """`space att_darts, cifar10, C=36, L=20` (and the latency device)."""
        text = f"space {self.space.name}, {self.dataset}, C={self.channels}, L={self.layers}"
        if self.latency is not None:
            settings = self.latency
            text += (f", latency on {self.environment.get('device_name', settings.device)} "
                     f"(batch {settings.batch_size}, {settings.threads} thread"
                     f"{'' if settings.threads == 1 else 's'}, {settings.clock} clock)")
        return text

    def problems(self, genotype: ir.Genotype) -> list[str]:
        """Why the table cannot price `genotype` (module docstring), one line each."""
        problems = []
        location = self.space.location_spec
        for kind in ir.CELL_KINDS:
            cell = genotype.cell(kind)
            if len(cell.nodes) != self.space.nodes:
                problems.append(
                    f"the {kind} cell has {len(cell.nodes)} nodes; the table prices cells of "
                    f"{self.space.nodes} (space '{self.space.name}')")
                continue
            if set(cell.output.nodes) != set(cell.node_names):
                kept = ", ".join(cell.output.nodes)
                problems.append(
                    f"the {kind} cell concatenates {kept} only; the table assumes every node "
                    "is concatenated (as derivation writes cells), which sets the next cells' "
                    "preprocessing")
            for node in cell.nodes:
                for edge in node.edges:
                    where = f"{kind} {node.name}<-{edge.input}"
                    if edge.operation not in self.operations:
                        problems.append(f"operation '{format_call(edge.operation)}' ({where}) is "
                                        f"not a candidate of space '{self.space.name}'")
                    if edge.attention is not None and edge.attention not in self.attentions:
                        problems.append(f"attention '{format_call(edge.attention)}' ({where}) is "
                                        f"not a candidate of space '{self.space.name}'")
            attention = cell.output.attention
            if attention is not None and not location.output_attention:
                problems.append(
                    f"the {kind} cell has an output attention; location '{location.name}' of "
                    f"space '{self.space.name}' has none")
            elif attention is not None and attention not in self.attentions:
                problems.append(f"output attention '{format_call(attention)}' ({kind}) is not a "
                                f"candidate of space '{self.space.name}'")
        return problems

    def check(self, genotype: ir.Genotype) -> None:
        """CostError naming every reason the table cannot price `genotype`."""
        problems = self.problems(genotype)
        if problems:
            raise CostError(f"cannot price genotype '{genotype.name}' with the table of "
                            f"{self.describe()}: " + "; ".join(problems))

    def price(self, genotype: ir.Genotype) -> dict[str, float]:
        """The genotype's total per measure of the table (multiply-adds and parameters as ints,
        exact), plus `parameters_with_auxiliary`. CostError if it cannot be priced."""
        self.check(genotype)
        choices = {kind: self._choices(genotype.cell(kind)) for kind in ir.CELL_KINDS}
        totals: dict[str, float] = {measure: self.fixed[measure] for measure in self.measures}
        for costs in self.cells:
            edges, output, extra_edges = choices[costs.kind]
            for measure in self.measures:
                total = totals[measure]
                for position, operation, attention in edges:
                    entry = costs.edges[position]
                    total += entry.operations[measure][operation]
                    if attention is not None:
                        total += entry.attentions[measure][attention]
                if output is not None:
                    assert costs.output is not None
                    total += costs.output[measure][output]
                if measure == LATENCY:  # the fixed part holds keep - 1 additions per node
                    total += extra_edges * (costs.addition_ms or 0.0)
                totals[measure] = total
        if "parameters" in totals:
            totals["parameters_with_auxiliary"] = totals["parameters"] + self.fixed[AUXILIARY]
        return totals

    @functools.cached_property
    def _rows(self) -> tuple[dict[ir.Call, int], dict[ir.Call, int]]:
        return ({call: row for row, call in enumerate(self.operations)},
                {call: row for row, call in enumerate(self.attentions)})

    def _choices(self, cell: ir.Cell) -> tuple[list[tuple[int, int, int | None]], int | None, int]:
        """A cell's edges as (position, operation row, attention row or None), its output
        attention row, and how many edges it has beyond `keep` per node."""
        starts = _node_starts(self.space.nodes)
        operation_rows, attention_rows = self._rows
        edges = [(starts[position] + cell.index_of(edge.input), operation_rows[edge.operation],
                  None if edge.attention is None else attention_rows[edge.attention])
                 for position, node in enumerate(cell.nodes) for edge in node.edges]
        attention = cell.output.attention
        output = None if attention is None else attention_rows[attention]
        return edges, output, len(edges) - self.space.keep * self.space.nodes

    def kind_costs(self, measure: str) -> dict[str, KindCosts]:
        """Per cell type, each entry summed over the stack's cells of that type."""
        if measure not in self.measures:
            raise CostError(f"the table of {self.describe()} has no {measure} "
                            f"(it has {', '.join(self.measures)})")
        edges = len(edge_positions(self.space.nodes))
        result = {}
        for kind in ir.CELL_KINDS:
            cells = [cell for cell in self.cells if cell.kind == kind]
            operations = [[0.0] * len(self.operations) for _ in range(edges)]
            attentions = [[0.0] * len(self.attentions) for _ in range(edges)]
            output = [0.0] * len(self.attentions) if self.space.location_spec.output_attention \
                else None
            for cell in cells:
                for position, entry in enumerate(cell.edges):
                    for row, value in enumerate(entry.operations[measure]):
                        operations[position][row] += value
                    for row, value in enumerate(entry.attentions[measure]):
                        attentions[position][row] += value
                if output is not None and cell.output is not None:
                    for row, value in enumerate(cell.output[measure]):
                        output[row] += value
            result[kind] = KindCosts(operations, attentions, output)
        return result

    def matches(self, space: ir.Space, *, dataset: str | None = None,
                channels: int | None = None, layers: int | None = None) -> str | None:
        """Why this table does not price `space` (at that size, where given), or None. A space
        matches when its candidates, nodes, keep and location are the table's (its name and
        search methods do not change what a genotype costs)."""
        mine = (self.operations, self.attentions, self.space.nodes, self.space.keep,
                self.space.location)
        theirs = (*table_rows(space), space.nodes, space.keep, space.location)
        if mine != theirs:
            return (f"the table prices the genotypes of space '{self.space.name}' (its "
                    f"candidates, nodes, keep and location), which differ from those of space "
                    f"'{space.name}'")
        wanted = (dataset or self.dataset, channels or self.channels, layers or self.layers)
        if wanted != (self.dataset, self.channels, self.layers):
            return (f"the table is for {self.dataset}, C={self.channels}, L={self.layers}, "
                    f"not {wanted[0]}, C={wanted[1]}, L={wanted[2]}")
        return None


def edge_positions(nodes: int) -> list[tuple[int, str]]:
    """(node, input) of every edge position of a cell, in DARTS order (as the supernet's alpha
    rows): node j reads c_k2, c_k1, n0 .. n{j-1}."""
    return [(node, source) for node in range(nodes)
            for source in (*ir.INPUTS, *(f"n{i}" for i in range(node)))]


def _node_starts(nodes: int) -> list[int]:
    return [sum(2 + k for k in range(node)) for node in range(nodes)]


def table_rows(space: ir.Space) -> tuple[tuple[ir.Call, ...], tuple[ir.Call, ...]]:
    """The operation and attention rows of a table of `space`: its candidates, and skip_connect
    where attentions share the operations' softmax (they derive to skip_connect(x) >> a)."""
    operations = tuple(space.operations)
    if space.location_spec.mixes_operations_and_attentions and SKIP not in operations:
        operations += (SKIP,)
    return operations, tuple(space.attentions)


# ---------------------------------------------------------------------------------------------
# The file


def table_json(table: CostTable) -> dict:
    """The table as the JSON file holds it."""
    def entries(values: Mapping[str, tuple[float, ...]]) -> dict[str, list[float]]:
        return {key: list(row) for key, row in values.items()}

    return {
        "format": FORMAT,
        "version": VERSION,
        "space": table.space.name,
        "dataset": table.dataset,
        "channels": table.channels,
        "layers": table.layers,
        "input_size": table.input_size,
        "num_classes": table.num_classes,
        "measures": list(table.measures),
        "latency": None if table.latency is None else {
            "device": table.latency.device, "batch_size": table.latency.batch_size,
            "threads": table.latency.threads, "warmup": table.latency.warmup,
            "repeats": table.latency.repeats, "clock": table.latency.clock,
            "statistic": "median",
            "spread": "interquartile range"},
        **dict(table.environment),
        "assumes": ASSUMES,
        "space_text": format_space(table.space),
        "operations": [format_call(call) for call in table.operations],
        "attentions": [format_call(call) for call in table.attentions],
        "fixed": {**table.fixed, "parts": {part: dict(values)
                                           for part, values in table.fixed_parts.items()}},
        "cells": [{
            "index": cell.index, "type": cell.kind, "channels": cell.channels,
            "spatial_in": cell.spatial_in, "spatial_out": cell.spatial_out,
            **({} if cell.addition_ms is None else {"addition_ms": cell.addition_ms}),
            "edges": [{"edge": edge.name, "stride": edge.stride, "spatial_in": edge.spatial_in,
                       "operations": entries(edge.operations),
                       "attentions": entries(edge.attentions)} for edge in cell.edges],
            **({} if cell.output is None else {"output": entries(cell.output)}),
        } for cell in table.cells],
    }


def _dump(value: object, depth: int = 0) -> str:
    """JSON with lists of numbers on one line, everything else indented (a readable table)."""
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(key)}: {_dump(item, depth + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and any(isinstance(item, (dict, list)) for item in value):
        return "[\n" + ",\n".join(inner + _dump(item, depth + 1) for item in value) + "\n" + pad + "]"
    return json.dumps(value)


def write_cost_table(table: CostTable, path: str | Path) -> None:
    """Write `table` as JSON, atomically."""
    atomic_write_text(path, _dump(table_json(table)) + "\n")


def read_cost_table(path: str | Path) -> CostTable:
    """A table written by `write_cost_table`; CostError (one line, naming the file) otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CostError(f"{path}: cannot read the cost table ({error.strerror or error})") from None
    except ValueError as error:
        raise CostError(f"{path}: not a JSON cost table ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CostError(f"{path}: not an attdarts cost table (write one with `attdarts cost`)")
    if data.get("version") != VERSION:
        raise CostError(f"{path}: cost table version {data.get('version')!r}; this attdarts "
                        f"reads version {VERSION} (build the table again)")
    try:
        return _table_from_json(data)
    except DslError as error:
        raise CostError(f"{path}: the table's space does not parse "
                        f"({str(error).splitlines()[0]})") from None
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise CostError(f"{path}: damaged cost table ({type(error).__name__}: {error})") from None


def _table_from_json(data: dict) -> CostTable:
    from attdarts.language.transform import parse_text

    space = parse_text(data["space_text"], "<cost table>").space()
    operations, attentions = table_rows(space)
    if [format_call(call) for call in operations] != data["operations"] or \
            [format_call(call) for call in attentions] != data["attentions"]:
        raise ValueError("its rows do not match its space")
    measures = tuple(data["measures"])
    if not set(COUNTS) <= set(measures) or not set(measures) <= set(MEASURES):
        raise ValueError(f"unknown measures {measures}")
    positions = edge_positions(space.nodes)

    def entries(values: dict, rows: int) -> dict[str, tuple[float, ...]]:
        result = {key: tuple(values[key]) for key in values}
        if any(len(row) != rows for row in result.values()) or not set(measures) <= set(result):
            raise ValueError("an entry has the wrong number of values")
        return result

    cells = []
    for item in data["cells"]:
        edges = tuple(EdgeCosts(node=node, input=source, stride=int(edge["stride"]),
                                spatial_in=int(edge["spatial_in"]),
                                operations=entries(edge["operations"], len(operations)),
                                attentions=entries(edge["attentions"], len(attentions)))
                      for (node, source), edge in zip(positions, item["edges"], strict=True))
        output = item.get("output")
        cells.append(CellCosts(
            index=int(item["index"]), kind=item["type"], channels=int(item["channels"]),
            spatial_in=int(item["spatial_in"]), spatial_out=int(item["spatial_out"]),
            edges=edges, output=None if output is None else entries(output, len(attentions)),
            addition_ms=item.get("addition_ms")))
    if len(cells) != data["layers"] or (LATENCY in measures and data["latency"] is None):
        raise ValueError("cells or latency settings missing")
    if space.location_spec.output_attention and any(cell.output is None for cell in cells):
        raise ValueError("output attention entries missing")
    settings = data["latency"]
    latency = None if settings is None else LatencySettings(
        device=settings["device"], batch_size=settings["batch_size"],
        threads=settings["threads"], warmup=settings["warmup"], repeats=settings["repeats"],
        clock=settings.get("clock", "wall"))
    environment = {key: str(data[key]) for key in ("attdarts", "torch", "created", "device_name")
                   if key in data}
    fixed = {key: value for key, value in data["fixed"].items()
             if isinstance(value, (int, float)) and math.isfinite(value)}
    parts = {part: dict(values) for part, values in data["fixed"].get("parts", {}).items()}
    if not set(measures) | {AUXILIARY} <= set(fixed):
        raise ValueError("the fixed part misses a measure")
    return CostTable(space=space, dataset=data["dataset"], channels=int(data["channels"]),
                     layers=int(data["layers"]), input_size=int(data["input_size"]),
                     num_classes=int(data["num_classes"]), operations=operations,
                     attentions=attentions, measures=measures, fixed=fixed, fixed_parts=parts,
                     cells=tuple(cells), latency=latency, environment=environment)
