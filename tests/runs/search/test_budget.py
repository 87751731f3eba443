"""`attdarts derive` on a search run directory (`attdarts.runs.search.budget`), end to end, and
the command lines of `cost`, `derive` and `compile --costs`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language import ir
from attdarts.language.printer import format_space
from attdarts.language.transform import parse_file
from attdarts.networks.budget_derive import BudgetError
from attdarts.networks.derive import derive_genotype
from attdarts.networks.supernet import compile_supernet
from attdarts.runs.search.budget import derive_run, read_run_weights
from attdarts.runs.search.outputs import weights_record

ROOT = Path(__file__).resolve().parents[3]
SPACES = ROOT / "genotypes" / "spaces"


def make_run(directory: Path, space: ir.Space, epochs: int = 2) -> tuple[Path, ir.Genotype]:
    """A search run directory as `attdarts search` writes it, from a tiny supernet whose
    architecture parameters are drawn anew each epoch (the real weights.jsonl writer)."""
    directory.mkdir()
    (directory / "space.geno").write_text(format_space(space))
    (directory / "config.json").write_text(json.dumps({"seed": 3, "dataset": "cifar10-mini"}))
    model = compile_supernet(space, channels=4, layers=3)
    lines = []
    torch.manual_seed(0)
    for epoch in range(1, epochs + 1):
        with torch.no_grad():
            for parameter in model.architecture():
                parameter.normal_()
        lines.append(weights_record(model, epoch, synthetic=False))
    (directory / "weights.jsonl").write_text("\n".join(lines) + "\n{truncated\n")
    return directory, derive_genotype(model)


def test_a_run_end_to_end(tmp_path, one_thread):
    space = parse_file(SPACES / "att_darts.geno").space()
    run, last = make_run(tmp_path / "run", space)
    weights, warnings = read_run_weights(run, space)
    assert weights.epoch == 2 and warnings == ["weights.jsonl:3: skipped (Expecting property "
                                               "name enclosed in double quotes: line 1 column 2 "
                                               "(char 1))"]
    assert read_run_weights(run, space, epoch=1)[0].epoch == 1
    with pytest.raises(BudgetError, match="no epoch 5 .it has epochs 1 to 2."):
        read_run_weights(run, space, epoch=5)
    free = derive_run(run, channels=4, layers=3, verify=False)
    assert (free.genotype.normal, free.genotype.reduce) == (last.normal, last.reduce)
    cap = 0.8 * free.costs["multiply_adds"]
    output = tmp_path / "budget.geno"
    derived = derive_run(run, max_macs=cap, channels=4, layers=3, output=output)
    assert derived.costs["multiply_adds"] <= cap < free.costs["multiply_adds"]
    assert derived.measured == {"multiply_adds": derived.costs["multiply_adds"],
                                "parameters": derived.costs["parameters"]}
    written = parse_file(output).genotype()
    assert written == derived.genotype and written.name == "att_darts_seed3_budget"
    assert written.meta_value("multiply_adds") == str(derived.costs["multiply_adds"])
    assert written.meta_value("epoch") == "2"
    assert written.meta_value("caps") == f"multiply_adds <= {int(cap)}"
    assert written.meta_value("cost_table") == "space att_darts, cifar10, C=4, L=3"
    assert derived.score < free.score


def test_the_command_line(tmp_path, one_thread):
    space = parse_file(SPACES / "darts.geno").space()
    run, _ = make_run(tmp_path / "run", space, epochs=1)
    runner = CliRunner()
    table = tmp_path / "costs.json"
    done = runner.invoke(cli, ["cost", str(SPACES / "darts.geno"), "--channels", "4",
                               "--layers", "3", "-o", str(table)])
    assert done.exit_code == 0, done.output
    assert "cost table   space darts, cifar10, C=4, L=3" in done.stdout and table.is_file()
    done = runner.invoke(cli, ["derive", str(run), "--costs", str(table), "--max-macs", "3M",
                               "--pareto", "-o", str(tmp_path / "g.geno")])
    assert done.exit_code == 0, done.output
    assert "caps         multiply-adds <= 3,000,000" in done.stdout
    assert "front (" in done.stdout and "compiled     " in done.stdout
    assert parse_file(tmp_path / "g.geno").genotype().meta_value("caps") == \
        "multiply_adds <= 3000000"
    done = runner.invoke(cli, ["derive", str(run), "--costs", str(table), "--max-macs", "3X"])
    assert done.exit_code == 2 and "'3X' is not a count" in done.output
    done = runner.invoke(cli, ["derive", str(run), "--max-latency", "12ms"])
    assert done.exit_code == 2 and "--max-latency needs --costs" in done.output
    done = runner.invoke(cli, ["derive", str(run), "--costs", str(table), "--max-latency", "1ms"])
    assert done.exit_code == 1 and "has no latency_ms" in done.output
    done = runner.invoke(cli, ["derive", str(run), "--costs", str(table), "--channels", "8"])
    assert done.exit_code == 1 and "not cifar10, C=8, L=3" in done.output
    done = runner.invoke(cli, ["derive", str(run), "--costs", str(table), "--max-macs", "1k"])
    assert done.exit_code == 1 and "no genotype of space 'darts' fits" in done.output
    assert "Traceback" not in done.output


def test_compile_prints_the_tables_prediction(tmp_path, one_thread):
    runner = CliRunner()
    table = tmp_path / "costs.json"
    done = runner.invoke(cli, ["cost", str(SPACES / "att_darts.geno"), "--channels", "4",
                               "--layers", "3", "-o", str(table)])
    assert done.exit_code == 0, done.output
    done = runner.invoke(cli, ["compile", str(ROOT / "genotypes" / "att_darts.geno"),
                               "--costs", str(table)])
    assert done.exit_code == 0, done.output
    assert "by the cost table (equal to the measured counts)" in done.stdout
    done = runner.invoke(cli, ["compile", str(ROOT / "genotypes" / "att_darts.geno"),
                               "--costs", str(table), "--format", "json"])
    summary = json.loads(done.stdout)
    assert summary["predicted"]["multiply_adds"] == summary["multiply_adds"]
    done = runner.invoke(cli, ["compile", str(ROOT / "genotypes" / "nasnet_a.geno"),
                               "--costs", str(table)])
    assert done.exit_code == 1 and "cannot price genotype 'nasnet_a'" in done.output


def test_a_run_of_several_seeds_is_named(tmp_path):
    space = parse_file(SPACES / "darts.geno").space()
    make_run(tmp_path / "seed-1", space, epochs=1)
    with pytest.raises(BudgetError, match="derive one, e.g. .*seed-1"):
        derive_run(tmp_path)


def test_a_method_that_derives_by_its_own_rule_is_refused_before_any_table_is_built(
        tmp_path, monkeypatch):
    """A FairDARTS run: refused at once, not after seconds to minutes of measuring a table."""
    from attdarts.runs.search import budget

    run = tmp_path / "run"
    run.mkdir()
    (run / "space.geno").write_text((SPACES / "fair_darts.geno").read_text())

    def measured(*args, **kwargs):
        raise AssertionError("a cost table was built for a run derive refuses")

    monkeypatch.setattr(budget, "build_cost_table", measured)
    with pytest.raises(BudgetError, match="'fair_darts' derives by its own rule"):
        derive_run(run, max_macs=600e6)


def test_the_genotype_derived_from_a_run_on_random_data_says_so(tmp_path, one_thread):
    """As the run's own genotypes: `render` titles it SYNTHETIC DATA, `report` flags it."""
    from attdarts.runs.search.config import SYNTHETIC_NOTE

    space = parse_file(SPACES / "darts.geno").space()
    run, _ = make_run(tmp_path / "run", space, epochs=1)
    assert derive_run(run, channels=4, layers=3, verify=False).genotype.meta_value(
        "synthetic") is None
    (run / "config.json").write_text(json.dumps({"seed": 3, "dataset": "synthetic"}))
    derived = derive_run(run, channels=4, layers=3, verify=False)
    assert derived.genotype.meta_value("synthetic") == SYNTHETIC_NOTE
