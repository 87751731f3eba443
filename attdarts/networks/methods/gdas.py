"""gdas(tau_max, tau_min, unchosen): GDAS, Gumbel-softmax single-path sampling (Dong and Yang,
CVPR 2019), on operations and (new here) on attentions.

As GDAS's code (D-X-Y/AutoDL-Projects, xautodl/models/cell_searchs/search_model_gdas_nasnet.py
`get_gumbel_prob` and search_cells.py `forward_gdas`), for every mixture kind (alpha, beta, gamma;
edge weights stay a softmax):

- one draw per cell type and step, shared by all cells of that type: Gumbel noise g = -log(E),
  E ~ Exp(1), drawn again (that seed's tensor) while it holds an infinity;
- probs = softmax((log_softmax(raw) + g) / tau) per row; the chosen candidate is its argmax and
  the weights are ``one_hot - probs.detach() + probs``: one-hot in value, the softmax's gradient
  (straight-through);
- single path: each row computes its chosen candidate alone (`paths`: the indices go to the host,
  one synchronisation per step; `attdarts.networks.single_path`); the others contribute nothing
  (`unchosen=nothing`, their DARTS-space cell `NASNetSearchCell`) or their weight, 0 in value
  (`unchosen=weight`, their NAS-Bench-201 cell), which gives each the output's summed gradient;
  a chosen `none` gives zeros, so its row's alpha gets a zero gradient through it;
- tau is set once per epoch, linear from `tau_max` in the first epoch to `tau_min` in the last,
  ``tau_max - (tau_max - tau_min) * t / (E - 1)`` for 0-based epoch t of E (a one-epoch search
  uses tau_max);
- derivation ranks softmax(raw) (no draw) and keeps, per node, the `keep` strongest (operation,
  input) pairs, `none` excluded: an input may be chosen twice, with two operations (`edge_choices`).

Without a draw (evaluation, `normalised_architecture`, derivation) the weights are softmax(raw)
and every candidate is computed. Hooks: `draw`, `normalise`, `paths`, `epoch_start`,
`capture_key`, `capture_problem`, `edge_choices`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attdarts.language import kinds
from attdarts.networks.methods import CellWeights, Paths, Random, SearchMethod

Draw = dict[tuple[str, str], Tensor]  # (kind, cell type) -> Gumbel noise shaped like its tensor


def gumbel_noise(like: Tensor, random: Random) -> Tensor:
    """-log(E), E ~ Exp(1), shaped like `like`; each seed's tensor is drawn again from its own
    generator while it holds an infinity (E = 0), as GDAS's `get_gumbel_prob` redraws."""
    def fill(out: Tensor, generator: torch.Generator) -> Tensor:
        while True:
            noise = -out.exponential_(generator=generator).log()
            if not torch.isinf(noise).any():
                return noise
    return random.draw_like(like, fill)


def straight_through(raw: Tensor, noise: Tensor, tau: float) -> Tensor:
    """GDAS's weights of `raw` (..., rows, candidates) with Gumbel `noise`: one-hot on the argmax
    of probs = softmax((log_softmax(raw) + noise) / tau) in value, the gradient of probs."""
    probs = F.softmax((F.log_softmax(raw, dim=-1) + noise) / tau, dim=-1)
    index = probs.argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(probs).scatter_(-1, index, 1.0)
    return one_hot - probs.detach() + probs


def temperature(tau_max: float, tau_min: float, epoch: int, epochs: int) -> float:
    """tau of 0-based `epoch` of `epochs`: linear from tau_max (first) to tau_min (last)."""
    if epochs <= 1:
        return tau_max
    return tau_max - (tau_max - tau_min) * epoch / (epochs - 1)


class Gdas(SearchMethod):
    """GDAS: a Gumbel-max one-hot sample per row and step, only the sampled candidate computed."""

    def __init__(self, space, settings) -> None:
        super().__init__(space, settings)
        self.tau = float(self.settings["tau_max"])  # set by `epoch_start`

    def epoch_start(self, epoch: int, epochs: int) -> dict[str, float]:
        self.tau = temperature(self.settings["tau_max"], self.settings["tau_min"], epoch, epochs)
        return {"tau": self.tau}

    def draw(self, arch: Mapping[str, Tensor], random: Random) -> Draw:
        drawn = {}
        for name, tensor in arch.items():
            kind = kinds.of(name)
            if kind in kinds.MIXTURES:
                drawn[(kind, name.rsplit("_", 1)[-1])] = gumbel_noise(tensor.detach(), random)
        return drawn

    def normalise(self, kind: str, raw: Tensor, cell: str, draw: Draw | None) -> Tensor | None:
        if draw is None or (kind, cell) not in draw:
            return None  # the softmax: evaluation and derivation
        return straight_through(raw, draw[(kind, cell)].to(raw.dtype), self.tau)

    def paths(self, weights: CellWeights, draw: Any) -> Paths | None:
        if draw is None:
            return None
        chosen = {kind: getattr(weights, kind).argmax(dim=-1) for kind in kinds.MIXTURES
                  if getattr(weights, kind) is not None}
        return Paths(**chosen, unchosen=self.settings["unchosen"] == "weight")

    def capture_key(self) -> tuple:
        return (self.tau,)

    def capture_problem(self) -> str | None:
        return "gdas chooses each edge's candidate on the host every step"

    def edge_choices(self) -> int | None:
        return self.space.keep
