"""Budgeted derivation (`attdarts.tools.budget_derive`, `attdarts derive`): exact against brute
force on 2-node spaces (best score within caps, and the whole score/cost front), the run's own
derivation without caps, the space's own caps, a run directory end to end, the command line."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from attdarts.cli import cli
from attdarts.language import ir
from attdarts.language.printer import format_space
from attdarts.language.transform import parse_file, parse_text
from attdarts.networks.costs import build_cost_table
from attdarts.networks.derive import derive_genotype
from attdarts.networks.supernet import column_names, compile_supernet, normalise_edges
from attdarts.runs.search.outputs import weights_record
from attdarts.tools.budget_derive import (
    BudgetError, Cap, RunWeights, budget_derive, derive_run, edge_choices, genotype_score,
    parse_count, parse_latency, read_run_weights,
)

ROOT = Path(__file__).resolve().parents[2]
SPACES = ROOT / "genotypes" / "spaces"

TWO_NODES_KEEP_ONE = """space two {
    operations = [none, skip_connect, sep_conv_3x3, max_pool_3x3]
    attentions = [identity, se]
    nodes = 2
    keep = 1
    location = after_every
}"""
TWO_NODES_OUTPUT = """space two_out {
    operations = [none, skip_connect, sep_conv_3x3]
    attentions = [identity, se]
    nodes = 2
    keep = 2
    location = after_every_and_end
}"""
TWO_NODES_MIXED = """space two_mixed {
    operations = [none, sep_conv_3x3, avg_pool_3x3]
    attentions = [identity, cbam]
    nodes = 2
    keep = 2
    location = mixed_with_operation
    edge_normalisation = true
}"""


def random_weights(space: ir.Space, seed: int) -> tuple[RunWeights, dict]:
    """Softmaxed weights as weights.jsonl holds them, and the raw tensors behind them."""
    generator = torch.Generator().manual_seed(seed)
    edges = sum(2 + node for node in range(space.nodes))
    cells, raw = {}, {}
    for kind in ir.CELL_KINDS:
        cells[kind], raw[kind] = {}, {}
        for name, labels in column_names(space).items():
            if name == "edges":
                tensor = torch.randn(edges, generator=generator, dtype=torch.float64)
                rows = [normalise_edges(tensor, space.nodes).tolist()]
            else:
                tensor = torch.randn(1 if name == "gamma" else edges, len(labels),
                                     generator=generator, dtype=torch.float64)
                rows = torch.softmax(tensor, -1).tolist()
            raw[kind][name], cells[kind][name] = tensor, rows
    return RunWeights(1, cells), raw


def all_cells(space: ir.Space, weights: RunWeights, kind: str) -> list[ir.Cell]:
    """Every cell derivation could write from `weights`: per node every `keep` inputs, every
    candidate pair on each, every output attention."""
    choices = edge_choices(space, [1.0] * len(column_names(space)["alpha"]),
                           [1.0] * len(column_names(space).get("beta", [0])))
    pairs = sorted({(c.operation, c.attention) for c in choices},
                   key=lambda pair: (pair[0].name, "" if pair[1] is None else pair[1].name))
    outputs = [None]
    if space.location_spec.output_attention:
        outputs = [None if call.name == "identity" else call for call in space.attentions]
    per_node = []
    for node in range(space.nodes):
        inputs = (*ir.INPUTS, *(f"n{i}" for i in range(node)))
        options = []
        for subset in itertools.combinations(range(2 + node), space.keep):
            for picked in itertools.product(pairs, repeat=space.keep):
                options.append(ir.Node(name=f"n{node}", edges=tuple(
                    ir.Edge(operation=op, input=inputs[i], attention=att)
                    for i, (op, att) in zip(subset, picked))))
        per_node.append(options)
    names = tuple(f"n{node}" for node in range(space.nodes))
    return [ir.Cell(kind=kind, nodes=nodes, output=ir.Output(nodes=names, attention=output))
            for nodes in itertools.product(*per_node) for output in outputs]


def brute_force(space, weights, table, measures):
    """(scores, costs per measure) of every genotype of the space: every normal cell with every
    reduce cell, each priced and scored by the table and `genotype_score` on its own."""
    normal_cells = all_cells(space, weights, "normal")
    reduce_cells = all_cells(space, weights, "reduce")

    def genotype(normal, reduce):
        return ir.Genotype(name="g", normal=normal, reduce=reduce)

    reference = genotype(normal_cells[0], reduce_cells[0])
    base = table.price(reference)
    base_score = genotype_score(reference, space, weights)
    # price and score are sums over the cells, so each cell's part is measured against the
    # reference and every pair is a sum (numpy), still every genotype of the space
    normal = [(genotype_score(genotype(c, reduce_cells[0]), space, weights) - base_score,
               [table.price(genotype(c, reduce_cells[0]))[m] - base[m] for m in measures])
              for c in normal_cells]
    reduce = [(genotype_score(genotype(normal_cells[0], c), space, weights) - base_score,
               [table.price(genotype(normal_cells[0], c))[m] - base[m] for m in measures])
              for c in reduce_cells]
    scores = base_score + np.add.outer([s for s, _ in normal], [s for s, _ in reduce])
    costs = [base[m] + np.add.outer([c[i] for _, c in normal], [c[i] for _, c in reduce])
             for i, m in enumerate(measures)]
    return scores.ravel(), [c.ravel() for c in costs], len(normal_cells) * len(reduce_cells)


@pytest.mark.parametrize("text", [TWO_NODES_KEEP_ONE, TWO_NODES_OUTPUT, TWO_NODES_MIXED])
def test_exact_against_brute_force_on_two_node_spaces(text, one_thread):
    space = parse_text(text).space()
    table = build_cost_table(space, channels=4, layers=3)
    weights, _ = random_weights(space, seed=len(text))
    measures = ["multiply_adds", "parameters"]
    scores, (macs, params), count = brute_force(space, weights, table, measures)
    assert count >= 2000
    free = budget_derive(space, weights, table)
    assert free.score == pytest.approx(scores.max(), abs=1e-9)
    for fraction in (0.25, 0.5, 0.8):
        cap = macs.min() + fraction * (macs[scores.argmax()] - macs.min())
        derived = budget_derive(space, weights, table, [Cap("multiply_adds", cap)])
        assert derived.costs["multiply_adds"] <= cap
        assert derived.score == pytest.approx(scores[macs <= cap].max(), abs=1e-9)
        assert derived.score == pytest.approx(genotype_score(derived.genotype, space, weights))
    # two caps at once
    cap_macs = np.median(macs)
    cap_params = np.median(params)
    both = budget_derive(space, weights, table, [Cap("multiply_adds", cap_macs),
                                                 Cap("parameters", cap_params)])
    inside = (macs <= cap_macs) & (params <= cap_params)
    assert both.score == pytest.approx(scores[inside].max(), abs=1e-9)
    assert both.costs["parameters"] <= cap_params and both.costs["multiply_adds"] <= cap_macs
    # the front: every genotype that no other beats in score and multiply-adds
    order = np.lexsort((macs, -scores))
    front, lowest = set(), np.inf
    for index in order:
        if macs[index] < lowest:
            front.add((round(float(scores[index]), 9), int(macs[index])))
            lowest = macs[index]
    listed = budget_derive(space, weights, table, pareto=True).front
    assert {(round(score, 9), int(costs["multiply_adds"])) for score, costs, _ in listed} == front


@pytest.mark.parametrize("name", ["att_darts", "darts", "att_darts_end", "att_darts_mixed",
                                  "att_darts_double_mixed", "att_pc_darts"])
def test_without_caps_it_is_the_runs_own_derivation(name, one_thread):
    """The score is what derivation maximises: the same genotype on the full 4-node spaces."""
    space = parse_file(SPACES / f"{name}.geno").space()
    table = build_cost_table(space, channels=4, layers=3)
    for seed in range(3):
        weights, raw = random_weights(space, seed)
        derived = budget_derive(space, weights, table)
        expected = derive_genotype(raw, space)
        assert (derived.genotype.normal, derived.genotype.reduce) == \
            (expected.normal, expected.reduce)
        assert derived.score == derived.unconstrained_score
        assert derived.costs == derived.unconstrained_costs == table.price(expected)


def test_the_spaces_own_skip_cap_is_honoured(one_thread):
    space = parse_text("""space capped {
        operations = [none, skip_connect, sep_conv_3x3, dil_conv_3x3]
        attentions = [identity, se]
        max_skip_connect = 1
    }""").space()
    table = build_cost_table(space, channels=4, layers=3)
    weights, raw = random_weights(space, 7)
    for row in weights.cells["normal"]["alpha"]:  # skip_connect strongest everywhere
        row[1] += 1.0
    for row in raw["normal"]["alpha"]:
        row[1] += 10.0
    derived = budget_derive(space, weights, table)
    skips = [e for n in derived.genotype.normal.nodes for e in n.edges
             if e.operation.name == "skip_connect"]
    assert len(skips) == 1
    heuristic = derive_genotype({kind: {k: torch.log(torch.tensor(v, dtype=torch.float64))
                                        for k, v in cells.items()}
                                 for kind, cells in weights.cells.items()}, space)
    assert derived.score >= genotype_score(heuristic, space, weights) - 1e-12


def test_a_cap_no_genotype_meets_is_one_line(one_thread):
    space = parse_text(TWO_NODES_KEEP_ONE).space()
    table = build_cost_table(space, channels=4, layers=3)
    weights, _ = random_weights(space, 0)
    with pytest.raises(BudgetError, match=r"no genotype of space 'two' fits multiply_adds <= "
                                          r"0.001M \(the cheapest genotype has [0-9.]+M\)"):
        budget_derive(space, weights, table, [Cap("multiply_adds", 1000)])
    with pytest.raises(BudgetError, match="has no latency_ms"):
        budget_derive(space, weights, table, [Cap("latency_ms", 5.0)])


@pytest.mark.parametrize("text, value", [
    ("600M", 600_000_000), ("3.5M", 3_500_000), ("250k", 250_000), ("1.2G", 1_200_000_000),
    ("5000000", 5_000_000), ("2.5e6", 2_500_000), (" 12K ", 12_000),
])
def test_counts_with_suffixes(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["600X", "M", "-3M", "0", "3.5 MB", "1,000"])
def test_bad_counts_are_refused_with_a_hint(text):
    with pytest.raises(ValueError, match="e.g. 600M|must be positive"):
        parse_count(text)


def test_latencies_need_a_unit():
    assert parse_latency("12ms") == 12.0
    assert parse_latency("800us") == pytest.approx(0.8)
    assert parse_latency("0.012s") == pytest.approx(12.0)
    for text in ("12", "12 sec", "ms", "0ms"):
        with pytest.raises(ValueError, match="latency"):
            parse_latency(text)


def make_run(directory: Path, space: ir.Space, epochs: int = 2) -> Path:
    """A search run directory as `attdarts search` writes it, from a tiny supernet whose
    architecture parameters are drawn anew each epoch (the real weights.jsonl writer)."""
    directory.mkdir()
    (directory / "space.geno").write_text(format_space(space))
    (directory / "config.json").write_text(json.dumps({"seed": 3, "dataset": "cifar10-mini"}))
    model = compile_supernet(space, channels=4, layers=3)
    lines = []
    torch.manual_seed(0)
    for epoch in range(1, epochs + 1):
        with torch.no_grad():
            for parameter in model.architecture():
                parameter.normal_()
        lines.append(weights_record(model, epoch, synthetic=False))
    (directory / "weights.jsonl").write_text("\n".join(lines) + "\n{truncated\n")
    return directory


def test_a_run_end_to_end(tmp_path, one_thread):
    space = parse_file(SPACES / "att_darts.geno").space()
    run = make_run(tmp_path / "run", space)
    weights, warnings = read_run_weights(run, space)
    assert weights.epoch == 2 and warnings == ["weights.jsonl:3: skipped (Expecting property "
                                               "name enclosed in double quotes: line 1 column 2 "
                                               "(char 1))"]
    assert read_run_weights(run, space, epoch=1)[0].epoch == 1
    with pytest.raises(BudgetError, match="no epoch 5 .it has epochs 1 to 2."):
        read_run_weights(run, space, epoch=5)
    free = derive_run(run, channels=4, layers=3, verify=False)
    cap = 0.8 * free.costs["multiply_adds"]
    output = tmp_path / "budget.geno"
    derived = derive_run(run, max_macs=cap, channels=4, layers=3, output=output)
    assert derived.costs["multiply_adds"] <= cap < free.costs["multiply_adds"]
    assert derived.measured == {"multiply_adds": derived.costs["multiply_adds"],
                                "parameters": derived.costs["parameters"]}
    written = parse_file(output).genotype()
    assert written == derived.genotype and written.name == "att_darts_seed3_budget"
    assert written.meta_value("multiply_adds") == str(derived.costs["multiply_adds"])
    assert written.meta_value("epoch") == "2"
    assert written.meta_value("caps") == f"multiply_adds <= {int(cap)}"
    assert written.meta_value("cost_table") == "space att_darts, cifar10, C=4, L=3"
    assert derived.score < free.score


def test_the_command_line(tmp_path, one_thread):
    space = parse_file(SPACES / "darts.geno").space()
    run = make_run(tmp_path / "run", space, epochs=1)
    runner = CliRunner()
    table = tmp_path / "costs.json"
    done = runner.invoke(cli, ["cost", str(SPACES / "darts.geno"), "--channels", "4",
                               "--layers", "3", "-o", str(table)])
    assert done.exit_code == 0, done.output
    assert "cost table   space darts, cifar10, C=4, L=3" in done.stdout and table.is_file()
    done = runner.invoke(cli, ["derive", str(run), "--costs", str(table), "--max-macs", "3M",
                               "--pareto", "-o", str(tmp_path / "g.geno")])
    assert done.exit_code == 0, done.output
    assert "caps         multiply_adds <= 3e+06" in done.stdout
    assert "front (" in done.stdout and "compiled     " in done.stdout
    assert parse_file(tmp_path / "g.geno").genotype().meta_value("caps") == \
        "multiply_adds <= 3000000"
    done = runner.invoke(cli, ["derive", str(run), "--costs", str(table), "--max-macs", "3X"])
    assert done.exit_code == 2 and "'3X' is not a count" in done.output
    done = runner.invoke(cli, ["derive", str(run), "--max-latency", "12ms"])
    assert done.exit_code == 2 and "--max-latency needs --costs" in done.output
    done = runner.invoke(cli, ["derive", str(run), "--costs", str(table), "--max-latency", "1ms"])
    assert done.exit_code == 1 and "has no latency_ms" in done.output
    done = runner.invoke(cli, ["derive", str(run), "--costs", str(table), "--channels", "8"])
    assert done.exit_code == 1 and "not cifar10, C=8, L=3" in done.output
    done = runner.invoke(cli, ["derive", str(run), "--costs", str(table), "--max-macs", "1k"])
    assert done.exit_code == 1 and "no genotype of space 'darts' fits" in done.output
    assert "Traceback" not in done.output


def test_compile_prints_the_tables_prediction(tmp_path, one_thread):
    runner = CliRunner()
    table = tmp_path / "costs.json"
    done = runner.invoke(cli, ["cost", str(SPACES / "att_darts.geno"), "--channels", "4",
                               "--layers", "3", "-o", str(table)])
    assert done.exit_code == 0, done.output
    done = runner.invoke(cli, ["compile", str(ROOT / "genotypes" / "att_darts.geno"),
                               "--costs", str(table)])
    assert done.exit_code == 0, done.output
    assert "by the cost table (equal to the measured counts)" in done.stdout
    done = runner.invoke(cli, ["compile", str(ROOT / "genotypes" / "att_darts.geno"),
                               "--costs", str(table), "--format", "json"])
    summary = json.loads(done.stdout)
    assert summary["predicted"]["multiply_adds"] == summary["multiply_adds"]
    done = runner.invoke(cli, ["compile", str(ROOT / "genotypes" / "nasnet_a.geno"),
                               "--costs", str(table)])
    assert done.exit_code == 1 and "cannot price genotype 'nasnet_a'" in done.output
