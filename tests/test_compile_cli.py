"""`attdarts compile`: the paper's numbers through the command line."""

import json
from pathlib import Path

from click.testing import CliRunner

from attdarts.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def _run(*args):
    return CliRunner().invoke(cli, ["compile", *map(str, args)])


def test_compile_prints_the_papers_parameter_count():
    result = _run(ROOT / "genotypes" / "att_darts.geno")
    assert result.exit_code == 0, result.output
    assert "3,231,343 (without auxiliary head)" in result.output
    assert f"{3_231_343 + 476_426:,} (with auxiliary head)" in result.output
    assert "output       (1, 10)" in result.output
    assert "mult-adds" in result.output


def test_compile_json_for_a_small_imagenet_network():
    result = _run(ROOT / "genotypes" / "darts_v2.geno", "--dataset", "imagenet", "--channels", "8",
                  "--layers", "5", "--no-auxiliary", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["output_shape"] == [1, 1000] and summary["input_shape"] == [1, 3, 224, 224]
    assert summary["parameters_with_auxiliary"] is None
    assert [c["type"] for c in summary["cells"]] == ["normal", "reduce", "normal", "reduce", "normal"]
    assert summary["multiply_adds"] > 0


def test_compile_reports_bad_input_cleanly(tmp_path):
    result = _run(ROOT / "genotypes" / "att_darts.geno", "--genotype", "nope")
    assert result.exit_code == 1 and "no genotype named 'nope'" in result.output
    bad = tmp_path / "bad.geno"
    bad.write_text("genotype g {")
    result = _run(bad)
    assert result.exit_code == 1 and f"{bad}:1:" in result.output and "Traceback" not in result.output
