"""Grouped edges (attdarts.networks.grouping, `Supernet.set_grouped`, `Network.set_grouped`): the same
numbers as the plain path.

Compared in float64, where both paths agree to ~1e-12, so any real difference (a wrong weight,
edge or channel order) shows; one float32 check uses the dtype the search really runs in.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language import catalog
from attdarts.language.transform import parse_file, parse_text
from attdarts.networks import grouping as grouped
from attdarts.networks.network import compile_network
from attdarts.networks.registry import ATTENTIONS, OPERATIONS
from attdarts.networks.supernet import compile_supernet
from attdarts.runs.search import Bilevel, SearchConfig, read_config
from attdarts.runs.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PAPER_OPERATIONS = ("none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3, sep_conv_5x5, "
                    "dil_conv_3x3, dil_conv_5x5")
ALL_ATTENTIONS = tuple(catalog.ATTENTIONS)  # registry-wide: every attention, grouped and plain
MASKING = tuple(a for a in ALL_ATTENTIONS if not catalog.ATTENTIONS[a].additive)
EDGES = 3


def space_text(location: str, mixing: str = "sum", attentions=ALL_ATTENTIONS, nodes: int = 4,
               operations: str = PAPER_OPERATIONS) -> str:
    return (f"space s {{ operations = [{operations}] attentions = [{', '.join(attentions)}] "
            f"nodes = {nodes} keep = 2 location = {location} mixing = {mixing} }}")


def make_space(*args, **kwargs):
    return parse_text(space_text(*args, **kwargs)).items[0]


def pair(space, dtype=torch.float64):
    """The plain supernet and a grouped deep copy of it (same weights, same buffers)."""
    torch.manual_seed(0)
    plain = compile_supernet(space, channels=4, layers=3, input_size=8, init="randn").to(dtype)
    return plain, copy.deepcopy(plain).set_grouped(True)


def assert_same_step(plain, fast, dtype=torch.float64, rtol=1e-9, atol=1e-12, batch=4):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 8, 8, generator=generator, dtype=dtype)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    losses = [F.cross_entropy(model(images), labels) for model in (plain, fast)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[1], losses[0], rtol=rtol, atol=atol)
    for (name, p), (_, q) in zip(plain.named_parameters(), fast.named_parameters()):
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(q.grad, p.grad, rtol=rtol, atol=atol + rtol * scale, msg=name)
    for (name, b), (_, c) in zip(plain.named_buffers(), fast.named_buffers()):
        torch.testing.assert_close(c, b, rtol=rtol, atol=atol, msg=name)  # running statistics


# ---------------------------------------------------------------------------------------------
# Whole supernets


CASES = [
    ("after_every", "sum", ALL_ATTENTIONS),
    ("after_every", "product", MASKING),
    ("end", "sum", ALL_ATTENTIONS),
    ("after_every_and_end", "product", MASKING),
    ("after_every_and_end", "sum", ALL_ATTENTIONS),
    ("no_attention", "sum", ALL_ATTENTIONS),
]


@pytest.mark.parametrize("location, mixing, attentions", CASES)
def test_grouped_supernet_gives_the_plain_loss_gradients_and_statistics(location, mixing,
                                                                        attentions):
    plain, fast = pair(make_space(location, mixing, attentions))
    assert fast.grouped and not plain.grouped
    assert_same_step(plain, fast)


def test_grouped_in_float32_within_rounding():
    plain, fast = pair(make_space("after_every"), dtype=torch.float32)
    assert_same_step(plain, fast, dtype=torch.float32, rtol=2e-3, atol=1e-5)


def test_grouped_under_bf16_autocast_keeps_the_plain_dtypes():
    plain, fast = pair(make_space("after_every"), dtype=torch.float32)
    images = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = [model.cells[0](*(model.stem(images),) * 2,
                                  model.mixture_weights()[0]) for model in (plain, fast)]
        logits = [model(images) for model in (plain, fast)]
    assert outputs[1].dtype == outputs[0].dtype == torch.bfloat16
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0.05, atol=0.05)
    torch.testing.assert_close(logits[1], logits[0], rtol=0.1, atol=0.1)


def test_grouped_in_channels_last():
    plain, fast = pair(make_space("after_every"))
    plain, fast = (m.to(memory_format=torch.channels_last) for m in (plain, fast))
    images = torch.randn(4, 3, 8, 8, dtype=torch.float64).to(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(images), plain(images), rtol=1e-9, atol=1e-12)


def test_grouped_eval_mode_uses_the_running_statistics():
    plain, fast = pair(make_space("after_every"))
    assert_same_step(plain, fast)  # one training step moves the statistics
    plain.eval(), fast.eval()
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("nodes", [1, 2, 5])
def test_waves_cover_every_edge_once_for_any_node_count(nodes):
    plain, fast = pair(make_space("after_every", attentions=("identity", "se"), nodes=nodes,
                                  operations="none, skip_connect, sep_conv_3x3"))
    for cell in fast.cells:
        edges = sorted(i for wave in cell.waves for i in wave)
        assert edges == list(range(len(cell.edges)))
        assert len(cell.waves) == nodes
    assert_same_step(plain, fast)


@pytest.mark.parametrize("location", ["mixed_with_operation", "double_mixed"])
def test_mixed_locations_stay_plain(location):
    model = compile_supernet(make_space(location, attentions=("identity", "se")), channels=4,
                             layers=2, input_size=8, grouped=True)
    assert not model.grouped


def test_a_bilevel_second_order_step_is_the_same_on_both_paths(tmp_path):
    space_file = tmp_path / "s.geno"
    space_file.write_text(space_text("after_every", attentions=("identity", "se", "cbam"),
                                     nodes=2, operations="none, max_pool_3x3, sep_conv_3x3"))
    config = SearchConfig(space_file=str(space_file), order=2, batch_size=4, channels=4, layers=3)
    plain, fast = pair(parse_text(space_file.read_text()).items[0])
    generator = torch.Generator().manual_seed(2)
    batches = [(torch.randn(4, 3, 8, 8, generator=generator, dtype=torch.float64),
                torch.randint(0, 10, (4,), generator=generator)) for _ in range(4)]
    for model in (plain, fast):
        bilevel = Bilevel(model, config)
        bilevel.step(batches[0], batches[1])
        bilevel.step(batches[2], batches[3])  # with momentum buffers
    for (name, p), (_, q) in zip(plain.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-8, atol=1e-11, msg=name)


# ---------------------------------------------------------------------------------------------
# Discrete networks (attdarts train)

ZOO = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "genotypes").glob("*.geno"))


def network_pair(name, **settings):
    genotype = parse_file(Path(__file__).resolve().parents[2] / "genotypes" / f"{name}.geno"
                          ).genotype()
    torch.manual_seed(0)
    plain = compile_network(genotype, **settings).double()
    for parameter in plain.parameters():  # away from the identity-like initial BN
        torch.nn.init.normal_(parameter, std=0.3)
    fast = copy.deepcopy(plain).set_grouped(True)
    plain.drop_path_prob = fast.drop_path_prob = 0.3
    return plain, fast


def network_loss(model, images, labels):
    torch.manual_seed(5)  # the same drop-path masks, if the draws come in the same order
    logits, auxiliary = model(images, aux=True)
    loss = F.cross_entropy(logits, labels)
    return loss if auxiliary is None else loss + 0.4 * F.cross_entropy(auxiliary, labels)


def assert_same_network_step(plain, fast, size):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, size, size, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (4,), generator=generator)
    losses = [network_loss(model, images, labels) for model in (plain, fast)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-10, atol=1e-12)
    for (name, p), (_, q) in zip(plain.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)
    for (name, b), (_, c) in zip(plain.named_buffers(), fast.named_buffers()):
        torch.testing.assert_close(c, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("name", ZOO)
def test_grouped_network_gives_the_plain_loss_with_drop_path(name):
    plain, fast = network_pair(name, channels=4, layers=3, auxiliary=False, input_size=8)
    assert fast.grouped and not plain.grouped
    assert_same_network_step(plain, fast, size=8)


HAND_WRITTEN = """\
genotype odd {
    normal {
        n0 = sep_conv_3x3(c_k1) >> se(reduction=2)
        n1 = sep_conv_3x3(c_k2) >> se(reduction=2) + dil_conv_3x3(n0) + skip_connect(c_k1) >> bam(combine=product)
        n2 = max_pool_3x3(n1) >> cbam + avg_pool_3x3(n0) >> cbam + sep_conv_3x3(c_k1) >> double_attention
        c_k = concat(n1, n2) >> cbam
    }
    reduce {
        n0 = skip_connect(c_k2) >> ge_theta_plus + max_pool_3x3(c_k1) >> ge_theta_plus
        n1 = skip_connect(n0) + skip_connect(c_k2)
        c_k = concat(n0, n1) >> se
    }
}
"""


@pytest.mark.parametrize("rule", ["darts", "authors"])
def test_grouped_network_on_uneven_nodes_output_attentions_and_both_drop_path_rules(rule):
    genotype = parse_text(HAND_WRITTEN).items[0]
    torch.manual_seed(0)
    plain = compile_network(genotype, channels=8, layers=3, auxiliary=False, input_size=8,
                            drop_path_rule=rule).double()
    for parameter in plain.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    fast = copy.deepcopy(plain).set_grouped(True)
    plain.drop_path_prob = fast.drop_path_prob = 0.3
    assert_same_network_step(plain, fast, size=8)


def test_grouped_network_in_channels_last():
    plain, fast = network_pair("att_darts", channels=4, layers=3, auxiliary=False, input_size=8)
    plain, fast = (m.to(memory_format=torch.channels_last).eval() for m in (plain, fast))
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64).to(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(images), plain(images), rtol=1e-10, atol=1e-12)


def test_grouped_network_with_auxiliary_head_and_eval_mode():
    plain, fast = network_pair("att_darts", channels=4, layers=5, auxiliary=True, input_size=32)
    assert_same_network_step(plain, fast, size=32)
    plain.eval(), fast.eval()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), rtol=1e-10, atol=1e-12)


def test_grouped_cells_run_fewer_groups_than_edges():
    _, fast = network_pair("att_darts", channels=4, layers=3, auxiliary=False, input_size=8)
    normal = fast.cells[0]
    assert not normal.reduction
    # 8 edges: wave 1 (inputs) has sep_conv_3x3 x4 and skip_connect x2 with cbam x5 and
    # double_attention x1; wave 2 (reading n0) skip_connect x2 with cbam x2
    assert [len(w.operations) for w in normal.waves] == [2, 1]
    assert [len(w.attentions) for w in normal.waves] == [2, 1]
    assert [w.completes for w in normal.waves] == [(0, 2), (1, 3)]


def test_train_runs_grouped_by_default_and_plain_on_request(tmp_path):
    assert TrainConfig().grouped
    genotype = Path(__file__).resolve().parents[2] / "genotypes" / "darts_v2.geno"
    runner = CliRunner()
    for flags, expected in (([], True), (["--plain"], False)):
        out = tmp_path / f"run{len(flags)}"
        result = runner.invoke(cli, [
            "train", str(genotype), "--dataset", "synthetic", "--epochs", "1", "--batch-size", "4",
            "--channels", "4", "--layers", "3", "--max-steps-per-epoch", "1", "--out", str(out),
            "--device", "cpu", "--quiet", *flags])
        assert result.exit_code == 0, result.output
        state = torch.load(out / "last.pt", weights_only=False)
        assert state["config"]["grouped"] is expected
        assert state["model_config"]["grouped"] is expected


# ---------------------------------------------------------------------------------------------
# Every registry entry as a group of edges, against the modules run one by one


def _group_input(channels=4, size=8, batch=2):
    torch.manual_seed(3)
    return torch.randn(batch, EDGES * channels, size, size, dtype=torch.float64)


def _one_by_one(modules, x, method="__call__"):
    chunks = x.unflatten(1, (EDGES, -1)).unbind(1)
    outs = [getattr(m, method)(c) for m, c in zip(modules, chunks)]
    return outs


def assert_group_matches(modules, x, *, masks=False):
    """Grouped forward (and mask) of `modules` on `x` against each module on its own chunk:
    outputs, input and parameter gradients, running statistics; then the same in eval mode."""
    for module in modules:  # non-trivial affine parameters, distinct per edge
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter, std=0.5)
    twins = copy.deepcopy(modules)
    for training in (True, False):
        for module in (*modules, *twins):
            module.train(training)
        x_plain, x_grouped = x.clone().requires_grad_(), x.clone().requires_grad_()
        expected = torch.cat(_one_by_one(modules, x_plain), dim=1)
        got = grouped.forward(twins, grouped.Group(x_grouped, EDGES))
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
        weights = torch.randn_like(expected)
        (expected * weights).sum().backward()
        (got * weights).sum().backward()
        torch.testing.assert_close(x_grouped.grad, x_plain.grad, rtol=1e-9, atol=1e-12)
        for module, twin in zip(modules, twins):
            for (name, p), (_, q) in zip(module.named_parameters(), twin.named_parameters()):
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)
            for (name, b), (_, c) in zip(module.named_buffers(), twin.named_buffers()):
                torch.testing.assert_close(c, b, rtol=1e-12, atol=1e-14, msg=name)
        if masks:
            expected_masks = torch.stack(_one_by_one(modules, x, "mask"), dim=1)
            got_masks = grouped.mask(twins, grouped.Group(x, EDGES))
            torch.testing.assert_close(got_masks, expected_masks, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", OPERATIONS.names())
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [False, True])
def test_every_operation_grouped_equals_one_by_one(name, stride, affine):
    modules = [OPERATIONS.get(name)(4, stride, affine=affine, pool_bn=not affine).double()
               for _ in range(EDGES)]
    assert_group_matches(modules, _group_input())


# 32 channels: hidden widths of 2 (r = 16) or more, so a channel mix-up inside shows
ATTENTION_CASES = [
    *((name, {}) for name in ATTENTIONS.names()),
    ("se", {"reduction": 4}),
    ("bam", {"combine": "product", "dilation": 2, "reduction": 8}),
    ("cbam", {"reduction": 8}),
    ("double_attention", {"reduction": 8}),
]


@pytest.mark.parametrize("name, kwargs", ATTENTION_CASES)
def test_every_attention_grouped_equals_one_by_one(name, kwargs):
    modules = [ATTENTIONS.get(name)(32, spatial=8, **kwargs).double() for _ in range(EDGES)]
    assert_group_matches(modules, _group_input(channels=32),
                         masks=hasattr(modules[0], "mask") and name != "identity")


def test_gather_excite_on_a_larger_map_than_built_for():
    modules = [ATTENTIONS.get("ge_theta_plus")(32, spatial=4).double() for _ in range(EDGES)]
    assert_group_matches(modules, _group_input(channels=32, size=8), masks=True)


def test_norms_that_are_not_plain_batch_norms_run_edge_by_edge():
    modules = [torch.nn.SyncBatchNorm.convert_sync_batchnorm(
        ATTENTIONS.get("bam")(32, spatial=8)).double() for _ in range(EDGES)]
    assert not grouped._groupable(modules[0])
    momentum_none = [ATTENTIONS.get("ge_theta_plus")(32, spatial=8).double() for _ in range(EDGES)]
    for module in momentum_none:
        module.bn.momentum = None  # a cumulative average: stays per edge
    assert not grouped._groupable(momentum_none[0])
    assert_group_matches(momentum_none, _group_input(channels=32), masks=True)


def test_unknown_modules_run_edge_by_edge():
    class Doubler(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    x = _group_input()
    assert torch.equal(grouped.forward([Doubler()] * EDGES, grouped.Group(x, EDGES)), 2 * x)


# ---------------------------------------------------------------------------------------------
# The switch


def test_search_runs_grouped_by_default_and_plain_on_request(tmp_path):
    space_file = tmp_path / "s.geno"
    space_file.write_text(space_text("after_every", attentions=("identity", "se"), nodes=2,
                                     operations="none, skip_connect, sep_conv_3x3"))
    assert SearchConfig(space_file=str(space_file)).grouped
    runner = CliRunner()
    for flags, expected in (([], True), (["--plain"], False)):
        out = tmp_path / f"run{len(flags)}"
        result = runner.invoke(cli, [
            "search", str(space_file), "--dataset", "synthetic", "--epochs", "1",
            "--batch-size", "4", "--channels", "4", "--layers", "3", "--max-steps-per-epoch", "1",
            "--out", str(out), "--device", "cpu", "--quiet", *flags])
        assert result.exit_code == 0, result.output
        assert read_config(out).grouped is expected


@pytest.mark.parametrize("name", ATTENTIONS.names())
def test_every_paper_attention_declares_its_grouped_rule(name):
    """The rule lives on the class (attentions.py), so the grouped path never falls back."""
    module = ATTENTIONS.get(name)(32, spatial=8)
    assert "grouped_forward" in vars(type(module))
    assert grouped._groupable(module)
    if name not in ("identity", "double_attention"):
        assert "grouped_mask" in vars(type(module))
