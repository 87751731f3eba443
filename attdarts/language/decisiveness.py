"""How decided a search is: per derived edge, the lead of the kept candidate over the runner-up.

A search ends with softmax weights per edge, and derivation keeps the strongest candidate of
each mixture (paper, Sec. III-A, Eq. 14). When the kept operation beats the next one by 0.0002,
the genotype is a coin toss: another seed, another epoch or another GPU keeps something else.
This module measures that from the weights as derivation reads them and the genotype it derived:

- **operation margin** of a kept edge: the weight of its operation minus the strongest other
  operation derivation could have kept there (`none` is never eligible). At the mixed locations
  the operation and attention columns of one softmax compete, as derivation lets them.
- **attention margin**: the same for its attention (`identity` is a candidate; no attention in
  the genotype means `identity` was kept), where the edge has an attention mixture (beta).
- **input margin**: the edge's ranking weight (its best eligible operation weight, times its
  normalised edge weight under edge normalisation) minus the strongest incoming edge its node
  dropped (Eq. 14); None when the node kept all its incoming edges.
- **margin** of an edge: the smallest of those it has. An edge is *decided* when its margin is at
  least `DECIDED_BY` (0.05). A negative margin means the genotype does not keep the strongest
  candidate: a cap (`max_skip_connect`, `max_identity`) or a search method overrode the weights,
  or the genotype is not the one derived from these weights.
- **entropy** of a mixture: the Shannon entropy of its softmax row (all candidates, `none`
  included) divided by log(number of candidates): 1 for a uniform mixture (nothing learnt), 0 for
  one-hot.
- the cell output's attention (gamma, locations `end` and `after_every_and_end`) gets a margin
  and entropy too, reported beside the edges but not counted among them.

Inputs are the genotype derived at an epoch and that epoch's softmaxed weights, as a run's
`weights.jsonl` records them (`{"alpha": rows, "beta": rows, "gamma": [row], "edges": [row]}` per
cell kind), so `attdarts report` recomputes all of it for any run directory, old ones included.
The search loop records the same numbers per epoch in `metrics.jsonl` (`metrics_record`);
`tools/search_runs.py` recomputes them from a run directory's files.

Torch-free and free of the later stages: imports the IR only, so the search loop (`runs`) and
the reports (`tools`) share it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from attdarts.language import ir

DECIDED_BY = 0.05  # an edge is decided when every choice on it leads by at least this much
SKIP_CONNECT = "skip_connect"
IDENTITY = "identity"
EDGE_WEIGHTS = "edges"  # the cell kind's key of the normalised edge weights (edge normalisation)
OUTPUT = ir.OUTPUT  # the cell output's entry among a cell's margins
DIGITS = 6  # significant digits of the numbers written to metrics.jsonl (weights are float32)

Rows = Sequence[Sequence[float]]
CellWeights = Mapping[str, Rows]  # "alpha" / "beta" / "gamma" / "edges" -> softmaxed rows


class DecisivenessError(ValueError):
    """The weights or the genotype do not fit the space (one line)."""


@dataclass(frozen=True)
class Choice:
    """One choice derivation made from one softmax row: the kept candidate and the runner-up
    (the strongest other eligible candidate; None, weight 0, when there is none)."""

    kept: str
    weight: float
    runner_up: str | None
    runner_up_weight: float
    entropy: float  # normalised to [0, 1] (1 = uniform)

    @property
    def margin(self) -> float:
        return self.weight - self.runner_up_weight


@dataclass(frozen=True)
class EdgeDecision:
    """How decided one kept edge of a derived cell is."""

    cell: str
    node: str
    input: str
    operation: Choice
    attention: Choice | None
    input_margin: float | None

    @property
    def edge(self) -> str:
        """The edge's name as weights.jsonl labels it: "n0<-c_k1"."""
        return f"{self.node}<-{self.input}"

    @property
    def margin(self) -> float:
        """The smallest of its operation, attention and input margins."""
        margins = [self.operation.margin]
        if self.attention is not None:
            margins.append(self.attention.margin)
        if self.input_margin is not None:
            margins.append(self.input_margin)
        return min(margins)


@dataclass(frozen=True)
class Decisiveness:
    """A derived genotype's decisiveness at one epoch."""

    edges: tuple[EdgeDecision, ...]
    outputs: Mapping[str, Choice]  # cell kind -> its output attention's choice (gamma), if any
    threshold: float
    skip_connect: int  # skip_connect edges of the derived normal cell
    identity: int | None  # edges of the normal cell without attention (None: no edge attention)

    @property
    def decided(self) -> int:
        return sum(edge.margin >= self.threshold for edge in self.edges)

    @property
    def weakest(self) -> EdgeDecision | None:
        """The edge with the smallest margin (the first in cell, node, input order on ties)."""
        return min(self.edges, key=lambda edge: edge.margin, default=None)

    @property
    def operation_entropy(self) -> float | None:
        """Mean entropy of the kept edges' operation mixtures."""
        values = [edge.operation.entropy for edge in self.edges]
        return sum(values) / len(values) if values else None

    @property
    def attention_entropy(self) -> float | None:
        """Mean entropy of the kept edges' attention mixtures (None without any)."""
        values = [edge.attention.entropy for edge in self.edges if edge.attention is not None]
        return sum(values) / len(values) if values else None

    def summary(self) -> str:
        """One line: "9 of 16 edges decided by at least 0.05 (smallest margin 0.0002: ...)"."""
        line = (f"{self.decided} of {len(self.edges)} edges decided by at least "
                f"{self.threshold:g}")
        weakest = self.weakest
        if weakest is not None:
            margin = weakest.margin
            shown = f"{margin:.4f}" if margin == 0 or abs(margin) >= 1e-4 else f"{margin:.1e}"
            line += f" (smallest margin {shown}: {weakest.cell} {weakest.edge})"
        return line


# ---------------------------------------------------------------------------------------------
# computing


def edge_names(nodes: int) -> list[str]:
    """The supernet's edge order (DARTS): node j reads c_k2, c_k1, n0 .. n{j-1}."""
    return [f"n{node}<-{source}" for node in range(nodes)
            for source in (*ir.INPUTS, *(f"n{i}" for i in range(node)))]


def entropy(row: Sequence[float]) -> float:
    """Shannon entropy of a softmax row over log(len(row)): 1 uniform, 0 one-hot (0 log 0 = 0)."""
    if len(row) < 2:
        return 0.0
    total = sum(row)
    if total <= 0:
        return 0.0
    value = -sum(p / total * math.log(p / total) for p in row if p > 0)
    return max(0.0, value / math.log(len(row)))


def choice(row: Sequence[float], eligible: Sequence[int], kept: int,
           labels: Sequence[str]) -> Choice:
    """The choice of column `kept` among the `eligible` columns of a softmax `row`."""
    others = [index for index in eligible if index != kept]
    runner_up = max(others, key=lambda index: row[index], default=None)
    return Choice(kept=labels[kept], weight=float(row[kept]),
                  runner_up=None if runner_up is None else labels[runner_up],
                  runner_up_weight=0.0 if runner_up is None else float(row[runner_up]),
                  entropy=entropy(row))


def decide(space: ir.Space, genotype: ir.Genotype, weights: Mapping[str, CellWeights], *,
           threshold: float = DECIDED_BY) -> Decisiveness:
    """The decisiveness of `genotype` against the softmaxed `weights` of `space`.

    `weights[cell]` holds the rows of one cell kind as weights.jsonl writes them. Raises
    `DecisivenessError` when the genotype or the weights do not fit the space.
    """
    edges: list[EdgeDecision] = []
    outputs: dict[str, Choice] = {}
    for kind in ir.CELL_KINDS:
        if kind not in weights:
            raise DecisivenessError(f"the weights have no {kind} cell")
        cell_edges, output = _cell(space, genotype.cell(kind), weights[kind])
        edges.extend(cell_edges)
        if output is not None:
            outputs[kind] = output
    normal = genotype.normal
    skips = sum(edge.operation.name == SKIP_CONNECT for node in normal.nodes for edge in node.edges)
    identity = None
    if _has_edge_attention(space):
        identity = sum(edge.attention is None for node in normal.nodes for edge in node.edges)
    return Decisiveness(tuple(edges), outputs, threshold, skips, identity)


def _has_edge_attention(space: ir.Space) -> bool:
    location = space.location_spec
    return bool(space.attentions) and (location.then is not None
                                       or location.mixes_operations_and_attentions)


def _labels(space: ir.Space) -> list[str]:
    return [call.name for call in space.operations] + [call.name for call in space.attentions]


def _index(calls: tuple[ir.Call, ...], call: ir.Call, what: str, where: str) -> int:
    try:
        return calls.index(call)
    except ValueError:
        raise DecisivenessError(
            f"{where} uses {what} '{call.name}', which the space does not list") from None


def _attention_index(space: ir.Space, call: ir.Call | None, where: str) -> int:
    """The kept attention's index; no attention means `identity` was kept."""
    if call is None:
        names = [attention.name for attention in space.attentions]
        if IDENTITY not in names:
            raise DecisivenessError(f"{where} has no attention, and the space has no 'identity'")
        return names.index(IDENTITY)
    return _index(space.attentions, call, "the attention", where)


def _operation_choice(space: ir.Space, row: Sequence[float], edge: ir.Edge | None,
                      where: str) -> tuple[list[int], int | None]:
    """(eligible columns, kept column) of an edge's first mixture (None edge: nothing kept)."""
    count = len(space.operations)
    eligible = [i for i, call in enumerate(space.operations) if call.name != "none"]
    location = space.location_spec
    single = location.mixes_operations_and_attentions and location.then is None
    if single:  # mixed_with_operation: an attention winner is skip_connect(x) >> attention
        eligible += [count + i for i in range(len(space.attentions))]
    if edge is None:
        return eligible, None
    if single and edge.attention is not None:
        return eligible, count + _attention_index(space, edge.attention, where)
    kept = _index(space.operations, edge.operation, "the operation", where)
    names = [call.name for call in space.attentions]
    if single and edge.operation.name == SKIP_CONNECT and IDENTITY in names:
        # `skip_connect(x)` is the skip_connect column or the identity column (derivation
        # writes `skip_connect(x) >> identity` without its attention): the stronger one won
        identity = count + names.index(IDENTITY)
        kept = identity if row[identity] > row[kept] else kept
    return eligible, kept


def _attention_choice(space: ir.Space, row: Sequence[float], edge: ir.Edge,
                      where: str) -> Choice:
    location = space.location_spec
    offset = len(space.operations) if location.then == "operations+attentions" else 0
    labels = _labels(space) if offset else [call.name for call in space.attentions]
    eligible = [offset + i for i in range(len(space.attentions))]
    kept = offset + _attention_index(space, edge.attention, where)
    _check_width(row, len(labels), "beta", where)
    return choice(row, eligible, kept, labels)


def _check_width(row: Sequence[float], width: int, kind: str, where: str) -> None:
    if len(row) != width:
        raise DecisivenessError(
            f"{where}: the weights have {len(row)} columns of {kind}, the space has {width}")


def _cell(space: ir.Space, cell: ir.Cell, weights: CellWeights
          ) -> tuple[list[EdgeDecision], Choice | None]:
    kind = cell.kind
    positions = _positions(cell, space.nodes)
    if positions is None:
        raise DecisivenessError(
            f"the {kind} cell has {len(cell.nodes)} nodes, the space '{space.name}' has "
            f"{space.nodes}")
    names = edge_names(space.nodes)
    alpha = _rows(weights, "alpha", len(names), kind)
    location = space.location_spec
    beta = _rows(weights, "beta", len(names), kind) if location.then is not None else None
    scales = [1.0] * len(names)
    if EDGE_WEIGHTS in weights and weights[EDGE_WEIGHTS]:
        scales = [float(value) for value in _flat(weights[EDGE_WEIGHTS])]
        if len(scales) != len(names):
            raise DecisivenessError(f"the {kind} cell has {len(scales)} edge weights, the space "
                                    f"{len(names)} edges")
    width = len(space.location_spec.columns(space)["alpha"])
    labels = _labels(space)
    rankings = _rankings(space, alpha, scales)
    # node names of the genotype -> the supernet's n0, n1, ...
    supernet_name = {node.name: f"n{position}" for node, position in zip(cell.nodes, positions)}
    supernet_name.update({name: name for name in ir.INPUTS})
    decisions: list[EdgeDecision] = []
    for node, position in zip(cell.nodes, positions):
        incoming = [index for index, name in enumerate(names)
                    if name.startswith(f"n{position}<-")]
        ranking = {index: rankings[index] for index in incoming}
        kept_edges = []
        for edge in node.edges:
            name = f"n{position}<-{supernet_name[edge.input]}"
            where = f"the {kind} cell's edge {node.name} <- {edge.input}"
            if name not in names:
                raise DecisivenessError(f"{where} is not an edge of the space")
            kept_edges.append((names.index(name), edge, where))
        dropped = [ranking[index] for index in incoming
                   if index not in {kept for kept, _, _ in kept_edges}]
        for index, edge, where in kept_edges:
            _check_width(alpha[index], width, "alpha", where)
            eligible, kept = _operation_choice(space, alpha[index], edge, where)
            operation = choice(alpha[index], eligible, kept, labels)
            attention = None
            if beta is not None:
                attention = _attention_choice(space, beta[index], edge, where)
            input_margin = ranking[index] - max(dropped) if dropped else None
            decisions.append(EdgeDecision(kind, node.name, edge.input, operation, attention,
                                          input_margin))
    output = None
    if location.output_attention and "gamma" in weights:
        row = _flat(weights["gamma"])
        where = f"the {kind} cell's output"
        attentions = [call.name for call in space.attentions]
        _check_width(row, len(attentions), "gamma", where)
        output = choice(row, list(range(len(attentions))),
                        _attention_index(space, cell.output.attention, where), attentions)
    return decisions, output


def _positions(cell: ir.Cell, nodes: int) -> list[int] | None:
    """The supernet node of each of the cell's nodes: by position when the cell has the space's
    number of nodes; by name (n0, n2, n3) when a derivation left nodes out (FairDARTS's
    threshold); None when neither fits."""
    if len(cell.nodes) == nodes:
        return list(range(nodes))
    allowed = {f"n{position}": position for position in range(nodes)}
    if len(cell.nodes) < nodes and all(node.name in allowed for node in cell.nodes):
        return [allowed[node.name] for node in cell.nodes]
    return None


def _rankings(space: ir.Space, alpha: list[list[float]], scales: list[float]) -> list[float]:
    """Per edge the weight Eq. 14 ranks it by: its best eligible operation weight, times its
    normalised edge weight under edge normalisation."""
    if len(scales) != len(alpha):
        raise DecisivenessError(f"the weights have {len(scales)} edge weights for "
                                f"{len(alpha)} edges")
    width = len(space.location_spec.columns(space)["alpha"])
    result = []
    for name, row, scale in zip(edge_names(space.nodes), alpha, scales):
        _check_width(row, width, "alpha", f"edge {name}")  # another space's weights
        eligible, _ = _operation_choice(space, row, None, "")
        result.append(max(row[column] for column in eligible) * scale)
    return result


def ranking_weights(space: ir.Space, weights: CellWeights) -> list[float]:
    """One cell's ranking weight of every supernet edge, in `edge_names` order."""
    names = edge_names(space.nodes)
    alpha = _rows(weights, "alpha", len(names), "")
    scales = [1.0] * len(names)
    if EDGE_WEIGHTS in weights and weights[EDGE_WEIGHTS]:
        scales = [float(value) for value in _flat(weights[EDGE_WEIGHTS])]
    return _rankings(space, alpha, scales)


def _rows(weights: CellWeights, key: str, count: int, kind: str) -> list[list[float]]:
    rows = weights.get(key)
    if rows is None:
        raise DecisivenessError(f"the weights of the {kind} cell have no {key}")
    rows = [[float(value) for value in row] for row in rows]
    if len(rows) != count:
        raise DecisivenessError(
            f"the weights of the {kind} cell have {len(rows)} rows of {key}, the space has "
            f"{count} edges")
    return rows


def _flat(rows) -> list[float]:
    """A vector written as one row ([[...]]) or as a list ([...])."""
    if rows and isinstance(rows[0], (list, tuple)):
        return [float(value) for value in rows[0]]
    return [float(value) for value in rows]


# ---------------------------------------------------------------------------------------------
# over epochs


def same_cells(a: ir.Genotype, b: ir.Genotype) -> bool:
    """Whether two genotypes have the same cells as `attdarts diff` compares them: nodes by
    name, a node's edges in any order, the output's concatenation in order; names, metadata,
    comments and layout do not count."""
    def canonical(genotype: ir.Genotype) -> tuple:
        return tuple((tuple((node.name, frozenset(Counter(node.edges).items()))
                            for node in cell.nodes), cell.output)
                     for cell in (genotype.normal, genotype.reduce))

    return canonical(a) == canonical(b)


def last_change(genotypes: Sequence[ir.Genotype]) -> int | None:
    """The 1-based position of the last genotype whose cells differ from the one before it (1
    when they never changed; None for none). Positions are epochs when one genotype is given
    per epoch from epoch 1."""
    if not genotypes:
        return None
    changed = 1
    for position in range(1, len(genotypes)):
        if not same_cells(genotypes[position - 1], genotypes[position]):
            changed = position + 1
    return changed


def metrics_record(decisiveness: Decisiveness, changed_epoch: int | None) -> dict:
    """The keys a search adds to an epoch's metrics.jsonl record (README "Reading a search")."""
    record: dict = {
        "decided_edges": decisiveness.decided,
        "derived_edges": len(decisiveness.edges),
        "decided_by": decisiveness.threshold,
        "min_margin": _round(decisiveness.weakest.margin) if decisiveness.edges else None,
        "operation_entropy": _round(decisiveness.operation_entropy),
    }
    if decisiveness.attention_entropy is not None:
        record["attention_entropy"] = _round(decisiveness.attention_entropy)
    record["normal_skip_connect"] = decisiveness.skip_connect
    if decisiveness.identity is not None:
        record["normal_identity"] = decisiveness.identity
    record["genotype_changed_epoch"] = changed_epoch
    record["margins"] = margins_record(decisiveness)
    return record


def margins_record(decisiveness: Decisiveness) -> dict:
    """Per cell, per kept edge ("n0<-c_k1") its margins and entropies; the output as "c_k"."""
    cells: dict[str, dict] = {kind: {} for kind in ir.CELL_KINDS}
    for edge in decisiveness.edges:
        entry = {"operation": _round(edge.operation.margin)}
        if edge.attention is not None:
            entry["attention"] = _round(edge.attention.margin)
        entry["input"] = _round(edge.input_margin)
        entry["operation_entropy"] = _round(edge.operation.entropy)
        if edge.attention is not None:
            entry["attention_entropy"] = _round(edge.attention.entropy)
        cells[edge.cell][edge.edge] = entry
    for kind, output in decisiveness.outputs.items():
        cells[kind][OUTPUT] = {"attention": _round(output.margin),
                               "attention_entropy": _round(output.entropy)}
    return cells


def margin_scalars(metrics: Mapping[str, object]) -> Iterable[tuple[str, float]]:
    """(TensorBoard tag, value) for each kept edge's margin in a metrics record: the smallest of
    its margins under "margin/normal/n0<-c_k1" (tags follow the edges kept at that epoch)."""
    margins = metrics.get("margins")
    if not isinstance(margins, Mapping):
        return
    for kind in ir.CELL_KINDS:
        for edge, entry in (margins.get(kind) or {}).items():
            values = [entry.get(key) for key in ("operation", "attention", "input")]
            values = [value for value in values if isinstance(value, (int, float))]
            if values:
                yield f"margin/{kind}/{edge}", float(min(values))


def log_line(decisiveness: Decisiveness, changed_epoch: int | None) -> str:
    """The search log's line: the summary, the normal cell's skips and identities, the change."""
    counts = f"{decisiveness.skip_connect} skip_connect"
    if decisiveness.identity is not None:
        counts += f", {decisiveness.identity} without attention"
    line = f"{decisiveness.summary()}; normal cell: {counts}"
    if changed_epoch is not None:
        line += f"; genotype last changed at epoch {changed_epoch}"
    return line


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{float(value):.{DIGITS}g}")
