"""Sizes that cannot work or would take minutes to allocate are refused by `search` and `train`
before anything runs, and running out of memory is one line, never a traceback (#11, item 15)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts import recipes
from attdarts.cli import cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--dataset", "synthetic", "--channels", "4", "--batch-size", "4", "--epochs", "1",
        "--max-steps-per-epoch", "1", "--device", "cpu"]
COMMANDS = {
    "search": ["search", str(ROOT / "genotypes" / "spaces" / "att_darts.geno")],
    "train": ["train", str(ROOT / "genotypes" / "darts_v2.geno")],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("option, value, words", [
    ("--layers", "1", "greater than or equal to 3"),
    ("--layers", "2", "greater than or equal to 3"),
    ("--layers", str(recipes.MAX_LAYERS + 1), f"less than or equal to {recipes.MAX_LAYERS}"),
    ("--channels", "100000", f"less than or equal to {recipes.MAX_CHANNELS}"),
])
def test_impossible_sizes_are_refused_before_anything_runs(command, option, value, words, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [*COMMANDS[command], *TINY, option, value, "--out", str(out)])
    assert result.exit_code != 0
    assert "Traceback" not in result.output and result.exception is None or isinstance(
        result.exception, SystemExit)
    assert option in result.output and words in result.output
    assert not out.exists()  # nothing was written


@pytest.mark.parametrize("command, target", [("search", "attdarts.runs.search.launch"),
                                             ("train", "attdarts.runs.train.launch")])
def test_running_out_of_memory_is_one_line(command, target, tmp_path, monkeypatch):
    def exhausted(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 120000000000 bytes")

    monkeypatch.setattr(target, exhausted)
    result = CliRunner().invoke(cli, [*COMMANDS[command], *TINY, "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [lines[0]] and "not enough memory" in lines[0] and "--channels" in lines[0]


@pytest.mark.parametrize("command, target", [("search", "attdarts.runs.search.launch"),
                                             ("train", "attdarts.runs.train.launch")])
def test_other_runtime_errors_are_not_disguised_as_memory(command, target, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a programming error")

    monkeypatch.setattr(target, broken)
    result = CliRunner().invoke(cli, [*COMMANDS[command], *TINY, "--out", str(tmp_path / "run")])
    assert isinstance(result.exception, RuntimeError)


def test_search_on_a_directory_says_it_is_a_directory():
    result = CliRunner().invoke(cli, ["search", str(ROOT / "genotypes"), *TINY])
    assert result.exit_code == 2 and "is a directory, not a space file" in result.output


def test_search_resume_of_a_training_run_is_one_clear_line(tmp_path):
    run = tmp_path / "trained"
    result = CliRunner().invoke(cli, [*COMMANDS["train"], *TINY, "--layers", "3", "--quiet",
                                      "--out", str(run)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["search", "--resume", str(run)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "attdarts train --resume" in lines[0]


@pytest.mark.parametrize("arguments, missing", [
    (["train", str(ROOT / "genotypes" / "spaces" / "att_darts.geno")], "defines no genotype"),
    # (compile takes a space file too: it prints the supernet, tests/commands/test_compile.py)
    (["render", str(ROOT / "genotypes" / "spaces" / "att_darts.geno")], "defines no genotype"),
    (["search", str(ROOT / "genotypes" / "darts_v2.geno"), "--dataset", "synthetic"], "defines no space"),
])
def test_a_file_of_the_wrong_kind_is_named_in_the_error(arguments, missing):
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"{arguments[1]}: the file {missing}" in result.output
