"""Genotypes in and out of the file formats that DARTS-family code writes.

Import reads, and never runs, these formats (Python through `ast`, never `eval`):

- DARTS's `genotypes.py`: named `Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3,
  4, 5], reduce=[...], reduce_concat=range(2, 6))` assignments, keyword or positional arguments
  (in the field order of a `namedtuple('Genotype', ...)` in the file, if there is one); imports,
  `namedtuple` definitions, candidate lists and every other statement are skipped;
- the Att-DARTS authors' 3-tuples `('sep_conv_3x3', 0, 'CBAM')` with `normal_bottleneck` /
  `reduce_bottleneck` (an attention on the concatenated output, '' for none), and the
  `genotype.json` their search writes (the same fields, lists instead of tuples);
- pt.darts's per-node lists `normal=[[('sep_conv_3x3', 1), ('sep_conv_3x3', 0)], ...]`;
- NAS-Bench-201 strings `|skip_connect~0|+|none~0|avg_pool_3x3~1|+...|` (another cell space, see
  `_Reader.nb201`).

Export writes DARTS's 2-tuples (`darts-py`) or the authors' 3-tuples (`att-darts-py`,
`att-darts-json`). Both use DARTS's numbering: 0 = c_{k-2}, 1 = c_{k-1}, j >= 2 = intermediate
node j-2, and edges 2n and 2n+1 feed node n, so only nodes with exactly two edges can be written.

Two choices keep the conversions faithful to the authors' code (REFERENCE.md):

- Their BAM combines its channel and spatial gates by product (the paper sums them), so 'BAM'
  imports as `bam(combine=product)`. Export writes `bam` with either combine as 'BAM'.
- Their Cell builds an attention layer only for a non-empty name and then indexes the layers by
  edge, so a cell names an attention on every edge or on none. An edge without attention is
  therefore written 'Identity' when another edge of its cell has one, and '' otherwise.
"""

from __future__ import annotations

import ast
import difflib
import json
import keyword
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from attdarts.files import read_source
from attdarts.language import catalog
from attdarts.language.errors import DslError, Problem, Span, by_position, printable
from attdarts.language.ir import INPUTS, RESERVED, Call, Cell, Document, Edge, Genotype, Meta, Node, Output

IMPORT_FORMATS = ("auto", "python", "json", "nb201")
EXPORT_FORMATS = ("darts-py", "att-darts-py", "att-darts-json")

DARTS_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
ATT_DARTS_FIELDS = DARTS_FIELDS + ("normal_bottleneck", "reduce_bottleneck")

# The authors' attention names (their ATTN_PRIMITIVES, plus '' for none) -> DSL attention.
ATTENTIONS_IN: dict[str, Call | None] = {
    "": None,
    "Identity": None,
    "SE": Call(name="se"),
    "BAM": Call(name="bam", kwargs=(("combine", "product"),)),
    "CBAM": Call(name="cbam"),
    "GE_theta-plus": Call(name="ge_theta_plus"),
    "DoubleAttention": Call(name="double_attention"),
}
ATTENTIONS_OUT = {
    "se": "SE", "bam": "BAM", "cbam": "CBAM", "ge_theta_plus": "GE_theta-plus",
    "double_attention": "DoubleAttention",
}
# Keyword arguments an export may drop: the authors' BAM has no switch, so both combines are 'BAM'.
_DROPPABLE_KWARGS = {"bam": frozenset({"combine"})}

NB201_OPERATIONS = {"none": "none", "skip_connect": "skip_connect", "avg_pool_3x3": "avg_pool_3x3"}
NB201_UNSUPPORTED = ("nor_conv_3x3", "nor_conv_1x1")

BAM_NOTE = ("BAM as in the authors' code: bam(combine=product) multiplies the channel and spatial "
            "gates (the paper sums them)")
NB201_NOTE = ("NAS-Bench-201 cell: its single input (node 0) is c_k1 here and c_k2 is unused; its "
              "nodes 1, 2, ... are n0, n1, ...; the output is its last node alone; the same cell "
              "serves as normal and reduce cell (NAS-Bench-201 reduces with fixed residual blocks)")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LITERAL_HINT = "attdarts reads genotype files without running them: write the value out literally"
_INDEX_WORDS = "0 = c_k2, 1 = c_k1, j >= 2 = intermediate node j-2"


# ---------------------------------------------------------------------------------------------
# Import


def import_file(path: str | Path, *, format: str = "auto", name: str | None = None) -> Document:
    """Read a DARTS-family genotype file into a Document (see `import_text`)."""
    return import_text(read_source(path), str(path), format=format, name=name)


def import_text(text: str, path: str | None = None, *, format: str = "auto",
                name: str | None = None) -> Document:
    """Convert a foreign genotype file into a Document of genotypes, in file order.

    `format` is `python` (DARTS, Att-DARTS and pt.darts `Genotype(...)` literals), `json` (the
    authors' genotype.json), `nb201` (NAS-Bench-201 strings) or `auto` (decided by the file name
    and its first character). `name` picks one genotype of a file of named genotypes (an alias such
    as `DARTS = DARTS_V2` works too); for an unnamed one (JSON, NB201, a bare `Genotype(...)`)
    it is the name to give it, by default the file name. Every problem found is reported at once.
    """
    if format not in IMPORT_FORMATS:
        raise DslError.single(f"unknown import format '{format}'", None,
                              "formats are " + ", ".join(IMPORT_FORMATS))
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = _Reader(text, path)
    if name is not None and not _IDENTIFIER.match(name):
        raise DslError.single(f"'{printable(name)}' cannot name a genotype", None,
                              "names are letters, digits and '_', not starting with a digit")
    chosen = _detect(text, path) if format == "auto" else format
    if chosen == "nb201":
        genotypes = reader.nb201(name)
    elif chosen == "json":
        genotypes = reader.json(name)
    else:
        genotypes = reader.python(name)
    if reader.problems:
        problems = sorted(reader.problems, key=by_position)
        raise DslError(problems, path, text)
    return Document(items=tuple(genotypes))


def _detect(text: str, path: str | None) -> str:
    if path is not None and Path(path).suffix.lower() == ".json":
        return "json"
    first = text.lstrip()[:1]
    if first in ("{", "["):
        return "json"
    if first == "|":
        return "nb201"
    return "python"


def default_name(path: str | None) -> str:
    """A genotype name made from a file name: `my-arch.json` -> `my_arch`, `genotype.json` (a DSL
    keyword) -> `imported_genotype`."""
    stem = Path(path).stem if path else ""
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem) or "imported"
    if name[0].isdigit():
        name = "g_" + name
    return "imported_" + name if name in RESERVED else name


@dataclass
class _Entry:
    """A `Genotype(...)` call found in a Python file, under the name it is assigned to (or None)."""

    name: str | None
    call: ast.Call
    order: tuple[str, ...]


class _Reader:
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

    # -- Python -----------------------------------------------------------------------------
    def python(self, name: str | None) -> list[Genotype]:
        tree = self._parse(mode="exec")
        if tree is None:
            return []
        order_of = {"Genotype": ATT_DARTS_FIELDS}  # the authors' field order extends DARTS's
        entries: list[_Entry] = []
        aliases: dict[str, str] = {}
        for statement in tree.body:
            target, value = _assignment(statement)
            if isinstance(value, ast.Name) and target and any(e.name == value.id for e in entries):
                aliases[target] = value.id
                continue
            if not isinstance(value, ast.Call):
                continue
            fields = _namedtuple_fields(value)
            if fields is not None:
                if target and {"normal", "reduce"} <= set(fields):
                    order_of[target] = fields
                continue
            callee = _callee(value)
            if callee in order_of:
                entries.append(_Entry(target, value, order_of[callee]))
        if not entries:
            self.fail("no genotype found in the file", None,
                      "expected assignments like NAME = Genotype(normal=[...], normal_concat=[...], "
                      "reduce=[...], reduce_concat=[...])")
            return []
        named = {entry.name: entry for entry in entries if entry.name}  # a later assignment wins
        unnamed = [entry for entry in entries if not entry.name]
        if name is not None and named:
            entry = named.get(name) or named.get(aliases.get(name, ""))
            if entry is None:
                known = list(named) + list(aliases)
                self.fail(f"no genotype named '{name}' in the file", None,
                          _suggest(name, known) or "it has " + ", ".join(f"'{n}'" for n in known))
                return []
            chosen = [(name, entry)]
        else:
            base = name or default_name(self.path)
            numbered = [f"{base}_{i + 1}" for i in range(len(unnamed))] if len(unnamed) > 1 else [base]
            names = iter(numbered)
            chosen = [(entry.name or next(names), entry) for entry in entries
                      if not entry.name or named[entry.name] is entry]
        genotypes = []
        for genotype_name, entry in chosen:
            fields = self._call_fields(entry.call, entry.order)
            source = f"imported from {self.label}" + (f":{entry.name}" if entry.name else "")
            genotype = self.genotype(genotype_name, fields, entry.call.func, source)
            if genotype is not None:
                genotypes.append(genotype)
        return genotypes

    def _parse(self, mode: str) -> ast.AST | None:
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

    def _call_fields(self, call: ast.Call, order: tuple[str, ...]) -> dict[str, ast.AST]:
        """Field name -> value node; problems (unknown fields, '**kwargs') are recorded, not fatal."""
        fields: dict[str, ast.AST] = {}
        for position, argument in enumerate(call.args):
            if isinstance(argument, ast.Starred):
                self.fail("'*' arguments are not read", argument, _LITERAL_HINT)
            elif position >= len(order):
                self.fail(f"too many positional arguments: a genotype has {len(order)} fields "
                          f"({', '.join(order)})", argument)
            else:
                self._add_field(fields, order[position], argument, argument)
        for argument in call.keywords:
            if argument.arg is None:
                self.fail("'**' arguments are not read", argument.value, _LITERAL_HINT)
            else:
                self._add_field(fields, argument.arg, argument.value, argument)
        return fields

    def _add_field(self, fields: dict[str, ast.AST], key: str, value: ast.AST, anchor: ast.AST) -> None:
        if key not in ATT_DARTS_FIELDS:
            self.fail(f"unknown genotype field '{key}'", anchor,
                      _suggest(key, ATT_DARTS_FIELDS) or "fields are " + ", ".join(ATT_DARTS_FIELDS))
        elif key in fields:
            self.fail(f"field '{key}' is given twice", anchor)
        else:
            fields[key] = value

    # -- JSON -------------------------------------------------------------------------------
    def json(self, name: str | None) -> list[Genotype]:
        self.json_mode = True
        try:
            json.loads(self.text)
        except json.JSONDecodeError as error:
            message = error.msg[:1].lower() + error.msg[1:]
            self.fail(f"invalid JSON: {message}", span=Span(error.lineno, error.colno))
            return []
        except RecursionError:
            self.fail("invalid JSON: the file nests too deeply")
            return []
        tree = self._parse(mode="eval")  # JSON is a Python expression: ast gives the locations
        if tree is None:
            return []
        body = tree.body
        if not isinstance(body, ast.Dict):
            self.fail(f"expected a JSON object with the genotype's fields, found {_describe(body)}", body,
                      "genotype.json holds {\"normal\": [...], \"normal_concat\": [...], "
                      "\"reduce\": [...], \"reduce_concat\": [...], ...}")
            return []
        fields: dict[str, ast.AST] = {}
        for key, value in zip(body.keys, body.values):
            self._add_field(fields, key.value if isinstance(key, ast.Constant) else "", value, key)
        genotype = self.genotype(name or default_name(self.path), fields, body,
                                 f"imported from {self.label}")
        return [genotype] if genotype is not None else []

    # -- one genotype (Python and JSON) -------------------------------------------------------
    def genotype(self, name: str, fields: dict[str, ast.AST], anchor: ast.AST,
                 source: str) -> Genotype | None:
        before = len(self.problems)
        if name in RESERVED or not _IDENTIFIER.match(name):
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
                      node, _LITERAL_HINT)
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
            self.fail(f"an edge's input must be a whole number ({_INDEX_WORDS}), not {_describe(index_node)}",
                      index_node)
        elif not 0 <= index < 2 + position:
            self.fail(f"input {index} of node n{position} of '{kind}' is out of range", index_node,
                      f"node n{position} reads 0..{position + 1} ({_INDEX_WORDS}; only earlier nodes)")
        attention = self.attention(rest[0], "an edge's attention") if rest else None
        if len(self.problems) > before or operation is None:
            return None
        return Edge(operation=operation, input=_input_name(index), attention=attention)

    def operation(self, node: ast.AST) -> Call | None:
        text = _string(node)
        if text is None:
            self.fail(f"an operation must be a quoted name, not {_describe(node)}", node, _LITERAL_HINT)
            return None
        if text in catalog.OPERATIONS:
            return Call(name=text)
        if text and (text in ATTENTIONS_IN or text in catalog.ATTENTIONS):
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
            self.fail(f"{what} must be a quoted name, not {_describe(node)}", node, _LITERAL_HINT)
            return None
        if text in ATTENTIONS_IN:
            return ATTENTIONS_IN[text]
        if text in catalog.OPERATIONS:
            self.fail(f"'{text}' is an operation where an attention belongs", node,
                      "the authors' double_mixed search writes such edges; attdarts cannot express them")
            return None
        aliases = {dsl: authors for dsl, authors in ATTENTIONS_OUT.items()}
        aliases.update({"identity": "Identity", "a2": "DoubleAttention"})
        self.fail(f"unknown attention '{printable(text)}'", node,
                  _suggest(text, [n for n in ATTENTIONS_IN if n], aliases)
                  or "known attentions: " + ", ".join(f"'{n}'" for n in ATTENTIONS_IN))
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
                          f"intermediate nodes are {_span_text(2, steps + 1)} here ({_INDEX_WORDS})")
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
                  node, _LITERAL_HINT)
        return None

    # -- NAS-Bench-201 ------------------------------------------------------------------------
    def nb201(self, name: str | None) -> list[Genotype]:
        """NAS-Bench-201 strings, one per line: `|op~i|+|op~i|op~j|+...`, node k reading nodes < k.

        NB201 cells have a single input (node 0), which becomes c_k1; c_k2 is unused. NB201 node
        k >= 1 becomes n{k-1}, and the output is the last node alone. The same cell serves as normal
        and reduce cell, which the `note` says. Its ReLU-conv-BN operations (nor_conv_3x3,
        nor_conv_1x1) have no counterpart among attdarts' operations and are refused.
        """
        rows = [(number, line) for number, line in enumerate(self.lines, start=1)
                if line.strip() and not line.strip().startswith("#")]
        if not rows:
            self.fail("the file holds no NAS-Bench-201 string", None,
                      "expected e.g. |skip_connect~0|+|none~0|avg_pool_3x3~1|")
            return []
        base = name or default_name(self.path)
        names = [base] if len(rows) == 1 else [f"{base}_{i}" for i in range(1, len(rows) + 1)]
        genotypes = []
        for (number, line), genotype_name in zip(rows, names):
            nodes = self._nb201_nodes(number, line)
            if nodes is None:
                continue
            output = Output(nodes=(nodes[-1].name,))
            meta = (Meta(key="source", value=f"imported from {self.label} (NAS-Bench-201)"),
                    Meta(key="note", value=NB201_NOTE))
            genotypes.append(Genotype(
                name=genotype_name, meta=meta,
                normal=Cell(kind="normal", nodes=nodes, output=output),
                reduce=Cell(kind="reduce", nodes=nodes, output=output)))
        return genotypes

    def _nb201_nodes(self, number: int, line: str) -> tuple[Node, ...] | None:
        before = len(self.problems)
        example = "NAS-Bench-201 strings look like |skip_connect~0|+|none~0|avg_pool_3x3~1|"
        offset = len(line) - len(line.lstrip())  # 0-based column of the current part
        nodes = []
        for position, part in enumerate(line.strip().split("+")):
            column = offset + 1
            offset += len(part) + 1
            if len(part) < 2 or part[0] != "|" or part[-1] != "|":
                self.fail(f"expected a node '|operation~input|...|', found '{printable(part)}'",
                          span=Span(number, column, number, column + max(1, len(part))), hint=example)
                continue
            edges = []
            entry_offset = column  # the entry starts after the '|'
            for entry in part[1:-1].split("|"):
                start = entry_offset + 1
                entry_offset += len(entry) + 1
                edge = self._nb201_edge(entry, position, Span(number, start, number, start + max(1, len(entry))))
                if edge is not None:
                    edges.append(edge)
            if len(self.problems) == before:
                nodes.append(Node(name=f"n{position}", edges=tuple(edges)))
        return tuple(nodes) if len(self.problems) == before else None

    def _nb201_edge(self, entry: str, position: int, span: Span) -> Edge | None:
        operation, tilde, index_text = entry.partition("~")
        if not tilde or not re.fullmatch(r"[0-9]+", index_text):
            self.fail(f"expected 'operation~input', found '{printable(entry)}'", span=span,
                      hint="e.g. skip_connect~0")
            return None
        index = int(index_text)
        operation_span = Span(span.line, span.column, span.line, span.column + max(1, len(operation)))
        index_span = Span(span.line, span.column + len(operation) + 1, span.line,
                          span.column + len(entry))
        ok = True
        if operation in NB201_UNSUPPORTED:
            self.fail(f"NAS-Bench-201 operation '{operation}' has no attdarts equivalent",
                      span=operation_span,
                      hint=f"{operation} is ReLU-conv-BN with one plain convolution; attdarts' "
                           "convolutions are DARTS's sep_conv / dil_conv, so a mapping would change the "
                           "network. Only none, skip_connect and avg_pool_3x3 import")
            ok = False
        elif operation not in NB201_OPERATIONS:
            known = (*NB201_OPERATIONS, *NB201_UNSUPPORTED)
            self.fail(f"unknown NAS-Bench-201 operation '{printable(operation)}'", span=operation_span,
                      hint=_suggest(operation, known) or "NAS-Bench-201 operations are " + ", ".join(known))
            ok = False
        if index > position:
            self.fail(f"input {index} of NAS-Bench-201 node {position + 1} is out of range",
                      span=index_span, hint=f"node {position + 1} reads nodes 0..{position}")
            ok = False
        if not ok:
            return None
        source = INPUTS[1] if index == 0 else f"n{index - 1}"
        return Edge(operation=Call(name=NB201_OPERATIONS[operation]), input=source)


def _assignment(statement: ast.stmt) -> tuple[str | None, ast.AST | None]:
    """(target name, value) of `NAME = value`, `NAME: T = value` or a bare expression; else (None, None)."""
    if isinstance(statement, ast.Assign):
        if all(isinstance(target, ast.Name) for target in statement.targets):
            return statement.targets[0].id, statement.value
        return None, None
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) and statement.value:
        return statement.target.id, statement.value
    if isinstance(statement, ast.Expr):
        return None, statement.value
    return None, None


def _callee(call: ast.Call) -> str | None:
    function = call.func
    if isinstance(function, ast.Name):
        return function.id
    if isinstance(function, ast.Attribute):
        return function.attr
    return None


def _namedtuple_fields(call: ast.Call) -> tuple[str, ...] | None:
    """The field names of `namedtuple('Genotype', 'normal normal_concat ...')`, or None."""
    if _callee(call) != "namedtuple" or len(call.args) < 2:
        return None
    names = call.args[1]
    text = _string(names)
    if text is not None:
        return tuple(text.replace(",", " ").split())
    if _is_sequence(names) and all(_string(e) is not None for e in names.elts):
        return tuple(_string(e) for e in names.elts)
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


def _suggest(word: str, names: Iterable[str], aliases: dict[str, str] | None = None) -> str | None:
    """'did you mean' among `names`, ignoring case; `aliases` maps other spellings to a name."""
    table = {name.lower(): name for name in names}
    table.update({alias.lower(): name for alias, name in (aliases or {}).items()})
    close = [word.lower()] if word.lower() in table else \
        difflib.get_close_matches(word.lower(), list(table), n=3, cutoff=0.6)
    proper = list(dict.fromkeys(table[c] for c in close))
    if not proper:
        return None
    quoted = ", ".join(f"'{p}'" for p in proper)
    return f"did you mean {quoted}?" if len(proper) == 1 else f"did you mean one of {quoted}?"


# ---------------------------------------------------------------------------------------------
# Export


def genotype_tuples(genotype: Genotype, *, attention: bool = True,
                    drop_attention: bool = False) -> dict[str, object]:
    """The fields of DARTS's (`attention=False`) or the authors' Genotype namedtuple.

    Edges are (operation, input) or (operation, input, attention) tuples, two per node in node
    order; concats are lists of indices. Raises DslError where the format cannot hold the cell:
    a node with other than 2 edges, parameters on an operation or attention, or (for DARTS, unless
    `drop_attention`) any attention.
    """
    problems: list[Problem] = []
    fields: dict[str, object] = {}
    attention_spans: list[Span | None] = []
    for kind in ("normal", "reduce"):
        cell = genotype.cell(kind)
        named = any(edge.attention is not None for node in cell.nodes for edge in node.edges)
        edges: list[tuple] = []
        for node in cell.nodes:
            if len(node.edges) != 2:
                problems.append(Problem(
                    f"node '{node.name}' of the {kind} cell of '{genotype.name}' has {len(node.edges)} "
                    "edge" + ("" if len(node.edges) == 1 else "s") + "; DARTS-style genotypes cannot hold it",
                    node.span, "their edge list gives every node exactly 2 edges (edges 2n and 2n+1 "
                               "feed node n); keep this genotype in the DSL"))
            for edge in node.edges:
                if edge.operation.kwargs:
                    problems.append(Problem(
                        f"operation '{_call_text(edge.operation)}' has parameters, which the format "
                        "cannot hold", edge.operation.span or edge.span))
                record: tuple = (edge.operation.name, cell.index_of(edge.input))
                if attention:
                    record += (_attention_out(edge.attention, "Identity" if named else "", edge.span, problems),)
                elif edge.attention is not None:
                    attention_spans.append(edge.attention.span or edge.span)
                edges.append(record)
        fields[kind] = edges
        fields[f"{kind}_concat"] = [cell.index_of(name) for name in cell.output.nodes]
        if attention:
            fields[f"{kind}_bottleneck"] = _attention_out(cell.output.attention, "", cell.output.span, problems)
        elif cell.output.attention is not None:
            attention_spans.append(cell.output.attention.span or cell.output.span)
    if attention_spans and not drop_attention:
        count = len(attention_spans)
        problems.append(Problem(
            f"genotype '{genotype.name}' has {count} attention{'s' if count != 1 else ''}, which "
            "DARTS's Genotype cannot hold", attention_spans[0],
            "export with --format att-darts-py or att-darts-json, or pass --drop-attention to "
            "write the operations alone"))
    if problems:
        raise DslError(problems)
    order = ATT_DARTS_FIELDS if attention else DARTS_FIELDS
    return {key: fields[key] for key in order}


def _attention_out(call: Call | None, empty: str, span: Span | None, problems: list[Problem]) -> str:
    if call is None:
        return empty
    droppable = _DROPPABLE_KWARGS.get(call.name, frozenset())
    if any(key not in droppable for key, _ in call.kwargs):
        problems.append(Problem(
            f"attention '{_call_text(call)}' has parameters the authors' format cannot hold",
            call.span or span, f"their '{ATTENTIONS_OUT[call.name]}' always has the default parameters"))
    return ATTENTIONS_OUT[call.name]


def _call_text(call: Call) -> str:
    if not call.kwargs:
        return call.name
    return call.name + "(" + ", ".join(f"{k}={v}" for k, v in call.kwargs) + ")"


def export_genotypes(genotypes: Iterable[Genotype], format: str, *, drop_attention: bool = False) -> str:
    """Write genotypes as a `genotypes.py` module (`darts-py`, `att-darts-py`) or one genotype.json.

    The text is read back with `import_text` and compared before it is returned, so a bug here
    raises instead of writing a file that means something else.
    """
    if format not in EXPORT_FORMATS:
        raise DslError.single(f"unknown export format '{format}'", None,
                              "formats are " + ", ".join(EXPORT_FORMATS))
    genotypes = list(genotypes)
    if not genotypes:
        raise DslError.single("there is no genotype to export")
    if format == "att-darts-json" and len(genotypes) > 1:
        names = ", ".join(f"'{g.name}'" for g in genotypes)
        raise DslError.single(f"a genotype.json holds one genotype, and there are several ({names})",
                              None, "choose one with --genotype NAME")
    with_attention = format != "darts-py"
    problems: list[Problem] = []
    records: list[tuple[Genotype, dict[str, object]]] = []
    for genotype in genotypes:
        if format != "att-darts-json" and (keyword.iskeyword(genotype.name)
                                            or genotype.name in ("Genotype", "namedtuple")):
            problems.append(Problem(f"'{genotype.name}' cannot name a genotype in a Python file",
                                    genotype.span, "rename the genotype"))
        try:
            records.append((genotype, genotype_tuples(genotype, attention=with_attention,
                                                      drop_attention=drop_attention)))
        except DslError as error:
            problems.extend(error.problems)
    if problems:
        raise DslError(problems)
    if format == "att-darts-json":
        text = _json_object(records[0][1])
    else:
        text = _python_module(records, format)
    _check_export(text, format, records)
    return text


def export_warnings(genotypes: Iterable[Genotype], format: str) -> list[str]:
    """What an export in `format` changes about `genotypes`, one line each (empty if nothing).

    The authors' formats have one 'BAM', which multiplies its two gates, so a `bam` that sums them
    (the paper's, and the DSL default) comes back as `bam(combine=product)`. `attdarts export`
    prints these lines on stderr for every format; the Python formats also keep one as a comment.
    """
    if format == "darts-py":
        return []
    return [f"warning: genotype '{genotype.name}': {SUM_BAM_WARNING}"
            for genotype in genotypes if _uses_sum_bam(genotype)]


SUM_BAM_WARNING = ("its bam sums the channel and spatial gates (combine=sum), but 'BAM' in the "
                   "Att-DARTS format multiplies them; it imports back as bam(combine=product)")


def _python_module(records: list[tuple[Genotype, dict[str, object]]], format: str) -> str:
    fields = DARTS_FIELDS if format == "darts-py" else ATT_DARTS_FIELDS
    lines = [
        f"# Genotypes written by attdarts (export --format {format}).",
        "# Inputs: 0 = c_{k-2}, 1 = c_{k-1}, j >= 2 = intermediate node j-2; edges 2n and 2n+1 feed node n.",
    ]
    if format != "darts-py":
        lines.append("# Attention names as in the Att-DARTS code, whose BAM multiplies its two gates.")
    lines += ["from collections import namedtuple", "",
              f"Genotype = namedtuple('Genotype', '{' '.join(fields)}')"]
    for genotype, values in records:
        lines += ["", ""]
        for entry in genotype.meta:
            lines.append(f"# {entry.key}: {printable(entry.value)}")
        if format != "darts-py" and _uses_sum_bam(genotype):
            lines.append("# note: this genotype's bam sums its gates (combine=sum); 'BAM' here multiplies them.")
        lines.append(f"{genotype.name} = Genotype(")
        for key in fields:
            value = values[key]
            if key in ("normal", "reduce"):
                lines.append(f"    {key}=[")
                for start in range(0, len(value), 2):
                    lines.append("        " + ", ".join(repr(edge) for edge in value[start:start + 2]) + ",")
                lines.append("    ],")
            else:
                lines.append(f"    {key}={value!r},")
        lines.append(")")
    return "\n".join(lines) + "\n"


def _json_object(values: dict[str, object]) -> str:
    """The authors' genotype.json fields, one edge per line."""
    entries = []
    for key, value in values.items():
        if key in ("normal", "reduce"):
            edges = ",\n".join("        " + json.dumps(list(edge)) for edge in value)
            entries.append(f"    {json.dumps(key)}: [\n{edges}\n    ]")
        else:
            entries.append(f"    {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(entries) + "\n}\n"


def _uses_sum_bam(genotype: Genotype) -> bool:
    calls = [edge.attention for cell in (genotype.normal, genotype.reduce)
             for node in cell.nodes for edge in node.edges]
    calls += [genotype.normal.output.attention, genotype.reduce.output.attention]
    return any(call is not None and call.name == "bam" and
               call.kwargs_dict().get("combine", "sum") == "sum" for call in calls)


def _check_export(text: str, format: str, records: list[tuple[Genotype, dict[str, object]]]) -> None:
    with_attention = format != "darts-py"
    try:
        document = import_text(text, "<export>", format="json" if format == "att-darts-json" else "python",
                               name=records[0][0].name if format == "att-darts-json" else None)
        again = [(g.name, genotype_tuples(g, attention=with_attention)) for g in document.genotypes]
    except DslError:
        again = None
    if again != [(genotype.name, values) for genotype, values in records]:
        raise DslError.single("internal error: the exported text does not read back the same; "
                              "nothing was written", None, "please report this with the input file")
