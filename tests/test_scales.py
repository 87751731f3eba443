"""`attdarts.scales`: the colour scale of a weight heatmap spans the map's own weights and labels
them with as many decimals as it takes to tell its ticks apart (issue 19: a fixed 0-1 scale
drew a short search's weights, all near 1/8, as one uniform square; the plot's colour bar
repeated its tick labels)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attdarts.scales import FLAT, ColourScale


def test_the_scale_spans_the_values_own_range():
    scale = ColourScale.of([0.1245, 0.125, 0.1255])
    assert (scale.low, scale.high) == (0.1245, 0.1255) and not scale.flat
    assert [scale.fraction(v) for v in (0.1245, 0.125, 0.1255)] == pytest.approx([0.0, 0.5, 1.0])
    assert scale.fraction(0.2) == 1.0 and scale.fraction(0.0) == 0.0  # clamped


@pytest.mark.parametrize("spread", [0.85, 0.05, 1e-3, 2e-4, 1e-5, 3e-7])
def test_tick_labels_are_distinct_and_end_at_the_range(spread):
    scale = ColourScale.of([1 / 8, 1 / 8 + spread])
    ticks = scale.ticks()
    labels = scale.labels(ticks)
    assert len(ticks) == 5 and len(set(labels)) == 5, labels
    assert float(labels[0]) == pytest.approx(scale.low, abs=spread / 10)
    assert float(labels[-1]) == pytest.approx(scale.high, abs=spread / 10)


def test_decimals_are_one_past_the_gaps_first_significant_digit():
    assert ColourScale.of([0.05, 0.9]).labels(ColourScale.of([0.05, 0.9]).ticks()) == [
        "0.05", "0.26", "0.47", "0.69", "0.90"]
    scale = ColourScale.of([0.1229, 0.1281])
    assert scale.labels(scale.ticks()) == ["0.1229", "0.1242", "0.1255", "0.1268", "0.1281"]


def test_equal_values_make_a_flat_scale_with_one_label():
    for values in ([0.125] * 4, [0.125, 0.125 + FLAT / 2]):
        scale = ColourScale.of(values)
        assert scale.flat and scale.fraction(0.125) == 0.5 and scale.ticks() == [0.125]
        assert scale.caption == "all 0.1250"
    with pytest.raises(ValueError):
        ColourScale.of([])


def test_the_caption_prints_the_range():
    assert ColourScale.of([0.3, 0.7, 0.5]).caption == "colour: 0.30 (dark) to 0.70 (bright)"


def test_the_module_is_plain_python():
    code = ("import sys\nimport attdarts.scales\n"
            "assert not {'torch', 'numpy', 'matplotlib'} & set(sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
