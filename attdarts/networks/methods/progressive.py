"""The network side of a progressive search's stages (P-DARTS, Chen et al., ICCV 2019).

A space with `stages` (`attdarts.language.stages`) gets this component in its `MethodSet`
besides the methods it lists. It holds what a stage changes in the supernet:

- the candidates still searched, one bool mask per architecture kind and cell type (rows x
  candidates, the shape of the raw tensor, so the architecture keeps its shape through the
  stages): `candidate_mask` gives them to the weights (a dropped candidate's raw weight becomes
  -inf, its weight 0; `adjust` keeps it 0 after methods that perturb the weights) and
  `Supernet.use_candidates` stops computing dropped candidates;
- P-DARTS's dropout on stride-1 skip connections at this epoch's `rate`: each pass of a step gets
  its own key, one per seed, drawn from the seed's method generator (`draw` for the
  architecture step's passes, `before_weight_step` for the weight step's), carried to the cells
  in `CellWeights.noise` (`adjust`), from which the masks are computed (`attdarts.networks.noise`).
  P-DARTS draws fresh dropout masks in every forward; here the architecture step's passes
  share one key (they are one step, as a sampler's draw), and the weight step has its own.

`prune` is P-DARTS's rule between stages (`get_min_k` of its train_search.py): each row drops its
weakest candidates by the last stage's weights, one at a time, the lower index first among
equals; `none` is a candidate like the others until the end, where derivation passes it over (as
P-DARTS's final `get_min_k_no_zero` removes it first).

Hooks: `candidate_mask`, `draw`, `before_weight_step`, `adjust`, `capture_key`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from attdarts.language import ir, kinds
from attdarts.networks.methods import CellWeights, Random, SearchMethod
from attdarts.networks.noise import KEY_LIMIT

__all__ = ["COUNTED", "Masks", "Progressive", "all_kept", "flat", "prune", "unflat"]

Masks = dict[str, dict[str, Tensor]]  # cell type -> kind -> bool (rows, candidates)
# which stage count prunes which kind: `operations` alpha, `attentions` beta and gamma
COUNTED = {kinds.OPERATION: "operations", kinds.ATTENTION: "attentions",
           kinds.OUTPUT: "attentions"}


def prune(weights: Tensor, kept: Tensor, count: int) -> Tensor:
    """The candidates each row of `weights` (rows x candidates) keeps when it keeps `count` of
    those `kept` (bool, same shape): the weakest are dropped one at a time, the lower index
    first among equal weights (P-DARTS's `get_min_k`, numpy's argmin). A row keeping `count` or
    fewer already is left as it is."""
    result = kept.clone()
    for row in range(weights.shape[0]):
        candidates = [i for i in range(weights.shape[1]) if bool(kept[row, i])]
        weakest = sorted(candidates, key=lambda i: (float(weights[row, i]), i))
        for index in weakest[:max(0, len(candidates) - count)]:
            result[row, index] = False
    return result


def all_kept(shapes: Mapping[str, Mapping[str, tuple[int, ...]]]) -> Masks:
    """Masks keeping every candidate, for raw tensors of `shapes[cell][kind]`."""
    return {cell: {kind: torch.ones(shape, dtype=torch.bool) for kind, shape in by_kind.items()}
            for cell, by_kind in shapes.items()}


def flat(masks: Masks) -> dict[str, Tensor]:
    """`masks` as a checkpoint holds them: {"alpha_normal": tensor, ...} on the CPU."""
    return {f"{kind}_{cell}": mask.cpu() for cell, by_kind in masks.items()
            for kind, mask in by_kind.items()}


def unflat(saved: Mapping[str, Tensor]) -> Masks:
    """The reverse of `flat`."""
    masks: Masks = {cell: {} for cell in ir.CELL_KINDS}
    for name, mask in saved.items():
        kind, cell = name.rsplit("_", 1)
        masks[cell][kind] = mask.to(torch.bool)
    return masks


class Progressive(SearchMethod):
    """A stage's candidate masks and skip dropout (module docstring)."""

    def __init__(self, space: ir.Space, settings: Mapping[str, Any]) -> None:
        super().__init__(space, settings)
        self.masks: Masks = {}
        self.rate = 0.0  # this epoch's skip dropout rate; 0: none
        self._noise: Tensor | None = None  # the architecture step's key and rate
        self._weight_noise: Tensor | None = None  # the weight step's

    def set_masks(self, masks: Masks | None, device: torch.device | str = "cpu") -> None:
        """The candidates searched from now on (None: all), on the supernet's `device`."""
        self.masks = {cell: {kind: mask.to(device) for kind, mask in by_kind.items()}
                      for cell, by_kind in (masks or {}).items()}

    def candidate_mask(self, kind: str, cell: str) -> Tensor | None:
        return self.masks.get(cell, {}).get(kind)

    def _key(self, like: Tensor, random: Random) -> Tensor:
        """This pass's (key, rate): (2,), or (seeds, 2) when stacked; on `like`'s device."""
        shape = (like.shape[0],) if random.stacked else ()
        key = random.draw_like(torch.empty(shape, dtype=torch.float64, device=like.device),
                               lambda out, g: out.random_(0, KEY_LIMIT, generator=g))
        return torch.stack([key, torch.full_like(key, self.rate)], dim=-1)

    def draw(self, arch: Mapping[str, Tensor], random: Random) -> None:
        self._noise = None if self.rate <= 0 else self._key(next(iter(arch.values())), random)
        self._weight_noise = None
        return None  # the key travels in the weights (`adjust`), not through `normalise`

    def before_weight_step(self, weights: CellWeights, cell: int, random: Random) -> CellWeights:
        if self.rate <= 0:
            return weights
        if self._weight_noise is None:  # one key for the weight step's pass, both cell types
            self._weight_noise = self._key(weights.alpha, random)
        return weights._replace(noise=self._weight_noise)

    def adjust(self, weights: CellWeights, cell: int) -> CellWeights:
        """A dropped candidate weighs exactly 0 in every pass (a method that perturbs the
        weights, random smoothing, gave it some: the cells do not compute it, so its weight
        says so), and the pass gets its skip dropout key."""
        changed: dict[str, Tensor] = {}
        for kind in kinds.MIXTURES:
            mask, value = self.candidate_mask(kind, ir.CELL_KINDS[cell]), getattr(weights, kind)
            if mask is None or value is None:
                continue
            extra = value.shape[-1] - mask.shape[-1]  # a method's own candidates: always kept
            if extra:
                mask = torch.cat([mask, mask.new_ones(*mask.shape[:-1], extra)], dim=-1)
            changed[kind] = torch.where(mask, value, 0.0)
        if weights.noise is None and self._noise is not None:
            changed["noise"] = self._noise
        return weights._replace(**changed)

    def capture_key(self) -> tuple:
        return (self.rate,)
