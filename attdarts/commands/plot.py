"""`attdarts plot`: pictures and an epoch timeline of a search run directory."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from attdarts.tools.plot import (
    SYNTHETIC_LABEL, RunError, load_run, output_format, plot_weights, timeline,
)
from attdarts.tools.plot_budget import budget_path, plot_budget, read_budget


def _picture_path(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        try:
            output_format(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
    return value


@click.command(name="plot")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT.png",
              callback=_picture_path,
              help="Where to write the picture: *.png, *.pdf or *.svg, the format follows the "
                   "suffix (default: RUN_DIR/weights.png).")
def plot(run_dir: Path, output: Path | None) -> None:
    """Plot the architecture weights of the search run in RUN_DIR; print its genotype's changes.

    The picture shows, for the normal and the reduction cell, heatmaps of the softmaxed alpha
    (operations) and beta (attentions) at the last epoch, edges by candidates, each coloured
    from its own smallest to its largest weight (read the numbers off its colour bar), the
    candidate each edge would derive boxed in red, and below them the weights of every edge
    over the epochs. gamma (attention on the cell output) is drawn when the run has it. A run on
    random data (marked "synthetic" in weights.jsonl, config.json or metrics.jsonl) is titled
    SYNTHETIC DATA (smoke test). The picture is written atomically. The timeline of
    genotype changes between epochs goes to stdout.

    A search with a budget (budget(...) in its space) also gets budget.png beside the picture
    (OUT-budget.png with -o OUT.png): the final network's expected cost and its derived
    genotype's cost per epoch against the budget line; its last epoch is summed up on stdout.

    \b
    RUN_DIR holds weights.jsonl (one JSON object per epoch) and/or
    genotype-epoch001.geno, genotype-epoch002.geno, ...
    Exit status: 0 done; 1 the picture cannot be written (the message
    names the file); 2 nothing readable in RUN_DIR, or an unsupported -o suffix.
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
    # a file that cannot be written raises files.WriteError: one line from the CLI, exit 1
    plot_weights(run.weights, target, title=run_dir.resolve().name, synthetic=run.synthetic)
    note = f" (labelled {SYNTHETIC_LABEL})" if run.synthetic else ""
    click.echo(f"attdarts plot: wrote {target}{note}", err=True)
    budget = read_budget(run_dir)
    if budget is not None:
        click.echo(budget.summary())
        picture = plot_budget(budget, budget_path(target), title=run_dir.resolve().name)
        click.echo(f"attdarts plot: wrote {picture}", err=True)
