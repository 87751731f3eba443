"""GDAS (Dong and Yang, CVPR 2019) on the network side (issue 20): the Gumbel straight-through
weights, the single path (plain and grouped), on operations and attentions, and its derivation.

Each formula is checked against a hand-written float64 statement of it with a fixed draw; the
composition with every location and mixing is in tests/networks/test_search_methods.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from attdarts.language import ir
from attdarts.language.errors import DslError
from attdarts.language.transform import parse_text
from attdarts.networks.derive import derive_genotype
from attdarts.networks.methods import Random
from attdarts.networks.methods.gdas import Gdas, gumbel_noise, straight_through, temperature
from attdarts.networks.network import compile_network
from attdarts.networks.supernet import column_names, compile_supernet

pytestmark = pytest.mark.usefixtures("one_thread")
OPERATIONS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]


def space(location: str = "after_every", mixing: str = "sum", methods: str = "gdas",
          attentions: str = "identity, se, cbam") -> ir.Space:
    return parse_text(
        f"space s {{ operations = [{', '.join(OPERATIONS)}] attentions = [{attentions}] "
        f"nodes = 4 keep = 2 location = {location} mixing = {mixing} methods = [{methods}] }}"
    ).space()


def tiny(text_space: ir.Space, channels: int = 4):
    torch.manual_seed(0)
    return compile_supernet(text_space, channels=channels, layers=3, input_size=8,
                            init="randn").double()


def drawn(model, seed: int = 3):
    """The step's draw of the space's methods, {position in the list: draw} (gdas's: a dict of
    Gumbel noise by (kind, cell type))."""
    arch = dict(model.named_architecture())
    return model.methods.draw(arch, Random([torch.Generator().manual_seed(seed)]))


# -- the weights: softmax((log_softmax(alpha) + g) / tau), one-hot in value -----------------------


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(value - top) for value in row]
    return [value / sum(exps) for value in exps]


@pytest.mark.parametrize("tau", [10.0, 1.0, 0.1])
def test_straight_through_values_and_gradient_by_hand(tau):
    generator = torch.Generator().manual_seed(5)
    raw = torch.randn(3, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    noise = -torch.empty(3, 5, dtype=torch.float64).exponential_(generator=generator).log()
    probe = torch.randn(3, 5, dtype=torch.float64, generator=generator)
    weights = straight_through(raw, noise, tau)
    grad = torch.autograd.grad((weights * probe).sum(), raw)[0]
    for row in range(3):
        values = raw[row].tolist()
        soft = _softmax(values)
        logits = [(math.log(s) + g) / tau for s, g in zip(soft, noise[row].tolist())]
        p = _softmax(logits)
        chosen = max(range(5), key=lambda i: (p[i], -i))
        assert weights[row].argmax().item() == chosen
        for i in range(5):  # one-hot in value: exactly 0 off the choice, 1 up to rounding on it
            if i == chosen:
                assert weights[row, i].item() == pytest.approx(1.0, abs=1e-15)
            else:
                assert weights[row, i].item() == 0.0
        # the gradient of p: dp_i/dz_j = p_i (d_ij - p_j) / tau, z = log_softmax(raw) + g;
        # dz_j/draw_k = d_jk - soft_k
        w = [probe[row, i].item() for i in range(5)]
        dz = [sum(w[i] * p[i] * ((i == j) - p[j]) for i in range(5)) / tau for j in range(5)]
        expected = [dz[k] - soft[k] * sum(dz) for k in range(5)]
        assert grad[row].tolist() == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_gumbel_noise_is_minus_log_of_exponentials_from_the_seeds_generator():
    like = torch.zeros(2, 3, 4, dtype=torch.float64)
    generators = [torch.Generator().manual_seed(seed) for seed in (1, 2)]
    noise = gumbel_noise(like, Random(generators, stacked=True))
    for seed, part in zip((1, 2), noise):
        expected = -torch.empty(3, 4, dtype=torch.float64).exponential_(
            generator=torch.Generator().manual_seed(seed)).log()
        assert torch.equal(part, expected)  # a seed draws alone what it draws with others


def test_an_infinite_gumbel_draw_is_drawn_again(monkeypatch):
    original = torch.Tensor.exponential_
    calls = []

    def first_has_a_zero(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(out.clone())
        if len(calls) == 1:
            out[0, 1] = 0.0  # -log(0) = inf: GDAS draws again
        return out
    monkeypatch.setattr(torch.Tensor, "exponential_", first_has_a_zero)
    noise = gumbel_noise(torch.zeros(2, 3), Random([torch.Generator().manual_seed(0)]))
    assert len(calls) == 2 and torch.isfinite(noise).all()
    assert torch.equal(noise, -calls[1].log())


def test_tau_is_linear_from_tau_max_in_the_first_epoch_to_tau_min_in_the_last():
    assert temperature(10.0, 0.1, 0, 250) == 10.0
    assert temperature(10.0, 0.1, 249, 250) == pytest.approx(0.1, abs=1e-12)
    assert temperature(10.0, 0.1, 1, 3) == pytest.approx(5.05)
    assert temperature(10.0, 0.1, 0, 1) == 10.0  # a one-epoch search
    method = Gdas(space(), {"tau_max": 4.0, "tau_min": 2.0, "unchosen": "nothing"})
    assert method.epoch_start(1, 2) == {"tau": 2.0} and method.tau == 2.0
    assert method.capture_key() == (2.0,) and "host" in method.capture_problem()


def test_one_draw_per_cell_type_and_kind_gives_host_paths():
    model = tiny(space("after_every_and_end"))
    draw = drawn(model)
    assert set(draw[0]) == {(kind, cell) for kind in ("alpha", "beta", "gamma")
                            for cell in ir.CELL_KINDS}
    weights = model.mixture_weights(draw=draw)
    for index, cell in enumerate(ir.CELL_KINDS):
        made = weights[index]
        for kind in ("alpha", "beta", "gamma"):
            tensor = getattr(made, kind)
            chosen = getattr(made.paths, kind)
            assert isinstance(chosen, tuple) and all(isinstance(i, int) for i in chosen)
            one_hot = torch.nn.functional.one_hot(torch.tensor(chosen), tensor.shape[-1])
            torch.testing.assert_close(tensor.detach(), one_hot.double(), rtol=0, atol=1e-15)
    without = model.mixture_weights()  # no draw: the softmax, every candidate computed
    assert without[0].paths is None
    torch.testing.assert_close(without[0].alpha, torch.softmax(model.arch.alpha_normal, -1))


# -- the single path against a hand-written cell ------------------------------------------------


def _cell_by_hand(cell, s0, s1, weights, paths, unchosen: bool, product: bool):
    """A search cell on its single paths, written out: edge e computes w[e, k] * o_k(x) (and its
    attention the same way), the other candidates add nothing or their weights."""
    def mixture(candidates, x, row, chosen, attention):
        if attention and product:
            module = candidates[chosen]
            log_mask = (torch.log(module.mask(x).clamp_min(1e-6)) if hasattr(module, "mask")
                        and type(module).__name__ != "IdentityAttention" else 0.0 * x)
            out = x * torch.exp(row[chosen] * log_mask)
        else:
            out = row[chosen] * candidates[chosen](x)
        if unchosen:
            for i in range(len(candidates)):
                if i != chosen:
                    out = out + row[i]
        return out

    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    index = 0
    for node in range(4):
        total = 0.0
        for source in range(node + 2):
            edge = cell.edges[index]
            h = mixture(edge.first.candidates, states[source], weights.alpha[index],
                        paths.alpha[index], False)
            h = mixture(edge.then.candidates, h, weights.beta[index], paths.beta[index], True)
            total = total + h
            index += 1
        states.append(total)
    return torch.cat(states[2:], dim=1)


@pytest.mark.parametrize("mixing, unchosen", [("sum", "nothing"), ("sum", "weight"),
                                              ("product", "nothing")])
def test_single_path_cell_equals_a_hand_written_one_with_its_gradients(mixing, unchosen):
    model = tiny(space(mixing=mixing, methods=f"gdas(unchosen={unchosen})"))
    weights = model.mixture_weights(draw=drawn(model))[0]
    cell = model.cells[0]
    s0 = torch.randn(2, 12, 8, 8, dtype=torch.float64)
    out = cell(s0, s0, weights)
    expected = _cell_by_hand(cell, s0, s0, weights, weights.paths, unchosen == "weight",
                             mixing == "product")
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(out)
    inputs = [model.arch.alpha_normal, model.arch.beta_normal]
    got = torch.autograd.grad((out * probe).sum(), inputs, retain_graph=True)
    reference = torch.autograd.grad((expected * probe).sum(), inputs)
    for grad, want in zip(got, reference):
        torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-14)
        assert grad.abs().sum() > 0
    # one-hot weights: the single path's value is the full mixture's
    full = cell(s0, s0, weights._replace(paths=None))
    torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-12)


def test_only_the_chosen_candidates_get_weight_gradients():
    model = tiny(space())
    weights = model.mixture_weights(draw=drawn(model))
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model(images, weights).sum().backward()
    for cell in model.cells:
        paths = weights[cell.kind_index].paths
        for index, edge in enumerate(cell.edges):
            for k, module in enumerate(edge.first.candidates):
                grads = [p.grad for p in module.parameters()]
                if grads:
                    assert all((g is not None) == (k == paths.alpha[index]) for g in grads)
            for a, module in enumerate(edge.then.candidates):
                grads = [p.grad for p in module.parameters()]
                if grads:
                    assert all((g is not None) == (a == paths.beta[index]) for g in grads)


def _with_none_on_edge_zero(model, draw):
    """A draw whose noise makes `none` win edge 0 of the normal cell by far."""
    noise = dict(draw[0])
    noise[("alpha", "normal")] = noise[("alpha", "normal")].clone()
    noise[("alpha", "normal")][0] = torch.tensor([50.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    return {0: noise}


@pytest.mark.parametrize("unchosen", ["nothing", "weight"])
def test_a_chosen_none_gives_its_row_a_zero_gradient_unless_unchosen_weights_are_added(unchosen):
    """GDAS's DARTS-space cell (`MixedOp.forward_gdas`: o_k(x) * w_k) gives a `none` edge's alpha a
    zero gradient; its NAS-Bench-201 cell adds the other weights, which then get the summed
    gradient of the edge's output."""
    model = tiny(space(location="no_attention", methods=f"gdas(unchosen={unchosen})"))
    weights = model.mixture_weights(draw=_with_none_on_edge_zero(model, drawn(model)))[0]
    assert weights.paths.alpha[0] == 0
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    out = model.cells[0].edges[0](x, weights.alpha[0], None, None, (0, None, unchosen == "weight"))
    assert torch.equal(out, torch.zeros_like(out))
    probe = torch.randn_like(out)
    alpha = model.arch.alpha_normal
    grad = torch.autograd.grad((out * probe).sum(), alpha, retain_graph=True)[0]
    if unchosen == "nothing":
        assert torch.equal(grad, torch.zeros_like(grad))
    else:
        expected = torch.autograd.grad(weights.alpha[0, 1:].sum() * probe.sum(), alpha,
                                       retain_graph=True)[0]
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
        assert grad[0].abs().sum() > 0
    cell = model.cells[0]  # in the cell: the rows of the other edges still get gradients
    s0 = torch.randn(2, 12, 8, 8, dtype=torch.float64)
    grad = torch.autograd.grad(cell(s0, s0, weights).square().sum(), alpha)[0]
    assert (grad[0].abs().sum() == 0) == (unchosen == "nothing") and grad[1:].abs().sum() > 0


@pytest.mark.parametrize("location, mixing", [("after_every", "sum"), ("after_every", "product"),
                                              ("end", "sum"), ("after_every_and_end", "product"),
                                              ("no_attention", "sum")])
@pytest.mark.parametrize("methods", ["gdas", "gdas(unchosen=weight), partial_channels(k=2), "
                                             "edge_normalisation"])
def test_grouped_single_path_equals_plain(location, mixing, methods):
    plain = tiny(space(location, mixing, methods))
    fast = copy.deepcopy(plain).set_grouped(True)
    assert fast.grouped
    draw = drawn(plain, seed=11)
    images = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    outs = []
    for model in (plain, fast):
        out = model(images, model.mixture_weights(draw=draw))
        (out * torch.arange(10.0, dtype=torch.float64)).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-12)
    for (name, p), (_, q) in zip(plain.named_parameters(), fast.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            scale = p.grad.abs().max().item()
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12 + 1e-9 * scale,
                                       msg=name)


def test_stacked_seeds_get_one_host_path_per_seed_as_each_seed_alone():
    """Weights with a seed axis (`--together`): `paths` holds one tuple per seed, and seed s's
    weights and paths are those its own run makes from its own generator."""
    model = tiny(space())
    arch = dict(model.named_architecture())
    stacked = {name: torch.stack([value, value.flip(-1)]) for name, value in arch.items()}
    seeds = (0, 1)
    random = Random([torch.Generator().manual_seed(s) for s in seeds], stacked=True)
    weights = model.mixture_weights(stacked, model.methods.draw(stacked, random))
    for seed in seeds:
        own = {name: value[seed] for name, value in stacked.items()}
        draw = model.methods.draw(own, Random([torch.Generator().manual_seed(seed)]))
        alone = model.mixture_weights(own, draw)
        for together, single in zip(weights, alone):
            assert together.paths.of_seed(seed) == single.paths
            assert all(isinstance(i, int) for i in together.paths.of_seed(seed).alpha)
            torch.testing.assert_close(together.alpha[seed], single.alpha, rtol=0, atol=0)
            torch.testing.assert_close(together.beta[seed], single.beta, rtol=0, atol=0)
    assert weights[0].paths.alpha[0] != weights[0].paths.alpha[1]  # the seeds drew apart


# -- derivation: the top `keep` (operation, input) pairs per node -------------------------------


def _their_parse(alpha: torch.Tensor) -> list[set[tuple[str, int]]]:
    """GDAS's `genotype()._parse` (search_model_gdas_nasnet.py) written out: per node every
    (operation, input, weight) with operation != none, sorted by -weight, the first two."""
    weights = torch.softmax(alpha.double(), -1).tolist()
    nodes, row = [], 0
    for node in range(4):
        edges = []
        for source in range(node + 2):
            for k, name in enumerate(OPERATIONS):
                if name != "none":
                    edges.append((name, source, weights[row + source][k]))
        row += node + 2
        nodes.append({(name, source) for name, source, _ in
                      sorted(edges, key=lambda edge: -edge[-1])[:2]})
    return nodes


@pytest.mark.parametrize("seed", range(4))
def test_derivation_keeps_the_top_two_operation_input_pairs(seed):
    text_space = space(location="no_attention")
    generator = torch.Generator().manual_seed(seed)
    tensors = {cell: {"alpha": 2 * torch.randn(14, 4, generator=generator, dtype=torch.float64)}
               for cell in ir.CELL_KINDS}
    if seed == 0:  # make an input win twice: its two best operations beat every other pair
        tensors["normal"]["alpha"][0] = torch.tensor([-9.0, 1.0, 0.9, -9.0])
        tensors["normal"]["alpha"][1] = 0.0  # 0.25 each
    genotype = derive_genotype(tensors, text_space)
    inputs = ["c_k2", "c_k1", "n0", "n1", "n2"]
    for cell in ir.CELL_KINDS:
        derived = [{(edge.operation.name, inputs.index(edge.input)) for edge in node.edges}
                   for node in getattr(genotype, cell).nodes]
        assert derived == _their_parse(tensors[cell]["alpha"])
    if seed == 0:
        n0 = genotype.normal.nodes[0].edges
        assert [(e.operation.name, e.input) for e in n0] == [("max_pool_3x3", "c_k2"),
                                                             ("skip_connect", "c_k2")]
        network = compile_network(genotype, channels=4, layers=3, auxiliary=False, input_size=8)
        assert network(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_derivation_pairs_carry_their_edges_attention_and_obey_the_caps():
    text_space = space(methods="gdas, max_skip_connect(n=0)")
    columns = column_names(text_space)
    tensors = {cell: {kind: torch.zeros(1 if kind == "gamma" else 14, len(names),
                                        dtype=torch.float64)
                      for kind, names in columns.items()} for cell in ir.CELL_KINDS}
    alpha = tensors["normal"]["alpha"]
    alpha[0, 2] = 5.0  # n0<-c_k2: skip_connect (capped away), then sep_conv, then max_pool
    alpha[0, 3] = 4.0
    alpha[0, 1] = 3.0
    tensors["normal"]["beta"][0, 1] = 2.0  # its attention: se
    tensors["normal"]["alpha"][1, 0] = 10.0  # n0<-c_k1: none by far
    genotype = derive_genotype(tensors, text_space)
    assert [(e.operation.name, e.input, e.attention and e.attention.name)
            for e in genotype.normal.nodes[0].edges] == [("sep_conv_3x3", "c_k2", "se"),
                                                        ("max_pool_3x3", "c_k2", "se")]
    assert all(e.operation.name != "skip_connect" for node in genotype.normal.nodes
               for e in node.edges)


def test_mixed_location_derives_an_attention_pair_to_skip_connect_then_it():
    text_space = space("mixed_with_operation", attentions="se, cbam")
    tensors = {cell: {"alpha": torch.zeros(14, 6, dtype=torch.float64)} for cell in ir.CELL_KINDS}
    tensors["normal"]["alpha"][1, 5] = 3.0  # n0<-c_k1: cbam, then sep_conv
    tensors["normal"]["alpha"][1, 3] = 2.0
    genotype = derive_genotype(tensors, text_space)
    assert [(e.operation.name, e.input, e.attention and e.attention.name)
            for e in genotype.normal.nodes[0].edges] == [("skip_connect", "c_k1", "cbam"),
                                                        ("sep_conv_3x3", "c_k1", None)]


# -- the catalog ---------------------------------------------------------------------------------


@pytest.mark.parametrize("methods, message", [
    ("gdas(tau_max=0.1, tau_min=10)", "tau_min (10.0) exceeds tau_max (0.1)"),
    ("gdas, smoothing", "'smoothing' cannot be combined with 'gdas'"),
    ("auxiliary_skip, gdas", "'gdas' cannot be combined with 'auxiliary_skip'"),
    ("gdas(unchosen=all)", "'unchosen' of gdas must be one of nothing, weight"),
    ("gdas(tau_min=0)", "'tau_min' of gdas is 0; it must be at least 0.001"),
])
def test_catalog_refuses_what_makes_no_sense_with_a_located_error(methods, message):
    with pytest.raises(DslError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        space(methods=methods)
    assert ":1:" in str(error.value)  # line:column of the call
