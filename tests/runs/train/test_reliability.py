"""Issue #11, train items: capped evaluation (5), NaN stop (6), absolute dataset paths (8),
foreign checkpoints on resume (9), the per-epoch progress bar (18), --threads (19) and synthetic
labels (20). Networks are C=4, L=2 (two reduction cells) and runs take one or two steps per
epoch."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from attdarts.runs import checkpoints as checkpoint
from attdarts.runs import data
from attdarts.runs import train
from attdarts.runs.train import loop
from attdarts.runs.train import outputs as train_outputs
from attdarts.runs.checkpoints import CheckpointError
from attdarts.cli import cli
from attdarts.language.transform import parse_file

ROOT = Path(__file__).resolve().parents[3]
DARTS_V2 = ROOT / "genotypes" / "darts_v2.geno"
DARTS_V1 = ROOT / "genotypes" / "darts_v1.geno"
SMALL = ["--channels", "4", "--layers", "3", "--batch-size", "4", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTDARTS_CACHE", str(tmp_path / "cache"))


def write_folder(root: Path, *, train_per_class: int = 4, test_per_class: int = 8,
                 classes=("a", "b")) -> Path:
    """A 32x32 PNG ImageFolder; the test split is stored class by class (as ImageFolder lists it)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(array).save(root / split / name / f"{index:03d}.png")
    return root


def small_config(**overrides) -> train.TrainConfig:
    settings = dict(channels=4, layers=3, epochs=1, batch_size=4, max_steps_per_epoch=1)
    settings.update(overrides)
    return train.TrainConfig.recipe(settings.pop("dataset", "synthetic"), **settings)


def run_cli(*arguments: str):
    return CliRunner().invoke(cli, [str(a) for a in arguments])


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# --- 5: a capped evaluation scores a fixed random subset, and says how many images ----------


def test_capped_evaluation_is_a_seeded_random_subset_of_both_classes(tmp_path):
    folder = write_folder(tmp_path / "pngs")
    loader, _ = data.make_loader(f"folder:{folder}", None, train=False, batch_size=4,
                                 device="cpu", max_batches=2, seed=0)
    labels = torch.cat([batch_labels for _, batch_labels in loader])
    assert labels.numel() == 8
    assert set(labels.tolist()) == {0, 1}  # the first 8 images are all class 'a'
    loader.set_epoch(5)  # the same subset in every epoch
    assert torch.equal(torch.cat([b for _, b in loader]), labels)
    again, _ = data.make_loader(f"folder:{folder}", None, train=False, batch_size=4,
                                device="cpu", max_batches=2, seed=0)
    assert torch.equal(again.labels, loader.labels)
    uncapped, _ = data.make_loader(f"folder:{folder}", None, train=False, batch_size=4,
                                   device="cpu")
    assert len(uncapped) == 4 and uncapped.num_samples == 16


def test_every_report_says_how_many_test_images_it_scored(tmp_path, caplog):
    folder = write_folder(tmp_path / "pngs")
    run = tmp_path / "run"
    result = run_cli("train", DARTS_V2, "--dataset", f"folder:{folder}", *SMALL, "--epochs", "2",
                     "--max-steps-per-epoch", "2", "--out", run)
    assert result.exit_code == 0, result.output
    assert "on 8 test images" in result.output
    assert [r["test_images"] for r in read_metrics(run)] == [8, 8]
    assert json.loads((run / "summary.json").read_text())["test_images"] == 8
    scored = run_cli("test", run / "best.pt", "--device", "cpu", "--json")
    assert json.loads(scored.output)["test_images"] == 16  # `test` scores the whole split
    text = run_cli("test", run / "best.pt", "--device", "cpu")
    assert "(16 test images)" in text.output


# --- 6: NaN stops the run, keeping the last good checkpoint -------------------------------


def _finite(path: Path) -> bool:
    state = checkpoint.load(path)
    return all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_a_diverging_run_stops_with_a_clean_error(tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", DARTS_V2, "--dataset", "synthetic", *SMALL, "--epochs", "3",
                     "--max-steps-per-epoch", "2", "--lr", "1e6", "--out", run)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "NaN or infinite in epoch" in error[0]
    assert "--lr" in error[0] and "1e+06" in error[0]
    saved = [name for name in ("last.pt", "best.pt") if (run / name).exists()]
    assert all(_finite(run / name) for name in saved)
    if saved:  # the epochs before the divergence, and nothing of the diverged one
        epoch = checkpoint.load(run / "last.pt")["epoch"]
        assert [r["epoch"] for r in read_metrics(run)] == list(range(1, epoch + 1))


def test_nan_in_epoch_two_keeps_epoch_one(tmp_path, monkeypatch):
    original = loop.train_epoch
    calls = []

    def poisoned(model, *args, **kwargs):
        totals = original(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return totals

    monkeypatch.setattr(loop, "train_epoch", poisoned)
    run = tmp_path / "run"
    with pytest.raises(train.TrainError, match=r"epoch 2; stopped \(epoch 1 is kept in"):
        train.run_training(small_config(epochs=3), parse_file(DARTS_V2).genotype(), run_dir=run,
                           device="cpu")
    assert checkpoint.load(run / "last.pt")["epoch"] == 1
    assert _finite(run / "last.pt") and _finite(run / "best.pt")
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    assert not (run / "summary.json").exists()


# --- 8: runs record absolute dataset paths; missing data names the option -----------------


def test_test_works_from_another_directory_and_names_the_option_when_data_moved(
        tmp_path, monkeypatch):
    work = tmp_path / "work"
    write_folder(work / "images")
    monkeypatch.chdir(work)
    result = run_cli("train", DARTS_V2, "--dataset", "folder:images", *SMALL, "--epochs", "1",
                     "--max-steps-per-epoch", "1", "--out", "run", "--quiet")
    assert result.exit_code == 0, result.output
    config = json.loads((work / "run" / "config.json").read_text())
    assert config["dataset"] == f"folder:{work / 'images'}"
    assert checkpoint.load(work / "run" / "best.pt")["config"]["dataset"] == config["dataset"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    scored = run_cli("test", "../work/run/best.pt", "--device", "cpu", "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["test_images"] == 16
    (work / "images").rename(tmp_path / "moved")
    missing = run_cli("test", "../work/run/best.pt", "--device", "cpu")
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert "pass --dataset folder:PATH" in missing.output
    moved = run_cli("test", "../work/run/best.pt", "--device", "cpu", "--dataset",
                    f"folder:{tmp_path / 'moved'}")
    assert moved.exit_code == 0, moved.output


def test_cifar_default_data_dir_is_recorded_absolute(tmp_path, monkeypatch):
    from helpers import write_cifar10

    work = tmp_path / "work"
    write_cifar10(work / "data")
    monkeypatch.chdir(work)
    result = run_cli("train", DARTS_V2, "--dataset", "cifar10", *SMALL, "--epochs", "1",
                     "--max-steps-per-epoch", "1", "--out", "run", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((work / "run" / "config.json").read_text())["data_dir"] == str(work / "data")
    monkeypatch.chdir(tmp_path)
    assert run_cli("test", "work/run/best.pt", "--device", "cpu").exit_code == 0
    monkeypatch.setattr("attdarts.runs.data.datasets._download_cifar", lambda *a, **k: None)  # offline
    shutil.rmtree(work / "data")
    missing = run_cli("test", "work/run/best.pt", "--device", "cpu")
    assert missing.exit_code == 1 and "pass --data-dir DIR" in missing.output
    assert "Traceback" not in missing.output


# --- 9: resume refuses a checkpoint of another run, touching nothing ----------------------


@pytest.fixture
def two_epoch_run(tmp_path) -> Path:
    run = tmp_path / "run"
    train.run_training(small_config(epochs=2), parse_file(DARTS_V2).genotype(), run_dir=run,
                       device="cpu")
    return run


@pytest.mark.parametrize("foreign", ["other genotype", "other seed", "older checkpoint"])
def test_resume_refuses_a_foreign_checkpoint_and_touches_nothing(two_epoch_run, tmp_path,
                                                                  foreign):
    run = two_epoch_run
    if foreign == "older checkpoint":  # as if this run's epoch-1 last.pt had been put back
        state = checkpoint.load(run / "last.pt")
        state.update(epoch=1, history=state["history"][:1])
        checkpoint.save(tmp_path / "donor.pt", state)
    else:
        genotype = DARTS_V1 if foreign == "other genotype" else DARTS_V2
        seed = 1 if foreign == "other seed" else 0
        train.run_training(small_config(epochs=3, seed=seed), parse_file(genotype).genotype(),
                           run_dir=tmp_path / "other", device="cpu")
        shutil.copy(tmp_path / "other" / "last.pt", tmp_path / "donor.pt")
    shutil.copy(tmp_path / "donor.pt", run / "last.pt")
    before = snapshot(run)
    result = run_cli("train", "--resume", run, "--device", "cpu", "--quiet")
    assert result.exit_code == 1, result.output
    assert "does not belong to the run in" in result.output and "Traceback" not in result.output
    assert "nothing was changed" in result.output
    assert snapshot(run) == before
    with pytest.raises(CheckpointError, match="does not belong|written for genotype 'darts_v1'"):
        train.run_training(small_config(epochs=3), parse_file(DARTS_V2).genotype(), run_dir=run,
                           device="cpu", resume=True)
    assert snapshot(run) == before


# --- 18: one progress bar per epoch, with this epoch's running numbers ---------------------


def test_progress_bar_counts_one_epoch_and_shows_its_running_numbers():
    stream = io.StringIO()
    progress = train_outputs.EpochProgress(3, file=stream)
    progress.start(1, 2)
    assert progress.bar.total == 2 and progress.bar.desc == "epoch 2/3"
    progress.step(0, torch.tensor([10.0, 0.0], dtype=torch.float64), 4)
    assert "loss" not in str(progress.bar.postfix)  # no device read before POSTFIX_EVERY steps
    progress.step(1, torch.tensor([6.0, 6.0], dtype=torch.float64), 8)  # the last step
    assert set(progress.bar.postfix.split(", ")) == {"loss=0.750", "acc=75.0%"}
    assert progress.bar.n == 2
    progress.close()


def test_training_draws_a_bar_per_epoch_on_stderr(tmp_path, capsys):
    train.run_training(small_config(epochs=2, max_steps_per_epoch=2),
                       parse_file(DARTS_V2).genotype(), run_dir=tmp_path / "run", device="cpu",
                       progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err
    assert "/2 [" in err and "/4 [" not in err  # each bar counts its own epoch's 2 steps


def test_cli_shows_no_bar_when_stderr_is_not_a_terminal(tmp_path):
    result = run_cli("train", DARTS_V2, "--dataset", "synthetic", *SMALL, "--epochs", "1",
                     "--max-steps-per-epoch", "1", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "step/s" not in result.output and "s/step" not in result.output


# --- 19: --threads ----------------------------------------------------------------------


def test_threads_option_sets_torch_threads_for_train_and_test(tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", DARTS_V2, "--dataset", "synthetic", *SMALL, "--epochs", "1",
                     "--max-steps-per-epoch", "1", "--out", run, "--threads", "2", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["threads"] == 2
    torch.set_num_threads(1)
    assert run_cli("test", run / "best.pt", "--device", "cpu", "--threads", "3").exit_code == 0
    assert torch.get_num_threads() == 3
    bad = run_cli("train", DARTS_V2, "--threads", "0", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "--threads" in bad.output


# --- 20: synthetic runs say so everywhere -----------------------------------------------


def test_every_output_of_a_synthetic_run_says_synthetic(tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", DARTS_V2, "--dataset", "synthetic", *SMALL, "--epochs", "2",
                     "--max-steps-per-epoch", "1", "--out", run)
    assert result.exit_code == 0, result.output
    final = result.output.strip().splitlines()[-1]
    assert final.startswith(str(run)) and "[synthetic data]" in final
    epoch_lines = [line for line in result.output.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all("[synthetic data]" in line for line in epoch_lines)
    assert all(record["synthetic"] is True for record in read_metrics(run))
    assert json.loads((run / "summary.json").read_text())["synthetic"] is True
    assert json.loads((run / "config.json").read_text())["synthetic"] is True
    for name in ("last.pt", "best.pt"):
        state = checkpoint.load(run / name)
        assert state["synthetic"] is True
        assert all(record["synthetic"] is True for record in state["history"])
    assert json.loads(run_cli("test", run / "best.pt", "--device", "cpu", "--json").output)[
        "synthetic"] is True
    assert "[synthetic data]" in run_cli("test", run / "best.pt", "--device", "cpu").output


def test_real_data_records_say_not_synthetic(tmp_path):
    folder = write_folder(tmp_path / "pngs")
    result = train.run_training(small_config(dataset=f"folder:{folder}"),
                                parse_file(DARTS_V2).genotype(), run_dir=tmp_path / "run",
                                device="cpu")
    assert result.synthetic is False
    assert [record["synthetic"] for record in read_metrics(tmp_path / "run")] == [False]
