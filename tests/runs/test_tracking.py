"""`--tensorboard` (attdarts/runs/tracking.py): event files read back with TensorBoard's reader.

Tiny runs on random data (C=4-8, 5 cells, two steps per epoch, two epochs).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from attdarts.cli import cli
from attdarts.language.transform import parse_file
from attdarts.runs import data, search, tracking, train
from attdarts.scales import ColourScale

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the tensorboard extra is not installed (pip install 'attdarts[tensorboard]')")

ROOT = Path(__file__).resolve().parents[2]
DARTS_V2 = ROOT / "genotypes" / "darts_v2.geno"
TINY_SPACE = """\
space tiny {
    operations = [none, max_pool_3x3, skip_connect, sep_conv_3x3]
    attentions = [identity, se, cbam]
    nodes = 2
    keep = 2
    location = after_every
    mixing = sum
}
"""

pytestmark = pytest.mark.usefixtures("one_thread")


def read_events(run_dir: Path):
    accumulator = event_accumulator.EventAccumulator(
        str(run_dir / tracking.TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def decoded(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    path = tmp_path / "tiny.geno"
    path.write_text(TINY_SPACE)
    return path


def test_heatmap_is_viridis_one_square_per_weight():
    image = tracking.heatmap(torch.tensor([[1.0, 0.0, 0.25], [0.5, 0.5, 0.0]]))
    size = tracking.CELL_PIXELS
    assert image.shape == (2 * size + tracking.LEGEND_PIXELS, tracking.MIN_WIDTH, 3)
    assert image.dtype == np.uint8
    # viridis ends (matplotlib's table): 0 -> (0.267004, 0.004874, 0.329415),
    # 1 -> (0.993248, 0.906157, 0.143936)
    dark = np.round(np.array([0.267004, 0.004874, 0.329415]) * 255)
    yellow = np.round(np.array([0.993248, 0.906157, 0.143936]) * 255)
    np.testing.assert_allclose(image[0, 0], yellow, atol=1)
    np.testing.assert_allclose(image[size - 1, 2 * size - 1], dark, atol=1)
    np.testing.assert_array_equal(image[size, 0], image[2 * size - 1, 2 * size - 1])  # 0.5, 0.5
    assert len({tuple(image[r, c]) for r in range(size) for c in range(size)}) == 1


def _squares(image: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The colour of each (edge, candidate) square of a heatmap."""
    size = tracking.CELL_PIXELS
    return image[size // 2:rows * size:size, size // 2:columns * size:size]


def test_near_uniform_weights_span_the_whole_colour_map():
    """A short search's softmax (about 1/8, differing by 1e-3) is not one uniform square: the
    image's own smallest weight is dark, its largest yellow, the rest in between."""
    weights = torch.full((3, 8), 0.125, dtype=torch.float64)
    weights[0, 2], weights[1, 5], weights[2, 7] = 0.1245, 0.1255, 0.1250 + 1e-4
    squares = _squares(tracking.heatmap(weights), 3, 8).astype(int)
    dark, yellow = squares[0, 2], squares[1, 5]
    assert len({tuple(colour) for row in squares for colour in row}) == 4
    assert abs(dark - yellow).sum() > 300  # the colour map's two ends, not neighbours
    assert not np.array_equal(squares[2, 7], squares[0, 0])  # 1e-4 apart: still told apart
    flat = _squares(tracking.heatmap(torch.full((2, 4), 0.25)), 2, 4)
    assert len({tuple(colour) for row in flat for colour in row}) == 1  # equal: one colour


def test_the_heatmap_prints_its_range_under_a_colour_bar():
    """Beneath the squares: the colour bar (dark to yellow) and the range's two ends as text;
    another range writes other text."""
    size = tracking.CELL_PIXELS
    first = tracking.heatmap(torch.tensor([[0.1245, 0.1255]]))
    second = tracking.heatmap(torch.tensor([[0.3, 0.7]]))
    bar = first[size + 5]  # a row through the colour bar
    assert bar[0].tolist() != bar[-1].tolist() and (bar[0] == second[size + 5][0]).all()
    captions = [image[size + 9:] for image in (first, second)]
    for caption in captions:
        assert (caption.sum(axis=2) < 200).sum() > 20  # dark text on white
    assert not np.array_equal(*captions)
    assert ColourScale.of([0.1245, 0.1255]).caption == "colour: 0.1245 (dark) to 0.1255 (bright)"


def test_search_writes_scalars_and_alpha_beta_heatmaps_per_epoch(tiny_space, tmp_path):
    """Every scalar a search records, a budget's too (the run has one on parameters)."""
    tiny_space.write_text(TINY_SPACE.replace("mixing = sum", "mixing = sum\n"
                                             "    methods = [budget(params=1.5M)]"))
    config = search.SearchConfig(space_file=str(tiny_space), dataset="synthetic", epochs=2,
                                 batch_size=4, channels=4, layers=5, max_steps_per_epoch=2)
    run_dir = tmp_path / "run"
    search.run_search(config, run_dir, device="cpu", tensorboard=True,
                      dataset=data.synthetic_dataset(train=True, size=32, resolution=8))
    events = read_events(run_dir)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key, tag in tracking.SEARCH_SCALARS.items():
        if key not in metrics[0]:  # a budget on another measure
            assert key.startswith("budget_") and not key.endswith("parameters"), key
            continue
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2], tag
        assert [s.value for s in scalars] == pytest.approx([m[key] for m in metrics], rel=1e-6)
    # each kept edge's smallest margin (language.decisiveness), tagged by the edge
    last = metrics[-1]["margins"]["normal"]
    edge, entry = next(iter(last.items()))
    smallest = min(value for key, value in entry.items()
                   if key in ("operation", "attention", "input") and value is not None)
    assert events.Scalars(f"margin/normal/{edge}")[-1].value == pytest.approx(smallest, rel=1e-6)
    assert "decisiveness/decided_edges" in events.Tags()["scalars"]
    assert sorted(events.Tags()["images"]) == ["alpha/normal", "alpha/reduce", "beta/normal",
                                                "beta/reduce"]
    # the last epoch's picture is the softmax that weights.jsonl records, drawn by `heatmap`
    record = json.loads((run_dir / "weights.jsonl").read_text().splitlines()[-1])
    for tag in events.Tags()["images"]:
        kind, cell = tag.split("/")
        images = events.Images(tag)
        assert [image.step for image in images] == [1, 2]
        weights = torch.tensor(record[cell][kind])  # (edges, candidates)
        expected = tracking.heatmap(weights)
        picture = decoded(images[-1])
        assert picture.shape == expected.shape
        assert np.abs(picture.astype(int) - expected.astype(int)).max() <= 1, tag


def test_training_writes_losses_accuracies_lr_and_drop_path(tmp_path):
    config = train.TrainConfig.recipe("synthetic", channels=8, layers=5, epochs=2, batch_size=8,
                                      max_steps_per_epoch=2)
    run_dir = tmp_path / "run"
    train.run_training(config, parse_file(DARTS_V2).genotype(), run_dir=run_dir, device="cpu",
                       tensorboard=True)
    events = read_events(run_dir)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert set(events.Tags()["scalars"]) == set(tracking.TRAIN_SCALARS.values())
    for key, tag in tracking.TRAIN_SCALARS.items():
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2], tag
        assert [s.value for s in scalars] == pytest.approx([m[key] for m in metrics], rel=1e-6)
    assert [s.value for s in events.Scalars("schedule/drop_path_prob")] == pytest.approx([0.0, 0.1])
    assert events.Tags()["images"] == []


def test_no_events_without_the_option(tmp_path):
    config = train.TrainConfig.recipe("synthetic", channels=8, layers=5, epochs=1, batch_size=8,
                                      max_steps_per_epoch=1)
    train.run_training(config, parse_file(DARTS_V2).genotype(), run_dir=tmp_path / "run",
                       device="cpu")
    assert not (tmp_path / "run" / tracking.TENSORBOARD_DIR).exists()


@pytest.mark.parametrize("command", ["search", "train"])
def test_without_tensorboard_the_option_fails_at_once_in_one_line(command, tiny_space, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    target = tiny_space if command == "search" else DARTS_V2
    result = CliRunner().invoke(cli, [command, str(target), "--tensorboard", "--dataset",
                                      "synthetic", "--device", "cpu", "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: --tensorboard needs the tensorboard package: pip install 'attdarts[tensorboard]'"]
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_goes_on_writing_its_events(tiny_space, tmp_path, monkeypatch):
    """Stopped by SIGTERM in epoch 2, resumed without the option: epochs 1 and 2 are there."""
    import os
    import signal

    from attdarts.runs import preemption
    from attdarts.runs.search import bilevel

    config = search.SearchConfig(space_file=str(tiny_space), dataset="synthetic", epochs=2,
                                 batch_size=4, channels=4, layers=5, max_steps_per_epoch=2)
    images = data.synthetic_dataset(train=True, size=32, resolution=8)
    original, calls = bilevel.Bilevel.step, [0]

    def step(self, *args):
        calls[0] += 1
        result = original(self, *args)
        if calls[0] == 3:  # epoch 2, step 1
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(bilevel.Bilevel, "step", step)
    with pytest.raises(preemption.Preempted):
        search.run_search(config, tmp_path / "run", device="cpu", tensorboard=True,
                          dataset=images)
    monkeypatch.undo()
    assert [s.step for s in read_events(tmp_path / "run").Scalars("loss/train")] == [1]
    search.resume_search(tmp_path / "run", device="cpu", dataset=images)
    events = read_events(tmp_path / "run")
    assert [s.step for s in events.Scalars("loss/train")] == [1, 2]
    assert [image.step for image in events.Images("alpha/normal")] == [1, 2]
