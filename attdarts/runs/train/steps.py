"""One training step, one epoch and one evaluation pass, with the optimiser and schedule of the
recipe (DARTS, Sec. 3.2: SGD with momentum, cosine annealing; ImageNet: lr x 0.97 per epoch).

`TrainStep` is the step the loop runs: `train_step` with the SGD update reading its learning rate
from a device tensor (`attdarts.runs.graphs.CapturableSGD`), replayed as one CUDA graph on CUDA
(`graphs`), eager elsewhere; both give the numbers of torch's own SGD step.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from attdarts.runs import graphs as captured
from attdarts.runs.train.config import TrainConfig


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


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Logits for the loss: bf16 / fp16 ones (autocast) in float32, float32 and float64 as they
    are (a float64 run stays float64 through its loss, as the portable behaviour test needs)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


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
    update: captured.CapturableSGD | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step; returns the (detached) loss and logits, still on the device.

    The loss is the main loss plus `auxiliary_weight` times the auxiliary head's (DARTS); the
    head's logits are asked for (``model(images, aux=True)``) only when that weight is above 0.
    `update` (wrapping `optimizer`) makes the step capture-safe: the learning rate is read from
    its device tensor; without it `optimizer.step()` runs. Clipping never waits for the device.
    """
    with autocast(images.device, amp):
        if auxiliary_weight > 0:
            logits, auxiliary_logits = model(images, aux=True)
        else:
            logits, auxiliary_logits = model(images), None
        loss = F.cross_entropy(at_least_float32(logits), labels, label_smoothing=label_smoothing)
        if auxiliary_logits is not None:
            loss = loss + auxiliary_weight * F.cross_entropy(
                at_least_float32(auxiliary_logits), labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    (optimizer if update is None else update).step()
    return loss.detach(), logits.detach()


class TrainStep:
    """The loop's training step: `train_step` with a `CapturableSGD` update, captured as a CUDA
    graph when `graphs` (and CUDA, one process: see `attdarts.runs.graphs`), eager otherwise.

    The step's Python-side constants are its capture key: the epoch's drop-path probability (the
    network reads it as a float: the linear ramp re-captures once per epoch) and train mode.
    """

    def __init__(self, network: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                 *, graphs: bool = False) -> None:
        self.network = network
        self.model = getattr(network, "module", network)  # under DistributedDataParallel
        self.update = captured.CapturableSGD(optimizer)
        self.settings = dict(auxiliary_weight=config.auxiliary_weight, grad_clip=config.grad_clip,
                             label_smoothing=config.label_smoothing, amp=config.amp)
        self.optimizer = optimizer
        self.captured = captured.CapturedStep(self._step, enabled=graphs)

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return train_step(self.network, self.optimizer, images, labels, update=self.update,
                          **self.settings)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of the step, on the device (captured: read them before the next call)."""
        self.update.refresh()
        key = (float(getattr(self.model, "drop_path_prob", 0.0)), self.model.training)
        return self.captured(images, labels, key=key)


def train_epoch(model, optimizer, loader, config: TrainConfig, *, on_step=None,
                step: TrainStep | None = None) -> torch.Tensor:
    """Sums (loss x samples, correct, samples) over the epoch, kept on the device.

    `step` is the run's `TrainStep` (kept across epochs, with its capture); without it an eager
    one is made for this epoch.

    Sample counts are known on the host, so nothing waits for the device until the caller reads
    the result once at the end of the epoch.
    `on_step(step, totals, count)` is called after every step with the running sums (still on
    the device: reading them waits for it, so a progress bar reads them only now and then).
    """
    model.train()
    device = _device_of(model)
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    count = 0
    step = TrainStep(model, optimizer, config) if step is None else step
    for index, (images, labels) in enumerate(loader):
        loss, logits = step(images, labels)
        batch = labels.shape[0]
        totals += torch.stack([loss.double() * batch, (logits.argmax(dim=1) == labels).sum().double()])
        count += batch
        if on_step is not None:
            on_step(index, totals, count)
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
            logits = model(images)
        logits = at_least_float32(logits)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        totals += torch.stack([loss.double(), hits[:, 0].sum().double(), hits.any(dim=1).sum().double()])
        count += labels.shape[0]
    return torch.cat([totals, torch.tensor([float(count)], dtype=torch.float64, device=device)])


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
