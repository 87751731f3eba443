"""The budget figure of a search run (`budget(...)` in its space): per epoch the final network's
expected cost (from the mixture weights) and its derived genotype's cost at the final size,
against the target, read from `metrics.jsonl` (`attdarts.records.budget_keys`).

matplotlib is imported only to draw, with the Agg backend and no pyplot state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attdarts.tools.plot import SYNTHETIC_LABEL, output_format

# a cost table's measure -> (axis label, divisor)
BUDGET_UNITS = {"multiply_adds": ("M mult-adds", 1e6), "parameters": ("M parameters", 1e6),
                "latency_ms": ("ms (table)", 1.0)}
BUDGET_PICTURE = "budget"  # RUN_DIR/budget.png, or OUT-budget.png beside `-o OUT.png`


@dataclass
class BudgetCurve:
    """A budgeted search's costs per epoch (metrics.jsonl, `records.budget_keys`): the expected
    cost under the epoch's final weights and the derived genotype's cost at the final size
    (None where not priced), against the target."""

    measure: str
    target: float
    epochs: list[int]
    expected: list[float | None]
    derived: list[float | None]
    synthetic: bool = False

    def summary(self) -> str:
        """`budget: multiply_adds <= 500M; epoch 4: expected 512.3M, derived 491.5M (within)`."""
        unit, scale = BUDGET_UNITS.get(self.measure, (self.measure, 1.0))
        unit = unit.split(" ")[0]

        def shown(value: float | None) -> str:
            return "-" if value is None else f"{value / scale:.4g}{unit}"

        derived = self.derived[-1]
        verdict = "" if derived is None else (" (within)" if derived <= self.target
                                              else " (over)")
        return (f"budget: {self.measure} <= {shown(self.target)}; epoch {self.epochs[-1]}: "
                f"expected {shown(self.expected[-1])}, derived {shown(derived)}{verdict}")


def read_budget(directory: str | Path) -> BudgetCurve | None:
    """The budget curve of the run in `directory`, or None (no budget, no metrics.jsonl).
    Unreadable lines are skipped; a resumed run's repeated epoch keeps its last line."""
    from attdarts.records import budget_keys, budget_measure, by_epoch, json_objects

    records = by_epoch(record for record in json_objects(Path(directory) / "metrics.jsonl")
                       if budget_measure(record) is not None)
    if not records:
        return None
    epochs = sorted(records)
    measure = budget_measure(records[epochs[-1]])
    assert measure is not None
    keys = budget_keys(measure)

    def number(record: dict, key: str) -> float | None:
        value = record.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else None

    target = number(records[epochs[-1]], keys["target"])
    if target is None:
        return None
    return BudgetCurve(measure, target, epochs,
                       [number(records[epoch], keys["expected"]) for epoch in epochs],
                       [number(records[epoch], keys["derived"]) for epoch in epochs],
                       synthetic=any(record.get("synthetic") is True
                                     for record in records.values()))


def budget_figure(curve: BudgetCurve, title: str = ""):
    """The expected cost (from the mixture weights) and the derived genotype's cost, per epoch,
    against the budget line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    unit, scale = BUDGET_UNITS.get(curve.measure, (curve.measure, 1.0))
    figure = Figure(figsize=(7, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()

    def scaled(values: list[float | None]) -> list[float]:
        return [float("nan") if value is None else value / scale for value in values]

    axis.plot(curve.epochs, scaled(curve.expected), marker="o", markersize=3,
              label="expected (mixture weights)")
    axis.plot(curve.epochs, scaled(curve.derived), marker="s", markersize=3,
              label="derived genotype")
    axis.axhline(curve.target / scale, color="#c0392b", linestyle="--",
                 label=f"budget {curve.target / scale:g}")
    axis.set(xlabel="epoch", ylabel=unit)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    heading = f"{title}: cost of the final network" if title else "cost of the final network"
    if curve.synthetic:
        figure.suptitle(f"{SYNTHETIC_LABEL}   {heading}", color="#c00000", fontweight="bold")
    else:
        figure.suptitle(heading)
    return figure


def budget_path(weights_picture: Path) -> Path:
    """Where `attdarts plot` writes the budget figure: beside the weights picture, named
    budget.png in a run directory's default, OUT-budget.png beside `-o OUT.png`."""
    if weights_picture.stem == "weights":
        return weights_picture.with_name(BUDGET_PICTURE + weights_picture.suffix)
    return weights_picture.with_name(f"{weights_picture.stem}-{BUDGET_PICTURE}"
                                     f"{weights_picture.suffix}")


def plot_budget(curve: BudgetCurve, output: Path, title: str = "") -> Path:
    """Draw `curve` into `output` (atomically; the format after its suffix)."""
    from attdarts.files import atomic_write

    file_format = output_format(output)
    figure = budget_figure(curve, title)
    atomic_write(output, lambda file: figure.savefig(file, dpi=110, format=file_format))
    return output
