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

Search methods (README, "Search methods"):

- edge normalisation (PC-DARTS): an edge's ranking weight above is multiplied by its normalised
  edge weight (softmax of `edges` over its node's incoming edges); the choice of operation and
  attention is unchanged.
- `max_skip_connect` (P-DARTS) and `max_identity` cap the derived normal cell (`_select` says
  exactly how); the reduction cell is never capped. The auxiliary skip and identity (DARTS-)
  are not part of the genotype: derivation ignores them.
- `count_skip_connect` / `count_identity` count a derived cell's skips and identities (DARTS+'s
  early stop reads the first).

Output is canonical: nodes n0, n1, ...; within a node, the kept edges sorted by input index
(c_k2, c_k1, n0, ...). Successive epochs and runs therefore diff line by line. Ties go to the
lower index (the candidate order of the space, then the lower input index), deterministically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from attdarts.language import ir
from attdarts.language.locations import strongest
from attdarts.networks.supernet import EDGES, Supernet, column_names, node_slices, normalise_edges

__all__ = [
    "check_derivable", "count_identity", "count_skip_connect", "derive_cell", "derive_genotype",
]

SKIP_CONNECT = "skip_connect"
IDENTITY = "identity"

ArchTensors = Mapping[str, Mapping[str, torch.Tensor]]


def _softmax_rows(tensor: torch.Tensor) -> list[list[float]]:
    return torch.softmax(tensor.detach().to("cpu", torch.float64), dim=-1).tolist()


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


def _choose(space: ir.Space, index: int, alpha: list[float], beta: list[float] | None,
            scale: float, no_skip: bool, no_identity: bool) -> _Choice:
    """Edge `index` as its location chooses it (`Location.choose_edge`), its weight times the
    normalised edge weight `scale`; `no_skip` / `no_identity`: a cap took skip_connect / the
    identity attention away from it, so the edge gets its strongest other candidate."""
    operation, attention, weight = space.location_spec.choose_edge(space, alpha, beta)
    if no_skip:
        allowed = [i for i, call in enumerate(space.operations)
                   if call.name not in ("none", SKIP_CONNECT)]
        operation = strongest(alpha, allowed)
        weight = alpha[operation]
    if no_identity and beta is not None:
        allowed = [i for i, call in enumerate(space.attentions) if call.name != IDENTITY]
        attention = strongest(beta, allowed)
    return _Choice(index, operation, attention, weight * scale)


def _keep(space: ir.Space, choices: list[_Choice]) -> list[list[_Choice]]:
    """Per node the `keep` strongest incoming edges (Eq. 14), in input order; ties go to the
    lower input index (Python's sort is stable)."""
    kept = []
    for start, count in node_slices(space.nodes):
        incoming = choices[start:start + count]
        strongest_first = sorted(incoming, key=lambda choice: -choice.weight)[:space.keep]
        kept.append(sorted(strongest_first, key=lambda choice: choice.index))
    return kept


def _is_skip(space: ir.Space, choice: _Choice) -> bool:
    return choice.operation is not None and space.operations[choice.operation].name == SKIP_CONNECT


def _is_identity(space: ir.Space, choice: _Choice) -> bool:
    return choice.attention is not None and space.attentions[choice.attention].name == IDENTITY


def _select(space: ir.Space, kind: str, alpha: list[list[float]],
            beta: list[list[float]] | None, scales: list[float]) -> list[list[_Choice]]:
    """The kept edges of every node, with the caps of the space applied to the normal cell.

    `max_skip_connect` (P-DARTS): while more kept edges than the cap are skip_connect, the
    weakest of them (smallest ranking weight, then lower edge index) loses skip_connect and takes
    its own next strongest operation (its strongest other than none and skip_connect, as
    P-DARTS's code does); the nodes then choose their edges again with the new weights, so the
    edge may give its place to another. `max_identity`: while more kept edges than the cap have
    the identity attention, the one whose identity weight (times its edge weight) is smallest
    takes its strongest other attention; attentions do not rank edges, so the kept edges stay.
    """
    capped = kind == "normal"
    no_skip: set[int] = set()
    no_identity: set[int] = set()

    def choose_all() -> list[list[_Choice]]:
        choices = [_choose(space, i, alpha[i], None if beta is None else beta[i], scales[i],
                           i in no_skip, i in no_identity) for i in range(len(alpha))]
        return _keep(space, choices)

    kept = choose_all()
    cap = space.max_skip_connect
    while capped and cap is not None:
        skips = [c for node in kept for c in node if _is_skip(space, c)]
        if len(skips) <= cap:
            break
        no_skip.add(min(skips, key=lambda c: (c.weight, c.index)).index)
        kept = choose_all()
    cap = space.max_identity
    while capped and cap is not None and beta is not None:
        identities = [c for node in kept for c in node if _is_identity(space, c)]
        if len(identities) <= cap:
            break
        weakest = min(identities, key=lambda c: (beta[c.index][c.attention] * scales[c.index],
                                                 c.index))
        no_identity.add(weakest.index)
        kept = choose_all()
    return kept


def derive_cell(space: ir.Space, kind: str, tensors: Mapping[str, torch.Tensor]) -> ir.Cell:
    """One cell ("normal" or "reduce") from its raw alpha / beta / gamma (/ edges) tensors."""
    check_derivable(space)
    alpha = _softmax_rows(tensors["alpha"])
    beta = _softmax_rows(tensors["beta"]) if "beta" in tensors else None
    scales = [1.0] * len(alpha)
    if EDGES in tensors:  # PC-DARTS: rank by operation weight x normalised edge weight
        scales = normalise_edges(tensors[EDGES].detach().to("cpu", torch.float64),
                                 space.nodes).tolist()
    inputs = [source for node in range(space.nodes)
              for source in (*ir.INPUTS, *(f"n{i}" for i in range(node)))]
    nodes = []
    for node, kept in enumerate(_select(space, kind, alpha, beta, scales)):
        edges = tuple(ir.Edge(operation=_operation_call(space, choice), input=inputs[choice.index],
                              attention=_attention_call(space, choice)) for choice in kept)
        nodes.append(ir.Node(name=f"n{node}", edges=edges))
    output_attention = None
    if "gamma" in tensors:
        gamma = _softmax_rows(tensors["gamma"])[0]
        output_attention = _no_identity(
            space.attentions[strongest(gamma, list(range(len(space.attentions))))])
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
    lines, in the given order.
    """
    if isinstance(source, Supernet):
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
    cells = {kind: derive_cell(space, kind, tensors[kind]) for kind in ir.CELL_KINDS}
    entries = tuple(ir.Meta(key=key, value=value) for key, value in (meta or {}).items())
    return ir.Genotype(name=name or space.name, meta=entries, normal=cells["normal"],
                       reduce=cells["reduce"])
