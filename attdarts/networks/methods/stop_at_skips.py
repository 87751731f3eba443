"""stop_at_skips(n): DARTS+'s early stop (Liang et al., 2019).

After an epoch whose derived normal cell has n or more skip_connect, the search stops; epochs
without architecture steps and the last epoch do not count (the last ends the search anyway).
Hook: `early_stop`.
"""

from __future__ import annotations

from attdarts.language import ir
from attdarts.networks.methods import SearchMethod


def count_skip_connect(cell: ir.Cell) -> int:
    """Edges of `cell` whose operation is skip_connect, with or without an attention after it."""
    return sum(edge.operation.name == "skip_connect" for node in cell.nodes for edge in node.edges)


class StopAtSkips(SearchMethod):
    """DARTS+: stop when the derived normal cell has n skip connections."""

    def early_stop(self, epoch: int, epochs: int, genotype: ir.Genotype, trained: bool
                   ) -> str | None:
        limit = self.settings["n"]
        if not trained or epoch + 1 >= epochs:
            return None
        skips = count_skip_connect(genotype.normal)
        if skips < limit:
            return None
        return f"the derived normal cell has {skips} skip_connect (stop_at_skips = {limit})"
