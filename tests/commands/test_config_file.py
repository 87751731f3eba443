"""`--config FILE` of `attdarts search` and `attdarts train` (attdarts/commands/config_file.py).

Tiny runs on random data (C=4-8, 5 cells, two steps); the point is which settings reach the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.cli import cli
from helpers import TINY_SPACE, metrics_without_timings as metrics

ROOT = Path(__file__).resolve().parents[2]
DARTS_V2 = ROOT / "genotypes" / "darts_v2.geno"

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*arguments: str):
    return CliRunner().invoke(cli, [str(argument) for argument in arguments])


@pytest.fixture
def search_toml(tmp_path) -> Path:
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "tiny.geno").write_text(TINY_SPACE)
    path = tmp_path / "run.toml"
    path.write_text('space_file = "spaces/tiny.geno"   # relative to this file\n'
                    'dataset = "synthetic"\nepochs = 2\nbatch-size = 4\nchannels = 4\nlayers = 5\n'
                    'max_steps_per_epoch = 1\ndeterministic = true\naugment = false\n'
                    'arch_betas = [0.5, 0.99]\norder = 1\nlr = 0.05\nquiet = true\n'
                    'device = "cpu"\n')
    return path


def test_search_reads_the_file_and_the_command_line_wins(search_toml, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # relative paths are the file's, not the directory's
    result = invoke("search", "--config", search_toml, "--epochs", "1", "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "a" / "config.json").read_text())
    assert recorded["space_file"] == str(tmp_path / "spaces" / "tiny.geno")
    assert recorded["epochs"] == 1  # the command line's, not the file's 2
    assert (recorded["batch_size"], recorded["channels"], recorded["lr"]) == (4, 4, 0.05)
    assert recorded["augment"] is False and recorded["deterministic"] is True
    assert recorded["arch_betas"] == [0.5, 0.99]
    assert (tmp_path / "a" / "config-file.toml").read_text() == search_toml.read_text()
    assert len(metrics(tmp_path / "a")) == 1


def test_a_search_run_directory_repeats_from_its_config_json(search_toml, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    assert invoke("search", "--config", search_toml, "--out", first).exit_code == 0
    result = invoke("search", "--config", first / "config.json", "--out", again, "--quiet",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    for name in ("config.json", "genotype-epoch001.geno", "genotype.geno", "weights.jsonl"):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name
    assert metrics(again) == metrics(first)
    assert json.loads((again / "config-file.json").read_text()) == \
        json.loads((first / "config.json").read_text())


def test_a_training_run_directory_repeats_from_its_config_json(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text(f'genotype_file = "{DARTS_V2}"\ndataset = "synthetic"\nchannels = 8\n'
                    'layers = 5\nepochs = 2\nbatch_size = 8\nmax_steps_per_epoch = 2\n'
                    'cutout = 0\ndrop_path_prob = 0.1\ndevice = "cpu"\nquiet = true\n')
    first, again = tmp_path / "first", tmp_path / "again"
    result = invoke("train", "--config", toml, "--seed", "4", "--out", first)
    assert result.exit_code == 0, result.output
    recorded = json.loads((first / "config.json").read_text())
    # settings without an option of their own reach the run too
    assert (recorded["cutout"], recorded["drop_path_prob"], recorded["seed"]) == (0, 0.1, 4)
    # no GENOTYPE_FILE: the run's genotype.geno beside its config.json
    result = invoke("train", "--config", first / "config.json", "--out", again, "--quiet")
    assert result.exit_code == 0, result.output
    assert metrics(again) == metrics(first) and len(metrics(first)) == 2
    assert (again / "genotype.geno").read_text() == (first / "genotype.geno").read_text()
    assert (again / "config-file.json").is_file()


@pytest.mark.parametrize("command", ["search", "train"])
def test_unknown_keys_get_one_line_with_a_suggestion(command, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("batch_sise = 8\n")
    result = invoke(command, "--config", path)
    assert result.exit_code == 2
    assert "unknown setting 'batch_sise'; did you mean 'batch_size'?" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("text, suffix, expected", [
    ("epochs = \n", ".toml", "not valid TOML"),
    ("{\"epochs\": }", ".json", "not valid JSON"),
    ("[1, 2]", ".json", "expected a table of settings"),
])
def test_unreadable_files_are_one_line(text, suffix, expected, tmp_path):
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    result = invoke("search", "--config", path)
    assert result.exit_code == 2 and expected in result.output, result.output
    assert "Traceback" not in result.output


def test_a_wrong_value_names_its_option(search_toml, tmp_path):
    search_toml.write_text(search_toml.read_text().replace("epochs = 2", 'epochs = "two"'))
    result = invoke("search", "--config", search_toml, "--out", tmp_path / "a")
    assert result.exit_code == 2 and "--epochs" in result.output, result.output
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("command", ["search", "train"])
def test_config_and_resume_are_refused_together(command, tmp_path):
    (tmp_path / "run").mkdir()
    path = tmp_path / "run.toml"
    path.write_text("epochs = 3\n")
    result = invoke(command, "--config", path, "--resume", tmp_path / "run")
    assert result.exit_code == 2 and "--config starts a new run" in result.output, result.output
