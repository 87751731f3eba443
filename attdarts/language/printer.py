"""IR -> canonical DSL text. Pure and deterministic; `parse(format(x)) == x` for every document.

Layout: 4-space indents, one statement (setting, node, output) per line, a blank line between
top-level items and between a genotype's metadata and its cells, no trailing spaces, one final
newline. Comments are kept: whole-line comments above their statement, end-of-line comments after
it, comments before a closing brace just above it.
"""

from __future__ import annotations

import re

from attdarts.language.errors import DslError
from attdarts.language.methods import value_text
from attdarts.language.ir import NO_COMMENTS, Call, Cell, Comments, Document, Edge, Genotype, Meta, Node, Output, Space, Value

INDENT = "    "
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def format_document(document: Document) -> str:
    blocks = [_item(item) for item in document.items]
    text = "\n\n".join(blocks)
    tail = _comment_lines(document.closing.leading, 0)
    if tail:
        text = text + ("\n\n" if text else "") + "\n".join(tail)
    return text + "\n" if text else ""


def format_genotype(genotype: Genotype) -> str:
    return format_document(Document(items=(genotype,)))


def format_space(space: Space) -> str:
    return format_document(Document(items=(space,)))


def format_checked(item: Document | Genotype | Space, *, what: str = "the genotypes") -> str:
    """`item` as DSL text, refused unless the text parses back to the same IR (black's rule:
    a printer bug must never reach a file). Raises DslError, naming `what`, when it does not."""
    from attdarts.language.transform import parse_text  # the transform does not import the printer

    if isinstance(item, Document):
        text = format_document(item)
    else:
        text = format_document(Document(items=(item,)))
    try:
        document = parse_text(text)
        if isinstance(item, Genotype):
            same = document.genotype() == item
        elif isinstance(item, Space):
            same = document.space() == item
        else:
            same = document == item
    except DslError:
        same = False
    if not same:
        raise DslError.single(f"internal error: {what} do not print back the same; nothing was "
                              "written", None, "please report this with the input file")
    return text


def _item(item: Genotype | Space) -> str:
    return "\n".join(_genotype(item) if isinstance(item, Genotype) else _space(item))


def _comment_lines(comments: tuple[str, ...], depth: int) -> list[str]:
    return [INDENT * depth + comment for comment in comments]


def _with_trailing(line: str, comments: Comments) -> str:
    return f"{line}  {comments.trailing}" if comments.trailing else line


def _block(header: str, comments: Comments, closing: Comments, depth: int, body: list[str]) -> list[str]:
    lines = _comment_lines(comments.leading, depth)
    lines.append(_with_trailing(INDENT * depth + header + " {", comments))
    lines.extend(body)
    lines.extend(_comment_lines(closing.leading, depth + 1))
    lines.append(_with_trailing(INDENT * depth + "}", Comments(trailing=closing.trailing)))
    return lines


def _genotype(genotype: Genotype) -> list[str]:
    body: list[str] = [line for meta in genotype.meta for line in _meta(meta, 1)]
    for cell in (genotype.normal, genotype.reduce):
        if body:
            body.append("")
        body.extend(_cell(cell))
    return _block(f"genotype {genotype.name}", genotype.comments, genotype.closing, 0, body)


def _meta(meta: Meta, depth: int) -> list[str]:
    return _statement(f"{meta.key} = {quote(meta.value)}", meta.comments, depth)


def _statement(text: str, comments: Comments, depth: int) -> list[str]:
    return _comment_lines(comments.leading, depth) + [_with_trailing(INDENT * depth + text, comments)]


def cell_lines(cell: Cell) -> list[str]:
    """The statements of a cell's body (nodes, then the output) without indentation, e.g.
    ['n0 = sep_conv_3x3(c_k2) >> cbam + sep_conv_3x3(c_k1)', ..., 'c_k = concat(n0, n1)']."""
    return _cell_body(cell, 0)


def _cell(cell: Cell) -> list[str]:
    return _block(cell.kind, cell.comments, cell.closing, 1, _cell_body(cell, 2))


def _cell_body(cell: Cell, depth: int) -> list[str]:
    body = [line for node in cell.nodes for line in _node(node, depth)]
    body.extend(_output(cell.output, depth))
    return body


def _node(node: Node, depth: int) -> list[str]:
    edges = " + ".join(_edge(edge) for edge in node.edges)
    return _statement(f"{node.name} = {edges}", node.comments, depth)


def _edge(edge: Edge) -> str:
    arguments = ", ".join([edge.input, *(_kwarg(k, v) for k, v in edge.operation.kwargs)])
    text = f"{edge.operation.name}({arguments})"
    if edge.attention is not None:
        text += " >> " + _call(edge.attention)
    return text


def _output(output: Output, depth: int) -> list[str]:
    text = "c_k = concat(" + ", ".join(output.nodes) + ")"
    if output.attention is not None:
        text += " >> " + _call(output.attention)
    return _statement(text, output.comments, depth)


def format_call(call: Call) -> str:
    """An operation or attention as the DSL writes it: `sep_conv_3x3`, `bam(combine=product)`."""
    return _call(call)


def _call(call: Call) -> str:
    if not call.kwargs:
        return call.name
    return call.name + "(" + ", ".join(_kwarg(k, v) for k, v in call.kwargs) + ")"


def _kwarg(key: str, value: Value) -> str:
    return f"{key}={_value(value)}"


def _method(call: Call) -> str:
    """A search method's call: its quantities as written (`budget(macs=600M, ...)`)."""
    if not call.kwargs:
        return call.name
    return call.name + "(" + ", ".join(
        f"{key}={value_text(call.name, key, value) or _value(value)}"
        for key, value in call.kwargs) + ")"


def _value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return value if _IDENTIFIER.match(value) else quote(value)


def quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return '"' + escaped + '"'


METHODS_WIDTH = 100  # a longer `methods = [...]` line is written one call per line
_SPACE_ORDER = ("operations", "attentions", "nodes", "keep", "location", "mixing")


def _space(space: Space) -> list[str]:
    body: list[str] = [line for meta in space.meta for line in _meta(meta, 1)]
    if body:
        body.append("")
    values = {
        "operations": "[" + ", ".join(_call(c) for c in space.operations) + "]",
        "attentions": "[" + ", ".join(_call(c) for c in space.attentions) + "]",
        "nodes": str(space.nodes),
        "keep": str(space.keep),
        "location": space.location,
        "mixing": space.mixing,
    }
    for key in _SPACE_ORDER:
        if key == "attentions" and not space.attentions:
            continue
        body.extend(_statement(f"{key} = {values[key]}", space.comments_for(key), 1))
    # search methods, one call each (written also when empty, to keep a comment); one call per
    # line when they do not fit on one
    if space.methods or space.comments_for("methods") != NO_COMMENTS:
        comments = space.comments_for("methods")
        calls = [_method(call) for call in space.methods]
        line = f"methods = [{', '.join(calls)}]"
        if len(INDENT + line) <= METHODS_WIDTH:
            body.extend(_statement(line, comments, 1))
        else:
            body.extend(_comment_lines(comments.leading, 1))
            body.append(INDENT + "methods = [")
            body.extend(f"{INDENT * 2}{call}," for call in calls)
            body.append(_with_trailing(INDENT + "]", comments))
    # search stages: always one per line, in order (`stages = []` only to keep a comment)
    comments = space.comments_for("stages")
    if space.stages:
        body.extend(_comment_lines(comments.leading, 1))
        body.append(INDENT + "stages = [")
        body.extend(f"{INDENT * 2}{_call(stage.call())}," for stage in space.stages)
        body.append(_with_trailing(INDENT + "]", comments))
    elif comments != NO_COMMENTS:
        body.extend(_statement("stages = []", comments, 1))
    return _block(f"space {space.name}", space.comments, space.closing, 0, body)
