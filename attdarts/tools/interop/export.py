"""Genotypes out to the formats of DARTS (`darts-py`) and the Att-DARTS authors (`att-darts-py`,
`att-darts-json`), read back before they are returned."""

from __future__ import annotations

import json
import keyword
from typing import Iterable

from attdarts.language import catalog
from attdarts.language.errors import DslError, Problem, Span, printable
from attdarts.language.ir import Call, Genotype
from attdarts.tools.interop.reader import ATT_DARTS_FIELDS, DARTS_FIELDS, attentions_out

EXPORT_FORMATS = ("darts-py", "att-darts-py", "att-darts-json")


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
    if call.name not in attentions_out():
        problems.append(Problem(
            f"attention '{call.name}' is not in the Att-DARTS authors' code, so their format "
            "cannot hold it", call.span or span,
            "keep this genotype in the DSL, or write its operations alone with --format darts-py "
            "--drop-attention"))
        return call.name
    entry = catalog.ATTENTIONS.get(call.name)
    droppable = entry.droppable_kwargs if entry is not None else frozenset()
    if any(key not in droppable for key, _ in call.kwargs):
        problems.append(Problem(
            f"attention '{_call_text(call)}' has parameters the authors' format cannot hold",
            call.span or span, f"their '{attentions_out()[call.name]}' always has the default parameters"))
    return attentions_out()[call.name]


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
    from attdarts.tools.interop import import_text

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
