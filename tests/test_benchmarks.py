"""The benchmark scripts still run (a refactor once broke one silently): tiny CPU sizes, one
timed step; the numbers themselves are not checked here (timing does not belong in tests).
Every option of the GPU script (benchmarks/gpu_run.sh) is run once: `--graphs` (on the CPU the
captured step's eager fallback), `--compile` (with the cheap eager backend) and
`--seeds-together`, which print a measured row or, where their module is missing, one
"not available" line; and the summary the script writes from the JSON results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SEARCH_TINY = ["--batch-size", "2", "--channels", "4", "--layers", "3", "--orders", "1"]
TRAIN_TINY = ["--modes", "fp32", "--genotypes", "darts_v2", "--batch-size", "2", "--channels", "4",
              "--layers", "3"]


def run_script(script: str, *arguments: str) -> list[str]:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--device", "cpu",
                           "--steps", "1", "--warmup", "0", *arguments],
                          capture_output=True, text=True, env=ENVIRONMENT, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def has_row(lines: list[str], *words: str) -> bool:
    """A line that starts with these words (the columns are padded with spaces)."""
    return any(line.split()[:len(words)] == list(words) for line in lines)


@pytest.mark.parametrize("script, arguments, expected", [
    ("search_step.py", [*SEARCH_TINY, "--no-count"],
     [("plain", "order", "1:"), ("grouped", "order", "1:")]),
    ("train_step.py", [*TRAIN_TINY, "--no-count", "--graphs"],
     [("darts_v2", "plain+graphs"), ("darts_v2", "grouped+graphs")]),
    ("search_step.py", [*SEARCH_TINY, "--paths", "grouped", "--seeds-together", "2", "--no-count"],
     [("grouped+together2", "order", "1:")]),
    ("pdarts_stages.py", ["--quick", "--stages", "3"], [("stage", "3:")]),
])
def test_benchmark_script_runs_on_the_cpu(script, arguments, expected):
    lines = run_script(script, *arguments)
    for words in expected:
        assert has_row(lines, *words), "\n".join(lines)


@pytest.mark.slow  # dynamo traces the tiny supernet twice: minutes on 2 cores
def test_captured_and_compiled_search_rows_and_their_summary(tmp_path):
    lines = run_script("search_step.py", *SEARCH_TINY, "--paths", "plain,grouped", "--graphs",
                       "--compile", "--compile-backend", "eager", "--json",
                       str(tmp_path / "search.json"))
    assert "graphs: no CUDA here, so the same step runs eagerly (the CPU fallback)" in lines
    for path in ("plain", "grouped"):
        assert has_row(lines, f"{path}+graphs+compile", "order", "1:"), "\n".join(lines)
    result = json.loads((tmp_path / "search.json").read_text())
    rows = [row for row in result["rows"] if "ms_per_iteration" in row]
    assert all(row["graphs"] is False and row["graphs_requested"] for row in rows)

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _device import summarise
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    summary = summarise(tmp_path)
    assert summary.startswith(f"# Benchmark summary: {result['device']}")
    if rows:  # the compiled-cells module is there: a table row per variant
        assert "| plain+graphs+compile (eager fallback) | 1 |" in summary
    else:  # not there: the summary says so
        assert "Not measured:" in summary and "attdarts.networks.compiled" in summary


def test_search_methods_benchmark_runs_quick():
    """benchmarks/search_methods.py --quick: every K in its own process, a row each."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_methods.py"),
                           "--quick", "--ks", "1,2"],
                          capture_output=True, text=True, env=ENVIRONMENT, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for start in ("K=1: ", "K=2: ", "K=2 vs K=1: "):
        assert any(line.startswith(start) for line in lines), done.stdout


def test_samplers_benchmark_runs_quick():
    """benchmarks/samplers.py --quick: GDAS against DARTS, each case in its own process, a row
    each and the ratio; the numbers are not checked here."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "samplers.py"), "--quick",
                           "--spaces", "darts,gdas", "--paths", "grouped"],
                          capture_output=True, text=True, env=ENVIRONMENT, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for words in (("darts", "grouped"), ("gdas", "grouped"), ("gdas", "vs", "darts")):
        assert has_row(lines, *words), done.stdout
