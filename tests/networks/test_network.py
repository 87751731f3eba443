"""The discrete network compiler (attdarts.network).

The exact parameter counts the papers report (README, "Compile a genotype") are the project's
fidelity anchor: they pin the skeleton, every operation and every attention module's biases.
The genotypes are built here directly from the published tuples.
"""

from __future__ import annotations

from dataclasses import astuple
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from attdarts.language import ir
from attdarts.networks.cell import CellModule, EdgeModule, count_droppable_edges, drop_path
from attdarts.networks.measure import count_multiply_adds, count_parameters, describe_network
from attdarts.networks.network import compile_network
from attdarts.networks.attentions import GatherExcite
from attdarts.networks.stacking import Layer, reduction_indices, stack_cells

ATTENTION_NAMES = {"A2": "double_attention", "CBAM": "cbam", "BAM": "bam", "SE": "se",
                   "ID": "identity", "GE": "ge_theta_plus"}


def _cell(kind: str, edges: list[tuple], concat: tuple[int, ...] | None = None,
          output_attention: str | None = None) -> ir.Cell:
    """A cell from DARTS-style tuples: (op, input index[, attention]); edges 2n, 2n+1 feed node n;
    index 0 = c_k2, 1 = c_k1, j >= 2 = intermediate node j - 2."""

    def input_name(index: int) -> str:
        return ir.INPUTS[index] if index < 2 else f"n{index - 2}"

    nodes = []
    for n in range(len(edges) // 2):
        node_edges = []
        for operation, index, *attention in edges[2 * n: 2 * n + 2]:
            call = ir.Call(name=ATTENTION_NAMES[attention[0]]) if attention else None
            node_edges.append(ir.Edge(operation=ir.Call(name=operation), input=input_name(index),
                                      attention=call))
        nodes.append(ir.Node(name=f"n{n}", edges=tuple(node_edges)))
    concat = concat if concat is not None else tuple(range(2, 2 + len(nodes)))
    attention = ir.Call(name=output_attention) if output_attention else None
    output = ir.Output(nodes=tuple(input_name(i) for i in concat), attention=attention)
    return ir.Cell(kind=kind, nodes=tuple(nodes), output=output)


def _genotype(name: str, normal: list[tuple], reduce: list[tuple], normal_concat=None,
              reduce_concat=None) -> ir.Genotype:
    return ir.Genotype(name=name, normal=_cell("normal", normal, normal_concat),
                       reduce=_cell("reduce", reduce, reduce_concat))


S3, S5, S7 = "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7"
D3, D5 = "dil_conv_3x3", "dil_conv_5x5"
SK, MP, AP, C71 = "skip_connect", "max_pool_3x3", "avg_pool_3x3", "conv_7x1_1x7"

GENOTYPES = {
    "darts_v2": _genotype(
        "darts_v2",
        [(S3, 0), (S3, 1), (S3, 0), (S3, 1), (S3, 1), (SK, 0), (SK, 0), (D3, 2)],
        [(MP, 0), (MP, 1), (SK, 2), (MP, 1), (MP, 0), (SK, 2), (SK, 2), (MP, 1)],
    ),
    "darts_v1": _genotype(
        "darts_v1",
        [(S3, 1), (S3, 0), (SK, 0), (S3, 1), (SK, 0), (S3, 1), (S3, 0), (SK, 2)],
        [(MP, 0), (MP, 1), (SK, 2), (MP, 0), (MP, 0), (SK, 2), (SK, 2), (AP, 0)],
    ),
    "pc_darts": _genotype(
        "pc_darts",
        [(S3, 1), (SK, 0), (S3, 0), (D3, 1), (S5, 0), (S3, 1), (AP, 0), (D3, 1)],
        [(S5, 1), (MP, 0), (S5, 1), (S5, 2), (S3, 0), (S3, 3), (S3, 1), (S3, 2)],
    ),
    "p_darts": _genotype(
        "p_darts",
        [(SK, 0), (D3, 1), (SK, 0), (S3, 1), (S3, 1), (S3, 3), (S3, 0), (D5, 4)],
        [(AP, 0), (S5, 1), (S3, 0), (D5, 2), (MP, 0), (D3, 1), (D3, 1), (D5, 3)],
    ),
    "att_darts": _genotype(
        "att_darts",
        [(S3, 0, "A2"), (S3, 1, "CBAM"), (S3, 0, "CBAM"), (SK, 2, "CBAM"),
         (SK, 0, "CBAM"), (S3, 1, "CBAM"), (SK, 0, "CBAM"), (SK, 2, "CBAM")],
        [(MP, 0, "BAM"), (D3, 1, "A2"), (AP, 0, "BAM"), (SK, 2, "CBAM"),
         (SK, 2, "CBAM"), (AP, 0, "BAM"), (SK, 2, "CBAM"), (AP, 0, "BAM")],
    ),
    "nasnet": _genotype(
        "nasnet",
        [(S5, 1), (S3, 0), (S5, 0), (S3, 0), (AP, 1), (SK, 0), (AP, 0), (AP, 0), (S3, 1), (SK, 1)],
        [(S5, 1), (S7, 0), (MP, 1), (S7, 0), (AP, 1), (S5, 0), (SK, 3), (AP, 2), (S3, 2), (MP, 1)],
        normal_concat=(2, 3, 4, 5, 6), reduce_concat=(4, 5, 6),
    ),
    "amoebanet": _genotype(
        "amoebanet",
        [(AP, 0), (MP, 1), (S3, 0), (S5, 2), (S3, 0), (AP, 3), (S3, 1), (SK, 1), (SK, 0), (AP, 1)],
        [(AP, 0), (S3, 1), (MP, 0), (S7, 2), (S7, 0), (AP, 1), (MP, 0), (MP, 1), (C71, 0), (S3, 5)],
        normal_concat=(4, 5, 6), reduce_concat=(3, 4, 6),
    ),
}

# the published weights without the auxiliary head (CIFAR-10, CIFAR-100, ImageNet)
EXPECTED = {
    "darts_v2": (3_349_342, 3_401_272, 4_718_752),
    "darts_v1": (3_169_414, 3_221_344, 4_510_432),
    "pc_darts": (3_634_678, 3_686_608, 5_270_560),
    "p_darts": (3_433_798, 3_485_728, 4_944_352),
    "att_darts": (3_231_343, 3_283_273, 4_641_666),
}
AUXILIARY = {"cifar10": 476_426, "cifar100": 545_636}


# --- the fidelity anchor ----------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("name", list(EXPECTED))
def test_cifar_parameter_counts_exact(name, dataset):
    model = compile_network(GENOTYPES[name], dataset=dataset, channels=36, layers=20)
    expected = EXPECTED[name][0 if dataset == "cifar10" else 1]
    assert count_parameters(model, auxiliary=False) == expected
    assert count_parameters(model, auxiliary=True) == expected + AUXILIARY[dataset]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_imagenet_parameter_counts_exact(name):
    model = compile_network(GENOTYPES[name], dataset="imagenet", channels=48, layers=14)
    assert count_parameters(model, auxiliary=False) == EXPECTED[name][2]


GENO_FILES = {"darts_v2": "darts_v2", "darts_v1": "darts_v1", "pc_darts": "pc_darts",
              "p_darts": "p_darts", "att_darts": "att_darts", "nasnet": "nasnet_a",
              "amoebanet": "amoebanet_a"}


@pytest.mark.parametrize("name", list(GENO_FILES))
def test_genotype_files_match_reference_tuples(name, root):
    path = root / "genotypes" / f"{GENO_FILES[name]}.geno"
    assert path.is_file(), f"the zoo file {path} is missing"
    from attdarts.language import transform

    parsed = transform.parse_file(path).genotype()
    assert (parsed.normal, parsed.reduce) == (GENOTYPES[name].normal, GENOTYPES[name].reduce)
    if name in EXPECTED:
        model = compile_network(parsed, auxiliary=False)
        assert count_parameters(model, auxiliary=False) == EXPECTED[name][0]


def test_without_auxiliary_head_counts_agree():
    model = compile_network(GENOTYPES["att_darts"], auxiliary=False)
    assert model.auxiliary_head is None
    assert count_parameters(model, auxiliary=True) == count_parameters(model, auxiliary=False)
    assert count_parameters(model, auxiliary=False) == EXPECTED["att_darts"][0]


# --- structure ------------------------------------------------------------------------------


def test_att_darts_cifar_structure():
    model = compile_network(GENOTYPES["att_darts"])
    assert len(model.cells) == 20 and all(isinstance(cell, CellModule) for cell in model.cells)
    rows = describe_network(model)
    six = ["normal"] * 6
    assert [row.kind for row in rows] == six + ["reduce"] + six + ["reduce"] + six
    sizes = {row.index: (row.channels_out, row.spatial) for row in rows}
    assert (sizes[0], sizes[6], sizes[13]) == ((144, 32), (288, 16), (576, 8))
    assert sum(row.parameters for row in rows) == sum(
        p.numel() for p in model.cells.parameters())
    # strides: edges from the inputs of a reduction cell halve; attention built for the real size
    reduce_cell = model.cells[6]
    assert reduce_cell.spatial_in == 32 and reduce_cell.spatial_out == 16
    first = reduce_cell.nodes[0].edges[0]
    assert first.operation.stride == 2 and first.input_index == 0
    # parameter names follow the genotype's text order
    names = [name for name, _ in model.named_parameters()]
    assert "cells.0.nodes.0.edges.0.attention.conv_a.weight" in names  # sep_conv_3x3(c_k2) >> A^2
    assert "cells.0.nodes.0.edges.1.attention.mlp.0.weight" in names  # sep_conv_3x3(c_k1) >> cbam


def test_imagenet_spatial_sizes_and_ge_kernels():
    genotype = _genotype(
        "ge", [(S3, 0, "GE"), (SK, 1, "GE")], [(MP, 0, "GE"), (SK, 1, "GE")])
    model = compile_network(genotype, dataset="imagenet", channels=8, layers=5).eval()
    kernels = [
        [m.gather.kernel_size[0] for m in cell.modules() if isinstance(m, GatherExcite)]
        for cell in model.cells
    ]
    assert kernels == [[28, 28], [14, 14], [14, 14], [7, 7], [7, 7]]
    rows = describe_network(model)
    assert [(row.kind, row.spatial, row.channels_out) for row in rows] == [
        ("normal", 28, 8), ("reduce", 14, 16), ("normal", 14, 16), ("reduce", 7, 32),
        ("normal", 7, 32)]
    model.train()
    shapes, (logits, aux_logits) = _run_measuring_cells(model, torch.randn(2, 3, 224, 224),
                                                        aux=True)
    assert shapes == [(row.channels_out, row.spatial) for row in rows]
    assert logits.shape == (2, 1000) and aux_logits.shape == (2, 1000)
    assert model.auxiliary_head[-1].in_features == 768
    assert not any(isinstance(m, nn.BatchNorm2d) and m.num_features == 768
                   for m in model.auxiliary_head)


def _run_measuring_cells(model, x, **options):
    """Run `model` on `x`; return each cell's (channels, height) as measured, and the outputs."""
    shapes = []
    handles = [cell.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape[1:3])))
               for cell in model.cells]
    try:
        outputs = model(x, **options)
    finally:
        for handle in handles:
            handle.remove()
    return shapes, outputs


def test_odd_input_size_describe_matches_forward():
    genotype = GENOTYPES["att_darts"]
    model = compile_network(genotype, channels=8, layers=5, auxiliary=False, input_size=30)
    shapes, logits = _run_measuring_cells(model, torch.randn(2, 3, 30, 30))
    assert shapes == [(row.channels_out, row.spatial) for row in describe_network(model)]
    assert [spatial for _, spatial in shapes] == [30, 15, 15, 8, 8]


def test_stack_cells_keeps_the_skeleton_account():
    """The stacking loop the network shares with the supernet, on stub cells whose normal and
    reduce kinds concatenate different numbers of nodes (4 and 2)."""

    def build(layer: Layer) -> SimpleNamespace:
        nodes = 2 if layer.reduction else 4
        spatial = (layer.spatial_in + 1) // 2 if layer.reduction else layer.spatial_in
        return SimpleNamespace(layer=layer, channels_out=layer.channels * nodes,
                               spatial_out=spatial)

    cells, channels_last = stack_cells(build, layers=5, channels=4, channels_stem=12, spatial=30)
    assert [astuple(cell.layer) for cell in cells] == [
        # index, reduction, reduction_prev, channels_prev_prev, channels_prev, channels, spatial_in
        (0, False, False, 12, 12, 4, 30),
        (1, True, False, 12, 16, 8, 30),
        (2, False, True, 16, 16, 8, 15),
        (3, True, False, 16, 32, 16, 15),
        (4, False, True, 32, 32, 16, 8),
    ]
    assert channels_last == 64
    assert reduction_indices(20) == {6, 13} and reduction_indices(1) == {0}
    # a stem that halves (ImageNet) makes the first cell reduce c_{k-2}
    cells, _ = stack_cells(build, layers=1, channels=4, channels_stem=4, spatial=28,
                           reduction_prev=True)
    assert cells[0].layer.reduction_prev and cells[0].layer.channels_prev_prev == 4
    assert stack_cells(build, layers=0, channels=4, channels_stem=12, spatial=8) == ([], 12)


def test_unknown_names_and_options_fail_at_construction():
    bad = _genotype("bad", [("sep_conv_3x4", 0), (S3, 1)], [(MP, 0), (MP, 1)])
    with pytest.raises(KeyError, match="did you mean 'sep_conv_3x3'"):
        compile_network(bad, channels=8, layers=3)
    with pytest.raises(ValueError, match="dataset"):
        compile_network(GENOTYPES["darts_v2"], dataset="mnist")
    with pytest.raises(ValueError, match="drop path rule"):
        compile_network(GENOTYPES["darts_v2"], drop_path_rule="nasnet")


# --- running ----------------------------------------------------------------------------------


def test_att_darts_full_size_forward_backward():
    torch.manual_seed(0)
    model = compile_network(GENOTYPES["att_darts"], channels=36, layers=20).train()
    model.drop_path_prob = 0.2
    logits, aux_logits = model(torch.randn(2, 3, 32, 32), aux=True)
    assert logits.shape == (2, 10) and aux_logits.shape == (2, 10)
    (logits.sum() + 0.4 * aux_logits.sum()).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("name", ["nasnet", "amoebanet"])
def test_tiny_five_node_cells_with_concat_subsets(name):
    torch.manual_seed(0)
    genotype = GENOTYPES[name]
    model = compile_network(genotype, dataset="cifar100", channels=8, layers=5).train()
    widths = {
        "normal": 8 * len(genotype.normal.output.nodes),
        "reduce": 8 * len(genotype.reduce.output.nodes),
    }
    for index, cell in enumerate(model.cells):
        multiplier = 2 ** sum(index >= r for r in (1, 3))
        kind = "reduce" if cell.reduction else "normal"
        assert cell.channels_out == multiplier * widths[kind]
    logits, aux_logits = model(torch.randn(2, 3, 32, 32), aux=True)
    assert logits.shape == (2, 100) and aux_logits.shape == (2, 100)
    model.eval()
    logits, aux_logits = model(torch.randn(2, 3, 32, 32), aux=True)
    assert aux_logits is None


def test_output_attention_and_repeated_inputs():
    normal = _cell("normal", [(S3, 1, "SE"), (SK, 1, "BAM"), (AP, 2), (S3, 2, "CBAM")],
                   concat=(2, 3), output_attention="cbam")
    reduce = _cell("reduce", [(MP, 0), (MP, 0), (SK, 2, "A2"), (S5, 1)], concat=(3,),
                   output_attention="double_attention")
    genotype = ir.Genotype(name="odd", normal=normal, reduce=reduce)
    model = compile_network(genotype, channels=8, layers=3)
    # cell 0 normal (C=8, two nodes), cells 1 and 2 reduce (C=16, 32; one node)
    assert [cell.channels_out for cell in model.cells] == [16, 16, 32]
    assert model.cells[0].attention.mlp[0].in_features == 16
    assert model.cells[2].attention.conv_a.in_channels == 32
    logits = model.train()(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)


def _tiny_att_darts(auxiliary: bool = False) -> nn.Module:
    """C=8, L=5 Att-DARTS; 16x16 inputs unless it has the auxiliary head (which needs 32x32)."""
    torch.manual_seed(0)
    size = 32 if auxiliary else 16
    return compile_network(GENOTYPES["att_darts"], channels=8, layers=5, auxiliary=auxiliary,
                           input_size=size)


def test_channels_last_matches_contiguous():
    model = _tiny_att_darts().eval()
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    logits = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_training_forward_backward():
    model = _tiny_att_darts(auxiliary=True).to(memory_format=torch.channels_last).train()
    model.drop_path_prob = 0.3
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, aux_logits = model(x, aux=True)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    (logits.float().sum() + aux_logits.float().sum()).backward()


# --- the forward contract and input channels -------------------------------------------------


def test_forward_returns_logits_unless_the_auxiliary_output_is_asked_for():
    """`net(x)` is the logits (a classifier's contract: cross_entropy(net(x), y) works, with or
    without the head, in both modes); `net(x, aux=True)` adds the head's logits in training mode
    (None in eval mode or without a head), and the head runs only then."""
    torch.manual_seed(0)
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    for auxiliary in (False, True):
        model = compile_network(GENOTYPES["att_darts"], channels=8, layers=5, auxiliary=auxiliary)
        for mode in (model.train, model.eval):
            mode()
            logits = model(x)
            assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
            assert torch.isfinite(nn.functional.cross_entropy(logits, labels))
    calls = []
    model.auxiliary_head.register_forward_hook(lambda *args: calls.append(1))
    model.train()
    model(x)
    assert calls == []  # not asked for: the head does not run
    logits, aux_logits = model(x, aux=True)
    assert calls == [1] and logits.shape == aux_logits.shape == (2, 10)
    model.eval()
    assert model(x, aux=True)[1] is None
    without = compile_network(GENOTYPES["att_darts"], channels=8, layers=5, auxiliary=False)
    assert without.train()(x, aux=True)[1] is None


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_in_chans_sizes_the_stem_and_nothing_else(dataset):
    """timm's `in_chans`: the stem's first convolution (3x3, no bias) takes that many channels.
    By hand: the CIFAR stem is Conv2d(in_chans, 3C, 3) with in_chans * 3C * 9 weights; the
    ImageNet stem starts with Conv2d(in_chans, C/2, 3): in_chans * C/2 * 9. So in_chans=1 has
    (1 - 3) * 3C * 9 (CIFAR) or (1 - 3) * C/2 * 9 (ImageNet) weights more than RGB."""
    channels = 8
    size = 32 if dataset == "cifar10" else 224
    rgb, grey = (compile_network(GENOTYPES["darts_v2"], dataset=dataset, channels=channels,
                                 layers=3, input_size=size, in_chans=chans) for chans in (3, 1))
    first_width = 3 * channels if dataset == "cifar10" else channels // 2
    assert (count_parameters(grey, auxiliary=True) - count_parameters(rgb, auxiliary=True)
            == (1 - 3) * first_width * 9)
    assert rgb.in_chans == 3 and grey.in_chans == 1
    logits = grey.eval()(torch.randn(1, 1, size, size))
    assert logits.shape == (1, 10 if dataset == "cifar10" else 1000)
    with pytest.raises(RuntimeError):  # an RGB image does not fit a one-channel stem
        grey(torch.randn(1, 3, size, size))
    with pytest.raises(ValueError, match="in_chans"):
        compile_network(GENOTYPES["darts_v2"], in_chans=0)


# --- drop path ------------------------------------------------------------------------------


def _edge_flags(genotype: ir.Genotype, rule: str) -> list[bool]:
    model = compile_network(genotype, channels=8, layers=1, auxiliary=False, drop_path_rule=rule)
    cell = model.cells[0]  # layers=1: the single cell is a reduction cell
    return [edge.droppable for node in cell.nodes for edge in node.edges]


def test_drop_path_rules_differ_as_defined():
    edges = [(SK, 2, "ID"), (S3, 2, "ID"), (SK, 2, "CBAM"), (S3, 2, "CBAM"), (SK, 3), (S3, 3)]
    cell = _cell("reduce", [(MP, 0), (MP, 1)] + edges)
    genotype = ir.Genotype(name="dp", normal=_cell("normal", [(S3, 0), (S3, 1)]), reduce=cell)
    # pools at stride 2, then: identity op + identity attention, conv + identity attention,
    # identity op + cbam, conv + cbam, identity op without attention, conv without attention
    assert _edge_flags(genotype, "darts") == [True, True, False, True, False, True, False, True]
    # the authors' code spares an edge whose op or second layer is the identity; in a cell with
    # attentions an edge without one is their 'Identity' (what `export` writes), so the two
    # pools and the last conv are spared too; the normal cell has no attention: DARTS's rule
    assert _edge_flags(genotype, "authors") == [False, False, False, False, False, True, False, False]


def test_authors_rule_spares_plain_edges_of_a_cell_with_attention():
    """Found by a hostile-user pass: one `>> cbam` edge among plain ones. The authors' code (and
    our export, which writes the plain edges as 'Identity') drops only that edge in each normal
    cell; darts_v2's reduction cell has no attention, so there both rules drop 5 of 8 edges."""
    normal = [(S3, 0, "CBAM")] + [(S3, index % 2) for index in range(1, 8)]
    reduce = [(edge.operation.name, edge.input) for node in GENOTYPES["darts_v2"].reduce.nodes
              for edge in node.edges]
    genotype = _genotype("one_cbam", normal, [(op, ["c_k2", "c_k1"].index(source)
                                               if source in ("c_k2", "c_k1") else int(source[1:]) + 2)
                                              for op, source in reduce])
    counts = {rule: count_droppable_edges(compile_network(genotype, channels=36, layers=20,
                                                          drop_path_rule=rule))
              for rule in ("darts", "authors")}
    assert counts["darts"] == (18 * 8 + 2 * 5, 160)
    assert counts["authors"] == (18 * 1 + 2 * 5, 160)


def test_darts_is_the_default_drop_path_rule():
    edges = [(S3, 0, "ID"), (S3, 1, "SE")]
    genotype = ir.Genotype(name="d", normal=_cell("normal", edges), reduce=_cell("reduce", edges))
    model = compile_network(genotype, channels=8, layers=1, auxiliary=False)
    assert [edge.droppable for edge in model.cells[0].nodes[0].edges] == [True, True]


@pytest.mark.parametrize("rule", ["darts", "authors"])
def test_darts_v2_full_size_drops_118_of_160_edges(rule):
    """DARTS and the authors' code both drop every non-identity edge of an attention-free cell:
    18 normal cells x 6 + 2 reduction cells x 5."""
    model = compile_network(GENOTYPES["darts_v2"], channels=36, layers=20, drop_path_rule=rule)
    assert count_droppable_edges(model) == (118, 160)


def test_att_darts_cell_with_identity_attention_differs_between_rules():
    # the paper's cell with its second normal edge's attention replaced by identity (a searched
    # cell where Identity wins an edge); the zoo's att_darts cell has no identity attention, so
    # there the rules agree (82 of 160 edges)
    normal = [(S3, 0, "A2"), (S3, 1, "ID"), (S3, 0, "CBAM"), (SK, 2, "CBAM"),
              (SK, 0, "CBAM"), (S3, 1, "CBAM"), (SK, 0, "CBAM"), (SK, 2, "CBAM")]
    reduce = [(MP, 0, "BAM"), ("dil_conv_3x3", 1, "A2"), (AP, 0, "BAM"), (SK, 2, "CBAM"),
              (SK, 2, "CBAM"), (AP, 0, "BAM"), (SK, 2, "CBAM"), (AP, 0, "BAM")]
    genotype = _genotype("att_id", normal, reduce)
    darts = compile_network(genotype, channels=8, layers=3, auxiliary=False, drop_path_rule="darts")
    authors = compile_network(genotype, channels=8, layers=3, auxiliary=False,
                              drop_path_rule="authors")
    assert [e.droppable for e in darts.cells[0].nodes[0].edges] == [True, True]
    assert [e.droppable for e in authors.cells[0].nodes[0].edges] == [True, False]
    # one normal cell (4 convolutions) and two reduction cells (5 non-identity edges each)
    assert count_droppable_edges(darts) == (14, 24)
    assert count_droppable_edges(authors) == (13, 24)
    zoo = [count_droppable_edges(compile_network(GENOTYPES["att_darts"], drop_path_rule=rule))
           for rule in ("darts", "authors")]
    assert zoo == [(82, 160), (82, 160)]


def test_drop_path_applies_in_training_only():
    torch.manual_seed(0)
    edge = EdgeModule(nn.AvgPool2d(3, 1, 1, count_include_pad=False), None, 0, droppable=True)
    x = torch.rand(256, 2, 4, 4) + 1.0
    reference = edge.operation(x)
    edge.train()
    out = edge(x, 0.5)
    ratio = out / reference
    per_sample = ratio.flatten(1)
    assert torch.all((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(2.0)).all(1))
    dropped = (per_sample == 0).all(1).float().mean()
    assert 0.3 < dropped < 0.7
    assert torch.equal(edge(x, 0.0), reference)
    edge.eval()
    assert torch.equal(edge(x, 0.5), reference)
    edge.train().droppable = False
    assert torch.equal(edge(x, 0.5), reference)


def test_drop_path_keeps_dtype():
    x = torch.ones(4, 2, 2, 2, dtype=torch.bfloat16)
    assert drop_path(x, 0.2).dtype == torch.bfloat16


def test_model_drop_path_prob_is_an_attribute():
    model = _tiny_att_darts()
    assert model.drop_path_prob == 0.0
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    model.drop_path_prob = 0.5
    first = model(x)
    second = model(x)
    assert torch.equal(first, second)  # no drop path in eval mode
    model.train()
    model.drop_path_prob = 0.0
    assert torch.equal(model(x), model(x))
    model.drop_path_prob = 0.5
    assert not torch.equal(model(x), model(x))


# --- helpers ----------------------------------------------------------------------------------


def test_count_multiply_adds_by_hand():
    # one reduction cell (layers=1) of max pools: only the stem, the two 1x1 preprocessing
    # convolutions and the classifier multiply
    genotype = _genotype("pools", [(MP, 0), (MP, 1)], [(MP, 0), (MP, 1), (MP, 2), (MP, 1)])
    model = compile_network(genotype, channels=4, layers=1, auxiliary=False, input_size=8)
    stem = 3 * 3 * 3 * 12 * 8 * 8
    preprocess = 2 * 12 * 8 * 8 * 8  # the reduction cell doubles C to 8
    classifier = 2 * 8 * 10  # two nodes of 8 channels concatenated
    assert count_multiply_adds(model) == stem + preprocess + classifier
    assert model.training  # the mode is restored

