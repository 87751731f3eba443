"""GDAS in the search loop (issue 20): one draw per step shared by the architecture step and the
weight step, tau per epoch, CUDA graphs refused, the gdas recipe and resume (seeds together:
tests/runs/search/test_together.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language.transform import parse_text
from attdarts.networks.methods import Paths
from attdarts.networks.network import compile_network
from attdarts.networks.supernet import compile_supernet
from attdarts.runs import graphs
from attdarts.runs.search import Bilevel, SearchConfig, recipe_config, resume_search, run_search
from attdarts.runs.search.bilevel import method_generator
from helpers import Interrupted, interrupt_at

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = """space tiny {
    operations = [none, max_pool_3x3, skip_connect, sep_conv_3x3]
    attentions = [identity, se, cbam]
    nodes = 2
    keep = 2
    location = after_every
    mixing = sum
    methods = [METHODS]
}
"""


def space_text(methods: str = "gdas") -> str:
    return SPACE.replace("METHODS", methods)


def write_space(tmp_path: Path, methods: str = "gdas") -> Path:
    path = tmp_path / "tiny.geno"
    path.write_text(space_text(methods))
    return path


def tiny_config(space_file: Path | str, **changes) -> SearchConfig:
    settings = dict(space_file=str(space_file), dataset="synthetic", epochs=3, batch_size=4,
                    channels=4, layers=3, max_steps_per_epoch=2, deterministic=True)
    settings.update(changes)
    return SearchConfig(**settings)


def tiny_images():
    from attdarts.runs import data

    return data.synthetic_dataset(train=True, size=32, resolution=8)


def test_first_order_step_draws_once_for_both_steps():
    """The step by hand (float64): Gumbel noise -log(Exp(1)) from the run's method generator,
    per (kind, cell type) in parameter order; Adam on the validation loss at the straight-through
    weights; then SGD on the training loss at the weights of the *updated* alpha with the *same*
    noise, each row computing its argmax alone."""
    torch.manual_seed(0)
    model = compile_supernet(parse_text(space_text("gdas(tau_max=2.0)")).space(), channels=4,
                             layers=3, input_size=8, init="randn").double()
    config = tiny_config("unused.geno", order=1, weight_decay=0.0, grad_clip=1e9)
    bilevel = Bilevel(model, config)
    reference = copy.deepcopy(model)
    generator = method_generator(config.seed, "cpu")
    generator.set_state(bilevel.generator.get_state())
    batches = torch.Generator().manual_seed(7)
    weight_batch = (torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=batches),
                    torch.tensor([0, 1, 2, 3]))
    arch_batch = (torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=batches),
                  torch.tensor([3, 2, 1, 0]))
    bilevel.step(weight_batch, arch_batch)

    names = [name for name, _ in reference.named_architecture()]
    noise = {}
    for name, param in reference.named_architecture():  # one draw, in parameter order
        noise[name] = -torch.empty_like(param).exponential_(generator=generator).log()

    def weights():
        made = []
        for cell in ("normal", "reduce"):
            rows = {}
            for kind in ("alpha", "beta"):
                raw = getattr(reference.arch, f"{kind}_{cell}")
                p = torch.softmax((torch.log_softmax(raw, -1) + noise[f"arch.{kind}_{cell}"])
                                  / 2.0, -1)
                hard = torch.zeros_like(p).scatter_(-1, p.argmax(-1, keepdim=True), 1.0)
                rows[kind] = hard - p.detach() + p
            paths = Paths(alpha=tuple(rows["alpha"].argmax(-1).tolist()),
                          beta=tuple(rows["beta"].argmax(-1).tolist()))
            made.append(reference.mixture_weights()[len(made)]._replace(
                alpha=rows["alpha"], beta=rows["beta"], paths=paths))
        return tuple(made)

    arch_optimizer = torch.optim.Adam(reference.architecture(), lr=config.arch_lr,
                                      betas=config.arch_betas,
                                      weight_decay=config.arch_weight_decay)
    loss = F.cross_entropy(reference(arch_batch[0], weights()), arch_batch[1])
    grads = torch.autograd.grad(loss, reference.architecture())
    for param, grad in zip(reference.architecture(), grads):
        param.grad = grad
    arch_optimizer.step()
    weight_optimizer = torch.optim.SGD(reference.weights(), lr=config.lr,
                                       momentum=config.momentum)
    for param in reference.architecture():
        param.requires_grad_(False)
    F.cross_entropy(reference(weight_batch[0], weights()), weight_batch[1]).backward()
    weight_optimizer.step()
    assert len(names) == 4
    for (name, mine), (_, hand) in zip(model.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(mine, hand, rtol=1e-12, atol=1e-14, msg=name)


def test_search_records_tau_and_derives_a_genotype_that_checks_and_compiles(tmp_path):
    config = tiny_config(write_space(tmp_path), epochs=3)
    result = run_search(config, tmp_path / "run", device="cpu", dataset=tiny_images())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [record["tau"] for record in records] == pytest.approx([10.0, 5.05, 0.1])
    genotype = parse_text((tmp_path / "run" / "genotype.geno").read_text()).genotype()
    assert genotype == result.genotype
    network = compile_network(genotype, channels=4, layers=3, auxiliary=False, input_size=8)
    assert network(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    weights = json.loads((tmp_path / "run" / "weights.jsonl").read_text().splitlines()[-1])
    assert sum(weights["normal"]["alpha"][0]) == pytest.approx(1.0)  # softmax rows, no draw
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["graphs"].startswith("off")


def test_captured_graphs_are_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(graphs, "capture_possible", lambda device, world_size=1: True)
    torch.manual_seed(0)
    model = compile_supernet(parse_text(space_text()).space(), channels=4, layers=3,
                             input_size=8)
    bilevel = Bilevel(model, tiny_config("unused.geno"))
    assert not bilevel.captured.enabled
    assert bilevel.captured.state == ("off (gdas chooses each edge's candidate on the host "
                                      "every step)")
    plain = Bilevel(compile_supernet(parse_text(space_text("beta_decay")).space(), channels=4,
                                     layers=3, input_size=8), tiny_config("unused.geno"))
    assert plain.captured.off_reason is None


def test_resume_mid_epoch_is_byte_identical(tmp_path, monkeypatch):
    config = tiny_config(write_space(tmp_path, "gdas, partial_channels(k=2), "
                                               "edge_normalisation"),
                         epochs=3, checkpoint_every=1)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_search(config, reference, device="cpu", dataset=tiny_images())
    restore = interrupt_at(monkeypatch, Bilevel, "step", 4)  # epoch 2, step 2: the checkpoint holds epoch 2, step 1
    with pytest.raises(Interrupted):
        run_search(config, interrupted, device="cpu", dataset=tiny_images())
    restore()
    resume_search(interrupted, device="cpu", dataset=tiny_images())
    for name in sorted(p.name for p in reference.iterdir()):
        if name in ("checkpoint.pt", "environment.json"):
            continue
        if name == "metrics.jsonl":
            def records(path):
                lines = [json.loads(line) for line in path.read_text().splitlines()]
                return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
                        for r in lines]
            assert records(interrupted / name) == records(reference / name)
            continue
        assert (interrupted / name).read_bytes() == (reference / name).read_bytes(), name


def test_gdas_recipe_holds_gdas_search_settings():
    config = recipe_config("gdas", space_file="space.geno")
    assert (config.epochs, config.batch_size, config.lr, config.lr_min, config.momentum,
            config.weight_decay, config.grad_clip, config.clip, config.order) == (
        250, 256, 0.025, 0.001, 0.9, 5e-4, 5.0, "authors", 1)
    assert (config.arch_lr, config.arch_betas, config.arch_weight_decay, config.arch_init,
            config.arch_start_epoch) == (3e-4, (0.5, 0.999), 1e-3, "randn", 0)


def test_cli_recipe_gdas_sets_epochs_and_weight_decay_unless_given(tmp_path):
    space = write_space(tmp_path)
    common = ["search", str(space), "--dataset", "synthetic", "--batch-size", "4",
              "--channels", "4", "--layers", "3", "--max-steps-per-epoch", "1", "--quiet",
              "--epochs", "1"]
    result = CliRunner().invoke(cli, [*common, "--recipe", "gdas", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (config["recipe"], config["epochs"], config["weight_decay"], config["clip"]) == (
        "gdas", 1, 5e-4, "authors")
    result = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "b"),
                                      "--weight-decay", "0.001"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (config["recipe"], config["weight_decay"]) == ("paper", 0.001)


@pytest.mark.parametrize("second_order", ["darts", "authors"])
def test_second_order_runs_on_single_paths_plain_equals_grouped(second_order):
    """GDAS's own search is first order; a second-order step also runs (the unsampled weights get
    zero gradients in the virtual step), the same on both paths."""
    results = []
    for grouped in (False, True):
        torch.manual_seed(0)
        model = compile_supernet(parse_text(space_text()).space(), channels=4, layers=3,
                                 input_size=8, init="randn", grouped=grouped).double()
        bilevel = Bilevel(model, tiny_config("unused.geno", order=2, second_order=second_order))
        batches = torch.Generator().manual_seed(1)
        weight_batch = (torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=batches),
                        torch.tensor([0, 1, 2, 3]))
        arch_batch = (torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=batches),
                      torch.tensor([3, 2, 1, 0]))
        losses = [float(value) for value in bilevel.step(weight_batch, arch_batch)]
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-10)
    for plain, grouped in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(grouped, plain, rtol=1e-9, atol=1e-12)
