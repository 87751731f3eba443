"""The test tools are bounded: a fresh `pip install -e ".[dev]"` gets a version the suite was run
with, not a new major release whose changes (pytest 9 refusing nested `approx`, say) fail tests
that passed the day before."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else None
requirements = pytest.importorskip("packaging.requirements")


def dev_requirements() -> list:
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs Python 3.11's tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [requirements.Requirement(text) for text in project["optional-dependencies"]["dev"]]


def test_every_test_tool_has_an_upper_bound():
    for requirement in dev_requirements():
        assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirement.specifier), (
            f"{requirement}: give it an upper bound (the next major version)")


def test_the_installed_test_tools_are_inside_their_bounds():
    """The suite runs with versions pyproject.toml allows (else the bounds are untested)."""
    for requirement in dev_requirements():
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            continue
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"{requirement.name} {installed} is outside pyproject.toml's {requirement.specifier}")
