"""`attdarts compile`: build the discrete network of a genotype and print its size."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import DslError
from ..transform import parse_file

_DEFAULT_SIZES = {"imagenet": (48, 14)}  # DARTS ImageNet; CIFAR: the paper's C=36, L=20


@click.command("compile")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--genotype", "genotype_name", help="Genotype to build (default: the only one in FILE).")
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100", "imagenet"]), default="cifar10",
              show_default=True, help="Network skeleton and number of classes.")
@click.option("--channels", type=click.IntRange(min=1),
              help="Initial channels C (default 36 for CIFAR, 48 for ImageNet).")
@click.option("--layers", type=click.IntRange(min=3),
              help="Number of cells L (default 20 for CIFAR, 14 for ImageNet).")
@click.option("--auxiliary/--no-auxiliary", default=True, show_default=True,
              help="Build the auxiliary head after cell 2L/3.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def compile_(file: Path, genotype_name: str | None, dataset: str, channels: int | None,
             layers: int | None, auxiliary: bool, output_format: str) -> None:
    """Build the discrete network of a genotype and print its size.

    Prints the parameter count without the auxiliary head (the number papers report) and with it,
    multiply-adds per image (torch.utils.flop_counter), the output shape and a per-cell table.
    Defaults are the paper's evaluation settings: CIFAR-10, C=36, L=20, auxiliary head.
    """
    try:
        genotype = parse_file(file).genotype(genotype_name)
    except DslError as error:
        raise click.ClickException(error.located(str(file), None).render()) from None
    default_channels, default_layers = _DEFAULT_SIZES.get(dataset, (36, 20))
    channels = channels or default_channels
    layers = layers or default_layers

    import torch  # noqa: PLC0415 - only here: the front-end commands stay torch-free

    from ..network import compile_network, count_multiply_adds, count_parameters, describe_network

    model = compile_network(genotype, dataset=dataset, channels=channels, layers=layers,
                            auxiliary=auxiliary)
    rows = describe_network(model)
    multiply_adds = count_multiply_adds(model)
    model.eval()
    with torch.no_grad():
        logits, _ = model(torch.zeros(1, 3, model.input_size, model.input_size))
    summary = {
        "genotype": genotype.name,
        "dataset": dataset,
        "channels": channels,
        "layers": layers,
        "input_shape": [1, 3, model.input_size, model.input_size],
        "output_shape": list(logits.shape),
        "parameters": count_parameters(model, auxiliary=False),
        "parameters_with_auxiliary": count_parameters(model, auxiliary=True) if auxiliary else None,
        "multiply_adds": multiply_adds,
        "cells": [
            {"index": r.index, "type": r.kind, "channels": r.channels_out, "spatial": r.spatial,
             "parameters": r.parameters} for r in rows
        ],
    }
    if output_format == "json":
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"genotype     {genotype.name} ({dataset}, C={channels}, L={layers})")
    click.echo(f"parameters   {summary['parameters']:,} (without auxiliary head)")
    if auxiliary:
        click.echo(f"             {summary['parameters_with_auxiliary']:,} (with auxiliary head)")
    click.echo(f"mult-adds    {multiply_adds / 1e6:,.1f} M per image ({multiply_adds:,})")
    click.echo(f"input        {tuple(summary['input_shape'])}")
    click.echo(f"output       {tuple(summary['output_shape'])}")
    click.echo("")
    click.echo(f"{'cell':>4}  {'type':<6} {'channels':>8} {'spatial':>8} {'parameters':>11}")
    for r in rows:
        click.echo(f"{r.index:>4}  {r.kind:<6} {r.channels_out:>8} {f'{r.spatial}x{r.spatial}':>8} "
                   f"{r.parameters:>11,}")
