"""Classes of image files (`attdarts predict`): the network of a training run, or an exported
file (.onnx through onnxruntime, .pt2 through `torch.export.load`), with the preprocessing it
was trained with (`attdarts.networks.export.Preprocessing`).

An image is read with Pillow (any format it reads), converted to RGB (or to grey for a
one-channel network), its shorter side resized to the preprocessing's `resize` (bilinear, with
antialiasing), its centre `input_size` square cropped, and its pixels scaled to 0..1 and
normalised with the training data's mean and std, unless the exported graph normalises them
itself. This is the evaluation transform of the training loaders: identity for 32x32 CIFAR
images, resize 256 and crop 224 for ImageNet.

A training checkpoint records its mean, std and class names (`"data"` in last.pt); an older one
falls back on its run's `config.json` (mean, std) and the dataset's known class names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attdarts.networks.export import (
    ExportError, Preprocessing, export_format, load_program, read_onnx_session,
)
from attdarts.runs.data.datasets import (
    CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN,
    IMAGENET_STD, DataError, parse_spec,
)

__all__ = [
    "ClassScore", "PredictError", "Prediction", "Predictor", "checkpoint_preprocessing",
    "dataset_preprocessing", "exported_predictor", "network_predictor", "predict", "read_image",
]

# a dataset kind's mean, std and (when fixed) class names
_KNOWN: dict[str, tuple[tuple[float, ...], tuple[float, ...], tuple[str, ...]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES),
    "cifar10-mini": (CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD, ()),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD, ()),
    "synthetic": (CIFAR10_MEAN, CIFAR10_STD, ()),
}
IMAGENET_CROP = 224 / 256  # the ImageNet evaluation: resize to 256, crop 224


class PredictError(Exception):
    """An image or model that cannot be used; the message is one line naming the file."""


def resize_for(network: nn.Module) -> int:
    """The size the shorter side is resized to before the centre crop."""
    size = network.input_size
    return round(size / IMAGENET_CROP) if getattr(network, "imagenet_stem", False) else size


def dataset_preprocessing(dataset: str, network: nn.Module) -> Preprocessing:
    """The preprocessing of a network built for `dataset` (a dataset spec: cifar10, imagenet,
    folder:PATH, ...): the dataset's mean, std and fixed class names where it has them."""
    try:
        kind = parse_spec(dataset).kind
    except DataError:
        kind = dataset
    mean, std, classes = _KNOWN.get(kind, (None, None, ()))
    return Preprocessing(input_size=network.input_size, resize=resize_for(network),
                         in_chans=network.in_chans, mean=mean, std=std,
                         classes=classes if len(classes) == network.num_classes else ())


def checkpoint_preprocessing(state: dict[str, Any], path: Path, network: nn.Module) -> Preprocessing:
    """The preprocessing of a training checkpoint's network: its recorded data statistics and
    class names, or, for a checkpoint written before they were recorded, its run's config.json
    and its dataset's."""
    data = state.get("data")
    if isinstance(data, dict):
        classes = tuple(str(name) for name in data.get("classes") or ())
        return Preprocessing(
            input_size=network.input_size, resize=resize_for(network), in_chans=network.in_chans,
            mean=tuple(data["mean"]), std=tuple(data["std"]),
            classes=classes if len(classes) == network.num_classes else ())
    dataset = str(state.get("config", {}).get("dataset", ""))
    fallback = dataset_preprocessing(dataset, network)
    try:
        config = json.loads((Path(path).parent / "config.json").read_text(encoding="utf-8"))
        mean, std = tuple(config["mean"]), tuple(config["std"])
    except (OSError, ValueError, KeyError, TypeError):
        return fallback
    return Preprocessing(input_size=fallback.input_size, resize=fallback.resize,
                         in_chans=fallback.in_chans, mean=mean, std=std, classes=fallback.classes)


@dataclass
class Predictor:
    """A model that gives logits for a batch of preprocessed images."""

    source: str
    preprocessing: Preprocessing
    run: Callable[[Tensor], Tensor]
    num_classes: int | None = None

    def logits(self, images: Tensor) -> Tensor:
        """Logits of `images` (batch, C, S, S), in chunks padded to a fixed exported batch."""
        fixed = self.preprocessing.batch
        if fixed is None:
            return self.run(images)
        chunks = []
        for start in range(0, images.shape[0], fixed):
            chunk = images[start:start + fixed]
            padding = fixed - chunk.shape[0]
            if padding:
                chunk = torch.cat([chunk, chunk[-1:].expand(padding, *chunk.shape[1:])])
            chunks.append(self.run(chunk)[:fixed - padding])
        return torch.cat(chunks)


def network_predictor(network: nn.Module, preprocessing: Preprocessing, source: str) -> Predictor:
    """A PyTorch network (eval mode, CPU) as a predictor."""
    network = network.cpu().float().eval()

    def run(images: Tensor) -> Tensor:
        with torch.no_grad():
            return network(images)

    return Predictor(source, preprocessing, run, network.num_classes)


def exported_predictor(path: str | os.PathLike) -> Predictor:
    """An exported .onnx or .pt2 file as a predictor, with the preprocessing in its metadata."""
    try:
        kind = export_format(path)
    except ExportError as error:
        raise PredictError(str(error)) from None
    if not Path(path).is_file():
        raise PredictError(f"{path}: no such file")
    try:
        if kind == "pt2":
            program, metadata = load_program(path)
            module = program.module()

            def run(images: Tensor) -> Tensor:
                with torch.no_grad():
                    return module(images.float())
        else:
            session, metadata = read_onnx_session(path)
            name = session.get_inputs()[0].name

            def run(images: Tensor) -> Tensor:
                (logits,) = session.run(None, {name: images.float().numpy()})
                return torch.from_numpy(logits)
        preprocessing = Preprocessing.from_metadata(metadata, str(path))
    except ExportError as error:
        raise PredictError(str(error)) from None
    except Exception as error:  # a damaged or foreign file: onnxruntime, torch and zip errors
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PredictError(f"{path}: cannot load the model ({reason})") from None
    return Predictor(str(path), preprocessing, run)


def read_image(path: str | os.PathLike, preprocessing: Preprocessing) -> Tensor:
    """One image file as the model's input (C, S, S); PredictError names an unreadable file."""
    from PIL import Image, UnidentifiedImageError
    from torchvision import transforms

    modes = {3: "RGB", 1: "L"}
    if preprocessing.in_chans not in modes:
        raise PredictError(f"cannot read images for a network of {preprocessing.in_chans} input "
                           f"channels (1: grey, 3: RGB)")
    try:
        with Image.open(path) as image:
            image = image.convert(modes[preprocessing.in_chans])
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PredictError(f"{path}: a directory, not an image") from None
    except UnidentifiedImageError:
        raise PredictError(f"{path}: not a readable image (not a format Pillow reads)") from None
    except (OSError, ValueError, SyntaxError) as error:  # truncated data, broken chunks
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PredictError(f"{path}: not a readable image ({reason})") from None
    transform = transforms.Compose([transforms.Resize(preprocessing.resize),
                                    transforms.CenterCrop(preprocessing.input_size),
                                    transforms.ToTensor()])
    pixels = transform(image)  # (C, S, S) in 0..1
    if preprocessing.normalised_in_graph:
        return pixels
    mean = torch.tensor(preprocessing.mean).view(-1, 1, 1)
    std = torch.tensor(preprocessing.std).view(-1, 1, 1)
    return (pixels - mean) / std


@dataclass(frozen=True)
class ClassScore:
    index: int
    name: str | None  # None when the model has no class names
    probability: float


@dataclass(frozen=True)
class Prediction:
    image: str
    top: tuple[ClassScore, ...]  # most probable first


def predict(predictor: Predictor, images: Sequence[str | os.PathLike], top_k: int = 5
            ) -> list[Prediction]:
    """The `top_k` most probable classes of each image (softmax of the logits). Every image is
    read before the model runs, so an unreadable one stops the call before any output."""
    preprocessing = predictor.preprocessing
    if not preprocessing.normalised_in_graph and (preprocessing.mean is None
                                                  or preprocessing.std is None):
        raise PredictError(f"{predictor.source}: no mean and std to normalise images with; "
                           f"export it again from its training run")
    if top_k < 1:
        raise PredictError(f"--top-k must be at least 1, got {top_k}")
    if not images:
        return []
    batch = torch.stack([read_image(path, preprocessing) for path in images])
    probabilities = torch.softmax(predictor.logits(batch).double(), dim=1)
    classes = preprocessing.classes
    named = len(classes) == probabilities.shape[1]
    values, indices = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
    return [Prediction(str(path), tuple(
        ClassScore(int(index), classes[int(index)] if named else None, float(value))
        for value, index in zip(row_values.tolist(), row_indices.tolist())))
        for path, row_values, row_indices in zip(images, values, indices)]
