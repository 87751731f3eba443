"""`attdarts plot`: a PNG of the architecture weights and a timeline of genotype changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.commands.plot import plot
from attdarts.tools.plot import (
    SYNTHETIC_LABEL, EpochWeights, _decimals, _heatmap, load_run, parse_weights_record,
    plot_weights, timeline, weights_figure,
)

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("ATTDARTS_UPDATE_GOLDENS") == "1"

EDGES = ["n0<-c_k2", "n0<-c_k1", "n1<-c_k2", "n1<-c_k1", "n1<-n0"]
OPERATIONS = ["none", "skip_connect", "sep_conv_3x3"]
ATTENTIONS = ["identity", "se", "cbam"]

GENOTYPE = """\
genotype search {{
    normal {{
        n0 = sep_conv_3x3(c_k2) >> se + sep_conv_3x3(c_k1) >> {first}
        n1 = skip_connect(n0) >> cbam + sep_conv_3x3(c_k1) >> cbam
        c_k = concat(n0, n1)
    }}
    reduce {{
        n0 = skip_connect(c_k2) + sep_conv_3x3(c_k1) >> se
        n1 = {second}(c_k2) + skip_connect(n0)
        c_k = concat(n0, n1)
    }}
}}
"""
VARIANTS = {1: ("se", "sep_conv_3x3"), 2: ("cbam", "sep_conv_3x3"), 3: ("cbam", "sep_conv_3x3"),
            4: ("cbam", "skip_connect")}


def _softmax_rows(rows: int, columns: int, epoch: int, shift: int) -> list[list[float]]:
    out = []
    for i in range(rows):
        raw = [1.0 + ((i + j + shift) % columns) * epoch * 0.3 for j in range(columns)]
        total = sum(raw)
        out.append([round(value / total, 4) for value in raw])
    return out


def _record(epoch: int, *, beta: bool = True, gamma: bool = False) -> dict:
    record: dict = {"epoch": epoch, "edges": EDGES, "operations": OPERATIONS,
                    "attentions": ATTENTIONS}
    for shift, kind in enumerate(("normal", "reduce")):
        cell: dict = {"alpha": _softmax_rows(len(EDGES), len(OPERATIONS), epoch, shift)}
        if beta:
            cell["beta"] = _softmax_rows(len(EDGES), len(ATTENTIONS), epoch, shift + 1)
        if gamma:
            cell["gamma"] = _softmax_rows(1, len(ATTENTIONS), epoch, shift)[0]
        record[kind] = cell
    return record


def _fake_run(directory: Path, *, beta: bool = True, gamma: bool = False,
              truncated: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(_record(epoch, beta=beta, gamma=gamma)) for epoch in VARIANTS]
    text = "\n".join(lines) + "\n"
    if truncated:  # a run still writing its last line
        text += json.dumps(_record(5))[:40]
    (directory / "weights.jsonl").write_text(text)
    for epoch, (first, second) in VARIANTS.items():
        (directory / f"genotype-epoch{epoch:03d}.geno").write_text(
            GENOTYPE.format(first=first, second=second))
    return directory


TIMELINE = """\
epoch 1: initial genotype
epoch 2: normal n0 edge c_k1: sep_conv_3x3>>se -> sep_conv_3x3>>cbam
epoch 4: reduce n1 edge c_k2: sep_conv_3x3 -> skip_connect
summary: 2 changes at 2 epochs; last change at epoch 4; last epoch 4
"""


def test_plot_writes_png_and_prints_timeline(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run", truncated=True)
    target = tmp_path / "weights.png"
    result = CliRunner().invoke(plot, [str(run), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert result.stdout == TIMELINE
    golden = GOLDEN / "plot_timeline.txt"
    if UPDATE:
        golden.write_text(result.stdout)
    assert result.stdout == golden.read_text()
    assert "weights.jsonl:5: skipped" in result.stderr
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000


def test_plain_darts_run_and_gamma(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "darts", beta=False, gamma=True)
    result = CliRunner().invoke(plot, [str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "weights.png").read_bytes().startswith(b"\x89PNG")


def test_reading_is_tolerant(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run")
    (run / "genotype-epoch010.geno").write_text("genotype half {\n   normal {")
    (run / "weights.jsonl").write_text(
        "\n" + json.dumps(_record(2)) + "\n[1, 2]\n" + json.dumps(_record(1)) + "\n")
    loaded = load_run(run)
    assert [record.epoch for record in loaded.weights] == [1, 2]
    assert [epoch for epoch, _ in loaded.genotypes] == [1, 2, 3, 4]
    assert any("genotype-epoch010.geno" in warning for warning in loaded.warnings)
    assert any("weights.jsonl:3" in warning for warning in loaded.warnings)
    # labels may sit inside a cell's object; a vector gamma is one row
    record = parse_weights_record({"epoch": 3, "normal": {"alpha": [[0.5, 0.5]], "gamma": [0.2, 0.8],
                                                          "edges": ["n0<-c_k1"]}})
    assert record.cells == {"normal": {"alpha": [[0.5, 0.5]], "gamma": [[0.2, 0.8]]}}
    assert record.labels["normal"]["edges"] == ["n0<-c_k1"]


def test_genotypes_only_and_nothing(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run")
    (run / "weights.jsonl").unlink()
    result = CliRunner().invoke(plot, [str(run)])
    assert result.exit_code == 0 and result.stdout == TIMELINE
    assert "no weights.jsonl" in result.stderr and not (run / "weights.png").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(plot, [str(empty)])
    assert result.exit_code == 2 and "found neither" in result.stderr


def test_timeline_of_nothing_and_of_one(tmp_path: Path) -> None:
    assert timeline([]) == []
    run = load_run(_fake_run(tmp_path / "run"))
    assert timeline(run.genotypes[2:3]) == [
        "epoch 3: initial genotype",
        "summary: no change in 1 saved epoch; last epoch 3",
    ]


def test_heatmap_colours_span_its_own_weights() -> None:
    """Near-uniform weights (a short search) still get the whole colour scale, and the colour bar
    and the cells carry enough decimals to tell them apart."""
    from matplotlib.figure import Figure

    alpha = [[0.1240, 0.1255, 0.1263], [0.1281, 0.1229, 0.1232]]
    beta = [[0.05, 0.9, 0.05], [0.3, 0.3, 0.4]]
    record = EpochWeights(5, {"normal": {"alpha": alpha, "beta": beta}},
                          {"normal": {"edges": EDGES[:2], "operations": OPERATIONS,
                                      "attentions": ATTENTIONS}})
    figure = Figure()
    axes = figure.subplots(1, 2)
    for axis, name in zip(axes, ("alpha", "beta")):
        _heatmap(axis, figure, record, "normal", name)
    alpha_image, beta_image = (axis.get_images()[0] for axis in axes)
    assert (alpha_image.norm.vmin, alpha_image.norm.vmax) == (0.1229, 0.1281)
    assert (beta_image.norm.vmin, beta_image.norm.vmax) == (0.05, 0.9)
    bars = [image.colorbar.ax for image in (alpha_image, beta_image)]
    assert [t.get_text() for t in bars[0].get_yticklabels()] == [
        "0.1229", "0.1242", "0.1255", "0.1268", "0.1281"]
    assert [t.get_text() for t in bars[1].get_yticklabels()] == [
        "0.05", "0.26", "0.47", "0.69", "0.90"]
    assert [t.get_text() for t in axes[0].texts][:3] == ["0.1240", "0.1255", "0.1263"]


def test_colour_bar_labels_are_distinct_however_close_the_weights() -> None:
    """Weights a few 1e-5 or 1e-3 apart (a short search): the colour bar's five tick labels are
    all different, its ends are the map's smallest and largest weights, and it says whose range
    it shows; equal weights get one tick and say so."""
    from matplotlib.figure import Figure

    for spread, ends in ((4e-5, ("0.125000", "0.125040")), (1e-3, ("0.12500", "0.12600"))):
        alpha = [[0.125, 0.125 + spread / 4, 0.125 + spread], [0.125 + spread / 2] * 3]
        record = EpochWeights(1, {"normal": {"alpha": alpha}},
                              {"normal": {"edges": EDGES[:2], "operations": OPERATIONS}})
        figure = Figure()
        axis = figure.subplots()
        _heatmap(axis, figure, record, "normal", "alpha")
        bar = axis.get_images()[0].colorbar
        labels = [t.get_text() for t in bar.ax.get_yticklabels()]
        assert len(labels) == 5 and len(set(labels)) == 5, labels
        assert (labels[0], labels[-1]) == ends
        assert bar.ax.get_ylabel() == "this map's own range"
    record = EpochWeights(1, {"normal": {"alpha": [[0.25] * 3]}},
                          {"normal": {"edges": EDGES[:1], "operations": OPERATIONS}})
    figure = Figure()
    axis = figure.subplots()
    _heatmap(axis, figure, record, "normal", "alpha")
    bar = axis.get_images()[0].colorbar
    assert [t.get_text() for t in bar.ax.get_yticklabels()] == ["0.2500"]
    assert bar.ax.get_ylabel() == "all equal"


def test_decimals_follow_the_spread() -> None:
    assert [_decimals(spread) for spread in (0.9, 0.1, 0.05, 0.008, 1e-6, 0.0)] == [2, 2, 3, 4, 4, 4]


def test_plot_is_deterministic(tmp_path: Path) -> None:
    weights = [parse_weights_record(_record(epoch, beta=False)) for epoch in (1, 2)]
    first, second = (plot_weights(weights, tmp_path / name) for name in ("a.png", "b.png"))
    assert first.read_bytes() == second.read_bytes()


def test_plot_imports_no_torch() -> None:
    code = ("import sys\nimport attdarts.tools.plot, attdarts.commands.plot\n"
            "assert 'torch' not in sys.modules\nassert 'matplotlib' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def _small_run(directory: Path, *, marked: bool = False) -> Path:
    """A one-epoch run, without beta: cheap to draw."""
    directory.mkdir(parents=True, exist_ok=True)
    record = _record(1, beta=False)
    if marked:
        record["synthetic"] = True
    (directory / "weights.jsonl").write_text(json.dumps(record) + "\n")
    return directory


def test_the_suffix_picks_the_format(tmp_path: Path) -> None:
    run = _small_run(tmp_path / "run")
    magic = {"svg": b"<?xml", "pdf": b"%PDF", "PNG": b"\x89PNG"}
    for suffix, start in magic.items():
        target = tmp_path / f"weights.{suffix}"
        result = CliRunner().invoke(plot, [str(run), "-o", str(target)])
        assert result.exit_code == 0, result.output
        assert target.read_bytes().startswith(start)


def test_an_unknown_suffix_is_refused_before_drawing(tmp_path: Path) -> None:
    run = _small_run(tmp_path / "run")
    for name in ("p.txt", "picture"):
        target = tmp_path / name
        result = CliRunner().invoke(plot, [str(run), "-o", str(target)])
        assert result.exit_code == 2
        assert "*.png, *.pdf, *.svg" in result.stderr and "Traceback" not in result.output
        assert not target.exists()


def test_the_picture_is_written_atomically(tmp_path: Path, monkeypatch) -> None:
    """A failed write (here the drawing itself fails half-way) leaves the old picture and no
    temporary file; the file appears only once complete."""
    import matplotlib.figure

    run = _small_run(tmp_path / "run")
    target = tmp_path / "out.png"
    target.write_bytes(b"old picture")

    def half_written(self, file, **kwargs):
        file.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_written)
    result = CliRunner().invoke(cli, ["plot", str(run), "-o", str(target)])
    assert result.exit_code == 1
    assert f"attdarts: cannot write {target}: No space left on device" in result.stderr
    assert target.read_bytes() == b"old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "run"]


def _texts(figure) -> list[str]:
    from matplotlib.text import Text

    return [text.get_text() for text in figure.findobj(Text)]


def test_synthetic_runs_are_labelled(tmp_path: Path) -> None:
    plain = load_run(_small_run(tmp_path / "plain"))
    assert not plain.synthetic
    assert not any(SYNTHETIC_LABEL in text for text in _texts(weights_figure(plain.weights, "plain")))
    marked = load_run(_small_run(tmp_path / "marked", marked=True))
    assert marked.synthetic and marked.weights[0].synthetic
    title = weights_figure(marked.weights, "marked")._suptitle.get_text()
    assert title.startswith(SYNTHETIC_LABEL)
    # an older run marks it only in config.json or metrics.jsonl
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"dataset": "synthetic"}))
    assert load_run(tmp_path / "plain").synthetic
    other = _small_run(tmp_path / "other")
    (other / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2, "synthetic": true}\n')
    run = load_run(other)
    assert run.synthetic
    figure = weights_figure(run.weights, "other", synthetic=run.synthetic)
    assert any(text.startswith(SYNTHETIC_LABEL) for text in _texts(figure))


def test_damaged_lines_are_skipped_not_fatal(tmp_path: Path) -> None:
    """A line that is not UTF-8, or holds a number JSON turns into infinity, is one skipped
    line among the others, in plot as in derive."""
    from attdarts.tools.plot import read_weights
    run = _fake_run(tmp_path / "run", truncated=False)
    path = run / "weights.jsonl"
    good = path.read_bytes()
    path.write_bytes(good + b'{"epoch": 1e999}\n' + b"\xff\xfe not text\n")
    warnings: list[str] = []
    records = read_weights(path, warnings)
    assert len(records) == len([line for line in good.splitlines() if line.strip()])
    assert len(warnings) == 2 and all("skipped" in warning for warning in warnings)
