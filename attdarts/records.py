"""What run directories record, read without torch: accuracy units, a budget's keys and
environment records.

`attdarts report` (a torch-free tool) and the loops (which write the records) share these
definitions, so both live here, below `runs` and `tools`.

Accuracy: one unit everywhere, percent, as the papers and `attdarts train` / `test` give it.
Training records (`train_acc`, `test_top1`, `test_top5`) have always been percentages. Search
records (`train_accuracy`, `val_accuracy` in a search's metrics.jsonl, its summary.json and the
API's `SearchResult.metrics`) are percentages too, and each one says so: ``"accuracy_unit": "%"``.
A search record without that marker was written by an earlier attdarts, in fractions of 1;
`in_percent` reads either, so reports of old run directories (and of runs resumed across the
change, whose files hold both kinds of line) show the same numbers.

Environment: `environment.json` in every run directory (written by `attdarts.runs.environment`,
which says what each field means); `read` and `sessions` read it back; `cpu_model` names the
CPU there, in cost tables and in benchmark results.

JSON-lines files (metrics.jsonl, weights.jsonl) as the torch-free tools read them, forgiving a
run still being written: `json_objects`, and `by_epoch` for one record per epoch.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# -- accuracy units -----------------------------------------------------------------------------
UNIT_KEY = "accuracy_unit"
PERCENT = "%"
SEARCH_ACCURACIES = ("train_accuracy", "val_accuracy")  # the search's accuracy fields


def percent(correct: float, count: float) -> float | None:
    """`correct` of `count` as a percentage (None when nothing was counted)."""
    return 100.0 * correct / count if count else None


def in_percent(record: Mapping[str, Any]) -> dict[str, Any]:
    """A search metrics record with its accuracies in percent and the marker set: a marked
    record as it is, an unmarked (older) one with its fractions multiplied by 100."""
    converted = dict(record)
    if converted.get(UNIT_KEY) != PERCENT:
        for key in SEARCH_ACCURACIES:
            value = converted.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                converted[key] = 100.0 * value
        converted[UNIT_KEY] = PERCENT
    return converted


# -- a budget's records (`budget(...)` in a space; README "The budget method") -----------------
BUDGET_PENALTY = "budget_penalty"


def budget_keys(measure: str) -> dict[str, str]:
    """The metrics.jsonl keys of a budget on `measure` (a cost table's: multiply_adds,
    parameters or latency_ms), by what they hold: "expected" (the expected cost of the final network under the
    epoch's final mixture weights), "derived" (the epoch's derived genotype's cost at the final
    size, from the cost table: exact for counts; null where the table cannot price it),
    "target" (the budget) and "penalty" (the penalty term at those weights)."""
    return {"expected": f"budget_expected_{measure}", "derived": f"budget_derived_{measure}",
            "target": f"budget_target_{measure}", "penalty": BUDGET_PENALTY}


def budget_measure(record: Mapping[str, Any]) -> str | None:
    """The measure a metrics record holds a budget on, or None."""
    prefix = budget_keys("")["target"]
    return next((key.removeprefix(prefix) for key in record if key.startswith(prefix)), None)


# -- environment records ------------------------------------------------------------------------

ENVIRONMENT = "environment.json"
RESUMED = "resumed"
# the fields of a record, in the order they are written and shown; `time` always differs and is
# not compared
FIELDS = ("attdarts", "commit", "python", "platform", "torch", "torchvision", "cpu",
          "cpu_capability", "device", "cuda_device", "cuda", "threads", "world_size",
          "deterministic", "graphs", "time")
COMPARED = tuple(name for name in FIELDS if name != "time")


def read(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's record; None when it has none (a run of an older attdarts) or it is not a JSON
    object."""
    try:
        content = json.loads((Path(run_dir) / ENVIRONMENT).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def sessions(content: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The run's sessions in order: its start (when recorded), then each resume."""
    if content is None:
        return []
    start = {key: value for key, value in content.items() if key != RESUMED}
    resumed = [entry for entry in content.get(RESUMED, []) if isinstance(entry, dict)]
    return ([start] if start else []) + resumed


# -- JSON-lines files ---------------------------------------------------------------------------
def json_objects(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, in order; [] when it cannot be read as UTF-8 text.
    Lines that are not JSON (a truncated last line of a run being written) and values that are
    not objects are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def by_epoch(records: Iterable[Mapping[str, Any]]) -> dict[int, Any]:
    """epoch -> its record: the last one of a repeated epoch (a resumed run writes it again);
    records without a whole-number epoch (1e999 reads as infinity) are skipped."""
    result: dict[int, Any] = {}
    for record in records:
        try:
            result[int(record["epoch"])] = record
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
    return result


# -- the machine --------------------------------------------------------------------------------
@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, sysctl on macOS, else what `platform` says)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()
            if name:
                return name
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"
