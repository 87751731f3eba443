"""Search stages in the search loop (P-DARTS, issue 20 item 4): the plan over the epochs, the
learning rate and skip dropout schedules, pruning and fresh supernets between stages, what the
run directory records, resume and pre-emption mid-stage, seeds together, the pdarts recipe."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language import kinds
from attdarts.language.transform import parse_text, read_genotype, read_space
from attdarts.networks.cost_meter import build_cost_table
from attdarts.networks.costs import write_cost_table
from attdarts.networks.methods.progressive import prune
from attdarts.networks.supernet import compile_supernet
from attdarts.runs import data, preemption, runtime
from attdarts.runs.search import (
    Bilevel, SearchConfig, recipe_config, resume_search, run_search, run_seeds,
)
from attdarts.runs.search import stages
from attdarts.runs.search.budget import derive_run
from attdarts.runs.search.config import SearchError
from attdarts.runs.search.loop import SearchRun
from helpers import (
    Interrupted, assert_same_state, in_float64, interrupt_at, metrics_without_timings,
)

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[3]

# three stages: 3 cells, then a fresh 4-cell supernet keeping 4 of 5 operations and 2 of 3
# attentions with skip dropout, then that supernet kept, down to 3 operations (the skip cap
# needs one besides none and skip_connect)
STAGED = """\
space tiny {
    operations = [none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3]
    attentions = [identity, se, cbam]
    nodes = 2
    keep = 2
    location = after_every
    mixing = sum
    methods = [max_skip_connect(n=1)]
    stages = [
        stage(layers=3, epochs=2, warmup=1),
        stage(layers=4, epochs=2, warmup=1, operations=4, attentions=2, skip_dropout=0.4),
        stage(epochs=1, operations=3, skip_dropout=0.7, start=keep),
    ]
}
"""
# the same with partial channels K=4 (C=4: one channel per edge), widened to K=2 by the kept
# third stage (DrNAS's K=6 then K=4, `networks.widening`), with DrNAS's Dirichlet draws
WIDENED = STAGED.replace(
    "methods = [max_skip_connect(n=1)]",
    "methods = [partial_channels(k=4), drnas(kl=0.1), max_skip_connect(n=1)]").replace(
    "start=keep)", "start=keep, partial_channels=2)")
STEPS = 2  # per epoch: stage 1 is steps 1-4, stage 2 steps 5-8, stage 3 steps 9-10
SEEDS = (1, 2)


def write(tmp_path: Path, text: str = STAGED, name: str = "tiny.geno") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def tiny_config(space_file: Path, **changes) -> SearchConfig:
    settings = dict(space_file=str(space_file), dataset="synthetic", epochs=2, batch_size=4,
                    channels=4, layers=3, max_steps_per_epoch=STEPS, deterministic=True,
                    arch_init="randn", checkpoint_every=1)
    settings.update(changes)
    return SearchConfig(**settings)


def tiny_images() -> data.ImageTensors:
    return data.synthetic_dataset(train=True, size=32, resolution=8)


def same_files(expected: Path, actual: Path) -> None:
    """The same files, byte for byte (metrics without wall times; not the checkpoint, nor
    environment.json, which says where each session ran)."""
    names = sorted(path.name for path in expected.iterdir())
    assert names == sorted(path.name for path in actual.iterdir())
    for name in names:
        if name == "metrics.jsonl":
            assert metrics_without_timings(actual) == metrics_without_timings(expected)
        elif name not in ("checkpoint.pt", "environment.json"):
            assert (actual / name).read_bytes() == (expected / name).read_bytes(), name


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("space"))


@pytest.fixture(scope="module")
def whole(space_file, tmp_path_factory) -> Path:
    """The uninterrupted staged search that stopped ones are compared with."""
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run_search(tiny_config(space_file), run_dir, device="cpu", dataset=tiny_images())
    torch.set_num_threads(threads)
    return run_dir


# ---------------------------------------------------------------------------------------------
# The plan


def test_the_plan_resolves_stages_against_the_run_settings(tmp_path):
    plan = stages.Plan.of(parse_text(STAGED).space(), tiny_config(write(tmp_path), layers=6))
    assert [(s.layers, s.epochs, s.warmup, s.counts, s.first, s.life, s.life_epochs)
            for s in plan.stages] == [
        (3, 2, 1, {}, 0, 0, 2),
        (4, 2, 1, {kinds.OPERATION: 4, kinds.ATTENTION: 2, kinds.OUTPUT: 2}, 2, 2, 3),
        (4, 1, 3 * 0 + 0, {kinds.OPERATION: 3}, 4, 2, 3),  # keep: the depth it keeps
    ]
    assert plan.epochs == 5 and [plan.at(e).number for e in range(5)] == [0, 0, 1, 1, 2]
    plain = stages.Plan.of(read_space(ROOT / "genotypes/spaces/darts.geno"),
                           tiny_config(write(tmp_path), epochs=7, arch_start_epoch=2))
    assert not plain.staged and plain.epochs == 7 and plain.stages[0].warmup == 2
    assert plain.record(3) == {}


def test_the_learning_rate_restarts_in_a_fresh_stage_and_goes_on_in_a_kept_one(tmp_path):
    config = tiny_config(write(tmp_path), lr=0.1, lr_min=0.01)
    plan = stages.Plan.of(parse_text(STAGED).space(), config)

    def cosine(t: int, total: int) -> float:
        return 0.01 + 0.5 * (0.1 - 0.01) * (1 + math.cos(math.pi * t / total))

    expected = [cosine(0, 2), cosine(1, 2), cosine(0, 3), cosine(1, 3), cosine(2, 3)]
    assert [plan.lr(config, epoch) for epoch in range(5)] == pytest.approx(expected, abs=0)
    assert [plan.method_epoch(epoch) for epoch in range(5)] == [(0, 2), (1, 2), (0, 3), (1, 3),
                                                                 (2, 3)]
    assert [plan.at(epoch).trains_architecture(epoch) for epoch in range(5)] == [
        False, True, False, True, True]


def test_skip_dropout_follows_p_darts_schedule():
    """P-DARTS's train_search.py with 25 epochs and 10 of warm-up: r (25 - e - 1) / 25 in epochs
    0 to 9 (0.96 r down to 0.6 r), then r exp(-0.2 (e - 10))."""
    plan = stages.Plan.of(read_space(ROOT / "genotypes/spaces/pdarts.geno"),
                          SearchConfig(space_file="pdarts.geno"))
    second = plan.stages[1]
    rates = [stages.skip_dropout_rate(second, 25 + e) for e in range(25)]
    assert rates[0] == pytest.approx(0.96 * 0.4) and rates[9] == pytest.approx(0.6 * 0.4)
    assert rates[10] == pytest.approx(0.4) and rates[11] == pytest.approx(0.4 * math.exp(-0.2))
    assert rates[24] == pytest.approx(0.4 * math.exp(-2.8))
    assert plan.record(25 + 11) == {"stage": 2, "stage_epoch": 12,
                                    "skip_dropout": pytest.approx(0.4 * math.exp(-0.2))}
    assert "skip_dropout" not in plan.record(3)  # stage 1's rate is 0: no dropout
    assert plan.epochs == 75 and [s.layers for s in plan.stages] == [5, 11, 17]


def test_a_later_stage_draws_its_supernet_from_its_own_seed_and_leaves_the_global_stream():
    space = parse_text(STAGED).space()

    def build(seed: int, stage: int) -> dict:
        with stages.drawing(seed, stage):
            return compile_supernet(space, channels=4, layers=4, input_size=8,
                                    init="randn").state_dict()

    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    first = build(2, 1)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global stream goes on
    torch.manual_seed(123)  # whatever the global state, the stage draws the same
    again = build(2, 1)
    assert all(torch.equal(first[name], again[name]) for name in first)
    other = build(2, 2)
    assert not torch.equal(first["arch.alpha_normal"], other["arch.alpha_normal"])
    assert not torch.equal(first["arch.alpha_normal"], build(3, 1)["arch.alpha_normal"])


def test_between_stages_each_row_keeps_its_strongest_by_the_last_stages_weights(tmp_path):
    space = parse_text(STAGED).space()
    model = compile_supernet(space, channels=4, layers=3, input_size=8, init="randn").double()
    model.use_candidates(stages.first_masks(model))
    plan = stages.Plan.of(space, tiny_config(write(tmp_path)))
    masks = stages.next_masks(model, plan.stages[1])
    for cell, tensors in model.architecture_tensors().items():
        for kind, raw in tensors.items():
            weights = torch.softmax(raw.double(), -1)
            count = plan.stages[1].counts[kind]
            assert torch.equal(masks[cell][kind], prune(weights, torch.ones_like(
                raw, dtype=torch.bool), count))
            assert (masks[cell][kind].sum(-1) == count).all()
    model.use_candidates(masks)
    later = stages.next_masks(model, plan.stages[2])
    assert (later["normal"][kinds.OPERATION] <= masks["normal"][kinds.OPERATION]).all()
    assert torch.equal(later["normal"][kinds.ATTENTION], masks["normal"][kinds.ATTENTION])


# ---------------------------------------------------------------------------------------------
# A staged search


def test_a_staged_search_records_its_stages(whole):
    records = metrics_without_timings(whole)
    assert [(r["epoch"], r["stage"], r["stage_epoch"]) for r in records] == [
        (1, 1, 1), (2, 1, 2), (3, 2, 1), (4, 2, 2), (5, 3, 1)]
    assert [r.get("skip_dropout") for r in records] == [
        None, None, pytest.approx(0.4 * 1 / 2), pytest.approx(0.4), pytest.approx(0.7)]
    assert [r.get("architecture_steps") for r in records] == [False, True, False, True, None]
    assert [r["val_loss"] is None for r in records] == [True, False, True, False, False]
    text = (whole / "genotype.geno").read_text()
    assert text == (whole / "genotype-epoch005.geno").read_text()
    assert 'epoch = "5/5"\n    stage = "3/3"' in text
    assert 'stage = "1/3"' in (whole / "genotype-epoch002.geno").read_text()
    state = torch.load(whole / "checkpoint.pt", weights_only=False)
    assert state["stage"]["index"] == 2
    masks = state["stage"]["masks"]
    assert (masks["alpha_normal"].sum(-1) == 3).all() and (masks["beta_reduce"].sum(-1) == 2).all()
    assert sum(name.startswith("cells.") and name.endswith("preprocess1.1.weight")
               for name in state["model"]) == 4  # the kept 4-cell supernet
    weights = [json.loads(line) for line in (whole / "weights.jsonl").read_text().splitlines()]
    for record, kept in ((weights[2], 4), (weights[4], 3)):  # dropped candidates weigh 0
        assert all(sum(value > 0 for value in row) == kept for row in record["normal"]["alpha"])
    assert all(value > 0 for row in weights[1]["normal"]["alpha"] for value in row)


def test_one_stage_is_the_search_without_stages(tmp_path):
    """A space with a single stage that says nothing searches exactly as without stages: the
    same supernet, draws and steps (only the records name the stage)."""
    plain_text = STAGED.split("    methods")[0] + "}\n"
    staged_text = plain_text.replace("    mixing = sum\n", "    mixing = sum\n"
                                     "    stages = [\n        stage(),\n    ]\n")
    plain, staged = tmp_path / "plain", tmp_path / "staged"
    run_search(tiny_config(write(tmp_path, plain_text, "plain.geno")), plain, device="cpu",
               dataset=tiny_images())
    run_search(tiny_config(write(tmp_path, staged_text, "staged.geno")), staged, device="cpu",
               dataset=tiny_images())
    assert (plain / "weights.jsonl").read_bytes() == (staged / "weights.jsonl").read_bytes()
    expected = torch.load(plain / "checkpoint.pt", weights_only=False)
    actual = torch.load(staged / "checkpoint.pt", weights_only=False)
    assert_same_state(expected["model"], actual["model"], rtol=0, atol=0)
    assert_same_state(expected["optimizers"], actual["optimizers"], rtol=0, atol=0)
    for mine, theirs in zip(metrics_without_timings(plain), metrics_without_timings(staged)):
        assert {**mine, "stage": 1, "stage_epoch": theirs["stage_epoch"]} == theirs


def test_a_kept_stage_goes_on_with_its_supernet_and_optimiser_states(tmp_path):
    config = tiny_config(write(tmp_path))
    space = parse_text(STAGED).space()
    run = SearchRun(config, tmp_path / "run", torch.device("cpu"), runtime.Process(), space,
                    tiny_images(), False)
    run.run_dir.mkdir()
    for epoch in range(4):
        stage = run.plan.at(epoch)
        if stage.number != run.stage:
            run._enter_stage(stage)
        run.run_epoch()
    model, momentum = run.model, {
        name: run.bilevel.weight_optimizer.state[parameter]["momentum_buffer"].clone()
        for name, parameter in run.model.named_weights()
        if parameter in run.bilevel.weight_optimizer.state}
    adam_step = {float(state["step"]) for state in run.bilevel.arch_optimizer.state.values()}
    run._enter_stage(run.plan.at(4))
    assert run.model is model and run.stage == 2
    for name, parameter in run.model.named_weights():
        if name in momentum:
            assert torch.equal(run.bilevel.weight_optimizer.state[parameter]["momentum_buffer"],
                               momentum[name])
    assert {float(s["step"]) for s in run.bilevel.arch_optimizer.state.values()} == adam_step
    assert (run.masks["normal"][kinds.OPERATION].sum(-1) == 3).all()


def test_a_kept_stage_with_fewer_partial_channels_widens_its_supernet(tmp_path):
    """Entering the kept stage 3 of WIDENED (K=4 to K=2): a new supernet of the stage's space
    holding the old one's tensors (candidates grown, their leading channels the old ones), its
    architecture, masks and optimiser states (momentum grown alike, Adam's step carried)."""
    config = tiny_config(write(tmp_path, WIDENED))
    space = parse_text(WIDENED).space()
    run = SearchRun(config, tmp_path / "run", torch.device("cpu"), runtime.Process(), space,
                    tiny_images(), False)
    run.run_dir.mkdir()
    for epoch in range(4):
        stage = run.plan.at(epoch)
        if stage.number != run.stage:
            run._enter_stage(stage)
        run.run_epoch()
    old_model = run.model
    state = {name: value.clone() for name, value in old_model.state_dict().items()}
    momentum = {name: run.bilevel.weight_optimizer.state[parameter]["momentum_buffer"].clone()
                for name, parameter in old_model.named_weights()
                if parameter in run.bilevel.weight_optimizer.state}
    adam_step = {float(s["step"]) for s in run.bilevel.arch_optimizer.state.values()}
    run._enter_stage(run.plan.at(4))
    assert run.model is not old_model and run.stage == 2
    assert run.model.methods.space.setting("partial_channels", "k") == 2
    grew = 0
    for name, value in run.model.state_dict().items():
        leading = tuple(slice(0, size) for size in state[name].shape)
        assert torch.equal(value[leading], state[name]), name
        grew += value.shape != state[name].shape
    assert grew > 0
    for name, parameter in run.model.named_weights():
        if name in momentum:
            buffer = run.bilevel.weight_optimizer.state[parameter]["momentum_buffer"]
            assert buffer.shape == parameter.shape
            assert torch.equal(buffer[tuple(slice(0, n) for n in momentum[name].shape)],
                               momentum[name])
    assert {float(s["step"]) for s in run.bilevel.arch_optimizer.state.values()} == adam_step
    assert (run.masks["normal"][kinds.OPERATION].sum(-1) == 3).all()
    run.run_epoch()  # the widened stage searches


def test_a_search_refuses_channels_a_widened_stage_cannot_split(tmp_path):
    """drnas.geno's stage 2 has K=4: C=30 (divisible by its first K=6) is refused before the run
    directory is written, in one line naming the stage and its line."""
    config = tiny_config(ROOT / "genotypes" / "spaces" / "drnas.geno", channels=30)
    with pytest.raises(SearchError) as refused:
        run_search(config, tmp_path / "run", device="cpu", dataset=tiny_images())
    assert str(refused.value) == (
        "space 'drnas': stage 2 (line 13): partial_channels(k=4) needs the channels C divisible "
        "by 4; C=30 is not (try C=32)")
    assert not (tmp_path / "run").exists()


def searched_only(space, genotype, kept) -> bool:
    """Whether every edge of `genotype` (of the tiny after_every space) chose an operation and
    an attention that `kept` (weights.jsonl's rows per cell type and kind) still searched."""
    attentions = [call.name for call in space.attentions]
    for cell in ("normal", "reduce"):
        derived = genotype.cell(cell)
        for node in range(space.nodes):  # node n's edges are rows 2 + 3 + ... onwards
            first_row = sum(2 + k for k in range(node))
            for edge in derived.nodes[node].edges:
                row = first_row + derived.index_of(edge.input)
                attention = edge.attention.name if edge.attention else "identity"
                if not (kept[cell]["alpha"][row][space.operations.index(edge.operation)]
                        and kept[cell]["beta"][row][attentions.index(attention)]):
                    return False
    return True


def test_a_staged_run_derives_only_searched_candidates(whole):
    """weights.jsonl names each pruned stage's candidates ("kept", the checkpoint's masks); the
    genotype of every such epoch chooses among them (derivation reads the supernet's masks), and
    so does `attdarts derive`: every genotype of its front, the cheapest included."""
    lines = [json.loads(line) for line in (whole / "weights.jsonl").read_text().splitlines()]
    assert ["kept" in line for line in lines] == [False, False, True, True, True]
    masks = torch.load(whole / "checkpoint.pt", weights_only=False)["stage"]["masks"]
    for cell in ("normal", "reduce"):
        for kind in ("alpha", "beta"):
            assert lines[-1]["kept"][cell][kind] == masks[f"{kind}_{cell}"].int().tolist()
    space = parse_text(STAGED).space()
    for epoch, line in enumerate(lines[2:], 3):
        genotype = read_genotype(whole / f"genotype-epoch{epoch:03d}.geno")
        assert searched_only(space, genotype, line["kept"]), epoch
    derived = derive_run(whole, channels=4, layers=3, pareto=True, verify=False)
    assert len(derived.front) > 1
    assert all(searched_only(space, genotype, lines[-1]["kept"])
               for _, _, genotype in derived.front)


# ---------------------------------------------------------------------------------------------
# Resume and pre-emption mid-stage



@pytest.mark.parametrize("call, saved", [(6, (2, 1)), (5, (2, 0)), (10, (4, 1))])
def test_resume_mid_stage_and_at_a_stage_boundary_is_byte_identical(space_file, whole, tmp_path,
                                                                    monkeypatch, call, saved):
    """Killed at step `call`: mid stage 2 (the checkpoint holds epoch 3, step 1), at stage 2's
    first step (it holds the end of stage 1: the resume prunes and builds stage 2 itself) and
    in the kept stage 3."""
    restore = interrupt_at(monkeypatch, Bilevel, "step", call)
    with pytest.raises(Interrupted):
        run_search(tiny_config(space_file), tmp_path / "run", device="cpu", dataset=tiny_images())
    restore()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == saved
    resume_search(tmp_path / "run", device="cpu", dataset=tiny_images())
    same_files(whole, tmp_path / "run")


def test_a_sigterm_mid_stage_checkpoints_and_the_resume_matches(space_file, whole, tmp_path,
                                                                monkeypatch):
    """SIGTERM during stage 2 (step 7, its second epoch's first step): the run stops at that
    step's end with a checkpoint of stage 2 (exit status 75 on the command line), and the resume
    writes the uninterrupted run's files."""
    original, calls = Bilevel.step, []

    def signalling(self, weight_batch, arch_batch):
        result = original(self, weight_batch, arch_batch)
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(Bilevel, "step", signalling)
    with pytest.raises(preemption.Preempted) as stopped:
        run_search(tiny_config(space_file), tmp_path / "run", device="cpu", dataset=tiny_images())
    monkeypatch.setattr(Bilevel, "step", original)
    assert stopped.value.signal_name == "SIGTERM" and stopped.value.exit_status == 75
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["step"], state["stage"]["index"]) == (3, 1, 1)
    resume_search(tmp_path / "run", device="cpu", dataset=tiny_images())
    same_files(whole, tmp_path / "run")


@pytest.mark.parametrize("sampler, call", [("drnas(kl=0.1)", 6), ("gdas", 6), ("widened", 9),
                                           ("widened", 10)])
def test_resume_mid_stage_with_a_sampler_is_byte_identical(tmp_path, monkeypatch, sampler, call):
    """A sampler's draws (DrNAS's Dirichlet, GDAS's Gumbel noise and single paths) come from the
    run's method generator through the stages: a run killed in stage 2 resumes to the
    uninterrupted run's files. Widened (DrNAS's partial channels widened by the kept stage 3):
    killed in its first step, the resume widens the checkpoint's stage-2 supernet again; killed
    in its second, it builds the widened supernet from the checkpoint."""
    text = WIDENED if sampler == "widened" else STAGED.replace(
        "methods = [max_skip_connect(n=1)]", f"methods = [{sampler}, max_skip_connect(n=1)]")
    space_file = write(tmp_path, text)
    run_search(tiny_config(space_file), tmp_path / "whole", device="cpu", dataset=tiny_images())
    restore = interrupt_at(monkeypatch, Bilevel, "step", call)
    with pytest.raises(Interrupted):
        run_search(tiny_config(space_file), tmp_path / "run", device="cpu", dataset=tiny_images())
    restore()
    resume_search(tmp_path / "run", device="cpu", dataset=tiny_images())
    same_files(tmp_path / "whole", tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# Seeds together


@pytest.mark.parametrize("methods", [
    "partial_channels(k=2), edge_normalisation, max_skip_connect(n=1), "
    "beta_decay(lambda=0.5, schedule=linear), smoothing(start=0.1, end=0.3)",
    "drnas(kl=0.1), max_skip_connect(n=1)",
    "widened",
    "fair_darts(threshold=0.3), max_skip_connect(n=1)",
    "gdas, max_skip_connect(n=1)",
    'budget(macs=1M, form=linear, table="costs.json"), max_skip_connect(n=1)',
])
def test_seeds_together_equal_separate_runs_in_float64(tmp_path, methods):
    """Each seed prunes its own candidates (they differ between the seeds), draws its own skip
    dropout keys and builds its own stage supernets: its files and checkpoint are those of its
    own run, in float64; with the methods a staged space may list besides (partial channels,
    edge normalisation, beta-decay, random smoothing, whose noise on a candidate one seed
    dropped and another keeps must not reach the first; DrNAS's Dirichlet draws over each
    seed's kept candidates; FairDARTS's sigmoids, on a space without none; GDAS's single paths,
    run seed by seed, where a seed's weights off its paths keep their values and momentum while
    those its stage dropped decay as in its own run; a budget, told about the search again by
    each fresh stage's supernet, on the masked weights; DrNAS's partial channels widened by the
    kept stage, each seed's channel maps drawn from its own stage seed)."""
    text = STAGED.replace("methods = [max_skip_connect(n=1)]", f"methods = [{methods}]")
    if methods == "widened":  # DrNAS's widening of each seed's kept supernet
        text = WIDENED
    if "fair_darts" in methods:
        text = text.replace("[none, ", "[")
    if "budget" in methods:  # a small table beside the space file: quick to build
        plain = parse_text(STAGED.replace("methods = [max_skip_connect(n=1)]", "")).space()
        write_cost_table(build_cost_table(plain, channels=4, layers=3), tmp_path / "costs.json")
    config = tiny_config(write(tmp_path, text))
    with in_float64():
        run_seeds(config, SEEDS, tmp_path / "separate", device="cpu", dataset=tiny_images())
        run_seeds(config, SEEDS, tmp_path / "together", device="cpu", dataset=tiny_images(),
                  together=True)
    # torch's CPU softmax of a row holding -inf (a dropped candidate) may round the last bit
    # differently for stacked seeds than for one; the budget's linear term, whose gradient
    # outweighs the loss's, carries that further (measured: 2.4e-12 at most, in a weight's
    # momentum), so its states are compared a hundred times less tightly
    rtol, atol = (1e-8, 1e-10) if "budget" in methods else (1e-10, 1e-12)
    masks = []
    for seed in SEEDS:
        ours, theirs = tmp_path / "separate" / f"seed-{seed}", tmp_path / "together" / f"seed-{seed}"
        for name in ("genotype.geno", "weights.jsonl", "genotype-epoch003.geno"):
            assert (theirs / name).read_bytes() == (ours / name).read_bytes(), name
        for mine, other in zip(metrics_without_timings(ours), metrics_without_timings(theirs)):
            assert set(mine) == set(other)
            for key, value in mine.items():
                assert other[key] == (pytest.approx(value, rel=1e-10, abs=1e-12)
                                      if isinstance(value, float) else value), key
        expected = torch.load(ours / "checkpoint.pt", weights_only=False)
        actual = torch.load(theirs / "checkpoint.pt", weights_only=False)
        for key in ("model", "optimizers", "stage", "rng", "method_rng"):
            assert_same_state(expected[key], actual[key], rtol=rtol, atol=atol, where=key)
        masks.append(expected["stage"]["masks"]["alpha_normal"])
    assert not torch.equal(masks[0], masks[1])  # the seeds kept different candidates


# ---------------------------------------------------------------------------------------------
# The recipe and the command line


def test_the_pdarts_recipe_holds_p_darts_search_settings():
    config = recipe_config("pdarts", space_file="pdarts.geno")
    assert (config.batch_size, config.lr, config.lr_min, config.momentum, config.weight_decay,
            config.grad_clip) == (96, 0.025, 0.0, 0.9, 3e-4, 5.0)
    assert (config.arch_lr, config.arch_betas, config.arch_weight_decay, config.arch_init,
            config.order) == (6e-4, (0.5, 0.999), 1e-3, "randn", 1)
    assert (config.arch_start_epoch, config.channels) == (10, 16)  # the stages are the space's


def test_a_staged_search_from_the_command_line(tmp_path):
    """`--recipe pdarts` with the tiny space; its last stage gives no warm-up, so the recipe's
    10 warm-up epochs are refused for its one epoch before anything is written, and
    `--arch-start-epoch 0` wins over the recipe."""
    space = write(tmp_path)
    refused = CliRunner().invoke(cli, [
        "search", str(space), "--recipe", "pdarts", "--dataset", "synthetic",
        "--out", str(tmp_path / "refused"), "--device", "cpu", "--quiet"])
    assert refused.exit_code == 1 and "stage 3 of space 'tiny' has 1 epochs and 10 of " \
        "warm-up" in refused.output and not (tmp_path / "refused").exists()
    result = CliRunner().invoke(cli, [
        "search", str(space), "--recipe", "pdarts", "--dataset", "synthetic", "--batch-size", "4",
        "--channels", "4", "--max-steps-per-epoch", "1", "--out", str(tmp_path / "run"),
        "--device", "cpu", "--quiet", "--arch-start-epoch", "0"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "run").glob("genotype-epoch*.geno"))) == 5
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"] == "pdarts" and config["arch_lr"] == 6e-4
