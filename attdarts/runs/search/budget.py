"""`attdarts derive` on a search run: its space, its weights per epoch (`weights.jsonl`, as
`attdarts plot` reads them), a cost table at the final size, the best genotype within the caps
(`attdarts.networks.budget_derive`), checked by compiling it. Also the final network a search
is for (`search_context`), which the budget method prices while searching.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from attdarts import recipes
from attdarts.files import atomic_write_text
from attdarts.language import ir
from attdarts.language.printer import format_checked
from attdarts.language.transform import parse_file
from attdarts.networks.budget_derive import (
    BudgetError, Cap, Derived, RunWeights, budget_derive, derivation_problem,
)
from attdarts.networks.cost_meter import build_cost_table
from attdarts.networks.costs import CostError, CostTable, read_cost_table
from attdarts.networks.measure import measure
from attdarts.networks.methods import SearchContext
from attdarts.networks.supernet import column_names
from attdarts.runs.search.config import CONFIG, SPACE, SYNTHETIC_NOTE, WEIGHTS_LOG, SearchConfig

__all__ = ["derive_run", "final_dataset", "read_run_weights", "search_context"]


def read_run_weights(run_dir: str | Path, space: ir.Space, epoch: int | None = None
                     ) -> tuple[RunWeights, list[str]]:
    """The weights of `epoch` (default: the last) of the run's weights.jsonl, checked against
    the space's columns, and warnings for lines that were skipped."""
    path = Path(run_dir) / WEIGHTS_LOG
    try:
        lines = path.read_bytes().splitlines()  # a damaged line (not UTF-8) is skipped
    except OSError as error:
        raise BudgetError(f"{path}: cannot read the search's weights "
                          f"({error.strerror or error})") from None
    columns = column_names(space)
    records: dict[int, RunWeights] = {}
    warnings = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = _record(json.loads(line.decode("utf-8")), columns)
        except (ValueError, TypeError, KeyError, OverflowError) as error:
            warnings.append(f"{path.name}:{number}: skipped ({error})")
            continue
        records[record.epoch] = record  # a resumed run may repeat an epoch: keep the last
    if not records:
        raise BudgetError(f"{path}: no usable epoch")
    if epoch is None:
        return records[max(records)], warnings
    if epoch not in records:
        raise BudgetError(f"{path}: no epoch {epoch} (it has epochs {min(records)} to "
                          f"{max(records)})")
    return records[epoch], warnings


def _record(data: dict, columns: Mapping[str, list[str]]) -> RunWeights:
    if not isinstance(data, dict):
        raise ValueError("a line must be a JSON object")
    if data.get("operations") != columns["alpha"]:
        raise ValueError(f"its operations {data.get('operations')} are not the space's columns "
                         f"{columns['alpha']}")
    cells, kept = {}, {}
    stage = data.get("kept", {})  # a stage's searched candidates (a space with stages)
    if not isinstance(stage, dict) or not all(isinstance(stage.get(kind, {}), dict)
                                              for kind in ir.CELL_KINDS):
        raise ValueError("its 'kept' must map each cell type to its kinds' rows")
    for kind in ir.CELL_KINDS:
        tensors = {}
        for name, labels in columns.items():
            rows = data[kind][name]
            rows = rows if rows and isinstance(rows[0], list) else [rows]
            rows = [[float(value) for value in row] for row in rows]
            if any(len(row) != len(labels) for row in rows):
                raise ValueError(f"{kind} {name} rows do not have {len(labels)} columns")
            tensors[name] = rows
        cells[kind] = tensors
        kept[kind] = {name: _kept_rows(stage, kind, name, tensors[name])
                      for name in tensors if name in stage.get(kind, {})}
    return RunWeights(int(data["epoch"]), cells, kept)


def _kept_rows(stage: dict, kind: str, name: str, weights: list[list[float]]
               ) -> list[list[bool]]:
    """A line's "kept" rows of one kind (weights.jsonl), in the weights' shape, each keeping a
    candidate."""
    rows = stage[kind][name]
    kept = [[bool(value) for value in row] for row in rows] if isinstance(rows, list) else []
    if [len(row) for row in kept] != [len(row) for row in weights] or not all(map(any, kept)):
        raise ValueError(f"its kept {kind} {name} rows do not match the weights")
    return kept




def final_dataset(dataset: str) -> str:
    """The dataset of the final network of a search on `dataset`: CIFAR-100 stays CIFAR-100,
    anything else (cifar10, cifar10-mini, synthetic, a folder) trains on CIFAR-10."""
    return "cifar100" if str(dataset).startswith("cifar100") else "cifar10"


def search_context(config: SearchConfig) -> SearchContext:
    """What a search tells its methods (`SearchMethod.search_start`): the final network of its
    dataset at the training recipe's size (C=36, 20 cells), and the space file's folder, where
    the paths a space names (a budget's table) resolve."""
    recipe = recipes.TRAIN["cifar"]
    return SearchContext(dataset=final_dataset(config.dataset), channels=recipe["channels"],
                         layers=recipe["layers"], directory=Path(config.space_file).parent)


def _final_dataset(run: Path) -> str:
    """The dataset of the final network of the run in `run` (`final_dataset`)."""
    try:
        config = json.loads((run / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "cifar10"
    return final_dataset(str(config.get("dataset", "")) if isinstance(config, dict) else "")


def _synthetic(run: Path) -> bool:
    """Whether the run searched random data: its derived genotype is labelled as the run's own
    genotypes are (README, "Searching": every output of such a run says so)."""
    try:
        config = json.loads((run / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("dataset") == "synthetic"


def _seed(run: Path) -> str | None:
    try:
        config = json.loads((run / CONFIG).read_text(encoding="utf-8"))
        return str(int(config["seed"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cap_text(cap: Cap) -> str:
    if cap.measure == "latency_ms":
        return f"latency_ms <= {cap.limit:g}"
    return f"{cap.measure} <= {int(cap.limit)}"


def derive_run(run: str | Path, *, epoch: int | None = None, max_macs: float | None = None,
               max_params: float | None = None, max_latency: float | None = None,
               costs: str | Path | None = None, dataset: str | None = None,
               channels: int | None = None, layers: int | None = None, pareto: bool = False,
               verify: bool = True, output: str | Path | None = None) -> Derived:
    """`attdarts derive`: read the run's space and weights, price at the final size (the cost
    table `costs`, or one built for `dataset`, `channels`, `layers`: the training recipe's
    C=36, L=20 by default), find the best genotype within the caps, optionally compile it to
    check the table's counts (`verify`), write it to `output`."""
    run = Path(run)
    if not run.is_dir():
        raise BudgetError(f"{run}: not a search run directory")
    if not (run / SPACE).is_file():
        seeds = sorted(path.name for path in run.glob("seed-*") if (path / SPACE).is_file())
        hint = f" (a run of several seeds: derive one, e.g. {run / seeds[0]})" if seeds else ""
        raise BudgetError(f"{run}: no {SPACE}; is it a search run directory?{hint}")
    space = parse_file(run / SPACE).space()
    problem = derivation_problem(space)
    if problem:  # before the weights are read and a table is built (seconds to minutes)
        raise BudgetError(problem)
    weights, warnings = read_run_weights(run, space, epoch)
    caps = [Cap(measure, float(limit)) for measure, limit in (
        ("multiply_adds", max_macs), ("parameters", max_params), ("latency_ms", max_latency))
        if limit is not None]
    if costs is not None:
        table = read_cost_table(costs)
        problem = table.matches(space, dataset=dataset, channels=channels, layers=layers)
        if problem:
            raise CostError(f"{costs}: {problem}")
    else:
        if max_latency is not None:
            raise BudgetError("a latency cap needs a cost table with latency: "
                              "attdarts cost SPACE --latency -o costs.json, then --costs "
                              "costs.json")
        dataset = dataset or _final_dataset(run)
        recipe = recipes.TRAIN["imagenet" if dataset == "imagenet" else "cifar"]
        table = build_cost_table(space, dataset=dataset,
                                 channels=channels or recipe["channels"],
                                 layers=layers or recipe["layers"])
    seed = _seed(run)
    name = f"{space.name}_seed{seed}_budget" if seed is not None else f"{space.name}_budget"
    meta = {"source": f"budgeted derivation (attdarts derive) of {run.resolve().name}, "
                      f"epoch {weights.epoch}",
            "space": space.name, "epoch": str(weights.epoch),
            "caps": "; ".join(_cap_text(cap) for cap in caps) or "none",
            "cost_table": table.describe()}
    if _synthetic(run):
        meta["synthetic"] = SYNTHETIC_NOTE
    derived = budget_derive(space, weights, table, caps, pareto=pareto, name=name, meta=meta)
    derived.warnings.extend(warnings)
    extra = {"score": f"{derived.score:.6f} (unconstrained derivation: "
                      f"{derived.unconstrained_score:.6f})"}
    for counted in table.measures:
        value = derived.costs[counted]
        extra[counted] = f"{value:.3f}" if counted == "latency_ms" else str(int(value))
    genotype = derived.genotype.model_copy(update={"meta": (*derived.genotype.meta, *(
        ir.Meta(key=key, value=value) for key, value in extra.items()))})
    derived.genotype = genotype
    if verify:
        derived.measured = _measure(genotype, table)
        for counted in ("multiply_adds", "parameters"):
            if derived.measured[counted] != derived.costs[counted]:
                raise BudgetError(
                    f"internal error: the compiled network has {derived.measured[counted]} "
                    f"{counted}, the table predicted {derived.costs[counted]} (please report)")
    if output is not None:
        atomic_write_text(output, format_checked(genotype, what="the derived genotype"))
    return derived


def _measure(genotype: ir.Genotype, table: CostTable) -> dict[str, int]:
    """The counts `attdarts compile` measures for `genotype` at the table's size."""
    summary, _ = measure(genotype, dataset=table.dataset, channels=table.channels,
                         layers=table.layers, auxiliary=False)
    return {"multiply_adds": summary["multiply_adds"], "parameters": summary["parameters"]}
