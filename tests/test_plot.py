"""`attdarts plot`: a PNG of the architecture weights and a timeline of genotype changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from attdarts.commands.plot import plot
from attdarts.plot import load_run, parse_weights_record, timeline

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
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


def test_plot_imports_no_torch() -> None:
    code = ("import sys\nimport attdarts.plot, attdarts.commands.plot\n"
            "assert 'torch' not in sys.modules\nassert 'matplotlib' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert result.returncode == 0, result.stderr
