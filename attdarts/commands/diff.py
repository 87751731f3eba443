"""`attdarts diff` (semantic diff of genotype files) and `attdarts git-diff-driver` (the same,
behind git's external diff interface)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from attdarts.language.errors import DslError
from attdarts.language.transform import parse_file
from attdarts.tools.diff import (
    ItemDiff, diff_documents, diff_genotypes, format_json, format_markdown, format_text, is_same,
)
from attdarts.tools.gitdiff import git_diff_text


@click.command(name="diff")
@click.argument("a", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("b", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--genotype", "name", metavar="NAME", help="Compare the genotype NAME of both files.")
@click.option("--a-genotype", metavar="NAME", help="Genotype of A to compare (overrides --genotype).")
@click.option("--b-genotype", metavar="NAME", help="Genotype of B to compare (overrides --genotype).")
@click.option("--format", "output_format", type=click.Choice(["text", "json", "markdown"]),
              default="text", show_default=True,
              help="Lines of text, one JSON object, or Markdown for a pull-request comment.")
@click.option("--meta", is_flag=True, help="Also report changed names and metadata (source = ...).")
@click.option("--render", "drawing", type=click.Path(dir_okay=False, path_type=Path),
              metavar="OUT", help="Also draw both genotypes' cells side by side, A left and B "
                                  "right, changed edges in red (A) and green (B): OUT.svg, .png, "
                                  ".pdf or .dot (needs graphviz's dot except for .dot).")
def diff(a: Path, b: Path, name: str | None, a_genotype: str | None, b_genotype: str | None,
         output_format: str, meta: bool, drawing: Path | None) -> None:
    """Semantic diff of the genotypes in files A and B.

    Per cell and node: edges added or removed, operations or attentions changed on an edge (an
    edge is named by its node and its input), changes of the output's concatenation and of its
    attention. A node's edges are unordered; layout and comments never count. Without a genotype
    name, files holding one genotype each are compared whatever the names, and files holding
    several are paired by name. The same file may be given twice with --a-genotype/--b-genotype.

    --format markdown prints a title with the number of changes and a table (cell, node, input,
    before, after) to paste into a pull-request comment. --render OUT draws the two genotypes
    (one pair: files with several genotypes need --genotype or --a-genotype/--b-genotype).

    \b
    Exit status: 0 no difference, 1 differences, 2 trouble (as diff(1)).
    Git: see `attdarts git-diff-driver --help`.
    """
    try:
        documents = (parse_file(a), parse_file(b))
        a_name = a_genotype or name
        b_name = b_genotype or name
        if a_name is None and b_name is None:
            diffs = diff_documents(*documents, meta=meta)
        else:
            first = _pick(documents[0], a_name, a)
            second = _pick(documents[1], b_name, b)
            diffs = (ItemDiff("genotype", first.name, second.name,
                              diff_genotypes(first, second, meta=meta)),)
        pair = _pair(documents, a_name, b_name, a, b) if drawing is not None else None
    except DslError as error:
        click.echo(str(error), err=True)
        sys.exit(2)
    if pair is not None:
        _draw(pair, drawing, (str(a), str(b)))
    if output_format == "json":
        click.echo(format_json(diffs, str(a), str(b)), nl=False)
    elif output_format == "markdown":
        click.echo(format_markdown(diffs, str(a), str(b)), nl=False)
    else:
        click.echo(format_text(diffs), nl=False)
    sys.exit(0 if is_same(diffs) else 1)


def _pair(documents, a_name, b_name, a: Path, b: Path):
    """The two genotypes --render draws: the named ones, or each file's only genotype."""
    if a_name is not None or b_name is not None:
        return _pick(documents[0], a_name, a), _pick(documents[1], b_name, b)
    for document, path in zip(documents, (a, b)):
        if len(document.genotypes) != 1:
            raise DslError.single(
                f"--render draws one pair of genotypes and this file holds "
                f"{len(document.genotypes)}; name them with --genotype or "
                "--a-genotype/--b-genotype").located(str(path), None)
    return documents[0].genotypes[0], documents[1].genotypes[0]


def _draw(pair, output: Path, titles: tuple[str, str]) -> None:
    """Write the side-by-side drawing; a problem is one line and exit status 2."""
    from attdarts.tools.render import (
        GraphvizMissing, RenderFailed, diff_dot, output_format, write_drawing,
    )

    try:
        output_format(output)
        write_drawing(diff_dot(*pair, titles=titles), output)
    except (ValueError, GraphvizMissing, RenderFailed, OSError) as error:
        click.echo(f"attdarts diff: {error}", err=True)
        sys.exit(2)


def _pick(document, name, path):
    try:
        return document.genotype(name)
    except DslError as error:
        raise error.located(str(path), None) from None


@click.command(name="git-diff-driver", context_settings={"ignore_unknown_options": True})
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
def git_diff_driver(arguments: tuple[str, ...]) -> None:
    """Git's external diff interface: show semantic diffs of *.geno files in `git diff`/`log -p`.

    Git calls it with 7 arguments (path old-file old-hex old-mode new-file new-hex new-mode) and 9
    for a rename. Set it up once per repository:

    \b
        echo '*.geno diff=attdarts' >> .gitattributes
        git config diff.attdarts.command 'attdarts git-diff-driver'

    It always exits 0 (git stops at a failing driver). A file that does not parse, and a file
    added or deleted, is shown as a plain unified diff with the reason on top.
    """
    if len(arguments) not in (7, 9):
        raise click.UsageError(
            f"expected git's 7 or 9 external-diff arguments, got {len(arguments)}")
    path, old_file, _, _, new_file, _, _ = arguments[:7]
    new_path = arguments[7] if len(arguments) == 9 else path
    click.echo(git_diff_text(path, new_path, old_file, new_file), nl=False)
