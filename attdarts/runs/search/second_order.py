"""DARTS's second-order architecture gradient: the virtual step and the Hessian-vector product.

`virtual_step` is DARTS's ``w' = w - eta (mu m + grad_w L_train(w) + lambda w)`` and
`hessian_vector_product` the central difference ``(grad_a L_train(w+, a) - grad_a L_train(w-,
a)) / (2 eps)`` with ``w+- = w +- eps v`` and ``eps = r / ||v||`` (Liu et al. 2019, Eq. 7-8);
`attdarts.runs.search.bilevel` combines them into the step (its docstring gives the whole
formula and the authors' variant). Both are elementwise over a leading seed axis, eps one per
seed, so stacked seeds move as each would alone. `gradients` is `torch.autograd.grad` with
zeros for the inputs a pass does not reach (GDAS's candidates off its paths, the candidates a
stage dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from attdarts.runs.search.seeds import Seeds, seed_view

__all__ = ["ParamDict", "gradients", "hessian_vector_product", "virtual_step"]

ParamDict = dict[str, Tensor]


def gradients(outputs: Any, inputs: Any, **options: Any) -> tuple[Tensor, ...]:
    """`torch.autograd.grad`, zeros for inputs not reached (GDAS: candidates off its paths;
    weights a stage dropped)."""
    return torch.autograd.grad(outputs, inputs, allow_unused=True, materialize_grads=True,
                               **options)


def virtual_step(
    weights: ParamDict,
    grads: Mapping[str, Tensor],
    *,
    eta: float | Tensor,
    weight_decay: float,
    momentum: float = 0.0,
    buffers: Mapping[str, Tensor | None] | None = None,
) -> ParamDict:
    """DARTS's virtual step ``w' = w - eta (mu m + g + lambda w)``; m missing or None -> 0.

    `eta` may be a 0-dim tensor (the search's learning rate on the device, so that a captured
    step follows the schedule); it rounds as the float does. Elementwise, so stacked seeds move
    as each would alone.
    """
    names = list(weights)
    current = [weights[name].detach() for name in names]
    update = list(torch._foreach_add([grads[name] for name in names], current, alpha=weight_decay))
    present = [i for i, name in enumerate(names) if buffers and buffers.get(name) is not None]
    if momentum and present:
        added = torch._foreach_add([update[i] for i in present],
                                   [buffers[names[i]] for i in present], alpha=momentum)
        for index, value in zip(present, added):
            update[index] = value
    if isinstance(eta, Tensor):
        moved = torch._foreach_addcmul(current, update, [eta.to(current[0].dtype)] * len(current),
                                       value=-1)
    else:
        moved = torch._foreach_add(current, update, alpha=-eta)
    return dict(zip(names, moved))


def hessian_vector_product(
    loss: Callable[[ParamDict, ParamDict], Tensor],
    weights: ParamDict,
    arch: ParamDict,
    vector: Mapping[str, Tensor],
    *,
    r: float = 0.01,
    arch_vector: Mapping[str, Tensor] | None = None,
    seeds: Seeds | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """Finite-difference ``(d^2 L / da dw) v`` as DARTS: eps = r / ||v||, central difference.

    `loss(weights, arch)` evaluates L_train (summed over the seeds when stacked). Returns the
    product per arch name and eps. With `arch_vector` (the authors' variant, where alpha / beta
    are model parameters) the norm counts it too and the architecture moves along it with the
    weights: the gradient with respect to the architecture is taken at ``(w +- eps v, a +- eps
    v_a)``. With stacked `seeds`, eps is one per seed (each seed's own ||v||).
    """
    names = list(weights)
    arch_names = list(arch)
    v = [vector[name] for name in names]
    v_arch = [] if arch_vector is None else [arch_vector[name] for name in arch_names]
    stacked = seeds is not None and seeds.stacked
    if stacked:
        eps = r / seeds.norms(v + v_arch)
    else:
        eps = r / torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t)
                                                        for t in v + v_arch]))

    def times_eps(tensors: list[Tensor]) -> list[Tensor]:
        if not tensors:
            return []
        if stacked:
            return [tensor * seed_view(eps, tensor) for tensor in tensors]
        return list(torch._foreach_mul(tensors, eps))

    base = [weights[name].detach() for name in names]
    scaled = times_eps(v)
    arch_base = [arch[name].detach() for name in arch_names]
    arch_scaled = times_eps(v_arch)

    def arch_gradient(sign: float) -> tuple[Tensor, ...]:
        moved = torch._foreach_add(base, scaled, alpha=sign)
        if arch_vector is None:
            arch_values = [arch[name] for name in arch_names]
        else:
            arch_values = [value.requires_grad_() for value in
                           torch._foreach_add(arch_base, arch_scaled, alpha=sign)]
        value = loss(dict(zip(names, moved)), dict(zip(arch_names, arch_values)))
        return gradients(value, arch_values)

    plus = arch_gradient(1.0)
    minus = arch_gradient(-1.0)
    product = {name: (p - m) / (2.0 * (seed_view(eps, p) if stacked else eps))
               for name, p, m in zip(arch_names, plus, minus)}
    return product, eps
