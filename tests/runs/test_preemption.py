"""Pre-emption (attdarts/runs/preemption.py): SIGTERM / SIGUSR1 stop a run at the next step with a
checkpoint, exit status 75, and `--resume` gives what an uninterrupted run gives.

The in-process tests send the real signal to this process from inside a step (`os.kill`), so the
handler, the flag and the step boundary are the real ones; the slow test signals a CLI process.
Tiny runs on random data, deterministic kernels, float32 (the files must match byte for byte).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language.transform import parse_file
from attdarts.runs import checkpoints, data, preemption, search, train
from attdarts.runs.search import bilevel as bilevel_module
from attdarts.runs.train import steps as train_steps
from helpers import TINY_SPACE, metrics_without_timings as metrics

ROOT = Path(__file__).resolve().parents[2]
DARTS_V2 = ROOT / "genotypes" / "darts_v2.geno"
SEARCH_FILES = ("genotype-epoch001.geno", "genotype-epoch002.geno", "genotype.geno",
                "weights.jsonl")

pytestmark = pytest.mark.usefixtures("one_thread")


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


def handlers() -> dict:
    return {number: signal.getsignal(number) for number in preemption.SIGNALS}


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
    state = checkpoints.load(tmp_path / "stopped" / "last.pt")
    assert state["epoch"] in (1, 2) and state["partial"]["step"] >= 1
    subprocess.run([sys.executable, "-m", "attdarts.cli", "train", "--resume",
                    str(tmp_path / "stopped"), "--device", "cpu", "--quiet"], env=env, check=True,
                   capture_output=True, timeout=300)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-3000:]
    assert metrics(tmp_path / "stopped") == metrics(tmp_path / "whole")
