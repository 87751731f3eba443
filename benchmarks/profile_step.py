"""Where the time of a step goes on a GPU, and what capturing a training step as a CUDA graph buys.

    python benchmarks/profile_step.py --device cuda

1. Profiles one first-order search iteration (paper space, batch 64) and one training step of
   the paper's Att-DARTS network (C=36, L=20, auxiliary, drop path 0.2, batch 96) with
   torch.profiler and prints the top operators by GPU time and the kernel launches per step.
2. Times the same training step replayed as one CUDA graph (static input buffers, forward,
   backward, clipping and the SGD step all captured) against the eager step. An experiment
   that guides the performance work; it changes nothing in `attdarts train`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attdarts.language.transform import parse_file  # noqa: E402
from attdarts.networks.supernet import compile_supernet  # noqa: E402
from attdarts.runs import data  # noqa: E402
from attdarts.runs.search import Bilevel, SearchConfig  # noqa: E402
from attdarts.runs import train  # noqa: E402
from attdarts.runs.train.loop import model_config  # noqa: E402


def _search_step(device):
    torch.manual_seed(0)
    space = parse_file(ROOT / "genotypes/spaces/att_darts.geno").space()
    config = SearchConfig(space_file=str(ROOT / "genotypes/spaces/att_darts.geno"), order=1)
    model = compile_supernet(space).to(device)
    bilevel = Bilevel(model, config)
    x = torch.randn(64, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    return lambda: bilevel.step((x, y), (x, y))


def _train_parts(device, batch_size, amp=None, channels_last=False):
    torch.manual_seed(0)
    config = train.TrainConfig(batch_size=batch_size, amp=amp, channels_last=channels_last)
    genotype = parse_file(ROOT / "genotypes/att_darts.geno").genotype()
    model = train.build_model(genotype, model_config(
        config, data.parse_spec("cifar10"), num_classes=10, input_size=32))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    model.drop_path_prob = config.drop_path_prob
    optimizer = train.make_optimizer(model, config)
    pool = data.synthetic_dataset(train=True, size=8 * batch_size)
    loader = data.DeviceLoader(pool.images, pool.labels, batch_size=batch_size, device=device,
                               augment=True, cutout=config.cutout, mean=pool.mean, std=pool.std,
                               channels_last=channels_last)
    batches = []
    for _ in range(2):
        batches.extend(loader)
    return config, model, optimizer, batches


def _profile(name, step, steps=3):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    print(f"\n== {name}: {kernels / steps:,.0f} GPU kernels per step")
    print(events.table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))


def _time(step, steps):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def graph_experiment(device, batch_size, steps, amp=None, channels_last=False):
    label = f"amp={amp} channels_last={channels_last}"
    # eager reference
    config, model, optimizer, batches = _train_parts(device, batch_size, amp, channels_last)
    index = iter(range(10**9))

    def eager():
        images, labels = batches[next(index) % len(batches)]
        return train.train_step(model, optimizer, images, labels, auxiliary_weight=0.4,
                                grad_clip=5.0, amp=amp)[0]

    eager_seconds = _time(eager, steps)
    # graph: the same step captured once, replayed with new data copied into static buffers
    config, model, optimizer, batches = _train_parts(device, batch_size, amp, channels_last)
    static_images = batches[0][0].clone()
    static_labels = batches[0][1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm up (allocates momentum buffers) outside the capture
            train.train_step(model, optimizer, static_images, static_labels, amp=amp)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = train.train_step(model, optimizer, static_images, static_labels, amp=amp)[0]
    index = iter(range(10**9))

    def replay():
        images, labels = batches[next(index) % len(batches)]
        static_images.copy_(images)
        static_labels.copy_(labels)
        graph.replay()
        return static_loss

    graph_seconds = _time(replay, steps)
    print(f"\n== training step as a CUDA graph ({label}, batch {batch_size})")
    print(f"eager {eager_seconds * 1000:.1f} ms/step ({batch_size / eager_seconds:,.0f} img/s); "
          f"graph {graph_seconds * 1000:.1f} ms/step ({batch_size / graph_seconds:,.0f} img/s); "
          f"600 epochs: {600 * 50000 / (batch_size / graph_seconds) / 3600:.1f} h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip-profile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    if not args.skip_profile:
        _profile("search iteration, first order, batch 64", _search_step(device))
        config, model, optimizer, batches = _train_parts(device, 96)
        it = iter(range(10**9))
        _profile("training step, Att-DARTS C=36 L=20, batch 96",
                 lambda: train.train_step(model, optimizer, *batches[next(it) % len(batches)]))
        del model, optimizer, batches
    for amp, channels_last in ((None, False), ("bf16", True)):
        try:
            graph_experiment(device, 96, args.steps, amp, channels_last)
        except Exception as error:  # an experiment: report and go on
            print(f"\n== CUDA graph experiment failed ({amp}, {channels_last}): {type(error).__name__}: {error}")


if __name__ == "__main__":
    main()
