"""Where a run ran: `environment.json` in every run directory.

float32 kernels differ between CPUs, between ATen's CPU capabilities on one CPU (`default`, AVX2,
AVX-512: `ATEN_CPU_CAPABILITY`), between GPUs and between library versions, so one command can
give numbers that differ in their last digits, and after many epochs genotypes that differ. Every
run directory (a search, each seed of `--seeds` with or without `--together`, a training, each
seed of `train --repeats`) therefore says what it ran on. The record is written once,
atomically, when the run starts (a run started again from scratch replaces it):

- `attdarts` (the version) and `commit` (the git commit, with "-dirty" when tracked files have
  changes, when attdarts is imported from a git checkout; null otherwise), `python`, `platform`,
  `torch`, `torchvision`;
- `cpu` (the model name), `cpu_capability` (the ATen kernels in use: DEFAULT, AVX2, AVX512, ...),
  `device`, and on CUDA `cuda_device` (the GPU's name) and `cuda` (the CUDA version torch was built
  with);
- `threads` (torch's intra-op threads), `world_size`, `deterministic` (deterministic algorithms
  on), `graphs` ("on" when steps are captured as CUDA graphs, "off", or "off (capture failed:
  REASON)" when a capture failed and the run went on eagerly: `attdarts.runs.graphs`), and `time`
  (UTC, when the record was made).

A resumed run keeps the record of its start and appends the environment it resumes in to the list
`resumed`, each entry with `resumed_at` (the epoch it continues, 1-based, and the steps of that
epoch already done): a run continued on another machine, or with another torch, can be told
apart. `attdarts report` shows the records and names the fields in which runs (or the sessions of
one run) differ. Reading (`attdarts.records.read`, `sessions`) is torch-free; `collect` imports torch when called.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from attdarts.files import atomic_write_text
from attdarts.records import (  # noqa: F401 - the record's names, re-exported
    COMPARED, ENVIRONMENT, FIELDS, RESUMED, cpu_model, read, sessions,
)



def collect(device: Any, *, world_size: int = 1, graphs: str = "off") -> dict[str, Any]:
    """The environment of a run on `device` now (torch's global settings as the run has them)."""
    import torch

    device = torch.device(device)
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    return {
        "attdarts": _distribution_version("attdarts"),
        "commit": checkout_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _distribution_version("torchvision"),
        "cpu": cpu_model(),
        "cpu_capability": _cpu_capability(torch),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if on_cuda else None,
        "cuda": torch.version.cuda if on_cuda else None,
        "threads": torch.get_num_threads(),
        "world_size": world_size,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "graphs": graphs,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def record(run_dir: str | os.PathLike, device: Any, *, world_size: int = 1, graphs: str = "off",
           resumed_at: tuple[int, int] | None = None) -> None:
    """Write the run's record at its start, or with `resumed_at` = (epoch, steps done) append
    the environment it resumes in (a record missing there, from a run started by an older
    attdarts, gets the resumed entry alone)."""
    path = Path(run_dir) / ENVIRONMENT
    now = collect(device, world_size=world_size, graphs=graphs)
    if resumed_at is None:
        content = now
    else:
        content = read(run_dir) or {}
        epoch, step = resumed_at
        content[RESUMED] = [*content.get(RESUMED, []),
                            {**now, "resumed_at": {"epoch": epoch, "step": step}}]
    atomic_write_text(path, json.dumps(content, indent=2) + "\n")


def note_graphs(run_dir: str | os.PathLike, graphs: str) -> None:
    """Set `graphs` of the current session (the last resume, else the start): a capture that
    failed during the run."""
    content = read(run_dir)
    if content is None:
        return
    current = content[RESUMED][-1] if content.get(RESUMED) else content
    current["graphs"] = graphs
    atomic_write_text(Path(run_dir) / ENVIRONMENT, json.dumps(content, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# The pieces


def checkout_commit(root: str | os.PathLike | None = None) -> str | None:
    """The commit of the git checkout attdarts is imported from (or of `root`, a checkout's top
    folder), "-dirty" appended when tracked files differ from it; None for an installed copy, a
    package inside another repository, or when git is missing or fails."""
    return _commit(Path(__file__).resolve().parents[2] if root is None else Path(root).resolve())


@functools.cache
def _commit(root: Path) -> str | None:
    if not (root / ".git").exists():  # an installed package: no git, no subprocess
        return None
    try:
        found = _git(root, "rev-parse", "--show-toplevel", "HEAD").split("\n")
        if len(found) != 2 or Path(found[0]).resolve() != root:
            return None  # the package sits inside someone else's repository
        changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return found[1] + ("-dirty" if changes else "")


def _git(root: Path, *arguments: str) -> str:
    return subprocess.run(["git", "-C", str(root), *arguments], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()


def _cpu_capability(torch) -> str | None:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return None


def _distribution_version(name: str) -> str | None:
    """An installed distribution's version, read without importing it."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
