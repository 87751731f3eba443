"""max_identity(n): P-DARTS's cap carried over to attentions (new here).

While the derived normal cell keeps more than n edges whose attention is the identity, the one
whose identity weight (times its edge's ranking factor) is smallest takes its strongest other
attention; attentions do not rank edges, so the kept edges stay. The reduction cell is not
capped. Hook: `cap`.
"""

from __future__ import annotations

from attdarts.language import kinds
from attdarts.networks.methods import Ban, Derivation, SearchMethod

IDENTITY = "identity"


class MaxIdentity(SearchMethod):
    """At most n edges without attention in the derived normal cell."""

    def cap(self, derivation: Derivation) -> Ban | None:
        beta = derivation.weights.get(kinds.ATTENTION)
        if derivation.cell != "normal" or beta is None:
            return None
        identities = [choice for node in derivation.kept for choice in node
                      if derivation.attention_name(choice) == IDENTITY]
        if len(identities) <= self.settings["n"]:
            return None
        scales = derivation.scales
        weakest = min(identities, key=lambda c: (beta[c.index][c.attention] * scales[c.index],
                                                 c.index))
        return Ban(weakest.index, kinds.ATTENTION, IDENTITY)
