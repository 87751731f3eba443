"""Measuring a cost table (`attdarts cost`): every candidate at every place of the final
network, counted as `attdarts compile` counts (`torch.utils.flop_counter`, batch 1, eval mode;
parameters by `numel`) and optionally timed on a device (`LatencySettings`).

The stack's geometry comes from `attdarts.networks.stacking` with every cell concatenating all
its nodes (what the table assumes, `attdarts.networks.costs`); the stem is the network's own
(a network of no cells), the preprocessing layers and candidates are built by the same
factories as the network's. Each distinct (module, input shape) is measured once.
"""

from __future__ import annotations

import datetime
from importlib import metadata
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attdarts import recipes
from attdarts.language import ir
from attdarts.networks.costs import (
    AUXILIARY, COUNTS, IDENTITY, LATENCY, SKIP, SPREAD, CellCosts, CostTable, EdgeCosts,
    LatencySettings, edge_positions, table_rows,
)
from attdarts.networks.network import (
    DATASETS, AuxiliaryHeadCIFAR, AuxiliaryHeadImageNet, _stem_size, compile_network,
)
from attdarts.networks.operations import preprocess_inputs
from attdarts.networks.registry import build_attention, build_operation
from attdarts.records import cpu_model
from attdarts.networks.stacking import STEM_MULTIPLIER, Layer, halve, stack_cells

__all__ = ["build_cost_table", "measure_latency", "time_forward"]


def _flops(run: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        run()
    return counter.get_total_flops()


def _parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _multiply_adds(flops: int) -> int:
    """The counter reports 2 FLOPs per multiply-add of a convolution or matrix product."""
    if flops % 2:
        raise RuntimeError(f"the flop counter reported an odd count ({flops}); the table "
                           "cannot split it into multiply-adds")
    return flops // 2


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(run: Callable[[], object], settings: LatencySettings) -> tuple[float, float]:
    """(median, interquartile range) in milliseconds of `run()` by the settings' clock, after
    `settings.warmup` untimed calls, over `settings.repeats` timed ones, each ended by a device
    synchronisation. The caller sets the threads (`_threads`)."""
    device = torch.device(settings.device)
    clock = time.thread_time if settings.clock == "cpu" else time.perf_counter
    with torch.no_grad():
        for _ in range(settings.warmup):
            run()
        _synchronize(device)
        times = []
        for _ in range(settings.repeats):
            start = clock()
            run()
            _synchronize(device)
            times.append((clock() - start) * 1e3)
    if len(times) < 2:
        return times[0], 0.0
    quartiles = statistics.quantiles(times, n=4)
    return statistics.median(times), quartiles[2] - quartiles[0]


class _threads:
    """Intra-op threads for the timed region (CPU), restored after."""

    def __init__(self, settings: LatencySettings) -> None:
        self.settings = settings
        self.saved = torch.get_num_threads()

    def __enter__(self) -> None:
        if torch.device(self.settings.device).type == "cpu":
            torch.set_num_threads(self.settings.threads)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.saved)


def measure_latency(model: nn.Module, settings: LatencySettings, input_size: int) -> tuple[float, float]:
    """(median, interquartile range) in ms of one forward of `model` (eval mode, no gradient) on
    a batch of `settings.batch_size` random images, as the table measures its modules."""
    device = torch.device(settings.device)
    model = model.to(device).eval()
    probe = torch.randn(settings.batch_size, 3, input_size, input_size, device=device)
    with _threads(settings):
        return time_forward(lambda: model(probe), settings)


class _Meter:
    """Measures modules at given input shapes, once per distinct (module, shape)."""

    def __init__(self, latency: LatencySettings | None) -> None:
        self.latency = latency
        self.device = torch.device(latency.device) if latency else torch.device("cpu")
        self.cache: dict[tuple, dict[str, float]] = {}

    def module(self, key: tuple, make: Callable[[], nn.Module],
               shape: tuple[int, ...]) -> dict[str, float]:
        """Counts (and latency) of the module `make()` on an input of `shape` (batch 1 given)."""
        found = self.cache.get(key)
        if found is not None:
            return found
        module = make().eval()
        probe = torch.zeros(shape)
        values: dict[str, float] = {
            "multiply_adds": _multiply_adds(_flops(lambda: module(probe))),
            "parameters": _parameters(module),
        }
        if self.latency is not None:
            values[LATENCY], values[SPREAD] = self.time(module, [shape])
        self.cache[key] = values
        return values

    def time(self, run: Callable[..., object], shapes: Sequence[tuple[int, ...]]
             ) -> tuple[float, float]:
        """Latency of `run(*inputs)` on random inputs of `shapes`, batch set to the settings'."""
        assert self.latency is not None
        if isinstance(run, nn.Module):
            run = run.to(self.device)
        inputs = [torch.randn((self.latency.batch_size, *shape[1:]), device=self.device)
                  for shape in shapes]
        with _threads(self.latency):
            median, spread = time_forward(lambda: run(*inputs), self.latency)
        return round(median, 6), round(spread, 6)


@dataclass(frozen=True)
class _Slot:
    """A cell of the stack as the table assumes it: every node concatenated."""

    layer: Layer
    channels_out: int
    spatial_out: int


def _placeholder(space: ir.Space) -> ir.Genotype:
    """A genotype for a network of no cells (only its stem is used)."""
    def cell(kind: str) -> ir.Cell:
        node = ir.Node(name="n0", edges=(ir.Edge(operation=SKIP, input="c_k1"),))
        return ir.Cell(kind=kind, nodes=(node,), output=ir.Output(nodes=("n0",)))

    return ir.Genotype(name=space.name, normal=cell("normal"), reduce=cell("reduce"))


def build_cost_table(
    space: ir.Space,
    *,
    dataset: str = "cifar10",
    channels: int = recipes.TRAIN["cifar"]["channels"],
    layers: int = recipes.TRAIN["cifar"]["layers"],
    latency: LatencySettings | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> CostTable:
    """The cost table of `space`'s genotypes at the final size (`dataset`, `channels`,
    `layers`: the training recipe's C=36, L=20 by default); with `latency`, each entry's
    latency too. Modules are built and counted once per distinct shape."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if channels < 1 or layers < 1:
        raise ValueError("a cost table needs at least one channel and one cell")
    shape = DATASETS[dataset]
    nodes = space.nodes
    meter = _Meter(latency)
    operations, attentions = table_rows(space)
    measures = COUNTS + ((LATENCY,) if latency else ())

    channels_stem = channels if shape.imagenet_stem else STEM_MULTIPLIER * channels
    stem_spatial = _stem_size(shape.imagenet_stem, shape.input_size)
    slots, channels_last = stack_cells(
        lambda layer: _Slot(layer, layer.channels * nodes,
                            halve(layer.spatial_in) if layer.reduction else layer.spatial_in),
        layers=layers, channels=channels, channels_stem=channels_stem, spatial=stem_spatial,
        reduction_prev=shape.imagenet_stem)

    progress("measuring the stem, preprocessing and classifier")
    fixed, parts = _fixed_part(space, shape, dataset, channels, layers, slots, channels_last,
                               meter)

    cells = []
    for slot in slots:
        progress(f"measuring cell {slot.layer.index + 1} of {layers}")
        cells.append(_cell_costs(space, slot, operations, attentions, meter))
    environment = {
        "attdarts": _version(),
        "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if latency is not None:
        environment["device_name"] = _device_name(torch.device(latency.device))
    return CostTable(space=space, dataset=dataset, channels=channels, layers=layers,
                     input_size=shape.input_size, num_classes=shape.num_classes,
                     operations=operations, attentions=attentions, measures=measures,
                     fixed=fixed, fixed_parts=parts, cells=tuple(cells), latency=latency,
                     environment=environment)


def _fixed_part(space: ir.Space, shape, dataset: str, channels: int, layers: int,
                slots: list[_Slot], channels_last: int, meter: _Meter
                ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(totals, parts): the stem, every cell's two preprocessing layers, the classifier (and,
    for latency, each cell's concatenation and `keep - 1` additions per node); the auxiliary
    head's parameters apart (`parameters_auxiliary_head`)."""
    latency = meter.latency is not None
    parts: dict[str, dict[str, float]] = {}

    def add(part: str, values: Mapping[str, float]) -> None:
        into = parts.setdefault(part, {})
        for measure in (*COUNTS, LATENCY):
            if measure in values:
                into[measure] = into.get(measure, 0) + values[measure]

    stem_network = compile_network(_placeholder(space), dataset=dataset, channels=channels,
                                   layers=0, auxiliary=False)
    stems = [stem_network.stem0, stem_network.stem1] if shape.imagenet_stem else [stem_network.stem]
    stem = nn.Sequential(*stems).eval()
    probe = (1, 3, shape.input_size, shape.input_size)
    add("stem", meter.module(("stem",), lambda: stem, probe))

    # spatial size of every state: c_{k-2} of the first cell is stem0's output on ImageNet
    first = halve(halve(shape.input_size)) if shape.imagenet_stem else shape.input_size
    sizes = [first, _stem_size(shape.imagenet_stem, shape.input_size)]
    for slot in slots:
        layer = slot.layer
        preprocess = _preprocessors(layer)
        for index, (module, channels_in) in enumerate(
                zip(preprocess, (layer.channels_prev_prev, layer.channels_prev))):
            spatial = sizes[-2 + index]
            add("preprocessing", meter.module(
                ("preprocess", index, layer.reduction_prev, channels_in, layer.channels, spatial),
                lambda module=module: module, (1, channels_in, spatial, spatial)))
        if latency:
            node_shape = (1, layer.channels, slot.spatial_out, slot.spatial_out)
            concatenation = meter.time(lambda *states: torch.cat(states, dim=1),
                                       [node_shape] * space.nodes)[0]
            additions = _addition(meter, node_shape) * (space.keep - 1) * space.nodes
            add("between_modules", {LATENCY: concatenation + additions})
        sizes.append(slot.spatial_out)

    classifier = nn.Linear(channels_last, shape.num_classes)
    values = dict(meter.module(("classifier", channels_last, shape.num_classes),
                               lambda: classifier, (1, channels_last)))
    if latency:
        pooling = nn.AvgPool2d(7) if shape.imagenet_stem else nn.AdaptiveAvgPool2d(1)
        head = nn.Sequential(pooling, nn.Flatten(1), classifier)
        values[LATENCY] = meter.time(head, [(1, channels_last, sizes[-1], sizes[-1])])[0]
    add("classifier", values)

    totals: dict[str, float] = {}
    for values in parts.values():
        for measure, value in values.items():
            totals[measure] = totals.get(measure, 0) + value
    for measure in totals:
        if measure == LATENCY:
            totals[measure] = round(totals[measure], 6)
    for values in parts.values():
        if LATENCY in values:
            values[LATENCY] = round(values[LATENCY], 6)
    head_class = AuxiliaryHeadImageNet if shape.imagenet_stem else AuxiliaryHeadCIFAR
    totals[AUXILIARY] = _parameters(head_class(slots[2 * layers // 3].channels_out,
                                               shape.num_classes))
    return totals, parts


def _addition(meter: _Meter, shape: tuple[int, ...]) -> float:
    key = ("addition", shape)
    if key not in meter.cache:
        meter.cache[key] = {LATENCY: meter.time(torch.add, [shape, shape])[0]}
    return meter.cache[key][LATENCY]


def _preprocessors(layer: Layer) -> tuple[nn.Module, nn.Module]:
    return preprocess_inputs(layer.channels_prev_prev, layer.channels_prev, layer.channels,
                             reduction_prev=layer.reduction_prev, affine=True)


def _cell_costs(space: ir.Space, slot: _Slot, operations: tuple[ir.Call, ...],
                attentions: tuple[ir.Call, ...], meter: _Meter) -> CellCosts:
    layer = slot.layer
    channels = layer.channels
    spatial_in, spatial_out = layer.spatial_in, slot.spatial_out
    timed = meter.latency is not None
    edges = []
    for node, source in edge_positions(space.nodes):
        from_input = source in ir.INPUTS
        stride = 2 if layer.reduction and from_input else 1
        spatial = spatial_in if from_input else spatial_out
        operation_values = [
            meter.module(("operation", call, channels, stride, spatial),
                         lambda call=call: build_operation(call, channels, stride, affine=True),
                         (1, channels, spatial, spatial))
            for call in operations]
        attention_values = [_attention(meter, call, channels, spatial_out)
                            for call in attentions]
        edges.append(EdgeCosts(node=node, input=source, stride=stride, spatial_in=spatial,
                               operations=_by_measure(operation_values, timed),
                               attentions=_by_measure(attention_values, timed)))
    output = None
    if space.location_spec.output_attention:
        width = slot.channels_out
        output = _by_measure([_attention(meter, call, width, spatial_out)
                              for call in attentions], timed)
    addition = None
    if meter.latency is not None:
        addition = _addition(meter, (1, channels, spatial_out, spatial_out))
    return CellCosts(index=layer.index, kind="reduce" if layer.reduction else "normal",
                     channels=channels, spatial_in=spatial_in, spatial_out=spatial_out,
                     edges=tuple(edges), output=output, addition_ms=addition)


def _attention(meter: _Meter, call: ir.Call, channels: int, spatial: int) -> dict[str, float]:
    """An attention's entry; `identity` is no module at all in a final network (the DSL writes
    `>> identity` as no attention), so it costs nothing in every measure."""
    if call == IDENTITY:
        zero: dict[str, float] = {measure: 0 for measure in COUNTS}
        if meter.latency is not None:
            zero[LATENCY] = zero[SPREAD] = 0.0
        return zero
    return meter.module(("attention", call, channels, spatial),
                        lambda: build_attention(call, channels, spatial),
                        (1, channels, spatial, spatial))


def _by_measure(rows: list[dict[str, float]], latency: bool) -> dict[str, tuple[float, ...]]:
    """Per measure (and latency spread) one value per row."""
    keys = (*COUNTS, LATENCY, SPREAD) if latency else COUNTS
    return {key: tuple(row[key] for row in rows) for key in keys}


def _version() -> str:
    try:
        return metadata.version("attdarts")
    except metadata.PackageNotFoundError:
        return "unknown"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()
