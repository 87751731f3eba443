"""Dropout masks computed from a key, for dropout inside a search step's forward passes.

P-DARTS (Chen et al., ICCV 2019) drops out the stride-1 skip connections of its supernet during
the search (`attdarts.networks.methods.progressive`). Seeds searched together run one supernet on
every seed's values under `torch.vmap`, which refuses random operations, and each seed must see
the numbers its own run sees. So the masks are not drawn inside the forward: each pass gets a
key, drawn per seed from that seed's method generator before the pass, and every element's
uniform number is a hash of (key, site, position):

    u = fmix32(fmix32((position + s1) mod 2^32) xor s2) / 2^32,   s1, s2 from (key, site)

with MurmurHash3's 32-bit finaliser `fmix32` (Appleby, public domain) computed in int64
arithmetic that never overflows. `position` is the element's index in its edge's (N, C, H, W)
map and `site` names the edge (its cell and index), so a plain cell (edge by edge) and a grouped
one (a wave's edges at once) compute the same masks; integer arithmetic gives the same masks on
every machine. An element is kept when u >= rate and scaled by 1 / (1 - rate), as inverted
dropout (`torch.nn.functional.dropout`) does.

`noise` tensors are (key, rate) pairs in float64: the key a whole number below 2^31, the rate in
[0, 1); with several seeds stacked, one pair per seed (vmap maps over them).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KEY_LIMIT", "SITES_PER_CELL", "dropout", "site", "uniform"]

KEY_LIMIT = 2**31  # keys are drawn in [0, KEY_LIMIT)
SITES_PER_CELL = 4096  # site = cell * SITES_PER_CELL + edge (a cell has far fewer edges)
_MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _multiply(h: Tensor, constant: int) -> Tensor:
    """(h * constant) mod 2^32 for h in [0, 2^32), in 16-bit halves so that no int64 product
    overflows."""
    low = (h & 0xFFFF) * constant
    high = (((h >> 16) * constant) & 0xFFFF) << 16
    return (low + high) & _MASK


def _fmix32(h: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2^32) with full avalanche."""
    h = h ^ (h >> 16)
    h = _multiply(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _multiply(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def site(cell: int, edge: int) -> int:
    """The site number of edge `edge` of cell `cell` (0-based)."""
    return cell * SITES_PER_CELL + edge


def uniform(key: Tensor, sites: Tensor, positions: Tensor) -> Tensor:
    """Uniform numbers in [0, 1) (float64) for `positions` (int64) at `sites` (int64), from
    `key` (a whole number below 2^31, any numeric dtype); the three broadcast together."""
    key = key.to(torch.int64)
    first = _fmix32((key + sites * _GOLDEN) & _MASK)
    second = _fmix32((first + _GOLDEN) & _MASK)
    h = _fmix32(_fmix32((positions + first) & _MASK) ^ second)
    return h.to(torch.float64) * (1.0 / 2**32)


def dropout(x: Tensor, noise: Tensor, sites: int | Tensor) -> Tensor:
    """Inverted dropout of `x` at rate ``noise[1]`` with the masks of key ``noise[0]``.

    `x` is one edge's map (N, C, H, W) at site `sites` (an int), or a wave's maps (N, E, C, H, W)
    at `sites` (E,) (an int64 tensor): each edge's elements are numbered over its own (N, C, H,
    W), so both give the same masks.
    """
    shape = torch.Size((x.shape[0], 1, *x.shape[2:])) if x.dim() == 5 else x.shape
    if shape.numel() > 2**32:
        raise ValueError("a map of more than 2^32 elements per edge cannot be dropped out")
    positions = torch.arange(shape.numel(), device=x.device).reshape(shape)
    sites = torch.as_tensor(sites, dtype=torch.int64, device=x.device)
    if x.dim() == 5:
        sites = sites.reshape(1, -1, 1, 1, 1)
    rate = noise[1]
    kept = uniform(noise[0], sites, positions) >= rate
    return x * (kept.to(x.dtype) * (1.0 / (1.0 - rate)).to(x.dtype))
