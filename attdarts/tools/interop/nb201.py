"""NAS-Bench-201 strings `|skip_connect~0|+|none~0|avg_pool_3x3~1|+...|`: another cell space,
imported where it maps onto attdarts' operations."""

from __future__ import annotations

import re

from attdarts.language.errors import Span, printable
from attdarts.language.ir import INPUTS, Call, Cell, Edge, Genotype, Meta, Node, Output
from attdarts.tools.interop.reader import Reader, _suggest, default_name

NB201_OPERATIONS = {"none": "none", "skip_connect": "skip_connect", "avg_pool_3x3": "avg_pool_3x3"}
NB201_UNSUPPORTED = ("nor_conv_3x3", "nor_conv_1x1")

NB201_NOTE = ("NAS-Bench-201 cell: its single input (node 0) is c_k1 here and c_k2 is unused; its "
              "nodes 1, 2, ... are n0, n1, ...; the output is its last node alone; the same cell "
              "serves as normal and reduce cell (NAS-Bench-201 reduces with fixed residual blocks)")


class Nb201Reader(Reader):
    def read(self, name: str | None) -> list[Genotype]:
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

