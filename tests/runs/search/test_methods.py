"""Search methods in the search loop: beta-decay, random smoothing, DARTS-'s auxiliary schedule,
DARTS+'s early stop, the architecture's warm-up and the pc-darts recipe (issues 13, 19, 20).

Each mechanism is checked against a small hand-written reference of its formula in float64.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language.errors import DslError
from attdarts.language.locations import LOCATIONS
from attdarts.language.printer import format_checked
from attdarts.language.transform import parse_file, parse_text
from attdarts.networks.derive import derive_genotype
from attdarts.networks.methods import Random, build_methods
from attdarts.networks.methods.auxiliary_identity import AuxiliaryIdentity
from attdarts.networks.methods.auxiliary_skip import AuxiliarySkip, decay_weight
from attdarts.networks.methods.beta_decay import BetaDecay, beta_decay_term
from attdarts.networks.methods.smoothing import RandomSmoothing, perturb
from attdarts.networks.network import compile_network
from attdarts.networks.supernet import compile_supernet
from attdarts.runs import data
from attdarts.runs.search import (
    Bilevel, SearchConfig, SearchError, recipe_config, resume_search, run_search,
)
from attdarts.runs.search.bilevel import method_generator
from attdarts.runs.search.loop import SearchRun
from attdarts.runs.search.outputs import count_skips
from helpers import Interrupted, interrupt_at

pytestmark = pytest.mark.usefixtures("one_thread")

OPERATIONS = "[none, max_pool_3x3, skip_connect, sep_conv_3x3]"
SKIP_COLUMN = 2  # skip_connect's column of alpha in OPERATIONS


def space_text(location: str = "after_every", mixing: str = "sum", **options: object) -> str:
    attentions = "" if location == "no_attention" else "    attentions = [identity, se, cbam]\n"
    lines = "".join(f"    {key} = {value}\n" for key, value in options.items())
    return (f"space tiny {{\n    operations = {OPERATIONS}\n{attentions}    nodes = 2\n"
            f"    keep = 2\n    location = {location}\n    mixing = {mixing}\n{lines}}}\n")


def write_space(tmp_path: Path, **options: object) -> Path:
    path = tmp_path / "tiny.geno"
    path.write_text(space_text(**options))
    return path


def tiny_config(space_file: Path | str, **changes) -> SearchConfig:
    settings = dict(space_file=str(space_file), dataset="synthetic", epochs=2, batch_size=4,
                    channels=4, layers=5, max_steps_per_epoch=2, deterministic=True)
    settings.update(changes)
    return SearchConfig(**settings)


def tiny_images() -> data.ImageTensors:
    return data.synthetic_dataset(train=True, size=32, resolution=8)


def batches() -> tuple[tuple, tuple]:
    generator = torch.Generator().manual_seed(7)
    weight = (torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=generator),
              torch.tensor([0, 1, 2, 3]))
    arch = (torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=generator),
            torch.tensor([3, 2, 1, 0]))
    return weight, arch


def tiny_bilevel(text: str, *, grouped: bool = False, **changes) -> Bilevel:
    torch.manual_seed(0)
    space = parse_text(text).space()
    model = compile_supernet(space, channels=4, layers=3, input_size=8, init="randn",
                             grouped=grouped).double()
    return Bilevel(model, tiny_config("unused.geno", **changes))


def method_of(bilevel: Bilevel, kind: type):
    return next(method for method in bilevel.model.methods if isinstance(method, kind))


def set_lambda(bilevel: Bilevel, value: float) -> None:
    """beta-decay's lambda_t, as `epoch_start` sets it."""
    method_of(bilevel, BetaDecay).lambda_t = value


@pytest.fixture
def recorded_auxiliary(monkeypatch) -> list[tuple[str, float]]:
    """The DARTS- methods' `epoch_start` recorded: (method, b) for each call, b as set."""
    calls: list[tuple[str, float]] = []
    for kind, name in ((AuxiliarySkip, "auxiliary_skip"), (AuxiliaryIdentity, "auxiliary_identity")):
        def epoch_start(self, epoch, epochs, original=kind.epoch_start, name=name):
            record = original(self, epoch, epochs)
            calls.append((name, float(self.b)))
            return record
        monkeypatch.setattr(kind, "epoch_start", epoch_start)
    return calls


# -- beta-decay (beta-DARTS) ---------------------------------------------------------------------


def _logsumexp_by_hand(row: list[float]) -> float:
    top = max(row)
    return top + math.log(sum(math.exp(value - top) for value in row))


def test_beta_decay_term_is_the_mean_logsumexp_over_all_rows_with_its_gradient():
    alpha = torch.tensor([[0.1, -0.2, 0.3], [1.0, 2.0, -1.0]], dtype=torch.float64,
                         requires_grad=True)
    beta = torch.tensor([[0.5, 0.25], [-0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    gamma = torch.tensor([[0.3, -0.7]], dtype=torch.float64, requires_grad=True)
    rows = [*alpha.tolist(), *beta.tolist(), *gamma.tolist()]
    expected = sum(_logsumexp_by_hand(row) for row in rows) / len(rows)  # 5 rows in all
    term = beta_decay_term([alpha, beta, gamma])
    assert term.item() == pytest.approx(expected, rel=1e-14)
    term.backward()
    # d/d row of logsumexp(row) / n is softmax(row) / n
    for tensor in (alpha, beta, gamma):
        for row, grad in zip(tensor.tolist(), tensor.grad.tolist()):
            total = sum(math.exp(value) for value in row)
            assert grad == pytest.approx([math.exp(value) / total / 5 for value in row],
                                         rel=1e-13)


def _schedule(text: str, epochs: int = 4) -> list[dict]:
    methods = build_methods(parse_text(text).space())
    return [methods.epoch_start(epoch, epochs) for epoch in range(epochs)]


def test_beta_decay_schedules():
    assert [r["beta_decay"] for r in _schedule(space_text(beta_decay=2.0))] == [
        0.0, 0.5, 1.0, 1.5]
    constant = space_text(beta_decay=2.0, beta_decay_schedule="constant")
    assert [r["beta_decay"] for r in _schedule(constant)] == [2.0] * 4
    assert _schedule(space_text()) == [{}] * 4  # off: nothing set, nothing recorded


def _recording(bilevel: Bilevel, monkeypatch) -> list[list[torch.Tensor]]:
    seen: list[list[torch.Tensor]] = []
    apply = bilevel._apply_arch_gradient

    def record(grads):
        seen.append([grad.clone() for grad in grads])
        apply(grads)

    monkeypatch.setattr(bilevel, "_apply_arch_gradient", record)
    return seen


def test_first_order_architecture_step_follows_val_loss_plus_the_term(monkeypatch):
    text = space_text(beta_decay=0.5)
    bilevel = tiny_bilevel(text)
    reference = copy.deepcopy(bilevel.model)
    set_lambda(bilevel, 0.7)
    seen = _recording(bilevel, monkeypatch)
    _, arch_batch = batches()
    bilevel.architecture_step_first_order(arch_batch)

    # hand-written: autograd of L_val + lambda * mean over rows of logsumexp, then Adam
    arch = dict(reference.named_architecture())  # alpha / beta of both cells, all regularised
    loss = F.cross_entropy(reference(arch_batch[0]), arch_batch[1])
    rows = torch.cat([torch.logsumexp(value, dim=-1) for value in arch.values()])
    total = loss + 0.7 * rows.mean()
    expected = torch.autograd.grad(total, list(arch.values()))
    for got, want in zip(seen[0], expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    # and without the term the gradient differs: the term is really there
    plain = torch.autograd.grad(F.cross_entropy(reference(arch_batch[0]), arch_batch[1]),
                                list(arch.values()))
    assert not torch.allclose(plain[0], seen[0][0])
    adam = torch.optim.Adam(list(arch.values()), lr=bilevel.config.arch_lr,
                            betas=bilevel.config.arch_betas,
                            weight_decay=bilevel.config.arch_weight_decay)
    for param, grad in zip(arch.values(), expected):
        param.grad = grad
    adam.step()
    for (name, moved), param in zip(bilevel.model.named_architecture(), arch.values()):
        torch.testing.assert_close(moved, param, rtol=1e-12, atol=1e-15, msg=name)


def test_second_order_gradient_gets_the_same_term(monkeypatch):
    text = space_text(beta_decay=0.5)
    bilevel = tiny_bilevel(text, order=2)
    twin = copy.deepcopy(bilevel)
    set_lambda(bilevel, 0.7)
    seen = _recording(bilevel, monkeypatch)
    weight_batch, arch_batch = batches()
    bilevel.architecture_step_second_order(weight_batch, arch_batch)
    unrolled, _, _ = twin.unrolled_gradient(weight_batch, arch_batch)
    values = [param.detach().clone().requires_grad_() for param in twin.arch_params]
    term_grads = torch.autograd.grad(
        torch.cat([torch.logsumexp(value, dim=-1) for value in values]).mean(), values)
    for got, base, extra in zip(seen[0], unrolled, term_grads):
        torch.testing.assert_close(got, base + 0.7 * extra, rtol=1e-10, atol=1e-13)


# -- random smoothing (SDARTS-RS) ----------------------------------------------------------------


def _sdarts_weights(model, eps: float, generator: torch.Generator) -> list[dict]:
    """SDARTS-RS's weight-step weights written out (their `softmax_arch_parameters`, then
    `Random_alpha`: + U[-eps, eps], then `clip`): per cell type, for alpha then beta, each row
    clipped to [0, 1] and divided by its sum; the noise drawn in that order."""
    weights = []
    for cell in ("normal", "reduce"):
        made = {}
        for kind in ("alpha", "beta"):
            softmax = torch.softmax(getattr(model.arch, f"{kind}_{cell}").detach(), dim=-1)
            noisy = softmax + torch.empty_like(softmax).uniform_(-eps, eps, generator=generator)
            rows = []
            for line in noisy:
                top = int(line.argmax())
                line = line.clamp(0, 1)
                if float(line.sum()) == 0.0:
                    line = torch.zeros_like(line)
                    line[top] = 1.0
                rows.append(line / line.sum())
            made[kind] = torch.stack(rows)
        weights.append(made)
    return weights


def test_smoothing_takes_the_weight_gradient_at_noisy_softmaxed_weights():
    """The weight step's forward uses softmax(alpha) + noise, clipped and renormalised, as SDARTS's
    code does (no second softmax); alpha itself is left as it was."""
    eps = 0.2
    bilevel = tiny_bilevel(space_text(smoothing=eps), weight_decay=0.0, grad_clip=1e9)
    smoothing = method_of(bilevel, RandomSmoothing)
    assert smoothing.epsilon == eps
    reference = copy.deepcopy(bilevel.model)
    before = [param.detach().clone() for param in bilevel.arch_params]
    weight_batch, _ = batches()
    generator = method_generator(bilevel.config.seed, "cpu")
    generator.set_state(bilevel.generator.get_state())
    bilevel.weight_step(weight_batch)
    got = [param.grad.clone() for param in bilevel.weight_params]
    for param, saved in zip(bilevel.arch_params, before):
        assert torch.equal(param.detach(), saved)  # the architecture is not touched

    def weight_gradient(weights: list[dict] | None) -> list[torch.Tensor]:
        model = copy.deepcopy(reference)
        mixture = None
        if weights is not None:
            mixture = tuple(cell._replace(alpha=made["alpha"], beta=made["beta"])
                            for cell, made in zip(model.mixture_weights(), weights))
        loss = F.cross_entropy(model(weight_batch[0], mixture), weight_batch[1])
        return list(torch.autograd.grad(loss, model.weights()))

    for mine, hand in zip(got, weight_gradient(_sdarts_weights(reference, eps, generator))):
        torch.testing.assert_close(mine, hand, rtol=1e-12, atol=1e-14)
    unperturbed = weight_gradient(None)
    assert any(not torch.allclose(a, b) for a, b in zip(got, unperturbed))


def test_smoothing_eps_grows_linearly_from_start_to_end():
    """SDARTS's `0.03 + (epsilon_alpha - 0.03) * epoch / epochs` (0-based epoch)."""
    records = _schedule(space_text(smoothing=0.1).replace(
        "smoothing = 0.1", "methods = [smoothing(start=0.03, end=0.3)]"), epochs=5)
    assert [r["smoothing"] for r in records] == pytest.approx(
        [0.03 + (0.3 - 0.03) * epoch / 5 for epoch in range(5)], rel=1e-15)
    fixed = _schedule(space_text(smoothing=0.05), epochs=3)  # the older line: eps held fixed
    assert [r["smoothing"] for r in fixed] == [0.05] * 3


def test_noisy_weights_are_a_distribution_and_edge_weights_are_not_touched():
    bilevel = tiny_bilevel(space_text(smoothing=0.05, edge_normalisation="true"))
    plain = bilevel.model.mixture_weights()
    noisy = bilevel.model.mixture_weights(weight_step=bilevel.random)
    for clean, moved in zip(plain, noisy):
        for a, b in ((clean.alpha, moved.alpha), (clean.beta, moved.beta)):
            assert 0 < (a - b).abs().max() <= 2 * 0.05  # noise, then renormalised
            assert (b >= 0).all() and (b <= 1).all()
            torch.testing.assert_close(b.sum(-1), torch.ones(b.shape[0], dtype=b.dtype))
        assert torch.equal(clean.edges, moved.edges)


def test_a_row_that_clips_to_zero_becomes_one_hot_on_its_largest_entry():
    weights = torch.tensor([[-1.0, -0.5, -2.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    out = perturb(weights, 0.1, Random([torch.Generator().manual_seed(0)]))
    assert out[0].tolist() == [0.0, 1.0, 0.0]
    torch.testing.assert_close(out.sum(-1), torch.ones(2, dtype=torch.float64))


# -- schedules of DARTS- -----------------------------------------------------------------------


def test_auxiliary_weight_schedules():
    epochs = 4
    assert [decay_weight("linear", e, epochs) for e in range(epochs)] == [1.0, 0.75, 0.5, 0.25]
    cosine = [decay_weight("cosine", e, epochs) for e in range(epochs)]
    assert cosine == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                    (1 + math.cos(3 * math.pi / 4)) / 2], rel=1e-15)


def test_loop_sets_the_auxiliary_coefficients_each_epoch_and_records_them(
        tmp_path, recorded_auxiliary):
    space = write_space(tmp_path, auxiliary_skip="linear", auxiliary_identity="cosine")
    config = tiny_config(space, epochs=3, max_steps_per_epoch=1)
    run_search(config, tmp_path / "run", device="cpu", dataset=tiny_images())
    expected = [(1.0 - e / 3, 0.5 * (1 + math.cos(math.pi * e / 3))) for e in range(3)]
    assert [name for name, _ in recorded_auxiliary] == ["auxiliary_skip",
                                                        "auxiliary_identity"] * 3
    assert [b for _, b in recorded_auxiliary] == pytest.approx(
        [b for pair in expected for b in pair])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [b for m in metrics for b in (m["auxiliary_skip"], m["auxiliary_identity"])] == (
        pytest.approx([b for pair in expected for b in pair]))


def test_loop_leaves_set_auxiliary_alone_when_the_options_are_off(tmp_path, recorded_auxiliary):
    config = tiny_config(write_space(tmp_path), epochs=1, max_steps_per_epoch=1)
    run_search(config, tmp_path / "run", device="cpu", dataset=tiny_images())
    assert recorded_auxiliary == []
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert not {"auxiliary_skip", "auxiliary_identity", "beta_decay", "architecture_steps",
                "stopped_early"} & set(metrics)


# -- DARTS+ early stop ---------------------------------------------------------------------------


def steer_skips(monkeypatch, *, favour_from: int) -> None:
    """Before each epoch (not on a mid-epoch resume), push the normal cell's skip_connect
    column of alpha down, or from epoch `favour_from` (0-based) up, so that the derived normal
    cell has no skip or only skips."""
    start = SearchRun._start_methods

    def steered(self, epoch):
        record = start(self, epoch)
        if self.step == 0:
            with torch.no_grad():
                self.model.arch.alpha_normal[:, SKIP_COLUMN] = 3.0 if epoch >= favour_from else -3.0
        return record

    monkeypatch.setattr(SearchRun, "_start_methods", steered)


def test_darts_plus_stops_at_the_epoch_whose_normal_cell_has_n_skips(tmp_path, monkeypatch,
                                                                      caplog):
    steer_skips(monkeypatch, favour_from=1)
    config = tiny_config(write_space(tmp_path, stop_at_skips=2), epochs=4, max_steps_per_epoch=1)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="attdarts"):
        result = run_search(config, run, device="cpu", dataset=tiny_images())
    assert result.epochs == 2
    reason = "the derived normal cell has 4 skip_connect (stop_at_skips = 2)"
    assert [r.getMessage() for r in caplog.records if "stopped early" in r.getMessage()] == [
        f"seed 2: stopped early after epoch 2/4: {reason}"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "stopped_early" not in metrics[0]
    assert metrics[-1]["stopped_early"] == {"epoch": 2, "reason": reason}
    assert sorted(p.name for p in run.glob("genotype*.geno")) == [
        "genotype-epoch001.geno", "genotype-epoch002.geno", "genotype.geno"]
    genotype = parse_file(run / "genotype.geno").genotype()
    assert (run / "genotype.geno").read_text() == (run / "genotype-epoch002.geno").read_text()
    assert genotype.meta_value("stopped_early") == f"epoch 2/4: {reason}"
    assert count_skips(genotype.normal) == 4
    compile_network(genotype, channels=4, layers=5, auxiliary=False, input_size=8)

    caplog.clear()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != "checkpoint.pt"}
    with caplog.at_level(logging.INFO, logger="attdarts"):
        again = resume_search(run, device="cpu", dataset=tiny_images())
    assert again.epochs == 2 and again.genotype == genotype
    assert any("finished early at epoch 2" in r.getMessage() for r in caplog.records)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != "checkpoint.pt"} == before


def test_darts_plus_cli_exits_0_and_summary_says_stopped(tmp_path, monkeypatch):
    steer_skips(monkeypatch, favour_from=0)
    space = write_space(tmp_path, stop_at_skips=2)
    result = CliRunner().invoke(cli, [
        "search", str(space), "--dataset", "synthetic", "--channels", "4", "--layers", "5",
        "--batch-size", "4", "--epochs", "3", "--max-steps-per-epoch", "1", "--seeds", "1,2",
        "--device", "cpu", "--quiet", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert [row["stopped_early"]["epoch"] for row in summary["seeds"]] == [1, 1]
    assert [row["epochs"] for row in summary["seeds"]] == [1, 1]


def test_the_last_epoch_and_warm_up_epochs_never_count_as_an_early_stop(tmp_path, monkeypatch):
    steer_skips(monkeypatch, favour_from=0)
    config = tiny_config(write_space(tmp_path, stop_at_skips=1), epochs=2, max_steps_per_epoch=1,
                         arch_start_epoch=1)
    result = run_search(config, tmp_path / "run", device="cpu", dataset=tiny_images())
    assert result.epochs == 2 and "stopped_early" not in result.metrics


# -- architecture warm-up (PC-DARTS) -------------------------------------------------------------


def test_warm_up_epochs_train_the_weights_only(tmp_path):
    config = tiny_config(write_space(tmp_path), epochs=3, max_steps_per_epoch=2, arch_start_epoch=2)
    run = tmp_path / "run"
    run_search(config, run, device="cpu", dataset=tiny_images())
    assert json.loads((run / "config.json").read_text())["arch_start_epoch"] == 2
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["architecture_steps"] for m in metrics] == [False, False, True]
    assert [m["val_loss"] for m in metrics[:2]] == [None, None] and metrics[2]["val_loss"] > 0
    weights = [json.loads(line) for line in (run / "weights.jsonl").read_text().splitlines()]
    uniform = [[0.25] * 4] * 5  # zero init: softmax over 4 operations on each of 5 edges
    assert weights[0]["normal"]["alpha"] == uniform and weights[1]["normal"]["alpha"] == uniform
    assert weights[2]["normal"]["alpha"] != uniform
    assert [m["train_loss"] for m in metrics] != [metrics[0]["train_loss"]] * 3


@pytest.mark.parametrize("value, message", [
    (-1, "Input should be greater than or equal to 0"),
    (2, "arch_start_epoch (2) must be below epochs (2)"),
])
def test_arch_start_epoch_is_validated(tmp_path, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_config(write_space(tmp_path), arch_start_epoch=value)


def test_cli_arch_start_epoch_error_names_the_options(tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "search", str(write_space(tmp_path)), "--dataset", "synthetic", "--epochs", "2",
        "--arch-start-epoch", "2", "--device", "cpu", "--quiet", "--out", str(run)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert errors == ["Error: invalid settings: --arch-start-epoch (2) must be below --epochs "
                      "(2): the architecture would never be trained"]
    assert not run.exists()


# -- the pc-darts recipe -------------------------------------------------------------------------


def test_pc_darts_recipe_holds_pc_darts_search_settings():
    config = recipe_config("pc-darts", space_file="s.geno")
    assert {key: getattr(config, key) for key in (
        "recipe", "batch_size", "lr", "lr_min", "momentum", "weight_decay", "grad_clip",
        "arch_lr", "arch_betas", "arch_weight_decay", "epochs", "arch_start_epoch", "channels",
        "layers", "train_portion")} == {
        "recipe": "pc-darts", "batch_size": 256, "lr": 0.1, "lr_min": 0.0, "momentum": 0.9,
        "weight_decay": 3e-4, "grad_clip": 5.0, "arch_lr": 6e-4, "arch_betas": (0.5, 0.999),
        "arch_weight_decay": 1e-3, "epochs": 50, "arch_start_epoch": 15, "channels": 16,
        "layers": 8, "train_portion": 0.5}


def test_cli_recipe_pc_darts_with_explicit_options_winning(tmp_path):
    run = tmp_path / "run"
    space = write_space(tmp_path)
    common = ["search", str(space), "--recipe", "pc-darts", "--dataset", "synthetic",
              "--channels", "4", "--layers", "5", "--epochs", "2", "--max-steps-per-epoch", "1",
              "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(cli, [*common, "--batch-size", "4", "--arch-start-epoch", "1",
                                      "--out", str(run)])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["recipe"], config["batch_size"], config["lr"], config["arch_lr"],
            config["arch_start_epoch"]) == ("pc-darts", 4, 0.1, 6e-4, 1)
    # the recipe's 15 warm-up epochs do not fit a 2-epoch search: one clean line
    refused = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "other")])
    assert refused.exit_code == 1
    assert "--arch-start-epoch (15, set by --recipe pc-darts) must be below --epochs (2)" in \
        refused.output


# -- every loop option with every location and mixing -------------------------------------------


def _combinations() -> list[tuple[str, str]]:
    combos = []
    for location in LOCATIONS:
        for mixing in ("sum", "product"):
            try:
                parse_text(space_text(location, mixing))
            except DslError:
                continue  # e.g. product with a location that mixes attentions and operations
            combos.append((location, mixing))
    return combos


@pytest.mark.parametrize("location, mixing", _combinations())
def test_loop_options_compose_with_every_location_plain_equals_grouped(location, mixing,
                                                                       recorded_auxiliary):
    options = dict(stop_at_skips=2, beta_decay=0.5, smoothing=0.03, auxiliary_skip="linear")
    text = space_text(location, mixing, **options, auxiliary_identity="cosine")
    try:
        parse_text(text)
    except DslError:  # the location has no attention mixture (checked by the language)
        text = space_text(location, mixing, **options)
    results = []
    for grouped in (False, True):
        bilevel = tiny_bilevel(text, grouped=grouped, order=1)
        set_lambda(bilevel, 0.4)
        weight_batch, arch_batch = batches()
        torch.manual_seed(11)
        losses = bilevel.step(weight_batch, arch_batch)
        results.append((bilevel.model, [float(value) for value in losses]))
    (plain, plain_losses), (grouped_model, grouped_losses) = results
    assert plain_losses == pytest.approx(grouped_losses, rel=1e-10)
    for (name, a), (_, b) in zip(plain.named_parameters(), grouped_model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
    genotype = derive_genotype(plain, name="tiny_seed0")
    text_out = format_checked(genotype, what="the derived genotype")
    assert parse_text(text_out).genotype() == genotype
    network = compile_network(genotype, channels=4, layers=3, auxiliary=False, input_size=8)
    assert network(torch.randn(2, 3, 8, 8)).shape == (2, 10)


# -- resume with every loop option on ------------------------------------------------------------



def test_resume_is_byte_identical_with_every_loop_option_on(tmp_path, monkeypatch,
                                                            recorded_auxiliary):
    steer_skips(monkeypatch, favour_from=2)
    space = write_space(tmp_path, stop_at_skips=2, beta_decay=0.5, smoothing=0.03,
                        auxiliary_skip="linear", auxiliary_identity="cosine")
    config = tiny_config(space, epochs=4, layers=3, max_steps_per_epoch=2, checkpoint_every=1,
                         arch_start_epoch=1)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_search(config, reference, device="cpu", dataset=tiny_images())
    reference_calls = list(recorded_auxiliary)

    restore = interrupt_at(monkeypatch, Bilevel, "step", 4)  # epoch 2, step 2: the checkpoint holds epoch 2, step 1
    with pytest.raises(Interrupted):
        run_search(config, interrupted, device="cpu", dataset=tiny_images())
    restore()
    state = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 1)
    recorded_auxiliary.clear()
    result = resume_search(interrupted, device="cpu", dataset=tiny_images())
    assert result.epochs == 3 and result.metrics["stopped_early"]["epoch"] == 3
    assert recorded_auxiliary == reference_calls[2:]  # resumed in epoch 2: set again there

    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in interrupted.iterdir())
    for name in names:
        if name in ("checkpoint.pt", "environment.json"):  # the latter: where each session ran
            continue
        if name == "metrics.jsonl":
            assert _without_timings(interrupted / name) == _without_timings(reference / name)
            continue
        assert (interrupted / name).read_bytes() == (reference / name).read_bytes(), name


def test_resume_is_byte_identical_with_every_option_on(tmp_path, monkeypatch):
    """Every search method of a space at once, network side included (partial channels, edge
    normalisation, the real auxiliary terms, the derivation caps), killed mid-epoch and resumed:
    the same files as an uninterrupted run."""
    space = write_space(tmp_path, partial_channels=2, edge_normalisation="true",
                        max_skip_connect=1, max_identity=1, stop_at_skips=2, beta_decay=0.5,
                        smoothing=0.03, auxiliary_skip="linear", auxiliary_identity="cosine")
    config = tiny_config(space, epochs=3, layers=3, max_steps_per_epoch=2, checkpoint_every=1,
                         arch_start_epoch=1)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_search(config, reference, device="cpu", dataset=tiny_images())
    restore = interrupt_at(monkeypatch, Bilevel, "step", 4)  # epoch 2, step 2: the checkpoint holds epoch 2, step 1
    with pytest.raises(Interrupted):
        run_search(config, interrupted, device="cpu", dataset=tiny_images())
    restore()
    resume_search(interrupted, device="cpu", dataset=tiny_images())
    weights = json.loads((reference / "weights.jsonl").read_text().splitlines()[-1])
    assert len(weights["normal"]["edges"][0]) == 5  # edge weights recorded (2 nodes: 5 edges)
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in interrupted.iterdir())
    for name in names:
        if name == "metrics.jsonl":
            assert _without_timings(interrupted / name) == _without_timings(reference / name)
        elif name not in ("checkpoint.pt", "environment.json"):  # the latter: the sessions
            assert (interrupted / name).read_bytes() == (reference / name).read_bytes(), name


def _without_timings(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        for key in ("seconds", "images_per_s"):
            record.pop(key)
    return records


def test_a_config_written_before_arch_start_epoch_reads_as_zero(tmp_path):
    written = tiny_config(write_space(tmp_path)).model_dump(mode="json")
    del written["arch_start_epoch"]
    assert SearchConfig.model_validate(written).arch_start_epoch == 0


def test_channels_not_divisible_by_k_are_refused_before_the_run_directory_is_written(tmp_path):
    space = write_space(tmp_path, partial_channels=4)
    with pytest.raises(SearchError, match=r"space 'tiny': partial_channels\(k=4\) needs the channels "
                                          r"C divisible by 4; C=6 is not \(try C=8\)"):
        run_search(tiny_config(space, channels=6), tmp_path / "run", device="cpu",
                   dataset=tiny_images())
    assert not (tmp_path / "run").exists()
