"""Pre-emption (attdarts/runs/preemption.py): SIGTERM / SIGUSR1 (exit status 75) and Ctrl-C (130)
stop a run at the next step with a checkpoint, and `--resume` gives what an uninterrupted run
gives, in every mode: one seed, seeds one after another or together, `train --repeats`, loader
worker processes, the compiling first step, signals that come again while the first is handled.

The in-process tests send the real signal to this process from inside a step (`os.kill`), so the
handler, the flag and the step boundary are the real ones; the slow tests signal CLI processes
(and their process groups, as Slurm and a terminal do). Tiny runs on random data, deterministic
kernels, float32 (the files must match byte for byte).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language.transform import parse_file
from attdarts.runs import checkpoints, data, preemption, runtime, search, train
from attdarts.runs.search import bilevel as bilevel_module, loop as search_loop
from attdarts.runs.search import together as together_module
from attdarts.runs.train import loop as train_loop, steps as train_steps
from helpers import TINY_SPACE, metrics_without_timings as metrics

ROOT = Path(__file__).resolve().parents[2]
DARTS_V2 = ROOT / "genotypes" / "darts_v2.geno"
SEARCH_FILES = ("genotype-epoch001.geno", "genotype-epoch002.geno", "genotype.geno",
                "weights.jsonl")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def restored_handlers():
    """A command leaves the signals ignored after a stop (the process is exiting); put this
    process's handlers back after each test."""
    before = handlers()
    yield
    for number, handler in before.items():
        signal.signal(number, handler)


def signal_at_call(monkeypatch, owner, name: str, call: int, number: int) -> None:
    """Make `owner.name` send signal `number` to this process right after its `call`-th call."""
    original = getattr(owner, name)
    calls = [0]

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), number)
        return result

    monkeypatch.setattr(owner, name, wrapped)


def signal_during_call(monkeypatch, owner, name: str, call: int, number: int) -> list:
    """Make the `call`-th call of `owner.name` send signal `number` to this process before it
    does its work (as a signal during a compiling step); returns the calls that did the work."""
    original = getattr(owner, name)
    calls, finished = [0], []

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), number)
        result = original(*args, **kwargs)
        finished.append(calls[0])
        return result

    monkeypatch.setattr(owner, name, wrapped)
    return finished


def handlers() -> dict:
    return {number: signal.getsignal(number) for number in preemption.SIGNALS}


def same_search_files(run: Path, whole: Path) -> None:
    names = sorted(path.name for path in whole.glob("*.geno")) + ["weights.jsonl"]
    for name in names:
        assert (run / name).read_bytes() == (whole / name).read_bytes(), run / name
    assert metrics(run) == metrics(whole)


def tiny_images() -> data.ImageTensors:
    return data.synthetic_dataset(train=True, size=32, resolution=8)


@pytest.fixture(scope="module")
def search_config(tmp_path_factory) -> search.SearchConfig:
    space = tmp_path_factory.mktemp("space") / "tiny.geno"
    space.write_text(TINY_SPACE)
    return search.SearchConfig(space_file=str(space), dataset="synthetic", epochs=2, batch_size=4,
                               channels=4, layers=5, max_steps_per_epoch=3, deterministic=True)


@pytest.fixture(scope="module")
def whole_search(search_config, tmp_path_factory) -> Path:
    """The uninterrupted search every stopped one is compared with."""
    run_dir = tmp_path_factory.mktemp("search") / "whole"
    torch.set_num_threads(1)
    search.run_search(search_config, run_dir, device="cpu", dataset=tiny_images())
    return run_dir


def train_config(**changes) -> train.TrainConfig:
    # drop path 0.2 ramped over 2 epochs: epoch 2 draws masks (the random state must be restored)
    settings = dict(channels=8, layers=5, epochs=2, batch_size=8, max_steps_per_epoch=3,
                    deterministic=True, seed=3)
    return train.TrainConfig.recipe("synthetic", **{**settings, **changes})


@pytest.fixture(scope="module")
def whole_training(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("train") / "whole"
    torch.set_num_threads(1)
    train.run_training(train_config(), parse_file(DARTS_V2).genotype(), run_dir=run_dir,
                       device="cpu")
    return run_dir


@pytest.mark.parametrize("call, number", [(4, signal.SIGUSR1), (3, signal.SIGTERM)])
def test_search_stops_at_the_step_and_resumes_to_identical_files(search_config, whole_search,
                                                                 tmp_path, monkeypatch, call,
                                                                 number):
    """Call 4 is epoch 2's first step; call 3 the last step of epoch 1 (3 steps per epoch)."""
    before = handlers()
    signal_at_call(monkeypatch, bilevel_module.Bilevel, "step", call, number)
    with pytest.raises(preemption.Preempted) as stopped:
        search.run_search(search_config, tmp_path / "stopped", device="cpu", dataset=tiny_images())
    monkeypatch.undo()
    assert handlers() == before  # restored after the run
    assert stopped.value.signal_name == signal.Signals(number).name
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)
    # saved right after the signalled step: completed epochs, then steps of the running one
    assert (state["epoch"], state["step"]) == ((call - 1) // 3, (call - 1) % 3 + 1)
    assert (stopped.value.epoch, stopped.value.step) == (state["epoch"] + 1, state["step"])

    search.resume_search(tmp_path / "stopped", device="cpu", dataset=tiny_images())
    for name in SEARCH_FILES:
        assert (tmp_path / "stopped" / name).read_bytes() == (whole_search / name).read_bytes(), name
    assert metrics(tmp_path / "stopped") == metrics(whole_search)


@pytest.mark.parametrize("call, number", [(5, signal.SIGTERM), (3, signal.SIGUSR1)])
def test_training_stops_mid_epoch_and_resumes_to_the_same_run(whole_training, tmp_path,
                                                              monkeypatch, call, number):
    """Call 5 is step 2 of epoch 2; call 3 the last step of epoch 1."""
    genotype = parse_file(DARTS_V2).genotype()
    before = handlers()
    signal_at_call(monkeypatch, train_steps, "train_step", call, number)
    with pytest.raises(preemption.Preempted) as stopped:
        train.run_training(train_config(), genotype, run_dir=tmp_path / "stopped", device="cpu")
    monkeypatch.undo()
    assert handlers() == before
    epoch, step = divmod(call - 1, 3)
    step += 1
    state = checkpoints.load(tmp_path / "stopped" / "last.pt")
    assert state["epoch"] == epoch and state["partial"]["step"] == step
    assert (stopped.value.epoch, stopped.value.step) == (epoch + 1, step)
    assert len(metrics(tmp_path / "stopped")) == epoch

    result = train.launch(None, {}, resume=tmp_path / "stopped", device="cpu")
    assert len(result.history) == 2
    assert metrics(tmp_path / "stopped") == metrics(whole_training)
    whole = checkpoints.load(whole_training / "last.pt")
    resumed = checkpoints.load(tmp_path / "stopped" / "last.pt")
    assert "partial" not in resumed
    for key in whole["model"]:
        assert torch.equal(whole["model"][key], resumed["model"][key]), key
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text()) == \
        json.loads((whole_training / "summary.json").read_text())


def test_a_run_stopped_twice_in_one_epoch_still_matches(whole_training, tmp_path, monkeypatch):
    """Stopped at epoch 2's first step, resumed, stopped again at its second step."""
    genotype = parse_file(DARTS_V2).genotype()
    config = train_config()
    for call in (4, 1):
        signal_at_call(monkeypatch, train_steps, "train_step", call, signal.SIGTERM)
        with pytest.raises(preemption.Preempted):
            if (tmp_path / "stopped").exists():
                train.launch(None, {}, resume=tmp_path / "stopped", device="cpu")
            else:
                train.run_training(config, genotype, run_dir=tmp_path / "stopped", device="cpu")
        monkeypatch.undo()
    assert checkpoints.load(tmp_path / "stopped" / "last.pt")["partial"]["step"] == 2
    train.launch(None, {}, resume=tmp_path / "stopped", device="cpu")
    assert metrics(tmp_path / "stopped") == metrics(whole_training)


def test_the_cli_exits_75_and_says_how_to_continue(search_config, tmp_path, monkeypatch):
    signal_at_call(monkeypatch, bilevel_module.Bilevel, "step", 2, signal.SIGTERM)
    result = CliRunner().invoke(cli, [
        "search", search_config.space_file, "--dataset", "synthetic", "--channels", "4",
        "--layers", "5", "--batch-size", "4", "--epochs", "1", "--max-steps-per-epoch", "3",
        "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")])
    assert result.exit_code == preemption.EXIT_STATUS == 75
    assert result.output.strip().splitlines() == [
        f"attdarts: stopped by SIGTERM in epoch 1 after step 2 (checkpoint in {tmp_path / 'run'}) "
        f"; continue with: attdarts search --resume {tmp_path / 'run'} (exit status 75)"]
    monkeypatch.undo()
    result = CliRunner().invoke(cli, ["search", "--resume", str(tmp_path / "run"), "--device",
                                      "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(metrics(tmp_path / "run")) == 1


# -- the handler: first signal decides, later ones are ignored, stretches, commands, workers ----


def test_the_first_signal_decides_and_later_ones_are_only_recorded():
    before = handlers()
    with preemption.watch(runtime.Process()) as signals:
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGTERM):
            os.kill(os.getpid(), number)  # no KeyboardInterrupt, no exit
        assert signals.stop_requested()
        stopped = signals.stopped(Path("run"), 2, 5)
    assert handlers() == before
    assert (stopped.signal_name, stopped.exit_status) == ("SIGTERM", 75)
    assert stopped.resume_line("search") == (
        "attdarts: stopped by SIGTERM in epoch 2 after step 5 (checkpoint in run) ; continue "
        "with: attdarts search --resume run (exit status 75)")


def test_ctrl_c_stops_with_status_130():
    with preemption.watch(runtime.Process()) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C changes nothing
        assert signals.stop_requested()
        stopped = signals.stopped(Path("run"), 1, 0)
    assert (stopped.signal_name, stopped.exit_status) == ("SIGINT", 130)
    assert stopped.resume_line("train").endswith("--resume run (exit status 130)")


def test_an_interruptible_stretch_ends_at_the_signal_once():
    reached = []
    with preemption.watch(runtime.Process()) as signals:
        with pytest.raises(preemption.Interrupted) as caught:
            with signals.interruptible():
                os.kill(os.getpid(), signal.SIGUSR1)
                reached.append("after the signal")
        assert caught.value.signal_number == signal.SIGUSR1
        with signals.interruptible():  # the run is ending: later signals are only recorded
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("second stretch")
        assert signals.stop_requested() and signals.signal_number == signal.SIGUSR1
    assert reached == ["second stretch"]


def test_a_signal_in_a_stretch_hides_the_abandoned_trace_of_autograds_anomaly_mode():
    """torch traces a compiled step's backward in anomaly mode: abandoned by a signal, the trace
    would print the forward's stack as a warning beside the resume line. Other warnings stay."""
    import warnings

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with preemption.watch(runtime.Process()) as signals:
            with pytest.raises(preemption.Interrupted):
                with signals.interruptible():
                    os.kill(os.getpid(), signal.SIGTERM)
            warnings.warn("Error detected in CatBackward0. Traceback of forward call that "
                          "caused the error:", UserWarning)
            warnings.warn("another warning", UserWarning)
    assert [str(warning.message) for warning in shown] == ["another warning"]


def test_a_stretch_after_a_signal_or_failing_after_one_is_interrupted():
    with preemption.watch(runtime.Process()) as signals:
        with signals.interruptible(enabled=False):
            os.kill(os.getpid(), signal.SIGTERM)  # a disabled stretch: only the flag
        with pytest.raises(preemption.Interrupted):
            with signals.interruptible():
                pytest.fail("a stretch entered after a signal must not run")
    with preemption.watch(runtime.Process()) as signals:
        with pytest.raises(preemption.Interrupted):
            with signals.interruptible():
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                except preemption.Interrupted as error:  # a library that wraps what it caught
                    raise RuntimeError("compile worker died") from error
    with preemption.watch(runtime.Process()) as signals:  # an error without a signal stays one
        with pytest.raises(ValueError), signals.interruptible():
            raise ValueError("a real error")
    with preemption.NOT_WATCHED.interruptible():  # outside a watch: nothing is interrupted
        pass


def test_a_command_records_signals_before_the_run_and_ignores_them_after_a_stop():
    before = handlers()
    with preemption.command():
        pass
    assert handlers() == before  # no signal came: put back
    with preemption.command():
        os.kill(os.getpid(), signal.SIGTERM)  # while the data loads: recorded
        with preemption.watch(runtime.Process()) as signals:
            assert signals.stop_requested() and signals.signal_number == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # between the run's end and the exit: recorded
    # until the process exits, no later signal ends it with another status
    assert handlers() == {number: signal.SIG_IGN for number in preemption.SIGNALS}


def write_imagenet(root: Path, classes: int = 2, per_class: int = 6) -> Path:
    """A tiny ImageNet layout (train/ and val/, one folder per class) of 40x40 PNGs."""
    from PIL import Image

    generator = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in range(classes):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = generator.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def test_loader_workers_ignore_the_signals(tmp_path):
    """ImageNet's loader worker processes get a process group's signals too: they ignore them
    (the main process saves and stops) instead of dying, which the loader reports as an error."""
    loader = data.ImageNetLoader(write_imagenet(tmp_path / "imagenet"), train=True, batch_size=2,
                                 device="cpu", workers=1)
    batches = iter(loader.loader)
    next(batches)
    worker = loader.loader._iterator._workers[0]
    for number in preemption.SIGNALS:
        os.kill(worker.pid, number)
    time.sleep(0.5)
    assert worker.is_alive()
    assert len(list(batches)) == len(loader) - 1


def test_a_process_exits_with_its_loader_workers_still_up(tmp_path):
    """Workers that ignore SIGTERM would hang multiprocessing's exit handler (it terminates
    daemon children with SIGTERM, then joins them) when a run stops by a signal while its
    persistent loaders are still referenced: the process must end on its own, at once."""
    root = write_imagenet(tmp_path / "imagenet")
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from attdarts.runs import data\n"
            f"loader = data.ImageNetLoader(Path({str(root)!r}), train=True, batch_size=2,\n"
            "                             device='cpu', workers=2)\n"
            "batches = iter(loader.loader)\n"
            "next(batches)\n"
            "sys.exit(75)\n")
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120,
                           capture_output=True, text=True)
    assert child.returncode == 75, child.stderr


# -- the loops: seeds together, the start of a run, the compiling first step, Ctrl-C, repeats --


@pytest.fixture(scope="module")
def whole_together(search_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("together") / "whole"
    torch.set_num_threads(1)
    search.run_seeds(search_config, [1, 2], out, device="cpu", dataset=tiny_images(),
                     together=True)
    return out


@pytest.mark.parametrize("call", [2, 4])
def test_seeds_together_stop_at_the_step_and_resume_to_identical_files(search_config,
                                                                       whole_together, tmp_path,
                                                                       monkeypatch, call):
    """Call 2 is in epoch 1, call 4 the first step of epoch 2."""
    signal_at_call(monkeypatch, together_module.TogetherSearch, "step", call, signal.SIGTERM)
    with pytest.raises(preemption.Preempted) as stopped:
        search.run_seeds(search_config, [1, 2], tmp_path / "stopped", device="cpu",
                         dataset=tiny_images(), together=True)
    monkeypatch.undo()
    assert (stopped.value.epoch, stopped.value.step) == ((call - 1) // 3 + 1, (call - 1) % 3 + 1)
    for seed in (1, 2):  # every seed saved at the same step
        state = torch.load(tmp_path / "stopped" / f"seed-{seed}" / "checkpoint.pt",
                           weights_only=False)
        assert (state["epoch"] + 1, state["step"]) == (stopped.value.epoch, stopped.value.step)
    search.resume_search(tmp_path / "stopped", device="cpu", dataset=tiny_images())
    for seed in (1, 2):
        same_search_files(tmp_path / "stopped" / f"seed-{seed}", whole_together / f"seed-{seed}")


def test_a_signal_while_a_search_starts_stops_it_before_its_first_step(search_config,
                                                                       whole_search, tmp_path,
                                                                       monkeypatch):
    """A command watches from its start: a signal while the supernet is built stops the run at
    its first step boundary, with a checkpoint of step 0 that resumes."""
    signal_at_call(monkeypatch, search_loop, "compile_supernet", 1, signal.SIGUSR1)
    steps = signal_during_call(monkeypatch, bilevel_module.Bilevel, "step", 0, 0)
    with preemption.command(), pytest.raises(preemption.Preempted) as stopped:
        search.run_search(search_config, tmp_path / "stopped", device="cpu", dataset=tiny_images())
    assert steps == [] and (stopped.value.epoch, stopped.value.step) == (1, 0)
    monkeypatch.undo()
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == (0, 0)
    search.resume_search(tmp_path / "stopped", device="cpu", dataset=tiny_images())
    same_search_files(tmp_path / "stopped", whole_search)


def test_a_signal_while_a_training_starts_stops_it_before_its_first_step(whole_training,
                                                                         tmp_path, monkeypatch):
    signal_at_call(monkeypatch, train_loop, "build_model", 1, signal.SIGTERM)
    steps = signal_during_call(monkeypatch, train_steps, "train_step", 0, 0)
    with preemption.command(), pytest.raises(preemption.Preempted) as stopped:
        train.run_training(train_config(), parse_file(DARTS_V2).genotype(),
                           run_dir=tmp_path / "stopped", device="cpu")
    assert steps == [] and (stopped.value.epoch, stopped.value.step) == (1, 0)
    monkeypatch.undo()
    state = checkpoints.load(tmp_path / "stopped" / "last.pt")
    assert state["epoch"] == 0 and state["partial"]["step"] == 0
    train.launch(None, {}, resume=tmp_path / "stopped", device="cpu")
    assert metrics(tmp_path / "stopped") == metrics(whole_training)


def test_a_signal_while_the_first_search_step_compiles_stops_at_once(search_config, whole_search,
                                                                     tmp_path, monkeypatch):
    """With compile_cells the first step compiles for minutes (Slurm kills 30 s after SIGTERM):
    checkpoint.pt is saved before it and the signal ends the step where it is. (The cells are
    not really compiled here: `compile_cells` is replaced, the run's setting is real.)"""
    monkeypatch.setattr(search_loop, "compile_cells", lambda model: model)
    config = search_config.model_copy(update={"compile_cells": True})
    steps = signal_during_call(monkeypatch, bilevel_module.Bilevel, "step", 1, signal.SIGTERM)
    with pytest.raises(preemption.Preempted) as stopped:
        search.run_search(config, tmp_path / "stopped", device="cpu", dataset=tiny_images())
    assert steps == []  # the step did not finish
    assert (stopped.value.signal_name, stopped.value.epoch, stopped.value.step) == ("SIGTERM", 1, 0)
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == (0, 0)
    monkeypatch.undo()
    monkeypatch.setattr(search_loop, "compile_cells", lambda model: model)
    search.resume_search(tmp_path / "stopped", device="cpu", dataset=tiny_images())
    same_search_files(tmp_path / "stopped", whole_search)


@pytest.mark.parametrize("where", ["first step", "first evaluation"])
def test_a_signal_while_training_compiles_stops_at_once(whole_training, tmp_path, monkeypatch,
                                                       where):
    """The first step compiles the cells for training, the first evaluation for evaluation:
    last.pt is saved before each (before the first step; with the epoch trained but not scored)
    and the signal ends the work where it is."""
    monkeypatch.setattr(train_loop, "compile_cells", lambda model: model)
    owner, name, steps = ((train_steps, "train_step", 0) if where == "first step" else
                          (train_loop, "evaluate", 3))
    finished = signal_during_call(monkeypatch, owner, name, 1, signal.SIGTERM)
    with pytest.raises(preemption.Preempted) as stopped:
        train.run_training(train_config(compile_cells=True), parse_file(DARTS_V2).genotype(),
                           run_dir=tmp_path / "stopped", device="cpu")
    assert finished == []
    assert (stopped.value.epoch, stopped.value.step) == (1, steps)
    state = checkpoints.load(tmp_path / "stopped" / "last.pt")
    assert state["epoch"] == 0 and state["partial"]["step"] == steps
    monkeypatch.undo()
    monkeypatch.setattr(train_loop, "compile_cells", lambda model: model)
    train.launch(None, {}, resume=tmp_path / "stopped", device="cpu")
    assert metrics(tmp_path / "stopped") == metrics(whole_training)


@pytest.mark.parametrize("command", ["search", "train"])
def test_a_second_ctrl_c_during_the_save_neither_stops_nor_spoils_it(search_config, tmp_path,
                                                                    monkeypatch, command):
    """Ctrl-C: the checkpoint, a resume line and exit status 130; a second Ctrl-C that comes
    while the checkpoint is being written changes nothing."""
    run = tmp_path / "run"
    if command == "search":
        owner, name, checkpoint = bilevel_module.Bilevel, "step", "checkpoint.pt"
        arguments = [search_config.space_file, "--dataset", "synthetic", "--channels", "4",
                     "--layers", "5", "--batch-size", "4"]
    else:
        owner, name, checkpoint = train_steps, "train_step", "last.pt"
        arguments = [str(DARTS_V2), "--dataset", "synthetic", "--channels", "8", "--layers",
                     "5", "--batch-size", "8"]
    arguments = [command, *arguments, "--epochs", "1", "--max-steps-per-epoch", "3", "--device",
                 "cpu", "--quiet", "--out", str(run)]
    signal_at_call(monkeypatch, owner, name, 2, signal.SIGINT)
    original = checkpoints.atomic_write
    written = []

    def interrupted_write(path, write):
        def write_after_ctrl_c(file):
            os.kill(os.getpid(), signal.SIGINT)  # in the middle of the save
            write(file)
            written.append(Path(path).name)
        original(path, write_after_ctrl_c)

    monkeypatch.setattr(checkpoints, "atomic_write", interrupted_write)
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == preemption.INTERRUPT_STATUS == 130, result.output
    assert result.output.strip().splitlines() == [
        f"attdarts: stopped by SIGINT in epoch 1 after step 2 (checkpoint in {run}) ; continue "
        f"with: attdarts {command} --resume {run} (exit status 130)"]
    assert written == [checkpoint]
    monkeypatch.undo()
    state = checkpoints.load(run / checkpoint)
    assert (state["step"] if command == "search" else state["partial"]["step"]) == 2
    result = CliRunner().invoke(cli, [command, "--resume", str(run), "--device", "cpu",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(metrics(run)) == 1


def test_train_repeats_says_how_to_continue_every_seed(whole_training, tmp_path, monkeypatch):
    """`--repeats` continues by running the same command again: the line gives it, with the
    --out it chose, and running it trains the stopped seed to the end and the next one."""
    monkeypatch.chdir(tmp_path)
    arguments = ["train", str(DARTS_V2), "--dataset", "synthetic", "--channels", "8", "--layers",
                 "5", "--epochs", "2", "--batch-size", "8", "--max-steps-per-epoch", "3",
                 "--deterministic", "--seed", "3", "--device", "cpu", "--quiet", "--repeats", "2"]
    with monkeypatch.context() as patch:
        signal_at_call(patch, train_steps, "train_step", 5, signal.SIGUSR1)
        result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 75, result.output
    out = next(Path("runs").iterdir())  # the default run directory
    line = result.output.strip().splitlines()[-1]
    assert line == (f"attdarts: stopped by SIGUSR1 in epoch 2 after step 2 (checkpoint in "
                    f"{out / 'seed-3'}) ; continue with: attdarts {shlex.join(arguments)} --out "
                    f"{out} (exit status 75)")
    again = shlex.split(line.split("continue with: attdarts ")[1].removesuffix(" (exit status 75)"))
    result = CliRunner().invoke(cli, again)
    assert result.exit_code == 0, result.output
    assert metrics(out / "seed-3") == metrics(whole_training)
    assert len(metrics(out / "seed-4")) == 2


# three interpreter starts that import torch (two at once) and tiny runs: 151 s measured on two
# cores shared with other jobs (load average 7)
@pytest.mark.slow
def test_a_real_sigterm_to_attdarts_train(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "attdarts.cli", "train", str(DARTS_V2), "--dataset",
               "synthetic", "--channels", "8", "--layers", "5", "--epochs", "3", "--batch-size",
               "8", "--max-steps-per-epoch", "10", "--deterministic", "--seed", "3",
               "--device", "cpu", "--quiet"]
    whole = subprocess.Popen(command + ["--out", str(tmp_path / "whole")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process = subprocess.Popen(command + ["--out", str(tmp_path / "stopped")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    metrics_file = tmp_path / "stopped" / "metrics.jsonl"
    while not (metrics_file.exists() and metrics_file.read_text().strip()):  # epoch 1 is done
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 75, stderr
    assert f"continue with: attdarts train --resume {tmp_path / 'stopped'}" in stderr
    # stopped in epoch 2 (before its first step when the signal came before it), or in epoch 3
    epoch, step = map(int, re.search(r"in epoch (\d+) after step (\d+)", stderr).groups())
    state = checkpoints.load(tmp_path / "stopped" / "last.pt")
    assert epoch in (2, 3) and state["epoch"] == epoch - 1
    assert state.get("partial", {"step": 0})["step"] == step
    subprocess.run([sys.executable, "-m", "attdarts.cli", "train", "--resume",
                    str(tmp_path / "stopped"), "--device", "cpu", "--quiet"], env=env, check=True,
                   capture_output=True, timeout=300)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-3000:]
    assert metrics(tmp_path / "stopped") == metrics(tmp_path / "whole")


# -- real signals to real `attdarts` processes ------------------------------------------------
# Interpreter starts that import torch, tiny runs; measured on two cores shared with other jobs
# (load average 10-12, two runs): seeds together 57-100 s, Ctrl-C 32-53 s, train --repeats
# 66-92 s, loader workers 36-45 s, compiling 22-36 s for each command.

ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
TINY_SEARCH = ["--dataset", "synthetic", "--channels", "4", "--layers", "5", "--batch-size", "4",
               "--deterministic", "--device", "cpu", "--threads", "1", "--quiet"]
TINY_TRAIN = [str(DARTS_V2), "--dataset", "synthetic", "--channels", "8", "--layers", "5",
              "--batch-size", "8", "--deterministic", "--seed", "3", "--device", "cpu",
              "--threads", "1", "--quiet"]


def attdarts(arguments: list[str], cwd: Path, **options) -> subprocess.Popen:
    """`python -m attdarts.cli ARGUMENTS` of this checkout, run in `cwd` (not the checkout: the
    current directory comes first on the path); `start_new_session=True` gives it its own
    process group, as a job under Slurm or a command in a terminal has."""
    return subprocess.Popen([sys.executable, "-m", "attdarts.cli", *arguments], cwd=cwd, env={
        **ENV, **options.pop("env", {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, **options)


def wait_for(process: subprocess.Popen, ready, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode} first: "
                                 f"{process.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def signal_until_exit(process: subprocess.Popen, numbers, *, group: bool = False,
                      interval: float = 0.005) -> tuple[int, str, float]:
    """Send `numbers[0]`, then the others in turn every `interval` seconds until the process
    exits (so later signals land in the save, the shutdown and the interpreter's exit); returns
    its exit status, its stderr and the seconds it took to exit."""
    send = (lambda number: os.killpg(process.pid, number)) if group else process.send_signal
    started = time.monotonic()
    for number in itertools.chain(numbers[:1], itertools.cycle(numbers[1:] or numbers)):
        if process.poll() is not None:
            break
        try:
            send(number)
        except ProcessLookupError:
            break
        time.sleep(interval)
    _, stderr = process.communicate(timeout=600)
    return process.returncode, stderr, time.monotonic() - started


def continue_command(stderr: str, status: int) -> list[str]:
    """The command the stop line says to run, as arguments after `attdarts`."""
    line = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr and line.endswith(f"(exit status {status})"), stderr
    return shlex.split(line.split("continue with: attdarts ")[1].removesuffix(
        f" (exit status {status})"))


@pytest.mark.slow
def test_signals_to_a_search_of_seeds_together(tmp_path):
    """SIGTERM in epoch 2, then SIGUSR1, SIGINT and SIGTERM every 5 ms until the process has
    exited: exit status 75, one line, every seed's checkpoint at one step; `--resume OUT` (the
    line says so) gives every seed the files of an uninterrupted run."""
    (tmp_path / "tiny.geno").write_text(TINY_SPACE)
    command = ["search", "tiny.geno", "--seeds", "1,2", "--together", "--epochs", "3",
               "--max-steps-per-epoch", "6", *TINY_SEARCH]
    whole = attdarts(command + ["--out", "whole"], tmp_path)
    stopped = attdarts(command + ["--out", "stopped"], tmp_path)
    wait_for(stopped, lambda: (tmp_path / "stopped/seed-2/genotype-epoch001.geno").exists())
    status, stderr, _ = signal_until_exit(
        stopped, [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGTERM])
    assert status == 75, stderr
    assert continue_command(stderr, 75) == ["search", "--resume", "stopped"]
    states = [torch.load(tmp_path / f"stopped/seed-{seed}/checkpoint.pt", weights_only=False)
              for seed in (1, 2)]
    assert states[0]["epoch"] == states[1]["epoch"] >= 1
    assert states[0]["step"] == states[1]["step"]
    resumed = attdarts(continue_command(stderr, 75), tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[1][-3000:]
    assert whole.wait(timeout=600) == 0, whole.communicate()[1][-3000:]
    for seed in (1, 2):
        same_search_files(tmp_path / f"stopped/seed-{seed}", tmp_path / f"whole/seed-{seed}")


@pytest.mark.slow
def test_ctrl_c_twice_to_a_search_process_group(tmp_path):
    """Ctrl-C as a terminal sends it (to the process group), again and again: exit status 130,
    the line says how to continue, and the resumed search writes the files of an uninterrupted
    one."""
    (tmp_path / "tiny.geno").write_text(TINY_SPACE)
    command = ["search", "tiny.geno", "--epochs", "3", "--max-steps-per-epoch", "6",
               *TINY_SEARCH]
    whole = attdarts(command + ["--out", "whole"], tmp_path)
    stopped = attdarts(command + ["--out", "stopped"], tmp_path, start_new_session=True)
    wait_for(stopped, lambda: (tmp_path / "stopped/genotype-epoch001.geno").exists())
    status, stderr, _ = signal_until_exit(stopped, [signal.SIGINT, signal.SIGINT], group=True,
                                          interval=0.05)
    assert status == 130, stderr
    assert continue_command(stderr, 130) == ["search", "--resume", "stopped"]
    resumed = attdarts(continue_command(stderr, 130), tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[1][-3000:]
    assert whole.wait(timeout=600) == 0, whole.communicate()[1][-3000:]
    same_search_files(tmp_path / "stopped", tmp_path / "whole")


@pytest.mark.slow
def test_signals_to_train_repeats_continue_every_seed(tmp_path):
    """`train --repeats 2` stopped in its first seed by SIGUSR1 (then SIGTERM again and
    again): exit status 75 and a line giving the same command with the --out it chose; that
    command trains the stopped seed to the end and the next one, as an uninterrupted run."""
    command = ["train", *TINY_TRAIN, "--epochs", "3", "--max-steps-per-epoch", "8",
               "--repeats", "2"]
    whole = attdarts(command + ["--out", "whole"], tmp_path)
    stopped = attdarts(command, tmp_path)  # the default run directory runs/GENOTYPE-...
    wait_for(stopped, lambda: any(lines(path) for path in
                                  tmp_path.glob("runs/*/seed-3/metrics.jsonl")))
    status, stderr, _ = signal_until_exit(stopped, [signal.SIGUSR1, signal.SIGTERM])
    assert status == 75, stderr
    out = next((tmp_path / "runs").iterdir()).relative_to(tmp_path)
    assert continue_command(stderr, 75) == command + ["--out", str(out)]
    assert not (tmp_path / out / "seed-4").exists()
    resumed = attdarts(continue_command(stderr, 75), tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[1][-3000:]
    assert whole.wait(timeout=600) == 0, whole.communicate()[1][-3000:]
    for seed in (3, 4):
        assert metrics(tmp_path / out / f"seed-{seed}") == metrics(tmp_path / f"whole/seed-{seed}")


@pytest.mark.slow
def test_a_process_group_sigterm_with_loader_workers(tmp_path):
    """Slurm signals every process of the job: ImageNet's loader workers get the SIGTERM too.
    They ignore it; the training saves last.pt, exits 75 with nothing else on stderr, and
    resumes to the end. (The worker processes' augmentation streams are not part of last.pt,
    so the resumed epochs are not compared with an uninterrupted run.)"""
    write_imagenet(tmp_path / "imagenet")
    command = ["train", str(DARTS_V2), "--dataset", "imagenet", "--data-dir", "imagenet",
               "--workers", "2", "--channels", "4", "--layers", "5", "--batch-size", "4",
               "--epochs", "2", "--max-steps-per-epoch", "6", "--device", "cpu", "--threads",
               "1", "--quiet", "--out", "run"]
    stopped = attdarts(command, tmp_path, start_new_session=True)
    wait_for(stopped, lambda: lines(tmp_path / "run/metrics.jsonl") == 1)
    status, stderr, _ = signal_until_exit(stopped, [signal.SIGTERM], group=True)
    assert status == 75, stderr
    assert stderr.strip().splitlines()[-1].startswith("attdarts: stopped by SIGTERM in epoch 2")
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr, stderr
    assert continue_command(stderr, 75) == ["train", "--resume", "run"]
    resumed = attdarts(["train", "--resume", "run", "--device", "cpu", "--quiet"], tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[1][-3000:]
    assert lines(tmp_path / "run/metrics.jsonl") == 2


@pytest.mark.slow
@pytest.mark.parametrize("command, checkpoint", [
    (["search", "tiny.geno", "--epochs", "1", "--max-steps-per-epoch", "3", *TINY_SEARCH],
     "checkpoint.pt"),
    (["train", *TINY_TRAIN, "--epochs", "1", "--max-steps-per-epoch", "3"], "last.pt"),
])
def test_a_sigterm_while_compiling_ends_the_run_within_seconds(tmp_path, monkeypatch, command,
                                                               checkpoint):
    """`--compile`: the first step compiles the cells with inductor (minutes on a CPU) and
    Slurm's SIGKILL follows its SIGTERM after 30 s. The run saves its checkpoint before that
    step; SIGTERM to the process group (compile workers included) during the compile ends it
    at that checkpoint with exit status 75 within seconds, and it resumes (here with the cells
    left eager, to keep the test short)."""
    (tmp_path / "tiny.geno").write_text(TINY_SPACE)
    stopped = attdarts(command + ["--compile", "--out", "run"], tmp_path, start_new_session=True,
                       env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})  # no cache
    wait_for(stopped, lambda: (tmp_path / "run" / checkpoint).exists())
    time.sleep(3)  # well into the compilation
    status, stderr, seconds = signal_until_exit(stopped, [signal.SIGTERM], group=True)
    assert status == 75, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith(
        "attdarts: stopped by SIGTERM in epoch 1 after step 0")
    assert seconds < 30, seconds
    monkeypatch.chdir(tmp_path)
    if command[0] == "search":
        monkeypatch.setattr(search_loop, "compile_cells", lambda model: model)
        search.resume_search("run", device="cpu")
    else:
        monkeypatch.setattr(train_loop, "compile_cells", lambda model: model)
        train.launch(None, {}, resume="run", device="cpu")
    assert lines(tmp_path / "run" / "metrics.jsonl") == 1
