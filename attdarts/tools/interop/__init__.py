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

Two choices keep the conversions faithful to the authors' code (README, "Import and export"):

- Their BAM combines its channel and spatial gates by product (the paper sums them), so 'BAM'
  imports as `bam(combine=product)`. Export writes `bam` with either combine as 'BAM'.
- Their Cell builds an attention layer only for a non-empty name and then indexes the layers by
  edge, so a cell names an attention on every edge or on none. An edge without attention is
  therefore written 'Identity' when another edge of its cell has one, and '' otherwise.
"""

from __future__ import annotations

from pathlib import Path

from attdarts.files import read_source
from attdarts.language.errors import DslError, by_position, printable
from attdarts.language.ir import Document
from attdarts.tools.interop.export import (
    EXPORT_FORMATS,
    SUM_BAM_WARNING,
    export_genotypes,
    export_warnings,
    genotype_tuples,
)
from attdarts.tools.interop.json_format import JsonReader
from attdarts.tools.interop.nb201 import NB201_NOTE, NB201_OPERATIONS, NB201_UNSUPPORTED, Nb201Reader
from attdarts.tools.interop.python_format import PythonReader
from attdarts.tools.interop.reader import (
    ATT_DARTS_FIELDS,
    BAM_NOTE,
    DARTS_FIELDS,
    IDENTIFIER,
    attentions_in,
    attentions_out,
    default_name,
)

__all__ = [
    "ATT_DARTS_FIELDS", "BAM_NOTE", "DARTS_FIELDS", "EXPORT_FORMATS", "IMPORT_FORMATS",
    "NB201_NOTE", "NB201_OPERATIONS", "NB201_UNSUPPORTED", "SUM_BAM_WARNING", "attentions_in",
    "attentions_out", "default_name", "export_genotypes", "export_warnings", "genotype_tuples",
    "import_file", "import_text",
]

IMPORT_FORMATS = ("auto", "python", "json", "nb201")
_READERS = {"python": PythonReader, "json": JsonReader, "nb201": Nb201Reader}


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
    if name is not None and not IDENTIFIER.match(name):
        raise DslError.single(f"'{printable(name)}' cannot name a genotype", None,
                              "names are letters, digits and '_', not starting with a digit")
    chosen = _detect(text, path) if format == "auto" else format
    reader = _READERS[chosen](text, path)
    genotypes = reader.read(name)
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


