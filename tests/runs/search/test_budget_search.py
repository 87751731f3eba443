"""The budget method in the search (issue 21): each epoch's expected cost and derived genotype's
real cost in metrics.jsonl (the latter equal to what `compile` counts), a table named relative
to the space file, a refusal before anything is written, byte-identical resume, and seeds
together equal to separate runs in float64."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language.transform import parse_file, parse_text
from attdarts.networks.budget import Budget
from attdarts.networks.cost_meter import build_cost_table
from attdarts.networks.costs import read_cost_table, write_cost_table
from attdarts.networks.measure import measure
from attdarts.networks.supernet import compile_supernet
from attdarts.records import budget_keys
from attdarts.runs import data
from attdarts.runs.search import Bilevel, SearchConfig, SearchError, resume_search, run_search
from attdarts.runs.search import run_seeds
from attdarts.networks.methods import CellWeights, SearchContext
from runs.search.test_together import (
    SEEDS, assert_same_run, in_float64, stacked_bilevel, tiny_config, tiny_images,
)
from helpers import Interrupted, interrupt_at

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = """\
space tiny {
    operations = [none, max_pool_3x3, skip_connect, sep_conv_3x3]
    attentions = [identity, se, cbam]
    nodes = 2
    keep = 2
    location = after_every
    mixing = sum
    methods = [METHODS]
}
"""
TABLE_SIZE = {"channels": 8, "layers": 5}  # the tables' "final network": small and quick


def write_space(path: Path, methods: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SPACE.replace("METHODS", methods))
    return path


def write_table(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    space = parse_text(SPACE.replace("methods = [METHODS]", "")).space()
    write_cost_table(build_cost_table(space, **TABLE_SIZE), path)
    return path


def config_of(space_file: Path, **changes) -> SearchConfig:
    settings = dict(space_file=str(space_file), dataset="synthetic", epochs=3, batch_size=4,
                    channels=4, layers=3, max_steps_per_epoch=2, checkpoint_every=1,
                    deterministic=True)
    settings.update(changes)
    return SearchConfig(**settings)


def images() -> data.ImageTensors:
    return data.synthetic_dataset(train=True, size=32, resolution=8)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_each_epoch_records_the_expected_and_the_real_cost(tmp_path, monkeypatch):
    """The table is named relative to the space file's folder and the search runs elsewhere;
    each epoch's derived cost is exactly what compiling its genotype at the table's size counts,
    and the expected cost is E under the weights weights.jsonl records."""
    table_path = write_table(tmp_path / "tables" / "tiny.json")
    space_file = write_space(tmp_path / "spaces" / "tiny.geno",
                             'budget(macs=2M, table="../tables/tiny.json", weight=0.5)')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_dir = tmp_path / "run"
    run_search(config_of(space_file), run_dir, device="cpu", dataset=images())
    keys = budget_keys("multiply_adds")
    table = read_cost_table(table_path)
    space = parse_file(run_dir / "space.geno").space()
    budget = Budget(space, table, measure="multiply_adds", target=2e6)
    lines = [json.loads(line) for line in (run_dir / "weights.jsonl").read_text().splitlines()]
    for epoch, (record, line) in enumerate(zip(records(run_dir), lines), 1):
        assert record[keys["target"]] == 2_000_000
        genotype = parse_file(run_dir / f"genotype-epoch{epoch:03d}.geno").genotype()
        counted, _ = measure(genotype, dataset="cifar10", auxiliary=False, **TABLE_SIZE)
        assert record[keys["derived"]] == counted["multiply_adds"]  # exact
        weights = tuple(CellWeights(torch.tensor(line[kind]["alpha"], dtype=torch.float64),
                                    torch.tensor(line[kind]["beta"], dtype=torch.float64))
                        for kind in ("normal", "reduce"))
        assert record[keys["expected"]] == pytest.approx(budget.expected(weights).item(),
                                                         rel=1e-5)  # float32 weights
        ratio = record[keys["expected"]] / 2e6
        assert record[keys["penalty"]] == pytest.approx(0.5 * max(0.0, ratio - 1), rel=1e-5)
    # `attdarts plot` draws the costs against the budget line and sums up the last epoch
    result = CliRunner().invoke(cli, ["plot", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "budget: multiply_adds <= 2M; epoch 3: expected " in result.output
    assert (run_dir / "budget.png").stat().st_size > 0


def test_a_table_that_cannot_be_read_refuses_the_run_before_it_writes(tmp_path):
    space_file = write_space(tmp_path / "tiny.geno", 'budget(params=1M, table="missing.json")')
    run_dir = tmp_path / "run"
    with pytest.raises(SearchError) as error:
        run_search(config_of(space_file), run_dir, device="cpu", dataset=images())
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("space 'tiny': budget: ") and "missing.json" in message
    assert not run_dir.exists()
    result = CliRunner().invoke(cli, ["search", str(space_file), "--dataset", "synthetic",
                                      "--out", str(run_dir), "--device", "cpu"])
    assert result.exit_code != 0 and "missing.json" in result.output
    assert "Traceback" not in result.output and not run_dir.exists()



def test_resume_is_byte_identical(tmp_path, monkeypatch):
    """A budget with a sampler and edge normalisation, the table built at the final size
    without a file: killed mid-epoch and resumed, the run writes the files of an
    uninterrupted one."""
    space_file = write_space(tmp_path / "tiny.geno", "edge_normalisation, drnas(kl=0.001), "
                                                     "budget(macs=150M, weight=2.0, form=target)")
    config = config_of(space_file)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_search(config, reference, device="cpu", dataset=images())
    restore = interrupt_at(monkeypatch, Bilevel, "step", 4)  # epoch 2, step 2: the checkpoint holds epoch 2, step 1
    with pytest.raises(Interrupted):
        run_search(config, interrupted, device="cpu", dataset=images())
    restore()
    resume_search(interrupted, device="cpu", dataset=images())
    names = sorted(path.name for path in reference.iterdir())
    assert names == sorted(path.name for path in interrupted.iterdir())
    for name in names:
        if name == "metrics.jsonl":
            timing = ("seconds", "images_per_s")
            assert [{k: v for k, v in record.items() if k not in timing}
                    for record in records(interrupted)] == \
                   [{k: v for k, v in record.items() if k not in timing}
                    for record in records(reference)]
        elif name not in ("checkpoint.pt", "environment.json"):
            assert (interrupted / name).read_bytes() == (reference / name).read_bytes(), name
    assert records(reference)[-1][budget_keys("multiply_adds")["target"]] == 150_000_000


BUDGETED = {
    "budget": "budget(macs=2M, form=target)",
    "budget-drnas": "edge_normalisation, drnas(kl=0.5), budget(params=50k, weight=3.0)",
}


@pytest.mark.parametrize("name", list(BUDGETED))
def test_stacked_step_with_a_budget_equals_bilevel_steps(tmp_path, name):
    """The budget's term in the stacked step (one penalty per seed): two iterations of both
    orders' steps, float64, against one `Bilevel` per seed."""
    space = parse_text(SPACE.replace("METHODS", BUDGETED[name])).space()
    for order in (1, 2):
        config = tiny_config(tmp_path / "unused.geno", order=order)
        models = []
        for seed in SEEDS:
            torch.manual_seed(seed)
            model = compile_supernet(space, channels=4, layers=3, input_size=8, init="randn")
            model.methods.search_start(SearchContext(**TABLE_SIZE))
            models.append(model.double())
        stacked = stacked_bilevel(models, config)
        separate = [Bilevel(model, config) for model in models]
        generator = torch.Generator().manual_seed(0)
        for _ in range(2):
            weight_batch, arch_batch = ((torch.randn(2, 4, 3, 8, 8, generator=generator,
                                                     dtype=torch.float64),
                                         torch.randint(0, 10, (2, 4), generator=generator))
                                        for _ in range(2))
            stats = torch.stack(stacked.step(weight_batch, arch_batch))
            for seed, bilevel in enumerate(separate):
                own = bilevel.step(*((x[seed], y[seed]) for x, y in (weight_batch, arch_batch)))
                torch.testing.assert_close(stats[:, seed], torch.stack([v.double() for v in own]))
        seeds = stacked.seeds
        for seed, model in enumerate(models):
            state = model.state_dict()
            for parameter, value in zip(seeds.arch_names, seeds.arch):
                torch.testing.assert_close(value[seed].detach(), state[parameter], rtol=1e-10,
                                           atol=1e-12, msg=parameter)


@pytest.mark.slow  # two runs of two seeds
def test_budget_together_equals_separate_runs_in_float64(tmp_path):
    """`--together` with a budget (and a sampler): each seed's files, metrics (its costs) and
    checkpoint are its own run's."""
    table = write_table(tmp_path / "tiny.json")
    space_file = write_space(tmp_path / "tiny.geno", "edge_normalisation, drnas(kl=0.5), "
                                                     f'budget(macs=2M, table="{table.name}")')
    config = tiny_config(space_file, epochs=2)
    with in_float64():
        run_seeds(config, SEEDS, tmp_path / "separate", device="cpu", dataset=tiny_images())
        run_seeds(config, SEEDS, tmp_path / "together", device="cpu", dataset=tiny_images(),
                  together=True)
    assert_same_run(tmp_path / "separate", tmp_path / "together", rtol=1e-10, atol=1e-12)
    last = records(tmp_path / "together" / f"seed-{SEEDS[0]}")[-1]
    assert set(budget_keys("multiply_adds").values()) <= set(last)
