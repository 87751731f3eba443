"""Several seeds' searches as one batched model (`attdarts search --seeds 1,2,3,4 --together`).

The paper searches four seeds. One after another, each seed's step is launch-bound on a GPU
(thousands of small kernels); together, every kernel does all the seeds' work. Each seed's
supernet is built exactly as its own run builds it (`SearchRun`: `seed_everything(seed)`, its
loaders, then its supernet); their parameters, running statistics and optimiser states are
stacked along a new leading seed dimension, and one supernet runs on them through `torch.vmap`
over `torch.func.functional_call`: a convolution whose weight carries the seed dimension becomes
one grouped convolution over the seeds, and a batch norm keeps each seed's statistics apart.

Each seed's result is that of its own run (tests compare them in float64):

- losses are per seed, and the gradient of their sum is each seed's own gradient;
- SGD with momentum and Adam are elementwise, so one optimiser over the stacked tensors moves
  every seed as its own would (Adam's step count is the same for all);
- the gradient clip uses each seed's own norm (over all but the seed dimension), as
  `clip_grad_norm_` does for one seed; `clip="authors"` counts each seed's alpha / beta
  gradients as `Bilevel` does; second order takes eps = r / ||v|| per seed;
- each seed draws its batches from its own loaders, in its own order.

Each seed writes its own run directory with the files of a separate run (its `SearchRun` records
the epochs, through `outputs`), checkpoint.pt included: a together run resumes together, and a
seed's directory can also be continued alone. The step draws no random number
(`vmap(randomness="error")` fails if it does), so each seed's generators stay as its
initialisation left them; its checkpoint records them, as a separate run's does.

Refused with one line: data parallelism, an architecture warm-up, and the space options acting
in the step or the loop (all but the derivation caps). Memory grows linearly with the seeds.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from attdarts.language import ir
from attdarts.networks.methods import SearchMethod, method_class
from attdarts.networks import grouping
from attdarts.runs import data, preemption, runtime
from attdarts.runs.runtime import Process
from attdarts.runs.search.bilevel import Bilevel, virtual_step
from attdarts.runs.search.config import SearchConfig, SearchError, SearchResult, cosine_lr
from attdarts.runs.search.loop import SearchRun
from attdarts.runs.search.outputs import prepare_run_dir

log = logging.getLogger(__name__)

# hooks that act on the derivation only: each seed derives from its own supernet
DERIVATION_HOOKS = frozenset({"derivation_weights", "edge_scales", "keep", "cap", "size_problem"})


def _acts_in_the_search(name: str) -> bool:
    """Whether search method `name` fills a hook other than the derivation's."""
    cls = method_class(name)
    hooks = {hook for hook, value in vars(SearchMethod).items()
             if callable(value) and not hook.startswith("_")}
    return any(getattr(cls, hook) is not getattr(SearchMethod, hook)
               for hook in hooks - DERIVATION_HOOKS)

Batch = tuple[Tensor, Tensor]  # (seeds, batch, 3, H, W) images and (seeds, batch) labels


def unsupported(config: SearchConfig, space: ir.Space) -> str | None:
    """Why `config` on `space` cannot run together (one line), or None."""
    active = [call.name for call in space.methods if _acts_in_the_search(call.name)]
    if active:
        return (f"--together does not run the search method(s) {', '.join(active)} of space "
                f"'{space.name}' yet; run its seeds without --together")
    if config.arch_start_epoch:  # StackedBilevel always takes an architecture step
        return "--together has no architecture warm-up yet; give --arch-start-epoch 0"
    return None


class _ProbeNorms(nn.Module):
    """Two batch norms run as one grouped batch norm (`grouping.batch_norm`)."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = nn.ModuleList([nn.BatchNorm2d(1, affine=False) for _ in range(2)])

    def forward(self, x: Tensor) -> Tensor:
        with grouping.deferred_statistics():
            return grouping.batch_norm(x, list(self.norms), 2)


@functools.cache
def grouped_cells_vmap() -> bool:
    """Whether grouped cells run under `torch.vmap`: their running-statistics write-backs use
    multi-tensor operations (`torch._foreach_copy_`, `_foreach_add_`) that vmap has no rule
    for in torch 2.x. Where they do not, the seeds run through the plain cells (the same sums to
    float rounding, and still one kernel per candidate across the seeds)."""
    probe = _ProbeNorms()
    buffers = {name: torch.stack([value, value]) for name, value in probe.named_buffers()}
    images = torch.arange(16.0).reshape(2, 4, 2, 1, 1)  # the buffers' (default) dtype
    try:
        torch.vmap(lambda b, x: functional_call(probe, b, (x,)))(buffers, images)
    except RuntimeError as error:
        if "Batching rule not implemented" not in str(error):
            raise
        return False
    return True


def _seed_view(value: Tensor, dims: int) -> Tensor:
    """A (seeds,) vector shaped to scale a (seeds, ...) tensor of `dims` dimensions."""
    return value.reshape(-1, *([1] * (dims - 1)))


def _stack(tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack([tensor.detach() for tensor in tensors])


class StackedBilevel:
    """`Bilevel`'s iteration (first or second order) for S seeds at once, on stacked tensors.

    `models` are the seeds' supernets (same space and sizes); their values are copied into
    stacked leaves here (`load`) and back (`unload`). A copy of the first is the template the
    stacked values run through (plain cells where grouped ones cannot run under vmap).
    For a benchmark: build S supernets (`torch.manual_seed(seed)` before each), move them to the
    device, then call `step` with images (S, batch, 3, H, W) and labels (S, batch).
    """

    def __init__(self, models: Sequence[nn.Module], config: SearchConfig) -> None:
        self.config = config
        self.seeds = len(models)
        self.template = copy.deepcopy(models[0])
        if getattr(self.template, "grouped", False) and not grouped_cells_vmap():
            log.info("grouped cells do not run under torch.vmap in this torch; the seeds run "
                     "through the plain cells (the same sums)")
            self.template.set_grouped(False)
        self.weight_names = [name for name, _ in self.template.named_weights()]
        self.arch_names = [name for name, _ in self.template.named_architecture()]
        parameters = set(self.weight_names) | set(self.arch_names)
        # running statistics and batch counters; non-persistent buffers (a cell's wave indices)
        # are the same for every seed and stay the template's
        self.buffer_names = [name for name in self.template.state_dict() if name not in parameters]
        owned = [dict(model.state_dict(keep_vars=True)) for model in models]
        self.weights = [_stack([own[name] for own in owned]).requires_grad_()
                        for name in self.weight_names]
        self.arch = [_stack([own[name] for own in owned]).requires_grad_()
                     for name in self.arch_names]
        self.buffers = [_stack([own[name] for own in owned]).clone() for name in self.buffer_names]
        self.weight_optimizer = torch.optim.SGD(
            self.weights, lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, foreach=True)
        self.arch_optimizer = torch.optim.Adam(
            self.arch, lr=config.arch_lr, betas=config.arch_betas,
            weight_decay=config.arch_weight_decay, foreach=True)
        # clip="authors": the architecture gradients still held at the weight step (`Bilevel`)
        self._arch_leftover = [torch.zeros_like(value) for value in self.arch]
        self.grad_norm: Tensor | None = None  # the last weight step's per-seed clip norms

    def set_lr(self, lr: float) -> None:
        for group in self.weight_optimizer.param_groups:
            group["lr"] = lr

    # -- steps ----------------------------------------------------------------------------------

    def logits(self, images: Tensor, values: dict[str, Tensor] | None = None,
               buffers: Sequence[Tensor] | None = None) -> Tensor:
        """(seeds, batch, classes): every seed's supernet on its own images, one batched pass.
        `values` replaces weights / alpha / beta by name, `buffers` the running statistics."""
        current = dict(zip(self.weight_names + self.arch_names, self.weights + self.arch))
        current.update(values or {})
        stats = dict(zip(self.buffer_names, self.buffers if buffers is None else buffers))

        def one(values, buffers, x):
            return functional_call(self.template, (values, buffers), (x,))

        return torch.vmap(one, randomness="error")(current, stats, images)

    def step(self, weight_batch: Batch, arch_batch: Batch) -> Tensor:
        """One iteration of every seed: the architecture step on `arch_batch`, then the weight
        step on `weight_batch`. Returns (4, seeds) on the device, no host synchronisation:
        train loss, train correct, val loss, val correct."""
        val_loss, val_logits = self.architecture_step(arch_batch, weight_batch)
        train_loss, train_logits = self.weight_step(weight_batch)
        return torch.stack([
            train_loss.detach(), _correct(train_logits, weight_batch[1]).to(train_loss.dtype),
            val_loss.detach(), _correct(val_logits, arch_batch[1]).to(val_loss.dtype)])

    def architecture_step(self, batch: Batch, weight_batch: Batch | None = None
                          ) -> tuple[Tensor, Tensor]:
        """Adam on alpha / beta: first order on `batch`, or second order (`unrolled_gradient`,
        which also needs the `weight_batch`)."""
        if self.config.order == 2:
            assert weight_batch is not None
            grads, loss, logits = self.unrolled_gradient(weight_batch, batch)
        else:
            logits = self.logits(batch[0])
            loss = _cross_entropy(logits, batch[1])
            grads = list(torch.autograd.grad(loss.sum(), self.arch))
            logits = logits.detach()
        for value, grad in zip(self.arch, grads):
            value.grad = grad
        if self.config.clip == "authors":
            decay = self.config.arch_weight_decay
            self._arch_leftover = [value.grad + decay * value.detach() for value in self.arch]
        self.arch_optimizer.step()
        self.arch_optimizer.zero_grad(set_to_none=True)
        return loss, logits

    def unrolled_gradient(self, weight_batch: Batch, arch_batch: Batch
                          ) -> tuple[list[Tensor], Tensor, Tensor]:
        """`Bilevel.unrolled_gradient` for every seed at once (both variants; the extra passes
        on scratch running statistics). The only per-seed quantity beyond the elementwise
        virtual step is eps = r / ||v||, one per seed (`_hessian_vector_product`)."""
        config, eta = self.config, self.weight_optimizer.param_groups[0]["lr"]
        weights = dict(zip(self.weight_names, self.weights))
        arch = dict(zip(self.arch_names, self.arch))
        scratch = [buffer.clone() for buffer in self.buffers]

        def loss(values: dict[str, Tensor], batch: Batch) -> Tensor:
            return _cross_entropy(self.logits(batch[0], values, scratch), batch[1]).sum()

        if config.second_order == "authors":  # alpha / beta move with the weights
            leaves = {**weights, **arch}
            grads = torch.autograd.grad(loss(leaves, weight_batch), list(leaves.values()))
            moved = virtual_step(leaves, dict(zip(leaves, grads)), eta=eta,
                                 weight_decay=config.weight_decay)
        else:
            detached = {name: value.detach() for name, value in arch.items()}
            grads = torch.autograd.grad(loss({**weights, **detached}, weight_batch), self.weights)
            momentum = {name: self.weight_optimizer.state.get(value, {}).get("momentum_buffer")
                        for name, value in weights.items()}
            moved = {**virtual_step(weights, dict(zip(self.weight_names, grads)), eta=eta,
                                    weight_decay=config.weight_decay, momentum=config.momentum,
                                    buffers=momentum), **arch}
        virtual = {name: value if value.requires_grad else value.requires_grad_()
                   for name, value in moved.items()}
        val_logits = self.logits(arch_batch[0], virtual, scratch)
        val_loss = _cross_entropy(val_logits, arch_batch[1])
        arch_values = [virtual[name] for name in self.arch_names]
        grads = torch.autograd.grad(val_loss.sum(), [*arch_values, *(
            virtual[name] for name in self.weight_names)])
        arch_grads, vector = grads[:len(arch_values)], grads[len(arch_values):]
        product = self._hessian_vector_product(
            loss, weight_batch, vector,
            arch_grads if config.second_order == "authors" else None)
        total = [grad - eta * part for grad, part in zip(arch_grads, product)]
        return total, val_loss, val_logits.detach()

    def _hessian_vector_product(self, loss, batch: Batch, vector: Sequence[Tensor],
                                arch_vector: Sequence[Tensor] | None) -> list[Tensor]:
        """`bilevel.hessian_vector_product` with eps_s = r / ||v_s|| for each seed s: the
        central difference of grad_a L_train at w +- eps_s v_s (and a +- eps_s v_a,s)."""
        flat = torch.cat([v.reshape(self.seeds, -1) for v in (*vector, *(arch_vector or ()))], 1)
        eps = Bilevel.hvp_scale / torch.linalg.vector_norm(flat, dim=1)

        def moved(bases: Sequence[Tensor], directions: Sequence[Tensor], sign: float) -> list:
            return [base.detach() + sign * (direction * _seed_view(eps, direction.dim()))
                    for base, direction in zip(bases, directions)]

        def arch_gradient(sign: float) -> tuple[Tensor, ...]:
            arch = (list(self.arch) if arch_vector is None else
                    [value.requires_grad_() for value in moved(self.arch, arch_vector, sign)])
            values = dict(zip(self.weight_names, moved(self.weights, vector, sign)))
            values.update(zip(self.arch_names, arch))
            return torch.autograd.grad(loss(values, batch), arch)

        plus, minus = arch_gradient(1.0), arch_gradient(-1.0)
        return [(p - m) / (2.0 * _seed_view(eps, p.dim())) for p, m in zip(plus, minus)]

    def weight_step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        images, labels = batch
        authors = self.config.clip == "authors"
        for value in self.arch:
            value.requires_grad_(authors)
        try:
            self.weight_optimizer.zero_grad(set_to_none=True)
            logits = self.logits(images)
            loss = _cross_entropy(logits, labels)
            loss.sum().backward()
            grads = [value.grad for value in self.weights if value.grad is not None]
            counted = list(grads)
            if authors:
                for value, leftover in zip(self.arch, self._arch_leftover):
                    counted.append(leftover if value.grad is None else leftover + value.grad)
                    value.grad = None
            self.grad_norm = clip_per_seed(grads, counted, self.config.grad_clip)
            self.weight_optimizer.step()
        finally:
            for value in self.arch:
                value.requires_grad_(True)
        return loss, logits.detach()

    # -- the seeds' own models and optimisers ---------------------------------------------------

    def _values(self) -> Iterator[tuple[str, Tensor]]:
        return zip([*self.weight_names, *self.arch_names, *self.buffer_names],
                   [*self.weights, *self.arch, *self.buffers])

    def _optimizers(self) -> tuple:
        """(stacked optimiser, the matching attribute of a seed's `Bilevel`, values, names)."""
        return ((self.weight_optimizer, "weight_optimizer", self.weights, self.weight_names),
                (self.arch_optimizer, "arch_optimizer", self.arch, self.arch_names))

    def unload(self, models: Sequence[nn.Module], bilevels: Sequence[Bilevel]) -> None:
        """Copy seed s's slice of every value and optimiser state into `models[s]` and the
        optimisers of `bilevels[s]`, as that seed's separate run holds them."""
        lr = self.weight_optimizer.param_groups[0]["lr"]
        with torch.no_grad():
            for seed, (model, bilevel) in enumerate(zip(models, bilevels)):
                own, params = model.state_dict(keep_vars=True), dict(model.named_parameters())
                for name, value in self._values():
                    own[name].copy_(value[seed])
                for optimizer, attribute, values, names in self._optimizers():
                    target = getattr(bilevel, attribute).state
                    target.clear()
                    for value, name in zip(values, names):
                        if value in optimizer.state:  # Adam's step count: the same for all
                            target[params[name]] = {
                                key: item[seed].clone() if _shaped_like(item, value) else item.clone()
                                for key, item in optimizer.state[value].items()}
                bilevel.set_lr(lr)

    def load(self, models: Sequence[nn.Module], bilevels: Sequence[Bilevel]) -> None:
        """The reverse of `unload`: stack the seeds' values and optimiser states (a resume)."""
        owned = [model.state_dict(keep_vars=True) for model in models]
        params = [dict(model.named_parameters()) for model in models]
        with torch.no_grad():
            for name, value in self._values():
                value.copy_(_stack([own[name] for own in owned]))
        for optimizer, attribute, values, names in self._optimizers():
            optimizer.state.clear()
            for value, name in zip(values, names):
                states = [getattr(bilevel, attribute).state.get(own[name])
                          for bilevel, own in zip(bilevels, params)]
                if all(state is not None for state in states):
                    optimizer.state[value] = {
                        key: _stack([state[key] for state in states])
                        if _shaped_like(item, value[0]) else item.clone()
                        for key, item in states[0].items()}


def _shaped_like(item: object, value: Tensor) -> bool:
    """Whether an optimiser state entry is per element of `value` (momentum, Adam moments)."""
    return isinstance(item, Tensor) and item.shape == value.shape


def clip_per_seed(grads: list[Tensor], counted: list[Tensor], max_norm: float) -> Tensor:
    """Scale `grads` so that each seed's norm over `counted` is at most `max_norm`, as
    `torch.nn.utils.clip_grad_norm_` does for one seed (coefficient max_norm / (norm + 1e-6),
    at most 1). Every tensor has the seed dimension first; returns the (seeds,) norms."""
    seeds = counted[0].shape[0]
    flat = torch.cat([grad.reshape(seeds, -1) for grad in counted], dim=1)
    norms = torch.linalg.vector_norm(flat, dim=1)
    coefficients = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, [_seed_view(coefficients, grad.dim()) for grad in grads])
    return norms


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """(seeds,) mean cross-entropies."""
    seeds, batch = labels.shape
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    return losses.view(seeds, batch).mean(dim=1)


def _correct(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(dim=-1) == labels).sum(dim=1)


# -- the seeds' runs ------------------------------------------------------------------------


class TogetherSearch:
    """S seeds' searches, each into out_dir/seed-N, run as one batched model.

    A benchmark with the real loaders builds it (nothing is written before `run`, unless
    `prepare`) and calls `search.step(*batches)` for each `batches` of `search.batches()`.
    Pre-emption stops it as `SearchRun`: the seeds' checkpoints are saved at the same step.
    """

    signals: preemption.Watch = preemption.NOT_WATCHED  # SIGTERM / SIGUSR1 / SIGINT (set by entry)

    def __init__(self, config: SearchConfig, seeds: Sequence[int], out_dir: str | Path, *,
                 device: torch.device, space: ir.Space, dataset: data.ImageTensors | None = None,
                 progress: bool = False, process: Process = Process(), prepare: bool = False,
                 restart: bool = False, resume: bool = False) -> None:
        reason = unsupported(config, space)
        if reason is None and process.world_size > 1:
            reason = "--together runs in one process; run it without torchrun"
        if reason is not None:
            raise SearchError(reason)
        if len(set(seeds)) != len(seeds) or not seeds:
            raise SearchError(f"--together needs distinct seeds, got {list(seeds)}")
        self.config = config
        self.seeds = list(seeds)
        self.progress = progress and process.main
        if dataset is None:  # read once for every seed
            dataset = data.load_dataset(config.dataset, config.data_dir, train=True)
        self.runs: list[SearchRun] = []
        self.rng_states = []  # each seed's generators as its own run leaves them after its init
        for seed in self.seeds:
            seed_config = config.model_copy(update={"seed": seed})
            run_dir = Path(out_dir) / f"seed-{seed}"
            if prepare and process.main:
                prepare_run_dir(seed_config, run_dir, space, restart=restart)
            run = SearchRun(seed_config, run_dir, device, process, space, dataset, False)
            if resume:
                run.restore()
            self.rng_states.append(runtime.rng_state())
            self.runs.append(run)
        self.bilevel = StackedBilevel([run.model for run in self.runs], config)
        first = self.runs[0]
        # where the seeds stand; a resume continues together only if they all stand there
        self.aligned = all((run.epoch, run.step) == (first.epoch, first.step) for run in self.runs)
        self.epoch, self.steps_done = first.epoch, first.step  # completed epochs, steps
        self.steps_per_epoch = first.steps_per_epoch
        self.totals = torch.stack([run.totals for run in self.runs])  # (seeds, 4), float64
        self.counts = list(first.counts)
        self.elapsed = first.elapsed
        # (epoch, step) that the seeds' checkpoints hold; whether a step ran (compiles the cells)
        self.saved_at = (self.epoch, self.steps_done) if resume else None
        self.stepped = False
        if resume and self.aligned:
            self.bilevel.load([run.model for run in self.runs], [run.bilevel for run in self.runs])

    def batches(self) -> Iterator[tuple[Batch, Batch]]:
        """One epoch of (weight batch, architecture batch), each seed's from its own loaders,
        stacked along the seeds."""
        def stacked(parts) -> Batch:
            images, labels = zip(*parts)
            return torch.stack(images), torch.stack(labels)

        for pairs in zip(*(zip(run.weight_loader, run.arch_loader) for run in self.runs)):
            yield stacked(pair[0] for pair in pairs), stacked(pair[1] for pair in pairs)

    def step(self, weight_batch: Batch, arch_batch: Batch) -> Tensor:
        """One iteration of every seed (`StackedBilevel.step`): (4, seeds) device tensors."""
        return self.bilevel.step(weight_batch, arch_batch)

    def run(self) -> list[SearchResult]:
        while self.epoch < self.config.epochs:
            self.run_epoch()
        return [run.result() for run in self.runs]

    def run_epoch(self) -> None:
        epoch = self.epoch
        lr = cosine_lr(self.config, epoch)
        self.bilevel.set_lr(lr)
        self.bilevel.template.train()
        for run in self.runs:
            run.weight_loader.set_epoch(epoch)
            run.arch_loader.set_epoch(epoch)
        if self.steps_done == 0:
            self.totals.zero_()
            self.counts = [0, 0]
            self.elapsed = 0.0
        started = self._steps(epoch, time.perf_counter())
        seconds = self.elapsed + time.perf_counter() - started
        self._hand_over()
        for run, state in zip(self.runs, self.rng_states):
            runtime.set_rng_state(state)
            run._epoch_record(epoch, lr, seconds, {})  # no per-epoch methods (refused above)
        self.epoch, self.steps_done, self.elapsed = epoch + 1, 0, 0.0
        self.saved_at = (self.epoch, 0)  # each seed's epoch record saved its checkpoint
        self.totals.zero_()
        self.counts = [0, 0]

    def _steps(self, epoch: int, started: float) -> float:
        """The epoch's remaining steps (`SearchRun._steps` for all seeds)."""
        config = self.config
        skip = self.steps_done  # batches consumed before a mid-epoch resume: drawn again, not run
        seeds = ",".join(str(seed) for seed in self.seeds)
        bar = runtime.progress(self.progress, self.steps_per_epoch, skip,
                               f"seeds {seeds} epoch {epoch + 1}/{config.epochs}")
        try:
            if self.signals.stop_requested():  # came before this epoch's first step
                self._stop(epoch, started)
            for index, (weight_batch, arch_batch) in enumerate(self.batches()):
                if index < skip:
                    continue
                stats = self._guarded_step(epoch, weight_batch, arch_batch)  # (4, seeds)
                train_count, val_count = weight_batch[1].shape[1], arch_batch[1].shape[1]
                scale = torch.tensor([train_count, 1, val_count, 1], dtype=stats.dtype,
                                     device=stats.device)
                self.totals += (stats * scale[:, None]).T.to(torch.float64)
                self.counts = [self.counts[0] + train_count, self.counts[1] + val_count]
                self.steps_done = index + 1
                bar.update(1)
                if (config.checkpoint_every and self.steps_done % config.checkpoint_every == 0
                        and self.steps_done < self.steps_per_epoch):
                    self.elapsed += time.perf_counter() - started
                    started = time.perf_counter()
                    self.save(epoch)
                if self.signals.stop_requested():  # pre-empted: save this step, then stop
                    self._stop(epoch, started)
        finally:
            bar.close()
        return started

    def _guarded_step(self, epoch: int, weight_batch: Batch, arch_batch: Batch) -> Tensor:
        """`step`; the first of this process, which compiles with `compile_cells`, after a
        checkpoint and interruptible (as `SearchRun._step`)."""
        compiling = self.config.compile_cells and not self.stepped
        if compiling and self.saved_at != (self.epoch, self.steps_done):
            self.save(epoch)
        try:
            with self.signals.interruptible(compiling):
                stats = self.step(weight_batch, arch_batch)
        except preemption.Interrupted:
            raise self.signals.stopped(self.runs[0].run_dir, epoch + 1, self.steps_done) from None
        self.stepped = True
        return stats

    def _stop(self, epoch: int, started: float) -> None:
        """Pre-empted: every seed's checkpoint at this step (unless they hold it), then
        `Preempted` (the CLI names the seeds' parent directory to resume)."""
        if self.saved_at != (self.epoch, self.steps_done):
            self.elapsed += time.perf_counter() - started
            self.save(epoch)
        raise self.signals.stopped(self.runs[0].run_dir, epoch + 1, self.steps_done)

    def _hand_over(self) -> None:
        """Give each seed's `SearchRun` its state, as its own run would hold it now."""
        self.bilevel.unload([run.model for run in self.runs], [run.bilevel for run in self.runs])
        for run, totals in zip(self.runs, self.totals):
            run.epoch, run.step, run.elapsed = self.epoch, self.steps_done, self.elapsed
            run.totals = totals.clone()
            run.counts = list(self.counts)

    def save(self, epoch: int) -> None:
        """A mid-epoch checkpoint in every seed's directory (after the same finiteness check)."""
        self.saved_at = (self.epoch, self.steps_done)
        self._hand_over()
        for run in self.runs:
            run._check_finite(epoch)
        for run, state in zip(self.runs, self.rng_states):
            runtime.set_rng_state(state)
            run.save()

