"""One seed's search in one run directory: state, the step loop, epoch records, save / restore.

Each iteration takes one architecture batch and one weight batch (`bilevel.Bilevel.step`).
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

The checkpoint holds the per-epoch history with the genotypes as text (the format every run
directory has), so a run killed at any instant resumes to byte-identical outputs.

Search methods (the space's `methods`, README "Search methods") act through their hooks: at
every epoch start (also after a resume) the loop calls `epoch_start` on the supernet's methods
(beta-decay's lambda_t, DARTS-'s coefficients b, smoothing's eps), whose values go into that
epoch's metrics record (only for the methods the space lists); after each epoch's derivation
`early_stop` may end the search (DARTS+), and `epoch_end` adds its records (a budget's expected
and derived costs). Before the first step (and on each stage's fresh supernet),
`search_start` tells them what the search is for
(`budget.search_context`: the final network, the space file's folder); a method that cannot
serve it refuses the run before anything is written. Epochs before `arch_start_epoch` run weight
steps only.
The methods' generator (`bilevel.method_generator`) is part of the checkpoint.

Each epoch's record also says how decided the derived genotype is (`language.decisiveness`: the
margins of its edges, the normal cell's skip connections, the epoch it last changed), and the
log gets its one-line summary.

A space with stages (P-DARTS) searches them in turn (`stages.Plan`): entering a stage prunes the
candidates and builds its supernet and step (`_enter_stage`); the checkpoint holds the stage and
its candidate masks, and a resume builds that stage's supernet before loading it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch import Tensor

from attdarts.language import ir
from attdarts.language.transform import parse_text
from attdarts.networks.compiled import compile_cells
from attdarts.networks.methods import MethodError
from attdarts.networks.methods.progressive import Masks, flat, unflat
from attdarts.networks.supernet import compile_supernet
from attdarts.networks.widening import widen_optimizer_state, widen_supernet
from attdarts import records
from attdarts.runs import checkpoints, data, preemption, runtime, tracking
from attdarts.runs.runtime import Process
from attdarts.runs.search import outputs, stages
from attdarts.runs.search.bilevel import Bilevel, method_generator
from attdarts.runs.search.budget import search_context
from attdarts.runs.search.config import (
    CHECKPOINT, SPLIT_SEED, SearchConfig, SearchError, SearchResult, same_run,
)
from attdarts.runs.search.seeds import Seeds

log = logging.getLogger(__name__)


class SearchRun:
    """One seed's search in one run directory."""

    tracking: tracking.NoTracking = tracking.NO_TRACKING  # `--tensorboard` (set by entry)
    signals: preemption.Watch = preemption.NOT_WATCHED  # SIGTERM / SIGUSR1 / SIGINT (by entry)

    def __init__(self, config: SearchConfig, run_dir: Path, device: torch.device, process: Process,
                 space: ir.Space, dataset: data.ImageTensors | None, progress: bool) -> None:
        self.config = config
        self.run_dir = run_dir
        self.device = device
        self.process = process
        self.space = space
        self.progress = progress and process.main
        # the draw order is part of the run: seed, data, loaders, then the supernet's init
        runtime.seed_everything(config.seed)
        if dataset is None:
            dataset = data.load_dataset(config.dataset, config.data_dir, train=True)
        self.synthetic = dataset.synthetic
        self.weight_loader, self.arch_loader = data.search_loaders(
            dataset, portion=config.train_portion, batch_size=config.batch_size, device=device,
            augment=config.augment, seed=config.seed, rank=process.rank,
            world_size=process.world_size, max_batches=config.max_steps_per_epoch,
            shuffle_seed=SPLIT_SEED if config.dataset.startswith("folder:") else None)
        self.steps_per_epoch = min(len(self.weight_loader), len(self.arch_loader))
        if process.world_size > 1 and config.order == 2:
            raise SearchError("second-order search runs in one process; use --order 1 under torchrun")
        self.sizes = (dataset.num_classes, int(dataset.images.shape[-1]))
        self.plan = stages.Plan.of(space, config)
        self.generator = method_generator(config.seed, device)  # runs on through the stages
        self.masks: Masks | None = None  # the stage's candidates (a space with stages)
        self.built: ir.Space | None = None  # the space the supernet was built from (its stage's)
        self.listeners: list = []  # told when a captured step falls back to eager (every stage's)
        self._build(self.plan.stages[0], None)
        # genotypes as ir.Genotype; weights and metrics as the JSON lines they are written as
        self.history: dict[str, list] = {"genotypes": [], "weights": [], "metrics": []}
        self._texts: list[str] = []  # the genotypes' texts, as written (outputs.write_outputs)
        self.epoch = 0  # completed epochs
        self.step = 0  # completed steps of the current epoch
        # train loss sum, train correct, val loss sum, val correct: on the device, read per epoch
        self.totals = torch.zeros(4, dtype=torch.float64, device=device)
        self.counts = [0, 0]  # train and val images of this process in the current epoch
        self.elapsed = 0.0  # seconds spent in the current epoch before a resume
        self.saved_at: tuple[int, int] | None = None  # (epoch, step) that checkpoint.pt holds

    def _build(self, stage: stages.Stage, masks: Masks | None, keep: bool = False) -> None:
        """The supernet and step of `stage` with the candidates `masks` (None: all): a new
        supernet (the first stage's from the global generator, as every search's; a later
        stage's from its own, `stages.stage_seed`), or with `keep` the current one, widened
        (`widening`) when the stage gives the space's partial channels a smaller k."""
        config = self.config
        space = self.space.at_stage(stage.number)  # its partial channels
        grown = None  # a kept supernet widened to the stage's partial channels: what grew
        if keep and space != self.built:
            keep, grown = False, {}
        if not keep:
            with stages.drawing(config.seed, stage.number):
                model = compile_supernet(
                    space, channels=config.channels, layers=stage.layers,
                    num_classes=self.sizes[0], input_size=self.sizes[1], init=config.arch_init,
                    grouped=config.grouped)
                if grown is not None:  # DrNAS's `wider`: the new channels copy random old ones
                    grown = widen_supernet(self.model, model)
            try:  # what the methods hold for the search (a budget's cost table) moves with it
                model.methods.search_start(search_context(config))
            except MethodError as error:
                raise SearchError(f"space '{self.space.name}': {error}") from None
            old = getattr(self, "bilevel", None)  # the step of the supernet widened
            self.model, self.built = model.to(self.device), space
        if self.plan.staged:
            self.masks = masks or stages.first_masks(self.model)
            self.model.use_candidates(self.masks)
        if config.compile_cells and not keep:
            self.model = compile_cells(self.model)
        for param in self.model.architecture():  # data parallelism syncs the weights only
            param.requires_grad_(False)
        network = runtime.wrap_data_parallel(self.model, self.process, self.device,
                                             every_weight=not self.plan.staged)
        for param in self.model.architecture():
            param.requires_grad_(True)
        bilevel = Bilevel(Seeds.own(self.model, self.generator, network), config,
                          world_size=self.process.world_size)
        if keep:  # the optimisers go on: momentum, Adam's moments and step
            bilevel.load_state_dict(self.bilevel.state_dict())
        elif grown is not None:  # and grow with the weights they hold
            bilevel.load_state_dict(_widened_state(old, bilevel, grown))
        bilevel.captured.listeners.extend(self.listeners)
        self.bilevel = bilevel
        self.stage = stage.number
        self.stage_record = self.model.methods.stage_start(stage.number)  # its first epoch's
        self.stepped = False  # whether this process ran a step (the first compiles the cells)

    def listen(self, listener) -> None:
        """Call `listener(state)` when the step's CUDA graph falls back to eager, in every stage."""
        self.listeners.append(listener)
        self.bilevel.captured.listeners.append(listener)

    def _enter_stage(self, stage: stages.Stage) -> None:
        """Prune the candidates of the stage before by its weights and build `stage`'s
        supernet and step (`stages`: fresh or kept)."""
        masks = stages.next_masks(self.model, stage)
        self._build(stage, masks, keep=stage.start == "keep")
        log.info("seed %d: stage %d/%d: %d cells, %s", self.config.seed, stage.number + 1,
                 len(self.plan.stages), stage.layers, stages.describe(stage, masks))

    # -- checkpoint -----------------------------------------------------------------------------

    def _saved_history(self) -> dict[str, list[str]]:
        texts = self._texts
        texts.extend(outputs.genotype_text(g) for g in self.history["genotypes"][len(texts):])
        return {**self.history, "genotypes": list(texts)}

    def save(self) -> None:
        """Write checkpoint.pt (main process). Every rank calls it at the same step: under
        torchrun the running sums saved are those over all ranks (rank 0 takes them back)."""
        self.saved_at = (self.epoch, self.step)
        totals, counts = self.totals.cpu(), list(self.counts)
        if self.process.world_size > 1:
            reduced = self._reduced_totals()
            totals, counts = reduced[:4], [int(count) for count in reduced[4:].tolist()]
        if not self.process.main:
            return
        checkpoints.save(self.run_dir / CHECKPOINT, {
            "config": self.config.model_dump(mode="json"),
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizers": self.bilevel.state_dict(),
            "totals": totals,
            "counts": counts,
            "elapsed": self.elapsed,
            "history": self._saved_history(),
            "rng": runtime.rng_state(),
            "method_rng": self.bilevel.generator.get_state(),
            **({"stage": {"index": self.stage, "masks": flat(self.masks)}}
               if self.plan.staged else {}),
        })

    def restore(self) -> None:
        path = self.run_dir / CHECKPOINT
        state = checkpoints.load_run_state(path, None, map_location=self.device,
                                           what="search checkpoint")
        # compared as settings, not as dicts: a checkpoint written before a setting existed
        # holds that setting's default, which is what that run did
        try:
            recorded = SearchConfig.model_validate(state.get("config"))
        except (ValueError, TypeError, data.DataError):
            recorded = None
        if recorded is None or not same_run(recorded, self.config):  # resumable ones may differ
            raise checkpoints.CheckpointError(
                f"{path}: the search checkpoint was written for a different config")
        try:
            if "stage" in state:  # that stage's supernet, with its candidates
                saved = state["stage"]
                self._build(self.plan.stages[int(saved["index"])], unflat(saved["masks"]))
            self.model.load_state_dict(state["model"])
            self.bilevel.load_state_dict(state["optimizers"])
            self.epoch = int(state["epoch"])
            self.step = int(state["step"])
            self.totals = state["totals"].to(self.device, torch.float64)
            self.counts = [int(c) for c in state["counts"]]
            if self.process.rank != 0:  # rank 0 holds the sums over every rank
                self.totals.zero_()
                self.counts = [0, 0]
            self.elapsed = float(state["elapsed"])
            history = {key: list(value) for key, value in state["history"].items()}
            self._texts = list(history["genotypes"])
            # the checkpoint keeps texts (its format is older than this loop); read them back
            history["genotypes"] = [parse_text(text).genotype() for text in self._texts]
            self.history = history
            runtime.set_rng_state(state["rng"])
            if "method_rng" in state:  # written since search methods draw from their own
                self.bilevel.generator.set_state(state["method_rng"].cpu())
            self.saved_at = (self.epoch, self.step)
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise checkpoints.CheckpointError(
                f"{self.run_dir / CHECKPOINT}: does not match this search ({error})") from None

    def write_outputs(self) -> None:
        """Rewrite every derived file from the history (atomic, idempotent)."""
        if self.process.main:
            outputs.write_outputs(self.run_dir, self.history, self._texts)

    # -- loop -----------------------------------------------------------------------------------

    def run(self) -> SearchResult:
        stopped = self.stopped_early
        if stopped is not None:
            log.info("%s: the search finished early at epoch %d (%s); nothing to resume",
                     self.run_dir, stopped["epoch"], stopped["reason"])
        while self.epoch < self.plan.epochs and self.stopped_early is None:
            stage = self.plan.at(self.epoch)
            if stage.number != self.stage:
                self._enter_stage(stage)
            self.run_epoch()
        return self.result()

    @property
    def stopped_early(self) -> dict | None:
        """{"epoch", "reason"} when DARTS+'s early stop ended the search, else None."""
        if not self.history["metrics"]:
            return None
        return json.loads(self.history["metrics"][-1]).get("stopped_early")

    def result(self) -> SearchResult:
        metrics = records.in_percent(json.loads(self.history["metrics"][-1]))
        return SearchResult(self.run_dir, self.config.seed, self.history["genotypes"][-1],
                            self.epoch, metrics)

    def run_epoch(self) -> None:
        epoch = self.epoch
        lr = self.plan.lr(self.config, epoch)
        self.bilevel.set_lr(lr)
        self.model.train()
        self.weight_loader.set_epoch(epoch)
        self.arch_loader.set_epoch(epoch)
        if self.step == 0:
            self.totals.zero_()
            self.counts = [0, 0]
            self.elapsed = 0.0
        methods = self._start_methods(epoch)
        started = self._steps(epoch, time.perf_counter())
        self._epoch_record(epoch, lr, self.elapsed + time.perf_counter() - started, methods)

    def architecture_steps(self, epoch: int) -> bool:
        """Whether 0-based `epoch` trains the architecture (its stage's warm-up, PC-DARTS's
        `arch_start_epoch`)."""
        return self.plan.at(epoch).trains_architecture(epoch)

    def _start_methods(self, epoch: int) -> dict:
        """Set the per-epoch values of the space's search methods (and of the stage's skip
        dropout); returns those to record."""
        record: dict = self.plan.record(epoch)
        if self.plan.at(epoch).epoch(epoch) == 0:
            record.update(self.stage_record)
        stages.start_epoch(self.model, self.plan, epoch)
        record.update(self.model.methods.epoch_start(*self.plan.method_epoch(epoch)))
        if self.plan.at(epoch).warmup:
            record["architecture_steps"] = self.architecture_steps(epoch)
        return record

    def _steps(self, epoch: int, started: float) -> float:
        """Run the epoch's remaining steps; returns when the current timing span started."""
        config = self.config
        skip = self.step  # batches already consumed before a mid-epoch resume: replayed, not run
        bar = runtime.progress(self.progress, self.steps_per_epoch, skip,
                               f"seed {config.seed} epoch {epoch + 1}/{self.plan.epochs}")
        batches = zip(self.weight_loader, self.arch_loader)
        architecture = self.architecture_steps(epoch)  # else the arch batches are drawn, unused
        try:
            if self.signals.stop_requested():  # came before this epoch's first step
                self._stop(epoch, started)
            for index, (weight_batch, arch_batch) in enumerate(batches):
                if index < skip:
                    continue  # drawing the batch advanced the loaders' generators as before
                train_loss, train_correct, val_loss, val_correct = self._step(
                    epoch, weight_batch, arch_batch if architecture else None)
                train_count = weight_batch[1].shape[0]
                val_count = arch_batch[1].shape[0] if architecture else 0
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
                if self.signals.stop_requested():  # pre-empted: save this step, then stop
                    self._stop(epoch, started)
        finally:
            bar.close()
        return started

    def _step(self, epoch: int, weight_batch, arch_batch) -> tuple[Tensor, ...]:
        """One `Bilevel.step`. This process's first step with `compile_cells` compiles the cells
        (minutes): checkpoint.pt is saved before it, and a signal during it stops the run at
        once, at that checkpoint (`preemption.Watch.interruptible`)."""
        compiling = self.config.compile_cells and not self.stepped
        if compiling and self.saved_at != (self.epoch, self.step):
            self.save()
        try:
            with self.signals.interruptible(compiling):
                result = self.bilevel.step(weight_batch, arch_batch)
        except preemption.Interrupted:
            raise self.signals.stopped(self.run_dir, epoch + 1, self.step) from None
        self.stepped = True
        return result

    def _stop(self, epoch: int, started: float) -> None:
        """Pre-empted: save where the epoch stands (unless checkpoint.pt holds it already), then
        end the run with `Preempted`."""
        if self.saved_at != (self.epoch, self.step):
            self.elapsed += time.perf_counter() - started
            self._check_finite(epoch)
            self.save()
        raise self.signals.stopped(self.run_dir, epoch + 1, self.step)

    def _epoch_record(self, epoch: int, lr: float, seconds: float, methods: dict) -> None:
        """Close the epoch: metrics, genotype and weights into the history, then save and write."""
        config = self.config
        totals = self._reduced_totals()
        self._check_finite(epoch, totals)
        train_loss, train_correct, val_loss, val_correct, train_count, val_count = totals.tolist()
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss / max(train_count, 1),
            "train_accuracy": records.percent(train_correct, max(train_count, 1)),
            # None in the architecture's warm-up (no architecture batch was used)
            "val_loss": val_loss / val_count if val_count else None,
            "val_accuracy": records.percent(val_correct, val_count),
            records.UNIT_KEY: records.PERCENT,  # accuracies in percent (older runs: fractions)
            "lr": lr,
            "steps": self.step,
            "seconds": round(seconds, 3),
            "images_per_s": round(train_count / seconds, 2) if seconds > 0 else None,
        }
        metrics.update(methods)
        if self.synthetic:
            metrics["synthetic"] = True
        self.epoch = epoch + 1
        self.step = 0
        self.elapsed = 0.0
        genotype = outputs.epoch_genotype(self.model, self.space, config, self.epoch,
                                          self.synthetic, self.plan)
        reason = self._early_stop_reason(epoch, genotype)
        if reason is not None:
            metrics["stopped_early"] = {"epoch": self.epoch, "reason": reason}
            genotype = outputs.with_meta(genotype, outputs.STOPPED_EARLY,
                                         f"epoch {self.epoch}/{self.plan.epochs}: {reason}")
        with torch.no_grad():  # the methods' records of the epoch's end (a budget's costs)
            metrics.update(self.model.methods.epoch_end(self.model.mixture_weights(), genotype))
        self.history["genotypes"].append(genotype)
        self.history["weights"].append(outputs.weights_record(self.model, self.epoch, self.synthetic))
        decided, decided_line = outputs.decisiveness_metrics(
            self.space, self.history["genotypes"], self.history["weights"][-1])
        metrics.update(decided)
        self.history["metrics"].append(outputs.dump_json(metrics))
        self.tracking.epoch(self.epoch, metrics, self.model.architecture_tensors())
        self.totals.zero_()
        self.counts = [0, 0]
        self.save()
        self.write_outputs()
        val = ("val loss %.4f acc %.2f%%" % (metrics["val_loss"], metrics["val_accuracy"])
               if val_count else "no architecture steps (warm-up)")
        log.info(
            "seed %d epoch %d/%d: train loss %.4f acc %.2f%% | %s | lr %.5f | %.1f s, %.1f images/s",
            config.seed, self.epoch, self.plan.epochs, metrics["train_loss"],
            metrics["train_accuracy"], val, lr, seconds,
            train_count / seconds if seconds > 0 else 0.0)
        if decided_line is not None:
            log.info("seed %d epoch %d/%d: %s", config.seed, self.epoch, self.plan.epochs,
                     decided_line)
        if reason is not None:
            log.info("seed %d: stopped early after epoch %d/%d: %s", config.seed,
                     self.epoch, self.plan.epochs, reason)

    def _early_stop_reason(self, epoch: int, genotype: ir.Genotype) -> str | None:
        """Why the search stops after 0-based `epoch` (None: it goes on): the methods'
        `early_stop` (DARTS+), told whether the epoch trained the architecture."""
        return self.model.methods.early_stop(epoch, self.plan.epochs, genotype,
                                             self.architecture_steps(epoch))

    def _reduced_totals(self) -> Tensor:
        counts = torch.tensor(self.counts, dtype=torch.float64).to(self.device)
        return runtime.all_reduce(torch.cat([self.totals, counts]), self.process).cpu()

    def _check_finite(self, epoch: int, totals: Tensor | None = None) -> None:
        totals = self.totals if totals is None else totals
        if not runtime.check_finite(totals, *self.model.architecture()):
            kept = (f"epochs 1..{self.epoch} are kept in {self.run_dir}" if self.epoch
                    else f"nothing was completed in {self.run_dir}")
            raise SearchError(
                f"the loss became NaN or infinite in epoch {epoch + 1} of seed {self.config.seed}; "
                f"stopped ({kept}). Try a lower --lr or check the data")


def _widened_state(old: Bilevel, new: Bilevel, grown: dict) -> dict:
    """`old`'s optimiser states for `new`, whose supernet is `old`'s widened
    (`widening.widen_supernet` grew the weights `grown` names): momentum widened alike."""
    order = list(old.weight_names)
    if order != list(new.weight_names):
        raise SearchError("cannot widen the supernet: its weights changed")
    shapes = {name: param.shape for name, param in zip(order, new.weight_params)}
    state = old.state_dict()
    return {**state, "weight_optimizer": widen_optimizer_state(
        state["weight_optimizer"], order, grown, shapes)}
