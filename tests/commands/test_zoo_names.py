"""Commands take a zoo name where they take a genotype or space file (issue 19, item 2: from an
installed wheel the zoo is inside the package, so a path into the checkout does not exist)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts import api
from attdarts.cli import cli

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--channels", "8", "--layers", "5", "--format", "json"]


def _json(arguments: list[str]) -> dict:
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_zoo_is_found_in_the_checkout():
    assert api.zoo_dir() == ROOT / "genotypes"
    assert api.zoo_dir("space") == ROOT / "genotypes" / "spaces"
    assert api.zoo_file("darts_v2") == ROOT / "genotypes" / "darts_v2.geno"
    assert api.zoo_file("darts", "space") == ROOT / "genotypes" / "spaces" / "darts.geno"
    with pytest.raises(ValueError, match="kind must be"):
        api.zoo_dir("spaces")


def test_compile_takes_a_zoo_genotype_or_space_by_name(one_thread):
    by_name = _json(["compile", "darts_v2", *SMALL])
    by_path = _json(["compile", str(ROOT / "genotypes" / "darts_v2.geno"), *SMALL])
    assert by_name == by_path and by_name["genotype"] == "darts_v2"
    space = _json(["compile", "darts", *SMALL])
    assert space["space"] == "darts"
    # a genotype and a space share the name att_darts: the genotype comes first
    assert _json(["compile", "att_darts", *SMALL])["genotype"] == "att_darts"


def test_cost_takes_a_zoo_space_by_name(one_thread):
    """README's `attdarts cost` examples name files of the checkout; outside it, by name."""
    small = ["--channels", "4", "--layers", "3", "--format", "json"]
    by_name = _json(["cost", "darts", *small])
    by_path = _json(["cost", str(ROOT / "genotypes" / "spaces" / "darts.geno"), *small])
    by_name.pop("created"), by_path.pop("created")
    assert by_name == by_path and by_name["space"] == "darts"


@pytest.mark.parametrize("arguments, message", [
    (["compile", "darts_v3"], "did you mean 'darts_v2'?"),
    (["compile", "nothing/darts_v2"], "'nothing/darts_v2' does not exist"),
    (["compile", "missing.geno"], "'missing.geno' does not exist"),
    (["train", "att_dart"], "did you mean 'att_darts'?"),
    (["search", "pc_dart"], "did you mean 'pc_darts'?"),
    (["cost", "dartz"], "did you mean 'darts'?"),
])
def test_unknown_names_are_refused_in_one_line_with_the_zoo(arguments, message):
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_a_directory_is_not_a_genotype_file(tmp_path):
    result = CliRunner().invoke(cli, ["compile", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory, not a .geno file" in result.output


@pytest.mark.slow
def test_train_and_search_take_zoo_names(tmp_path, one_thread):
    tiny = ["--dataset", "synthetic", "--device", "cpu", "--channels", "4", "--layers", "3",
            "--epochs", "1", "--batch-size", "4", "--max-steps-per-epoch", "1", "--quiet"]
    trained = CliRunner().invoke(cli, ["train", "darts_v2", *tiny, "--out", str(tmp_path / "t")])
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "t" / "genotype.geno").read_text().startswith("# DARTS (second order)")
    searched = CliRunner().invoke(cli, ["search", "darts", *tiny, "--out", str(tmp_path / "s")])
    assert searched.exit_code == 0, searched.output
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert Path(config["space_file"]) == ROOT / "genotypes" / "spaces" / "darts.geno"
