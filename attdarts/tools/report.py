"""Results over seeds, the way papers report them (`attdarts report`); torch-free.

Reads run directories as `attdarts train` and `attdarts search` write them, never their
checkpoints:

- a training run (config.json, genotype.geno, metrics.jsonl with `test_top1` per epoch): its test
  error at the last epoch (100 - top-1, in %), its best epoch, its weights (`parameters` of
  config.json: without the auxiliary head, the number papers report);
- a search run (config.json with `space_file`, space.geno, metrics.jsonl with `val_accuracy` per
  epoch, genotype.geno): its architecture-batch accuracy at the last epoch and the cells it derived
  (in percent; records of older runs, in fractions, are read as `attdarts.records` says).

Trainings of the same cells on the same data and recipe (dataset, C, L, epochs) form one row:
test error mean +- standard deviation over the runs, and the best (lowest) of them, as the papers'
tables give "2.76 +- 0.09" (DARTS, Table 1: "mean and standard deviation of 10 independent runs";
Att-DARTS, Table I: 5 runs). The standard deviation is the sample one (n - 1 in the denominator,
Python's `statistics.stdev`) unless `population` is asked for (n, `statistics.pstdev`); neither
paper says which it used. The error reported is the final epoch's, not the best epoch's, since
choosing an epoch by its test score selects on the test set.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from attdarts.files import FileError
from attdarts.language.errors import DslError
from attdarts.language.ir import CELL_KINDS, Genotype
from attdarts.language.printer import cell_lines
from attdarts.language.transform import parse_text
from attdarts import records as recorded
from attdarts.tools import consensus

STD_KINDS = ("sample", "population")
FORMATS = ("markdown", "json")
_SEED_DIR = re.compile(r"(\D*)(\d+)\Z")


class ReportError(FileError):
    """A directory that is not a run (and holds none), or a run whose files cannot be read."""


@dataclass
class TrainingRun:
    path: str
    seed: int | None
    genotype: str
    cells: dict[str, str]  # cell kind -> its statements on one line
    dataset: str
    synthetic: bool
    channels: int | None
    layers: int | None
    epochs: int  # epochs done
    epochs_planned: int | None
    test_error: float  # % at the last epoch done
    best_error: float
    best_epoch: int
    parameters: int | None  # without the auxiliary head
    mult_adds: int | None = None  # filled in by the caller (building the network needs torch)

    @property
    def finished(self) -> bool:
        return self.epochs_planned is None or self.epochs >= self.epochs_planned


@dataclass
class SearchRun:
    path: str
    seed: int | None
    space: str
    cells: dict[str, str]
    dataset: str
    synthetic: bool
    epochs: int
    epochs_planned: int | None
    accuracy: float  # % of the architecture batches at the last epoch done

    @property
    def finished(self) -> bool:
        return self.epochs_planned is None or self.epochs >= self.epochs_planned


@dataclass
class Report:
    trainings: list[TrainingRun] = field(default_factory=list)
    searches: list[SearchRun] = field(default_factory=list)
    # run path -> its sessions' environments (start, then resumes), `environment_summary`
    environments: dict[str, list[dict]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Reading run directories


def run_kind(path: Path) -> str | None:
    """"training", "search" or None (not a run directory)."""
    if not (path / "config.json").is_file() or not (path / "metrics.jsonl").is_file():
        return None
    return "search" if (path / "space.geno").is_file() else "training"


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """The run directories named, a parent named standing for the runs under it (searched two
    levels deep: OUT/seed-K, OUT/NAME/seed-K), seed-numbered directories in numeric order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ReportError(f"{path}: no such directory (expected a run directory of "
                              "'attdarts train' or 'attdarts search', or a folder of them)")
        if run_kind(path):
            found.append(path)
            continue
        inner = [child for child in _subdirectories(path) if run_kind(child)]
        inner += [grandchild for child in _subdirectories(path) if not run_kind(child)
                  for grandchild in _subdirectories(child) if run_kind(grandchild)]
        if not inner:
            raise ReportError(f"{path}: not a run directory (no config.json and metrics.jsonl) "
                              "and no run directory under it")
        found.extend(inner)
    return list(dict.fromkeys(found))


def _subdirectories(path: Path) -> list[Path]:
    return sorted((child for child in path.iterdir() if child.is_dir()), key=_natural)


def _natural(path: Path) -> tuple:
    match = _SEED_DIR.match(path.name)
    return (match.group(1), int(match.group(2)), "") if match else (path.name, -1, path.name)


def read_runs(paths: Iterable[str | Path]) -> Report:
    report = Report()
    for path in find_runs(paths):
        if run_kind(path) == "search":
            report.searches.append(read_search(path))
        else:
            report.trainings.append(read_training(path))
        report.environments[str(path)] = recorded.sessions(recorded.read(path))
    return report


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ReportError(f"{path}: cannot read it as JSON ({type(error).__name__})") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return value


def _metrics(path: Path) -> list[dict]:
    """The epochs of metrics.jsonl; a truncated last line (a run being written) is left out."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ReportError(f"{path}: cannot read it ({type(error).__name__})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break
            raise ReportError(f"{path}:{number}: not a JSON line") from None
    if not records:
        raise ReportError(f"{path}: no epoch recorded yet")
    return records


def _genotype(path: Path) -> Genotype | None:
    file = path / "genotype.geno"
    if not file.is_file():
        return None
    try:
        return parse_text(file.read_text(encoding="utf-8"), str(file)).genotype()
    except (OSError, UnicodeDecodeError, DslError) as error:
        raise ReportError(f"{file}: cannot read the genotype ({str(error).splitlines()[0]})") from None


def _cells(genotype: Genotype | None) -> dict[str, str]:
    if genotype is None:
        return {kind: "" for kind in CELL_KINDS}
    return {kind: "; ".join(cell_lines(getattr(genotype, kind))) for kind in CELL_KINDS}


def _field(records: list[dict], key: str, path: Path) -> list[float]:
    try:
        return [float(record[key]) for record in records]
    except (KeyError, TypeError, ValueError):
        raise ReportError(f"{path}: an epoch has no number '{key}'") from None


def read_training(path: Path) -> TrainingRun:
    config = _json(path / "config.json")
    records = _metrics(path / "metrics.jsonl")
    top1 = _field(records, "test_top1", path / "metrics.jsonl")
    best = max(range(len(top1)), key=lambda index: (top1[index], -index))
    genotype = _genotype(path)
    return TrainingRun(
        path=str(path), seed=config.get("seed"),
        genotype=genotype.name if genotype is not None else str(config.get("genotype", "?")),
        cells=_cells(genotype), dataset=str(config.get("dataset", "?")),
        synthetic=bool(config.get("synthetic") or records[-1].get("synthetic")),
        channels=config.get("channels"), layers=config.get("layers"),
        epochs=len(records), epochs_planned=config.get("epochs"),
        test_error=100.0 - top1[-1], best_error=100.0 - top1[best],
        best_epoch=int(records[best].get("epoch", best + 1)),
        parameters=config.get("parameters"))


def read_search(path: Path) -> SearchRun:
    config = _json(path / "config.json")
    records = _metrics(path / "metrics.jsonl")
    accuracy = _field([recorded.in_percent(record) for record in records], "val_accuracy",
                      path / "metrics.jsonl")
    genotype = _genotype(path)
    space = config.get("space") or Path(str(config.get("space_file", "?"))).stem
    return SearchRun(
        path=str(path), seed=config.get("seed"), space=str(space), cells=_cells(genotype),
        dataset=str(config.get("dataset", "?")),
        synthetic=any(bool(record.get("synthetic")) for record in records),
        epochs=len(records), epochs_planned=config.get("epochs"), accuracy=accuracy[-1])


# ---------------------------------------------------------------------------------------------
# Aggregating


def spread(values: Sequence[float], std: str = "sample") -> tuple[float, float | None]:
    """Mean and standard deviation (sample: n - 1; population: n); None for the sample std of
    one value, which is undefined."""
    if std not in STD_KINDS:
        raise ValueError(f"std must be one of {', '.join(STD_KINDS)}, got {std!r}")
    mean = statistics.fmean(values)
    if std == "population":
        return mean, statistics.pstdev(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def _groups(runs: Sequence, key: Callable) -> list[list]:
    groups: dict = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    return list(groups.values())


def _training_key(run: TrainingRun) -> tuple:
    return (tuple(run.cells.values()), run.dataset, run.channels, run.layers, run.epochs_planned)


def _search_key(run: SearchRun) -> tuple:
    return (run.space, run.dataset, run.epochs_planned)


def aggregate(report: Report, std: str = "sample") -> dict:
    """The report as JSON-ready data: one entry per group of runs, with its runs."""
    trainings = []
    for runs in _groups(report.trainings, _training_key):
        mean, deviation = spread([run.test_error for run in runs], std)
        first = runs[0]
        trainings.append({
            "genotype": first.genotype, "dataset": first.dataset, "synthetic": first.synthetic,
            "channels": first.channels, "layers": first.layers, "epochs": first.epochs_planned,
            "runs": len(runs), "unfinished": sum(not run.finished for run in runs),
            "test_error_mean": mean, "test_error_std": deviation,
            "test_error_best": min(run.test_error for run in runs),
            "parameters": first.parameters, "mult_adds": first.mult_adds,
            "cells": first.cells, "per_run": [asdict(run) for run in runs],
        })
    searches = []
    for runs in _groups(report.searches, _search_key):
        mean, deviation = spread([run.accuracy for run in runs], std)
        first = runs[0]
        distinct = {tuple(run.cells.values()) for run in runs}
        per_run = [{**asdict(run), "same_cells_as": [
            other.seed for other in runs if other is not run and other.cells == run.cells]}
            for run in runs]
        searches.append({
            "space": first.space, "dataset": first.dataset, "synthetic": first.synthetic,
            "epochs": first.epochs_planned, "seeds": len(runs),
            "unfinished": sum(not run.finished for run in runs),
            "accuracy_mean": mean, "accuracy_std": deviation,
            "accuracy_best": max(run.accuracy for run in runs),
            "distinct_genotypes": len(distinct), "per_run": per_run,
            "consensus": consensus.of_runs([run.path for run in runs]),
        })
    return {"std": std, "trainings": trainings, "searches": searches,
            "environment": environment_summary(report.environments)}


# ---------------------------------------------------------------------------------------------
# Markdown


def plus_minus(mean: float, deviation: float | None, digits: int = 2) -> str:
    """"2.64 +- 0.08" (the mean alone when the deviation is undefined)."""
    if deviation is None or math.isnan(deviation):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} +- {deviation:.{digits}f}"


def count(value: int | None) -> str:
    """3,349,342 -> "3.35 M" (as papers give sizes); small counts in full; None -> "-"."""
    if value is None:
        return "-"
    return f"{value / 1e6:.2f} M" if value >= 1_000_000 else f"{value:,}"


def _dataset(entry: dict) -> str:
    synthetic = entry["synthetic"] and entry["dataset"] != "synthetic"
    return entry["dataset"] + (" (synthetic data)" if synthetic else "")


def _epochs(run: dict) -> str:
    planned = run["epochs_planned"]
    return f"{run['epochs']}/{planned}" if planned is not None else str(run["epochs"])


def _table(header: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _training_lines(entries: list[dict], std: str) -> list[str]:
    lines = ["## Trainings", ""]
    lines += _table(
        ("genotype", "dataset", "C", "L", "runs", "test error (%)", "best of N (%)",
         "params", "mult-adds"), "llrrrrrrr",
        ((e["genotype"], _dataset(e), str(e["channels"]), str(e["layers"]), str(e["runs"]),
          plus_minus(e["test_error_mean"], e["test_error_std"]), f"{e['test_error_best']:.2f}",
          count(e["parameters"]), count(e["mult_adds"])) for e in entries))
    lines += ["", f"Test error at the last epoch, mean +- {std} standard deviation over the runs "
              f"({'n - 1' if std == 'sample' else 'n'} in the denominator); best of N: the lowest; "
              "params without the auxiliary head.", ""]
    for entry in entries:
        lines += [f"### {entry['genotype']} on {_dataset(entry)}", ""]
        lines += _table(("run", "seed", "epochs", "test error (%)", "best epoch", "its error (%)"),
                        "lrrrrr",
                        ((run["path"], str(run["seed"]), _epochs(run), f"{run['test_error']:.2f}",
                          str(run["best_epoch"]), f"{run['best_error']:.2f}")
                         for run in entry["per_run"]))
        lines += _unfinished(entry) + [""]
    return lines


def _search_lines(entries: list[dict], std: str) -> list[str]:
    lines = ["## Searches", ""]
    lines += _table(("space", "dataset", "seeds", "architecture-batch accuracy (%)", "best (%)",
                     "distinct genotypes"), "llrrrr",
                    ((e["space"], _dataset(e), str(e["seeds"]),
                      plus_minus(e["accuracy_mean"], e["accuracy_std"]),
                      f"{e['accuracy_best']:.2f}", str(e["distinct_genotypes"])) for e in entries))
    lines += ["", f"Accuracy on the architecture batches at the last epoch, mean +- {std} "
              "standard deviation over the seeds.", ""]
    for entry in entries:
        lines += [f"### {entry['space']} on {_dataset(entry)}", ""]
        lines += _table(("run", "seed", "epochs", "accuracy (%)", "same cells as", "normal",
                         "reduce"), "lrrrlll",
                        ((run["path"], str(run["seed"]), _epochs(run), f"{run['accuracy']:.2f}",
                          ", ".join(map(str, run["same_cells_as"])) or "-",
                          f"`{run['cells']['normal']}`", f"`{run['cells']['reduce']}`")
                         for run in entry["per_run"]))
        lines += _unfinished(entry) + [""]
        if entry.get("consensus"):
            lines += consensus.report_lines(entry["consensus"]) + [""]
    return lines


def _unfinished(entry: dict) -> list[str]:
    count = entry["unfinished"]
    if not count:
        return []
    return ["", f"Note: {count} of these runs has not finished all its epochs; its numbers are "
                "those of its last epoch." if count == 1 else
                f"Note: {count} of these runs have not finished all their epochs; their numbers "
                "are those of their last epoch."]


def format_markdown(summary: dict) -> str:
    """The report as Markdown: a table per kind of run, then each group's runs."""
    lines: list[str] = []
    if summary["trainings"]:
        lines += _training_lines(summary["trainings"], summary["std"])
    if summary["searches"]:
        lines += _search_lines(summary["searches"], summary["std"])
    lines += _environment_lines(summary.get("environment"))
    return "\n".join(lines).rstrip("\n") + "\n"


def format_json(summary: dict) -> str:
    return json.dumps(summary, indent=2) + "\n"


# ---------------------------------------------------------------------------------------------
# Environments (environment.json: attdarts.runs.environment)


def environment_summary(environments: dict[str, list[dict]]) -> dict:
    """What the runs ran on: every session (a run's start, then each resume) with its fields,
    the fields in which sessions differ (`time` aside), those they share, and the runs without
    a record (written by an older attdarts)."""
    rows = []
    for path, sessions in environments.items():
        for session in sessions:
            row = {"run": path, "resumed_at": session.get("resumed_at")}
            row.update({name: session.get(name) for name in recorded.FIELDS})
            rows.append(row)
    differ = [name for name in recorded.COMPARED
              if len({json.dumps(row[name]) for row in rows}) > 1]
    common = {name: rows[0][name] for name in recorded.COMPARED
              if rows and name not in differ}
    return {"differ": differ, "common": common, "sessions": rows,
            "not_recorded": [path for path, sessions in environments.items() if not sessions]}


def _session_label(row: dict) -> str:
    at = row["resumed_at"]
    if not isinstance(at, dict):
        return row["run"]
    return f"{row['run']} (resumed at epoch {at.get('epoch')}, step {at.get('step')})"


def _value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value).replace("|", "/")


def _environment_lines(summary: dict | None) -> list[str]:
    """The Environment section: the shared fields, then a row per session for the fields that
    differ (absent when no run has a record)."""
    if not summary or not summary["sessions"]:
        return []
    lines = ["## Environment", ""]
    if summary["differ"]:
        lines += [f"The runs differ in: {', '.join(summary['differ'])}.", ""]
        lines += _table(("run", *summary["differ"]), "l" * (1 + len(summary["differ"])),
                        ((_session_label(row), *(_value(row[name]) for name in summary["differ"]))
                         for row in summary["sessions"]))
        lines += [""] + (["Shared by every run:", ""] if summary["common"] else [])
    if summary["common"]:
        lines += _table(("field", "value"), "ll", ((name, _value(value))
                                                    for name, value in summary["common"].items()))
        lines += [""]
    if summary["not_recorded"]:
        lines += [f"No environment.json (a run of an older attdarts): "
                  f"{', '.join(summary['not_recorded'])}.", ""]
    return lines
