"""The bilevel search (attdarts.runs.search) and `attdarts search`."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from torch.func import functional_call

from attdarts.cli import cli
from attdarts.networks.network import compile_network
from attdarts.runs import data
from attdarts.runs import search
from attdarts.runs.search import bilevel as bilevel_module
from attdarts.runs.search import (
    Bilevel, SearchConfig, SearchError, cosine_lr, hessian_vector_product, run_search, run_seeds,
    virtual_step,
)
from attdarts.language.transform import parse_file, parse_text
from attdarts.networks.supernet import compile_supernet

ROOT = Path(__file__).resolve().parents[3]
# real CIFAR-10 images in ImageFolder layout: the subset the package ships (cifar10-mini), read
# through `folder:` by the slow test below
SAMPLE = ROOT / "attdarts" / "data" / "cifar10-mini"

TINY_SPACE = """\
space tiny {
    operations = [none, max_pool_3x3, skip_connect, sep_conv_3x3]
    attentions = [identity, se, cbam]
    nodes = 2
    keep = 2
    location = after_every
    mixing = sum
}
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    path = tmp_path / "tiny.geno"
    path.write_text(TINY_SPACE)
    return path


def tiny_config(space_file: Path, **changes) -> SearchConfig:
    settings = dict(space_file=str(space_file), dataset="synthetic", epochs=2, batch_size=4,
                    channels=4, layers=5, max_steps_per_epoch=2, deterministic=True)
    settings.update(changes)
    return SearchConfig(**settings)


def tiny_images(size: int = 32) -> data.ImageTensors:
    return data.synthetic_dataset(train=True, size=size, resolution=8)


def tiny_bilevel(space_file: Path, **changes) -> tuple[Bilevel, tuple, tuple]:
    """A float64 supernet with a populated momentum buffer, and a weight and an arch batch."""
    torch.manual_seed(0)
    space = parse_file(space_file).space()
    model = compile_supernet(space, channels=4, layers=3, input_size=8, init="randn").double()
    bilevel = Bilevel(model, tiny_config(space_file, order=2, **changes))
    weight_batch = (torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3]))
    arch_batch = (torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([3, 2, 1, 0]))
    bilevel.weight_step(weight_batch)  # momentum buffers exist from here on
    return bilevel, weight_batch, arch_batch


# ---------------------------------------------------------------------------------------------
# Configuration


def test_config_holds_the_paper_defaults():
    config = SearchConfig(space_file="s.geno")
    assert (config.epochs, config.batch_size, config.channels, config.layers) == (50, 64, 16, 8)
    assert (config.lr, config.lr_min, config.momentum, config.weight_decay, config.grad_clip) == (
        0.025, 0.0, 0.9, 3e-4, 5.0)  # lr_min: the paper anneals to 0
    assert (config.arch_lr, config.arch_betas, config.arch_weight_decay) == (3e-4, (0.5, 0.999), 1e-3)
    assert config.train_portion == 0.5 and config.arch_init == "zeros" and config.order == 1
    assert config.recipe == "paper" and config.clip == "weights"
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.epochs = 3  # frozen


def test_cosine_schedule():
    config = SearchConfig(space_file="s.geno", epochs=50, lr_min=0.0)
    assert cosine_lr(config, 0) == 0.025
    assert cosine_lr(config, 25) == pytest.approx(0.0125)
    assert cosine_lr(config, 50) == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------
# Second order


def test_virtual_step_is_darts_formula_and_moves_the_weights():
    w = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([[0.5]])}
    g = {"a": torch.tensor([0.1, 0.2]), "b": torch.tensor([[-1.0]])}
    m = {"a": torch.tensor([1.0, 1.0]), "b": None}
    moved = virtual_step(w, g, eta=0.1, weight_decay=0.01, momentum=0.9, buffers=m)
    torch.testing.assert_close(moved["a"], w["a"] - 0.1 * (0.9 * m["a"] + g["a"] + 0.01 * w["a"]))
    torch.testing.assert_close(moved["b"], w["b"] - 0.1 * (g["b"] + 0.01 * w["b"]))


def test_finite_difference_hvp_matches_double_backward(tiny_space):
    """DARTS's central difference converges to the exact product (double backward).

    Checked at r = 1e-5: at DARTS's r = 0.01 this tiny float64 net's ReLU and max-pool kinks
    (gradient jumps divided by 2 eps) dominate the difference; the formula is the same.
    """
    bilevel, (x, y), _ = tiny_bilevel(tiny_space)
    model = bilevel.model
    weights = dict(model.named_weights())
    arch = dict(model.named_architecture())

    def loss(w, a):
        return F.cross_entropy(functional_call(model, {**w, **a}, (x,)), y)

    generator = torch.Generator().manual_seed(1)
    vector = {n: torch.randn(p.shape, generator=generator, dtype=p.dtype) for n, p in weights.items()}
    product, eps = hessian_vector_product(loss, weights, arch, vector, r=1e-5)
    norm = torch.sqrt(sum((v ** 2).sum() for v in vector.values()))
    torch.testing.assert_close(eps, 1e-5 / norm)

    grads = torch.autograd.grad(loss(weights, arch), list(weights.values()), create_graph=True)
    dot = sum((g * vector[n]).sum() for g, n in zip(grads, weights))
    exact = torch.autograd.grad(dot, list(arch.values()))
    for name, expected in zip(arch, exact):
        torch.testing.assert_close(product[name], expected, rtol=1e-5, atol=1e-8)


def test_unrolled_gradient_matches_autograd_through_the_virtual_step(tiny_space, monkeypatch):
    bilevel, weight_batch, arch_batch = tiny_bilevel(tiny_space)
    bilevel.hvp_scale = 1e-5  # see the test above
    model, config = bilevel.model, bilevel.config
    eta = bilevel.lr
    weights = dict(model.named_weights())
    arch = dict(model.named_architecture())

    moves = []
    original = bilevel_module.virtual_step
    monkeypatch.setattr(bilevel_module, "virtual_step",
                        lambda w, g, **kw: moves.append((w, original(w, g, **kw))) or moves[-1][1])
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    grads, _, _ = bilevel.unrolled_gradient(weight_batch, arch_batch)
    for name, buffer in model.named_buffers():  # BN statistics untouched by the extra passes
        assert torch.equal(buffer, buffers[name]), name
    (before, after), = moves
    changed = [n for n in before if not torch.equal(before[n].detach(), after[n])]
    assert len(changed) == len(before)  # the virtual step really moves every weight

    # exact: d/da L_val(w - eta (mu m + grad_w L_train(w, a) + lambda w), a)
    def loss(w, batch):
        return F.cross_entropy(functional_call(model, {**w, **arch}, (batch[0],)), batch[1])

    train_grads = torch.autograd.grad(loss(weights, weight_batch), list(weights.values()),
                                      create_graph=True)
    state = bilevel.weight_optimizer.state
    virtual = {n: p - eta * (config.momentum * state[p]["momentum_buffer"] + g + config.weight_decay * p)
               for (n, p), g in zip(weights.items(), train_grads)}
    exact = torch.autograd.grad(loss(virtual, arch_batch), list(arch.values()))
    first_order = torch.autograd.grad(loss(weights, arch_batch), list(arch.values()))
    for got, expected, plain in zip(grads, exact, first_order):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)
        assert not torch.allclose(got, plain)


def test_authors_variant_differs_from_darts(tiny_space):
    darts, weight_batch, arch_batch = tiny_bilevel(tiny_space)
    authors, _, _ = tiny_bilevel(tiny_space, second_order="authors")
    exact, _, _ = darts.unrolled_gradient(weight_batch, arch_batch)
    variant, _, _ = authors.unrolled_gradient(weight_batch, arch_batch)
    assert all(torch.isfinite(g).all() for g in variant)
    assert not all(torch.allclose(a, b) for a, b in zip(exact, variant))


# ---------------------------------------------------------------------------------------------
# Runs


def test_search_writes_the_run_directory(tiny_space, tmp_path):
    config = tiny_config(tiny_space)
    result = run_search(config, tmp_path / "run", device="cpu", dataset=tiny_images())
    run = tmp_path / "run"
    names = sorted(p.name for p in run.iterdir())
    assert names == ["checkpoint.pt", "config.json", "environment.json", "genotype-epoch001.geno",
                     "genotype-epoch002.geno", "genotype.geno", "metrics.jsonl", "space.geno",
                     "weights.jsonl"]
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    genotype = parse_file(run / "genotype.geno").genotype()
    assert genotype == result.genotype
    assert genotype.meta_value("epoch") == "2/2" and genotype.meta_value("seed") == "2"
    assert "synthetic" in genotype.meta_value("dataset") and "not a real search" in genotype.meta_value("dataset")
    for name in ("genotype.geno", "genotype-epoch001.geno", "genotype-epoch002.geno"):
        meta = parse_file(run / name).genotype().meta_value("synthetic")
        assert meta == "random images and labels: a smoke test, not a real search", name
    assert (run / "genotype.geno").read_text() == (run / "genotype-epoch002.geno").read_text()
    network = compile_network(genotype, channels=4, layers=5, auxiliary=False, input_size=8)
    network.eval()
    assert network(torch.randn(2, 3, 8, 8)).shape == (2, 10)

    records = [json.loads(line) for line in (run / "weights.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert list(records[0]) == ["epoch", "synthetic", "normal", "reduce", "edges", "operations",
                                "attentions"]
    assert all(record["synthetic"] is True for record in records)
    assert records[0]["edges"] == ["n0<-c_k2", "n0<-c_k1", "n1<-c_k2", "n1<-c_k1", "n1<-n0"]
    assert records[0]["operations"] == ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
    assert records[0]["attentions"] == ["identity", "se", "cbam"]
    assert set(records[0]["normal"]) == {"alpha", "beta"}
    alpha = np.array(records[1]["reduce"]["alpha"])
    assert alpha.shape == (5, 4) and np.allclose(alpha.sum(axis=1), 1.0, atol=1e-6)

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds",
            "images_per_s"} <= set(metrics[0])
    assert metrics[0]["lr"] == 0.025 and metrics[1]["steps"] == 2
    assert [m["synthetic"] for m in metrics] == [True, True]
    # accuracies in percent, as training's, and marked so (older runs wrote fractions): each is
    # 100 x (correct of the epoch's 2 x 4 images) / 8
    for record in metrics:
        assert record["accuracy_unit"] == "%"
        for key in ("train_accuracy", "val_accuracy"):
            correct = record[key] * 8 / 100
            assert 0 <= correct <= 8 and correct == round(correct), (key, record[key])


def test_second_order_search_runs(tiny_space, tmp_path):
    config = tiny_config(tiny_space, order=2, epochs=1, max_steps_per_epoch=1)
    result = run_search(config, tmp_path / "run", device="cpu", dataset=tiny_images())
    assert result.epochs == 1 and (tmp_path / "run" / "genotype.geno").is_file()


def test_several_seeds_and_summary(tiny_space, tmp_path):
    config = tiny_config(tiny_space, epochs=1, max_steps_per_epoch=1)
    results = run_seeds(config, [1, 3], tmp_path / "runs", device="cpu", dataset=tiny_images())
    assert [r.seed for r in results] == [1, 3]
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert [row["seed"] for row in summary["seeds"]] == [1, 3]
    assert summary["seeds"][1]["genotype"] == "seed-3/genotype.geno"
    assert parse_file(tmp_path / "runs" / "seed-3" / "genotype.geno").genotype().meta_value("seed") == "3"
    assert set(summary["seeds"][0]["cells"]) == {"normal", "reduce"}


def test_nan_loss_stops_with_a_clear_error_and_keeps_earlier_epochs(tiny_space, tmp_path,
                                                                    monkeypatch):
    calls = []

    def poisoned(logits, labels):
        calls.append(1)
        loss = F.cross_entropy(logits, labels)
        return loss * float("nan") if len(calls) > 4 else loss  # epoch 1: 2 steps x 2 losses

    monkeypatch.setattr(bilevel_module, "_cross_entropy", poisoned)
    config = tiny_config(tiny_space, epochs=3)
    with pytest.raises(SearchError, match="NaN or infinite in epoch 2"):
        run_search(config, tmp_path / "run", device="cpu", dataset=tiny_images())
    run = tmp_path / "run"
    assert (run / "genotype-epoch001.geno").is_file()
    assert not (run / "genotype-epoch002.geno").exists()
    assert len((run / "weights.jsonl").read_text().splitlines()) == 1


def test_cli_reports_bad_data_and_corrupt_checkpoints_without_traceback(tiny_space, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["search", str(tiny_space), "--dataset", f"folder:{tmp_path / 'nope'}",
                                 "--out", str(tmp_path / "a"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "Traceback" not in result.output

    run = tmp_path / "run"
    run_search(tiny_config(tiny_space, epochs=1, max_steps_per_epoch=1), run, device="cpu",
               dataset=tiny_images())
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    result = runner.invoke(cli, ["search", "--resume", str(run), "--device", "cpu", "--quiet"])
    assert result.exit_code == 1
    assert "corrupt" in result.output and "Traceback" not in result.output

    result = runner.invoke(cli, ["search", str(tiny_space), "--out", str(run), "--quiet"])
    assert result.exit_code == 1 and "--resume" in result.output


def run_listing(run: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(run.iterdir())}


def test_resume_without_checkpoint_refuses_when_epochs_were_written(tiny_space, tmp_path):
    run = tmp_path / "run"
    run_search(tiny_config(tiny_space, epochs=1, max_steps_per_epoch=1), run, device="cpu",
               dataset=tiny_images())
    (run / "checkpoint.pt").unlink()
    before = run_listing(run)
    with pytest.raises(SearchError, match="checkpoint.pt: missing, but the run already wrote "
                                          "genotype-epoch001.geno"):
        search.resume_search(run, device="cpu", dataset=tiny_images())
    assert run_listing(run) == before  # nothing touched, config.json included

    result = CliRunner().invoke(cli, ["search", "--resume", str(run), "--device", "cpu", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cannot continue without its checkpoint" in result.output
    assert run_listing(run) == before


def test_resume_without_any_output_restarts_and_says_so(tiny_space, tmp_path, caplog, monkeypatch):
    # a CLI test earlier in the session (`attdarts train`) may have stopped "attdarts" propagating
    monkeypatch.setattr(logging.getLogger("attdarts"), "propagate", True)
    run = tmp_path / "run"
    config = tiny_config(tiny_space, epochs=1, max_steps_per_epoch=1)
    reference = run_search(config, tmp_path / "reference", device="cpu", dataset=tiny_images())
    run.mkdir()  # a run killed in its first epoch: config.json and space.geno only
    for name in ("config.json", "space.geno"):
        (run / name).write_bytes((tmp_path / "reference" / name).read_bytes())
    with caplog.at_level("WARNING", logger="attdarts.runs.search"):
        result = search.resume_search(run, device="cpu", dataset=tiny_images())
    assert "starting it again from epoch 1" in caplog.text
    assert result.epochs == 1 and result.genotype == reference.genotype
    assert (run / "config.json").read_bytes() == (tmp_path / "reference" / "config.json").read_bytes()


def test_resume_accepts_a_run_written_before_the_recipe_settings(tiny_space, tmp_path):
    from attdarts.runs import checkpoints

    run = tmp_path / "run"
    run_search(tiny_config(tiny_space, epochs=1, max_steps_per_epoch=1), run, device="cpu",
               dataset=tiny_images())
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    for key in ("recipe", "clip", "bam_combine"):  # what an older attdarts wrote
        del state["config"][key]
    checkpoints.save(run / "checkpoint.pt", state)
    (run / "config.json").write_text(json.dumps(state["config"], indent=2) + "\n")
    result = search.resume_search(run, device="cpu", dataset=tiny_images())
    assert result.epochs == 1

    state["config"]["lr"] = 0.5  # another run's checkpoint is still refused
    checkpoints.save(run / "checkpoint.pt", state)
    with pytest.raises(checkpoints.CheckpointError, match="different config"):
        search.resume_search(run, device="cpu", dataset=tiny_images())


# ---------------------------------------------------------------------------------------------
# Every hyper-parameter is an option, validated


SMALL_RUN = ["--dataset", "synthetic", "--channels", "4", "--layers", "5", "--batch-size", "4",
             "--epochs", "1", "--max-steps-per-epoch", "1", "--device", "cpu", "--quiet"]


def test_cli_passes_every_search_hyper_parameter(tiny_space, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "search", str(tiny_space), *SMALL_RUN, "--out", str(run), "--lr", "0.05", "--lr-min",
        "0.002", "--momentum", "0.8", "--weight-decay", "1e-4", "--grad-clip", "3",
        "--arch-lr", "6e-4", "--arch-weight-decay", "2e-3", "--arch-betas", "0.4,0.99",
        "--train-portion", "0.6", "--clip", "authors", "--second-order", "authors",
        "--arch-init", "randn", "--bam-combine", "product"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert {key: config[key] for key in (
        "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "arch_lr", "arch_weight_decay",
        "arch_betas", "train_portion", "clip", "second_order", "arch_init", "bam_combine")} == {
        "lr": 0.05, "lr_min": 0.002, "momentum": 0.8, "weight_decay": 1e-4, "grad_clip": 3.0,
        "arch_lr": 6e-4, "arch_weight_decay": 2e-3, "arch_betas": [0.4, 0.99],
        "train_portion": 0.6, "clip": "authors", "second_order": "authors",
        "arch_init": "randn", "bam_combine": "product"}
    assert config["recipe"] == "paper"


@pytest.mark.parametrize("arguments, expected", [
    (["--lr-min", "1e9"], "--lr-min (1000000000.0) must not exceed --lr (0.025)"),
    (["--lr", "0.01", "--lr-min", "0.02"], "must not exceed --lr (0.01)"),
    (["--momentum", "1"], "--momentum 1.0: Input should be less than 1"),
    (["--lr", "nan"], "--lr nan: Input should be a finite number"),
    (["--weight-decay", "inf"], "--weight-decay inf: Input should be a finite number"),
    (["--grad-clip", "0"], "--grad-clip 0.0: Input should be greater than 0"),
    (["--arch-lr", "-1"], "--arch-lr -1.0: Input should be greater than 0"),
    (["--arch-betas", "0.5,1.5"], "--arch-betas: both betas must lie in [0, 1)"),
    (["--arch-betas", "0.5"], "expected two comma-separated numbers"),
    (["--train-portion", "1"], "--train-portion 1.0: Input should be less than 1"),
    (["--threads", "0"], "--threads"),
])
def test_cli_rejects_bad_hyper_parameters_in_one_line(tiny_space, tmp_path, arguments, expected):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", str(tiny_space), *SMALL_RUN, "--out", str(run),
                                      *arguments])
    assert result.exit_code != 0 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and expected in errors[0]  # one line, naming the option
    assert not run.exists()  # refused before anything was written


def test_nan_message_names_options_that_exist(tiny_space, tmp_path, monkeypatch):
    import re

    monkeypatch.setattr(bilevel_module, "_cross_entropy",
                        lambda logits, labels: F.cross_entropy(logits, labels) * float("nan"))
    result = CliRunner().invoke(cli, ["search", str(tiny_space), *SMALL_RUN,
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "NaN or infinite" in result.output
    named = set(re.findall(r"--[a-z][a-z-]*", result.output))
    from attdarts.commands.search import search as command

    options = {option for param in command.params for option in param.opts}
    assert "--lr" in named and named <= options


def test_threads_option_sets_torch_threads(tiny_space, tmp_path, monkeypatch):
    assert torch.get_num_threads() == 1  # pinned by the one_thread fixture
    seen = []
    launch = search.launch

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return launch(*args, **kwargs)

    monkeypatch.setattr(search, "launch", spy)
    result = CliRunner().invoke(cli, ["search", str(tiny_space), *SMALL_RUN, "--threads", "2",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert seen == [2]  # for the run; the count before is given back afterwards
    assert torch.get_num_threads() == 1


# ---------------------------------------------------------------------------------------------
# Real files: an ImageFolder, SIGKILL and --resume, the CIFAR-10 sample


def make_image_folder(root: Path, per_class: int = 24, size: int = 8) -> Path:
    generator = np.random.default_rng(0)
    for label in ("cat", "dog"):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = generator.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    (root / "test").mkdir()
    return root


def cli_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "attdarts.cli", "search", *arguments]


def cli_environment(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ATTDARTS_CACHE": str(tmp_path / "cache"),
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_identical_files(tiny_space, tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=24)  # 24 per half: 6 steps/epoch
    common = [str(tiny_space), "--dataset", f"folder:{images}", "--channels", "4", "--layers", "5",
              "--batch-size", "4", "--epochs", "3", "--deterministic", "--checkpoint-every", "1",
              "--device", "cpu", "--quiet"]
    env = cli_environment(tmp_path)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    subprocess.run(cli_command(*common, "--out", str(reference)), env=env, cwd=ROOT, check=True,
                   capture_output=True, timeout=600)

    process = subprocess.Popen(cli_command(*common, "--out", str(interrupted)), env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    killed_at = None
    while killed_at is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        try:
            state = torch.load(interrupted / "checkpoint.pt", weights_only=True)
        except Exception:
            continue
        if state["epoch"] == 1 and state["step"] >= 1:  # inside the second epoch
            process.send_signal(signal.SIGKILL)
            killed_at = (state["epoch"], state["step"])
    process.wait(timeout=60)
    assert killed_at is not None, f"the run ended before it could be killed: {process.stderr.read()!r}"
    assert process.returncode == -signal.SIGKILL
    assert not (interrupted / "genotype-epoch003.geno").exists()

    subprocess.run(cli_command("--resume", str(interrupted), "--device", "cpu", "--quiet"),
                   env=env, cwd=ROOT, check=True, capture_output=True, timeout=600)
    compared = ["genotype-epoch001.geno", "genotype-epoch002.geno", "genotype-epoch003.geno",
                "genotype.geno", "weights.jsonl"]
    for name in compared:
        assert (interrupted / name).read_bytes() == (reference / name).read_bytes(), name
    genotype = parse_file(interrupted / "genotype.geno").genotype()
    compile_network(genotype, channels=4, layers=5, auxiliary=False, input_size=8)


def test_search_on_a_32px_image_folder_is_not_labelled_synthetic(tiny_space, tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=8, size=32)
    config = tiny_config(tiny_space, dataset=f"folder:{images}", epochs=1, max_steps_per_epoch=1)
    result = run_search(config, tmp_path / "run", device="cpu")
    assert result.genotype.meta_value("dataset") == f"folder:{images}"
    assert result.genotype.meta_value("synthetic") is None
    for name in ("metrics.jsonl", "weights.jsonl"):
        record = json.loads((tmp_path / "run" / name).read_text().splitlines()[0])
        assert "synthetic" not in record, name
    compile_network(result.genotype, channels=4, layers=5, auxiliary=False)


@pytest.mark.slow
def test_search_on_real_images_in_a_folder(tiny_space, tmp_path):
    config = tiny_config(tiny_space, dataset=f"folder:{SAMPLE}", epochs=1, max_steps_per_epoch=1)
    result = run_search(config, tmp_path / "run", device="cpu")
    assert result.genotype.meta_value("dataset") == f"folder:{SAMPLE}"
    compile_network(result.genotype, channels=4, layers=5, auxiliary=False)


@pytest.mark.slow
def test_data_parallel_first_order_with_two_gloo_processes(tiny_space, tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=16)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "attdarts.cli", "search", str(tiny_space), "--dataset", f"folder:{images}",
               "--channels", "4", "--layers", "5", "--batch-size", "4", "--epochs", "2",
               "--max-steps-per-epoch", "2", "--device", "cpu", "--quiet",
               "--out", str(tmp_path / "ddp")]
    completed = subprocess.run(command, env=cli_environment(tmp_path), cwd=ROOT,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    genotype = parse_file(tmp_path / "ddp" / "genotype.geno").genotype()
    assert parse_text((tmp_path / "ddp" / "genotype.geno").read_text()).genotype() == genotype
    metrics = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and metrics[0]["steps"] == 2
