"""Lark tree -> IR, with spans and comments attached, and every problem of a file collected.

A top-down walk: each method is named after the grammar rule (and IR class) it builds. Comments
are collected by the lexer and handed out in text order: whole-line comments lead the next
statement, a comment at the end of a statement's line trails it, and comments before a closing
brace stay with that block. Names are checked against the torch-free catalog; keyword arguments
are validated and put into canonical form (catalog order, defaults dropped), and an edge whose
attention is `identity` is stored as an edge without attention.
"""

from __future__ import annotations

import re
from pathlib import Path

import lark
from lark import Token, Tree

from attdarts.files import decode_source, read_source  # re-exported for callers
from attdarts.language import catalog, methods, stages
from attdarts.language.errors import DslError, Problem, Span, by_position, suggest
from attdarts.language.grammar import parse_tree, parser
from attdarts.language.ir import (
    Call, Cell, Comments, Document, Edge, Genotype, Meta, NO_COMMENTS, Node, Output, Space, Stage,
)
from attdarts.language.locations import LOCATIONS

__all__ = ["decode_source", "parse_file", "parse_text", "read_genotype", "read_source",
           "read_space"]


def parse_text(text: str, path: str | None = None) -> Document:
    """Parse DSL text into a Document; raise DslError listing every problem found."""
    try:
        tree, comments = parse_tree(text)
    except lark.exceptions.UnexpectedInput as error:
        raise DslError([_syntax_problem(error, text)], path, text) from None
    except RecursionError:  # pragma: no cover - the grammar is not recursive, but be safe
        raise DslError.single("input nests too deeply", None).located(path, text) from None
    builder = _Builder(text, comments)
    document = builder.start(tree)
    if builder.problems:
        problems = sorted(builder.problems, key=by_position)
        raise DslError(problems, path, text)
    return document


def parse_file(path: str | Path) -> Document:
    """Read and parse a file; unreadable, binary or non-UTF-8 files give a DslError too."""
    return parse_text(read_source(path), str(path))


def read_genotype(path: str | Path, name: str | None = None) -> Genotype:
    """The genotype `name` of a file (or its only one); every error names the file."""
    return _named(path, lambda document: document.genotype(name))


def read_space(path: str | Path, name: str | None = None) -> Space:
    """The space `name` of a file (or its only one), as `read_genotype`."""
    return _named(path, lambda document: document.space(name))


def _named(path, pick):
    document = parse_file(path)
    try:
        return pick(document)
    except DslError as error:
        raise error.located(str(path), None) from None


# ---------------------------------------------------------------------------------------------
# Syntax errors


_TERMINAL_WORDS = {"NAME": "a name", "STRING": "a quoted string", "SIGNED_NUMBER": "a number",
                   "QUANTITY": "a quantity such as 600M or 12ms", "$END": "end of file"}


def _describe_expected(names) -> str:
    words = []
    terminals = {t.name: t for t in parser().terminals}
    for name in sorted(names):
        if name in _TERMINAL_WORDS:
            words.append(_TERMINAL_WORDS[name])
        elif name in terminals and terminals[name].pattern.type == "str":
            words.append(f"'{terminals[name].pattern.value}'")
        else:
            words.append(name.lower())
    words = sorted(set(words))
    return words[0] if len(words) == 1 else "one of " + ", ".join(words[:-1]) + " or " + words[-1]


def _token_text(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    value = str(token)
    return f"'{value[:37]}...'" if len(value) > 40 else f"'{value}'"


def _syntax_problem(error: lark.exceptions.UnexpectedInput, text: str) -> Problem:
    line, column = max(1, error.line or 1), max(1, error.column or 1)
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        char = text[error.pos_in_stream] if error.pos_in_stream < len(text) else ""
        span = Span(line, column, line, column + 1)
        if char == '"':
            return Problem("unterminated string", span, 'close the string with " on the same line')
        shown = char.encode("unicode_escape").decode("ascii") if not char.isprintable() else char
        return Problem(f"unexpected character '{shown}'", span,
                       f"expected {_describe_expected(error.allowed)}" if error.allowed else None)
    if isinstance(error, lark.exceptions.UnexpectedEOF) or (
        isinstance(error, lark.exceptions.UnexpectedToken) and error.token.type == "$END"
    ):
        last = text.rstrip()
        line = last.count("\n") + 1
        column = len(last) - (last.rfind("\n") + 1) + 1
        expected = getattr(error, "expected", None) or []
        hint = None
        if text.count("{") > text.count("}"):
            hint = "a block is not closed: add '}'"
        return Problem(f"unexpected end of file; expected {_describe_expected(expected)}",
                       Span(line, column), hint)
    assert isinstance(error, lark.exceptions.UnexpectedToken)
    token = error.token
    span = Span(line, column, token.end_line or line, token.end_column or column + 1)
    expected = set(error.expected)
    before = text[: token.start_pos] if token.start_pos is not None else ""
    message = f"unexpected {_token_text(token)}; expected {_describe_expected(expected)}"
    hint = None
    no_edges = re.search(r"([A-Za-z_]\w*)\s*=\s*([A-Za-z_]\w*)\s*$", before)
    if token.type == "EQUAL" and expected == {"LPAR"} and no_edges:
        start = no_edges.start(1)
        node_line = text.count("\n", 0, start) + 1
        node_column = start - (text.rfind("\n", 0, start) + 1) + 1
        node_span = Span(node_line, node_column, node_line, node_column + len(no_edges.group(1)))
        return Problem(f"node '{no_edges.group(1)}' has no edges", node_span,
                       "a node sums one or more edges, e.g. sep_conv_3x3(c_k1)")
    if token.type == "LPAR" and expected == {"EQUAL"}:
        name = re.search(r"([A-Za-z_]\w*)\s*$", before)
        called = name.group(1) if name else "..."
        return Problem(f"expected '=' after '{called}', found '('", span,
                       f"if '{called}(...)' is another edge of the node above, join edges with '+'")
    if token.type == "RBRACE" and "NAME" in expected and expected <= {"NAME", "PLUS", "__ANON_0", "C_K"}:
        return Problem("the cell has no output", span,
                       "end every cell with its output, e.g. c_k = concat(n0, n1, n2, n3)")
    if "PLUS" in expected and token.type not in ("RBRACE",):
        hint = "join the edges of a node with '+'"
    return Problem(message, span, hint)


# ---------------------------------------------------------------------------------------------
# Tree -> IR


def _span(tree: Tree | Token) -> Span | None:
    if isinstance(tree, Token):
        return Span(tree.line, tree.column, tree.end_line, tree.end_column)
    meta = tree.meta
    return None if getattr(meta, "empty", True) else Span(meta.line, meta.column, meta.end_line,
                                                          meta.end_column)


class _Builder:
    def __init__(self, text: str, comments: list[Token]) -> None:
        self.lines = text.split("\n")
        self.pending = list(comments)
        self.problems: list[Problem] = []

    # -- comments -------------------------------------------------------------------------
    def _take_before(self, line: int) -> tuple[str, ...]:
        taken = []
        while self.pending and self.pending[0].line < line:
            taken.append(str(self.pending.pop(0)).rstrip())
        return tuple(taken)

    def _take_on(self, line: int) -> str | None:
        on_line = self.pending and self.pending[0].line == line
        return str(self.pending.pop(0)).rstrip() if on_line else None

    def _statement_comments(self, span: Span | None) -> Comments:
        if span is None:
            return NO_COMMENTS
        leading = self._take_before(span.line)
        leading += self._take_before(span.end_line or span.line)  # inside a multi-line statement
        return Comments(leading=leading, trailing=self._take_on(span.end_line or span.line))

    def _header_comments(self, span: Span | None) -> Comments:
        if span is None:
            return NO_COMMENTS
        leading = self._take_before(span.line)
        # a comment ends the header's line only when the line's code ends with the block's
        # brace; otherwise it trails the statement the line ends with (`normal { n0 = ...  # x`)
        trailing = self._take_on(span.line) if self._after_brace(span.line) else None
        return Comments(leading=leading, trailing=trailing)

    def _after_brace(self, line: int) -> bool:
        return bool(self.pending) and self.pending[0].line == line and \
            self.lines[line - 1][:self.pending[0].column - 1].rstrip().endswith("{")

    def _closing_comments(self, brace: Token) -> Comments:
        return Comments(leading=self._take_before(brace.line), trailing=self._take_on(brace.line))

    def _try(self, build):
        try:
            return build()
        except DslError as error:
            self.problems.extend(error.problems)
            return None

    # -- rules ----------------------------------------------------------------------------
    def start(self, tree: Tree) -> Document:
        items = []
        seen: dict[str, Span | None] = {}
        for child in tree.children:
            item = self.genotype(child) if child.data == "genotype" else self.space(child)
            name_token = child.children[0]
            if str(name_token) in seen:
                self.problems.append(Problem(f"'{name_token}' is defined twice in this file",
                                             _span(name_token), "give each genotype and space its own name"))
            seen[str(name_token)] = _span(name_token)
            if item is not None:
                items.append(item)
        closing = Comments(leading=self._take_before(10**12))
        return Document(items=tuple(items), closing=closing)

    def genotype(self, tree: Tree) -> Genotype | None:
        name, *entries, brace = tree.children
        span = _span(tree)
        comments = self._header_comments(span)
        meta: list[Meta] = []
        cells: dict[str, Cell | None] = {}
        for entry in entries:
            if entry.data == "setting":
                key, value, value_tree, setting_comments = self.setting(entry)
                if not isinstance(value, str) or value_tree.type != "STRING":
                    self.problems.append(Problem(
                        f"genotype setting '{key}' must be quoted text", _span(value_tree),
                        f'write it as {key} = "..."; a genotype holds cells and free text only'))
                    continue
                meta.append(Meta(key=key, value=value, comments=setting_comments, span=_span(entry)))
            else:
                kind = str(entry.children[0].children[0])
                cell = self.cell(entry)
                if kind in cells:
                    self.problems.append(Problem(f"the '{kind}' cell is defined twice", _span(entry)))
                    continue
                cells[kind] = cell
        closing = self._closing_comments(brace)
        missing = [kind for kind in ("normal", "reduce") if kind not in cells]
        for kind in missing:
            self.problems.append(Problem(f"genotype '{name}' has no '{kind}' cell", _span(name),
                                         "a genotype is a pair of cells: normal { ... } and reduce { ... }"))
        if missing or any(cell is None for cell in cells.values()):
            return None
        return self._try(lambda: Genotype(
            name=str(name), meta=tuple(meta), normal=cells["normal"], reduce=cells["reduce"],
            comments=comments, closing=closing, span=span))

    def setting(self, tree: Tree):
        key, value_tree = tree.children
        span = _span(tree)
        comments = self._statement_comments(span)
        if isinstance(value_tree, Token) and value_tree.type == "STRING":
            return str(key), _unquote(value_tree), value_tree, comments
        if value_tree.data == "list":
            return str(key), [c for c in value_tree.children if c is not None], value_tree, comments
        return str(key), self._value(value_tree), value_tree, comments

    def _value(self, tree) -> int | float | str:
        if isinstance(tree, Token):  # STRING
            return _unquote(tree)
        token = tree.children[0]
        if tree.data == "number":
            text = str(token)
            return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        return str(token)  # a word, or a quantity as written (600M): its setting reads it

    def space(self, tree: Tree) -> Space | None:
        name, *settings, brace = tree.children
        span = _span(tree)
        comments = self._header_comments(span)
        meta: list[Meta] = []
        values: dict[str, object] = {}
        setting_comments: dict[str, Comments] = {}
        setting_spans: list[tuple[str, Span]] = []
        legacy: dict[str, object] = {}  # `key = value` method options (the older form)
        legacy_spans: dict[str, Span | None] = {}
        known = ("operations", "attentions", "nodes", "keep", "location", "mixing", "methods",
                 "stages", *methods.LEGACY_OPTIONS)
        for entry in settings:
            key, value, value_tree, entry_comments = self.setting(entry)
            entry_span = _span(entry)
            if isinstance(value_tree, Token) and key not in known:
                meta.append(Meta(key=key, value=value, comments=entry_comments, span=entry_span))
                continue
            if key not in known:
                self.problems.append(Problem(f"unknown space setting '{key}'", _span(entry.children[0]),
                                             suggest(key, known) or
                                             "settings are " + ", ".join(known) + ", or quoted free text"))
                continue
            if key in values or key in legacy:
                self.problems.append(Problem(f"'{key}' is set twice", entry_span))
                continue
            if key in methods.LEGACY_OPTIONS:
                # the older form: its comments go to the `methods` line it becomes
                converted, expected = methods.LEGACY_OPTIONS[key].convert(value)
                if expected is not None:
                    self.problems.append(Problem(expected, _span(value_tree)))
                    continue
                legacy[key] = converted
                legacy_spans[key] = entry_span
                setting_comments["methods"] = setting_comments.get(
                    "methods", NO_COMMENTS).merged(entry_comments)
                continue
            converted = self._space_value(key, value, value_tree, entry_span)
            if converted is not None:
                values[key] = converted
                if entry_span is not None:
                    setting_spans.append((key, entry_span))
                if entry_comments:
                    setting_comments[key] = setting_comments.get(key, NO_COMMENTS).merged(
                        entry_comments)
        calls = list(values.pop("methods", ()))
        for method, (given, line) in methods.legacy_settings(legacy).items():
            if any(call.name == method for call in calls):
                self.problems.append(Problem(
                    f"search method '{method}' is given twice: in 'methods' and as '{line} = ...'",
                    legacy_spans[line], f"keep the call in 'methods' and drop the '{line}' line"))
                continue
            calls.append(Call(name=method, kwargs=tuple(given.items()), span=legacy_spans[line]))
        if calls:
            values["methods"] = tuple(calls)
        closing = self._closing_comments(brace)
        present = {str(entry.children[0]) for entry in settings}
        if "operations" not in present:
            self.problems.append(Problem(f"space '{name}' lists no operations", _span(name),
                                         "add operations = [none, max_pool_3x3, ...]"))
        if "operations" not in values:
            return None
        kept = tuple((key, value) for key, value in setting_comments.items() if value)
        return self._try(lambda: Space(
            name=str(name), meta=tuple(meta), setting_comments=kept,
            setting_spans=tuple(setting_spans),
            comments=comments, closing=closing, span=span, **values))

    def _space_value(self, key, value, value_tree, span):
        if key in ("operations", "attentions", "methods", "stages"):
            if not isinstance(value, list):
                self.problems.append(Problem(f"'{key}' must be a list, e.g. [a, b, c]", span))
                return None
            if key in ("methods", "stages"):
                calls = [(self.method_call if key == "methods" else self.stage)(c) for c in value]
                return tuple(call for call in calls if call is not None)
            table = catalog.OPERATIONS if key == "operations" else catalog.ATTENTIONS
            label = "operation" if key == "operations" else "attention"
            return tuple(self.call(c, table, label) for c in value)
        if key in ("nodes", "keep"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                self.problems.append(Problem(f"'{key}' must be a positive whole number", _span(value_tree)))
                return None
            return value
        choices = tuple(LOCATIONS) if key == "location" else catalog.MIXINGS
        if value not in choices:
            self.problems.append(Problem(
                f"unknown {key} '{value}'", _span(value_tree),
                suggest(str(value), choices) or "choose one of " + ", ".join(choices)))
            return None
        return value

    def method_call(self, tree: Tree) -> Call | None:
        """One entry of `methods = [...]`: a search method and its settings, checked against the
        catalog (`methods.METHODS`); the IR puts the settings in canonical form."""
        name, *kwargs = tree.children
        name_text = str(name)
        entry = methods.METHODS.get(name_text)
        if entry is None:
            hint = suggest(name_text, methods.METHODS)
            if hint is None and (name_text in catalog.OPERATIONS or name_text in catalog.ATTENTIONS):
                noun = "an operation" if name_text in catalog.OPERATIONS else "an attention"
                hint = f"'{name_text}' is {noun}; list it in '{noun.split()[1]}s'"
            self.problems.append(Problem(f"unknown search method '{name_text}'", _span(name),
                                         hint or "known methods: " + ", ".join(methods.METHODS)))
            return None
        given, problems = methods.check_settings(entry, [
            (str(kwarg.children[0]), self._value(kwarg.children[1]),
             _span(kwarg.children[0] if str(kwarg.children[0]) not in entry.settings else kwarg))
            for kwarg in kwargs if kwarg is not None])
        self.problems.extend(problems)
        if problems:  # reported once: not again for what the settings left out imply
            return None
        return Call(name=name_text, kwargs=tuple(given.items()), span=_span(tree))

    def stage(self, tree: Tree) -> Stage | None:
        """One entry of `stages = [...]`: `stage(...)` with settings (`stages.SETTINGS`)."""
        name, *kwargs = tree.children
        settings, problems = stages.check_settings(str(name), [
            (str(kwarg.children[0]), self._value(kwarg.children[1]), _span(kwarg))
            for kwarg in kwargs if kwarg is not None], _span(name))
        self.problems.extend(problems)
        return None if settings is None else Stage(**settings, span=_span(tree))

    def cell(self, tree: Tree) -> Cell | None:
        kind_tree, *nodes, output_tree, brace = tree.children
        kind = str(kind_tree.children[0])
        span = _span(tree)
        comments = self._header_comments(span)
        built = [self.node(n) for n in nodes]
        output = self.output(output_tree)
        closing = self._closing_comments(brace)
        if any(n is None for n in built) or output is None:
            return None
        return self._try(lambda: Cell(kind=kind, nodes=tuple(built), output=output,
                                      comments=comments, closing=closing, span=span))

    def node(self, tree: Tree) -> Node | None:
        name, *edges = tree.children
        span = _span(tree)
        comments = self._statement_comments(span)
        built = tuple(self.edge(e) for e in edges)
        return Node(name=str(name), edges=built, comments=comments, span=span)

    def edge(self, tree: Tree) -> Edge:
        operation_tree = tree.children[0]
        op_name, input_token, *kwargs = operation_tree.children
        operation = self._make_call(op_name, kwargs, catalog.OPERATIONS, "operation", _span(operation_tree))
        attention = self._attention(tree.children[1]) if len(tree.children) > 1 else None
        return Edge(operation=operation, input=str(input_token), attention=attention,
                    span=_span(input_token))

    def output(self, tree: Tree) -> Output:
        *names, attention_tree = tree.children
        span = _span(tree)
        comments = self._statement_comments(span)
        attention = None if attention_tree is None else self._attention(attention_tree)
        return Output(nodes=tuple(str(n) for n in names), attention=attention, comments=comments,
                      span=span, name_spans=tuple(_span(n) for n in names))

    def _attention(self, tree: Tree) -> Call | None:
        """An attention call; `identity` is stored as no attention."""
        attention = self.call(tree, catalog.ATTENTIONS, "attention")
        return None if attention.name == "identity" else attention

    def call(self, tree: Tree, table, label: str) -> Call:
        name, *kwargs = tree.children
        return self._make_call(name, kwargs, table, label, _span(tree))

    def _make_call(self, name: Token, kwargs: list, table, label: str, span: Span | None) -> Call:
        name_text = str(name)
        kwargs = [k for k in kwargs if k is not None]
        if name_text not in table:
            other = catalog.ATTENTIONS if table is catalog.OPERATIONS else catalog.OPERATIONS
            hint = suggest(name_text, list(table))
            if hint is None and name_text in other:
                where = "after '>>'" if label == "operation" else "before '>>'"
                hint = f"'{name_text}' is an {'attention' if label == 'operation' else 'operation'}; write it {where}"
            self.problems.append(Problem(f"unknown {label} '{name_text}'", _span(name),
                                         hint or f"known {label}s: " + ", ".join(table)))
            return Call(name=name_text, span=span)
        parameters = table[name_text].parameters
        given: dict[str, object] = {}
        for kwarg in kwargs:
            key_token, value_tree = kwarg.children
            key = str(key_token)
            if key not in parameters:
                hint = suggest(key, list(parameters))
                if hint is None:
                    hint = (f"'{name_text}' takes " + ", ".join(parameters)) if parameters else \
                        f"'{name_text}' takes no keyword arguments"
                self.problems.append(Problem(f"unknown keyword '{key}' for {label} '{name_text}'",
                                             _span(key_token), hint))
                continue
            if key in given:
                self.problems.append(Problem(f"keyword '{key}' is given twice", _span(key_token)))
                continue
            value = self._value(value_tree)
            problem = _check_value(parameters[key], key, value, _span(kwarg))
            if problem:
                self.problems.append(problem)
                continue
            given[key] = value
        check = table[name_text].check
        message = check({**{k: p.default for k, p in parameters.items()}, **given}) if check else None
        if message:
            self.problems.append(Problem(message, span))
        canonical = tuple((key, given[key]) for key in parameters
                          if key in given and given[key] != parameters[key].default)
        return Call(name=name_text, kwargs=canonical, span=span)


def _check_value(parameter: catalog.Parameter, key: str, value, span) -> Problem | None:
    message = parameter.problem(f"'{key}'", value)
    hint = suggest(str(value), parameter.choices) if parameter.choices else None
    return None if message is None else Problem(message, span, hint)


_ESCAPES = {"n": "\n", "t": "\t"}


def _unquote(token: Token) -> str:
    body = str(token)[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)
