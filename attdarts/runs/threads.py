"""How many CPU threads torch uses for a run: the one place where `--threads` is resolved.

1. `--threads N` (or `threads=N` in the API) wins;
2. else `OMP_NUM_THREADS`, when set, is left in force (torch read it at start-up; torchrun sets it
   to 1 for its workers);
3. else a small step (the README's examples, the demo: below `SMALL_STEP`) gets one thread;
4. else the cores nobody else is using: the CPUs this process may run on, less the load average
   (rounded), at least 1 and at most `MAX_THREADS`.

Why (benchmarks/threads.py; README, "CPU threads"): torch's own default, one thread per core,
lets threads spin while they wait for each other, so on cores that other processes share it was
5-10 times slower than one thread for small steps (a search step of the README's plot example:
2.5 s with 1 thread, 14.6 s with 2, at load 2-5 on 2 cores) and about 3 times slower for the
paper's search step at load 7-12. On idle cores a second thread gained nothing for small steps.
Where the cores are free, larger steps use them.

The size of a step is counted in "units": images per step x C^2 x cells x (image side / 32)^2,
times `SEARCH_FACTOR` for a search iteration (an architecture and a weight batch through every
candidate of the supernet: the paper's supernet does about 9 times the multiply-adds per image
of the discrete network of the same C and cells). The paper's sizes are 2.4 M (search) and 2.5 M
(training) units; the demo's are at most 20,480.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attdarts import recipes

log = logging.getLogger(__name__)

SMALL_STEP = 100_000  # units; README's examples and the demo are 384 to 20,480
MAX_THREADS = 4
SEARCH_FACTOR = 18


@dataclass(frozen=True)
class Choice:
    """A thread count (None: leave torch's, as `OMP_NUM_THREADS` set it) and why."""

    threads: int | None
    reason: str


def step_units(kind: str, settings: Mapping[str, Any]) -> float:
    """The size of one step of a search or a training run with these settings (`config.json`'s
    keys; a missing or null key takes the recipe's default)."""
    if kind not in ("search", "train"):
        raise ValueError(f"kind must be 'search' or 'train', got {kind!r}")
    dataset = str(settings.get("dataset") or "cifar10")
    if kind == "search":
        defaults = recipes.SEARCH.get(str(settings.get("recipe")), recipes.SEARCH["paper"])
    else:
        defaults = recipes.TRAIN["imagenet" if dataset == "imagenet" else "cifar"]

    def value(key: str) -> int:
        given = settings.get(key)
        return int(defaults[key] if given is None else given)

    side = 224 if dataset == "imagenet" else 32
    units = value("batch_size") * value("channels") ** 2 * value("layers") * (side / 32) ** 2
    return units * (SEARCH_FACTOR if kind == "search" else 1)


def recorded_settings(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The settings a run directory recorded (its `config.json`, or its first seed's), or {}."""
    folder = Path(run_dir)
    for path in (folder / "config.json", *sorted(folder.glob("seed-*/config.json"))):
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(settings, dict):
            return settings
    return {}


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return 0.0


def choose(requested: int | None, units: float, *, environ: Mapping[str, str] | None = None,
           cpus: int | None = None, load: float | None = None) -> Choice:
    """The rule of the module docstring; `environ`, `cpus` and `load` default to this process's."""
    if requested is not None:
        return Choice(requested, "--threads")
    environ = os.environ if environ is None else environ
    if environ.get("OMP_NUM_THREADS", "").strip():
        return Choice(None, "OMP_NUM_THREADS")
    if units < SMALL_STEP:
        return Choice(1, f"a small step ({units:,.0f} units)")
    cpus = usable_cpus() if cpus is None else cpus
    load = load_average() if load is None else load
    free = max(1, min(MAX_THREADS, cpus - round(load)))
    return Choice(free, f"{cpus} CPUs at load {load:.1f}")


@contextmanager
def using(requested: int | None, units: float) -> Iterator[Choice]:
    """Run the body with the chosen thread count, and give torch's intra-op count back after
    (the inter-op pool can be set once per process only; see `runtime.set_threads`)."""
    import torch

    from attdarts.runs.runtime import set_threads

    choice = choose(requested, units)
    saved = torch.get_num_threads()
    if choice.threads is not None:
        set_threads(choice.threads)
    log.debug("torch threads: %d (%s)", torch.get_num_threads(), choice.reason)
    try:
        yield choice
    finally:
        torch.set_num_threads(saved)
