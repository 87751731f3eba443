"""Search methods on the network side (issues 13, 19 and 20): partial channels and edge
normalisation (PC-DARTS), the auxiliary skip and identity (DARTS-), the derivation caps (P-DARTS)
and ranking.

Each mechanism is checked against a small hand-written statement of its formula in float64
(values and gradients), and every option composes with every attention location and mixing:
plain == grouped, and a derived genotype that checks and compiles.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attdarts.language import ir
from attdarts.language.locations import LOCATIONS
from attdarts.language.printer import format_genotype
from attdarts.language.transform import parse_text
from attdarts.networks.derive import count_identity, count_skip_connect, derive_genotype
from attdarts.networks.methods import Random, SearchContext
from attdarts.networks.methods.auxiliary_identity import AuxiliaryIdentity
from attdarts.networks.methods.auxiliary_skip import AuxiliarySkip
from attdarts.networks.methods.partial_channels import channel_shuffle
from attdarts.networks.network import compile_network
from attdarts.networks.supernet import column_names, compile_supernet, normalise_edges

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]

OPERATIONS = "none, max_pool_3x3, skip_connect, sep_conv_3x3"
ATTENTIONS = "identity, se, cbam"


def make_space(location: str = "after_every", mixing: str = "sum", operations: str = OPERATIONS,
               attentions: str = ATTENTIONS, **options: object) -> ir.Space:
    if LOCATIONS[location].mixes_operations_and_attentions:
        attentions = ", ".join(a for a in attentions.split(", ") if a != "identity")
    lines = " ".join(f"{key} = {_text(value)}" for key, value in options.items())
    return parse_text(
        f"space s {{ operations = [{operations}] attentions = [{attentions}] nodes = 4 keep = 2 "
        f"location = {location} mixing = {mixing} {lines} }}").space()


def _text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def set_auxiliary(model, skip: float, identity: float):
    """DARTS-'s coefficients b as the loop's `epoch_start` would set them."""
    for method in model.methods:
        if isinstance(method, (AuxiliarySkip, AuxiliaryIdentity)):
            method.b.fill_(skip if isinstance(method, AuxiliarySkip) else identity)
    return model


def tiny(space: ir.Space, channels: int = 8, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return compile_supernet(space, channels=channels, layers=3, input_size=8, init="randn",
                            **options).to(torch.float64)


# ---------------------------------------------------------------------------------------------
# Partial channels (PC-DARTS): split, mixture on C/K, bypass, max-pool at stride 2, concat, shuffle


def test_channel_shuffle_is_pc_darts_permutation():
    x = torch.arange(12.0).reshape(1, 12, 1, 1)
    # K=3 groups of 4: channel g*4 + i goes to i*3 + g
    expected = [g * 4 + i for i in range(4) for g in range(3)]
    assert channel_shuffle(x, 3).flatten().tolist() == expected


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channel_edge_matches_its_formula(stride):
    space = make_space(partial_channels=2)
    model = tiny(space)
    cell = model.cells[1]  # layers=3: cells 1 and 2 reduce; 8 -> 16 channels
    edge = cell.edges[0] if stride == 2 else cell.edges[4]  # n0<-c_k2 (stride 2), n1<-n0
    channels = 16
    assert edge.partial.active == channels // 2 and edge.partial.stride == stride
    x = torch.randn(2, channels, 4, 4, dtype=torch.float64, requires_grad=True)
    alpha = torch.softmax(torch.randn(4, dtype=torch.float64), 0).requires_grad_()
    beta = torch.softmax(torch.randn(3, dtype=torch.float64), 0).requires_grad_()
    out = edge(x, alpha, beta)

    active, rest = x[:, :8], x[:, 8:]
    mixed = sum(alpha[o] * edge.first.candidates[o](active) for o in (1, 2, 3))  # none is 0
    mixed = sum(beta[a] * edge.then.candidates[a](mixed) for a in range(3))
    if stride == 2:
        rest = F.max_pool2d(rest, kernel_size=2, stride=2)
    joined = torch.cat([mixed, rest], dim=1)
    expected = torch.empty_like(joined)
    for group in range(2):  # channel g * C/K + i of [mixed, rest] lands on i * K + g
        for i in range(8):
            expected[:, i * 2 + group] = joined[:, group * 8 + i]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(out)
    grads = torch.autograd.grad((out * probe).sum(), (x, alpha, beta))
    references = torch.autograd.grad((expected * probe).sum(), (x, alpha, beta))
    for grad, reference in zip(grads, references):
        torch.testing.assert_close(grad, reference, rtol=1e-12, atol=1e-12)
    assert out.shape == (2, channels, 4 // stride, 4 // stride)


def test_partial_channels_build_candidates_for_c_over_k():
    model = compile_supernet(make_space(partial_channels=4), channels=8, layers=3, input_size=8)
    edge = model.cells[0].edges[0]
    assert edge.first.candidates[3][1].in_channels == 2  # sep_conv: ReLU, depthwise conv on C/K
    assert edge.first.candidates[1][1].num_features == 2  # max_pool's non-affine BN of C/K
    assert not edge.first.candidates[1][1].affine
    se = edge.then.candidates[1]
    assert [m.in_features for m in se.modules() if isinstance(m, torch.nn.Linear)][0] == 2


def test_partial_channels_one_is_todays_supernet():
    plain = tiny(make_space())
    same = tiny(make_space(partial_channels=1))
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.equal(plain(images), same(images))
    assert all(edge.partial is None for cell in same.cells for edge in cell.edges)


def test_channels_not_divisible_by_k_is_a_value_error():
    with pytest.raises(ValueError, match=r"partial_channels\(k=4\) needs the channels C divisible "
                                         r"by 4; C=6 is not"):
        compile_supernet(make_space(partial_channels=4), channels=6, layers=3, input_size=8)


# ---------------------------------------------------------------------------------------------
# Edge normalisation (PC-DARTS): node j = sum_i softmax_j(b)_i * edge_i(h_i)


def test_edge_weights_are_a_softmax_per_node():
    raw = torch.randn(14, dtype=torch.float64)
    expected = []
    start = 0
    for node in range(4):
        block = raw[start:start + node + 2]
        expected.extend((torch.exp(block) / torch.exp(block).sum()).tolist())
        start += node + 2
    torch.testing.assert_close(normalise_edges(raw, 4), torch.tensor(expected, dtype=torch.float64))


def test_edge_normalisation_node_sum_values_and_gradients():
    space = make_space(edge_normalisation=True)
    model = tiny(space)
    assert {name for name, _ in model.named_architecture()} >= {"arch.edges_normal",
                                                                 "arch.edges_reduce"}
    assert model.arch.edges_normal.shape == (14,)
    assert column_names(space)["edges"][:3] == ["n0<-c_k2", "n0<-c_k1", "n1<-c_k2"]
    cell = model.cells[0]
    s0 = torch.randn(2, 24, 8, 8, dtype=torch.float64)
    weights = model.mixture_weights()[0]
    alpha, beta = weights.alpha, weights.beta
    out = cell(s0, s0, weights)

    raw = model.arch.edges_normal
    states = [cell.preprocess0(s0), cell.preprocess1(s0)]
    start = 0
    for node in range(4):
        b = raw[start:start + node + 2]
        weights = torch.exp(b) / torch.exp(b).sum()
        states.append(sum(weights[i] * cell.edges[start + i](states[i], alpha[start + i],
                                                            beta[start + i])
                          for i in range(node + 2)))
        start += node + 2
    expected = torch.cat(states[2:], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(out)
    grad = torch.autograd.grad((out * probe).sum(), raw)[0]
    reference = torch.autograd.grad((expected * probe).sum(), raw)[0]
    torch.testing.assert_close(grad, reference, rtol=1e-12, atol=1e-14)
    assert grad.abs().sum() > 0
    normalised = model.normalised_architecture()["normal"]  # what weights.jsonl can record
    torch.testing.assert_close(normalised["edges"], normalise_edges(raw.detach(), 4))
    torch.testing.assert_close(normalised["alpha"].sum(-1), torch.ones(14, dtype=torch.float64))


def test_edges_are_drawn_after_alpha_and_beta():
    torch.manual_seed(0)
    plain = compile_supernet(make_space(), channels=4, layers=3, input_size=8, init="randn")
    torch.manual_seed(0)
    normed = compile_supernet(make_space(edge_normalisation=True), channels=4, layers=3,
                              input_size=8, init="randn")
    assert torch.equal(plain.arch.alpha_reduce, normed.arch.alpha_reduce)
    assert torch.equal(plain.arch.beta_reduce, normed.arch.beta_reduce)
    assert 0 < normed.arch.edges_reduce.abs().max() < 1e-2


# ---------------------------------------------------------------------------------------------
# Auxiliary skip and identity (DARTS-): out = sum_o s_o o(x) + b * skip(x); attention + b * h


@pytest.mark.parametrize("operations", [OPERATIONS, "none, max_pool_3x3, sep_conv_3x3"])
def test_auxiliary_skip_adds_b_times_skip(operations):
    """As DARTS-'s `MixedOp`: + b * x at stride 1 (folded into skip_connect's weight when the
    space lists it), + b * FactorizedReduce(C, C, affine=False)(x) at stride 2, a module of its
    own beside the skip_connect candidate's."""
    space = make_space(operations=operations, auxiliary_skip="linear")
    model = set_auxiliary(tiny(space), 0.3, 1.0)
    listed = "skip_connect" in operations
    weights = model.mixture_weights()
    alpha = torch.softmax(model.arch.alpha_reduce, -1)  # the softmax alone, reduce cell
    columns = len(model.columns["alpha"])
    for index in (0, 4):  # stride 2 (factorized reduce) and stride 1 (identity)
        edge = model.cells[1].edges[index]
        x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
        got = edge.first(x, weights[1].alpha[index])
        expected = sum(alpha[index, o] * edge.first.candidates[o](x) for o in range(1, columns))
        own = index == 0 or not listed  # a module of its own, the last candidate
        skip = edge.first.candidates[columns if own else 2]
        assert len(edge.first.candidates) == columns + own
        if index == 0 and listed:
            assert skip is not edge.first.candidates[2]  # not the skip_connect candidate's
        skipped = skip(x)
        if index == 4:
            assert torch.equal(skipped, x)  # at stride 1 the auxiliary skip is x itself
        torch.testing.assert_close(got, expected + 0.3 * skipped, rtol=1e-12, atol=1e-12)
    extra = count(model) - count(tiny(make_space(operations=operations)))
    # one non-affine factorized reduce (C*C/2 * 2 weights) per stride-2 edge: 8 edges in each
    # reduce cell (cells 1 and 2: C=16, 32), whether or not the space lists skip_connect
    assert extra == 8 * 16 * 16 + 8 * 32 * 32


def test_darts_minus_search_model_has_darts_minus_weight_count():
    """DARTS-'s own search model (Meituan-AutoML/DARTS-, `Network(16, 10, 8)` with
    `--auxiliary_skip`) has 1,971,578 weights at C=16, 8 cells: DARTS's 1,930,618 plus a
    FactorizedReduce(C, C) per stride-2 edge (8 x (32^2 + 64^2))."""
    text = (ROOT / "genotypes/spaces/darts.geno").read_text()
    darts = parse_text(text).space()
    minus = parse_text(text.replace("}", "    methods = [auxiliary_skip]\n}")).space()
    assert count(compile_supernet(darts, channels=16, layers=8).weights()) == 1_930_618
    assert count(compile_supernet(minus, channels=16, layers=8).weights()) == 1_971_578


def count(model) -> int:
    parameters = model if isinstance(model, list) else model.parameters()
    return sum(p.numel() for p in parameters)


def test_auxiliary_at_zero_is_the_plain_supernet():
    on = tiny(make_space(location="after_every_and_end", auxiliary_skip="cosine",
                         auxiliary_identity="linear"))
    off = tiny(make_space(location="after_every_and_end"))
    loaded = off.load_state_dict(on.state_dict(), strict=False)
    assert not loaded.missing_keys  # `on` has the auxiliary factorized reduces on top
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    set_auxiliary(on, 0.0, 0.0)
    torch.testing.assert_close(on(images), off(images), rtol=1e-12, atol=1e-12)
    set_auxiliary(on, 1.0, 1.0)
    assert not torch.allclose(on(images), off(images))
    assert not any(key.startswith("methods.") for key in on.state_dict())  # a schedule's value


def test_auxiliary_identity_adds_b_times_h():
    model = set_auxiliary(tiny(make_space(mixing="product", auxiliary_identity="linear")), 0, 0.4)
    mixture = model.cells[0].edges[0].then
    h = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    t = torch.softmax(torch.randn(3, dtype=torch.float64), 0)
    plain = mixture(h, t)
    identity = model.mixture_weights()[0].identity
    torch.testing.assert_close(mixture(h, t, identity), plain + 0.4 * h)


# ---------------------------------------------------------------------------------------------
# Derivation: ranking with edge weights, P-DARTS's skip cap, the identity cap


def _tensors(space: ir.Space, fill) -> dict:
    tensors = {}
    for cell in ir.CELL_KINDS:
        tensors[cell] = {kind: torch.zeros((14,) if kind == "edges" else
                                           (1 if kind == "gamma" else 14, len(columns)))
                         for kind, columns in column_names(space).items()}
        fill(cell, tensors[cell])
    return tensors


def _edges(cell: ir.Cell, node: int) -> list[tuple]:
    return [(e.operation.name, e.input, e.attention and e.attention.name)
            for e in cell.nodes[node].edges]


def test_edge_normalisation_ranks_by_operation_times_edge_weight():
    space = make_space(edge_normalisation=True)
    ops = [c.name for c in space.operations]

    def fill(cell, t):
        # node n1 reads edges 2 (c_k2), 3 (c_k1), 4 (n0): softmax(alpha) best non-none weights
        t["alpha"][2, ops.index("sep_conv_3x3")] = 3.0
        t["alpha"][3, ops.index("max_pool_3x3")] = 2.0
        t["alpha"][4, ops.index("skip_connect")] = 1.0
        t["edges"][2:5] = torch.tensor([-2.0, 1.0, 1.0])

    tensors = _tensors(space, fill)
    alpha = torch.softmax(tensors["normal"]["alpha"][2:5].double(), -1)
    best = alpha[:, 1:].max(-1).values
    edge = torch.softmax(torch.tensor([-2.0, 1.0, 1.0], dtype=torch.float64), 0)
    ranked = sorted(range(3), key=lambda i: -(best[i] * edge[i]).item())[:2]
    assert ranked == [1, 2]  # without edge weights c_k2's sep_conv would win
    genotype = derive_genotype(tensors, space)
    assert _edges(genotype.normal, 1) == [("max_pool_3x3", "c_k1", None),
                                          ("skip_connect", "n0", None)]
    no_edges = {cell: {k: v for k, v in t.items() if k != "edges"} for cell, t in tensors.items()}
    plain = derive_genotype(no_edges, make_space())
    assert [e[1] for e in _edges(plain.normal, 1)] == ["c_k2", "c_k1"]


def test_skip_cap_replaces_the_weakest_skips_by_their_next_operation():
    space = make_space(max_skip_connect=1)
    ops = [c.name for c in space.operations]

    def fill(cell, t):
        t["alpha"][:, ops.index("skip_connect")] = 2.0  # every edge prefers skip_connect ...
        t["alpha"][:, ops.index("none")] = 9.0  # (none never counts)
        t["alpha"][:, ops.index("max_pool_3x3")] = 1.0  # ... then max_pool, then sep_conv
        t["alpha"][0, ops.index("skip_connect")] = 4.0  # the strongest skip: kept
        t["alpha"][1, ops.index("skip_connect")] = 3.0
        t["alpha"][1, ops.index("sep_conv_3x3")] = 1.5  # edge 1's second best: sep_conv

    genotype = derive_genotype(_tensors(space, fill), space)
    assert count_skip_connect(genotype.normal) == 1
    assert _edges(genotype.normal, 0) == [("skip_connect", "c_k2", None),
                                          ("sep_conv_3x3", "c_k1", None)]
    for node in range(1, 4):  # replaced skips become their next operation, max_pool
        assert [e[0] for e in _edges(genotype.normal, node)] == ["max_pool_3x3"] * 2
    assert count_skip_connect(genotype.reduce) == 8  # the reduction cell is not capped
    uncapped = derive_genotype(_tensors(make_space(), fill), make_space())
    assert count_skip_connect(uncapped.normal) == 8


def test_skip_cap_lets_a_weaker_edge_take_the_place_of_a_replaced_skip():
    space = make_space(max_skip_connect=0)
    ops = [c.name for c in space.operations]

    def fill(cell, t):
        t["alpha"][:, ops.index("sep_conv_3x3")] = 1.0
        t["alpha"][2, ops.index("skip_connect")] = 5.0  # n1<-c_k2: a strong skip, weak otherwise
        t["alpha"][3, ops.index("max_pool_3x3")] = 3.0  # n1<-c_k1
        t["alpha"][4, ops.index("max_pool_3x3")] = 2.0  # n1<-n0

    genotype = derive_genotype(_tensors(space, fill), space)
    # without its skip, c_k2's best is sep_conv at a low weight: c_k1 and n0 are kept instead
    assert _edges(genotype.normal, 1) == [("max_pool_3x3", "c_k1", None),
                                          ("max_pool_3x3", "n0", None)]
    assert count_skip_connect(genotype.normal) == 0


def test_identity_cap_gives_the_weakest_identities_their_next_attention():
    space = make_space(max_identity=6)
    atts = [c.name for c in space.attentions]

    def fill(cell, t):
        t["alpha"][:, 3] = 1.0  # sep_conv everywhere; edges ranked by input order on ties
        t["beta"][:, atts.index("identity")] = 2.0
        t["beta"][:, atts.index("cbam")] = 1.0
        t["beta"][0, atts.index("identity")] = 1.2  # the two weakest identities among kept ones
        t["beta"][3, atts.index("identity")] = 1.1

    genotype = derive_genotype(_tensors(space, fill), space)
    assert count_identity(genotype.normal) == 6
    assert _edges(genotype.normal, 0)[0] == ("sep_conv_3x3", "c_k2", "cbam")
    assert _edges(genotype.normal, 1)[1] == ("sep_conv_3x3", "c_k1", "cbam")
    assert count_identity(genotype.reduce) == 8


# ---------------------------------------------------------------------------------------------
# Every option with every location and mixing: plain == grouped, derive, check, compile


OPTION_SETS = {
    "partial": {"partial_channels": 2},
    "edges": {"edge_normalisation": True},
    "skip": {"auxiliary_skip": "linear"},
    "identity": {"auxiliary_identity": "cosine"},
    "all": {"partial_channels": 2, "edge_normalisation": True, "auxiliary_skip": "linear",
            "auxiliary_identity": "cosine", "max_skip_connect": 1, "max_identity": 1},
    # the samplers: their weights come from one draw (DrNAS, GDAS: single paths) or a sigmoid
    # (FairDARTS)
    "drnas": {"methods": "[drnas(kl=0.001)]"},
    "drnas-all": {"methods": "[drnas(kl=0.001)]", "partial_channels": 2,
                  "edge_normalisation": True, "auxiliary_skip": "linear",
                  "auxiliary_identity": "cosine", "max_skip_connect": 1, "max_identity": 1},
    "fair": {"methods": "[fair_darts]"},
    "fair-all": {"methods": "[fair_darts(threshold=0.5)]", "partial_channels": 2,
                 "auxiliary_skip": "linear", "auxiliary_identity": "cosine",
                 "max_skip_connect": 1},
    "gdas": {"methods": "[gdas]"},
    "gdas-all": {"partial_channels": 2, "edge_normalisation": True, "beta_decay": 0.5,
                 "auxiliary_identity": "cosine", "max_skip_connect": 1, "max_identity": 1,
                 "methods": "[gdas(unchosen=weight)]"},
    # a budget's term in the architecture loss (priced at a final network of C=4, 3 cells)
    "budget": {"methods": "[budget(macs=10k)]"},
    "budget-all": {"methods": "[budget(params=1k, form=target)]", "partial_channels": 2,
                   "edge_normalisation": True, "auxiliary_skip": "linear",
                   "auxiliary_identity": "cosine", "max_skip_connect": 1, "max_identity": 1},
    "budget-drnas": {"methods": "[drnas(kl=0.001), budget(macs=10k, form=linear)]",
                     "edge_normalisation": True},
    "budget-gdas": {"methods": "[gdas, budget(macs=10k)]"},
}
BUDGET_FINAL = SearchContext(channels=4, layers=3)  # what the search would tell the methods


def _cases():
    for location, spec in LOCATIONS.items():
        for mixing in ("sum", "product") if spec.product_allowed and spec.needs_attentions \
                else ("sum",):
            for name, options in OPTION_SETS.items():
                options = dict(options)
                separate = not spec.mixes_operations_and_attentions
                has_attention_mixture = spec.then == "attentions" or spec.output_attention
                if not has_attention_mixture:
                    if name == "identity":
                        continue
                    options.pop("auxiliary_identity", None)
                if not separate:
                    options.pop("max_skip_connect", None)
                if spec.then != "attentions":
                    options.pop("max_identity", None)
                yield pytest.param(location, mixing, options, id=f"{location}-{mixing}-{name}")


def step_weights(model):
    """The mixture weights of a search step: every method's draw (DrNAS's Dirichlet sample) from
    one seeded generator, so that the plain and the grouped copy see the same draw."""
    arch = dict(model.named_architecture())
    draw = model.methods.draw(arch, Random([torch.Generator().manual_seed(3)]))
    return model.mixture_weights(draw=draw)


@pytest.mark.parametrize("location, mixing, options", list(_cases()))
def test_every_option_composes(location, mixing, options):
    fair = "fair_darts" in str(options.get("methods"))
    space = make_space(location, mixing, **options,
                       **({"operations": OPERATIONS.removeprefix("none, ")} if fair else {}))
    plain = set_auxiliary(tiny(space, channels=4), 0.7, 0.3)
    plain.methods.search_start(BUDGET_FINAL)
    fast = copy.deepcopy(plain).set_grouped(True)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 8, 8, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (3,), generator=generator)
    # a single path (GDAS) computes one candidate per mixture: the others get no gradient
    sampled = step_weights(plain)[0].paths is not None

    def step_loss(model):  # the architecture step's: the methods' terms added (a budget's)
        weights = step_weights(model)
        loss = F.cross_entropy(model(images, weights), labels)
        extra = model.methods.architecture_loss(dict(model.named_architecture()), weights)
        return loss if extra is None else loss + extra

    losses = [step_loss(model) for model in (plain, fast)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-9, atol=1e-12)
    for (name, p), (_, q) in zip(plain.named_parameters(), fast.named_parameters()):
        if sampled and p.grad is None:  # a candidate off the single path
            assert q.grad is None, name
            continue
        assert p.grad is not None, name
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12 + 1e-9 * scale, msg=name)
    # a sampled `none` / product-mixing identity gets a zero gradient (GDAS), so a one-row gamma
    # may get none; alpha always does
    assert all(p.grad.abs().sum() > 0 for name, p in plain.named_architecture()
               if not sampled or "alpha" in name or "unchosen" in str(options))

    genotype = derive_genotype(plain)
    assert parse_text(format_genotype(genotype)).genotype() == genotype  # checks and prints back
    if "max_skip_connect" in options:
        assert count_skip_connect(genotype.normal) <= 1
    if "max_identity" in options:
        assert count_identity(genotype.normal) <= 1
    network = compile_network(genotype, channels=4, layers=3, auxiliary=False, input_size=8)
    network.eval()
    assert network(images.float()).shape == (3, 10)
