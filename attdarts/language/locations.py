"""Attention locations: where a search space puts its attention modules, declared once.

The authors' code has one knob, `location`, with six values (README, "The
genotype language"); the paper's is `after_every`. Each value is a `Location` object, and every stage
asks it instead of comparing strings: the IR validator (`problems`), the supernet (which
mixtures an edge has, whether its edges can run grouped, whether the cell output has an
attention mixture), the architecture tensors' shapes (`columns`) and derivation (`choose_edge`).

| location | edge: first mixture (alpha) | then (beta) | cell output (gamma) |
|---|---|---|---|
| after_every (paper) | operations | attentions | - |
| end | operations | - | attentions |
| after_every_and_end | operations | attentions | attentions |
| mixed_with_operation | operations + attentions | - | - |
| double_mixed | operations + attentions | operations + attentions (stride 1) | - |
| no_attention | operations (plain DARTS) | - | - |

Torch-free: this module imports neither torch nor the IR (the IR imports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from attdarts.language import catalog, kinds
from attdarts.language.errors import Problem

Space = Any  # an `ir.Space`; ir imports this module, so this one cannot import ir

OPERATIONS = "operations"
ATTENTIONS = "attentions"
BOTH = "operations+attentions"


def strongest(row: Sequence[float], allowed: Sequence[int]) -> int:
    """Index of the largest row[i] over `allowed` (the first one on ties)."""
    best = allowed[0]
    for index in allowed[1:]:
        if row[index] > row[best]:
            best = index
    return best


@dataclass(frozen=True)
class Location:
    """One attention location: which mixtures a search cell has and how derivation reads them.

    `edge_mixture` is the candidates of an edge's first mixture (weights alpha); `then` those of
    a second mixture after it (weights beta), or None; `output_attention` says whether the cell
    output has an attention mixture (gamma). `needs_attentions`: the space must list attentions.
    `product_allowed`: mixing = product (Eq. 17, masks mixed in log space) is possible, which
    needs every candidate of a mixture to be a masking attention. `groupable`: a search cell can
    run its edges in groups (`SearchCell.forward_grouped`).
    """

    name: str
    edge_mixture: str
    then: str | None
    output_attention: bool
    needs_attentions: bool
    product_allowed: bool
    groupable: bool

    @property
    def mixes_operations_and_attentions(self) -> bool:
        """Operations and attentions share the edge's first softmax (the mixed locations)."""
        return self.edge_mixture == BOTH

    def columns(self, space: Space) -> dict[str, list[str]]:
        """Candidate names labelling the columns of alpha, beta and gamma (those it has)."""
        operations = [call.name for call in space.operations]
        attentions = [call.name for call in space.attentions]
        of = {OPERATIONS: operations, ATTENTIONS: attentions, BOTH: operations + attentions}
        columns = {kinds.OPERATION: list(of[self.edge_mixture])}
        if self.then is not None:
            columns[kinds.ATTENTION] = list(of[self.then])
        if self.output_attention:
            columns[kinds.OUTPUT] = list(attentions)
        return columns

    def choose_edge(
        self, space: Space, alpha: Sequence[float], beta: Sequence[float] | None
    ) -> tuple[int | None, int | None, float]:
        """One edge's derivation (paper Sec. III-A): (operation index, attention index, weight).

        Indices point into `space.operations` and `space.attentions`; an operation index of
        None means `skip_connect` (an attention chosen from a mixed softmax derives to
        ``skip_connect(x) >> attention``), an attention index of None means no attention.
        `none` is never chosen; `weight` ranks the edge among its node's incoming edges.
        """
        count = len(space.operations)
        operation_columns = [i for i, call in enumerate(space.operations) if call.name != "none"]
        attention_columns = [count + i for i in range(len(space.attentions))]
        if self.mixes_operations_and_attentions and self.then is None:
            best = strongest(alpha, operation_columns + attention_columns)
            if best < count:
                return best, None, alpha[best]
            return None, best - count, alpha[best]
        best_operation = strongest(alpha, operation_columns)
        attention: int | None = None
        if self.then == BOTH:
            assert beta is not None
            attention = strongest(beta, attention_columns) - count
        elif self.then == ATTENTIONS and beta is not None:
            attention = strongest(beta, list(range(len(space.attentions))))
        return best_operation, attention, alpha[best_operation]

    def problems(self, space: Space) -> list[Problem]:
        """Why `space` cannot use this location with its attentions and mixing."""
        problems: list[Problem] = []
        if self.needs_attentions and not space.attentions:
            problems.append(Problem(
                f"location '{self.name}' needs at least one attention", space.span,
                "list candidates with 'attentions = [...]' or use 'location = no_attention'"))
        if space.mixing != "product":
            return problems
        if not self.product_allowed:
            problems.append(Problem(
                f"mixing 'product' (Eq. 17) mixes attention masks; location '{self.name}' mixes "
                "attentions with operations, which have no mask", space.span_of("mixing")))
        for call in space.attentions:
            entry = catalog.ATTENTIONS.get(call.name)
            if entry is not None and entry.additive:
                problems.append(Problem(
                    f"'{call.name}' adds to its input rather than masking it, so it cannot "
                    "take part in mixing = product", call.span,
                    "Att-DARTS-P (paper, Eq. 17) excludes it: remove it from the attentions"))
        return problems

    def derivation_problems(self, space: Space) -> list[Problem]:
        """Why every edge would derive to `none`, if it would (derivation never picks `none`)."""
        if any(call.name != "none" for call in space.operations):
            return []
        if self.mixes_operations_and_attentions and self.then is None:
            if space.attentions:
                return []  # an attention derives to skip_connect(x) >> attention
            return [Problem(
                "every edge would derive to 'none': the space has no operation other than "
                "'none' and no attention", space.span_of("operations"),
                "add an operation such as sep_conv_3x3 or skip_connect")]
        return [Problem(
            "every edge would derive to 'none': the space has no operation other than 'none'",
            space.span_of("operations"),
            "derivation never picks 'none' (paper, Sec. III-A); add an operation such as "
            "sep_conv_3x3 or skip_connect")]


LOCATIONS: dict[str, Location] = {location.name: location for location in (
    Location("after_every", OPERATIONS, ATTENTIONS, output_attention=False,
             needs_attentions=True, product_allowed=True, groupable=True),
    Location("end", OPERATIONS, None, output_attention=True,
             needs_attentions=True, product_allowed=True, groupable=True),
    Location("after_every_and_end", OPERATIONS, ATTENTIONS, output_attention=True,
             needs_attentions=True, product_allowed=True, groupable=True),
    Location("mixed_with_operation", BOTH, None, output_attention=False,
             needs_attentions=True, product_allowed=False, groupable=False),
    Location("double_mixed", BOTH, BOTH, output_attention=False,
             needs_attentions=True, product_allowed=False, groupable=False),
    Location("no_attention", OPERATIONS, None, output_attention=False,
             needs_attentions=False, product_allowed=True, groupable=True),
)}
