"""Where a run ran (attdarts.runs.environment): every run directory's environment.json, written
at the start, extended on resume, and shown by `attdarts report`, which names what differs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language.transform import parse_file
from attdarts.runs import data, environment, runtime, search, train
from attdarts.runs.search.loop import SearchRun
from attdarts.runs.train import outputs as train_outputs
from helpers import TINY_SPACE

ROOT = Path(__file__).resolve().parents[2]
DARTS_V2 = ROOT / "genotypes" / "darts_v2.geno"

pytestmark = pytest.mark.usefixtures("one_thread")


class _Crash(Exception):
    """Stands for a machine that dies right after a run's first epoch."""


def tiny_images() -> data.ImageTensors:
    return data.synthetic_dataset(train=True, size=32, resolution=8)


@pytest.fixture
def search_config(tmp_path) -> search.SearchConfig:
    space = tmp_path / "tiny.geno"
    space.write_text(TINY_SPACE)
    return search.SearchConfig(space_file=str(space), dataset="synthetic", epochs=2, batch_size=4,
                               channels=4, layers=3, max_steps_per_epoch=1, deterministic=True)


def report(*paths: Path) -> tuple[dict, str]:
    """`attdarts report` of `paths`: its JSON environment section and its Markdown."""
    arguments = ["report", *map(str, paths), "--no-mult-adds"]
    as_json = CliRunner().invoke(cli, [*arguments, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    markdown = CliRunner().invoke(cli, arguments)
    assert markdown.exit_code == 0, markdown.output
    return json.loads(as_json.output)["environment"], markdown.output


# -- what a record holds ---------------------------------------------------------------------


def test_a_record_names_every_field_as_the_process_has_it():
    threads = torch.get_num_threads()
    with runtime.determinism(True, torch.device("cpu")):
        record = environment.collect("cpu", graphs="on")
    assert tuple(record) == environment.FIELDS
    assert json.loads(json.dumps(record)) == record  # plain JSON values
    assert record["torch"] == torch.__version__ and record["deterministic"] is True
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["threads"] == threads and record["world_size"] == 1
    assert record["device"] == "cpu" and record["cuda_device"] is None and record["cuda"] is None
    assert record["graphs"] == "on" and record["cpu"] and record["python"].count(".") == 2
    assert environment.collect("cpu")["deterministic"] is torch.are_deterministic_algorithms_enabled()


def test_the_commit_is_that_of_the_checkout_and_none_outside_one(tmp_path, monkeypatch):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a checkout")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    commit = environment.checkout_commit()
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit) and commit.startswith(head)
    assert environment.checkout_commit(tmp_path) is None  # an installed copy: no .git
    # a package inside someone else's repository does not report that repository's commit
    subprocess.run(["git", "init", "-q", str(tmp_path / "project")], check=True)
    (tmp_path / "project" / "site-packages").mkdir()
    assert environment.checkout_commit(tmp_path / "project" / "site-packages") is None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # git missing: no commit, no failure
    environment._commit.cache_clear()
    try:
        assert environment.checkout_commit(ROOT) is None
    finally:
        environment._commit.cache_clear()


# -- written by every kind of run, extended on resume ----------------------------------------


def test_a_search_records_its_start_and_each_resume(search_config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = SearchRun.write_outputs
    calls = []

    def crash_after_the_first_epoch(self):
        original(self)
        calls.append(1)
        if len(calls) == 1:
            raise _Crash

    monkeypatch.setattr(SearchRun, "write_outputs", crash_after_the_first_epoch)
    with pytest.raises(_Crash):
        search.run_search(search_config, run, device="cpu", dataset=tiny_images())
    monkeypatch.undo()
    start = environment.read(run)
    assert start["threads"] == 1 and start["graphs"] == "off" and "resumed" not in start
    assert start["deterministic"] is True  # the run's own setting, not the caller's

    torch.set_num_threads(2)  # "another machine": the resume runs with two threads
    search.resume_search(run, device="cpu", dataset=tiny_images())
    torch.set_num_threads(1)
    record = environment.read(run)
    assert {key: value for key, value in record.items() if key != "resumed"} == start
    (resumed,) = record["resumed"]
    assert resumed["resumed_at"] == {"epoch": 2, "step": 0} and resumed["threads"] == 2

    summary, markdown = report(run)
    assert summary["differ"] == ["threads"]
    assert [row["threads"] for row in summary["sessions"]] == [1, 2]
    assert "The runs differ in: threads." in markdown
    assert f"| {run} (resumed at epoch 2, step 0) | 2 |" in markdown
    assert "| deterministic | yes |" in markdown

    # a resume of a finished run runs nothing and records nothing
    search.resume_search(run, device="cpu", dataset=tiny_images())
    assert len(environment.read(run)["resumed"]) == 1


def test_seeds_one_by_one_and_together_record_each_seed(search_config, tmp_path):
    config = search_config.model_copy(update={"epochs": 1})
    search.run_seeds(config, [1, 2], tmp_path / "apart", device="cpu", dataset=tiny_images())
    search.run_seeds(config, [1, 2], tmp_path / "together", device="cpu", dataset=tiny_images(),
                     together=True)
    for out in ("apart", "together"):
        for seed in (1, 2):
            record = environment.read(tmp_path / out / f"seed-{seed}")
            assert record["device"] == "cpu" and record["graphs"] == "off", (out, seed)
    summary, markdown = report(tmp_path)
    assert len(summary["sessions"]) == 4 and summary["differ"] == []
    assert "| cpu_capability |" in markdown and "differ" not in markdown


def test_a_training_records_its_start_and_each_resume(tmp_path, monkeypatch):
    config = train.TrainConfig.recipe("synthetic", channels=4, layers=3, epochs=2, batch_size=4,
                                      max_steps_per_epoch=1, seed=1)
    genotype = parse_file(DARTS_V2).genotype()
    original = train_outputs.RunWriter.epoch_done

    def crash_after_the_first_epoch(self, state, improved):
        original(self, state, improved)
        raise _Crash

    monkeypatch.setattr(train_outputs.RunWriter, "epoch_done", crash_after_the_first_epoch)
    with pytest.raises(_Crash):
        train.run_training(config, genotype, run_dir=tmp_path / "run", device="cpu")
    monkeypatch.undo()
    start = environment.read(tmp_path / "run")
    assert start["graphs"] == "off" and start["deterministic"] is False
    train.run_training(config, genotype, run_dir=tmp_path / "run", device="cpu", resume=True)
    record = environment.read(tmp_path / "run")
    (resumed,) = record["resumed"]
    assert resumed["resumed_at"] == {"epoch": 2, "step": 0}
    assert {key: resumed[key] for key in environment.COMPARED} == {
        key: start[key] for key in environment.COMPARED}


def test_the_report_names_runs_without_a_record(search_config, tmp_path):
    config = search_config.model_copy(update={"epochs": 1})
    search.run_search(config, tmp_path / "new", device="cpu", dataset=tiny_images())
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    (tmp_path / "old" / "environment.json").unlink()  # as an older attdarts left it
    summary, markdown = report(tmp_path / "new", tmp_path / "old")
    assert summary["not_recorded"] == [str(tmp_path / "old")]
    assert f"No environment.json (a run of an older attdarts): {tmp_path / 'old'}." in markdown
    assert summary["common"]["cpu"] == environment.cpu_model()
