"""Pinned behaviour: a fixed-seed deterministic CPU search and training run, compared with the
files they wrote when the goldens were recorded.

This is the safety net for refactoring: the genotype files must be identical and every number in
`weights.jsonl` and `metrics.jsonl` must agree to 1e-6 (timings excluded). The runs go through
the command line, the stable contract, so moving code between modules does not touch this test.

Re-record (only for a deliberate change of behaviour, said in the commit message):
    ATTDARTS_RECORD_BEHAVIOUR=1 python -m pytest tests/test_behaviour.py
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from attdarts.cli import cli

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "behaviour"
RECORD = os.environ.get("ATTDARTS_RECORD_BEHAVIOUR") == "1"
TOLERANCE = 1e-6
# fields that measure the machine, not the computation
TIMING = {"seconds", "images_per_s", "elapsed"}

SEARCH = ["search", "genotypes/spaces/att_darts.geno", "--dataset", "synthetic", "--device", "cpu",
          "--channels", "4", "--layers", "5", "--batch-size", "4", "--epochs", "2",
          "--max-steps-per-epoch", "2", "--seed", "3", "--deterministic"]
TRAIN = ["train", "genotypes/att_darts.geno", "--dataset", "synthetic", "--device", "cpu",
         "--channels", "4", "--layers", "5", "--batch-size", "4", "--epochs", "2",
         "--max-steps-per-epoch", "2", "--seed", "3", "--deterministic"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(arguments: list[str], out: Path) -> None:
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(cli, [*arguments, "--out", str(out)], catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output


def _compared_files(run_dir: Path) -> list[str]:
    names = sorted(p.name for p in run_dir.iterdir()
                   if p.suffix == ".geno" or p.name in ("weights.jsonl", "metrics.jsonl"))
    return [name for name in names if name != "space.geno"]


def _close(a, b, where: str) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(set(a) - TIMING) == sorted(set(b) - TIMING), f"{where}: keys differ"
        for key in a:
            if key not in TIMING:
                _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: lengths differ"
        for index, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{index}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("kind, arguments", [("search", SEARCH), ("train", TRAIN)])
def test_fixed_seed_runs_reproduce_the_recorded_files(kind, arguments, tmp_path):
    out = tmp_path / kind
    _run(arguments, out)
    golden = GOLDEN / kind
    names = _compared_files(out)
    assert names, f"the {kind} run wrote none of the compared files"
    if RECORD:
        shutil.rmtree(golden, ignore_errors=True)
        golden.mkdir(parents=True)
        for name in names:
            shutil.copyfile(out / name, golden / name)
    assert golden.is_dir(), f"{golden} is missing: record it with ATTDARTS_RECORD_BEHAVIOUR=1"
    assert names == _compared_files(golden)
    for name in names:
        produced, recorded = (out / name).read_text(), (golden / name).read_text()
        if name.endswith(".geno"):
            assert produced == recorded, f"{kind}/{name} differs from the recorded genotype"
            continue
        lines = produced.splitlines()
        expected = recorded.splitlines()
        assert len(lines) == len(expected), f"{kind}/{name}: {len(lines)} lines, recorded {len(expected)}"
        for number, (line, wanted) in enumerate(zip(lines, expected), start=1):
            _close(json.loads(line), json.loads(wanted), f"{kind}/{name}:{number}")
