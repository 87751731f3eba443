"""The default number of CPU threads (issue 19, item 6): `--threads`, else OMP_NUM_THREADS, else
one thread for a small step and the free cores (at most 4) for a large one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.runs import threads

ROOT = Path(__file__).resolve().parents[2]
NO_ENV: dict[str, str] = {}


@pytest.mark.parametrize("kind, settings", [
    ("search", dict(channels=4, layers=5, batch_size=4)),                # README's plot / smoke
    ("search", dict(channels=4, layers=3, batch_size=16)),               # the demo's search
    ("train", dict(channels=8, layers=5, batch_size=64)),                # the demo's training
    ("train", dict(channels=8, layers=5, batch_size=16)),                # README's synthetic run
    ("train", dict(channels=4, layers=3, batch_size=8)),                 # README's API example
])
def test_readme_examples_and_the_demo_are_small_steps(kind, settings):
    units = threads.step_units(kind, settings)
    assert units < threads.SMALL_STEP
    choice = threads.choose(None, units, environ=NO_ENV, cpus=64, load=0.0)
    assert choice.threads == 1 and "small step" in choice.reason


@pytest.mark.parametrize("kind, settings, units", [
    ("search", {}, 64 * 16 ** 2 * 8 * threads.SEARCH_FACTOR),        # the paper's search
    ("train", {}, 96 * 36 ** 2 * 20),                                 # the paper's training
    ("train", {"dataset": "imagenet"}, 128 * 48 ** 2 * 14 * 7 ** 2),  # DARTS's ImageNet network
    ("search", {"recipe": "pc-darts"}, 256 * 16 ** 2 * 8 * threads.SEARCH_FACTOR),
    ("train", {"batch_size": None, "channels": 16, "layers": 8}, 96 * 16 ** 2 * 8),
])
def test_step_units_take_the_recipe_for_what_the_settings_leave_out(kind, settings, units):
    assert threads.step_units(kind, settings) == units


def test_large_steps_use_the_free_cores_at_most_four():
    large = threads.step_units("train", {})
    assert threads.choose(None, large, environ=NO_ENV, cpus=16, load=0.2).threads == 4
    assert threads.choose(None, large, environ=NO_ENV, cpus=16, load=13.4).threads == 3
    assert threads.choose(None, large, environ=NO_ENV, cpus=2, load=0.3).threads == 2
    assert threads.choose(None, large, environ=NO_ENV, cpus=2, load=7.0).threads == 1  # shared
    assert threads.choose(None, large, environ=NO_ENV, cpus=1, load=0.0).threads == 1


def test_the_option_wins_then_omp_num_threads():
    large = threads.step_units("train", {})
    assert threads.choose(3, 10.0, environ={"OMP_NUM_THREADS": "2"}, cpus=2, load=9).threads == 3
    left = threads.choose(None, large, environ={"OMP_NUM_THREADS": "2"}, cpus=16, load=0)
    assert left.threads is None and left.reason == "OMP_NUM_THREADS"
    with pytest.raises(ValueError, match="kind must be"):
        threads.step_units("test", {})


def test_recorded_settings_read_a_run_or_its_first_seed(tmp_path):
    assert threads.recorded_settings(tmp_path / "none") == {}
    (tmp_path / "seed-3").mkdir()
    (tmp_path / "seed-3" / "config.json").write_text(json.dumps({"channels": 4}))
    assert threads.recorded_settings(tmp_path) == {"channels": 4}
    (tmp_path / "config.json").write_text("not json")
    assert threads.recorded_settings(tmp_path) == {"channels": 4}
    (tmp_path / "config.json").write_text(json.dumps({"channels": 8}))
    assert threads.recorded_settings(tmp_path) == {"channels": 8}


@pytest.fixture
def seen(monkeypatch):
    """The torch thread count while a (stubbed) run goes; torch's count before is 3."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    saved = torch.get_num_threads()
    torch.set_num_threads(3)
    counts: list[int] = []

    def launch(*args, **kwargs):
        counts.append(torch.get_num_threads())
        raise SystemExit(0)

    monkeypatch.setattr("attdarts.runs.search.launch", launch)
    monkeypatch.setattr("attdarts.runs.train.launch", launch)
    yield counts
    torch.set_num_threads(saved)


TINY = ["--dataset", "synthetic", "--channels", "4", "--layers", "5", "--batch-size", "4",
        "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("command", ["search", "train"])
def test_commands_run_small_steps_on_one_thread_unless_told(command, seen, tmp_path):
    source = "darts" if command == "search" else "darts_v2"
    CliRunner().invoke(cli, [command, source, *TINY, "--out", str(tmp_path / "a")])
    CliRunner().invoke(cli, [command, source, *TINY, "--threads", "2", "--out", str(tmp_path / "b")])
    assert seen == [1, 2]
    assert torch.get_num_threads() == 3  # given back after the run


def test_the_api_chooses_as_the_commands_do(seen, tmp_path):
    import attdarts

    for function, source in ((attdarts.search, "darts"), (attdarts.train, "darts_v2")):
        for count in (None, 2):
            with pytest.raises(SystemExit):
                function(source, dataset="synthetic", channels=4, layers=3, batch_size=4,
                         out=tmp_path / "run", device="cpu", threads=count)
    assert seen == [1, 2, 1, 2]
    assert torch.get_num_threads() == 3
