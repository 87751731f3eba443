"""One unit for accuracy everywhere: percent, as the papers and `attdarts train` / `test` give it.

Training records (`train_acc`, `test_top1`, `test_top5`) have always been percentages. Search
records (`train_accuracy`, `val_accuracy` in a search's metrics.jsonl, its summary.json and the
API's `SearchResult.metrics`) are percentages too, and each one says so: ``"accuracy_unit": "%"``.
A search record without that marker was written by an earlier attdarts, in fractions of 1;
`in_percent` reads either, so reports of old run directories (and of runs resumed across the
change, whose files hold both kinds of line) show the same numbers. Torch-free: `attdarts report`
uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
