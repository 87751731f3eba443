"""Derive the discrete genotype from a supernet's architecture parameters (paper Sec. III-A, Eq. 14).

After-every / end locations (the paper's rule, extended to the output):

- per edge: the operation with the largest softmax weight s_o, `none` excluded; the attention
  with the largest weight t_a, `identity` eligible (an `identity` winner is written as no
  attention, which is how the DSL front end canonicalises `>> identity`);
- per node: the `keep` incoming edges whose best non-`none` operation weight is largest (Eq. 14);
- output: concatenation of all intermediate nodes, followed by the gamma winner (`identity` ->
  no output attention) when the location has gamma.

Mixed locations, where operations and attentions share one softmax:

- `mixed_with_operation`: per edge the strongest non-`none` candidate. An operation o becomes
  ``o(input)``; an attention a becomes ``skip_connect(input) >> a``, which is what the supernet
  computed for it (the identity at stride 1, a factorized reduce then a at stride 2). Edges are
  ranked by that winner's weight.
- `double_mixed`: the first mixture gives the operation (strongest non-`none` operation column),
  the second mixture the attention (strongest attention column), so every edge is
  ``o(input) >> a`` as Att-DARTS intends. Edges are ranked by the first mixture's best
  non-`none` operation weight (Eq. 14 applied to the first mixture).

The weights derivation ranks are the space's methods' (`MethodSet.derivation_weights`: softmax
per row unless a method says otherwise; `derivation_weights` gives them per cell type), and
search methods act through their derivation hooks (`attdarts.networks.methods`):

- `edge_scales`: a factor on each edge's ranking weight (edge normalisation, PC-DARTS: the
  softmax of `edges` over its node's incoming edges); the choice of operation and attention is
  unchanged;
- `edge_choices`: how many different candidates an edge may give its node (default one, the
  paper's rule). GDAS (Dong and Yang, CVPR 2019) ranks every (operation, input) pair of a node,
  `none` excluded, and keeps the `keep` strongest, so an input may be chosen twice with two
  operations: each edge offers its candidates in order of weight (in the mixed locations the
  first mixture's columns, an attention again as ``skip_connect(input) >> a``), each with the
  edge's attention;
- `keep`: which incoming choices a node keeps (default: the `keep` strongest);
- `threshold`: the least weight a kept edge (its operation weight) or an attention needs
  (FairDARTS): an edge below it is dropped, an attention below it becomes no attention. A node
  left without edges leaves the cell, with the edges reading it, and the output concatenates the
  nodes that remain (`_keep`);
- `cap`: caps on the derived cell (`max_skip_connect`, P-DARTS; `max_identity`), each taking one
  candidate from one edge at a time until it holds, in the order the space lists them (`_select`).
  The auxiliary skip and identity (DARTS-) are not part of the genotype: derivation ignores them.
- `count_skip_connect` / `count_identity` count a derived cell's skips and identities.

Output is canonical: nodes n0, n1, ... (a node that left the cell leaves a gap: n0, n2, n3, so
every node keeps the supernet's name); within a node, the kept edges sorted by input index
(c_k2, c_k1, n0, ...). Successive epochs and runs therefore diff line by line. Ties go to the
lower index (the candidate order of the space, then the lower input index), deterministically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from attdarts.language import ir, kinds
from attdarts.language.locations import BOTH, strongest
from attdarts.networks.methods import Ban, Derivation, MethodSet, build_methods
from attdarts.networks.supernet import Supernet, column_names, node_slices

__all__ = [
    "check_derivable", "count_identity", "count_skip_connect", "derivation_weights",
    "derive_cell", "derive_genotype",
]

SKIP_CONNECT = "skip_connect"
IDENTITY = "identity"

ArchTensors = Mapping[str, Mapping[str, torch.Tensor]]


def _no_identity(call: ir.Call | None) -> ir.Call | None:
    """The DSL writes "no attention" as no `>> ...` at all (`>> identity` parses to None)."""
    return None if call is None or call.name == "identity" else call


def check_derivable(space: ir.Space) -> None:
    """Raise ValueError, in one line, if no genotype can be derived from `space`.

    A space parsed from text never fails here (`attdarts check` refuses it first); one built with
    `model_construct` or edited after validation can.
    """
    problems = ir.derivation_problems(space)
    if problems:
        reasons = "; ".join(problem.message + (f" ({problem.hint})" if problem.hint else "")
                            for problem in problems)
        raise ValueError(f"space '{space.name}' cannot derive a genotype: {reasons}")


@dataclass(frozen=True)
class _Choice:
    """One edge's derivation: indices into the space's operations / attentions (operation None:
    skip_connect, from an attention that won a mixed softmax; attention None: none) and the
    weight that ranks the edge among its node's incoming edges."""

    index: int
    operation: int | None
    attention: int | None
    weight: float


def _choose(space: ir.Space, methods: MethodSet, index: int, alpha: list[float],
            beta: list[float] | None, scale: float, banned: set[Ban],
            searched: Mapping[str, list[list[bool]]]) -> _Choice:
    """Edge `index` as its location chooses it (`Location.choose_edge`), its weight times the
    ranking factor `scale`; a candidate a cap banned from this edge is passed over for the
    edge's strongest other (never `none`, nor a candidate a stage dropped: `searched` rows by
    kind, absent: all); an attention below the methods' threshold becomes no attention."""
    operation, attention, weight = space.location_spec.choose_edge(space, alpha, beta)
    no_operations = {ban.candidate for ban in banned
                     if ban.edge == index and ban.kind == kinds.OPERATION}
    no_attentions = {ban.candidate for ban in banned
                     if ban.edge == index and ban.kind == kinds.ATTENTION}

    def open_to(kind: str, column: int) -> bool:
        return kind not in searched or searched[kind][index][column]

    if no_operations:
        allowed = [i for i, call in enumerate(space.operations) if call.name != "none"
                   and call.name not in no_operations and open_to(kinds.OPERATION, i)]
        operation = strongest(alpha, allowed)
        weight = alpha[operation]
    if no_attentions and beta is not None:
        allowed = [i for i, call in enumerate(space.attentions)
                   if call.name not in no_attentions and open_to(kinds.ATTENTION, i)]
        attention = strongest(beta, allowed)
    if attention is not None and beta is not None:
        offset = len(space.operations) if space.location_spec.then == BOTH else 0
        if _below(methods, kinds.ATTENTION, beta[offset + attention]):
            attention = None
    return _Choice(index, operation, attention, weight * scale)


def _below(methods: MethodSet, kind: str, weight: float) -> bool:
    """Whether `weight` misses the methods' threshold for mixture `kind` (FairDARTS)."""
    threshold = methods.threshold(kind)
    return threshold is not None and weight < threshold


def _alternatives(space: ir.Space, index: int, alpha: list[float], attention: int | None,
                  scale: float, banned: set[Ban], count: int,
                  searched: list[list[bool]] | None) -> list[_Choice]:
    """Edge `index`'s `count` strongest candidates of its first mixture, strongest first (`none`,
    the operations banned from it and the columns a stage dropped, `searched` rows, excluded),
    each with the edge's `attention` and ranked by its own weight times the edge's factor
    `scale`."""
    operations = len(space.operations)
    no_operations = {ban.candidate for ban in banned
                     if ban.edge == index and ban.kind == kinds.OPERATION}
    columns = [i for i, call in enumerate(space.operations)
               if call.name != "none" and call.name not in no_operations]
    location = space.location_spec
    alone = location.mixes_operations_and_attentions and location.then is None
    if alone:  # mixed_with_operation: an attention column derives to skip_connect >> it
        columns += [operations + i for i in range(len(space.attentions))]
    if searched is not None:
        columns = [column for column in columns if searched[index][column]]
    choices = []
    for column in sorted(columns, key=lambda column: -alpha[column])[:count]:
        if column >= operations:
            choices.append(_Choice(index, None, column - operations, alpha[column] * scale))
        else:
            choices.append(_Choice(index, column, None if alone else attention,
                                   alpha[column] * scale))
    return choices


def _keep(space: ir.Space, methods: MethodSet, choices: list[list[_Choice]]
          ) -> list[list[_Choice]]:
    """Per node the choices it keeps (each edge offers one or more, strongest first), in input
    order: a method's `keep` rule, or the `keep` strongest (Eq. 14); ties go to the lower input
    index, then to the edge's stronger candidate (Python's sort is stable).

    With a threshold on operations (FairDARTS) a kept edge whose weight misses it is dropped, so
    a node may keep fewer edges or none. A node without edges leaves the cell, and so do the
    edges reading it (a later node may lose all its edges that way too; FairDARTS's evaluation
    cell skips such edges). If no node is left, the cell keeps its single strongest edge that
    reads c_k2 or c_k1 (ties: the lower edge index), whatever its weight: a cell computes
    something (the DSL has no empty cell; FairDARTS's code cannot build one either).
    """
    kept: list[list[_Choice]] = []
    for node, (start, count) in enumerate(node_slices(space.nodes)):
        incoming = [choice for edge in choices[start:start + count] for choice in edge]
        chosen = methods.keep([choice.weight for choice in incoming], space.keep)
        if chosen is None:
            strongest_first = sorted(incoming, key=lambda choice: -choice.weight)[:space.keep]
        else:
            strongest_first = [incoming[position] for position in chosen]
        live = [choice for choice in strongest_first
                if not _below(methods, kinds.OPERATION, choice.weight)
                and _reads_a_live_input(choice.index - start, kept)]
        kept.append(sorted(live, key=lambda choice: choice.index))
    if not any(kept):
        reading_inputs = [(start + position, node)
                          for node, (start, _) in enumerate(node_slices(space.nodes))
                          for position in range(len(ir.INPUTS))]
        index, node = max(reading_inputs,
                          key=lambda pair: (choices[pair[0]][0].weight, -pair[0]))
        kept[node] = [choices[index][0]]
    return kept


def _reads_a_live_input(position: int, kept: list[list[_Choice]]) -> bool:
    """Whether the edge at `position` among its node's inputs (c_k2, c_k1, n0, ...) reads a cell
    input or an earlier node that kept an edge (`kept` holds the earlier nodes)."""
    return position < len(ir.INPUTS) or bool(kept[position - len(ir.INPUTS)])


def _select(space: ir.Space, methods: MethodSet, kind: str, weights: dict[str, list[list[float]]],
            scales: list[float]) -> list[list[_Choice]]:
    """The kept edges of every node, with the caps of the space's methods applied.

    Each cap (in the order the space lists the methods) takes one candidate from one edge at a
    time (`SearchMethod.cap`: P-DARTS's skip cap takes skip_connect from the weakest kept skip,
    which then gets its next strongest operation, as P-DARTS's code does; the identity cap gives
    the weakest identity its strongest other attention); the nodes then choose their edges
    again with the new weights, so an edge may give its place to another.
    """
    alpha = weights[kinds.OPERATION]
    beta = weights.get(kinds.ATTENTION)
    banned: set[Ban] = set()
    searched = {name: mask.reshape(-1, mask.shape[-1]).tolist()
                for name in (kinds.OPERATION, kinds.ATTENTION)
                for mask in [methods.searched(name, kind)] if mask is not None}
    per_edge = methods.edge_choices()

    def choose_all() -> list[list[_Choice]]:
        choices = []
        for i in range(len(alpha)):
            first = _choose(space, methods, i, alpha[i], None if beta is None else beta[i],
                            scales[i], banned, searched)
            choices.append([first] if per_edge == 1 else _alternatives(
                space, i, alpha[i], first.attention, scales[i], banned, per_edge,
                searched.get(kinds.OPERATION)))
        return _keep(space, methods, choices)

    kept = choose_all()
    for method in methods.caps():
        while True:
            ban = method.cap(Derivation(space, kind, kept, weights, scales))
            if ban is None or ban in banned:
                break
            banned.add(ban)
            kept = choose_all()
    return kept


def derivation_weights(source: Supernet | ArchTensors, space: ir.Space | None = None
                       ) -> dict[str, dict[str, torch.Tensor]]:
    """The architecture weights as derivation ranks them, per cell type and kind (float64, CPU):
    each row of alpha / beta / gamma normalised as the space's methods make weights (softmax
    unless a method says otherwise), edge weights softmaxed over each node's incoming edges."""
    space, tensors, methods = _source(source, space)
    return {cell: {kind: methods.derivation_weights(kind, tensor, cell)
                   for kind, tensor in tensors[cell].items()} for cell in ir.CELL_KINDS}


def derive_cell(space: ir.Space, kind: str, tensors: Mapping[str, torch.Tensor],
                methods: MethodSet | None = None) -> ir.Cell:
    """One cell ("normal" or "reduce") from its raw alpha / beta / gamma (/ edges) tensors."""
    check_derivable(space)
    methods = methods or build_methods(space)
    weights = {name: methods.derivation_weights(name, tensor, kind).tolist()
               for name, tensor in tensors.items() if name in kinds.MIXTURES}
    scales = methods.edge_scales(tensors) or [1.0] * len(weights[kinds.OPERATION])
    inputs = [source for node in range(space.nodes)
              for source in (*ir.INPUTS, *(f"n{i}" for i in range(node)))]
    nodes = []
    for node, kept in enumerate(_select(space, methods, kind, weights, scales)):
        edges = tuple(ir.Edge(operation=_operation_call(space, choice), input=inputs[choice.index],
                              attention=_attention_call(space, choice)) for choice in kept)
        if edges:  # a node that kept no edge (a threshold) leaves the cell
            nodes.append(ir.Node(name=f"n{node}", edges=edges))
    output_attention = None
    if kinds.OUTPUT in weights:
        gamma = weights[kinds.OUTPUT][0]
        best = strongest(gamma, list(range(len(space.attentions))))
        if not _below(methods, kinds.OUTPUT, gamma[best]):
            output_attention = _no_identity(space.attentions[best])
    output = ir.Output(nodes=tuple(node.name for node in nodes), attention=output_attention)
    return ir.Cell(kind=kind, nodes=tuple(nodes), output=output)


def _operation_call(space: ir.Space, choice: _Choice) -> ir.Call:
    if choice.operation is None:
        return ir.Call(name=SKIP_CONNECT)
    return space.operations[choice.operation]


def _attention_call(space: ir.Space, choice: _Choice) -> ir.Call | None:
    return _no_identity(None if choice.attention is None else space.attentions[choice.attention])


def count_skip_connect(cell: ir.Cell) -> int:
    """Edges of `cell` whose operation is skip_connect, with or without an attention after it
    (DARTS+ stops the search when the derived normal cell has too many)."""
    return sum(edge.operation.name == SKIP_CONNECT for node in cell.nodes for edge in node.edges)


def count_identity(cell: ir.Cell) -> int:
    """Edges of `cell` without an attention (identity), what `max_identity` caps."""
    return sum(edge.attention is None for node in cell.nodes for edge in node.edges)


def derive_genotype(
    source: Supernet | ArchTensors,
    space: ir.Space | None = None,
    *,
    name: str | None = None,
    meta: Mapping[str, str] | None = None,
) -> ir.Genotype:
    """The discrete genotype of a supernet (or of its architecture tensors).

    `source` is a `Supernet` (its space is used unless `space` is given) or a mapping
    ``{"normal": {"alpha": T, "beta": T, "gamma": T}, "reduce": {...}}`` of raw (pre-softmax)
    tensors, with the keys the space's location has. `meta` becomes the genotype's `key = "value"`
    lines, in the given order. A supernet of its own space derives with its own methods, so a
    stage's candidate masks hold (a dropped candidate weighs 0 and is never chosen); raw tensors
    carry no masks: every candidate is one.
    """
    space, tensors, methods = _source(source, space)
    cells = {kind: derive_cell(space, kind, tensors[kind], methods) for kind in ir.CELL_KINDS}
    entries = tuple(ir.Meta(key=key, value=value) for key, value in (meta or {}).items())
    return ir.Genotype(name=name or space.name, meta=entries, normal=cells["normal"],
                       reduce=cells["reduce"])


def _source(source: Supernet | ArchTensors, space: ir.Space | None
            ) -> tuple[ir.Space, ArchTensors, MethodSet]:
    """The space, raw tensors and methods of `derive_genotype`'s arguments, checked: a supernet
    derived in its own space brings its own methods (a stage's candidate masks hold), anything
    else gets the space's."""
    methods = None
    if isinstance(source, Supernet):
        if space in (None, source.space):
            methods = source.methods
        space = space or source.space
        tensors: ArchTensors = source.architecture_tensors()
    else:
        if space is None:
            raise ValueError("derive_genotype needs the search space when given raw tensors")
        tensors = source
    check_derivable(space)
    expected = set(column_names(space))
    for kind in ir.CELL_KINDS:
        if kind not in tensors or set(tensors[kind]) != expected:
            found = sorted(tensors.get(kind, {}))
            raise ValueError(
                f"the {kind} cell needs architecture tensors {sorted(expected)} for location "
                f"'{space.location}', got {found}")
    return space, tensors, methods or build_methods(space)
