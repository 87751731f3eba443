"""Suffixed quantities (`attdarts.language.quantities`): counts such as 600M, latencies such as
12ms, and one-line refusals."""

from __future__ import annotations

import pytest

from attdarts.language.quantities import parse_count, parse_latency


@pytest.mark.parametrize("text, value", [
    ("600M", 600_000_000), ("3.5M", 3_500_000), ("250k", 250_000), ("1.2G", 1_200_000_000),
    ("5000000", 5_000_000), ("2.5e6", 2_500_000), (" 12K ", 12_000),
])
def test_counts_with_suffixes(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["600X", "M", "-3M", "0", "3.5 MB", "1,000", "1e400", "0.4",
                                  "1e-400M", "1e99999999"])
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
