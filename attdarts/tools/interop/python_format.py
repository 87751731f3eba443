"""DARTS-family `genotypes.py` modules, read through `ast` and never run: DARTS's 2-tuples,
the Att-DARTS authors' 3-tuples with `*_bottleneck`, pt.darts's per-node lists."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from attdarts.language.ir import Genotype
from attdarts.tools.interop.reader import (
    ATT_DARTS_FIELDS,
    LITERAL_HINT,
    Reader,
    _is_sequence,
    _string,
    _suggest,
    default_name,
)


@dataclass
class _Entry:
    """A `Genotype(...)` call found in a Python file, under the name it is assigned to (or None)."""

    name: str | None
    call: ast.Call
    order: tuple[str, ...]


class PythonReader(Reader):
    """Every `Genotype(...)` assignment of a module, keyword or positional arguments (in the
    field order of a `namedtuple('Genotype', ...)` in the file, if there is one)."""

    def read(self, name: str | None) -> list[Genotype]:
        tree = self.parse(mode="exec")
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

    def _call_fields(self, call: ast.Call, order: tuple[str, ...]) -> dict[str, ast.AST]:
        """Field name -> value node; problems (unknown fields, '**kwargs') are recorded, not fatal."""
        fields: dict[str, ast.AST] = {}
        for position, argument in enumerate(call.args):
            if isinstance(argument, ast.Starred):
                self.fail("'*' arguments are not read", argument, LITERAL_HINT)
            elif position >= len(order):
                self.fail(f"too many positional arguments: a genotype has {len(order)} fields "
                          f"({', '.join(order)})", argument)
            else:
                self.add_field(fields, order[position], argument, argument)
        for argument in call.keywords:
            if argument.arg is None:
                self.fail("'**' arguments are not read", argument.value, LITERAL_HINT)
            else:
                self.add_field(fields, argument.arg, argument.value, argument)
        return fields


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


