"""Datasets held in memory: specs, CIFAR-10/100, ImageFolder (decoded once and cached) and
synthetic tensors, and the search's split.

CIFAR-sized data is small: the whole split is held as one uint8 tensor (`ImageTensors`), which
the loaders (`attdarts.runs.data.loaders`) move to the training device once.

Dataset specs: `cifar10`, `cifar100`, `imagenet`, `folder:PATH` (ImageFolder with `train/` and
`test/`), `cifar10-mini` (a small real CIFAR-10 subset shipped inside the package, for the demo and
tests: attdarts/data/cifar10-mini/README.md), `synthetic` (random images with random labels, for
smoke runs only), and any name a plug-in registers. The names live in the torch-free table
`attdarts.language.catalog.DATASETS`; each names its loader by a dotted path, imported here when
the data is loaded (the built-in loaders are the `load_*` functions below).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
import importlib

import torch
from torch import Tensor

from attdarts.language import catalog
from attdarts.language.errors import close_names
from attdarts.runs import checkpoints as checkpoint

log = logging.getLogger(__name__)

Stats = tuple[float, float, float]

CIFAR10_MEAN: Stats = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: Stats = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: Stats = (0.5071, 0.4867, 0.4408)
CIFAR100_STD: Stats = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN: Stats = (0.485, 0.456, 0.406)
IMAGENET_STD: Stats = (0.229, 0.224, 0.225)

SYNTHETIC_SIZES = {True: 2048, False: 512}  # train / test images of the `synthetic` dataset

KINDS = ("cifar10", "cifar100", "imagenet", "folder", "cifar10-mini", "synthetic")  # built in
SPEC_HELP = "cifar10, cifar100, imagenet, cifar10-mini, synthetic or folder:PATH"

# datasets shipped inside the package (attdarts/data/NAME: an ImageFolder with a README that says
# where the images come from, and a MANIFEST.sha256)
EMBEDDED_ROOT = Path(__file__).resolve().parents[2] / "data"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")


class DataError(Exception):
    """A dataset that cannot be found, downloaded or read; the message says what was expected."""


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset name of `catalog.DATASETS` (`kind`), or "folder" with its `path`."""

    kind: str
    path: str | None = None

    def __str__(self) -> str:
        return f"folder:{self.path}" if self.kind == "folder" else self.kind

    @property
    def network_dataset(self) -> str:
        """The network skeleton to build: the ImageNet stem for ImageNet, the CIFAR one otherwise."""
        return "imagenet" if self.kind == "imagenet" else "cifar100" if self.kind == "cifar100" else "cifar10"


def parse_spec(spec: str) -> DatasetSpec:
    text = spec.strip()
    if text.startswith("folder:"):
        path = text[len("folder:"):]
        if not path:
            raise DataError("'folder:' needs a path, e.g. folder:/data/my-images")
        return DatasetSpec("folder", path)
    if text.lower() in catalog.DATASETS:
        return DatasetSpec(text.lower())
    close = close_names(text.lower(), catalog.DATASETS)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise DataError(f"unknown dataset '{spec}': expected {spec_help()}{hint}")


def spec_help() -> str:
    """The dataset names known now (plug-ins' included) and the folder form, for messages."""
    return ", ".join(catalog.DATASETS) + " or folder:PATH"


@dataclass
class ImageTensors:
    """A whole split in memory: `images` uint8 (N, 3, H, W), `labels` int64 (N,)."""

    images: Tensor
    labels: Tensor
    num_classes: int
    mean: Stats
    std: Stats
    synthetic: bool = False
    classes: tuple[str, ...] = ()
    name: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def subset(self, start: int, stop: int) -> "ImageTensors":
        return replace(self, images=self.images[start:stop], labels=self.labels[start:stop])

    def permuted(self, order: Tensor) -> "ImageTensors":
        """The same split with its samples in `order` (a permutation of the indices)."""
        return replace(self, images=self.images[order], labels=self.labels[order])


def split(dataset: ImageTensors, fraction: float = 0.5) -> tuple[ImageTensors, ImageTensors]:
    """DARTS's search split: the first `floor(fraction * N)` samples train the weights, the rest
    the architecture (Liu et al. 2019, Sec. 3; the Att-DARTS search uses the same 50/50 split)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be between 0 and 1, got {fraction}")
    cut = int(math.floor(fraction * len(dataset)))
    return dataset.subset(0, cut), dataset.subset(cut, len(dataset))


# ---------------------------------------------------------------------------------------------
# Loading


def default_data_dir(spec: DatasetSpec) -> Path:
    """Where a dataset is looked for without --data-dir (relative to the working directory)."""
    return Path("data/imagenet") if spec.kind == "imagenet" else Path("data")


def load_dataset(
    spec: str | DatasetSpec,
    data_dir: str | os.PathLike | None,
    *,
    train: bool,
    download: bool = True,
    workers: int = 0,
) -> ImageTensors:
    """Load one split of a CIFAR-sized dataset into memory (uint8, CPU)."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    root = Path(data_dir) if data_dir is not None else default_data_dir(spec)
    if spec.kind == catalog.FOLDER:
        return _load_folder(Path(spec.path), train=train, workers=workers)  # type: ignore[arg-type]
    entry = catalog.DATASETS.get(spec.kind)
    if entry is None:
        parse_spec(spec.kind)  # raises, naming the known datasets
    loaded = _loader(entry)(train=train, root=root, download=download, workers=workers)
    if not isinstance(loaded, ImageTensors):
        raise DataError(f"dataset '{entry.name}' ({entry.origin}): its loader {entry.factory} "
                        f"returned {type(loaded).__name__}, not ImageTensors")
    return loaded


def _loader(entry: catalog.Dataset):
    """The loader function an entry names (a plug-in's that cannot be imported: a DataError)."""
    module, _, attribute = entry.factory.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise DataError(f"dataset '{entry.name}' ({entry.origin}): cannot load its loader "
                        f"{entry.factory} ({type(error).__name__}: {error})") from None


# The built-in loaders, with the signature every entry of catalog.DATASETS has.


def load_cifar10(*, train: bool, root: Path, download: bool = True,
                 workers: int = 0) -> ImageTensors:
    """CIFAR-10's python version under `root` (downloaded there when missing and allowed)."""
    return _load_cifar("cifar10", root, train=train, download=download)


def load_cifar100(*, train: bool, root: Path, download: bool = True,
                  workers: int = 0) -> ImageTensors:
    """CIFAR-100's python version under `root` (downloaded there when missing and allowed)."""
    return _load_cifar("cifar100", root, train=train, download=download)


def load_imagenet(*, train: bool, root: Path, download: bool = True,
                  workers: int = 0) -> ImageTensors:
    """ImageNet is streamed from disk by `make_loader`, never held in memory."""
    raise DataError(
        "imagenet is not held in memory; build its loader with make_loader('imagenet', ...)"
    )


def load_synthetic(*, train: bool, root: Path, download: bool = True,
                   workers: int = 0) -> ImageTensors:
    """`synthetic_dataset` with its default sizes (root, download and workers are not used)."""
    return synthetic_dataset(train=train)


def synthetic_dataset(*, train: bool, size: int | None = None, num_classes: int = 10,
                      resolution: int = 32) -> ImageTensors:
    """Random images with random labels: exercises the whole pipeline, learns nothing."""
    count = size if size is not None else SYNTHETIC_SIZES[train]
    generator = torch.Generator().manual_seed(0 if train else 1)
    images = torch.randint(0, 256, (count, 3, resolution, resolution), generator=generator,
                           dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    return ImageTensors(images, labels, num_classes, CIFAR10_MEAN, CIFAR10_STD, synthetic=True,
                        classes=tuple(str(i) for i in range(num_classes)), name="synthetic")


def embedded_dir(name: str = "cifar10-mini") -> Path:
    """The folder of a dataset shipped inside the package (in a checkout and in a wheel)."""
    return EMBEDDED_ROOT / name


def load_cifar10_mini(*, train: bool, workers: int = 0, root: Path | None = None,
                      download: bool = True) -> ImageTensors:
    """The embedded CIFAR-10 subset: 250 training / 50 test images per class, real JPEGs
    (`root` and `download` are not used: the images ship with the package).

    The images are decoded from the package's ImageFolder (cached like any folder), normalised
    with CIFAR-10's mean and std, and interleaved by class (one image of each class in turn) so
    that the search's 50/50 cut gives both halves every class equally.
    """
    root = embedded_dir("cifar10-mini")
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataError(f"the embedded dataset cifar10-mini is missing: expected '{root}' with "
                        "train/ and test/ (reinstall attdarts, or use a full clone of its "
                        "repository)")
    images, labels, classes = _decode_folder(_split_folder(root, train), workers)
    if classes != CIFAR10_CLASSES:
        raise DataError(f"'{root}': expected the class folders {', '.join(CIFAR10_CLASSES)}, "
                        f"found {', '.join(classes)}")
    order = interleave_classes(labels, len(classes))
    return ImageTensors(images[order].contiguous(), labels[order], len(classes), CIFAR10_MEAN,
                        CIFAR10_STD, classes=classes, name="cifar10-mini")


def interleave_classes(labels: Tensor, num_classes: int) -> Tensor:
    """The order that takes the first image of every class (by label), then the second of every
    class, and so on; within a class the given order is kept."""
    rank = torch.zeros_like(labels)
    for label in range(num_classes):
        members = (labels == label).nonzero().flatten()
        rank[members] = torch.arange(members.numel())
    return torch.argsort(rank * num_classes + labels, stable=True)


@dataclass(frozen=True)
class _CifarLayout:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    mean: Stats
    std: Stats
    num_classes: int


_CIFAR = {
    "cifar10": _CifarLayout(
        "CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",), "batches.meta", "labels", "label_names", CIFAR10_MEAN, CIFAR10_STD, 10),
    "cifar100": _CifarLayout(
        "CIFAR-100", "cifar-100-python", ("train",), ("test",), "meta", "fine_labels",
        "fine_label_names", CIFAR100_MEAN, CIFAR100_STD, 100),
}


def _expected_files(layout: _CifarLayout) -> str:
    if layout.folder == "cifar-10-batches-py":
        return "cifar-10-batches-py/data_batch_1..5, test_batch"
    return "cifar-100-python/train, test"


def _load_cifar(kind: str, root: Path, *, train: bool, download: bool) -> ImageTensors:
    layout = _CIFAR[kind]
    folder = root / layout.folder
    if not folder.is_dir() and root.name == layout.folder:
        folder, root = root, root.parent  # --data-dir pointed at the batch folder itself
    names = layout.train_files if train else layout.test_files
    missing = [name for name in names if not (folder / name).is_file()]
    if missing and download:
        _download_cifar(kind, root, train=train)
        missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{layout.title} not found under '{root}': expected {_expected_files(layout)} "
            f"(missing: {', '.join(missing)}). Download the python version from "
            "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it there, or pass --data-dir"
        )
    images, labels = [], []
    for name in names:
        batch = _read_pickle(folder / name)
        try:
            data = torch.as_tensor(_as_array(batch["data"]), dtype=torch.uint8)
            batch_labels = torch.as_tensor(list(batch[layout.label_key]), dtype=torch.int64)
        except KeyError as error:
            raise DataError(f"{folder / name}: not a {layout.title} batch (no {error} entry)") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != batch_labels.shape[0]:
            raise DataError(f"{folder / name}: expected 'data' of shape (N, 3072) and N labels, "
                            f"got {tuple(data.shape)} and {tuple(batch_labels.shape)}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    classes: tuple[str, ...] = ()
    if (folder / layout.meta_file).is_file():
        meta = _read_pickle(folder / layout.meta_file)
        classes = tuple(_text(name) for name in meta.get(layout.names_key, ()))
    all_labels = torch.cat(labels)
    if all_labels.numel() and (all_labels.min() < 0 or all_labels.max() >= layout.num_classes):
        raise DataError(f"{folder}: labels outside 0..{layout.num_classes - 1}")
    return ImageTensors(torch.cat(images).contiguous(), all_labels, layout.num_classes,
                        layout.mean, layout.std, classes=classes, name=kind)


def _download_cifar(kind: str, root: Path, *, train: bool) -> None:
    import torchvision

    constructor = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
    log.info("downloading %s into %s", _CIFAR[kind].title, root)
    try:
        constructor(root=str(root), train=train, download=True)
    except Exception as error:  # no network, a proxy, a bad checksum, a read-only directory ...
        layout = _CIFAR[kind]
        raise DataError(
            f"{layout.title} not found under '{root}' (expected {_expected_files(layout)}) and "
            f"downloading it failed: {error}. Download the python version from "
            "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it there, or pass --data-dir"
        ) from None


def _read_pickle(path: Path) -> dict:
    """A CIFAR pickle; keys become `str` whether the file was written by Python 2 or 3."""
    try:
        with open(path, "rb") as file:
            content = pickle.load(file, encoding="bytes")
    except Exception as error:
        raise DataError(f"{path}: cannot read the CIFAR pickle ({error})") from None
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a dict in the CIFAR pickle, got {type(content).__name__}")
    return {_text(key): value for key, value in content.items()}


def _text(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _as_array(data: object):
    import numpy as np

    return np.ascontiguousarray(np.asarray(data, dtype=np.uint8))


# ---------------------------------------------------------------------------------------------
# ImageFolder, decoded once and cached


def cache_dir() -> Path:
    """Where decoded ImageFolder tensors are kept: $ATTDARTS_CACHE, else ~/.cache/attdarts."""
    if os.environ.get("ATTDARTS_CACHE"):
        return Path(os.environ["ATTDARTS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attdarts"


def _split_folder(root: Path, train: bool) -> Path:
    candidates = ("train",) if train else ("test", "val")
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise DataError(
        f"'{root}' is not an ImageFolder dataset: expected the subfolders "
        f"{root / 'train'} and {root / 'test'}, each with one folder of images per class"
    )


def _load_folder(root: Path, *, train: bool, workers: int = 0) -> ImageTensors:
    if not root.is_dir():
        raise DataError(f"dataset folder '{root}' does not exist")
    images, labels, classes = _decode_folder(_split_folder(root, train), workers)
    if train:
        mean, std = _channel_stats(images)
    else:  # normalise the test split with the training split's statistics
        train_images, _, train_classes = _decode_folder(_split_folder(root, True), workers)
        if train_classes != classes:
            raise DataError(f"'{root}': train/ and test/ have different class folders")
        mean, std = _channel_stats(train_images)
    return ImageTensors(images, labels, len(classes), mean, std, classes=classes,
                        name=f"folder:{root}")


def hidden(name: str) -> bool:
    """A file or folder that is not data: its name starts with '.' (macOS's .DS_Store and ._*
    resource forks, Jupyter's .ipynb_checkpoints/, editors' and version control's files)."""
    return name.startswith(".")


def image_folder(folder: str | os.PathLike, transform=None):
    """torchvision's ImageFolder over `folder` without hidden files and folders (`hidden`);
    how many it skipped is logged. Any ImageFolder of ours is listed here."""
    import torchvision
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    skipped = [0]

    class _Visible(torchvision.datasets.ImageFolder):
        def find_classes(self, directory):
            names = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
            skipped[0] += sum(hidden(name) for name in names)
            classes = [name for name in names if not hidden(name)]
            if not classes:
                raise FileNotFoundError(f"no class folders found in '{directory}'")
            return classes, {name: index for index, name in enumerate(classes)}

    def visible_image(path: str) -> bool:
        parts = Path(os.path.relpath(path, folder)).parts
        if any(hidden(part) for part in parts):
            skipped[0] += 1
            return False
        return has_file_allowed_extension(path, IMG_EXTENSIONS)

    listing = _Visible(str(folder), transform, is_valid_file=visible_image)
    if skipped[0]:
        log.info("%s: skipped %d hidden %s (names starting with '.', such as .DS_Store, ._* and "
                 ".ipynb_checkpoints): not images", folder, skipped[0],
                 "entry" if skipped[0] == 1 else "entries")
    return listing


def _decode_folder(folder: Path, workers: int) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    try:
        listing = image_folder(folder)
    except (FileNotFoundError, RuntimeError) as error:
        raise DataError(f"'{folder}': {error}") from None
    samples = listing.samples
    classes = tuple(listing.classes)
    signature = hashlib.sha256(str(folder.resolve()).encode())
    for path, label in samples:
        stat = os.stat(path)
        signature.update(f"{os.path.relpath(path, folder)}\0{label}\0{stat.st_size}\0"
                         f"{stat.st_mtime_ns}\n".encode())
    cached = cache_dir() / f"folder-{signature.hexdigest()[:24]}.pt"
    if cached.is_file():
        try:
            state = torch.load(cached, map_location="cpu", weights_only=True)
            return state["images"], state["labels"], tuple(state["classes"])
        except Exception as error:
            log.warning("ignoring unreadable cache %s (%s)", cached, error)

    import numpy as np

    from PIL import UnidentifiedImageError

    def decode(path: str):
        try:
            return np.asarray(listing.loader(path).convert("RGB"), dtype=np.uint8)
        except UnidentifiedImageError:
            raise DataError(f"{path}: not a readable image (unknown format or damaged header); "
                            "remove or replace the file") from None
        except (OSError, ValueError, SyntaxError) as error:  # PIL: truncated, broken chunks
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DataError(f"{path}: not a readable image ({reason}); remove or replace the "
                            "file") from None

    log.info("decoding %d images from %s (cached afterwards in %s)", len(samples), folder, cached)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        arrays = list(pool.map(decode, (path for path, _ in samples)))
    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
        first, *others = sorted(shapes)
        raise DataError(
            f"'{folder}': images have different sizes ({first[1]}x{first[0]} and "
            f"{others[0][1]}x{others[0][0]}); the in-memory loader needs one size (resize them)"
        )
    if not arrays:
        raise DataError(f"'{folder}': no images found")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    try:
        checkpoint.atomic_write(cached, lambda file: torch.save(
            {"images": images, "labels": labels, "classes": list(classes)}, file))
    except OSError as error:
        log.warning("could not cache decoded images in %s (%s)", cached, error)
    return images, labels, classes


def _channel_stats(images: Tensor) -> tuple[Stats, Stats]:
    """Per-channel mean and std of uint8 images, as fractions of 255."""
    values = images.permute(1, 0, 2, 3).reshape(3, -1).to(torch.float64) / 255.0
    mean = values.mean(dim=1)
    std = values.std(dim=1, unbiased=False)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)  # type: ignore[return-value]
