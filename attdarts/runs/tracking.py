"""Run tracking (`--tensorboard`): per-epoch scalars and architecture heatmaps as TensorBoard events.

The loops call a tracker at the end of each epoch; without `--tensorboard` it is `NO_TRACKING`,
which does nothing, so the loops never test whether tracking is on. TensorBoard is an optional
dependency (`pip install 'attdarts[tensorboard]'`): `require_tensorboard` says so in one line
before a run starts. Only the main process of a torchrun group writes.

Events go to RUN_DIR/tensorboard/. The step of every event is the epoch (1-based), as in
metrics.jsonl. Scalars: the losses, accuracies and learning rate of both loops, and training's
drop-path probability; for a search also how decided its derived genotype is (`decisiveness/`,
`cell/`, and each kept edge's margin under `margin/`) and, with a budget, the expected and derived
costs, the target and the penalty (`budget/`). Images (search only): per epoch and cell
type, the softmax of alpha (operations) and beta (attentions; gamma for an attention on the cell
output), one row per edge and one column per candidate, drawn with the viridis colour map over
the image's own range (`attdarts.scales`: its smallest weight dark, its largest yellow), with a
colour bar and that range printed beneath.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from attdarts.networks.costs import MEASURES as COST_MEASURES
from attdarts.records import budget_keys
from attdarts.scales import ColourScale

TENSORBOARD_DIR = "tensorboard"
INSTALL_HINT = "pip install 'attdarts[tensorboard]'"
CELL_PIXELS = 16  # each (edge, candidate) weight is a square of this many pixels
LEGEND_PIXELS = 22  # beneath the squares: a colour bar and the range it spans
MIN_WIDTH = 128  # room for the range's two ends

# metrics.jsonl key -> TensorBoard tag (the part before '/' groups the charts)
SEARCH_SCALARS = {
    "train_loss": "loss/train", "val_loss": "loss/val",
    "train_accuracy": "accuracy/train", "val_accuracy": "accuracy/val",
    "lr": "schedule/lr", "images_per_s": "speed/images_per_s",
    # how decided the derived genotype is (language.decisiveness); per edge: margin/<cell>/<edge>
    "decided_edges": "decisiveness/decided_edges", "min_margin": "decisiveness/min_margin",
    "operation_entropy": "decisiveness/operation_entropy",
    "attention_entropy": "decisiveness/attention_entropy",
    "normal_skip_connect": "cell/normal_skip_connect", "normal_identity": "cell/normal_identity",
    "genotype_changed_epoch": "cell/genotype_changed_epoch",
    # a budget (`budget(...)` in the space): expected and derived cost, target, penalty
    **{key: f"budget/{key.removeprefix('budget_')}" for measure in COST_MEASURES
       for key in budget_keys(measure).values()},
}
TRAIN_SCALARS = {
    "train_loss": "loss/train", "test_loss": "loss/test",
    "train_acc": "accuracy/train", "test_top1": "accuracy/test_top1",
    "test_top5": "accuracy/test_top5",
    "lr": "schedule/lr", "drop_path_prob": "schedule/drop_path_prob",
    "images_per_s": "speed/images_per_s",
}


class TrackingUnavailable(Exception):
    """`--tensorboard` without the tensorboard package; the message says how to install it."""


def require_tensorboard() -> None:
    """Fail at once, before a run starts, when `--tensorboard` cannot write events."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise TrackingUnavailable(
            f"--tensorboard needs the tensorboard package: {INSTALL_HINT}") from None


def available() -> bool:
    try:
        require_tensorboard()
    except TrackingUnavailable:
        return False
    return True


def continues(run_dir: Path) -> bool:
    """Whether a resumed run goes on tracking: it has events and TensorBoard is installed."""
    return (Path(run_dir) / TENSORBOARD_DIR).is_dir() and available()


class NoTracking:
    """The tracker of a run without tracking: accepts every call and writes nothing."""

    def epoch(self, epoch: int, metrics: Mapping[str, object],
              architecture: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
        pass

    def close(self) -> None:
        pass


NO_TRACKING = NoTracking()


class TensorBoardTracking(NoTracking):
    """Writes a run's epochs into RUN_DIR/tensorboard/ (event files TensorBoard reads)."""

    def __init__(self, run_dir: Path, scalars: Mapping[str, str]) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.scalars = scalars
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR))

    def epoch(self, epoch: int, metrics: Mapping[str, object],
              architecture: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
        """`metrics` as metrics.jsonl records them; `architecture[cell][kind]` the raw alpha /
        beta / gamma of each cell type (softmaxed here, per edge)."""
        for key, tag in self.scalars.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, float(value), epoch)
        from attdarts.language.decisiveness import margin_scalars

        for tag, value in margin_scalars(metrics):
            self.writer.add_scalar(tag, value, epoch)
        for cell, kinds in (architecture or {}).items():
            for kind, values in kinds.items():
                weights = torch.softmax(values.detach().float().cpu(), dim=-1)
                self.writer.add_image(f"{kind}/{cell}", heatmap(weights), epoch,
                                      dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def heatmap(weights: torch.Tensor) -> np.ndarray:
    """(edges, candidates) weights -> an RGB uint8 image (HWC): one square each, coloured over
    the weights' own range (a near-uniform softmax still shows its differences), then a colour
    bar and a caption with the range's ends (`LEGEND_PIXELS` high, at least `MIN_WIDTH` wide)."""
    from matplotlib import colormaps

    scale = ColourScale.of(weights.flatten().tolist())
    viridis = colormaps["viridis"]
    fractions = np.vectorize(scale.fraction)(weights.double().numpy())
    colours = viridis(fractions)[..., :3]  # (edges, candidates, 3) in [0, 1]
    squares = np.kron(colours, np.ones((CELL_PIXELS, CELL_PIXELS, 1)))
    width = max(squares.shape[1], MIN_WIDTH)
    image = np.ones((squares.shape[0] + LEGEND_PIXELS, width, 3))  # white beneath and beside
    image[:squares.shape[0], :squares.shape[1]] = squares
    bar = squares.shape[0] + 3
    image[bar:bar + 5] = viridis(np.linspace(0.0, 1.0, width) if not scale.flat
                                 else np.full(width, 0.5))[:, :3]
    pixels = (image * 255.0 + 0.5).astype(np.uint8)
    return _caption(pixels, scale, top=bar + 6)


def _caption(pixels: np.ndarray, scale: ColourScale, top: int) -> np.ndarray:
    """The scale's ends written under its colour bar: low at the left, high at the right."""
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    ink = (0, 0, 0)
    if scale.flat:
        draw.text((1, top), scale.caption, fill=ink, font=font)
    else:
        low, high = scale.labels([scale.low, scale.high])
        draw.text((1, top), low, fill=ink, font=font)
        draw.text((picture.width - 1, top), high, fill=ink, font=font, anchor="ra")
    return np.asarray(picture)


def open_tracking(enabled: bool, run_dir: Path | None, main: bool,
                  scalars: Mapping[str, str]) -> NoTracking:
    """The run's tracker: TensorBoard events in RUN_DIR/tensorboard/ when `enabled` (main
    process only), otherwise `NO_TRACKING`."""
    if not enabled or not main or run_dir is None:
        return NO_TRACKING
    return TensorBoardTracking(run_dir, scalars)
