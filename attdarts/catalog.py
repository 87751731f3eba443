"""The names the DSL knows, and their keyword arguments, without importing torch.

The front end (`check`, `fmt`, `import`) validates names against this catalog so it can start
fast; `attdarts.ops` registers one factory per name here, and a test asserts the two agree.
Candidate order in a search is taken from the space declaration, not from here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Parameter:
    """A keyword argument: its type, default, and (for words) the allowed choices."""

    kind: type
    default: int | float | str
    choices: tuple[str, ...] = ()
    minimum: float | None = None


_REDUCTION = Parameter(int, 16, minimum=1)

OPERATIONS: dict[str, dict[str, Parameter]] = {
    "none": {},
    "max_pool_3x3": {},
    "avg_pool_3x3": {},
    "skip_connect": {},
    "sep_conv_3x3": {},
    "sep_conv_5x5": {},
    "sep_conv_7x7": {},
    "dil_conv_3x3": {},
    "dil_conv_5x5": {},
    "conv_7x1_1x7": {},
}

ATTENTIONS: dict[str, dict[str, Parameter]] = {
    "identity": {},
    "se": {"reduction": _REDUCTION},
    "bam": {
        "reduction": _REDUCTION,
        "dilation": Parameter(int, 4, minimum=1),
        "combine": Parameter(str, "sum", choices=("sum", "product")),
    },
    "cbam": {"reduction": _REDUCTION},
    "ge_theta_plus": {"reduction": _REDUCTION},
    "double_attention": {"reduction": Parameter(int, 4, minimum=1)},
}

# Attentions that add to their input instead of multiplying it by a mask: they cannot take part
# in Att-DARTS-P's log-space product of masks (paper, Eq. 17).
ADDITIVE_ATTENTIONS = frozenset({"double_attention"})

# The paper's candidate sets, in the order both reference codes use.
PAPER_OPERATIONS = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)
PAPER_ATTENTIONS = ("identity", "se", "bam", "cbam", "ge_theta_plus", "double_attention")

LOCATIONS = (
    "after_every", "end", "after_every_and_end", "mixed_with_operation", "double_mixed",
    "no_attention",
)
MIXINGS = ("sum", "product")


def suggest(name: str, known: list[str] | tuple[str, ...]) -> str | None:
    """A 'did you mean' hint for a misspelt name, or None."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    if not close:
        return None
    quoted = ", ".join(f"'{c}'" for c in close)
    return f"did you mean {quoted}?" if len(close) == 1 else f"did you mean one of {quoted}?"
