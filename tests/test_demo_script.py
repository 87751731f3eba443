"""scripts/demo.sh deletes only its own earlier output (issue 19, item 6): its first step
(`--prepare-only`, the step the whole demo runs first) refuses a directory that holds anything
but a previous demo's output, in one line, and deletes nothing there."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARK = ".attdarts-demo"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the demo is a bash script")


def _prepare(target: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ATTDARTS_SETUP": "0"}
    return subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--prepare-only", str(target)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_a_directory_with_user_files_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "thesis"
    (target / "chapter").mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    (target / "chapter" / "one.tex").write_text("also mine")
    result = _prepare(target)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "is not a previous demo output" in result.stderr
    assert (target / "notes.txt").read_text() == "mine"
    assert (target / "chapter" / "one.tex").read_text() == "also mine"
    assert not (target / MARK).exists()


def test_a_file_is_refused(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("a,b\n")
    result = _prepare(target)
    assert result.returncode == 1 and "is not a directory" in result.stderr
    assert target.read_text() == "a,b\n"


def test_an_absent_or_empty_directory_is_used_and_marked(tmp_path):
    for target in (tmp_path / "new" / "demo", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
        result = _prepare(target)
        assert result.returncode == 0, result.stderr
        assert [path.name for path in target.iterdir()] == [MARK]


def test_a_previous_demo_output_is_emptied(tmp_path):
    target = tmp_path / "demo"
    assert _prepare(target).returncode == 0
    (target / "search").mkdir()
    (target / "search" / "genotype.geno").write_text("old run")
    result = _prepare(target)
    assert result.returncode == 0, result.stderr
    assert [path.name for path in target.iterdir()] == [MARK]
