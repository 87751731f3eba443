"""`attdarts export-model` (issue 15, item 2): the network as deployed, as ONNX and .pt2 files
that reproduce the PyTorch network's logits.

ONNX files are run with onnxruntime, .pt2 files with `torch.export.load`; both are compared with
the network in eval mode. Networks are tiny (C=4, L=3, 32x32 CIFAR input); the TorchScript ONNX
export takes about a second, torch.export several (marked slow beyond darts_v2).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.cli import cli

pytest.importorskip("onnx", reason="the export extra: pip install -e '.[export]'")
pytest.importorskip("onnxruntime", reason="the export extra: pip install -e '.[export]'")

import torch  # noqa: E402

from attdarts import api  # noqa: E402
from attdarts.language.transform import parse_text  # noqa: E402
from attdarts.networks.export import (  # noqa: E402
    ExportError, InferenceNetwork, Preprocessing, export_network, read_metadata, run_exported,
)

ROOT = Path(__file__).resolve().parents[2]
ZOO = api.zoo_names()
ATOL = 1e-5

# every attention of the catalog, BAM both ways, ECA with both kernel rules, and attentions on
# a cell's output (test_every_catalog_attention_is_in_the_export_genotype keeps it complete)
EVERY_ATTENTION = parse_text("""
genotype every_attention {
    normal {
        n0 = sep_conv_3x3(c_k2) >> se + sep_conv_3x3(c_k1) >> ge_theta_plus
        n1 = dil_conv_3x3(c_k2) >> bam(combine=product) + skip_connect(n0) >> bam
        n2 = sep_conv_3x3(n1) >> eca + skip_connect(c_k1) >> coord_attention
        c_k = concat(n0, n1, n2) >> cbam
    }
    reduce {
        n0 = max_pool_3x3(c_k2) >> ge_theta_plus + avg_pool_3x3(c_k1) >> double_attention
        n1 = skip_connect(n0) >> se + sep_conv_5x5(c_k1) >> cbam
        n2 = max_pool_3x3(c_k2) >> simam + dil_conv_5x5(n1) >> eca(kernel_size=5)
        c_k = concat(n0, n1, n2) >> coord_attention
    }
}
""").genotype()


def _tiny(genotype, **options):
    torch.manual_seed(0)
    network = api.create_network(genotype, channels=4, layers=3, auxiliary=True, **options)
    _randomise_statistics(network)
    return network


def _randomise_statistics(network):
    """BatchNorm running statistics away from (0, 1), so eval mode is really exercised."""
    generator = torch.Generator().manual_seed(1)
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def _images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _reference(network, images):
    network.eval()
    with torch.no_grad():
        return network(images)


def _check(network, path, batch_sizes=(1, 3)):
    for batch in batch_sizes:
        images = _images(batch)
        torch.testing.assert_close(run_exported(path, images), _reference(network, images),
                                   atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_genotype_exports_to_onnx_with_any_batch(name, tmp_path, one_thread):
    network = _tiny(name)
    export_network(network, tmp_path / "model.onnx")
    _check(network, tmp_path / "model.onnx")


def test_every_attention_exports_to_onnx(tmp_path, one_thread):
    network = _tiny(EVERY_ATTENTION)
    export_network(network, tmp_path / "model.onnx")
    _check(network, tmp_path / "model.onnx")


def test_every_catalog_attention_is_in_the_export_genotype():
    from attdarts.language import catalog

    used = {edge.attention.name for cell in (EVERY_ATTENTION.normal, EVERY_ATTENTION.reduce)
            for node in cell.nodes for edge in node.edges if edge.attention is not None}
    used |= {cell.output.attention.name for cell in (EVERY_ATTENTION.normal, EVERY_ATTENTION.reduce)}
    assert used | {"identity"} == set(catalog.ATTENTIONS)


@pytest.mark.slow
def test_every_attention_exports_to_pt2(tmp_path, one_thread):
    network = _tiny(EVERY_ATTENTION)
    export_network(network, tmp_path / "model.pt2")
    _check(network, tmp_path / "model.pt2")


def test_pt2_round_trip_through_torch_export_load(tmp_path, one_thread):
    network = _tiny("darts_v2")
    export_network(network, tmp_path / "model.pt2")
    _check(network, tmp_path / "model.pt2")
    program = torch.export.load(str(tmp_path / "model.pt2"))
    # the auxiliary head is left out of the file; the network keeps its own
    assert not any("auxiliary" in key for key in program.state_dict)
    assert network.auxiliary_head is not None


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_genotype_exports_to_pt2(name, tmp_path, one_thread):
    network = _tiny(name)
    export_network(network, tmp_path / "model.pt2")
    _check(network, tmp_path / "model.pt2")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="needs onnxscript")
def test_the_dynamo_onnx_exporter_gives_the_same_numbers(tmp_path, one_thread):
    network = _tiny(EVERY_ATTENTION)
    export_network(network, tmp_path / "model.onnx", exporter="dynamo")
    _check(network, tmp_path / "model.onnx")


def test_the_exported_network_is_the_deployed_one(one_thread):
    """Eval mode, no drop path, no auxiliary head, logits only; the network given is untouched."""
    network = _tiny("att_darts", grouped=True)
    network.train()
    network.drop_path_prob = 0.3
    deployed = InferenceNetwork(network)
    assert not deployed.training and deployed.network.auxiliary_head is None
    assert deployed.network.drop_path_prob == 0.0 and not deployed.network.grouped
    assert network.training and network.drop_path_prob == 0.3 and network.grouped
    images = _images(2)
    # the grouped network in eval mode computes what the plain deployed copy computes
    torch.testing.assert_close(deployed(images), _reference(network, images), atol=ATOL, rtol=1e-4)


def test_a_fixed_batch_is_written_into_the_onnx_graph(tmp_path, one_thread):
    import onnx

    export_network(_tiny("darts_v1"), tmp_path / "fixed.onnx", batch=2)
    export_network(_tiny("darts_v1"), tmp_path / "dynamic.onnx")

    def first_dimension(path):
        dimension = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
        return dimension.dim_value or dimension.dim_param

    assert first_dimension(tmp_path / "fixed.onnx") == 2
    assert first_dimension(tmp_path / "dynamic.onnx") == "batch"


def _export(*args):
    return CliRunner().invoke(cli, ["export-model", *map(str, args)])


def test_cli_exports_a_trained_checkpoint(tmp_path, one_thread):
    result = api.train("darts_v2", out=tmp_path / "run", dataset="synthetic", epochs=1,
                       channels=4, layers=3, batch_size=4, max_steps_per_epoch=2, device="cpu")
    for target in (tmp_path / "run", tmp_path / "run" / "best.pt"):
        output = tmp_path / f"{target.name}.onnx"
        outcome = _export(target, "-o", output)
        assert outcome.exit_code == 0, outcome.output
        assert "input (batch, 3, 32, 32) -> logits (batch, 10)" in outcome.output
        assert "largest difference from PyTorch" in outcome.output
        assert "(x - mean) / std per channel; 10 class names" in outcome.output
        _check(result.model, output, batch_sizes=(2,))
        # the training data's statistics travel with the file
        preprocessing = Preprocessing.from_metadata(read_metadata(output))
        config = json.loads((tmp_path / "run" / "config.json").read_text())
        assert list(preprocessing.mean) == config["mean"] and list(preprocessing.std) == config["std"]


def test_cli_exports_a_genotype_file_for_imagenet_with_a_fixed_batch(tmp_path, one_thread):
    output = tmp_path / "model.pt2"
    outcome = _export(ROOT / "genotypes" / "darts_v2.geno", "-o", output, "--dataset", "imagenet",
                      "--channels", "8", "--layers", "3", "--batch", "1")
    assert outcome.exit_code == 0, outcome.output
    assert "input (1, 3, 224, 224) -> logits (1, 1000)" in outcome.output
    metadata = read_metadata(output)  # ImageNet's evaluation: resize 256, crop the centre 224
    assert (metadata["resize"], metadata["input_size"], metadata["batch"]) == ("256", "224", "1")
    assert metadata["mean"] == "[0.485, 0.456, 0.406]" and "classes" not in metadata


def test_cli_refuses_bad_requests_cleanly(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "file").write_text("")
    tiny = ("--channels", "4", "--layers", "3")
    cases = [
        (("darts_v2", "-o", tmp_path / "model.txt"), "name the file *.onnx (ONNX) or *.pt2"),
        (("darts_v3", "-o", tmp_path / "model.onnx"), "did you mean 'darts_v2'"),
        ((tmp_path / "junk.pt", "-o", tmp_path / "model.onnx"), "truncated or corrupt"),
        ((tmp_path / "missing", "-o", tmp_path / "model.onnx"), "neither a genotype file"),
        (("darts_v2", "-o", tmp_path / "file" / "model.onnx", *tiny), "cannot write"),
    ]
    for args, message in cases:
        outcome = _export(*args)
        assert outcome.exit_code == 1 and message in outcome.output, (args, outcome.output)
        assert "Traceback" not in outcome.output
    assert not list(tmp_path.glob("*.onnx*"))  # nothing half-written


def test_a_missing_onnx_package_says_how_to_install_it(tmp_path, monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnx" else found(name, *args))
    with pytest.raises(ExportError, match=r"needs the 'onnx' package: pip install 'attdarts\[export\]'"):
        export_network(_tiny("darts_v2"), tmp_path / "model.onnx")
    outcome = _export("darts_v2", "-o", tmp_path / "model.onnx", "--channels", "4", "--layers", "3")
    assert outcome.exit_code == 1 and "pip install" in outcome.output
    assert not (tmp_path / "model.onnx").exists()


# --- metadata and normalisation in the graph --------------------------------------------------

CIFAR = Preprocessing(input_size=32, resize=32, mean=(0.4914, 0.4822, 0.4465),
                      std=(0.2470, 0.2435, 0.2616), classes=tuple("abcdefghij"))


def _expected_metadata(*, normalised: bool, batch: str = "dynamic") -> dict[str, str]:
    return {"input_size": "32", "resize": "32", "crop": "center", "layout": "NCHW",
            "channel_order": "RGB", "in_chans": "3", "pixel_range": "0..1",
            "normalised_in_graph": "true" if normalised else "false", "batch": batch,
            "mean": "[0.4914, 0.4822, 0.4465]", "std": "[0.247, 0.2435, 0.2616]",
            "classes": '["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]'}


@pytest.mark.parametrize("suffix", [".onnx", pytest.param(".pt2", marks=pytest.mark.slow)])
def test_the_file_carries_its_preprocessing(suffix, tmp_path, one_thread):
    """Mean, std, sizes, layout, channel order, pixel range and class names, read back from the
    written file: ONNX metadata_props, the .pt2's metadata.json extra file."""
    path = tmp_path / f"model{suffix}"
    export_network(_tiny("darts_v2"), path, preprocessing=CIFAR, batch=2)
    metadata = read_metadata(path)
    assert "preprocessing" in metadata  # one sentence for a person (also the ONNX doc_string)
    assert {key: metadata[key] for key in _expected_metadata(normalised=False)} == (
        _expected_metadata(normalised=False, batch="2"))
    assert Preprocessing.from_metadata(metadata) == Preprocessing(
        input_size=32, resize=32, mean=CIFAR.mean, std=CIFAR.std, classes=CIFAR.classes, batch=2)


@pytest.mark.parametrize("suffix", [".onnx", pytest.param(".pt2", marks=pytest.mark.slow)])
def test_normalising_in_the_graph_takes_pixels_in_0_to_1(suffix, tmp_path, one_thread):
    """The exported model on raw 0..1 input equals the PyTorch network on normalised input."""
    network = _tiny("darts_v2")
    path = tmp_path / f"model{suffix}"
    export_network(network, path, preprocessing=CIFAR, normalise_in_graph=True)
    assert read_metadata(path)["normalised_in_graph"] == "true"
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    mean, std = (torch.tensor(values).view(1, 3, 1, 1) for values in (CIFAR.mean, CIFAR.std))
    torch.testing.assert_close(run_exported(path, pixels),
                               _reference(network, (pixels - mean) / std), atol=ATOL, rtol=1e-4)


def test_normalising_in_the_graph_needs_the_statistics(tmp_path):
    with pytest.raises(ExportError, match="needs the mean and std"):
        export_network(_tiny("darts_v2"), tmp_path / "model.onnx", normalise_in_graph=True)
    assert not (tmp_path / "model.onnx").exists()


def test_a_genotype_gets_its_datasets_preprocessing(tmp_path, one_thread):
    """`export-model GENOTYPE --dataset ...`: the dataset's statistics (and CIFAR-10's class
    names); --normalise-in-graph says so in the metadata and the printed line."""
    output = tmp_path / "model.onnx"
    outcome = _export("darts_v2", "-o", output, "--channels", "4", "--layers", "3",
                      "--normalise-in-graph")
    assert outcome.exit_code == 0, outcome.output
    assert "RGB pixels in 0..1; the graph normalises them; 10 class names" in outcome.output
    preprocessing = Preprocessing.from_metadata(read_metadata(output))
    assert preprocessing.normalised_in_graph and preprocessing.classes[:2] == ("airplane",
                                                                                "automobile")
    assert preprocessing.mean == (0.4914, 0.4822, 0.4465)
