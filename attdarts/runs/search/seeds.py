"""The seed axis of a search step: one seed's own supernet, or S seeds' values stacked.

`bilevel.Bilevel` writes the search step once, over tensors that carry a leading seed axis. This
module is what differs between one seed and several:

- `Seeds.own(model)`: one seed (S = 1). The step's leaves are the supernet's own parameters, its
  forward is the model's (or its DistributedDataParallel wrapper's); the seed axis is implicit:
  losses and norms are scalars, and the per-seed helpers below treat a tensor as one seed.
- `Seeds.stack(models, generators)`: S seeds run together (`attdarts search --seeds ... --together`).
  Each seed's supernet is built as its own run builds it; their parameters and running statistics
  are stacked along a new leading axis and one supernet (the `template`) runs on them through
  `torch.vmap` over `torch.func.functional_call`: a convolution whose weight carries the seed axis
  becomes one grouped convolution over the seeds, a batch norm keeps each seed's statistics apart.

Either way the step's arithmetic is the same: losses per seed (their sum's gradient is each seed's
own gradient), SGD and Adam elementwise, the gradient clip and the second-order eps per seed, and
each seed's random numbers from its own generator (`Random`), so that a seed run with others
computes what it computes alone (tests compare them in float64).

Single paths (GDAS: `CellWeights.paths`) choose which modules run from each seed's own draw,
which `vmap` cannot map: stacked, such a forward runs seed by seed on the seeds' slices, and the
weight step notes which weights each seed's backward reaches. A seed's own run gives a weight off
its path no gradient, and torch's SGD then skips it (no decay, no momentum); `step_weights` does
the same to that seed's slice, and the seed's own optimiser state lacks the weights it never
reached (`missing`: zero momentum here, which SGD treats as no momentum).

Stages (P-DARTS): the weights of candidates a seed's stage dropped get a zero gradient in its own
run (`zero_idle`), so they decay and keep their momentum as such weights do; run together, a seed
that dropped a candidate another keeps gets exactly 0 there, and on single paths `step_weights`
steps that seed's idle weights (`idle`, from its own supernet) as its own run does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils import _pytree as pytree

from attdarts.networks.methods import MixtureWeights, Random

__all__ = ["Seeds", "clip_per_seed", "seed_view"]


# the tensors of `CellWeights` and their dimensions for one seed (the rest, `paths`, are not
# tensors: host tuples, one per seed when stacked)
_RANKS = (("alpha", 2), ("beta", 2), ("gamma", 2), ("edges", 1), ("identity", 0), ("noise", 1))


def seed_view(values: Tensor, like: Tensor) -> Tensor:
    """A (seeds,) vector shaped to scale the (seeds, ...) tensor `like`."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def clip_per_seed(grads: list[Tensor], counted: list[Tensor], max_norm: float) -> Tensor:
    """Scale `grads` so that each seed's norm over `counted` is at most `max_norm`, as
    `torch.nn.utils.clip_grad_norm_` does for one seed (coefficient max_norm / (norm + 1e-6),
    at most 1). Every tensor has the seed axis first; returns the (seeds,) norms."""
    seeds = counted[0].shape[0]
    flat = torch.cat([grad.reshape(seeds, -1) for grad in counted], dim=1)
    norms = torch.linalg.vector_norm(flat, dim=1)
    coefficients = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, [seed_view(coefficients, grad) for grad in grads])
    return norms


def _stack(tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack([tensor.detach() for tensor in tensors])


class Seeds:
    """What a step runs on. `count` seeds; `stacked` when their values carry a leading axis.

    `model` is the supernet whose forward runs (one seed's own, or the template of stacked
    values) and `network` what a plain weight step calls (the model or its data-parallel
    wrapper). `weights` / `arch` are the step's leaves by `weight_names` / `arch_names`;
    `buffers` the running statistics (stacked only: one seed keeps them in its model).
    `generators` are the seeds' method generators, one each.
    """

    def __init__(self, model: nn.Module, *, network: nn.Module | None, weights: list[Tensor],
                 arch: list[Tensor], buffers: list[Tensor], buffer_names: list[str],
                 generators: Sequence[torch.Generator], stacked: bool) -> None:
        self.model = model
        self.network = network if network is not None else model
        self.weight_names = [name for name, _ in model.named_weights()]
        self.arch_names = [name for name, _ in model.named_architecture()]
        self.weights, self.arch = weights, arch
        self.buffers, self.buffer_names = buffers, buffer_names
        self.generators = list(generators)
        self.stacked = stacked
        self.count = len(self.generators)
        # single paths: the weights each seed's last weight backward reached (names), and the
        # weights whose momentum a seed's own run would not hold yet
        self.reached: list[set[str]] | None = None
        self.missing: list[set[str]] = [set() for _ in range(self.count)]
        # stacked stages: the weights each seed's own stage leaves idle (its supernet's
        # `idle_weights`), which its run steps with a zero gradient
        self.idle: list[frozenset[str]] = [frozenset() for _ in range(self.count)]

    @classmethod
    def own(cls, model: nn.Module, generator: torch.Generator,
            network: nn.Module | None = None) -> Seeds:
        """One seed: `model`'s own parameters are the leaves."""
        return cls(model, network=network, weights=model.weights(), arch=model.architecture(),
                   buffers=[], buffer_names=[], generators=[generator], stacked=False)

    @classmethod
    def stack(cls, models: Sequence[nn.Module], generators: Sequence[torch.Generator]) -> Seeds:
        """S seeds: their supernets' values stacked (copied: `load` / `unload` move them back and
        forth). A copy of the first supernet is the template they run through."""
        template = copy.deepcopy(models[0])
        names = ([name for name, _ in template.named_weights()],
                 [name for name, _ in template.named_architecture()])
        parameters = set(names[0]) | set(names[1])
        # running statistics and batch counters; non-persistent buffers (a cell's wave indices,
        # a method's coefficients) are the same for every seed and stay the template's
        buffer_names = [name for name in template.state_dict() if name not in parameters]
        owned = [dict(model.state_dict(keep_vars=True)) for model in models]
        weights, arch = ([_stack([own[name] for own in owned]).requires_grad_() for name in group]
                         for group in names)
        buffers = [_stack([own[name] for own in owned]).clone() for name in buffer_names]
        seeds = cls(template, network=None, weights=weights, arch=arch, buffers=buffers,
                    buffer_names=buffer_names, generators=generators, stacked=True)
        seeds.idle = [frozenset(getattr(model, "idle_weights", frozenset)()) for model in models]
        return seeds

    # -- the forward --------------------------------------------------------------------------

    def random(self) -> Random:
        """The step's random numbers: each seed's from its own generator."""
        return Random(self.generators, stacked=self.stacked)

    def forward(self, images: Tensor, weights: MixtureWeights, *,
                values: dict[str, Tensor] | None = None,
                buffers: dict[str, Tensor] | None = None) -> Tensor:
        """Logits of `images` with the step's mixture `weights`; `values` replaces weights by
        name and `buffers` the running statistics (the second order's extra passes).

        One seed: (batch, classes), through the network when nothing is replaced. Stacked:
        `images` is (seeds, batch, 3, H, W) and the logits (seeds, batch, classes), every seed's
        supernet on its own images in one batched pass."""
        if not self.stacked:
            if values is None and buffers is None:
                return self.network(images, weights)
            return functional_call(self.model, (values or {}, buffers or {}), (images,),
                                   {"weights": weights})
        current = dict(zip(self.weight_names + self.arch_names, self.weights + self.arch))
        current.update(values or {})
        stats = dict(zip(self.buffer_names, self.buffers)) if buffers is None else buffers

        def one(values, buffers, weights, x):
            return functional_call(self.model, (values, buffers), (x,), {"weights": weights})

        weights = self._per_seed(weights)
        if any(cell.paths is not None for cell in weights):
            return self._seed_by_seed(current, stats, weights, images,
                                      record=values is None and buffers is None)
        absent = tuple(type(cell)(*(None if value is None else 0 for value in cell))
                       for cell in weights)  # no seed axis to map over where a kind is absent
        return torch.vmap(one, in_dims=(0, 0, absent, 0), randomness="error")(
            current, stats, weights, images)

    def _per_seed(self, weights: MixtureWeights) -> MixtureWeights:
        """`weights` with a seed axis on every tensor: those made from the stacked architecture
        have it; a method's constant (DARTS-'s coefficient b) is repeated for each seed. Paths
        (host tuples, one per seed) stay as they are."""
        return tuple(cell._replace(**{field: value.expand(self.count, *value.shape)
                                      for field, rank in _RANKS
                                      if (value := getattr(cell, field)) is not None
                                      and value.dim() <= rank}) for cell in weights)

    def _seed_by_seed(self, current: dict[str, Tensor], stats: dict[str, Tensor],
                      weights: MixtureWeights, images: Tensor, *, record: bool) -> Tensor:
        """The stacked forward on single paths: seed s's supernet on its slices of the values
        and the weights, on its own paths, and on a copy of its running statistics, written
        back after every seed's forward (a batch norm keeps its statistics for the backward: a
        view would see the next seed's update); the logits stacked. `record` (the weight
        step): each seed's backward notes the weights it reaches in `reached`."""
        if record:
            self.reached = [set() for _ in range(self.count)]
        logits, moved = [], []
        for seed in range(self.count):
            values = {name: value[seed] for name, value in current.items()}
            if record:
                for name in self.weight_names:
                    values[name].register_hook(
                        lambda grad, names=self.reached[seed], name=name: names.add(name))
            own = tuple(cell._replace(
                **{field: getattr(cell, field)[seed] for field, _ in _RANKS
                   if getattr(cell, field) is not None},
                paths=None if cell.paths is None else cell.paths.of_seed(seed))
                for cell in weights)
            buffers = {name: value[seed].clone() for name, value in stats.items()}
            logits.append(functional_call(self.model, (values, buffers), (images[seed],),
                                          {"weights": own}))
            moved.append(buffers)
        with torch.no_grad():
            for seed, buffers in enumerate(moved):
                for name, value in buffers.items():
                    stats[name][seed].copy_(value)
        return torch.stack(logits)

    def scratch_buffers(self) -> dict[str, Tensor]:
        """Copies of the running statistics, for passes that must not move the real ones."""
        if self.stacked:
            return {name: buffer.clone() for name, buffer in zip(self.buffer_names, self.buffers)}
        return {name: buffer.clone() for name, buffer in self.model.named_buffers()}

    # -- per seed -----------------------------------------------------------------------------

    def zero_idle(self) -> None:
        """Give the weights of candidates no cell computes (`Supernet.idle_weights`: a search
        stage dropped them) a zero gradient where they have none, so that they move as weights
        with a zero gradient do (weight decay, momentum) whether or not other seeds run together
        with them (a seed that dropped a candidate another seed keeps gets exactly 0 there; on
        single paths, where no seed may reach it, `step_weights` keeps the others' slices)."""
        idle = getattr(self.model, "idle_weights", None)
        names = set(idle() if idle is not None else ()).union(*self.idle)
        for name, weight in zip(self.weight_names, self.weights):
            if name in names and weight.grad is None:
                weight.grad = torch.zeros_like(weight)

    def clip(self, parameters: list[Tensor], counted: list[Tensor], max_norm: float) -> Tensor:
        """Clip the gradients of `parameters` by each seed's norm over `counted`
        (`clip_grad_norm_`'s rule): returns the norm, or the (seeds,) norms."""
        if self.stacked:
            grads = [param.grad for param in parameters if param.grad is not None]
            return clip_per_seed(grads, counted, max_norm)
        total = torch.nn.utils.get_total_norm(counted)
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
        return total

    def norms(self, tensors: Sequence[Tensor]) -> Tensor:
        """Each seed's norm over all of `tensors` (the second order's ||v||)."""
        if self.stacked:
            flat = torch.cat([tensor.reshape(self.count, -1) for tensor in tensors], dim=1)
            return torch.linalg.vector_norm(flat, dim=1)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t)
                                                     for t in tensors]))

    def scale(self, tensor: Tensor, per_seed: Tensor) -> Tensor:
        """`tensor` times each seed's factor (a scalar for one seed)."""
        return tensor * (seed_view(per_seed, tensor) if self.stacked else per_seed)

    def step_weights(self, step: Callable[[], None], optimizer: torch.optim.Optimizer) -> None:
        """The weight update `step` of `optimizer`. After a single-path backward (stacked,
        `reached`), each seed's slices of the weights it did not reach keep their values and
        momentum (a momentum started by this update is zero), as its own SGD skips them; the
        weights its stage left idle are stepped (`zero_idle` gave them a zero gradient)."""
        reached, self.reached = self.reached, None
        if reached is None:
            step()
            return
        reached = [names | idle for names, idle in zip(reached, self.idle)]
        kept = []
        for name, param in zip(self.weight_names, self.weights):
            off = [seed for seed in range(self.count) if name not in reached[seed]]
            if param.grad is None or not off:
                continue
            buffer = optimizer.state.get(param, {}).get("momentum_buffer")
            kept.append((name, param, off, param.detach()[off].clone(),
                         None if buffer is None else buffer[off].clone()))
        step()
        with torch.no_grad():
            for name, param, off, values, buffer in kept:
                param[off] = values
                own = optimizer.state.get(param, {}).get("momentum_buffer")
                if own is not None:
                    own[off] = 0.0 if buffer is None else buffer
                    if buffer is None:
                        for seed in off:
                            self.missing[seed].add(name)
        for seed, names in enumerate(reached):
            self.missing[seed] -= names

    # -- the seeds' own models and optimisers (stacked) ---------------------------------------

    def _values(self) -> list[tuple[str, Tensor]]:
        return list(zip([*self.weight_names, *self.arch_names, *self.buffer_names],
                        [*self.weights, *self.arch, *self.buffers]))

    def unload(self, models: Sequence[nn.Module], optimizers: Sequence[tuple]) -> None:
        """Copy seed s's slice of every value into `models[s]`, and of every optimiser state:
        `optimizers` pairs each stacked optimiser with the seeds' own ones (one per model)."""
        with torch.no_grad():
            for seed, model in enumerate(models):
                own = model.state_dict(keep_vars=True)
                # a candidate this seed's stage dropped ran for the others only: its running
                # statistics stay this seed's own (`Supernet.idle_statistics`)
                kept = getattr(model, "idle_statistics", frozenset)()
                for name, value in self._values():
                    if name not in kept:
                        own[name].copy_(value[seed])
        for stacked, owners, values, names in self._optimizer_groups(optimizers):
            for seed, (model, owner) in enumerate(zip(models, owners)):
                params = dict(model.named_parameters())
                owner.state.clear()
                missing = self.missing[seed] if values is self.weights else set()
                for value, name in zip(values, names):
                    if value in stacked.state and name not in missing:  # Adam's step: the same
                        owner.state[params[name]] = {
                            key: item[seed].clone() if _shaped_like(item, value) else item.clone()
                            for key, item in stacked.state[value].items()}

    def load(self, models: Sequence[nn.Module], optimizers: Sequence[tuple]) -> None:
        """The reverse of `unload`: stack the seeds' values and optimiser states (a resume)."""
        self.missing = [set() for _ in range(self.count)]
        owned = [model.state_dict(keep_vars=True) for model in models]
        with torch.no_grad():
            for name, value in self._values():
                value.copy_(_stack([own[name] for own in owned]))
        for stacked, owners, values, names in self._optimizer_groups(optimizers):
            stacked.state.clear()
            params = [dict(model.named_parameters()) for model in models]
            for value, name in zip(values, names):
                states = [owner.state.get(own[name]) for owner, own in zip(owners, params)]
                held = [state for state in states if state is not None]
                if not held:
                    continue
                # a seed whose own run never reached a weight (single paths): zero momentum
                stacked.state[value] = {
                    key: _stack([torch.zeros_like(item) if state is None else state[key]
                                 for state in states])
                    if _shaped_like(item, value[0]) else item.clone()
                    for key, item in held[0].items()}
                if values is self.weights:
                    for seed, state in enumerate(states):
                        if state is None:
                            self.missing[seed].add(name)

    def _optimizer_groups(self, optimizers: Sequence[tuple]):
        """(stacked optimiser, the seeds' own, its stacked values, their names) for the weight
        optimiser and the architecture optimiser."""
        groups = ((self.weights, self.weight_names), (self.arch, self.arch_names))
        for (stacked, owners), (values, names) in zip(optimizers, groups):
            yield stacked, owners, values, names


def _shaped_like(item: object, value: Tensor) -> bool:
    """Whether an optimiser state entry is per element of `value` (momentum, Adam moments)."""
    return isinstance(item, Tensor) and item.shape == value.shape


def tree_detach(weights: MixtureWeights) -> MixtureWeights:
    """`weights` cut from the architecture's graph."""
    return pytree.tree_map_only(Tensor, lambda tensor: tensor.detach(), weights)
