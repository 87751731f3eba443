"""The search's entry points: start, resume or run several seeds (one after another, or
together as one batched model: `attdarts.runs.search.together`).

`launch` is what `attdarts search` calls: it reads the space once, names the run directory and
starts, resumes or runs one seed after another. Under torchrun (WORLD_SIZE > 1) each process
calls the same function; rank 0 writes the files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from attdarts.language import ir
from attdarts.language.transform import read_space
from attdarts.networks.supernet import check_partial_channels
from attdarts.runs import checkpoints, data, preemption, runtime, tracking
from attdarts.runs.search.config import (
    CHECKPOINT, CONFIG, FINAL_GENOTYPE, METRICS_LOG, SEEDS, SPACE, SUMMARY, WEIGHTS_LOG,
    SearchConfig, SearchError, SearchResult, load_space, read_config, with_bam_combine,
)
from attdarts.runs.search.loop import SearchRun
from attdarts.runs.search.outputs import prepare_run_dir, summarise
from attdarts.runs.search.together import TogetherSearch, unsupported

log = logging.getLogger(__name__)


def _space_of(config: SearchConfig, run_dir: Path | None = None) -> ir.Space:
    """The space searched: the run's space.geno if written, else the space file, with
    `bam_combine` applied (idempotent, so a resumed run gets the same space)."""
    if run_dir is not None and (run_dir / SPACE).is_file():
        space = read_space(run_dir / SPACE)
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
    space: ir.Space | None = None,
    tensorboard: bool = False,
) -> SearchResult:
    """Search one seed into `run_dir` (or continue it with `resume=True`).

    `dataset` overrides loading `config.dataset` (tests pass tiny in-memory images). Under
    torchrun (WORLD_SIZE > 1) each process calls this; rank 0 writes the files. `restart` is
    for `resume_search` only: start again a run that has its config but no output yet.
    `tensorboard` writes events into run_dir/tensorboard/ (a resumed run that has that folder
    goes on writing there).
    """
    run_dir = Path(run_dir)
    with (runtime.processes(None if device is None else str(device)) as (process, torch_device),
          runtime.determinism(config.deterministic, torch_device)):
        space = _space_of(config, run_dir) if space is None else with_bam_combine(
            space, config.bam_combine)
        try:  # refused before anything is written
            check_partial_channels(space, config.channels)
        except ValueError as error:
            raise SearchError(f"space '{space.name}': {error}") from None
        if not resume and process.main:
            prepare_run_dir(config, run_dir, space, restart=restart)
        if process.world_size > 1:
            torch.distributed.barrier()
        run = SearchRun(config, run_dir, torch_device, process, space, dataset, progress)
        tensorboard = tensorboard or (resume and tracking.continues(run_dir))
        run.tracking = tracking.open_tracking(tensorboard, run_dir, process.main,
                                              tracking.SEARCH_SCALARS)
        try:
            return _run(run, run_dir, resume, process)
        finally:
            run.tracking.close()


def _run(run: SearchRun, run_dir: Path, resume: bool, process: runtime.Process) -> SearchResult:
    """Restore (when resuming) and run the epochs."""
    if resume:
        run.restore()
        run.write_outputs()
        if run.stopped_early is not None:
            return run.run()  # logs that it finished early (DARTS+) and runs nothing
        if run.epoch >= run.config.epochs:
            log.info("%s: the search is already complete (%d epochs)", run_dir, run.epoch)
            return run.result()
        log.info("%s: resuming at epoch %d, step %d", run_dir, run.epoch + 1, run.step)
    with preemption.watch(process) as signals:
        run.signals = signals
        result = run.run()
    if process.world_size > 1:
        torch.distributed.barrier()
    return result


def resume_search(
    run_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
    dataset: data.ImageTensors | None = None,
    tensorboard: bool = False,
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
                         dataset=dataset, resume=True, together=record.get("together", False),
                         tensorboard=tensorboard)
    config = read_config(run_dir)
    if (run_dir / CHECKPOINT).exists():
        return run_search(config, run_dir, device=device, progress=progress, dataset=dataset,
                          resume=True, tensorboard=tensorboard)
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
                      restart=True, tensorboard=tensorboard)


def run_seeds(
    config: SearchConfig,
    seeds: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
    dataset: data.ImageTensors | None = None,
    resume: bool = False,
    space: ir.Space | None = None,
    together: bool = False,
    tensorboard: bool = False,
) -> list[SearchResult]:
    """One search per seed into out_dir/seed-N, then summary.json. The seeds run one after
    another, or with `together` as one batched model (`run_together`: the same
    results, each seed's files as its own run writes them)."""
    out_dir = Path(out_dir)
    if together:  # refused before anything is written
        space = (_space_of(config, out_dir / f"seed-{seeds[0]}" if resume else None)
                 if space is None else with_bam_combine(space, config.bam_combine))
        reason = unsupported(config, space) or (
            "--together writes no TensorBoard events yet; drop --tensorboard" if tensorboard else None)
        if reason is not None:
            raise SearchError(reason)
    if not resume:
        if (out_dir / SEEDS).exists():
            raise SearchError(f"'{out_dir}' already holds a search; continue it with --resume {out_dir}")
        record = {"seeds": list(seeds), "config": config.model_dump(mode="json")}
        if together:
            record["together"] = True
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.atomic_write_text(out_dir / SEEDS, json.dumps(record, indent=2) + "\n")
    results = _seeds_together(config, seeds, out_dir, device=device, progress=progress,
                            dataset=dataset, resume=resume, space=space) if together else None
    if results is None:
        results = _run_one_by_one(config, seeds, out_dir, device=device, progress=progress,
                                  dataset=dataset, resume=resume, space=space,
                                  tensorboard=tensorboard)
    if int(os.environ.get("RANK", "0")) == 0:
        checkpoints.atomic_write_text(out_dir / SUMMARY, json.dumps(
            summarise(results, out_dir), indent=2) + "\n")
    return results


def _seeds_together(config: SearchConfig, seeds: Sequence[int], out_dir: Path, *,
                  resume: bool, space: ir.Space, **options) -> list[SearchResult] | None:
    """The seeds together; None where a resume must continue them one by one (their
    checkpoints stopped at different points, or only some of them wrote one)."""
    seed_dirs = [out_dir / f"seed-{seed}" for seed in seeds]
    if not resume:
        return run_together(config, seeds, out_dir, space=space, **options)
    saved = [(seed_dir / CHECKPOINT).is_file() for seed_dir in seed_dirs]
    if all(saved):
        results = run_together(config, seeds, out_dir, space=space, resume=True, **options)
        if results is not None:
            return results
    elif not any(saved) and not any(any(seed_dir.glob("genotype-epoch*.geno"))
                                    for seed_dir in seed_dirs):
        log.warning("%s: no seed saved a checkpoint yet (stopped in the first epoch); starting "
                    "them again from epoch 1, together", out_dir)
        return run_together(config, seeds, out_dir, space=space, restart=True, **options)
    log.warning("%s: the seeds' checkpoints stopped at different points; continuing them one "
                "after another", out_dir)
    return None


def run_together(config: SearchConfig, seeds: Sequence[int], out_dir: Path, *, space: ir.Space,
                 device: str | torch.device | None = None, progress: bool = False,
                 dataset: data.ImageTensors | None = None, resume: bool = False,
                 restart: bool = False) -> list[SearchResult] | None:
    """Search `seeds` together into out_dir/seed-N (`resume`: continue them; `restart`: start
    again seeds killed before their first checkpoint). None when resuming seeds whose
    checkpoints stopped at different points: the caller continues them one by one."""
    with (runtime.processes(None if device is None else str(device)) as (process, torch_device),
          runtime.determinism(config.deterministic, torch_device)):
        search = TogetherSearch(
            config, seeds, out_dir, device=torch_device, space=space, dataset=dataset,
            progress=progress, process=process, prepare=not resume, restart=restart,
            resume=resume)
        if resume:
            if not search.aligned:
                return None
            for run in search.runs:
                run.write_outputs()
            if search.epoch < config.epochs:
                log.info("%s: resuming seeds %s together at epoch %d, step %d", out_dir,
                         ",".join(map(str, seeds)), search.epoch + 1, search.steps_done)
        with preemption.watch(process) as search.signals:
            return search.run()


def _run_one_by_one(config: SearchConfig, seeds: Sequence[int], out_dir: Path, *,
                    device: str | torch.device | None, progress: bool,
                    dataset: data.ImageTensors | None, resume: bool,
                    space: ir.Space | None, tensorboard: bool = False) -> list[SearchResult]:
    results = []
    for seed in seeds:
        seed_dir = out_dir / f"seed-{seed}"
        seed_config = config.model_copy(update={"seed": seed})
        if resume and (seed_dir / CONFIG).is_file():
            result = resume_search(seed_dir, device=device, progress=progress, dataset=dataset,
                                   tensorboard=tensorboard)
        else:
            result = run_search(seed_config, seed_dir, device=device, progress=progress,
                                dataset=dataset, space=space, tensorboard=tensorboard)
        assert isinstance(result, SearchResult)
        results.append(result)
    return results


def default_run_dir(space: ir.Space) -> Path:
    """runs/search-SPACE-TIME, the run directory when none is given."""
    return Path("runs") / f"search-{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def launch(
    config: SearchConfig | None = None,
    out: str | os.PathLike | None = None,
    *,
    seeds: Sequence[int] | None = None,
    resume: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    together: bool = False,
    tensorboard: bool = False,
) -> SearchResult | list[SearchResult]:
    """Start a search (one seed, or `seeds` into out/seed-N: one after another, or `together` as
    one batched model) or, with `resume`, continue the run in that directory; `config` is not
    given then. `tensorboard` writes TensorBoard events into each run directory's tensorboard/."""
    if tensorboard:
        tracking.require_tensorboard()
    if resume is not None:
        return resume_search(resume, device=device, progress=progress, tensorboard=tensorboard)
    assert config is not None
    space = load_space(config.space_file, config.space)
    out = default_run_dir(space) if out is None else out
    if seeds:
        return run_seeds(config, seeds, out, device=device, progress=progress, space=space,
                         together=together, tensorboard=tensorboard)
    return run_search(config, out, device=device, progress=progress, space=space,
                      tensorboard=tensorboard)
