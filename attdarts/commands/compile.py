"""`attdarts compile`: build the discrete network of a genotype (or a space's search supernet)
and print its size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from attdarts import recipes
from attdarts.cli import ZooOrFile, is_out_of_memory
from attdarts.language import ir
from attdarts.language.errors import DslError
from attdarts.language.transform import parse_file

_CIFAR = recipes.TRAIN["cifar"]
_IMAGENET = recipes.TRAIN["imagenet"]
# (C, L) per dataset: DARTS ImageNet for imagenet, the paper's CIFAR setting otherwise
_DEFAULT_SIZES = {"imagenet": (_IMAGENET["channels"], _IMAGENET["layers"])}
_CIFAR_SIZE = (_CIFAR["channels"], _CIFAR["layers"])
_SEARCH = recipes.SEARCH["paper"]
# Far above any published network (C <= 64, L <= 30), low enough that a typo such as 100000 is
# refused at once instead of allocating gigabytes or building for minutes (about 20 ms per cell).
MAX_CHANNELS = 512
MAX_LAYERS = 200
# C * C * L grows like the parameter count (3.2 M at C=36, L=20); this allows about 160 M.
MAX_SIZE = _CIFAR["channels"] ** 2 * _CIFAR["layers"] * 50


def _progress(message: str) -> None:
    """A status line on stderr while a stage runs, only for a person watching a terminal."""
    if _stderr_is_terminal():
        click.echo(f"attdarts compile: {message}...", err=True)


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


@click.command("compile")
@click.argument("file", type=ZooOrFile("genotype", "space"))
@click.option("--genotype", "genotype_name", help="Genotype to build (default: the only one in FILE).")
@click.option("--space", "space_name",
              help="Space whose search supernet to build (default: the only one in a FILE that "
                   "holds spaces and no genotype).")
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100", "imagenet"]), default="cifar10",
              show_default=True, help="Network skeleton and number of classes.")
@click.option("--channels", type=click.IntRange(min=1, max=MAX_CHANNELS),
              help=f"Initial channels C, at most {MAX_CHANNELS} (default {_CIFAR['channels']} for "
                   f"CIFAR, {_IMAGENET['channels']} for ImageNet).")
@click.option("--layers", type=click.IntRange(min=3, max=MAX_LAYERS),
              help=f"Number of cells L, at most {MAX_LAYERS} (default {_CIFAR['layers']} for "
                   f"CIFAR, {_IMAGENET['layers']} for ImageNet).")
@click.option("--recipe", type=click.Choice(list(recipes.SEARCH)), default=_SEARCH["recipe"],
              show_default=True,
              help="For a space: build it at this search recipe's size (C and L; e.g. drnas: "
                   "C=36, L=20). --channels and --layers win.")
@click.option("--auxiliary/--no-auxiliary", default=True, show_default=True,
              help="Build the auxiliary head after cell 2L/3.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--costs", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="COSTS.json",
              help="A cost table (attdarts cost): print its predicted totals beside the "
                   "measured ones; sizes default to the table's.")
def compile_(file: Path, genotype_name: str | None, space_name: str | None, dataset: str,
             channels: int | None, layers: int | None, recipe: str, auxiliary: bool,
             output_format: str, costs: Path | None) -> None:
    """Build the discrete network of a genotype, or the search supernet of a space, and print
    its size. FILE is a .geno file or a zoo name (darts_v2, att_darts; a space such as darts).

    For a genotype: the parameter count without the auxiliary head (the number papers report)
    and with it, multiply-adds per image (torch.utils.flop_counter), the output shape and a
    per-cell table. Defaults are the paper's evaluation settings: CIFAR-10, C=36, L=20,
    auxiliary head.

    For a space (FILE holds spaces and no genotype, or --space): its search supernet at the
    search size (CIFAR-10, C=16, L=8, or --recipe's size, unless --channels / --layers /
    --dataset cifar100 say otherwise), with its search methods: weights, architecture
    parameters, multiply-adds of one image through every candidate (`none` is not evaluated)
    and a per-cell table. A space with stages (P-DARTS): its first stage's supernet, and a table
    of every stage (cells, candidates kept and the stage's partial channels k, weights built and
    in use, fewest to most, and architecture parameters searched; a stage that widens partial
    channels counts its widened supernet).

    C*C*L may not exceed 36*36*20*50 (about 160 M parameters); a network that does not fit in
    memory is reported as such. On a terminal, a status line per stage goes to stderr.
    """
    try:
        document = parse_file(file)
        item = _pick(document, genotype_name, space_name)
    except DslError as error:
        raise click.ClickException(error.located(str(file), None).render()) from None
    is_space = isinstance(item, ir.Space)
    if is_space and dataset == "imagenet":
        raise click.UsageError("a search supernet is built for cifar10 or cifar100, not imagenet")
    table = None
    if costs is not None:
        if is_space:
            raise click.UsageError("--costs prices a genotype, not a space's supernet")
        table = _read_costs(costs)
        channels, layers = channels or table.channels, layers or table.layers
    searched = recipes.SEARCH[recipe]
    sizes = ((searched["channels"], searched["layers"]) if is_space
             else _DEFAULT_SIZES.get(dataset, _CIFAR_SIZE))
    channels = channels or sizes[0]
    stage_layers = layers or sizes[1]  # a space's stages that do not give their cells
    if is_space and item.stages and not layers:
        layers = item.stages[0].layers
    layers = layers or sizes[1]
    if channels * channels * layers > MAX_SIZE:
        raise click.UsageError(
            f"--channels {channels} with --layers {layers} is too large: C*C*L = "
            f"{channels * channels * layers:,} exceeds {MAX_SIZE:,} "
            "(36*36*20*50, about 160 M parameters)")
    options = {"dataset": dataset, "channels": channels, "layers": layers, "progress": _progress}
    try:
        if is_space:
            summary, rows = _measure_supernet(item, **options)
            if item.stages:
                summary["stages"] = _measure_stages(item, **{**options, "layers": stage_layers})
        else:
            summary, rows = _measure(item, auxiliary=auxiliary, **options)
    except ValueError as error:  # e.g. channels not divisible by partial_channels
        raise click.ClickException(str(error)) from None
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        raise click.ClickException(
            f"not enough memory to build {item.name} with C={channels}, L={layers}; "
            "try smaller --channels or --layers") from None
    if table is not None:
        summary["predicted"] = _predict(table, item, costs, dataset, channels, layers)
    if output_format == "json":
        click.echo(json.dumps(summary, indent=2))
    elif is_space:
        _print_supernet(summary, rows)
    else:
        _print_network(summary, rows, auxiliary)


def _pick(document: ir.Document, genotype_name: str | None,
          space_name: str | None) -> ir.Genotype | ir.Space:
    """The genotype to build or, with --space or in a file of spaces only, the space."""
    if space_name is not None or (genotype_name is None and document.spaces
                                  and not document.genotypes):
        return document.space(space_name)
    return document.genotype(genotype_name)


def _print_network(summary: dict, rows: list, auxiliary: bool) -> None:
    multiply_adds = summary["multiply_adds"]
    click.echo(f"genotype     {summary['genotype']} ({summary['dataset']}, "
               f"C={summary['channels']}, L={summary['layers']})")
    click.echo(f"parameters   {summary['parameters']:,} (without auxiliary head)")
    if auxiliary:
        click.echo(f"             {summary['parameters_with_auxiliary']:,} (with auxiliary head)")
    click.echo(f"mult-adds    {multiply_adds / 1e6:,.1f} M per image ({multiply_adds:,})")
    predicted = summary.get("predicted")
    if predicted is not None:
        click.echo(f"predicted    {predicted['parameters']:,} parameters, "
                   f"{predicted['multiply_adds']:,} mult-adds by the cost table "
                   f"({_agreement(summary, predicted)})")
        if "latency_ms" in predicted:
            click.echo(f"             {predicted['latency_ms']:.3f} ms on "
                       f"{predicted['latency_device']} (batch {predicted['latency_batch_size']}; "
                       "not measured here)")
    click.echo(f"input        {tuple(summary['input_shape'])}")
    click.echo(f"output       {tuple(summary['output_shape'])}")
    _print_cells(rows, "parameters")


def _agreement(summary: dict, predicted: dict) -> str:
    same = all(summary[key] == predicted[key] for key in ("parameters", "multiply_adds"))
    return "equal to the measured counts" if same else "DIFFERENT from the measured counts"


def _read_costs(path: Path):
    from attdarts.networks.costs import CostError, read_cost_table

    try:
        return read_cost_table(path)
    except CostError as error:
        raise click.ClickException(str(error)) from None


def _predict(table, genotype: ir.Genotype, path: Path, dataset: str, channels: int,
             layers: int) -> dict:
    """The table's totals for `genotype` (the same size and dataset, or a one-line error)."""
    from attdarts.networks.costs import CostError

    problem = table.matches(table.space, dataset=dataset, channels=channels, layers=layers)
    if problem:
        raise click.ClickException(f"{path}: {problem}; compile at the table's size or build "
                                   "another table")
    try:
        predicted = table.price(genotype)
    except CostError as error:
        raise click.ClickException(str(error)) from None
    if table.latency is not None:
        predicted["latency_device"] = table.environment.get("device_name", table.latency.device)
        predicted["latency_batch_size"] = table.latency.batch_size
    return predicted


def _print_supernet(summary: dict, rows: list) -> None:
    multiply_adds = summary["multiply_adds"]
    methods = ", ".join(
        name + ("(" + ", ".join(f"{key}={value}" for key, value in settings.items()) + ")"
                if settings else "")
        for name, settings in summary["methods"].items())
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in summary["architecture"].items())
    click.echo(f"space        {summary['space']} (search supernet, {summary['dataset']}, "
               f"C={summary['channels']}, L={summary['layers']})")
    click.echo(f"methods      {methods or 'none'}")
    click.echo(f"weights      {summary['weights']:,}")
    click.echo(f"architecture {summary['architecture_parameters']:,} ({kinds})")
    click.echo(f"mult-adds    {multiply_adds / 1e6:,.1f} M per image ({multiply_adds:,}; every "
               "candidate but none)")
    click.echo(f"input        {tuple(summary['input_shape'])}")
    click.echo(f"output       {tuple(summary['output_shape'])}")
    if "stages" in summary:
        _print_stages(summary["stages"])
    _print_cells(rows, "weights")


def _print_stages(stages: list[dict]) -> None:
    """One line per stage: cells, candidates kept per edge, weights built and in use (fewest to
    most: which candidates a stage keeps is learnt), architecture parameters searched."""
    click.echo("")
    click.echo(f"{'stage':>5}  {'cells':>5}  {'kept per edge':<26} {'weights':>11} "
               f"{'in use':>25}  architecture")
    for row in stages:
        kept = ", ".join(f"{row[key]} {key}" for key in ("operations", "attentions")
                         if row[key] is not None) or "all"
        if row.get("partial_channels") is not None:
            kept += f", k={row['partial_channels']}"
        fewest, most = row["weights_in_use"]
        in_use = f"{fewest:,}" if fewest == most else f"{fewest:,} to {most:,}"
        click.echo(f"{row['stage']:>5}  {row['layers']:>5}  {kept:<26} {row['weights']:>11,} "
                   f"{in_use:>25}  {row['architecture_searched']:,} of "
                   f"{row['architecture_parameters']:,}")


def _print_cells(rows: list, label: str) -> None:
    click.echo("")
    click.echo(f"{'cell':>4}  {'type':<6} {'channels':>8} {'spatial':>8} {label:>11}")
    for r in rows:
        click.echo(f"{r.index:>4}  {r.kind:<6} {r.channels_out:>8} {f'{r.spatial}x{r.spatial}':>8} "
                   f"{r.parameters:>11,}")


def _measure(genotype, **options):
    """`networks.measure.measure`, importing torch only when a network is built."""
    _progress("importing torch")
    from attdarts.networks.measure import measure

    return measure(genotype, **options)


def _measure_stages(space, **options):
    """`networks.measure.measure_stages` (torch is imported by then)."""
    from attdarts.networks.measure import measure_stages

    return measure_stages(space, **options)


def _measure_supernet(space, **options):
    """`networks.measure.measure_supernet`, importing torch only when a supernet is built."""
    _progress("importing torch")
    from attdarts.networks.measure import measure_supernet

    return measure_supernet(space, **options)
