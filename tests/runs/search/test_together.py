"""Several seeds together (attdarts.runs.search.together): each seed's results are its own run's.

The reference is the real thing: `run_seeds` one seed after another (`run_search` per seed),
compared with the together run file by file and tensor by tensor, in float64 (equal to rounding,
1e-10) and in float32 (equal within the stated tolerance).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language.transform import parse_file, parse_text
from attdarts.networks.supernet import compile_supernet
from attdarts.runs import data
from attdarts.runs.search import Bilevel, SearchConfig, resume_search, run_seeds
from attdarts.runs.search.bilevel import method_generator
from attdarts.runs.search.seeds import Seeds, clip_per_seed
from attdarts.runs.search.together import TogetherSearch
from helpers import assert_same_state, in_float64

SPACE = """\
space tiny {
    operations = [none, max_pool_3x3, skip_connect, sep_conv_3x3]
    attentions = [identity, se, cbam]
    nodes = 2
    keep = 2
    location = after_every
    mixing = sum
}
"""
SEEDS = (1, 2)
TIMING = ("seconds", "images_per_s")  # the only metrics that differ: wall time

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(space_file: Path, **changes) -> SearchConfig:
    """C=4, 3 cells, 8x8 synthetic images, batch 4: 2 epochs of 2 steps, a checkpoint after
    every step (grouped cells, the default)."""
    settings = dict(space_file=str(space_file), dataset="synthetic", epochs=2, batch_size=4,
                    channels=4, layers=3, max_steps_per_epoch=2, deterministic=True,
                    arch_init="randn", checkpoint_every=1)
    settings.update(changes)
    return SearchConfig(**settings)


def tiny_images() -> data.ImageTensors:
    return data.synthetic_dataset(train=True, size=32, resolution=8)


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny.geno"
    path.write_text(SPACE)
    return path


@pytest.fixture(scope="module")
def separate64(space_file, tmp_path_factory) -> Path:
    """The reference: the seeds one after another, float64."""
    out = tmp_path_factory.mktemp("separate") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with in_float64():
        run_seeds(tiny_config(space_file), SEEDS, out, device="cpu", dataset=tiny_images())
    torch.set_num_threads(threads)
    return out


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def assert_close_records(mine: dict, other: dict, rtol: float, atol: float, where: str = "") -> None:
    """Same keys, numbers equal within the tolerances, nested records (per-edge margins)
    compared the same way."""
    assert set(mine) == set(other), where
    for key, value in mine.items():
        if isinstance(value, dict):
            assert_close_records(value, other[key], rtol, atol, f"{where}{key}/")
        elif isinstance(value, float):
            assert other[key] == pytest.approx(value, rel=rtol, abs=atol), where + key
        else:  # None, counts, flags, the accuracy unit: exactly (approx refuses strings)
            assert other[key] == value, where + key


def assert_same_run(expected: Path, actual: Path, *, rtol: float, atol: float,
                    exact_files: bool = True) -> None:
    """Every seed directory holds the same files, metrics, genotypes and checkpoint."""
    for seed in SEEDS:
        ours, theirs = expected / f"seed-{seed}", actual / f"seed-{seed}"
        names = sorted(path.name for path in ours.iterdir())
        assert names == sorted(path.name for path in theirs.iterdir())
        for name in names:
            if name.endswith(".geno") or name == "config.json" or (
                    exact_files and name == "weights.jsonl"):
                assert (ours / name).read_text() == (theirs / name).read_text(), name
        for mine, other in zip(metrics(ours), metrics(theirs)):
            assert_close_records(mine, other, rtol, atol)
        saved = torch.load(ours / "checkpoint.pt", weights_only=False)
        loaded = torch.load(theirs / "checkpoint.pt", weights_only=False)
        saved["elapsed"] = loaded["elapsed"]
        saved["history"]["metrics"] = loaded["history"]["metrics"]  # compared above
        if not exact_files:
            saved["history"]["weights"] = loaded["history"]["weights"]  # float32 decimals
        assert_same_state(saved, loaded, rtol=rtol, atol=atol, where=f"seed {seed}")


# ---------------------------------------------------------------------------------------------
# Per-seed results equal separate runs


def test_together_equals_separate_runs_in_float64(space_file, separate64, tmp_path):
    """Losses, accuracies, weights, running statistics, alpha / beta, optimiser states (SGD
    momentum, Adam moments and step), generator states and the derived genotypes of every seed
    and epoch equal those of the seed's own run; the files are byte for byte the same."""
    out = tmp_path / "together"
    with in_float64():
        results = run_seeds(tiny_config(space_file), SEEDS, out, device="cpu",
                            dataset=tiny_images(), together=True)
    assert [result.seed for result in results] == list(SEEDS)
    assert json.loads((out / "seeds.json").read_text())["together"] is True
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads((separate64 / "summary.json").read_text())
    assert_same_run(separate64, out, rtol=1e-10, atol=1e-12)
    first, second = (torch.load(out / f"seed-{seed}" / "checkpoint.pt", weights_only=False)
                     for seed in SEEDS)
    assert not torch.equal(first["model"]["arch.alpha_normal"],
                           second["model"]["arch.alpha_normal"])  # the seeds did differ


def test_together_equals_separate_runs_in_float32(space_file, tmp_path):
    """float32: equal within rounding (relative 1e-4, absolute 1e-6 after four steps; measured
    differences are about 1e-7 relative), same genotypes."""
    config = tiny_config(space_file)
    run_seeds(config, SEEDS, tmp_path / "separate", device="cpu", dataset=tiny_images())
    run_seeds(config, SEEDS, tmp_path / "together", device="cpu", dataset=tiny_images(),
              together=True)
    assert_same_run(tmp_path / "separate", tmp_path / "together", rtol=1e-4, atol=1e-6,
                    exact_files=False)


@pytest.mark.parametrize("order, second_order, clip", [
    (1, "darts", "weights"), (1, "darts", "authors"), (2, "darts", "weights"),
    (2, "authors", "authors")])
def test_stacked_steps_equal_bilevel_steps(space_file, order, second_order, clip):
    """One `Bilevel` per seed against one `Bilevel` on the stacked seeds, three iterations in
    float64, with a clip small enough to act: first order, both clip variants (the authors'
    counts alpha / beta's gradients in each seed's norm), both second-order variants (eps per
    seed)."""
    space = parse_file(space_file).space()
    config = tiny_config(space_file, clip=clip, grad_clip=0.05, order=order,
                         second_order=second_order)
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(compile_supernet(space, channels=4, layers=3, input_size=8,
                                       init="randn").double())
    generator = torch.Generator().manual_seed(0)
    batches = [((torch.randn(2, 4, 3, 8, 8, generator=generator, dtype=torch.float64),
                 torch.randint(0, 10, (2, 4), generator=generator)),
                (torch.randn(2, 4, 3, 8, 8, generator=generator, dtype=torch.float64),
                 torch.randint(0, 10, (2, 4), generator=generator))) for _ in range(3)]
    stacked = stacked_bilevel(models, config)
    separate = [Bilevel(model, config) for model in models]
    for weight_batch, arch_batch in batches:
        stats = torch.stack(stacked.step(weight_batch, arch_batch))
        for seed, bilevel in enumerate(separate):
            own = bilevel.step(*((x[seed], y[seed]) for x, y in (weight_batch, arch_batch)))
            torch.testing.assert_close(stats[:, seed], torch.stack([v.double() for v in own]))
            assert bilevel.grad_norm > config.grad_clip  # the clip acted
            torch.testing.assert_close(stacked.grad_norm[seed], bilevel.grad_norm)
    seeds = stacked.seeds
    for seed, model in enumerate(models):
        state = model.state_dict()
        for name, value in zip(seeds.weight_names + seeds.arch_names + seeds.buffer_names,
                               seeds.weights + seeds.arch + seeds.buffers):
            torch.testing.assert_close(value[seed].detach(), state[name], rtol=1e-10,
                                       atol=1e-12, msg=name)


def stacked_bilevel(models, config) -> Bilevel:
    """The step on the seeds' values stacked, each seed with the generator its own run has."""
    return Bilevel(Seeds.stack(models, [method_generator(config.seed, "cpu") for _ in models]),
                   config)


def test_clip_uses_each_seeds_own_norm():
    """Seed 0's norm is 5 (scaled to 1), seed 1's is 0.5 (kept), against clip_grad_norm_."""
    grads = [torch.tensor([[3.0, 0.0], [0.3, 0.0]]), torch.tensor([[[4.0]], [[0.4]]])]
    expected = []
    for seed in range(2):
        own = [torch.nn.Parameter(torch.zeros(grad.shape[1:])) for grad in grads]
        for param, grad in zip(own, grads):
            param.grad = grad[seed].clone()
        norm = torch.nn.utils.clip_grad_norm_(own, 1.0)
        expected.append((norm, [param.grad for param in own]))
    norms = clip_per_seed(grads, grads, 1.0)
    for seed, (norm, clipped) in enumerate(expected):
        torch.testing.assert_close(norms[seed], norm)
        for grad, reference in zip(grads, clipped):
            torch.testing.assert_close(grad[seed], reference)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.5]))
    torch.testing.assert_close(grads[1][:, 0, 0], torch.tensor([0.8, 0.4]), atol=1e-6, rtol=0)


def test_batch_norm_keeps_each_seeds_running_statistics(space_file):
    """vmap over the stacked running statistics: each seed's move as its own forward moves them
    (training mode, momentum 0.1, unbiased variance, one more batch counted)."""
    space = parse_file(space_file).space()
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(compile_supernet(space, channels=4, layers=3, input_size=8).double())
    seeds = stacked_bilevel(models, tiny_config(space_file)).seeds
    images = torch.randn(2, 4, 3, 8, 8, dtype=torch.float64)
    seeds.forward(images, seeds.model.mixture_weights(dict(zip(seeds.arch_names, seeds.arch))))
    stem = seeds.buffer_names.index("stem.1.running_mean")
    for seed, model in enumerate(models):
        features = model.stem[0](images[seed])
        expected = 0.1 * features.mean(dim=(0, 2, 3))  # from a zero running mean
        torch.testing.assert_close(seeds.buffers[stem][seed], expected.detach())
        model(images[seed])
        for name, value in zip(seeds.buffer_names, seeds.buffers):
            torch.testing.assert_close(value[seed], model.state_dict()[name], msg=name)


# ---------------------------------------------------------------------------------------------
# Resume


class Stop(Exception):
    pass


def interrupted(space_file: Path, out: Path, after_steps: int, monkeypatch) -> None:
    """A together run killed inside its `after_steps + 1`-th iteration (checkpoints every step)."""
    calls = []
    original = TogetherSearch.step

    def step(self, *batches):
        if len(calls) == after_steps:
            raise Stop
        calls.append(1)
        return original(self, *batches)

    with monkeypatch.context() as patch:
        patch.setattr(TogetherSearch, "step", step)
        with pytest.raises(Stop):
            run_seeds(tiny_config(space_file), SEEDS, out, device="cpu",
                      dataset=tiny_images(), together=True)


def test_resume_continues_together_to_the_same_results(space_file, separate64, tmp_path,
                                                       monkeypatch):
    out = tmp_path / "run"
    with in_float64():
        interrupted(space_file, out, 3, monkeypatch)  # epoch 2, step 1 saved
        state = torch.load(out / "seed-2" / "checkpoint.pt", weights_only=False)
        assert (state["epoch"], state["step"]) == (1, 1)
        calls = []
        monkeypatch.setattr(TogetherSearch, "run_epoch",
                            lambda self, original=TogetherSearch.run_epoch: calls.append(1) or
                            original(self))
        resume_search(out, device="cpu", dataset=tiny_images())
    assert calls == [1]  # continued together, one epoch
    assert_same_run(separate64, out, rtol=1e-10, atol=1e-12)


def test_resume_of_seeds_killed_before_any_checkpoint_starts_them_again(
        space_file, separate64, tmp_path, monkeypatch, caplog):
    with in_float64():
        interrupted(space_file, tmp_path / "run", 0, monkeypatch)
        assert not list((tmp_path / "run").glob("seed-*/checkpoint.pt"))
        resume_search(tmp_path / "run", device="cpu", dataset=tiny_images())
    assert "starting them again from epoch 1, together" in caplog.text
    assert_same_run(separate64, tmp_path / "run", rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # three partial runs, then two resumed seeds
def test_resume_of_seeds_stopped_at_different_points_goes_one_by_one(
        space_file, separate64, tmp_path, monkeypatch, caplog):
    """Each seed continues alone from the checkpoint the together run wrote (`resume_search`
    of its directory), to the results of its own run."""
    with in_float64():
        interrupted(space_file, tmp_path / "a", 3, monkeypatch)
        interrupted(space_file, tmp_path / "b", 1, monkeypatch)
        shutil.rmtree(tmp_path / "a" / "seed-2")
        shutil.copytree(tmp_path / "b" / "seed-2", tmp_path / "a" / "seed-2")
        results = resume_search(tmp_path / "a", device="cpu", dataset=tiny_images())
    assert "one after another" in caplog.text
    assert [result.seed for result in results] == list(SEEDS)
    assert_same_run(separate64, tmp_path / "a", rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# What together refuses, and the command line


EVERY_METHOD = SPACE.replace("mixing = sum", """mixing = sum
    methods = [partial_channels(k=2), edge_normalisation, auxiliary_skip(decay=linear),
               auxiliary_identity(decay=cosine), beta_decay(lambda=0.5), smoothing,
               max_skip_connect(n=1), max_identity(n=1)]""")


def test_stacked_step_with_every_method_equals_bilevel_steps(tmp_path):
    """Every search method's hooks in the stacked step (each seed's noise from its own
    generator, the methods' epoch values set): two iterations, float64, against one `Bilevel`
    per seed."""
    space = parse_text(EVERY_METHOD).space()
    config = tiny_config(tmp_path / "unused.geno")
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(compile_supernet(space, channels=4, layers=3, input_size=8,
                                       init="randn").double())
    stacked = stacked_bilevel(models, config)
    separate = [Bilevel(model, config) for model in models]
    for bilevel in (stacked, *separate):
        assert bilevel.methods.epoch_start(1, 3)["smoothing"] > 0
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
    for seed, (model, bilevel) in enumerate(zip(models, separate)):
        state = model.state_dict()
        for name, value in zip(seeds.weight_names + seeds.arch_names,
                               seeds.weights + seeds.arch):
            torch.testing.assert_close(value[seed].detach(), state[name], rtol=1e-10,
                                       atol=1e-12, msg=name)
        assert torch.equal(seeds.generators[seed].get_state(), bilevel.generator.get_state())


# The methods that make the mixture weights themselves (samplers): each in the stacked step,
# every seed drawing from its own generator; spaces without `none` where a method refuses it.
SAMPLERS = {
    "drnas": SPACE.replace("mixing = sum", "mixing = sum\n    methods = [drnas(kl=0.5)]"),
    "fair_darts": SPACE.replace("mixing = sum", "mixing = sum\n    methods = [fair_darts]")
                       .replace("[none, ", "["),
    # single paths: each seed's forward on its own paths, its weights off them left alone; bam
    # has batch norms, whose saved statistics each seed's backward needs as its forward left them
    "gdas": SPACE.replace("mixing = sum", "mixing = sum\n    methods = [gdas]")
                 .replace("cbam]", "cbam, bam]"),
}


# GDAS in a second-order step too (both variants, a clip small enough to act)
SAMPLER_STEPS = [pytest.param(name, {}, id=name) for name in SAMPLERS] + [
    pytest.param("gdas", {"order": 2, "second_order": variant, "clip": clip, "grad_clip": 0.05},
                 id=f"gdas-order2-{variant}")
    for variant, clip in (("darts", "weights"), ("authors", "authors"))]


@pytest.mark.parametrize("name, changes", SAMPLER_STEPS)
def test_stacked_step_with_each_sampler_equals_bilevel_steps(tmp_path, name, changes):
    """A sampler in the stacked step: two iterations, float64, against one `Bilevel` per seed
    (the draws of seed s come from seed s's own generator in both, seeded from s: the seeds draw
    apart, and under GDAS take different paths); weights, architecture and momentum compared."""
    space = parse_text(SAMPLERS[name]).space()
    config = tiny_config(tmp_path / "unused.geno", **changes)
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(compile_supernet(space, channels=4, layers=3, input_size=8,
                                       init="randn").double())
    stacked = Bilevel(Seeds.stack(models, [method_generator(seed, "cpu") for seed in SEEDS]),
                      config)
    separate = [Bilevel(model, config.model_copy(update={"seed": seed}))
                for seed, model in zip(SEEDS, models)]
    for bilevel in (stacked, *separate):
        bilevel.methods.epoch_start(1, 3)
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
    momentum = stacked.weight_optimizer.state
    for seed, (model, bilevel) in enumerate(zip(models, separate)):
        state = model.state_dict()
        for name_, value in zip(seeds.weight_names + seeds.arch_names,
                                seeds.weights + seeds.arch):
            torch.testing.assert_close(value[seed].detach(), state[name_], rtol=1e-10,
                                       atol=1e-12, msg=name_)
        # SGD's momentum: the seed's own where it has one, zero where it has none (GDAS: a
        # weight off every path the seed drew), and `missing` names exactly those
        own = dict(zip(seeds.weight_names, bilevel.weight_params))
        for name_, value in zip(seeds.weight_names, seeds.weights):
            held = bilevel.weight_optimizer.state.get(own[name_])
            buffer = momentum[value]["momentum_buffer"][seed] if value in momentum else None
            assert (held is None) == (name_ in seeds.missing[seed] or buffer is None), name_
            if held is not None:
                torch.testing.assert_close(buffer, held["momentum_buffer"], rtol=1e-10,
                                           atol=1e-12, msg=name_)
            elif buffer is not None:
                assert not buffer.any(), name_
    assert any(seeds.missing) == (name == "gdas")


@pytest.mark.slow  # two runs of two seeds per sampler
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_sampler_together_equals_separate_runs_in_float64(tmp_path, name):
    """`--together` with a sampler: each seed's files and checkpoint are its own run's."""
    space_file = tmp_path / f"{name}.geno"
    space_file.write_text(SAMPLERS[name])
    config = tiny_config(space_file, epochs=2)
    with in_float64():
        run_seeds(config, SEEDS, tmp_path / "separate", device="cpu", dataset=tiny_images())
        run_seeds(config, SEEDS, tmp_path / "together", device="cpu", dataset=tiny_images(),
                  together=True)
    assert_same_run(tmp_path / "separate", tmp_path / "together", rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # a separate run, a together run killed mid-epoch and its resume
def test_gdas_together_resumed_mid_epoch_equals_separate_runs(tmp_path, monkeypatch):
    """GDAS's seeds hold momentum for different weights (those their paths reached): the
    checkpoints written together keep each seed's own, and a resume stacks them again (zero
    where a seed has none) to the files of separate runs."""
    space_file = tmp_path / "gdas.geno"
    space_file.write_text(SAMPLERS["gdas"])
    with in_float64():
        run_seeds(tiny_config(space_file), SEEDS, tmp_path / "separate", device="cpu",
                  dataset=tiny_images())
        interrupted(space_file, tmp_path / "run", 3, monkeypatch)  # epoch 2, step 1 saved
        held = [len(torch.load(tmp_path / "run" / f"seed-{seed}" / "checkpoint.pt",
                               weights_only=False)["optimizers"]["weight_optimizer"]["state"])
                for seed in SEEDS]
        resume_search(tmp_path / "run", device="cpu", dataset=tiny_images())
    weights = len(compile_supernet(parse_file(space_file).space(), channels=4, layers=3,
                                   input_size=8).weights())
    assert min(held) < weights  # some weight never on a seed's paths: no momentum
    assert_same_run(tmp_path / "separate", tmp_path / "run", rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # four runs of two seeds
@pytest.mark.parametrize("order", [1, 2])
def test_every_method_together_equals_separate_runs_in_float64(tmp_path, order):
    """Every search method at once (partial channels, edge normalisation, DARTS-'s terms,
    beta-decay, random smoothing's per-seed noise, the caps) and the architecture warm-up: each
    seed's files and checkpoint, its method generator included, are its own run's."""
    space_file = tmp_path / "every.geno"
    space_file.write_text(EVERY_METHOD)
    config = tiny_config(space_file, order=order, epochs=3, arch_start_epoch=1)
    with in_float64():
        run_seeds(config, SEEDS, tmp_path / "separate", device="cpu", dataset=tiny_images())
        run_seeds(config, SEEDS, tmp_path / "together", device="cpu", dataset=tiny_images(),
                  together=True)
    assert_same_run(tmp_path / "separate", tmp_path / "together", rtol=1e-10, atol=1e-12)
    metrics = json.loads((tmp_path / "together" / "seed-1" / "metrics.jsonl").read_text()
                         .splitlines()[-1])
    assert {"auxiliary_skip", "auxiliary_identity", "beta_decay", "smoothing"} <= set(metrics)


def test_a_seed_that_stops_early_is_finished_and_the_others_go_on(tmp_path, monkeypatch):
    """DARTS+ in one seed only: its directory ends at its stop, the other seed's run goes on,
    each as its own run (the stop steered by hand, before each epoch)."""
    space_file = tmp_path / "stop.geno"
    space_file.write_text(SPACE.replace("mixing = sum", "mixing = sum\n    methods = [stop_at_skips]"))
    run_epoch = TogetherSearch.run_epoch

    def steered(self):
        seeds = self.bilevel.seeds
        alpha = seeds.arch[seeds.arch_names.index("arch.alpha_normal")]
        with torch.no_grad():  # seed 1 favours skip_connect from epoch 1 (0-based) on
            alpha[0, :, 2] = 3.0 if self.epoch >= 1 else -3.0
            alpha[1, :, 2] = -3.0
        return run_epoch(self)

    monkeypatch.setattr(TogetherSearch, "run_epoch", steered)
    config = tiny_config(space_file, epochs=4, checkpoint_every=0)
    results = run_seeds(config, SEEDS, tmp_path / "together", device="cpu",
                        dataset=tiny_images(), together=True)
    assert [result.epochs for result in results] == [2, 4]
    assert results[0].metrics["stopped_early"]["epoch"] == 2
    assert "stopped_early" not in results[1].metrics


def test_cli_together(space_file, tmp_path):
    runner = CliRunner()
    common = [str(space_file), "--dataset", "synthetic", "--epochs", "1", "--batch-size", "4",
              "--channels", "4", "--layers", "3", "--max-steps-per-epoch", "1", "--quiet",
              "--device", "cpu"]
    result = runner.invoke(cli, ["search", *common, "--together", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "give them with --seeds" in result.output
    smooth = tmp_path / "smooth.geno"
    smooth.write_text(SPACE.replace("mixing = sum", "mixing = sum\n    methods = [smoothing]"))
    result = runner.invoke(cli, ["search", str(smooth), *common[1:], "--together", "--seeds",
                                 "1,2", "--out", str(tmp_path / "y")])
    assert result.exit_code == 0, result.output  # every method runs together
    assert (tmp_path / "y" / "seed-2" / "genotype.geno").is_file()
    result = runner.invoke(cli, ["search", *common, "--together", "--seeds", "3,4", "--order",
                                 "2", "--out", str(tmp_path / "z")])
    assert result.exit_code == 0, result.output
    assert "searched 2 seeds" in result.output
    assert json.loads((tmp_path / "z" / "seeds.json").read_text())["together"] is True
    for seed in (3, 4):
        assert (tmp_path / "z" / f"seed-{seed}" / "genotype.geno").is_file()


def test_grouped_cells_run_under_vmap_and_equal_the_plain_cells(space_file):
    """The grouped cells' running-statistics write-back runs under vmap (one operation per
    tensor there), so the seeds run grouped: the same logits and statistics as plain cells."""
    space = parse_file(space_file).space()
    torch.manual_seed(0)
    model = compile_supernet(space, channels=4, layers=3, input_size=8, grouped=True).double()
    seeds = stacked_bilevel([model, model], tiny_config(space_file)).seeds
    assert seeds.model.grouped
    images = torch.randn(2, 4, 3, 8, 8, dtype=torch.float64)
    weights = seeds.model.mixture_weights(dict(zip(seeds.arch_names, seeds.arch)))
    before = [buffer.clone() for buffer in seeds.buffers]
    grouped = seeds.forward(images, weights)
    after_grouped = [buffer.clone() for buffer in seeds.buffers]
    for buffer, value in zip(seeds.buffers, before):
        buffer.copy_(value)
    seeds.model.set_grouped(False)
    torch.testing.assert_close(seeds.forward(images, weights), grouped)
    for name, plain, fast in zip(seeds.buffer_names, seeds.buffers, after_grouped):
        torch.testing.assert_close(fast, plain, msg=name)
