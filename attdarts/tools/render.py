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
from pathlib import Path
from typing import Iterable

from attdarts.files import atomic_write_bytes
from attdarts.language import catalog
from attdarts.language.ir import CELL_KINDS, INPUTS, Call, Cell, Edge, Genotype

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

# Metadata key that marks a genotype derived from a search on random images and labels.
SYNTHETIC_KEY = "synthetic"

_NODE_NUMBER = re.compile(r"n(\d+)\Z")


class GraphvizMissing(RuntimeError):
    """The `dot` executable is not on PATH."""

    def __str__(self) -> str:
        return f"graphviz 'dot' was not found on PATH; {INSTALL_HINT}"


class RenderFailed(RuntimeError):
    """`dot` ran and failed."""


def genotype_dot(genotype: Genotype, cells: Iterable[str] = CELL_KINDS) -> str:
    """The DOT text of a genotype's cells, each a titled cluster, stacked top to bottom."""
    kinds = tuple(cells)
    for kind in kinds:
        if kind not in CELL_KINDS:
            raise ValueError(f"unknown cell kind '{kind}' (expected 'normal' or 'reduce')")
    lines = [
        f"// {genotype.name}: drawn by 'attdarts render' (Figure 4 style of Nakai et al. 2020)",
        f"digraph {_quote(genotype.name)} {{",
        '    graph [rankdir=LR, fontname="Times", fontsize=22, nodesep=0.25, ranksep=0.55,'
        ' pad=0.2, newrank=true];',
        '    node [shape=box, style="filled", fontname="Times", fontsize=20, penwidth=1.5,'
        ' height=0.5, width=0.5, margin="0.12,0.06"];',
        f'    edge [color="{EDGE_COLOR}", penwidth=1.2, arrowsize=0.7];',
    ]
    # Left to right, dot stacks clusters from the bottom up: emit the last one first so that
    # the normal cell ends up on top.
    for position, kind in enumerate(reversed(kinds)):
        if position:
            lines.append("")
        lines.extend(_cell_lines(genotype.cell(kind)))
    synthetic = genotype.meta_value(SYNTHETIC_KEY)
    if synthetic is not None:
        # last, so that no cluster inherits it; a search on random images says so on its drawing
        lines += ["", "    // the genotype was searched on synthetic data: say so on the drawing",
                  f"    labelloc=t; fontcolor=\"{ATTENTION_COLOR}\";",
                  f"    label=<<b>SYNTHETIC DATA: {_escape(synthetic)}</b>>;"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _cell_lines(cell: Cell) -> list[str]:
    kind = cell.kind
    inner = "        "
    lines = [
        f"    subgraph {_quote('cluster_' + kind)} {{",
        f"{inner}label=<<b>{CELL_TITLES[kind]}</b>>;",
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
        lines.append(f"{inner}subgraph {_quote(f'cluster_{kind}/{name}')} {{")
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
        lines.append(f"{inner}{_id(kind, edge.input)}:e -> {label}:w [arrowhead=none];")
        lines.append(f"{inner}{label}:e -> {_id(kind, node.name)}:w;")
    lines.append(f"{inner}// output: channel concatenation of the intermediate nodes")
    target = _id(kind, "c_k")
    if cell.output.attention is not None:
        box = _id(kind, "c_k/attention")
        lines.append(f"{inner}{box} [label=<<i>{_attention_text(cell.output.attention)}</i>>,"
                     f" {_OUTPUT_ATTENTION_STYLE}];")
        lines.append(f'{inner}{box} -> {target} [color="{CONCAT_COLOR}"];')
        target = box
    for name in cell.output.nodes:
        lines.append(f'{inner}{_id(kind, name)} -> {target} [color="{CONCAT_COLOR}"];')
    lines.append("    }")
    return lines


def _label_line(kind: str, node: str, position: int, edge: Edge) -> str:
    return f"{_id(kind, f'{node}/{position}')} [label=<{_edge_label(edge)}>, {_LABEL_STYLE}];"


_LABEL_STYLE = ('shape=plaintext, style="", fontname="Helvetica", fontsize=11, margin=0.02,'
                " height=0, width=0")
_OUTPUT_ATTENTION_STYLE = (
    f'shape=box, style="rounded,filled", fillcolor="{ATTENTION_FILL}", color="{ATTENTION_COLOR}",'
    f' fontcolor="{ATTENTION_COLOR}", fontname="Helvetica", fontsize=12, height=0.3'
)


def _edge_label(edge: Edge) -> str:
    """The operation, and under it the attention; a table keeps underscores off the second line."""
    rows = [_call_text(edge.operation)]
    if edge.attention is not None:
        rows.append(f'<font color="{ATTENTION_COLOR}"><i>{_attention_text(edge.attention)}</i></font>')
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


def _id(kind: str, name: str) -> str:
    return _quote(f"{kind}/{name}")


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
