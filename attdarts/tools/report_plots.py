"""The plots of `attdarts report --html`, as PNG data URIs (matplotlib, Agg, no pyplot state):
learning curves and a search's decisiveness over the epochs."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from attdarts.tools.search_runs import EpochDecisiveness

DPI = 80  # sharp on a screen, small in the file


def png(figure) -> str:
    """A matplotlib figure as an <img> with a PNG data URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" alt="" src="data:image/png;base64,{data}">'


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def percent(values: Sequence[float | None]) -> list[float | None]:
    """Accuracies in percent: a series whose values all lie in [0, 1] is read as fractions."""
    numbers = [value for value in values if isinstance(value, (int, float))]
    scale = 100.0 if numbers and all(0.0 <= value <= 1.0 for value in numbers) else 1.0
    return [value * scale if isinstance(value, (int, float)) else None for value in values]


def learning_curves(records: list[dict], search: bool) -> str | None:
    """Loss and accuracy per epoch: train / val for a search, train / test for a training."""
    epochs = [record.get("epoch", index + 1) for index, record in enumerate(records)]
    if not epochs:
        return None
    pairs = ((("train_loss", "train"), ("val_loss", "val (architecture batches)"))
             if search else (("train_loss", "train"), ("test_loss", "test")))
    accuracies = ((("train_accuracy", "train"), ("val_accuracy", "val (architecture batches)"))
                  if search else (("train_acc", "train"), ("test_top1", "test top-1")))
    figure = _figure(11, 3.4)
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    for key, label in pairs:
        values = [record.get(key) for record in records]
        if any(isinstance(value, (int, float)) for value in values):
            loss_axis.plot(epochs, [v if isinstance(v, (int, float)) else float("nan")
                                    for v in values], marker="o", markersize=3, label=label)
    for key, label in accuracies:
        values = percent([record.get(key) for record in records])
        if any(value is not None for value in values):
            accuracy_axis.plot(epochs, [v if v is not None else float("nan") for v in values],
                               marker="o", markersize=3, label=label)
    loss_axis.set(title="loss", xlabel="epoch")
    accuracy_axis.set(title="accuracy (%)", xlabel="epoch")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    return png(figure)


def decisiveness_plot(epochs: list[EpochDecisiveness]) -> str:
    """Over the epochs: decided edges, the smallest and the median margin, the mean entropies,
    the normal cell's skip connections; a dashed line at the last change of the genotype."""
    import statistics

    numbers = [entry.epoch for entry in epochs]
    figure = _figure(13, 3.3)
    counts, margins, entropies = figure.subplots(1, 3)
    last = epochs[-1]
    total = len(last.decisiveness.edges)
    counts.plot(numbers, [e.decisiveness.decided for e in epochs], marker="o", markersize=3,
                label=f"edges decided by >= {last.decisiveness.threshold:g} (of {total})")
    counts.plot(numbers, [e.decisiveness.skip_connect for e in epochs], marker="s", markersize=3,
                label="skip_connect in the normal cell")
    if last.decisiveness.identity is not None:
        counts.plot(numbers, [e.decisiveness.identity for e in epochs], marker="^", markersize=3,
                    label="edges without attention (normal)")
    counts.set(title="decided edges and the normal cell", xlabel="epoch", ylim=(-0.3, total + 0.3))
    smallest = [max(e.decisiveness.weakest.margin, 1e-7) for e in epochs]
    median = [max(statistics.median(edge.margin for edge in e.decisiveness.edges), 1e-7)
              for e in epochs]
    margins.plot(numbers, smallest, marker="o", markersize=3, label="smallest margin")
    margins.plot(numbers, median, marker="o", markersize=3, label="median margin")
    margins.axhline(last.decisiveness.threshold, color="#888", linestyle=":",
                    label=f"decided: {last.decisiveness.threshold:g}")
    margins.set(title="margins of the kept edges (log)", xlabel="epoch", yscale="log")
    entropies.plot(numbers, [e.decisiveness.operation_entropy for e in epochs], marker="o",
                   markersize=3, label="operations")
    if last.decisiveness.attention_entropy is not None:
        entropies.plot(numbers, [e.decisiveness.attention_entropy for e in epochs], marker="o",
                       markersize=3, label="attentions")
    entropies.set(title="mean entropy of the kept edges' mixtures (1 = uniform)", xlabel="epoch",
                  ylim=(0.0, 1.05))
    for axis in (counts, margins, entropies):
        axis.axvline(last.changed_epoch, color="#c0392b", linestyle="--", linewidth=1,
                     label=f"genotype last changed (epoch {last.changed_epoch})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    entropies.title.set_fontsize(10)
    return png(figure)
