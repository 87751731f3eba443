"""The Att-DARTS search: bilevel optimisation of weights and architecture (paper Eq. 12-13).

Each iteration takes one architecture batch and one weight batch (DARTS): first an architecture
step (Adam on alpha / beta / gamma, on the architecture half), then a weight step (SGD with
momentum, gradient clipping, on the weight half).

Architecture gradient:

- first order: grad_a L_val(w, a);
- second order, exactly DARTS (the default, `second_order="darts"`): a virtual step
  ``w' = w - eta (mu m + grad_w L_train(w) + lambda w)`` with the weight optimiser's momentum
  buffer m, then ``grad_a L_val(w', a) - eta (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps)``
  with ``w+- = w +- eps grad_w' L_val(w')`` and ``eps = 0.01 / ||grad_w' L_val(w')||``;
- `second_order="authors"`: the authors' code's variant. Their alpha / beta are parameters of the
  model, so every step of the formula treats them like weights: the virtual step drops the
  momentum term and moves them too (``a' = a - eta (grad_a L_train + lambda a)``, lambda the
  network's weight decay); the vector is the gradient of L_val(w', a') with respect to
  (w', a'), ``eps = 0.01 / ||(grad_w', grad_a')||``, and the central difference moves alpha /
  beta with w: ``grad_a L_train(w +- eps v_w, a +- eps v_a)``.

Gradient clipping (`clip`): "weights" clips the weight gradients alone (DARTS). "authors" is what
the authors' `clip_grad_norm_(model.parameters(), 5)` counts: their Adam clears the architecture
gradients before the architecture step, so at clipping time alpha / beta still hold the gradient
the architecture step used (plus Adam's L2 term ``arch_weight_decay * a``, which torch 1.0.1,
their pinned version, adds into `.grad` in place), and the weight step's backward adds
``grad_a L_train(w, a_new)`` on top. Those count in the norm; only the weights are scaled.

Everything is functional (`torch.func.functional_call` on parameter dicts, no copy of the model).
During the second-order step's extra forward passes BatchNorm normalises with batch statistics as
usual (training mode) but its running statistics are left untouched: those passes run on a
scratch copy of the buffers, so only real steps (the weight step, and the first-order
architecture step as in DARTS) move them. Running statistics never affect the search itself,
which runs in training mode throughout.

Data: the training split is cut 50/50 (first half: weights, second half: architecture; an
ImageFolder, which lists images class by class, is shuffled once with a fixed seed before the
cut). Both halves get DARTS's search augmentation, random crop 32 with padding 4 and a horizontal
flip, no cutout: DARTS draws both queues from one dataset built with its training transform.
`augment=False` switches it off.

Loop hygiene: no host synchronisation per iteration. Losses and accuracies accumulate on the
device and are read once per epoch (and at a mid-epoch checkpoint); a NaN is detected there.
"train" metrics are those of the weight steps; "val" metrics those of the architecture batches
as the architecture step saw them (at w in first order, at the virtual w' in second order), so
they cost nothing extra; DARTS's separate evaluation pass is not run.

Run directory (see `run_search`): config.json, space.geno, genotype-epochNNN.geno, genotype.geno,
weights.jsonl, metrics.jsonl, checkpoint.pt. The checkpoint is the source of truth: it holds the
per-epoch history, and every other file is rewritten atomically from it after each epoch, so a
run killed at any instant resumes (`resume_search`) to byte-identical genotypes and weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor
from torch.func import functional_call

from attdarts.language import catalog, ir
from attdarts.language.printer import format_genotype, format_space
from attdarts.language.transform import parse_file, parse_text
from attdarts.networks.derive import derive_genotype
from attdarts.networks.supernet import CELL_KINDS, Supernet, compile_supernet
from attdarts.runs import checkpoints, data, runtime
from attdarts.runs.runtime import Process, set_threads  # noqa: F401 - set_threads is public here too

__all__ = [
    "Bilevel",
    "SearchConfig",
    "SearchError",
    "RECIPES",
    "SearchResult",
    "cosine_lr",
    "hessian_vector_product",
    "load_space",
    "read_config",
    "recipe_config",
    "resume_search",
    "run_search",
    "run_seeds",
    "set_threads",
    "virtual_step",
    "with_bam_combine",
]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
SPACE = "space.geno"
SEEDS = "seeds.json"
SUMMARY = "summary.json"
FINAL_GENOTYPE = "genotype.geno"
WEIGHTS_LOG = "weights.jsonl"
METRICS_LOG = "metrics.jsonl"
SPLIT_SEED = 0  # fixed shuffle of an ImageFolder before the 50/50 cut
# what a run on `--dataset synthetic` says in every output (genotype meta `synthetic`; the
# records of metrics.jsonl and weights.jsonl carry "synthetic": true)
SYNTHETIC_NOTE = "random images and labels: a smoke test, not a real search"


class SearchError(Exception):
    """A search that cannot go on (diverged, inconsistent run directory); the message says why."""


# The reproduction presets of `attdarts search --recipe`: the settings where the paper and the
# authors' code differ (README, "Paper, authors' code and attdarts"). SearchConfig's defaults are
# the "paper" row; explicit settings win over a recipe (`recipe_config`).
RECIPES: dict[str, dict[str, object]] = {
    "paper": {"lr_min": 0.0, "arch_init": "zeros", "second_order": "darts", "clip": "weights",
              "bam_combine": None},
    "authors": {"lr_min": 0.001, "arch_init": "randn", "second_order": "authors",
                "clip": "authors", "bam_combine": "product"},
}
_PAPER = RECIPES["paper"]


class SearchConfig(BaseModel):
    """Every setting of a search, with the paper's defaults (REFERENCE.md, "Search defaults").

    The defaults are the "paper" recipe (`RECIPES`): lr_min 0, zero init, exact DARTS second
    order, weights-only clipping, BAM as the space writes it (its default combine is the paper's
    sum). `bam_combine` rewrites every `bam` candidate of the space. The device and the number of
    threads are not settings: the caller chooses them, and they may change when a run resumes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    space_file: str
    space: str | None = None
    dataset: str = "cifar10"
    data_dir: str | None = None
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(64, ge=1)
    recipe: Literal["paper", "authors"] = "paper"
    order: Literal[1, 2] = 1
    # the settings a recipe decides default to the "paper" row of RECIPES (their one home)
    second_order: Literal["darts", "authors"] = _PAPER["second_order"]
    clip: Literal["weights", "authors"] = _PAPER["clip"]
    bam_combine: Literal["sum", "product"] | None = _PAPER["bam_combine"]
    seed: int = 2
    channels: int = Field(16, ge=1)
    layers: int = Field(8, ge=1)
    train_portion: float = Field(0.5, gt=0.0, lt=1.0)
    lr: float = Field(0.025, gt=0.0)
    lr_min: float = Field(_PAPER["lr_min"], ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(3e-4, ge=0.0)
    grad_clip: float = Field(5.0, gt=0.0)
    arch_lr: float = Field(3e-4, gt=0.0)
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = Field(1e-3, ge=0.0)
    arch_init: Literal["zeros", "randn"] = _PAPER["arch_init"]
    augment: bool = True
    max_steps_per_epoch: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(0, ge=0)
    deterministic: bool = False
    # run each cell's edges in groups (attdarts.networks.grouping): same sums, far fewer kernels; False is
    # the plain edge-by-edge path (`attdarts search --plain`)
    grouped: bool = True

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        spec = data.parse_spec(value)  # raises DataError with the expected forms
        if spec.kind == "imagenet":
            raise ValueError("the search runs on CIFAR-sized data; imagenet is not supported")
        return str(spec)

    @field_validator("arch_betas")
    @classmethod
    def _adam_betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in value):
            raise ValueError(f"both betas must lie in [0, 1), got {value[0]}, {value[1]}")
        return value

    @model_validator(mode="after")
    def _schedule(self) -> "SearchConfig":
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min ({self.lr_min}) must not exceed lr ({self.lr}): the cosine "
                             "schedule anneals from lr down to lr_min")
        return self


def recipe_config(recipe: str = "paper", **settings: object) -> SearchConfig:
    """A SearchConfig from a recipe of `RECIPES`; every setting given explicitly wins over it."""
    if recipe not in RECIPES:
        raise SearchError(f"unknown recipe '{recipe}'; expected one of {', '.join(RECIPES)}")
    return SearchConfig(**{**RECIPES[recipe], "recipe": recipe, **settings})


@dataclass
class SearchResult:
    run_dir: Path
    seed: int
    genotype: ir.Genotype
    epochs: int
    metrics: dict


# ---------------------------------------------------------------------------------------------
# Small pieces


def cosine_lr(config: SearchConfig, epoch: int) -> float:
    """SGD learning rate of 0-based `epoch`: cosine from lr to lr_min over `epochs` (SGDR)."""
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (
        1.0 + math.cos(math.pi * epoch / config.epochs))


def load_space(path: str | os.PathLike, name: str | None = None) -> ir.Space:
    return parse_file(path).space(name)


def with_bam_combine(space: ir.Space, combine: str | None) -> ir.Space:
    """`space` with every `bam` candidate combining its gates by `combine` (None: unchanged).

    The paper (and BAM's paper) sum the channel and spatial gates, the authors' code multiplies
    them; the parameters are the same, so only the IR's keyword changes.
    """
    if combine is None:
        return space
    parameters = catalog.ATTENTIONS["bam"].parameters

    def rewrite(call: ir.Call) -> ir.Call:
        if call.name != "bam":
            return call
        given = {**call.kwargs_dict(), "combine": combine}
        kwargs = tuple((key, given[key]) for key in parameters
                       if key in given and given[key] != parameters[key].default)
        return call.model_copy(update={"kwargs": kwargs})

    attentions = tuple(rewrite(call) for call in space.attentions)
    if len(set(attentions)) != len(attentions):
        raise SearchError(f"space '{space.name}': with combine={combine} two 'bam' candidates "
                          "become the same attention; list one")
    return space.model_copy(update={"attentions": attentions})


def _dump_json(value: object) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _short(values: Tensor) -> list:
    """float32 tensor -> nested lists of the shortest decimals that identify each float32."""
    array = values.detach().to("cpu", torch.float32).numpy()
    return [[float(str(np.float32(v))) for v in row] for row in array]


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels)


# ---------------------------------------------------------------------------------------------
# Second order, functionally


ParamDict = dict[str, Tensor]


def virtual_step(
    weights: ParamDict,
    grads: Mapping[str, Tensor],
    *,
    eta: float,
    weight_decay: float,
    momentum: float = 0.0,
    buffers: Mapping[str, Tensor | None] | None = None,
) -> ParamDict:
    """DARTS's virtual step ``w' = w - eta (mu m + g + lambda w)``; m missing or None -> 0."""
    names = list(weights)
    current = [weights[name].detach() for name in names]
    update = list(torch._foreach_add([grads[name] for name in names], current, alpha=weight_decay))
    present = [i for i, name in enumerate(names) if buffers and buffers.get(name) is not None]
    if momentum and present:
        added = torch._foreach_add([update[i] for i in present],
                                   [buffers[names[i]] for i in present], alpha=momentum)
        for index, value in zip(present, added):
            update[index] = value
    moved = torch._foreach_add(current, update, alpha=-eta)
    return dict(zip(names, moved))


def hessian_vector_product(
    loss: Callable[[ParamDict, ParamDict], Tensor],
    weights: ParamDict,
    arch: ParamDict,
    vector: Mapping[str, Tensor],
    *,
    r: float = 0.01,
    arch_vector: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """Finite-difference ``(d^2 L / da dw) v`` as DARTS: eps = r / ||v||, central difference.

    `loss(weights, arch)` evaluates L_train. Returns the product per arch name and eps. With
    `arch_vector` (the authors' variant, where alpha / beta are model parameters) the norm counts
    it too and the architecture moves along it with the weights: the gradient with respect to
    the architecture is taken at ``(w +- eps v, a +- eps v_a)``.
    """
    names = list(weights)
    arch_names = list(arch)
    v = [vector[name] for name in names]
    v_arch = [] if arch_vector is None else [arch_vector[name] for name in arch_names]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in v + v_arch]))
    eps = r / norm
    base = [weights[name].detach() for name in names]
    scaled = torch._foreach_mul(v, eps)
    arch_base = [arch[name].detach() for name in arch_names]
    arch_scaled = torch._foreach_mul(v_arch, eps) if v_arch else []

    def arch_gradient(sign: float) -> tuple[Tensor, ...]:
        moved = torch._foreach_add(base, scaled, alpha=sign)
        if arch_vector is None:
            arch_values = [arch[name] for name in arch_names]
        else:
            arch_values = [value.requires_grad_() for value in
                           torch._foreach_add(arch_base, arch_scaled, alpha=sign)]
        value = loss(dict(zip(names, moved)), dict(zip(arch_names, arch_values)))
        return torch.autograd.grad(value, arch_values)

    plus = arch_gradient(1.0)
    minus = arch_gradient(-1.0)
    product = {name: (p - m) / (2.0 * eps) for name, p, m in zip(arch_names, plus, minus)}
    return product, eps


class Bilevel:
    """One search iteration: an architecture step, then a weight step.

    `model` is the supernet; `network` is what the weight step calls (the same model, or its
    DistributedDataParallel wrapper). Under data parallelism the architecture gradients are
    averaged across ranks with one all-reduce. `hvp_scale` is DARTS's r in eps = r / ||v||.
    """

    hvp_scale = 0.01

    def __init__(self, model: Supernet, config: SearchConfig, *, network: torch.nn.Module | None = None,
                 world_size: int = 1) -> None:
        self.model = model
        self.network = network if network is not None else model
        self.config = config
        self.world_size = world_size
        self.weight_names = [name for name, _ in model.named_weights()]
        self.arch_names = [name for name, _ in model.named_architecture()]
        self.weight_params = model.weights()
        self.arch_params = model.architecture()
        if config.clip == "authors" and world_size > 1:
            raise SearchError("the authors' clipping (--clip authors) runs in one process; "
                              "use --clip weights under torchrun")
        # the architecture gradients still held at the weight step (clip="authors"): none before
        # the first architecture step
        self._arch_leftover = [torch.zeros_like(param) for param in self.arch_params]
        self.grad_norm: Tensor | None = None  # the last weight step's clip norm, on the device
        # foreach: a few multi-tensor operations instead of four per each of the ~6,000 weight
        # tensors, on every device (torch picks it by itself only on CUDA)
        self.weight_optimizer = torch.optim.SGD(
            self.weight_params, lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, foreach=True)
        self.arch_optimizer = torch.optim.Adam(
            self.arch_params, lr=config.arch_lr, betas=config.arch_betas,
            weight_decay=config.arch_weight_decay, foreach=True)

    @property
    def lr(self) -> float:
        return self.weight_optimizer.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        for group in self.weight_optimizer.param_groups:
            group["lr"] = lr

    # -- steps ----------------------------------------------------------------------------------

    def step(self, weight_batch: tuple[Tensor, Tensor], arch_batch: tuple[Tensor, Tensor]
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(train loss, train correct, val loss, val correct) as device tensors, no sync."""
        if self.config.order == 2:
            val_loss, val_logits = self.architecture_step_second_order(weight_batch, arch_batch)
        else:
            val_loss, val_logits = self.architecture_step_first_order(arch_batch)
        train_loss, train_logits = self.weight_step(weight_batch)
        return (train_loss.detach(), _correct(train_logits, weight_batch[1]),
                val_loss.detach(), _correct(val_logits, arch_batch[1]))

    def weight_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """SGD on the weights; the clip norm counts the weights, or also alpha / beta ("authors")."""
        images, labels = batch
        authors = self.config.clip == "authors"
        self._arch_requires_grad(authors)
        try:
            self.weight_optimizer.zero_grad(set_to_none=True)
            logits = self.network(images)
            loss = _cross_entropy(logits, labels)
            loss.backward()
            if authors:
                self.grad_norm = self._clip_as_the_authors()
            else:
                self.grad_norm = torch.nn.utils.clip_grad_norm_(self.weight_params,
                                                                self.config.grad_clip)
            self.weight_optimizer.step()
        finally:
            self._arch_requires_grad(True)
        return loss, logits.detach()

    def _clip_as_the_authors(self) -> Tensor:
        """Clip the weight gradients by the norm over the weights and alpha / beta (see above).

        alpha / beta's gradients there: what the architecture step left (`_arch_leftover`) plus
        this backward's ``grad_a L_train``. They are cleared afterwards; only the weights step.
        """
        arch_grads = []
        for param, leftover in zip(self.arch_params, self._arch_leftover):
            grad = param.grad
            arch_grads.append(leftover if grad is None else leftover + grad)
            param.grad = None
        weight_grads = [param.grad for param in self.weight_params if param.grad is not None]
        total = torch.nn.utils.get_total_norm([*weight_grads, *arch_grads])
        torch.nn.utils.clip_grads_with_norm_(self.weight_params, self.config.grad_clip, total)
        return total

    def architecture_step_first_order(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = batch
        logits = self.model(images)
        loss = _cross_entropy(logits, labels)
        grads = torch.autograd.grad(loss, self.arch_params)
        self._apply_arch_gradient(list(grads))
        return loss, logits.detach()

    def architecture_step_second_order(
        self, weight_batch: tuple[Tensor, Tensor], arch_batch: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        grads, val_loss, val_logits = self.unrolled_gradient(weight_batch, arch_batch)
        self._apply_arch_gradient(grads)
        return val_loss, val_logits

    def unrolled_gradient(
        self, weight_batch: tuple[Tensor, Tensor], arch_batch: tuple[Tensor, Tensor]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """The second-order architecture gradient (one per `arch_params` entry), L_val, logits."""
        if self.world_size > 1:
            raise SearchError("second-order search runs in one process; use --order 1 under torchrun")
        config = self.config
        eta = self.lr
        authors = config.second_order == "authors"
        weights = dict(zip(self.weight_names, self.weight_params))
        arch = dict(zip(self.arch_names, self.arch_params))
        # scratch BN buffers: the extra passes must not move the real running statistics
        buffers = {name: buffer.clone() for name, buffer in self.model.named_buffers()}

        def forward(w: Mapping[str, Tensor], a: Mapping[str, Tensor], images: Tensor) -> Tensor:
            return functional_call(self.model, ({**w, **a}, buffers), (images,))

        train_images, train_labels = weight_batch
        val_images, val_labels = arch_batch

        # 1. virtual step on the training batch
        if authors:
            leaves = {**weights, **arch}
            train_loss = _cross_entropy(forward(weights, arch, train_images), train_labels)
            grads = torch.autograd.grad(train_loss, list(leaves.values()))
            moved = virtual_step(leaves, dict(zip(leaves, grads)), eta=eta,
                                 weight_decay=config.weight_decay)
            virtual_weights = {name: moved[name] for name in self.weight_names}
            virtual_arch = {name: moved[name].requires_grad_() for name in self.arch_names}
        else:
            detached_arch = {name: value.detach() for name, value in arch.items()}
            train_loss = _cross_entropy(forward(weights, detached_arch, train_images), train_labels)
            grads = torch.autograd.grad(train_loss, self.weight_params)
            momentum_buffers = {
                name: self.weight_optimizer.state.get(param, {}).get("momentum_buffer")
                for name, param in weights.items()}
            virtual_weights = virtual_step(
                weights, dict(zip(self.weight_names, grads)), eta=eta,
                weight_decay=config.weight_decay, momentum=config.momentum,
                buffers=momentum_buffers)
            virtual_arch = arch
        for value in virtual_weights.values():
            value.requires_grad_()

        # 2. validation loss at w' (and a' for the authors' variant)
        val_logits = forward(virtual_weights, virtual_arch, val_images)
        val_loss = _cross_entropy(val_logits, val_labels)
        arch_values = [virtual_arch[name] for name in self.arch_names]
        grads = torch.autograd.grad(val_loss, [*arch_values, *virtual_weights.values()])
        arch_grads, vector = grads[:len(arch_values)], grads[len(arch_values):]

        # 3. finite-difference Hessian-vector product around (w, a); the authors' variant moves
        # alpha / beta along their own validation gradient too
        product, _ = hessian_vector_product(
            lambda w, a: _cross_entropy(forward(w, a, train_images), train_labels),
            weights, arch, dict(zip(self.weight_names, vector)), r=self.hvp_scale,
            arch_vector=dict(zip(self.arch_names, arch_grads)) if authors else None)
        total = [g - eta * product[name] for g, name in zip(arch_grads, self.arch_names)]
        return total, val_loss, val_logits.detach()

    # -- helpers --------------------------------------------------------------------------------

    def _apply_arch_gradient(self, grads: list[Tensor]) -> None:
        if self.world_size > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            grads = list(torch.split(flat, [g.numel() for g in grads]))
            grads = [g.reshape(p.shape) for g, p in zip(grads, self.arch_params)]
        for param, grad in zip(self.arch_params, grads):
            param.grad = grad.detach()
        if self.config.clip == "authors":
            # the gradient stays in .grad until the weight step's clipping; torch 1.0.1's Adam
            # adds its L2 term to it in place, at the values before the step
            decay = self.config.arch_weight_decay
            self._arch_leftover = [param.grad + decay * param.detach() for param in self.arch_params]
        self.arch_optimizer.step()
        self.arch_optimizer.zero_grad(set_to_none=True)

    def _arch_requires_grad(self, flag: bool) -> None:
        for param in self.arch_params:
            param.requires_grad_(flag)

    def state_dict(self) -> dict:
        return {"weight_optimizer": self.weight_optimizer.state_dict(),
                "arch_optimizer": self.arch_optimizer.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])


def _correct(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == labels).sum()


# ---------------------------------------------------------------------------------------------
# Data


def _search_halves(config: SearchConfig, dataset: data.ImageTensors | None
                   ) -> tuple[data.ImageTensors, data.ImageTensors]:
    if dataset is None:
        dataset = data.load_dataset(config.dataset, config.data_dir, train=True)
    if config.dataset.startswith("folder:"):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SPLIT_SEED))
        dataset = data.ImageTensors(
            dataset.images[order], dataset.labels[order], dataset.num_classes, dataset.mean,
            dataset.std, synthetic=dataset.synthetic, classes=dataset.classes, name=dataset.name)
    weight_half, arch_half = data.split(dataset, config.train_portion)
    if len(weight_half) < config.batch_size or len(arch_half) < config.batch_size:
        raise SearchError(
            f"the dataset has {len(dataset)} training images: too few for two halves of at least "
            f"one batch of {config.batch_size}")
    return weight_half, arch_half


def _loader(half: data.ImageTensors, config: SearchConfig, device: torch.device, role: str,
            process: Process) -> data.DeviceLoader:
    return data.DeviceLoader(
        half.images, half.labels, batch_size=config.batch_size, device=device,
        augment=config.augment, shuffle=True, drop_last=True, mean=half.mean, std=half.std,
        seed=data.derive_seed(config.seed, role), rank=process.rank,
        world_size=process.world_size, max_batches=config.max_steps_per_epoch)


# ---------------------------------------------------------------------------------------------
# The run


class _Run:
    """One seed's search in one run directory."""

    def __init__(self, config: SearchConfig, run_dir: Path, device: torch.device, process: Process,
                 space: ir.Space, dataset: data.ImageTensors | None, progress: bool) -> None:
        self.config = config
        self.run_dir = run_dir
        self.device = device
        self.process = process
        self.space = space
        self.progress = progress and process.main
        runtime.seed_everything(config.seed)
        weight_half, arch_half = _search_halves(config, dataset)
        self.synthetic = weight_half.synthetic
        self.weight_loader = _loader(weight_half, config, device, "weights", process)
        self.arch_loader = _loader(arch_half, config, device, "architecture", process)
        self.steps_per_epoch = min(len(self.weight_loader), len(self.arch_loader))
        self.model = compile_supernet(
            space, channels=config.channels, layers=config.layers,
            num_classes=weight_half.num_classes, input_size=int(weight_half.images.shape[-1]),
            init=config.arch_init, grouped=config.grouped).to(device)
        network = self.model
        if process.world_size > 1:
            if config.order == 2:
                raise SearchError("second-order search runs in one process; use --order 1 under torchrun")
            for param in self.model.architecture():  # DDP syncs the weights only
                param.requires_grad_(False)
            network = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
            for param in self.model.architecture():
                param.requires_grad_(True)
        self.bilevel = Bilevel(self.model, config, network=network,
                               world_size=process.world_size)
        self.history: dict[str, list[str]] = {"genotypes": [], "weights": [], "metrics": []}
        self.epoch = 0  # completed epochs
        self.step = 0  # completed steps of the current epoch
        # train loss sum, train correct, val loss sum, val correct: on the device, read per epoch
        self.totals = torch.zeros(4, dtype=torch.float64, device=device)
        self.counts = [0, 0]  # train and val images of this process in the current epoch
        self.elapsed = 0.0  # seconds spent in the current epoch before a resume

    # -- checkpoint -----------------------------------------------------------------------------

    def _config_record(self) -> dict:
        return self.config.model_dump(mode="json")

    def save(self) -> None:
        if not self.process.main:
            return
        checkpoints.save(self.run_dir / CHECKPOINT, {
            "config": self._config_record(),
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizers": self.bilevel.state_dict(),
            "totals": self.totals.cpu(),
            "counts": list(self.counts),
            "elapsed": self.elapsed,
            "history": self.history,
            "rng": runtime.rng_state(),
        })

    def restore(self) -> None:
        path = self.run_dir / CHECKPOINT
        state = checkpoints.load(path, map_location=self.device, what="search checkpoint")
        # compared as settings, not as dicts: a checkpoint written before a setting existed
        # holds that setting's default, which is what that run did
        try:
            recorded = SearchConfig.model_validate(state.get("config"))
        except (ValueError, TypeError, data.DataError):
            recorded = None
        if recorded != self.config:
            raise checkpoints.CheckpointError(
                f"{path}: the search checkpoint was written for a different config")
        try:
            self.model.load_state_dict(state["model"])
            self.bilevel.load_state_dict(state["optimizers"])
            self.epoch = int(state["epoch"])
            self.step = int(state["step"])
            self.totals = state["totals"].to(self.device, torch.float64)
            self.counts = [int(c) for c in state["counts"]]
            self.elapsed = float(state["elapsed"])
            self.history = {key: list(value) for key, value in state["history"].items()}
            runtime.set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise checkpoints.CheckpointError(
                f"{self.run_dir / CHECKPOINT}: does not match this search ({error})") from None

    # -- outputs --------------------------------------------------------------------------------

    def write_outputs(self) -> None:
        """Rewrite every derived file from the history (atomic, idempotent)."""
        if not self.process.main:
            return
        history = self.history
        for index, text in enumerate(history["genotypes"]):
            path = self.run_dir / f"genotype-epoch{index + 1:03d}.geno"
            if not path.is_file() or path.read_text() != text:
                checkpoints.atomic_write_text(path, text)
        if history["genotypes"]:
            checkpoints.atomic_write_text(self.run_dir / FINAL_GENOTYPE, history["genotypes"][-1])
        checkpoints.atomic_write_text(self.run_dir / WEIGHTS_LOG,
                                     "".join(line + "\n" for line in history["weights"]))
        checkpoints.atomic_write_text(self.run_dir / METRICS_LOG,
                                     "".join(line + "\n" for line in history["metrics"]))

    def genotype_text(self, epoch: int) -> str:
        config = self.config
        meta = {"space": self.space.name, "epoch": f"{epoch}/{config.epochs}",
                "seed": str(config.seed), "dataset": config.dataset}
        if self.synthetic:
            meta["dataset"] += f" ({SYNTHETIC_NOTE})"
            meta["synthetic"] = SYNTHETIC_NOTE
        genotype = derive_genotype(self.model, self.space, name=f"{self.space.name}_seed{config.seed}",
                                   meta=meta)
        text = format_genotype(genotype)
        if parse_text(text).genotype() != genotype:  # the printer must round-trip
            raise SearchError("internal error: the derived genotype does not print back")
        return text

    def weights_record(self, epoch: int) -> str:
        record: dict = {"epoch": epoch}
        if self.synthetic:
            record["synthetic"] = True
        tensors = self.model.architecture_tensors()
        for cell in CELL_KINDS:
            record[cell] = {kind: _short(torch.softmax(tensors[cell][kind].float(), dim=-1))
                            for kind in ("alpha", "beta", "gamma") if kind in tensors[cell]}
        columns = self.model.columns
        record["edges"] = list(self.model.edge_names)
        record["operations"] = columns["alpha"]
        attentions = columns.get("beta", columns.get("gamma"))
        if attentions is not None:
            record["attentions"] = attentions
        return _dump_json(record)

    # -- loop -----------------------------------------------------------------------------------

    def run(self) -> SearchResult:
        config = self.config
        while self.epoch < config.epochs:
            self.run_epoch()
        return self.result()

    def result(self) -> SearchResult:
        text = self.history["genotypes"][-1]
        metrics = json.loads(self.history["metrics"][-1])
        return SearchResult(self.run_dir, self.config.seed, parse_text(text).genotype(),
                            self.epoch, metrics)

    def run_epoch(self) -> None:
        config = self.config
        epoch = self.epoch
        lr = cosine_lr(config, epoch)
        self.bilevel.set_lr(lr)
        self.model.train()
        self.weight_loader.set_epoch(epoch)
        self.arch_loader.set_epoch(epoch)
        skip = self.step  # batches already consumed before a mid-epoch resume: replayed, not run
        if skip == 0:
            self.totals.zero_()
            self.counts = [0, 0]
            self.elapsed = 0.0
        started = time.perf_counter()
        bar = runtime.progress(self.progress, self.steps_per_epoch, skip,
                               f"seed {config.seed} epoch {epoch + 1}/{config.epochs}")
        batches = zip(self.weight_loader, self.arch_loader)
        try:
            for index, (weight_batch, arch_batch) in enumerate(batches):
                if index < skip:
                    continue  # drawing the batch advanced the loaders' generators as before
                train_loss, train_correct, val_loss, val_correct = self.bilevel.step(
                    weight_batch, arch_batch)
                train_count, val_count = weight_batch[1].shape[0], arch_batch[1].shape[0]
                self.totals += torch.stack([
                    train_loss * train_count, train_correct, val_loss * val_count, val_correct,
                ]).to(torch.float64)
                self.counts = [self.counts[0] + train_count, self.counts[1] + val_count]
                self.step = index + 1
                bar.update(1)
                if (config.checkpoint_every and self.step % config.checkpoint_every == 0
                        and self.step < self.steps_per_epoch):
                    self.elapsed += time.perf_counter() - started
                    started = time.perf_counter()
                    self._check_finite(epoch)
                    self.save()
        finally:
            bar.close()
        seconds = self.elapsed + time.perf_counter() - started
        totals = self._reduced_totals()
        self._check_finite(epoch, totals)
        train_loss, train_correct, val_loss, val_correct, train_count, val_count = totals.tolist()
        weight_images = train_count
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss / max(train_count, 1),
            "train_accuracy": train_correct / max(train_count, 1),
            "val_loss": val_loss / max(val_count, 1),
            "val_accuracy": val_correct / max(val_count, 1),
            "lr": lr,
            "steps": self.step,
            "seconds": round(seconds, 3),
            "images_per_s": round(weight_images / seconds, 2) if seconds > 0 else None,
        }
        if self.synthetic:
            metrics["synthetic"] = True
        self.epoch = epoch + 1
        self.step = 0
        self.elapsed = 0.0
        self.history["genotypes"].append(self.genotype_text(self.epoch))
        self.history["weights"].append(self.weights_record(self.epoch))
        self.history["metrics"].append(_dump_json(metrics))
        self.totals.zero_()
        self.counts = [0, 0]
        self.save()
        self.write_outputs()
        log.info(
            "seed %d epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.5f | "
            "%.1f s, %.1f images/s", config.seed, self.epoch, config.epochs,
            metrics["train_loss"], metrics["train_accuracy"], metrics["val_loss"],
            metrics["val_accuracy"], lr, seconds, weight_images / seconds if seconds > 0 else 0.0)

    def _reduced_totals(self) -> Tensor:
        counts = torch.tensor(self.counts, dtype=torch.float64).to(self.device)
        totals = torch.cat([self.totals, counts])
        if self.process.world_size > 1:
            torch.distributed.all_reduce(totals)
        return totals.cpu()

    def _check_finite(self, epoch: int, totals: Tensor | None = None) -> None:
        totals = self.totals if totals is None else totals
        finite = bool(torch.isfinite(totals).all()) and all(
            bool(torch.isfinite(p).all()) for p in self.model.architecture())
        if not finite:
            kept = (f"epochs 1..{self.epoch} are kept in {self.run_dir}" if self.epoch
                    else f"nothing was completed in {self.run_dir}")
            raise SearchError(
                f"the loss became NaN or infinite in epoch {epoch + 1} of seed {self.config.seed}; "
                f"stopped ({kept}). Try a lower --lr or check the data")


# ---------------------------------------------------------------------------------------------
# Public entry points


def _prepare_run_dir(config: SearchConfig, run_dir: Path, space: ir.Space,
                     restart: bool = False) -> None:
    """Write config.json and space.geno; `restart` accepts the run's own config.json (a run
    killed in its first epoch, started again by `resume_search`)."""
    if (run_dir / CHECKPOINT).exists() or ((run_dir / CONFIG).exists() and not restart):
        raise SearchError(
            f"'{run_dir}' already holds a search; continue it with --resume {run_dir} "
            "or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.atomic_write_text(run_dir / CONFIG, json.dumps(
        config.model_dump(mode="json"), indent=2) + "\n")
    checkpoints.atomic_write_text(run_dir / SPACE, format_space(space))


def _space_of(config: SearchConfig, run_dir: Path | None = None) -> ir.Space:
    """The space searched: the run's space.geno if written, else the space file, with
    `bam_combine` applied (idempotent, so a resumed run gets the same space)."""
    if run_dir is not None and (run_dir / SPACE).is_file():
        space = parse_file(run_dir / SPACE).space()
    else:
        space = load_space(config.space_file, config.space)
    return with_bam_combine(space, config.bam_combine)


def run_search(
    config: SearchConfig,
    run_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
    dataset: data.ImageTensors | None = None,
    resume: bool = False,
    restart: bool = False,
) -> SearchResult:
    """Search one seed into `run_dir` (or continue it with `resume=True`).

    `dataset` overrides loading `config.dataset` (tests pass tiny in-memory images). Under
    torchrun (WORLD_SIZE > 1) each process calls this; rank 0 writes the files. `restart` is
    for `resume_search` only: start again a run that has its config but no output yet.
    """
    run_dir = Path(run_dir)
    with (runtime.processes(None if device is None else str(device)) as (process, torch_device),
          runtime.determinism(config.deterministic, torch_device)):
        space = _space_of(config, run_dir)
        if not resume and process.main:
            _prepare_run_dir(config, run_dir, space, restart=restart)
        if process.world_size > 1:
            torch.distributed.barrier()
        run = _Run(config, run_dir, torch_device, process, space, dataset, progress)
        if resume:
            run.restore()
            run.write_outputs()
            if run.epoch >= config.epochs:
                log.info("%s: the search is already complete (%d epochs)", run_dir, run.epoch)
                return run.result()
            log.info("%s: resuming at epoch %d, step %d", run_dir, run.epoch + 1, run.step)
        result = run.run()
        if process.world_size > 1:
            torch.distributed.barrier()
        return result


def read_config(run_dir: str | os.PathLike) -> SearchConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise SearchError(f"'{run_dir}' is not a search run directory (no {CONFIG})")
    try:
        return SearchConfig.model_validate_json(path.read_text())
    except ValueError as error:
        raise SearchError(f"{path}: not a valid search configuration ({error})") from None


def resume_search(
    run_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
    dataset: data.ImageTensors | None = None,
) -> SearchResult | list[SearchResult]:
    """Continue an interrupted search (one seed, or a multi-seed directory) where it stopped.

    Without checkpoint.pt: a run that wrote no epoch yet (killed during its first epoch) starts
    over from its config.json, with a warning; one that did write epochs is refused, and nothing
    is touched (its checkpoint, which holds the state, is gone).
    """
    run_dir = Path(run_dir)
    if (run_dir / SEEDS).is_file():
        record = json.loads((run_dir / SEEDS).read_text())
        base = SearchConfig.model_validate(record["config"])
        return run_seeds(base, record["seeds"], run_dir, device=device, progress=progress,
                         dataset=dataset, resume=True)
    config = read_config(run_dir)
    if (run_dir / CHECKPOINT).exists():
        return run_search(config, run_dir, device=device, progress=progress, dataset=dataset,
                          resume=True)
    written = sorted(path.name for path in run_dir.glob("genotype-epoch*.geno"))
    written += [name for name in (FINAL_GENOTYPE, METRICS_LOG, WEIGHTS_LOG)
                if (run_dir / name).exists()]
    if written:
        raise SearchError(
            f"{run_dir / CHECKPOINT}: missing, but the run already wrote {', '.join(written)}; "
            "it cannot continue without its checkpoint. Nothing was changed; start a new run "
            "with another --out")
    log.warning("%s: no %s and no epoch written yet (the run stopped in its first epoch); "
                "starting it again from epoch 1", run_dir, CHECKPOINT)
    return run_search(config, run_dir, device=device, progress=progress, dataset=dataset,
                      restart=True)


def run_seeds(
    config: SearchConfig,
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
    dataset: data.ImageTensors | None = None,
    resume: bool = False,
) -> list[SearchResult]:
    """One search per seed, one after another, into out_dir/seed-N; then summary.json."""
    out_dir = Path(out_dir)
    if not resume:
        if (out_dir / SEEDS).exists():
            raise SearchError(f"'{out_dir}' already holds a search; continue it with --resume {out_dir}")
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.atomic_write_text(out_dir / SEEDS, json.dumps(
            {"seeds": list(seeds), "config": config.model_dump(mode="json")}, indent=2) + "\n")
    results = []
    for seed in seeds:
        seed_dir = out_dir / f"seed-{seed}"
        seed_config = config.model_copy(update={"seed": seed})
        if resume and (seed_dir / CONFIG).is_file():
            result = resume_search(seed_dir, device=device, progress=progress, dataset=dataset)
        else:
            result = run_search(seed_config, seed_dir, device=device, progress=progress,
                                dataset=dataset)
        assert isinstance(result, SearchResult)
        results.append(result)
    if int(os.environ.get("RANK", "0")) == 0:
        checkpoints.atomic_write_text(out_dir / SUMMARY, json.dumps(
            summarise(results, out_dir), indent=2) + "\n")
    return results


def summarise(results: Sequence[SearchResult], out_dir: Path) -> dict:
    """Which genotype each seed produced; seeds with the same cells are grouped."""
    groups: dict[tuple, list[int]] = {}
    rows = []
    for result in results:
        seed = result.seed
        cells = (result.genotype.normal, result.genotype.reduce)
        groups.setdefault(cells, []).append(seed)
        rows.append({
            "seed": seed,
            "genotype": str((result.run_dir / FINAL_GENOTYPE).relative_to(out_dir)),
            "epochs": result.epochs,
            "val_accuracy": result.metrics.get("val_accuracy"),
            "cells": _cells_line(result.genotype),
        })
    for row in rows:
        for cells, seeds in groups.items():
            if row["seed"] in seeds:
                row["same_cells_as"] = [s for s in seeds if s != row["seed"]]
    return {"seeds": rows}


def _cells_line(genotype: ir.Genotype) -> dict[str, str]:
    """Each cell on one line, e.g. 'n0 = sep_conv_3x3(c_k2) >> cbam + ...; c_k = concat(...)'."""
    lines: dict[str, list[str]] = {}
    kind = None
    for line in format_genotype(genotype).splitlines():
        stripped = line.strip()
        if stripped in ("normal {", "reduce {"):
            kind = stripped.split()[0]
            lines[kind] = []
        elif stripped == "}":
            kind = None
        elif kind is not None:
            lines[kind].append(stripped)
    return {kind: "; ".join(body) for kind, body in lines.items()}
