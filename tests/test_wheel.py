"""The installed package is complete (issue 19, item 2): the sdist is built from the checkout, a
wheel from that sdist, the wheel is installed into a fresh virtual environment, and README's zoo
examples (the Python API block, `check`, `compile`, `export-model`, a search by zoo space name on
cifar10-mini) run from a directory outside the checkout, against the installed files only.

The environment sees the system's site-packages (torch is not installed again) but gets the
wheel's attdarts, checked through `attdarts.__file__`; PYTHONPATH is cleared so that the
checkout cannot leak in. Building needs hatchling: the one installed here, or one pip fetches
into the environment; without either the test is skipped and says why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import tarfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 600):
    return subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _checked(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _readme_python_example() -> str:
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, attdarts script, environment, a working directory outside the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(base / "venv")
    python = base / "venv" / "bin" / "python"
    if importlib.util.find_spec("hatchling") is None:
        fetched = _run([python, "-m", "pip", "install", "-q", "hatchling>=1.21"], base, env)
        if fetched.returncode != 0:
            pytest.skip("building the wheel needs hatchling, which is neither installed nor "
                        f"installable here: {fetched.stderr.strip().splitlines()[-1:]}")
    dist = base / "dist"
    _checked(_run([python, "-m", "hatchling", "build", "-t", "sdist", "-d", dist], ROOT, env))
    sdist = next(dist.glob("attdarts-*.tar.gz"))
    _checked(_run([python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                   "-w", dist, sdist], base, env))
    wheel = next(dist.glob("attdarts-*.whl"))
    _checked(_run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
                  base, env))
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return python, base / "venv" / "bin" / "attdarts", env, elsewhere


def test_the_wheel_carries_the_zoo_the_grammar_cifar10_mini_and_the_licence(installed):
    python, _, env, elsewhere = installed
    code = ("import attdarts, json, importlib.metadata as md\n"
            "from attdarts import api\n"
            "from attdarts.language import grammar\n"
            "print(json.dumps({'file': attdarts.__file__, 'zoo': str(api.zoo_dir()),\n"
            "  'genotypes': api.zoo_names(), 'spaces': api.zoo_names('space'),\n"
            "  'grammar': str(grammar.grammar_path()),\n"
            "  'licence': [str(f) for f in md.files('attdarts') if 'LICENSE' in str(f)]}))\n")
    facts = json.loads(_checked(_run([python, "-c", code], elsewhere, env)))
    package = Path(facts["file"]).parent
    assert "site-packages" in package.parts and ROOT not in package.parents, facts["file"]
    assert Path(facts["zoo"]) == package / "genotypes"
    assert Path(facts["grammar"]) == package / "grammar" / "attdarts.lark"
    checkout_zoo = ROOT / "genotypes"
    assert facts["genotypes"] == sorted(p.stem for p in checkout_zoo.glob("*.geno"))
    assert facts["spaces"] == sorted(p.stem for p in (checkout_zoo / "spaces").glob("*.geno"))
    assert facts["licence"], "the wheel has no LICENSE file"
    shipped = package / "data" / "cifar10-mini"
    assert len(list(shipped.rglob("*.jpg"))) == 3000
    assert (shipped / "README.md").is_file() and (shipped / "MANIFEST.sha256").is_file()


def test_readme_python_api_example_runs_from_the_wheel(installed):
    python, _, env, elsewhere = installed
    folder = elsewhere / "api"
    folder.mkdir()
    (folder / "example.py").write_text(_readme_python_example(), encoding="utf-8")
    printed = _checked(_run([python, "example.py"], folder, env)).splitlines()
    assert printed[0] == "3349342"
    assert (folder / "runs" / "api-train" / "last.pt").is_file()
    assert (folder / "runs" / "api-search" / "genotype.geno").is_file()


def test_search_by_zoo_space_name_on_cifar10_mini_from_the_wheel(installed):
    python, attdarts, env, elsewhere = installed
    code = ("import attdarts\n"
            "found = attdarts.search('darts', dataset='cifar10-mini', epochs=1, channels=4,\n"
            "    layers=3, batch_size=8, max_steps_per_epoch=2, out='runs/api', device='cpu')\n"
            "print(found.genotype.name)\n")
    _checked(_run([python, "-c", code], elsewhere, env))
    assert (elsewhere / "runs" / "api" / "genotype.geno").is_file()
    _checked(_run([attdarts, "search", "darts", "--dataset", "cifar10-mini", "--epochs", "1",
                   "--channels", "4", "--layers", "3", "--batch-size", "8",
                   "--max-steps-per-epoch", "2", "--device", "cpu", "--quiet", "--out",
                   "runs/cli"], elsewhere, env))
    config = json.loads((elsewhere / "runs" / "cli" / "config.json").read_text())
    assert config["dataset"] == "cifar10-mini"
    assert Path(config["space_file"]).parent.parent.name == "genotypes"
    _checked(_run([attdarts, "check", "runs/cli/genotype.geno"], elsewhere, env))


def test_cli_zoo_examples_run_from_the_wheel(installed):
    python, attdarts, env, elsewhere = installed
    zoo = _checked(_run([python, "-c", "from attdarts import api; print(api.zoo_dir())"],
                        elsewhere, env)).strip()
    assert _checked(_run([attdarts, "check", zoo], elsewhere, env)) == ""  # piped: no summary
    summary = json.loads(_checked(_run([attdarts, "compile", "darts_v2", "--format", "json"],
                                       elsewhere, env)))
    assert summary["parameters"] == 3_349_342
    space = json.loads(_checked(_run([attdarts, "compile", Path(zoo) / "spaces" / "darts.geno",
                                      "--format", "json"], elsewhere, env)))
    assert space["weights"] == 1_930_618
    unknown = _run([attdarts, "compile", "darts_v3"], elsewhere, env)
    assert unknown.returncode == 2 and "did you mean 'darts_v2'?" in unknown.stderr
    # README's export of a zoo genotype: ONNX with the export extra, else torch.export's .pt2
    output = "darts_v2.onnx" if importlib.util.find_spec("onnxruntime") else "v2.pt2"
    _checked(_run([attdarts, "export-model", "darts_v2", "-o", output, "--batch", "1"],
                  elsewhere, env))
    assert (elsewhere / output).stat().st_size > 1_000_000


def test_sdist_holds_what_readme_and_the_wheel_need(installed):
    python, _, _, _ = installed
    dist = python.parent.parent.parent / "dist"  # base/venv/bin/python -> base/dist
    with tarfile.open(next(dist.glob("attdarts-*.tar.gz"))) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in ("LICENSE", "README.md", "pyproject.toml", "grammar/attdarts.lark",
                   "genotypes/darts_v2.geno", "genotypes/spaces/att_darts.geno",
                   "attdarts/data/cifar10-mini/README.md", "scripts/demo.sh",
                   "examples/genotypes.py"):
        assert needed in names, needed
