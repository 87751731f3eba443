"""max_skip_connect(n): P-DARTS's cap on skip connections (Chen et al., ICCV 2019).

While the derived normal cell keeps more than n skip_connect edges, the weakest of them (smallest
ranking weight, then lower edge index) loses skip_connect and takes its own next strongest
operation (strongest other than none and skip_connect, as P-DARTS's code does); the nodes then
choose their edges again, so the edge may give its place to another. The reduction cell is not
capped. Hook: `cap`.
"""

from __future__ import annotations

from attdarts.language import kinds
from attdarts.networks.methods import Ban, Derivation, SearchMethod

SKIP_CONNECT = "skip_connect"


class MaxSkipConnect(SearchMethod):
    """P-DARTS: at most n skip_connect in the derived normal cell."""

    def cap(self, derivation: Derivation) -> Ban | None:
        if derivation.cell != "normal":
            return None
        skips = [choice for node in derivation.kept for choice in node
                 if derivation.operation_name(choice) == SKIP_CONNECT]
        if len(skips) <= self.settings["n"]:
            return None
        weakest = min(skips, key=lambda choice: (choice.weight, choice.index))
        return Ban(weakest.index, kinds.OPERATION, SKIP_CONNECT)
