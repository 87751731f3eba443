"""`attdarts plot`: pictures and an epoch timeline of a search run directory."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..plot import RunError, load_run, plot_weights, timeline


@click.command(name="plot")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT.png",
              help="Where to write the picture (default: RUN_DIR/weights.png).")
def plot(run_dir: Path, output: Path | None) -> None:
    """Plot the architecture weights of the search run in RUN_DIR; print its genotype's changes.

    The PNG shows, for the normal and the reduction cell, heatmaps of the softmaxed alpha
    (operations) and beta (attentions) at the last epoch, edges by candidates, each coloured
    from its own smallest to its largest weight (read the numbers off its colour bar), the
    candidate each edge would derive boxed in red, and below them the weights of every edge
    over the epochs. gamma (attention on the cell output) is drawn when the run has it. The timeline of
    genotype changes between epochs goes to stdout.

    \b
    RUN_DIR holds weights.jsonl (one JSON object per epoch) and/or
    genotype-epoch001.geno, genotype-epoch002.geno, ...
    Exit status: 0 done; 2 nothing readable in RUN_DIR.
    """
    try:
        run = load_run(run_dir)
    except RunError as error:
        click.echo(f"attdarts plot: {error}", err=True)
        sys.exit(2)
    for warning in run.warnings:
        click.echo(f"attdarts plot: warning: {warning}", err=True)
    for line in timeline(run.genotypes):
        click.echo(line)
    if not run.genotypes:
        click.echo("attdarts plot: no genotype-epochNNN.geno files: no timeline", err=True)
    if not run.weights:
        click.echo("attdarts plot: no weights.jsonl: nothing to draw", err=True)
        return
    target = output or run_dir / "weights.png"
    plot_weights(run.weights, target, title=run_dir.resolve().name)
    click.echo(f"attdarts plot: wrote {target}", err=True)
