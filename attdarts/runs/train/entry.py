"""`launch`: start a run or resume one, the one entry point of `attdarts train`.

A new run gets a fresh directory (`runs/GENOTYPE-DATASET-TIME` unless one is named) and refuses a
directory that already holds a run (a search's included); a resumed run stays in its own
directory and is checked by `resume.open_resume` before anything is written. Either holds its
directory (`rundir.claim`) while it runs, so a second run of it is refused; a run refused before
it wrote anything (too little data, an unknown device) leaves no directory behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from attdarts.language import ir
from attdarts.runs import data, rundir, runtime, tracking
from attdarts.runs.train.config import ResumeError, TrainConfig
from attdarts.runs.train.loop import TrainResult, run_training
from attdarts.runs.train.resume import ResumePoint, open_resume


def resume_state(run_dir: str | os.PathLike, genotype: ir.Genotype | None = None,
                 overrides: dict[str, Any] | None = None, *,
                 out: str | os.PathLike | None = None) -> ResumePoint:
    """The checked resume point of the run in `run_dir`; `overrides` are compared with the run's
    settings as they were stored (a dataset folder or data root made absolute first)."""
    run_dir = Path(run_dir)
    if out is not None and Path(out).resolve() != run_dir.resolve():
        raise ResumeError("--out and --resume name different directories; "
                          "a resumed run stays in its own directory")
    overrides = dict(overrides or {})
    paths = {key: overrides[key] for key in ("dataset", "data_dir") if key in overrides}
    if paths:  # compare them as stored
        normalised = TrainConfig(**paths)
        overrides.update({key: getattr(normalised, key) for key in paths})
    return open_resume(run_dir, genotype, overrides)


def default_run_dir(genotype: ir.Genotype, config: TrainConfig) -> Path:
    return Path("runs") / f"{genotype.name}-{config.spec.kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def launch(
    genotype: ir.Genotype | None,
    overrides: dict[str, Any] | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    tensorboard: bool = False,
) -> TrainResult:
    """Train `genotype` with the paper's recipe for its dataset and `overrides`, in `out`; or,
    with `resume`, continue the run in that directory (`genotype`, when given, must be its).
    `tensorboard` writes TensorBoard events into the run directory's tensorboard/."""
    if tensorboard:
        tracking.require_tensorboard()
    runtime.check_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if resume is not None:
        if not Path(resume).is_dir():
            raise ResumeError(f"'{resume}' is not a training run directory (no such directory)")
        with rundir.claim(resume):
            point = resume_state(resume, genotype, overrides, out=out)
            data.check_batch_size(point.config.batch_size, world_size)
            return run_training(point.config, point.genotype, run_dir=point.run_dir,
                                device=device, resume=point, progress=progress,
                                tensorboard=tensorboard)
    if genotype is None:
        raise ResumeError("a new run needs a genotype (or resume a run directory)")
    overrides = dict(overrides or {})
    config = TrainConfig.recipe(overrides.pop("dataset", "cifar10"), **overrides)
    data.check_batch_size(config.batch_size, world_size)
    run_dir = Path(out) if out is not None else default_run_dir(genotype, config)
    with rundir.claim(run_dir):
        if rundir.main_process():
            _refuse_other_runs(run_dir)
        return run_training(config, genotype, run_dir=run_dir, device=device, progress=progress,
                            tensorboard=tensorboard)


def _refuse_other_runs(run_dir: Path) -> None:
    """A new training run refuses a directory that holds a run: a training run with a
    checkpoint can be resumed, a search is not a training's to write into."""
    held = rundir.kind(run_dir)
    if held in ("search", "seeds"):
        raise ResumeError(f"'{run_dir}' holds {rundir.KIND_NAMES[held]}, not a training run; "
                          "choose another --out")
    if (run_dir / "last.pt").exists():
        raise ResumeError(f"{run_dir} already holds a run; continue it with "
                          f"--resume {run_dir} or choose another --out")
