"""The discrete network as deployed: ONNX files and torch.export programs (`attdarts export-model`).

What is exported is the network a trained model serves with: evaluation mode (BatchNorm uses its
running statistics), no drop path, no auxiliary head (its weights are left out of the file), the
edge-by-edge cells (the grouped path computes the same numbers; the plain one is the simpler
graph), and one output, the logits. The input is `(batch, 3, S, S)` with S the size the network
was built for (CIFAR 32, ImageNet 224); the batch is dynamic unless a fixed one is asked for.

Two formats, chosen by the file's suffix:
- `.onnx`: `torch.onnx.export`, by default through its TorchScript exporter (fast, needs only the
  `onnx` package); `exporter="dynamo"` uses the torch.export-based one (also needs `onnxscript`;
  torch's default since 2.9, several times slower here). Both give the same numbers.
- `.pt2`: `torch.export.export` then `torch.export.save`; `torch.export.load(path).module()` runs it.

Every file is written atomically (`attdarts.files`): a failed export leaves no partial file.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from attdarts.files import atomic_write_bytes
from attdarts.networks.network import Network

__all__ = [
    "EXPORTERS", "FORMATS", "ExportError", "InferenceNetwork", "export_network", "export_format",
    "run_exported",
]

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}
EXPORTERS = ("torchscript", "dynamo")
OPSET = 18  # ONNX opset of the exported graph (onnxruntime 1.16 and later run it)
EXAMPLE_BATCH = 2  # traced batch when the batch is dynamic (torch.export specialises 0 and 1)
INSTALL_HINT = "pip install 'attdarts[export]' (or: pip install onnx onnxruntime onnxscript)"


class ExportError(Exception):
    """An export that cannot be done as asked; the message says why and what to do."""


class InferenceNetwork(nn.Module):
    """A copy of a discrete network as deployed: eval mode, no drop path, no auxiliary head, the
    plain cells; `forward(images)` returns the logits. The original network is left as it was."""

    def __init__(self, network: Network) -> None:
        super().__init__()
        network = copy.deepcopy(network)
        network.auxiliary_head = None
        network.auxiliary_index = -1
        network.drop_path_prob = 0.0
        network.set_grouped(False)
        self.network = network
        self.input_size = network.input_size
        self.num_classes = network.num_classes
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)


def export_format(path: str | os.PathLike) -> str:
    """"onnx" or "pt2" from the file's suffix; another suffix is refused."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        shown = f"'{suffix}'" if suffix else "no suffix"
        raise ExportError(f"{path}: cannot tell the format from {shown}; "
                          f"name the file *.onnx (ONNX) or *.pt2 (torch.export)")
    return FORMATS[suffix]


def export_network(network: Network, path: str | os.PathLike, *, batch: int | None = None,
                   exporter: str = "torchscript") -> InferenceNetwork:
    """Write `network` as deployed (`InferenceNetwork`) to `path` (.onnx or .pt2), atomically.

    `batch` None: any batch size (a dynamic first dimension); an integer fixes it. Returns the
    exported module, which gives the reference outputs the file must reproduce.
    """
    kind = export_format(path)
    if batch is not None and batch < 1:
        raise ExportError(f"the batch size must be at least 1, got {batch}")
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown ONNX exporter '{exporter}'; expected one of {', '.join(EXPORTERS)}")
    if kind == "onnx":
        _require("onnx", "ONNX export")
        if exporter == "dynamo":
            _require("onnxscript", "ONNX export with the dynamo exporter")
    model = InferenceNetwork(network).cpu().float()
    example = torch.randn(batch or EXAMPLE_BATCH, 3, model.input_size, model.input_size)
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter's deprecation notice and tracer notes are not for the user:
        # the graph has no data-dependent control flow (shapes are fixed at construction)
        warnings.simplefilter("ignore")
        if kind == "pt2":
            program = torch.export.export(model, (example,), dynamic_shapes=_dynamic(batch))
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
            atomic_write_bytes(path, buffer.getvalue())
        elif exporter == "torchscript":
            atomic_write_bytes(path, _onnx_torchscript(model, example, batch))
        else:
            atomic_write_bytes(path, _onnx_dynamo(model, example, batch))
    return model


def _dynamic(batch: int | None):
    if batch is not None:
        return None
    return ({0: torch.export.Dim("batch", min=1, max=65536)},)


def _onnx_torchscript(model: nn.Module, example: torch.Tensor, batch: int | None) -> bytes:
    buffer = io.BytesIO()
    axes = None if batch is not None else {"images": {0: "batch"}, "logits": {0: "batch"}}
    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=OPSET,
                      input_names=["images"], output_names=["logits"], dynamic_axes=axes,
                      do_constant_folding=True)
    return buffer.getvalue()


def _onnx_dynamo(model: nn.Module, example: torch.Tensor, batch: int | None) -> bytes:
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET,
                                input_names=["images"], output_names=["logits"],
                                dynamic_shapes=_dynamic(batch), verbose=False)
    with tempfile.TemporaryDirectory() as folder:  # the program saves to a path only
        target = Path(folder) / "model.onnx"
        program.save(target)
        if len(list(Path(folder).iterdir())) != 1:
            raise ExportError("the network is too large for one ONNX file (over 2 GB)")
        return target.read_bytes()


def _require(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ExportError(f"{what} needs the '{module}' package: {INSTALL_HINT}")


def run_exported(path: str | os.PathLike, images: torch.Tensor) -> torch.Tensor:
    """Logits of the exported file at `path` for `images`: ONNX through onnxruntime (CPU), .pt2
    through `torch.export.load`. What `--verify` and the tests compare with the network."""
    if export_format(path) == "pt2":
        program = torch.export.load(str(path))
        with torch.no_grad():
            return program.module()(images.float())
    _require("onnxruntime", "running an ONNX file")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.float().numpy()})
    return torch.from_numpy(logits)
