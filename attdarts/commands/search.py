"""`attdarts search`: run (or resume) an Att-DARTS architecture search."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from attdarts import recipes
from attdarts.cli import ZooOrFile
from attdarts.commands import config_file as config_files
from attdarts.language.errors import DslError

_PAPER = recipes.SEARCH["paper"]


class _TqdmHandler(logging.Handler):
    """Log lines that do not tear the progress bars (both go to stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=click.get_text_stream("stderr"))


def _configure_logging() -> None:
    logger = logging.getLogger("attdarts")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _seeds(value: str | None) -> list[int] | None:
    """--seeds 1,2,3: parsed here, checked by the search's own `check_seeds` (as the API is)."""
    from attdarts.runs.search import RequestError, check_seeds

    if value is None:
        return None
    try:
        seeds = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got '{value}'",
                                 param_hint="'--seeds'") from None
    try:
        return check_seeds(seeds)
    except RequestError as error:
        raise click.BadParameter(str(error), param_hint="'--seeds'") from None


def _betas(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    parts = value.split(",")
    try:
        betas = tuple(float(part) for part in parts)
    except ValueError:
        betas = ()
    if len(betas) != 2:
        raise click.BadParameter(f"expected two comma-separated numbers such as 0.5,0.999, "
                                 f"got '{value}'", param_hint="'--arch-betas'")
    return betas


def _path_text(path: Path) -> str:
    return str(path.resolve())


def _not(flag: bool) -> bool:
    return not flag


# option -> (SearchConfig field, conversion of the option's value): what --resume compares with
# the run's settings when the option is given (README, "Resuming a search or a training")
_SETTING_OPTIONS = {
    "space_name": ("space", None), "recipe": ("recipe", None), "dataset": ("dataset", None),
    "data_dir": ("data_dir", _path_text), "epochs": ("epochs", None),
    "batch_size": ("batch_size", None), "order": ("order", int),
    "second_order": ("second_order", None), "clip": ("clip", None),
    "bam_combine": ("bam_combine", None), "seed": ("seed", None), "channels": ("channels", None),
    "layers": ("layers", None), "lr": ("lr", None), "lr_min": ("lr_min", None),
    "momentum": ("momentum", None), "weight_decay": ("weight_decay", None),
    "grad_clip": ("grad_clip", None), "arch_lr": ("arch_lr", None),
    "arch_grad_clip": ("arch_grad_clip", None),
    "arch_start_epoch": ("arch_start_epoch", None),
    "arch_weight_decay": ("arch_weight_decay", None), "arch_betas": ("arch_betas", _betas),
    "train_portion": ("train_portion", None), "arch_init": ("arch_init", None),
    "no_augment": ("augment", _not), "deterministic": ("deterministic", None),
    "max_steps_per_epoch": ("max_steps_per_epoch", None),
    "checkpoint_every": ("checkpoint_every", None), "plain": ("grouped", _not),
    "compile_cells": ("compile_cells", None), "graphs": ("graphs", None),
}


def _given_settings() -> dict:
    """The settings given on this command line, as SearchConfig fields (for --resume)."""
    ctx = click.get_current_context()
    given = {}
    for name, (field, convert) in _SETTING_OPTIONS.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            value = ctx.params[name]
            given[field] = value if convert is None else convert(value)
    return given


def _option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _settings_error(error) -> str:
    """A pydantic ValidationError of SearchConfig as one line naming the options."""
    problems = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["loc"]:
            field = str(item["loc"][0])
            value = item.get("input")
            problems.append(f"{_option_name(field)} {value}: {message}" if isinstance(
                value, (int, float, str)) else f"{_option_name(field)}: {message}")
        else:  # a check across settings names them itself
            for field in ("lr_min", "lr", "arch_start_epoch", "epochs"):
                message = message.replace(f"{field} (", f"{_option_name(field)} (")
            problems.append(message)
    return "invalid settings: " + "; ".join(problems)


# options that a recipe sets (default None: the recipe decides; given: the option wins)
_RECIPE_HELP = " (default: set by --recipe)"


@click.command()
@click.argument("space_file", required=False, type=ZooOrFile("space", dir_okay=True))
@click.option("--space", "space_name", help="Space name when the file defines several.")
@click.option("--recipe", type=click.Choice(list(recipes.SEARCH)), default=_PAPER["recipe"],
              show_default=True,
              help="Reproduction preset: 'paper' (the paper: lr-min 0, zero init, exact DARTS "
                   "second order, clip the weights, BAM summed), 'authors' (their code: "
                   "lr-min 0.001, 1e-3 randn init, their second order and clipping, BAM gates "
                   "multiplied), 'pc-darts' (PC-DARTS's search: batch 256, lr 0.1, arch-lr "
                   "6e-4, architecture steps from epoch 15; for a space with partial_channels), "
                   "'pdarts' (P-DARTS: batch 96, arch-lr 6e-4, randn init, 10 warm-up epochs; its "
                   "stages are the space's), 'drnas' (DrNAS: C=36, 20 cells, lr 0.1, arch-lr 6e-4, "
                   "randn init, architecture steps from epoch 10), 'fair-darts' (FairDARTS: batch "
                   "128, lr 0.005 to 0.001, arch-lr 3e-3, arch-betas 0.9,0.999) or 'gdas' (GDAS's "
                   "search: 250 epochs, batch 256, wd 5e-4, lr-min 0.001, randn init, clip over "
                   "alpha too; for a space with gdas). Options given explicitly win over the "
                   "recipe.")
@click.option("--dataset", default=_PAPER["dataset"], show_default=True,
              help="cifar10, cifar100, cifar10-mini (the embedded CIFAR-10 subset), synthetic, "
                   "folder:PATH (ImageFolder with train/) or a plug-in's dataset.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where CIFAR lives (default ./data).")
@click.option("--epochs", type=int,
              help="Epochs of the search (paper: 50)" + _RECIPE_HELP + ".")
@click.option("--batch-size", type=int,
              help="Images per step of each half, at least 2 (batch norm)" + _RECIPE_HELP + ".")
@click.option("--order", type=click.Choice(["1", "2"]), default=str(_PAPER["order"]), show_default=True,
              help="First- or second-order (DARTS unrolled) architecture gradient.")
@click.option("--second-order", "second_order", type=click.Choice(["darts", "authors"]),
              help="Second-order variant: exact DARTS, or the authors' code (no momentum; "
                   "alpha/beta moved in the virtual step and the finite difference)" + _RECIPE_HELP + ".")
@click.option("--clip", type=click.Choice(["weights", "authors"]),
              help="What the gradient-clip norm counts: the weights (DARTS), or also the "
                   "alpha/beta gradients the authors' code holds at that point" + _RECIPE_HELP + ".")
@click.option("--bam-combine", type=click.Choice(["sum", "product"]),
              help="Rewrite every bam candidate to combine its gates by sum (the paper) or "
                   "product (the authors' code); default: as the space file writes it, "
                   "unless --recipe authors.")
@click.option("--seed", type=int, default=_PAPER["seed"], show_default=True,
              help="Random seed, a whole number from 0 to 2^64 - 1.")
@click.option("--seeds", help="Several distinct seeds run one after another into OUT/seed-N, "
                              "e.g. 1,2,3,4.")
@click.option("--together", is_flag=True,
              help="Run the --seeds as one batched model: one kernel does every seed's work; "
                   "the same results and files as one after another; memory grows with the "
                   "seeds.")
@click.option("--channels", type=int,
              help=f"Initial channels C (paper: {_PAPER['channels']})" + _RECIPE_HELP + ".")
@click.option("--layers", type=int,
              help=f"Cells L (paper: {_PAPER['layers']})" + _RECIPE_HELP + ".")
@click.option("--lr", type=float,
              help="Initial SGD learning rate of the weights" + _RECIPE_HELP + ".")
@click.option("--lr-min", type=float,
              help="End of the cosine schedule (paper: 0; authors' code: 0.001)" + _RECIPE_HELP + ".")
@click.option("--momentum", type=float, default=_PAPER["momentum"], show_default=True, help="SGD momentum, below 1.")
@click.option("--weight-decay", type=float,
              help="SGD weight decay of the weights (paper: 3e-4)" + _RECIPE_HELP + ".")
@click.option("--grad-clip", type=float, default=_PAPER["grad_clip"], show_default=True,
              help="Maximum gradient norm of a weight step (see --clip).")
@click.option("--arch-lr", type=float,
              help="Adam learning rate of alpha/beta" + _RECIPE_HELP + ".")
@click.option("--arch-grad-clip", type=float,
              help="Clip the architecture gradients to this norm before each Adam step "
                   "(P-DARTS: 5; default: unclipped)" + _RECIPE_HELP + ".")
@click.option("--arch-start-epoch", type=int,
              help="Epochs of weight steps only before the architecture steps start (PC-DARTS: "
                   "15)" + _RECIPE_HELP + ".")
@click.option("--arch-weight-decay", type=float, default=_PAPER["arch_weight_decay"], show_default=True,
              help="Adam weight decay of alpha/beta.")
@click.option("--arch-betas",
              help="Adam betas of alpha/beta, e.g. " + ",".join(map(str, _PAPER["arch_betas"]))
                   + _RECIPE_HELP + ".")
@click.option("--train-portion", type=float, default=_PAPER["train_portion"], show_default=True,
              help="Share of the training set for the weights; the rest trains the architecture.")
@click.option("--arch-init", type=click.Choice(["zeros", "randn"]),
              help="zeros (the paper) or 1e-3 * randn (the authors' code)" + _RECIPE_HELP + ".")
@click.option("--no-augment", is_flag=True, help="No random crop / flip on the search data.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default runs/search-SPACE-TIME).")
@click.option("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available).")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads of torch for this run (intra- and inter-op); default: "
                   "OMP_NUM_THREADS when set, else 1 for a small supernet and the free cores "
                   "(at most 4) for a larger one (README, \"CPU threads\").")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Continue the run in this directory. --device, --threads, --quiet, "
                   "--tensorboard, --data-dir, --plain, --graphs and --checkpoint-every may be "
                   "given anew; another option must equal the run's.")
@click.option("--deterministic", is_flag=True, help="Deterministic kernels (bit-identical resume).")
@click.option("--max-steps-per-epoch", type=int, help="Cap the iterations of every epoch (smoke runs).")
@click.option("--checkpoint-every", type=int, default=_PAPER["checkpoint_every"], show_default=True,
              help="Also checkpoint every N iterations inside an epoch (0: at epoch ends only).")
@click.option("--plain", is_flag=True,
              help="Run every edge on its own instead of each cell's edges in groups (the "
                   "default: the same results to float rounding from about a third of the "
                   "tensor operations).")
@click.option("--compile", "compile_cells", is_flag=True,
              help="Compile each distinct cell with torch.compile (inductor, fullgraph): minutes "
                   "to start; opt-in until measured faster on a GPU.")
@click.option("--graphs/--no-graphs", default=None,
              help="Replay each search iteration as one CUDA graph on CUDA (the default; same "
                   "results, far fewer launches); --no-graphs runs it eagerly. The CPU always "
                   "runs eagerly.")
@click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option("--tensorboard", is_flag=True,
              help="Write TensorBoard events into RUN_DIR/tensorboard/: losses, accuracies, lr "
                   "and the alpha/beta heatmaps of every epoch (pip install "
                   "'attdarts[tensorboard]').")
# --config: settings from a file (config.json's keys; the command line wins)
@config_files.config_option({
    "augment": config_files.Key("no_augment", config_files.inverted),
    "grouped": config_files.Key("plain", config_files.inverted),
})
def search(space_file, space_name, recipe, dataset, data_dir, epochs, batch_size, order,
           second_order, clip, bam_combine, seed, seeds, channels, layers, lr, lr_min, momentum,
           weight_decay, grad_clip, arch_lr, arch_grad_clip, arch_start_epoch, arch_weight_decay,
           arch_betas,
           train_portion,
           arch_init, no_augment, out, device, threads, resume, deterministic,
           max_steps_per_epoch, checkpoint_every, plain, compile_cells, graphs, quiet, together,
           tensorboard, config_file) -> None:
    """Search cells on SPACE_FILE's search space (Att-DARTS, bilevel DARTS optimisation).
    SPACE_FILE is a space file or a zoo space's name (att_darts, darts, pc_darts, ...).

    Writes config.json, genotype-epochNNN.geno, genotype.geno, weights.jsonl, metrics.jsonl and
    checkpoint.pt into the run directory; --resume RUN_DIR continues an interrupted run (options
    that do not change the result may be given anew; any other that differs is refused).
    Everything is checked before the run directory is written, and a run directory in use by
    another run is refused. SIGTERM or SIGUSR1 stops the run at the next step with a checkpoint
    (exit status 75; Ctrl-C likewise, exit status 130).
    """
    import pydantic

    from attdarts.runs import checkpoints, data, preemption, rundir, runtime
    from attdarts.runs import search as api, threads as threads_rule

    # signals from here to the exit: a checkpoint at the next step boundary (README "Pre-emption")
    click.get_current_context().with_resource(preemption.command())
    config_files.refuse_with_resume(resume)
    require_tensorboard(tensorboard)
    if not quiet:
        _configure_logging()
    seed_list = _seeds(seeds)
    betas = _betas(arch_betas)
    try:
        config = None
        settings = None
        if resume is not None and space_file is not None:
            raise click.UsageError("--resume takes its settings from the run directory; "
                                   "give no SPACE_FILE")
        if resume is not None:
            settings = _given_settings()
        else:
            if space_file is None:
                raise click.UsageError("missing SPACE_FILE (or --resume RUN_DIR)")
            if not space_file.is_file():
                problem = "is a directory, not a space file" if space_file.is_dir() else "does not exist"
                raise click.BadParameter(f"'{space_file}' {problem}", param_hint="SPACE_FILE")
            chosen = {"second_order": second_order, "clip": clip, "bam_combine": bam_combine,
                      "lr_min": lr_min, "arch_init": arch_init, "batch_size": batch_size,
                      "lr": lr, "arch_lr": arch_lr, "arch_start_epoch": arch_start_epoch,
                      "arch_grad_clip": arch_grad_clip,
                      "graphs": graphs, "compile_cells": compile_cells or None,
                      "channels": channels, "layers": layers, "arch_betas": betas,
                      "epochs": epochs, "weight_decay": weight_decay}
            config = api.recipe_config(
                recipe, **{key: value for key, value in chosen.items() if value is not None},
                space_file=str(space_file.resolve()), space=space_name, dataset=dataset,
                data_dir=None if data_dir is None else str(data_dir.resolve()),
                order=int(order), seed=seed_list[0] if seed_list else seed,
                momentum=momentum, grad_clip=grad_clip,
                arch_weight_decay=arch_weight_decay, train_portion=train_portion,
                augment=not no_augment, max_steps_per_epoch=max_steps_per_epoch,
                checkpoint_every=checkpoint_every, deterministic=deterministic, grouped=not plain)
        sizes = config.model_dump() if config is not None else threads_rule.recorded_settings(resume)
        with threads_rule.using(threads, threads_rule.step_units("search", sizes)):
            outcome = api.launch(config, out, seeds=seed_list, resume=resume, device=device,
                                 progress=not quiet and sys.stderr.isatty(),
                                 together=together, tensorboard=tensorboard,
                                 settings=settings)
        config_files.record(config_files.loaded(), _outcome_dir(outcome, out))
        _report(outcome, resume if resume is not None else _outcome_dir(outcome, out))
    except DslError as error:
        raise click.ClickException(str(error)) from None
    except pydantic.ValidationError as error:
        raise click.ClickException(_settings_error(error)) from None
    except api.RequestError as error:  # e.g. --resume with an option that cannot change (as train)
        raise click.UsageError(str(error)) from None
    except (api.SearchError, data.DataError, checkpoints.CheckpointError, OSError,
            runtime.DeviceError, rundir.RunDirInUse) as error:
        raise click.ClickException(str(error)) from None
    except preemption.Preempted as stopped:  # SIGTERM / SIGUSR1 / SIGINT: checkpoint saved
        _preempted(stopped, resume if resume is not None else out, seed_list)


def _preempted(stopped, target: Path | None, seeds: list[int] | None) -> None:
    """One line saying how to continue, then exit status 75 (130 after Ctrl-C)."""
    import os

    if target is None:  # the default run directory (the seeds' parent folder)
        target = stopped.run_dir.parent if seeds else stopped.run_dir
    config_files.record(config_files.loaded(), target)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(stopped.resume_line("search", target), err=True)
    click.get_current_context().exit(stopped.exit_status)


def require_tensorboard(tensorboard: bool) -> None:
    """`--tensorboard` (search and train) without the package fails at once, in one line saying
    what to install."""
    if tensorboard:
        from attdarts.runs import tracking

        try:
            tracking.require_tensorboard()
        except tracking.TrackingUnavailable as error:
            raise click.ClickException(str(error)) from None


def _outcome_dir(outcome, out: Path | None) -> Path:
    """Where the search wrote: `out`, or the default run directory it chose."""
    if out is not None:
        return Path(out)
    return outcome[0].run_dir.parent if isinstance(outcome, list) else outcome.run_dir


def _report(outcome, out: Path) -> None:
    from attdarts.runs import search as api

    if isinstance(outcome, list):
        summary = api.summarise(outcome, Path(out))
        click.echo(f"searched {len(outcome)} seeds into {out} (summary.json):")
        for row in summary["seeds"]:
            same = f", same cells as seed {row['same_cells_as']}" if row["same_cells_as"] else ""
            click.echo(f"  seed {row['seed']}: {row['genotype']} (val accuracy "
                       f"{_percent(row['val_accuracy'])}{same})")
            for kind, line in row["cells"].items():
                click.echo(f"    {kind}: {line}")
        return
    stopped = outcome.metrics.get("stopped_early")
    early = f", stopped early: {stopped['reason']}" if stopped else ""
    click.echo(f"{outcome.run_dir / api.FINAL_GENOTYPE} (epoch {outcome.epochs}, val accuracy "
               f"{_percent(outcome.metrics['val_accuracy'])}{early}):")
    click.echo((outcome.run_dir / api.FINAL_GENOTYPE).read_text(), nl=False)


def _percent(value: float | None) -> str:
    """An accuracy in percent as the commands print it; "-" when no architecture batch counted
    (every epoch was warm-up)."""
    return "-" if value is None else f"{value:.2f}%"
