"""A budget on the final network's cost, as a term of the architecture loss (issue 21, part 3).

The expected cost. A cost table (`attdarts.networks.costs`) prices every choice of a genotype
at the final size; under the search's mixture weights the cost of the network derivation would
write is a random variable whose expectation is differentiable in the weights:

    E = fixed + sum over cell types, over edges e of  share_e * (E_e[operation] + E_e[attention])
              + sum over cell types of E[output attention]

where E_e[operation] = sum_c w_c cost_c / sum_c w_c over the columns c derivation can choose
from (it never chooses `none`, so `none`'s weight is not a way to look cheap; where attentions
share the operations' softmax, an attention column costs `skip_connect` plus the attention, what
it derives to), and each cost is the table's entry summed over the cells of that type. `share_e`
is how much of a network edge e is: the final cell keeps `keep` of a node's incoming edges, so
with PC-DARTS's edge normalisation share_e = keep x the edge's normalised weight (its share of
the node), and otherwise keep / (edges entering the node). E is then in the final network's units
(multiply-adds of `compile`, parameters, table milliseconds): a target of 600M compares with
what `attdarts compile` will print. `shares="all"` counts every supernet edge once instead (the
expected cost of the whole supernet, as ProxylessNAS sums over its layers).

Penalties (`FORMS`), with `weight` lambda and `target` T:

- "exceed" (default): lambda * max(0, E / T - 1), the penalty of TF-NAS (Hu et al., ECCV 2020,
  |E/T - 1|) on exceeding only, so a network below the budget is left to the accuracy;
- "target": lambda * |E / T - 1|, TF-NAS's own, which also pushes a cheaper network up to T;
- "linear": lambda * E / T, ProxylessNAS's lambda * E[latency] (Cai et al., ICLR 2019) with
  lambda measured per target so that one weight suits every unit.

FBNet (Wu et al., CVPR 2019) multiplies the loss by alpha * log(E)^beta instead (`fbnet_loss`);
it needs the whole loss, not a term added to it.

Weights arrive as the search forward uses them: per cell type, in `ir.CELL_KINDS` order, a
sequence whose items 0 to 3 are alpha, beta, gamma and the normalised edge weights (None where
absent), which is both the supernet's `mixture_weights()` tuples and a `CellWeights`. Tensors
may carry leading dimensions (seeds stacked together); the result keeps them. Columns of alpha
past the space's candidates (DARTS-'s auxiliary skip) are not part of the derived network and
are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attdarts.language import ir
from attdarts.language.locations import ATTENTIONS, BOTH
from attdarts.language.methods import BUDGET_FORMS
from attdarts.networks.costs import LATENCY, CostError, CostTable, KindCosts

__all__ = ["FORMS", "MEASURES", "Budget", "expected_cost", "fbnet_loss", "penalty"]

FORMS = BUDGET_FORMS  # the catalog's (`budget(form=...)`)
SHARES = ("kept", "all")
# a budget's key (as the method's settings name it) -> the table's measure
MEASURES = {"macs": "multiply_adds", "params": "parameters", "latency": LATENCY}


def penalty(expected: Tensor, target: float, *, form: str = "exceed", weight: float = 1.0
            ) -> Tensor:
    """The penalty of `expected` against `target` (module docstring, `FORMS`)."""
    if target <= 0:
        raise ValueError(f"a budget's target must be positive, got {target}")
    ratio = expected / target
    if form == "exceed":
        return weight * torch.relu(ratio - 1.0)
    if form == "target":
        return weight * (ratio - 1.0).abs()
    if form == "linear":
        return weight * ratio
    raise ValueError(f"unknown budget form {form!r}; expected one of {', '.join(FORMS)}")


def fbnet_loss(loss: Tensor, expected: Tensor, *, alpha: float, beta: float) -> Tensor:
    """FBNet's loss: ``loss * alpha * log(E)^beta`` (E in the table's unit, above 1)."""
    return loss * alpha * torch.log(expected.clamp_min(1.0 + 1e-6)) ** beta


class Budget(nn.Module):
    """The expected cost of one measure of a cost table under mixture weights, and its penalty.

    Built once per search from the space and a table of the final size; the cost tensors are
    buffers (non-persistent), so the module moves with the supernet. `expected(weights)` is E,
    `loss(weights)` the penalty the architecture step adds, `record(weights)` the numbers to
    log, `real_cost(genotype)` a derived genotype's cost from the table.
    """

    def __init__(self, space: ir.Space, table: CostTable, *, measure: str, target: float,
                 weight: float = 1.0, form: str = "exceed", shares: str = "kept") -> None:
        super().__init__()
        problem = table.matches(space)
        if problem:
            raise CostError(problem)
        if measure not in table.measures:
            raise CostError(f"the cost table ({table.describe()}) has no {measure}")
        if form not in FORMS:
            raise ValueError(f"unknown budget form {form!r}; expected one of {', '.join(FORMS)}")
        if shares not in SHARES:
            raise ValueError(f"unknown edge shares {shares!r}; expected one of {', '.join(SHARES)}")
        if not target > 0:
            raise ValueError(f"a budget's target must be positive, got {target}")
        self.space = space
        self.table = table
        self.measure = measure
        self.target = float(target)
        self.weight = float(weight)
        self.form = form
        self.shares = shares
        self.fixed = float(table.fixed[measure])
        kind_costs = table.kind_costs(measure)
        self.kinds = []
        for kind in ir.CELL_KINDS:
            for name, (cost, mask) in _mixture_costs(space, table, kind_costs[kind]).items():
                self.register_buffer(f"{name}_cost_{kind}", cost, persistent=False)
                self.register_buffer(f"{name}_mask_{kind}", mask, persistent=False)
            self.kinds.append(kind)
        nodes = space.nodes
        incoming = [2 + node for node in range(nodes) for _ in range(2 + node)]
        self.register_buffer("uniform_share", torch.tensor(
            [space.keep / count for count in incoming], dtype=torch.float64), persistent=False)

    @classmethod
    def from_settings(cls, space: ir.Space, *, macs: float | None = None,
                      params: float | None = None, latency: float | None = None,
                      table: CostTable | None = None, weight: float = 1.0,
                      form: str = "exceed", dataset: str = "cifar10", channels: int = 36,
                      layers: int = 20) -> Budget:
        """The budget a method's settings name: exactly one of `macs`, `params` (counts) or
        `latency` (ms, needs a `table` with latency); without a table, one of the final size
        (`dataset`, `channels`, `layers`) is built (counts only, seconds)."""
        given = {key: value for key, value in (("macs", macs), ("params", params),
                                               ("latency", latency)) if value is not None}
        if len(given) != 1:
            raise ValueError("a budget names exactly one of macs, params and latency")
        key, target = next(iter(given.items()))
        if table is None:
            if key == "latency":
                raise ValueError("a latency budget needs a cost table measured on the device "
                                 "(attdarts cost SPACE --latency -o costs.json)")
            from attdarts.networks.cost_meter import build_cost_table

            table = build_cost_table(space, dataset=dataset, channels=channels, layers=layers)
        return cls(space, table, measure=MEASURES[key], target=target, weight=weight, form=form)

    def _buffer(self, name: str, kind: str) -> Tensor | None:
        return getattr(self, f"{name}_cost_{kind}", None)

    def expected(self, weights: Sequence[Sequence[Any]]) -> Tensor:
        """E under `weights` (module docstring), with the weights' leading dimensions."""
        total: Tensor | None = None
        for kind, cell in zip(self.kinds, weights):
            alpha = cell[0]
            beta = cell[1] if len(cell) > 1 else None
            gamma = cell[2] if len(cell) > 2 else None
            edges = cell[3] if len(cell) > 3 else None
            per_edge = self._mixture(alpha, "alpha", kind)
            if self._buffer("beta", kind) is not None:
                if beta is None:
                    raise ValueError(f"the {kind} cell's weights have no beta, which location "
                                     f"'{self.space.location}' has")
                per_edge = per_edge + self._mixture(beta, "beta", kind)
            cost = (per_edge * self._shares(per_edge, edges)).sum(dim=-1)
            if self._buffer("gamma", kind) is not None:
                if gamma is None:
                    raise ValueError(f"the {kind} cell's weights have no gamma, which location "
                                     f"'{self.space.location}' has")
                cost = cost + self._mixture(gamma, "gamma", kind).sum(dim=-1)
            total = cost if total is None else total + cost
        assert total is not None
        return total + self.fixed

    def _mixture(self, weights: Tensor, name: str, kind: str) -> Tensor:
        """Per row, the expected cost over the columns derivation can choose from."""
        cost = getattr(self, f"{name}_cost_{kind}")
        mask = getattr(self, f"{name}_mask_{kind}")
        columns = cost.shape[-1]
        if weights.shape[-1] < columns:
            raise ValueError(f"{kind} {name} has {weights.shape[-1]} columns; the space has "
                             f"{columns}")
        chosen = weights[..., :columns] * mask.to(weights.dtype)  # extra columns: not derived
        cost = cost.to(weights.dtype).expand_as(chosen)
        # costs relative to the row's strongest choosable column: the same E, but a row with a
        # single choosable column (a stage kept `none` and one operation) has a constant E with
        # an exactly zero gradient, not rounding noise (which Adam would divide by its eps)
        reference = cost.gather(-1, chosen.detach().argmax(dim=-1, keepdim=True)).squeeze(-1)
        # a row whose choosable columns all weigh 0 (masked by a method, or GDAS's one-hot draw
        # of `none`) costs nothing, with a zero gradient (a division by ~0 would make it NaN)
        total = chosen.sum(dim=-1)
        some = total > 0
        relative = (chosen * (cost - reference.unsqueeze(-1))).sum(dim=-1) / torch.where(
            some, total, torch.ones_like(total))
        return torch.where(some, relative + reference, torch.zeros_like(relative))

    def _shares(self, per_edge: Tensor, edges: Tensor | None) -> Tensor:
        if self.shares == "all":
            return torch.ones_like(per_edge)
        if edges is not None:  # edge normalisation: keep x the edge's share of its node
            return self.space.keep * edges.to(per_edge.dtype)
        return self.uniform_share.to(per_edge.dtype)

    def loss(self, weights: Sequence[Sequence[Any]]) -> Tensor:
        """The penalty term of the architecture loss (`penalty` of `expected`)."""
        return penalty(self.expected(weights), self.target, form=self.form, weight=self.weight)

    def record(self, weights: Sequence[Sequence[Any]]) -> dict[str, float]:
        """What a search logs each epoch: the expected cost (mean over stacked seeds)."""
        with torch.no_grad():
            value = self.expected(weights).double().mean().item()
        return {f"budget_expected_{self.measure}": value}

    def real_cost(self, genotype: ir.Genotype) -> float:
        """The derived genotype's cost at the final size, from the table (exact for counts)."""
        return self.table.price(genotype)[self.measure]

    def extra_repr(self) -> str:
        return (f"{self.measure} <= {self.target:g} ({self.form}, weight {self.weight:g}, "
                f"{self.table.describe()})")


def expected_cost(weights: Sequence[Sequence[Any]], space: ir.Space, table: CostTable,
                  measure: str = "multiply_adds", *, shares: str = "kept") -> Tensor:
    """E of `measure` under `weights` (a one-off `Budget`; build one `Budget` per search)."""
    budget = Budget(space, table, measure=measure, target=1.0, shares=shares)
    return budget.expected(weights)


def _mixture_costs(space: ir.Space, table: CostTable, costs: KindCosts
                   ) -> dict[str, tuple[Tensor, Tensor]]:
    """(cost, mask) per mixture the location has: cost rows x columns as the mixture's columns
    cost in the derived network, mask the columns derivation can choose from."""
    location = space.location_spec
    operations = [table.operations.index(call) for call in space.operations]
    attentions = list(range(len(space.attentions)))
    skip = table.operations.index(ir.Call(name="skip_connect")) if \
        location.mixes_operations_and_attentions else None
    not_none = [call.name != "none" for call in space.operations]
    edges = len(costs.operations)

    def operation_columns(row: int) -> list[float]:
        return [costs.operations[row][index] for index in operations]

    result: dict[str, tuple[Tensor, Tensor]] = {}
    if location.mixes_operations_and_attentions:
        assert skip is not None
        alpha = [operation_columns(e) + [costs.operations[e][skip] + costs.attentions[e][a]
                                         for a in attentions] for e in range(edges)]
        # mixed_with_operation: attentions derive from alpha; double_mixed: from beta
        chooses_attentions = location.then is None
        alpha_mask = not_none + [chooses_attentions] * len(attentions)
    else:
        alpha = [operation_columns(e) for e in range(edges)]
        alpha_mask = not_none
    result["alpha"] = (_tensor(alpha), torch.tensor(alpha_mask))
    if location.then == ATTENTIONS:
        beta = [[costs.attentions[e][a] for a in attentions] for e in range(edges)]
        result["beta"] = (_tensor(beta), torch.ones(len(attentions), dtype=torch.bool))
    elif location.then == BOTH:  # double_mixed: the attention columns of the second mixture
        beta = [[0.0] * len(operations) + [costs.attentions[e][a] for a in attentions]
                for e in range(edges)]
        mask = [False] * len(operations) + [True] * len(attentions)
        result["beta"] = (_tensor(beta), torch.tensor(mask))
    if location.output_attention:
        assert costs.output is not None
        result["gamma"] = (_tensor([list(costs.output)]),
                           torch.ones(len(attentions), dtype=torch.bool))
    return result


def _tensor(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)

