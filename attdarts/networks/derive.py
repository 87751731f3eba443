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

Output is canonical: nodes n0, n1, ...; within a node, the kept edges sorted by input index
(c_k2, c_k1, n0, ...). Successive epochs and runs therefore diff line by line. Ties go to the
lower index (the candidate order of the space, then the lower input index), deterministically.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from attdarts.language import ir
from attdarts.language.locations import strongest
from attdarts.networks.supernet import Supernet, column_names

__all__ = ["check_derivable", "derive_cell", "derive_genotype"]

ArchTensors = Mapping[str, Mapping[str, torch.Tensor]]


def _softmax_rows(tensor: torch.Tensor) -> list[list[float]]:
    return torch.softmax(tensor.detach().to("cpu", torch.float64), dim=-1).tolist()


def _edge_choice(
    space: ir.Space, alpha: list[float], beta: list[float] | None
) -> tuple[ir.Call, ir.Call | None, float]:
    """(operation, attention, ranking weight) of one edge, as its location chooses them."""
    operation, attention, weight = space.location_spec.choose_edge(space, alpha, beta)
    chosen = ir.Call(name="skip_connect") if operation is None else space.operations[operation]
    return chosen, _no_identity(None if attention is None else space.attentions[attention]), weight


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


def derive_cell(space: ir.Space, kind: str, tensors: Mapping[str, torch.Tensor]) -> ir.Cell:
    """One cell ("normal" or "reduce") from its raw alpha / beta / gamma tensors."""
    check_derivable(space)
    alpha = _softmax_rows(tensors["alpha"])
    beta = _softmax_rows(tensors["beta"]) if "beta" in tensors else None
    nodes = []
    start = 0
    for node in range(space.nodes):
        sources = [*ir.INPUTS, *(f"n{i}" for i in range(node))]
        candidates = []
        for offset, source in enumerate(sources):
            index = start + offset
            operation, attention, weight = _edge_choice(
                space, alpha[index], None if beta is None else beta[index])
            candidates.append((weight, offset, ir.Edge(operation=operation, input=source,
                                                       attention=attention)))
        start += len(sources)
        # strongest first; Python's sort is stable, so ties keep the lower input index
        kept = sorted(candidates, key=lambda item: -item[0])[:space.keep]
        kept.sort(key=lambda item: item[1])  # canonical order: by input index
        nodes.append(ir.Node(name=f"n{node}", edges=tuple(edge for _, _, edge in kept)))
    output_attention = None
    if "gamma" in tensors:
        gamma = _softmax_rows(tensors["gamma"])[0]
        output_attention = _no_identity(
            space.attentions[strongest(gamma, list(range(len(space.attentions))))])
    output = ir.Output(nodes=tuple(node.name for node in nodes), attention=output_attention)
    return ir.Cell(kind=kind, nodes=tuple(nodes), output=output)


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
