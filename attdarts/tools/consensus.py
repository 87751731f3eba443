"""The genotype most seeds agree on, edge by edge (`attdarts consensus`); torch-free.

Searches from different seeds rarely derive the same cell (the paper searched four and kept the
best after training). The consensus takes, node by node, what most seeds chose:

1. **Nodes** are matched by position (the j-th intermediate node of every seed's cell); every
   genotype must have as many nodes per cell. Names are those of the first genotype.
2. **Inputs**: each seed votes for the inputs its node reads (once per input). The node keeps as
   many inputs as most seeds' nodes read (ties: the fewer), the inputs with the most votes.
3. **Operation**, per kept input: each seed whose node reads that input votes for the operation
   on that edge; the most votes win.
4. **Attention**, per kept input: the same vote over the attention on that edge (no attention
   counts as `identity`), independently of the operation, as derivation chooses them from
   separate mixtures (Eq. 9-10). At location `mixed_with_operation`, where one softmax chose
   both, the (operation, attention) pair is voted on as one.
5. **Output**: the concatenation most seeds have, and its attention by vote.

Ties are broken by the summed architecture weights of the tied candidates over all seeds whose
run recorded them (weights.jsonl, last epoch): for inputs the edge's ranking weight (Eq. 14), for
operations alpha, for attentions beta (gamma on the output); then by the order of the search
space (input order c_k2, c_k1, n0, ...; candidate order of `operations` / `attentions`); without
weights or space, by first appearance in the seeds' order. Every node reads only inputs
its seeds' nodes read, all defined before it, so the result is a valid genotype; it is checked
by printing and parsing it back like every written genotype.

Agreement of a consensus edge: the share of seeds whose node reads its input, has its operation
on that input, its attention, and the whole edge (input, operation and attention). The written
file carries them as a comment above each node and the mean whole-edge agreement as metadata.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from attdarts.language import ir
from attdarts.language import decisiveness as dec
from attdarts.tools import search_runs

METHOD = ("edge by edge over the seeds: per node the inputs, then per input the operation and "
          "the attention, by vote; ties by summed architecture weights")


class ConsensusError(ValueError):
    """Genotypes that cannot be combined, or a path that holds none (one line)."""


@dataclass(frozen=True)
class Member:
    """One seed's vote: its genotype and, when its run recorded them, its space and its last
    epoch's softmaxed weights per cell kind (as weights.jsonl writes them)."""

    name: str
    genotype: ir.Genotype
    space: ir.Space | None = None
    weights: dict | None = None
    seed: int | None = None


@dataclass(frozen=True)
class EdgeAgreement:
    cell: str
    node: str
    edge: ir.Edge
    seeds: int
    input_votes: int
    operation_votes: int
    attention_votes: int
    edge_votes: int  # seeds with exactly this edge (input, operation and attention)

    @property
    def agreement(self) -> float:
        return self.edge_votes / self.seeds

    def as_dict(self) -> dict:
        return {"cell": self.cell, "node": self.node, "input": self.edge.input,
                "operation": _call_text(self.edge.operation),
                "attention": _call_text(self.edge.attention), "seeds": self.seeds,
                "input_votes": self.input_votes, "operation_votes": self.operation_votes,
                "attention_votes": self.attention_votes, "edge_votes": self.edge_votes}


@dataclass(frozen=True)
class Consensus:
    genotype: ir.Genotype  # with the agreement comments and metadata
    edges: tuple[EdgeAgreement, ...]
    outputs: dict[str, tuple[int, int]]  # cell -> (votes for its output, votes for its attention)
    members: tuple[str, ...]

    @property
    def agreement(self) -> float:
        """Mean whole-edge agreement over the consensus edges."""
        return sum(edge.agreement for edge in self.edges) / len(self.edges) if self.edges else 1.0

    def as_dict(self) -> dict:
        return {"seeds": len(self.members), "members": list(self.members),
                "agreement": self.agreement, "edges": [edge.as_dict() for edge in self.edges],
                "outputs": {kind: {"votes": votes, "attention_votes": attention}
                            for kind, (votes, attention) in self.outputs.items()}}


def _call_text(call: ir.Call | None) -> str:
    from attdarts.tools.diff import call_text

    return dec.IDENTITY if call is None else call_text(call)


# ---------------------------------------------------------------------------------------------
# voting


def _winner(votes: Counter, weight: Callable[[Hashable], float], order: Callable[[Hashable], tuple]
            ) -> Hashable:
    """Most votes, then the largest summed weight, then the first in `order`."""
    return min(votes, key=lambda choice: (-votes[choice], -weight(choice), order(choice)))


def combine(members: Sequence[Member], *, name: str | None = None) -> Consensus:
    """The consensus genotype of `members` (module docstring: the rule)."""
    if not members:
        raise ConsensusError("no genotype to combine")
    first = members[0].genotype
    space = next((member.space for member in members if member.space is not None), None)
    cells = {}
    agreements: list[EdgeAgreement] = []
    outputs: dict[str, tuple[int, int]] = {}
    for kind in ir.CELL_KINDS:
        cell, edges, output = _cell(kind, members, space)
        cells[kind] = cell
        agreements.extend(edges)
        outputs[kind] = output
    mean = sum(edge.agreement for edge in agreements) / len(agreements) if agreements else 1.0
    seeds = [str(member.seed) for member in members if member.seed is not None]
    meta = [("consensus", f"{len(members)} genotypes, {METHOD}"),
            ("agreement", f"{mean:.2f} (mean share of the genotypes having each edge whole)")]
    if len(seeds) == len(members):
        meta.insert(1, ("seeds", ", ".join(seeds)))
    if space is not None:
        meta.insert(0, ("space", space.name))
    base = space.name if space is not None else first.name
    genotype = ir.Genotype(
        name=name or f"{base}_consensus",
        meta=tuple(ir.Meta(key=key, value=value) for key, value in meta),
        normal=cells["normal"], reduce=cells["reduce"])
    return Consensus(genotype, tuple(agreements), outputs, tuple(m.name for m in members))


def _cell(kind: str, members: Sequence[Member], space: ir.Space | None
          ) -> tuple[ir.Cell, list[EdgeAgreement], tuple[int, int]]:
    cells = [member.genotype.cell(kind) for member in members]
    counts = {len(cell.nodes) for cell in cells}
    if len(counts) != 1:
        found = ", ".join(f"{member.name}: {len(cell.nodes)}" for member, cell in zip(members, cells))
        raise ConsensusError(f"the {kind} cells have different numbers of nodes ({found})")
    names = cells[0].node_names
    total = len(members)
    rankings = [_member_rankings(member, kind, space) for member in members]
    joint = space is not None and space.location == "mixed_with_operation"
    nodes, agreements = [], []
    for position, node_name in enumerate(names):
        # each member's edges of this node, inputs as positions: "c_k2", "c_k1", or node index
        edges = [[(_source(cell, edge.input), edge) for edge in cell.nodes[position].edges]
                 for cell in cells]
        order = _input_order(edges)
        inputs = Counter(source for member_edges in edges
                         for source in dict.fromkeys(s for s, _ in member_edges))
        size = Counter(len({s for s, _ in member_edges}) for member_edges in edges)
        keep = min(size, key=lambda count: (-size[count], count))

        def input_weight(source) -> float:
            return sum(ranking.get((position, source), 0.0) for ranking in rankings
                       if ranking is not None)

        kept = sorted(inputs, key=lambda s: (-inputs[s], -input_weight(s), order[s]))[:keep]
        kept.sort(key=_input_key)  # canonical: c_k2, c_k1, n0, ...
        node_edges = []
        for source in kept:
            voters = [(index, edge) for index, member_edges in enumerate(edges)
                      for s, edge in member_edges if s == source]
            edge = _vote_edge(voters, members, kind, position, source, space, joint)
            edge = edge.model_copy(update={"input": _input_name(names, source)})
            node_edges.append(edge)
            same = lambda other: (other.operation == edge.operation  # noqa: E731
                                  and other.attention == edge.attention)
            agreements.append(EdgeAgreement(
                cell=kind, node=node_name, edge=edge, seeds=total,
                input_votes=inputs[source],
                operation_votes=len({i for i, e in voters if e.operation == edge.operation}),
                attention_votes=len({i for i, e in voters if e.attention == edge.attention}),
                edge_votes=len({i for i, e in voters if same(e)})))
        comments = ir.Comments(leading=tuple(
            _comment(agreement) for agreement in agreements[-len(node_edges):]))
        nodes.append(ir.Node(name=node_name, edges=tuple(node_edges), comments=comments))
    output, votes = _vote_output(cells, members, kind, space, names)
    return ir.Cell(kind=kind, nodes=tuple(nodes), output=output), agreements, votes


def _comment(edge: EdgeAgreement) -> str:
    total = edge.seeds
    attention = _call_text(edge.edge.attention)
    return (f"# {edge.node} <- {edge.edge.input}: input {edge.input_votes}/{total}, "
            f"{_call_text(edge.edge.operation)} {edge.operation_votes}/{total}, "
            f"{attention} {edge.attention_votes}/{total}, whole edge {edge.edge_votes}/{total}")


def _source(cell: ir.Cell, name: str):
    """An input as a position: "c_k2" / "c_k1", or the index of the node it names."""
    return name if name in ir.INPUTS else cell.node_names.index(name)


def _input_key(source) -> tuple:
    return (ir.INPUTS.index(source), 0) if source in ir.INPUTS else (2, source)


def _input_name(names: tuple[str, ...], source) -> str:
    return source if source in ir.INPUTS else names[source]


def _input_order(edges) -> dict:
    return {source: _input_key(source) for member_edges in edges for source, _ in member_edges}


def _member_rankings(member: Member, kind: str, space: ir.Space | None) -> dict | None:
    """(node position, input) -> the edge's ranking weight in `member`'s run, or None."""
    if member.weights is None or space is None or kind not in member.weights:
        return None
    try:
        values = dec.ranking_weights(space, member.weights[kind])
    except dec.DecisivenessError:
        return None
    names = dec.edge_names(space.nodes)
    result = {}
    for name, value in zip(names, values):
        node, source = name.split("<-")
        position = int(node[1:])
        result[(position, source if source in ir.INPUTS else int(source[1:]))] = value
    return result


def _row(member: Member, kind: str, key: str, position: int, source, space: ir.Space | None
         ) -> list[float] | None:
    """`member`'s weights row `key` of the edge (node position <- source), or None."""
    if member.weights is None or space is None or kind not in member.weights:
        return None
    rows = member.weights[kind].get(key)
    name = f"n{position}<-{source if source in ir.INPUTS else f'n{source}'}"
    names = dec.edge_names(space.nodes)
    if rows is None or name not in names or len(rows) != len(names):
        return None
    return [float(value) for value in rows[names.index(name)]]


def _vote_edge(voters, members, kind: str, position: int, source, space, joint: bool) -> ir.Edge:
    """The operation and the attention of the consensus edge from the edges `voters` (member
    index, edge) have on this input."""
    appearance: dict = {}
    for _, edge in voters:
        appearance.setdefault(edge.operation, len(appearance))
    operations = space.operations if space is not None else ()
    attentions = space.attentions if space is not None else ()
    offset = len(operations)

    def column(call: ir.Call | None, calls, base: int) -> int | None:
        if call is None:
            names = [attention.name for attention in attentions]
            return base + names.index(dec.IDENTITY) if dec.IDENTITY in names else None
        return base + calls.index(call) if call in calls else None

    def summed(key: str, columns: Callable) -> Callable[[Hashable], float]:
        def weight(choice) -> float:
            total = 0.0
            for member in members:
                row = _row(member, kind, key, position, source, space)
                index = columns(choice)
                if row is not None and index is not None and index < len(row):
                    total += row[index]
            return total
        return weight

    def order(calls) -> Callable:
        def key(choice) -> tuple:
            call = choice[1] if isinstance(choice, tuple) else choice
            if call is None:
                names = [attention.name for attention in attentions]
                return (0, names.index(dec.IDENTITY)) if dec.IDENTITY in names else (-1, 0)
            return (0, calls.index(call)) if call in calls else (1, appearance.get(call, 0))
        return key

    if joint:  # one softmax over operations and attentions chose both
        pairs = Counter((edge.operation, edge.attention) for _, edge in voters)

        def pair_column(pair) -> int | None:
            operation, attention = pair
            return (column(attention, attentions, offset) if attention is not None
                    else column(operation, operations, 0))

        operation, attention = _winner(pairs, summed("alpha", pair_column), order(attentions))
        return ir.Edge(operation=operation, input="c_k2", attention=attention)
    votes = Counter(edge.operation for _, edge in voters)
    operation = _winner(votes, summed("alpha", lambda call: column(call, operations, 0)),
                        order(operations))
    attention_votes = Counter(edge.attention for _, edge in voters)
    beta_offset = offset if space is not None and space.location == "double_mixed" else 0
    attention = _winner(attention_votes,
                        summed("beta", lambda call: column(call, attentions, beta_offset)),
                        order(attentions))
    return ir.Edge(operation=operation, input="c_k2", attention=attention)


def _vote_output(cells, members, kind: str, space, names) -> tuple[ir.Output, tuple[int, int]]:
    concatenations = Counter(tuple(cell.node_names.index(name) for name in cell.output.nodes)
                             for cell in cells)
    first_seen = {value: index for index, value in reversed(list(enumerate(
        tuple(cell.node_names.index(name) for name in cell.output.nodes) for cell in cells)))}
    chosen = min(concatenations, key=lambda value: (-concatenations[value], first_seen[value]))
    attentions = Counter(cell.output.attention for cell in cells)
    calls = space.attentions if space is not None else ()
    names_of = [call.name for call in calls]

    def gamma(call) -> float:
        total = 0.0
        for member in members:
            if member.weights is None or kind not in member.weights:
                continue
            row = member.weights[kind].get("gamma")
            if not row:
                continue
            row = row[0] if isinstance(row[0], (list, tuple)) else row
            index = (names_of.index(dec.IDENTITY) if call is None and dec.IDENTITY in names_of
                     else calls.index(call) if call in calls else None)
            if index is not None and index < len(row):
                total += float(row[index])
        return total

    attention = _winner(attentions, gamma,
                        lambda call: (-1, 0) if call is None else
                        ((0, calls.index(call)) if call in calls else (1, 0)))
    output = ir.Output(nodes=tuple(names[index] for index in chosen), attention=attention)
    return output, (concatenations[chosen], attentions[attention])


# ---------------------------------------------------------------------------------------------
# files


def read_members(paths: Sequence[str | Path]) -> list[Member]:
    """The genotypes to combine: a search run directory gives its genotype.geno with its
    space.geno and last weights.jsonl epoch; a folder of runs (OUT of --seeds) gives each run;
    a .geno file gives its genotypes."""
    from attdarts.language.errors import DslError
    from attdarts.language.transform import parse_file

    members: list[Member] = []
    for path in map(Path, paths):
        if path.is_file():
            try:
                document = parse_file(path)
            except DslError as error:
                raise ConsensusError(str(error).splitlines()[0]) from None
            if not document.genotypes:
                raise ConsensusError(f"{path}: defines no genotype")
            members.extend(Member(f"{path}:{g.name}" if len(document.genotypes) > 1 else str(path),
                                  g) for g in document.genotypes)
            continue
        runs = search_runs.find_searches(path)
        if not runs:
            raise ConsensusError(f"{path}: not a search run directory (no space.geno and "
                                 "genotype.geno) and no search run under it")
        members.extend(read_member(run) for run in runs)
    return members


def read_member(run: Path) -> Member:
    from attdarts.language.errors import DslError
    from attdarts.language.transform import parse_file

    file = run / "genotype.geno"
    try:
        genotype = parse_file(file).genotype()
        space = search_runs.read_space(run)
    except DslError as error:
        raise ConsensusError(str(error).splitlines()[0]) from None
    weights = search_runs.read_weights(run / "weights.jsonl")
    last = weights[max(weights)] if weights else None
    cells = ({kind: last[kind] for kind in ir.CELL_KINDS if isinstance(last.get(kind), dict)}
             if last else None)
    seed = None
    try:
        seed = json.loads((run / "config.json").read_text(encoding="utf-8")).get("seed")
    except (OSError, ValueError, AttributeError):
        pass
    return Member(str(run), genotype, space, cells, seed if isinstance(seed, int) else None)


def consensus_text(consensus: Consensus) -> str:
    """The consensus as a genotype file (checked round trip)."""
    from attdarts.language.printer import format_checked

    return format_checked(consensus.genotype, what="the consensus genotype")


def of_runs(paths: Sequence[str | Path]) -> dict | None:
    """`attdarts report`'s entry for a group of search runs: the consensus genotype's cells and
    every edge's agreement (None for fewer than two runs or runs that cannot be combined)."""
    if len(paths) < 2:
        return None
    try:
        result = combine([read_member(Path(path)) for path in paths])
    except ConsensusError:
        return None
    from attdarts.language.printer import cell_lines

    def statements(kind: str) -> str:
        lines = cell_lines(result.genotype.cell(kind))
        return "; ".join(line for line in lines if not line.lstrip().startswith("#"))

    return {**result.as_dict(), "cells": {kind: statements(kind) for kind in ir.CELL_KINDS}}


def report_lines(entry: dict | None) -> list[str]:
    """Markdown for `attdarts report`: the consensus cells and the agreement table."""
    if not entry:
        return []
    total = entry["seeds"]
    lines = [f"Consensus of the {total} seeds (`attdarts consensus`), mean whole-edge agreement "
             f"{entry['agreement']:.2f}:", "",
             f"- normal: `{entry['cells']['normal']}`", f"- reduce: `{entry['cells']['reduce']}`",
             "", "| cell | node | input | operation | attention | whole edge |",
             "|---|---|---|---|---|---:|"]
    for edge in entry["edges"]:
        lines.append(
            f"| {edge['cell']} | {edge['node']} | {edge['input']} {edge['input_votes']}/{total} | "
            f"`{edge['operation']}` {edge['operation_votes']}/{total} | `{edge['attention']}` "
            f"{edge['attention_votes']}/{total} | {edge['edge_votes']}/{total} |")
    return lines
