"""The search's entry points: start, resume or run several seeds (one after another, or
together as one batched model: `attdarts.runs.search.together`).

`launch` is what `attdarts search` calls: it reads the space once, names the run directory and
starts, resumes or runs one seed after another. Under torchrun (WORLD_SIZE > 1) each process
calls the same function; rank 0 writes the files.

Refused before writing: everything a run can be refused for (the settings, the seeds, the device,
the data against the batch size, a directory that holds another run or is in use) is checked
before its run directory is written (`_preflight`, `rundir.claim`), so the corrected command
works on the same `--out`. A resume honours the settings that do not change the result
(`RESUMABLE_SETTINGS`) and refuses any other changed one, naming its option.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from attdarts.language import ir
from attdarts.language.printer import format_space
from attdarts.language.transform import read_space
from attdarts.networks.supernet import check_partial_channels
from attdarts.runs import checkpoints, data, environment, preemption, rundir, runtime, tracking
from attdarts.runs.search.config import (
    CHECKPOINT, CONFIG, FINAL_GENOTYPE, METRICS_LOG, SEEDS, SPACE, SUMMARY, WEIGHTS_LOG,
    RequestError, SearchConfig, SearchError, SearchResult, SettingChanged, check_seeds,
    load_space, option_name, read_config, resumed_config, with_bam_combine,
)
from attdarts.runs.search.loop import SearchRun
from attdarts.runs.search.outputs import prepare_run_dir, summarise
from attdarts.runs.search.stages import Plan
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


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _preflight(config: SearchConfig, space: ir.Space, *, device: str | torch.device | None,
               dataset: data.ImageTensors | None) -> data.ImageTensors:
    """What a search can be refused for besides its settings, checked before its run directory
    is written: the space against the channels, the device, the batch size against the
    processes and the data. Returns the training split, loaded here once for the run."""
    try:
        check_partial_channels(space, config.channels)
    except ValueError as error:
        raise SearchError(f"space '{space.name}': {error}") from None
    Plan.of(space, config)  # stages that take the run's epochs and warm-up: each can train
    runtime.check_device(device)
    if _world_size() > 1 and config.order == 2:
        raise SearchError("second-order search runs in one process; use --order 1 under torchrun")
    data.check_batch_size(config.batch_size, _world_size())
    if dataset is None:
        dataset = data.load_dataset(config.dataset, config.data_dir, train=True)
    data.check_search_batch(len(dataset), portion=config.train_portion,
                            batch_size=config.batch_size, world_size=_world_size())
    return dataset


def _refuse_other_runs(run_dir: Path, *, restart: bool = False) -> None:
    """A new search refuses a directory that holds any run: a search can be resumed, a training
    run is not a search's to write into (`restart`: a search's own run, started again)."""
    held = rundir.kind(run_dir)
    if held is None or (restart and held == "search"):
        return
    if held == "train":
        raise SearchError(f"'{run_dir}' holds a training run, not a search; choose another --out")
    raise SearchError(f"'{run_dir}' already holds {rundir.KIND_NAMES[held]}; continue it with "
                      f"--resume {run_dir} or choose another --out")


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
    with rundir.claim(run_dir):
        if not resume and rundir.main_process():
            _refuse_other_runs(run_dir, restart=restart)
        space = _space_of(config, run_dir) if space is None else with_bam_combine(
            space, config.bam_combine)
        dataset = _preflight(config, space, device=device, dataset=dataset)
        with (runtime.processes(None if device is None else str(device)) as (process, torch_device),
              runtime.determinism(config.deterministic, torch_device)):
            return _start(config, run_dir, torch_device, process, space, dataset, progress=progress,
                          resume=resume, restart=restart, tensorboard=tensorboard)


def _start(config: SearchConfig, run_dir: Path, device: torch.device, process: runtime.Process,
           space: ir.Space, dataset: data.ImageTensors, *, progress: bool, resume: bool,
           restart: bool, tensorboard: bool) -> SearchResult:
    """Build the run (nothing written yet), then write its directory and run it."""
    run = SearchRun(config, run_dir, device, process, space, dataset, progress)
    if not resume and process.main:
        prepare_run_dir(config, run_dir, space, restart=restart)
    if process.world_size > 1:
        torch.distributed.barrier()
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
        if process.main:
            _record_config(run_dir, run.config)
        run.write_outputs()
        if run.stopped_early is not None:
            return run.run()  # logs that it finished early (DARTS+) and runs nothing
        if run.epoch >= run.plan.epochs:
            log.info("%s: the search is already complete (%d epochs)", run_dir, run.epoch)
            return run.result()
        log.info("%s: resuming at epoch %d, step %d", run_dir, run.epoch + 1, run.step)
    _record_environment(run, resume)
    with preemption.watch(process) as signals:
        run.signals = signals
        result = run.run()
    if process.world_size > 1:
        torch.distributed.barrier()
    return result


def _record_environment(run: SearchRun, resumed: bool, graphs: str | None = None) -> None:
    """The run's environment.json (main process), at its start or resume; a capture that fails
    later updates it (`attdarts.runs.environment`). `graphs` overrides the step's own state."""
    if not run.process.main:
        return
    environment.record(run.run_dir, run.device, world_size=run.process.world_size,
                       graphs=graphs or run.bilevel.captured.state,
                       resumed_at=(run.epoch + 1, run.step) if resumed else None)
    run.listen(lambda state: environment.note_graphs(run.run_dir, state))


def resume_search(
    run_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
    dataset: data.ImageTensors | None = None,
    tensorboard: bool = False,
    settings: Mapping[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
    together: bool | None = None,
) -> SearchResult | list[SearchResult]:
    """Continue an interrupted search (one seed, or a multi-seed directory) where it stopped.

    `settings` are SearchConfig fields given anew (the options of the resuming command): those
    of `RESUMABLE_SETTINGS` take their new value, any other that differs from the run's is
    refused naming its option, before anything is written; so are `seeds` and `together` when
    they differ from a multi-seed run's.

    Without checkpoint.pt: a run that wrote no epoch yet (killed during its first epoch) starts
    over from its config.json, with a warning; one that did write epochs is refused, and nothing
    is touched (its checkpoint, which holds the state, is gone).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SearchError(f"'{run_dir}' is not a search run directory (no such directory)")
    settings = dict(settings or {})
    with rundir.claim(run_dir):
        if (run_dir / SEEDS).is_file():
            record = json.loads((run_dir / SEEDS).read_text())
            base = resumed_config(SearchConfig.model_validate(record["config"]), settings)
            for option, given, used in (
                    ("--seeds", None if seeds is None else list(seeds), record["seeds"]),
                    ("--together", together, record.get("together", False))):
                if given is not None and given != used:
                    raise SettingChanged(option, used)
            return run_seeds(base, record["seeds"], run_dir, device=device, progress=progress,
                             dataset=dataset, resume=True,
                             together=record.get("together", False), tensorboard=tensorboard,
                             settings=settings)
        if seeds is not None or together:
            raise SettingChanged("--seeds" if seeds is not None else "--together", None)
        config = resumed_config(read_config(run_dir), settings)
        if (run_dir / CHECKPOINT).exists():
            return run_search(config, run_dir, device=device, progress=progress,
                              dataset=dataset, resume=True, tensorboard=tensorboard)
        written = sorted(path.name for path in run_dir.glob("genotype-epoch*.geno"))
        written += [name for name in (FINAL_GENOTYPE, METRICS_LOG, WEIGHTS_LOG)
                    if (run_dir / name).exists()]
        if written:
            raise SearchError(
                f"{run_dir / CHECKPOINT}: missing, but the run already wrote "
                f"{', '.join(written)}; it cannot continue without its checkpoint. Nothing was "
                "changed; start a new run with another --out")
        log.warning("%s: no %s and no epoch written yet (the run stopped in its first epoch); "
                    "starting it again from epoch 1", run_dir, CHECKPOINT)
        return run_search(config, run_dir, device=device, progress=progress, dataset=dataset,
                          restart=True, tensorboard=tensorboard)


def _record_config(run_dir: Path, config: SearchConfig) -> None:
    """Rewrite a resumed run's config.json when a resumable setting changed (the next resume
    starts from it)."""
    text = json.dumps(config.model_dump(mode="json"), indent=2) + "\n"
    path = run_dir / CONFIG
    if not path.is_file() or path.read_text() != text:
        checkpoints.atomic_write_text(path, text)


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
    settings: Mapping[str, Any] | None = None,
) -> list[SearchResult]:
    """One search per seed into out_dir/seed-N, then summary.json. The seeds run one after
    another, or with `together` as one batched model (`run_together`: the same
    results, each seed's files as its own run writes them). Everything is checked before
    seeds.json, the first file, is written. `settings` (a resume's) go to each seed's resume."""
    out_dir = Path(out_dir)
    seeds = check_seeds(seeds)
    with rundir.claim(out_dir), contextlib.ExitStack() as held:
        for seed in seeds:  # every seed's directory, held for the whole run
            held.enter_context(rundir.claim(out_dir / f"seed-{seed}"))
        if not resume and rundir.main_process():
            _refuse_other_runs(out_dir)
        checked = (_space_of(config, out_dir / f"seed-{seeds[0]}" if resume else None)
                   if space is None else with_bam_combine(space, config.bam_combine))
        if together:
            reason = unsupported(config, checked) or (
                "--together writes no TensorBoard events yet; drop --tensorboard"
                if tensorboard else None)
            if reason is not None:
                raise SearchError(reason)
        dataset = _preflight(config, checked, device=device, dataset=dataset)
        if rundir.main_process():
            _record_seeds(out_dir, seeds, config, together, space, resume)
        results = None
        if together:
            results = _seeds_together(config, seeds, out_dir, device=device, progress=progress,
                                      dataset=dataset, resume=resume, space=checked)
        if results is None:
            results = _run_one_by_one(config, seeds, out_dir, device=device, progress=progress,
                                      dataset=dataset, resume=resume, space=space,
                                      tensorboard=tensorboard, settings=settings)
        if rundir.main_process():
            checkpoints.atomic_write_text(out_dir / SUMMARY, json.dumps(
                summarise(results, out_dir), indent=2) + "\n")
        return results


def _record_seeds(out_dir: Path, seeds: list[int], config: SearchConfig, together: bool,
                  space: ir.Space | None, resume: bool) -> None:
    """seeds.json (a resume rewrites it when a resumable setting changed), and the space file
    of record when the caller gave the space as an object for out_dir/space.geno (the API)."""
    record: dict[str, Any] = {"seeds": list(seeds), "config": config.model_dump(mode="json")}
    if together:
        record["together"] = True
    text = json.dumps(record, indent=2) + "\n"
    path = out_dir / SEEDS
    if not resume or path.read_text() != text:
        checkpoints.atomic_write_text(path, text)
    space_file = Path(config.space_file)
    if (space is not None and not resume and not space_file.exists()
            and os.path.realpath(space_file) == os.path.realpath(out_dir / SPACE)):
        checkpoints.atomic_write_text(space_file, format_space(space))


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
    checkpoints stopped at different points: the caller continues them one by one. Each seed's
    directory is held (`rundir.claim`) while they run."""
    with contextlib.ExitStack() as held:
        for seed in seeds:
            held.enter_context(rundir.claim(Path(out_dir) / f"seed-{seed}"))
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
                    if process.main:
                        _record_config(run.run_dir, run.config)
                    run.write_outputs()
                if search.epoch < search.plan.epochs:
                    log.info("%s: resuming seeds %s together at epoch %d, step %d", out_dir,
                             ",".join(map(str, seeds)), search.epoch + 1, search.steps_done)
            for run in search.runs:  # the seeds' stacked step is never captured
                _record_environment(run, resume, graphs="off")
            with preemption.watch(process) as search.signals:
                return search.run()


def _run_one_by_one(config: SearchConfig, seeds: Sequence[int], out_dir: Path, *,
                    device: str | torch.device | None, progress: bool,
                    dataset: data.ImageTensors | None, resume: bool,
                    space: ir.Space | None, tensorboard: bool = False,
                    settings: Mapping[str, Any] | None = None) -> list[SearchResult]:
    results = []
    for seed in seeds:
        seed_dir = out_dir / f"seed-{seed}"
        seed_config = config.model_copy(update={"seed": seed})
        if resume and (seed_dir / CONFIG).is_file():
            result = resume_search(seed_dir, device=device, progress=progress, dataset=dataset,
                                   tensorboard=tensorboard, settings=settings)
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
    settings: Mapping[str, Any] | None = None,
    space: ir.Space | None = None,
) -> SearchResult | list[SearchResult]:
    """Start a search (one seed, or `seeds` into out/seed-N: one after another, or `together` as
    one batched model) or, with `resume`, continue the run in that directory; `config` is not
    given then, and `settings` are the SearchConfig fields given anew (`resume_search`).
    `space` is the space searched when the caller holds it already (else `config.space_file`).
    `tensorboard` writes TensorBoard events into each run directory's tensorboard/.

    The API and the command line share this one path: whatever it refuses (distinct seeds, an
    unknown device, too little data, a directory that holds another run) it refuses before
    anything is written."""
    if tensorboard:
        tracking.require_tensorboard()
    runtime.check_device(device)
    if resume is not None:
        if out is not None and os.path.realpath(out) != os.path.realpath(resume):
            raise RequestError("--out and --resume name different directories; a resumed run "
                               "stays in its own directory")
        return resume_search(resume, device=device, progress=progress, tensorboard=tensorboard,
                             settings=settings, seeds=seeds, together=together or None)
    if config is None:
        raise RequestError("a new search needs its settings (or resume a run directory)")
    if settings:
        raise RequestError(f"{', '.join(map(option_name, settings))}: settings given anew are "
                           "for --resume; a new search takes them in its config")
    if together and not seeds:
        raise RequestError("--together runs several seeds together; give them with --seeds")
    if seeds is not None:
        seeds = check_seeds(seeds)
    space = load_space(config.space_file, config.space) if space is None else space
    out = default_run_dir(space) if out is None else out
    if seeds:
        return run_seeds(config, seeds, out, device=device, progress=progress, space=space,
                         together=together, tensorboard=tensorboard)
    return run_search(config, out, device=device, progress=progress, space=space,
                      tensorboard=tensorboard)
