"""`attdarts render`: draw a genotype's cells with graphviz (paper, Figure 4)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from attdarts.language.errors import DslError
from attdarts.tools.render import (
    CELL_KINDS, WEIGHT_LEGEND, GraphvizMissing, RenderFailed, genotype_dot, output_format,
    weight_styles, write_drawing,
)
from attdarts.language.transform import read_genotype


@click.command(name="render")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--genotype", "name", metavar="NAME",
              help="Genotype to draw (needed when the file defines several).")
@click.option("--cell", type=click.Choice(["normal", "reduce", "both"]), default="both",
              show_default=True, help="Which cell to draw.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT",
              help="Write OUT.svg, .png, .pdf or .dot (format from the suffix); "
                   "default: DOT text on stdout.")
@click.option("--weights", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              metavar="RUN", help="Draw the architecture weights of the search run RUN on the "
                                  "edges: width from the kept operation's weight, faint when "
                                  "undecided, weights and margins under the labels.")
@click.option("--epoch", type=click.IntRange(min=1), metavar="N",
              help="The epoch of RUN's weights to draw (default: its last); needs --weights.")
def render(file: Path, name: str | None, cell: str, output: Path | None, run_dir: Path | None,
           epoch: int | None) -> None:
    """Draw the cells of the genotype in FILE, in the style of the paper's Figure 4.

    Edges carry their operation and, in red, their attention; an attention on the cell output
    is drawn between the intermediate nodes and c_k. A genotype with a `synthetic` metadata line
    (a search on random data writes one) is titled SYNTHETIC DATA in red. The DOT text is
    deterministic, so drawings
    can be committed. SVG, PNG and PDF need graphviz's `dot` program. Without it, the DOT text
    is written beside OUT (OUT with suffix .dot), the command says what to install and exits
    with status 1.

    With --weights RUN (a search run directory: weights.jsonl, space.geno) each edge is drawn
    as wide as its kept operation's weight (1 + 6w pt) and faint when an edge is decided by less
    than 0.05 (its smallest lead of the kept operation, attention or input over the runner-up);
    the weights and leads are written under the labels (README "Reading a search").

    \b
    Exit status: 0 drawn; 1 graphviz missing (.dot written instead); 2 bad input.
    """
    try:
        genotype = read_genotype(file, name)
    except DslError as error:
        _fail(str(error.located(str(file), None)))
    cells = CELL_KINDS if cell == "both" else (cell,)
    if epoch is not None and run_dir is None:
        raise click.BadParameter("needs --weights RUN", param_hint="'--epoch'")
    if run_dir is None:
        dot_text = genotype_dot(genotype, cells)
    else:
        from attdarts.language.decisiveness import DecisivenessError
        from attdarts.tools.search_runs import decide_with_run

        try:
            decided, epoch = decide_with_run(genotype, run_dir, epoch)
        except DecisivenessError as error:
            _fail(f"attdarts render: {error}")
        legend = f"weights of {run_dir.name} at epoch {epoch}. " + WEIGHT_LEGEND.format(
            decided.threshold)
        dot_text = genotype_dot(genotype, cells, styles=weight_styles(genotype, decided),
                                legend=legend)
    if output is None:
        click.echo(dot_text, nl=False)
        return
    try:
        output_format(output)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'-o' / '--output'") from None
    try:
        write_drawing(dot_text, output)
    except GraphvizMissing as missing:
        fallback = write_drawing(dot_text, output.with_suffix(".dot"))
        click.echo(f"attdarts render: {missing}", err=True)
        click.echo(f"attdarts render: wrote the DOT text to {fallback} instead of {output}; "
                   f"once graphviz is installed run: dot -T{output_format(output)} {fallback} "
                   f"-o {output}", err=True)
        sys.exit(1)
    except (RenderFailed, OSError) as error:
        _fail(f"attdarts render: {error}")


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(2)
