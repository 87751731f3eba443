"""Colour scales of architecture-weight heatmaps (`attdarts plot`, the alpha/beta images of
`--tensorboard`).

A short search leaves the softmax close to uniform (about 1/8 for eight operations, the weights
differing in the third or fourth decimal): on a fixed 0..1 scale every cell of such a map gets
the same colour. Each map is therefore coloured over its own range, its smallest weight darkest
and its largest brightest, and prints that range: a colour bar's ticks, or a caption, with as
many decimals as it takes to tell the values apart.

Plain Python (no numpy, torch or matplotlib), so both the torch-free tools and the loops use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["FLAT", "ColourScale"]

FLAT = 1e-7  # a spread of weights below this is rounding noise: the map gets one colour
MIN_DECIMALS = 2
MAX_DECIMALS = 12


@dataclass(frozen=True)
class ColourScale:
    """The colour scale of one map: `low` (darkest) to `high` (brightest)."""

    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> ColourScale:
        """The scale of `values`: their smallest to their largest."""
        numbers = [float(value) for value in values]
        if not numbers:
            raise ValueError("a colour scale needs at least one value")
        return cls(min(numbers), max(numbers))

    @property
    def flat(self) -> bool:
        """All values equal (within FLAT): one colour, the middle of the map."""
        return self.high - self.low < FLAT

    def fraction(self, value: float) -> float:
        """Where `value` sits on the scale, 0 (low) to 1 (high); 0.5 on a flat scale."""
        if self.flat:
            return 0.5
        return min(1.0, max(0.0, (float(value) - self.low) / (self.high - self.low)))

    def ticks(self, count: int = 5) -> list[float]:
        """`count` evenly spaced values from low to high (one on a flat scale)."""
        if self.flat or count < 2:
            return [self.low]
        return [self.low + (self.high - self.low) * k / (count - 1) for k in range(count)]

    def decimals(self, values: list[float]) -> int:
        """Decimals that write `values` (ticks of this scale) as distinct labels: one past the
        first significant digit of their smallest gap, at least MIN_DECIMALS."""
        gaps = [b - a for a, b in zip(values, values[1:]) if b - a > 0]
        if not gaps:
            return max(MIN_DECIMALS, _significant(self.low))
        # (the tolerance keeps a gap of 1e-5 computed as 0.99999...e-5 at 6 decimals, not 7)
        decimals = max(MIN_DECIMALS, math.ceil(-math.log10(min(gaps)) - 1e-6) + 1)
        while decimals < MAX_DECIMALS and len({f"{v:.{decimals}f}" for v in values}) < len(values):
            decimals += 1
        return decimals

    def labels(self, values: list[float]) -> list[str]:
        """`values` written with `decimals(values)`: distinct for distinct ticks."""
        decimals = self.decimals(values)
        return [f"{value:.{decimals}f}" for value in values]

    @property
    def caption(self) -> str:
        """The range in words, e.g. 'colour: 0.1229 (dark) to 0.1281 (bright)'."""
        if self.flat:
            return f"all {self.labels([self.low])[0]}"
        low, high = self.labels([self.low, self.high])
        return f"colour: {low} (dark) to {high} (bright)"


def _significant(value: float) -> int:
    """Decimals up to the fourth significant digit of `value` (a lone weight's label)."""
    if value == 0:
        return MIN_DECIMALS
    return min(MAX_DECIMALS, max(MIN_DECIMALS, 3 - math.floor(math.log10(abs(value)))))
