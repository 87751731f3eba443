"""Training a genotype from scratch: the evaluation recipe of DARTS and Att-DARTS.

CIFAR (Liu et al. 2019, Sec. 4.2; Nakai et al. 2020, Sec. IV-B): 600 epochs, batch 96, 20 cells
of 36 initial channels, SGD lr 0.025 (momentum 0.9, weight decay 3e-4) annealed by a cosine to 0,
gradient clipping at 5, cutout 16, drop path 0.2 ramped linearly over the epochs, an auxiliary
head weighted 0.4. ImageNet (DARTS, Sec. 4.3): 14 cells of 48 channels, batch 128, lr 0.1 decayed
by 0.97 per epoch, weight decay 3e-5, 250 epochs, label smoothing 0.1.

A run directory holds `config.json`, `genotype.geno` (the genotype trained, in the DSL),
`metrics.jsonl` (one line per epoch), `last.pt` and `best.pt` (written atomically), and
`summary.json`. Resuming continues exactly: the model, optimiser and scheduler states come from
`last.pt`, and every random stream (shuffle order, augmentation, drop path) is reseeded at each
epoch from (seed, epoch, rank), so the resumed epochs draw what the uninterrupted run drew.

Under `torchrun` (RANK / WORLD_SIZE set) the model is wrapped in DistributedDataParallel; each
rank takes its slice of every global batch and only rank 0 writes files.
"""


from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attdarts.language import ir
from attdarts.language.printer import format_genotype
from attdarts.networks.compiled import compile_cells
from attdarts.networks.measure import count_parameters
from attdarts.runs import checkpoints, data, environment, graphs, preemption, runtime, tracking
from attdarts.runs.checkpoints import CheckpointError
from attdarts.runs.train.config import CHECKPOINT_KIND, RESUMABLE_OVERRIDES, TrainConfig, TrainError
from attdarts.runs.train.evaluate import build_model
from attdarts.runs.train.outputs import EpochProgress, RunWriter
from attdarts.runs.train.resume import ResumePoint, open_resume
from attdarts.runs.train.steps import (
    TrainStep, evaluate, make_optimizer, make_scheduler, train_epoch,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path | None
    best_top1: float
    best_epoch: int
    last_top1: float
    parameters: int
    history: list[dict]
    model: nn.Module
    synthetic: bool = False


def model_config(config: TrainConfig, spec: data.DatasetSpec, num_classes: int,
                 input_size: int | None) -> dict[str, Any]:
    return {
        "dataset": spec.network_dataset,
        "channels": config.channels,
        "layers": config.layers,
        "auxiliary": config.auxiliary,
        "num_classes": num_classes,
        "input_size": input_size,
        "drop_path_rule": config.drop_path_rule,
        "grouped": config.grouped,
    }


def run_training(
    config: TrainConfig,
    genotype: ir.Genotype,
    *,
    run_dir: str | os.PathLike | None,
    device: str | torch.device | None = None,
    resume: bool | ResumePoint = False,
    progress: bool = False,
    tensorboard: bool = False,
) -> TrainResult:
    """Train `genotype` with `config`, writing the run directory (rank 0 only).

    With `resume`, `run_dir/last.pt` supplies the model, optimiser, scheduler and epoch after
    `open_resume` has checked it against the run directory; its stored config is used with the
    settings of `RESUMABLE_OVERRIDES` taken from `config`. A `ResumePoint` already opened by the
    caller is used as it is. The global torch settings that `deterministic` changes are restored
    when the run ends. `tensorboard` writes events into run_dir/tensorboard/ (a resumed run
    that has that folder goes on writing there).
    """
    run_path = Path(run_dir) if run_dir is not None else None
    point = None
    if isinstance(resume, ResumePoint):
        point = resume
    elif resume:
        if run_path is None:
            raise CheckpointError("resuming needs a run directory")
        point = open_resume(run_path, genotype,
                            {name: getattr(config, name) for name in RESUMABLE_OVERRIDES})
    if point is not None:
        config, genotype = point.config, point.genotype
    with runtime.processes(None if device is None else str(device)) as (process, place), \
            runtime.determinism(config.deterministic, place):
        run = _prepare(config.with_data_dir(), genotype, run_path, process, place,
                       None if point is None else point.state, progress)
        tensorboard = tensorboard or (point is not None and tracking.continues(run_path))
        run.tracking = tracking.open_tracking(tensorboard, run_path, process.main,
                                              tracking.TRAIN_SCALARS)
        try:
            with preemption.watch(process) as run.signals:
                for epoch in range(run.start_epoch, run.config.epochs):
                    _record(run, epoch, _epoch(run, epoch))
            return _finish(run)
        finally:
            run.tracking.close()


@dataclass
class _Run:
    """What the epochs of one run share: its settings, network, optimiser, data and records."""

    config: TrainConfig
    genotype: ir.Genotype
    run_dir: Path | None
    process: runtime.Process
    model: nn.Module
    network: nn.Module  # `model`, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    test_loader: Any
    info: Any
    settings: dict[str, Any]
    text: str
    parameters: tuple[int, int]  # (with the auxiliary head, without: the number papers report)
    writer: RunWriter | None
    bar: EpochProgress | None
    step: TrainStep | None = None  # the training step, captured as a CUDA graph when it can be
    tracking: tracking.NoTracking = tracking.NO_TRACKING
    signals: preemption.Watch = preemption.NOT_WATCHED  # SIGTERM / SIGUSR1 / SIGINT (run_training)
    partial: dict | None = None  # the epoch a pre-empted run stopped in (last.pt's "partial")
    saved: bool = False  # last.pt holds where the run stands (nothing to save before stopping)
    stepped: bool = False  # this process ran a step / an evaluation (the first ones compile
    evaluated: bool = False  # the cells with compile_cells: minutes)
    start_epoch: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)


def _loaders(config: TrainConfig, device: torch.device, process: runtime.Process):
    spec = config.spec
    common = dict(batch_size=config.batch_size, device=device, seed=config.seed,
                  rank=process.rank, world_size=process.world_size, workers=config.workers,
                  max_batches=config.max_steps_per_epoch, channels_last=config.channels_last)
    train_loader, info = data.make_loader(spec, config.data_dir, train=True, cutout=config.cutout,
                                          **common)
    test_loader, test_info = data.make_loader(spec, config.data_dir, train=False, **common)
    if test_info.num_classes != info.num_classes:
        raise data.DataError(f"the train split has {info.num_classes} classes, "
                             f"the test split {test_info.num_classes}")
    if len(train_loader) == 0:
        raise data.DataError(f"{info.num_samples} training images make no batch of {config.batch_size}")
    return train_loader, test_loader, info


def _prepare(config: TrainConfig, genotype: ir.Genotype, run_dir: Path | None,
             process: runtime.Process, device: torch.device, state: dict[str, Any] | None,
             progress: bool) -> _Run:
    """Data, network (seeded from (seed, "init")), optimiser and schedule, restored from `state`
    when resuming; the run directory's config, genotype and metrics written (rank 0)."""
    train_loader, test_loader, info = _loaders(config, device, process)
    input_size = None if config.spec.kind == "imagenet" else int(train_loader.images.shape[-1])
    settings = model_config(config, config.spec, info.num_classes, input_size)

    torch.manual_seed(data.derive_seed(config.seed, "init"))
    model = build_model(genotype, settings)
    parameters = (count_parameters(model, auxiliary=True), count_parameters(model, auxiliary=False))
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    if config.compile_cells:
        model = compile_cells(model)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    run = _Run(config, genotype, run_dir, process, model, model, optimizer, scheduler,
               train_loader, test_loader, info, settings, format_genotype(genotype), parameters,
               writer=RunWriter(run_dir) if process.main and run_dir is not None else None,
               bar=EpochProgress(config.epochs) if progress and process.main else None)
    if state is not None:
        model.load_state_dict(runtime.strip_module_prefix(state["model"]))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        run.start_epoch = int(state["epoch"])
        run.best_top1, run.best_epoch = float(state["best_top1"]), int(state["best_epoch"])
        run.history = list(state["history"])
        run.partial = state.get("partial")  # stopped mid-epoch (pre-emption)
        run.saved = True
        log.info("resuming %s at epoch %d/%d", run_dir, run.start_epoch, config.epochs)
    run.network = runtime.wrap_data_parallel(model, process, device)
    capture = config.graphs and graphs.capture_possible(device, world_size=process.world_size)
    run.step = TrainStep(run.network, optimizer, config, graphs=capture)

    total, reported = parameters
    if run.writer is not None:
        run.writer.start(config, genotype, run.text, device, process.world_size, info, reported,
                         total, run.history)
        _record_environment(run, device, resumed=state is not None)
    log.info("%s on %s: %s weights (%s with the auxiliary head), %d steps/epoch, %d test images, "
             "world size %d%s", genotype.name, device, f"{reported:,}", f"{total:,}",
             len(train_loader), _test_images(test_loader), process.world_size, _synthetic(run))
    return run


def _record_environment(run: _Run, device: torch.device, resumed: bool) -> None:
    """The run's environment.json, at its start or resume (then: the epoch it continues and the
    steps of it already done); a capture that fails later updates it."""
    resumed_at = (run.start_epoch + 1, int(run.partial["step"]) if run.partial else 0)
    environment.record(run.run_dir, device, world_size=run.process.world_size,
                       graphs=run.step.captured.state, resumed_at=resumed_at if resumed else None)
    run.step.captured.listeners.append(lambda state: environment.note_graphs(run.run_dir, state))


def _step_schedule(run: _Run) -> None:
    """The learning-rate schedule's step at an epoch's end. A run resumed after its epoch's last
    step makes no optimiser step in this process before it: torch then warns of a skipped first
    value, but the schedule's state came from the checkpoint and is right."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        run.scheduler.step()


def _epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Train one epoch (drop path ramped linearly, every stream seeded from (seed, epoch, rank)),
    score the test split, and return the epoch's metrics; a NaN or infinity stops the run."""
    config, model = run.config, run.model
    started = time.perf_counter()
    drop_prob = config.drop_path_prob * epoch / config.epochs
    model.drop_path_prob = drop_prob
    lr = run.optimizer.param_groups[0]["lr"]
    torch.manual_seed(data.derive_seed(config.seed, epoch, run.process.rank, "model"))
    run.train_loader.set_epoch(epoch)
    loader, partial, run.partial = run.train_loader, run.partial, None
    if partial is not None:  # resumed inside this epoch: skip its steps done, add their sums
        loader = preemption.Resumed(loader, partial, run.process)
        started -= partial["seconds"]
    done = 0 if partial is None else int(partial["step"])  # this epoch's steps in last.pt
    if run.signals.stop_requested():  # came before this epoch's first step
        _stop_mid_epoch(run, epoch, _no_steps(run), partial, started)
    # this process's first step compiles the cells with compile_cells (minutes): last.pt is
    # saved before it, and a signal during it stops the run at once, at that checkpoint
    compiling = config.compile_cells and not run.stepped
    if compiling and not run.saved:
        _save_mid_epoch(run, epoch, _no_steps(run), partial, started)
    if run.bar is not None:
        run.bar.start(epoch, len(loader))
    try:
        with run.signals.interruptible(compiling) as first_step:
            train_totals = train_epoch(run.network, run.optimizer, loader, config,
                                       on_step=_step_callback(run, first_step), step=run.step)
    except preemption.StopAtStep as stop:
        _stop_mid_epoch(run, epoch, stop, partial, started)
    except preemption.Interrupted:
        raise run.signals.stopped(run.run_dir, epoch + 1, done) from None
    finally:
        if run.bar is not None:
            run.bar.close()
    # likewise the first evaluation (the cells compile again for evaluation mode): last.pt is
    # saved with the epoch's training done, and a signal during the evaluation stops there
    compiling = config.compile_cells and not run.evaluated
    if compiling and not run.saved:
        _save_mid_epoch(run, epoch, preemption.StopAtStep(len(loader), train_totals), partial,
                        started)
    if partial is not None:
        train_totals = train_totals + preemption.partial_totals(partial, run.process,
                                                                train_totals.device)
    train_totals = runtime.all_reduce(train_totals, run.process)
    train_values = train_totals.tolist()  # the epoch's one host sync for training
    train_seconds = time.perf_counter() - started
    runtime.broadcast_buffers(model, run.process)
    try:
        with run.signals.interruptible(compiling):
            test_totals = evaluate(model, run.test_loader, amp=config.amp)
    except preemption.Interrupted:
        raise run.signals.stopped(run.run_dir, epoch + 1, done + len(loader)) from None
    run.evaluated = True
    test_totals = runtime.all_reduce(test_totals, run.process)
    test_values = test_totals.tolist()
    if not (runtime.check_finite(train_totals, test_totals)
            and runtime.check_finite(*_floating_tensors(model))):
        _diverged(run, epoch)
    _step_schedule(run)
    seconds = time.perf_counter() - started
    train_count, test_count = max(train_values[2], 1.0), max(test_values[3], 1.0)
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "drop_path_prob": drop_prob,
        "train_loss": train_values[0] / train_count,
        "train_acc": 100.0 * train_values[1] / train_count,
        "test_loss": test_values[0] / test_count,
        "test_top1": 100.0 * test_values[1] / test_count,
        "test_top5": 100.0 * test_values[2] / test_count,
        "test_images": int(test_values[3]),
        "synthetic": run.info.synthetic,
        "seconds": round(seconds, 3),
        "images_per_s": round(train_values[2] / max(train_seconds, 1e-9), 1),
    }


def _step_callback(run: _Run, first_step: preemption.Stretch):
    """After each training step: the progress bar, then the pre-emption flag (every rank reads
    it at the same step; a raised flag stops the epoch there). The interruptible stretch of the
    process's first step ends with that step."""

    def on_step(step: int, totals: torch.Tensor, count: int) -> None:
        first_step.end()
        run.saved, run.stepped = False, True
        if run.bar is not None:
            run.bar.step(step, totals, count)
        if run.signals.stop_requested():
            raise preemption.StopAtStep(step + 1, torch.cat([
                totals.detach().double(), totals.new_tensor([float(count)], dtype=torch.float64)]))

    return on_step


def _no_steps(run: _Run) -> preemption.StopAtStep:
    """Where an epoch stands before its first step: no steps, zero sums."""
    device = next(run.model.parameters()).device
    return preemption.StopAtStep(0, torch.zeros(3, dtype=torch.float64, device=device))


def _save_mid_epoch(run: _Run, epoch: int, stop: preemption.StopAtStep, partial: dict | None,
                    started: float) -> int:
    """Save last.pt in the middle of `epoch` (its completed epochs, and where this one stands);
    returns the epoch's steps saved. Every rank calls it."""
    if partial is not None:  # an epoch that was already resumed mid-way
        stop = preemption.StopAtStep(
            partial["step"] + stop.step,
            stop.totals + preemption.partial_totals(partial, run.process, stop.totals.device))
    record = preemption.partial_epoch(stop, run.process, time.perf_counter() - started,
                                      run.signals.group)
    if run.writer is not None:
        state = _checkpoint_state(run, epoch)
        state.update(epoch=epoch, partial=record)
        checkpoints.save(run.run_dir / "last.pt", state)
    run.saved = True
    return stop.step


def _stop_mid_epoch(run: _Run, epoch: int, stop: preemption.StopAtStep, partial: dict | None,
                    started: float) -> None:
    """Save last.pt in the middle of `epoch` (unless it holds this point already: no step since
    it was written), then end the run with `Preempted`."""
    if run.saved and stop.step == 0:
        steps = 0 if partial is None else int(partial["step"])
    else:
        steps = _save_mid_epoch(run, epoch, stop, partial, started)
    raise run.signals.stopped(run.run_dir, epoch + 1, steps)


def _diverged(run: _Run, epoch: int) -> None:
    config, run_dir = run.config, run.run_dir
    kept = ("nothing was saved" if not epoch or run_dir is None else
            f"epoch 1 is kept in {run_dir}" if epoch == 1 else
            f"epochs 1..{epoch} are kept in {run_dir}")
    without_amp = " or train without --amp" if config.amp else ""
    raise TrainError(
        f"the loss became NaN or infinite in epoch {epoch + 1}; stopped ({kept}). "
        f"Try a lower --lr (this run: {config.lr:g}){without_amp}, or check the data")


def _record(run: _Run, epoch: int, record: dict[str, Any]) -> None:
    """Keep the epoch's metrics, checkpoint last.pt (and best.pt when top-1 improved), log a line."""
    run.history.append(record)
    improved = record["test_top1"] > run.best_top1
    if improved:
        run.best_top1, run.best_epoch = record["test_top1"], epoch + 1
    if run.writer is not None:
        run.writer.epoch_done(_checkpoint_state(run, epoch), improved)
    run.saved = True
    run.tracking.epoch(epoch + 1, record)
    log.info("epoch %d/%d lr %.5f train loss %.4f acc %.2f | test loss %.4f top-1 %.2f "
             "top-5 %.2f on %d test images | %.0f s, %.0f img/s%s", epoch + 1, run.config.epochs,
             record["lr"], record["train_loss"], record["train_acc"], record["test_loss"],
             record["test_top1"], record["test_top5"], record["test_images"], record["seconds"],
             record["images_per_s"], _synthetic(run))


def _checkpoint_state(run: _Run, epoch: int) -> dict[str, Any]:
    return {
        "kind": CHECKPOINT_KIND,
        "genotype_name": run.genotype.name,
        "genotype_text": run.text,
        "model_config": run.settings,
        "config": run.config.model_dump(mode="json"),
        "epoch": epoch + 1,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "best_top1": run.best_top1,
        "best_epoch": run.best_epoch,
        "history": run.history,
        "synthetic": run.info.synthetic,
        "world_size": run.process.world_size,
        # what an image goes through before the network (`attdarts predict`, export metadata)
        "data": {"mean": list(run.info.mean), "std": list(run.info.std),
                 "classes": list(run.info.classes)},
    }


def _finish(run: _Run) -> TrainResult:
    history, (total, reported) = run.history, run.parameters
    last_top1 = history[-1]["test_top1"] if history else float("nan")
    if run.writer is not None:
        run.writer.finish({
            "genotype": run.genotype.name,
            "dataset": run.config.dataset,
            "synthetic": run.info.synthetic,
            "epochs": len(history),
            "best_top1": run.best_top1,
            "best_epoch": run.best_epoch,
            "last_top1": last_top1,
            "last_top5": history[-1]["test_top5"] if history else float("nan"),
            "test_images": history[-1]["test_images"] if history else 0,
            "parameters": reported,
            "parameters_with_auxiliary": total,
        })
    return TrainResult(run.run_dir, run.best_top1, run.best_epoch, last_top1, reported, history,
                       run.model, run.info.synthetic)


def _synthetic(run: _Run) -> str:
    return " [synthetic data]" if run.info.synthetic else ""


def _test_images(loader) -> int:
    """Images one evaluation scores (the whole split, or the capped evaluation's subset)."""
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if dataset is not None else loader.num_samples


def _floating_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every weight and floating-point buffer (the state a NaN would spoil)."""
    return [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
