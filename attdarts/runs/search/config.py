"""Search settings, results and the names of a run directory's files.

`SearchConfig` takes its defaults from `attdarts.recipes.SEARCH["paper"]`; `recipe_config` starts
from another row of that table. The run directory (see `attdarts.runs.search.entry.run_search`)
holds config.json, space.geno, genotype-epochNNN.geno, genotype.geno, weights.jsonl,
metrics.jsonl and checkpoint.pt.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from attdarts import recipes
from attdarts.language import catalog, ir
from attdarts.language.transform import read_space
from attdarts.runs import data

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


class RequestError(SearchError):
    """A request that cannot start or resume a search as asked (the caller's mistake, not the
    run's, as train's `ResumeError`): the command line reports it as a usage error."""


class SettingChanged(RequestError):
    """`--resume` with an option that differs from the run's and cannot change (the message
    names it; train's `SettingChanged` words it the same way)."""

    def __init__(self, option: str, used: object) -> None:
        self.option = option
        super().__init__(f"{option} cannot change when resuming (the run used {used!r}); start "
                         "a new run to change it")


# The reproduction presets of `attdarts search --recipe` (their one home is attdarts.recipes):
# "paper" holds SearchConfig's defaults, "authors" differs where the authors' code does (README,
# "Paper, authors' code and attdarts"). Explicit settings win over a recipe (`recipe_config`).
RECIPES = recipes.SEARCH
_PAPER = RECIPES["paper"]
# the settings the "authors" recipe decides, i.e. where its row differs from the paper's (the CLI
# leaves them unset by default, as it does those of the other recipes)
RECIPE_SETTINGS = tuple(key for key, value in RECIPES["authors"].items()
                        if key != "recipe" and value != _PAPER[key])


class SearchConfig(BaseModel):
    """Every setting of a search, with the paper's defaults (Nakai et al., IJCNN 2020, and
    DARTS where it says nothing; README, "Searching").

    The defaults are the "paper" recipe (`recipes.SEARCH`): lr_min 0, zero init, exact DARTS second
    order, weights-only clipping, BAM as the space writes it (its default combine is the paper's
    sum). `bam_combine` rewrites every `bam` candidate of the space. The device and the number of
    threads are not settings: the caller chooses them, and they may change when a run resumes.
    """

    # strict: a number where a flag belongs, a bool or a fraction where a count belongs, are
    # refused as the command line refuses them (also from --config files and the Python API)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, strict=True)

    space_file: str
    space: str | None = None
    dataset: str = _PAPER["dataset"]
    data_dir: str | None = _PAPER["data_dir"]
    epochs: int = Field(_PAPER["epochs"], ge=1)
    batch_size: int = _PAPER["batch_size"]
    recipe: Literal["paper", "authors", "pc-darts", "pdarts", "drnas", "fair-darts",
                    "gdas"] = _PAPER["recipe"]
    order: Literal[1, 2] = _PAPER["order"]
    second_order: Literal["darts", "authors"] = _PAPER["second_order"]
    clip: Literal["weights", "authors"] = _PAPER["clip"]
    bam_combine: Literal["sum", "product"] | None = _PAPER["bam_combine"]
    seed: int = Field(_PAPER["seed"], ge=0, le=recipes.MAX_SEED)
    channels: int = Field(_PAPER["channels"], ge=1, le=recipes.MAX_CHANNELS)
    layers: int = Field(_PAPER["layers"], ge=recipes.MIN_LAYERS, le=recipes.MAX_LAYERS)
    train_portion: float = Field(_PAPER["train_portion"], gt=0.0, lt=1.0)
    lr: float = Field(_PAPER["lr"], gt=0.0)
    lr_min: float = Field(_PAPER["lr_min"], ge=0.0)
    momentum: float = Field(_PAPER["momentum"], ge=0.0, lt=1.0)
    weight_decay: float = Field(_PAPER["weight_decay"], ge=0.0)
    grad_clip: float = Field(_PAPER["grad_clip"], gt=0.0)
    arch_lr: float = Field(_PAPER["arch_lr"], gt=0.0)
    arch_betas: tuple[float, float] = Field(_PAPER["arch_betas"], strict=False)  # a JSON list too
    arch_weight_decay: float = Field(_PAPER["arch_weight_decay"], ge=0.0)
    arch_init: Literal["zeros", "randn"] = _PAPER["arch_init"]
    # the architecture gradients' largest norm before each Adam step (P-DARTS: 5); None: unclipped
    arch_grad_clip: float | None = Field(_PAPER["arch_grad_clip"], gt=0.0)
    augment: bool = _PAPER["augment"]
    max_steps_per_epoch: int | None = Field(_PAPER["max_steps_per_epoch"], ge=1)
    checkpoint_every: int = Field(_PAPER["checkpoint_every"], ge=0)
    deterministic: bool = _PAPER["deterministic"]
    # run each cell's edges in groups (attdarts.networks.grouping): same sums, far fewer kernels; False is
    # the plain edge-by-edge path (`attdarts search --plain`)
    grouped: bool = _PAPER["grouped"]
    # compile each distinct cell (attdarts.networks.compiled); opt-in until a GPU run shows a
    # gain. It changes which drop-path masks are drawn, so a run cannot switch it on resume
    compile_cells: bool = _PAPER["compile_cells"]
    # replay each search iteration as one CUDA graph on CUDA (attdarts.runs.graphs); the CPU, a
    # run under torchrun and False (`attdarts search --no-graphs`) run the same step eagerly
    graphs: bool = _PAPER["graphs"]
    # epochs of weight steps only before the architecture steps start (PC-DARTS: 15)
    arch_start_epoch: int = Field(_PAPER["arch_start_epoch"], ge=0)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        spec = data.parse_spec(value)  # raises DataError with the expected forms
        if spec.kind == "imagenet":
            raise ValueError("the search runs on CIFAR-sized data; imagenet is not supported")
        return str(spec)

    @field_validator("batch_size")
    @classmethod
    def _two_images(cls, value: int) -> int:
        return recipes.checked_batch_size(value)

    @field_validator("arch_betas")
    @classmethod
    def _adam_betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in value):
            raise ValueError(f"both betas must lie in [0, 1), got {value[0]}, {value[1]}")
        return value

    @model_validator(mode="after")
    def _schedule(self) -> "SearchConfig":
        if self.lr_min > self.lr:
            raise ValueError(f"lr_min ({self.lr_min}{self._by_recipe('lr_min')}) must not exceed "
                             f"lr ({self.lr}): the cosine schedule anneals from lr down to lr_min")
        if self.arch_start_epoch >= self.epochs:
            raise ValueError(f"arch_start_epoch ({self.arch_start_epoch}"
                             f"{self._by_recipe('arch_start_epoch')}) must be below epochs "
                             f"({self.epochs}): the architecture would never be trained")
        return self

    def _by_recipe(self, key: str) -> str:
        """', set by --recipe NAME' where the recipe chose a value the user may not have typed."""
        value = RECIPES[self.recipe].get(key)
        if value is not None and value == getattr(self, key) and value != _PAPER[key]:
            return f", set by --recipe {self.recipe}"
        return ""


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds of a multi-seed search: one or more, distinct, each a valid `seed`."""
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise RequestError(f"give one or more distinct seeds, e.g. --seeds 1,2,3,4 (got "
                          f"{','.join(map(str, seeds)) or 'none'})")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= recipes.MAX_SEED:
            raise RequestError(f"seed {seed!r}: a seed is a whole number from 0 to 2^64 - 1")
    return seeds


# Settings that may change when a run resumes: they do not change what is computed (where the
# data lives, how the same sums are grouped or launched, how often a checkpoint is written).
# Every other setting given with --resume must equal the run's (README, "Resuming").
RESUMABLE_SETTINGS = frozenset({"data_dir", "grouped", "graphs", "checkpoint_every"})


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def resumed_config(config: SearchConfig, given: dict[str, object]) -> SearchConfig:
    """`config` (a run's) with the settings `given` for its resume: those of
    `RESUMABLE_SETTINGS` take the new value; any other that differs raises `SearchError`
    naming its option."""
    if not given:
        return config
    merged = SearchConfig(**{**config.model_dump(), **given})
    for field in given:
        if field not in RESUMABLE_SETTINGS and getattr(merged, field) != getattr(config, field):
            raise SettingChanged(option_name(field), getattr(config, field))
    return merged


def same_run(a: SearchConfig, b: SearchConfig) -> bool:
    """Whether two configs describe the same search (they may differ in `RESUMABLE_SETTINGS`)."""
    keep = {field: getattr(a, field) for field in RESUMABLE_SETTINGS}
    return b.model_copy(update=keep) == a


def recipe_config(recipe: str = "paper", **settings: object) -> SearchConfig:
    """A SearchConfig from a recipe of `RECIPES`; every setting given explicitly wins over it."""
    if recipe not in RECIPES:
        raise SearchError(f"unknown recipe '{recipe}'; expected one of {', '.join(RECIPES)}")
    return SearchConfig(**{**RECIPES[recipe], **settings})


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
    return read_space(path, name)


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


def read_config(run_dir: str | os.PathLike) -> SearchConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise SearchError(f"'{run_dir}' is not a search run directory (no {CONFIG})")
    try:
        return SearchConfig.model_validate_json(path.read_text())
    except ValueError as error:
        hint = ""
        if (Path(run_dir) / "last.pt").is_file() or (Path(run_dir) / "genotype.geno").is_file() \
                and not (Path(run_dir) / "space.geno").is_file():
            hint = "; it looks like a training run: continue it with 'attdarts train --resume'"
        first = error.errors()[0] if hasattr(error, "errors") and error.errors() else None
        reason = (f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"
                  if first else str(error).splitlines()[0])
        raise SearchError(f"{path}: not a search configuration ({reason}){hint}") from None
