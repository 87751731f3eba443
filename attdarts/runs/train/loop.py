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

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "attdarts-train"


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
    drop_path_rule: Literal["authors", "darts"] = "authors"
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
        try:
            return str(data.parse_spec(value))
        except data.DataError as error:
            raise ValueError(str(error)) from None

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
    """
    model.train()
    device = _device_of(model)
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    count = 0
    for images, labels in loader:
        loss, logits = train_step(
            model, optimizer, images, labels, auxiliary_weight=config.auxiliary_weight,
            grad_clip=config.grad_clip, label_smoothing=config.label_smoothing, amp=config.amp)
        batch = labels.shape[0]
        totals += torch.stack([loss.double() * batch, (logits.argmax(dim=1) == labels).sum().double()])
        count += batch
        if on_step is not None:
            on_step(batch)
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


def run_training(
    config: TrainConfig,
    genotype: ir.Genotype,
    *,
    run_dir: str | os.PathLike | None,
    device: str | torch.device | None = None,
    resume: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Train `genotype` with `config`, writing the run directory (rank 0 only).

    With `resume`, `run_dir/last.pt` supplies the model, optimiser, scheduler and epoch; its
    stored config is used (the caller checks that the requested one agrees).
    """
    run_path = Path(run_dir) if run_dir is not None else None
    distributed = setup_distributed(device)
    try:
        return _run(config, genotype, run_path, distributed, resume, progress)
    finally:
        if distributed.initialized_here:
            dist.destroy_process_group()


def _run(config: TrainConfig, genotype: ir.Genotype, run_dir: Path | None,
         distributed: Distributed, resume: bool, progress: bool) -> TrainResult:
    device = distributed.device
    rank, world_size = distributed.rank, distributed.world_size
    configure_determinism(config.deterministic)
    state = None
    if resume:
        if run_dir is None:
            raise CheckpointError("resuming needs a run directory")
        state = load_run_checkpoint(run_dir / "last.pt", genotype)
        config = TrainConfig(**{**state["config"], **{k: getattr(config, k) for k in RESUMABLE_OVERRIDES}})
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

    log.info("%s on %s: %s weights (%s with the auxiliary head), %d steps/epoch, world size %d%s",
             genotype.name, device, f"{reported_parameters:,}", f"{total_parameters:,}",
             len(train_loader), world_size, " [synthetic data]" if info.synthetic else "")
    steps = len(train_loader)
    bar = _progress_bar(progress and distributed.is_main, (config.epochs - start_epoch) * steps,
                        start_epoch, config.epochs)

    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        drop_prob = config.drop_path_prob * epoch / config.epochs
        model.drop_path_prob = drop_prob
        lr = optimizer.param_groups[0]["lr"]
        torch.manual_seed(data.derive_seed(config.seed, epoch, rank, "model"))
        train_loader.set_epoch(epoch)
        if bar is not None:
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
        train_totals = train_epoch(network, optimizer, train_loader, config,
                                   on_step=(lambda n: bar.update(1)) if bar is not None else None)
        train_totals = _all_reduce(train_totals, distributed)
        train_values = train_totals.tolist()  # the epoch's one host sync for training
        train_seconds = time.perf_counter() - started
        _broadcast_buffers(model, distributed)
        test_values = _all_reduce(evaluate(model, test_loader, amp=config.amp), distributed).tolist()
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
            "seconds": round(seconds, 3),
            "images_per_s": round(train_values[2] / max(train_seconds, 1e-9), 1),
        }
        if info.synthetic:
            record["synthetic"] = True
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
        if bar is not None:
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", top1=f"{record['test_top1']:.2f}")
        log.info("epoch %d/%d lr %.5f train loss %.4f acc %.2f | test loss %.4f top-1 %.2f "
                 "top-5 %.2f | %.0f s, %.0f img/s", epoch + 1, config.epochs, lr,
                 record["train_loss"], record["train_acc"], record["test_loss"],
                 record["test_top1"], record["test_top5"], seconds, record["images_per_s"])
    if bar is not None:
        bar.close()

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
            "parameters": reported_parameters,
            "parameters_with_auxiliary": total_parameters,
        })
    return TrainResult(run_dir, best_top1, best_epoch, last_top1, reported_parameters, history, model)


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


def _progress_bar(enabled: bool, total: int, start_epoch: int, epochs: int):
    if not enabled or total <= 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True, mininterval=1.0,
                desc=f"epoch {start_epoch + 1}/{epochs}")


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
    loader, info = data.make_loader(
        spec, data_dir if data_dir is not None else stored.data_dir, train=False,
        batch_size=batch_size or stored.batch_size, device=device,
        workers=stored.workers if workers is None else workers)
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
        "images": int(values[3]),
        "test_loss": values[0] / count,
        "test_top1": 100.0 * values[1] / count,
        "test_top5": 100.0 * values[2] / count,
    }
