"""Refused before writing, in one line (issue 19, sections 4 and 5): a run that cannot work is
refused before its run directory exists, so the corrected command works on the same `--out`; the
API refuses what the command line refuses; `--resume` honours the options that cannot change the
result and refuses the others, naming them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import attdarts
from attdarts.cli import cli
from helpers import TINY_SPACE

ROOT = Path(__file__).resolve().parents[2]
DARTS_V2 = ROOT / "genotypes" / "darts_v2.geno"
ATT_DARTS_SPACE = ROOT / "genotypes" / "spaces" / "att_darts.geno"
TINY = ["--dataset", "synthetic", "--channels", "4", "--layers", "3", "--batch-size", "4",
        "--epochs", "1", "--max-steps-per-epoch", "1", "--device", "cpu", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*arguments):
    return CliRunner().invoke(cli, [str(argument) for argument in arguments])


def one_line(result) -> str:
    """The error of a refused command: one line, no traceback (after click's usage header for
    a usage error, which `train` reports bad settings as)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()
             and not line.startswith(("Usage: ", "Try '"))]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.fixture
def tiny(tmp_path) -> Path:
    (tmp_path / "tiny.geno").write_text(TINY_SPACE)
    return tmp_path / "tiny.geno"


def commands(tiny: Path) -> dict[str, list]:
    return {"search": ["search", tiny], "train": ["train", DARTS_V2]}


# --- section 4: refused before the run directory is created -----------------------------------


@pytest.mark.parametrize("command", ["search", "train"])
@pytest.mark.parametrize("option, value, words", [
    ("--batch-size", "100000", ["2048 training images", "100000"]),  # more than the data holds
    ("--seed", "-1", ["--seed", "-1", "greater than or equal to 0"]),
    ("--seed", str(2**64), ["--seed", "18446744073709551616", "less than or equal to"]),
    ("--batch-size", "1", ["--batch-size", "at least 2 images", "batch normalisation"]),
    ("--device", "tpu", ["unknown device 'tpu'"]),
    ("--device", "cuda:99", ["device 'cuda:99'"]),
])
def test_refused_before_the_run_directory_exists(command, option, value, words, tiny, tmp_path):
    out = tmp_path / "run"
    result = invoke(*commands(tiny)[command], *TINY, option, value, "--out", out)
    assert result.exit_code != 0
    line = one_line(result)
    assert all(word in line for word in words), line
    assert not out.exists()


def test_the_corrected_command_works_on_the_same_out(tiny, tmp_path):
    out = tmp_path / "run"
    result = invoke("search", tiny, *TINY, "--seed", str(2**64 + 1), "--out", out)
    assert result.exit_code == 1 and "--seed" in one_line(result)
    result = invoke("search", tiny, *TINY, "--batch-size", "100000", "--out", out)
    assert result.exit_code == 1 and "too few" in one_line(result)
    assert invoke("search", tiny, *TINY, "--out", out).exit_code == 0
    assert (out / "genotype.geno").is_file()


def test_the_largest_seed_runs_and_names_its_genotype(tiny, tmp_path):
    result = invoke("search", tiny, *TINY, "--seed", str(2**64 - 1), "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert f"genotype tiny_seed{2**64 - 1} {{" in (tmp_path / "run" / "genotype.geno").read_text()


def test_batch_size_one_is_refused_where_it_would_fail(tmp_path):
    """A space with BAM (a batch norm after global pooling) fails in the first step with one
    image per batch: refused in one line instead, whatever the space."""
    result = invoke("search", ATT_DARTS_SPACE, *TINY, "--batch-size", "1", "--out", tmp_path / "a")
    line = one_line(result)
    assert "--batch-size 1" in line and "at least 2 images" in line
    assert not (tmp_path / "a").exists()


def test_cuda_99_on_a_machine_with_one_gpu(tiny, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for command in commands(tiny).values():
        result = invoke(*command, *TINY, "--device", "cuda:99", "--out", tmp_path / "run")
        assert one_line(result) == ("Error: device 'cuda:99' does not exist: this machine has 1 "
                                    "CUDA device (cuda:0 to cuda:0)")
        assert not (tmp_path / "run").exists()


def test_seeds_that_are_not_seeds(tiny, tmp_path):
    for seeds in ("1,1", f"1,{2**64}", "-3,4"):
        result = invoke("search", tiny, *TINY, "--seeds", seeds, "--out", tmp_path / "run")
        assert result.exit_code == 2 and "--seeds" in result.output, result.output
        assert not (tmp_path / "run").exists()
    result = invoke("train", DARTS_V2, *TINY, "--seed", str(2**64 - 1), "--repeats", "2",
                    "--out", tmp_path / "run")  # the second seed would be 2^64
    assert result.exit_code == 2 and "--seed" in result.output, result.output
    assert not (tmp_path / "run").exists()


# --- the API refuses what the command line refuses, before writing -----------------------------


def test_the_api_refuses_what_the_command_line_refuses(tiny, tmp_path):
    from attdarts.language.transform import read_space
    from attdarts.runs.runtime import DeviceError
    from attdarts.runs.search import SearchError

    out = tmp_path / "run"
    tiny_settings = dict(dataset="synthetic", channels=4, layers=3, batch_size=4, epochs=1,
                         max_steps_per_epoch=1)
    with pytest.raises(SearchError, match="distinct seeds"):
        attdarts.search(tiny, out=out, seeds=[1, 1], device="cpu", **tiny_settings)
    with pytest.raises(SearchError, match="seed -1"):
        attdarts.search(tiny, out=out, seeds=[-1, 2], device="cpu", **tiny_settings)
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        attdarts.search(tiny, out=out, device="tpu", **tiny_settings)
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        attdarts.train("darts_v2", out=out, device="tpu", dataset="synthetic", channels=4,
                       layers=3, epochs=1, max_steps_per_epoch=1)
    with pytest.raises(ValueError, match="batch_size"):  # an ir.Space: nothing written either
        attdarts.search(read_space(tiny), out=out, device="cpu", **{**tiny_settings,
                                                                     "batch_size": 0})
    for setting in ({"epochs": True}, {"epochs": 1.0}, {"deterministic": 1}):
        with pytest.raises(ValueError, match=next(iter(setting))):
            attdarts.train("darts_v2", out=out, device="cpu", **{
                **dict(dataset="synthetic", channels=4, layers=3), **setting})
        with pytest.raises(ValueError, match=next(iter(setting))):
            attdarts.search(tiny, out=out, device="cpu", **{**tiny_settings, **setting})
    assert not out.exists()


def test_the_api_writes_a_space_object_into_the_run(tiny, tmp_path):
    from attdarts.language.transform import read_space

    result = attdarts.search(read_space(tiny), out=tmp_path / "run", seeds=[1, 2], device="cpu",
                             dataset="synthetic", channels=4, layers=3, batch_size=4, epochs=1,
                             max_steps_per_epoch=1)
    assert [r.seed for r in result] == [1, 2]
    assert read_space(tmp_path / "run" / "space.geno") == read_space(tiny)


# --- config files are checked as strictly as the command line ---------------------------------


@pytest.mark.parametrize("line, words", [
    ("epochs = 2.5", "'epochs' is 2.5, expected a whole number"),
    ("epochs = 2.0", "'epochs' is 2.0, expected a whole number"),
    ("epochs = true", "'epochs' is true, expected a whole number"),
    ("lr = true", "'lr' is true, expected a number"),
    ("deterministic = 1", "'deterministic' is 1, expected true or false"),
    ("augment = \"no\"", "'augment' is \"no\", expected true or false"),
    ("dataset = 10", "'dataset' is 10, expected text"),
    ("arch_betas = [0.5, true]", "'arch_betas' is [0.5, true], expected a number"),
])
def test_config_file_values_of_the_wrong_type_are_refused(line, words, tiny, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(f'space_file = "tiny.geno"\n{line}\n')
    result = invoke("search", "--config", path, *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 2 and words in result.output, result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("line", ["cutout = 2.0", "auxiliary = 1", "drop_path_prob = true"])
def test_settings_without_an_option_are_as_strict(line, tmp_path):
    path = tmp_path / "train.toml"
    path.write_text(f'genotype_file = "{DARTS_V2}"\n{line}\n')
    result = invoke("train", "--config", path, *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 2 and line.split(" =")[0] in result.output, result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_config_file_with_a_byte_order_mark_is_read(suffix, tiny, tmp_path):
    settings = {"space_file": "tiny.geno", "epochs": 1, "seed": 5}
    text = (json.dumps(settings) if suffix == ".json"
            else "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    path = tmp_path / f"run{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    result = invoke("search", "--config", path, *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == 5


# --- --resume honours what cannot change the result and refuses the rest ----------------------


@pytest.fixture
def searched(tiny, tmp_path) -> Path:
    result = invoke("search", tiny, *TINY, "--epochs", "2", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


@pytest.mark.parametrize("options, option", [
    (["--lr", "0.9"], "--lr"),
    (["--epochs", "3"], "--epochs"),
    (["--seed", "7"], "--seed"),
    (["--no-augment"], "--augment"),
    (["--order", "2"], "--order"),
    (["--deterministic"], "--deterministic"),
    (["--seeds", "1,2"], "--seeds"),
])
def test_search_resume_refuses_a_changed_option_naming_it(options, option, searched):
    before = {path.name: path.read_bytes() for path in searched.iterdir()}
    result = invoke("search", "--resume", searched, "--device", "cpu", *options)
    assert result.exit_code == 2, result.output
    assert f"Error: {option} cannot change when resuming (the run used " in result.output
    assert {path.name: path.read_bytes() for path in searched.iterdir()} == before


def test_search_resume_honours_what_does_not_change_the_result(searched, tmp_path):
    result = invoke("search", "--resume", searched, "--device", "cpu", "--threads", "1",
                    "--quiet", "--lr", "0.025", "--epochs", "2",  # the run's own values
                    "--no-graphs", "--plain", "--checkpoint-every", "3",
                    "--data-dir", tmp_path / "moved")
    assert result.exit_code == 0, result.output
    recorded = json.loads((searched / "config.json").read_text())
    assert (recorded["graphs"], recorded["grouped"], recorded["checkpoint_every"]) == (False, False, 3)
    assert recorded["data_dir"] == str(tmp_path / "moved")
    again = invoke("search", "--resume", searched, "--device", "cpu", "--quiet")
    assert again.exit_code == 0, again.output  # the next resume starts from what was recorded


def test_search_resume_of_seeds_refuses_other_seeds(tiny, tmp_path):
    result = invoke("search", tiny, *TINY, "--seeds", "1,2", "--out", tmp_path / "seeds")
    assert result.exit_code == 0, result.output
    result = invoke("search", "--resume", tmp_path / "seeds", "--seeds", "1,3", "--quiet")
    assert result.exit_code == 2 and "--seeds cannot change when resuming" in result.output
    result = invoke("search", "--resume", tmp_path / "seeds", "--lr", "0.5", "--quiet")
    assert result.exit_code == 2 and "--lr cannot change when resuming" in result.output
    result = invoke("search", "--resume", tmp_path / "seeds", "--seeds", "1,2", "--no-graphs",
                    "--quiet")
    assert result.exit_code == 0, result.output
    for seed in (1, 2):
        config = json.loads((tmp_path / "seeds" / f"seed-{seed}" / "config.json").read_text())
        assert config["graphs"] is False and config["seed"] == seed


def test_resume_with_another_out_is_refused(searched, tmp_path):
    shutil.copytree(searched, tmp_path / "copy")
    result = invoke("search", "--resume", searched, "--out", tmp_path / "copy")
    assert result.exit_code == 2 and "--out and --resume name different directories" in result.output
