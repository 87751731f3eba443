"""benchmarks/costs.py still runs (tiny sizes, two timed repeats) and finds the counts equal;
the latency numbers themselves are not checked (timing does not belong in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cost_benchmark_runs_quick(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "costs.py"), "--quick", "--spaces", "darts",
         "--genotypes", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "costs.json").read_text())
    summary = result["spaces"][0]["summary"]
    assert summary["counts_equal"] == summary["genotypes"] >= 5  # 1 random + 4 zoo genotypes
    assert {"ratio_mean", "pearson", "spearman"} <= set(summary["plain"])
    assert "counts equal for" in (tmp_path / "costs.txt").read_text()
