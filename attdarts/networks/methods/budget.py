"""budget(macs | params | latency, table, weight, form): a penalty on the final network's
expected cost in the architecture loss (issue 21; README "The budget method").

The expected cost E is `attdarts.networks.budget.Budget`'s: a cost table's entries at the final
size (the network `attdarts compile` builds from the derived genotype, not the supernet)
weighted by the mixture weights as the step's forward uses them (a sampler's draw included),
each edge counted as its share of its node's `keep` kept edges (under edge normalisation, `keep`
times its edge weight), plus the table's fixed part: E is in the units `compile` prints. The
architecture loss gets ``weight * penalty(E / T)`` with T the target and the `form`:

- "exceed" (default): max(0, E/T - 1), TF-NAS's term (Hu et al., ECCV 2020) on exceeding only,
  so a network within the budget is left to the accuracy;
- "target": |E/T - 1|, TF-NAS's own, which also pushes a cheaper network up to T;
- "linear": E/T, ProxylessNAS's lambda * E[latency] (Cai et al., ICLR 2019) per unit of T.

FBNet's factor alpha * log(E)^beta (Wu et al., CVPR 2019) multiplies the whole loss and is not a
term the hook can add (`attdarts.networks.budget.fbnet_loss`).

The table: `table="costs.json"` (`attdarts cost`), read when the search starts, its path relative
to the space file's folder (`SearchContext.path`); the table's size is then the final size.
Without one (counts only), a table of the final size the search's context names is built (the
training recipe of the search's dataset: CIFAR-10 or CIFAR-100 at C=36, 20 cells; a few
seconds), with torch's random state left as it was. A latency target needs a table measured on
the device (`attdarts cost --latency`).

Hooks: `search_start` (the table, or `MethodError` in one line), `architecture_loss` (the
penalty; tensors with leading seed dimensions give one penalty per seed), `epoch_end` (what
metrics.jsonl records each epoch, `attdarts.records.budget_keys`). The method holds its `Budget` as a submodule of
non-persistent buffers: it moves with the supernet and is not part of a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from attdarts.language import ir
from attdarts.records import budget_keys
from attdarts.language.methods import BUDGET_MEASURES
from attdarts.networks.budget import MEASURES, Budget
from attdarts.networks.costs import COUNTS, CostError, read_cost_table
from attdarts.networks.methods import (
    MethodError, MixtureWeights, SearchContext, SearchMethod,
)

__all__ = ["BudgetMethod"]

class BudgetMethod(SearchMethod):
    """A budget on one measure of the final network (module docstring)."""

    def __init__(self, space: ir.Space, settings: Mapping[str, Any]) -> None:
        super().__init__(space, settings)
        given = [key for key in BUDGET_MEASURES if settings.get(key) is not None]
        if len(given) != 1:  # the catalog's `requires` refuses such a space first
            raise ValueError("a budget names exactly one of macs, params and latency")
        self.key = given[0]
        self.measure = MEASURES[self.key]
        self.target = float(settings[self.key])
        self.budget: Budget | None = None  # made by `search_start`, or on first use

    def search_start(self, context: SearchContext) -> None:
        self.budget = self.make_budget(context)

    def make_budget(self, context: SearchContext) -> Budget:
        """The `Budget` for a search of `context`: its table read (relative to the space
        file's folder) or built at the final size; `MethodError` in one line otherwise."""
        settings = self.settings
        table = None
        if settings["table"] is not None:
            path = context.path(settings["table"])
            try:
                table = read_cost_table(path)  # its errors name the file
            except CostError as error:
                raise MethodError(f"budget: {error}") from None
            except (OSError, ValueError) as error:
                raise MethodError(f"budget: cannot read the cost table {path}: "
                                  f"{getattr(error, 'strerror', None) or error}") from None
        try:
            with torch.random.fork_rng(devices=[]):  # building modules draws their init
                return Budget.from_settings(
                    self.space, **{self.key: self.target}, table=table,
                    weight=settings["weight"], form=settings["form"], dataset=context.dataset,
                    channels=context.channels, layers=context.layers)
        except (CostError, ValueError) as error:
            where = f" ({settings['table']})" if settings["table"] is not None else ""
            raise MethodError(f"budget: the cost table{where} cannot price space "
                              f"'{self.space.name}': {error}") from None

    def _budget(self, like: Tensor) -> Budget:
        """The budget, made for the default context (CIFAR-10, C=36, 20 cells, paths relative
        to the current directory) when no search started it, on `like`'s device."""
        if self.budget is None:
            self.budget = self.make_budget(SearchContext()).to(like.device)
        return self.budget

    def architecture_loss(self, arch: Mapping[str, Tensor], weights: MixtureWeights
                          ) -> Tensor | None:
        return self._budget(weights[0].alpha).loss(weights)

    def epoch_end(self, weights: MixtureWeights, genotype: ir.Genotype) -> dict[str, Any]:
        """E and the penalty under the epoch's final weights (float64), the derived genotype's
        cost (None where the table cannot price it, e.g. a cell that dropped a node), T."""
        budget = self._budget(weights[0].alpha)
        exact = tuple(type(cell)(*(None if value is None else value.detach().double()
                                   for value in cell)) for cell in weights)
        with torch.no_grad():
            expected = budget.expected(exact)
            penalty = budget.loss(exact)
        try:
            derived: float | int | None = budget.real_cost(genotype)
        except CostError:
            derived = None
        if derived is not None and self.measure in COUNTS:
            derived = int(derived)
        keys = budget_keys(self.measure)
        return {keys["expected"]: float(expected.mean()), keys["derived"]: derived,
                keys["target"]: int(self.target) if self.measure in COUNTS else self.target,
                keys["penalty"]: float(penalty.mean())}
