"""The benchmark scripts still run (a refactor once broke one silently): tiny CPU sizes, one
timed step; the numbers themselves are not checked here (timing does not belong in tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("script, arguments, expected", [
    ("search_step.py", ["--orders", "1", "--batch-size", "2", "--channels", "4", "--layers", "3"],
     ["plain   order 1:", "grouped order 1:"]),
    ("train_step.py", ["--modes", "fp32", "--genotypes", "darts_v2", "--batch-size", "2",
                       "--channels", "4", "--layers", "3"],
     ["darts_v2     plain", "darts_v2     grouped"]),
])
def test_benchmark_script_runs_on_the_cpu(script, arguments, expected):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--device", "cpu",
                           "--steps", "1", "--warmup", "0", "--no-count", *arguments],
                          capture_output=True, text=True, env=ENVIRONMENT, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for start in expected:
        assert any(line.startswith(start) for line in done.stdout.splitlines()), done.stdout


def test_search_methods_benchmark_runs_quick():
    """benchmarks/search_methods.py --quick: every K in its own process, a row each."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_methods.py"),
                           "--quick", "--ks", "1,2"],
                          capture_output=True, text=True, env=ENVIRONMENT, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for start in ("K=1: ", "K=2: ", "K=2 vs K=1: "):
        assert any(line.startswith(start) for line in lines), done.stdout
