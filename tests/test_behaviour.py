"""Pinned behaviour, on every machine: a fixed-seed deterministic search and training, in float64,
compared with the files they wrote when the goldens (tests/golden/behaviour/) were recorded.

This is the safety net for refactoring. The runs go through the command line, the stable
contract, so moving code between modules does not touch this test.

Why float64. float32 kernels round differently on different CPUs, and on one CPU under ATen's
different kernels (`ATEN_CPU_CAPABILITY` = `default`, `avx2`, `avx512`): after these few steps
the float32 losses differed in the 5th digit and a genotype changed, so float32 goldens held only
on the machine that wrote them. In float64 the same runs agree to about 1e-15 (measured between
the three capabilities on one Xeon; the differences are in summation order), so each check below
has a float64 tolerance, far above that and far below any change of behaviour.

How. Each run is a child process (`python tests/test_behaviour.py OUT`), one per capability:
`default`, `avx2` and none set (the machine's best, AVX-512 where the CPU has it), started
together, each with one torch thread. The child sets float64 where a run chooses its dtype:
torch's default dtype (the supernet and network are built in it) and the loaders' normalised
images, cast to float64 (the seeds-together tests do the same). A capability the CPU lacks (the
child's environment.json says which ran) is skipped.

What is compared:
- metrics.jsonl: every number to `TOLERANCE` (relative, or absolute near 0); wall-clock fields
  are not compared;
- weights.jsonl: the file rounds each weight to float32 (its shortest decimal), so a float64
  difference of 1e-15 can move a value by one float32 step (at most 6e-8 below 1): its numbers
  are compared to `WEIGHT_TOLERANCE` absolute;
- genotypes, decision by decision, where the recorded weights decide. After two Adam steps from
  zero-initialised architecture weights many candidates are tied to 1e-8, and the order among
  tied weights is whatever the rounding makes of it. So a decision is compared only when the
  golden weights.jsonl of that epoch decides it by more than `TIE`: whether an edge is kept (its
  best non-none operation weight beats the strongest dropped edge, or loses to the weakest kept
  one, by more than `TIE`), and for an edge kept in both files its operation (best non-none
  weight ahead of the second by more than `TIE`) and its attention (likewise, identity
  included). `TIE` is more than twice `WEIGHT_TOLERANCE`, so a decision compared cannot flip
  within the weights' tolerance. Names, meta lines and the output line are compared exactly, and
  most decisions must be compared (`test_the_goldens_decide_most_choices`);
- train/genotype.geno (the genotype trained, as given): exactly.

Re-record (only for a deliberate change of behaviour, said in the commit message):
    python tests/test_behaviour.py --record
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "behaviour"
TOLERANCE = 1e-9  # float64 numbers of metrics.jsonl
WEIGHT_TOLERANCE = 1e-7  # weights.jsonl, float32-rounded
TIE = 1e-6  # a genotype decision closer than this in the recorded weights is not compared
TIMING = {"seconds", "images_per_s", "elapsed"}  # fields that measure the machine
CHILD_TIMEOUT = 600

# two epochs of two steps, C=4 (about 5 s of CPU for the search, 1 s for the training)
COMMON = ["--dataset", "synthetic", "--device", "cpu", "--channels", "4", "--epochs", "2",
          "--max-steps-per-epoch", "2", "--seed", "3", "--deterministic", "--threads", "1",
          "--quiet"]
RUNS = {
    "search": ["search", "genotypes/spaces/att_darts.geno", "--layers", "3", "--batch-size", "2",
               *COMMON],
    "train": ["train", "genotypes/att_darts.geno", "--layers", "5", "--batch-size", "4", *COMMON],
}
# ATEN_CPU_CAPABILITY of each child; None: unset, the machine's best
CAPABILITIES = {"default": "default", "avx2": "avx2", "best": None}


# ---------------------------------------------------------------------------------------------
# The pinned runs (in the child process)


def run_pinned(out: Path) -> None:
    """Both runs, in float64, into out/search and out/train (this process's ATen kernels)."""
    import torch
    from click.testing import CliRunner

    from attdarts.cli import cli
    from attdarts.runs.data import loaders

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    normalise = loaders.normalise
    loaders.normalise = lambda *arguments: normalise(*arguments).double()
    os.chdir(ROOT)
    for kind, arguments in RUNS.items():
        result = CliRunner().invoke(cli, [*arguments, "--out", str(out / kind)])
        if result.exit_code != 0:
            raise SystemExit(f"{kind} failed ({result.exit_code}):\n{result.output}")


def compared_files(run_dir: Path) -> list[str]:
    names = sorted(p.name for p in run_dir.iterdir()
                   if p.suffix == ".geno" or p.name in ("weights.jsonl", "metrics.jsonl"))
    return [name for name in names if name != "space.geno"]


def record(out: Path) -> None:
    """Copy the compared files of the runs in `out` into the goldens."""
    for kind in RUNS:
        golden = GOLDEN / kind
        shutil.rmtree(golden, ignore_errors=True)
        golden.mkdir(parents=True)
        for name in compared_files(out / kind):
            shutil.copyfile(out / kind / name, golden / name)
        print(f"recorded {golden}: {', '.join(compared_files(golden))}")


# ---------------------------------------------------------------------------------------------
# Comparing


def close(a, b, where: str, tolerance: float) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert sorted(set(a) - TIMING) == sorted(set(b) - TIMING), f"{where}: keys differ"
        for key in a:
            if key not in TIMING:
                close(a[key], b[key], f"{where}.{key}", tolerance)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: lengths differ"
        for index, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{where}[{index}]", tolerance)
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def compare_lines(produced: Path, recorded: Path, where: str, tolerance: float) -> None:
    lines, expected = produced.read_text().splitlines(), recorded.read_text().splitlines()
    assert len(lines) == len(expected), f"{where}: {len(lines)} lines, recorded {len(expected)}"
    for number, (line, wanted) in enumerate(zip(lines, expected), start=1):
        close(json.loads(line), json.loads(wanted), f"{where}:{number}", tolerance)


def _margin(row: list[float], names: list[str], skip: str | None) -> tuple[str, float]:
    """The strongest candidate of a row (leaving out `skip`) and its lead over the second."""
    ranked = sorted(((weight, name) for weight, name in zip(row, names) if name != skip),
                    reverse=True)
    return ranked[0][1], ranked[0][0] - ranked[1][0]


def compare_genotypes(produced_text: str, golden_text: str, weights: dict,
                      where: str) -> tuple[int, int]:
    """Assert the genotypes agree on every decision the golden weights decide (module
    docstring); returns (decisions compared, decisions in all)."""
    from attdarts.language.transform import parse_text

    produced, golden = (parse_text(text).genotype() for text in (produced_text, golden_text))
    assert produced.name == golden.name, f"{where}: name"
    assert produced.model_dump()["meta"] == golden.model_dump()["meta"], f"{where}: meta lines"
    operations, attentions = weights["operations"], weights["attentions"]
    compared = total = 0
    for kind in ("normal", "reduce"):
        ours, theirs = getattr(produced, kind), getattr(golden, kind)
        assert ours.output.model_dump() == theirs.output.model_dump(), f"{where}: {kind} output"
        assert [node.name for node in ours.nodes] == [node.name for node in theirs.nodes]
        rows = {}  # node -> input -> (alpha row, beta row)
        for name, alpha, beta in zip(weights["edges"], weights[kind]["alpha"],
                                     weights[kind]["beta"]):
            node, source = name.split("<-")
            rows.setdefault(node, {})[source] = (alpha, beta)
        for mine, recorded in zip(ours.nodes, theirs.nodes):
            at = f"{where}: {kind} {mine.name}"
            # an edge's strength: its best non-none operation weight (Eq. 14)
            strength = {source: max(w for w, name in zip(alpha, operations) if name != "none")
                        for source, (alpha, _) in rows[mine.name].items()}
            keep = len(recorded.edges)
            ranked = sorted(strength.values(), reverse=True)
            weakest_kept = ranked[keep - 1]
            strongest_dropped = ranked[keep] if len(ranked) > keep else -math.inf
            edges_mine = {edge.input: edge for edge in mine.edges}
            edges_recorded = {edge.input: edge for edge in recorded.edges}
            for source, weight in strength.items():
                total += 1
                if weight > strongest_dropped + TIE or weight < weakest_kept - TIE:
                    compared += 1
                    assert (source in edges_mine) == (source in edges_recorded), (
                        f"{at}: edge from {source} kept in one genotype only")
                if source not in edges_mine or source not in edges_recorded:
                    continue
                alpha, beta = rows[mine.name][source]
                edge, wanted = edges_mine[source], edges_recorded[source]
                total += 2
                if _margin(alpha, operations, "none")[1] > TIE:
                    compared += 1
                    assert edge.operation.name == wanted.operation.name, (
                        f"{at}: operation on the edge from {source}: {edge.operation.name} "
                        f"!= recorded {wanted.operation.name}")
                if _margin(beta, attentions, None)[1] > TIE:
                    compared += 1
                    attention = edge.attention.name if edge.attention else "identity"
                    recorded_attention = wanted.attention.name if wanted.attention else "identity"
                    assert attention == recorded_attention, (
                        f"{at}: attention on the edge from {source}: {attention} != recorded "
                        f"{recorded_attention}")
    return compared, total


def compare_run(kind: str, out: Path) -> tuple[int, int]:
    """Every compared file of out/KIND against its golden; (genotype decisions compared, all)."""
    produced, golden = out / kind, GOLDEN / kind
    assert golden.is_dir(), f"{golden} is missing: python tests/test_behaviour.py --record"
    names = compared_files(produced)
    assert names == compared_files(golden), f"{kind}: other files than recorded"
    decisions = [0, 0]
    for name in names:
        where = f"{kind}/{name}"
        if name == "metrics.jsonl":
            compare_lines(produced / name, golden / name, where, TOLERANCE)
        elif name == "weights.jsonl":
            compare_lines(produced / name, golden / name, where, WEIGHT_TOLERANCE)
        elif name.startswith("genotype-epoch"):  # a search epoch's genotype, and its weights
            epoch = int(name[len("genotype-epoch"):-len(".geno")])
            weights = json.loads((golden / "weights.jsonl").read_text().splitlines()[epoch - 1])
            assert weights["epoch"] == epoch
            counts = compare_genotypes((produced / name).read_text(), (golden / name).read_text(),
                                       weights, where)
            decisions = [decisions[0] + counts[0], decisions[1] + counts[1]]
        elif kind == "search":  # genotype.geno: the last epoch's
            last = sorted(n for n in names if n.startswith("genotype-epoch"))[-1]
            assert (produced / name).read_text() == (produced / last).read_text(), where
        else:  # the genotype trained, as given
            assert (produced / name).read_text() == (golden / name).read_text(), where
    return decisions[0], decisions[1]


# ---------------------------------------------------------------------------------------------
# The tests


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """The pinned runs under each ATen capability, started together (one thread each)."""
    import attdarts

    source = str(Path(attdarts.__file__).resolve().parent.parent)  # the attdarts under test
    started = {}
    for name, capability in CAPABILITIES.items():
        out = tmp_path_factory.mktemp(f"behaviour-{name}")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
        env.pop("ATEN_CPU_CAPABILITY", None)
        if capability is not None:
            env["ATEN_CPU_CAPABILITY"] = capability
        process = subprocess.Popen([sys.executable, __file__, str(out)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started[name] = (process, out)
    yield started
    for process, _ in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def finished(children, name: str) -> Path:
    process, out = children[name]
    try:
        output, _ = process.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the pinned runs under {name} took more than {CHILD_TIMEOUT} s")
    assert process.returncode == 0, f"the pinned runs under {name} failed:\n{output}"
    return out


@pytest.mark.parametrize("capability", list(CAPABILITIES))
def test_fixed_seed_runs_reproduce_the_recorded_files(children, capability):
    out = finished(children, capability)
    used = json.loads((out / "search" / "environment.json").read_text())["cpu_capability"]
    wanted = CAPABILITIES[capability]
    if wanted is not None and used != wanted.upper():
        pytest.skip(f"this CPU runs ATEN_CPU_CAPABILITY={wanted} as {used}")
    for kind in RUNS:
        compare_run(kind, out)


def test_the_goldens_decide_most_choices():
    """The genotype comparison is not vacuous: the recorded runs decide most of their choices
    by more than TIE (the goldens compared with themselves)."""
    compared, total = compare_run("search", GOLDEN)
    assert total > 0 and compared >= 0.75 * total, (compared, total)


def test_a_changed_decision_is_caught():
    """Another operation on a kept edge fails the comparison where the weights decide that
    edge's operation, and passes where its two best operations are tied."""
    golden = GOLDEN / "search"
    text = (golden / "genotype-epoch002.geno").read_text()
    weights = json.loads((golden / "weights.jsonl").read_text().splitlines()[1])
    operations = weights["operations"]
    compare_genotypes(text, text, weights, "itself")
    checked = 0
    for index, (name, alpha) in enumerate(zip(weights["edges"], weights["normal"]["alpha"])):
        node, source = name.split("<-")
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{node} ="))
        chosen = next((op for op in operations if f" {op}({source})" in line), None)
        if chosen is None or _margin(alpha, operations, "none")[1] <= TIE:
            continue  # not kept, or already tied
        other = "max_pool_3x3" if chosen != "max_pool_3x3" else "avg_pool_3x3"
        changed = text.replace(line, line.replace(f" {chosen}({source})", f" {other}({source})"))
        with pytest.raises(AssertionError, match=f"operation on the edge from {source}"):
            compare_genotypes(changed, text, weights, "changed")
        tied = json.loads(json.dumps(weights))
        row = tied["normal"]["alpha"][index]
        row[operations.index(other)] = row[operations.index(chosen)]
        compare_genotypes(changed, text, tied, "tied")  # a tie decides nothing: not compared
        checked += 1
    assert checked >= 4


if __name__ == "__main__":
    if sys.argv[1:] == ["--record"]:
        with tempfile.TemporaryDirectory() as scratch:
            run_pinned(Path(scratch))
            record(Path(scratch))
    elif len(sys.argv) == 2 and not sys.argv[1].startswith("-"):
        run_pinned(Path(sys.argv[1]))
    else:
        raise SystemExit("usage: python tests/test_behaviour.py OUT | --record")
