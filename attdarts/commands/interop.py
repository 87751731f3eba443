"""`attdarts import` and `attdarts export`: the click shell over `attdarts.tools.interop`.

Neither command imports torch. Output files are written atomically (temporary file + rename), and
imported DSL is re-parsed before it is written: if the printed text does not read back as the same
genotypes, nothing is written. A `DslError` goes up to the CLI group, which prints it and exits
with status 1.
"""

from __future__ import annotations

from pathlib import Path

import click

from attdarts.files import WriteError, atomic_write_text, same_file
from attdarts.language.errors import DslError
from attdarts.language.ir import Document
from attdarts.language.printer import format_checked
from attdarts.language.transform import parse_text, read_source
from attdarts.tools import interop


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--name", help="Import only the genotype of this name; names an unnamed one "
                             "(JSON, NAS-Bench-201) instead of the file name.")
@click.option("--from", "source_format", type=click.Choice(interop.IMPORT_FORMATS), default="auto",
              show_default=True, help="Input format; auto decides by file name and first character.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the DSL to this file instead of stdout.")
@click.option("--split", type=click.Path(file_okay=False, path_type=Path),
              help="Write one NAME.geno per genotype into this directory.")
def import_(file: Path, name: str | None, source_format: str, output: Path | None,
            split: Path | None) -> None:
    """Convert a DARTS / Att-DARTS / pt.darts genotypes.py, a genotype.json or a NAS-Bench-201
    string into the DSL."""
    if output is not None and split is not None:
        raise click.UsageError("give either -o/--output or --split, not both")
    _refuse_input_as_output(file, output)
    document = interop.import_file(file, format=source_format, name=name)
    if split is not None:
        texts = {split / f"{g.name}.geno": _checked_text(Document(items=(g,))) for g in document.genotypes}
        for path in texts:
            _refuse_input_as_output(file, path)
        try:
            split.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DslError.single(f"cannot create directory: {error.strerror or error}").located(
                str(split), None) from None
        for path, text in texts.items():
            _write(path, text)
            click.echo(f"wrote {path}", err=True)
        return
    text = _checked_text(document)
    if output is not None:
        _write(output, text)
    else:
        click.echo(text, nl=False)


@click.command("export")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--genotype", "genotype_name", help="Export only this genotype (default: all).")
@click.option("--format", "format_", type=click.Choice(interop.EXPORT_FORMATS), required=True,
              help="darts-py: DARTS's Genotype with 2-tuples; att-darts-py / att-darts-json: the "
                   "Att-DARTS authors' 3-tuples with *_bottleneck fields.")
@click.option("--drop-attention", is_flag=True,
              help="darts-py only: write the operations of a genotype that has attentions.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of stdout.")
def export(file: Path, genotype_name: str | None, format_: str, drop_attention: bool,
           output: Path | None) -> None:
    """Write genotypes of a DSL file in DARTS or Att-DARTS formats.

    The Att-DARTS formats have one 'BAM', which multiplies its gates: a bam that sums them
    (combine=sum, the default) is written as 'BAM' with a warning on stderr."""
    _refuse_input_as_output(file, output)
    source = read_source(file)
    document = parse_text(source, str(file))
    try:  # choosing a genotype and exporting it give errors without a file name: add it
        if genotype_name is not None or format_ == "att-darts-json":
            genotypes = [document.genotype(genotype_name)]
        else:
            genotypes = list(document.genotypes)
        text = interop.export_genotypes(genotypes, format_, drop_attention=drop_attention)
    except DslError as error:
        raise error.located(str(file), source) from None
    for line in interop.export_warnings(genotypes, format_):
        click.echo(f"{file}: {line}", err=True)
    if output is not None:
        _write(output, text)
    else:
        click.echo(text, nl=False)


def _refuse_input_as_output(file: Path, output: Path | None) -> None:
    """Writing the output over the input file (the same path, a symbolic link to it, a relative
    spelling of it) would replace what is being read: refused, and nothing is written."""
    if output is not None and same_file(file, output):
        raise DslError.single(f"the output is the input file '{file}'; writing it would replace "
                              "the input: choose another -o").located(str(output), None)


def _checked_text(document: Document) -> str:
    """The document as DSL text, refused unless it parses back to the same genotypes."""
    return format_checked(document, what="the imported genotypes")


def _write(path: Path, text: str) -> None:
    """Write atomically (`files.atomic_write_text`: a temporary file beside `path`, then a rename);
    a failure is a DslError located at `path`, worded "cannot write file: REASON"."""
    try:
        atomic_write_text(path, text)
    except WriteError as error:
        reason = str(error).removeprefix(f"cannot write {path}: ")
        raise DslError.single(f"cannot write file: {reason}").located(str(path), None) from None
