"""The search supernet (attdarts.networks.supernet) and genotype derivation (attdarts.networks.derive)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attdarts.language import ir
from attdarts.language.errors import DslError
from attdarts.language.printer import format_genotype
from attdarts.language.transform import parse_file, parse_text
from attdarts.networks.derive import derive_genotype
from attdarts.networks.methods import build_methods
from attdarts.networks.network import compile_network
from attdarts.networks.supernet import (
    MixedAttention, compile_supernet, edge_names, node_slices,
)
from attdarts.runs.search import Bilevel, SearchConfig

SPACES = Path(__file__).resolve().parents[2] / "genotypes" / "spaces"
SPACE_NAMES = sorted(path.stem for path in SPACES.glob("*.geno"))


pytestmark = pytest.mark.usefixtures("one_thread")


def space(name: str) -> ir.Space:
    return parse_file(SPACES / f"{name}.geno").space()


def count(parameters) -> int:
    return sum(p.numel() for p in parameters)


# ---------------------------------------------------------------------------------------------
# Fidelity anchors: the exact sizes of the authors' search networks (README, "Search methods: the supernet side")


def test_paper_supernet_has_exactly_the_authors_sizes():
    model = compile_supernet(space("att_darts"))  # C=16, 8 cells, 10 classes
    assert count(model.weights()) == 3_309_282
    assert count(model.architecture()) == 392
    shapes = {name: tuple(p.shape) for name, p in model.named_architecture()}
    assert shapes == {"arch.alpha_normal": (14, 8), "arch.alpha_reduce": (14, 8),
                      "arch.beta_normal": (14, 6), "arch.beta_reduce": (14, 6)}


def test_darts_supernet_has_exactly_darts_size():
    model = compile_supernet(space("darts"))
    assert count(model.weights()) == 1_930_618
    assert count(model.architecture()) == 2 * 14 * 8


@pytest.mark.parametrize("stage, weights", [(0, 2_221_750), (1, 2_986_462)])
def test_drnas_supernet_has_exactly_drnas_stage_sizes(stage, weights):
    """DrNAS's search model (github.com/xiangning-chen/DrNAS, DARTS-space/model_search.py,
    `Network(36, 10, 20, k=K)`, 7 candidates without none, no edge normalisation): its first
    stage (K=6) and its second (every candidate widened to K=4: the shapes of a K=4 build, which
    the space's stage 2 builds)."""
    drnas = parse_text((SPACES / "drnas.geno").read_text()).space().at_stage(stage)
    model = compile_supernet(drnas, channels=36, layers=20)
    assert count(model.weights()) == weights
    assert count(model.architecture()) == 2 * 14 * 7


def test_fair_darts_supernet_has_exactly_dartss_size():
    """FairDARTS's search model is DARTS's without `none`, which has no weights."""
    model = compile_supernet(space("fair_darts"))
    assert count(model.weights()) == 1_930_618
    assert count(model.architecture()) == 2 * 14 * 7


def test_pc_darts_supernet_has_exactly_pc_darts_size():
    """PC-DARTS's own search model (github.com/yuhuixu1993/PC-DARTS, model_search.py,
    Network(16, 10, 8, criterion) on the CPU) has 299,578 weights and 2 x 14 x 8 alphas plus
    2 x 14 edge weights (its betas)."""
    model = compile_supernet(space("pc_darts"))
    assert count(model.weights()) == 299_578
    assert count(model.architecture()) == 2 * 14 * 8 + 2 * 14


def test_weights_and_architecture_are_disjoint_and_complete():
    model = compile_supernet(space("att_darts_every_and_end"), channels=4, layers=5, input_size=8)
    weights = {id(p) for p in model.weights()}
    arch = {id(p) for p in model.architecture()}
    assert not weights & arch
    assert weights | arch == {id(p) for p in model.parameters()}
    assert {name for name, _ in model.named_architecture()} == {
        f"arch.{kind}_{cell}" for kind in ("alpha", "beta", "gamma") for cell in ("normal", "reduce")}
    assert model.arch.gamma_normal.shape == (1, 6)


def test_initialisation_zeros_or_small_randn():
    zeros = compile_supernet(space("att_darts"), channels=4, layers=5, input_size=8)
    assert all(torch.count_nonzero(p) == 0 for p in zeros.architecture())
    torch.manual_seed(0)
    randn = compile_supernet(space("att_darts"), channels=4, layers=5, input_size=8, init="randn")
    values = torch.cat([p.flatten() for p in randn.architecture()])
    assert 0 < values.abs().max() < 1e-2


def test_edge_names_follow_darts_order():
    assert edge_names(4)[:5] == ["n0<-c_k2", "n0<-c_k1", "n1<-c_k2", "n1<-c_k1", "n1<-n0"]
    assert len(edge_names(4)) == 14


# ---------------------------------------------------------------------------------------------
# Every location and mixing rule: build, forward, backward, one step, derive, compile


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_every_space_builds_steps_and_derives(name):
    torch.manual_seed(0)
    search_space = space(name)
    # DrNAS's partial channels K=6 need C divisible by 6 (and 2 channels per factorized reduce)
    channels = 12 if build_methods(search_space).size_problem(4) else 4
    model = compile_supernet(search_space, channels=channels, layers=5, input_size=8,
                             init="randn")
    images, labels = torch.randn(2, 3, 8, 8), torch.tensor([1, 7])
    logits = model(images)
    assert logits.shape == (2, 10)
    # FairDARTS weighs each candidate by its own sigmoid; the others by a softmax per row
    sigmoid = any(call.name == "fair_darts" for call in search_space.methods)
    for weights in model.mixture_weights():
        mixtures, edges = (weights.alpha, weights.beta, weights.gamma), weights.edges
        for tensor in mixtures:
            if tensor is not None and sigmoid:
                assert ((tensor > 0) & (tensor < 1)).all()
            elif tensor is not None:
                torch.testing.assert_close(tensor.sum(-1), torch.ones(tensor.shape[0]))
        if edges is not None:  # edge normalisation: the edges entering each node sum to 1
            sums = [edges[start:start + count].sum() for start, count in node_slices(4)]
            torch.testing.assert_close(torch.stack(sums), torch.ones(4))
    torch.nn.functional.cross_entropy(logits, labels).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not [n for n in missing if n.startswith("arch.")]
    assert not [n for n, p in model.named_parameters() if p.grad is None]

    model.zero_grad(set_to_none=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bilevel = Bilevel(model, SearchConfig(space_file="x.geno"))
    train_loss, _, val_loss, _ = bilevel.step((images, labels), (torch.randn(2, 3, 8, 8), labels))
    assert torch.isfinite(train_loss) and torch.isfinite(val_loss)
    for arch_name, param in model.named_architecture():
        assert not torch.equal(param, before[arch_name]), arch_name

    genotype = derive_genotype(model)
    assert parse_text(format_genotype(genotype)).genotype() == genotype
    for cell in (genotype.normal, genotype.reduce):
        if sigmoid:  # FairDARTS's threshold: a node may keep fewer edges, a cell fewer nodes
            assert set(cell.node_names) <= {"n0", "n1", "n2", "n3"} and cell.nodes
            assert all(1 <= len(node.edges) <= 2 for node in cell.nodes)
        else:
            assert [node.name for node in cell.nodes] == ["n0", "n1", "n2", "n3"]
            assert all(len(node.edges) == 2 for node in cell.nodes)
        assert all(edge.operation.name != "none" for node in cell.nodes for edge in node.edges)
        if search_space.location == "no_attention":
            assert all(edge.attention is None for node in cell.nodes for edge in node.edges)
    network = compile_network(genotype, channels=channels, layers=5, auxiliary=False,
                              input_size=8)
    network.eval()
    assert network(images).shape == (2, 10)


def test_sum_mixing_is_eq_10_and_product_mixing_is_eq_17():
    torch.manual_seed(0)
    search_space = space("att_darts_p")  # identity, se, bam, cbam, ge_theta_plus
    model = compile_supernet(search_space, channels=8, layers=3, input_size=8)
    mixture = model.cells[0].edges[0].then
    assert isinstance(mixture, MixedAttention) and mixture.product
    h = torch.randn(2, 8, 8, 8)
    t = torch.softmax(torch.randn(len(search_space.attentions)), dim=0)
    log_mask = sum(t[i] * torch.log(m.mask(h).clamp_min(1e-6)) for i, m in enumerate(mixture.candidates))
    torch.testing.assert_close(mixture(h, t), torch.exp(log_mask) * h)

    summed = MixedAttention(list(mixture.candidates), "sum")
    expected = sum(t[i] * m(h) for i, m in enumerate(mixture.candidates))
    torch.testing.assert_close(summed(h, t), expected)


def test_product_mixing_refuses_additive_attention():
    """The space validator refuses both (one DslError type); the supernet never sees them."""
    def product(name: str) -> list[str]:
        fields = dict(space(name))
        with pytest.raises(DslError) as caught:
            ir.Space(**{**fields, "mixing": "product"})
        return [problem.message for problem in caught.value.problems]

    assert any("'double_attention' adds to its input" in m for m in product("att_darts"))
    assert any("mixes attentions with operations" in m for m in product("att_darts_mixed"))


def test_attentions_are_built_for_the_spatial_size_they_see():
    model = compile_supernet(space("att_darts"), channels=4, layers=5, input_size=16)
    kernels = [cell.edges[0].then.candidates[4].gather.kernel_size[0] for cell in model.cells]
    assert kernels == [16, 8, 8, 4, 4]  # cell 1 and 3 reduce
    end = compile_supernet(space("att_darts_end"), channels=4, layers=5, input_size=16)
    assert end.cells[1].output_attention.candidates[4].gather.kernel_size[0] == 8


# ---------------------------------------------------------------------------------------------
# Derivation rules


def _tensors(search_space: ir.Space, fill) -> dict:
    from attdarts.networks.supernet import column_names

    tensors = {}
    for cell in ("normal", "reduce"):
        tensors[cell] = {kind: torch.zeros((1 if kind == "gamma" else 14, len(columns)))
                         for kind, columns in column_names(search_space).items()}
        fill(cell, tensors[cell])
    return tensors


def test_derive_follows_eq_14_and_is_canonical():
    search_space = space("att_darts")
    ops = [c.name for c in search_space.operations]
    atts = [c.name for c in search_space.attentions]

    def fill(cell, t):
        t["alpha"][:, ops.index("none")] = 10.0  # `none` is never chosen, whatever its weight
        t["alpha"][:, ops.index("skip_connect")] = 1.0
        # node n2 (edges 5..8 read c_k2, c_k1, n0, n1): n1 strongest, then c_k2
        t["alpha"][8, ops.index("sep_conv_3x3")] = 9.0
        t["alpha"][5, ops.index("dil_conv_5x5")] = 8.0
        t["beta"][8, atts.index("cbam")] = 3.0
        t["beta"][5, atts.index("identity")] = 3.0

    genotype = derive_genotype(_tensors(search_space, fill), search_space, name="g")
    n2 = genotype.normal.nodes[2]
    assert [(e.operation.name, e.input, e.attention and e.attention.name) for e in n2.edges] == [
        ("dil_conv_5x5", "c_k2", None), ("sep_conv_3x3", "n1", "cbam")]
    # ties (all skip_connect, uniform beta) keep the lower input index and the first attention
    n0 = genotype.normal.nodes[0]
    assert [(e.operation.name, e.input) for e in n0.edges] == [
        ("skip_connect", "c_k2"), ("skip_connect", "c_k1")]
    assert n0.edges[0].attention is None  # identity (first attention) wins the tie
    assert genotype.normal.output.nodes == ("n0", "n1", "n2", "n3")


def test_derive_output_attention_from_gamma():
    search_space = space("att_darts_end")
    atts = [c.name for c in search_space.attentions]

    def fill(cell, t):
        if cell == "reduce":
            t["gamma"][0, atts.index("se")] = 1.0

    genotype = derive_genotype(_tensors(search_space, fill), search_space)
    assert genotype.normal.output.attention is None  # identity -> no attention
    assert genotype.reduce.output.attention.name == "se"


def test_derive_mixed_locations():
    mixed = space("att_darts_mixed")
    columns = [c.name for c in mixed.operations] + [c.name for c in mixed.attentions]

    def fill(cell, t):
        t["alpha"][0, columns.index("cbam")] = 5.0
        t["alpha"][1, columns.index("sep_conv_5x5")] = 4.0

    genotype = derive_genotype(_tensors(mixed, fill), mixed)
    first, second = genotype.reduce.nodes[0].edges
    assert (first.operation.name, first.attention.name) == ("skip_connect", "cbam")
    assert (second.operation.name, second.attention) == ("sep_conv_5x5", None)

    double = space("att_darts_double_mixed")

    def fill_double(cell, t):
        t["alpha"][0, columns.index("cbam")] = 9.0  # attentions of the first mixture: ignored
        t["alpha"][0, columns.index("dil_conv_3x3")] = 5.0
        t["beta"][0, columns.index("sep_conv_3x3")] = 9.0  # operations of the second: ignored
        t["beta"][0, columns.index("bam")] = 5.0

    genotype = derive_genotype(_tensors(double, fill_double), double)
    edge = genotype.normal.nodes[0].edges[0]
    assert (edge.operation.name, edge.attention.name) == ("dil_conv_3x3", "bam")
