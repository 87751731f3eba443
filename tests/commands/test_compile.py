"""`attdarts compile`: the paper's numbers through the command line."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    return CliRunner().invoke(cli, ["compile", *map(str, args)])


def test_compile_prints_the_papers_parameter_count():
    result = _run(ROOT / "genotypes" / "att_darts.geno")
    assert result.exit_code == 0, result.output
    assert "3,231,343 (without auxiliary head)" in result.output
    assert f"{3_231_343 + 476_426:,} (with auxiliary head)" in result.output
    assert "output       (1, 10)" in result.output
    assert "mult-adds" in result.output


def test_compile_json_for_a_small_imagenet_network():
    result = _run(ROOT / "genotypes" / "darts_v2.geno", "--dataset", "imagenet", "--channels", "8",
                  "--layers", "5", "--no-auxiliary", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["output_shape"] == [1, 1000] and summary["input_shape"] == [1, 3, 224, 224]
    assert summary["parameters_with_auxiliary"] is None
    assert [c["type"] for c in summary["cells"]] == ["normal", "reduce", "normal", "reduce", "normal"]
    assert summary["multiply_adds"] > 0


def test_compile_reports_bad_input_cleanly(tmp_path):
    result = _run(ROOT / "genotypes" / "att_darts.geno", "--genotype", "nope")
    assert result.exit_code == 1 and "no genotype named 'nope'" in result.output
    bad = tmp_path / "bad.geno"
    bad.write_text("genotype g {")
    result = _run(bad)
    assert result.exit_code == 1 and f"{bad}:1:" in result.output and "Traceback" not in result.output


def test_sizes_beyond_the_limits_are_refused_at_once():
    geno = ROOT / "genotypes" / "att_darts.geno"
    result = _run(geno, "--channels", "100000")
    assert result.exit_code == 2 and "1<=x<=512" in result.output
    result = _run(geno, "--layers", "100000")
    assert result.exit_code == 2 and "3<=x<=200" in result.output
    result = _run(geno, "--channels", "400", "--layers", "100")
    assert result.exit_code == 2
    assert "C*C*L = 16,000,000 exceeds 1,296,000" in result.output and "Traceback" not in result.output


def test_running_out_of_memory_is_a_clean_error(monkeypatch):
    import attdarts.networks.network

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 1099511627776 bytes.")

    monkeypatch.setattr(attdarts.networks.network, "compile_network", no_memory)
    result = _run(ROOT / "genotypes" / "darts_v2.geno", "--channels", "8", "--layers", "5")
    assert result.exit_code == 1
    assert "not enough memory to build darts_v2 with C=8, L=5" in result.output
    assert "Traceback" not in result.output

    def other_failure(*args, **kwargs):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(attdarts.networks.network, "compile_network", other_failure)
    result = _run(ROOT / "genotypes" / "darts_v2.geno", "--channels", "8", "--layers", "5")
    assert isinstance(result.exception, RuntimeError)  # bugs are not disguised as memory errors


def test_progress_goes_to_a_terminal_only(monkeypatch, one_thread):
    import attdarts.commands.compile as command

    args = (ROOT / "genotypes" / "darts_v2.geno", "--channels", "4", "--layers", "5", "--no-auxiliary")
    quiet = _run(*args)
    assert quiet.exit_code == 0 and quiet.stderr == ""
    monkeypatch.setattr(command, "_stderr_is_terminal", lambda: True)
    watched = _run(*args)
    assert watched.exit_code == 0
    stages = [line for line in watched.stderr.splitlines() if line.startswith("attdarts compile: ")]
    assert [line.split(": ", 1)[1].split(" (")[0].rstrip(".") for line in stages] == [
        "importing torch", "building the network", "counting parameters", "counting multiply-adds"]
    assert watched.stdout == quiet.stdout  # the report itself is unchanged


# ---------------------------------------------------------------------------------------------
# compile SPACE_FILE: the search supernet at the search size (C=16, 8 cells, CIFAR-10)

SPACES = ROOT / "genotypes" / "spaces"
# PC-DARTS's own search model: github.com/yuhuixu1993/PC-DARTS, model_search.py,
# Network(16, 10, 8, nn.CrossEntropyLoss()) built on the CPU (its `.cuda()` calls removed) has
# 299,578 parameters (its alphas and betas are plain tensors, not parameters) and 2 x 14 x 8
# alphas + 2 x 14 betas = 252 architecture parameters.
PC_DARTS_SEARCH_WEIGHTS = 299_578


def test_compile_space_prints_the_papers_supernet():
    result = _run(SPACES / "att_darts.geno")
    assert result.exit_code == 0, result.output
    assert "weights      3,309,282" in result.output
    assert "architecture 392 (alpha 224, beta 168)" in result.output
    assert "(search supernet, cifar10, C=16, L=8)" in result.output
    assert "   5  reduce      256      8x8" in result.output


def test_compile_space_with_the_newer_attentions_prints_its_counts():
    """att_darts_modern: the darts supernet (1,930,618 weights, tests/networks/test_supernet.py)
    plus, on each of a cell's 14 edges, one module of every attention at the cell's width C
    (16, 16, 32 reduce, 32, 32, 64 reduce, 64, 64): SE 2 C (C/16), CBAM's MLP and 7x7 gate,
    ECA's k = 3 taps (ECA-Net's rule at these widths), coordinate attention 26 C + 24, SimAM 0."""
    def attentions(c: int) -> int:
        hidden = c // 16
        se = 2 * c * hidden
        cbam = (c * hidden + hidden) + (hidden * c + c) + 2 * 7 * 7 + 2
        return se + cbam + 3 + (26 * c + 24) + 0

    widths = (16, 16, 32, 32, 32, 64, 64, 64)
    weights = 1_930_618 + sum(14 * attentions(c) for c in widths)
    assert weights == 2_121_634
    result = _run(SPACES / "att_darts_modern.geno")
    assert result.exit_code == 0, result.output
    assert "(search supernet, cifar10, C=16, L=8)" in result.output
    assert f"weights      {weights:,}" in result.output
    assert "architecture 392 (alpha 224, beta 168)" in result.output  # 2 x 14 x (8 + 6)


def test_compile_pc_darts_space_equals_pc_darts_search_model():
    result = _run(SPACES / "pc_darts.geno", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["weights"] == PC_DARTS_SEARCH_WEIGHTS
    assert summary["architecture"] == {"alpha": 224, "edges": 28}
    assert summary["methods"] == {"partial_channels": {"k": 4}, "edge_normalisation": {}}
    assert sum(cell["weights"] for cell in summary["cells"]) < summary["weights"]  # + stem, head
    assert summary["multiply_adds"] > 0 and summary["output_shape"] == [1, 10]


def test_compile_space_options_and_clean_errors(tmp_path):
    result = _run(SPACES / "pc_darts.geno", "--channels", "6", "--layers", "3")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "partial_channels(k=4) needs the channels C divisible by 4; C=6 is not" in result.output
    result = _run(SPACES / "darts.geno", "--dataset", "imagenet")
    assert result.exit_code == 2 and "cifar10 or cifar100, not imagenet" in result.output
    both = tmp_path / "both.geno"
    both.write_text((ROOT / "genotypes" / "darts_v2.geno").read_text()
                    + (SPACES / "darts.geno").read_text())
    result = _run(both, "--space", "darts", "--channels", "4", "--layers", "3", "--dataset",
                  "cifar100", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["space"] == "darts" and summary["output_shape"] == [1, 100]
    assert [cell["channels"] for cell in summary["cells"]] == [16, 32, 64]
    result = _run(both, "--channels", "4", "--layers", "3", "--no-auxiliary")  # the genotype
    assert result.exit_code == 0 and "genotype     darts_v2" in result.output


# P-DARTS's first search network: model_search.Network(16, 10, 5) of github.com/chenxin061/pdarts
# (b880e87) with all eight operations on each of 2 x 14 edges: 1,275,834 weights, 224 alphas.
P_DARTS_STAGE_ONE = 1_275_834


def test_compile_pdarts_space_prints_every_stage():
    """The first stage is P-DARTS's own first supernet. A later stage builds every candidate but
    computes the kept ones: at stage 2 (5 of 8 per edge) the dearest choice keeps every candidate
    with weights (the four convolutions, and at stride 2 the factorized-reduce skip), so it uses
    all that is built; the cheapest keeps the parameter-free ones first."""
    result = _run(SPACES / "pdarts.geno")
    assert result.exit_code == 0, result.output
    assert "(search supernet, cifar10, C=16, L=5)" in result.output
    assert f"weights      {P_DARTS_STAGE_ONE:,}" in result.output
    assert "architecture 224 (alpha 224)" in result.output
    assert "weights      2,585,146" in _run(SPACES / "darts.geno", "--layers", "11").output
    lines = result.output.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("stage  cells"))
    assert [line.split() for line in lines[header + 1:header + 4]] == [
        ["1", "5", "all", "1,275,834", "1,275,834", "224", "of", "224"],
        ["2", "11", "5", "operations", "2,585,146", "535,322", "to", "2,585,146", "140", "of",
         "224"],
        ["3", "17", "3", "operations", "3,894,202", "228,474", "to", "3,322,586", "84", "of",
         "224"],
    ]


def test_compile_att_pdarts_stages_in_json():
    """att_pdarts keeps 6, 4, 2 attentions besides 8, 5, 3 operations; a stage builds the whole
    supernet at its depth (stage 2: the att_darts supernet at 11 cells)."""
    result = _run(SPACES / "att_pdarts.geno", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["weights"] == 2_115_568 and summary["layers"] == 5
    assert [(row["layers"], row["operations"], row["attentions"], row["weights"],
             row["weights_in_use"], row["architecture_searched"]) for row in summary["stages"]] == [
        (5, None, None, 2_115_568, [2_115_568, 2_115_568], 392),
        (11, 5, 4, 4_502_740, [719_324, 4_465_556], 252),
        (17, 3, 2, 6_889_656, [284_474, 6_040_098], 140),
    ]


def test_compile_drnas_space_needs_its_recipes_size():
    result = _run(SPACES / "drnas.geno")  # the paper's C=16 is not divisible by 6
    assert result.exit_code == 1 and "C=16 is not (try C=18)" in result.output


def test_compile_prints_a_widened_stages_counts(tmp_path):
    """A kept stage with fewer partial channels (drnas.geno's stage 2, K=6 to K=4) is built
    widened: its row counts the supernet of the space with partial_channels(k=4), at a small
    size (C=12, 5 cells), and says its k."""
    result = _run(SPACES / "drnas.geno", "--channels", "12", "--layers", "5")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("stage  cells"))
    first, second = (line.split() for line in lines[header + 1:header + 3])
    widened = tmp_path / "k4.geno"
    text = (SPACES / "drnas.geno").read_text()
    widened.write_text(text[:text.index("    stages")].replace("partial_channels(k=6)",
                                                            "partial_channels(k=4)") + "}\n")
    alone = json.loads(_run(widened, "--channels", "12", "--layers", "5", "--format",
                            "json").output)
    narrow = json.loads(_run(SPACES / "drnas.geno", "--channels", "12", "--layers", "5",
                             "--format", "json").output)
    assert first[:4] == ["1", "5", "all,", "k=6"]
    assert first[4] == f"{narrow['weights']:,}"
    assert second[:5] == ["2", "5", "4", "operations,", "k=4"]
    assert second[5] == f"{alone['weights']:,}" and alone["weights"] > narrow["weights"]
    assert [row["partial_channels"] for row in narrow["stages"]] == [6, 4]


def test_compile_refuses_channels_a_widened_stage_cannot_split():
    result = _run(SPACES / "drnas.geno", "--channels", "30", "--layers", "5")
    assert result.exit_code == 1
    assert ("stage 2 (line 13): partial_channels(k=4) needs the channels C "
            "divisible by 4; C=30 is not (try C=32)") in result.output


@pytest.mark.slow
def test_compile_drnas_space_at_its_recipe_size_has_drnas_counts():
    """DrNAS's search model (xiangning-chen/DrNAS, DARTS-space/model_search.py `Network(36, 10,
    20, k=K)`, 7 candidates without none): stage 1 at partial channels K=6 has 2,221,750
    weights and 196 alpha; stage 2, 4 candidates per edge kept and widened to K=4, 2,986,462
    (the same shapes as a K=4 supernet), of which 1,596,178 to 2,973,502 in use, 112 alpha
    searched. About 25 s on a loaded 2-core CPU (mult-adds of the full-size supernet and two
    stages built); tests/networks/test_supernet.py counts the same without the command."""
    result = _run(SPACES / "drnas.geno", "--recipe", "drnas", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["channels"], summary["layers"]) == (36, 20)
    assert summary["weights"] == 2_221_750 and summary["architecture"] == {"alpha": 196}
    assert summary["methods"] == {"partial_channels": {"k": 6}, "drnas": {"kl": 0.0}}
    assert [(row["layers"], row["operations"], row["partial_channels"], row["weights"],
             row["weights_in_use"], row["architecture_searched"])
            for row in summary["stages"]] == [
        (20, None, 6, 2_221_750, [2_221_750, 2_221_750], 196),
        (20, 4, 4, 2_986_462, [1_596_178, 2_973_502], 112),
    ]


def test_compile_fair_darts_spaces_have_dartss_counts():
    """FairDARTS's search model is DARTS's without none (which has no weights): 1,930,618
    weights at C=16, 8 cells, 2 x 14 x 7 alpha; the attention space adds the paper's beta."""
    result = _run(SPACES / "fair_darts.geno", "--recipe", "fair-darts", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["weights"] == 1_930_618 and summary["architecture"] == {"alpha": 196}
    result = _run(SPACES / "att_fair_darts.geno", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["weights"] == 3_309_282
    assert summary["architecture"] == {"alpha": 196, "beta": 168}


def test_compile_fair_darts_a_with_a_node_left_out_has_fair_darts_count():
    """FairDARTS-a's normal cell has three nodes (n1 kept no edge); FairDARTS's NetworkCIFAR(36,
    10, 20, genotype=FairDARTS_a, parse_method='threshold') has 2,360,782 parameters without its
    auxiliary head and 2,837,208 with it (built on a CPU from xiaomi-automl/FairDARTS)."""
    result = _run(ROOT / "genotypes" / "fair_darts_a.geno")
    assert result.exit_code == 0, result.output
    assert "2,360,782 (without auxiliary head)" in result.output
    assert "2,837,208 (with auxiliary head)" in result.output


def test_compile_gdas_spaces_print_their_search_counts():
    """gdas.geno is DARTS's space with the gdas sampler, att_gdas.geno the paper's attention space
    with it: the supernets of darts.geno and att_darts.geno (the sampler adds no weights)."""
    for name, weights, architecture in (
            ("gdas", 1_930_618, "architecture 224 (alpha 224)"),
            ("att_gdas", 3_309_282, "architecture 392 (alpha 224, beta 168)")):
        result = _run(SPACES / f"{name}.geno")
        assert result.exit_code == 0, result.output
        assert "(search supernet, cifar10, C=16, L=8)" in result.output
        assert "methods      gdas(tau_max=10.0, tau_min=0.1, unchosen=nothing)" in result.output
        assert f"weights      {weights:,}" in result.output
        assert architecture in result.output


def test_gdas_space_at_gdas_search_size_is_their_supernet_without_biases():
    """GDAS's DARTS-space search supernet (D-X-Y/AutoDL-Projects `NASNetworkGDAS`, C=16, N=2:
    6 cells N, N, R, N, R, N, as attdarts's L=6 puts them) has 1,343,034 weights + 224 alpha.
    The same skeleton here has 1,322,490: their convolutions followed by a non-affine BN carry a
    bias (`bias=not affine`: one per output channel of every non-depthwise convolution of the
    cells, 20,032, counted on the supernet below) and a final BN + ReLU precedes the pooling (an
    affine BN of 256 channels: 512)."""
    import torch

    from attdarts.language.transform import read_space
    from attdarts.networks.supernet import compile_supernet

    result = _run(SPACES / "gdas.geno", "--layers", "6", "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["weights"] == 1_322_490 and summary["architecture"] == {"alpha": 224}
    assert [cell["type"] for cell in summary["cells"]] == ["normal", "normal", "reduce",
                                                           "normal", "reduce", "normal"]
    model = compile_supernet(read_space(SPACES / "gdas.geno"), channels=16, layers=6)
    biases = sum(conv.out_channels for cell in model.cells for conv in cell.modules()
                 if isinstance(conv, torch.nn.Conv2d) and conv.groups == 1)
    last_norm = 2 * model.classifier.in_features
    assert (biases, last_norm) == (20_032, 512)
    assert summary["weights"] + biases + last_norm == 1_343_034
