"""A search's stages over its epochs, and what happens between two of them (P-DARTS, Chen et al.,
ICCV 2019; the space's `stages`, `attdarts.language.stages`).

`Plan.of(space, config)` resolves the space's stages against the run's settings (a stage that
leaves out `layers`, `epochs` or `warmup` takes `--layers`, `--epochs`, `--arch-start-epoch`); a
space without stages is one stage of the run's settings, which is every search before stages
existed, computed as it was. Epochs are counted over the whole search (`genotype-epoch026.geno`
is the first epoch of P-DARTS's second stage); each epoch's metrics record names its stage.

Within a stage:

- the first `warmup` epochs train the weights only;
- the learning rate follows a cosine from `lr` to `lr_min` over the life of the stage's supernet:
  a fresh stage starts a new one (P-DARTS restarts the schedule in every stage), a `keep` stage
  goes on with the supernet it keeps and so continues its schedule (DrNAS's one schedule over
  both stages); the methods' per-epoch values (`epoch_start`) follow the same life;
- skip dropout at rate r, P-DARTS's schedule (its train_search.py): in epoch e of E with W
  warm-up epochs, r (E - e - 1) / E while e < W (0.96 r to 0.6 r for P-DARTS's 25 and 10), then
  r exp(-0.2 (e - W)).

Between stages (`next_masks`, `stage_seed`): each row of the architecture keeps the stage's
`operations` (alpha) and `attentions` (beta, gamma) count of the candidates it still has,
dropping the weakest by the last stage's weights (`progressive.prune`). A fresh stage then
builds its supernet anew, deeper, its weights and architecture initialised as a search's first
supernet is (`--arch-init`), from torch's generator seeded with `stage_seed(seed, stage)` and put
back afterwards, so the draws depend on the seed and the stage only (a resume replays them) and
the global stream goes on as if the stage had not been built; the optimisers start anew. A keep
stage keeps the supernet, its architecture and the optimisers' states (momentum, Adam's moments);
one that gives partial channels a smaller k (DrNAS) builds the stage's supernet from its seed and
widens the kept one into it, momentum grown alike (`attdarts.networks.widening`, `SearchRun`).
The method generator (skip dropout's keys, samplers' draws) runs on through the stages.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from attdarts.language import ir, kinds
from attdarts.networks.methods.progressive import COUNTED, Masks, all_kept, prune
from attdarts.networks.supernet import Supernet
from attdarts.runs.search.config import SearchConfig, SearchError

__all__ = ["Plan", "Stage", "describe", "drawing", "first_masks", "next_masks", "start_epoch",
           "stage_seed", "skip_dropout_rate"]

DROPOUT_DECAY = 0.2  # P-DARTS's `scale_factor`: the rate falls by exp(-0.2) per epoch after warm-up


@dataclass(frozen=True)
class Stage:
    """One stage resolved against the run's settings. `number` is 0-based; `first` its first
    epoch in the search, `life` the first epoch of its supernet (its own, or that of the stage it
    keeps) and `life_epochs` that supernet's epochs. `counts` are the candidates per row it keeps
    by kind (absent: all it had)."""

    number: int
    layers: int
    epochs: int
    warmup: int
    counts: dict[str, int]
    skip_dropout: float
    start: str
    first: int
    life: int
    life_epochs: int

    def epoch(self, epoch: int) -> int:
        """The 0-based epoch `epoch` of the search as an epoch of this stage."""
        return epoch - self.first

    def trains_architecture(self, epoch: int) -> bool:
        return self.epoch(epoch) >= self.warmup


@dataclass(frozen=True)
class Plan:
    """The stages of a search (one for a space without stages)."""

    stages: tuple[Stage, ...]
    staged: bool  # the space declares stages

    @classmethod
    def of(cls, space: ir.Space, config: SearchConfig) -> Plan:
        declared = space.stages or (ir.Stage(),)
        resolved: list[Stage] = []
        first = 0
        for number, stage in enumerate(declared):
            epochs = config.epochs if stage.epochs is None else stage.epochs
            warmup = config.arch_start_epoch if stage.warmup is None else stage.warmup
            layers = config.layers if stage.layers is None else stage.layers
            if stage.start == "keep":  # the depth of the supernet it keeps
                if stage.layers not in (None, resolved[-1].layers):
                    raise SearchError(f"stage {number + 1} of space '{space.name}' keeps the "
                                      f"supernet of {resolved[-1].layers} cells but says "
                                      f"layers={stage.layers}")
                layers = resolved[-1].layers
            if warmup >= epochs:
                raise SearchError(f"stage {number + 1} of space '{space.name}' has {epochs} epochs "
                                  f"and {warmup} of warm-up: the architecture would never be "
                                  "trained (give the stage its own epochs or warmup)")
            counts = {kind: getattr(stage, COUNTED[kind]) for kind in COUNTED
                      if getattr(stage, COUNTED[kind]) is not None}
            life = resolved[-1].life if stage.start == "keep" and resolved else first
            resolved.append(Stage(number, layers, epochs, warmup, counts, stage.skip_dropout,
                                  stage.start, first, life, 0))
            first += epochs
        # a supernet lives from its fresh stage to the end of the keep stages after it
        ends = {stage.life: stage.first + stage.epochs for stage in resolved}
        stages = tuple(Stage(**{**vars(stage), "life_epochs": ends[stage.life] - stage.life})
                       for stage in resolved)
        return cls(stages, bool(space.stages))

    @property
    def epochs(self) -> int:
        """Epochs of the whole search."""
        return self.stages[-1].first + self.stages[-1].epochs

    def at(self, epoch: int) -> Stage:
        """The stage that 0-based `epoch` of the search belongs to."""
        return next(stage for stage in reversed(self.stages) if epoch >= stage.first)

    def lr(self, config: SearchConfig, epoch: int) -> float:
        """SGD learning rate of 0-based `epoch`: cosine from lr to lr_min over its supernet's
        life (`cosine_lr` for a search without stages)."""
        stage = self.at(epoch)
        return config.lr_min + 0.5 * (config.lr - config.lr_min) * (
            1.0 + math.cos(math.pi * (epoch - stage.life) / stage.life_epochs))

    def method_epoch(self, epoch: int) -> tuple[int, int]:
        """(epoch, epochs) that the methods' `epoch_start` hears: over the supernet's life."""
        stage = self.at(epoch)
        return epoch - stage.life, stage.life_epochs

    def record(self, epoch: int) -> dict:
        """What the epoch's metrics record says of its stage (nothing without stages)."""
        stage = self.at(epoch)
        if not self.staged:
            return {}
        record = {"stage": stage.number + 1, "stage_epoch": stage.epoch(epoch) + 1}
        if stage.skip_dropout:
            record["skip_dropout"] = skip_dropout_rate(stage, epoch)
        return record


def skip_dropout_rate(stage: Stage, epoch: int) -> float:
    """P-DARTS's dropout rate of the stride-1 skip connections in 0-based `epoch` of the search
    (module docstring)."""
    local, rate = stage.epoch(epoch), stage.skip_dropout
    if local < stage.warmup:
        return rate * (stage.epochs - local - 1) / stage.epochs
    return rate * math.exp(-(local - stage.warmup) * DROPOUT_DECAY)


def stage_seed(seed: int, stage: int) -> int:
    """The seed of torch's generator while stage `stage` (0-based, at least 1) builds its
    supernet: a function of the run's seed and the stage only."""
    return (int(seed) * 0x9E3779B1 + 0x57A6E5EED * stage) % 2**63


@contextlib.contextmanager
def drawing(seed: int, stage: int) -> Iterator[None]:
    """Where stage `stage` (0-based) draws its supernet's initial values: the first from torch's
    global generator (as a search without stages), a later one from the generator seeded with
    `stage_seed`, the global state put back afterwards."""
    if stage == 0:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stage_seed(seed, stage))
        yield


def start_epoch(model: Supernet, plan: Plan, epoch: int) -> None:
    """Set the stage's values of 0-based `epoch` in `model` (its skip dropout rate)."""
    progressive = model.methods.progressive
    if progressive is not None:
        stage = plan.at(epoch)
        progressive.rate = skip_dropout_rate(stage, epoch) if stage.skip_dropout else 0.0


def describe(stage: Stage, masks: Masks) -> str:
    """The candidates a stage searches, for the log: "5 of 8 operations per edge"."""
    counts = [f"{int(mask[0].sum())} of {mask.shape[-1]} {kinds_word}"
              for kind, kinds_word in ((kinds.OPERATION, "operations"),
                                       (kinds.ATTENTION, "attentions"))
              for mask in [masks["normal"].get(kind)] if mask is not None]
    text = ", ".join(counts) + " per edge"
    if stage.skip_dropout:
        text += f", skip dropout {stage.skip_dropout}"
    return text + (", the supernet kept" if stage.start == "keep" else "")


def first_masks(model: Supernet) -> Masks:
    """Every candidate of `model`'s architecture kinds (edge weights have no candidates)."""
    return all_kept({cell: {kind: tuple(tensor.shape) for kind, tensor in tensors.items()
                            if kind in kinds.MIXTURES}
                     for cell, tensors in model.architecture_tensors().items()})


def next_masks(model: Supernet, stage: Stage) -> Masks:
    """The candidates `stage` keeps: each row of `model`'s architecture (the stage before, with
    its masks) drops its weakest candidates down to the stage's counts, ranked by the weights
    derivation reads (float64; the masked softmax)."""
    progressive = model.methods.progressive
    masks: Masks = {}
    for cell, tensors in model.architecture_tensors().items():
        masks[cell] = {}
        for kind, raw in tensors.items():
            if kind not in kinds.MIXTURES:
                continue
            kept = progressive.candidate_mask(kind, cell)
            kept = torch.ones_like(raw, dtype=torch.bool) if kept is None else kept.cpu()
            count = stage.counts.get(kind)
            if count is not None:
                weights = model.methods.derivation_weights(kind, raw, cell)
                kept = prune(weights, kept, count)
            masks[cell][kind] = kept.cpu()
    return masks
