"""`attdarts consensus`: the genotype most seeds agree on, edge by edge."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from attdarts.tools import consensus as consensus_module


@click.command(name="consensus")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the consensus genotype to FILE (default: stdout).")
@click.option("--name", metavar="NAME", help="Name of the consensus genotype (default: "
                                             "SPACE_consensus).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the votes and agreement of every edge as one JSON object.")
def consensus(paths: tuple[Path, ...], output: Path | None, name: str | None,
              as_json: bool) -> None:
    """The genotype most seeds agree on, edge by edge, with each edge's agreement.

    PATHS are search run directories (RUN/seed-*), folders of them (the OUT of 'search
    --seeds') or .geno files. Node by node, the inputs most seeds read win, then per input the
    operation and the attention most seeds have there; ties go to the larger summed
    architecture weights of the runs (weights.jsonl), then to the space's order. The file says
    above each node how many seeds have each edge's input, operation, attention and whole edge,
    and its metadata the mean agreement (README "Reading a search").

    \b
    Exit status: 0 written; 2 genotypes that cannot be combined or unreadable paths.
    """
    try:
        members = consensus_module.read_members(paths)
        result = consensus_module.combine(members, name=name)
        text = consensus_module.consensus_text(result)
    except consensus_module.ConsensusError as error:
        click.echo(f"attdarts consensus: {error}", err=True)
        sys.exit(2)
    if output is not None:
        from attdarts.files import atomic_write_text

        atomic_write_text(output, text)
        click.echo(f"attdarts consensus: wrote {output} ({len(members)} genotypes, mean "
                   f"whole-edge agreement {result.agreement:.2f})", err=True)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    elif output is None:
        click.echo(text, nl=False)
