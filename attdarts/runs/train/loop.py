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

import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from attdarts.runs import checkpoints as checkpoint
from attdarts.runs import data
from attdarts.language import ir
from attdarts.runs.checkpoints import CheckpointError
from attdarts.networks.network import DROP_PATH_RULES

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "attdarts-train"
POSTFIX_EVERY = 20  # steps between progress-bar postfix updates (each one waits for the device)


class TrainError(Exception):
    """A run that cannot go on (diverged) or cannot be resumed; the message says why."""


class SettingChanged(TrainError):
    """`--resume` with a setting that differs from the run's (`option` names it)."""

    def __init__(self, field: str, stored: Any) -> None:
        self.option = "--" + field.replace("_", "-")
        super().__init__(f"{self.option} cannot change when resuming (the run used {stored!r}); "
                         "start a new run to change it")


# ---------------------------------------------------------------------------------------------
# Configuration


class TrainConfig(BaseModel):
    """The training recipe. Defaults are the paper's CIFAR settings; `TrainConfig.recipe` picks
    DARTS's ImageNet settings for `imagenet`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = "cifar10"
    data_dir: str | None = None
    epochs: int = Field(600, ge=1)
    batch_size: int = Field(96, ge=1)
    channels: int = Field(36, ge=1)
    layers: int = Field(20, ge=1)
    auxiliary: bool = True
    auxiliary_weight: float = Field(0.4, ge=0)
    lr: float = Field(0.025, gt=0)
    lr_min: float = Field(0.0, ge=0)
    lr_schedule: Literal["cosine", "exponential"] = "cosine"
    lr_gamma: float = Field(0.97, gt=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(3e-4, ge=0)
    grad_clip: float | None = Field(5.0, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    cutout: int = Field(16, ge=0)
    drop_path_prob: float = Field(0.2, ge=0, lt=1)
    # which edges drop path spares (attdarts.network._droppable); DARTS's rule by default
    drop_path_rule: Literal[DROP_PATH_RULES] = "darts"  # type: ignore[valid-type]
    seed: int = Field(0, ge=0)
    deterministic: bool = False
    amp: Literal["bf16"] | None = None
    channels_last: bool = False
    # run each cell's ready edges in groups (attdarts.grouped): the same network and numbers,
    # fewer kernels; False is the plain edge-by-edge path (`attdarts train --plain`)
    grouped: bool = True
    max_steps_per_epoch: int | None = Field(None, ge=1)
    workers: int = Field(0, ge=0)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        """A known spec; a folder's path made absolute, so the run can be scored from anywhere."""
        try:
            spec = data.parse_spec(value)
        except data.DataError as error:
            raise ValueError(str(error)) from None
        if spec.kind == "folder":
            spec = data.DatasetSpec("folder", _absolute(spec.path))
        return str(spec)

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: str | None) -> str | None:
        return None if value is None else _absolute(value)

    @classmethod
    def recipe(cls, dataset: str = "cifar10", **overrides: Any) -> "TrainConfig":
        """The paper's recipe for `dataset`, with `overrides` (None values are ignored)."""
        settings: dict[str, Any] = {"dataset": dataset}
        if isinstance(dataset, str) and dataset.strip().lower() == "imagenet":
            settings.update(IMAGENET_RECIPE)
        settings.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**settings)

    @property
    def spec(self) -> data.DatasetSpec:
        return data.parse_spec(self.dataset)

    def with_data_dir(self) -> "TrainConfig":
        """This config with the dataset root it will read spelled out (absolute): CIFAR and
        ImageNet default to ./data and ./data/imagenet of the working directory."""
        if self.data_dir is not None or self.spec.kind not in ("cifar10", "cifar100", "imagenet"):
            return self
        return self.model_copy(update={"data_dir": _absolute(data.default_data_dir(self.spec))})


def _absolute(path: str | os.PathLike) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


IMAGENET_RECIPE: dict[str, Any] = {
    "epochs": 250,
    "batch_size": 128,
    "channels": 48,
    "layers": 14,
    "lr": 0.1,
    "lr_schedule": "exponential",
    "lr_gamma": 0.97,
    "weight_decay": 3e-5,
    "label_smoothing": 0.1,
    "cutout": 0,
    "drop_path_prob": 0.0,
    "workers": 4,
}

# Settings that may differ when a run is resumed: they do not change what is computed.
RESUMABLE_OVERRIDES = frozenset({"data_dir", "workers", "grouped"})


# ---------------------------------------------------------------------------------------------
# Devices and processes


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def setup_distributed(device: str | torch.device | None = None) -> Distributed:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else run alone.

    NCCL on CUDA (one GPU per process, chosen by LOCAL_RANK), gloo on CPU.
    """
    requested = torch.device(device or default_device())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(device=requested)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if requested.type == "cuda":
        requested = torch.device("cuda", local_rank)
        torch.cuda.set_device(requested)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if requested.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        initialized_here = True
    return Distributed(rank, world_size, requested, initialized_here)


def configure_determinism(deterministic: bool) -> None:
    """Deterministic kernels where PyTorch has them (a warning names any that has none)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True


# ---------------------------------------------------------------------------------------------
# One step, one epoch


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # foreach: a few multi-tensor operations instead of several per parameter, on every device
    # (torch picks it by itself only on CUDA)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, foreach=True)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """Epoch-level schedule: cosine from lr to lr_min over the epochs (epoch e uses
    lr_min + (lr - lr_min)(1 + cos(pi e / epochs)) / 2), or lr * gamma^e for ImageNet."""
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs, eta_min=config.lr_min)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.lr_gamma)


def autocast(device: torch.device, amp: str | None):
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    auxiliary_weight: float = 0.4,
    grad_clip: float | None = 5.0,
    label_smoothing: float = 0.0,
    amp: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step; returns the (detached) loss and logits, still on the device.

    The loss is the main loss plus `auxiliary_weight` times the auxiliary head's (DARTS).
    """
    with autocast(images.device, amp):
        logits, auxiliary_logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        if auxiliary_logits is not None and auxiliary_weight > 0:
            loss = loss + auxiliary_weight * F.cross_entropy(
                auxiliary_logits.float(), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach(), logits.detach()


def train_epoch(model, optimizer, loader, config: TrainConfig, *, on_step=None) -> torch.Tensor:
    """Sums (loss x samples, correct, samples) over the epoch, kept on the device.

    Sample counts are known on the host, so nothing waits for the device until the caller reads
    the result once at the end of the epoch.
    `on_step(step, totals, count)` is called after every step with the running sums (still on
    the device: reading them waits for it, so a progress bar reads them only now and then).
    """
    model.train()
    device = _device_of(model)
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    count = 0
    for step, (images, labels) in enumerate(loader):
        loss, logits = train_step(
            model, optimizer, images, labels, auxiliary_weight=config.auxiliary_weight,
            grad_clip=config.grad_clip, label_smoothing=config.label_smoothing, amp=config.amp)
        batch = labels.shape[0]
        totals += torch.stack([loss.double() * batch, (logits.argmax(dim=1) == labels).sum().double()])
        count += batch
        if on_step is not None:
            on_step(step, totals, count)
    return torch.cat([totals, torch.tensor([float(count)], dtype=torch.float64, device=device)])


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, amp: str | None = None) -> torch.Tensor:
    """Sums (cross-entropy x samples, top-1 correct, top-5 correct, samples), on the device."""
    model.eval()
    device = _device_of(model)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    count = 0
    for images, labels in loader:
        with autocast(images.device, amp):
            logits, _ = model(images)
        logits = logits.float()
        loss = F.cross_entropy(logits, labels, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        totals += torch.stack([loss.double(), hits[:, 0].sum().double(), hits.any(dim=1).sum().double()])
        count += labels.shape[0]
    return torch.cat([totals, torch.tensor([float(count)], dtype=torch.float64, device=device)])


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------
# The run


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


def genotype_text(genotype: ir.Genotype) -> str:
    from attdarts.language.printer import format_genotype

    return format_genotype(genotype)


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


def build_model(genotype: ir.Genotype, settings: dict[str, Any]) -> nn.Module:
    from attdarts.networks.network import compile_network

    return compile_network(genotype, **settings)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all weights, weights without the auxiliary head: the number DARTS papers report)."""
    total = sum(p.numel() for p in model.parameters())
    head = getattr(model, "auxiliary_head", None)
    auxiliary = sum(p.numel() for p in head.parameters()) if head is not None else 0
    return total, total - auxiliary


def same_cells(a: ir.Genotype, b: ir.Genotype) -> bool:
    return a.normal == b.normal and a.reduce == b.reduce


def load_run_checkpoint(path: Path, genotype: ir.Genotype | None = None) -> dict[str, Any]:
    """A training checkpoint; refused if it was written for a different genotype."""
    state = checkpoint.load(path)
    if state.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path}: not a training checkpoint of 'attdarts train'")
    if genotype is not None:
        stored = stored_genotype(state, path)
        if not same_cells(stored, genotype):
            raise CheckpointError(
                f"{path}: the checkpoint was written for genotype '{stored.name}', whose cells "
                f"differ from those of '{genotype.name}'; resume with the genotype it was trained on"
            )
    return state


def stored_genotype(state: dict[str, Any], path: Path | str = "checkpoint") -> ir.Genotype:
    from attdarts.language.errors import DslError
    from attdarts.language.transform import parse_text

    try:
        return parse_text(state["genotype_text"]).genotype(state.get("genotype_name"))
    except (DslError, KeyError) as error:
        raise CheckpointError(f"{path}: the genotype stored in the checkpoint is unreadable ({error})") from None


@dataclass(frozen=True)
class ResumePoint:
    """A run directory checked for resuming: its last.pt, and the config and genotype to use."""

    run_dir: Path
    state: dict[str, Any]
    config: TrainConfig
    genotype: ir.Genotype


def open_resume(run_dir: str | os.PathLike, genotype: ir.Genotype | None = None,
                overrides: dict[str, Any] | None = None) -> ResumePoint:
    """Check that `run_dir/last.pt` belongs to the run in `run_dir` before anything is written.

    The checkpoint must be a training checkpoint, of `genotype` (when given) and of the run's
    `genotype.geno`, with the recipe of its `config.json`, and its history must agree with
    `metrics.jsonl` (a copy of another run's last.pt, even of the same genotype and recipe, has
    other numbers). `overrides` may change only the settings that do not change the result
    (`RESUMABLE_OVERRIDES`); another changed setting raises `SettingChanged`.
    """
    run_dir = Path(run_dir)
    path = run_dir / "last.pt"
    state = load_run_checkpoint(path, genotype)
    stored = stored_genotype(state, path)
    try:
        config = TrainConfig(**state["config"])
    except Exception as error:  # pydantic's ValidationError, a missing key
        raise CheckpointError(f"{path}: the stored settings are unreadable ({error})") from None

    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f"{path} does not belong to the run in {run_dir}: {reason}; "
                               "nothing was changed (resume from the run's own last.pt)")

    geno_path = run_dir / "genotype.geno"
    try:
        run_genotype = stored_genotype({"genotype_text": geno_path.read_text(encoding="utf-8"),
                                        "genotype_name": state.get("genotype_name")}, geno_path)
    except (OSError, UnicodeDecodeError) as error:
        raise refuse(f"cannot read {geno_path.name} ({error.__class__.__name__})") from None
    except CheckpointError:
        raise refuse(f"{geno_path.name} does not hold genotype '{stored.name}'") from None
    if not same_cells(run_genotype, stored):
        raise refuse(f"it was written for genotype '{stored.name}', whose cells differ from "
                     f"those in {geno_path.name}")

    config_path = run_dir / "config.json"
    try:
        recorded = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise refuse(f"cannot read {config_path.name} ({error.__class__.__name__})") from None
    stored_settings = dict(state["config"])  # as written, before validation touches paths
    for field, value in stored_settings.items():
        if field not in RESUMABLE_OVERRIDES and recorded.get(field, value) != value:
            raise refuse(f"its {field} is {value!r}, {config_path.name} says {recorded[field]!r}")

    history = list(state.get("history", []))
    metrics_path = run_dir / "metrics.jsonl"
    try:
        lines = metrics_path.read_text(encoding="utf-8").splitlines() if metrics_path.exists() else []
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as error:
        raise refuse(f"cannot read {metrics_path.name} ({error.__class__.__name__})") from None
    # last.pt is written before metrics.jsonl, so the file may lack the checkpoint's last
    # epoch but never holds an epoch the checkpoint lacks
    if len(records) > len(history) or records != history[:len(records)]:
        raise refuse(f"its {len(history)} epochs do not match the {len(records)} recorded "
                     f"in {metrics_path.name}")

    for field, value in (overrides or {}).items():
        if field not in RESUMABLE_OVERRIDES and getattr(config, field) != value:
            raise SettingChanged(field, getattr(config, field))
    config = config.model_copy(update={k: v for k, v in (overrides or {}).items()
                                       if k in RESUMABLE_OVERRIDES})
    return ResumePoint(run_dir, state, TrainConfig(**config.model_dump()), stored)


def run_training(
    config: TrainConfig,
    genotype: ir.Genotype,
    *,
    run_dir: str | os.PathLike | None,
    device: str | torch.device | None = None,
    resume: bool | ResumePoint = False,
    progress: bool = False,
) -> TrainResult:
    """Train `genotype` with `config`, writing the run directory (rank 0 only).

    With `resume`, `run_dir/last.pt` supplies the model, optimiser, scheduler and epoch after
    `open_resume` has checked it against the run directory; its stored config is used with the
    settings of `RESUMABLE_OVERRIDES` taken from `config`. A `ResumePoint` already opened by the
    caller is used as it is.
    """
    run_path = Path(run_dir) if run_dir is not None else None
    point = None
    if isinstance(resume, ResumePoint):
        point = resume
    elif resume:
        if run_path is None:
            raise CheckpointError("resuming needs a run directory")
        point = open_resume(run_path, genotype,
                            {field: getattr(config, field) for field in RESUMABLE_OVERRIDES})
    distributed = setup_distributed(device)
    try:
        return _run(config, genotype, run_path, distributed, point, progress)
    finally:
        if distributed.initialized_here:
            dist.destroy_process_group()


def _run(config: TrainConfig, genotype: ir.Genotype, run_dir: Path | None,
         distributed: Distributed, point: ResumePoint | None, progress: bool) -> TrainResult:
    device = distributed.device
    rank, world_size = distributed.rank, distributed.world_size
    configure_determinism(config.deterministic)
    state = None
    if point is not None:
        state, config, genotype = point.state, point.config, point.genotype
    config = config.with_data_dir()
    spec = config.spec

    train_loader, info = data.make_loader(
        spec, config.data_dir, train=True, batch_size=config.batch_size, device=device,
        seed=config.seed, cutout=config.cutout, rank=rank, world_size=world_size,
        workers=config.workers, max_batches=config.max_steps_per_epoch,
        channels_last=config.channels_last)
    test_loader, test_info = data.make_loader(
        spec, config.data_dir, train=False, batch_size=config.batch_size, device=device,
        seed=config.seed, rank=rank, world_size=world_size, workers=config.workers,
        max_batches=config.max_steps_per_epoch, channels_last=config.channels_last)
    if test_info.num_classes != info.num_classes:
        raise data.DataError(f"the train split has {info.num_classes} classes, "
                             f"the test split {test_info.num_classes}")
    if len(train_loader) == 0:
        raise data.DataError(f"{info.num_samples} training images make no batch of {config.batch_size}")
    input_size = None if spec.kind == "imagenet" else int(train_loader.images.shape[-1])
    settings = model_config(config, spec, info.num_classes, input_size)

    torch.manual_seed(data.derive_seed(config.seed, "init"))
    model = build_model(genotype, settings)
    total_parameters, reported_parameters = count_parameters(model)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)

    start_epoch, best_top1, best_epoch, history = 0, -1.0, 0, []
    if state is not None:
        model.load_state_dict(_strip_module_prefix(state["model"]))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        best_top1, best_epoch = float(state["best_top1"]), int(state["best_epoch"])
        history = list(state["history"])
        log.info("resuming %s at epoch %d/%d", run_dir, start_epoch, config.epochs)

    network = model
    if distributed.enabled:
        network = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    text = genotype_text(genotype)
    writer = _RunWriter(run_dir) if distributed.is_main and run_dir is not None else None
    if writer is not None:
        writer.start(config, genotype, text, device, world_size, info, reported_parameters,
                     total_parameters, history)

    synthetic = " [synthetic data]" if info.synthetic else ""
    log.info("%s on %s: %s weights (%s with the auxiliary head), %d steps/epoch, %d test images, "
             "world size %d%s", genotype.name, device, f"{reported_parameters:,}",
             f"{total_parameters:,}", len(train_loader), _test_images(test_loader), world_size,
             synthetic)
    bar = _EpochProgress(config.epochs) if progress and distributed.is_main else None

    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        drop_prob = config.drop_path_prob * epoch / config.epochs
        model.drop_path_prob = drop_prob
        lr = optimizer.param_groups[0]["lr"]
        torch.manual_seed(data.derive_seed(config.seed, epoch, rank, "model"))
        train_loader.set_epoch(epoch)
        if bar is not None:
            bar.start(epoch, len(train_loader))
        try:
            train_totals = train_epoch(network, optimizer, train_loader, config,
                                       on_step=bar.step if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        train_totals = _all_reduce(train_totals, distributed)
        train_values = train_totals.tolist()  # the epoch's one host sync for training
        train_seconds = time.perf_counter() - started
        _broadcast_buffers(model, distributed)
        test_values = _all_reduce(evaluate(model, test_loader, amp=config.amp), distributed).tolist()
        if not (_all_finite(train_values + test_values) and _model_finite(model)):
            kept = ("nothing was saved" if not epoch or run_dir is None else
                     f"epoch 1 is kept in {run_dir}" if epoch == 1 else
                     f"epochs 1..{epoch} are kept in {run_dir}")
            without_amp = " or train without --amp" if config.amp else ""
            raise TrainError(
                f"the loss became NaN or infinite in epoch {epoch + 1}; stopped ({kept}). "
                f"Try a lower --lr (this run: {config.lr:g}){without_amp}, or check the data")
        scheduler.step()
        seconds = time.perf_counter() - started

        train_count, test_count = max(train_values[2], 1.0), max(test_values[3], 1.0)
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "drop_path_prob": drop_prob,
            "train_loss": train_values[0] / train_count,
            "train_acc": 100.0 * train_values[1] / train_count,
            "test_loss": test_values[0] / test_count,
            "test_top1": 100.0 * test_values[1] / test_count,
            "test_top5": 100.0 * test_values[2] / test_count,
            "test_images": int(test_values[3]),
            "synthetic": info.synthetic,
            "seconds": round(seconds, 3),
            "images_per_s": round(train_values[2] / max(train_seconds, 1e-9), 1),
        }
        history.append(record)
        if record["test_top1"] > best_top1:
            best_top1, best_epoch = record["test_top1"], epoch + 1
            improved = True
        else:
            improved = False
        if writer is not None:
            state = {
                "kind": CHECKPOINT_KIND,
                "genotype_name": genotype.name,
                "genotype_text": text,
                "model_config": settings,
                "config": config.model_dump(mode="json"),
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "best_top1": best_top1,
                "best_epoch": best_epoch,
                "history": history,
                "synthetic": info.synthetic,
                "world_size": world_size,
            }
            writer.epoch_done(state, improved)
        log.info("epoch %d/%d lr %.5f train loss %.4f acc %.2f | test loss %.4f top-1 %.2f "
                 "top-5 %.2f on %d test images | %.0f s, %.0f img/s%s", epoch + 1, config.epochs, lr,
                 record["train_loss"], record["train_acc"], record["test_loss"],
                 record["test_top1"], record["test_top5"], record["test_images"], seconds,
                 record["images_per_s"], synthetic)

    last_top1 = history[-1]["test_top1"] if history else float("nan")
    if writer is not None:
        writer.finish({
            "genotype": genotype.name,
            "dataset": config.dataset,
            "synthetic": info.synthetic,
            "epochs": len(history),
            "best_top1": best_top1,
            "best_epoch": best_epoch,
            "last_top1": last_top1,
            "last_top5": history[-1]["test_top5"] if history else float("nan"),
            "test_images": history[-1]["test_images"] if history else 0,
            "parameters": reported_parameters,
            "parameters_with_auxiliary": total_parameters,
        })
    return TrainResult(run_dir, best_top1, best_epoch, last_top1, reported_parameters, history,
                       model, info.synthetic)


def _test_images(loader) -> int:
    """Images one evaluation scores (the whole split, or the capped evaluation's subset)."""
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if dataset is not None else loader.num_samples


def _all_finite(values: list[float]) -> bool:
    return all(math.isfinite(value) for value in values)


def _model_finite(model: nn.Module) -> bool:
    """Whether every weight and floating-point buffer is finite (one wait for the device)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _all_reduce(values: torch.Tensor, distributed: Distributed) -> torch.Tensor:
    if distributed.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


def _broadcast_buffers(model: nn.Module, distributed: Distributed) -> None:
    """Evaluate every rank's shard with rank 0's BatchNorm statistics (the ones checkpointed)."""
    if distributed.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept weights saved from a DistributedDataParallel (or DataParallel) wrapper."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module."):]: value for key, value in state_dict.items()}
    return state_dict


class _EpochProgress:
    """One progress bar per epoch on stderr: `epoch E/N`, the epoch's steps, and the running
    train loss and accuracy of this epoch (read from the device every `POSTFIX_EVERY` steps and
    at the last step, so most steps do not wait for it). The epoch's log line follows it."""

    def __init__(self, epochs: int, file=None) -> None:
        self.epochs = epochs
        self.file = file
        self.bar = None

    def start(self, epoch: int, steps: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="step",
                        file=self.file if self.file is not None else sys.stderr, leave=False,
                        dynamic_ncols=True, mininterval=1.0)

    def step(self, step: int, totals: torch.Tensor, count: int) -> None:
        self.bar.update(1)
        if (step + 1) % POSTFIX_EVERY == 0 or step + 1 == self.bar.total:
            loss_sum, correct = totals.tolist()
            self.bar.set_postfix(loss=f"{loss_sum / max(count, 1):.3f}",
                                 acc=f"{100.0 * correct / max(count, 1):.1f}%")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _RunWriter:
    """Writes the run directory; every file is replaced atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def start(self, config, genotype, text, device, world_size, info, reported, total, history):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resolved = {
            **config.model_dump(mode="json"),
            "genotype": genotype.name,
            "device": str(device),
            "world_size": world_size,
            "threads": torch.get_num_threads(),
            "synthetic": info.synthetic,
            "train_images": info.num_samples,
            "num_classes": info.num_classes,
            "mean": list(info.mean),
            "std": list(info.std),
            "parameters": reported,
            "parameters_with_auxiliary": total,
        }
        checkpoint.atomic_write_text(self.run_dir / "config.json", json.dumps(resolved, indent=2) + "\n")
        checkpoint.atomic_write_text(self.run_dir / "genotype.geno", text)
        self._write_metrics(history)  # on resume, drop lines of epochs the checkpoint lacks

    def epoch_done(self, state: dict, improved: bool) -> None:
        if improved:
            checkpoint.save(self.run_dir / "best.pt", state)
        checkpoint.save(self.run_dir / "last.pt", state)
        self._write_metrics(state["history"])

    def finish(self, summary: dict) -> None:
        checkpoint.atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    def _write_metrics(self, history: list[dict]) -> None:
        lines = "".join(json.dumps(record) + "\n" for record in history)
        checkpoint.atomic_write_text(self.run_dir / "metrics.jsonl", lines)


# ---------------------------------------------------------------------------------------------
# Evaluating a checkpoint


def evaluate_checkpoint(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Top-1, top-5 and loss of a training checkpoint on the test split.

    The checkpoint carries the genotype's text and the network settings, so the network is
    rebuilt from it alone; weights saved from a DDP wrapper (`module.` prefix) load too.
    """
    path = Path(path)
    state = load_run_checkpoint(path)
    genotype = stored_genotype(state, path)
    stored = TrainConfig(**state["config"])
    spec = data.parse_spec(dataset) if dataset is not None else stored.spec
    device = torch.device(device or default_device())
    try:
        loader, info = data.make_loader(
            spec, data_dir if data_dir is not None else stored.data_dir, train=False,
            batch_size=batch_size or stored.batch_size, device=device,
            workers=stored.workers if workers is None else workers)
    except data.DataError as error:
        if spec.kind == "synthetic":
            raise
        # the run's data moved or is on another machine: name the option that points at it
        option = ("--dataset folder:PATH" if spec.kind == "folder" else
                  "--data-dir DIR" if data_dir is None else "another --data-dir")
        raise data.DataError(f"{str(error).rstrip('.')}. The run at {path.parent} trained on "
                             f"{spec}: pass {option} to score it on the data where it is now"
                             ) from None
    settings = dict(state["model_config"])
    if info.num_classes != settings["num_classes"]:
        raise data.DataError(f"the checkpoint's network has {settings['num_classes']} classes, "
                             f"the dataset {info.num_classes}")
    model = build_model(genotype, settings)
    try:
        model.load_state_dict(_strip_module_prefix(state["model"]))
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not fit the stored network ({str(error).splitlines()[0]})") from None
    model.to(device)
    values = evaluate(model, loader).tolist()
    count = max(values[3], 1.0)
    return {
        "checkpoint": str(path),
        "genotype": genotype.name,
        "dataset": str(spec),
        "synthetic": info.synthetic,
        "epoch": int(state["epoch"]),
        "test_images": int(values[3]),
        "test_loss": values[0] / count,
        "test_top1": 100.0 * values[1] / count,
        "test_top5": 100.0 * values[2] / count,
    }
