"""`attdarts export-model`: a trained (or freshly built) network as an ONNX file or a .pt2 program."""

from __future__ import annotations

from pathlib import Path

import click

from attdarts import recipes
from attdarts.language.errors import DslError

_CIFAR = recipes.TRAIN["cifar"]
_IMAGENET = recipes.TRAIN["imagenet"]


@click.command("export-model")
@click.argument("source", metavar="CHECKPOINT_OR_GENOTYPE")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write: NAME.onnx (ONNX) or NAME.pt2 (torch.export).")
@click.option("--batch", type=click.IntRange(min=1),
              help="Fix the batch size of the exported graph [dynamic: any batch].")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript",
              show_default=True,
              help="ONNX exporter of torch: torchscript (fast, needs onnx) or dynamo (the "
                   "torch.export-based one, also needs onnxscript).")
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100", "imagenet"]),
              default="cifar10", show_default=True,
              help="For a genotype: network skeleton, classes and input size (32 or 224).")
@click.option("--channels", type=click.IntRange(min=1, max=recipes.MAX_CHANNELS),
              help=f"For a genotype: initial channels C [{_CIFAR['channels']}; ImageNet "
                   f"{_IMAGENET['channels']}].")
@click.option("--layers", type=click.IntRange(min=recipes.MIN_LAYERS, max=recipes.MAX_LAYERS),
              help=f"For a genotype: cells L [{_CIFAR['layers']}; ImageNet {_IMAGENET['layers']}].")
@click.option("--normalise-in-graph", is_flag=True,
              help="Put the normalisation ((x - mean) / std, the training data's) into the "
                   "graph: the file then takes RGB pixels in 0..1.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Run the written file (onnxruntime, torch.export.load) on random images and "
                   "compare its logits with the PyTorch network's.")
def export_model(source: str, output: Path, batch: int | None, exporter: str, dataset: str,
                 channels: int | None, layers: int | None, normalise_in_graph: bool,
                 verify: bool) -> None:
    """Write a network for inference: evaluation mode, no drop path, no auxiliary head, the
    logits as its one output; input (batch, 3, S, S) with S = 32 (CIFAR) or 224 (ImageNet).
    The file's metadata holds its preprocessing: mean, std, input size, resize, layout (NCHW,
    RGB, pixels in 0..1) and class names.

    CHECKPOINT_OR_GENOTYPE is a training run directory (its last.pt), a training checkpoint
    (.pt), or a genotype: a .geno file or a zoo name such as darts_v2, built with fresh weights
    for --dataset, --channels and --layers. The format follows the suffix of -o; the file is
    written atomically.
    """
    from attdarts import api
    from attdarts.networks.export import ExportError, run_exported
    from attdarts.runs.checkpoints import CheckpointError

    try:
        model = api.export_model(source, output, batch=batch, exporter=exporter, dataset=dataset,
                                 channels=channels, layers=layers,
                                 normalise_in_graph=normalise_in_graph)
        difference = _verify(model, output, batch, run_exported) if verify else None
    except DslError as error:
        raise click.ClickException(error.render()) from None
    except (ExportError, CheckpointError, api.GenotypeNotFound) as error:
        raise click.ClickException(str(error)) from None
    shape = f"({batch or 'batch'}, {model.in_chans}, {model.input_size}, {model.input_size})"
    line = f"{output}: input {shape} -> logits ({batch or 'batch'}, {model.num_classes})"
    if difference is not None:
        line += f"; largest difference from PyTorch {difference:.1e}"
    click.echo(line)
    preprocessing = model.preprocessing
    classes = (f"{len(preprocessing.classes)} class names" if preprocessing.classes
               else "no class names")
    click.echo(f"metadata: {preprocessing.describe()}; {classes}")


def _verify(model, output: Path, batch: int | None, run_exported) -> float | None:
    """Largest absolute difference of the file's logits from the network's (3 random images, or
    the fixed batch), or None when onnxruntime is missing (a note says so)."""
    import importlib.util

    import torch

    if output.suffix.lower() == ".onnx" and importlib.util.find_spec("onnxruntime") is None:
        click.echo("attdarts export-model: onnxruntime is not installed; the file was not run "
                   "(pip install onnxruntime, or --no-verify)", err=True)
        return None
    images = torch.randn(batch or 3, model.in_chans, model.input_size, model.input_size,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images)
    difference = float((run_exported(output, images) - expected).abs().max())
    if not difference <= 1e-3 * max(1.0, float(expected.abs().max())):
        raise click.ClickException(f"{output}: the exported network's logits differ from "
                                   f"PyTorch's by {difference:.3g}; please report this")
    return difference
