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

Every file carries its preprocessing as metadata (`Preprocessing`: mean, std, input size, resize,
layout, channel order, pixel range, class names): ONNX as `metadata_props`, .pt2 as the extra file
`metadata.json` (`torch.export.save(..., extra_files=...)`); both hold the same string map
(`read_metadata`). With `normalise_in_graph` the graph itself subtracts the mean and divides by
the std, so it takes RGB in 0..1.

Every file is written atomically (`attdarts.files`): a failed export leaves no partial file.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from attdarts.files import atomic_write_bytes
from attdarts.networks.network import Network

__all__ = [
    "EXPORTERS", "FORMATS", "ExportError", "InferenceNetwork", "Preprocessing", "export_network",
    "export_format", "read_metadata", "run_exported",
]

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}
EXPORTERS = ("torchscript", "dynamo")
OPSET = 18  # ONNX opset of the exported graph (onnxruntime 1.16 and later run it)
EXAMPLE_BATCH = 2  # traced batch when the batch is dynamic (torch.export specialises 0 and 1)
INSTALL_HINT = "pip install 'attdarts[export]' (or: pip install onnx onnxruntime onnxscript)"
METADATA_FILE = "metadata.json"  # the .pt2 extra file that holds the metadata
LAYOUT = "NCHW"
PIXEL_RANGE = "0..1"  # 8-bit values divided by 255, before the mean and std


@dataclass(frozen=True)
class Preprocessing:
    """What an image goes through before the network, as the exported file records it: resize
    the shorter side to `resize`, crop the centre `input_size` square, scale pixels to 0..1, then
    ``(x - mean) / std`` per channel, unless `normalised_in_graph` (the graph does that step).
    `mean` and `std` are None when unknown; `classes` is empty when the classes have no names.
    `batch` is the exported graph's fixed batch size, None for any."""

    input_size: int
    resize: int
    in_chans: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] = ()
    normalised_in_graph: bool = False
    batch: int | None = None

    @property
    def channel_order(self) -> str:
        return {3: "RGB", 1: "L"}.get(self.in_chans, f"{self.in_chans} channels")

    def metadata(self) -> dict[str, str]:
        """The string map written into a file (ONNX `metadata_props`, .pt2 `metadata.json`)."""
        values = {
            "preprocessing": self.describe(),
            "input_size": str(self.input_size),
            "resize": str(self.resize),
            "crop": "center",
            "layout": LAYOUT,
            "channel_order": self.channel_order,
            "in_chans": str(self.in_chans),
            "pixel_range": PIXEL_RANGE,
            "normalised_in_graph": json.dumps(self.normalised_in_graph),
            "batch": "dynamic" if self.batch is None else str(self.batch),
        }
        if self.mean is not None and self.std is not None:
            values["mean"] = json.dumps(list(self.mean))
            values["std"] = json.dumps(list(self.std))
        if self.classes:
            values["classes"] = json.dumps(list(self.classes))
        return values

    def describe(self) -> str:
        """One sentence for a person reading the file's metadata (e.g. in Netron)."""
        shape = f"({self.batch or 'batch'}, {self.in_chans}, {self.input_size}, {self.input_size})"
        steps = (f"resize the shorter side to {self.resize}, crop the centre {self.input_size}x"
                 f"{self.input_size}, {self.channel_order} pixels in {PIXEL_RANGE}")
        if self.normalised_in_graph:
            return f"images {shape} {LAYOUT}: {steps}; the graph normalises them"
        if self.mean is None:
            return f"images {shape} {LAYOUT}: {steps}, then normalised (mean and std unknown)"
        return f"images {shape} {LAYOUT}: {steps}, then (x - mean) / std per channel"

    @classmethod
    def from_metadata(cls, values: dict[str, str], source: str = "the file") -> Preprocessing:
        """The inverse of `metadata`; a file without attdarts metadata raises ExportError."""
        try:
            batch = values.get("batch", "dynamic")
            return cls(
                input_size=int(values["input_size"]),
                resize=int(values.get("resize", values["input_size"])),
                in_chans=int(values.get("in_chans", 3)),
                mean=_floats(values.get("mean")),
                std=_floats(values.get("std")),
                classes=tuple(str(name) for name in json.loads(values.get("classes", "[]"))),
                normalised_in_graph=json.loads(values.get("normalised_in_graph", "false")) is True,
                batch=None if batch == "dynamic" else int(batch),
            )
        except (KeyError, ValueError, TypeError) as error:
            raise ExportError(f"{source}: no usable attdarts metadata (input_size, mean, std, "
                              f"...; {type(error).__name__}: {error}); export it again with "
                              f"attdarts export-model") from None


def _floats(text: str | None) -> tuple[float, ...] | None:
    return None if text is None else tuple(float(value) for value in json.loads(text))


class ExportError(Exception):
    """An export that cannot be done as asked; the message says why and what to do."""


class InferenceNetwork(nn.Module):
    """A copy of a discrete network as deployed: eval mode, no drop path, no auxiliary head, the
    plain cells; `forward(images)` returns the logits. With `normalise` = (mean, std) it first
    computes ``(images - mean) / std`` per channel, so it takes pixels in 0..1. The original
    network is left as it was."""

    def __init__(self, network: Network,
                 normalise: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> None:
        super().__init__()
        network = copy.deepcopy(network)
        network.auxiliary_head = None
        network.auxiliary_index = -1
        network.drop_path_prob = 0.0
        network.set_grouped(False)
        self.network = network
        self.input_size = network.input_size
        self.num_classes = network.num_classes
        self.in_chans = network.in_chans
        self.normalised = normalise is not None
        if normalise is not None:
            mean, std = (torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
                         for values in normalise)
            if mean.numel() != self.in_chans or std.numel() != self.in_chans:
                raise ExportError(f"normalising in the graph needs {self.in_chans} means and "
                                  f"stds, got {mean.numel()} and {std.numel()}")
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalised:
            images = (images - self.mean) / self.std
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
                   exporter: str = "torchscript", preprocessing: Preprocessing | None = None,
                   normalise_in_graph: bool = False) -> InferenceNetwork:
    """Write `network` as deployed (`InferenceNetwork`) to `path` (.onnx or .pt2), atomically,
    with `preprocessing` (its mean, std and class names; the sizes come from the network) as the
    file's metadata.

    `batch` None: any batch size (a dynamic first dimension); an integer fixes it.
    `normalise_in_graph` puts ``(x - mean) / std`` into the graph (it needs the mean and std).
    Returns the exported module (its `preprocessing` is the file's metadata), which gives the
    reference outputs the file must reproduce.
    """
    kind = export_format(path)
    if batch is not None and batch < 1:
        raise ExportError(f"the batch size must be at least 1, got {batch}")
    metadata = _file_preprocessing(network, preprocessing, batch, normalise_in_graph)
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown ONNX exporter '{exporter}'; expected one of {', '.join(EXPORTERS)}")
    if kind == "onnx":
        _require("onnx", "ONNX export")
        if exporter == "dynamo":
            _require("onnxscript", "ONNX export with the dynamo exporter")
    normalise = (metadata.mean, metadata.std) if normalise_in_graph else None
    model = InferenceNetwork(network, normalise).cpu().float()
    model.preprocessing = metadata  # what the file's metadata says
    example = torch.randn(batch or EXAMPLE_BATCH, model.in_chans, model.input_size,
                          model.input_size)
    properties = metadata.metadata()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter's deprecation notice and tracer notes are not for the user:
        # the graph has no data-dependent control flow (shapes are fixed at construction)
        warnings.simplefilter("ignore")
        if kind == "pt2":
            program = torch.export.export(model, (example,), dynamic_shapes=_dynamic(batch))
            buffer = io.BytesIO()
            torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(properties)})
            atomic_write_bytes(path, buffer.getvalue())
        elif exporter == "torchscript":
            atomic_write_bytes(path, _with_properties(_onnx_torchscript(model, example, batch),
                                                      properties))
        else:
            atomic_write_bytes(path, _with_properties(_onnx_dynamo(model, example, batch),
                                                      properties))
    return model


def _file_preprocessing(network: Network, given: Preprocessing | None, batch: int | None,
                        normalise_in_graph: bool) -> Preprocessing:
    """`given` with the sizes of `network` and this export's batch and normalisation."""
    size = network.input_size
    given = given or Preprocessing(input_size=size, resize=size)
    if normalise_in_graph and (given.mean is None or given.std is None):
        raise ExportError("normalising in the graph needs the mean and std of the training data, "
                          "which this network does not carry")
    resize = given.resize if given.input_size == size else size
    return Preprocessing(input_size=size, resize=resize, in_chans=network.in_chans,
                         mean=given.mean, std=given.std, classes=given.classes,
                         normalised_in_graph=normalise_in_graph, batch=batch)


def _with_properties(serialised: bytes, properties: dict[str, str]) -> bytes:
    """The ONNX model `serialised` with `properties` as its metadata_props."""
    import onnx

    model = onnx.load_from_string(serialised)
    onnx.helper.set_model_props(model, properties)
    model.doc_string = properties["preprocessing"]
    return model.SerializeToString()


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


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata string map of an exported file (empty when it has none)."""
    if export_format(path) == "pt2":
        return load_program(path)[1]
    _require("onnx", "reading an ONNX file's metadata")
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in model.metadata_props}


def load_program(path: str | os.PathLike):
    """(`torch.export.load` of a .pt2 file, its metadata map)."""
    extra = {METADATA_FILE: ""}
    program = torch.export.load(str(path), extra_files=extra)
    values = json.loads(extra[METADATA_FILE] or "{}")
    if not isinstance(values, dict):
        return program, {}
    return program, {str(key): str(value) for key, value in values.items()}


def read_onnx_session(path: str | os.PathLike):
    """(an onnxruntime CPU session of an ONNX file, its metadata map)."""
    _require("onnxruntime", "running an ONNX file")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, dict(session.get_modelmeta().custom_metadata_map)


def run_exported(path: str | os.PathLike, images: torch.Tensor) -> torch.Tensor:
    """Logits of the exported file at `path` for `images`: ONNX through onnxruntime (CPU), .pt2
    through `torch.export.load`. What `--verify` and the tests compare with the network."""
    if export_format(path) == "pt2":
        program = torch.export.load(str(path))
        with torch.no_grad():
            return program.module()(images.float())
    session, _ = read_onnx_session(path)
    (logits,) = session.run(["logits"], {"images": images.float().numpy()})
    return torch.from_numpy(logits)
