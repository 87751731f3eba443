"""Datasets and loaders for search and evaluation.

CIFAR-sized data (CIFAR-10/100, any 32x32 ImageFolder, synthetic tensors) is small: the whole
split is held as one uint8 tensor on the training device, and a `DeviceLoader` draws shuffled
batches from it and augments them there, vectorised over the batch, without per-step host
synchronisation. This is what lets the paper's network train at GPU speed; a Python-side
`DataLoader` with PIL transforms cannot feed a modern GPU with 32x32 images.

The augmentation is DARTS's evaluation recipe (and the search's, minus cutout): random crop 32
with 4 pixels of zero padding, horizontal flip, normalisation with the dataset's mean and std,
then cutout (Cutout, DeVries & Taylor 2017) of a 16x16 square zeroed *after* normalisation, its
centre uniform over the image and the square clipped at the borders.

ImageNet keeps a regular torch `DataLoader` with the DARTS transforms (random resized crop 224,
flip, colour jitter; test: resize 256, centre crop 224).

Dataset specs: `cifar10`, `cifar100`, `imagenet`, `folder:PATH` (ImageFolder with `train/` and
`test/`), `synthetic` (random images with random labels, for smoke runs only).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

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

KINDS = ("cifar10", "cifar100", "imagenet", "folder", "synthetic")
SPEC_HELP = "cifar10, cifar100, imagenet, synthetic or folder:PATH"


class DataError(Exception):
    """A dataset that cannot be found, downloaded or read; the message says what was expected."""


@dataclass(frozen=True)
class DatasetSpec:
    kind: Literal["cifar10", "cifar100", "imagenet", "folder", "synthetic"]
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
    if text.lower() in KINDS and text.lower() != "folder":
        return DatasetSpec(text.lower())  # type: ignore[arg-type]
    raise DataError(f"unknown dataset '{spec}': expected {SPEC_HELP}")


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
    if spec.kind in ("cifar10", "cifar100"):
        return _load_cifar(spec.kind, root, train=train, download=download)
    if spec.kind == "folder":
        return _load_folder(Path(spec.path), train=train, workers=workers)  # type: ignore[arg-type]
    if spec.kind == "synthetic":
        return synthetic_dataset(train=train)
    raise DataError(
        "imagenet is not held in memory; build its loader with make_loader('imagenet', ...)"
    )


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


def _decode_folder(folder: Path, workers: int) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    import torchvision

    try:
        listing = torchvision.datasets.ImageFolder(str(folder))
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


# ---------------------------------------------------------------------------------------------
# Augmentation on the device, vectorised over the batch


def random_crop(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Pad with zeros by `padding` on every side, then cut one random HxW window per sample."""
    if padding <= 0:
        return images
    batch, channels, height, width = images.shape
    padded = images.new_zeros(batch, channels, height + 2 * padding, width + 2 * padding)
    padded[:, :, padding:padding + height, padding:padding + width] = images
    device = images.device
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
    rows = top[:, None] + torch.arange(height, device=device)  # (batch, height)
    columns = left[:, None] + torch.arange(width, device=device)  # (batch, width)
    samples = torch.arange(batch, device=device)[:, None, None]
    # advanced indices around a slice: the result is (batch, height, width, channels)
    cropped = padded[samples, :, rows[:, :, None], columns[:, None, :]]
    return cropped.permute(0, 3, 1, 2)


def random_flip(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each sample left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def normalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (or [0, 255] float) images -> float32 `(x / 255 - mean) / std`."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean_t) / std_t


def cutout(images: Tensor, length: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero one `length` x `length` square per sample (after normalisation, as DARTS does).

    The centre is uniform over all pixels; the square is clipped at the borders, exactly like
    DARTS's `Cutout`: rows `clip(y - length // 2, 0, h)` up to `clip(y + length // 2, 0, h)`.
    """
    if length <= 0:
        return images
    batch, _, height, width = images.shape
    device = images.device
    centre_y = torch.randint(0, height, (batch, 1), generator=generator, device=device)
    centre_x = torch.randint(0, width, (batch, 1), generator=generator, device=device)
    rows = torch.arange(height, device=device)[None, :]
    columns = torch.arange(width, device=device)[None, :]
    in_rows = (rows >= centre_y - length // 2) & (rows < centre_y + length // 2)  # (batch, height)
    in_columns = (columns >= centre_x - length // 2) & (columns < centre_x + length // 2)
    hole = in_rows[:, :, None] & in_columns[:, None, :]  # (batch, height, width)
    return images.masked_fill(hole[:, None], 0.0)


# ---------------------------------------------------------------------------------------------
# Loaders


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from a tuple of parts: independent streams per (seed, epoch, rank, role)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device) if device.type == "cuda" else torch.Generator()


class DeviceLoader:
    """Batches drawn from a dataset held on the device, augmented there.

    `batch_size` is the global batch: under data parallelism each of the `world_size` ranks takes
    its `batch_size // world_size` slice of every shuffled global batch, so the recipe (batch 96
    in the paper) does not change with the number of GPUs. For evaluation (`drop_last=False`,
    no shuffle) each rank takes every `world_size`-th sample instead, so the shards cover the split
    exactly once. The shuffle order is the same on every rank (seeded from `seed` and the epoch);
    the augmentation draws differ per rank.

    `set_epoch(e)` reseeds both streams from (seed, e, rank), so resuming at an epoch boundary
    reproduces the uninterrupted run; `state_dict()` captures the streams mid-way as well.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        device: torch.device | str,
        augment: bool,
        mean: Sequence[float],
        std: Sequence[float],
        cutout: int = 0,
        padding: int = 4,
        seed: int = 0,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        max_batches: int | None = None,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if batch_size % world_size:
            raise ValueError(f"the batch size {batch_size} does not divide among {world_size} ranks")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.augment = augment
        self.cutout = cutout
        self.padding = padding
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.seed = seed
        self.shuffle = augment if shuffle is None else shuffle
        self.drop_last = augment if drop_last is None else drop_last
        self.rank = rank
        self.world_size = world_size
        self.max_batches = max_batches
        self.channels_last = channels_last
        self._order = _generator(self.device)
        self._augment = _generator(self.device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self._order.manual_seed(derive_seed(self.seed, epoch, "order"))
        self._augment.manual_seed(derive_seed(self.seed, epoch, self.rank, "augment"))

    def state_dict(self) -> dict:
        return {"order": self._order.get_state(), "augment": self._augment.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._order.set_state(state["order"].cpu())
        self._augment.set_state(state["augment"].cpu())

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        if self.drop_last:
            count = self.num_samples // self.batch_size
        else:
            shard = len(range(self.rank, self.num_samples, self.world_size))
            count = math.ceil(shard / self.local_batch_size)
        return count if self.max_batches is None else min(count, self.max_batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=self._order, device=self.device)
        else:
            order = torch.arange(self.num_samples, device=self.device)
        if not self.drop_last:
            order = order[self.rank::self.world_size]
        local = self.local_batch_size
        for step in range(len(self)):
            if self.drop_last:
                start = step * self.batch_size + self.rank * local
            else:
                start = step * local
            index = order[start:start + local]
            yield self.transform(self.images[index]), self.labels[index]

    def transform(self, images: Tensor) -> Tensor:
        """uint8 batch -> normalised float32 batch, augmented when training."""
        if self.augment:
            images = random_crop(images, self.padding, self._augment)
            images = random_flip(images, self._augment)
        images = normalise(images, self.mean, self.std)
        if self.augment and self.cutout > 0:
            images = cutout(images, self.cutout, self._augment)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.contiguous(memory_format=memory_format)


class ImageNetLoader:
    """ImageNet through torchvision's ImageFolder and a worker-process DataLoader (DARTS recipe)."""

    def __init__(
        self,
        root: Path,
        *,
        train: bool,
        batch_size: int,
        device: torch.device | str,
        seed: int = 0,
        workers: int = 4,
        rank: int = 0,
        world_size: int = 1,
        max_batches: int | None = None,
        channels_last: bool = False,
    ) -> None:
        import torchvision
        from torchvision import transforms

        folder = root / ("train" if train else "val")
        if not folder.is_dir():
            raise DataError(f"ImageNet not found: expected the ImageFolder directories "
                            f"{root / 'train'} and {root / 'val'} (one folder per class)")
        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        if train:
            transform = transforms.Compose([
                transforms.RandomResizedCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
                transforms.ToTensor(),
                normalize,
            ])
        else:
            transform = transforms.Compose([
                transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize,
            ])
        self.dataset = torchvision.datasets.ImageFolder(str(folder), transform)
        self.num_classes = len(self.dataset.classes)
        if not train and max_batches is not None:  # a capped evaluation: a fixed random subset
            keep = evaluation_subset(len(self.dataset), max_batches * batch_size, seed)
            self.dataset = torch.utils.data.Subset(self.dataset, keep.tolist())
            max_batches = None
        self.device = torch.device(device)
        self.max_batches = max_batches
        self.channels_last = channels_last
        self.sampler = torch.utils.data.DistributedSampler(
            self.dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
            drop_last=train)
        if batch_size % world_size:
            raise ValueError(f"the batch size {batch_size} does not divide among {world_size} ranks")
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=batch_size // world_size, sampler=self.sampler,
            num_workers=workers, pin_memory=self.device.type == "cuda", drop_last=train,
            persistent_workers=workers > 0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __len__(self) -> int:
        count = len(self.loader)
        return count if self.max_batches is None else min(count, self.max_batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for step, (images, labels) in enumerate(self.loader):
            if step >= len(self):
                break
            images = images.to(self.device, non_blocking=True)
            yield images.contiguous(memory_format=memory_format), labels.to(self.device, non_blocking=True)


@dataclass
class LoaderInfo:
    """What the training loop needs to know about a dataset besides its batches."""

    num_classes: int
    synthetic: bool
    num_samples: int
    mean: Stats = field(default=CIFAR10_MEAN)
    std: Stats = field(default=CIFAR10_STD)


def make_loader(
    spec: str | DatasetSpec,
    data_dir: str | os.PathLike | None,
    *,
    train: bool,
    batch_size: int,
    device: torch.device | str,
    seed: int = 0,
    cutout: int = 0,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    max_batches: int | None = None,
    channels_last: bool = False,
    download: bool = True,
) -> tuple[DeviceLoader | ImageNetLoader, LoaderInfo]:
    """The loader of one split, for any dataset spec, and a description of the data."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "imagenet":
        root = Path(data_dir) if data_dir is not None else default_data_dir(spec)
        loader = ImageNetLoader(root, train=train, batch_size=batch_size, device=device, seed=seed,
                                workers=workers, rank=rank, world_size=world_size,
                                max_batches=max_batches, channels_last=channels_last)
        return loader, LoaderInfo(loader.num_classes, False, len(loader.dataset),
                                  IMAGENET_MEAN, IMAGENET_STD)
    dataset = load_dataset(spec, data_dir, train=train, download=download, workers=workers)
    images, labels = dataset.images, dataset.labels
    if not train and max_batches is not None:
        keep = evaluation_subset(len(dataset), max_batches * batch_size, seed)
        images, labels, max_batches = images[keep], labels[keep], None
    loader = DeviceLoader(
        images, labels, batch_size=batch_size, device=device, augment=train,
        cutout=cutout if train else 0, mean=dataset.mean, std=dataset.std, seed=seed, rank=rank,
        world_size=world_size, max_batches=max_batches, channels_last=channels_last)
    return loader, LoaderInfo(dataset.num_classes, dataset.synthetic, len(dataset),
                              dataset.mean, dataset.std)


def evaluation_subset(size: int, count: int, seed: int) -> Tensor:
    """Indices of a capped evaluation: `count` of the split's `size` samples drawn at random
    (seeded, the same every epoch), in split order.

    Test splits are usually stored class by class, so their first `count` samples would score
    one or two classes; a random subset estimates the whole split's accuracy.
    """
    if count >= size:
        return torch.arange(size)
    generator = torch.Generator().manual_seed(derive_seed(seed, "evaluation subset"))
    return torch.randperm(size, generator=generator)[:count].sort().values


def search_loaders(
    dataset: ImageTensors,
    *,
    portion: float,
    batch_size: int,
    device: torch.device,
    augment: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    max_batches: int | None = None,
    shuffle_seed: int | None = None,
) -> tuple[DeviceLoader, DeviceLoader]:
    """The search's two loaders: the first `portion` of `dataset` trains the weights, the rest
    the architecture (`split`). `shuffle_seed` shuffles the samples once before the cut (an
    ImageFolder lists its images class by class). Both get the search augmentation (crop, flip,
    no cutout) when `augment`; each draws from its own stream, seeded from `seed` and its role."""
    if shuffle_seed is not None:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(shuffle_seed))
        dataset = dataset.permuted(order)
    halves = split(dataset, portion)
    if any(len(half) < batch_size for half in halves):
        raise DataError(
            f"the dataset has {len(dataset)} training images: too few for two halves of at least "
            f"one batch of {batch_size}")
    return tuple(DeviceLoader(
        half.images, half.labels, batch_size=batch_size, device=device, augment=augment,
        shuffle=True, drop_last=True, mean=half.mean, std=half.std,
        seed=derive_seed(seed, role), rank=rank, world_size=world_size, max_batches=max_batches)
        for half, role in zip(halves, ("weights", "architecture")))
