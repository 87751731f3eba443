"""Speed and memory of one Att-DARTS search iteration (architecture step + weight step).

    python benchmarks/search_step.py --device cuda --steps 20
    python benchmarks/search_step.py --device cpu --steps 2 --warmup 1

Builds the paper's supernet (genotypes/spaces/att_darts.geno: C=16, 8 cells, 8 operations x 6
attentions) and times first- and second-order iterations at batch 64 (64 weight images + 64
architecture images per iteration) with the real `attdarts.runs.search.bilevel.Bilevel` step, on random
32x32 batches already on the device (no loader cost), for each path: `plain` (every edge on its
own) and `grouped` (each cell's edges in waves, `attdarts.networks.grouping`; what `attdarts search` runs
unless --plain). CUDA is synchronised around the timed region. Reports ms per iteration, weight
images per second, peak memory (CUDA: max allocated; CPU: the process's peak resident set, which
only grows, so later rows include earlier ones), the tensor operations of one iteration (views
excluded: on a GPU nearly each is a kernel launch; counted on one extra untimed iteration) and the
time of a 50-epoch search on CIFAR-10: 25,000 weight images / 64 = 391 iterations per epoch
(DARTS keeps the last partial batch; `attdarts search` drops it: 390).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attdarts.language.transform import parse_file  # noqa: E402
from attdarts.networks.supernet import compile_supernet  # noqa: E402
from attdarts.runs.search import Bilevel, SearchConfig  # noqa: E402
from _device import count_operations, device_name, peak_memory_mib, synchronize  # noqa: E402

ITERATIONS_PER_EPOCH = math.ceil(25_000 / 64)  # 391
EPOCHS = 50


def measure(path: str, order: int, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    space = parse_file(args.space).space(args.space_name)
    config = SearchConfig(space_file=str(args.space), order=order, batch_size=args.batch_size,
                          channels=args.channels, layers=args.layers, grouped=path == "grouped")
    model = compile_supernet(space, channels=args.channels, layers=args.layers,
                             grouped=config.grouped).to(device)
    bilevel = Bilevel(model, config)
    generator = torch.Generator(device=device).manual_seed(0)

    def batch():
        images = torch.randn(args.batch_size, 3, 32, 32, device=device, generator=generator)
        labels = torch.randint(0, 10, (args.batch_size,), device=device, generator=generator)
        return images, labels

    batches = [(batch(), batch()) for _ in range(args.warmup + args.steps)]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for weight_batch, arch_batch in batches[:args.warmup]:
        bilevel.step(weight_batch, arch_batch)
    synchronize(device)
    started = time.perf_counter()
    for weight_batch, arch_batch in batches[args.warmup:]:
        bilevel.step(weight_batch, arch_batch)
    synchronize(device)
    seconds = (time.perf_counter() - started) / args.steps
    operations = None
    if args.count:
        weight_batch, arch_batch = batches[-1]
        operations = count_operations(lambda: bilevel.step(weight_batch, arch_batch))
    return {
        "path": path,
        "order": order,
        "operations_per_iteration": operations,
        "ms_per_iteration": seconds * 1000,
        "weight_images_per_s": args.batch_size / seconds,
        "peak_memory_mib": peak_memory_mib(device),
        "search_hours_50_epochs": seconds * ITERATIONS_PER_EPOCH * EPOCHS / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed iterations per order")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--orders", default="1,2", help="comma-separated: 1, 2 or both")
    parser.add_argument("--paths", default="plain,grouped",
                        help="comma-separated: plain, grouped or both")
    parser.add_argument("--no-count", dest="count", action="store_false",
                        help="skip the extra iteration that counts tensor operations")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--space", type=Path, default=ROOT / "genotypes/spaces/att_darts.geno")
    parser.add_argument("--space-name")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (torch.set_num_threads)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    print(f"device: {device_name(device)}; torch {torch.__version__}; batch {args.batch_size}, "
          f"C={args.channels}, {args.layers} cells, {args.space.name}; "
          f"{args.warmup} warm-up + {args.steps} timed iterations per order", flush=True)
    rows = []
    for order in (int(part) for part in args.orders.split(",")):
        for path in args.paths.split(","):
            if path not in ("plain", "grouped"):
                parser.error(f"unknown path {path!r}; expected plain or grouped")
            row = measure(path, order, args, device)
            rows.append(row)
            operations = row["operations_per_iteration"]
            counted = "" if operations is None else f", {operations:,} tensor operations"
            print(f"{path:7s} order {order}: {row['ms_per_iteration']:.1f} ms/iteration, "
                  f"{row['weight_images_per_s']:.1f} weight images/s, peak memory "
                  f"{row['peak_memory_mib']:.0f} MiB{counted}, 50-epoch search "
                  f"({ITERATIONS_PER_EPOCH} iterations/epoch): "
                  f"{row['search_hours_50_epochs']:.2f} h", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": device_name(device), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
