"""Architecture tensor kinds: the names of a supernet's architecture parameters, declared once.

Every stage that reads or writes architecture tensors (the supernet, derivation, the search step,
the run directory's weights.jsonl, plots) names them by these constants. The strings are the
public spelling: checkpoint keys (`arch.alpha_normal`), weights.jsonl fields and the keys of
`derive_genotype`'s tensor mappings.

| kind | constant | weights of | shape per cell type | normalised |
|---|---|---|---|---|
| alpha | `OPERATION` | each edge's first mixture (operations, or operations + attentions) | (edges, candidates) | per row |
| beta | `ATTENTION` | the mixture after each edge's first one | (edges, candidates) | per row |
| gamma | `OUTPUT` | the attention mixture on the cell output | (1, attentions) | per row |
| edges | `EDGE` | the edges entering each node (edge normalisation) | (edges,) | over each node's incoming edges |

Torch-free and IR-free.
"""

from __future__ import annotations

OPERATION = "alpha"
ATTENTION = "beta"
OUTPUT = "gamma"
EDGE = "edges"

MIXTURES = (OPERATION, ATTENTION, OUTPUT)  # candidate mixtures: one weight per candidate and row
KINDS = (*MIXTURES, EDGE)  # every kind, in the order a supernet registers them


def of(name: str) -> str:
    """The kind of an architecture parameter name: 'arch.beta_reduce' -> 'beta'."""
    return name.rsplit(".", 1)[-1].split("_", 1)[0]
