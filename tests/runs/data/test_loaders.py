"""Augmentation and loaders (attdarts.runs.data.loaders)."""

from __future__ import annotations

import pytest
import torch
from helpers import write_cifar10

from attdarts.runs import data
from attdarts.runs.data import DataError


def test_normalisation_constants():
    assert data.CIFAR10_MEAN == (0.4914, 0.4822, 0.4465)
    assert data.CIFAR10_STD == (0.2470, 0.2435, 0.2616)
    assert data.CIFAR100_MEAN == (0.5071, 0.4867, 0.4408)
    assert data.CIFAR100_STD == (0.2675, 0.2565, 0.2761)
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    out = data.normalise(images, data.CIFAR10_MEAN, data.CIFAR10_STD)
    mean = torch.tensor(data.CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (images.float() / 255 - mean) / std)
    assert out.dtype == torch.float32


# --- augmentation ---------------------------------------------------------------------------


def test_random_crop_shifts_content_with_zero_padding():
    batch = 256
    images = torch.zeros(batch, 3, 32, 32, dtype=torch.uint8)
    images[:, :, 10, 20] = 200  # one marked pixel
    generator = torch.Generator().manual_seed(0)
    cropped = data.random_crop(images, 4, generator)
    assert cropped.shape == images.shape and cropped.dtype == torch.uint8
    shifts = set()
    for sample in cropped:
        where = (sample[0] == 200).nonzero()
        assert where.shape[0] == 1
        dy, dx = int(where[0, 0]) - 10, int(where[0, 1]) - 20
        assert -4 <= dy <= 4 and -4 <= dx <= 4
        shifts.add((dy, dx))
        assert torch.equal(sample[:, 10 + dy, 20 + dx], torch.full((3,), 200, dtype=torch.uint8))
    assert len(shifts) > 40  # offsets are drawn per sample, over the whole 9x9 range
    # content moves as one block: the rest is zero padding (at most 4 rows and 4 columns)
    full = torch.full((256, 1, 8, 8), 7, dtype=torch.uint8)
    out = data.random_crop(full, 4, torch.Generator().manual_seed(1))
    for sample in out:
        kept = sample[0] == 7
        height, width = int(kept.any(dim=1).sum()), int(kept.any(dim=0).sum())
        assert 4 <= height <= 8 and 4 <= width <= 8
        assert int(kept.sum()) == height * width and int((sample == 0).sum()) == 64 - height * width
    assert int((out == 0).sum()) > 0


def test_random_flip_flips_about_half():
    images = torch.arange(128 * 3 * 4 * 4, dtype=torch.float32).view(128, 3, 4, 4)
    out = data.random_flip(images, torch.Generator().manual_seed(0))
    flipped = 0
    for original, result in zip(images, out):
        if torch.equal(result, original.flip(2)):
            flipped += 1
        else:
            assert torch.equal(result, original)
    assert 40 < flipped < 88


def test_cutout_zeroes_a_clipped_square():
    generator = torch.Generator().manual_seed(0)
    images = torch.ones(500, 3, 32, 32)
    out = data.cutout(images, 16, generator)
    sizes = set()
    for sample in out:
        hole = sample[0] == 0
        assert torch.equal(hole, sample[1] == 0)  # same square in every channel
        rows = hole.any(dim=1).nonzero().flatten()
        columns = hole.any(dim=0).nonzero().flatten()
        height, width = len(rows), len(columns)
        assert 8 <= height <= 16 and 8 <= width <= 16  # centre inside the image, clipped at edges
        assert int(hole.sum()) == height * width  # a rectangle
        assert rows.tolist() == list(range(int(rows[0]), int(rows[0]) + height))
        sizes.add((height, width))
    assert (16, 16) in sizes and any(s != (16, 16) for s in sizes)


def test_loader_cutout_comes_after_normalisation():
    images = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)  # normalised value > 0
    loader = data.DeviceLoader(images, torch.zeros(64, dtype=torch.int64), batch_size=64,
                               device="cpu", augment=True, cutout=16, padding=0,
                               mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD, seed=3)
    (batch, _), = list(loader)
    top = (1 - torch.tensor(data.CIFAR10_MEAN)) / torch.tensor(data.CIFAR10_STD)
    for sample in batch:
        hole = sample == 0
        assert 64 <= int(hole[0].sum()) <= 256
        torch.testing.assert_close(sample[~hole].view(-1).unique().sort().values,
                                   top.sort().values)


def test_loader_without_augmentation_is_plain_normalisation():
    dataset = data.synthetic_dataset(train=False, size=10)
    loader = data.DeviceLoader(dataset.images, dataset.labels, batch_size=4, device="cpu",
                               augment=False, mean=dataset.mean, std=dataset.std)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    out = torch.cat([b[0] for b in batches])
    torch.testing.assert_close(out, data.normalise(dataset.images, dataset.mean, dataset.std))
    assert torch.equal(torch.cat([b[1] for b in batches]), dataset.labels)


def _sample_ids(loader) -> list[list[int]]:
    return [labels.tolist() for _, labels in loader]


def test_loader_shuffles_reproducibly_and_drops_last():
    count = 50
    images = torch.zeros(count, 3, 8, 8, dtype=torch.uint8)
    ids = torch.arange(count)  # labels double as sample ids

    def make(**kwargs):
        return data.DeviceLoader(images, ids, batch_size=8, device="cpu", augment=True,
                                 mean=(0.5,) * 3, std=(0.5,) * 3, seed=7, **kwargs)

    loader = make()
    assert len(loader) == 6
    epoch0 = _sample_ids(loader)
    flat = [i for batch in epoch0 for i in batch]
    assert len(flat) == 48 and len(set(flat)) == 48
    assert flat != sorted(flat)
    loader.set_epoch(1)
    epoch1 = _sample_ids(loader)
    assert epoch1 != epoch0
    again = make()
    again.set_epoch(1)
    assert _sample_ids(again) == epoch1
    # state_dict captures the streams mid-way
    state = again.state_dict()
    following = _sample_ids(again)
    again.load_state_dict(state)
    assert _sample_ids(again) == following
    assert len(make(max_batches=2)) == 2


def test_loader_shards_global_batches_across_ranks():
    count = 40
    images = torch.zeros(count, 3, 8, 8, dtype=torch.uint8)
    ids = torch.arange(count)
    common = dict(device="cpu", mean=(0.5,) * 3, std=(0.5,) * 3, seed=1)
    alone = _sample_ids(data.DeviceLoader(images, ids, batch_size=8, augment=True, **common))
    ranks = [_sample_ids(data.DeviceLoader(images, ids, batch_size=8, augment=True, rank=r,
                                           world_size=2, **common)) for r in range(2)]
    for step, batch in enumerate(alone):
        assert ranks[0][step] + ranks[1][step] == batch
    # evaluation shards cover the split exactly once
    shards = [_sample_ids(data.DeviceLoader(images[:13], ids[:13], batch_size=4, augment=False,
                                            rank=r, world_size=2, **common)) for r in range(2)]
    covered = sorted(i for shard in shards for batch in shard for i in batch)
    assert covered == list(range(13))
    with pytest.raises(ValueError, match="does not divide"):
        data.DeviceLoader(images, ids, batch_size=9, augment=True, world_size=2, **common)


def test_make_loader_for_cifar_files(tmp_path):
    write_cifar10(tmp_path, per_file=12)
    loader, info = data.make_loader("cifar10", tmp_path, train=True, batch_size=16, device="cpu",
                                    cutout=16, download=False)
    assert info.num_classes == 10 and not info.synthetic and info.num_samples == 60
    assert len(loader) == 3
    images, labels = next(iter(loader))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64


def test_permuted_reorders_images_and_labels_together():
    dataset = data.synthetic_dataset(train=True, size=6, resolution=4)
    order = torch.tensor([5, 0, 3, 1, 4, 2])
    permuted = dataset.permuted(order)
    assert torch.equal(permuted.images, dataset.images[order])
    assert torch.equal(permuted.labels, dataset.labels[order])
    assert (permuted.num_classes, permuted.mean, permuted.synthetic) == (
        dataset.num_classes, dataset.mean, dataset.synthetic)


def test_search_loaders_cut_the_split_and_refuse_tiny_halves():
    dataset = data.synthetic_dataset(train=True, size=20, resolution=8)
    weights, architecture = data.search_loaders(
        dataset, portion=0.5, batch_size=4, device=torch.device("cpu"), augment=False, seed=1)
    assert (len(weights), len(architecture)) == (2, 2)
    first, second = data.split(dataset, 0.5)
    assert torch.equal(weights.images, first.images) and torch.equal(architecture.images, second.images)
    assert weights.shuffle and weights.drop_last and weights.seed != architecture.seed
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    shuffled, _ = data.search_loaders(
        dataset, portion=0.5, batch_size=4, device=torch.device("cpu"), augment=False, seed=1,
        shuffle_seed=0)
    assert torch.equal(shuffled.images, dataset.images[order][:10])
    with pytest.raises(DataError, match="too few for two halves"):
        data.search_loaders(dataset, portion=0.5, batch_size=16, device=torch.device("cpu"),
                            augment=False, seed=1)
