"""Suffixed quantities as people write budgets: counts (600M multiply-adds, 3.5M parameters)
and latencies (12ms). Torch-free, so a command line or a space's settings can read them.

`format_count` and `format_latency` write a value back in that form (`600M`, `12ms`), so that a
space's `budget(macs=600M)` prints as it was written and reads back to the same number.
"""

from __future__ import annotations

import math
import re

__all__ = ["COUNT", "LATENCY", "format_count", "format_latency", "format_quantity", "parse_count",
           "parse_latency", "parse_quantity"]

COUNT = "count"  # the two kinds of quantity a setting may be
LATENCY = "latency"

_COUNT = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e([+-]?[0-9]+))?\s*([kKMG]?)\s*\Z")
_SCALES = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
_LATENCY = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(us|µs|ms|s)\s*\Z")
_SECONDS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}


def parse_count(text: str, what: str = "count") -> int:
    """A count such as `600M`, `3.5M`, `250k`, `1.2G` or `5000000` (suffixes k/K, M, G; no
    unit); ValueError with a one-line message otherwise."""
    match = _COUNT.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a {what}: write a number with an optional suffix "
                         "k, M or G, e.g. 600M or 3.5M")
    # float's own exponent: 1e400 is infinite (refused), not an OverflowError or a huge integer
    number = float(f"{match.group(1)}e{match.group(2) or 0}") * _SCALES[match.group(3)]
    if not math.isfinite(number) or round(number) <= 0:
        raise ValueError(f"'{text}' is not a {what}: it must be positive (at least 1) and "
                         "finite")
    return int(round(number))


def parse_latency(text: str) -> float:
    """A latency in milliseconds from `12ms`, `0.8ms`, `800us` or `0.012s` (a unit is
    required: there is no default unit to mistake); ValueError otherwise."""
    match = _LATENCY.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a latency: write a number and a unit (us, ms or s), "
                         "e.g. 12ms")
    value = float(match.group(1)) * _SECONDS[match.group(2)]
    if value <= 0:
        raise ValueError(f"'{text}' is not a latency: it must be positive")
    return value


def parse_quantity(text: str, kind: str) -> int | float:
    """`text` as a quantity of `kind` (COUNT: an int, LATENCY: milliseconds)."""
    return parse_count(text) if kind == COUNT else parse_latency(text)


def _short(value: float) -> str:
    """The shortest decimal that reads back as `value` (no exponent, no trailing `.0`)."""
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = f"{value:.15f}".rstrip("0")
    return text.removesuffix(".0").removesuffix(".")


def format_count(count: int) -> str:
    """A count as people write it: 600000000 -> `600M`, 3500000 -> `3.5M`, 250000 -> `250k`,
    the plain digits where a suffix does not make it shorter (1234567). Reads back exactly
    (`parse_count`)."""
    count = int(count)
    best = str(count)
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            text = _short(count / scale) + suffix
            if parse_count(text) == count and len(text) <= len(best):
                best = text
            break
    return best


def format_latency(milliseconds: float) -> str:
    """A latency in milliseconds as `12ms`, `0.8ms` (reads back with `parse_latency`)."""
    return _short(milliseconds) + "ms"


def format_quantity(value: int | float, kind: str) -> str:
    """`value` written as a quantity of `kind` (COUNT or LATENCY)."""
    return format_count(int(value)) if kind == COUNT else format_latency(float(value))
