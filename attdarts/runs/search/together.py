"""Several seeds' searches as one batched model (`attdarts search --seeds 1,2,3,4 --together`).

The paper searches four seeds. One after another, each seed's step is launch-bound on a GPU
(thousands of small kernels); together, every kernel does all the seeds' work. Each seed's
supernet is built exactly as its own run builds it (`SearchRun`: `seed_everything(seed)`, its
loaders, then its supernet); the step is `bilevel.Bilevel`'s, the one every search runs, on the
seeds' values stacked along a leading seed axis (`seeds.Seeds.stack`: one supernet runs on them
through `torch.vmap`). Each seed draws its batches from its own loaders and its methods' random
numbers from its own generator, so its results are those of its own run (tests compare them in
float64), with every search method and the architecture warm-up.

This module holds what is specific to several run directories: each seed writes its own
directory with the files of a separate run (its `SearchRun` records the epochs, through
`outputs`), checkpoint.pt included, so a together run resumes together and a seed's directory
can also be continued alone. A seed that stops early (DARTS+) is finished: the others go on
(its slice of the stacked step is computed and not recorded). Refused with one line: data
parallelism. Memory grows linearly with the seeds.

Stages (a progressive search): at a stage's start every seed prunes its own candidates and builds
its own supernet, as its run does (`SearchRun._enter_stage`), and the seeds are stacked again; the
stacked supernet computes a candidate where any seed keeps it, and each seed's weights are masked
by its own candidates (a candidate a seed dropped weighs exactly 0 for it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from attdarts.language import ir
from attdarts.runs import data, preemption, runtime
from attdarts.runs.runtime import Process
from attdarts.runs.search import stages
from attdarts.runs.search.bilevel import Bilevel
from attdarts.runs.search.config import SearchConfig, SearchError, SearchResult
from attdarts.runs.search.loop import SearchRun
from attdarts.runs.search.outputs import prepare_run_dir
from attdarts.runs.search.seeds import Seeds

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]  # (seeds, batch, 3, H, W) images and (seeds, batch) labels


def unsupported(config: SearchConfig, space: ir.Space) -> str | None:
    """Why `config` on `space` cannot run together (one line), or None. Every search method and
    the architecture warm-up run together; data parallelism is refused where it is known."""
    return None


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
        first = self.runs[0]
        self.plan = first.plan
        # where the seeds stand; a resume continues together only if they all stand there
        self.aligned = all((run.epoch, run.step) == (first.epoch, first.step) for run in self.runs)
        self.epoch, self.steps_done = first.epoch, first.step  # completed epochs, steps
        self.steps_per_epoch = first.steps_per_epoch
        self.totals = torch.stack([run.totals for run in self.runs])  # (seeds, 4), float64
        self.counts = list(first.counts)
        self.elapsed = first.elapsed
        # (epoch, step) that the seeds' checkpoints hold; whether a step ran (compiles the cells)
        self.saved_at = (self.epoch, self.steps_done) if resume else None
        self._stack()

    def _stack(self) -> None:
        """The stacked step over the seeds' supernets (built as their runs build them), with
        their values and optimiser states; the candidates any seed keeps are computed."""
        models = [run.model for run in self.runs]
        self.bilevel = Bilevel(Seeds.stack(models, [run.generator for run in self.runs]),
                               self.config)
        if self.plan.staged:
            masks = {cell: {kind: torch.stack([run.masks[cell][kind] for run in self.runs])
                            for kind in by_kind} for cell, by_kind in self.runs[0].masks.items()}
            self.bilevel.model.use_candidates(masks)
        if self.aligned:
            self.bilevel.seeds.load(models, self._optimizers())
        self.stepped = False

    def _optimizers(self) -> tuple:
        """The stacked step's two optimisers, each with the seeds' own ones."""
        return ((self.bilevel.weight_optimizer, [run.bilevel.weight_optimizer for run in self.runs]),
                (self.bilevel.arch_optimizer, [run.bilevel.arch_optimizer for run in self.runs]))

    def batches(self) -> Iterator[tuple[Batch, Batch]]:
        """One epoch of (weight batch, architecture batch), each seed's from its own loaders,
        stacked along the seeds."""
        def stacked(parts) -> Batch:
            images, labels = zip(*parts)
            return torch.stack(images), torch.stack(labels)

        for pairs in zip(*(zip(run.weight_loader, run.arch_loader) for run in self.runs)):
            yield stacked(pair[0] for pair in pairs), stacked(pair[1] for pair in pairs)

    def step(self, weight_batch: Batch, arch_batch: Batch | None) -> Tensor:
        """One iteration of every seed (`Bilevel.step` on the stacked seeds; no architecture
        step without `arch_batch`): (4, seeds) device tensors, train loss, train correct, val
        loss, val correct."""
        stats = self.bilevel.step(weight_batch, arch_batch)
        return torch.stack([value.to(stats[0].dtype) for value in stats])

    @property
    def active(self) -> list[SearchRun]:
        """The seeds still searching (a seed that stopped early is finished)."""
        return [run for run in self.runs if run.stopped_early is None]

    def run(self) -> list[SearchResult]:
        while self.epoch < self.plan.epochs and self.active:
            stage = self.plan.at(self.epoch)
            if stage.number != self.runs[0].stage:
                for run in self.active:  # each seed prunes and builds as its own run does
                    run._enter_stage(stage)
                self._stack()
            self.run_epoch()
        return [run.result() for run in self.runs]

    def run_epoch(self) -> None:
        epoch = self.epoch
        lr = self.plan.lr(self.config, epoch)
        self.bilevel.set_lr(lr)
        self.bilevel.model.train()
        for run in self.runs:
            run.weight_loader.set_epoch(epoch)
            run.arch_loader.set_epoch(epoch)
        if self.steps_done == 0:
            self.totals.zero_()
            self.counts = [0, 0]
            self.elapsed = 0.0
        active = self.active
        # each seed's methods set and record the epoch's values; the template's run the step
        records = {id(run): run._start_methods(epoch) for run in active}
        stages.start_epoch(self.bilevel.model, self.plan, epoch)
        self.bilevel.methods.epoch_start(*self.plan.method_epoch(epoch))
        started = self._steps(epoch, time.perf_counter())
        seconds = self.elapsed + time.perf_counter() - started
        self._hand_over()
        for run, state in zip(self.runs, self.rng_states):
            if run in active:
                runtime.set_rng_state(state)
                run._epoch_record(epoch, lr, seconds, records[id(run)])
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
                               f"seeds {seeds} epoch {epoch + 1}/{self.plan.epochs}")
        architecture = self.runs[0].architecture_steps(epoch)  # else arch batches drawn, unused
        try:
            if self.signals.stop_requested():  # came before this epoch's first step
                self._stop(epoch, started)
            for index, (weight_batch, arch_batch) in enumerate(self.batches()):
                if index < skip:
                    continue
                stats = self._guarded_step(  # (4, seeds)
                    epoch, weight_batch, arch_batch if architecture else None)
                train_count = weight_batch[1].shape[1]
                val_count = arch_batch[1].shape[1] if architecture else 0
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

    def _guarded_step(self, epoch: int, weight_batch: Batch, arch_batch: Batch | None) -> Tensor:
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
        """Give each seed still searching its state, as its own run would hold it now."""
        active = self.active
        self.bilevel.seeds.unload([run.model for run in self.runs], self._optimizers())
        for run, totals in zip(self.runs, self.totals):
            if run in active:
                run.bilevel.set_lr(self.bilevel.lr)
                run.epoch, run.step, run.elapsed = self.epoch, self.steps_done, self.elapsed
                run.totals = totals.clone()
                run.counts = list(self.counts)

    def save(self, epoch: int) -> None:
        """A mid-epoch checkpoint in the directory of every seed still searching (after the same
        finiteness check)."""
        self.saved_at = (self.epoch, self.steps_done)
        self._hand_over()
        active = self.active
        for run in active:
            run._check_finite(epoch)
        for run, state in zip(self.runs, self.rng_states):
            if run in active:
                runtime.set_rng_state(state)
                run.save()

