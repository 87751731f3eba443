"""The network side of search stages (P-DARTS, issue 20 item 4): P-DARTS's pruning order, masked
mixture weights, dropped candidates not computed, skip dropout from keyed masks, and every
attention location and mixing plain == grouped with per-edge masks (float64)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from attdarts.language import kinds
from attdarts.language.errors import DslError
from attdarts.language.locations import BOTH, LOCATIONS
from attdarts.language.methods import METHODS
from attdarts.language.transform import parse_text
from attdarts.networks import noise
from attdarts.networks.derive import derive_genotype
from attdarts.networks.methods import Random, SearchContext
from attdarts.networks.methods.progressive import Progressive, flat, prune, unflat
from attdarts.networks.network import compile_network
from attdarts.networks.operations import Zero
from attdarts.networks.supernet import compile_supernet

pytestmark = pytest.mark.usefixtures("one_thread")

OPERATIONS = "none, max_pool_3x3, skip_connect, sep_conv_3x3"


def make_space(location: str = "after_every", mixing: str = "sum",
               stages: str = "stage(layers=3), stage(operations=2, attentions=2, "
                             "skip_dropout=0.3)",
               attentions: str = "identity, se, cbam", methods: str = "",
               operations: str = OPERATIONS):
    if LOCATIONS[location].mixes_operations_and_attentions:
        attentions = "se, cbam"
    if location != "no_attention" and "attentions=2" in stages and \
            LOCATIONS[location].mixes_operations_and_attentions:
        stages = stages.replace(", attentions=2", "")  # mixed: one softmax over both
    if location == "no_attention":
        stages = stages.replace(", attentions=2", "")
    listed = "" if location == "no_attention" else f"attentions = [{attentions}]"
    methods = f"methods = [{methods}]" if methods else ""
    return parse_text(f"space s {{ operations = [{operations}] {listed} nodes = 4 keep = 2 "
                      f"location = {location} mixing = {mixing} {methods} "
                      f"stages = [{stages}] }}").space()


def tiny(space, seed: int = 0):
    torch.manual_seed(seed)
    return compile_supernet(space, channels=8, layers=3, input_size=8, init="randn").double()


def random_masks(model, keep: int, seed: int = 1, operations: int | None = None):
    """Each row keeps `keep` random candidates (`operations` of alpha's, when given; different
    rows keep different ones)."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for cell, tensors in model.architecture_tensors().items():
        masks[cell] = {}
        for kind, raw in tensors.items():
            if kind in kinds.MIXTURES:
                wanted = operations if operations and kind == kinds.OPERATION else keep
                count = min(wanted, raw.shape[-1])
                order = torch.rand(raw.shape, generator=generator).argsort(-1)[..., :count]
                masks[cell][kind] = torch.zeros(raw.shape, dtype=torch.bool).scatter(
                    -1, order, True)
    return masks


# ---------------------------------------------------------------------------------------------
# Pruning: P-DARTS's get_min_k


def test_pruning_drops_the_weakest_one_at_a_time_lower_index_first_among_equals():
    weights = torch.tensor([
        [0.05, 0.20, 0.10, 0.30, 0.35],  # distinct: drop 0 (0.05), 2 (0.10)
        [0.20, 0.20, 0.20, 0.20, 0.20],  # all equal: np.argmin drops index 0, then 1
        [0.40, 0.10, 0.10, 0.25, 0.15],  # a tie at the bottom: 1 before 2
        [0.00, 0.50, 0.00, 0.25, 0.25],  # two dropped earlier (zero weight) are not counted
    ], dtype=torch.float64)
    kept = torch.tensor([[True] * 5, [True] * 5, [True] * 5,
                         [False, True, False, True, True]])
    result = prune(weights, kept, 3)
    assert result.tolist() == [
        [False, True, False, True, True],
        [False, False, True, True, True],
        [True, False, False, True, True],
        [False, True, False, True, True],  # already 3: unchanged
    ]
    assert prune(weights, kept, 2)[3].tolist() == [False, True, False, False, True]  # tie: 3 first
    assert kept[0].all()  # the input mask is left alone


def test_pruning_follows_p_darts_get_min_k_by_hand():
    """P-DARTS's rule written out: repeatedly take numpy-style argmin (first minimum) of the row's
    kept weights and set it to 1 so it is not taken again."""
    generator = torch.Generator().manual_seed(3)
    weights = torch.softmax(torch.randn(14, 8, generator=generator, dtype=torch.float64), -1)
    weights[2, 5] = weights[2, 6]  # an exact tie
    kept = torch.ones(14, 8, dtype=torch.bool)
    result = prune(weights, kept, 5)
    for row in range(14):
        values = weights[row].tolist()
        dropped = []
        for _ in range(3):
            index = min(range(8), key=lambda i: (values[i], i))
            dropped.append(index)
            values[index] = 1.0
        assert [i for i in range(8) if not result[row, i]] == sorted(dropped)


# ---------------------------------------------------------------------------------------------
# Masks in the weights and in the forward


def test_masked_candidates_weigh_zero_and_the_others_share_the_softmax():
    model = tiny(make_space())
    masks = random_masks(model, 2)
    model.use_candidates(masks)
    raw = model.architecture_tensors()["normal"][kinds.OPERATION]
    kept = masks["normal"][kinds.OPERATION]
    weights = model.mixture_weights()[0].alpha
    for row in range(raw.shape[0]):
        values = [math.exp(float(raw[row, i])) if kept[row, i] else 0.0 for i in range(4)]
        expected = torch.tensor([v / sum(values) for v in values], dtype=torch.float64)
        torch.testing.assert_close(weights[row], expected, rtol=1e-12, atol=0)
    normalised = model.normalised_architecture()["normal"][kinds.OPERATION]
    assert torch.equal(normalised == 0, ~kept)


def test_dropped_candidates_are_not_computed_and_get_no_gradient():
    model = tiny(make_space())
    masks = random_masks(model, 2)
    model.use_candidates(masks)
    calls = set()
    for name, module in model.named_modules():
        if ".candidates." in name and name.count(".") == 6:  # cells.i.edges.j.first.candidates.k
            module.register_forward_hook(lambda m, i, o, name=name: calls.add(name))
    model(torch.randn(2, 3, 8, 8, dtype=torch.float64)).sum().backward()
    for index, cell in enumerate(model.cells):
        kept = masks["reduce" if cell.reduction else "normal"][kinds.OPERATION]
        for row, edge in enumerate(cell.edges):
            for column, module in enumerate(edge.first.candidates):
                name = f"cells.{index}.edges.{row}.first.candidates.{column}"
                computed = name in calls
                assert computed == (bool(kept[row, column]) and not isinstance(module, Zero))
    idle = model.idle_weights()
    assert idle and all(".candidates." in name for name in idle)
    for name, parameter in model.named_weights():
        assert (parameter.grad is None) == (name in idle), name


def test_use_candidates_over_a_seed_axis_computes_what_any_seed_keeps():
    model = tiny(make_space())
    first, second = random_masks(model, 2, seed=1), random_masks(model, 2, seed=2)
    stacked = {cell: {kind: torch.stack([first[cell][kind], second[cell][kind]])
                      for kind in first[cell]} for cell in first}
    model.use_candidates(stacked)
    either = first["normal"][kinds.OPERATION] | second["normal"][kinds.OPERATION]
    for row, edge in enumerate(model.cells[0].edges):  # column 0 is `none`: never computed
        computed = tuple(i for i in range(1, 4) if either[row, i])
        assert edge.first.active == (computed or (0,))


def test_masks_go_to_a_checkpoint_and_back():
    model = tiny(make_space())
    masks = random_masks(model, 2)
    saved = flat(masks)
    assert set(saved) == {"alpha_normal", "beta_normal", "alpha_reduce", "beta_reduce"}
    restored = unflat(saved)
    assert all(torch.equal(restored[c][k], masks[c][k]) for c in masks for k in masks[c])


# ---------------------------------------------------------------------------------------------
# Skip dropout: masks from a key


def test_keyed_masks_are_uniform_reproducible_and_the_same_plain_and_grouped():
    key = torch.tensor([123.0, 0.3], dtype=torch.float64)
    u = noise.uniform(torch.tensor(5), torch.tensor(17), torch.arange(200_000))
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    other = noise.uniform(torch.tensor(5), torch.tensor(18), torch.arange(200_000))
    assert abs(float(torch.corrcoef(torch.stack([u, other]))[0, 1])) < 0.01
    x = torch.ones(4, 3, 5, 5, dtype=torch.float64)
    dropped = noise.dropout(x, key, 17)
    assert torch.equal(dropped, noise.dropout(x, key, 17))
    assert set(dropped.unique().tolist()) == {0.0, 1 / 0.7}
    assert abs(float((dropped == 0).double().mean()) - 0.3) < 0.06
    wave = noise.dropout(torch.ones(4, 2, 3, 5, 5, dtype=torch.float64), key,
                         torch.tensor([17, 18]))
    assert torch.equal(wave[:, 0], dropped)
    assert torch.equal(wave[:, 1], noise.dropout(x, key, 18))


def test_keyed_masks_under_vmap_are_each_seeds_own():
    keys = torch.tensor([[1.0, 0.5], [2.0, 0.5]], dtype=torch.float64)
    x = torch.ones(2, 4, 3, 5, 5, dtype=torch.float64)
    together = torch.vmap(lambda x, k: noise.dropout(x, k, 9), randomness="error")(x, keys)
    for seed in range(2):
        assert torch.equal(together[seed], noise.dropout(x[seed], keys[seed], 9))


def test_skip_dropout_acts_on_stride_one_skip_connect_in_training_only():
    space = make_space(location="no_attention", stages="stage(skip_dropout=0.5)")
    model = tiny(space)
    model.use_candidates(random_masks(model, 4))
    cell = model.cells[0]  # a normal cell: every edge at stride 1
    edge = cell.edges[2]
    alpha = torch.softmax(torch.randn(4, dtype=torch.float64), 0)
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    pass_noise = torch.tensor([77.0, 0.5], dtype=torch.float64)
    site = cell.edge_sites[2]
    out = edge(x, alpha, None, noise=(pass_noise, site))
    candidates = edge.first.candidates
    mask = (noise.uniform(torch.tensor(77), site, torch.arange(x.numel()).reshape(x.shape))
            >= 0.5).double() / 0.5
    expected = (alpha[1] * candidates[1](x) + alpha[2] * (x * mask)
                + alpha[3] * candidates[3](x))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert model.cells[1].edges[0].first.noisy is None  # stride 2: a factorized reduce
    progressive = model.methods.progressive
    assert isinstance(progressive, Progressive)
    progressive.rate = 0.5
    model.methods.draw(dict(model.named_architecture()), Random([torch.Generator()]))
    weights = model.mixture_weights()
    assert weights[0].noise is not None and float(weights[0].noise[1]) == 0.5
    model.eval()
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    without = model(images, tuple(w._replace(noise=None) for w in weights))
    assert torch.equal(model(images, weights), without)  # no dropout in eval mode


def test_each_step_draws_one_key_for_the_architecture_passes_and_one_for_the_weight_step():
    model = tiny(make_space(location="no_attention", stages="stage(skip_dropout=0.3)"))
    model.methods.progressive.rate = 0.3
    generator = torch.Generator().manual_seed(11)
    random = Random([generator])
    model.methods.draw(dict(model.named_architecture()), random)
    arch = model.mixture_weights()
    again = model.mixture_weights()  # a second pass of the architecture step: the same key
    weight = model.mixture_weights(weight_step=random)
    assert torch.equal(arch[0].noise, again[0].noise) and torch.equal(arch[0].noise, arch[1].noise)
    assert not torch.equal(arch[0].noise, weight[0].noise)
    assert torch.equal(weight[0].noise, weight[1].noise)
    reference = torch.Generator().manual_seed(11)
    first = torch.empty((), dtype=torch.float64).random_(0, noise.KEY_LIMIT, generator=reference)
    assert float(arch[0].noise[0]) == float(first)
    model.methods.progressive.rate = 0.0
    model.methods.draw(dict(model.named_architecture()), random)
    assert model.mixture_weights()[0].noise is None  # rate 0: no key, nothing drawn


# ---------------------------------------------------------------------------------------------
# Every location and mixing: plain == grouped with per-edge masks and skip dropout


def _combinations():
    """Every location and mixing stages allow (not double_mixed: tests/language/test_stages.py)."""
    staged = {location: spec for location, spec in LOCATIONS.items()
              if not (spec.mixes_operations_and_attentions and spec.then is not None)}
    pairs = [(location, "sum") for location in staged]
    pairs += [(location, "product") for location, spec in staged.items()
              if spec.product_allowed and location != "no_attention"]
    return pairs


def derived_columns(space, genotype, threshold: bool = False):
    """(cell, kind, row, column) of every choice of a derived genotype: the architecture entry
    whose weight chose it (`Location.choose_edge`). No attention is the identity's column, unless
    the space lists no identity or a `threshold` (FairDARTS) may have left it out."""
    location, count = space.location_spec, len(space.operations)
    names = [call.name for call in space.attentions]

    def attention_column(call):
        if call is None and threshold:
            return None
        name = "identity" if call is None else call.name
        return names.index(name) if name in names else None

    columns = []
    for cell_kind in ("normal", "reduce"):
        cell = genotype.cell(cell_kind)
        for node in cell.nodes:
            number = int(node.name[1:])  # a node a threshold removed leaves a gap
            for edge in node.edges:
                row = sum(2 + k for k in range(number)) + cell.index_of(edge.input)
                attention = attention_column(edge.attention)
                if location.mixes_operations_and_attentions and location.then is None:
                    column = (space.operations.index(edge.operation) if edge.attention is None
                              else count + attention)
                    columns.append((cell_kind, kinds.OPERATION, row, column))
                    continue
                columns.append((cell_kind, kinds.OPERATION, row,
                                space.operations.index(edge.operation)))
                if location.then is not None and attention is not None:
                    offset = count if location.then == BOTH else 0
                    columns.append((cell_kind, kinds.ATTENTION, row, offset + attention))
        output = attention_column(cell.output.attention)
        if location.output_attention and output is not None:
            columns.append((cell_kind, kinds.OUTPUT, 0, output))
    return columns


STAGED_OPERATIONS = "none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3"
TWO_STAGES = "stage(layers=3), stage(operations=3, attentions=2)"


SMALL = SearchContext(channels=8, layers=3)  # what the methods price (a budget): kept small


def check_staged(space) -> None:
    """A staged supernet of `space` with random per-edge masks (3 operations, 2 attentions kept)
    and skip dropout, the methods' architecture loss included: the same outputs and gradients
    edge by edge and grouped (float64), all finite, dropped candidates weighing exactly 0 and
    never on a sampler's single path, a genotype derived that chooses no dropped candidate and
    compiles."""
    plain = tiny(space)
    plain.methods.search_start(SMALL)
    plain.use_candidates(random_masks(plain, 2, operations=3))
    plain.methods.progressive.rate = 0.3
    grouped = copy.deepcopy(plain).set_grouped(True)
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    results = []
    for model in (plain, grouped):
        random = Random([torch.Generator().manual_seed(5)])
        arch = dict(model.named_architecture())
        draws = model.methods.draw(arch, random)
        weights = model.mixture_weights(None, draws, weight_step=random)
        out = model(images, weights)
        extra = model.methods.architecture_loss(arch, weights)
        (out.sum() if extra is None else out.sum() + extra.sum()).backward()
        results.append((out, {name: p.grad for name, p in model.named_parameters()}))
        kept = model.methods.progressive.masks
        for cell, cell_weights in zip(("normal", "reduce"), weights):
            for kind, mask in kept[cell].items():
                assert (getattr(cell_weights, kind)[..., :mask.shape[-1]][~mask] == 0).all()
                grad = model.arch.tensor(kind, cell).grad
                assert grad is None or torch.isfinite(grad).all(), (cell, kind)
            paths = cell_weights.paths  # a sampler's single paths (GDAS) never choose one
            for kind, mask in kept[cell].items() if paths is not None else ():
                for row, column in enumerate(getattr(paths, kind) or ()):
                    assert mask[row, column], (cell, kind, row, column)
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-10, atol=1e-12)
    for name, grad in results[0][1].items():
        other = results[1][1][name]
        assert (grad is None) == (other is None), name
        if grad is not None:
            torch.testing.assert_close(other, grad, rtol=1e-8, atol=1e-10, msg=name)
    assert grouped.grouped == space.location_spec.groupable
    genotype = derive_genotype(plain, space)
    compile_network(genotype, channels=8, layers=3)
    kept = plain.methods.progressive.masks
    threshold = plain.methods.threshold(kinds.ATTENTION) is not None
    for cell, kind, row, column in derived_columns(space, genotype, threshold):
        assert kept[cell][kind].reshape(-1, kept[cell][kind].shape[-1])[row, column], (
            cell, kind, row, column)


@pytest.mark.parametrize("methods", ["", "partial_channels(k=2), edge_normalisation, "
                                     "max_skip_connect(n=1), smoothing, beta_decay",
                                     "drnas(kl=0.1), max_skip_connect(n=1)",
                                     "fair_darts(threshold=0.3), partial_channels(k=2)",
                                     "gdas(unchosen=weight), partial_channels(k=2), "
                                     "edge_normalisation, max_skip_connect(n=1), "
                                     "budget(macs=1M, form=linear)"])
@pytest.mark.parametrize("location, mixing", _combinations())
def test_stages_compose_with_every_location_plain_equals_grouped(location, mixing, methods):
    """Per-edge masks, skip dropout and (second to fifth rows) the methods a staged space may
    list with them, the samplers that make the weights included (DrNAS's Dirichlet draw, over
    the kept candidates; FairDARTS's sigmoid; GDAS's single paths, never on a dropped candidate,
    with a budget on the sampled weights), in every location and mixing (`check_staged`; random
    smoothing's noise on a dropped candidate is dropped)."""
    if LOCATIONS[location].mixes_operations_and_attentions:
        methods = methods.replace("max_skip_connect(n=1), ", "").replace(
            ", max_skip_connect(n=1)", "")
    operations = STAGED_OPERATIONS
    if "fair_darts" in methods:
        operations = operations.replace("none, ", "")
    check_staged(make_space(location, mixing, methods=methods, operations=operations,
                            stages=TWO_STAGES))


def test_gdas_never_samples_a_dropped_candidate_and_gives_it_a_zero_gradient():
    """GDAS under a stage's masks: a dropped candidate's raw weight is -inf before the Gumbel
    softmax, so no draw chooses it (its probability is 0), its straight-through weight is 0 in
    value, and its gradient through the sample is exactly 0 (finite, no NaN) in alpha, beta and
    gamma; the cells compute the chosen candidates only."""
    space = make_space("after_every_and_end", methods="gdas(unchosen=weight)",
                       operations=STAGED_OPERATIONS, stages=TWO_STAGES)
    model = tiny(space)
    masks = random_masks(model, 2, operations=2)  # 2 of 5 operations, 2 of 3 attentions
    model.use_candidates(masks)
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        model.zero_grad(set_to_none=True)
        arch = dict(model.named_architecture())
        weights = model.mixture_weights(None, model.methods.draw(arch, Random([generator])))
        model(images, weights).sum().backward()
        for cell, cell_weights in zip(("normal", "reduce"), weights):
            for kind, mask in masks[cell].items():
                chosen = getattr(cell_weights.paths, kind)
                assert all(mask[row, column] for row, column in enumerate(chosen))
                assert (getattr(cell_weights, kind)[~mask] == 0).all()
                grad = model.arch.tensor(kind, cell).grad
                assert torch.isfinite(grad).all() and (grad[~mask] == 0).all(), (cell, kind)
                assert grad[mask].abs().sum() > 0  # the kept ones do get a gradient


def test_a_budgets_expected_cost_counts_the_searched_candidates_only():
    """The budget method under stages prices the weights the step uses, masked: a dropped
    candidate weighs 0 and contributes nothing to E (changing its cost changes nothing), so E is
    the expectation over each row's searched candidates; without the masks it differs."""
    space = make_space(methods="budget(macs=1M, form=linear)", operations=STAGED_OPERATIONS,
                       stages=TWO_STAGES)
    model = tiny(space)
    model.methods.search_start(SMALL)
    budget = next(method for method in model.methods if hasattr(method, "budget")).budget
    unmasked = budget.expected(model.mixture_weights())
    masks = random_masks(model, 2, operations=3)
    model.use_candidates(masks)
    weights = model.mixture_weights()
    expected = budget.expected(weights)
    for cell in ("normal", "reduce"):
        for kind in masks[cell]:
            cost = getattr(budget, f"{kind}_cost_{cell}")
            cost[~masks[cell][kind][..., :cost.shape[-1]]] = 1e12  # what a dropped one costs
    assert budget.expected(weights).item() == pytest.approx(expected.item(), rel=1e-12)
    assert expected.item() != pytest.approx(unmasked.item(), rel=1e-6)
    loss = model.methods.architecture_loss(dict(model.named_architecture()), weights)
    loss.backward()
    for cell in ("normal", "reduce"):
        for kind, mask in masks[cell].items():
            grad = model.arch.tensor(kind, cell).grad
            assert torch.isfinite(grad).all() and (grad[~mask] == 0).all(), (cell, kind)


def test_a_row_left_with_one_choosable_candidate_has_a_constant_cost():
    """A stage that keeps `none` and one operation on an edge leaves derivation one choice
    there: the budget prices that row at the operation's cost whatever the weights, with an
    exactly zero gradient (not the rounding left of ``w c / w``, which Adam would divide by
    its eps)."""
    space = make_space(methods="budget(macs=1M, form=linear)", operations=STAGED_OPERATIONS,
                       stages=TWO_STAGES)
    model = tiny(space)
    model.methods.search_start(SMALL)
    budget = next(method for method in model.methods if hasattr(method, "budget")).budget
    masks = random_masks(model, 2, operations=2)
    names = [call.name for call in space.operations]
    for cell in ("normal", "reduce"):  # every row: none and one other operation
        alpha = masks[cell][kinds.OPERATION]
        alpha[:, names.index("none")] = True
        for row in range(alpha.shape[0]):
            alpha[row, 1:] = False
            alpha[row, 1 + row % (len(names) - 1)] = True
    model.use_candidates(masks)
    for seed in range(3):
        with torch.no_grad():
            for parameter in model.architecture():
                parameter.normal_(generator=torch.Generator().manual_seed(seed))
        model.zero_grad(set_to_none=True)
        budget.loss(model.mixture_weights()).backward()
        for cell in ("normal", "reduce"):
            alpha = model.arch.tensor(kinds.OPERATION, cell)
            assert torch.equal(alpha.grad, torch.zeros_like(alpha)), (seed, cell)
            assert model.arch.tensor(kinds.ATTENTION, cell).grad.abs().sum() > 0  # still live


# the methods stages refuse (attdarts.language.stages), and why
REFUSED_WITH_STAGES = {
    "stop_at_skips": "an early stop would end the whole progressive search",
    "auxiliary_skip": "its term rides on skip_connect's weight, which a stage may drop",
}
# methods without a default for a setting they need: a budget names its measure (the linear
# form, so that its term always has a gradient)
CALLS = {"budget": "budget(macs=1M, form=linear)"}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_catalog_method_with_stages_is_refused_or_composes(name):
    """What stages refuse matches what works: each method of the catalog, listed with stages
    (the paper's location, its settings' defaults), is refused in one line saying why, or runs
    a staged step and derives within the masks (`check_staged`). FairDARTS takes a space
    without none, as it always does; a budget is given its measure (`CALLS`)."""
    operations = STAGED_OPERATIONS.replace("none, ", "") if name == "fair_darts" \
        else STAGED_OPERATIONS
    call = CALLS.get(name, name)
    if name not in REFUSED_WITH_STAGES:
        check_staged(make_space(methods=call, operations=operations, stages=TWO_STAGES))
        return
    with pytest.raises(DslError) as error:
        make_space(methods=call, operations=operations, stages=TWO_STAGES)
    [problem] = error.value.problems
    assert problem.message.startswith(f"search method '{name}' cannot be combined with stages")
    assert REFUSED_WITH_STAGES[name] in problem.hint
