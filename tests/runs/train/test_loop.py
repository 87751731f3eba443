"""The evaluation training loop, its run directory, resuming, checkpoints and the CLI.

Networks are tiny (C=8, L=5) and runs take a couple of steps; the point is the plumbing.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from attdarts.runs import checkpoints as checkpoint
from attdarts.runs import data
from attdarts.runs import train
from attdarts.runs.train import outputs as train_outputs
from attdarts.runs.checkpoints import CheckpointError
from attdarts.cli import cli
from helpers import write_cifar10
from attdarts.language.transform import parse_file

ROOT = Path(__file__).resolve().parents[3]
DARTS_V2 = ROOT / "genotypes" / "darts_v2.geno"
ATT_DARTS = ROOT / "genotypes" / "att_darts.geno"
TINY = ["--channels", "8", "--layers", "5"]
TIMING_KEYS = ("seconds", "images_per_s")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """ImageFolder decodes are cached per test, never in the user's cache."""
    monkeypatch.setenv("ATTDARTS_CACHE", str(tmp_path / "cache"))


def write_pngs(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 3)):
        for name in ("ant", "bee", "cow"):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(array).save(root / split / name / f"{index}.png")
    return root


def tiny_config(**overrides) -> train.TrainConfig:
    settings = dict(channels=8, layers=5, epochs=1, batch_size=8, max_steps_per_epoch=2)
    settings.update(overrides)
    dataset = settings.pop("dataset", "synthetic")
    return train.TrainConfig.recipe(dataset, **settings)


def genotype(path: Path = DARTS_V2):
    return parse_file(path).genotype()


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in records]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


# --- configuration --------------------------------------------------------------------------


def test_defaults_are_the_papers_cifar_recipe():
    config = train.TrainConfig()
    assert (config.epochs, config.batch_size, config.channels, config.layers) == (600, 96, 36, 20)
    assert (config.lr, config.lr_min, config.lr_schedule) == (0.025, 0.0, "cosine")
    assert (config.momentum, config.weight_decay, config.grad_clip) == (0.9, 3e-4, 5.0)
    assert (config.cutout, config.drop_path_prob, config.auxiliary_weight) == (16, 0.2, 0.4)
    assert config.auxiliary and config.amp is None and not config.channels_last
    assert config.drop_path_rule == "darts"  # README's default, DARTS's rule
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        config.lr = 1.0


def test_imagenet_recipe_is_dartss():
    config = train.TrainConfig.recipe("imagenet")
    assert (config.epochs, config.batch_size, config.channels, config.layers) == (250, 128, 48, 14)
    assert (config.lr, config.weight_decay, config.label_smoothing) == (0.1, 3e-5, 0.1)
    assert (config.lr_schedule, config.lr_gamma) == ("exponential", 0.97)
    assert train.TrainConfig.recipe("imagenet", lr=0.5).lr == 0.5


def test_invalid_settings_are_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="greater than 0"):
        train.TrainConfig(lr=-0.1)
    with pytest.raises(ValidationError, match="unknown dataset 'mnist'"):
        train.TrainConfig(dataset="mnist")


def test_schedules_match_the_recipes():
    model = torch.nn.Linear(2, 2)
    config = train.TrainConfig(epochs=10)
    optimizer = train.make_optimizer(model, config)
    scheduler = train.make_scheduler(optimizer, config)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.025 * (1 + np.cos(np.pi * e / 10)) / 2 for e in range(10)]
    assert rates == pytest.approx(expected)
    config = train.TrainConfig.recipe("imagenet")
    optimizer = train.make_optimizer(model, config)
    scheduler = train.make_scheduler(optimizer, config)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.97**2)


# --- training -------------------------------------------------------------------------------


def test_trains_on_cifar_files(tmp_path):
    data_dir = write_cifar10(tmp_path / "data")
    config = tiny_config(dataset="cifar10", data_dir=str(data_dir), epochs=2)
    result = train.run_training(config, genotype(), run_dir=tmp_path / "run", device="cpu")
    run = tmp_path / "run"
    for name in ("config.json", "genotype.geno", "metrics.jsonl", "last.pt", "best.pt", "summary.json"):
        assert (run / name).is_file(), name
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert set(records[0]) >= {"epoch", "train_loss", "train_acc", "test_loss", "test_top1",
                               "test_top5", "lr", "drop_path_prob", "seconds", "images_per_s"}
    assert records[0]["lr"] == 0.025 and records[1]["lr"] == pytest.approx(0.0125)
    assert records[0]["drop_path_prob"] == 0.0 and records[1]["drop_path_prob"] == pytest.approx(0.1)
    assert all(np.isfinite(r["train_loss"]) for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["parameters"] == result.parameters > 0
    assert summary["last_top1"] == records[-1]["test_top1"] and summary["synthetic"] is False
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert parse_file(run / "genotype.geno").genotype() == genotype()
    state = checkpoint.load(run / "last.pt")
    assert state["epoch"] == 2 and state["kind"] == "attdarts-train"


def test_trains_on_an_image_folder(tmp_path):
    folder = write_pngs(tmp_path / "pngs")
    config = tiny_config(dataset=f"folder:{folder}", batch_size=6)
    result = train.run_training(config, genotype(ATT_DARTS), run_dir=tmp_path / "run", device="cpu")
    assert result.model.classifier.out_features == 3
    assert len(read_metrics(tmp_path / "run")) == 1


def test_a_step_changes_the_weights_and_bf16_runs():
    model = train.build_model(genotype(), {"channels": 8, "layers": 5, "num_classes": 10})
    model.drop_path_prob = 0.2
    config = train.TrainConfig()
    optimizer = train.make_optimizer(model, config)
    before = [p.detach().clone() for p in model.parameters()]
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss, logits = train.train_step(model, optimizer, images, labels, amp="bf16")
    assert torch.isfinite(loss) and logits.shape == (4, 10)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed > len(before) // 2


def test_the_step_asks_for_the_auxiliary_logits_when_their_weight_is_above_zero():
    """The network returns logits alone unless asked; the step asks when the head's loss weight
    is above 0, so the head learns then, and is left alone at weight 0."""
    for weight in (0.4, 0.0):
        torch.manual_seed(0)
        model = train.build_model(genotype(), {"channels": 8, "layers": 5, "num_classes": 10,
                                               "auxiliary": True})
        optimizer = train.make_optimizer(model, train.TrainConfig())
        images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
        with torch.no_grad():
            main = torch.nn.functional.cross_entropy(model(images), labels)
            auxiliary = torch.nn.functional.cross_entropy(model(images, aux=True)[1], labels)
        head = [p.detach().clone() for p in model.auxiliary_head.parameters()]
        loss, _ = train.train_step(model, optimizer, images, labels, auxiliary_weight=weight,
                                   grad_clip=None)
        torch.testing.assert_close(loss, main + weight * auxiliary)
        moved = [not torch.equal(a, b) for a, b in zip(head, model.auxiliary_head.parameters())]
        assert all(moved) if weight else not any(moved)


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoint_round_trip_and_damage(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(path, {"a": torch.arange(3), "genotype": "x", "nested": {"b": [1, 2.5]}})
    state = checkpoint.load(path, expect={"genotype": "x"})
    assert torch.equal(state["a"], torch.arange(3)) and state["nested"] == {"b": [1, 2.5]}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    with pytest.raises(CheckpointError, match="different genotype"):
        checkpoint.load(path, expect={"genotype": "y"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        checkpoint.load(path)
    with pytest.raises(CheckpointError, match="no such"):
        checkpoint.load(tmp_path / "missing.pt")
    checkpoint.atomic_write_text(tmp_path / "t.txt", "hello\n")
    assert (tmp_path / "t.txt").read_text() == "hello\n"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    data_dir = write_cifar10(tmp_path_factory.mktemp("data"))
    torch.set_num_threads(1)
    train.run_training(tiny_config(dataset="cifar10", data_dir=str(data_dir)), genotype(),
                       run_dir=run, device="cpu")
    return run


def test_test_command_scores_a_checkpoint(trained_run):
    result = CliRunner().invoke(cli, ["test", str(trained_run / "best.pt"), "--device", "cpu",
                                      "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["synthetic"] is False and scores["dataset"] == "cifar10"
    assert scores["test_images"] == 8  # the whole test split, not the run's per-epoch cap
    assert 0 <= scores["test_top1"] <= scores["test_top5"] <= 100


def test_test_command_accepts_ddp_prefixed_weights(trained_run, tmp_path):
    state = checkpoint.load(trained_run / "last.pt")
    plain = train.evaluate_checkpoint(trained_run / "last.pt", device="cpu")
    state["model"] = {f"module.{key}": value for key, value in state["model"].items()}
    checkpoint.save(tmp_path / "ddp.pt", state)
    prefixed = train.evaluate_checkpoint(tmp_path / "ddp.pt", device="cpu")
    assert prefixed["test_top1"] == plain["test_top1"] and prefixed["test_loss"] == plain["test_loss"]


def test_truncated_checkpoint_is_a_clean_error(trained_run, tmp_path):
    data = (trained_run / "last.pt").read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 3])
    result = CliRunner().invoke(cli, ["test", str(broken), "--device", "cpu"])
    assert result.exit_code == 1
    assert "truncated or corrupt" in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, CheckpointError)  # handled, not raised
    # resuming from a truncated last.pt is refused the same way
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(data[:1000])
    result = CliRunner().invoke(cli, ["train", "--resume", str(run), "--device", "cpu"])
    assert result.exit_code == 1 and "truncated or corrupt" in result.output
    assert "Traceback" not in result.output


def test_resume_with_another_genotype_is_refused(trained_run, tmp_path):
    result = CliRunner().invoke(cli, ["train", str(ATT_DARTS), "--resume", str(trained_run),
                                      "--device", "cpu"])
    assert result.exit_code == 1
    assert "written for genotype 'darts_v2'" in result.output and "Traceback" not in result.output


def test_resume_refuses_a_changed_recipe(trained_run):
    result = CliRunner().invoke(cli, ["train", "--resume", str(trained_run), "--lr", "0.1",
                                      "--device", "cpu"])
    assert result.exit_code == 2 and "--lr cannot change when resuming" in result.output


# --- CLI validation -------------------------------------------------------------------------


@pytest.mark.parametrize("arguments, message", [
    (["--lr", "-0.5"], "--lr: Input should be greater than 0"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--epochs", "0"], "--epochs: Input should be greater than or equal to 1"),
])
def test_cli_rejects_bad_settings(arguments, message, tmp_path):
    result = CliRunner().invoke(cli, ["train", str(DARTS_V2), *arguments, "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_cli_refuses_to_overwrite_a_run(trained_run):
    result = CliRunner().invoke(cli, ["train", str(DARTS_V2), "--out", str(trained_run)])
    assert result.exit_code == 2 and "--resume" in result.output


def test_cli_missing_cifar_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.setattr("attdarts.runs.data.datasets._download_cifar", lambda *a, **k: None)  # no network here
    result = CliRunner().invoke(cli, ["train", str(DARTS_V2), "--data-dir", str(tmp_path),
                                      "--out", str(tmp_path / "run"), "--device", "cpu", *TINY])
    assert result.exit_code == 1
    assert "cifar-10-batches-py/data_batch_1..5, test_batch" in result.output
    assert "Traceback" not in result.output


# --- resume ----------------------------------------------------------------------------------


class _Crash(Exception):
    pass


def test_resume_after_a_crash_reproduces_the_run(tmp_path, monkeypatch):
    """In-process version of the SIGKILL test below: the run dies right after epoch 1's files."""
    data_dir = write_cifar10(tmp_path / "data")
    config = tiny_config(dataset="cifar10", data_dir=str(data_dir), epochs=3, seed=5)
    train.run_training(config, genotype(), run_dir=tmp_path / "whole", device="cpu")

    original = train_outputs.RunWriter.epoch_done

    def crash_after_first_epoch(self, state, improved):
        original(self, state, improved)
        raise _Crash

    monkeypatch.setattr(train_outputs.RunWriter, "epoch_done", crash_after_first_epoch)
    with pytest.raises(_Crash):
        train.run_training(config, genotype(), run_dir=tmp_path / "crashed", device="cpu")
    monkeypatch.undo()
    assert len(read_metrics(tmp_path / "crashed")) == 1
    result = train.run_training(config, genotype(), run_dir=tmp_path / "crashed", device="cpu",
                                resume=True)
    assert result.history[0]["epoch"] == 1 and len(result.history) == 3
    assert without_timing(read_metrics(tmp_path / "crashed")) == \
        without_timing(read_metrics(tmp_path / "whole"))
    whole = checkpoint.load(tmp_path / "whole" / "last.pt")["model"]
    resumed = checkpoint.load(tmp_path / "crashed" / "last.pt")["model"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


# --- resume after SIGKILL -------------------------------------------------------------------


def _train_command(run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "attdarts.cli", "train", str(DARTS_V2), "--dataset", "cifar10",
            "--data-dir", str(data_dir), "--out", str(run_dir), "--device", "cpu", *TINY,
            "--epochs", "4", "--batch-size", "8", "--max-steps-per-epoch", "2", "--deterministic",
            "--seed", "3", "--quiet", *extra]


# three interpreter starts that import torch (two at once): about 17 s on two idle cores
@pytest.mark.slow
def test_resume_after_sigkill_reproduces_the_run(tmp_path):
    data_dir = write_cifar10(tmp_path / "data")
    env = subprocess_env()
    whole = tmp_path / "whole"
    uninterrupted = subprocess.Popen(_train_command(whole, data_dir), env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command(killed, data_dir), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "last.pt").exists():
        assert process.poll() is None, "the run ended before writing a checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stopped_at = checkpoint.load(killed / "last.pt")["epoch"]
    assert 1 <= stopped_at < 4, "the run finished before it could be killed"

    resume = [sys.executable, "-m", "attdarts.cli", "train", "--resume", str(killed),
              "--device", "cpu", "--quiet"]
    subprocess.run(resume, env=env, check=True, capture_output=True)
    assert uninterrupted.wait() == 0, uninterrupted.stderr.read()[-3000:]
    assert without_timing(read_metrics(killed)) == without_timing(read_metrics(whole))
    assert len(read_metrics(killed)) == 4
    summary = json.loads((killed / "summary.json").read_text())
    assert summary == json.loads((whole / "summary.json").read_text())


# --- data parallel --------------------------------------------------------------------------

DDP_SCRIPT = """
import os, sys, torch
torch.set_num_threads(1)
from attdarts.runs import train
from attdarts.language.transform import parse_file
out = sys.argv[1]
config = train.TrainConfig.recipe("synthetic", channels=8, layers=5, epochs=1, batch_size=8,
                                  max_steps_per_epoch=1)
torch.manual_seed(int(os.environ["RANK"]))  # would desynchronise ranks if DDP did not broadcast
genotype = parse_file(sys.argv[2]).genotype()
result = train.run_training(config, genotype, run_dir=os.path.join(out, "run"), device="cpu")
torch.save({k: v.detach() for k, v in result.model.named_parameters()},
           os.path.join(out, f"rank{os.environ['RANK']}.pt"))
"""


# torchrun plus two processes importing torch: about 13 s on two idle cores
@pytest.mark.slow
def test_ddp_gloo_ranks_hold_identical_parameters(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(script), str(tmp_path), str(DARTS_V2)]
    completed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(data.derive_seed(0, "init"))  # the run's initial weights
    initial = train.build_model(genotype(), {"channels": 8, "layers": 5, "num_classes": 10})
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    moved = sum(not torch.equal(ranks[0][n], p) for n, p in initial.named_parameters())
    assert moved > 0
    assert (tmp_path / "run" / "last.pt").is_file()
    assert len(read_metrics(tmp_path / "run")) == 1


# --- global settings and launch ---------------------------------------------------------------


def test_training_restores_torch_determinism_settings():
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    train.run_training(tiny_config(deterministic=True, max_steps_per_epoch=1), genotype(),
                       run_dir=None, device="cpu")
    after = (torch.are_deterministic_algorithms_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    assert after == before


def test_launch_refuses_two_directories_and_a_taken_run_dir(trained_run, tmp_path):
    with pytest.raises(train.ResumeError, match="different directories"):
        train.launch(None, {}, out=tmp_path / "elsewhere", resume=trained_run, device="cpu")
    with pytest.raises(train.ResumeError, match="already holds a run"):
        train.launch(genotype(), {"dataset": "synthetic"}, out=trained_run, device="cpu")
