"""Speed and memory of one Att-DARTS search iteration (architecture step + weight step).

    python benchmarks/search_step.py --device cuda --steps 20                 # plain and grouped
    python benchmarks/search_step.py --device cuda --paths grouped --graphs   # captured steps
    python benchmarks/search_step.py --device cuda --paths grouped --graphs --amp bf16
    python benchmarks/search_step.py --device cuda --paths grouped --seeds-together 4
    python benchmarks/search_step.py --device cpu --steps 2 --warmup 1

Builds the paper's supernet (genotypes/spaces/att_darts.geno: C=16, 8 cells, 8 operations x 6
attentions) and times first- and second-order iterations at batch 64 (64 weight images + 64
architecture images per iteration) with the real `attdarts.runs.search.bilevel.Bilevel` step, on
random 32x32 batches already on the device (no loader cost), for each path: `plain` (every edge on
its own) and `grouped` (each cell's edges in waves, `attdarts.networks.grouping`; what `attdarts
search` runs unless --plain). On top, each optional:

- `--graphs`: the step replayed as one CUDA graph (`attdarts.runs.graphs`; what `attdarts search`
  does on CUDA). Warm-up then takes at least 3 eager steps and the capture (timed separately);
  off CUDA the same step runs eagerly and the row says so.
- `--compile`: regional `torch.compile` of the cells (`attdarts.networks.compiled.compile_cells`),
  when that module exists; compile time is reported.
- `--amp bf16`, `--channels-last`: bfloat16 autocast around the whole iteration / channels-last
  weights and images. A measurement only: `attdarts search` has no such options yet.
- `--seeds-together N`: N seeds' supernets batched into one model
  (`attdarts.runs.search.together.TogetherSearch`, first order), when that module exists.

CUDA is synchronised around the timed region. Reports ms per iteration (all seeds together),
weight images per second, peak memory (CUDA: max allocated; CPU: the process's peak resident set,
which only grows, so later rows include earlier ones), the tensor operations dispatched from
Python per iteration (views excluded: on a GPU nearly each is a kernel launch, except under
`--graphs`, where one replay launches them all; counted on one extra untimed iteration) and the
time of a 50-epoch search of one seed on CIFAR-10: 25,000 weight images / 64 = 391 iterations per
epoch (DARTS keeps the last partial batch; `attdarts search` drops it: 390). A variant that is
missing or fails prints one line saying so and the others go on.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attdarts.language.transform import parse_file  # noqa: E402
from attdarts.networks.supernet import compile_supernet  # noqa: E402
from attdarts.runs import data  # noqa: E402
from attdarts.runs.search import Bilevel, SearchConfig  # noqa: E402
from _device import (  # noqa: E402
    count_operations, device_name, optional, peak_memory_mib, synchronize, variant_label,
)

ITERATIONS_PER_EPOCH = math.ceil(25_000 / 64)  # 391
EPOCHS = 50
GRAPH_WARMUP = 4  # CapturedStep's 3 eager warm-up steps, then the step that captures


def _batches(args, device, count: int, seeds: int) -> list:
    generator = torch.Generator(device=device).manual_seed(0)
    lead = (seeds,) if seeds > 1 else ()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    def batch():
        images = torch.randn(*lead, args.batch_size, 3, 32, 32, device=device, generator=generator)
        if not lead:
            images = images.contiguous(memory_format=memory_format)
        labels = torch.randint(0, 10, (*lead, args.batch_size), device=device, generator=generator)
        return images, labels

    return [(batch(), batch()) for _ in range(count)]


def _stepper(path: str, order: int, args, device: torch.device, space, config: SearchConfig):
    """(step function, what it runs on, seconds spent compiling) for one variant."""
    if args.seeds_together > 1:
        together = optional("attdarts.runs.search.together", "--seeds-together")
        pool = data.synthetic_dataset(train=True, size=4 * args.batch_size)
        search = together.TogetherSearch(
            config, list(range(1, args.seeds_together + 1)), tempfile.mkdtemp(), device=device,
            space=space, dataset=pool)
        return search.bilevel.step, search, 0.0
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = compile_supernet(space, channels=args.channels, layers=args.layers,
                             grouped=config.grouped).to(device, memory_format=memory_format)
    compile_seconds = 0.0
    if args.compile:
        compiled = optional("attdarts.networks.compiled", "--compile")
        started = time.perf_counter()
        model = compiled.compile_cells(model, backend=args.compile_backend)
        compile_seconds = time.perf_counter() - started  # lazy: the first steps compile more
    bilevel = Bilevel(model, config, graphs=args.graphs)
    return bilevel.step, bilevel, compile_seconds


def measure(path: str, order: int, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    space = parse_file(args.space).space(args.space_name)
    config = SearchConfig(space_file=str(args.space), order=order, batch_size=args.batch_size,
                          channels=args.channels, layers=args.layers, grouped=path == "grouped")
    seeds = max(args.seeds_together, 1)
    step, owner, compile_seconds = _stepper(path, order, args, device, space, config)
    captured = getattr(getattr(owner, "captured", None), "enabled", False)
    warmup = max(args.warmup, GRAPH_WARMUP) if captured else args.warmup
    batches = _batches(args, device, warmup + args.steps, seeds)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
           if args.amp == "bf16" else contextlib.nullcontext())
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    warmup_seconds = []
    with amp:
        for weight_batch, arch_batch in batches[:warmup]:
            started = time.perf_counter()
            step(weight_batch, arch_batch)
            synchronize(device)
            warmup_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        for weight_batch, arch_batch in batches[warmup:]:
            step(weight_batch, arch_batch)
        synchronize(device)
        seconds = (time.perf_counter() - started) / args.steps
        operations = None
        if args.count and not args.compile:  # torch.compile refuses the counting mode
            operations = count_operations(lambda: step(*batches[-1]))
    return {
        "variant": variant_label(path, args),
        "path": path,
        "order": order,
        "graphs": bool(captured),
        "graphs_requested": args.graphs,
        "compile": args.compile,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "seeds": seeds,
        "operations_per_iteration": operations,
        "ms_per_iteration": seconds * 1000,
        "ms_per_seed_iteration": seconds * 1000 / seeds,
        "weight_images_per_s": seeds * args.batch_size / seconds,
        "peak_memory_mib": peak_memory_mib(device),
        "first_step_seconds": warmup_seconds[0] if warmup_seconds else None,
        "capture_step_seconds": warmup_seconds[-1] if captured and warmup_seconds else None,
        "compile_call_seconds": compile_seconds if args.compile else None,
        "search_hours_50_epochs": seconds / seeds * ITERATIONS_PER_EPOCH * EPOCHS / 3600,
    }


def _row_line(row: dict) -> str:
    operations = row["operations_per_iteration"]
    counted = "" if operations is None else f", {operations:,} tensor operations"
    per_seed = (f" ({row['ms_per_seed_iteration']:.1f} ms per seed)" if row["seeds"] > 1 else "")
    capture = ("" if row["capture_step_seconds"] is None
               else f", capture step {row['capture_step_seconds']:.1f} s")
    return (f"{row['variant']:<28s} order {row['order']}: {row['ms_per_iteration']:.1f} "
            f"ms/iteration{per_seed}, {row['weight_images_per_s']:.1f} weight images/s, peak "
            f"memory {row['peak_memory_mib']:.0f} MiB{counted}{capture}, 50-epoch search per seed "
            f"({ITERATIONS_PER_EPOCH} iterations/epoch): {row['search_hours_50_epochs']:.2f} h")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed iterations per order")
    parser.add_argument("--warmup", type=int, default=2,
                        help=f"untimed iterations first (at least {GRAPH_WARMUP} with --graphs)")
    parser.add_argument("--orders", default="1,2", help="comma-separated: 1, 2 or both")
    parser.add_argument("--paths", default="plain,grouped",
                        help="comma-separated: plain, grouped or both")
    parser.add_argument("--graphs", action="store_true", help="replay each step as a CUDA graph")
    parser.add_argument("--compile", action="store_true", help="compile the cells (torch.compile)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend for --compile [inductor]")
    parser.add_argument("--amp", choices=["bf16"], help="bfloat16 autocast around the iteration")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--seeds-together", type=int, default=1, metavar="N",
                        help="batch N seeds' supernets into one model (first order)")
    parser.add_argument("--no-count", dest="count", action="store_false",
                        help="skip the extra iteration that counts tensor operations")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--space", type=Path, default=ROOT / "genotypes/spaces/att_darts.geno")
    parser.add_argument("--space-name")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (torch.set_num_threads)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in ("plain", "grouped") for p in paths):
        parser.error("--paths takes plain, grouped or both")
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.seeds_together < 1:
        parser.error("--steps, --batch-size and --seeds-together must be at least 1, "
                     "--warmup at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    print(f"device: {device_name(device)}; torch {torch.__version__}; batch {args.batch_size}, "
          f"C={args.channels}, {args.layers} cells, {args.space.name}; "
          f"{args.warmup} warm-up + {args.steps} timed iterations per order", flush=True)
    if args.graphs and device.type != "cuda":
        print("graphs: no CUDA here, so the same step runs eagerly (the CPU fallback)", flush=True)
    rows = []
    for order in (int(part) for part in args.orders.split(",")):
        for path in paths:
            label = f"{variant_label(path, args):<28s} order {order}"
            try:
                row = measure(path, order, args, device)
            except ImportError as error:  # an optional module that is not there
                print(f"{label}: not available ({error})", flush=True)
                rows.append({"variant": variant_label(path, args), "order": order,
                             "not_available": str(error)})
                continue
            except Exception as error:  # noqa: BLE001 - a benchmark reports and goes on
                print(f"{label}: failed: {type(error).__name__}: {error}".splitlines()[0], flush=True)
                rows.append({"variant": variant_label(path, args), "order": order,
                             "error": f"{type(error).__name__}: {error}"})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            rows.append(row)
            print(_row_line(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": device_name(device), "kind": "search",
                                         "torch": torch.__version__, "batch_size": args.batch_size,
                                         "steps": args.steps, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
