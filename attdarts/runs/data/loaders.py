"""Loaders for search and evaluation: augmentation on the device and the batch iterators.

A `DeviceLoader` holds a whole CIFAR-sized split on the training device, draws shuffled batches
from it and augments them there, vectorised over the batch, without per-step host
synchronisation. This is what lets the paper's network train at GPU speed; a Python-side
`DataLoader` with PIL transforms cannot feed a modern GPU with 32x32 images.

The augmentation is DARTS's evaluation recipe (and the search's, minus cutout): random crop 32
with 4 pixels of zero padding, horizontal flip, normalisation with the dataset's mean and std,
then cutout (Cutout, DeVries & Taylor 2017) of a 16x16 square zeroed *after* normalisation, its
centre uniform over the image and the square clipped at the borders.

ImageNet keeps a regular torch `DataLoader` with the DARTS transforms (random resized crop 224,
flip, colour jitter; test: resize 256, centre crop 224).
"""

from __future__ import annotations

import atexit
import hashlib
import math
import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from attdarts.recipes import MIN_BATCH_SIZE
from attdarts.runs import preemption
from attdarts.runs.data.datasets import (
    CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, DataError, DatasetSpec, ImageTensors,
    Stats, default_data_dir, image_folder, load_dataset, parse_spec, split,
)


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
        self.dataset = image_folder(folder, transform)  # hidden files skipped
        self.num_classes = len(self.dataset.classes)
        self.classes = tuple(self.dataset.classes)
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
            persistent_workers=workers > 0,
            # the workers leave SIGTERM / SIGUSR1 / SIGINT to the main process, which saves and
            # stops; a worker killed by the process group's signal would end the run with an error
            worker_init_fn=preemption.ignore_in_worker)
        if workers > 0:
            _with_workers(self.loader)

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
    classes: tuple[str, ...] = ()  # class names in label order (empty when unknown)


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
                                  IMAGENET_MEAN, IMAGENET_STD, loader.classes)
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
                              dataset.mean, dataset.std, tuple(dataset.classes))


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


def check_batch_size(batch_size: int, world_size: int = 1) -> None:
    """A global batch that divides among the processes, at least two images on each (batch
    normalisation in training mode needs two: `recipes.MIN_BATCH_SIZE`)."""
    if batch_size % world_size:
        raise DataError(f"--batch-size {batch_size} does not divide among {world_size} processes")
    if batch_size // world_size < MIN_BATCH_SIZE:
        raise DataError(f"--batch-size {batch_size} gives {batch_size // world_size} image per "
                        f"process; batch normalisation needs at least {MIN_BATCH_SIZE}")


def check_search_batch(size: int, *, portion: float, batch_size: int, world_size: int = 1) -> None:
    """A search's `batch_size` checked against a training split of `size` images: both halves
    (`split`) hold at least one batch."""
    check_batch_size(batch_size, world_size)
    cut = int(math.floor(portion * size))
    if min(cut, size - cut) < batch_size:
        raise DataError(
            f"the dataset has {size} training images: too few for two halves of at least one "
            f"batch of {batch_size} (lower --batch-size)")


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
    check_search_batch(len(dataset), portion=portion, batch_size=batch_size,
                       world_size=world_size)
    if shuffle_seed is not None:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(shuffle_seed))
        dataset = dataset.permuted(order)
    halves = split(dataset, portion)
    return tuple(DeviceLoader(
        half.images, half.labels, batch_size=batch_size, device=device, augment=augment,
        shuffle=True, drop_last=True, mean=half.mean, std=half.std,
        seed=derive_seed(seed, role), rank=rank, world_size=world_size, max_batches=max_batches)
        for half, role in zip(halves, ("weights", "architecture")))


# Loaders whose worker processes are still up. The workers ignore SIGTERM (above), so
# multiprocessing's own exit handler, which terminates daemon children with SIGTERM and then
# joins them, would wait forever for a persistent loader's workers that nothing shut down (a run
# stopped by a signal exits with its loaders still referenced). An exit handler registered after
# multiprocessing's runs before it and shuts those workers down the regular way.
_OPEN_LOADERS: weakref.WeakSet = weakref.WeakSet()


def _with_workers(loader: torch.utils.data.DataLoader) -> None:
    if not _OPEN_LOADERS and not getattr(_with_workers, "registered", False):
        atexit.register(shut_down_workers)
        _with_workers.registered = True  # type: ignore[attr-defined]
    _OPEN_LOADERS.add(loader)


def shut_down_workers() -> None:
    """Stop the worker processes of every loader that still has them (torch's own shutdown:
    each worker is told to end and joined)."""
    for loader in list(_OPEN_LOADERS):
        iterator = getattr(loader, "_iterator", None)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        _OPEN_LOADERS.discard(loader)
