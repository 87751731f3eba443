"""`attdarts train` and `attdarts test`: training a genotype from scratch and scoring checkpoints."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from attdarts.cli import ZooOrFile
from attdarts.commands import config_file as config_files
from attdarts.commands.search import require_tensorboard
from attdarts.language.errors import DslError

# option name -> TrainConfig field, for options that override the recipe
_OVERRIDES = {
    "dataset": "dataset",
    "data_dir": "data_dir",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "channels": "channels",
    "layers": "layers",
    "lr": "lr",
    "seed": "seed",
    "deterministic": "deterministic",
    "amp": "amp",
    "channels_last": "channels_last",
    "max_steps_per_epoch": "max_steps_per_epoch",
    "workers": "workers",
    "drop_path_rule": "drop_path_rule",
    "graphs": "graphs",
}


def _explicit(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "DEFAULT_MAP")


# --config: what a training run's config.json records besides its settings (facts, ignored),
# and the settings that have no option of their own (passed to TrainConfig as they are)
_RECORDED = ("world_size", "synthetic", "train_images", "num_classes", "mean", "std",
             "parameters", "parameters_with_auxiliary")


def _settings_without_options() -> list[str]:
    from attdarts.runs.train import TrainConfig

    return list(TrainConfig.model_fields)


def _setting_name(field: str) -> str:
    """How the user gave a setting: its option, or its key in a --config file (the settings
    without an option, such as drop_path_prob)."""
    if not field:
        return "the configuration"
    if field in _OVERRIDES.values():
        return "--" + field.replace("_", "-")
    return {"grouped": "--plain", "compile_cells": "--compile"}.get(field, f"'{field}'")


def _validation_message(error) -> str:
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"])
        option = _setting_name(field)
        message = problem["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        lines.append(f"{option}: {message} (got {problem.get('input')!r})")
    return "\n".join(lines)


def _setup_logging(verbose: bool) -> None:
    """Per-epoch lines on stderr, from rank 0 only (and nothing but warnings with --quiet)."""
    rank = int(os.environ.get("RANK", "0"))
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("attdarts")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO if rank == 0 and verbose else logging.WARNING)
    logger.propagate = False


@click.command()
@click.argument("genotype_file", required=False, type=ZooOrFile("genotype"))
@click.option("--genotype", "genotype_name", help="Which genotype of the file (needed if it has several).")
@click.option("--dataset", help="cifar10 (default), cifar100, imagenet, cifar10-mini (embedded subset), "
                   "folder:PATH, synthetic or a plug-in's dataset.")
@click.option("--data-dir", help="Where the dataset lives (CIFAR: the folder holding cifar-10-batches-py).")
@click.option("--epochs", type=int, help="Epochs [600; ImageNet 250].")
@click.option("--batch-size", type=int,
              help="Global batch size, split among GPUs, at least 2 per GPU (batch norm) [96; "
                   "ImageNet 128].")
@click.option("--channels", type=int, help="Initial channels C [36; ImageNet 48].")
@click.option("--layers", type=int, help="Cells L [20; ImageNet 14].")
@click.option("--lr", type=float, help="Initial learning rate [0.025; ImageNet 0.1].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Run directory [runs/GENOTYPE-DATASET-TIME].")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Continue the run in this directory from its last.pt. --device, --threads, "
                   "--quiet, --tensorboard, --data-dir, --workers, --plain and --graphs may be "
                   "given anew; another option must equal the run's.")
@click.option("--device", help="cpu, cuda, cuda:1, ... [cuda when available].")
@click.option("--amp", type=click.Choice(["bf16"]), help="Mixed precision with bfloat16 autocast.")
@click.option("--channels-last", is_flag=True, help="Use the channels-last memory format.")
@click.option("--seed", type=int, help="Random seed, a whole number from 0 to 2^64 - 1 [0].")
@click.option("--deterministic", is_flag=True, help="Deterministic kernels (slower on GPU).")
@click.option("--drop-path-rule", type=click.Choice(["darts", "authors"]),
              help="Edges drop path spares: darts (identity operations) or authors (also "
                   "identity attentions, as the Att-DARTS code) [darts].")
@click.option("--max-steps-per-epoch", type=int,
              help="Cap the training batches per epoch (quick checks); the test then scores a "
                   "fixed random subset of as many batches, the same every epoch.")
@click.option("--workers", type=int, help="Data loading workers (ImageNet) / decoding threads.")
@click.option("--plain", is_flag=True,
              help="Run every edge on its own instead of each cell's ready edges in groups "
                   "(the default: same results, fewer kernels).")
@click.option("--compile", "compile_cells", is_flag=True,
              help="Compile each distinct cell with torch.compile (inductor, fullgraph): minutes "
                   "to start; opt-in until measured faster on a GPU.")
@click.option("--graphs/--no-graphs", default=True,
              help="Replay each training step as one CUDA graph on CUDA (the default; same "
                   "results, far fewer launches); --no-graphs runs it eagerly. The CPU always "
                   "runs eagerly.")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads torch uses for the run [OMP_NUM_THREADS when set, else 1 for a "
                   "small network and the free cores, at most 4, for a larger one].")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch log.")
@click.option("--repeats", type=click.IntRange(min=1),
              help="Train N times, seeds SEED..SEED+N-1, into OUT/seed-K (each a run directory), "
                   "then print the report over them (attdarts report OUT); the same command again "
                   "continues unfinished seeds.")
@click.option("--tensorboard", is_flag=True,
              help="Write TensorBoard events into RUN_DIR/tensorboard/: losses, accuracies, lr "
                   "and drop-path probability per epoch (pip install 'attdarts[tensorboard]').")
@config_files.config_option({"grouped": config_files.Key("plain", config_files.inverted)},
                            extra=_settings_without_options, recorded=_RECORDED,
                            companions={"genotype_file": "genotype.geno"})
@click.pass_context
def train(ctx: click.Context, genotype_file: Path | None, genotype_name: str | None,
          out_dir: Path | None, resume_dir: Path | None, device: str | None, threads: int | None,
          quiet: bool, repeats: int | None, **options: Any) -> None:
    """Train a genotype from scratch with the paper's evaluation recipe. GENOTYPE_FILE is a .geno
    file or a zoo genotype's name (darts_v2, att_darts, ...).

    Defaults are the Att-DARTS/DARTS CIFAR settings (600 epochs, batch 96, C=36, L=20, SGD 0.025
    cosine, cutout 16, drop path 0.2, auxiliary 0.4); --dataset imagenet switches to DARTS's
    ImageNet recipe. Start under `torchrun --nproc_per_node N` for data-parallel training.
    SIGTERM or SIGUSR1 stops the run at the next step with last.pt saved (exit status 75;
    Ctrl-C likewise, exit status 130); --resume RUN_DIR continues it (with --repeats: the same
    command again).
    """
    from pydantic import ValidationError
    from tqdm.contrib.logging import logging_redirect_tqdm

    from attdarts.files import WriteError
    from attdarts.runs import preemption, rundir, threads as threads_rule, train as training
    from attdarts.runs.checkpoints import CheckpointError
    from attdarts.runs.data import DataError

    # signals from here to the exit: last.pt at the next step boundary (README "Pre-emption")
    ctx.with_resource(preemption.command())
    config_files.refuse_with_resume(resume_dir)
    options.pop("config_file")
    tensorboard = options.pop("tensorboard")
    require_tensorboard(tensorboard)
    overrides = {**config_files.loaded(ctx).extra} if config_files.loaded(ctx) else {}
    overrides.update({field: options[name] for name, field in _OVERRIDES.items()
                      if _explicit(ctx, name)})
    if options.pop("plain"):
        overrides["grouped"] = False
    if options.pop("compile_cells"):
        overrides["compile_cells"] = True
    _check_device(device)
    _setup_logging(not quiet)
    if resume_dir is None and genotype_file is None:
        raise click.UsageError("missing argument 'GENOTYPE_FILE' (or use --resume RUN_DIR)")
    try:
        genotype = None if genotype_file is None else _read_genotype(genotype_file, genotype_name)
        progress = not quiet and sys.stderr.isatty()
        settings = threads_rule.recorded_settings(resume_dir) if resume_dir else overrides
        with logging_redirect_tqdm(loggers=[logging.getLogger("attdarts")]), \
                threads_rule.using(threads, threads_rule.step_units("train", settings)):
            if repeats is not None:  # --repeats: one run per seed, then the report
                return _train_repeats(genotype, overrides, repeats, out_dir, resume_dir, device,
                                      progress)
            result = training.launch(genotype, overrides, out=out_dir, resume=resume_dir,
                                     device=device, progress=progress, tensorboard=tensorboard)
    except ValidationError as error:
        raise click.UsageError(_validation_message(error)) from None
    except training.ResumeError as error:  # SettingChanged among them
        raise click.UsageError(str(error)) from None
    except DslError as error:
        raise click.ClickException(error.render()) from None
    except (CheckpointError, WriteError, DataError, training.TrainError,
            rundir.RunDirInUse) as error:
        raise click.ClickException(str(error)) from None
    except preemption.Preempted as stopped:  # SIGTERM / SIGUSR1 / SIGINT: last.pt saved
        config_files.record(config_files.loaded(ctx), stopped.run_dir)
        if int(os.environ.get("RANK", "0")) == 0:
            click.echo(_continue_line(ctx, stopped, repeats is not None, out_dir), err=True)
        ctx.exit(stopped.exit_status)
    config_files.record(config_files.loaded(ctx), result.run_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        synthetic = " [synthetic data]" if result.synthetic else ""
        test_images = result.history[-1]["test_images"] if result.history else 0
        click.echo(f"{result.run_dir}: best test top-1 {result.best_top1:.2f}% (epoch "
                   f"{result.best_epoch}), last {result.last_top1:.2f}% on {test_images:,} test "
                   f"images, {result.parameters:,} weights{synthetic}")


def _continue_line(ctx: click.Context, stopped, repeats: bool, out_dir: Path | None) -> str:
    """How to continue a stopped run: `--resume RUN_DIR`; with --repeats the same command again
    (it resumes the stopped seed and trains the ones after it), with the --out it chose."""
    if not repeats:
        return stopped.resume_line("train")
    import shlex

    from attdarts.cli import command_arguments

    arguments = command_arguments(ctx)
    if out_dir is None:
        arguments += ["--out", str(stopped.run_dir.parent)]
    return stopped.resume_line("train", arguments=shlex.join(arguments))


def _set_threads(threads: int | None, checkpoint: Path) -> None:
    """`--threads N`, or the rule of `attdarts.runs.threads` for the checkpoint's network."""
    from attdarts.runs import threads as threads_rule
    from attdarts.runs.runtime import set_threads

    settings = threads_rule.recorded_settings(checkpoint.parent)
    choice = threads_rule.choose(threads, threads_rule.step_units("train", settings))
    if choice.threads is not None:
        set_threads(choice.threads)


def _check_device(device: str | None) -> None:
    """`--device` checked before anything runs (`runtime.check_device`, which the runs use too),
    refused in one line."""
    if device is None:
        return
    from attdarts.runs import runtime

    try:
        runtime.check_device(device)
    except runtime.DeviceError as error:
        raise click.ClickException(str(error)) from None


def _read_genotype(path: Path, name: str | None):
    from attdarts.language.transform import read_genotype

    return read_genotype(path, name)


@click.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dataset", help="Dataset to score on [the one the run trained on].")
@click.option("--data-dir", help="Where the dataset lives [the run's].")
@click.option("--device", help="cpu, cuda, ... [cuda when available].")
@click.option("--batch-size", type=int, help="Evaluation batch size [the run's].")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads torch uses [as for train].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def test(checkpoint_path: Path, dataset: str | None, data_dir: str | None, device: str | None,
         batch_size: int | None, threads: int | None, as_json: bool) -> None:
    """Score a training checkpoint (last.pt / best.pt) on the test split: top-1, top-5, loss."""
    from attdarts.runs import train as training
    from attdarts.files import WriteError
    from attdarts.runs.checkpoints import CheckpointError
    from attdarts.runs.data import DataError, parse_spec

    _check_device(device)
    _set_threads(threads, checkpoint_path)
    if batch_size is not None and batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--batch-size")
    if dataset is not None:
        try:
            parse_spec(dataset)
        except DataError as error:
            raise click.BadParameter(str(error), param_hint="--dataset") from None
    try:
        result = training.evaluate_checkpoint(checkpoint_path, dataset=dataset, data_dir=data_dir,
                                              device=device, batch_size=batch_size)
    except DataError as error:
        raise click.ClickException(str(error)) from None
    except (CheckpointError, WriteError) as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    synthetic = " [synthetic data]" if result["synthetic"] else ""
    click.echo(f"{result['genotype']} (epoch {result['epoch']}) on {result['dataset']}{synthetic}: "
               f"top-1 {result['test_top1']:.2f}%  top-5 {result['test_top5']:.2f}%  "
               f"loss {result['test_loss']:.4f}  ({result['test_images']:,} test images)")


# ---------------------------------------------------------------------------------------------
# --repeats: seeds SEED..SEED+N-1 into OUT/seed-K, then the report over them


def _train_repeats(genotype, overrides: dict[str, Any], repeats: int, out_dir: Path | None,
                   resume_dir: Path | None, device: str | None, progress: bool) -> None:
    """Train one run per seed into OUT/seed-K; a seed directory that already holds a run is
    resumed (so the same command continues, and a changed setting is refused as --resume
    refuses it); then print `attdarts report OUT`."""
    from attdarts.commands.report import count_mult_adds
    from attdarts.runs import train as training
    from attdarts.tools import report as reporting

    if resume_dir is not None:
        raise click.UsageError("--repeats continues its seeds itself: run the same command "
                               "again instead of --resume")
    first = overrides.get("seed", training.TrainConfig().seed)
    # every seed's settings checked before the first run starts (the last seed may be too large)
    config = training.TrainConfig.recipe(**{**overrides, "seed": first + repeats - 1})
    if out_dir is None:
        out_dir = training.default_run_dir(genotype, config)
    main = int(os.environ.get("RANK", "0")) == 0
    for seed in range(first, first + repeats):
        seed_dir = out_dir / f"seed-{seed}"
        settings = {**overrides, "seed": seed}
        started = (seed_dir / "last.pt").is_file()
        result = training.launch(genotype, settings, out=None if started else seed_dir,
                                 resume=seed_dir if started else None, device=device,
                                 progress=progress)
        if main:
            click.echo(f"seed {seed}: {result.run_dir}: last test top-1 {result.last_top1:.2f}%, "
                       f"best {result.best_top1:.2f}% (epoch {result.best_epoch})")
    if main:
        runs = reporting.read_runs([out_dir])
        count_mult_adds(runs.trainings)
        click.echo(reporting.format_markdown(reporting.aggregate(runs)), nl=False)
