"""Pictures and a timeline of a search run: how alpha, beta (and gamma) evolved, and when the
derived genotype changed.

A search run directory holds (both optional, at least one present):

- `weights.jsonl`: one JSON object per line, one line per epoch, the architecture weights after
  softmax, rows = edges, columns = candidates in the order of the search space:

      {"epoch": 1,
       "edges": ["n0<-c_k2", "n0<-c_k1", "n1<-c_k2", ...],
       "operations": ["none", "max_pool_3x3", ...],
       "attentions": ["identity", "se", ...],
       "normal": {"alpha": [[...], ...], "beta": [[...], ...], "gamma": [...]},
       "reduce": {"alpha": ..., "beta": ..., "gamma": ...}}

  alpha mixes operations (paper, Eq. 9), beta attentions per edge (Eq. 10), gamma attentions on
  the concatenated output (locations `end`, `after_every_and_end`); beta and gamma may be absent,
  and `edges`/`operations`/`attentions` may also sit inside a cell's object. Blank or truncated
  lines (a run still being written) are skipped with a warning.
- `genotype-epoch001.geno`, `genotype-epoch002.geno`, ...: the genotype derived at each epoch,
  one DSL file each (any number of digits).
- `metrics.jsonl` of a search with a budget (`budget(...)` in its space): per epoch the final
  network's expected and derived cost and the target (`records.budget_keys`), drawn as a second
  figure (`attdarts.tools.plot_budget`).

A run on random data is marked `"synthetic": true` on its weights.jsonl lines (or in config.json
or metrics.jsonl, or by `"dataset": "synthetic"` in config.json); its picture carries the title
"SYNTHETIC DATA (smoke test)".

matplotlib is imported only to draw, with the Agg backend and no pyplot state.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from attdarts.language.ir import CELL_KINDS, Genotype
from attdarts.scales import ColourScale
from attdarts.tools.diff import diff_genotypes

WEIGHTS_FILE = "weights.jsonl"
GENOTYPE_FILE = re.compile(r"genotype-epoch(\d+)\.geno\Z")
PARAMETERS = ("alpha", "beta", "gamma")
TITLES = {
    "alpha": "operations (α)",
    "beta": "attention per edge (β)",
    "gamma": "attention on the output (γ)",
}
_LABEL_KEYS = {"alpha": "operations", "beta": "attentions", "gamma": "attentions"}
OUTPUT_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
SYNTHETIC_LABEL = "SYNTHETIC DATA (smoke test)"


@dataclass
class EpochWeights:
    """Softmaxed weights of one epoch: cell kind -> parameter -> rows of candidate weights."""

    epoch: int
    cells: dict[str, dict[str, list[list[float]]]]
    labels: dict[str, dict[str, list[str]]]  # cell kind -> "edges"/"operations"/"attentions"
    synthetic: bool = False


@dataclass
class Run:
    directory: Path
    weights: list[EpochWeights] = field(default_factory=list)
    genotypes: list[tuple[int, Genotype]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    synthetic: bool = False  # trained on random images: the picture says so


class RunError(Exception):
    """The directory holds nothing this module can read."""


# ---------------------------------------------------------------------------------------------
# reading


def load_run(directory: str | Path) -> Run:
    """Read what there is of a run directory; problems with single lines or files become warnings."""
    from attdarts.language.errors import DslError
    from attdarts.language.transform import parse_file

    directory = Path(directory)
    if not directory.is_dir():
        raise RunError(f"{directory}: not a directory")
    run = Run(directory)
    weights_path = directory / WEIGHTS_FILE
    if weights_path.is_file():
        run.weights = read_weights(weights_path, run.warnings)
    numbered = []
    for path in directory.iterdir():
        match = GENOTYPE_FILE.match(path.name)
        if match and path.is_file():
            numbered.append((int(match.group(1)), path))
    for epoch, path in sorted(numbered):
        try:
            genotypes = parse_file(path).genotypes
        except DslError as error:
            first = str(error).splitlines()[0]
            run.warnings.append(f"skipped {path.name}: {first}")
            continue
        if not genotypes:
            run.warnings.append(f"skipped {path.name}: it defines no genotype")
            continue
        run.genotypes.append((epoch, genotypes[0]))
    if not run.weights and not run.genotypes:
        raise RunError(f"{directory}: found neither {WEIGHTS_FILE} nor genotype-epochNNN.geno files")
    run.synthetic = any(record.synthetic for record in run.weights) or _marked_synthetic(directory)
    return run


def _marked_synthetic(directory: Path) -> bool:
    """config.json or a metrics.jsonl line says the run used random data (unreadable: no)."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        if isinstance(config, dict) and (config.get("synthetic") is True
                                         or config.get("dataset") == "synthetic"):
            return True
    except (OSError, ValueError):
        pass
    try:
        with (directory / "metrics.jsonl").open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("synthetic") is True:
                    return True
    except (OSError, ValueError):
        pass
    return False


def read_weights(path: Path, warnings: list[str]) -> list[EpochWeights]:
    records: dict[int, EpochWeights] = {}
    with path.open("rb") as lines:  # a damaged line (not UTF-8) is skipped like any other
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = parse_weights_record(json.loads(line.decode("utf-8")))
            except (ValueError, TypeError, KeyError, OverflowError) as error:
                warnings.append(f"{path.name}:{number}: skipped ({error})")
                continue
            records[record.epoch] = record  # a restarted run may repeat an epoch: keep the last
    return [records[epoch] for epoch in sorted(records)]


def parse_weights_record(data: dict) -> EpochWeights:
    if not isinstance(data, dict):
        raise ValueError("a line must be a JSON object")
    epoch = int(data["epoch"])
    cells: dict[str, dict[str, list[list[float]]]] = {}
    labels: dict[str, dict[str, list[str]]] = {}
    for kind in CELL_KINDS:
        cell = data.get(kind)
        if not isinstance(cell, dict):
            continue
        parameters = {}
        for name in PARAMETERS:
            value = cell.get(name)
            if value is None:
                continue
            rows = value if value and isinstance(value[0], list) else [value]
            parameters[name] = [[float(x) for x in row] for row in rows]
        if parameters:
            cells[kind] = parameters
            labels[kind] = {key: [str(x) for x in cell.get(key, data.get(key)) or []]
                            for key in ("edges", "operations", "attentions")}
    if not cells:
        raise ValueError("no 'normal' or 'reduce' weights")
    return EpochWeights(epoch, cells, labels, synthetic=data.get("synthetic") is True)


# ---------------------------------------------------------------------------------------------
# timeline


def timeline(genotypes: list[tuple[int, Genotype]]) -> list[str]:
    """One line per change of the derived genotype between consecutive saved epochs."""
    if not genotypes:
        return []
    first_epoch, previous = genotypes[0]
    lines = [f"epoch {first_epoch}: initial genotype"]
    changed_epochs = 0
    count = 0
    last_change = first_epoch
    for epoch, genotype in genotypes[1:]:
        changes = diff_genotypes(previous, genotype)
        if changes:
            changed_epochs += 1
            count += len(changes)
            last_change = epoch
            lines.extend(f"epoch {epoch}: {change.text()}" for change in changes)
        previous = genotype
    last_epoch = genotypes[-1][0]
    if count == 0:
        saved = len(genotypes)
        lines.append(f"summary: no change in {saved} saved epoch{'' if saved == 1 else 's'}; "
                     f"last epoch {last_epoch}")
    else:
        plural = ("" if count == 1 else "s", "" if changed_epochs == 1 else "s")
        lines.append(f"summary: {count} change{plural[0]} at {changed_epochs} epoch{plural[1]}; "
                     f"last change at epoch {last_change}; last epoch {last_epoch}")
    return lines


# ---------------------------------------------------------------------------------------------
# drawing


def output_format(path: Path) -> str:
    """The picture format named by `path`'s suffix; ValueError for one matplotlib is not asked for."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        shown = f"'{suffix}'" if suffix else "no suffix"
        raise ValueError(f"{path}: cannot tell the picture format from {shown}; "
                         f"name the file {', '.join('*' + s for s in OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[suffix]


def plot_weights(weights: list[EpochWeights], output: Path, title: str = "", *,
                 synthetic: bool = False) -> Path:
    """Draw `weights` into `output`, atomically, as PNG, PDF or SVG after its suffix.

    Raises ValueError for another suffix and `files.WriteError` when the file cannot be
    written (the old file, if any, is then untouched).
    """
    from attdarts.files import atomic_write

    file_format = output_format(output)
    figure = weights_figure(weights, title, synthetic=synthetic)
    atomic_write(output, lambda file: figure.savefig(file, dpi=110, format=file_format))
    return output


def weights_figure(weights: list[EpochWeights], title: str = "", *, synthetic: bool = False):
    """Heatmaps of the final weights and small multiples of their evolution, per cell; a run on
    random data gets SYNTHETIC_LABEL in its title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    synthetic = synthetic or any(record.synthetic for record in weights)

    final = weights[-1]
    kinds = [kind for kind in CELL_KINDS if kind in final.cells]
    layouts = {kind: _cell_layout(final, kind) for kind in kinds}
    heights = [sum(layouts[kind]) + 0.4 for kind in kinds]
    figure = Figure(figsize=(13, sum(heights) + 0.5), layout="constrained")
    FigureCanvasAgg(figure)
    span = (f"epoch {final.epoch}" if len(weights) == 1
            else f"epochs {weights[0].epoch}-{final.epoch}")
    heading = f"{title}: {span}" if title else span
    if synthetic:
        figure.suptitle(f"{SYNTHETIC_LABEL}   {heading}", fontsize=13, color="#c00000",
                        fontweight="bold")
    else:
        figure.suptitle(heading, fontsize=13)
    panels = figure.subfigures(len(kinds), 1, height_ratios=heights, squeeze=False)[:, 0]
    for panel, kind in zip(panels, kinds):
        _draw_cell(panel, weights, kind, layouts[kind])
    return figure


def _cell_layout(record: EpochWeights, kind: str) -> list[float]:
    """Heights in inches: the heatmap row, then one row of small multiples per parameter."""
    parameters = record.cells[kind]
    heights = [0.9 + 0.2 * max(len(matrix) for matrix in parameters.values())]
    for name in PARAMETERS:
        if name in parameters:
            count = len(parameters[name])
            heights.append(0.35 + 1.05 * math.ceil(count / _columns(count)))
    return heights


def _columns(panels: int) -> int:
    return min(_MAX_COLUMNS, max(1, panels))


def _draw_cell(panel, weights: list[EpochWeights], kind: str, heights: list[float]) -> None:
    final = weights[-1]
    parameters = [name for name in PARAMETERS if name in final.cells[kind]]
    panel.suptitle(f"{kind} cell", fontsize=12, fontweight="bold", x=0.01, ha="left")
    parts = panel.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    widths = [max(2, len(final.cells[kind][name][0])) for name in parameters]
    axes = parts[0].subplots(1, len(parameters), width_ratios=widths, squeeze=False)[0]
    for axis, name in zip(axes, parameters):
        _heatmap(axis, parts[0], final, kind, name)
    for part, name in zip(parts[1:], parameters):
        _evolution(part, weights, kind, name)


def _labels(record: EpochWeights, kind: str, name: str) -> tuple[list[str], list[str]]:
    matrix = record.cells[kind][name]
    given = record.labels.get(kind, {})
    if name == "gamma":
        rows = ["c_k"] if len(matrix) == 1 else [f"c_k[{i}]" for i in range(len(matrix))]
    else:
        rows = given.get("edges") or []
        if len(rows) != len(matrix):
            rows = [f"edge {i}" for i in range(len(matrix))]
    columns = given.get(_LABEL_KEYS[name]) or []
    if len(columns) != len(matrix[0]):
        columns = [f"{_LABEL_KEYS[name][:-1]} {j}" for j in range(len(matrix[0]))]
    return rows, columns


_CELL_ASPECT = 0.42  # height / width of one heatmap cell
_MAX_COLUMNS = 7  # small multiples per row


def _heatmap(axis, figure, record: EpochWeights, kind: str, name: str) -> None:
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    matrix = record.cells[kind][name]
    rows, columns = _labels(record, kind, name)
    # its own smallest to largest weight (attdarts.scales): a near-uniform softmax still shows
    scale = ColourScale.of(value for row in matrix for value in row)
    decimals = _decimals(scale.high - scale.low)
    # equal weights (one candidate, or an untrained uniform softmax) get the middle colour
    norm = (Normalize(scale.low - 0.5, scale.high + 0.5) if scale.flat
            else Normalize(scale.low, scale.high))
    image = axis.imshow(matrix, cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
    axis.set_box_aspect(_CELL_ASPECT * len(rows) / len(columns))  # same cell shape in every map
    axis.set_title(f"{TITLES[name]}, epoch {record.epoch}", fontsize=10)
    axis.set_xticks(range(len(columns)), columns, rotation=35, ha="right", fontsize=7,
                    rotation_mode="anchor")
    axis.set_yticks(range(len(rows)), rows, fontsize=7)
    axis.tick_params(length=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            color = "black" if norm(value) > 0.6 else "white"  # viridis is light at the top
            axis.text(j, i, f"{value:.{decimals}f}", ha="center", va="center", fontsize=6,
                      color=color)
        # the candidate the derivation keeps on this edge (`none` is never chosen, Eq. 14)
        allowed = [j for j in range(len(row)) if not (name == "alpha" and columns[j] == "none")]
        if allowed:
            best = max(allowed, key=lambda j: row[j])
            axis.add_patch(Rectangle((best - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#e8242b",
                                     linewidth=1.4))
    bar = figure.colorbar(image, ax=axis, shrink=0.9, pad=0.01, aspect=30)
    ticks = scale.ticks()  # low to high; the labels carry the decimals that tell them apart
    bar.set_ticks(ticks, labels=scale.labels(ticks))
    bar.ax.tick_params(labelsize=6)
    bar.set_label("this map's own range" if not scale.flat else "all equal", fontsize=6)


def _decimals(spread: float) -> int:
    """Decimals of the numbers in a map's cells: one past the spread's first significant digit
    (0.1220 to 0.1300: 4), at least 2, at most 4 (the cells are small; the colour bar's labels
    take as many as they need)."""
    if spread <= 0:
        return 4
    return min(4, max(2, math.ceil(-math.log10(spread)) + 1))


def _evolution(part, weights: list[EpochWeights], kind: str, name: str) -> None:
    """Small multiples, one panel per edge, candidates as lines, drawn in a single Axes.

    One Axes per edge would be the obvious way, but tick placement for a hundred Axes takes
    tens of seconds; here every panel is a unit square placed by hand, on shared scales.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    history = [record for record in weights if name in record.cells.get(kind, {})]
    rows, columns = _labels(history[-1], kind, name)
    shape = (len(rows), len(columns))
    history = [record for record in history
               if (len(record.cells[kind][name]), len(record.cells[kind][name][0])) == shape]
    epochs = [record.epoch for record in history]
    first, last = epochs[0], epochs[-1]
    top = _round_up(max(max(row) for record in history for row in record.cells[kind][name]))
    width = _columns(len(rows))
    height = math.ceil(len(rows) / width)
    gap_x, gap_y = 0.12, 0.32
    palette = _palette(len(columns), name)
    axis = part.subplots()
    for index, label in enumerate(rows):
        row, column = divmod(index, width)
        x0 = column * (1 + gap_x)
        y0 = (height - 1 - row) * (1 + gap_y)
        axis.add_patch(Rectangle((x0, y0), 1, 1, fill=False, edgecolor="#b0b0b0", linewidth=0.6))
        axis.plot([x0, x0 + 1], [y0 + 0.5, y0 + 0.5], color="#e6e6e6", linewidth=0.5)
        xs = [x0 + (0.5 if last == first else (epoch - first) / (last - first)) for epoch in epochs]
        for j, candidate in enumerate(columns):
            ys = [y0 + min(1.0, record.cells[kind][name][index][j] / top) for record in history]
            axis.plot(xs, ys, ":" if candidate in ("none", "identity") else "-",
                      color=palette[j], linewidth=1.0, marker="o" if len(epochs) < 3 else None,
                      markersize=2.5)
        axis.text(x0 + 0.5, y0 + 1.03, label, ha="center", va="bottom", fontsize=7)
    axis.set_xlim(-0.02, _MAX_COLUMNS * (1 + gap_x) - gap_x + 0.02)  # same panel size in every row
    axis.set_ylim(-0.05, height * (1 + gap_y) - gap_y + 0.25)
    axis.set_axis_off()
    handles = [Line2D([], [], color=palette[j], linestyle=":" if c in ("none", "identity") else "-",
                      label=c) for j, c in enumerate(columns)]
    scale = f"x: epoch {first} to {last}\ny: weight 0 to {top:g}"
    per_edge = ", one panel per edge" if name != "gamma" else ""
    axis.set_title(f"{TITLES[name]} over epochs{per_edge}", fontsize=10, loc="left")
    part.legend(handles=handles, loc="outside right center", fontsize=7, frameon=False,
                title=scale, title_fontsize=7)


def _round_up(value: float) -> float:
    """A round upper limit for a weight axis: 0.1, 0.2, ..., 1.0."""
    return min(1.0, max(0.1, math.ceil(value * 10 - 1e-9) / 10))


def _palette(count: int, name: str) -> list:
    import matplotlib

    colormap = matplotlib.colormaps["tab10" if name == "alpha" else "Dark2"]
    return [colormap(j % colormap.N) for j in range(count)]
