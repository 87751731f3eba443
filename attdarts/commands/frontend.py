"""`attdarts fmt` and `attdarts check`: the front-end commands (no torch)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from attdarts import api
from attdarts.files import WriteError
from attdarts.language.errors import DslError

_PATHS = click.argument("paths", nargs=-1, required=True,
                        type=click.Path(exists=True, path_type=Path))


@click.command()
@_PATHS
@click.option("--check", "check_only", is_flag=True,
              help="Write nothing; list the files that would change and exit 1 if any would.")
def fmt(paths: tuple[Path, ...], check_only: bool) -> None:
    """Rewrite genotype files in canonical form.

    PATHS are files or directories (searched for *.geno). Files are rewritten atomically, and only
    after the formatted text has been parsed back to the same genotypes; a rewritten file keeps
    its permissions, a symbolic link is written through, and a UTF-8 byte-order mark is dropped.
    Read-only files and files that cannot be written (full disk, read-only filesystem) are
    reported and left untouched; the other files are still formatted. Exit status: 0 when
    nothing is wrong, 1 when a file has errors (an empty file among them), cannot be written or
    (with --check) would change, and when a directory in PATHS holds no *.geno file.
    """
    failed = _report_empty_directories("fmt", paths)
    for path in api.expand_paths(paths):
        try:
            result = api.format_file(path, write=not check_only)
        except DslError as error:
            click.echo(error.render(), err=True)
            failed = True
            continue
        except WriteError as error:
            click.echo(f"attdarts fmt: {error}", err=True)
            failed = True
            continue
        if result.changed:
            if check_only:
                click.echo(f"would reformat {path}")
                failed = True
            else:
                click.echo(f"reformatted {path}", err=True)
    raise SystemExit(1 if failed else 0)


@click.command()
@_PATHS
def check(paths: tuple[Path, ...]) -> None:
    """Report every problem in genotype files.

    Each problem is printed as file:line:col: message, with the source line, a caret and a hint.
    Exit status 0 when all files are valid, with one summary line (files, genotypes and spaces
    checked) when stdout is a terminal and nothing when it is not; exit status 1 on any error,
    and when a directory in PATHS holds no *.geno file (nothing was checked).
    """
    failed = _report_empty_directories("check", paths)
    results = [api.check_path(path) for path in api.expand_paths(paths)]
    for result in results:
        for error in result.errors:
            click.echo(error.render(), err=True)
            failed = True
    if not failed and _stdout_is_terminal():
        click.echo(_summary(results))
    raise SystemExit(1 if failed else 0)


def _stdout_is_terminal() -> bool:
    """Whether a person reads stdout (the summary line is for them, not for pipes or scripts)."""
    return sys.stdout.isatty()


def _summary(results) -> str:
    def count(number: int, noun: str) -> str:
        return f"{number} {noun}{'' if number == 1 else 's'}"

    genotypes = sum(result.genotypes for result in results)
    spaces = sum(result.spaces for result in results)
    return (f"checked {count(len(results), 'file')}: {count(genotypes, 'genotype')}, "
            f"{count(spaces, 'space')}, no problems")


def _report_empty_directories(command: str, paths) -> bool:
    """Say which directories hold no genotype file; True if any (the command then exits 1)."""
    empty = api.empty_directories(paths)
    for path in empty:
        click.echo(f"attdarts {command}: {path}: no genotype files (*.geno) in this directory; "
                   f"nothing {'checked' if command == 'check' else 'formatted'}", err=True)
    return bool(empty)
