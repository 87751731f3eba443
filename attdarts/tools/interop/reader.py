"""The shared reader of foreign genotype files: problems with their locations, and one genotype,
cell, edge, operation, attention and concat read from `ast` nodes (Python and JSON alike).

The authors' attention names come from the catalog (`Entry.authors_name`): '' and 'Identity' mean
no attention, every other name the entry that carries it, with its `authors_kwargs`.
"""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

from attdarts.language import catalog
from attdarts.language.errors import DslError, Problem, Span, printable, suggest
from attdarts.language.ir import INPUTS, RESERVED, Call, Cell, Edge, Genotype, Meta, Node, Output

DARTS_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
ATT_DARTS_FIELDS = DARTS_FIELDS + ("normal_bottleneck", "reduce_bottleneck")

# the authors' spellings of "no attention" (their Cell builds no layer for '', 'Identity' pads)
NO_ATTENTION = ("", "Identity")
# other spellings a user may write for an authors' attention name, for 'did you mean'
_ATTENTION_ALIASES = {"a2": "DoubleAttention"}

BAM_NOTE = ("BAM as in the authors' code: bam(combine=product) multiplies the channel and spatial "
            "gates (the paper sums them)")

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
LITERAL_HINT = "attdarts reads genotype files without running them: write the value out literally"
INDEX_WORDS = "0 = c_k2, 1 = c_k1, j >= 2 = intermediate node j-2"


def attentions_in() -> dict[str, Call | None]:
    """The authors' attention names (their ATTN_PRIMITIVES, plus '' for none) -> DSL attention."""
    table: dict[str, Call | None] = dict.fromkeys(NO_ATTENTION)
    for entry in catalog.ATTENTIONS.values():
        if entry.authors_name and entry.authors_name not in NO_ATTENTION:
            table[entry.authors_name] = Call(name=entry.name, kwargs=entry.authors_kwargs)
    return table


def attentions_out() -> dict[str, str]:
    """DSL attention -> the authors' name (attentions they have; 'no attention' excluded)."""
    return {entry.name: entry.authors_name for entry in catalog.ATTENTIONS.values()
            if entry.authors_name and entry.authors_name not in NO_ATTENTION}


def default_name(path: str | None) -> str:
    """A genotype name made from a file name: `my-arch.json` -> `my_arch`, `genotype.json` (a DSL
    keyword) -> `imported_genotype`."""
    stem = Path(path).stem if path else ""
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem) or "imported"
    if name[0].isdigit():
        name = "g_" + name
    return "imported_" + name if name in RESERVED else name



class Reader:
    """Turns one foreign file into genotypes, collecting every problem with its location."""

    def __init__(self, text: str, path: str | None) -> None:
        self.text = text
        self.path = path
        self.label = printable(Path(path).name) if path else "<input>"
        self.lines = re.split(r"\r\n|\r|\n", text)
        self.problems: list[Problem] = []
        self.json_mode = False

    # -- locations ------------------------------------------------------------------------
    def fail(self, message: str, node: ast.AST | None = None, hint: str | None = None,
             span: Span | None = None) -> None:
        self.problems.append(Problem(message, span or self.span(node), hint))

    def span(self, node: ast.AST | None) -> Span | None:
        if node is None or getattr(node, "lineno", None) is None:
            return None
        end_line = getattr(node, "end_lineno", None)
        end_column = getattr(node, "end_col_offset", None)
        return Span(node.lineno, self._column(node.lineno, node.col_offset),
                    end_line, self._column(end_line, end_column) if end_line else None)

    def _column(self, line: int, byte_offset: int | None) -> int:
        """1-based character column of an ast byte offset (ast counts UTF-8 bytes)."""
        if byte_offset is None:
            return 1
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return len(text.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore")) + 1

    def parse(self, mode: str) -> ast.AST | None:
        what = "JSON" if mode == "eval" else "python"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences and the like
                return ast.parse(self.text, filename=self.label, mode=mode)
        except SyntaxError as error:
            line = max(1, error.lineno or 1)
            column = max(1, error.offset or 1)
            self.fail(f"invalid {what}: {error.msg}", span=Span(line, column),
                      hint="the file must be valid Python; it is read, never run" if mode == "exec" else None)
        except ValueError as error:  # NUL bytes (Python < 3.12)
            self.fail(f"invalid {what}: {error}")
        except (RecursionError, MemoryError):
            self.fail(f"invalid {what}: the file nests too deeply")
        return None

    def add_field(self, fields: dict[str, ast.AST], key: str, value: ast.AST, anchor: ast.AST) -> None:
        if key not in ATT_DARTS_FIELDS:
            self.fail(f"unknown genotype field '{key}'", anchor,
                      _suggest(key, ATT_DARTS_FIELDS) or "fields are " + ", ".join(ATT_DARTS_FIELDS))
        elif key in fields:
            self.fail(f"field '{key}' is given twice", anchor)
        else:
            fields[key] = value


    # -- one genotype (Python and JSON) -------------------------------------------------------
    def genotype(self, name: str, fields: dict[str, ast.AST], anchor: ast.AST,
                 source: str) -> Genotype | None:
        before = len(self.problems)
        if name in RESERVED or not IDENTIFIER.match(name):
            self.fail(f"'{printable(name)}' cannot name a genotype in the DSL", anchor,
                      "DSL names are ASCII letters, digits and '_', and not a DSL keyword: rename it")
        for key in DARTS_FIELDS:
            if key not in fields:
                self.fail(f"genotype '{name}' has no '{key}' field", anchor,
                          "a genotype needs " + ", ".join(DARTS_FIELDS))
        cells = {kind: self.cell(kind, fields[kind], fields.get(f"{kind}_concat"),
                                 fields.get(f"{kind}_bottleneck"))
                 for kind in ("normal", "reduce") if kind in fields}
        if len(self.problems) > before or None in cells.values():
            return None
        meta = [Meta(key="source", value=source)]
        if any(_uses_product_bam(cell) for cell in cells.values()):
            meta.append(Meta(key="note", value=BAM_NOTE))
        try:
            return Genotype(name=name, meta=tuple(meta), normal=cells["normal"], reduce=cells["reduce"])
        except DslError as error:  # pragma: no cover - the checks above come first
            self.problems.extend(Problem(p.message, self.span(anchor), p.hint) for p in error.problems)
            return None

    def cell(self, kind: str, edges_node: ast.AST, concat_node: ast.AST | None,
             bottleneck_node: ast.AST | None) -> Cell | None:
        """One cell from its edge list, concat and bottleneck (a missing concat is reported by
        the caller; the rest is still checked so that every problem is found)."""
        before = len(self.problems)
        groups = self._node_groups(kind, edges_node)
        if groups is None:
            return None
        nodes = []
        for position, (group_node, elements) in enumerate(groups):
            if not elements:
                self.fail(f"node n{position} of '{kind}' has no edges", group_node)
                continue
            edges = [self.edge(kind, element, position) for element in elements]
            if None not in edges:
                nodes.append(Node(name=f"n{position}", edges=tuple(edges)))
        concat = self.concat(f"{kind}_concat", concat_node, len(groups)) if concat_node else None
        attention = self.attention(bottleneck_node, f"{kind}_bottleneck") if bottleneck_node else None
        if len(self.problems) > before or concat is None:
            return None
        output = Output(nodes=concat, attention=attention)
        try:
            return Cell(kind=kind, nodes=tuple(nodes), output=output)
        except DslError as error:  # pragma: no cover - the checks above come first
            self.problems.extend(Problem(p.message, self.span(edges_node), p.hint) for p in error.problems)
            return None

    def _node_groups(self, kind: str, node: ast.AST) -> list[tuple[ast.AST, list[ast.AST]]] | None:
        """Edges grouped by node: pt.darts lists them per node, DARTS flat (edges 2n, 2n+1 -> node n)."""
        if not isinstance(node, (ast.List, ast.Tuple)):
            self.fail(f"'{kind}' must be a literal list of (operation, input) tuples, not {_describe(node)}",
                      node, LITERAL_HINT)
            return None
        elements = node.elts
        if not elements:
            self.fail(f"'{kind}' lists no edges", node)
            return None
        per_node = [_is_sequence(e) and bool(e.elts) and _is_sequence(e.elts[0]) for e in elements]
        if all(per_node):
            return [(element, list(element.elts)) for element in elements]
        if any(per_node):
            odd = elements[per_node.index(not per_node[0])]
            self.fail(f"'{kind}' mixes per-node lists (pt.darts) with single edges (DARTS)", odd,
                      "write every node as a list of its edges, or every edge on its own")
            return None
        if len(elements) % 2:
            self.fail(f"'{kind}' lists {len(elements)} edge{'s' if len(elements) != 1 else ''}, an odd number", node,
                      "DARTS's Genotype gives every node 2 edges (edges 2n and 2n+1 feed node n)")
            return None
        return [(elements[i], list(elements[i:i + 2])) for i in range(0, len(elements), 2)]

    def edge(self, kind: str, element: ast.AST, position: int) -> Edge | None:
        if not _is_sequence(element) or len(element.elts) not in (2, 3):
            self.fail(f"an edge of '{kind}' must be an (operation, input) or (operation, input, attention) "
                      f"tuple, not {_describe(element)}", element,
                      "e.g. ('sep_conv_3x3', 0) or ('sep_conv_3x3', 0, 'CBAM')")
            return None
        operation_node, index_node, *rest = element.elts
        before = len(self.problems)
        operation = self.operation(operation_node)
        index = _integer(index_node)
        if index is None:
            self.fail(f"an edge's input must be a whole number ({INDEX_WORDS}), not {_describe(index_node)}",
                      index_node)
        elif not 0 <= index < 2 + position:
            self.fail(f"input {index} of node n{position} of '{kind}' is out of range", index_node,
                      f"node n{position} reads 0..{position + 1} ({INDEX_WORDS}; only earlier nodes)")
        attention = self.attention(rest[0], "an edge's attention") if rest else None
        if len(self.problems) > before or operation is None:
            return None
        return Edge(operation=operation, input=_input_name(index), attention=attention)

    def operation(self, node: ast.AST) -> Call | None:
        text = _string(node)
        if text is None:
            self.fail(f"an operation must be a quoted name, not {_describe(node)}", node, LITERAL_HINT)
            return None
        if text in catalog.OPERATIONS:
            return Call(name=text)
        if text and (text in attentions_in() or text in catalog.ATTENTIONS):
            self.fail(f"'{printable(text)}' is an attention where an operation belongs", node,
                      "the authors' mixed_with_operation and double_mixed searches write such edges; "
                      "attdarts has no exact equivalent (skip_connect(...) >> attention differs at stride 2)")
            return None
        self.fail(f"unknown operation '{printable(text)}'", node,
                  _suggest(text, catalog.OPERATIONS) or "known operations: " + ", ".join(catalog.OPERATIONS))
        return None

    def attention(self, node: ast.AST, what: str) -> Call | None:
        """An authors' attention name -> DSL Call (None for '', 'Identity' and None / null)."""
        if _is_none(node, self.json_mode):
            return None
        text = _string(node)
        if text is None:
            self.fail(f"{what} must be a quoted name, not {_describe(node)}", node, LITERAL_HINT)
            return None
        known = attentions_in()
        if text in known:
            return known[text]
        if text in catalog.OPERATIONS:
            self.fail(f"'{text}' is an operation where an attention belongs", node,
                      "the authors' double_mixed search writes such edges; attdarts cannot express them")
            return None
        aliases = {entry.name: entry.authors_name for entry in catalog.ATTENTIONS.values()
                   if entry.authors_name}
        aliases.update(_ATTENTION_ALIASES)
        self.fail(f"unknown attention '{printable(text)}'", node,
                  _suggest(text, [n for n in known if n], aliases)
                  or "known attentions: " + ", ".join(f"'{n}'" for n in known))
        return None

    def concat(self, field: str, node: ast.AST, steps: int) -> tuple[str, ...] | None:
        values = self._indices(field, node)
        if values is None:
            return None
        if not values:
            self.fail(f"'{field}' is empty", node, "the output concatenates at least one node")
            return None
        names: list[str] = []
        seen: set[int] = set()
        for index, where in values:
            if not 2 <= index < 2 + steps:
                self.fail(f"'{field}' lists {index}, which is not an intermediate node", where,
                          f"intermediate nodes are {_span_text(2, steps + 1)} here ({INDEX_WORDS})")
            elif index in seen:
                self.fail(f"'{field}' lists node {index} twice", where)
            else:
                names.append(_input_name(index))
            seen.add(index)
        return tuple(names)

    def _indices(self, field: str, node: ast.AST) -> list[tuple[int, ast.AST]] | None:
        """A literal list of ints, `range(...)` or `list(range(...))`."""
        if _is_sequence(node):
            values = []
            for element in node.elts:
                value = _integer(element)
                if value is None:
                    self.fail(f"'{field}' must list whole numbers, not {_describe(element)}", element)
                    return None
                values.append((value, element))
            return values
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "list" \
                and len(node.args) == 1 and not node.keywords:
            return self._indices(field, node.args[0])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
                and 1 <= len(node.args) <= 3 and not node.keywords:
            bounds = [_integer(argument) for argument in node.args]
            if None not in bounds and (len(bounds) < 3 or bounds[2] != 0):
                numbers = range(*bounds)
                if numbers[:1001] == numbers and len(numbers) <= 1000:
                    return [(value, node) for value in numbers]
        self.fail(f"'{field}' must be a literal list of node indices or range(...), not {_describe(node)}",
                  node, LITERAL_HINT)
        return None


def _is_sequence(node: ast.AST) -> bool:
    return isinstance(node, (ast.List, ast.Tuple))


def _string(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _integer(node: ast.AST) -> int | None:
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return sign * node.value
    return None


def _is_none(node: ast.AST, json_mode: bool) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    return json_mode and isinstance(node, ast.Name) and node.id == "null"


def _describe(node: ast.AST) -> str:
    """How a value reads to a user, for 'expected X, not Y' messages."""
    if isinstance(node, ast.Call):
        callee = ast.unparse(node.func)
        return f"a call to '{printable(callee if len(callee) <= 40 else callee[:37] + '...')}'"
    if isinstance(node, ast.Name):
        return f"the name '{node.id}'"
    if isinstance(node, ast.Constant):
        shown = repr(node.value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        kinds = {str: "the string", int: "the number", float: "the number", bool: "the value",
                 type(None): "the value"}
        return f"{kinds.get(type(node.value), 'the constant')} {printable(shown)}"
    words = {ast.Dict: "a dict", ast.Set: "a set", ast.List: "a list", ast.Tuple: "a tuple",
             ast.ListComp: "a comprehension", ast.GeneratorExp: "a comprehension",
             ast.Lambda: "a lambda", ast.Attribute: "an attribute", ast.Subscript: "a subscript"}
    return words.get(type(node), "an expression")


def _span_text(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}..{high}"


def _input_name(index: int) -> str:
    return INPUTS[index] if index < 2 else f"n{index - 2}"


def _uses_product_bam(cell: Cell) -> bool:
    calls = [edge.attention for node in cell.nodes for edge in node.edges] + [cell.output.attention]
    return any(call is not None and call.name == "bam" and
               call.kwargs_dict().get("combine") == "product" for call in calls)



def _suggest(word: str, names, aliases: dict[str, str] | None = None) -> str | None:
    """'did you mean' among `names`, ignoring case; `aliases` maps other spellings to a name."""
    return suggest(word, names, aliases=aliases, ignore_case=True)
