"""Semantic diff of genotypes: which edges, operations, attentions and outputs changed.

Two genotypes are compared cell by cell and node by node (nodes are matched by name). A node
sums its incoming edges (paper, Eq. 11), so its edges form an unordered collection: an edge is
identified by its node and its input. When a node reads the same input more than once, its
edges are paired greedily: identical edges first, then edges that share the operation (the
attention changed), then edges that share the attention (the operation changed), then the rest
in text order. What is left over was added or removed. Layout, comments and the order of a
node's edges never count; the order of the output's concatenation does (it is the channel order).

One change is one line of text, the same line `attdarts plot` prints in its epoch timeline:

    normal n1 edge c_k2: skip_connect -> sep_conv_3x3
    reduce n0 edge c_k1: sep_conv_3x3>>se -> sep_conv_3x3>>cbam
    reduce n3 edge c_k1: added max_pool_3x3
    normal c_k: concat(n0, n1, n2, n3) -> concat(n0, n1, n2, n3)>>cbam

This module imports the IR only (no torch, no lark): it serves `attdarts diff`, git's external
diff interface and the search timeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

from attdarts.language.methods import value_text
from attdarts.language.ir import CELL_KINDS, INPUTS, Call, Cell, Document, Edge, Genotype, Node, Output, Space



@dataclass(frozen=True)
class Change:
    """One difference. `kind` is one of: edge_changed, edge_added, edge_removed, node_added,
    node_removed, output, meta, name, space. `before`/`after` are compact DSL text (None when
    absent)."""

    kind: str
    cell: str | None = None
    node: str | None = None
    input: str | None = None
    before: str | None = None
    after: str | None = None

    @property
    def where(self) -> str:
        if self.kind in ("meta", "space"):
            return f"{self.kind} {self.node}"
        if self.kind == "name":
            return "name"
        place = f"{self.cell} {self.node}"
        return f"{place} edge {self.input}" if self.input is not None else place

    def text(self) -> str:
        noun = " node" if self.kind in ("node_added", "node_removed") else ""
        if self.before is None:
            return f"{self.where}: added{noun} {self.after}"
        if self.after is None:
            return f"{self.where}: removed{noun} {self.before}"
        return f"{self.where}: {self.before} -> {self.after}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "cell": self.cell, "node": self.node, "input": self.input,
                "before": self.before, "after": self.after, "text": self.text()}


@dataclass(frozen=True)
class ItemDiff:
    """The changes between two same-kind items (genotypes or spaces) of two documents.

    `a` or `b` is None when the item exists on one side only (then `changes` is empty).
    """

    kind: str  # "genotype" or "space"
    a: str | None
    b: str | None
    changes: tuple[Change, ...] = field(default=())

    @property
    def status(self) -> str:
        if self.a is None:
            return "added"
        if self.b is None:
            return "removed"
        return "changed" if self.changes else "same"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "a": self.a, "b": self.b, "status": self.status,
                "changes": [change.as_dict() for change in self.changes]}


# ---------------------------------------------------------------------------------------------
# genotypes


def diff_genotypes(a: Genotype, b: Genotype, *, meta: bool = False) -> tuple[Change, ...]:
    """Every semantic difference from `a` to `b`; with `meta`, metadata and name changes too."""
    changes: list[Change] = []
    if meta:
        if a.name != b.name:
            changes.append(Change("name", before=a.name, after=b.name))
        changes.extend(_meta_changes(a, b))
    for kind in CELL_KINDS:
        changes.extend(diff_cells(a.cell(kind), b.cell(kind)))
    return tuple(changes)


def diff_cells(a: Cell, b: Cell) -> list[Change]:
    kind = b.kind
    a_nodes = {node.name: node for node in a.nodes}
    b_nodes = {node.name: node for node in b.nodes}
    names = [*a.node_names, *(name for name in b.node_names if name not in a_nodes)]
    order = {name: position for position, name in enumerate((*INPUTS, *names))}
    changes: list[Change] = []
    for name in names:
        if name not in b_nodes:
            changes.append(Change("node_removed", kind, name, before=node_text(a_nodes[name])))
        elif name not in a_nodes:
            changes.append(Change("node_added", kind, name, after=node_text(b_nodes[name])))
        else:
            changes.extend(_node_changes(kind, a_nodes[name], b_nodes[name], order))
    if a.output != b.output:
        changes.append(Change("output", kind, "c_k", before=output_text(a.output),
                              after=output_text(b.output)))
    return changes


def _node_changes(kind: str, a: Node, b: Node, order: dict[str, int]) -> list[Change]:
    inputs = sorted({edge.input for edge in (*a.edges, *b.edges)}, key=lambda name: order[name])
    changes: list[Change] = []
    for source in inputs:
        before = [edge for edge in a.edges if edge.input == source]
        after = [edge for edge in b.edges if edge.input == source]
        pairs, removed, added = pair_edges(before, after)
        for old, new in pairs:
            changes.append(Change("edge_changed", kind, b.name, source, edge_text(old),
                                  edge_text(new)))
        changes.extend(Change("edge_removed", kind, b.name, source, before=edge_text(edge))
                       for edge in removed)
        changes.extend(Change("edge_added", kind, b.name, source, after=edge_text(edge))
                       for edge in added)
    return changes


def pair_edges(before: list[Edge], after: list[Edge]
               ) -> tuple[list[tuple[Edge, Edge]], list[Edge], list[Edge]]:
    """Pair the edges of one node that read the same input: (changed pairs, removed, added).

    Identical edges cancel first, then edges sharing the operation, then edges sharing the
    attention, then the rest in text order.
    """
    old = list(before)
    new = list(after)
    for edge in list(old):
        if edge in new:
            old.remove(edge)
            new.remove(edge)
    pairs: list[tuple[Edge, Edge]] = []
    for same in (lambda x, y: x.operation == y.operation, lambda x, y: x.attention == y.attention,
                 lambda x, y: True):
        for edge in list(old):
            partner = next((other for other in new if same(edge, other)), None)
            if partner is not None:
                pairs.append((edge, partner))
                old.remove(edge)
                new.remove(partner)
    pairs.sort(key=lambda pair: before.index(pair[0]))
    return pairs, old, new


def _meta_changes(a: Genotype | Space, b: Genotype | Space) -> list[Change]:
    old = {entry.key: entry.value for entry in a.meta}
    new = {entry.key: entry.value for entry in b.meta}
    keys = [*old, *(key for key in new if key not in old)]
    return [Change("meta", node=key, before=_quoted(old.get(key)), after=_quoted(new.get(key)))
            for key in keys if old.get(key) != new.get(key)]


# ---------------------------------------------------------------------------------------------
# documents


def diff_documents(a: Document, b: Document, *, meta: bool = False) -> tuple[ItemDiff, ...]:
    """Pair the genotypes (and spaces) of two files by name and diff each pair.

    When each file holds exactly one genotype they are paired whatever their names.
    """
    result: list[ItemDiff] = []
    if len(a.genotypes) == 1 and len(b.genotypes) == 1:
        first, second = a.genotypes[0], b.genotypes[0]
        result.append(ItemDiff("genotype", first.name, second.name,
                               diff_genotypes(first, second, meta=meta)))
    else:
        result.extend(_paired("genotype", a.genotypes, b.genotypes,
                              lambda x, y: diff_genotypes(x, y, meta=meta)))
    if len(a.spaces) == 1 and len(b.spaces) == 1:
        first_space, second_space = a.spaces[0], b.spaces[0]
        result.append(ItemDiff("space", first_space.name, second_space.name,
                               tuple(diff_spaces(first_space, second_space, meta=meta))))
    else:
        result.extend(_paired("space", a.spaces, b.spaces,
                              lambda x, y: diff_spaces(x, y, meta=meta)))
    return tuple(result)


def _paired(kind, a_items, b_items, compare) -> list[ItemDiff]:
    a_named = {item.name: item for item in a_items}
    b_named = {item.name: item for item in b_items}
    names = [*a_named, *(name for name in b_named if name not in a_named)]
    diffs = []
    for name in names:
        if name not in b_named:
            diffs.append(ItemDiff(kind, name, None))
        elif name not in a_named:
            diffs.append(ItemDiff(kind, None, name))
        else:
            diffs.append(ItemDiff(kind, name, name, tuple(compare(a_named[name], b_named[name]))))
    return diffs


def diff_spaces(a: Space, b: Space, *, meta: bool = False) -> list[Change]:
    changes = _meta_changes(a, b) if meta else []
    for key in ("operations", "attentions", "nodes", "keep", "location", "mixing"):
        old, new = getattr(a, key), getattr(b, key)
        if old != new:
            changes.append(Change("space", node=key, before=_setting_text(key, old),
                                  after=_setting_text(key, new)))
    return changes + _method_changes(a, b) + _stage_changes(a, b)


def _stage_changes(a: Space, b: Space) -> list[Change]:
    """Stages (a progressive search) compared by position: one line per stage added, removed
    or with changed settings, e.g. `space stage 2: stage(layers=11) -> stage(layers=14)`."""
    changes = []
    for number in range(1, max(len(a.stages), len(b.stages)) + 1):
        before, after = (call_text(space.stages[number - 1].call())
                         if number <= len(space.stages) else None for space in (a, b))
        if before != after:
            changes.append(Change("space", node=f"stage {number}", before=before, after=after))
    return changes


def _method_changes(a: Space, b: Space) -> list[Change]:
    """Search methods added, removed or with changed settings (one line each), then a change of
    order alone (methods act in the order the space lists them)."""
    old = {call.name: call for call in a.methods}
    new = {call.name: call for call in b.methods}
    changes = []
    for name in [*old, *(name for name in new if name not in old)]:
        before, after = old.get(name), new.get(name)
        if before != after:
            changes.append(Change("space", node=f"method {name}",
                                  before=None if before is None else method_text(before),
                                  after=None if after is None else method_text(after)))
    kept = [name for name in old if name in new]
    if not changes and kept != [name for name in new if name in old]:
        changes.append(Change("space", node="methods", before=_methods_text(a.methods),
                              after=_methods_text(b.methods)))
    return changes


def is_same(diffs: Iterable[ItemDiff]) -> bool:
    return all(item.status == "same" for item in diffs)


# ---------------------------------------------------------------------------------------------
# text


def format_changes(changes: Iterable[Change], indent: str = "") -> str:
    return "".join(f"{indent}{change.text()}\n" for change in changes)


def format_text(diffs: Iterable[ItemDiff]) -> str:
    """Lines of changes; with several items (or one side missing), grouped under headers."""
    diffs = tuple(diffs)
    if len(diffs) == 1 and diffs[0].status in ("same", "changed"):
        return format_changes(diffs[0].changes)
    out = []
    for item in diffs:
        if item.status == "same":
            continue
        if item.status in ("added", "removed"):
            out.append(f"{item.kind} {item.a or item.b}: {item.status}\n")
            continue
        title = item.a if item.a == item.b else f"{item.a} -> {item.b}"
        out.append(f"{item.kind} {title}:\n")
        out.append(format_changes(item.changes, "    "))
    return "".join(out)


def format_json(diffs: Iterable[ItemDiff], a: str, b: str) -> str:
    diffs = tuple(diffs)
    payload = {"a": a, "b": b, "same": is_same(diffs), "items": [item.as_dict() for item in diffs]}
    return json.dumps(payload, indent=2) + "\n"


def edge_text(edge: Edge) -> str:
    """`operation>>attention` without the input (the input names the edge): `sep_conv_3x3>>cbam`."""
    text = call_text(edge.operation)
    return f"{text}>>{call_text(edge.attention)}" if edge.attention is not None else text


def node_text(node: Node) -> str:
    return " + ".join(_full_edge_text(edge) for edge in node.edges)


def _full_edge_text(edge: Edge) -> str:
    arguments = ", ".join([edge.input, *(f"{k}={_value(v)}" for k, v in edge.operation.kwargs)])
    text = f"{edge.operation.name}({arguments})"
    return f"{text}>>{call_text(edge.attention)}" if edge.attention is not None else text


def output_text(output: Output) -> str:
    text = "concat(" + ", ".join(output.nodes) + ")"
    return f"{text}>>{call_text(output.attention)}" if output.attention is not None else text


def call_text(call: Call) -> str:
    if not call.kwargs:
        return call.name
    return call.name + "(" + ", ".join(f"{k}={_value(v)}" for k, v in call.kwargs) + ")"


def method_text(call: Call) -> str:
    """A search method's call, its quantities as the space writes them (`macs=600M`)."""
    if not call.kwargs:
        return call.name
    return call.name + "(" + ", ".join(
        f"{k}={value_text(call.name, k, v) or _value(v)}" for k, v in call.kwargs) + ")"


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _setting_text(key: str, value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(call_text(call) for call in value) + "]"
    return str(value)


def _methods_text(calls: tuple[Call, ...]) -> str:
    return "[" + ", ".join(method_text(call) for call in calls) + "]"


def _quoted(text: str | None) -> str | None:
    return None if text is None else json.dumps(text, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Markdown (pull-request comments)


def format_markdown(diffs: Iterable[ItemDiff], a: str, b: str) -> str:
    """The diff for a pull-request comment: a title with the number of changes per cell, then a
    table of changes (cell, node, input, before, after) per compared item."""
    diffs = tuple(diffs)
    count = sum(len(item.changes) for item in diffs)
    lines = [f"### Genotype diff: `{a}` → `{b}`", ""]
    if is_same(diffs):
        return "\n".join(lines + ["No semantic difference (layout and comments never count)."]) + "\n"
    lines += [f"**{count} change{'' if count == 1 else 's'}**" + _per_cell(diffs), ""]
    for item in diffs:
        if item.status == "same":
            continue
        if item.status in ("added", "removed"):
            lines += [f"- {item.kind} `{item.a or item.b}`: {item.status}", ""]
            continue
        if len(diffs) > 1:
            title = item.a if item.a == item.b else f"{item.a} → {item.b}"
            lines += [f"#### {item.kind} `{title}`", ""]
        lines += ["| cell | node | input | before | after |", "|---|---|---|---|---|"]
        for change in item.changes:
            lines.append("| " + " | ".join((
                change.cell or change.kind, _markdown_cell(change.node),
                _markdown_cell(change.input), _code(change.before), _code(change.after))) + " |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _per_cell(diffs: tuple[ItemDiff, ...]) -> str:
    counts = {kind: sum(change.cell == kind for item in diffs for change in item.changes)
              for kind in CELL_KINDS}
    parts = [f"{kind}: {number}" for kind, number in counts.items() if number]
    return f" ({', '.join(parts)})" if parts else ""


def _markdown_cell(text: str | None) -> str:
    return "" if text is None else text.replace("|", "\\|")


def _code(text: str | None) -> str:
    return "–" if text is None else f"`{text.replace('|', '¦')}`"
