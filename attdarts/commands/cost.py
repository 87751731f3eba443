"""`attdarts cost`: the cost table of a space's genotypes at the final network's size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from attdarts.cli import ZooOrFile
from attdarts.commands.compile import _CIFAR, _IMAGENET, MAX_CHANNELS, MAX_LAYERS, MAX_SIZE
from attdarts.language.errors import DslError
from attdarts.language.transform import parse_file


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        click.echo(f"attdarts cost: {message}...", err=True)


@click.command("cost")
@click.argument("file", type=ZooOrFile("space"))
@click.option("--space", "space_name", help="Space to price (default: the only one in FILE).")
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100", "imagenet"]),
              default="cifar10", show_default=True, help="Network skeleton and classes.")
@click.option("--channels", type=click.IntRange(min=1, max=MAX_CHANNELS),
              help=f"Initial channels C of the final network (default {_CIFAR['channels']} for "
                   f"CIFAR, {_IMAGENET['channels']} for ImageNet).")
@click.option("--layers", type=click.IntRange(min=3, max=MAX_LAYERS),
              help=f"Cells L of the final network (default {_CIFAR['layers']} for CIFAR, "
                   f"{_IMAGENET['layers']} for ImageNet).")
@click.option("--latency", is_flag=True,
              help="Also measure each entry's latency on --device (seconds to minutes).")
@click.option("--device", default="cpu", show_default=True,
              help="Where latency is measured: cpu, cuda, cuda:1, ...")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch of the latency measurements.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Intra-op threads for latency on the CPU.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True,
              help="Untimed runs before each latency measurement.")
@click.option("--repeats", type=click.IntRange(min=1), default=30, show_default=True,
              help="Timed runs per latency entry; the table holds their median and "
                   "interquartile range.")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="wall: the time a user waits; cpu: the thread's CPU time (one CPU thread "
                   "only), which leaves out time other processes held the core.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              metavar="COSTS.json", help="Write the table as JSON (atomically).")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="What to print: a summary, or the whole table as JSON.")
def cost(file: Path, space_name: str | None, dataset: str, channels: int | None,
         layers: int | None, latency: bool, device: str, batch_size: int, threads: int,
         warmup: int, repeats: int, clock: str, output: Path | None,
         output_format: str) -> None:
    """Price every choice of the genotypes of the space in FILE at the final network's size.
    FILE is a space file or a zoo space's name (att_darts, darts, ...).

    For every cell of the final network (C channels, L cells, not the search supernet) and
    every edge position in it (node, input; with its stride, channels and spatial size), the
    table holds each candidate operation's and attention's multiply-adds and parameters,
    counted as `attdarts compile` counts them, and the output attention's where the location
    has one; and a fixed part (stem, preprocessing, classifier; the auxiliary head's
    parameters apart). A genotype's total is the fixed part plus the entries of its choices:
    exact for counts (`compile --costs` prints both). The table assumes cells that
    concatenate all their nodes, as derivation writes them; genotypes it cannot price are
    refused by name.

    With --latency, each entry is also timed on --device at the final network's shapes
    (median of --repeats after --warmup, one thread on the CPU by default); the sum is an
    estimate (see benchmarks/costs.py). The table names the space, sizes, device, torch
    version and date. `attdarts derive --costs` and the budget method read it.
    """
    try:
        space = parse_file(file).space(space_name)
    except DslError as error:
        raise click.ClickException(error.located(str(file), None).render()) from None
    recipe = _IMAGENET if dataset == "imagenet" else _CIFAR
    channels = channels or recipe["channels"]
    layers = layers or recipe["layers"]
    if channels * channels * layers > MAX_SIZE:
        raise click.UsageError(f"--channels {channels} with --layers {layers} is too large: "
                               f"C*C*L exceeds {MAX_SIZE:,}")
    _progress("importing torch")
    from attdarts import api
    from attdarts.networks.costs import LatencySettings, table_json

    settings = None
    if latency:
        try:
            settings = LatencySettings(device=device, batch_size=batch_size, threads=threads,
                                       warmup=warmup, repeats=repeats, clock=clock)
        except ValueError as error:
            raise click.UsageError(str(error)) from None
    try:
        table = api.cost_table(space, dataset=dataset, channels=channels, layers=layers,
                               latency=settings, output=output, progress=_progress)
    except (ValueError, RuntimeError) as error:  # e.g. no such device
        raise click.ClickException(str(error).splitlines()[0]) from None
    if output_format == "json":
        click.echo(json.dumps(table_json(table), indent=1))
    else:
        for line in summary_lines(table):
            click.echo(line)
    if output is not None:
        click.echo(f"attdarts cost: wrote {output}", err=True)


def summary_lines(table) -> list[str]:
    """What one choice costs in the whole network, per cell type (every cell of that type)."""
    from attdarts.networks.costs import LATENCY

    latency = LATENCY in table.measures
    lines = [f"cost table   {table.describe()}",
             f"made        torch {table.environment.get('torch', '?')}, "
             f"{table.environment.get('created', '?')}"]
    fixed = table.fixed
    text = (f"fixed        {fixed['multiply_adds'] / 1e6:,.2f} M mult-adds, "
            f"{fixed['parameters']:,} parameters (auxiliary head: "
            f"{fixed['parameters_auxiliary_head']:,} more)")
    if latency:
        text += f", {fixed[LATENCY]:.3f} ms"
    lines += [text, "", "one choice on one edge position, in every cell of its type "
              "(M mult-adds / k parameters" + (" / ms" if latency else "") + "):"]
    costs = {measure: table.kind_costs(measure) for measure in table.measures}
    last = len(table.cells[0].edges) - 1  # reads the last node before it: a stride-1 edge
    columns = [("normal", 0, "normal, input"), ("reduce", 0, "reduce, input"),
               ("reduce", last, "reduce, node")]
    width = 22 if latency else 16
    lines.append(f"{'candidate':<22}" + "".join(f"{label:>{width}}" for _, _, label in columns))
    from attdarts.language.printer import format_call

    def cell(kind: str, position: int, row: int, part: str) -> str:
        values = [getattr(costs[m][kind], part)[position][row] for m in table.measures]
        text = f"{values[0] / 1e6:.2f}/{values[1] / 1e3:.1f}"
        if latency:
            text += f"/{values[2]:.3f}"
        return f"{text:>{width}}"

    for row, call in enumerate(table.operations):
        lines.append(f"{format_call(call):<22}" + "".join(
            cell(kind, position, row, "operations") for kind, position, _ in columns))
    for row, call in enumerate(table.attentions):
        lines.append(f"{'>> ' + format_call(call):<22}" + "".join(
            cell(kind, position, row, "attentions") for kind, position, _ in columns))
    if table.space.location_spec.output_attention:
        for row, call in enumerate(table.attentions):
            values = [[costs[m][kind].output[row] for m in table.measures]
                      for kind in ("normal", "reduce")]
            texts = [f"{v[0] / 1e6:.2f}/{v[1] / 1e3:.1f}" + (f"/{v[2]:.3f}" if latency else "")
                     for v in values]
            lines.append(f"{'c_k >> ' + format_call(call):<22}{texts[0]:>{width}}"
                         f"{texts[1]:>{width}}")
    return lines
