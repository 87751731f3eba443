"""`attdarts derive`: the best genotype of a search run within caps on its final cost."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from attdarts.commands.compile import MAX_CHANNELS, MAX_LAYERS
from attdarts.language.quantities import parse_count, parse_latency
from attdarts.networks.budget_derive import BudgetError


class _Quantity(click.ParamType):
    """A suffixed number (600M, 3.5M) or latency (12ms), refused with one line."""

    def __init__(self, latency: bool) -> None:
        self.latency = latency
        self.name = "latency" if latency else "count"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return value
        try:
            return parse_latency(value) if self.latency else parse_count(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        click.echo(f"attdarts derive: {message}...", err=True)


@click.command("derive")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--epoch", type=click.IntRange(min=1),
              help="Epoch whose weights to derive from (default: the last in weights.jsonl).")
@click.option("--max-macs", type=_Quantity(False), metavar="COUNT",
              help="At most this many multiply-adds per image in the final network, e.g. 600M.")
@click.option("--max-params", type=_Quantity(False), metavar="COUNT",
              help="At most this many parameters (without the auxiliary head), e.g. 3.5M.")
@click.option("--max-latency", type=_Quantity(True), metavar="TIME",
              help="At most this latency by the cost table (--costs, measured with "
                   "`attdarts cost --latency`), e.g. 12ms.")
@click.option("--costs", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="COSTS.json",
              help="Cost table to price with (default: one built for the final size).")
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100", "imagenet"]),
              help="Final network's dataset (default: the table's, or the run's CIFAR).")
@click.option("--channels", type=click.IntRange(min=1, max=MAX_CHANNELS),
              help="Final network's initial channels C (default: the table's, or 36).")
@click.option("--layers", type=click.IntRange(min=3, max=MAX_LAYERS),
              help="Final network's cells L (default: the table's, or 20).")
@click.option("--pareto", is_flag=True,
              help="Also list the front of score against the capped costs (multiply-adds "
                   "without caps): every genotype no other beats in both.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compile the genotype and check its counts against the table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE.geno", help="Write the genotype here (default: print it).")
def derive(run: Path, epoch: int | None, max_macs: float | None, max_params: float | None,
           max_latency: float | None, costs: Path | None, dataset: str | None,
           channels: int | None, layers: int | None, pareto: bool, verify: bool,
           output: Path | None) -> None:
    """Derive from the search run in RUN the genotype with the highest architecture score whose
    cost in the final network is within the caps.

    The score is what derivation maximises: the sum, over the kept edges, of their operation
    weights (times the edge weights under edge normalisation), less what each chosen attention
    (and output attention) gives up against the strongest one. Without caps the result is the
    run's own derived genotype. The search over the whole space is exact: costs and scores add
    up over nodes, so dynamic programming over nodes, keeping only choices no other beats in
    score and every capped cost, finds the best genotype within the caps. Costs come from a
    cost table at the final size (the training recipe's C=36, L=20 unless --costs or
    --channels/--layers say otherwise), so the caps hold for the network `attdarts compile`
    builds; --verify compiles it to check. Weights are read from RUN/weights.jsonl.

    The genotype is written with its score and costs as metadata. Caps take counts with an
    optional suffix k, M or G (600M, 3.5M) and latencies with a unit (12ms, 800us). Without
    -o the genotype goes to stdout and the summary (and --pareto's front) to stderr; with -o
    they go to stdout.
    """
    from attdarts import api
    from attdarts.language.printer import format_checked
    from attdarts.networks.costs import CostError

    if max_latency is not None and costs is None:
        raise click.UsageError("--max-latency needs --costs COSTS.json, a table with latency "
                               "(attdarts cost SPACE --latency -o COSTS.json)")
    _progress("pricing the space at the final size")
    try:
        derived = api.derive(run, epoch=epoch, max_macs=max_macs, max_params=max_params,
                             max_latency=max_latency, costs=costs, dataset=dataset,
                             channels=channels, layers=layers, pareto=pareto, verify=verify,
                             output=output)
    except (BudgetError, CostError) as error:
        raise click.ClickException(str(error)) from None
    for warning in derived.warnings:
        click.echo(f"attdarts derive: warning: {warning}", err=True)
    if output is None:
        click.echo(format_checked(derived.genotype, what="the derived genotype"), nl=False)
    lines = _summary(derived)
    if pareto:
        lines += ["", f"front ({len(derived.front)} genotypes, best score first):"]
        lines += _front_lines(derived)
    echo = (lambda line: click.echo(line, err=True)) if output is None else click.echo
    for line in lines:
        echo(line)
    if output is not None:
        click.echo(f"attdarts derive: wrote {output}", err=True)


def _costs_text(costs: dict) -> str:
    text = f"{costs['multiply_adds'] / 1e6:,.2f} M mult-adds, {costs['parameters'] / 1e6:.3f} M " \
           "parameters"
    if "latency_ms" in costs:
        text += f", {costs['latency_ms']:.3f} ms"
    return text


def _summary(derived) -> list[str]:
    caps = ", ".join(f"latency <= {cap.limit:g} ms" if cap.measure == "latency_ms" else
                     f"{cap.measure.replace('_', '-')} <= {int(cap.limit):,}"
                     for cap in derived.caps) or "none"
    lines = [f"epoch        {derived.epoch}",
             f"caps         {caps}",
             f"genotype     score {derived.score:.4f}: {_costs_text(derived.costs)}",
             f"unconstrained score {derived.unconstrained_score:.4f}: "
             f"{_costs_text(derived.unconstrained_costs)}"]
    if derived.measured is not None:
        lines.append(f"compiled     {derived.measured['multiply_adds']:,} mult-adds, "
                     f"{derived.measured['parameters']:,} parameters (as the table predicts)")
    return lines


def _front_lines(derived) -> list[str]:
    latency = "latency_ms" in derived.costs
    lines = [f"{'score':>10} {'mult-adds':>14} {'parameters':>12}" +
             (f" {'latency ms':>11}" if latency else "")]
    for score, costs, _ in derived.front:
        line = f"{score:>10.4f} {costs['multiply_adds']:>14,} {costs['parameters']:>12,}"
        if latency:
            line += f" {costs['latency_ms']:>11.3f}"
        lines.append(line)
    return lines
