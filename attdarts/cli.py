"""The command-line shell: `attdarts fmt/check/compile/search/train/...`.

A thin layer. Each command lives in `attdarts/commands/<module>.py` as a click command and is
imported only when invoked, so front-end commands never pay for importing torch.
"""

from __future__ import annotations

import importlib
import sys

import click

# command name -> (module under attdarts.commands, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "fmt": ("frontend", "fmt", "Rewrite genotype files in canonical form."),
    "check": ("frontend", "check", "Report every problem in genotype files."),
    "import": ("interop", "import_", "Convert DARTS-family genotype files into the DSL."),
    "export": ("interop", "export", "Write genotypes in DARTS or Att-DARTS formats."),
    "compile": ("compile", "compile_", "Build the discrete network and print its size."),
    "cost": ("cost", "cost", "Price every choice of a space's genotypes at the final size."),
    "derive": ("derive", "derive", "Derive a search run's best genotype within cost caps."),
    "search": ("search", "search", "Run an Att-DARTS architecture search."),
    "train": ("train", "train", "Train a genotype from scratch (evaluation recipe)."),
    "test": ("train", "test", "Evaluate a training checkpoint on the test split."),
    "export-model": ("export_model", "export_model",
                     "Write a network for inference as ONNX or a torch.export .pt2 file."),
    "predict": ("predict", "predict", "Print the most probable classes of image files."),
    "report": ("report", "report", "Aggregate runs over seeds (mean +- std) as papers report them."),
    "render": ("render", "render", "Draw cells with graphviz."),
    "diff": ("diff", "diff", "Semantic diff of two genotypes."),
    "plot": ("plot", "plot", "Plot architecture weights of a search run."),
    "consensus": ("consensus", "consensus", "The genotype most seeds agree on, edge by edge."),
    "git-diff-driver": ("diff", "git_diff_driver",
                        "Semantic diff of *.geno files for git's external diff interface."),
}


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure (host or device). Judged by type name and message,
    so this module needs no torch: torch reports a failed allocation as a RuntimeError ("can't
    allocate memory") or, on CUDA, as torch.OutOfMemoryError."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        phrase in text for phrase in ("out of memory", "can't allocate", "cannot allocate"))


class ZooOrFile(click.ParamType):
    """A `.geno` file, or the name of a zoo genotype or space (`darts_v2`, `att_darts`), so that
    the commands work from an installed wheel, whose zoo sits inside the package. An existing path
    wins over a zoo name; `kinds` are tried in order ("genotype" before "space")."""

    name = "file"

    def __init__(self, *kinds: str, dir_okay: bool = False) -> None:
        self.kinds = kinds
        self.dir_okay = dir_okay

    def convert(self, value, param, ctx):
        from pathlib import Path

        from attdarts import api

        path = Path(value)
        if path.exists():
            if path.is_dir() and not self.dir_okay:
                self.fail(f"'{value}' is a directory, not a .geno file", param, ctx)
            return path
        if path.suffix == ".geno" or len(path.parts) > 1:
            self.fail(f"'{value}' does not exist", param, ctx)
        problem = None
        for kind in self.kinds:
            try:
                return api.zoo_file(value, kind)
            except api.GenotypeNotFound as error:
                problem = problem or str(error)
        self.fail(problem, param, ctx)


class LazyGroup(click.Group):
    """A group whose commands are imported on first use, and which turns a `DslError` or a
    `FileError` (a damaged checkpoint, a file that cannot be written: full disk, read-only
    filesystem) that a command lets through into one clean message (exit status 1) instead of a
    traceback."""

    def invoke(self, ctx: click.Context):
        from attdarts.files import FileError
        from attdarts.language.errors import DslError

        try:
            return super().invoke(ctx)
        except DslError as error:
            click.echo(error.render(), err=True)
            ctx.exit(1)
        except FileError as error:
            click.echo(f"attdarts: {error}", err=True)
            ctx.exit(1)
        except (MemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            click.echo("attdarts: not enough memory for this network and batch; try smaller "
                       "--channels, --layers or --batch-size", err=True)
            ctx.exit(1)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_ARGUMENTS] = list(args)
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attribute, short_help = COMMANDS[name]
        try:
            module = importlib.import_module(f"attdarts.commands.{module_name}")
        except ModuleNotFoundError as error:
            if error.name and error.name.startswith("attdarts.commands"):
                return _unavailable(name, short_help)
            raise
        return getattr(module, attribute)


_ARGUMENTS = "attdarts.arguments"  # ctx.meta key: the command line as given, after the program


def command_arguments(ctx: click.Context) -> list[str]:
    """The arguments the running command was given (after its name), as typed: `train
    --repeats` prints them to say how to continue every seed."""
    arguments = ctx.meta.get(_ARGUMENTS, [])
    name = ctx.info_name
    return arguments[arguments.index(name) + 1:] if name in arguments else []


def _unavailable(name: str, short_help: str) -> click.Command:
    @click.command(name=name, short_help=f"{short_help} (not available in this build)")
    def command() -> None:
        raise click.ClickException(f"'attdarts {name}' is not available in this build")

    return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="attdarts")
@click.option("--plugin", "plugin_modules", multiple=True, metavar="MODULE",
              help="Load a plug-in that is not installed: a module name (the current directory "
                   "is searched too), a .py file or a package folder; repeatable. Installed "
                   "plug-ins (entry points 'attdarts.plugins') and those in $ATTDARTS_PLUGINS "
                   "load anyway.")
def cli(plugin_modules: tuple[str, ...]) -> None:
    """attdarts: differentiable architecture search with attention (Att-DARTS).

    Cells and genotypes are text files in the attdarts DSL (see genotypes/ for the zoo).
    Plug-ins add operations, attentions, search methods and datasets (README, "Extending
    attdarts"); one that fails to load is a warning, not an error.
    """
    from attdarts import plugins

    plugins.load(plugin_modules,
                 warn=lambda message: click.echo(f"attdarts: warning: {message}", err=True))


def main() -> None:
    """The console script. An operating-system error that no command turned into a message
    (typically stdout on a full disk: `attdarts export ... > genotypes.py`) ends the run with one
    line and exit status 1 instead of a traceback, and stdout is flushed here so that a listing
    cut short by a full disk is reported instead of passing silently."""
    status: int | str | None = 0
    try:
        try:
            cli(prog_name="attdarts")
        except SystemExit as done:
            status = done.code
        sys.stdout.flush()
    except OSError as error:
        reason = error.strerror or str(error)
        where = f" {error.filename}" if getattr(error, "filename", None) else ""
        try:
            sys.stderr.write(f"attdarts: cannot write the output{where}: {reason}\n")
            sys.stderr.flush()
        except OSError:
            pass
        status = 1
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
