"""Budgeted derivation: the best genotype of a search whose real cost is within caps
(`attdarts derive`).

The score. Derivation (`attdarts.networks.derive`, paper Sec. III-A) makes independent
decisions: per edge the strongest operation other than `none` (weight s_o, times the edge's
normalised weight under edge normalisation) and the strongest attention (t_a), per node the
`keep` edges whose operation weight is largest (Eq. 14), per cell the strongest output
attention. The score of a genotype is therefore

    score = sum over kept edges of  s_o * scale_e                     (operation and edge)
          + sum over kept edges of  (t_a - max_a' t_a')                (attention: its regret)
          + sum over cells of       (g_a - max_a' g_a')                (output attention)

and derivation maximises it: for any set of kept edges the best operation of each is its
strongest one, the set whose strongest weights sum highest is the `keep` largest, and the
regrets are at most 0, reached by the strongest attentions. Attentions do not rank edges in
derivation, so they enter as regrets (in the same units, softmax weight) and never change which
edges a node keeps unless a cap makes the trade. Where attentions share the operations' softmax
(`mixed_with_operation`) the winner's weight is the edge's term, as derivation ranks it. So
without caps the result is derivation's genotype (ties aside), and under caps it gives up the
least weight.

The search. With the cost table's entries summed over the cells of each type
(`CostTable.kind_costs`), a genotype's cost is the fixed part plus a sum over its choices, one
group of choices per node (which `keep` edges, and each one's candidates) and per output
attention. Maximising an additive score under additive caps over such groups is a
multiple-choice knapsack; it is solved exactly by dynamic programming over the groups, keeping
after each group only the partial choices no other beats in score and every capped cost (a
Pareto front), and dropping those that cannot finish within the caps. The result is the
highest-scoring genotype within the caps over the whole space, not an approximation; the fronts
stay small because every capped cost is a sum of a few hundred distinct entries. A space's own
caps (P-DARTS's `max_skip_connect`, `max_identity`) are honoured as two more capped counts of
the normal cell (the best genotype that satisfies them, which P-DARTS's step-by-step
replacement does not always find).

Torch-free: the weights are the softmaxed rows a search writes to `weights.jsonl`
(`attdarts.runs.search.budget` reads a run), the costs a `CostTable`'s.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from attdarts.language import ir
from attdarts.language.locations import ATTENTIONS, BOTH
from attdarts.language.methods import METHODS, resolved
from attdarts.networks.costs import CostTable

__all__ = [
    "BudgetError", "Cap", "Derived", "EdgeChoice", "RunWeights", "budget_derive",
    "derivation_problem", "edge_choices", "genotype_score", "random_genotype",
]

SKIP = ir.Call(name="skip_connect")
IDENTITY = "identity"
SKIP_COUNT = "skip_connect (normal cell)"
IDENTITY_COUNT = "identity (normal cell)"


class BudgetError(Exception):
    """Anything a user must fix: a run that cannot be read, a cap no genotype meets (one line)."""


@dataclass(frozen=True)
class Cap:
    """At most `limit` of `measure` (a table measure) in the final network."""

    measure: str
    limit: float


# ---------------------------------------------------------------------------------------------
# A run's weights


@dataclass(frozen=True)
class RunWeights:
    """The softmaxed weights of one epoch: cell type -> kind (alpha, beta, gamma, edges) -> rows."""

    epoch: int
    cells: Mapping[str, Mapping[str, list[list[float]]]]


# ---------------------------------------------------------------------------------------------
# Choices and the score


@dataclass(frozen=True)
class EdgeChoice:
    """One way derivation could write an edge: operation, attention (None: none) and its score
    (module docstring)."""

    operation: ir.Call
    attention: ir.Call | None
    score: float


def _attention_call(call: ir.Call) -> ir.Call | None:
    return None if call.name == IDENTITY else call


def edge_choices(space: ir.Space, alpha: Sequence[float], beta: Sequence[float] | None,
                 scale: float = 1.0) -> list[EdgeChoice]:
    """Every candidate pair derivation could give an edge with these weights, with its score:
    per location as `Location.choose_edge` reads the mixtures."""
    location = space.location_spec
    count = len(space.operations)
    operations = [(i, call) for i, call in enumerate(space.operations) if call.name != "none"]
    if location.edge_mixture == BOTH and location.then is None:  # mixed_with_operation
        choices = [EdgeChoice(call, None, alpha[i] * scale) for i, call in operations]
        choices += [EdgeChoice(SKIP, _attention_call(call), alpha[count + i] * scale)
                    for i, call in enumerate(space.attentions)]
        return choices
    attentions: list[tuple[ir.Call | None, float]] = [(None, 0.0)]
    if location.then in (ATTENTIONS, BOTH):
        assert beta is not None
        offset = count if location.then == BOTH else 0
        weights = [beta[offset + i] for i in range(len(space.attentions))]
        best = max(weights)
        attentions = [(_attention_call(call), weight - best)
                      for call, weight in zip(space.attentions, weights)]
    return [EdgeChoice(call, attention, alpha[i] * scale + regret)
            for i, call in operations for attention, regret in attentions]


def _output_choices(space: ir.Space, gamma: Sequence[float] | None
                    ) -> list[tuple[ir.Call | None, float]]:
    if gamma is None:
        return [(None, 0.0)]
    best = max(gamma)
    return [(_attention_call(call), weight - best) for call, weight in zip(space.attentions, gamma)]


def _scales(space: ir.Space, tensors: Mapping[str, list[list[float]]]) -> list[float]:
    """Each edge's factor on its ranking weight: its normalised edge weight under PC-DARTS's
    edge normalisation, else 1."""
    edges = sum(2 + node for node in range(space.nodes))
    if "edges" in tensors:
        return list(tensors["edges"][0])
    return [1.0] * edges


def _cell_choices(space: ir.Space, tensors: Mapping[str, list[list[float]]]
                  ) -> tuple[list[list[EdgeChoice]], list[tuple[ir.Call | None, float]]]:
    scales = _scales(space, tensors)
    beta = tensors.get("beta")
    edges = [edge_choices(space, row, None if beta is None else beta[index], scales[index])
             for index, row in enumerate(tensors["alpha"])]
    gamma = tensors.get("gamma")
    return edges, _output_choices(space, None if gamma is None else gamma[0])


def genotype_score(genotype: ir.Genotype, space: ir.Space, weights: RunWeights) -> float:
    """The score (module docstring) of any genotype derivation could write from `weights`:
    its kept edges as they are, each with the best score of a choice that writes it.
    ValueError for an edge or output attention derivation could not write."""
    total = 0.0
    for kind in ir.CELL_KINDS:
        cell = genotype.cell(kind)
        edges, outputs = _cell_choices(space, weights.cells[kind])
        starts = [sum(2 + k for k in range(node)) for node in range(space.nodes)]
        for position, node in enumerate(cell.nodes):
            for edge in node.edges:
                index = starts[position] + cell.index_of(edge.input)
                scores = [choice.score for choice in edges[index]
                          if choice.operation == edge.operation
                          and choice.attention == _no_identity(edge.attention)]
                if not scores:
                    raise ValueError(f"{kind} {node.name}<-{edge.input}: derivation cannot "
                                     "write this edge")
                total += max(scores)
        scores = [score for call, score in outputs
                  if call == _no_identity(cell.output.attention)]
        if not scores:
            raise ValueError(f"{kind} output attention: derivation cannot write it")
        total += max(scores)
    return total


def _no_identity(call: ir.Call | None) -> ir.Call | None:
    return None if call is None else _attention_call(call)


# ---------------------------------------------------------------------------------------------
# The exact search


class _Partial(NamedTuple):
    """Choices made so far: total score, capped costs, and the picks as a tree of pairs whose
    leaves are (kind, node or -1 for the output, input offset or None, choice) (`_flatten`)."""

    score: float
    costs: tuple[float, ...]
    picks: Any


def _flatten(picks: Any) -> list[tuple]:
    leaves, stack = [], [picks]
    while stack:
        item = stack.pop()
        if item is None:
            continue
        if isinstance(item, _Pair):
            stack.extend((item.right, item.left))
        else:
            leaves.append(item)
    return leaves


class _Pair(NamedTuple):
    left: Any
    right: Any


def _front(candidates: list[_Partial]) -> list[_Partial]:
    """The partials no other beats: a higher-or-equal score with every cost lower or equal
    (the first of equal ones stays), highest score first."""
    ordered = sorted(candidates, key=lambda p: (-p.score, p.costs))
    if not ordered or not ordered[0].costs:
        return ordered[:1]
    kept: list[_Partial] = []
    dimensions = len(ordered[0].costs)
    if dimensions == 1:
        lowest = math.inf
        for partial in ordered:
            if partial.costs[0] < lowest:
                kept.append(partial)
                lowest = partial.costs[0]
    elif dimensions == 2:
        # a staircase of the kept costs: first cost rising, second falling; a point is beaten
        # when the kept point with the largest first cost not above its own has a second cost
        # not above its own
        firsts: list[float] = []
        seconds: list[float] = []
        for partial in ordered:
            first, second = partial.costs
            at = bisect.bisect_right(firsts, first)
            if at and seconds[at - 1] <= second:
                continue
            kept.append(partial)
            end = at
            while end < len(firsts) and seconds[end] >= second:
                end += 1
            firsts[at:end] = [first]
            seconds[at:end] = [second]
    else:
        for partial in ordered:
            if not any(all(a <= b for a, b in zip(other.costs, partial.costs)) for other in kept):
                kept.append(partial)
    return kept


def _combine(first: list[_Partial], second: list[_Partial], room: Sequence[float]
             ) -> list[_Partial]:
    """Every pair's sum that still fits `room`, reduced to its front."""
    combined = []
    for a in first:
        for b in second:
            costs = tuple(x + y for x, y in zip(a.costs, b.costs))
            if all(cost <= limit for cost, limit in zip(costs, room)):
                combined.append(_Partial(a.score + b.score, costs, _Pair(a.picks, b.picks)))
    return _front(combined)


@dataclass
class Derived:
    """What `budget_derive` found: the genotype, its score and costs (every measure of the
    table), the epoch, the caps, and the score/cost front when asked for."""

    genotype: ir.Genotype
    score: float
    costs: dict[str, float]
    epoch: int
    caps: tuple[Cap, ...]
    unconstrained_score: float
    unconstrained_costs: dict[str, float]
    front: list[tuple[float, dict[str, float], ir.Genotype]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    measured: dict[str, int] | None = None  # compiled and counted (`derive_run`'s verify)


def derivation_problem(space: ir.Space) -> str | None:
    """Why genotypes of `space` cannot be ranked by DARTS's rule (a method that derives
    otherwise), or None."""
    for call in space.methods:
        rule = METHODS[call.name].derivation
        if rule is not None:
            return (f"the search method '{call.name}' derives by its own rule ({rule}); derive "
                    "ranks genotypes by DARTS's rule and cannot apply caps to it")
    return None


def _space_caps(space: ir.Space) -> list[tuple[str, int]]:
    """The space's own derivation caps on the normal cell (P-DARTS's skip cap, the identity
    cap): (count name, limit)."""
    counts = {"max_skip_connect": SKIP_COUNT, "max_identity": IDENTITY_COUNT}
    return [(counts[call.name], resolved(call)["n"]) for call in space.methods
            if call.name in counts]


def _groups(space: ir.Space, table: CostTable, weights: RunWeights, dims: Sequence[str]
            ) -> list[list[_Partial]]:
    """Per node and per output of each cell type, the front of its options."""
    measures = [dim for dim in dims if dim in table.measures]
    kind_costs = {measure: table.kind_costs(measure) for measure in measures}
    operation_row = {call: row for row, call in enumerate(table.operations)}
    attention_row = {call: row for row, call in enumerate(table.attentions)}
    starts = [sum(2 + k for k in range(node)) for node in range(space.nodes)]
    groups = []
    for kind in ir.CELL_KINDS:
        edges, outputs = _cell_choices(space, weights.cells[kind])

        def edge_cost(position: int, choice: EdgeChoice, dim: str) -> float:
            if dim == SKIP_COUNT:
                return int(kind == "normal" and choice.operation == SKIP)
            if dim == IDENTITY_COUNT:
                return int(kind == "normal" and choice.attention is None)
            costs = kind_costs[dim][kind]
            total = costs.operations[position][operation_row[choice.operation]]
            if choice.attention is not None:
                total += costs.attentions[position][attention_row[choice.attention]]
            return total

        for node in range(space.nodes):
            fronts = {}
            for offset in range(2 + node):
                position = starts[node] + offset
                fronts[offset] = _front([
                    _Partial(choice.score, tuple(edge_cost(position, choice, dim) for dim in dims),
                             (kind, node, offset, choice))
                    for choice in edges[position]])
            options: list[_Partial] = []
            for subset in itertools.combinations(range(2 + node), space.keep):
                partial = [_Partial(0.0, tuple(0 for _ in dims), None)]
                for offset in subset:
                    partial = _combine(partial, fronts[offset], [math.inf] * len(dims))
                options.extend(partial)
            groups.append(_front(options))

        def output_cost(call: ir.Call | None, dim: str) -> float:
            costs = kind_costs[dim][kind].output if dim in kind_costs else None
            return 0 if call is None or costs is None else costs[attention_row[call]]

        groups.append(_front([_Partial(score, tuple(output_cost(call, dim) for dim in dims),
                                       (kind, -1, None, call))
                              for call, score in outputs]))
    return groups


def _solve(groups: list[list[_Partial]], room: Sequence[float]) -> list[_Partial]:
    """The front of complete choices within `room` (dynamic programming over the groups)."""
    # the least each dimension can still grow after group g: prunes partials that cannot fit
    least = [[0.0] * len(room) for _ in range(len(groups) + 1)]
    for index in range(len(groups) - 1, -1, -1):
        least[index] = [least[index + 1][d] + min(p.costs[d] for p in groups[index])
                        for d in range(len(room))]
    partial = [_Partial(0.0, tuple(0 for _ in room), None)]
    for index, group in enumerate(groups):
        bound = [limit - rest for limit, rest in zip(room, least[index + 1])]
        partial = _combine(partial, group, bound)
        if not partial:
            return []
    return partial


def _genotype(space: ir.Space, picks: Sequence[tuple], name: str,
              meta: Mapping[str, str]) -> ir.Genotype:
    """The genotype of a complete set of picks, written as derivation writes cells."""
    cells = {}
    for kind in ir.CELL_KINDS:
        nodes = []
        for node in range(space.nodes):
            chosen = sorted((offset, choice) for k, n, offset, choice in picks
                            if k == kind and n == node)
            inputs = (*ir.INPUTS, *(f"n{i}" for i in range(node)))
            nodes.append(ir.Node(name=f"n{node}", edges=tuple(
                ir.Edge(operation=choice.operation, input=inputs[offset],
                        attention=choice.attention) for offset, choice in chosen)))
        output = next(call for k, n, _, call in picks if k == kind and n == -1)
        cells[kind] = ir.Cell(kind=kind, nodes=tuple(nodes), output=ir.Output(
            nodes=tuple(node.name for node in nodes), attention=output))
    return ir.Genotype(name=name, meta=tuple(ir.Meta(key=key, value=value)
                                             for key, value in meta.items()),
                       normal=cells["normal"], reduce=cells["reduce"])


def budget_derive(space: ir.Space, weights: RunWeights, table: CostTable,
                  caps: Sequence[Cap] = (), *, pareto: bool = False, name: str | None = None,
                  meta: Mapping[str, str] | None = None) -> Derived:
    """The highest-scoring genotype (module docstring) whose cost in `table` is within `caps`,
    and with `pareto` the front of score against the capped measures (multiply-adds when there
    are no caps). BudgetError when no genotype fits."""
    problem = table.matches(space) or derivation_problem(space)
    if problem:
        raise BudgetError(problem)
    for cap in caps:
        if cap.measure not in table.measures:
            raise BudgetError(f"the cost table ({table.describe()}) has no {cap.measure}; "
                              "build one with `attdarts cost --latency`")
    measures = [cap.measure for cap in caps]
    if pareto and not measures:
        measures = ["multiply_adds"]
    space_caps = _space_caps(space)
    dims = [*measures, *(count for count, _ in space_caps)]
    limits = {cap.measure: cap.limit for cap in caps}
    room = [limits.get(measure, math.inf) - table.fixed[measure] for measure in measures]
    room += [limit for _, limit in space_caps]
    groups = _groups(space, table, weights, dims)
    name = name or f"{space.name}_budget"
    meta = dict(meta or {})

    def build(partial: _Partial) -> tuple[ir.Genotype, dict[str, float]]:
        genotype = _genotype(space, _flatten(partial.picks), name, meta)
        return genotype, table.price(genotype)

    unconstrained = _solve(_groups(space, table, weights, [c for c, _ in space_caps]),
                           [limit for _, limit in space_caps])
    best_free, free_costs = build(unconstrained[0])
    found = _solve(groups, room)
    if not found:
        least = {measure: table.fixed[measure] + sum(min(p.costs[d] for p in group)
                                                     for group in groups)
                 for d, measure in enumerate(measures)}
        wanted = ", ".join(f"{cap.measure} <= {_show(cap.measure, cap.limit)} (the cheapest "
                           f"genotype has {_show(cap.measure, least[cap.measure])})"
                           for cap in caps)
        raise BudgetError(f"no genotype of space '{space.name}' fits {wanted}")
    best = found[0]  # the front is sorted by score, highest first
    genotype, costs = build(best)
    for cap in caps:  # the table's own total, not the search's running sums, decides
        if costs[cap.measure] > cap.limit:
            raise AssertionError(f"internal error: {cap.measure} {costs[cap.measure]} exceeds "
                                 f"{cap.limit}")
    derived = Derived(genotype=genotype, score=genotype_score(genotype, space, weights),
                      costs=costs, epoch=weights.epoch, caps=tuple(caps),
                      unconstrained_score=genotype_score(best_free, space, weights),
                      unconstrained_costs=free_costs)
    if pareto:  # each point's score is its running sum (equal to genotype_score, tested)
        for partial in found:
            point, point_costs = build(partial)
            derived.front.append((partial.score, point_costs, point))
    return derived


def _show(measure: str, value: float) -> str:
    if measure == "latency_ms":
        return f"{value:.3f} ms"
    return f"{value / 1e6:.3f}M"


# ---------------------------------------------------------------------------------------------
# Random genotypes


def random_genotype(space: ir.Space, random: Any, name: str = "random") -> ir.Genotype:
    """A genotype derivation could write from some weights of `space`, drawn with `random` (a
    `random.Random`): per node `keep` distinct inputs, each a random candidate pair."""
    uniform_alpha = [1.0] * len(space.location_spec.columns(space)["alpha"])
    beta_columns = space.location_spec.columns(space).get("beta")
    uniform_beta = None if beta_columns is None else [1.0] * len(beta_columns)
    choices = edge_choices(space, uniform_alpha, uniform_beta)
    outputs = [call for call, _ in _output_choices(
        space, [1.0] * len(space.attentions) if space.location_spec.output_attention else None)]
    picks = []
    for kind in ir.CELL_KINDS:
        for node in range(space.nodes):
            for offset in random.sample(range(2 + node), space.keep):
                picks.append((kind, node, offset, random.choice(choices)))
        picks.append((kind, -1, None, random.choice(outputs)))
    return _genotype(space, picks, name, {})
