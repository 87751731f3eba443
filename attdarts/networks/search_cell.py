"""The search cell of the supernet (`attdarts.networks.supernet`): mixed edges, plain or grouped.

A `SearchCell` preprocesses both inputs to C channels (non-affine), computes every node as the
sum of its mixed edges (Eq. 11), concatenates the intermediate nodes and, where the location
says so, mixes attentions on the concatenation (gamma). Plain, it runs edge by edge; grouped
(`grouped`), in waves of edges that run as one group per candidate (`attdarts.networks.grouping`;
the same sums, tests compare both in float64). Single paths (`CellWeights.paths`, GDAS) run the
sampled candidate alone on both (`attdarts.networks.single_path`). A progressive search's stage
(`use`) stops computing dropped candidates, and skip dropout (`CellWeights.noise`, P-DARTS) acts
in training on the stride-1 skip connections, at each edge's site (`attdarts.networks.noise`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from attdarts.language import ir, kinds
from attdarts.networks import grouping as grouped
from attdarts.networks import single_path
from attdarts.networks.methods import CellWeights, MethodSet, Paths
from attdarts.networks.mixtures import (
    MixedAttention, MixedOperation, SearchEdge, first_candidates, mix_attentions_grouped,
    mix_operations_grouped, mixed_candidates, node_slices, search_attention,
)
from attdarts.networks.noise import site
from attdarts.networks.operations import preprocess_inputs
from attdarts.networks.stacking import halve

__all__ = ["SearchCell"]


class SearchCell(nn.Module):
    """A search cell: preprocess both inputs to C channels (non-affine), compute every node as the
    sum of its mixed edges (Eq. 11), concatenate all intermediate nodes, optionally mix
    attentions on the concatenation (gamma)."""

    def __init__(
        self,
        space: ir.Space,
        methods: MethodSet,
        *,
        channels_prev_prev: int,
        channels_prev: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        spatial_in: int,
        layer: int = 0,
    ) -> None:
        super().__init__()
        self.layer = layer  # position in the stack: names the sites of skip dropout
        self.reduction = reduction
        self.kind_index = ir.CELL_KINDS.index("reduce" if reduction else "normal")
        self.spatial_out = halve(spatial_in) if reduction else spatial_in
        self.preprocess0, self.preprocess1 = preprocess_inputs(
            channels_prev_prev, channels_prev, channels, reduction_prev=reduction_prev,
            affine=False)

        location = space.location_spec
        edges = []
        for node in range(space.nodes):
            for input_index in range(2 + node):
                stride = 2 if reduction and input_index < 2 else 1
                edges.append(self._edge(space, methods, channels, stride, input_index))
        self.edges = nn.ModuleList(edges)
        # skip dropout's site of each edge (`noise.site`), a tensor: no constant per cell
        sites = torch.tensor([site(layer, index) for index in range(len(edges))])
        self.register_buffer("edge_sites", sites, persistent=False)
        # edges of node j are edges[starts[j]:starts[j] + j + 2]
        self.node_slices = node_slices(space.nodes)
        starts = [start for start, _ in self.node_slices]
        # Waves of edges that run as one group (`forward_grouped`): first every edge reading
        # c_k2, then every edge reading c_k1 (one wave), then those reading n0, n1, ...
        self.nodes = space.nodes
        nodes = range(space.nodes)
        self.waves = (
            tuple(starts[j] + 0 for j in nodes) + tuple(starts[j] + 1 for j in nodes),
            *(tuple(starts[j] + source + 1 for j in nodes[source:])
              for source in range(1, space.nodes)),
        )
        for k, wave in enumerate(self.waves):  # indices into alpha / beta rows, on the device
            self.register_buffer(f"wave_{k}", torch.tensor(wave), persistent=False)
            self.register_buffer(f"sites_{k}", self.edge_sites[list(wave)], persistent=False)
        self.groupable = location.groupable
        self.grouped = False  # set through `Supernet.set_grouped`
        self.channels_out = channels * space.nodes
        self.output_attention: MixedAttention | None = None
        if location.output_attention:
            self.output_attention = MixedAttention(
                [search_attention(call, self.channels_out, self.spatial_out)
                 for call in space.attentions],
                space.mixing)

    def _edge(self, space: ir.Space, methods: MethodSet, channels: int, stride: int,
              input_index: int) -> SearchEdge:
        """The mixtures of one edge, built for the channels that enter them (the methods'
        connector decides; all of them without one), plus the methods' extra candidates."""
        partial = methods.connector(channels, stride)
        width = channels if partial is None else partial.active
        location = space.location_spec
        first = MixedOperation(first_candidates(space, width, stride, self.spatial_out)
                               + methods.extra_candidates(width, stride))
        names = [call.name for call in space.operations]
        if stride == 1 and "skip_connect" in names:  # skip dropout's candidate (P-DARTS)
            first.noisy = names.index("skip_connect")
        then: nn.Module | None = None
        if location.mixes_operations_and_attentions:
            if location.then is not None:  # double_mixed: the same candidates again, at stride 1
                then = MixedOperation(mixed_candidates(space, width, 1, self.spatial_out))
        elif location.then is not None:
            then = MixedAttention(
                [search_attention(call, width, self.spatial_out) for call in space.attentions],
                space.mixing)
        return SearchEdge(first, then, input_index, partial)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: CellWeights) -> torch.Tensor:
        """The cell on its two inputs, with its cell type's mixture weights (`CellWeights`:
        alpha / beta / gamma, the normalised edge weights of edge normalisation or None, the
        auxiliary identity coefficient or None, the single paths or None)."""
        if self.grouped:
            return self.forward_grouped(s0, s1, weights)
        alpha, beta, gamma, edges, identity, paths, noise = weights
        noise = noise if self.training else None  # skip dropout acts in training only
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for start, count in self.node_slices:
            total = None
            for offset in range(count):
                index = start + offset
                edge = self.edges[index]
                out = edge(states[edge.input_index], alpha[index],
                           None if beta is None else beta[index], identity,
                           _edge_path(paths, index),
                           None if noise is None else (noise, self.edge_sites[index]))
                if edges is not None:
                    out = out * edges[index]
                total = out if total is None else total + out
            states.append(total)
        return self._output(states[2:], gamma, identity, paths)

    def _output(
        self, nodes: list[torch.Tensor], gamma: torch.Tensor | None,
        identity: torch.Tensor | None = None, paths: Paths | None = None,
    ) -> torch.Tensor:
        """Concatenate every intermediate node; mix attentions on it when the space says so
        (its single path when `paths` gives one)."""
        out = torch.cat(nodes, dim=1)
        if self.output_attention is not None:
            chosen = None if paths is None or paths.gamma is None else paths.gamma[0]
            unchosen = paths is not None and paths.unchosen
            out = self.output_attention(out, gamma[0], identity, chosen, unchosen)
        return out

    def forward_grouped(self, s0: torch.Tensor, s1: torch.Tensor, weights: CellWeights
                        ) -> torch.Tensor:
        """`forward` computed wave by wave (`grouped`): the same sums, a few large kernels per
        candidate and wave instead of one small kernel per candidate and edge."""
        nodes = self.nodes
        x0, x1 = self.preprocess0(s0), self.preprocess1(s1)
        alpha, beta, gamma, edges, identity, paths, noise = weights
        mixing = (alpha, beta, edges, identity, paths, noise if self.training else None)
        out = self._wave(0, [x0] * nodes + [x1] * nodes, *mixing)
        partial = out[:, :nodes] + out[:, nodes:]  # (N, nodes, C, H, W): node sums so far
        states = []
        for k in range(nodes):
            state = partial[:, 0]  # node k has all its edges
            states.append(state)
            if k + 1 < nodes:
                readers = nodes - k - 1  # nodes k+1 .. reading node k
                out = self._wave(k + 1, [state] * readers, *mixing)
                partial = partial[:, 1:] + out
        return self._output(states, gamma, identity, paths)

    def _wave(
        self, k: int, inputs: list[torch.Tensor], alpha: torch.Tensor, beta: torch.Tensor | None,
        edges: torch.Tensor | None, identity: torch.Tensor | None, paths: Paths | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Wave k on its edges' inputs (N, C, H, W) each -> (N, E, C, H', W'); on the single
        paths of `paths` when given (GDAS: `attdarts.networks.single_path`)."""
        wave = self.waves[k]
        index = getattr(self, f"wave_{k}")
        modules = [self.edges[i] for i in wave]
        partial = modules[0].partial
        sites = getattr(self, f"sites_{k}")  # skip dropout's, with `noise`
        alpha = alpha.index_select(0, index)
        beta = None if beta is None else beta.index_select(0, index)
        if paths is not None:
            out, rest = single_path.wave(modules, inputs, alpha, beta, identity,
                                         *single_path.wave_paths(paths, wave), noise, sites)
        else:
            if partial is None:  # stacked edge-major: (N, E*C, H, W)
                # one input read by every edge is repeated: its gradient is then summed in the
                # same order as before partial channels existed, so runs reproduce bit for bit
                same = all(x is inputs[0] for x in inputs)
                x = inputs[0].repeat(1, len(inputs), 1, 1) if same else torch.cat(inputs, dim=1)
                rest = None
            else:
                x, rest = partial.split_grouped(inputs)
            group = grouped.Group(x, len(wave))
            out = mix_operations_grouped([edge.first for edge in modules], group, alpha, noise,
                                         sites)
            if modules[0].then is not None:
                group = grouped.Group(out.flatten(1, 2), len(wave))
                out = mix_attentions_grouped([edge.then for edge in modules], group, beta,
                                             identity)
        if rest is not None:
            out = partial.join_grouped(out, rest)
        if edges is not None:
            out = out * edges.index_select(0, index).reshape(1, -1, 1, 1, 1).to(out.dtype)
        return out

    def use(self, kept: Mapping[str, torch.Tensor]) -> None:
        """Compute only the candidates `kept` (a bool (rows, candidates) tensor per kind of
        this cell type, a stage's mask; a leading seed axis is reduced to any seed's keeping)."""
        rows = {kind: mask.reshape(-1, *mask.shape[-2:]).any(0).tolist()
                for kind, mask in kept.items()}
        for index, edge in enumerate(self.edges):
            if kinds.OPERATION in rows:
                edge.first.use(rows[kinds.OPERATION][index])
            if edge.then is not None and kinds.ATTENTION in rows:
                edge.then.use(rows[kinds.ATTENTION][index])
        if self.output_attention is not None and kinds.OUTPUT in rows:
            self.output_attention.use(rows[kinds.OUTPUT][0])

    def idle(self) -> list[nn.Module]:
        """The candidates of this cell that a stage dropped (not computed)."""
        mixtures = [edge.first for edge in self.edges]
        mixtures += [edge.then for edge in self.edges if edge.then is not None]
        if self.output_attention is not None:
            mixtures.append(self.output_attention)
        return [module for mixture in mixtures for index, module in enumerate(mixture.candidates)
                if index not in mixture.active]

    def extra_repr(self) -> str:
        kind = ir.CELL_KINDS[self.kind_index]
        return f"{kind}, channels_out={self.channels_out}, spatial_out={self.spatial_out}"


def _edge_path(paths: Paths | None, index: int) -> tuple[int, int | None, bool] | None:
    """Edge `index`'s single path (operation, attention or second mixture, unchosen), or None."""
    if paths is None:
        return None
    return (None if paths.alpha is None else paths.alpha[index],
            None if paths.beta is None else paths.beta[index], paths.unchosen)
