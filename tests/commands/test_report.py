"""`attdarts report` and `attdarts train --repeats` (issue 15, item 5): results over seeds.

The arithmetic is checked on hand-written run directories against the formulas written out here
(sample std: n - 1 in the denominator; population: n); the real runs are tiny (synthetic data,
one epoch, two steps, C=4, L=3).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.tools import report as reporting

ROOT = Path(__file__).resolve().parents[2]
DARTS_V2 = (ROOT / "genotypes" / "darts_v2.geno").read_text()
DARTS_V1 = (ROOT / "genotypes" / "darts_v1.geno").read_text()


def _training(path: Path, seed: int, top1: list[float], *, epochs: int | None = None,
              genotype: str = DARTS_V2, parameters: int = 3_349_342) -> Path:
    path.mkdir(parents=True)
    config = {"dataset": "cifar10", "seed": seed, "epochs": epochs or len(top1), "channels": 36,
              "layers": 20, "parameters": parameters, "synthetic": False}
    (path / "config.json").write_text(json.dumps(config))
    (path / "genotype.geno").write_text(genotype)
    (path / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": epoch + 1, "test_top1": value}) + "\n"
        for epoch, value in enumerate(top1)))
    return path


def _search(path: Path, seed: int, accuracy: list[float], genotype: str) -> Path:
    path.mkdir(parents=True)
    config = {"space_file": "/somewhere/att_darts.geno", "space": None, "dataset": "cifar10",
              "seed": seed, "epochs": len(accuracy)}
    (path / "config.json").write_text(json.dumps(config))
    (path / "space.geno").write_text("space s {}\n")
    (path / "genotype.geno").write_text(genotype)
    (path / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": epoch + 1, "val_accuracy": value}) + "\n"
        for epoch, value in enumerate(accuracy)))
    return path


def _report(*args):
    return CliRunner().invoke(cli, ["report", *map(str, args)])


def _by_hand(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std and population std, written out."""
    n = len(values)
    mean = sum(values) / n
    squares = sum((value - mean) ** 2 for value in values)
    return mean, math.sqrt(squares / (n - 1)), math.sqrt(squares / n)


def test_training_runs_give_mean_sample_std_and_best_of_n(tmp_path):
    # final test top-1 per seed; the best epoch of seed 1 is not its last
    finals = [97.44, 97.36, 97.28, 97.36]
    for seed, final in enumerate(finals):
        history = [90.0, 97.50 if seed == 1 else 91.0, final]
        _training(tmp_path / "runs" / f"seed-{seed}", seed, history)
    errors = [100.0 - value for value in finals]
    mean, sample, population = _by_hand(errors)

    result = _report(tmp_path / "runs", "--format", "json", "--no-mult-adds")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)["trainings"]
    assert entry["runs"] == 4 and entry["unfinished"] == 0
    assert entry["test_error_mean"] == pytest.approx(mean)
    assert entry["test_error_std"] == pytest.approx(sample)
    assert entry["test_error_best"] == pytest.approx(min(errors))
    assert entry["parameters"] == 3_349_342
    seed_1 = entry["per_run"][1]
    assert seed_1["best_epoch"] == 2 and seed_1["best_error"] == pytest.approx(2.5)

    population_run = json.loads(_report(tmp_path / "runs", "--format", "json", "--std",
                                        "population", "--no-mult-adds").output)
    assert population_run["trainings"][0]["test_error_std"] == pytest.approx(population)

    markdown = _report(tmp_path / "runs", "--no-mult-adds").output
    row = f"| darts_v2 | cifar10 | 36 | 20 | 4 | {mean:.2f} +- {sample:.2f} | 2.56 | 3.35 M | - |"
    assert row in markdown.splitlines()
    assert "sample standard deviation" in markdown and "n - 1" in markdown
    assert row in (ROOT / "README.md").read_text().splitlines()  # README's example


def test_one_run_has_no_sample_std_and_shows_the_mean_alone():
    assert reporting.spread([2.5]) == (2.5, None)
    assert reporting.spread([2.5], "population") == (2.5, 0.0)
    assert reporting.plus_minus(2.5, None) == "2.50"
    assert reporting.plus_minus(2.6449, 0.0751) == "2.64 +- 0.08"
    with pytest.raises(ValueError, match="std must be one of"):
        reporting.spread([1.0, 2.0], "biased")


def test_runs_group_by_cells_and_unfinished_runs_are_flagged(tmp_path):
    _training(tmp_path / "a", 0, [97.0])
    _training(tmp_path / "b", 1, [96.0], genotype=DARTS_V1, parameters=3_169_414)
    _training(tmp_path / "c", 2, [95.0], epochs=600)  # stopped after 1 of 600 epochs
    summary = json.loads(_report(tmp_path / "a", tmp_path / "b", tmp_path / "c", "--format",
                                 "json", "--no-mult-adds").output)
    # a and c share cells but not the planned epochs; b has other cells
    assert [(e["genotype"], e["runs"], e["epochs"]) for e in summary["trainings"]] == [
        ("darts_v2", 1, 1), ("darts_v1", 1, 1), ("darts_v2", 1, 600)]
    assert summary["trainings"][2]["unfinished"] == 1
    markdown = _report(tmp_path / "c", "--no-mult-adds").output
    assert "1/600" in markdown and "has not finished" in markdown


def test_a_parent_folder_lists_seed_directories_in_numeric_order(tmp_path):
    for seed in (10, 9, 2):
        _training(tmp_path / "out" / f"seed-{seed}", seed, [97.0])
    runs = reporting.find_runs([tmp_path / "out"])
    assert [path.name for path in runs] == ["seed-2", "seed-9", "seed-10"]
    # two levels deep too (OUT/NAME/seed-K), and a run named twice counts once
    assert len(reporting.find_runs([tmp_path, tmp_path / "out" / "seed-2"])) == 3


def test_searches_give_per_seed_genotypes_and_accuracy(tmp_path):
    # written as attdarts wrote searches before their accuracies became percentages: fractions,
    # without the "accuracy_unit" marker (tests/runs/test_units.py has the new kind and a mix)
    _search(tmp_path / "s" / "seed-1", 1, [0.5, 0.80], DARTS_V2)
    _search(tmp_path / "s" / "seed-2", 2, [0.5, 0.90], DARTS_V1)
    _search(tmp_path / "s" / "seed-3", 3, [0.5, 0.70], DARTS_V2)
    summary = json.loads(_report(tmp_path / "s", "--format", "json").output)
    (entry,) = summary["searches"]
    mean, sample, _ = _by_hand([80.0, 90.0, 70.0])
    assert entry["space"] == "att_darts" and entry["seeds"] == 3
    assert entry["accuracy_mean"] == pytest.approx(mean)
    assert entry["accuracy_std"] == pytest.approx(sample)
    assert entry["accuracy_best"] == pytest.approx(90.0)
    assert entry["distinct_genotypes"] == 2
    assert [run["same_cells_as"] for run in entry["per_run"]] == [[3], [], [1]]
    assert entry["per_run"][0]["cells"]["normal"].startswith("n0 = sep_conv_3x3(c_k2)")
    markdown = _report(tmp_path / "s").output
    assert f"| att_darts | cifar10 | 3 | {mean:.2f} +- {sample:.2f} | 90.00 | 2 |" in markdown


def test_directories_that_are_not_runs_are_refused_cleanly(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _report(tmp_path / "empty")
    assert result.exit_code == 1
    assert "not a run directory" in result.output and "Traceback" not in result.output
    result = _report(tmp_path / "missing")
    assert result.exit_code == 1 and "no such directory" in result.output
    broken = _training(tmp_path / "broken", 0, [97.0])
    (broken / "config.json").write_text("{not json")
    result = _report(broken)
    assert result.exit_code == 1 and "config.json: cannot read it as JSON" in result.output
    assert _report().exit_code == 2  # RUN_DIRS is required


def test_a_truncated_last_metrics_line_is_left_out(tmp_path):
    run = _training(tmp_path / "r", 0, [96.0, 97.0])
    with open(run / "metrics.jsonl", "a") as file:
        file.write('{"epoch": 3, "test_to')  # the run is writing its next epoch
    (entry,) = json.loads(_report(run, "--format", "json").output)["trainings"]
    assert entry["per_run"][0]["epochs"] == 2 and entry["test_error_mean"] == pytest.approx(3.0)


TINY = ["--dataset", "synthetic", "--epochs", "1", "--channels", "4", "--layers", "3",
        "--batch-size", "4", "--max-steps-per-epoch", "2", "--device", "cpu", "--quiet"]


@pytest.mark.slow
def test_train_repeats_trains_seeds_into_a_folder_and_reports_them(tmp_path, one_thread):
    out = tmp_path / "repeats"
    args = ["train", str(ROOT / "genotypes" / "darts_v2.geno"), *TINY, "--seed", "3",
            "--repeats", "2", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == ["seed-3", "seed-4"]
    for seed in (3, 4):
        config = json.loads((out / f"seed-{seed}" / "config.json").read_text())
        assert config["seed"] == seed and (out / f"seed-{seed}" / "last.pt").is_file()
    finals = [json.loads((out / f"seed-{seed}" / "metrics.jsonl").read_text())["test_top1"]
              for seed in (3, 4)]
    mean, sample, _ = _by_hand([100.0 - value for value in finals])
    assert f"{mean:.2f} +- {sample:.2f}" in result.output and "| darts_v2 | synthetic |" in result.output

    # the report counts the networks' multiply-adds from their checkpoints
    (entry,) = json.loads(_report(out, "--format", "json").output)["trainings"]
    assert entry["mult_adds"] > 0 and entry["parameters"] == config["parameters"]

    # the same command again continues (here: finds both seeds done) and reports the same
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert f"{mean:.2f} +- {sample:.2f}" in again.output
    changed = CliRunner().invoke(cli, [*args, "--lr", "0.1"])
    assert changed.exit_code == 2 and "--lr cannot change when resuming" in changed.output
    resumed = CliRunner().invoke(cli, [*args, "--resume", str(out / "seed-3")])
    assert resumed.exit_code == 2 and "run the same command again" in resumed.output


@pytest.mark.slow
def test_report_reads_a_real_multi_seed_search(tmp_path, one_thread):
    import attdarts

    results = attdarts.search("darts", out=tmp_path / "search", seeds=[1, 2], dataset="synthetic",
                              epochs=1, channels=4, layers=3, batch_size=4,
                              max_steps_per_epoch=2, device="cpu")
    (entry,) = json.loads(_report(tmp_path / "search", "--format", "json").output)["searches"]
    assert entry["seeds"] == 2 and entry["space"] == "darts"
    assert [run["seed"] for run in entry["per_run"]] == [1, 2]
    assert entry["accuracy_mean"] == pytest.approx(
        sum(result.metrics["val_accuracy"] for result in results) / 2)  # both in percent
