"""Datasets in memory (attdarts.runs.data.datasets): CIFAR files, ImageFolder, specs, split."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from attdarts.runs import data
from attdarts.runs.data import DataError


def write_cifar(root: Path, kind: str = "cifar10", per_file: int = 12, seed: int = 0) -> Path:
    """Small files in the real on-disk CIFAR format (Python pickles of dicts with bytes keys)."""
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        folder, label_key = root / "cifar-10-batches-py", b"labels"
        files = {f"data_batch_{i}": per_file for i in range(1, 6)} | {"test_batch": per_file}
        meta_name, meta = "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)],
                                           b"num_vis": 3072}
        classes = 10
    else:
        folder, label_key = root / "cifar-100-python", b"fine_labels"
        files = {"train": 5 * per_file, "test": per_file}
        meta_name, meta = "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                   b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}
        classes = 100
    folder.mkdir(parents=True)
    for name, count in files.items():
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            label_key: [int(v) for v in rng.integers(0, classes, count)],
            b"filenames": [f"{name}_{i}.png".encode() for i in range(count)],
        }
        if kind == "cifar100":
            batch[b"coarse_labels"] = [v // 5 for v in batch[label_key]]
        with open(folder / name, "wb") as file:
            pickle.dump(batch, file)
    with open(folder / meta_name, "wb") as file:
        pickle.dump(meta, file)
    return folder


def write_image_folder(root: Path, per_class: int = 4, size: int = 32, classes=("cat", "dog")) -> dict:
    """ImageFolder with PNGs (lossless, so decoded pixels can be compared exactly)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = {}
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for index in range(per_class):
                array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                path = root / split / name / f"{index:03d}.png"
                Image.fromarray(array).save(path)
                pixels[path] = array
    return pixels


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTDARTS_CACHE", str(tmp_path / "cache"))


# --- loading --------------------------------------------------------------------------------


def test_cifar10_files_load(tmp_path):
    folder = write_cifar(tmp_path)
    train = data.load_dataset("cifar10", tmp_path, train=True, download=False)
    test = data.load_dataset("cifar10", tmp_path, train=False, download=False)
    assert train.images.shape == (60, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (12, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and train.num_classes == 10
    assert train.classes[:2] == ("class0", "class1")
    assert not train.synthetic
    # the row layout is R plane, G plane, B plane of 32x32 each
    with open(folder / "data_batch_1", "rb") as file:
        raw = pickle.load(file)
    assert torch.equal(train.images[0, 1].flatten(), torch.from_numpy(raw[b"data"][0, 1024:2048]))
    assert train.labels[:12].tolist() == raw[b"labels"]
    # --data-dir may also name the batch folder itself
    again = data.load_dataset("cifar10", folder, train=False, download=False)
    assert torch.equal(again.images, test.images)


def test_cifar100_files_load(tmp_path):
    write_cifar(tmp_path, "cifar100")
    train = data.load_dataset("cifar100", tmp_path, train=True, download=False)
    assert train.images.shape == (60, 3, 32, 32) and train.num_classes == 100
    assert train.mean == data.CIFAR100_MEAN and train.std == data.CIFAR100_STD
    assert train.classes[3] == "f3"


def test_missing_cifar_names_the_expected_files(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py/data_batch_1\.\.5, test_batch"):
        data.load_dataset("cifar10", tmp_path, train=True, download=False)
    with pytest.raises(DataError, match=r"cifar-100-python/train, test"):
        data.load_dataset("cifar100", tmp_path, train=False, download=False)


def test_corrupt_cifar_pickle_is_a_data_error(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="test_batch"):
        data.load_dataset("cifar10", tmp_path, train=False, download=False)


def test_image_folder_decodes_exactly_and_caches(tmp_path):
    pixels = write_image_folder(tmp_path / "images")
    train = data.load_dataset(f"folder:{tmp_path / 'images'}", None, train=True)
    test = data.load_dataset(f"folder:{tmp_path / 'images'}", None, train=False)
    assert train.images.shape == (8, 3, 32, 32) and test.images.shape == (8, 3, 32, 32)
    assert train.classes == ("cat", "dog") and train.num_classes == 2
    assert train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    first = pixels[tmp_path / "images" / "train" / "cat" / "000.png"]
    assert torch.equal(train.images[0].permute(1, 2, 0), torch.from_numpy(first))
    # the test split is normalised with the training split's statistics
    assert test.mean == train.mean and test.std == train.std
    everything = torch.from_numpy(np.stack([pixels[p] for p in sorted(pixels) if "train" in p.parts]))
    expected_mean = (everything.double() / 255).mean(dim=(0, 1, 2))
    assert train.mean == pytest.approx(tuple(expected_mean.tolist()), abs=1e-4)
    assert len(list((tmp_path / "cache").glob("folder-*.pt"))) == 2
    cached = data.load_dataset(f"folder:{tmp_path / 'images'}", None, train=True)
    assert torch.equal(cached.images, train.images)


def test_image_folder_problems(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_dataset(f"folder:{tmp_path / 'nothing'}", None, train=True)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="train"):
        data.load_dataset(f"folder:{tmp_path / 'flat'}", None, train=True)
    from PIL import Image

    for index, size in enumerate((32, 28)):
        (tmp_path / "mixed" / "train" / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size)).save(tmp_path / "mixed" / "train" / "a" / f"{index}.png")
    with pytest.raises(DataError, match="different sizes"):
        data.load_dataset(f"folder:{tmp_path / 'mixed'}", None, train=True)


@pytest.mark.parametrize("damage", ["truncated jpeg", "text named .jpg", "empty jpeg"])
def test_unreadable_image_is_a_data_error_naming_the_file(tmp_path, damage):
    import io

    from PIL import Image
    from click.testing import CliRunner

    from attdarts.cli import cli

    write_image_folder(tmp_path / "images", per_class=2)
    bad = tmp_path / "images" / "train" / "dog" / "bad.jpg"
    if damage == "truncated jpeg":
        buffer = io.BytesIO()
        noise = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(noise).save(buffer, format="JPEG")
        bad.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif damage == "text named .jpg":
        bad.write_text("this is not an image\n")
    else:
        bad.write_bytes(b"")
    with pytest.raises(DataError, match=f"{bad}: not a readable image"):
        data.load_dataset(f"folder:{tmp_path / 'images'}", None, train=True)
    root = Path(__file__).resolve().parents[3]
    result = CliRunner().invoke(cli, [
        "train", str(root / "genotypes" / "darts_v2.geno"), "--dataset",
        f"folder:{tmp_path / 'images'}", "--channels", "4", "--layers", "3", "--epochs", "1",
        "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and str(bad) in result.output


def test_hidden_files_and_folders_are_not_data(tmp_path, caplog):
    """macOS's .DS_Store and ._* resource forks, Jupyter's .ipynb_checkpoints: skipped, and
    counted in the log, instead of failing on '._0.png: not a readable image' (issue 19, 5.8)."""
    import logging

    write_image_folder(tmp_path / "images", per_class=2)
    train = tmp_path / "images" / "train"
    for name in ("cat", "dog"):
        (train / name / "._000.png").write_bytes(b"\x00\x05\x16\x07 not a picture")
        (train / name / ".DS_Store").write_bytes(b"Bud1")
    (train / ".ipynb_checkpoints").mkdir()  # would be a class
    (train / "cat" / ".ipynb_checkpoints").mkdir()
    (train / "cat" / ".ipynb_checkpoints" / "000-checkpoint.png").write_bytes(b"broken")
    (train / ".DS_Store").write_bytes(b"Bud1")
    with caplog.at_level(logging.INFO, logger="attdarts"):
        dataset = data.load_dataset(f"folder:{tmp_path / 'images'}", None, train=True)
    assert dataset.classes == ("cat", "dog") and len(dataset) == 4
    assert f"{train}: skipped 6 hidden entries" in caplog.text


def test_specs():
    assert data.parse_spec("CIFAR10").kind == "cifar10"
    assert data.parse_spec("folder:/x/y") == data.DatasetSpec("folder", "/x/y")
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        data.parse_spec("mnist")
    with pytest.raises(DataError, match="needs a path"):
        data.parse_spec("folder:")


def test_synthetic_is_labelled():
    dataset = data.load_dataset("synthetic", None, train=True)
    assert dataset.synthetic and dataset.images.dtype == torch.uint8 and len(dataset) > 0


def test_split_is_first_half_then_second():
    dataset = data.synthetic_dataset(train=True, size=11)
    first, second = data.split(dataset)
    assert len(first) == 5 and len(second) == 6
    assert torch.equal(torch.cat([first.labels, second.labels]), dataset.labels)
    assert first.mean == dataset.mean
