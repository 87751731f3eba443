"""`attdarts predict` and `attdarts.predict`: top-k classes of image files, from a training run,
its checkpoint, or an exported .onnx / .pt2 file, preprocessed as the model's metadata says.

One tiny run (C=4, L=3, one step on cifar10-mini, whose class names it records) serves the
module; exporting it to ONNX takes a few seconds, to .pt2 longer (those tests are slow).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.cli import cli

torch = pytest.importorskip("torch")

from attdarts import api  # noqa: E402
from attdarts.networks.export import Preprocessing  # noqa: E402
from attdarts.runs.data.datasets import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from attdarts.runs.predict import (  # noqa: E402
    PredictError, checkpoint_preprocessing, read_image,
)

MINI = Path(__file__).resolve().parents[2] / "attdarts" / "data" / "cifar10-mini" / "test"
IMAGES = [MINI / "cat" / "0000.jpg", MINI / "ship" / "0001.jpg", MINI / "frog" / "0002.jpg"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("predict") / "run"
    api.train("darts_v2", out=directory, dataset="cifar10-mini", epochs=1, channels=4, layers=3,
              batch_size=8, max_steps_per_epoch=1, device="cpu")
    return directory


def _predict(*args):
    return CliRunner().invoke(cli, ["predict", *map(str, args)])


def _reference(run: Path, images, top_k: int):
    """Top-k (class, probability) of each image by the PyTorch network, preprocessed by hand:
    the 32x32 test images need no resizing; pixels / 255, then the checkpoint's mean and std."""
    import numpy as np
    from PIL import Image

    network = api.load_network(run).network
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
                          .permute(2, 0, 1).float() / 255 for path in images])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CIFAR10_MEAN, CIFAR10_STD))
    with torch.no_grad():
        probabilities = torch.softmax(network((pixels - mean) / std).double(), dim=1)
    values, indices = probabilities.topk(top_k, dim=1)
    return [[(CIFAR10_CLASSES[i], v) for v, i in zip(row_v.tolist(), row_i.tolist())]
            for row_v, row_i in zip(values, indices)]


def _parsed(output: str) -> list[list[tuple[str, float]]]:
    """The text output: `IMAGE: class p, class p, ...` per line."""
    rows = []
    for line in output.strip().splitlines():
        _, shown = line.rsplit(": ", 1)
        rows.append([(item.rsplit(" ", 1)[0], float(item.rsplit(" ", 1)[1]))
                     for item in shown.split(", ")])
    return rows


def test_a_run_and_its_checkpoint_print_the_top_k_class_names(run, one_thread):
    expected = _reference(run, IMAGES, 3)
    for model in (run, run / "last.pt"):
        outcome = _predict(model, *IMAGES, "--top-k", "3")
        assert outcome.exit_code == 0, outcome.output
        lines = outcome.output.strip().splitlines()
        assert [line.split(": ")[0] for line in lines] == [str(path) for path in IMAGES]
        for got, want in zip(_parsed(outcome.output), expected):
            assert [name for name, _ in got] == [name for name, _ in want]
            assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-3)


def test_json_gives_index_name_and_probability(run, one_thread):
    outcome = _predict(run, IMAGES[0], "--json", "-k", "20")  # k above the class count: all 10
    assert outcome.exit_code == 0, outcome.output
    (record,) = json.loads(outcome.output)
    assert record["image"] == str(IMAGES[0]) and len(record["top"]) == 10
    assert sum(entry["probability"] for entry in record["top"]) == pytest.approx(1.0)
    assert all(CIFAR10_CLASSES[entry["index"]] == entry["class"] for entry in record["top"])
    probabilities = [entry["probability"] for entry in record["top"]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_an_exported_onnx_file_predicts_what_its_run_predicts(run, tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    expected = _reference(run, IMAGES, 2)
    for extra in ((), ("--normalise-in-graph",)):
        output = tmp_path / f"model{len(extra)}.onnx"
        assert CliRunner().invoke(cli, ["export-model", str(run), "-o", str(output),
                                        *extra]).exit_code == 0
        outcome = _predict(output, *IMAGES, "-k", "2")
        assert outcome.exit_code == 0, outcome.output
        for got, want in zip(_parsed(outcome.output), expected):
            assert [name for name, _ in got] == [name for name, _ in want]
            assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-3)


@pytest.mark.slow
def test_an_exported_pt2_file_with_a_fixed_batch_predicts_what_its_run_predicts(run, tmp_path,
                                                                                 one_thread):
    expected = _reference(run, IMAGES, 2)
    output = tmp_path / "model.pt2"
    assert CliRunner().invoke(cli, ["export-model", str(run), "-o", str(output), "--batch", "2",
                                    "--no-verify"]).exit_code == 0
    outcome = _predict(output, *IMAGES, "-k", "2")  # 3 images through a batch of 2: padded
    assert outcome.exit_code == 0, outcome.output
    for got, want in zip(_parsed(outcome.output), expected):
        assert [name for name, _ in got] == [name for name, _ in want]
        assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-3)


def test_errors_are_one_line_naming_the_file(run, tmp_path, one_thread):
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "model.txt").write_text("")
    (tmp_path / "empty.onnx").write_bytes(b"")
    cases = [
        ((run, tmp_path / "notes.png"), f"{tmp_path / 'notes.png'}: not a readable image"),
        ((run, IMAGES[0], tmp_path / "missing.jpg"), f"{tmp_path / 'missing.jpg'}: no such file"),
        ((run, tmp_path), f"{tmp_path}: a directory, not an image"),
        ((tmp_path / "model.txt", IMAGES[0]), "not a model; expected a training run directory"),
        ((tmp_path / "empty.onnx", IMAGES[0]), f"{tmp_path / 'empty.onnx'}: cannot load"),
        ((tmp_path / "gone.pt2", IMAGES[0]), f"{tmp_path / 'gone.pt2'}: no such file"),
    ]
    for args, message in cases:
        outcome = _predict(*args)
        assert outcome.exit_code == 1, (args, outcome.output)
        assert message in outcome.output and len(outcome.output.strip().splitlines()) == 1, (
            args, outcome.output)
        assert "Traceback" not in outcome.output
    assert _predict(run).exit_code == 2  # no image: a usage error


def test_without_class_names_the_indices_are_shown_with_a_note(tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    output = tmp_path / "c100.onnx"
    assert CliRunner().invoke(cli, ["export-model", "darts_v2", "-o", str(output), "--dataset",
                                    "cifar100", "--channels", "4", "--layers", "3",
                                    "--no-verify"]).exit_code == 0
    outcome = _predict(output, IMAGES[0], "-k", "2")
    assert outcome.exit_code == 0, outcome.output
    assert "has no class names; classes are shown by index" in outcome.stderr
    (row,) = _parsed(outcome.stdout)
    assert [name.split(" ")[0] for name, _ in row] == ["class", "class"]
    assert all(0 <= int(name.split(" ")[1]) < 100 for name, _ in row)


def test_images_are_resized_and_centre_cropped_to_the_input(run, tmp_path):
    """Any size and mode: the shorter side to `resize` (32), the centre square cropped, pixels
    / 255 then the mean and std. A 96x32 strip red | green | blue keeps its green centre; a
    64x48 grey image becomes three equal channels."""
    from PIL import Image

    preprocessing = api.load_network(run).preprocessing
    strip = Image.new("RGB", (96, 32), (255, 0, 0))
    strip.paste((0, 255, 0), (32, 0, 64, 32))
    strip.paste((0, 0, 255), (64, 0, 96, 32))
    strip.save(tmp_path / "strip.png")
    Image.new("L", (64, 48), 51).save(tmp_path / "grey.bmp")
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (CIFAR10_MEAN, CIFAR10_STD))
    green = read_image(tmp_path / "strip.png", preprocessing) * std + mean
    grey = read_image(tmp_path / "grey.bmp", preprocessing) * std + mean
    assert green.shape == grey.shape == (3, 32, 32)
    torch.testing.assert_close(green, torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 32, 32))
    torch.testing.assert_close(grey, torch.full((3, 32, 32), 0.2))
    # a one-channel network (in_chans=1) reads images as grey
    one = Preprocessing(input_size=32, resize=32, in_chans=1, mean=(0.5,), std=(0.25,))
    torch.testing.assert_close(read_image(tmp_path / "grey.bmp", one),
                               torch.full((1, 32, 32), (0.2 - 0.5) / 0.25))
    (tmp_path / "broken.jpg").write_bytes(IMAGES[0].read_bytes()[:200])
    with pytest.raises(PredictError, match="broken.jpg: not a readable image"):
        read_image(tmp_path / "broken.jpg", preprocessing)


def test_the_checkpoint_records_its_preprocessing_and_older_ones_fall_back(run, tmp_path):
    loaded = api.load_network(run)
    assert loaded.preprocessing.classes == CIFAR10_CLASSES
    assert loaded.preprocessing.mean == CIFAR10_MEAN and loaded.preprocessing.std == CIFAR10_STD
    assert (loaded.preprocessing.input_size, loaded.preprocessing.resize) == (32, 32)
    # a checkpoint from before "data" was recorded: config.json's statistics, the dataset's names
    state = torch.load(run / "last.pt", weights_only=False)
    state.pop("data")
    (tmp_path / "config.json").write_text(json.dumps({"mean": [0.5, 0.5, 0.5],
                                                      "std": [0.25, 0.25, 0.25]}))
    older = checkpoint_preprocessing(state, tmp_path / "last.pt", loaded.network)
    assert older.mean == (0.5, 0.5, 0.5) and older.classes == CIFAR10_CLASSES
    bare = checkpoint_preprocessing(state, tmp_path / "elsewhere" / "last.pt", loaded.network)
    assert bare.mean == CIFAR10_MEAN
