"""One unit for accuracy (attdarts.records): percent in new search records, fractions read
correctly from search run directories written before the change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts import records

ROOT = Path(__file__).resolve().parents[2]


def test_marked_records_stay_and_old_ones_are_converted():
    new = {"epoch": 1, "train_accuracy": 12.5, "val_accuracy": 25.0, "accuracy_unit": "%"}
    assert records.in_percent(new) == new
    old = {"epoch": 1, "train_accuracy": 0.125, "val_accuracy": 0.25, "lr": 0.025}
    assert records.in_percent(old) == {"epoch": 1, "train_accuracy": 12.5, "val_accuracy": 25.0,
                                     "lr": 0.025, "accuracy_unit": "%"}
    assert old["val_accuracy"] == 0.25  # the record read is not changed
    # the architecture's warm-up has no val accuracy, in either kind of record
    assert records.in_percent({"val_accuracy": None})["val_accuracy"] is None
    assert records.percent(3, 8) == 37.5 and records.percent(0, 0) is None


def _search_run(path: Path, lines: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(
        {"space_file": "att_darts.geno", "dataset": "cifar10", "seed": 0, "epochs": len(lines)}))
    (path / "space.geno").write_text("space s {}\n")
    (path / "genotype.geno").write_text((ROOT / "genotypes" / "darts_v2.geno").read_text())
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("last", [
    {"epoch": 2, "val_accuracy": 0.4375},  # an old run: fractions
    {"epoch": 2, "val_accuracy": 43.75, "accuracy_unit": "%"},  # resumed after the change
])
def test_report_reads_old_and_new_search_records_in_percent(tmp_path, last):
    run = _search_run(tmp_path / "run", [{"epoch": 1, "val_accuracy": 0.25}, last])
    result = CliRunner().invoke(cli, ["report", str(run), "--format", "json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)["searches"]
    assert entry["accuracy_mean"] == pytest.approx(43.75)
    assert entry["per_run"][0]["accuracy"] == pytest.approx(43.75)
    markdown = CliRunner().invoke(cli, ["report", str(run)]).output
    assert "| 43.75 |" in markdown


def test_json_lines_as_the_tools_read_them(tmp_path):
    """One reader for metrics.jsonl and weights.jsonl in the tools (report page, run tables,
    budget figure): bad lines and non-objects skipped, one record per epoch, the last kept."""
    from attdarts.records import by_epoch, json_objects

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "a": 1}\n\n[1, 2]\n{"epoch": 1e999}\n{"epoch": "x"}\n'
                    '{"a": 3}\n{"epoch": 2}\n{"epoch": 1, "a": 2}\n{"epoch": 3, "a"')
    records = json_objects(path)
    assert records == [{"epoch": 1, "a": 1}, {"epoch": float("inf")}, {"epoch": "x"}, {"a": 3},
                       {"epoch": 2}, {"epoch": 1, "a": 2}]
    assert by_epoch(records) == {1: {"epoch": 1, "a": 2}, 2: {"epoch": 2}}
    assert json_objects(tmp_path / "missing.jsonl") == []
    path.write_bytes(b'{"epoch": 1}\n\xff\n')  # not UTF-8: nothing, as an unreadable file
    assert json_objects(path) == []


def test_the_budget_figure_reads_a_damaged_metrics_file_without_a_traceback(tmp_path):
    from attdarts.tools.plot_budget import read_budget

    (tmp_path / "metrics.jsonl").write_bytes(b'{"epoch": 1}\n\xff\n')
    assert read_budget(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1e999, "budget_target_multiply_adds": 5}\n')
    assert read_budget(tmp_path) is None
