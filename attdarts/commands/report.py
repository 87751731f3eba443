"""`attdarts report`: results over seeds of trainings and searches, as papers report them."""

from __future__ import annotations

from pathlib import Path

import click

from attdarts.tools import report as reporting


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "output_format", type=click.Choice(reporting.FORMATS),
              default="markdown", show_default=True, help="A Markdown table or one JSON object.")
@click.option("--std", type=click.Choice(reporting.STD_KINDS), default="sample", show_default=True,
              help="Standard deviation over the runs: sample (n - 1) or population (n).")
@click.option("--mult-adds/--no-mult-adds", default=True, show_default=True,
              help="Count each trained network's multiply-adds (builds it from its checkpoint: "
                   "imports torch, about 2 s per distinct network at full size).")
@click.option("--html", "page", type=click.Path(dir_okay=False, path_type=Path), metavar="OUT.html",
              help="Write one self-contained page (no network needed) instead of printing: these "
                   "tables, each group's consensus, and per run its settings, environment, "
                   "learning curves, decisiveness, architecture weights and derived cell per "
                   "epoch.")
def report(run_dirs: tuple[Path, ...], output_format: str, std: str, mult_adds: bool,
           page: Path | None) -> None:
    """Aggregate runs over seeds: test error mean +- std, best of N, weights and mult-adds of
    trainings; per-seed genotypes and architecture-batch accuracy of searches; what the runs ran
    on (their environment.json), naming the fields in which they differ.

    RUN_DIRS are run directories of 'attdarts train' or 'attdarts search', or folders of them
    (such as the OUT of 'train --repeats' or 'search --seeds'). Trainings of the same cells,
    dataset, size and epochs form one row; searches of several seeds get their consensus
    genotype and each edge's agreement. Reads the runs' files; writes nothing unless --html.
    """
    try:
        runs = reporting.read_runs(run_dirs)
    except reporting.ReportError as error:
        raise click.ClickException(str(error)) from None
    if mult_adds:
        count_mult_adds(runs.trainings)
    summary = reporting.aggregate(runs, std)
    if page is not None:
        from attdarts.tools import report_html

        report_html.write_page(run_dirs, page, summary, reporting.format_markdown(summary))
        click.echo(f"attdarts report: wrote {page}", err=True)
        return
    click.echo(reporting.format_json(summary) if output_format == "json"
               else reporting.format_markdown(summary), nl=False)


def count_mult_adds(runs: list[reporting.TrainingRun]) -> None:
    """Fill in each run's multiply-adds, built once per distinct network from its last.pt (a run
    without a readable checkpoint keeps None, shown as '-'); torch is imported only if needed."""
    runs = [run for run in runs if (Path(run.path) / "last.pt").is_file()]
    if not runs:
        return
    from attdarts.networks.measure import count_multiply_adds
    from attdarts.runs.checkpoints import CheckpointError
    from attdarts.runs.train.evaluate import build_model
    from attdarts.runs.train.resume import load_run_checkpoint, stored_genotype

    counted: dict[tuple, int] = {}
    for run in runs:
        path = Path(run.path) / "last.pt"
        try:
            state = load_run_checkpoint(path)
            genotype = stored_genotype(state, path)
        except CheckpointError:
            continue
        settings = dict(state["model_config"])
        key = (tuple(run.cells.values()), tuple(sorted(settings.items())))
        if key not in counted:
            counted[key] = count_multiply_adds(build_model(genotype, settings))
        run.mult_adds = counted[key]
