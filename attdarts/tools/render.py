"""Genotype -> graphviz drawing, in the style of the paper's Figure 4 (Nakai et al., IJCNN 2020).

A cell is drawn left to right: the inputs c_{k-2} and c_{k-1} (green), the intermediate nodes
0, 1, 2, ... (blue) and the output c_{k} (yellow). Each edge is labelled with its operation and,
on a second line in red italics, its attention (nothing when the attention is the identity). An
attention on the concatenated output (locations `end` and `after_every_and_end`) is a small red
box between the intermediate nodes and c_{k}. Each input shares an invisible cluster with the
labels of its edges, so no wire of one input runs past the other. A genotype whose metadata has
a `synthetic` entry (a search on random data writes one) gets a red "SYNTHETIC DATA" title.

The DOT text is built here, line by line, from the IR alone: same genotype, same bytes, so
drawings can be committed and pinned by golden tests. Turning DOT into SVG, PNG or PDF needs the
graphviz `dot` executable; writing DOT does not. This module imports neither torch nor lark.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from attdarts.files import atomic_write_bytes
from attdarts.language import catalog
from attdarts.language.ir import CELL_KINDS, INPUTS, OUTPUT, Call, Cell, Edge, Genotype

CELL_TITLES = {"normal": "normal cell", "reduce": "reduction cell"}
FORMATS = ("dot", "svg", "png", "pdf")
PNG_DPI = 200  # dot's default (96) is too coarse for a slide or a paper

INSTALL_HINT = (
    "install graphviz to draw SVG, PNG or PDF: 'apt-get install graphviz' (Debian/Ubuntu), "
    "'brew install graphviz' (macOS) or 'conda install graphviz'"
)

# Figure 4 colours (those of DARTS's own visualisation), and one red for everything attention.
INPUT_FILL = "darkseagreen2"
NODE_FILL = "lightblue"
OUTPUT_FILL = "palegoldenrod"
ATTENTION_COLOR = "#b2182b"
ATTENTION_FILL = "#fbe3e1"
EDGE_COLOR = "#404040"
CONCAT_COLOR = "#909090"
NOTE_COLOR = "#505050"  # numbers under an edge's label (architecture weights, margins)

# Metadata key that marks a genotype derived from a search on random images and labels.
SYNTHETIC_KEY = "synthetic"

_NODE_NUMBER = re.compile(r"n(\d+)\Z")


class GraphvizMissing(RuntimeError):
    """The `dot` executable is not on PATH."""

    def __str__(self) -> str:
        return f"graphviz 'dot' was not found on PATH; {INSTALL_HINT}"


class RenderFailed(RuntimeError):
    """`dot` ran and failed."""


@dataclass(frozen=True)
class EdgeStyle:
    """How one edge (or the output attention) is drawn beyond the plain figure: line width,
    colour (#RRGGBB or #RRGGBBAA, the last two digits the opacity), extra rows under the label
    (`notes`, small and grey) and, with `highlight`, a bold label in `color`."""

    penwidth: float | None = None
    color: str | None = None
    notes: tuple[str, ...] = ()
    highlight: bool = False


# (cell kind, node name, position of the edge in the node); the output attention: (kind, "c_k", 0)
EdgeKey = tuple[str, str, int]
Styles = Mapping[EdgeKey, EdgeStyle]


def genotype_dot(genotype: Genotype, cells: Iterable[str] = CELL_KINDS, *,
                 styles: Styles | None = None, legend: str | None = None) -> str:
    """The DOT text of a genotype's cells, each a titled cluster, stacked top to bottom.

    `styles` draws chosen edges differently (`EdgeStyle`: architecture weights, a diff's
    highlights); `legend` is a line of text at the top saying what the styles mean.
    """
    kinds = _kinds(cells)
    lines = _header(genotype.name, "attdarts render")
    # Left to right, dot stacks clusters from the bottom up: emit the last one first so that
    # the normal cell ends up on top.
    for position, kind in enumerate(reversed(kinds)):
        if position:
            lines.append("")
        lines.extend(_cell_lines(genotype.cell(kind), styles=styles or {}))
    lines.extend(_title_lines(genotype.meta_value(SYNTHETIC_KEY), legend))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _kinds(cells: Iterable[str]) -> tuple[str, ...]:
    kinds = tuple(cells)
    for kind in kinds:
        if kind not in CELL_KINDS:
            raise ValueError(f"unknown cell kind '{kind}' (expected 'normal' or 'reduce')")
    return kinds


def _header(name: str, command: str) -> list[str]:
    return [
        f"// {name}: drawn by '{command}' (Figure 4 style of Nakai et al. 2020)",
        f"digraph {_quote(name)} {{",
        '    graph [rankdir=LR, fontname="Times", fontsize=22, nodesep=0.25, ranksep=0.55,'
        ' pad=0.2, newrank=true];',
        '    node [shape=box, style="filled", fontname="Times", fontsize=20, penwidth=1.5,'
        ' height=0.5, width=0.5, margin="0.12,0.06"];',
        f'    edge [color="{EDGE_COLOR}", penwidth=1.2, arrowsize=0.7];',
    ]


def _title_lines(synthetic: str | None, legend: str | None) -> list[str]:
    """The graph's title, last so that no cluster inherits it: a search on random images says
    so on its drawing; a legend says what widths and colours mean."""
    if synthetic is not None and legend is None:
        return ["", "    // the genotype was searched on synthetic data: say so on the drawing",
                f"    labelloc=t; fontcolor=\"{ATTENTION_COLOR}\";",
                f"    label=<<b>SYNTHETIC DATA: {_escape(synthetic)}</b>>;"]
    if legend is None:
        return []
    rows = []
    if synthetic is not None:
        rows.append(f'<font color="{ATTENTION_COLOR}"><b>SYNTHETIC DATA: '
                    f"{_escape(synthetic)}</b></font>")
    rows.append(f'<font point-size="14" color="{NOTE_COLOR}">{_escape(legend)}</font>')
    return ["", "    // what the widths and colours of this drawing mean",
            f"    labelloc=t; label=<{'<br/>'.join(rows)}>;"]


def _cell_lines(cell: Cell, *, styles: Styles, prefix: str = "", title: str | None = None
                ) -> list[str]:
    kind = cell.kind
    inner = "        "
    scope = prefix + kind  # cluster and node ids: "normal/n0", or "a/normal/n0" in a diff

    def _id(_: str, name: str) -> str:
        return _quote(f"{scope}/{name}")

    def _label_line(_: str, node: str, position: int, edge: Edge) -> str:
        style = styles.get((kind, node, position))
        return (f"{_id(kind, f'{node}/{position}')} [label=<{_edge_label(edge, style)}>, "
                f"{_LABEL_STYLE}];")

    lines = [
        f"    subgraph {_quote('cluster_' + scope)} {{",
        f"{inner}label=<<b>{_escape(title) if title else CELL_TITLES[kind]}</b>>;",
        f"{inner}labelloc=b; labeljust=c; peripheries=0; margin=12;",
    ]
    edges = [(node, position, edge) for node in cell.nodes for position, edge in enumerate(node.edges)]
    # An edge's label is a text node sitting on the wire (u -> label -> v): dot places ordinary
    # edge labels beside the line and, left to right, lets lines run through them.
    #
    # Each input shares an invisible cluster with the labels of its edges. dot never lets two
    # clusters overlap, so the wires of c_k2 cannot run down past c_k1 (or the other way round)
    # and read as edges of the other input (issue 11, item 21).
    lines.append(f"{inner}// inputs: the outputs of the two previous cells, each with the "
                 "labels of its edges")
    for name, subscript in zip(INPUTS, ("k−2", "k−1")):
        lines.append(f"{inner}subgraph {_quote(f'cluster_{scope}/{name}')} {{")
        lines.append(f'{inner}    label=""; peripheries=0; margin=2;')
        lines.append(f"{inner}    {_id(kind, name)} [label=<{_subscripted('c', subscript)}>,"
                     f' fillcolor="{INPUT_FILL}"];')
        for node, position, edge in edges:
            if edge.input == name:
                lines.append(f"{inner}    {_label_line(kind, node.name, position, edge)}")
        lines.append(f"{inner}}}")
    lines.append(f"{inner}{{ rank=same; {_id(kind, INPUTS[0])} -> {_id(kind, INPUTS[1])} [style=invis]; }}")
    lines.append(f"{inner}// intermediate nodes: each the sum of its incoming edges (Eq. 11)")
    for node in cell.nodes:
        lines.append(f"{inner}{_id(kind, node.name)} [label=<{_node_label(node.name)}>,"
                     f' fillcolor="{NODE_FILL}"];')
    lines.append(f"{inner}{{ rank=sink; {_id(kind, 'c_k')} [label=<{_subscripted('c', 'k')}>,"
                 f' fillcolor="{OUTPUT_FILL}"]; }}')
    lines.append(f"{inner}// edges: operation, then attention (Eq. 9-10), one label node each")
    for node, position, edge in edges:
        label = _id(kind, f"{node.name}/{position}")
        if edge.input not in INPUTS:
            lines.append(f"{inner}{_label_line(kind, node.name, position, edge)}")
        wire = _wire_attributes(styles.get((kind, node.name, position)))
        lines.append(f"{inner}{_id(kind, edge.input)}:e -> {label}:w [arrowhead=none{wire}];")
        lines.append(f"{inner}{label}:e -> {_id(kind, node.name)}:w{_bracketed(wire)};")
    lines.append(f"{inner}// output: channel concatenation of the intermediate nodes")
    target = _id(kind, "c_k")
    if cell.output.attention is not None:
        box = _id(kind, "c_k/attention")
        style = styles.get((kind, OUTPUT, 0))
        notes = "".join(f'<br/><font point-size="9" color="{NOTE_COLOR}">{_escape(note)}</font>'
                        for note in (style.notes if style else ()))
        extra = f", penwidth=3, color=\"{style.color}\"" if style and style.highlight else ""
        lines.append(f"{inner}{box} [label=<<i>{_attention_text(cell.output.attention)}</i>"
                     f"{notes}>, {_OUTPUT_ATTENTION_STYLE}{extra}];")
        lines.append(f'{inner}{box} -> {target} [color="{CONCAT_COLOR}"];')
        target = box
    for name in cell.output.nodes:
        lines.append(f'{inner}{_id(kind, name)} -> {target} [color="{CONCAT_COLOR}"];')
    lines.append("    }")
    return lines


def _wire_attributes(style: EdgeStyle | None) -> str:
    """", penwidth=..., color=..." for a styled edge's two wire segments ("" for a plain one)."""
    if style is None:
        return ""
    parts = []
    if style.penwidth is not None:
        parts.append(f"penwidth={style.penwidth:.2f}")
    if style.color is not None:
        parts.append(f'color="{style.color}"')
    return "".join(f", {part}" for part in parts)


def _bracketed(attributes: str) -> str:
    return f" [{attributes[2:]}]" if attributes else ""


_LABEL_STYLE = ('shape=plaintext, style="", fontname="Helvetica", fontsize=11, margin=0.02,'
                " height=0, width=0")
_OUTPUT_ATTENTION_STYLE = (
    f'shape=box, style="rounded,filled", fillcolor="{ATTENTION_FILL}", color="{ATTENTION_COLOR}",'
    f' fontcolor="{ATTENTION_COLOR}", fontname="Helvetica", fontsize=12, height=0.3'
)


def _edge_label(edge: Edge, style: EdgeStyle | None = None) -> str:
    """The operation, and under it the attention; a table keeps underscores off the second line.
    A style adds its notes underneath (small, grey) or, highlighted, makes the label bold."""
    rows = [_call_text(edge.operation)]
    if edge.attention is not None:
        rows.append(f'<font color="{ATTENTION_COLOR}"><i>{_attention_text(edge.attention)}</i></font>')
    if style is not None:
        if style.highlight:
            color = (style.color or ATTENTION_COLOR)[:7]
            rows = [f'<font color="{color}"><b>{row}</b></font>' for row in rows]
        rows += [f'<font point-size="9" color="{NOTE_COLOR}">{_escape(note)}</font>'
                 for note in style.notes]
    cells = "".join(f"<tr><td>{row}</td></tr>" for row in rows)
    return f'<table border="0" cellborder="0" cellspacing="1" cellpadding="0">{cells}</table>'


def _attention_text(call: Call) -> str:
    """The paper's name of the attention (Section III, Fig. 3: `Entry.label`), else the DSL's."""
    entry = catalog.ATTENTIONS.get(call.name)
    label = entry.label if entry is not None and entry.label else _escape(call.name)
    return label + _kwargs_text(call)


def _call_text(call: Call) -> str:
    return _escape(call.name) + _kwargs_text(call)


def _kwargs_text(call: Call) -> str:
    if not call.kwargs:
        return ""
    pairs = ", ".join(f"{key}={_escape(_value_text(value))}" for key, value in call.kwargs)
    return f'<font point-size="9">({pairs})</font>'


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if not isinstance(value, float) else repr(value)


def _node_label(name: str) -> str:
    """Figure 4 numbers the intermediate nodes 0, 1, ...: `n2` is drawn as 2, other names as is."""
    match = _NODE_NUMBER.match(name)
    return match.group(1) if match else _escape(name)


def _subscripted(base: str, subscript: str) -> str:
    return f"<i>{base}</i><sub><i>{subscript[0]}</i>{subscript[1:]}</sub>"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


# ---------------------------------------------------------------------------------------------
# DOT -> files


def output_format(path: Path) -> str:
    """The format a path asks for, from its suffix (.gv counts as DOT)."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix == "gv":
        return "dot"
    if suffix not in FORMATS:
        known = ", ".join("." + name for name in FORMATS)
        raise ValueError(f"cannot tell the format of '{path}' from its suffix (use {known})")
    return suffix


def dot_executable() -> str | None:
    return shutil.which("dot")


def run_dot(dot_text: str, fmt: str) -> bytes:
    """DOT text -> SVG / PNG / PDF bytes, with graphviz's `dot`."""
    executable = dot_executable()
    if executable is None:
        raise GraphvizMissing()
    command = [executable, f"-T{fmt}"]
    if fmt == "png":
        command.append(f"-Gdpi={PNG_DPI}")
    result = subprocess.run(command, input=dot_text.encode("utf-8"), capture_output=True,
                            check=False)
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip() or f"exit code {result.returncode}"
        raise RenderFailed(f"graphviz 'dot' failed: {message}")
    return result.stdout


def write_drawing(dot_text: str, path: Path) -> Path:
    """Write DOT text, or what `dot` makes of it, to `path` (format from the suffix).

    Raises GraphvizMissing (and writes nothing) when the format needs `dot` and it is absent.
    The file is written whole or not at all (temp file + rename).
    """
    fmt = output_format(path)
    data = dot_text.encode("utf-8") if fmt == "dot" else run_dot(dot_text, fmt)
    atomic_write_bytes(path, data)
    return path


# ---------------------------------------------------------------------------------------------
# architecture weights and diffs on the drawing

WEIGHT_LEGEND = ("line width: weight of the kept operation; faint: decided by less than {0:g}. "
                 "Under a label: the kept candidate's weight and its lead over the runner-up")
HIGHLIGHT_BEFORE = "#c0392b"  # what B no longer has (red)
HIGHLIGHT_AFTER = "#1a7f37"  # what B has instead (green)


def _signed(value: float) -> str:
    """A margin: +0.042, or +2.1e-04 for the tiny leads of a short search."""
    return f"{value:+.3f}" if abs(value) >= 0.0095 or value == 0 else f"{value:+.1e}"


def _opacity_color(base: str, opacity: float) -> str:
    return f"{base}{round(255 * min(1.0, max(0.0, opacity))):02x}"


def weight_styles(genotype: Genotype, decisiveness) -> dict[EdgeKey, EdgeStyle]:
    """Styles drawing the architecture weights on a genotype's edges (`language.decisiveness`):
    width 1 + 6 w pt for the kept operation's weight w, opacity from 25 % (margin 0) to 100 %
    (margin at least the threshold), and the weights and margins under the labels."""
    styles: dict[EdgeKey, EdgeStyle] = {}
    threshold = decisiveness.threshold
    for kind in CELL_KINDS:
        cell = genotype.cell(kind)
        keys = [(kind, node.name, position) for node in cell.nodes
                for position in range(len(node.edges))]
        decisions = [edge for edge in decisiveness.edges if edge.cell == kind]
        for key, decision in zip(keys, decisions):
            operation, attention = decision.operation, decision.attention
            notes = [f"α {operation.weight:.3f}, lead {_signed(operation.margin)}"]
            if attention is not None:
                notes.append(f"β {attention.weight:.3f}, lead {_signed(attention.margin)}")
            if decision.input_margin is not None:
                notes.append(f"input lead {_signed(decision.input_margin)}")
            share = decision.margin / threshold if threshold > 0 else 1.0
            opacity = 0.25 + 0.75 * min(1.0, max(0.0, share))  # a negative margin: 25 % too
            styles[key] = EdgeStyle(penwidth=1.0 + 6.0 * operation.weight,
                                    color=_opacity_color(EDGE_COLOR, opacity), notes=tuple(notes))
        output = decisiveness.outputs.get(kind)
        if output is not None and cell.output.attention is not None:
            styles[(kind, OUTPUT, 0)] = EdgeStyle(
                notes=(f"γ {output.weight:.3f}, lead {_signed(output.margin)}",))
    return styles


def diff_styles(a: Genotype, b: Genotype) -> tuple[dict[EdgeKey, EdgeStyle], dict[EdgeKey, EdgeStyle]]:
    """Highlights of what changed from `a` to `b`, as `tools.diff` pairs edges: in `a` the edges
    removed or changed (red), in `b` those added or changed (green); a changed output attention
    too. Nodes are matched by name, a node's edges by input."""
    from attdarts.tools.diff import pair_edges

    before: dict[EdgeKey, EdgeStyle] = {}
    after: dict[EdgeKey, EdgeStyle] = {}
    red = EdgeStyle(penwidth=3.0, color=HIGHLIGHT_BEFORE, highlight=True)
    green = EdgeStyle(penwidth=3.0, color=HIGHLIGHT_AFTER, highlight=True)
    for kind in CELL_KINDS:
        old_cell, new_cell = a.cell(kind), b.cell(kind)
        old_nodes = {node.name: node for node in old_cell.nodes}
        new_nodes = {node.name: node for node in new_cell.nodes}
        for name in {*old_nodes, *new_nodes}:
            old = old_nodes[name].edges if name in old_nodes else ()
            new = new_nodes[name].edges if name in new_nodes else ()
            for source in {edge.input for edge in (*old, *new)}:
                mine = [(i, edge) for i, edge in enumerate(old) if edge.input == source]
                theirs = [(i, edge) for i, edge in enumerate(new) if edge.input == source]
                pairs, removed, added = pair_edges([e for _, e in mine], [e for _, e in theirs])
                for edge in [old_edge for old_edge, _ in pairs] + removed:
                    before[(kind, name, _take(mine, edge))] = red
                for edge in [new_edge for _, new_edge in pairs] + added:
                    after[(kind, name, _take(theirs, edge))] = green
        if old_cell.output.attention != new_cell.output.attention:
            if old_cell.output.attention is not None:
                before[(kind, OUTPUT, 0)] = red
            if new_cell.output.attention is not None:
                after[(kind, OUTPUT, 0)] = green
    return before, after


def _take(positions: list[tuple[int, Edge]], edge: Edge) -> int:
    """The position of the first edge equal to `edge`, removed from `positions` (a node may read
    one input twice with the same edge)."""
    for index, (position, candidate) in enumerate(positions):
        if candidate == edge:
            del positions[index]
            return position
    raise ValueError("edge not found")  # pair_edges only returns edges it was given


def diff_dot(a: Genotype, b: Genotype, cells: Iterable[str] = CELL_KINDS, *,
             titles: tuple[str, str] = ("A", "B")) -> str:
    """Both genotypes' cells side by side, A left and B right, one row per cell kind, the edges
    that differ highlighted (`diff_styles`): red in A, green in B."""
    kinds = _kinds(cells)
    before, after = diff_styles(a, b)
    lines = _header(f"{a.name} vs {b.name}", "attdarts diff --render")
    for position, kind in enumerate(reversed(kinds)):
        if position:
            lines.append("")
        for prefix, genotype, styles, title in (("a/", a, before, titles[0]),
                                                ("b/", b, after, titles[1])):
            lines.extend(_cell_lines(genotype.cell(kind), styles=styles, prefix=prefix,
                                     title=f"{title}: {CELL_TITLES[kind]}"))
        # B's cell to the right of A's: its inputs come after A's output
        lines.append(f"    {_quote(f'a/{kind}/{OUTPUT}')} -> {_quote(f'b/{kind}/{INPUTS[0]}')}"
                     " [style=invis, minlen=2];")
        lines.append(f"    {_quote(f'a/{kind}/{OUTPUT}')} -> {_quote(f'b/{kind}/{INPUTS[1]}')}"
                     " [style=invis, minlen=2];")
    legend = (f"{titles[0]} (left) -> {titles[1]} (right): red, what {titles[1]} no longer has; "
              "green, what it has instead")
    synthetic = a.meta_value(SYNTHETIC_KEY) or b.meta_value(SYNTHETIC_KEY)
    lines.extend(_title_lines(synthetic, legend))
    lines.append("}")
    return "\n".join(lines) + "\n"
