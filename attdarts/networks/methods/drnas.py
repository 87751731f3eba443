"""drnas(kl): DrNAS's Dirichlet mixture weights (Chen et al., ICLR 2021).

Every row of the mixture kinds (alpha, beta, gamma; edge weights are left alone) weighs its
candidates by one sample of Dirichlet(ELU(row) + 1), with pathwise gradients, as DrNAS's code does
with ``Dirichlet(F.elu(alpha) + 1).rsample()`` (xiangning-chen/DrNAS, utils.py
`process_step_vector`). Here the sample is drawn once per step (`draw`, from the run's method
generator: each seed its own numbers), so every pass of the step, second order included, sees one
draw:

- the value is the sample, drawn by torch's Dirichlet sampler (`torch._sample_dirichlet`, the one
  `Dirichlet.rsample` calls) from the step's generator, at the concentrations of the moment;
- the gradient is torch's `Dirichlet.rsample` gradient at the concentrations of the pass
  (`DirichletSample`): for x ~ Dirichlet(a) with total T and upstream g,
  ``dL/da_i = D_i (g_i - sum_j x_j g_j)``, D_i = -(dF/da_i) / f / (1 - x_i) with F and f the
  CDF and density of x_i's marginal Beta(a_i, T - a_i) (the derivative holding its second
  argument; torch computes D_i by series, `torch._dirichlet_grad`).

Candidates another method switches off (a mask: their raw weight is -inf here) weigh zero and the
others are renormalised, as DrNAS's pruning does; the gradient is then the Dirichlet's over the
kept candidates. Without a draw (derivation, weights.jsonl, a forward without weights) the
weights are softmax(raw), masked: DrNAS derives by the DARTS rule on the masked softmax(alpha) and
logs it.

Regulariser: by default DrNAS's L2, the architecture optimiser's weight decay (1e-3 in its
recipe); `kl` > 0 adds ``kl * sum over rows KL(Dirichlet(ELU(row) + 1) || Dirichlet(1, ..., 1))``
to the architecture loss (their `reg_type='kl'`, `reg_scale=1e-3`, which also sets the weight
decay to 0: give `--arch-weight-decay 0`).

DrNAS's progressive schedule (two stages: partial channels K=6 with all 7 candidates, then the 4
strongest by alpha per edge with every candidate widened to K=4) is two search stages, the second
kept with `partial_channels=4` (genotypes/spaces/drnas.geno); this module holds its pieces:
`prune` (the top k per row) and `widen_module` / `widen_tensor` (a module built for C/6 channels
grown to C/4 by copying random channels, and its momentum buffers with it), which
`attdarts.networks.widening` applies to a whole supernet.

Hooks: `draw`, `normalise`, `architecture_loss`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attdarts.language import kinds
from attdarts.networks.methods import MixtureWeights, Random, SearchMethod

__all__ = [
    "DrNAS", "DirichletSample", "channel_map", "concentration", "dirichlet_kl",
    "dirichlet_weights", "prune", "widen_module", "widen_tensor",
]


def concentration(raw: Tensor) -> Tensor:
    """DrNAS's Dirichlet concentration ELU(raw) + 1 (positive; 0 at raw = -inf)."""
    return F.elu(raw) + 1.0


class DirichletSample(torch.autograd.Function):
    """`sample` as its value, with torch's `Dirichlet.rsample` gradient with respect to
    `concentration` (module docstring) over the `kept` candidates of each row (the last axis);
    rows that keep fewer than two candidates, and the other candidates, get no gradient."""

    generate_vmap_rule = True  # seeds stacked under torch.vmap

    @staticmethod
    def forward(concentration: Tensor, sample: Tensor, kept: Tensor) -> Tensor:
        return sample.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        concentration, sample, kept = inputs
        ctx.save_for_backward(concentration, sample, kept)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        concentration, sample, kept = ctx.saved_tensors
        total = torch.where(kept, concentration, 0).sum(-1, keepdim=True)
        live = kept & (kept.sum(-1, keepdim=True) > 1)
        # harmless stand-ins where there is no gradient (the series is not defined there)
        x = torch.where(live, sample, 0.5)
        a = torch.where(live, concentration, 1.0)
        t = torch.where(live, total.expand_as(a), 2.0)
        derivative = torch._dirichlet_grad(x, a, t)
        projected = grad - (torch.where(kept, sample, 0) * grad).sum(-1, keepdim=True)
        return torch.where(live, derivative * projected, 0), None, None


def dirichlet_weights(raw: Tensor, sample: Tensor) -> Tensor:
    """The weights of rows `raw` (..., candidates) given `sample`, a Dirichlet sample of the same
    shape: the sample, candidates with raw -inf (masked) set to zero and the rest renormalised;
    gradients `DirichletSample`'s at ``concentration(raw)``."""
    kept = raw > float("-inf")
    masked = torch.where(kept, sample, 0)
    renormalised = masked / masked.sum(-1, keepdim=True)
    value = torch.where(kept.all(-1, keepdim=True), sample, renormalised)
    a = torch.where(kept, concentration(raw), 1.0)
    return DirichletSample.apply(a, value, kept)


def dirichlet_kl(raw: Tensor) -> Tensor:
    """Sum over the rows (the second-last axis) of KL(Dirichlet(ELU(row) + 1) || Dirichlet(1,
    ..., 1)); leading dimensions (seeds) are kept. With a = ELU(row) + 1, a0 = sum a, K
    candidates: ``lgamma(a0) - sum lgamma(a_i) - lgamma(K) + sum (a_i - 1)(digamma(a_i) -
    digamma(a0))``."""
    a = concentration(raw)
    total = a.sum(-1)
    candidates = torch.full_like(total, float(a.shape[-1]))
    kl = (torch.lgamma(total) - torch.lgamma(a).sum(-1) - torch.lgamma(candidates)
          + ((a - 1.0) * (torch.digamma(a) - torch.digamma(total).unsqueeze(-1))).sum(-1))
    return kl.sum(-1)


class DrNAS(SearchMethod):
    """DrNAS: mixture weights sampled from Dirichlet(ELU(raw) + 1)."""

    def draw(self, arch: Mapping[str, Tensor], random: Random) -> dict[tuple[str, str], Tensor]:
        """One Dirichlet sample per row of every mixture kind, keyed (kind, cell)."""
        draws = {}
        for name, value in arch.items():
            kind = kinds.of(name)
            if kind in kinds.MIXTURES:
                cell = name.rsplit("_", 1)[-1]
                draws[kind, cell] = random.sample(concentration(value), _dirichlet)
        return draws

    def normalise(self, kind: str, raw: Tensor, cell: str, draw: Any) -> Tensor | None:
        if draw is None or (kind, cell) not in draw:
            return None  # the softmax: derivation, weights.jsonl, a forward without weights
        return dirichlet_weights(raw, draw[kind, cell].to(raw.dtype))

    def architecture_loss(self, arch: Mapping[str, Tensor], weights: MixtureWeights
                          ) -> Tensor | None:
        scale = float(self.settings["kl"])
        tensors = [tensor for name, tensor in arch.items() if kinds.of(name) in kinds.MIXTURES]
        if not scale or not tensors:
            return None
        return scale * sum(dirichlet_kl(tensor) for tensor in tensors)


def _dirichlet(concentrations: Tensor, generator: torch.Generator) -> Tensor:
    """One Dirichlet sample per row from `generator` (torch's sampler, as `Dirichlet.rsample`)."""
    return torch._sample_dirichlet(concentrations, generator=generator)


# ---------------------------------------------------------------------------------------------
# The pieces of DrNAS's progressive schedule (xiangning-chen/DrNAS, train_search.py, utils.py
# `prune`, net2wider.py); the stages themselves are a search-stage mechanism's.


def prune(raw: Tensor, kept: Tensor | None, keep: int) -> tuple[Tensor, Tensor]:
    """DrNAS's pruning between stages: per row the `keep` largest raw weights among the
    candidates still `kept` (None: all; ties: the lower index). Returns (raw, mask): the raw
    weights with the dropped candidates set to 0, as DrNAS's `prune` leaves them, and the bool
    mask of the candidates kept."""
    if kept is None:
        kept = torch.ones_like(raw, dtype=torch.bool)
    if keep > int(kept.sum(-1).min()):
        raise ValueError(f"cannot keep {keep} candidates of a row that keeps "
                         f"{int(kept.sum(-1).min())}")
    scores = torch.where(kept, raw.detach(), float("-inf"))
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :keep]
    mask = torch.zeros_like(kept).scatter(-1, order, True)
    return torch.where(mask, raw, 0), mask


def channel_map(old: int, new: int, generator: torch.Generator | None = None) -> Tensor:
    """Where each of `new` channels comes from among `old`: the old ones in place, then random
    copies (DrNAS's net2wider: ``torch.randint(0, old, (new - old,))``)."""
    if new < old:
        raise ValueError(f"cannot widen {old} channels to {new}")
    copies = torch.randint(0, old, (new - old,), generator=generator)
    return torch.cat([torch.arange(old), copies])


def widen_tensor(tensor: Tensor, shape: torch.Size | tuple[int, ...],
                 maps: Mapping[tuple[int, int], Tensor]) -> Tensor:
    """`tensor` grown to `shape`: each dimension that grows from `old` to `new` is indexed by
    ``maps[old, new]`` (`channel_map`); the others are kept. Works on a parameter, a buffer or
    an optimiser's state of one (a momentum buffer)."""
    if tensor.dim() != len(shape):
        raise ValueError(f"cannot widen a tensor of shape {tuple(tensor.shape)} to {tuple(shape)}")
    for dim, (old, new) in enumerate(zip(tensor.shape, shape)):
        if old != new:
            tensor = tensor.index_select(dim, maps[old, new].to(tensor.device))
    return tensor


def widen_module(old: nn.Module, new: nn.Module, generator: torch.Generator | None = None
                 ) -> dict[tuple[int, int], Tensor]:
    """Copy `old` (a candidate built for C/6 channels) into `new` (the same candidate built for
    C/4): every parameter and buffer of `new` takes `old`'s, each growing dimension filled by
    `channel_map` (one map per pair of sizes, drawn from `generator` in the modules' order, so
    a convolution's output channels, its batch norm and the next convolution's input channels
    copy the same channels). Returns the maps, for `widen_tensor` on the optimiser's momentum
    buffers.

    DrNAS's net2wider draws a fresh random index for most layers (a depthwise convolution and
    the following pointwise one share theirs); sharing one per size keeps the copies consistent
    across a candidate. Neither divides copied weights (the copies see new channels anyway)."""
    maps: dict[tuple[int, int], Tensor] = {}
    old_state = dict(old.named_parameters()) | dict(old.named_buffers())
    new_state = dict(new.named_parameters()) | dict(new.named_buffers())
    if set(old_state) != set(new_state):
        raise ValueError("cannot widen a module into one of another structure")
    with torch.no_grad():
        for name, target in new_state.items():
            source = old_state[name]
            for pair in zip(source.shape, target.shape):
                if pair[0] != pair[1] and pair not in maps:
                    maps[pair] = channel_map(*pair, generator=generator)
            target.copy_(widen_tensor(source, target.shape, maps))
    return maps
