"""Widening a kept supernet to more partial channels (DrNAS, Chen et al., ICLR 2021).

DrNAS's progressive search (xiangning-chen/DrNAS, DARTS-space train_search.py) searches with
partial channels K=6, prunes each edge to its 4 strongest candidates, then calls `wider(4)`: every
candidate built for C/6 channels is grown to C/4, its old channels in place and each new channel a
copy of a random old one (net2wider.py, without dividing the copies), and the momentum buffers of
the grown weights grow the same way (`configure_optimizer`). A search stage with a smaller
`partial_channels` and `start=keep` does that here:

- `widen_supernet(old, new)` copies the kept supernet `old` into `new`, the same space built with
  the stage's k: every candidate of every mixture whose shapes grew goes through
  `drnas.widen_module` (one channel map per candidate and pair of sizes, from torch's generator),
  every other tensor (stem, preprocessing, classifier, architecture, candidates without weights)
  is copied as it is;
- `widen_optimizer_state` grows the SGD state (momentum buffers) of the grown weights with the
  same maps; the architecture optimiser's state keeps its shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from attdarts.networks.methods.drnas import widen_module, widen_tensor

__all__ = ["Maps", "candidate_modules", "widen_optimizer_state", "widen_supernet"]

Maps = dict[tuple[int, int], Tensor]  # (old size, new size) -> where each new channel comes from


def candidate_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every candidate of every mixture of `model`'s cells, by its name in the state dict."""
    found = {}
    for c, cell in enumerate(model.cells):
        for e, edge in enumerate(cell.edges):
            for part in ("first", "then"):
                mixture = getattr(edge, part, None)
                if mixture is None:
                    continue
                for k, candidate in enumerate(mixture.candidates):
                    found[f"cells.{c}.edges.{e}.{part}.candidates.{k}"] = candidate
    return found


def _shapes(module: nn.Module) -> list[tuple[str, torch.Size]]:
    return [(name, tensor.shape) for name, tensor in module.state_dict().items()]


def widen_supernet(old: nn.Module, new: nn.Module) -> dict[str, Maps]:
    """Copy supernet `old` into `new`, which has the same structure with wider candidates.
    Returns the channel maps of every grown parameter and buffer, by name."""
    grown: dict[str, Maps] = {}
    sources = candidate_modules(old)
    for prefix, candidate in candidate_modules(new).items():
        source = sources.get(prefix)
        if source is None:
            raise ValueError(f"cannot widen: the kept supernet has no candidate '{prefix}'")
        if _shapes(source) != _shapes(candidate):
            maps = widen_module(source, candidate)
            grown.update({f"{prefix}.{name}": maps for name in candidate.state_dict()})
    old_state = old.state_dict()
    with torch.no_grad():
        for name, target in new.state_dict().items():
            if name in grown:
                continue
            source = old_state.get(name)
            if source is None or source.shape != target.shape:
                raise ValueError(f"cannot widen: '{name}' differs outside the candidates")
            target.copy_(source)
    return grown


def widen_optimizer_state(state: Mapping, names: Sequence[str], grown: Mapping[str, Maps],
                          shapes: Mapping[str, torch.Size]) -> dict:
    """An optimiser's state dict whose i-th parameter is `names[i]`, with every state tensor
    of a grown parameter (SGD's momentum buffer) widened as the parameter was (to
    ``shapes[name]``): DrNAS's `configure_optimizer`."""
    widened = {}
    for index, values in state["state"].items():
        name = names[index]
        widened[index] = {
            key: (widen_tensor(value, shapes[name], grown[name])
                  if name in grown and isinstance(value, Tensor) and value.dim() else value)
            for key, value in values.items()}
    return {"state": widened, "param_groups": state["param_groups"]}
